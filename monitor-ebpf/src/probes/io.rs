//! read/pread64/readv/preadv/recvfrom/recvmsg, write/writev/sendto/sendmsg and sendfile64:
//! classify the fd at entry, stash the arguments, decode at exit when the byte count is known.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use monitor_common::{fd_kind, op};

use super::{arg, files, ret, sockets, syscall_op};
use crate::{
    maps::{FD_KIND, Stash, fd_key, is_target, set_fd_kind, stash_put, stash_take},
    task::{S_IFMT, S_IFSOCK, fd_mode},
};

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
