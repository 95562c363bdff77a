//! Following targets: exec of a selected program name, fork of a target, exit of a target or of
//! one of its threads.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use monitor_common::{kind, process::ProcEvent};

use crate::{
    maps::{
        OFF_TASK_PID, OFF_TASK_TGID, READ_AGG, STASH, TARGET_COMMS, TLS_CALLS, WRITE_AGG,
        fill_header, flush_counts, global, is_target, set_target, submit,
    },
    task::read,
};

/// sched_process_exec: runs in the new program, so `comm` is already the new name.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Ok(comm) = bpf_get_current_comm() else {
        return 0;
    };
    let selected = unsafe { TARGET_COMMS.get(&comm).is_some() };
    if !selected && !is_target(tgid) {
        return 0;
    }
    set_target(tgid, true);
    emit(kind::PROCESS_EXEC, 0, 0);
    0
}

/// Raw tracepoint `sched_process_fork(struct task_struct *parent, struct task_struct *child)`,
/// run in the parent. Raw, so the child's tgid is read from its task_struct (BTF offsets) and
/// thread creation can be told apart from a new process.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_target(tgid) {
        return 0;
    }
    let child: *const u8 = ctx.arg(1);
    let (Some(child_tgid), Some(child_pid)) = (unsafe {
        (
            read::<i32>(child, global(&OFF_TASK_TGID)),
            read::<i32>(child, global(&OFF_TASK_PID)),
        )
    }) else {
        return 0;
    };
    let child_tgid = child_tgid as u32;
    if child_tgid == tgid {
        return 0; // a new thread of a target: already covered by its tgid
    }
    set_target(child_tgid, true);
    emit(kind::PROCESS_FORK, child_tgid, child_pid as u32);
    0
}

/// sched_process_exit, run by every exiting thread: when the thread-group leader of a target
/// exits, stop following it. Any other thread of a target is reported too, so that userspace
/// forgets what it kept for that thread (thread-per-connection servers end a thread per
/// connection).
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // Before the target check: a thread that exits after its leader (no longer a target then)
    // still had an entry. Looked up first: a delete takes the bucket's lock even for a key that
    // is not there, which is every other task's exit on the host.
    if unsafe { TLS_CALLS.get(&pid_tgid) }.is_some() {
        let _ = TLS_CALLS.remove(&pid_tgid);
    }
    if unsafe { STASH.get(&pid_tgid) }.is_some() {
        let _ = STASH.remove(&pid_tgid);
    }
    // Its counted document reads and response writes go before its exit record (and are sent
    // even for a thread that outlives its leader).
    let reads = unsafe { READ_AGG.get(&pid_tgid) }.is_some();
    let writes = unsafe { WRITE_AGG.get(&pid_tgid) }.is_some();
    if reads || writes {
        flush_counts(pid_tgid);
    }
    if reads {
        let _ = READ_AGG.remove(&pid_tgid);
    }
    if writes {
        let _ = WRITE_AGG.remove(&pid_tgid);
    }
    if !is_target(tgid) {
        return 0;
    }
    if pid_tgid as u32 != tgid {
        emit(kind::THREAD_EXIT, 0, 0);
        return 0;
    }
    set_target(tgid, false);
    emit(kind::PROCESS_EXIT, 0, 0);
    0
}

#[inline(always)]
fn emit(record: u32, child_tgid: u32, child_tid: u32) {
    submit::<ProcEvent>(|ev| {
        fill_header(&mut ev.header, record);
        ev.child_tgid = child_tgid;
        ev.child_tid = child_tid;
    });
}
