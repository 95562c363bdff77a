//! HTTP/2 (RFC 9113) connections, followed from the plaintext a target reads and writes: the
//! client preface, frames, HPACK header blocks (RFC 7541, with each direction's dynamic table)
//! and streams. What the correlator needs of a stream comes out as [`Item`]s: its request head
//! (decoded headers, rendered in HTTP/1.1 form so that the redactor, the identity sources and the
//! correlator read it as they read HTTP/1 heads), its response head, its DATA (fingerprinted
//! like an HTTP/1 body, then dropped) and its end.
//!
//! Runs live, before the redactor and the recorder, like [`crate::fingerprint`]: a trace holds
//! the redacted items, never HPACK bytes (whose dynamic table would need every earlier block)
//! nor document content, and replay needs no decoder.
//!
//! A connection that cannot be followed exactly is lost for good ([`Lost`]): an HPACK error or
//! a header block Vigie did not see leaves the dynamic table unknown, and every later header
//! block could decode to the wrong headers. Vigie never decodes on after that: the connection's
//! streams end, and what its reads serve is `unattributed`.
//!
//! Pure: bytes in, items out.
use std::{collections::BTreeMap, sync::Arc};

use loona_hpack::Decoder;

use crate::events::Payload;

/// A frame header's length (RFC 9113 §4.1).
const FRAME_HEADER: usize = 9;
/// Longest frame payload kept to be parsed (a header block fragment, SETTINGS, ...); DATA and
/// unknown frames are skipped by length and may be longer.
const MAX_KEPT_PAYLOAD: usize = 64 * 1024;
/// Longest header block (HEADERS and its CONTINUATIONs) decoded.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Largest dynamic table a peer may ask for: bounds the memory of a connection.
const MAX_TABLE: usize = 64 * 1024;
/// Streams followed at once on one connection (nginx allows 128 by default).
const MAX_STREAMS: usize = 1024;
/// Longest login form kept (the correlator keeps as much of an HTTP/1 login body): a longer
/// one binds no session, rather than a user field cut short.
pub const LOGIN_FORM_CAP: usize = 4096;

mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const PUSH_PROMISE: u8 = 5;
    pub const CONTINUATION: u8 = 9;
}

mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// What a connection's frames tell the correlator, and why one is lost: part of the event
/// vocabulary (`EventKind::Http2`), defined with the other events.
pub use crate::events::{Http2Item as Item, Http2Lost as Lost};

/// The client connection preface (RFC 9113 §3.4), over TLS (ALPN `h2`) or in clear (prior
/// knowledge).
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `data` starts like the client preface (a capture may hold only its start).
pub fn starts_preface(data: &[u8]) -> bool {
    let n = data.len().min(HTTP2_PREFACE.len());
    n >= 4 && data[..n] == HTTP2_PREFACE[..n]
}

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHeader {
    fn parse(b: &[u8; FRAME_HEADER]) -> Self {
        Self {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

#[derive(Debug)]
enum At {
    /// The client preface: this many of its bytes seen.
    Preface(usize),
    /// A frame header: its bytes so far.
    Header(Vec<u8>),
    /// A frame payload kept whole (to parse), `buf` so far.
    Payload(FrameHeader, Vec<u8>),
    /// A DATA payload: its first bytes are kept in `head` (the padding length, and up to
    /// the direction's `keep` bytes of data), `left` bytes are still to come.
    /// `cut`: bytes of that start went uncaptured, so what `head` holds is not it.
    Data {
        frame: FrameHeader,
        head: Vec<u8>,
        left: usize,
        cut: bool,
    },
    /// A payload skipped by length (unknown frame kinds).
    Skip(usize),
}

/// One direction of a connection: its frame parser and HPACK decoder.
struct Direction {
    at: At,
    /// Bytes of each DATA payload kept: a fingerprint's worth of a response body, a login
    /// form's of a request body.
    keep: usize,
    hpack: Decoder<'static>,
    /// A header block whose END_HEADERS has not come yet: (frame kind, stream, flags, block).
    block: Option<(u8, u32, u8, Vec<u8>)>,
}

impl std::fmt::Debug for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direction").field("at", &self.at).finish()
    }
}

impl Direction {
    /// The client's side (`read`: starts with the preface) or the server's.
    fn new(read: bool) -> Self {
        let mut hpack = Decoder::new();
        hpack.set_max_allowed_table_size(MAX_TABLE);
        Self {
            at: if read {
                At::Preface(0)
            } else {
                At::Header(Vec::new())
            },
            // One byte more: a padded frame's padding length comes first.
            keep: 1 + if read {
                LOGIN_FORM_CAP
            } else {
                monitor_common::files::FP_BYTES
            },
            hpack,
            block: None,
        }
    }
}

#[derive(Debug, Default)]
struct Stream {
    /// The request was read (a later header block on it is trailers).
    requested: bool,
    /// The final response head was written.
    responded: bool,
    /// The first body bytes, until the fingerprint is taken.
    body: Vec<u8>,
    fingerprinted: bool,
    /// The request is the portal's login: its form so far, until the request body ends
    /// (`None` once it cannot be the whole form: cut by the capture, or too long).
    form: Option<Vec<u8>>,
}

/// One HTTP/2 connection: both directions and its streams.
#[derive(Debug)]
pub struct Connection {
    reads: Direction,
    writes: Direction,
    streams: BTreeMap<u32, Stream>,
    lost: Option<Lost>,
    /// `identity.session`'s `login_path`: the body of a `POST` to it is kept (the form).
    login_path: Option<Arc<str>>,
}

impl Default for Connection {
    fn default() -> Self {
        Self::new()
    }
}

impl Connection {
    /// A connection whose next read is the client preface.
    pub fn new() -> Self {
        Self {
            reads: Direction::new(true),
            writes: Direction::new(false),
            streams: BTreeMap::new(),
            lost: None,
            login_path: None,
        }
    }

    /// A connection whose login requests (`POST` to `login_path`) have their form kept
    /// ([`Item::LoginForm`]).
    pub fn with_login_path(mut self, login_path: Option<Arc<str>>) -> Self {
        self.login_path = login_path;
        self
    }

    /// Why it was lost, if it was.
    pub fn lost(&self) -> Option<Lost> {
        self.lost
    }

    /// The target read `total` bytes, of which `data` was captured.
    pub fn on_read(&mut self, data: &[u8], total: u64, out: &mut Vec<Item>) {
        self.feed(true, data, total, out);
    }

    /// The target wrote `total` bytes, of which `data` was captured.
    pub fn on_write(&mut self, data: &[u8], total: u64, out: &mut Vec<Item>) {
        self.feed(false, data, total, out);
    }

    /// Loses the connection for `why` (events lost, or a caller's reason): its streams end.
    pub fn lose(&mut self, why: Lost, out: &mut Vec<Item>) {
        if self.lost.is_some() {
            return;
        }
        self.lost = Some(why);
        self.streams.clear();
        self.reads.block = None;
        self.writes.block = None;
        out.push(Item::Lost { why });
    }

    fn feed(&mut self, read: bool, data: &[u8], total: u64, out: &mut Vec<Item>) {
        if self.lost.is_some() {
            return;
        }
        let mut frames = Vec::new();
        let dir = if read {
            &mut self.reads
        } else {
            &mut self.writes
        };
        let parsed = parse(dir, data, total, &mut |f| frames.push(f));
        for frame in frames {
            if let Err(why) = self.on_frame(read, frame, out) {
                return self.lose(why, out);
            }
        }
        if let Err(why) = parsed {
            self.lose(why, out);
        }
    }

    fn on_frame(&mut self, read: bool, frame: OwnedFrame, out: &mut Vec<Item>) -> Result<(), Lost> {
        match frame {
            OwnedFrame::Headers {
                kind,
                stream,
                end_stream,
                block,
            } => {
                let dir = if read {
                    &mut self.reads
                } else {
                    &mut self.writes
                };
                // Decoded even when unused (trailers, pushes): the dynamic table depends on it.
                let fields = dir.hpack.decode(&block).map_err(|_| Lost::Hpack)?;
                if kind == kind::PUSH_PROMISE {
                    return Ok(());
                }
                if read {
                    self.on_request_headers(stream, end_stream, &fields, out)?;
                } else {
                    self.on_response_headers(stream, &fields, out)?;
                    if end_stream && self.streams.remove(&stream).is_some() {
                        out.push(Item::End { stream });
                    }
                }
            }
            OwnedFrame::Data {
                stream,
                first,
                len,
                end_stream,
            } => {
                if read {
                    // Request bodies are passed over, but for the login's form.
                    if let Some(s) = self.streams.get_mut(&stream)
                        && let Some(form) = s.form.as_mut()
                    {
                        if first.len() as u64 != len || form.len() + first.len() > LOGIN_FORM_CAP {
                            s.form = None;
                        } else {
                            form.extend_from_slice(&first);
                            if end_stream && let Some(form) = s.form.take() {
                                out.push(Item::LoginForm {
                                    stream,
                                    form: Payload(form),
                                });
                            }
                        }
                    }
                    return Ok(());
                }
                let Some(s) = self.streams.get_mut(&stream) else {
                    return Ok(());
                };
                let mut body_fp = None;
                if !s.fingerprinted {
                    use monitor_common::files::FP_BYTES;
                    let room = FP_BYTES.saturating_sub(s.body.len());
                    let complete = first.len() as u64 == len;
                    s.body.extend_from_slice(&first[..room.min(first.len())]);
                    if s.body.len() >= FP_BYTES || (end_stream && complete) {
                        body_fp = crate::fingerprint::of(&s.body);
                        s.fingerprinted = true;
                        s.body = Vec::new();
                    } else if !complete {
                        // The rest of the frame's first bytes were not seen: no fingerprint.
                        s.fingerprinted = true;
                        s.body = Vec::new();
                    }
                }
                if len > 0 || body_fp.is_some() {
                    out.push(Item::Data {
                        stream,
                        bytes: len,
                        body_fp,
                    });
                }
                if end_stream {
                    self.streams.remove(&stream);
                    out.push(Item::End { stream });
                }
            }
            OwnedFrame::Reset { stream } => {
                if self.streams.remove(&stream).is_some() {
                    out.push(Item::End { stream });
                }
            }
        }
        Ok(())
    }

    /// Whether a request's fields are the portal's login: `POST` to its `login_path` (the
    /// query and fragment aside), the correlator's rule.
    fn is_login(&self, fields: &[(Vec<u8>, Vec<u8>)]) -> bool {
        let Some(login_path) = self.login_path.as_deref() else {
            return false;
        };
        let path = field_value(fields, b":path").unwrap_or_default();
        let path = path.split(|&b| b == b'?' || b == b'#').next();
        field_value(fields, b":method") == Some(b"POST") && path == Some(login_path.as_bytes())
    }

    fn on_request_headers(
        &mut self,
        stream: u32,
        end_stream: bool,
        fields: &[(Vec<u8>, Vec<u8>)],
        out: &mut Vec<Item>,
    ) -> Result<(), Lost> {
        if self.streams.get(&stream).is_some_and(|s| s.requested) {
            // Trailers of a request already read.
            return Ok(());
        }
        let head = request_head(fields).ok_or(Lost::InvalidHeaders)?;
        if self.streams.len() >= MAX_STREAMS {
            return Err(Lost::Framing);
        }
        let login = !end_stream && self.is_login(fields);
        self.streams.insert(
            stream,
            Stream {
                requested: true,
                form: login.then(Vec::new),
                ..Stream::default()
            },
        );
        out.push(Item::Request {
            stream,
            head: Payload(head),
        });
        Ok(())
    }

    fn on_response_headers(
        &mut self,
        stream: u32,
        fields: &[(Vec<u8>, Vec<u8>)],
        out: &mut Vec<Item>,
    ) -> Result<(), Lost> {
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        if s.responded {
            // Trailers.
            return Ok(());
        }
        let Some((head, interim)) = response_head(fields) else {
            return Err(Lost::InvalidHeaders);
        };
        if interim {
            return Ok(());
        }
        s.responded = true;
        out.push(Item::Response {
            stream,
            head: Payload(head),
        });
        Ok(())
    }
}

/// A frame handed from the parser to the connection (the DATA bytes copied out of the capture).
enum OwnedFrame {
    Headers {
        kind: u8,
        stream: u32,
        end_stream: bool,
        block: Vec<u8>,
    },
    Data {
        stream: u32,
        first: Vec<u8>,
        len: u64,
        end_stream: bool,
    },
    Reset {
        stream: u32,
    },
}

/// Runs `dir`'s frame parser over `data` (captured of `total` bytes), handing on each frame.
fn parse(
    dir: &mut Direction,
    data: &[u8],
    total: u64,
    emit: &mut impl FnMut(OwnedFrame),
) -> Result<(), Lost> {
    let mut rest = data;
    while !rest.is_empty() {
        match &mut dir.at {
            At::Preface(seen) => {
                let n = (HTTP2_PREFACE.len() - *seen).min(rest.len());
                if rest[..n] != HTTP2_PREFACE[*seen..*seen + n] {
                    return Err(Lost::Framing);
                }
                *seen += n;
                rest = &rest[n..];
                if *seen == HTTP2_PREFACE.len() {
                    dir.at = At::Header(Vec::new());
                }
            }
            At::Header(buf) => {
                let n = (FRAME_HEADER - buf.len()).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                let Ok(bytes) = <[u8; FRAME_HEADER]>::try_from(buf.as_slice()) else {
                    continue;
                };
                let frame = FrameHeader::parse(&bytes);
                // A header block is HEADERS or PUSH_PROMISE then CONTINUATIONs of the same
                // stream, nothing in between (RFC 9113 §6.10).
                let continuing = dir.block.as_ref().map(|(_, stream, _, _)| *stream);
                if (frame.kind == kind::CONTINUATION) != (continuing == Some(frame.stream))
                    || (continuing.is_some() && frame.kind != kind::CONTINUATION)
                {
                    return Err(Lost::Framing);
                }
                dir.at = match frame.kind {
                    kind::DATA => At::Data {
                        frame,
                        head: Vec::new(),
                        left: frame.len,
                        cut: false,
                    },
                    kind::HEADERS | kind::CONTINUATION | kind::PUSH_PROMISE | kind::RST_STREAM => {
                        if frame.len > MAX_KEPT_PAYLOAD {
                            return Err(Lost::Framing);
                        }
                        At::Payload(frame, Vec::new())
                    }
                    // SETTINGS, PING, GOAWAY, WINDOW_UPDATE, PRIORITY, extensions: nothing
                    // Vigie needs (header table sizes are bounded by MAX_TABLE instead).
                    _ => At::Skip(frame.len),
                };
                finish_empty(dir, emit)?;
            }
            At::Payload(frame, buf) => {
                let n = (frame.len - buf.len()).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                if buf.len() == frame.len {
                    let (frame, buf) = (*frame, std::mem::take(buf));
                    dir.at = At::Header(Vec::new());
                    payload(dir, frame, &buf, emit)?;
                }
            }
            At::Data {
                frame,
                head,
                left,
                cut,
            } => {
                let n = (*left).min(rest.len());
                if !*cut {
                    let keep = dir.keep.saturating_sub(head.len()).min(n);
                    head.extend_from_slice(&rest[..keep]);
                }
                *left -= n;
                rest = &rest[n..];
                if *left == 0 {
                    let (frame, head, cut) = (*frame, std::mem::take(head), *cut);
                    dir.at = At::Header(Vec::new());
                    data_frame(frame, &head, !cut, emit)?;
                }
            }
            At::Skip(left) => {
                let n = (*left).min(rest.len());
                *left -= n;
                rest = &rest[n..];
                if *left == 0 {
                    dir.at = At::Header(Vec::new());
                }
            }
        }
    }
    // What the capture did not hold: only the inside of a DATA or skipped payload can be
    // passed over by length.
    let mut missing = total.saturating_sub(data.len() as u64);
    if missing == 0 {
        return Ok(());
    }
    match &mut dir.at {
        At::Data {
            frame,
            head,
            left,
            cut,
        } if missing <= *left as u64 => {
            *left -= missing as usize;
            // The frame's first bytes were not all seen: no fingerprint (nor form) from them.
            if head.len() < dir.keep.min(frame.len) {
                *cut = true;
            }
            if *left == 0 {
                let (frame, head, cut) = (*frame, std::mem::take(head), *cut);
                dir.at = At::Header(Vec::new());
                data_frame(frame, &head, !cut, emit)?;
            }
            missing = 0;
        }
        At::Skip(left) if missing <= *left as u64 => {
            *left -= missing as usize;
            if *left == 0 {
                dir.at = At::Header(Vec::new());
            }
            missing = 0;
        }
        _ => {}
    }
    if missing > 0 {
        return Err(Lost::Uncaptured);
    }
    Ok(())
}

/// A frame header just completed a frame with no payload.
fn finish_empty(dir: &mut Direction, emit: &mut impl FnMut(OwnedFrame)) -> Result<(), Lost> {
    match &dir.at {
        At::Payload(frame, _) if frame.len == 0 => {
            let frame = *frame;
            dir.at = At::Header(Vec::new());
            payload(dir, frame, &[], emit)
        }
        At::Data { frame, left: 0, .. } => {
            let frame = *frame;
            dir.at = At::Header(Vec::new());
            data_frame(frame, &[], true, emit)
        }
        At::Skip(0) => {
            dir.at = At::Header(Vec::new());
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A DATA frame is over: `head` holds its first payload bytes (all of them up to the
/// fingerprint's length when `seen_head`).
fn data_frame(
    frame: FrameHeader,
    head: &[u8],
    seen_head: bool,
    emit: &mut impl FnMut(OwnedFrame),
) -> Result<(), Lost> {
    let (pad, start) = if frame.flags & flag::PADDED != 0 {
        match head.first() {
            Some(&p) => (usize::from(p), 1),
            None => return Err(Lost::Framing),
        }
    } else {
        (0, 0)
    };
    let Some(len) = frame.len.checked_sub(start + pad) else {
        return Err(Lost::Framing);
    };
    let mut first = head.get(start..).unwrap_or_default();
    first = &first[..first.len().min(len)];
    if !seen_head {
        // Bytes of the body's start went uncaptured: none is kept, so no fingerprint.
        first = &[];
    }
    emit(OwnedFrame::Data {
        stream: frame.stream,
        first: first.to_vec(),
        len: len as u64,
        end_stream: frame.flags & flag::END_STREAM != 0,
    });
    Ok(())
}

/// A kept payload is complete.
fn payload(
    dir: &mut Direction,
    frame: FrameHeader,
    buf: &[u8],
    emit: &mut impl FnMut(OwnedFrame),
) -> Result<(), Lost> {
    match frame.kind {
        kind::RST_STREAM => emit(OwnedFrame::Reset {
            stream: frame.stream,
        }),
        kind::HEADERS | kind::PUSH_PROMISE => {
            let mut start = 0;
            let mut end = buf.len();
            if frame.flags & flag::PADDED != 0 {
                let pad = usize::from(*buf.first().ok_or(Lost::Framing)?);
                start = 1;
                end = end.checked_sub(pad).ok_or(Lost::Framing)?;
            }
            if frame.kind == kind::HEADERS && frame.flags & flag::PRIORITY != 0 {
                start += 5;
            }
            if frame.kind == kind::PUSH_PROMISE {
                // The promised stream id.
                start += 4;
            }
            let fragment = buf.get(start..end).ok_or(Lost::Framing)?;
            dir.block = Some((frame.kind, frame.stream, frame.flags, fragment.to_vec()));
        }
        kind::CONTINUATION => {
            let Some((_, _, _, block)) = dir.block.as_mut() else {
                return Err(Lost::Framing);
            };
            block.extend_from_slice(buf);
        }
        _ => return Ok(()),
    }
    let ends_block = matches!(
        frame.kind,
        kind::HEADERS | kind::PUSH_PROMISE | kind::CONTINUATION
    ) && frame.flags & flag::END_HEADERS != 0;
    if dir
        .block
        .as_ref()
        .is_some_and(|(_, _, _, b)| b.len() > MAX_HEADER_BLOCK)
    {
        return Err(Lost::Framing);
    }
    if ends_block && let Some((kind, stream, flags, block)) = dir.block.take() {
        emit(OwnedFrame::Headers {
            kind,
            stream,
            end_stream: flags & flag::END_STREAM != 0,
            block,
        });
    }
    Ok(())
}

/// Whether a name or value can stand in an HTTP/1 head line as it is.
fn plain(b: &[u8]) -> bool {
    !b.iter().any(|&c| matches!(c, b'\r' | b'\n' | 0))
}

/// A request's decoded fields as an HTTP/1.1 head; `None` when they cannot be one.
fn request_head(fields: &[(Vec<u8>, Vec<u8>)]) -> Option<Vec<u8>> {
    let pseudo = |name: &[u8]| field_value(fields, name);
    let method = pseudo(b":method")?;
    let path = pseudo(b":path")?;
    let token = |b: &[u8]| !b.is_empty() && b.iter().all(|c| c.is_ascii_graphic());
    if !token(method) || !token(path) {
        return None;
    }
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(method);
    head.push(b' ');
    head.extend_from_slice(path);
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let has_host = fields.iter().any(|(n, _)| n.eq_ignore_ascii_case(b"host"));
    if let Some(authority) = pseudo(b":authority").filter(|_| !has_host) {
        field(&mut head, b"host", authority)?;
    }
    for (name, value) in fields.iter().filter(|(n, _)| !n.starts_with(b":")) {
        field(&mut head, name, value)?;
    }
    head.extend_from_slice(b"\r\n");
    // What the correlator's HTTP parser refuses (too many fields, a malformed one) is not a
    // request it could judge: the stream is not followed rather than half-read.
    matches!(
        crate::http::parse_request_head(&head),
        crate::http::HeadParse::Complete(_)
    )
    .then_some(head)
}

/// The value of the first field named `name` (a pseudo-header, with its colon).
fn field_value<'f>(fields: &'f [(Vec<u8>, Vec<u8>)], name: &[u8]) -> Option<&'f [u8]> {
    fields
        .iter()
        .find(|(n, _)| n.as_slice() == name)
        .map(|(_, v)| v.as_slice())
}

/// A response's decoded fields as an HTTP/1.1 head, and whether it is interim (1xx).
fn response_head(fields: &[(Vec<u8>, Vec<u8>)]) -> Option<(Vec<u8>, bool)> {
    let status = field_value(fields, b":status")?;
    if status.len() != 3 || !status.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut head = Vec::with_capacity(128);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status);
    head.extend_from_slice(b" \r\n");
    for (name, value) in fields.iter().filter(|(n, _)| !n.starts_with(b":")) {
        field(&mut head, name, value)?;
    }
    head.extend_from_slice(b"\r\n");
    Some((head, status[0] == b'1'))
}

fn field(head: &mut Vec<u8>, name: &[u8], value: &[u8]) -> Option<()> {
    if name.is_empty() || name.contains(&b':') || !plain(name) || !plain(value) {
        return None;
    }
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
    Some(())
}

mod demux;
pub use demux::Demux;

#[cfg(test)]
mod tests;
