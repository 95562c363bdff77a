//! Target processes: `exec` of a selected program, `fork` of a target, exit of a process or of
//! one of its threads.
use crate::Header;

/// `kind::PROCESS_EXEC`, `kind::PROCESS_FORK` (header = parent, `child_*` = the new process),
/// `kind::PROCESS_EXIT` (the thread-group leader exited), `kind::THREAD_EXIT` (another thread of
/// a target exited).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    pub header: Header,
    pub child_tgid: u32,
    pub child_tid: u32,
}
const _: () = assert!(core::mem::size_of::<ProcEvent>() == 64);
