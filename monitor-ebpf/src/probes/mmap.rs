//! mmap(unsigned long addr, unsigned long len, unsigned long prot, unsigned long flags,
//!      unsigned long fd, unsigned long off)
//!
//! A document mapped readable is a document read: servers map a file and write from the mapping
//! (PHP's `readfile()`, many static servers), with no `read(2)` to see. Only document fds of
//! targets count, known from `FD_KIND` (set at open, or by userspace for inherited and found
//! fds): one lookup, no walk of the task's file table. The record is emitted at exit, when the
//! mapping is known to exist; the fd may be closed right after while the mapping is served.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use monitor_common::{fd_kind, files::FdEvent, kind, op};

use super::ret;
use crate::maps::{
    FD_KIND, Stash, TP_MMAP_FD, TP_MMAP_LEN, TP_MMAP_PROT, fd_key, fill_header, global, is_target,
    stash_put, stash_take_if, submit,
};

/// `PROT_READ` (uapi asm-generic/mman-common.h).
const PROT_READ: u64 = 1;
/// `PROT_EXEC`.
const PROT_EXEC: u64 = 4;

/// A `sys_enter_mmap` field at an offset from the tracefs format file.
#[inline(always)]
fn field(ctx: &TracePointContext, offset: &'static u64) -> u64 {
    super::field(ctx, global(offset)).unwrap_or(0)
}

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_target(tgid) {
        return 0;
    }
    // The slot is 8 bytes; the fd is an int (anonymous mappings pass -1).
    let fd = field(&ctx, &TP_MMAP_FD) as i32;
    if fd < 0 {
        return 0;
    }
    let prot = field(&ctx, &TP_MMAP_PROT);
    if prot & PROT_EXEC != 0 {
        // Code coming in (the dynamic loader, `dlopen`): userspace looks for a TLS library
        // to hook in the process's maps. Rare after start-up, so sent at entry, unfiltered.
        submit::<FdEvent>(|ev| {
            fill_header(&mut ev.header, kind::CODE_MAP);
            ev.fd = fd;
            ev.fd2 = -1;
            ev.ret = 0;
            ev.op = op::MMAP;
            ev.size = 0;
            ev.fp = 0;
        });
        return 0;
    }
    let Some(&kind) = (unsafe { FD_KIND.get(&fd_key(tgid, fd)) }) else {
        return 0;
    };
    if kind != fd_kind::DOCUMENT || prot & PROT_READ == 0 {
        return 0;
    }
    let stash = Stash {
        op: op::MMAP,
        kind: u32::from(kind),
        fd,
        fd2: -1,
        ptr: 0,
        arg: field(&ctx, &TP_MMAP_LEN),
    };
    stash_put(pid_tgid, &stash);
    0
}

#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Only what sys_enter_mmap stashed (never another syscall's leftover).
    let Some(stash) = stash_take_if(pid_tgid, op::MMAP) else {
        return 0;
    };
    // MAP_FAILED: the syscall returns -errno. User addresses are positive.
    if ret(&ctx) < 0 {
        return 0;
    }
    submit::<FdEvent>(|ev| {
        fill_header(&mut ev.header, kind::FILE_MAP);
        ev.fd = stash.fd;
        ev.fd2 = -1;
        ev.ret = stash.arg as i64;
        ev.op = op::MMAP;
        ev.size = 0;
        // No bytes of a mapping are seen: no fingerprint.
        ev.fp = 0;
    });
    0
}
