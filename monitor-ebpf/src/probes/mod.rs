//! One module per domain. Syscall tracepoint programs are generic over the syscalls they are
//! attached to: each reads `__syscall_nr` and maps it to an `op` through `SYSCALL_OPS`.
pub mod files;
pub mod io;
pub mod mmap;
pub mod process;
pub mod sockets;

use aya_ebpf::programs::TracePointContext;

use crate::maps::{SYSCALL_OPS, TP_ENTER_ARGS, TP_EXIT_RET, TP_SYSCALL_NR, global};

/// Argument slot `i` of a `sys_enter_*` record (slots are 8 bytes wide).
#[inline(always)]
pub fn arg(ctx: &TracePointContext, i: u64) -> u64 {
    unsafe { ctx.read_at::<u64>((global(&TP_ENTER_ARGS) + 8 * i) as usize) }.unwrap_or(0)
}

/// Return value of a `sys_exit_*` record.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    unsafe { ctx.read_at::<i64>(global(&TP_EXIT_RET) as usize) }.unwrap_or(-1)
}

/// `op::*` of the syscall this record belongs to (`op::NONE` if not one we decode).
#[inline(always)]
pub fn syscall_op(ctx: &TracePointContext) -> u32 {
    let nr = unsafe { ctx.read_at::<i32>(global(&TP_SYSCALL_NR) as usize) }.unwrap_or(-1);
    if nr < 0 {
        return 0;
    }
    SYSCALL_OPS.get(nr as u32).copied().unwrap_or(0)
}
