//! The live stage that follows HTTP/2 connections: a connection whose first read is the client
//! preface is HTTP/2 from then on, and its reads and writes are replaced by the [`Item`]s its
//! frames make (as [`EventKind::Http2`] events, on the thread that read or wrote them). Runs
//! before the redactor and the recorder (which redact the heads), so a trace holds items, never
//! frames.
//!
//! A lost connection's reads become [`EventKind::Unreadable`] (its thread serves streams Vigie
//! can no longer see) and its writes are dropped, until it closes.
use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use super::{Connection, Item, Lost};
use crate::{
    events::{Event, EventKind, FoundFd, Unreadable},
    idmap::IdMap,
};

#[derive(Debug, Default)]
pub struct Demux {
    conns: IdMap<(u32, i32), Connection>,
    /// Connections that had a first read that was not the preface: not HTTP/2 (prior
    /// knowledge is said at once), unless they switch with HTTP/1's `Upgrade: h2c`, which
    /// Vigie does not follow: such a connection is lost at its `101` (or at the client preface
    /// when the `101` was not seen).
    spoken: HashSet<(u32, i32)>,
    /// HTTP/2 connections seen so far.
    pub connections: u64,
    /// HTTP/2 connections lost so far, by reason.
    pub lost: BTreeMap<&'static str, u64>,
    items: Vec<Item>,
    /// `identity.session`'s `login_path`, whose forms are kept.
    login_path: Option<Arc<str>>,
    /// Sockets open when their process was adopted ([`Demux::adopted`]), until their first read: a
    /// connection joined in the middle, whose first read may be HTTP/2 frames. Sockets opened
    /// since (a target's own HTTP/2 client connections, whose first read is the server's
    /// frames) are never taken for one.
    found: HashSet<(u32, i32)>,
}

impl Demux {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the form of each login request (`POST` to `login_path`) as an
    /// [`Item::LoginForm`], for sessions learnt at an HTTP/2 login.
    pub fn with_login_path(mut self, login_path: Option<&str>) -> Self {
        self.login_path = login_path.map(Arc::from);
        self
    }

    /// What an adoption found open (`FdFound`, which goes to the correlator directly): a
    /// socket there is a connection Vigie joins in the middle.
    pub fn adopted(&mut self, ev: &Event) {
        if let EventKind::FdFound {
            fd,
            found: FoundFd::Socket,
        } = &ev.kind
        {
            self.found.insert((ev.pid, *fd));
        }
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
                    if self.spoken.insert(key) {
                        if self.found.remove(&key) && whole_frames(&data.0, *bytes) {
                            // A connection joined in the middle (open before Vigie started)
                            // that speaks HTTP/2: not followable, and never HTTP/1.
                            self.lose_new(key, Lost::Joined, &ev, out);
                        } else if !super::starts_preface(&data.0) {
                            return out.push(ev);
                        } else {
                            self.spoken.remove(&key);
                            self.connections += 1;
                            let conn = Connection::new().with_login_path(self.login_path.clone());
                            self.conns.insert(key, conn);
                        }
                    } else if data.0.starts_with(super::HTTP2_PREFACE) {
                        // The whole client preface after HTTP/1 on the connection: an h2c
                        // upgrade whose `101` was not seen. Never an HTTP/1 request (`PRI *`).
                        self.lose_new(key, Lost::H2cUpgrade, &ev, out);
                    } else {
                        return out.push(ev);
                    }
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
                let key = (pid, fd);
                if !self.conns.contains_key(&key)
                    && self.spoken.contains(&key)
                    && switches_to_h2c(&data.0)
                {
                    // The `101` ends the HTTP/1 exchange (passed on as the upgrade request's
                    // response); every byte after it is HTTP/2, not followed.
                    let mut lost = Vec::new();
                    self.lose_new(key, Lost::H2cUpgrade, &ev, &mut lost);
                    out.push(ev);
                    out.extend(lost);
                    return;
                }
                let Some(conn) = self.conns.get_mut(&key) else {
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
                self.found.remove(&(pid, *fd));
                out.push(ev);
            }
            EventKind::ProcessExit => {
                self.conns.retain(|(p, _), _| *p != pid);
                self.spoken.retain(|(p, _)| *p != pid);
                self.found.retain(|(p, _)| *p != pid);
                out.push(ev);
            }
            _ => out.push(ev),
        }
    }

    /// Connection `key`, not HTTP/2 to Vigie so far, speaks HTTP/2 that cannot be followed
    /// (`why`: an h2c upgrade, a connection joined in the middle): a lost HTTP/2 connection
    /// from now on (its reads `unreadable`, its writes dropped). The item that tells the
    /// correlator goes to `out`, in `ev`'s name.
    fn lose_new(&mut self, key: (u32, i32), why: Lost, ev: &Event, out: &mut Vec<Event>) {
        self.spoken.remove(&key);
        self.connections += 1;
        let mut conn = Connection::new();
        let mut items = Vec::new();
        conn.lose(why, &mut items);
        self.conns.insert(key, conn);
        self.emit(ev, key.1, &mut items, out);
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

/// Whether a response write starts with `101 Switching Protocols` to `h2c`.
fn switches_to_h2c(data: &[u8]) -> bool {
    crate::http::response_status(data) == Some(101)
        && crate::http::response_header_values(data, "upgrade")
            .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"h2c"))
}

/// Whether the first read seen of a socket open before Vigie started (`data` captured of
/// `total` bytes) is whole HTTP/2 frames, one or more: kinds DATA to CONTINUATION, the reserved bit
/// clear, the read ending where a frame does. No HTTP/1 request line, FastCGI record, TLS
/// record or preface is one (their first three bytes, read as a frame length, are over
/// 64 KiB), so no joined connection that starts a request there is taken for HTTP/2.
fn whole_frames(data: &[u8], total: u64) -> bool {
    if data.len() as u64 != total || data.is_empty() {
        return false;
    }
    let mut rest = data;
    while !rest.is_empty() {
        let Some(h) = rest.get(..super::FRAME_HEADER) else {
            return false;
        };
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        if len > super::MAX_KEPT_PAYLOAD || h[3] > 9 || h[5] & 0x80 != 0 {
            return false;
        }
        let Some(next) = rest.get(super::FRAME_HEADER + len..) else {
            return false;
        };
        rest = next;
    }
    true
}
