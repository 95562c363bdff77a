//! One connection's HTTP/1.x request stream, as the server reads it: request heads reassembled
//! across as many reads as the server made (up to a bound), request bodies skipped by their
//! framing (`Content-Length`, or `chunked` decoded chunk by chunk), pipelined heads returned in
//! order, and every place where the stream cannot be followed exactly reported as a
//! [`Desync`], never guessed past.
//!
//! Pure and total: bytes in, [`Item`]s out, no panics, memory bounded by the head bound. The
//! items depend only on the bytes, never on where the reads cut them (the `http_stream` fuzz
//! target checks exactly that), up to the first desync: resuming after one is a guess about
//! where the next request starts, made only at the start of a read.

use super::{
    FramingParse, HeadParse, HttpError, RequestHead, looks_like_request_start,
    parse_request_framing, parse_request_head,
};

/// Default bound on a request head (request line, fields and the empty line), in bytes.
///
/// What common servers accept by default, from their documentation:
/// - nginx: `client_header_buffer_size 1k`, then `large_client_header_buffers 4 8k`: a line
///   (request line or field) must fit in 8 KiB and the whole head in 4 × 8 KiB = 32 KiB;
/// - Apache Tomcat: `maxHttpHeaderSize` 8 KiB (request line and fields);
/// - gunicorn: `limit_request_line` 4094, `limit_request_fields` 100 of
///   `limit_request_field_size` 8190 bytes each: about 800 KiB in theory;
/// - Node.js: `--max-http-header-size` 16 KiB; Apache httpd: `LimitRequestFieldSize` 8190 and
///   `LimitRequestFields` 100;
/// - php-fpm reads FastCGI params, not HTTP heads: the front server's bound applies (see
///   [`crate::fastcgi`] for the params bound).
///
/// 64 KiB covers nginx, Tomcat and Node with room; a server configured for more (or gunicorn)
/// needs `capture.max_head_bytes` raised to match, or its larger heads are reported as
/// [`Desync::HeadTooLarge`].
pub const DEFAULT_MAX_HEAD: usize = 64 * 1024;

/// Longest chunk-size line (size, extensions, line end) followed; nginx refuses long ones too.
const MAX_CHUNK_LINE: u32 = 4096;

/// Longest trailer section followed after the last chunk.
const MAX_TRAILER: u32 = 64 * 1024;

/// What a stream yields, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item<'a> {
    /// A complete request head: a request the server will answer, in this order.
    Head(RequestHead),
    /// Captured bytes of the body of the last head (chunk data without its framing).
    Body(&'a [u8]),
    /// The stream is lost from here: no request is taken from it until a read starts with a
    /// request line.
    Desync(Desync),
}

/// Why a connection's stream could no longer be followed exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Desync {
    /// Bytes that are not a request head where one was due (garbage, TLS, a refused head).
    InvalidHead,
    /// A head longer than the bound (`capture.max_head_bytes`).
    HeadTooLarge,
    /// Bytes the server read that the capture did not hold, where their content mattered.
    Uncaptured,
    /// A chunked body whose framing is invalid.
    BadChunk,
    /// Events were lost in the kernel: a read of this connection may be among them.
    EventsLost,
    /// A FastCGI record stream was lost (a malformed or uncaptured record header).
    FastCgi,
    /// Pipelined requests whose response boundary is unknown: a read between two responses
    /// could be for either request.
    PipelineAmbiguous,
    /// An HTTP/2 connection was lost (see [`crate::http2::Lost`]): its streams are over, and
    /// what it serves from then on is nobody's.
    Http2,
}

impl Desync {
    /// Every reason, for metrics (bounded label values).
    pub const ALL: [Desync; 8] = [
        Desync::InvalidHead,
        Desync::HeadTooLarge,
        Desync::Uncaptured,
        Desync::BadChunk,
        Desync::EventsLost,
        Desync::FastCgi,
        Desync::PipelineAmbiguous,
        Desync::Http2,
    ];

    /// The name used in alerts (the judge's rule), metrics and `explain`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Desync::InvalidHead => "invalid_head",
            Desync::HeadTooLarge => "head_too_large",
            Desync::Uncaptured => "read_not_captured",
            Desync::BadChunk => "bad_chunked_body",
            Desync::EventsLost => "events_lost",
            Desync::FastCgi => "fastcgi_desync",
            Desync::PipelineAmbiguous => "pipeline_ambiguous",
            Desync::Http2 => "http2_lost",
        }
    }
}

/// Where in a chunked body the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The chunk-size line: its size so far, whether its digits ended (extensions or blanks
    /// follow), and its length.
    Size {
        size: u64,
        digits: u8,
        ended: bool,
        len: u32,
    },
    /// Chunk data still to come.
    Data { remaining: u64 },
    /// The line end after chunk data (`CR` seen or not).
    DataEnd { cr: bool },
    /// The trailer section after the last chunk: bytes of the current line, and total.
    Trailer { line: u32, total: u32 },
}

/// The start of a chunk-size line.
const CHUNK_START: Chunk = Chunk::Size {
    size: 0,
    digits: 0,
    ended: false,
    len: 0,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body {
        remaining: u64,
    },
    Chunked(Chunk),
    /// After a request the server closes the connection after (`Connection: close`, HTTP/1.0
    /// without keep-alive): nothing more is a request.
    Closing,
    Lost,
}

/// The request stream of one connection.
#[derive(Debug, Clone)]
pub struct RequestStream {
    state: State,
    /// The head in progress (leading empty lines already skipped).
    head: Vec<u8>,
    /// How far `head` was searched for its end.
    scanned: usize,
    /// Its request line was checked (once complete).
    line_checked: bool,
    /// The request being read is the connection's last (not persistent).
    close_after_body: bool,
    max_head: usize,
    /// Heads are yielded as [`Item::Head`]; without, only followed (see
    /// [`RequestStream::framing_only`]).
    heads: bool,
}

impl RequestStream {
    /// A stream that starts at a request (a connection accepted under our eyes).
    #[must_use]
    pub fn new(max_head: usize) -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            scanned: 0,
            line_checked: false,
            close_after_body: false,
            max_head: max_head.max(16),
            heads: true,
        }
    }

    /// The same stream, every state alike, but complete heads are not yielded: each head is
    /// parsed for its framing only, its fields never copied (for a stage that needs to know
    /// where requests start and end, not what they ask).
    #[must_use]
    pub fn framing_only(self) -> Self {
        Self {
            heads: false,
            ..self
        }
    }

    /// A stream joined in the middle: it starts lost, and resumes at a read that starts with a
    /// request line.
    #[must_use]
    pub fn joined(max_head: usize) -> Self {
        Self {
            state: State::Lost,
            ..Self::new(max_head)
        }
    }

    /// Whether a head is in progress (some of it read, not complete).
    #[must_use]
    pub fn head_pending(&self) -> bool {
        self.state == State::Head && !self.head.is_empty()
    }

    /// Whether the next bytes are (part of) a request head.
    #[must_use]
    pub fn in_head(&self) -> bool {
        self.state == State::Head
    }

    /// Whether the stream is lost (waiting for a read that starts a request).
    #[must_use]
    pub fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Loses the stream (e.g. events were lost): it resumes like a joined one.
    pub fn lose(&mut self) {
        self.reset_head();
        self.state = State::Lost;
    }

    fn reset_head(&mut self) {
        self.head.clear();
        self.scanned = 0;
        self.line_checked = false;
    }

    /// Feeds one read: `data` is what the capture holds of a read of `total` bytes (its first
    /// bytes). Items are appended to `out` in stream order.
    pub fn feed<'a>(&mut self, data: &'a [u8], total: u64, out: &mut Vec<Item<'a>>) {
        if self.state == State::Lost && looks_like_request_start(data) {
            self.state = State::Head;
            self.reset_head();
        }
        let mut rest = data;
        while !rest.is_empty() {
            let used = match self.state {
                State::Head => self.head_bytes(rest, out),
                State::Body { remaining } => {
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    out.push(Item::Body(&rest[..take]));
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        self.after_body()
                    } else {
                        State::Body { remaining: left }
                    };
                    take
                }
                State::Chunked(chunk) => self.chunk_bytes(chunk, rest, out),
                State::Closing | State::Lost => rest.len(),
            };
            rest = &rest[used.min(rest.len())..];
        }
        let unseen = total.saturating_sub(data.len() as u64);
        if unseen > 0 {
            self.skip_unseen(unseen, out);
        }
    }

    /// Bytes the server read past the capture: skipped where their count is all that matters
    /// (body and chunk data), lost otherwise.
    fn skip_unseen(&mut self, unseen: u64, out: &mut Vec<Item<'_>>) {
        match self.state {
            State::Body { remaining } if unseen <= remaining => {
                self.state = if unseen == remaining {
                    self.after_body()
                } else {
                    State::Body {
                        remaining: remaining - unseen,
                    }
                };
            }
            State::Chunked(Chunk::Data { remaining }) if unseen < remaining => {
                self.state = State::Chunked(Chunk::Data {
                    remaining: remaining - unseen,
                });
            }
            State::Closing | State::Lost => {}
            _ => {
                self.reset_head();
                self.state = State::Lost;
                out.push(Item::Desync(Desync::Uncaptured));
            }
        }
    }

    /// Head bytes: returns how many of `rest` were used.
    fn head_bytes(&mut self, rest: &[u8], out: &mut Vec<Item<'_>>) -> usize {
        // Empty lines before a request line are ignored (RFC 9112 §2.2), as servers do. A CR
        // that ends a read is kept until the next byte says whether it starts an empty line.
        if self.head == b"\r" {
            if rest[0] == b'\n' {
                self.head.clear();
                return 1;
            }
        } else if self.head.is_empty() {
            match rest {
                [b'\n', ..] => return 1,
                [b'\r', b'\n', ..] => return 2,
                [b'\r'] => {
                    self.head.push(b'\r');
                    return 1;
                }
                _ => {}
            }
        }
        let before = self.head.len();
        let room = self.max_head.saturating_sub(before);
        let take = room.min(rest.len());
        self.head.extend_from_slice(&rest[..take]);
        if let Some(end) = self.find_end() {
            let used = end - before;
            let (framing, head) = if self.heads {
                match parse_request_head(&self.head[..end]) {
                    HeadParse::Complete(head) => (
                        Some((head.chunked, head.content_length, head.keep_alive)),
                        Some(head),
                    ),
                    _ => (None, None),
                }
            } else {
                match parse_request_framing(&self.head[..end]) {
                    FramingParse::Complete(f) => {
                        (Some((f.chunked, f.content_length, f.keep_alive)), None)
                    }
                    _ => (None, None),
                }
            };
            self.reset_head();
            let Some((chunked, content_length, keep_alive)) = framing else {
                return self.lost(Desync::InvalidHead, out) + rest.len();
            };
            self.close_after_body = !keep_alive;
            self.state = match (chunked, content_length) {
                (true, _) => State::Chunked(CHUNK_START),
                (false, Some(n)) if n > 0 => State::Body { remaining: n },
                _ => self.after_body(),
            };
            if let Some(head) = head {
                out.push(Item::Head(head));
            }
            return used;
        }
        // Not complete yet: refuse early what no continuation can make a head.
        if !self.line_checked {
            let refused = if self.head.contains(&b'\n') {
                self.line_checked = true;
                super::request_line(&self.head).is_none()
            } else {
                matches!(
                    parse_request_head(&self.head),
                    HeadParse::Invalid(HttpError::NotHttp)
                )
            };
            if refused {
                return self.lost(Desync::InvalidHead, out) + rest.len();
            }
        }
        if self.head.len() >= self.max_head {
            return self.lost(Desync::HeadTooLarge, out) + rest.len();
        }
        take
    }

    /// Where the stream goes once a request (head and body) is over.
    fn after_body(&self) -> State {
        if self.close_after_body {
            State::Closing
        } else {
            State::Head
        }
    }

    fn lost(&mut self, why: Desync, out: &mut Vec<Item<'_>>) -> usize {
        self.reset_head();
        self.state = State::Lost;
        out.push(Item::Desync(why));
        0
    }

    /// End of the head in `self.head` (just past its empty line), searching only new bytes.
    fn find_end(&mut self) -> Option<usize> {
        let from = self.scanned.saturating_sub(2);
        let found = self.head[from..]
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .find_map(|(i, _)| {
                let at = from + i;
                let before = &self.head[..at];
                (before.ends_with(b"\n") || before.ends_with(b"\n\r")).then_some(at + 1)
            });
        self.scanned = self.head.len();
        found
    }

    /// Chunked body bytes: returns how many of `rest` were used.
    fn chunk_bytes<'a>(&mut self, chunk: Chunk, rest: &'a [u8], out: &mut Vec<Item<'a>>) -> usize {
        match chunk {
            Chunk::Size {
                mut size,
                mut digits,
                mut ended,
                mut len,
            } => {
                for (i, &b) in rest.iter().enumerate() {
                    len += 1;
                    if len > MAX_CHUNK_LINE {
                        return self.lost(Desync::BadChunk, out) + rest.len();
                    }
                    match b {
                        b'\n' => {
                            if digits == 0 {
                                return self.lost(Desync::BadChunk, out) + rest.len();
                            }
                            self.state = State::Chunked(if size == 0 {
                                Chunk::Trailer { line: 0, total: 0 }
                            } else {
                                Chunk::Data { remaining: size }
                            });
                            return i + 1;
                        }
                        _ if !ended && b.is_ascii_hexdigit() => {
                            digits += 1;
                            // 16 hex digits fill 64 bits; nginx refuses sizes past `off_t`.
                            if digits > 15 {
                                return self.lost(Desync::BadChunk, out) + rest.len();
                            }
                            let d = (b as char).to_digit(16).unwrap_or(0);
                            size = size * 16 + u64::from(d);
                        }
                        b';' | b' ' | b'\t' | b'\r' if digits > 0 => ended = true,
                        _ if ended && b != b'\r' => {}
                        _ => return self.lost(Desync::BadChunk, out) + rest.len(),
                    }
                }
                self.state = State::Chunked(Chunk::Size {
                    size,
                    digits,
                    ended,
                    len,
                });
                rest.len()
            }
            Chunk::Data { remaining } => {
                let take = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                out.push(Item::Body(&rest[..take]));
                let left = remaining - take as u64;
                self.state = State::Chunked(if left == 0 {
                    Chunk::DataEnd { cr: false }
                } else {
                    Chunk::Data { remaining: left }
                });
                take
            }
            Chunk::DataEnd { cr } => match rest[0] {
                b'\r' if !cr => {
                    self.state = State::Chunked(Chunk::DataEnd { cr: true });
                    1
                }
                b'\n' => {
                    self.state = State::Chunked(CHUNK_START);
                    1
                }
                _ => self.lost(Desync::BadChunk, out) + rest.len(),
            },
            Chunk::Trailer {
                mut line,
                mut total,
            } => {
                for (i, &b) in rest.iter().enumerate() {
                    total += 1;
                    if total > MAX_TRAILER {
                        return self.lost(Desync::BadChunk, out) + rest.len();
                    }
                    if b == b'\n' {
                        if line == 0 {
                            self.state = self.after_body();
                            return i + 1;
                        }
                        line = 0;
                    } else if b != b'\r' || line > 0 {
                        line += 1;
                    }
                }
                self.state = State::Chunked(Chunk::Trailer { line, total });
                rest.len()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a stream fed `reads` (each captured whole) yields: heads as `method target`,
    /// bodies joined per request, desyncs by name. A framing-only stream fed alike must yield
    /// the same items but the heads, and be in the same state after every read.
    fn run(reads: &[&[u8]], max_head: usize) -> Vec<String> {
        let mut s = RequestStream::new(max_head);
        let mut framing = RequestStream::new(max_head).framing_only();
        let mut got: Vec<String> = Vec::new();
        for r in reads {
            let mut out = Vec::new();
            s.feed(r, r.len() as u64, &mut out);
            let mut framed = Vec::new();
            framing.feed(r, r.len() as u64, &mut framed);
            let no_heads: Vec<Item<'_>> = out
                .iter()
                .filter(|i| !matches!(i, Item::Head(_)))
                .cloned()
                .collect();
            assert_eq!(framed, no_heads);
            assert_eq!(
                (framing.state, framing.close_after_body, &framing.head),
                (s.state, s.close_after_body, &s.head)
            );
            for item in out {
                match item {
                    Item::Head(h) => got.push(format!("{} {}", h.method, h.target)),
                    Item::Body(b) => match got.last_mut() {
                        Some(last) if last.starts_with("body:") => {
                            last.push_str(&String::from_utf8_lossy(b));
                        }
                        _ => got.push(format!("body:{}", String::from_utf8_lossy(b))),
                    },
                    Item::Desync(d) => got.push(format!("desync:{}", d.as_str())),
                }
            }
        }
        got
    }

    /// Items up to the first desync: after one, resuming depends on where reads start.
    fn until_desync(mut items: Vec<String>) -> Vec<String> {
        if let Some(i) = items.iter().position(|i| i.starts_with("desync:")) {
            items.truncate(i + 1);
        }
        items
    }

    fn whole_and_split(stream: &[u8], max_head: usize) -> Vec<String> {
        let run = |reads: &[&[u8]], max_head| until_desync(run(reads, max_head));
        let whole = run(&[stream], max_head);
        // Every single cut, and byte by byte.
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(run(&[a, b], max_head), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes, max_head), whole, "byte by byte");
        whole
    }

    #[test]
    fn pipelined_heads_come_out_in_order_wherever_the_reads_cut() {
        let s = b"GET /a HTTP/1.1\r\nAuthorization: Basic YTpi\r\n\r\nGET /b HTTP/1.1\r\n\r\n\r\nHEAD /c HTTP/1.1\nX: y\n\n";
        assert_eq!(whole_and_split(s, 4096), ["GET /a", "GET /b", "HEAD /c"]);
    }

    #[test]
    fn a_body_that_contains_a_request_is_never_a_request() {
        let inner = "GET /docs/bob/x HTTP/1.1\r\nX-Remote-User: bob\r\n\r\n";
        let s = format!(
            "POST /up HTTP/1.1\r\nContent-Length: {}\r\n\r\n{inner}GET /next HTTP/1.1\r\n\r\n",
            inner.len()
        );
        assert_eq!(
            whole_and_split(s.as_bytes(), 4096),
            ["POST /up", &format!("body:{inner}"), "GET /next"]
        );
    }

    #[test]
    fn chunked_bodies_are_decoded_and_skipped() {
        let s = b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nGET /\r\n17\r\nGET /x HTTP/1.1\r\n\r\nabcd\r\n0\r\nTrailer: t\r\n\r\nGET /after HTTP/1.1\r\n\r\n";
        assert_eq!(
            whole_and_split(s, 4096),
            [
                "POST /up",
                "body:GET /GET /x HTTP/1.1\r\n\r\nabcd",
                "GET /after"
            ]
        );
    }

    #[test]
    fn bad_chunk_framing_is_a_desync() {
        let s =
            b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /x HTTP/1.1\r\n\r\n";
        assert_eq!(
            whole_and_split(s, 4096),
            ["POST /up", "desync:bad_chunked_body"]
        );
    }

    #[test]
    fn connection_close_ends_the_pipeline() {
        let s = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        assert_eq!(whole_and_split(s, 4096), ["GET /a", "GET /b"]);
        let s10 = b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\nGET /c HTTP/1.0\r\n\r\n";
        assert_eq!(whole_and_split(s10, 4096), ["GET /a", "GET /b"]);
    }

    #[test]
    fn heads_up_to_the_bound_are_whole_and_larger_ones_are_reported() {
        let mut s = b"GET /big HTTP/1.1\r\n".to_vec();
        for i in 0..300 {
            s.extend_from_slice(format!("X-H{i}: {}\r\n", "v".repeat(40)).as_bytes());
        }
        s.extend_from_slice(b"X-Remote-User: alice\r\n\r\n");
        let mut ok = RequestStream::new(64 * 1024);
        let mut out = Vec::new();
        for piece in s.chunks(7) {
            ok.feed(piece, piece.len() as u64, &mut out);
        }
        let [Item::Head(head)] = out.as_slice() else {
            panic!("{out:?}");
        };
        assert_eq!(head.header("x-remote-user"), Some(&b"alice"[..]));
        assert_eq!(head.headers.len(), 301);
        assert_eq!(run(&[&s], 8 * 1024), ["desync:head_too_large"]);
    }

    #[test]
    fn garbage_and_uncaptured_heads_lose_the_stream_until_a_request_line() {
        assert_eq!(
            run(
                &[b"\x16\x03\x01garbage", b"more", b"GET /x HTTP/1.1\r\n\r\n"],
                4096
            ),
            ["desync:invalid_head", "GET /x"]
        );
        let mut s = RequestStream::new(4096);
        let mut out = Vec::new();
        s.feed(b"GET /x HTTP/1.1\r\nX: ", 5000, &mut out);
        assert_eq!(out, [Item::Desync(Desync::Uncaptured)]);
        // A body longer than the capture is skipped by its length.
        let mut s = RequestStream::new(4096);
        let mut out = Vec::new();
        s.feed(
            b"POST /x HTTP/1.1\r\nContent-Length: 10000\r\n\r\n",
            44,
            &mut out,
        );
        s.feed(b"aaaa", 10_000, &mut out);
        s.feed(b"GET /y HTTP/1.1\r\n\r\n", 19, &mut out);
        assert!(
            matches!(out.last(), Some(Item::Head(h)) if h.target == "/y"),
            "{out:?}"
        );
    }

    #[test]
    fn a_joined_stream_resumes_at_a_request_line() {
        let mut s = RequestStream::joined(4096);
        let mut out = Vec::new();
        s.feed(b"tail of something\r\n\r\n", 21, &mut out);
        assert!(out.is_empty());
        s.feed(b"GET /x HTTP/1.1\r\n\r\n", 19, &mut out);
        assert_eq!(out.len(), 1);
    }
}
