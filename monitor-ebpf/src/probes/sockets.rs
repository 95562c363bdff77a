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
    DATA_SCRATCH, H2_CONNS, REQUEST_CAPTURE, RESPONSE_CAPTURE, Stash, fd_key, fill_header,
    flush_reads, global, is_target, output_bytes, set_fd_kind, stamp_losses, submit,
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
    flush_reads(bpf_get_current_pid_tgid());
    let is_write = op::is_output(stash.op);
    let mut cap = if is_write {
        if is_http2(stash.fd) {
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
    stamp_losses(&mut ev.header);
    // The size must be bounded at `bpf_ringbuf_output` for 6.1's verifier ("R3 min value is
    // negative, either use unsigned or 'var &= const'" after the iovec loop); the volatile
    // read keeps LLVM from folding the mask and the clamp away (see `copy_user`).
    let n = unsafe { core::ptr::read_volatile(&n) } as usize & (2 * DATA_CAP - 1);
    let n = if n > DATA_CAP { DATA_CAP } else { n };
    let total = DATA_HEADER_LEN + n;
    let bytes =
        unsafe { core::slice::from_raw_parts((ev as *const DataEvent).cast::<u8>(), total) };
    output_bytes(bytes);
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
