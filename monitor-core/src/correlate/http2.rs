//! HTTP/2 connections: what [`crate::http2::Connection`] decoded live, turned into the
//! correlator's requests.
//!
//! - A stream's request head becomes a request through [`Correlator::new_request`] (identity,
//!   sessions), keyed by (connection, stream id) like FastCGI's request ids, in no thread's
//!   scope and no connection's queue: several streams interleave on one connection and one
//!   thread, so neither thread scope nor flow is evidence. The thread that reads HTTP/2 is an
//!   event loop from then on (its reads get no thread scope, as after an unreadable read).
//! - Its response head gives the status, `Content-Length` and `Set-Cookie` (sessions).
//! - Its DATA carry the fingerprint of the body's first bytes: the one evidence that names a
//!   stream. A read whose fingerprint matches goes to the stream ([`Correlator::claim_by`], which
//!   refuses a fingerprint shared by reads of different documents).
//! - A login's form (its request body, [`Item::LoginForm`]) names the user its response's
//!   `Set-Cookie` binds, as an HTTP/1 login body does.
//! - Its end (END_STREAM, a reset, the connection's close or loss) ends the request: what it
//!   read is judged. Reads no response claimed are `unattributed`.
use std::collections::BTreeMap;

use super::{Correlator, Finding, Place, Release};
use crate::{
    events::Event,
    http::{self, HeadParse, stream::Desync},
    http2::Item,
};

/// The HTTP/2 state of one connection.
#[derive(Debug, Default)]
pub(super) struct Http2Conn {
    /// Stream id -> the correlator's request id.
    pub(super) streams: BTreeMap<u32, u64>,
}

impl Correlator {
    /// `ev`'s thread read or wrote what `item` says on HTTP/2 connection `fd`.
    pub(super) fn on_http2(
        &mut self,
        ev: &Event,
        actor: super::Actor,
        fd: i32,
        item: &Item,
        out: &mut Vec<Finding>,
    ) {
        let pid = ev.pid;
        if actor.scopes() {
            self.socket_threads.insert(actor, pid);
        }
        // Streams interleave on this thread: its "current request" means nothing, for good.
        if !self.is_multiplexed(pid, actor) {
            self.multiplexed.insert(actor, pid);
            self.end_scope(pid, actor, fd, out);
        }
        let conn = self.conns.entry((pid, fd)).or_default();
        let h2 = conn.http2.get_or_insert_default();
        match item {
            Item::Request { stream, head } => {
                if let Some(old) = h2.streams.remove(stream) {
                    self.release(old, Release::Conn, out);
                }
                let head = match http::parse_request_head(&head.0) {
                    HeadParse::Complete(head) => head,
                    // The live side renders only heads it could: a trace edited by hand.
                    HeadParse::Partial | HeadParse::Invalid(_) => {
                        self.stats.invalid_heads += 1;
                        return;
                    }
                };
                let req = self.new_request(ev, actor, fd, &head, false, Place::Stream, out);
                if let Some(h2) = self
                    .conns
                    .get_mut(&(pid, fd))
                    .and_then(|c| c.http2.as_mut())
                {
                    h2.streams.insert(*stream, req);
                }
            }
            Item::Response { stream, head } => {
                let Some(&req) = h2.streams.get(stream) else {
                    return;
                };
                self.http2_response(ev, req, &head.0, out);
            }
            Item::Data {
                stream, body_fp, ..
            } => {
                let Some(&req) = h2.streams.get(stream) else {
                    return;
                };
                if body_fp.is_some() {
                    self.claim_by(ev, actor, req, *body_fp, false);
                }
            }
            Item::LoginForm { stream, form } => {
                if let Some(login) = h2
                    .streams
                    .get(stream)
                    .and_then(|req| self.requests.get_mut(req))
                    .and_then(|r| r.login.as_mut())
                {
                    let room = super::LOGIN_BODY_CAP.saturating_sub(login.len());
                    login.extend_from_slice(&form.0[..room.min(form.0.len())]);
                }
            }
            Item::End { stream } => {
                if let Some(req) = h2.streams.remove(stream) {
                    self.release(req, Release::Conn, out);
                }
            }
            Item::Lost { .. } => {
                let streams = std::mem::take(&mut h2.streams);
                conn.desync = Some(Desync::Http2);
                *self.stats.desyncs.entry(Desync::Http2).or_default() += 1;
                if actor.scopes() {
                    self.lost_threads.insert(actor, (pid, Desync::Http2));
                }
                for req in streams.into_values() {
                    self.release(req, Release::Conn, out);
                }
            }
        }
    }

    /// The final response head of request `req` (an HTTP/2 stream) was written.
    fn http2_response(&mut self, ev: &Event, req: u64, head: &[u8], out: &mut Vec<Finding>) {
        let Some(r) = self.requests.get_mut(&req) else {
            return;
        };
        if r.responded {
            return;
        }
        r.responded = true;
        r.info.status = http::response_status(head);
        r.body_length = http::ResponseFraming::of(head).first_content_length;
        if let Some(s) = &self.cfg.identity.session {
            super::learn_session(&mut self.sessions, s, r, head, ev.ts_ns);
        }
        // Reads of it already closed waited for this status.
        self.finish_where(out, |a| a.closed && a.owner == super::Owner::Request(req));
    }

    /// Events were lost: a read or write of any HTTP/2 connection may be among them, so no
    /// stream is anybody's any more (the live side loses the connections for good).
    pub(super) fn http2_events_lost(&mut self, out: &mut Vec<Finding>) {
        let mut lost: Vec<u64> = self
            .conns
            .values_mut()
            .filter_map(|c| c.http2.as_mut())
            .flat_map(|h2| std::mem::take(&mut h2.streams).into_values())
            .collect();
        lost.sort_unstable();
        for req in lost {
            self.release(req, Release::Conn, out);
        }
    }
}
