//! Response bodies, seen from the socket writes of a target: where each response head ends on a
//! connection, so that the first bytes of the body can be fingerprinted and then dropped.
//!
//! The fingerprint is matched by the correlator against the fingerprints the kernel computes on
//! document reads (DESIGN.md §4: attribution by content, for event loops and helper threads that
//! read a document on one thread and send it from another). Dropping the body means document
//! content never reaches the correlator, a trace or an alert: only the response head (status,
//! `Set-Cookie`, already redacted) is kept.
//!
//! Runs live, before the redactor and the recorder, so a trace holds the cut data and the
//! fingerprint, and replay needs neither.
use monitor_common::files::{FP_BYTES, fingerprint};

use crate::idmap::IdMap;

/// Longest response head looked for: past it the connection is not treated as HTTP any more.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
enum State {
    /// A request came in: the next write starts its response head (`seen` head bytes so far,
    /// the last of which are `tail`, for a blank line split across writes).
    Head { seen: usize, tail: [u8; 3] },
    /// Inside a body; `started` once its first bytes went by (fingerprinted or not); `left`:
    /// its bytes still to come, when its head gave a `Content-Length` (after them, the next
    /// write starts the next pipelined request's response).
    Body { started: bool, left: Option<u64> },
    /// Writes that are not HTTP responses (another protocol): left alone.
    Other,
}

#[derive(Debug, Default)]
pub struct Bodies {
    /// Per connection: the state, and whether an HTTP response was ever seen on it.
    conns: IdMap<(u32, i32), (State, bool)>,
}

impl Bodies {
    pub fn new() -> Self {
        Self::default()
    }

    /// Process `pid` read request bytes from connection `fd`: its next write starts a response.
    pub fn request(&mut self, pid: u32, fd: i32) {
        let entry = self.conns.entry((pid, fd)).or_insert((
            State::Head {
                seen: 0,
                tail: [0; 3],
            },
            false,
        ));
        if !matches!(entry.0, State::Head { .. }) {
            entry.0 = State::Head {
                seen: 0,
                tail: [0; 3],
            };
        }
    }

    /// A write of `bytes` bytes, whose captured prefix is `data`, on connection `fd`: cuts `data`
    /// at the end of the response head and returns the fingerprint of the body's first bytes
    /// when this write carries them.
    pub fn response(&mut self, pid: u32, fd: i32, bytes: u64, data: &mut Vec<u8>) -> Option<u64> {
        let whole = bytes <= data.len() as u64;
        // A write with no request seen first (Vigie started mid-connection): a head if it looks
        // like one.
        let (state, http) = self.conns.entry((pid, fd)).or_insert((
            State::Head {
                seen: 0,
                tail: [0; 3],
            },
            false,
        ));
        match *state {
            State::Other => None,
            State::Body { started, left } => {
                let left = left.map(|n| n.saturating_sub(bytes));
                *state = if left == Some(0) {
                    State::Head {
                        seen: 0,
                        tail: [0; 3],
                    }
                } else {
                    State::Body {
                        started: true,
                        left,
                    }
                };
                let fp = if started {
                    None
                } else {
                    body_fingerprint(data, whole)
                };
                data.clear();
                fp
            }
            State::Head { seen, tail } => {
                if seen == 0 && !starts_like_response(data) {
                    if *http {
                        // A read came in while a body was still being written (a pipelined
                        // request): this is more of that body.
                        *state = State::Body {
                            started: true,
                            left: None,
                        };
                        data.clear();
                    } else {
                        *state = State::Other;
                    }
                    return None;
                }
                match head_end(&tail, seen, data) {
                    Some(end) => {
                        *http = true;
                        let body = &data[end..];
                        // The body's length, when this write holds the whole head.
                        let left = if seen == 0 {
                            crate::http::response_body_length(&data[..end])
                                .map(|n| n.saturating_sub(bytes.saturating_sub(end as u64)))
                        } else {
                            None
                        };
                        *state = if left == Some(0) {
                            State::Head {
                                seen: 0,
                                tail: [0; 3],
                            }
                        } else {
                            State::Body {
                                started: !body.is_empty(),
                                left,
                            }
                        };
                        let fp = if body.is_empty() {
                            None
                        } else {
                            body_fingerprint(body, whole)
                        };
                        data.truncate(end);
                        fp
                    }
                    None => {
                        let tail = last3(&tail, seen, data);
                        let seen = seen.saturating_add(data.len());
                        *state = if seen > MAX_HEAD {
                            State::Other
                        } else {
                            State::Head { seen, tail }
                        };
                        None
                    }
                }
            }
        }
    }

    /// `bytes` of a body went out on connection `fd` by `sendfile`: counted like written ones,
    /// so that the next response head of a pipeline is found where it starts.
    pub fn sent(&mut self, pid: u32, fd: i32, bytes: u64) {
        if let Some((state, _)) = self.conns.get_mut(&(pid, fd))
            && let State::Body { left, .. } = *state
        {
            let left = left.map(|n| n.saturating_sub(bytes));
            *state = if left == Some(0) {
                State::Head {
                    seen: 0,
                    tail: [0; 3],
                }
            } else {
                State::Body {
                    started: true,
                    left,
                }
            };
        }
    }

    /// The connection is gone (closed, or its fd reused by a new accept).
    pub fn forget(&mut self, pid: u32, fd: i32) {
        self.conns.remove(&(pid, fd));
    }

    pub fn forget_process(&mut self, pid: u32) {
        self.conns.retain(|(p, _), _| *p != pid);
    }

    /// Connections tracked.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

/// `HTTP/` or a prefix of it (a head written a byte at a time).
fn starts_like_response(data: &[u8]) -> bool {
    let n = data.len().min(5);
    data[..n] == b"HTTP/"[..n]
}

/// Offset in `data` just past the blank line that ends a response head, which may have started
/// in the previous writes (`seen` bytes, ending with `tail`): the first `\n` that ends `\n\n` or
/// `\r\n\r\n`. Runs on every response write, so it scans with `memchr` and copies nothing.
fn head_end(tail: &[u8; 3], seen: usize, data: &[u8]) -> Option<usize> {
    let carried = seen.min(3);
    // Byte `back` places before `data[i]`, looking into the tail before `data`; 0 before the
    // head's first byte.
    let before = |i: usize, back: usize| -> u8 {
        match i.checked_sub(back) {
            Some(j) => data[j],
            None => {
                let k = back - i;
                if k <= carried { tail[3 - k] } else { 0 }
            }
        }
    };
    memchr::memchr_iter(b'\n', data)
        .find(|&i| {
            before(i, 1) == b'\n'
                || (before(i, 1) == b'\r' && before(i, 2) == b'\n' && before(i, 3) == b'\r')
        })
        .map(|i| i + 1)
}

/// The last 3 bytes of the head so far (`seen` bytes ending with `tail`, then `data`),
/// zero-filled in front while fewer than 3 were seen.
fn last3(tail: &[u8; 3], seen: usize, data: &[u8]) -> [u8; 3] {
    let mut out = [0u8; 3];
    let total = seen.saturating_add(data.len());
    for (k, slot) in out.iter_mut().enumerate() {
        // Byte `3 - k` places before the end.
        let back = 3 - k;
        if back > total {
            continue;
        }
        *slot = if back <= data.len() {
            data[data.len() - back]
        } else {
            tail[3 - (back - data.len())]
        };
    }
    out
}

/// Fingerprint of a body's first bytes; `whole` says `body` is all the write carried (so a short
/// body is the whole body, not a capture cut short).
fn body_fingerprint(body: &[u8], whole: bool) -> Option<u64> {
    if body.len() < FP_BYTES && !whole {
        return None;
    }
    let n = body.len().min(FP_BYTES);
    let mut buf = [0u8; FP_BYTES];
    buf[..n].copy_from_slice(&body[..n]);
    Some(fingerprint(&buf, n)).filter(|&fp| fp != 0)
}

/// Fingerprint of bytes as the kernel computes it for a document read of them (tests, tools).
#[must_use]
pub fn of(bytes: &[u8]) -> Option<u64> {
    body_fingerprint(bytes, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &[u8] = b"Document 3 of alice: health record, line 1 of many, with enough bytes.";

    fn write(b: &mut Bodies, data: &[u8]) -> (Vec<u8>, Option<u64>) {
        let mut v = data.to_vec();
        let fp = b.response(1, 5, data.len() as u64, &mut v);
        (v, fp)
    }

    #[test]
    fn head_and_body_in_one_write() {
        let mut b = Bodies::new();
        b.request(1, 5);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 70\r\n\r\n";
        let (kept, fp) = write(&mut b, &[&head[..], DOC].concat());
        assert_eq!(kept, head);
        assert_eq!(fp, of(DOC));
        assert!(fp.is_some());
        // The rest of the body is dropped, fingerprint taken once.
        assert_eq!(write(&mut b, b"more body bytes"), (Vec::new(), None));
    }

    #[test]
    fn head_then_body_writes() {
        let mut b = Bodies::new();
        b.request(1, 5);
        let head = b"HTTP/1.1 403 Forbidden\r\n\r\n";
        assert_eq!(write(&mut b, head), (head.to_vec(), None));
        let (kept, fp) = write(&mut b, DOC);
        assert!(kept.is_empty());
        assert_eq!(fp, of(DOC));
        // Next request, next response.
        b.request(1, 5);
        assert_eq!(write(&mut b, head), (head.to_vec(), None));
    }

    #[test]
    fn split_head_and_cut_captures() {
        let mut b = Bodies::new();
        b.request(1, 5);
        assert_eq!(
            write(&mut b, b"HTTP/1.1 200 OK\r\n"),
            (b"HTTP/1.1 200 OK\r\n".to_vec(), None)
        );
        // The body's start is past the capture: no fingerprint, and nothing kept.
        let mut v = b"\r\nabc".to_vec();
        assert_eq!(b.response(1, 5, 10_000, &mut v), None);
        assert_eq!(v, b"\r\n");
    }

    #[test]
    fn short_bodies_fingerprint_only_when_whole() {
        let mut b = Bodies::new();
        b.request(1, 5);
        let data = b"HTTP/1.1 200 OK\r\n\r\nshort body of 24 bytes!!";
        let mut v = data.to_vec();
        assert_eq!(
            b.response(1, 5, data.len() as u64, &mut v),
            of(b"short body of 24 bytes!!")
        );
        b.request(1, 5);
        let mut v = data.to_vec();
        assert_eq!(b.response(1, 5, 4096, &mut v), None);
        b.request(1, 5);
        let tiny = b"HTTP/1.1 200 OK\r\n\r\nok";
        let mut v = tiny.to_vec();
        assert_eq!(b.response(1, 5, tiny.len() as u64, &mut v), None);
    }

    #[test]
    fn other_protocols_are_left_alone() {
        let mut b = Bodies::new();
        b.request(1, 5);
        let fcgi = [
            1u8, 6, 0, 1, 0, 8, 0, 0, b'S', b't', b'a', b't', b'u', b's', b':', b' ',
        ];
        assert_eq!(write(&mut b, &fcgi), (fcgi.to_vec(), None));
        assert_eq!(write(&mut b, &fcgi), (fcgi.to_vec(), None));
    }

    #[test]
    fn body_continuing_after_a_pipelined_read_is_still_dropped() {
        let mut b = Bodies::new();
        b.request(1, 5);
        let _ = write(&mut b, b"HTTP/1.1 200 OK\r\n\r\n");
        let _ = write(&mut b, DOC);
        b.request(1, 5);
        assert_eq!(write(&mut b, DOC), (Vec::new(), None));
    }

    #[test]
    fn head_end_is_found_across_any_split() {
        // The naive definition: the end of the first `\n\n` or `\r\n\r\n` in the whole stream.
        fn naive(stream: &[u8]) -> Option<usize> {
            let crlf = stream
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| i + 4);
            let lf = stream.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
            crlf.into_iter().chain(lf).min()
        }
        for stream in [
            &b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody"[..],
            b"HTTP/1.1 200 OK\nA: b\n\nbody\n\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: \r\r\n\n\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nA: \n\r\n",
            b"HTTP/1.1 200 OK\r\nno end\r\n",
        ] {
            let want = naive(stream);
            // Every way of cutting the stream in two or three writes.
            for a in 0..=stream.len() {
                for b in a..=stream.len() {
                    let (mut tail, mut seen, mut found) = ([0u8; 3], 0usize, None);
                    for part in [&stream[..a], &stream[a..b], &stream[b..]] {
                        if found.is_some() {
                            break;
                        }
                        match head_end(&tail, seen, part) {
                            Some(end) => found = Some(seen + end),
                            None => {
                                tail = last3(&tail, seen, part);
                                seen += part.len();
                                let n = seen.min(3);
                                assert_eq!(&tail[3 - n..], &stream[seen - n..seen]);
                            }
                        }
                    }
                    assert_eq!(
                        found,
                        want,
                        "{:?} cut at {a}, {b}",
                        String::from_utf8_lossy(stream)
                    );
                }
            }
        }
    }

    #[test]
    fn matches_the_kernel_definition() {
        // What the probe computes for a read of DOC: the first FP_BYTES bytes and their count.
        let mut buf = [0u8; FP_BYTES];
        buf.copy_from_slice(&DOC[..FP_BYTES]);
        assert_eq!(of(DOC), Some(fingerprint(&buf, FP_BYTES)));
        assert_ne!(of(DOC), of(&DOC[1..]));
    }

    #[test]
    fn state_is_forgotten() {
        let mut b = Bodies::new();
        b.request(1, 5);
        b.request(2, 5);
        b.forget(1, 5);
        b.forget_process(2);
        assert!(b.is_empty());
    }
}
