//! A model of what the probes send of a stream (`monitor-ebpf`'s `ReadAgg` and `WriteAgg`), so
//! that every scenario also checks that counting in the kernel changes no finding.
//!
//! - A thread's document read is sent, then its reads of the same fd that follow are counted;
//!   a count is sent as one `FileReadMore` (with the last read's time) before the thread's next
//!   event, before another thread's close of that fd, and every 100 reads of a long run (the
//!   probes send it by age). A write inside a response body that does not complete it leaves
//!   the run going (after sending its count).
//! - Each connection's writes get offsets (`at`). Once the correlator has seen a response head
//!   with a `Content-Length` (the body span it gives, [`BodySpan`], applied right after the
//!   event that taught it: the best case of the live round trip), a thread's writes of that
//!   connection that lie past the write holding the body's first bytes and within the body are
//!   counted, when the thread's last event (but counted reads and sent document reads) was a
//!   write of that connection; a count is sent as one `SockWriteMore` before the thread's next
//!   event, before another thread's event on that connection, at the write that completes the
//!   body (the thread's counted reads first), and every 100 writes.
//! - A loss ends every run. Go targets count nothing. (Events of no thread, `Tick` and `Lost`,
//!   are userspace's.)
use std::collections::BTreeMap;

use super::*;

const BATCH: u32 = 100;

#[derive(Default)]
struct Run {
    fd: i32,
    calls: u32,
    bytes: u64,
    last: Option<Event>,
}

impl Run {
    fn off() -> Self {
        Run {
            fd: -1,
            ..Run::default()
        }
    }

    fn on(fd: i32) -> Self {
        Run {
            fd,
            ..Run::default()
        }
    }

    /// Sends the count (a `FileReadMore` or a `SockWriteMore`); the run goes on.
    fn send(&mut self, write: bool, out: &mut Vec<Event>) {
        if let Some(mut ev) = self.last.take() {
            let (fd, bytes, calls) = (self.fd, self.bytes, self.calls);
            ev.kind = if write {
                EventKind::SockWriteMore { fd, bytes, calls }
            } else {
                EventKind::FileReadMore { fd, bytes, calls }
            };
            out.push(ev);
        }
        self.calls = 0;
        self.bytes = 0;
    }

    fn count(&mut self, write: bool, bytes: u64, ev: &Event, out: &mut Vec<Event>) {
        if self.calls == BATCH {
            self.send(write, out);
        }
        self.calls += 1;
        self.bytes += bytes;
        self.last = Some(ev.clone());
    }
}

/// A thread's runs (no `Default`: a run of fd 0 is not an idle one).
struct Thread {
    reads: Run,
    writes: Run,
}

impl Thread {
    fn new() -> Self {
        Thread {
            reads: Run::off(),
            writes: Run::off(),
        }
    }

    /// The probes' `flush_counts_keeping`: reads, then writes.
    fn flush(&mut self, keep_reads: bool, keep_writes: bool, out: &mut Vec<Event>) {
        if self.reads.fd >= 0 {
            self.reads.send(false, out);
            if !keep_reads {
                self.reads.fd = -1;
            }
        }
        if self.writes.fd >= 0 {
            self.writes.send(true, out);
            if !keep_writes {
                self.writes.fd = -1;
            }
        }
    }
}

/// `events` with offsets on their writes, as the probes count them (a connection's bytes
/// written, from a base; a new connection on an fd starts past the old one's).
pub(super) fn with_offsets(events: &[Event]) -> Vec<Event> {
    let mut offsets: BTreeMap<(u32, i32), u64> = BTreeMap::new();
    events
        .iter()
        .map(|ev| {
            let mut ev = ev.clone();
            if let EventKind::SockWrite { fd, bytes, at, .. } = &mut ev.kind {
                let next = offsets.entry((ev.pid, *fd)).or_insert(1 << 20);
                *at = Some(*next);
                *next += *bytes;
            }
            ev
        })
        .collect()
}

/// `events` as the probes send them (see the module doc), and the number of writes counted.
pub(super) fn counted_as_the_kernel_does(
    events: &[Event],
    cfg: &CorrelatorConfig,
) -> (Vec<Event>, u64) {
    let events = with_offsets(events);
    // The spans the correlator gives, by the event that taught them.
    let mut c = Correlator::new(cfg.clone());
    let mut sink = Vec::new();
    let taught: Vec<Vec<BodySpan>> = events
        .iter()
        .map(|ev| {
            c.handle(ev, &mut sink);
            c.take_spans().collect()
        })
        .collect();

    let mut threads: BTreeMap<(u32, u32), Thread> = BTreeMap::new();
    // Per connection: the body span, the floor (offset at which the connection began), the
    // next offset, the thread counting its writes.
    let mut spans: BTreeMap<(u32, i32), (u64, u64)> = BTreeMap::new();
    let mut floors: BTreeMap<(u32, i32), u64> = BTreeMap::new();
    let mut next: BTreeMap<(u32, i32), u64> = BTreeMap::new();
    let mut writer: BTreeMap<(u32, i32), (u32, u32)> = BTreeMap::new();
    let mut out = Vec::new();
    let mut counted_writes = 0;
    for (ev, taught) in events.iter().zip(taught) {
        handle(
            ev,
            &mut threads,
            &mut spans,
            &mut floors,
            &mut next,
            &mut writer,
            &mut out,
            &mut counted_writes,
        );
        for span in taught {
            spans.insert((span.pid, span.fd), (span.start, span.end));
        }
    }
    for t in threads.values_mut() {
        t.flush(false, false, &mut out);
    }
    (out, counted_writes)
}

#[expect(
    clippy::too_many_arguments,
    reason = "the model's maps, as the probes have them"
)]
fn handle(
    ev: &Event,
    threads: &mut BTreeMap<(u32, u32), Thread>,
    spans: &mut BTreeMap<(u32, i32), (u64, u64)>,
    floors: &mut BTreeMap<(u32, i32), u64>,
    next: &mut BTreeMap<(u32, i32), u64>,
    writer: &mut BTreeMap<(u32, i32), (u32, u32)>,
    out: &mut Vec<Event>,
    counted_writes: &mut u64,
) {
    match &ev.kind {
        EventKind::Tick => return out.push(ev.clone()),
        EventKind::Lost { .. } => {
            out.push(ev.clone());
            for t in threads.values_mut() {
                t.reads.fd = -1;
                t.writes.fd = -1;
            }
            return;
        }
        _ => {}
    }
    let key = (ev.pid, ev.tid);
    let go = ev.goid.is_some();
    threads.entry(key).or_insert_with(Thread::new);
    // Another thread's counted writes of connection `fd` (after its counted reads) go first.
    let flush_writer = |threads: &mut BTreeMap<(u32, u32), Thread>,
                        writer: &BTreeMap<(u32, i32), (u32, u32)>,
                        fd: i32,
                        out: &mut Vec<Event>| {
        if let Some(&w) = writer.get(&(ev.pid, fd))
            && w != key
            && let Some(t) = threads.get_mut(&w)
            && t.writes.fd == fd
        {
            if t.writes.calls != 0 {
                t.reads.send(false, out);
            }
            t.writes.send(true, out);
            t.writes.fd = -1;
        }
    };
    match &ev.kind {
        EventKind::FileRead { fd, bytes, .. } => {
            let t = threads.get_mut(&key).unwrap();
            if !go && t.reads.fd == *fd {
                return t.reads.count(false, *bytes, ev, out);
            }
            // A document read keeps the run of writes going.
            t.flush(false, true, out);
            out.push(ev.clone());
            if !go {
                t.reads = Run::on(*fd);
            }
        }
        EventKind::SockWrite { fd, bytes, at, .. } => {
            let conn = (ev.pid, *fd);
            let start = at.expect("offsets were given");
            next.insert(conn, start + bytes);
            let floor = floors.get(&conn).copied().unwrap_or(0);
            let mut in_body = false;
            if let Some(&(s, e)) = spans.get(&conn)
                && s >= floor
            {
                let end = start + bytes;
                let t = threads.get_mut(&key).unwrap();
                if start > s && end <= e && !go && t.writes.fd == *fd {
                    t.writes.count(true, *bytes, ev, out);
                    *counted_writes += 1;
                    if end == e {
                        t.flush(false, false, out);
                    }
                    return;
                }
                in_body = end > s && end < e;
            }
            threads.get_mut(&key).unwrap().flush(in_body, false, out);
            flush_writer(threads, writer, *fd, out);
            out.push(ev.clone());
            if !go {
                threads.get_mut(&key).unwrap().writes = Run::on(*fd);
                writer.insert(conn, key);
            }
        }
        other => {
            let fd = match other {
                EventKind::SockRead { fd, .. }
                | EventKind::SockAccept { fd, .. }
                | EventKind::SockClose { fd } => Some(*fd),
                _ => None,
            };
            if let Some(fd) = fd {
                flush_writer(threads, writer, fd, out);
            }
            // A new connection on the fd, or its end: spans given so far are a former one's.
            if let EventKind::SockAccept { fd, .. } | EventKind::SockClose { fd } = other {
                let conn = (ev.pid, *fd);
                if let Some(&n) = next.get(&conn) {
                    floors.insert(conn, n);
                }
            }
            if let EventKind::FileClose { fd } = other {
                for (k, t) in threads.iter_mut() {
                    if *k != key && k.0 == ev.pid && t.reads.fd == *fd {
                        t.reads.send(false, out);
                        t.reads.fd = -1;
                        if t.writes.fd >= 0 {
                            t.writes.send(true, out);
                        }
                    }
                }
            }
            threads.get_mut(&key).unwrap().flush(false, false, out);
            out.push(ev.clone());
        }
    }
}
