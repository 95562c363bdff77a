//! Request bytes held back at line boundaries, before redaction: a header line split across
//! socket reads (a slow client, or one that sends its head a few bytes at a time on purpose) is
//! passed on whole, in the read that completes it, so the redactor sees every credential line
//! whole and never has to mask one it could not check (which left such requests without
//! identity).
//!
//! Each HTTP read captured whole is passed on up to and including its last `LF`; the bytes
//! after it, when they are part of a request head (a line not finished yet), are held and put
//! in front of the connection's next read. Body bytes are never held (a login form has no line
//! end, and its response must not overtake it): where heads and bodies are is followed with the
//! correlator's own [`RequestStream`] on the same bytes.
//! A held line holds no complete line, so no request can start or end in it: delaying it
//! changes nothing the correlator decides, only when. Held bytes are passed on (and the
//! redactor masks what is unfinished) when the connection is closed or reused, its process
//! exits, events are lost, a read is not captured whole, or they pass [`MAX_HELD`].
//!
//! FastCGI connections (decided as everywhere, [`Protocol`]) are left alone: their records
//! carry their own framing and the FastCGI redactor follows it across reads.
use crate::{
    events::{Event, EventKind, Payload},
    fastcgi::Protocol,
    http::{looks_like_request_start, stream::RequestStream},
    idmap::IdMap,
};

/// Most bytes held per connection; a longer unfinished line is passed on (and masked if it
/// carries a credential). Bearer tokens are at most 16 KiB (`identity::jwt`).
pub const MAX_HELD: usize = 17 * 1024;

#[derive(Debug)]
struct Conn {
    protocol: Protocol,
    /// The bytes passed on so far, as requests: whether held bytes would be in a head.
    stream: RequestStream,
    /// The last read that ended inside a head line, with only the bytes after its last `LF`.
    held: Option<Event>,
}

/// Held request lines, per connection.
#[derive(Debug)]
pub struct LineHold {
    conns: IdMap<(u32, i32), Conn>,
    max_head: usize,
}

impl LineHold {
    /// `max_head`: the correlator's bound on a head (`capture.max_head_bytes`).
    #[must_use]
    pub fn new(max_head: usize) -> Self {
        Self {
            conns: IdMap::default(),
            max_head,
        }
    }

    fn conn(&mut self, key: (u32, i32), accepted: bool) -> &mut Conn {
        let max_head = self.max_head;
        self.conns.entry(key).or_insert_with(|| Conn {
            protocol: if accepted {
                Protocol::Fresh
            } else {
                Protocol::Unknown
            },
            // Only where heads end matters here: the correlator parses them whole, redacted.
            stream: if accepted {
                RequestStream::new(max_head)
            } else {
                RequestStream::joined(max_head)
            }
            .framing_only(),
            held: None,
        })
    }

    /// Connections with bytes held.
    #[must_use]
    pub fn held(&self) -> usize {
        self.conns.values().filter(|c| c.held.is_some()).count()
    }

    /// Takes the next decoded event and appends to `out` the events to pass on in its place, in
    /// order: held bytes that must go first, and the event itself (or what of it is not held).
    pub fn take(&mut self, ev: Event, out: &mut Vec<Event>) {
        let pid = ev.pid;
        match &ev.kind {
            EventKind::SockRead { .. } => self.read(ev, out),
            EventKind::SockAccept { fd, .. } => {
                let fd = *fd;
                self.flush(pid, fd, out);
                self.conns.remove(&(pid, fd));
                self.conn((pid, fd), true);
                out.push(ev);
            }
            EventKind::SockClose { fd } => {
                let fd = *fd;
                self.flush(pid, fd, out);
                self.conns.remove(&(pid, fd));
                out.push(ev);
            }
            EventKind::ProcessExit => {
                let mut fds: Vec<i32> = self
                    .conns
                    .keys()
                    .filter(|(p, _)| *p == pid)
                    .map(|(_, fd)| *fd)
                    .collect();
                fds.sort_unstable();
                for fd in fds {
                    self.flush(pid, fd, out);
                    self.conns.remove(&(pid, fd));
                }
                out.push(ev);
            }
            EventKind::Lost { .. } => {
                self.flush_all(out);
                out.push(ev);
            }
            _ => out.push(ev),
        }
    }

    /// Passes on everything held (in connection order, for a deterministic trace).
    pub fn flush_all(&mut self, out: &mut Vec<Event>) {
        let mut keys: Vec<(u32, i32)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.held.is_some())
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        for (pid, fd) in keys {
            self.flush(pid, fd, out);
        }
    }

    fn flush(&mut self, pid: u32, fd: i32, out: &mut Vec<Event>) {
        if let Some(held) = self.conns.get_mut(&(pid, fd)).and_then(|c| c.held.take()) {
            out.push(held);
        }
    }

    fn read(&mut self, mut ev: Event, out: &mut Vec<Event>) {
        let EventKind::SockRead { fd, bytes, data } = &mut ev.kind else {
            out.push(ev);
            return;
        };
        let conn = self.conn((ev.pid, *fd), false);
        if conn.protocol.observe_start(&data.0, conn.held.is_some()) == Protocol::FastCgi {
            if let Some(held) = conn.held.take() {
                out.push(held);
            }
            out.push(ev);
            return;
        }
        let whole = *bytes <= data.0.len() as u64;
        // The held bytes go in front of this read, as the server read them.
        if let Some(held) = conn.held.take()
            && let EventKind::SockRead {
                bytes: held_bytes,
                data: held_data,
                ..
            } = held.kind
        {
            let mut merged = held_data.0;
            merged.extend_from_slice(&data.0);
            data.0 = merged;
            *bytes = bytes.saturating_add(held_bytes);
        }
        let mut items = Vec::new();
        if !whole {
            conn.stream.feed(&data.0, *bytes, &mut items);
            out.push(ev);
            return;
        }
        let keep_from = match data.0.iter().rposition(|&b| b == b'\n') {
            Some(last) => last + 1,
            None => 0,
        };
        let (lines, tail) = data.0.split_at(keep_from);
        conn.stream.feed(lines, lines.len() as u64, &mut items);
        // Only a head line is held: body bytes, garbage and what follows a last request go on.
        // A connection joined mid-stream is followed from a read that starts a request.
        let head = conn.stream.in_head()
            || (conn.stream.is_lost() && lines.is_empty() && looks_like_request_start(tail));
        if tail.is_empty() || tail.len() > MAX_HELD || !head {
            conn.stream.feed(tail, tail.len() as u64, &mut items);
            out.push(ev);
            return;
        }
        let rest = data.0.split_off(keep_from);
        *bytes -= rest.len() as u64;
        let held = Event {
            ts_ns: ev.ts_ns,
            pid: ev.pid,
            tid: ev.tid,
            comm: ev.comm.clone(),
            goid: ev.goid,
            kind: EventKind::SockRead {
                fd: *fd,
                bytes: rest.len() as u64,
                data: Payload(rest),
            },
        };
        conn.held = Some(held);
        if keep_from > 0 {
            out.push(ev);
        }
    }
}

impl Protocol {
    /// [`Protocol::observe`] for bytes that start a read (`continued`: they continue a held
    /// line, so they decide nothing).
    fn observe_start(&mut self, data: &[u8], continued: bool) -> Protocol {
        if continued { *self } else { self.observe(data) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(fd: i32, data: &[u8], bytes: u64) -> Event {
        Event {
            ts_ns: 1,
            pid: 7,
            tid: 8,
            comm: "p".into(),
            goid: None,
            kind: EventKind::SockRead {
                fd,
                bytes,
                data: Payload(data.to_vec()),
            },
        }
    }

    fn bytes_of(events: &[Event]) -> Vec<Vec<u8>> {
        events
            .iter()
            .map(|e| match &e.kind {
                EventKind::SockRead { data, bytes, .. } => {
                    assert_eq!(*bytes, data.0.len() as u64);
                    data.0.clone()
                }
                _ => b"<other>".to_vec(),
            })
            .collect()
    }

    #[test]
    fn lines_are_passed_on_whole_and_nothing_is_lost() {
        let mut h = LineHold::new(64 * 1024);
        let mut out = Vec::new();
        let stream =
            b"GET / HTTP/1.1\r\nAuthorization: Basic YWxpY2U6cHc=\r\n\r\nGET /b HTTP/1.1\r\nX: y";
        for piece in stream.chunks(5) {
            h.take(read(3, piece, piece.len() as u64), &mut out);
        }
        // Every event ends a line; the unfinished one is held.
        let got = bytes_of(&out);
        assert!(got.iter().all(|b| b.ends_with(b"\n")), "{got:?}");
        let line = b"Authorization: Basic YWxpY2U6cHc=\r\n";
        assert!(
            got.iter().any(|b| b.windows(line.len()).any(|w| w == line)),
            "{got:?}"
        );
        h.take(
            Event {
                kind: EventKind::SockClose { fd: 3 },
                ..read(3, b"", 0)
            },
            &mut out,
        );
        let all: Vec<u8> = bytes_of(&out).concat();
        assert_eq!(all, [&stream[..], b"<other>"].concat());
    }

    #[test]
    fn bodies_are_never_held() {
        let mut h = LineHold::new(64 * 1024);
        let mut out = Vec::new();
        let post = b"POST /login HTTP/1.1\r\nContent-Length: 24\r\n\r\n";
        h.take(read(3, post, post.len() as u64), &mut out);
        h.take(read(3, b"user=alice&password=", 20), &mut out);
        h.take(read(3, b"pw12", 4), &mut out);
        assert_eq!(
            bytes_of(&out),
            [
                post.to_vec(),
                b"user=alice&password=".to_vec(),
                b"pw12".to_vec()
            ]
        );
        // The next head is held again where it is cut.
        out.clear();
        h.take(read(3, b"GET / HTTP/1.1\r\nAuthor", 22), &mut out);
        assert_eq!(bytes_of(&out), [b"GET / HTTP/1.1\r\n".to_vec()]);
        assert_eq!(h.held(), 1);
    }

    #[test]
    fn uncaptured_reads_and_fastcgi_are_passed_on_at_once() {
        let mut h = LineHold::new(64 * 1024);
        let mut out = Vec::new();
        h.take(read(3, b"GET / HT", 8), &mut out);
        assert!(out.is_empty());
        h.take(read(3, b"TP/1.1", 9000), &mut out);
        let [
            Event {
                kind: EventKind::SockRead { data, bytes, .. },
                ..
            },
        ] = out.as_slice()
        else {
            panic!("{out:?}");
        };
        assert_eq!((data.0.as_slice(), *bytes), (&b"GET / HTTP/1.1"[..], 9008));
        out.clear();
        h.take(
            Event {
                kind: EventKind::SockAccept { fd: 4, peer: None },
                ..read(4, b"", 0)
            },
            &mut out,
        );
        h.take(read(4, &[1, 1, 0, 1, 0, 8, 0, 0], 8), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(h.held(), 0);
    }
}
