//! read/pread64/readv/preadv/recvfrom/recvmsg, write/writev/sendto/sendmsg and sendfile64:
//! classify the fd at entry, stash the arguments, decode at exit when the byte count is known.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use monitor_common::{fd_kind, op};

use super::{arg, files, ret, sockets, syscall_op};
use crate::{
    maps::{
        FD_KIND, Stash, TLS_CALLS, TP_ENTER_ARGS, fd_key, global, is_target, set_fd_kind,
        stash_put, stash_take,
    },
    task::{S_IFMT, S_IFSOCK, fd_mode},
};

/// `MSG_PEEK` (uapi linux/socket.h).
const MSG_PEEK: u64 = 2;

#[tracepoint]
pub fn sys_enter_io(ctx: TracePointContext) -> u32 {
    try_enter(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_io(ctx: TracePointContext) -> u32 {
    try_exit(&ctx);
    0
}

/// Kind of `fd` in process `tgid`; an fd never seen before is classified once from its inode
/// (sockets accepted before Vigie started, sockets inherited over fork, client sockets).
#[inline(always)]
pub fn fd_kind_of(tgid: u32, fd: i32) -> u8 {
    if let Some(&kind) = unsafe { FD_KIND.get(&fd_key(tgid, fd)) }
        && kind != fd_kind::UNKNOWN
    {
        return kind;
    }
    match fd_mode(fd) {
        Some(mode) => {
            let kind = if mode & S_IFMT == S_IFSOCK {
                fd_kind::SOCKET
            } else {
                fd_kind::OTHER
            };
            set_fd_kind(tgid, fd, kind);
            kind
        }
        None => fd_kind::OTHER,
    }
}

/// Argument slot `i` read with a helper rather than a context load: this program is also
/// attached to 3-argument syscalls, and the kernel refuses to link a program whose context
/// loads reach past a tracepoint's record (`bpf_link_create`: EACCES, from
/// `perf_event_set_bpf_prog`'s `max_ctx_offset` check).
#[inline(always)]
fn arg_read(ctx: &TracePointContext, i: u64) -> u64 {
    let off = global(&TP_ENTER_ARGS) + 8 * i;
    unsafe {
        bpf_probe_read_kernel((ctx.as_ptr() as *const u8).wrapping_add(off as usize) as *const u64)
    }
    .unwrap_or(0)
}

#[inline(always)]
fn try_enter(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_target(tgid) {
        return;
    }
    let op = syscall_op(ctx);
    let fd = arg(ctx, 0) as i32;
    let (kind, fd2) = if op == op::SENDFILE64 {
        // sendfile(out_fd, in_fd, ...): only document -> anything matters.
        let in_fd = arg(ctx, 1) as i32;
        (fd_kind_of(tgid, in_fd), in_fd)
    } else {
        (fd_kind_of(tgid, fd), -1)
    };
    if (kind == fd_kind::SOCKET || kind == fd_kind::TLS) && op != op::SENDFILE64 {
        // Inside a TLS library call this is the call's own ciphertext: the call learns its
        // socket, and the plaintext comes from its return probe (`tls`). Outside one, a TLS
        // socket's bytes (a shutdown alert, say) are ciphertext too: never captured.
        if let Some(call) = TLS_CALLS.get_ptr_mut(&pid_tgid)
            && unsafe { (*call).op } != op::NONE
        {
            unsafe { (*call).fd = fd };
            if kind != fd_kind::TLS {
                set_fd_kind(tgid, fd, fd_kind::TLS);
            }
            return;
        }
        if kind == fd_kind::TLS {
            return;
        }
        // A peek leaves the bytes for the read that follows (nginx peeks at the first byte of
        // an `ssl` connection to tell TLS from plain HTTP): capturing it would see them twice,
        // and a TLS peek is ciphertext.
        let flags = match op {
            op::RECVFROM => arg_read(ctx, 3),
            op::RECVMSG => arg(ctx, 2),
            _ => 0,
        };
        if flags & MSG_PEEK != 0 {
            return;
        }
    }
    let wanted = match kind {
        fd_kind::DOCUMENT => !op::is_output(op),
        fd_kind::SOCKET => op != op::SENDFILE64,
        _ => false,
    };
    if !wanted || op == op::NONE {
        return;
    }
    let stash = Stash {
        op,
        kind: kind as u32,
        fd,
        fd2,
        ptr: arg(ctx, 1),
        arg: arg(ctx, 2),
    };
    stash_put(pid_tgid, &stash);
}

#[inline(always)]
fn try_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(stash) = stash_take(pid_tgid) else {
        return;
    };
    let ret = ret(ctx);
    if ret <= 0 {
        return;
    }
    match stash.kind as u8 {
        fd_kind::DOCUMENT => files::emit_io(&stash, ret),
        fd_kind::SOCKET => sockets::emit_data(&stash, ret),
        _ => {}
    }
}
