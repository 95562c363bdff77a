//! accept/accept4, and bounded captures of socket reads (request heads) and writes (response heads).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated},
    macros::tracepoint,
    programs::TracePointContext,
};
use monitor_common::{
    fd_kind,
    files::FdEvent,
    kind, op,
    sockets::{CHUNK_MORE, DATA_CAP, DATA_HEADER_LEN, MAX_CAPTURE, MAX_CHUNKS},
};

use super::{ret, syscall_op};
use crate::maps::{
    DATA_SCRATCH, REQUEST_CAPTURE, RESPONSE_CAPTURE, Stash, fill_header, global, is_target,
    output_bytes, set_fd_kind, submit,
};

/// accept(int fd, ...) / accept4(int fd, ..., int flags): the returned fd is a connection.
#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_target(tgid) {
        return 0;
    }
    let fd = ret(&ctx);
    if fd < 0 {
        return 0;
    }
    let fd = fd as i32;
    set_fd_kind(tgid, fd, fd_kind::SOCKET);
    let op = syscall_op(&ctx);
    submit::<FdEvent>(|ev| {
        fill_header(&mut ev.header, kind::SOCK_ACCEPT);
        ev.fd = fd;
        ev.fd2 = -1;
        ev.ret = 0;
        ev.op = op;
        ev._pad = 0;
        ev.fp = 0;
    });
    0
}

/// `struct iovec { void *iov_base; size_t iov_len; }` (uapi).
#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// Offset of `msg_iov` in `struct user_msghdr` (uapi: msg_name, msg_namelen, msg_iov, ...).
const MSGHDR_IOV: u64 = 16;

/// Captures the first bytes of a socket transfer of `ret` bytes, in records of at most
/// `DATA_CAP` bytes (a request head larger than one record, read at once, is captured whole up
/// to the bound). For vectored I/O the capture comes from the first iovec only.
#[inline(always)]
pub fn emit_data(stash: &Stash, ret: i64) {
    let (buf, buf_len) = user_buffer(stash);
    let is_write = op::is_output(stash.op);
    let mut cap = if is_write {
        global(&RESPONSE_CAPTURE)
    } else {
        global(&REQUEST_CAPTURE)
    };
    if cap > ret as u64 {
        cap = ret as u64;
    }
    if cap > buf_len {
        cap = buf_len;
    }
    if cap > MAX_CAPTURE as u64 {
        cap = MAX_CAPTURE as u64;
    }
    let kind = if is_write {
        kind::SOCK_WRITE
    } else {
        kind::SOCK_READ
    };
    // Each record's offset and length follow from `cap` and its index alone, never from the
    // previous record: with `off += n` the verifier kept every possible `n` apart and gave up
    // ("BPF program is too large. Processed 1000001 insn").
    for i in 0..MAX_CHUNKS {
        let off = (i * DATA_CAP) as u64;
        if i > 0 && off >= cap {
            return;
        }
        let Some(ev) = DATA_SCRATCH.get_ptr_mut(0) else {
            return;
        };
        let ev = unsafe { &mut *ev };
        fill_header(&mut ev.header, kind);
        ev.fd = stash.fd;
        ev.op = stash.op;
        ev.ret = ret;
        let left = cap.saturating_sub(off);
        let more = left > DATA_CAP as u64;
        let mut n = if more { DATA_CAP as u32 } else { left as u32 };
        if n > 0 {
            // The explicit bound keeps the verifier's range for `n` within the scratch value.
            n &= (DATA_CAP as u32 * 2) - 1;
            if n > DATA_CAP as u32 {
                n = DATA_CAP as u32;
            }
            let r = unsafe {
                generated::bpf_probe_read_user(
                    ev.data.as_mut_ptr().cast(),
                    n,
                    (buf + off) as *const _,
                )
            };
            if r != 0 {
                n = 0;
            }
        }
        ev.captured = n;
        ev.chunk = (off as u32) | if more && n > 0 { CHUNK_MORE } else { 0 };
        let total = DATA_HEADER_LEN + n as usize;
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (ev as *const monitor_common::sockets::DataEvent).cast::<u8>(),
                total,
            )
        };
        output_bytes(bytes);
        if !more || n == 0 {
            return;
        }
    }
}

/// User buffer and its length for the stashed syscall ((0, 0) when unreadable).
#[inline(always)]
pub fn user_buffer(stash: &Stash) -> (u64, u64) {
    if op::is_vectored(stash.op) {
        let iov = read_user_iovec(stash.ptr);
        (iov.base, iov.len)
    } else if op::is_msg(stash.op) {
        let mut iov_ptr: u64 = 0;
        // Zero-initialised stack targets with the raw helper: the verifier rejected the
        // MaybeUninit-based wrapper here ("R4 !read_ok" on the failure path).
        let r = unsafe {
            generated::bpf_probe_read_user(
                (&mut iov_ptr as *mut u64).cast(),
                8,
                (stash.ptr + MSGHDR_IOV) as *const _,
            )
        };
        if r != 0 {
            return (0, 0);
        }
        let iov = read_user_iovec(iov_ptr);
        (iov.base, iov.len)
    } else {
        (stash.ptr, stash.arg)
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
