//! Running the demo portal binary as a child process for end-to-end tests.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the portal may take to print its LISTENING line (times [`crate::time_scale`]).
const STARTUP_DEADLINE: Duration = Duration::from_secs(10);

/// How long SIGTERM is given before SIGKILL (times [`crate::time_scale`]).
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Starts `bin` (the demo-portal binary, e.g. `env!("CARGO_BIN_EXE_demo-portal")`, or the
/// demo-fcgi one) with `args` and waits until it prints `LISTENING <ip:port>` (or
/// `LISTENING unix:<path>`).
///
/// The portal's stderr (one line per request) is collected, see [`PortalGuard::stderr_lines`].
pub fn spawn_portal<I, S>(bin: impl AsRef<Path>, args: I) -> io::Result<PortalGuard>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    spawn_portal_within(bin, args, STARTUP_DEADLINE)
}

/// [`spawn_portal`] for a portal that may take up to `startup` (times [`crate::time_scale`]) to
/// listen: a runtime that starts slowly (Node.js cluster workers, under software emulation).
pub fn spawn_portal_within<I, S>(
    bin: impl AsRef<Path>,
    args: I,
    startup: Duration,
) -> io::Result<PortalGuard>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    spawn(bin.as_ref(), args, startup, true)
}

/// [`spawn_portal`] with the portal's per-request log discarded, not collected: for load (the
/// bench), where keeping millions of lines would cost the measuring process.
pub fn spawn_portal_quiet<I, S>(bin: impl AsRef<Path>, args: I) -> io::Result<PortalGuard>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    spawn(bin.as_ref(), args, STARTUP_DEADLINE, false)
}

fn spawn<I, S>(bin: &Path, args: I, startup: Duration, collect_log: bool) -> io::Result<PortalGuard>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if collect_log {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");

    let stderr_lines = Arc::new(Mutex::new(Vec::new()));
    let collected = Arc::clone(&stderr_lines);
    let stderr_reader = child.stderr.take().map(|stderr| {
        thread::spawn(move || {
            for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
                collected
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(String::from_utf8_lossy(&line).into_owned());
            }
        })
    });

    // A thread reads stdout so that the wait below can have a deadline; it keeps draining
    // stdout afterwards so that the portal never blocks on a full pipe.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("LISTENING ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });

    let mut guard = PortalGuard {
        child,
        addr: String::new(),
        socket_addr: None,
        stderr_lines,
        stderr_reader,
    };
    let announced = match rx.recv_timeout(crate::scaled(startup)) {
        Ok(addr) => addr,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            return Err(guard.startup_failure(
                io::ErrorKind::TimedOut,
                "no LISTENING line within the start-up deadline",
            ));
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            return Err(guard.startup_failure(
                io::ErrorKind::UnexpectedEof,
                "exited without a LISTENING line",
            ));
        }
    };
    if !announced.starts_with("unix:") {
        guard.socket_addr = Some(announced.parse().map_err(|_| {
            let message = format!("bad LISTENING address {announced:?}");
            guard.startup_failure(io::ErrorKind::InvalidData, &message)
        })?);
    }
    guard.addr = announced;
    Ok(guard)
}

/// A running portal process, terminated (SIGTERM, then SIGKILL after 2 s) and reaped on drop.
#[derive(Debug)]
pub struct PortalGuard {
    child: Child,
    addr: String,
    socket_addr: Option<SocketAddr>,
    stderr_lines: Arc<Mutex<Vec<String>>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl PortalGuard {
    /// The announced address as `ip:port`, ready for [`crate::client::http_get`].
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The announced address, unless it is a unix socket.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.socket_addr
    }

    /// The pid of the portal (for `prefork`, of the parent process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stderr lines received so far: `pid tid user method target status bytes` per request.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr_lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the portal now and returns how it exited (0 after SIGTERM when all is well).
    /// Afterwards [`PortalGuard::stderr_lines`] holds everything the portal logged.
    pub fn stop(&mut self) -> io::Result<ExitStatus> {
        let status = self.terminate()?;
        self.drain_stderr();
        Ok(status)
    }

    fn terminate(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id()).map_err(io::Error::other)?;
        // SAFETY: the child has not been reaped (try_wait said so), so the pid is still ours.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + crate::scaled(STOP_GRACE);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.child.kill()?;
        self.child.wait()
    }

    /// Kills the child and builds an error that includes whatever it wrote to stderr.
    fn startup_failure(&mut self, kind: io::ErrorKind, what: &str) -> io::Error {
        let status = self.terminate();
        self.drain_stderr();
        let stderr = self.stderr_lines().join("\n");
        io::Error::new(
            kind,
            format!("demo portal {what} ({status:?}); stderr:\n{stderr}"),
        )
    }
}

impl PortalGuard {
    /// Once the process is gone its stderr ends: waits (briefly, in case a stray descendant
    /// still holds the pipe) for the reader to collect the last lines.
    fn drain_stderr(&mut self) {
        if let Some(reader) = self.stderr_reader.take() {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for PortalGuard {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("could not stop the portal (pid {}): {e}", self.child.id());
        }
    }
}

/// Stops a child: `signal`, then SIGKILL if it is still running 5 s later; reaps it.
pub fn stop_child(child: &mut Child, signal: i32) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling our own child (not reaped yet: we hold it).
        unsafe { libc::kill(pid, signal) };
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
