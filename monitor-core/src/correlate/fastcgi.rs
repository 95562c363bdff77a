//! FastCGI connections: what [`crate::fastcgi::Connection`] decodes, turned into the
//! correlator's requests, scopes and statuses.
//!
//! - The params of a request become a request through [`Correlator::new_request`], like an HTTP
//!   head (identity, thread and connection scope), keyed by (connection, request id).
//! - STDIN is the request body: the form of a login request (`identity.session`) is kept, as
//!   an HTTP login body is.
//! - STDOUT of a request is the response: its CGI head gives the status and the `Set-Cookie`
//!   that sessions are learnt from, and documents the writing thread read with no request in
//!   scope go out with it (flow evidence). No fingerprint evidence: the body is masked by the
//!   redactor, never fingerprinted.
//! - END_REQUEST ends the request on its connection, and on the thread that wrote it: later
//!   reads by that thread are not this request's.
use std::collections::BTreeMap;

use super::{Correlator, Finding, LOGIN_BODY_CAP, Owner, Place, Release, learn_session};
use crate::{
    events::Event,
    fastcgi::{Connection, Happening, MAX_EXCHANGES},
    http::stream::Desync,
};

/// The FastCGI state of one connection.
#[derive(Debug, Default)]
pub(super) struct FastCgiConn {
    stream: Connection,
    /// FastCGI request id -> the correlator's request id.
    ids: BTreeMap<u16, u64>,
}

impl FastCgiConn {
    /// Events were lost: the stream waits for a point to resume, and the requests in flight
    /// are over (the correlator dropped every scope).
    pub(super) fn lose_sync(&mut self) {
        self.stream.lose_sync();
        self.ids.clear();
    }
}

impl Correlator {
    /// `ev`'s thread read `bytes` from FastCGI connection `fd`; `data` is the captured prefix.
    pub(super) fn on_fastcgi_read(
        &mut self,
        ev: &Event,
        fd: i32,
        bytes: u64,
        data: &[u8],
        out: &mut Vec<Finding>,
    ) {
        let Some(conn) = self.conns.get_mut(&(ev.pid, fd)) else {
            return;
        };
        let f = conn.fastcgi.get_or_insert_default();
        let happenings = f.stream.on_read(data, bytes.max(data.len() as u64));
        for h in happenings {
            self.on_fastcgi(ev, fd, h, out);
        }
    }

    /// `ev`'s thread wrote `bytes` to FastCGI connection `fd`.
    pub(super) fn on_fastcgi_write(
        &mut self,
        ev: &Event,
        fd: i32,
        bytes: u64,
        data: &[u8],
        out: &mut Vec<Finding>,
    ) {
        let Some(f) = self
            .conns
            .get_mut(&(ev.pid, fd))
            .and_then(|c| c.fastcgi.as_mut())
        else {
            return;
        };
        let happenings = f.stream.on_write(data, bytes.max(data.len() as u64));
        for h in happenings {
            self.on_fastcgi(ev, fd, h, out);
        }
    }

    fn on_fastcgi(&mut self, ev: &Event, fd: i32, h: Happening, out: &mut Vec<Finding>) {
        let key = (ev.pid, fd);
        // Only a request still known: one that ended (its scopes released) takes nothing more.
        let request_of = |c: &Self, id: u16| -> Option<u64> {
            let req = *c.conns.get(&key)?.fastcgi.as_ref()?.ids.get(&id)?;
            c.requests.contains_key(&req).then_some(req)
        };
        match h {
            Happening::Request {
                id,
                head,
                truncated,
            } => {
                let actor = self.actor(ev);
                let req = self.new_request(ev, actor, fd, &head, truncated, Place::Current, out);
                if let Some(f) = self.conns.get_mut(&key).and_then(|c| c.fastcgi.as_mut()) {
                    f.ids.insert(id, req);
                    if f.ids.len() > 2 * MAX_EXCHANGES {
                        // Ids of requests that ended without END_REQUEST (lost stream).
                        let live = &self.requests;
                        f.ids.retain(|_, r| live.contains_key(r));
                    }
                }
            }
            Happening::Stdin { id, data } => {
                if let Some(req) = request_of(self, id)
                    && let Some(body) = self.requests.get_mut(&req).and_then(|r| r.login.as_mut())
                {
                    let room = LOGIN_BODY_CAP.saturating_sub(body.len());
                    body.extend_from_slice(&data[..room.min(data.len())]);
                }
            }
            Happening::Output { id } => {
                if let Some(req) = request_of(self, id) {
                    self.claim(ev, self.actor(ev), req, None);
                }
            }
            // The response head is in: what an HTTP response's first write does.
            Happening::Status { id, status, head } => {
                let Some(req) = request_of(self, id) else {
                    return;
                };
                if let Some(r) = self.requests.get_mut(&req) {
                    r.responded = true;
                    if r.info.status.is_none() {
                        r.info.status = status;
                    }
                    if let Some(s) = &self.cfg.identity.session {
                        // Read as an HTTP response head: its first line is skipped.
                        let mut lines = b"\n".to_vec();
                        lines.extend_from_slice(&head);
                        learn_session(&mut self.sessions, s, r, &lines, ev.ts_ns);
                    }
                }
                self.finish_where(out, |a| a.closed && a.owner == Owner::Request(req));
            }
            Happening::Ended { id } => {
                let Some(req) = request_of(self, id) else {
                    return;
                };
                if let Some(conn) = self.conns.get_mut(&key) {
                    if let Some(f) = conn.fastcgi.as_mut() {
                        f.ids.remove(&id);
                    }
                    conn.queue.retain(|r| *r != req);
                }
                self.release(req, Release::Conn, out);
                let actor = self.actor(ev);
                if self.threads.get(&actor) == Some(&(ev.pid, req)) {
                    self.threads.remove(&actor);
                    self.release(req, Release::Thread, out);
                }
            }
            // The application is told and ends the request itself (END_REQUEST).
            Happening::Aborted { .. } => {}
            Happening::Desync => {
                self.stats.fastcgi_desyncs += 1;
                let actor = self.actor(ev);
                self.desync(ev, actor, fd, Desync::FastCgi);
            }
        }
    }
}

#[cfg(test)]
mod tests;
