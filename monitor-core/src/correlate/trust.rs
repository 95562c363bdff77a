//! Trust in thread scope, earned per process (DESIGN.md §4).
//!
//! Thread scope ("this read happened on the thread that read request R's head, so it is R's")
//! is a presumption that holds only where a process serves one request at a time per OS thread.
//! Runtimes that multiplex requests over threads (Go's goroutines, Node.js's event loop and
//! libuv pool, JVM virtual threads) break it, and a broken presumption names the wrong user.
//! So a process keeps thread scope only until the first sign that it schedules M:N, and loses it
//! for good (until it execs another program). Its reads then need evidence that names the
//! request: `sendfile` to the connection, or content.
//!
//! This is the whole rule, kept small on purpose: other evidence (e.g. a goroutine id read by
//! uprobes on the Go runtime) builds on [`ScopeTrust::trusts`] rather than around it.
use serde::Serialize;

use crate::{events::Runtime, idmap::IdMap};

/// Why a process lost thread scope: the first sign of M:N scheduling seen in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Distrust {
    /// Its program runs on a runtime recognised at exec.
    Runtime(Runtime),
    /// A thread read a request head while another request it had read, on another
    /// connection, still waited for its response: it serves several requests at once.
    Interleaved,
    /// A request's events came from several threads: its response was written, or a document
    /// read for it was closed, by a thread other than the one that read its head.
    SplitRequest,
    /// A request head was read on a JVM virtual-thread carrier (`ForkJoinPool-*` threads).
    VirtualThreads,
}

/// Per process: trusted (thread scope usable) unless a [`Distrust`] was recorded.
#[derive(Debug, Default)]
pub struct ScopeTrust {
    lost: IdMap<u32, Distrust>,
}

impl ScopeTrust {
    /// Whether reads of process `pid` may be attributed by thread scope.
    pub fn trusts(&self, pid: u32) -> bool {
        !self.lost.contains_key(&pid)
    }

    /// Why `pid` lost thread scope, if it did.
    pub fn why(&self, pid: u32) -> Option<Distrust> {
        self.lost.get(&pid).copied()
    }

    /// Records a sign of M:N scheduling in `pid`; true when this is the first (trust just lost).
    /// The first reason is kept: it is the one that changed how the process is judged.
    pub fn lose(&mut self, pid: u32, why: Distrust) -> bool {
        if self.lost.contains_key(&pid) {
            return false;
        }
        self.lost.insert(pid, why);
        true
    }

    /// A forked child runs the same program, on the same runtime.
    pub fn fork(&mut self, parent: u32, child: u32) {
        match self.lost.get(&parent).copied() {
            Some(why) => {
                self.lost.insert(child, why);
            }
            None => {
                self.lost.remove(&child);
            }
        }
    }

    /// `pid` exec'd a new program (or exited): what its old program showed says nothing of the
    /// new one, whose runtime, if recognised, follows as its own event.
    pub fn forget(&mut self, pid: u32) {
        self.lost.remove(&pid);
    }

    /// Processes without thread scope.
    pub fn len(&self) -> usize {
        self.lost.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lost.is_empty()
    }
}

/// A thread of a JVM's default virtual-thread scheduler (a carrier), by its name as the kernel
/// keeps it (`comm`, 15 bytes: `ForkJoinPool-1-worker-3` reads `ForkJoinPool-1-`).
pub fn is_virtual_thread_carrier(comm: &str) -> bool {
    comm.starts_with("ForkJoinPool")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_for_good_with_its_first_reason() {
        let mut t = ScopeTrust::default();
        assert!(t.trusts(7));
        assert!(t.lose(7, Distrust::Interleaved));
        assert!(!t.lose(7, Distrust::Runtime(Runtime::Go)));
        assert_eq!(t.why(7), Some(Distrust::Interleaved));
        assert!(!t.trusts(7));
        assert!(t.trusts(8));
    }

    #[test]
    fn children_inherit_and_exec_starts_afresh() {
        let mut t = ScopeTrust::default();
        t.lose(1, Distrust::Runtime(Runtime::Node));
        t.fork(1, 2);
        t.fork(3, 4);
        assert_eq!(t.why(2), Some(Distrust::Runtime(Runtime::Node)));
        assert!(t.trusts(4));
        t.forget(2);
        assert!(t.trusts(2));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn carriers_by_name() {
        assert!(is_virtual_thread_carrier("ForkJoinPool-1-"));
        assert!(!is_virtual_thread_carrier("http-nio-8080-e"));
    }
}
