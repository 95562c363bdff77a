//! One module per domain. Syscall tracepoint programs are generic over the syscalls they are
//! attached to: each reads `__syscall_nr` and maps it to an `op` through `SYSCALL_OPS`.
pub mod files;
pub mod io;
pub mod mmap;
pub mod process;
pub mod sockets;
pub mod tls;

use aya_ebpf::{EbpfContext as _, programs::TracePointContext};

use crate::maps::{SYSCALL_OPS, TP_ENTER_ARGS, TP_EXIT_RET, TP_SYSCALL_NR, global};

/// Argument slot `i` of a `sys_enter_*` record (slots are 8 bytes wide).
#[inline(always)]
pub fn arg(ctx: &TracePointContext, i: u64) -> u64 {
    field(ctx, global(&TP_ENTER_ARGS) + 8 * i).unwrap_or(0)
}

/// Return value of a `sys_exit_*` record.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    field(ctx, global(&TP_EXIT_RET)).map_or(-1, |v| v as i64)
}

/// `op::*` of the syscall this record belongs to (`op::NONE` if not one we decode).
#[inline(always)]
pub fn syscall_op(ctx: &TracePointContext) -> u32 {
    let off = global(&TP_SYSCALL_NR);
    let nr = if off == 8 {
        // See `field`: the usual layout, read directly.
        unsafe { *(ctx.as_ptr() as *const u8).add(8).cast::<i32>() }
    } else {
        unsafe { ctx.read_at::<i32>(off as usize) }.unwrap_or(-1)
    };
    if nr < 0 {
        return 0;
    }
    SYSCALL_OPS.get(nr as u32).copied().unwrap_or(0)
}

/// The 8-byte field at `off` of a tracepoint record (offsets come from tracefs `format` files).
/// The verifier only lets a program load from its context at constant offsets, so the offsets
/// every syscall tracepoint has had since Linux 2.6 (`__syscall_nr` at 8, argument slots from
/// 16, `ret` at 16) are loaded directly, and only another layout goes through
/// `bpf_probe_read_kernel`: a helper call per field cost ~30 ns each on a hot path run for
/// every read and write of a target. `off` is a load-time constant, so the verifier keeps one
/// branch only.
#[inline(always)]
pub fn field(ctx: &TracePointContext, off: u64) -> Option<u64> {
    macro_rules! direct {
        ($($o:literal)*) => {
            match off {
                $($o => return Some(unsafe { *(ctx.as_ptr() as *const u8).add($o).cast::<u64>() }),)*
                _ => {}
            }
        };
    }
    direct!(16 24 32 40 48 56 64);
    unsafe { ctx.read_at::<u64>(off as usize) }.ok()
}
