//! openat/openat2 under the document roots, document reads, sendfile, close.
use aya_ebpf::{
    bindings::path,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
        generated::bpf_d_path,
    },
    macros::{fentry, lsm, tracepoint},
    maps::lpm_trie::Key,
    programs::{FEntryContext, LsmContext, TracePointContext},
};
use monitor_common::{
    fd_kind,
    files::{
        FP_BYTES, FP_MIN, FP_WORDS, FdEvent, OPEN_HEADER_LEN, OpenEvent, PATH_CAP,
        fingerprint_words, has_dotdot, open_path_bytes, path_source,
    },
    kind, loss, op,
};

use super::{arg, ret, sockets, syscall_op};
use crate::{
    maps::{
        DOC_ROOTS, H2_CONNS, OFF_FILE_FLAGS, OFF_FILE_PATH, OPEN_SCRATCH, OPENED, OPENED_SCRATCH,
        READ_AGG, READ_AGG_FD, ROOT_KEY_LEN, Stash, arm_run, count_call, count_loss, fd_key,
        fill_header, flush_counts, forget_fd_kind, global, is_target, last_loss, output_bytes,
        send_reads, set_fd_kind, stamp_losses, stash_put, stash_take, submit, submit_keeping,
    },
    task,
};

const AT_FDCWD: i32 = -100;

/// Zeroes words `k...` at `ptr` (a `*mut u64`), one store each. Zeroing an array by assignment
/// (`[0u64; N]`) became a call to a byte-loop `memset`, 5 instructions a byte: about 640 of
/// every open for the trie key, 320 of every document read for the fingerprint.
macro_rules! zero_words {
    ($ptr:expr; $($k:literal)*) => {$(unsafe { core::ptr::write_volatile($ptr.add($k), 0u64) };)*};
}

/// openat(int dfd, const char *filename, int flags, umode_t mode)
/// openat2(int dfd, const char *filename, struct open_how *how, size_t usize)
/// The filename is read at exit: at entry its page may not be faulted in yet (DESIGN.md §7).
#[tracepoint]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return 0;
    }
    let stash = Stash {
        op: syscall_op(&ctx),
        kind: 0,
        fd: -1,
        fd2: arg(&ctx, 0) as i32,
        ptr: arg(&ctx, 1),
        arg: arg(&ctx, 2),
    };
    stash_put(pid_tgid, &stash);
    0
}

/// BPF LSM `file_open(struct file *file)`, where `bpf` is an active LSM. It only observes: it
/// returns what the previous BPF LSM program decided (the last argument).
#[lsm(hook = "file_open")]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    on_file_open(ctx.arg(0));
    ctx.arg(1)
}

/// `security_file_open(struct file *file)`, where BPF trampolines work but the BPF LSM does not
/// run.
#[fentry(function = "security_file_open")]
pub fn fentry_file_open(ctx: FEntryContext) -> u32 {
    on_file_open(ctx.arg(0));
    0
}

/// A target opened `file`: its exact path (`bpf_d_path`), judged against the roots here, kept
/// for the thread's `openat` exit.
#[inline(always)]
fn on_file_open(file: *const u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return;
    }
    let Some(o) = OPENED_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let o = unsafe { &mut *o };
    o.file = file as u64;
    o.ev.flags = unsafe { task::read::<u32>(file, global(&OFF_FILE_FLAGS)) }.unwrap_or(0);
    o.ev.dirfd = AT_FDCWD;
    o.ev.source = path_source::KERNEL;
    // `&file->f_path`: a constant offset into the BTF-typed `file`, which the verifier checks
    // lands on a `struct path`.
    let f_path = file.wrapping_add(global(&OFF_FILE_PATH) as usize) as *const path;
    let n = unsafe { bpf_d_path(f_path, o.ev.path.as_mut_ptr().cast(), PATH_CAP as u32) };
    if n <= 0 {
        // Longer than the capture (or unnamed): undecided, userspace reads /proc/<pid>/fd. The
        // scratch still holds an earlier path: cut it.
        o.ev.path[0] = 0;
        o.ev.path_len = PATH_CAP as u32;
        o.kind = fd_kind::DOCUMENT;
    } else {
        o.ev.path_len = (n as u32).saturating_sub(1);
        // Exact and absolute: the root prefix decides (roots are shorter than the key).
        o.kind = if under_root(&mut o.ev) {
            fd_kind::DOCUMENT
        } else {
            fd_kind::OTHER
        };
    }
    if OPENED.insert(&pid_tgid, o, 0).is_err() {
        count_loss(loss::STASH_FULL);
    }
}

#[tracepoint]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Every other process's `openat` exit takes the inlined array lookup of the target check,
    // and no hash lookup.
    if !is_target((pid_tgid >> 32) as u32) {
        return 0;
    }
    exit_opened(pid_tgid, ret(&ctx));
    0
}

/// A target's open returned `fd`: decides from the path the thread's `openat` entry stashed
/// (tracepoints) or the one a `file_open` program kept (BTF), and emits.
#[inline(always)]
fn exit_opened(pid_tgid: u64, fd: i64) {
    // The stash first: on the tracepoints it is this open's, and the `file_open` map is empty
    // (its programs are on standby); with them, `sys_enter_open` is on standby and the thread
    // has no open stashed.
    if let Some(stash) = stash_take(pid_tgid)
        && (stash.op == op::OPENAT || stash.op == op::OPENAT2)
    {
        if fd >= 0 {
            opened_stashed(&stash, fd as i32);
        }
        return;
    }
    if let Some(o) = OPENED.get_ptr_mut(&pid_tgid) {
        if fd >= 0 {
            opened_kernel(unsafe { &mut *o }, fd as i32);
        }
        let _ = OPENED.remove(&pid_tgid);
    }
}

/// Whether the path in `ev` (NUL-terminated) starts with a document root. The trie is asked
/// in place: `key_bits` and the path are an LPM key. Bytes left past the NUL by an earlier
/// path cannot make a match: a root the path is shorter than would have to match its NUL.
#[inline(always)]
fn under_root(ev: &mut OpenEvent) -> bool {
    let bits = &raw mut ev.key_bits;
    unsafe { core::ptr::write_volatile(bits, (ROOT_KEY_LEN * 8) as u32) };
    let key = unsafe { &*(bits as *const Key<[u8; ROOT_KEY_LEN]>) };
    let hit = DOC_ROOTS.get(key).is_some();
    unsafe { core::ptr::write_volatile(bits, 0) };
    hit
}

/// The `openat` exit of an open a `file_open` program saw.
#[inline(always)]
fn opened_kernel(o: &mut crate::maps::Opened, fd: i32) {
    // An `O_PATH` open does not reach `file_open`; the entry is then another open's.
    if task::fd_file(fd) != Some(o.file) {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    set_fd_kind(tgid, fd, o.kind);
    if o.kind != fd_kind::DOCUMENT {
        return;
    }
    fill_header(&mut o.ev.header, kind::FILE_OPEN);
    o.ev.fd = fd;
    send_open(&mut o.ev);
}

/// The `openat` exit of an open whose arguments `sys_enter_open` stashed. The path is read
/// once, into the record: the root trie is asked on it in place, and only a document's record
/// is filled in and sent. A path the probe cannot rule out (relative, `..`, longer than the
/// trie's key) is sent for userspace to resolve.
#[inline(always)]
fn opened_stashed(stash: &Stash, fd: i32) {
    let Some(ev) = OPEN_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let ev = unsafe { &mut *ev };
    // `has_dotdot` reads whole words of the key: what follows the NUL must be zero, not an
    // earlier path.
    let words = ev.path.as_mut_ptr().cast::<u64>();
    zero_words!(words; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    const _: () = assert!(ROOT_KEY_LEN == 16 * 8);
    let len = match unsafe { bpf_probe_read_user_str_bytes(stash.ptr as *const u8, &mut ev.path) } {
        Ok(p) if !p.is_empty() => p.len(),
        _ => return,
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Cheapest test first; `..` only for an absolute path outside the roots, where it could
    // lead back under one.
    let document = ev.path[0] != b'/'
        || len >= ROOT_KEY_LEN - 1
        || under_root(ev)
        || has_dotdot(unsafe { &*ev.path.as_ptr().cast::<[u8; ROOT_KEY_LEN]>() });
    if !document {
        set_fd_kind(tgid, fd, fd_kind::OTHER);
        return;
    }
    set_fd_kind(tgid, fd, fd_kind::DOCUMENT);
    fill_header(&mut ev.header, kind::FILE_OPEN);
    ev.fd = fd;
    ev.dirfd = stash.fd2;
    ev.flags = if stash.op == op::OPENAT2 {
        // struct open_how { __u64 flags; ... }
        unsafe { bpf_probe_read_user(stash.arg as *const u64) }.unwrap_or(0) as u32
    } else {
        stash.arg as u32
    };
    ev.path_len = if len >= PATH_CAP - 1 {
        PATH_CAP as u32
    } else {
        len as u32
    };
    ev.source = path_source::SYSCALL;
    send_open(ev);
}

/// Sends an open record, cut after its path.
#[inline(always)]
fn send_open(ev: &mut OpenEvent) {
    flush_counts(bpf_get_current_pid_tgid());
    stamp_losses(&mut ev.header);
    // Bounded for the verifier (see `sockets::send`): the volatile read keeps LLVM from
    // folding the mask and the clamp away.
    let n = unsafe { core::ptr::read_volatile(&ev.path_len) } as usize & (2 * PATH_CAP - 1);
    let n = open_path_bytes(n as u32);
    let bytes = unsafe {
        core::slice::from_raw_parts((ev as *const OpenEvent).cast::<u8>(), OPEN_HEADER_LEN + n)
    };
    output_bytes(bytes);
}

/// Read of a document fd (`ret` bytes), or sendfile from one. A read that continues the
/// thread's run of reads of its fd is only counted (see [`ReadAgg`]); any other is sent in full
/// and starts a run.
#[inline(always)]
pub fn emit_io(stash: &Stash, ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if stash.op != op::SENDFILE64 && count_read(pid_tgid, stash, ret) {
        return;
    }
    let (kind, fd, fd2, fp, size) = if stash.op == op::SENDFILE64 {
        (kind::FILE_SENDFILE, stash.fd, stash.fd2, 0, 0)
    } else {
        // The size only where there is a fingerprint to tell apart: it costs three kernel
        // reads per document read.
        let fp = read_fingerprint(stash, ret);
        let size = if fp == 0 {
            0
        } else {
            task::fd_size(stash.fd).map_or(0, |s| s.min(u64::from(u32::MAX)) as u32)
        };
        (kind::FILE_READ, stash.fd, -1, fp, size)
    };
    // Taken before the record: if it is lost, the run's next read sees a new loss time and is
    // sent in full, rather than counted after a read userspace never saw.
    let loss_ns = last_loss();
    // A document read leaves the thread's run of response writes going (see `sockets`).
    submit_keeping::<FdEvent>(false, kind == kind::FILE_READ, |ev| {
        fill_header(&mut ev.header, kind);
        ev.fd = fd;
        ev.fd2 = fd2;
        ev.ret = ret;
        ev.op = stash.op;
        ev.size = size;
        ev.fp = fp;
    });
    if kind == kind::FILE_READ {
        start_run(pid_tgid, fd, loss_ns);
    }
}

/// Counts a read of `stash.fd` in the thread's run, when it continues one: the thread's last
/// record was a read of this fd (or the count of such reads), and no event was lost since. A
/// count `READ_BATCH_NS` old is sent first, so that a long read stays visible to the idle
/// horizon.
#[inline(always)]
fn count_read(pid_tgid: u64, stash: &Stash, ret: i64) -> bool {
    count_call(&READ_AGG, kind::FILE_READ_MORE, pid_tgid, stash, ret)
}

/// Arms the thread's run on document `fd`, right after its `FILE_READ` record (`loss_ns`: the
/// last loss time before it; not in a Go target: see [`arm_run`]).
#[inline(always)]
fn start_run(pid_tgid: u64, fd: i32, loss_ns: u64) {
    // A full map only means reads are sent one by one.
    arm_run(&READ_AGG, &READ_AGG_FD, pid_tgid, fd, loss_ns);
}

/// A document fd is being closed by this thread: the run of another thread counting its reads
/// is sent first, with the writes that thread counted (this thread's own go with the close
/// record), and ended.
#[inline(always)]
fn flush_run_of(tgid: u32, fd: i32) {
    let Some(&reader) = (unsafe { READ_AGG_FD.get(&fd_key(tgid, fd)) }) else {
        return;
    };
    if reader == bpf_get_current_pid_tgid() {
        return;
    }
    if let Some(agg) = READ_AGG.get_ptr_mut(&reader) {
        let agg = unsafe { &mut *agg };
        if agg.fd == fd {
            send_reads(reader, agg);
            agg.fd = -1;
            sockets::send_writes_of(reader);
        }
    }
}

/// Fingerprint of the first bytes a document read returned (first iovec): the bytes are hashed
/// here and never leave the kernel.
#[inline(always)]
fn read_fingerprint(stash: &Stash, ret: i64) -> u64 {
    let (buf, buf_len) = sockets::user_buffer(stash);
    let mut n = ret as u64;
    if n > buf_len {
        n = buf_len;
    }
    if n < FP_MIN as u64 {
        return 0;
    }
    if n > FP_BYTES as u64 {
        n = FP_BYTES as u64;
    }
    // Words, not bytes: the hash takes 8 bytes at a time, and the stack slot is then aligned.
    let mut words = core::mem::MaybeUninit::<[u64; FP_WORDS]>::uninit();
    let w = words.as_mut_ptr().cast::<u64>();
    zero_words!(w; 0 1 2 3 4 5 6 7);
    const _: () = assert!(FP_WORDS == 8);
    // The mask keeps the verifier's range for the size within the stack buffer.
    let size = (n as u32) & (FP_BYTES as u32 * 2 - 1);
    let size = if size > FP_BYTES as u32 {
        FP_BYTES as u32
    } else {
        size
    };
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(w.cast(), size, buf as *const _)
    };
    if r != 0 {
        return 0;
    }
    // SAFETY: every word was written above.
    fingerprint_words(unsafe { &*words.as_ptr() }, size as usize)
}

/// close(unsigned int fd): forget the fd, and tell userspace when it was one we follow.
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_target(tgid) {
        on_close(tgid, arg(&ctx, 0) as i32);
    }
    0
}

/// `__x64_sys_close(const struct pt_regs *regs)`, on entry: the fd is only meaningful before
/// the call.
#[fentry(function = "__x64_sys_close")]
pub fn fentry_close(ctx: FEntryContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_target(tgid) {
        let regs: *const u8 = ctx.arg(0);
        on_close(tgid, super::io::regs_arg(regs, 0) as i32);
    }
    0
}

/// A target is closing `fd`: shared by both ways in.
#[inline(always)]
fn on_close(tgid: u32, fd: i32) {
    let record = match forget_fd_kind(tgid, fd) {
        fd_kind::DOCUMENT => {
            flush_run_of(tgid, fd);
            kind::FILE_CLOSE
        }
        fd_kind::SOCKET | fd_kind::TLS => {
            // Another thread's counted writes of the connection precede its close; the next
            // connection with this number uses no span of this one.
            sockets::conn_over(tgid, fd);
            // The next connection with this number is HTTP/2 only if its own preface says so.
            let key = fd_key(tgid, fd);
            if unsafe { H2_CONNS.get(&key) }.is_some() {
                let _ = H2_CONNS.remove(&key);
            }
            kind::SOCK_CLOSE
        }
        _ => return,
    };
    submit::<FdEvent>(|ev| {
        fill_header(&mut ev.header, record);
        ev.fd = fd;
        ev.fd2 = -1;
        ev.ret = 0;
        ev.op = op::CLOSE;
        ev.size = 0;
        ev.fp = 0;
    });
}
