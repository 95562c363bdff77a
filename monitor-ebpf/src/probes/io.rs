//! read/pread64/readv/preadv/recvfrom/recvmsg, write/writev/sendto/sendmsg and sendfile64:
//! classify the fd ([`watch`]) and decode once the byte count is known ([`emit`]). Two ways in,
//! chosen by the attach table: `fexit` on each syscall function, which has the arguments and the
//! return value in one program, or the `sys_enter`/`sys_exit` tracepoints, which stash the
//! arguments between the two (the fallback where BTF programs cannot run).
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{fexit, tracepoint},
    programs::{FExitContext, TracePointContext},
};
use monitor_common::{fd_kind, op};

use super::{arg, files, ret, sockets, syscall_op};
use crate::{
    maps::{
        FD_KIND, OFF_REGS_ARG0, OFF_REGS_ARG1, OFF_REGS_ARG2, OFF_REGS_ARG3, Stash, TLS_CALLS,
        TP_ENTER_ARGS, fd_key, global, is_target, set_fd_kind, stash_put, stash_take,
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
    if !is_target((pid_tgid >> 32) as u32) {
        return;
    }
    let op = syscall_op(ctx);
    let flags = || match op {
        op::RECVFROM => arg_read(ctx, 3),
        op::RECVMSG => arg(ctx, 2),
        _ => 0,
    };
    if let Some(stash) = watch(pid_tgid, op, arg(ctx, 0), arg(ctx, 1), arg(ctx, 2), flags) {
        stash_put(pid_tgid, &stash);
    }
}

#[inline(always)]
fn try_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(stash) = stash_take(pid_tgid) else {
        return;
    };
    emit(&stash, ret(ctx));
}

/// The enter side, shared by the tracepoints and the BTF programs: whether a target's call
/// `op(a0, a1, a2, ...)` is one Vigie decodes, and then what its exit needs. `flags` gives the
/// `MSG_*` flags of a `recvfrom`/`recvmsg` (read only for a socket read).
#[inline(always)]
pub fn watch(
    pid_tgid: u64,
    op: u32,
    a0: u64,
    a1: u64,
    a2: u64,
    flags: impl FnOnce() -> u64,
) -> Option<Stash> {
    let tgid = (pid_tgid >> 32) as u32;
    let fd = a0 as i32;
    let (kind, fd2) = if op == op::SENDFILE64 {
        // sendfile(out_fd, in_fd, ...): only document -> anything matters.
        let in_fd = a1 as i32;
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
            return None;
        }
        if kind == fd_kind::TLS {
            return None;
        }
        // A peek leaves the bytes for the read that follows (nginx peeks at the first byte of
        // an `ssl` connection to tell TLS from plain HTTP): capturing it would see them twice,
        // and a TLS peek is ciphertext.
        if matches!(op, op::RECVFROM | op::RECVMSG) && flags() & MSG_PEEK != 0 {
            return None;
        }
    }
    let wanted = match kind {
        fd_kind::DOCUMENT => !op::is_output(op),
        fd_kind::SOCKET => op != op::SENDFILE64,
        _ => false,
    };
    if !wanted || op == op::NONE {
        return None;
    }
    Some(Stash {
        op,
        kind: kind as u32,
        fd,
        fd2,
        ptr: a1,
        arg: a2,
    })
}

/// The exit side, shared: the call of `stash` returned `ret`.
#[inline(always)]
pub fn emit(stash: &Stash, ret: i64) {
    if ret <= 0 {
        return;
    }
    match stash.kind as u8 {
        fd_kind::DOCUMENT => files::emit_io(stash, ret),
        fd_kind::SOCKET => sockets::emit_data(stash, ret),
        _ => {}
    }
}

/// Argument `i` (0-3) of the syscall whose `struct pt_regs *` a BTF program got. The register
/// offsets come from BTF; the x86-64 ones (`di`, `si`, `dx`, `r10`) are loaded directly, a
/// load from a BTF-typed pointer at a constant offset, and any other goes through
/// `bpf_probe_read_kernel` (one helper call per argument). `off` is a load-time constant, so
/// the verifier keeps one branch only.
#[inline(always)]
pub fn regs_arg(regs: *const u8, i: u64) -> u64 {
    let off = match i {
        0 => global(&OFF_REGS_ARG0),
        1 => global(&OFF_REGS_ARG1),
        2 => global(&OFF_REGS_ARG2),
        _ => global(&OFF_REGS_ARG3),
    };
    macro_rules! direct {
        ($($o:literal)*) => {
            match off {
                $($o => return unsafe { *regs.add($o).cast::<u64>() },)*
                _ => {}
            }
        };
    }
    direct!(112 104 96 56);
    unsafe { bpf_probe_read_kernel(regs.wrapping_add(off as usize).cast::<u64>()) }.unwrap_or(0)
}

/// A BTF program on the return of a syscall function (`__x64_sys_<name>(const struct pt_regs
/// *regs)`): its arguments and its return value in one program, so no stash and no second
/// program. `ret` is the context's slot after the one argument.
#[inline(always)]
fn on_syscall_exit(ctx: &FExitContext, op: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return;
    }
    // A failed call still goes through `watch`, as its `sys_enter` would: inside a TLS library
    // call, even a read that would block teaches the call its socket.
    let ret: i64 = ctx.arg(1);
    let regs: *const u8 = ctx.arg(0);
    let flags = || match op {
        op::RECVFROM => regs_arg(regs, 3),
        op::RECVMSG => regs_arg(regs, 2),
        _ => 0,
    };
    if let Some(stash) = watch(
        pid_tgid,
        op,
        regs_arg(regs, 0),
        regs_arg(regs, 1),
        regs_arg(regs, 2),
        flags,
    ) {
        emit(&stash, ret);
    }
}

/// One `fexit` program per syscall function (a BTF program is loaded against one kernel
/// function). The loader gives each its function from the attach table; the name in the
/// section is for readers of the object.
macro_rules! fexit_io {
    ($($program:ident: $function:literal => $op:expr;)*) => {$(
        #[doc = concat!("`", $function, "` returned: see [`on_syscall_exit`].")]
        #[fexit(function = $function)]
        pub fn $program(ctx: FExitContext) -> u32 {
            on_syscall_exit(&ctx, $op);
            0
        }
    )*};
}

fexit_io! {
    fexit_read: "__x64_sys_read" => op::READ;
    fexit_pread64: "__x64_sys_pread64" => op::PREAD64;
    fexit_readv: "__x64_sys_readv" => op::READV;
    fexit_preadv: "__x64_sys_preadv" => op::PREADV;
    fexit_recvfrom: "__x64_sys_recvfrom" => op::RECVFROM;
    fexit_recvmsg: "__x64_sys_recvmsg" => op::RECVMSG;
    fexit_write: "__x64_sys_write" => op::WRITE;
    fexit_writev: "__x64_sys_writev" => op::WRITEV;
    fexit_sendto: "__x64_sys_sendto" => op::SENDTO;
    fexit_sendmsg: "__x64_sys_sendmsg" => op::SENDMSG;
    fexit_sendfile64: "__x64_sys_sendfile64" => op::SENDFILE64;
}
