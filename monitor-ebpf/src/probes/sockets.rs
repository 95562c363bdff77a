//! accept/accept4, and bounded captures of socket reads (request heads) and writes (response heads).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated},
    macros::{fexit, tracepoint},
    programs::{FExitContext, TracePointContext},
};
use monitor_common::{
    fd_kind, kind, op,
    sockets::{
        AcceptEvent, CHUNK_MORE, DATA_CAP, DATA_HEADER_LEN, DataEvent, MAX_CAPTURE, MAX_CHUNKS,
        family,
    },
};

use super::{ret, syscall_op};
use crate::maps::{
    BODY_SPANS, CONN_WRITES, ConnWrites, DATA_SCRATCH, H2_CONNS, REQUEST_CAPTURE, RESPONSE_CAPTURE,
    Stash, WRITE_AGG, WRITE_AGG_FD, arm_run, count_call, fd_key, fill_header, flush_counts,
    flush_counts_keeping, global, is_target, last_loss, output_bytes, output_bytes_waking,
    send_reads, send_writes, set_fd_kind, stamp_losses, submit,
};

/// accept(int fd, ...) / accept4(int fd, ..., int flags): the returned fd is a connection.
/// Tracepoint, or (preferred, see the attach table) `fexit` on the syscall function.
#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_target(tgid) {
        on_accept(tgid, ret(&ctx), syscall_op(&ctx));
    }
    0
}

/// `__x64_sys_accept[4](const struct pt_regs *regs)` returned: the new fd is the return value.
macro_rules! fexit_accept {
    ($($program:ident: $function:literal => $op:expr;)*) => {$(
        #[doc = concat!("`", $function, "` returned: see [`on_accept`].")]
        #[fexit(function = $function)]
        pub fn $program(ctx: FExitContext) -> u32 {
            let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            if is_target(tgid) {
                on_accept(tgid, ctx.arg(1), $op);
            }
            0
        }
    )*};
}

fexit_accept! {
    fexit_accept: "__x64_sys_accept" => op::ACCEPT;
    fexit_accept4: "__x64_sys_accept4" => op::ACCEPT4;
}

/// A target's accept returned `fd`: shared by both ways in.
#[inline(always)]
fn on_accept(tgid: u32, fd: i64, op: u32) {
    if fd < 0 {
        return;
    }
    let fd = fd as i32;
    set_fd_kind(tgid, fd, fd_kind::SOCKET);
    conn_over(tgid, fd);
    let (fam, port, addr) = crate::task::fd_peer(fd).unwrap_or((family::UNKNOWN, 0, [0; 16]));
    submit::<AcceptEvent>(|ev| {
        fill_header(&mut ev.header, kind::SOCK_ACCEPT);
        ev.fd = fd;
        ev.family = fam;
        ev.port = port;
        ev.addr = addr;
        ev.op = op;
        ev._pad = 0;
    });
}

/// `struct iovec { void *iov_base; size_t iov_len; }` (uapi).
#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// Offsets of `msg_iov` and `msg_iovlen` in `struct user_msghdr` (uapi: msg_name, msg_namelen,
/// msg_iov, msg_iovlen, ...).
const MSGHDR_IOV: u64 = 16;
const MSGHDR_IOVLEN: u64 = 24;

/// The write of a response body, counted from its head's, that wakes the reader for the body's
/// span: 16 writes of gunicorn's 8 KiB chunks is 128 KiB, past which a body is long enough for
/// its counting to repay the wake-up (see [`send`]).
pub const WAKE_AFTER_WRITES: u64 = 16;

/// Most iovecs of one vectored call whose bytes are captured: a constant bound for the verifier.
/// Servers write a response as a head and a body or two (Node.js's `writev([head, body])`,
/// nginx's header/body chains), so a handful covers what the capture bounds let through.
pub const MAX_IOVECS: u64 = 8;

/// Captures the first bytes of a socket transfer of `ret` bytes, up to the capture bound (for
/// a write on an HTTP/2 connection, [`H2_CONNS`], `MAX_CAPTURE` rather than the configured one). A
/// vectored call (`readv`/`writev`/`recvmsg`/`sendmsg`) is captured across its iovecs in order,
/// into one record of at most `DATA_CAP` bytes, so that a head and a body written together are
/// both seen. A single-buffer transfer is captured in up to `MAX_CHUNKS` chained records of
/// `DATA_CAP` bytes (a request head larger than one record, read at once, is captured whole up
/// to the bound).
#[inline(always)]
pub fn emit_data(stash: &Stash, ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let is_write = op::is_output(stash.op);
    let http2 = is_write && is_http2(stash.fd);
    // Where a plain connection's write starts in its output (TLS plaintext comes from the
    // library's probes, whose bytes are not the socket's).
    let at = if is_write && !op::is_tls(stash.op) {
        advance_offset(tgid, stash.fd, ret as u64)
    } else {
        None
    };
    // What the body span, when there is one, says of this write: inside the body and not
    // completing it, it leaves the thread's run of document reads going.
    let mut in_body = false;
    if let Some((start, floor, _)) = at
        && !http2
        && let Some(span) = unsafe { BODY_SPANS.get(&fd_key(tgid, stash.fd)) }
        && span.start >= floor
    {
        let end = start + ret as u64;
        if start > span.start
            && end <= span.end
            && count_write(pid_tgid, stash, ret, end == span.end)
        {
            return;
        }
        in_body = start + ret as u64 > span.start && end < span.end;
    }
    flush_counts_keeping(pid_tgid, in_body, false);
    flush_writer_of(tgid, stash.fd, pid_tgid);
    let (offset, long_body) = match at {
        Some((start, _, long_body)) => (start, long_body && !http2),
        None => (0, false),
    };
    // Armed before the record goes out (with the loss time before it: a record lost arms a
    // run no write will continue). Here rather than after the capture loop, and the offset
    // written into the scratch once rather than carried through it: 6.1's verifier walks
    // `emit_chunks` once per distinct state it is entered with, and values live across it
    // multiplied those walks past its limit ("BPF program is too large. Processed 1000001
    // insn").
    if offset != 0 && !http2 {
        start_write_run(pid_tgid, stash.fd, last_loss());
    }
    if let Some(scratch) = DATA_SCRATCH.get_ptr_mut(0) {
        unsafe {
            (*scratch).ev.offset = offset;
            (*scratch).wake = u64::from(long_body);
        }
    }
    let mut cap = if is_write {
        if http2 {
            MAX_CAPTURE as u64
        } else {
            global(&RESPONSE_CAPTURE)
        }
    } else {
        global(&REQUEST_CAPTURE)
    };
    if cap > ret as u64 {
        cap = ret as u64;
    }
    let kind = if is_write {
        kind::SOCK_WRITE
    } else {
        kind::SOCK_READ
    };
    match iovecs(stash) {
        Some((iov, count)) => emit_vectored(stash, ret, kind, iov, count, cap),
        None => emit_chunks(stash, ret, kind, cap.min(stash.arg)),
    }
}

/// The offset where a write of `len` bytes on `fd` starts, the connection's floor (see
/// [`ConnWrites`]), and whether it is the [`WAKE_AFTER_WRITES`]th write to continue a response
/// body since its head; the next write starts `len` further. A connection first seen gets a
/// base of 16 times the boot time in ns: offsets of the entry an LRU eviction dropped (or of an earlier
/// connection on the fd) lie below it unless that connection wrote more than 16 bytes per ns
/// of its life, so a span given for them is never used. Not atomic: two threads writing one
/// HTTP/1 connection at the same moment would interleave their bytes anyway; a wrong offset
/// only makes a write sent in full (the span no longer matches) or, at worst, a count of bytes
/// that userspace finds in the wrong write of the same body.
#[inline(always)]
fn advance_offset(tgid: u32, fd: i32, len: u64) -> Option<(u64, u64, bool)> {
    let key = fd_key(tgid, fd);
    if let Some(c) = CONN_WRITES.get_ptr_mut(&key) {
        let c = unsafe { &mut *c };
        let start = c.offset;
        c.offset = start.wrapping_add(len);
        let mut wake = false;
        if c.chain_end != 0 && c.chain_end == start {
            c.chain_end = c.offset;
            c.chain += 1;
            wake = c.chain == WAKE_AFTER_WRITES;
        }
        return Some((start, c.floor, wake));
    }
    let base = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }.wrapping_mul(16) | 1;
    let c = ConnWrites {
        offset: base.wrapping_add(len),
        floor: base,
        chain_end: 0,
        chain: 0,
    };
    CONN_WRITES.insert(&key, &c, 0).ok()?;
    Some((base, base, false))
}

/// A response head went out in the write `ev` (at its `offset`): the write that starts where
/// it ends continues its body (see [`advance_offset`]).
#[inline(always)]
fn note_head_end(ev: &DataEvent) {
    if let Some(c) = CONN_WRITES.get_ptr_mut(&fd_key(ev.header.tgid, ev.fd)) {
        let c = unsafe { &mut *c };
        c.chain_end = ev.offset.wrapping_add(ev.ret as u64);
        c.chain = 0;
    }
}

/// Connection `fd` of `tgid` ends (closed) or begins (accepted): another thread's counted writes
/// of it are sent, and the spans given so far are a former connection's (see [`ConnWrites`]).
#[inline(always)]
pub fn conn_over(tgid: u32, fd: i32) {
    flush_writer_of(tgid, fd, bpf_get_current_pid_tgid());
    if let Some(c) = CONN_WRITES.get_ptr_mut(&fd_key(tgid, fd)) {
        let c = unsafe { &mut *c };
        c.floor = c.offset;
        c.chain_end = 0;
        c.chain = 0;
    }
}

/// Counts a write of the thread's run on `stash.fd`, when the run is armed for that fd (by the
/// thread's last `SOCK_WRITE` of it) and no event was lost since. `last`: the write completes
/// the body: the thread's counts are sent at once and its runs end, as the record of a write
/// would have ended them (the next response is another request's).
#[inline(always)]
fn count_write(pid_tgid: u64, stash: &Stash, ret: i64, last: bool) -> bool {
    if !count_call(&WRITE_AGG, kind::SOCK_WRITE_MORE, pid_tgid, stash, ret) {
        return false;
    }
    if last {
        flush_counts(pid_tgid);
    }
    true
}

/// Arms the thread's run of writes on connection `fd`, right after its `SOCK_WRITE` record
/// (`loss_ns`: the last loss time before it; not in a Go target: see [`arm_run`]).
#[inline(always)]
fn start_write_run(pid_tgid: u64, fd: i32, loss_ns: u64) {
    // A full map only means writes are sent one by one.
    arm_run(&WRITE_AGG, &WRITE_AGG_FD, pid_tgid, fd, loss_ns);
}

/// A record of connection `fd` by thread `me` follows: another thread's counted writes of it
/// (and the document reads that thread counted, which came before them) are sent first, and
/// its run of writes ends.
#[inline(always)]
fn flush_writer_of(tgid: u32, fd: i32, me: u64) {
    let Some(&writer) = (unsafe { WRITE_AGG_FD.get(&fd_key(tgid, fd)) }) else {
        return;
    };
    if writer == me {
        return;
    }
    let Some(agg) = WRITE_AGG.get_ptr_mut(&writer) else {
        return;
    };
    let agg = unsafe { &mut *agg };
    if agg.fd != fd {
        return;
    }
    if agg.calls != 0
        && let Some(reads) = crate::maps::READ_AGG.get_ptr_mut(&writer)
    {
        send_reads(writer, unsafe { &mut *reads });
    }
    send_writes(writer, agg);
    agg.fd = -1;
}

/// Sends the writes thread `pid_tgid` counted (a document it reads is being closed by another
/// thread); its run goes on.
#[inline(always)]
pub fn send_writes_of(pid_tgid: u64) {
    if let Some(agg) = WRITE_AGG.get_ptr_mut(&pid_tgid) {
        let agg = unsafe { &mut *agg };
        if agg.fd >= 0 {
            send_writes(pid_tgid, agg);
        }
    }
}

/// Whether the current process's connection `fd` speaks HTTP/2 (see [`H2_CONNS`]).
#[inline(always)]
fn is_http2(fd: i32) -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    unsafe { H2_CONNS.get(&fd_key(tgid, fd)) }.is_some()
}

/// A read's first record that starts like the HTTP/2 client preface (`PRI `, the rule
/// userspace applies to the same bytes, or looser) marks its connection HTTP/2 for the write
/// captures that follow.
#[inline(always)]
fn note_preface(ev: &DataEvent, n: u64) {
    if ev.header.kind != kind::SOCK_READ || ev.chunk & !CHUNK_MORE != 0 || n < 4 {
        return;
    }
    // Byte by byte: a slice comparison becomes a `memcmp` call, which BPF has not.
    if ev.data[0] != b'P' || ev.data[1] != b'R' || ev.data[2] != b'I' || ev.data[3] != b' ' {
        return;
    }
    let key = fd_key(ev.header.tgid, ev.fd);
    // A mark that did not go in (an LRU map hardly refuses) leaves the writes bounded as
    // usual: userspace sees their frames uncaptured and loses the connection, explicitly.
    if unsafe { H2_CONNS.get(&key) }.is_none() {
        let _ = H2_CONNS.insert(&key, &1, 0);
    }
}

/// One record of a vectored transfer: its iovecs gathered in order, at most `DATA_CAP` bytes.
#[inline(always)]
fn emit_vectored(stash: &Stash, ret: i64, kind: u32, iov: u64, count: u64, cap: u64) {
    let cap = cap.min(DATA_CAP as u64);
    let Some(scratch) = DATA_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let ev = unsafe { &mut (*scratch).ev };
    fill_header(&mut ev.header, kind);
    ev.fd = stash.fd;
    ev.op = stash.op;
    ev.ret = ret;
    ev.chunk = 0;
    let n = capture_iovecs(ev, iov, count, cap);
    ev.captured = n as u32;
    send(ev, n);
}

/// A single-buffer transfer in chained records of at most `DATA_CAP` bytes each, the first
/// `cap` bytes (at most `MAX_CAPTURE`) of `stash.ptr`.
#[inline(always)]
fn emit_chunks(stash: &Stash, ret: i64, kind: u32, cap: u64) {
    let cap = cap.min(MAX_CAPTURE as u64);
    // Each record's offset and length follow from `cap` and its index alone, never from the
    // previous record: with `off += n` the verifier kept every possible `n` apart and gave up
    // ("BPF program is too large. Processed 1000001 insn").
    for i in 0..MAX_CHUNKS {
        let off = (i * DATA_CAP) as u64;
        if i > 0 && off >= cap {
            return;
        }
        let Some(scratch) = DATA_SCRATCH.get_ptr_mut(0) else {
            return;
        };
        let ev = unsafe { &mut (*scratch).ev };
        fill_header(&mut ev.header, kind);
        ev.fd = stash.fd;
        ev.op = stash.op;
        ev.ret = ret;
        let left = cap.saturating_sub(off);
        let more = left > DATA_CAP as u64;
        let want = if more { DATA_CAP as u64 } else { left };
        let n = copy_user(ev, 0, stash.ptr + off, want);
        ev.captured = n as u32;
        ev.chunk = (off as u32) | if more && n > 0 { CHUNK_MORE } else { 0 };
        send(ev, n);
        if !more || n == 0 {
            return;
        }
    }
}

/// Sends `ev` with its first `n` captured bytes (the record is variable-length).
#[inline(always)]
fn send(ev: &mut DataEvent, n: u64) {
    note_preface(ev, n);
    // The 16th write of a body wakes the reader: the span it learns from the head comes back
    // while the rest of a long body is written. Not a head, nor every response: most are one
    // write (a head and its body together), a head and `sendfile`, or a few writes done before
    // any span could come back, and a wake-up costs the server microseconds (in this VM, tens:
    // a wake at each 64 KiB gunicorn body's second write took it from 0.86 to 0.66 of its
    // throughput in the bench).
    let long_body = DATA_SCRATCH
        .get_ptr_mut(0)
        .is_some_and(|s| unsafe { core::mem::replace(&mut (*s).wake, 0) } != 0);
    let head = is_response_head(ev, n);
    if head {
        note_head_end(ev);
    }
    let wake = long_body && !head;
    stamp_losses(&mut ev.header);
    // The size must be bounded at `bpf_ringbuf_output` for 6.1's verifier ("R3 min value is
    // negative, either use unsigned or 'var &= const'" after the iovec loop); the volatile
    // read keeps LLVM from folding the mask and the clamp away (see `copy_user`).
    let n = unsafe { core::ptr::read_volatile(&n) } as usize & (2 * DATA_CAP - 1);
    let n = if n > DATA_CAP { DATA_CAP } else { n };
    let total = DATA_HEADER_LEN + n;
    let bytes =
        unsafe { core::slice::from_raw_parts((ev as *const DataEvent).cast::<u8>(), total) };
    if wake {
        output_bytes_waking(bytes);
    } else {
        output_bytes(bytes);
    }
}

/// A plain connection's write that starts like a response head (`HTTP/`): the writes that
/// continue its body are counted from it, and the [`WAKE_AFTER_WRITES`]th wakes the reader, so
/// that the body span userspace learns comes back while a long body is being written (until it
/// does, the body's writes are sent one by one).
#[inline(always)]
fn is_response_head(ev: &DataEvent, n: u64) -> bool {
    ev.header.kind == kind::SOCK_WRITE
        && ev.offset != 0
        && ev.chunk & !CHUNK_MORE == 0
        && n >= 5
        && ev.data[0] == b'H'
        && ev.data[1] == b'T'
        && ev.data[2] == b'T'
        && ev.data[3] == b'P'
        && ev.data[4] == b'/'
}

/// Copies the iovecs of array `iov` (`count` of them) into `ev.data`, in order, until `cap` bytes
/// are captured; returns the bytes captured. Stops at the first unreadable iovec: what follows
/// it would be captured at the wrong place in the stream.
#[inline(always)]
fn capture_iovecs(ev: &mut DataEvent, iov: u64, count: u64, cap: u64) -> u64 {
    let mut n: u64 = 0;
    let mut i: u64 = 0;
    // A constant trip count the verifier can bound (kernels before 5.3 have no bounded loops,
    // and on 6.1 an open-ended `while` was rejected as "infinite loop detected").
    while i < MAX_IOVECS {
        if i >= count || n >= cap {
            break;
        }
        let v = read_user_iovec(iov + i * core::mem::size_of::<Iovec>() as u64);
        let want = v.len.min(cap - n);
        if want > 0 {
            let got = copy_user(ev, n, v.base, want);
            n += got;
            if got < want {
                break;
            }
        }
        i += 1;
    }
    n
}

/// Copies `len` bytes at user address `src` to `ev.data[at..]`; returns the bytes copied (0 when
/// unreadable). `at + len` stays within `DATA_CAP` by the callers' `cap`; the scratch has a
/// spill area for the verifier's sake (see [`crate::maps::DataScratch`]).
#[inline(always)]
fn copy_user(ev: &mut DataEvent, at: u64, src: u64, len: u64) -> u64 {
    if len == 0 || at >= DATA_CAP as u64 {
        return 0;
    }
    // Masks give the verifier ranges it can check: "invalid access to map value, value_size=...
    // off=... size=..." without them (`at` and `n` each below DATA_CAP, so their sum fits the
    // value with its spill area). LLVM folds them away where a caller's `min` already bounds the
    // length, and 6.1's verifier does not carry that bound across the register copies ("R2 min
    // value is negative, either use unsigned or 'var &= const'" at `bpf_probe_read_user`): the
    // values pass through volatile reads, which LLVM cannot see through, so the masks stay.
    let (at, len) = unsafe {
        (
            core::ptr::read_volatile(&at),
            core::ptr::read_volatile(&len),
        )
    };
    let at = (at as usize) & (DATA_CAP - 1);
    let mut n = (len as u32) & ((DATA_CAP as u32 * 2) - 1);
    if n > DATA_CAP as u32 {
        n = DATA_CAP as u32;
    }
    let r = unsafe {
        generated::bpf_probe_read_user(ev.data.as_mut_ptr().add(at).cast(), n, src as *const _)
    };
    if r != 0 { 0 } else { u64::from(n) }
}

/// For a vectored call (`readv`/`writev`, or a `msghdr`): its iovec array and count.
#[inline(always)]
fn iovecs(stash: &Stash) -> Option<(u64, u64)> {
    if op::is_vectored(stash.op) {
        Some((stash.ptr, stash.arg))
    } else if op::is_msg(stash.op) {
        let iov = read_user_u64(stash.ptr + MSGHDR_IOV)?;
        let count = read_user_u64(stash.ptr + MSGHDR_IOVLEN)?;
        Some((iov, count))
    } else {
        None
    }
}

#[inline(always)]
fn read_user_u64(at: u64) -> Option<u64> {
    let mut v: u64 = 0;
    // Zero-initialised stack targets with the raw helper: the verifier rejected the
    // MaybeUninit-based wrapper here ("R4 !read_ok" on the failure path).
    let r =
        unsafe { generated::bpf_probe_read_user((&mut v as *mut u64).cast(), 8, at as *const _) };
    if r != 0 { None } else { Some(v) }
}

/// User buffer and its length for the stashed syscall ((0, 0) when unreadable); the first iovec
/// of a vectored call (document reads fingerprint their first bytes from it).
#[inline(always)]
pub fn user_buffer(stash: &Stash) -> (u64, u64) {
    match iovecs(stash) {
        Some((iov, _)) => {
            let iov = read_user_iovec(iov);
            (iov.base, iov.len)
        }
        None => (stash.ptr, stash.arg),
    }
}

#[inline(always)]
fn read_user_iovec(ptr: u64) -> Iovec {
    let mut iov = Iovec { base: 0, len: 0 };
    let r = unsafe {
        generated::bpf_probe_read_user(
            (&mut iov as *mut Iovec).cast(),
            core::mem::size_of::<Iovec>() as u32,
            ptr as *const _,
        )
    };
    if r != 0 {
        return Iovec { base: 0, len: 0 };
    }
    iov
}
