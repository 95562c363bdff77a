//! The live stage that follows HTTP/2 connections: a connection whose first read is the client
//! preface is HTTP/2 from then on, and its reads and writes are replaced by the [`Item`]s its
//! frames make (as [`EventKind::Http2`] events, on the thread that read or wrote them). Runs
//! before the redactor and the recorder (which redact the heads), so a trace holds items, never
//! frames.
//!
//! A lost connection's reads become [`EventKind::Unreadable`] (its thread serves streams Vigie
//! can no longer see) and its writes are dropped, until it closes.
use std::collections::{BTreeMap, HashSet};

use super::{Connection, Item, Lost};
use crate::{
    events::{Event, EventKind, Unreadable},
    idmap::IdMap,
};

#[derive(Debug, Default)]
pub struct Demux {
    conns: IdMap<(u32, i32), Connection>,
    /// Connections that had a first read that was not the preface: not HTTP/2 (prior
    /// knowledge is said at once, and HTTP/1's `Upgrade: h2c` is not followed).
    spoken: HashSet<(u32, i32)>,
    /// HTTP/2 connections seen so far.
    pub connections: u64,
    /// HTTP/2 connections lost so far, by reason.
    pub lost: BTreeMap<&'static str, u64>,
    items: Vec<Item>,
}

impl Demux {
    pub fn new() -> Self {
        Self::default()
    }

    /// HTTP/2 connections followed at the moment.
    pub fn tracked(&self) -> usize {
        self.conns.len()
    }

    /// Takes the next event and appends to `out` what to pass on in its place.
    pub fn take(&mut self, ev: Event, out: &mut Vec<Event>) {
        let pid = ev.pid;
        match &ev.kind {
            EventKind::SockRead { fd, bytes, data } => {
                let key = (pid, *fd);
                if !self.conns.contains_key(&key) {
                    if !self.spoken.insert(key) || !super::starts_preface(&data.0) {
                        return out.push(ev);
                    }
                    self.spoken.remove(&key);
                    self.connections += 1;
                    self.conns.insert(key, Connection::new());
                }
                let (fd, bytes) = (*fd, *bytes);
                let Some(conn) = self.conns.get_mut(&key) else {
                    return;
                };
                if conn.lost().is_some() {
                    let why = Unreadable::Http2;
                    return out.push(with_kind(&ev, EventKind::Unreadable { fd, bytes, why }));
                }
                let mut items = std::mem::take(&mut self.items);
                conn.on_read(&data.0, bytes.max(data.0.len() as u64), &mut items);
                self.emit(&ev, fd, &mut items, out);
                self.items = items;
            }
            EventKind::SockWrite {
                fd, bytes, data, ..
            } => {
                let fd = *fd;
                let Some(conn) = self.conns.get_mut(&(pid, fd)) else {
                    return out.push(ev);
                };
                let mut items = std::mem::take(&mut self.items);
                conn.on_write(&data.0, (*bytes).max(data.0.len() as u64), &mut items);
                self.emit(&ev, fd, &mut items, out);
                self.items = items;
            }
            EventKind::SendFile { out_fd, bytes, .. } => {
                // DATA payload sent from a file (cleartext HTTP/2): passed over by length, and
                // the correlator gives `sendfile` no evidence on an HTTP/2 connection (which
                // stream it serves is in the frame header before it, not followed yet).
                let fd = *out_fd;
                if let Some(conn) = self.conns.get_mut(&(pid, fd)) {
                    let mut items = std::mem::take(&mut self.items);
                    conn.on_write(&[], *bytes, &mut items);
                    self.emit(&ev, fd, &mut items, out);
                    self.items = items;
                }
                out.push(ev);
            }
            EventKind::SockAccept { fd, .. } | EventKind::SockClose { fd } => {
                self.conns.remove(&(pid, *fd));
                self.spoken.remove(&(pid, *fd));
                out.push(ev);
            }
            EventKind::ProcessExit => {
                self.conns.retain(|(p, _), _| *p != pid);
                self.spoken.retain(|(p, _)| *p != pid);
                out.push(ev);
            }
            _ => out.push(ev),
        }
    }

    /// Events were lost in the kernel: every HTTP/2 connection may have lost a frame, and is
    /// lost for good. The correlator ends their streams at the `Lost` event itself, so nothing
    /// is emitted here.
    pub fn events_lost(&mut self) {
        let mut sink = Vec::new();
        for conn in self.conns.values_mut() {
            if conn.lost().is_none() {
                conn.lose(Lost::EventsLost, &mut sink);
                *self.lost.entry(Lost::EventsLost.as_str()).or_default() += 1;
            }
        }
    }

    fn emit(&mut self, ev: &Event, fd: i32, items: &mut Vec<Item>, out: &mut Vec<Event>) {
        for item in items.drain(..) {
            if let Item::Lost { why } = &item {
                *self.lost.entry(why.as_str()).or_default() += 1;
            }
            out.push(with_kind(ev, EventKind::Http2 { fd, item }));
        }
    }
}

fn with_kind(ev: &Event, kind: EventKind) -> Event {
    Event {
        ts_ns: ev.ts_ns,
        pid: ev.pid,
        tid: ev.tid,
        comm: ev.comm.clone(),
        goid: ev.goid,
        kind,
    }
}
