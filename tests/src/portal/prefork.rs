//! Process management: the `prefork` model's workers and termination signals.

use std::io;
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread;
use std::time::Duration;

use super::serve::{accept_loop, log_line};
use super::{Context, Model};

/// Upper bound of `--workers`: worker pids live in a fixed array that a signal handler reads.
pub(crate) const MAX_WORKERS: usize = 64;

/// Workers replaced over the master's life, at most.
const MAX_RESPAWNS: usize = 100;

/// Pids of the live workers (0 for none), read by the parent's SIGTERM/SIGINT handler, which
/// may neither allocate nor lock.
static WORKERS: [AtomicI32; MAX_WORKERS] = [const { AtomicI32::new(0) }; MAX_WORKERS];

const TERMINATION_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// `thread` and `pool`: SIGTERM/SIGINT end the process at once with status 0. Blocking
/// accept/read calls make a graceful drain pointless for a demo.
pub(crate) fn exit_on_termination_signals() -> io::Result<()> {
    extern "C" fn exit_now(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) }
    }
    set_handlers(exit_now as *const () as libc::sighandler_t)
}

/// Sleeps `fork_delay`, forks `workers` processes that accept on `listener`, then waits for
/// them, replacing each worker that dies abnormally (a crash, a kill) as a real prefork server
/// does. Returns only if every worker exited on its own (an error unless all exited with 0).
pub(crate) fn run(
    listener: TcpListener,
    ctx: Arc<Context>,
    workers: usize,
    fork_delay: Duration,
) -> io::Result<()> {
    // The delay gives a monitor started on the LISTENING line time to attach before the forks.
    thread::sleep(fork_delay);
    set_handlers(stop_workers_and_exit as *const () as libc::sighandler_t)?;
    // SAFETY: getpid cannot fail.
    let parent = unsafe { libc::getpid() };
    for slot in WORKERS.iter().take(workers) {
        if let Err(error) = spawn_worker(slot, &listener, &ctx, parent) {
            stop_workers();
            return Err(error);
        }
    }
    reap_workers(&listener, &ctx, parent)
}

/// Forks one worker and records its pid in `slot`.
fn spawn_worker(
    slot: &AtomicI32,
    listener: &TcpListener,
    ctx: &Arc<Context>,
    parent: libc::pid_t,
) -> io::Result<libc::pid_t> {
    // Termination signals stay blocked across fork: the parent records the pid before its
    // handler can run, and the child resets the inherited handler before receiving any.
    let old_mask = block_termination_signals()?;
    // SAFETY: this process is single-threaded (nothing spawned threads in it), so the child may
    // keep running ordinary Rust code.
    match unsafe { libc::fork() } {
        -1 => {
            let error = io::Error::last_os_error();
            restore_mask(&old_mask);
            Err(error)
        }
        0 => {
            let listener = listener.try_clone().unwrap_or_else(|e| {
                log_line(&format!("worker: cannot use the listening socket: {e}"));
                // SAFETY: see `worker`.
                unsafe { libc::_exit(1) }
            });
            worker(listener, Arc::clone(ctx), parent, &old_mask)
        }
        pid => {
            slot.store(pid, Ordering::SeqCst);
            restore_mask(&old_mask);
            Ok(pid)
        }
    }
}

/// The body of a worker process; never returns.
fn worker(
    listener: TcpListener,
    ctx: Arc<Context>,
    parent: libc::pid_t,
    old_mask: &libc::sigset_t,
) -> ! {
    // SAFETY: plain syscalls on this process's own state.
    unsafe {
        for signal in TERMINATION_SIGNALS {
            libc::signal(signal, libc::SIG_DFL);
        }
        // Die with the parent even if it is SIGKILLed and cannot forward anything.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        if libc::getppid() != parent {
            // The parent died before prctl took effect.
            libc::_exit(0);
        }
    }
    restore_mask(old_mask);
    accept_loop(listener, ctx, Model::Prefork, 1, None);
    // SAFETY: _exit skips the parent's atexit/stdio state, which the child only copied.
    unsafe { libc::_exit(0) }
}

/// Waits for every worker. A worker that dies abnormally is replaced in its slot (at most
/// [`MAX_RESPAWNS`] times over the master's life, so that a worker crashing at start cannot make
/// it fork forever); one that exits on its own is not.
fn reap_workers(listener: &TcpListener, ctx: &Arc<Context>, parent: libc::pid_t) -> io::Result<()> {
    let mut all_clean = true;
    let mut respawns = 0;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == -1 {
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => break,
                _ => return Err(error),
            }
        }
        let slot = WORKERS.iter().find(|slot| {
            slot.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        });
        let clean = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        if let Some(slot) = slot.filter(|_| !clean && respawns < MAX_RESPAWNS) {
            respawns += 1;
            match spawn_worker(slot, listener, ctx, parent) {
                Ok(new) => {
                    log_line(&format!(
                        "worker {pid} ended (wait status {status:#x}); replaced by worker {new}"
                    ));
                    continue;
                }
                Err(e) => log_line(&format!("cannot replace worker {pid}: {e}")),
            }
        }
        all_clean &= clean;
        log_line(&format!(
            "worker {pid} ended (wait status {status:#x}); not replaced"
        ));
    }
    if all_clean {
        Ok(())
    } else {
        Err(io::Error::other("a worker process failed"))
    }
}

/// The parent's SIGTERM/SIGINT handler: forwards SIGTERM to the workers, reaps them so that
/// the listening socket is really closed when the parent is gone, and exits with status 0.
extern "C" fn stop_workers_and_exit(_: libc::c_int) {
    stop_workers();
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// Async-signal-safe: only atomics, kill and waitpid.
fn stop_workers() {
    for slot in &WORKERS {
        let pid = slot.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    for slot in &WORKERS {
        let pid = slot.swap(0, Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: a null status pointer is allowed.
            unsafe { libc::waitpid(pid, ptr::null_mut(), 0) };
        }
    }
}

fn set_handlers(handler: libc::sighandler_t) -> io::Result<()> {
    for signal in TERMINATION_SIGNALS {
        // SAFETY: a zeroed sigaction is valid; the handler only calls async-signal-safe code.
        unsafe {
            let mut action: libc::sigaction = MaybeUninit::zeroed().assume_init();
            action.sa_sigaction = handler;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, ptr::null_mut()) == -1 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

fn block_termination_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t values are initialised by sigemptyset before use.
    unsafe {
        let mut block: libc::sigset_t = MaybeUninit::zeroed().assume_init();
        let mut old: libc::sigset_t = MaybeUninit::zeroed().assume_init();
        libc::sigemptyset(&mut block);
        for signal in TERMINATION_SIGNALS {
            libc::sigaddset(&mut block, signal);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &block, &mut old) == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(old)
    }
}

fn restore_mask(mask: &libc::sigset_t) {
    // SAFETY: `mask` came from sigprocmask.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, mask, ptr::null_mut()) };
}
