//! FastCGI (version 1), as a front web server and a FastCGI application exchange it on their
//! socket, decoded from Vigie's bounded captures.
//!
//! The bytes are hostile and partial: each socket read or write carries at most a few KiB of
//! capture, of a byte count that may be larger, and records are split across reads at any byte.
//! So the decoder is incremental and knows how many bytes it did not see: content it cannot see
//! is skipped by its length (the framing stays known), and only a record header it cannot see,
//! or one that is not FastCGI, loses the stream. A lost stream waits for a record that can only
//! start a request (see [`Reader`]). Every function is total and every buffer bounded.
//!
//! - [`Reader`]: record framing of one direction of one connection.
//! - [`Protocol`]: HTTP or FastCGI, decided per connection from its first bytes. The redactor
//!   and the correlator both use it, on the same bytes, so they always agree.
//! - [`Connection`]: requests of one connection keyed by request id (so multiplexed and kept
//!   connections work): the params as a synthetic [`RequestHead`], the response status from the
//!   CGI head of STDOUT, the end of each request.
use std::collections::BTreeMap;

use crate::http::{self, RequestHead};

/// Bytes of a record header.
pub const HEADER_LEN: usize = 8;

/// Record types (FastCGI specification, section 8).
pub mod kind {
    pub const BEGIN_REQUEST: u8 = 1;
    pub const ABORT_REQUEST: u8 = 2;
    pub const END_REQUEST: u8 = 3;
    pub const PARAMS: u8 = 4;
    pub const STDIN: u8 = 5;
    pub const STDOUT: u8 = 6;
    pub const STDERR: u8 = 7;
    pub const DATA: u8 = 8;
    pub const GET_VALUES: u8 = 9;
    pub const GET_VALUES_RESULT: u8 = 10;
    pub const UNKNOWN_TYPE: u8 = 11;
}

/// Name of the pseudo header that carries `REMOTE_USER` / `AUTH_USER` in the synthetic head.
/// No HTTP head can hold it: a header name is a token, and a token has no `:`.
pub const REMOTE_USER_HEADER: &str = ":remote-user";

/// Largest params stream kept per request; more is `truncated` (no identity, as an HTTP head
/// larger than the capture).
pub const MAX_PARAMS_BYTES: usize = 32 * 1024;

/// Most name-value pairs read from one params stream; more is `truncated`.
pub const MAX_PARAMS: usize = 256;

/// Largest CGI response head (the start of STDOUT) kept per request.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// Most requests in flight on one connection (between BEGIN_REQUEST and END_REQUEST). A front
/// server that multiplexes keeps a few; past this the lowest request id is forgotten.
pub const MAX_EXCHANGES: usize = 64;

/// A record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub request_id: u16,
    pub content_len: u16,
    pub padding_len: u8,
}

impl Header {
    /// Version 1 and a type the specification defines; anything else is not FastCGI (or a
    /// stream read out of step).
    #[must_use]
    pub fn parse(b: &[u8; HEADER_LEN]) -> Option<Header> {
        (b[0] == 1 && (kind::BEGIN_REQUEST..=kind::UNKNOWN_TYPE).contains(&b[1])).then(|| Header {
            kind: b[1],
            request_id: u16::from_be_bytes([b[2], b[3]]),
            content_len: u16::from_be_bytes([b[4], b[5]]),
            padding_len: b[6],
        })
    }

    /// The 8 header bytes (for tests and fuzzing).
    #[must_use]
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let [i0, i1] = self.request_id.to_be_bytes();
        let [l0, l1] = self.content_len.to_be_bytes();
        [1, self.kind, i0, i1, l0, l1, self.padding_len, 0]
    }
}

/// Whether `data` starts with a `BEGIN_REQUEST` record, checked strictly: request id not 0, 8
/// bytes of content and no padding, then (as far as `data` holds them) a defined role, a flags
/// byte of 0 or 1 and zero reserved bytes. At least the 8 header bytes are needed: applications
/// that read a header, then its content, get exactly those. What a lost stream resumes on.
#[must_use]
pub fn is_begin_request(data: &[u8]) -> bool {
    // Per byte, `mask` and the value the masked byte must have: version 1, type 1, any id,
    // content length 8, no padding, any reserved; role 1..=3 (0 is ruled out below), flags 0
    // or 1, five zero bytes.
    const SHAPE: [(u8, u8); 16] = [
        (0xff, 1),
        (0xff, kind::BEGIN_REQUEST),
        (0, 0),
        (0, 0),
        (0xff, 0),
        (0xff, 8),
        (0xff, 0),
        (0, 0),
        (0xff, 0),
        (0xfc, 0),
        (0xfe, 0),
        (0xff, 0),
        (0xff, 0),
        (0xff, 0),
        (0xff, 0),
        (0xff, 0),
    ];
    data.len() >= HEADER_LEN
        && (data[2], data[3]) != (0, 0)
        && data.get(9).is_none_or(|&role| role != 0)
        && data
            .iter()
            .zip(SHAPE)
            .all(|(&b, (mask, value))| b & mask == value)
}

/// Whether bytes read from a connection joined mid-stream start FastCGI from a front server: a
/// `BEGIN_REQUEST` record ([`is_begin_request`]) or a management `GET_VALUES` record.
#[must_use]
pub fn starts_fastcgi(data: &[u8]) -> bool {
    is_begin_request(data)
        || data
            .get(..4)
            .is_some_and(|b| b == [1, kind::GET_VALUES, 0, 0])
}

/// The protocol of one connection, decided from the bytes the target reads from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Joined in the middle (open before Vigie, or first seen on a read): decided by the first
    /// read that starts a FastCGI request or an HTTP request line.
    #[default]
    Unknown,
    /// Accepted under Vigie's eyes, nothing read yet: the first byte decides. FastCGI records
    /// start with their version, 1; no HTTP request (nor TLS, nor HTTP/2) starts with that byte.
    Fresh,
    Http,
    FastCgi,
}

impl Protocol {
    /// Takes the next captured bytes the target read from the connection (at a read boundary)
    /// and returns the protocol as decided so far. Undecided connections are handled as HTTP.
    pub fn observe(&mut self, data: &[u8]) -> Protocol {
        if data.is_empty() {
            return *self;
        }
        match *self {
            Protocol::Fresh if data[0] == 1 => *self = Protocol::FastCgi,
            Protocol::Fresh => *self = Protocol::Http,
            Protocol::Unknown if starts_fastcgi(data) => *self = Protocol::FastCgi,
            Protocol::Unknown if http::looks_like_request_start(data) => *self = Protocol::Http,
            _ => {}
        }
        *self
    }
}

/// Which side wrote the bytes: decides where a lost stream may pick up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Front server to application (what the target reads): a lost stream resumes only at a
    /// read that starts with a `BEGIN_REQUEST` ([`is_begin_request`]).
    ToApp,
    /// Application to front server (what the target writes): a lost stream resumes at a write
    /// that starts with a STDOUT, STDERR or END_REQUEST header for a request id other than 0.
    /// Applications write whole records.
    FromApp,
}

/// What [`Reader::feed`] found, in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A record header; its content (if any) follows, then [`Piece::End`].
    Header(Header),
    /// Captured content of the current record: `bytes` is `data[at..at + bytes.len()]`.
    Content {
        header: Header,
        at: usize,
        bytes: &'a [u8],
    },
    /// Content of the current record that the capture did not hold.
    Unseen { header: Header, len: u64 },
    /// The current record's content is complete (its padding may still follow).
    End(Header),
    /// The stream was lost: a header that is not FastCGI, or one the capture did not hold.
    /// Bytes from `data[at..]` on are skipped until the stream resumes.
    Desync { at: usize },
    /// The lost stream resumed at the start of this chunk.
    Resync,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Header { buf: [u8; HEADER_LEN], have: usize },
    Content { header: Header, remaining: u16 },
    Padding { remaining: u8 },
    Lost,
}

const AT_HEADER: State = State::Header {
    buf: [0; HEADER_LEN],
    have: 0,
};

/// Incremental record framing of one direction of one connection. Holds at most one partial
/// header (8 bytes): contents are passed on as they come, never buffered.
#[derive(Debug, Clone)]
pub struct Reader {
    dir: Direction,
    state: State,
}

impl Reader {
    #[must_use]
    pub fn new(dir: Direction) -> Self {
        Self {
            dir,
            state: AT_HEADER,
        }
    }

    /// Whether the framing is known (not waiting to resynchronise).
    #[must_use]
    pub fn in_sync(&self) -> bool {
        self.state != State::Lost
    }

    /// Forget the framing (events were lost): wait for a point to resynchronise.
    pub fn lose_sync(&mut self) {
        self.state = State::Lost;
    }

    /// Feeds the next chunk of the stream: `data` is what was captured of a syscall that moved
    /// `total` bytes (`total >= data.len()`; the rest was not captured). Calls `f` with each
    /// piece found, in order.
    pub fn feed<'a>(&mut self, data: &'a [u8], total: u64, mut f: impl FnMut(Piece<'a>)) {
        let mut unseen = total.saturating_sub(data.len() as u64);
        let mut pos = 0usize;
        if self.state == State::Lost {
            if !self.resumes_at(data) {
                return;
            }
            self.state = AT_HEADER;
            f(Piece::Resync);
        }
        loop {
            match self.state {
                State::Lost => return,
                State::Header { mut buf, mut have } => {
                    if pos >= data.len() {
                        if unseen > 0 {
                            // The next header is out of sight: the framing is lost.
                            self.state = State::Lost;
                            f(Piece::Desync { at: data.len() });
                        }
                        return;
                    }
                    let take = (HEADER_LEN - have).min(data.len() - pos);
                    buf[have..have + take].copy_from_slice(&data[pos..pos + take]);
                    have += take;
                    pos += take;
                    if have < HEADER_LEN {
                        self.state = State::Header { buf, have };
                        continue;
                    }
                    let Some(header) = Header::parse(&buf) else {
                        self.state = State::Lost;
                        f(Piece::Desync { at: pos });
                        return;
                    };
                    f(Piece::Header(header));
                    self.state = State::Content {
                        header,
                        remaining: header.content_len,
                    };
                    if header.content_len == 0 {
                        self.end_content(header, &mut f);
                    }
                }
                State::Content { header, remaining } => {
                    let mut left = remaining;
                    if pos < data.len() {
                        let take = usize::from(left).min(data.len() - pos);
                        // `take` <= `left`, a u16.
                        left -= take as u16;
                        f(Piece::Content {
                            header,
                            at: pos,
                            bytes: &data[pos..pos + take],
                        });
                        pos += take;
                    } else if unseen > 0 {
                        let take = u64::from(left).min(unseen);
                        left -= take as u16;
                        unseen -= take;
                        f(Piece::Unseen { header, len: take });
                    } else {
                        return;
                    }
                    if left == 0 {
                        self.end_content(header, &mut f);
                    } else {
                        self.state = State::Content {
                            header,
                            remaining: left,
                        };
                    }
                }
                State::Padding { remaining } => {
                    let mut left = remaining;
                    if pos < data.len() {
                        let take = usize::from(left).min(data.len() - pos);
                        left -= take as u8;
                        pos += take;
                    } else if unseen > 0 {
                        let take = u64::from(left).min(unseen);
                        left -= take as u8;
                        unseen -= take;
                    } else {
                        return;
                    }
                    self.state = if left == 0 {
                        AT_HEADER
                    } else {
                        State::Padding { remaining: left }
                    };
                }
            }
        }
    }

    fn end_content<'a>(&mut self, header: Header, f: &mut impl FnMut(Piece<'a>)) {
        f(Piece::End(header));
        self.state = if header.padding_len > 0 {
            State::Padding {
                remaining: header.padding_len,
            }
        } else {
            AT_HEADER
        };
    }

    /// Where a lost stream may pick up again: see [`Direction`].
    fn resumes_at(&self, data: &[u8]) -> bool {
        match self.dir {
            Direction::ToApp => is_begin_request(data),
            Direction::FromApp => {
                let Some(b) = data.first_chunk::<HEADER_LEN>() else {
                    return false;
                };
                Header::parse(b).is_some_and(|h| {
                    h.request_id != 0
                        && match h.kind {
                            kind::STDOUT | kind::STDERR => true,
                            kind::END_REQUEST => h.content_len == 8,
                            _ => false,
                        }
                })
            }
        }
    }
}

/// Length of a name or value in a name-value pair: one byte below 128, else four bytes with the
/// top bit set (31 bits). `None` when `b` is too short; returns the length and the bytes used.
#[must_use]
pub fn nv_length(b: &[u8]) -> Option<(u32, usize)> {
    let first = *b.first()?;
    if first < 0x80 {
        return Some((u32::from(first), 1));
    }
    let four = b.first_chunk::<4>()?;
    Some((u32::from_be_bytes(*four) & 0x7fff_ffff, 4))
}

/// Name-value pairs decoded from a params stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The stream ended inside a pair, or held more than [`MAX_PARAMS`] pairs.
    pub truncated: bool,
}

impl Params {
    /// Decodes the pairs of `stream` (the contents of a request's PARAMS records, in order).
    #[must_use]
    pub fn parse(stream: &[u8]) -> Params {
        let mut out = Params::default();
        let mut rest = stream;
        while !rest.is_empty() {
            if out.pairs.len() >= MAX_PARAMS {
                out.truncated = true;
                break;
            }
            let Some((pair, used)) = next_pair(rest) else {
                out.truncated = true;
                break;
            };
            out.pairs.push((pair.0.to_vec(), pair.1.to_vec()));
            rest = &rest[used..];
        }
        out
    }

    /// Values of the param `name` (exact, as FastCGI names are), in stream order.
    pub fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        let name = name.as_bytes().to_vec();
        self.pairs
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn first(&self, name: &str) -> Option<&[u8]> {
        self.values(name).next()
    }

    /// The request as an HTTP head, for the correlator's one path from heads to requests:
    /// `REQUEST_METHOD` and `REQUEST_URI` (else `SCRIPT_NAME` + `PATH_INFO` + `?QUERY_STRING`)
    /// make the request line; `HTTP_*` params become the headers they came from
    /// (`HTTP_X_REMOTE_USER` -> `x-remote-user`), as do `CONTENT_TYPE` and `CONTENT_LENGTH`;
    /// `REMOTE_USER` and `AUTH_USER` (set by the front server after authenticating) go to the
    /// [`REMOTE_USER_HEADER`] pseudo header, `REMOTE_ADDR` and `REMOTE_PORT` to
    /// [`crate::client::REMOTE_ADDR_HEADER`] and [`crate::client::REMOTE_PORT_HEADER`]. Bodies are framed by STDIN records, so the head
    /// has no body length.
    #[must_use]
    pub fn request_head(&self) -> RequestHead {
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let method = self
            .first("REQUEST_METHOD")
            .map_or_else(|| "-".into(), lossy);
        let target = match self.first("REQUEST_URI") {
            Some(uri) => lossy(uri),
            None => {
                let mut t = Vec::new();
                t.extend_from_slice(self.first("SCRIPT_NAME").unwrap_or_default());
                t.extend_from_slice(self.first("PATH_INFO").unwrap_or_default());
                if let Some(q) = self.first("QUERY_STRING").filter(|q| !q.is_empty()) {
                    t.push(b'?');
                    t.extend_from_slice(q);
                }
                if t.is_empty() { "-".into() } else { lossy(&t) }
            }
        };
        let minor_version = u8::from(self.first("SERVER_PROTOCOL") != Some(b"HTTP/1.0"));
        let headers = self
            .pairs
            .iter()
            .filter_map(|(name, value)| Some((header_name(name)?, value.clone())))
            .collect();
        RequestHead {
            method,
            target,
            minor_version,
            headers,
            head_len: 0,
            content_length: None,
            chunked: false,
            keep_alive: true,
        }
    }
}

/// The header a param stands for, lowercased; `None` for params that are not headers.
fn header_name(param: &[u8]) -> Option<String> {
    let name = match param {
        b"REMOTE_USER" | b"AUTH_USER" => return Some(REMOTE_USER_HEADER.to_owned()),
        b"REMOTE_ADDR" => return Some(crate::client::REMOTE_ADDR_HEADER.to_owned()),
        b"REMOTE_PORT" => return Some(crate::client::REMOTE_PORT_HEADER.to_owned()),
        b"CONTENT_TYPE" => b"CONTENT_TYPE".as_slice(),
        b"CONTENT_LENGTH" => b"CONTENT_LENGTH".as_slice(),
        other => other.strip_prefix(b"HTTP_")?,
    };
    if name.is_empty() || !name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') {
        return None;
    }
    Some(
        name.iter()
            .map(|&b| {
                if b == b'_' {
                    '-'
                } else {
                    char::from(b.to_ascii_lowercase())
                }
            })
            .collect(),
    )
}

/// The param name as the HTTP header it came from (`HTTP_COOKIE` -> `cookie`): what redaction
/// matches on. `None` for params that are not `HTTP_*`.
#[must_use]
pub fn param_header(param: &[u8]) -> Option<String> {
    param.strip_prefix(b"HTTP_")?;
    header_name(param)
}

/// A name and its value, borrowed from a params stream.
type Pair<'a> = (&'a [u8], &'a [u8]);

/// The first pair of `b` and the bytes it takes; `None` when `b` ends inside it.
fn next_pair(b: &[u8]) -> Option<(Pair<'_>, usize)> {
    let (name_len, a) = nv_length(b)?;
    let (value_len, c) = nv_length(b.get(a..)?)?;
    let start = a + c;
    let name_end = start.checked_add(usize::try_from(name_len).ok()?)?;
    let end = name_end.checked_add(usize::try_from(value_len).ok()?)?;
    let name = b.get(start..name_end)?;
    let value = b.get(name_end..end)?;
    Some(((name, value), end))
}

/// End of the CGI response head in `buf` (after its empty line), if it has arrived.
#[must_use]
pub fn response_head_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(i) = buf.get(start..)?.iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + i];
        start += i + 1;
        if line.is_empty() || line == b"\r" {
            return Some(start);
        }
    }
    None
}

/// The HTTP status of a CGI response (RFC 3875 §6): the `Status:` header; without one, 302
/// for a client redirect (`Location:` with a scheme) and 200 otherwise. `complete` says the
/// whole head was seen: a default needs it, an explicit `Status:` line does not. `None` when
/// the status is not known.
#[must_use]
pub fn response_status(head: &[u8], complete: bool) -> Option<u16> {
    // Only complete lines: a cut line may hold a cut status.
    let lines = head
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(&[][..], |i| &head[..i]);
    let mut location_absolute = false;
    for line in lines.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"status") {
            let (code, rest) = value.split_at_checked(3)?;
            if !code.iter().all(u8::is_ascii_digit) || !(rest.is_empty() || rest[0] == b' ') {
                return None;
            }
            let status = code
                .iter()
                .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
            return (100..=599).contains(&status).then_some(status);
        }
        if name.eq_ignore_ascii_case(b"location") {
            location_absolute = value
                .iter()
                .position(|&b| b == b':')
                .is_some_and(|i| i > 0 && value[..i].iter().all(u8::is_ascii_alphabetic));
        }
    }
    complete.then_some(if location_absolute { 302 } else { 200 })
}

/// What a [`Connection`] learnt from one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happening {
    /// The front server sent the params of request `id` (BEGIN_REQUEST, then PARAMS up to its
    /// empty record). `truncated`: some params were not seen.
    Request {
        id: u16,
        head: RequestHead,
        truncated: bool,
    },
    /// The front server aborted request `id`.
    Aborted { id: u16 },
    /// The front server sent body bytes of request `id` (STDIN content, as captured).
    Stdin { id: u16, data: Vec<u8> },
    /// The application wrote STDOUT for request `id` (once per chunk and request).
    Output { id: u16 },
    /// The CGI head of the response of `id` is over (or can no longer be read): its status,
    /// and the head as seen (header lines, for `Set-Cookie`; bounded).
    Status {
        id: u16,
        status: Option<u16>,
        head: Vec<u8>,
    },
    /// The application ended request `id` (END_REQUEST), or a new BEGIN_REQUEST reused its id.
    Ended { id: u16 },
    /// One direction of the stream was lost (see [`Piece::Desync`]).
    Desync,
}

#[derive(Debug, Default)]
struct Exchange {
    params: Vec<u8>,
    params_truncated: bool,
    params_done: bool,
    head: Vec<u8>,
    head_done: bool,
}

/// The requests of one FastCGI connection, from both directions of its stream.
#[derive(Debug)]
pub struct Connection {
    input: Reader,
    output: Reader,
    exchanges: BTreeMap<u16, Exchange>,
}

impl Default for Connection {
    fn default() -> Self {
        Self {
            input: Reader::new(Direction::ToApp),
            output: Reader::new(Direction::FromApp),
            exchanges: BTreeMap::new(),
        }
    }
}

impl Connection {
    /// Events were lost: both directions may be out of step.
    pub fn lose_sync(&mut self) {
        self.input.lose_sync();
        self.output.lose_sync();
    }

    /// Requests in flight.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.exchanges.len()
    }

    /// The next chunk the application read: `data` captured of `total` bytes.
    pub fn on_read(&mut self, data: &[u8], total: u64) -> Vec<Happening> {
        let mut out = Vec::new();
        let Self {
            input, exchanges, ..
        } = self;
        input.feed(data, total, |piece| match piece {
            Piece::Desync { .. } => out.push(Happening::Desync),
            Piece::End(h) if h.kind == kind::BEGIN_REQUEST => {
                if exchanges.remove(&h.request_id).is_some() {
                    out.push(Happening::Ended { id: h.request_id });
                }
                // The redactor forgets the same one (the lowest id).
                if exchanges.len() >= MAX_EXCHANGES
                    && let Some((lowest, _)) = exchanges.pop_first()
                {
                    out.push(Happening::Ended { id: lowest });
                }
                exchanges.insert(h.request_id, Exchange::default());
            }
            Piece::End(h) if h.kind == kind::ABORT_REQUEST => {
                if exchanges.contains_key(&h.request_id) {
                    out.push(Happening::Aborted { id: h.request_id });
                }
            }
            Piece::Content { header, bytes, .. } if header.kind == kind::PARAMS => {
                // After a gap (bytes out of sight, or past the bound) the pairs are out of step.
                if let Some(e) = exchanges.get_mut(&header.request_id)
                    && !e.params_done
                    && !e.params_truncated
                {
                    let room = MAX_PARAMS_BYTES.saturating_sub(e.params.len());
                    if bytes.len() > room {
                        e.params_truncated = true;
                    }
                    e.params.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
            }
            Piece::Content { header, bytes, .. } if header.kind == kind::STDIN => {
                if exchanges.contains_key(&header.request_id) {
                    out.push(Happening::Stdin {
                        id: header.request_id,
                        data: bytes.to_vec(),
                    });
                }
            }
            Piece::Unseen { header, .. } if header.kind == kind::PARAMS => {
                if let Some(e) = exchanges.get_mut(&header.request_id) {
                    e.params_truncated = true;
                }
            }
            Piece::End(h) if h.kind == kind::PARAMS && h.content_len == 0 => {
                if let Some(e) = exchanges.get_mut(&h.request_id)
                    && !e.params_done
                {
                    e.params_done = true;
                    let params = Params::parse(&e.params);
                    e.params = Vec::new();
                    out.push(Happening::Request {
                        id: h.request_id,
                        head: params.request_head(),
                        truncated: e.params_truncated || params.truncated,
                    });
                }
            }
            _ => {}
        });
        out
    }

    /// The next chunk the application wrote: `data` captured of `total` bytes.
    pub fn on_write(&mut self, data: &[u8], total: u64) -> Vec<Happening> {
        let mut out = Vec::new();
        let Self {
            output, exchanges, ..
        } = self;
        output.feed(data, total, |piece| match piece {
            Piece::Desync { .. } => out.push(Happening::Desync),
            Piece::Content { header, bytes, .. } if header.kind == kind::STDOUT => {
                output_for(header.request_id, &mut out);
                if let Some(e) = exchanges.get_mut(&header.request_id)
                    && !e.head_done
                {
                    let room = MAX_RESPONSE_HEAD.saturating_sub(e.head.len());
                    e.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    if let Some(end) = response_head_end(&e.head) {
                        e.head_done = true;
                        e.head.truncate(end);
                        out.push(Happening::Status {
                            id: header.request_id,
                            status: response_status(&e.head, true),
                            head: std::mem::take(&mut e.head),
                        });
                    } else if bytes.len() > room {
                        e.head_done = true;
                        out.push(Happening::Status {
                            id: header.request_id,
                            status: response_status(&e.head, false),
                            head: std::mem::take(&mut e.head),
                        });
                    }
                }
            }
            // Head bytes out of sight, or STDOUT over before its head ended: what complete
            // lines said, if anything.
            Piece::Unseen { header, .. } | Piece::End(header)
                if header.kind == kind::STDOUT
                    && (matches!(piece, Piece::Unseen { .. }) || header.content_len == 0) =>
            {
                if matches!(piece, Piece::Unseen { .. }) {
                    output_for(header.request_id, &mut out);
                }
                if let Some(e) = exchanges.get_mut(&header.request_id)
                    && !e.head_done
                {
                    e.head_done = true;
                    out.push(Happening::Status {
                        id: header.request_id,
                        status: response_status(&e.head, false),
                        head: std::mem::take(&mut e.head),
                    });
                }
            }
            Piece::End(h) if h.kind == kind::END_REQUEST => {
                exchanges.remove(&h.request_id);
                out.push(Happening::Ended { id: h.request_id });
            }
            _ => {}
        });
        out
    }
}

/// Adds [`Happening::Output`] for `id` unless this chunk already has it.
fn output_for(id: u16, out: &mut Vec<Happening>) {
    if !out.contains(&Happening::Output { id }) {
        out.push(Happening::Output { id });
    }
}

/// Building records, for tests and the fuzz target's seeds.
pub mod build {
    use super::{Header, kind};

    /// One record with `content` (at most 65535 bytes) and `padding` bytes of padding.
    #[must_use]
    pub fn record(kind: u8, request_id: u16, content: &[u8], padding: u8) -> Vec<u8> {
        let content_len = u16::try_from(content.len()).unwrap_or(u16::MAX);
        let mut out = Header {
            kind,
            request_id,
            content_len,
            padding_len: padding,
        }
        .to_bytes()
        .to_vec();
        out.extend_from_slice(&content[..usize::from(content_len)]);
        out.extend(std::iter::repeat_n(0, usize::from(padding)));
        out
    }

    /// A name-value pair, lengths in the one- or four-byte form as needed.
    #[must_use]
    pub fn pair(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for len in [name.len(), value.len()] {
            if len < 0x80 {
                out.push(len as u8);
            } else {
                out.extend_from_slice(&((len as u32) | 0x8000_0000).to_be_bytes());
            }
        }
        out.extend_from_slice(name);
        out.extend_from_slice(value);
        out
    }

    /// BEGIN_REQUEST (responder, keep the connection), PARAMS with `params` in records of at
    /// most `split` bytes, the empty PARAMS record, and an empty STDIN: what a front server
    /// sends for a GET.
    #[must_use]
    pub fn request(request_id: u16, params: &[(&str, &str)], split: usize) -> Vec<u8> {
        let mut out = record(
            kind::BEGIN_REQUEST,
            request_id,
            &[0, 1, 1, 0, 0, 0, 0, 0],
            0,
        );
        let stream: Vec<u8> = params
            .iter()
            .flat_map(|(n, v)| pair(n.as_bytes(), v.as_bytes()))
            .collect();
        for chunk in stream.chunks(split.max(1)) {
            out.extend(record(kind::PARAMS, request_id, chunk, 0));
        }
        out.extend(record(kind::PARAMS, request_id, &[], 0));
        out.extend(record(kind::STDIN, request_id, &[], 0));
        out
    }

    /// A response: STDOUT with `body` (the CGI head and the content), its empty record, and
    /// END_REQUEST.
    #[must_use]
    pub fn response(request_id: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in body.chunks(65535) {
            out.extend(record(kind::STDOUT, request_id, chunk, 0));
        }
        out.extend(record(kind::STDOUT, request_id, &[], 0));
        out.extend(record(kind::END_REQUEST, request_id, &[0; 8], 0));
        out
    }
}

#[cfg(test)]
mod tests;
