//! What Vigie learns of a process it adopts (from `/proc`: the process itself, the fds it
//! already holds, its runtime) put in its place among the kernel's events.
//!
//! The kernel reports a process from the moment it becomes a target; `/proc` is read just after,
//! while the process goes on. The ring buffer then holds events older than that scan, which the
//! reader has not seen yet. Fed at once, the scan would come before them: an fd the scan found
//! naming document Y, while the events still in the ring say it named X until it was closed and
//! reopened, would make the reads of X reads of Y. So the adoption's events wait here and go in
//! by time: the process's own (`process_exec`, its runtime) as of the moment it became a target,
//! before any kernel event of it; the fds as of the end of the scan, after every kernel event
//! older than that, and only those fds no kernel event opened, closed or accepted during the
//! scan (their kernel events say what they are; what the scan read of them may be older or newer
//! than that).
use std::collections::{HashSet, VecDeque};

use monitor_core::events::{Event, EventKind};

/// How long an adoption event waits for the kernel's events of before its time, when none
/// newer has come: a record is stamped before it is written, and written within microseconds.
pub const GRACE_NS: u64 = 20_000_000;

#[derive(Default)]
pub struct Adoptions {
    /// In time order (each adoption pushes its events with non-decreasing times).
    waiting: VecDeque<Event>,
    /// (pid, fd) whose `FdFound` no longer holds: the kernel reported the fd during the scan.
    touched: HashSet<(u32, i32)>,
}

impl Adoptions {
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Queues one event of an adoption; `ts_ns` says when it holds.
    pub fn push(&mut self, ev: Event) {
        self.waiting.push_back(ev);
    }

    /// Takes note of a kernel event (before it is passed on), and appends to `out` the adoption
    /// events that go before it.
    pub fn before(&mut self, ev: &Event, out: &mut Vec<Event>) {
        self.release(ev.ts_ns, out);
        let fd = match &ev.kind {
            EventKind::FileOpen { fd, .. }
            | EventKind::FileClose { fd }
            | EventKind::SockAccept { fd, .. }
            | EventKind::SockClose { fd } => *fd,
            _ => return,
        };
        let scanned = self.waiting.iter().any(|w| {
            w.pid == ev.pid && matches!(&w.kind, EventKind::FdFound { fd: f, .. } if *f == fd)
        });
        if scanned {
            self.touched.insert((ev.pid, fd));
        }
    }

    /// Appends to `out` the adoption events that hold at `ts_ns` or before.
    pub fn release(&mut self, ts_ns: u64, out: &mut Vec<Event>) {
        while self.waiting.front().is_some_and(|w| w.ts_ns <= ts_ns) {
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            if let EventKind::FdFound { fd, .. } = &w.kind
                && self.touched.remove(&(w.pid, *fd))
            {
                continue;
            }
            out.push(w);
        }
        if self.waiting.is_empty() {
            self.touched.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use monitor_core::events::{Comm, FoundFd};

    use super::*;

    fn ev(ts_ns: u64, kind: EventKind) -> Event {
        Event {
            ts_ns,
            pid: 7,
            tid: 8,
            comm: Comm::default(),
            goid: None,
            kind,
        }
    }

    fn found(ts: u64, fd: i32, path: &str) -> Event {
        ev(
            ts,
            EventKind::FdFound {
                fd,
                found: FoundFd::Document { path: path.into() },
            },
        )
    }

    fn kinds(out: &[Event]) -> Vec<String> {
        out.iter()
            .map(|e| format!("{}:{}", e.ts_ns, crate::run::kind_name(&e.kind)))
            .collect()
    }

    #[test]
    fn scanned_fds_go_after_older_kernel_events_and_only_when_untouched() {
        let mut a = Adoptions::default();
        a.push(ev(10, EventKind::ProcessExec));
        a.push(found(20, 5, "/docs/a"));
        a.push(found(20, 6, "/docs/b"));
        let mut out = Vec::new();
        // A read of fd 5 before the scan ended, then its close and a reopen: the scan's fd 5
        // is not trusted (it may name the file before or after).
        for k in [
            ev(
                12,
                EventKind::FileRead {
                    fd: 5,
                    bytes: 1,
                    fp: None,
                    size: None,
                },
            ),
            ev(13, EventKind::FileClose { fd: 5 }),
        ] {
            a.before(&k, &mut out);
            out.push(k);
        }
        assert_eq!(
            kinds(&out),
            ["10:process_exec", "12:file_read", "13:file_close"]
        );
        let later = ev(25, EventKind::Tick);
        a.before(&later, &mut out);
        assert_eq!(kinds(&out)[3..], ["20:fd_found"]);
        assert!(matches!(out[3].kind, EventKind::FdFound { fd: 6, .. }));
        assert!(a.is_empty());
    }

    #[test]
    fn waiting_events_are_released_by_time_alone() {
        let mut a = Adoptions::default();
        a.push(ev(10, EventKind::ProcessExec));
        a.push(found(20, 5, "/docs/a"));
        let mut out = Vec::new();
        a.release(15, &mut out);
        assert_eq!(kinds(&out), ["10:process_exec"]);
        a.release(u64::MAX, &mut out);
        assert_eq!(kinds(&out), ["10:process_exec", "20:fd_found"]);
    }
}
