//! HTTP/1.x request heads and response status lines, parsed from captured socket bytes.
//!
//! The bytes come from the kernel: the first bytes a web server read from (4 KiB) or wrote to
//! (512 B) a socket. They are hostile: arbitrary binary, truncated anywhere, or not HTTP at all.
//! Every function here is total: no panics, and allocations are bounded by the input length.
//!
//! Parsing is as lenient as common servers are, never stricter: a request the server accepts
//! but we reject is a request a client can hide from us. Hence the request line is parsed here
//! rather than by `httparse`, which rejects targets that are not UTF-8 (nginx serves them) and
//! extra whitespace between words (RFC 9112 §3 lets recipients accept it); and invalid header
//! lines are skipped, as nginx does by default, rather than failing the whole head.

use std::fmt;

/// Most header fields parsed from one request head; more is treated as an attack or garbage.
/// nginx has no count limit (only its buffer sizes), so a head that fits
/// [`stream::DEFAULT_MAX_HEAD`] may carry thousands of small fields: this bound only keeps the
/// parser's slot table finite (a field line is at least 3 bytes, `a:` and `LF`).
pub const MAX_HEADERS: usize = 32 * 1024;

pub mod stream;

/// Header fields whose values carry credentials: never printed by `Debug`.
const SENSITIVE_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// Method tokens recognised by [`looks_like_request_start`]: RFC 9110, PATCH, `WebDAV` and
/// `CalDAV`. Any token is accepted by the parser proper; this list only serves resynchronisation,
/// where guessing from an arbitrary token would resync on garbage.
const KNOWN_METHODS: [&[u8]; 20] = [
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"REPORT",
    b"SEARCH",
    b"MKCALENDAR",
    b"ACL",
];

/// A parsed HTTP/1.x request head.
///
/// `Debug` is written by hand so that credential-bearing header values (see
/// [`is_sensitive_header`]) never reach a log through `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method token, e.g. `GET`.
    pub method: String,
    /// Request target as on the wire (lossy UTF-8 when it is not valid UTF-8).
    pub target: String,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields in wire order; names lowercased, values raw (surrounding whitespace
    /// trimmed by the parser).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the head, from the start of the buffer through the final empty line: where the
    /// body (or the next pipelined request) starts.
    pub head_len: usize,
    /// `Content-Length`, when present and not overridden by `Transfer-Encoding`.
    pub content_length: Option<u64>,
    /// `Transfer-Encoding` ends with `chunked`.
    pub chunked: bool,
    /// Whether the server keeps the connection open after the response.
    pub keep_alive: bool,
}

impl RequestHead {
    /// Value of the first header field named `lowercase_name` (compared case-insensitively).
    #[must_use]
    pub fn header(&self, lowercase_name: &str) -> Option<&[u8]> {
        self.header_values(lowercase_name).next()
    }

    /// Values of every header field named `name` (case-insensitive), in wire order: for
    /// fields that may legitimately repeat, or whose repetition is itself suspicious.
    pub fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

impl fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, String)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), printable_value(name, value)))
            .collect();
        f.debug_struct("RequestHead")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("minor_version", &self.minor_version)
            .field("headers", &headers)
            .field("head_len", &self.head_len)
            .field("content_length", &self.content_length)
            .field("chunked", &self.chunked)
            .field("keep_alive", &self.keep_alive)
            .finish()
    }
}

/// A header value as shown by `Debug`: redacted when it may carry a credential.
fn printable_value(name: &str, value: &[u8]) -> String {
    if is_sensitive_header(name) {
        "<redacted>".to_owned()
    } else {
        String::from_utf8_lossy(value).into_owned()
    }
}

/// True for header fields whose value carries credentials (`Authorization`,
/// `Proxy-Authorization`, `Cookie`): they must never be logged or stored.
#[must_use]
pub fn is_sensitive_header(name: &str) -> bool {
    SENSITIVE_HEADERS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
}

/// Outcome of parsing the start of a buffer as a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadParse {
    /// A whole head; [`RequestHead::head_len`] says where it ends.
    Complete(RequestHead),
    /// Everything so far is a valid beginning of a head: more bytes could complete it.
    Partial,
    /// No continuation can make this a valid head.
    Invalid(HttpError),
}

/// Why bytes are not a usable request head.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The request line is not `method SP target SP HTTP/1.x`.
    #[error("not an HTTP/1.x request line")]
    NotHttp,
    /// A header field line is malformed.
    #[error("malformed header field")]
    BadHeader,
    /// More than [`MAX_HEADERS`] header fields.
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// A `Content-Length` value is not a decimal number that fits in 64 bits.
    #[error("malformed Content-Length")]
    BadContentLength,
    /// `Content-Length` given several times with different values (request smuggling).
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    /// `Transfer-Encoding` present but not ending with `chunked`: the body length is unknowable
    /// and the server must reject the request (RFC 9112 §6.3).
    #[error("Transfer-Encoding does not end with chunked")]
    BadTransferEncoding,
}

/// The parts of a complete request line, borrowed from the buffer.
struct RequestLine<'a> {
    method: &'a [u8],
    target: &'a [u8],
    minor_version: u8,
}

/// How the message body is delimited and whether the connection persists: all that a
/// request's stream needs of its head (see [`parse_request_framing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Bytes of the head, as [`RequestHead::head_len`].
    pub head_len: usize,
    /// `Content-Length`, when present and not overridden by `Transfer-Encoding`.
    pub content_length: Option<u64>,
    /// `Transfer-Encoding` ends with `chunked`.
    pub chunked: bool,
    /// Whether the server keeps the connection open after the response.
    pub keep_alive: bool,
}

/// Outcome of [`parse_request_framing`]: [`HeadParse`] without the head's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingParse {
    Complete(Framing),
    Partial,
    Invalid(HttpError),
}

/// Parses the request head at the start of `buf` (leading empty lines are skipped, as RFC 9112
/// §2.2 allows). Bytes after the head are ignored.
#[must_use]
pub fn parse_request_head(buf: &[u8]) -> HeadParse {
    match parse_head(buf, build_head) {
        Parsed::Complete(head) => HeadParse::Complete(head),
        Parsed::Partial => HeadParse::Partial,
        Parsed::Invalid(e) => HeadParse::Invalid(e),
    }
}

/// [`parse_request_head`]'s verdict and framing, the same in every case, without copying the
/// head's fields: for a stage that follows where requests start and end but keeps no request
/// (the line hold in front of the redactor).
#[must_use]
pub fn parse_request_framing(buf: &[u8]) -> FramingParse {
    match parse_head(buf, |line, fields, head_len| {
        framing(fields, line.minor_version, head_len)
    }) {
        Parsed::Complete(framing) => FramingParse::Complete(framing),
        Parsed::Partial => FramingParse::Partial,
        Parsed::Invalid(e) => FramingParse::Invalid(e),
    }
}

/// What parsing a head's start gives: `T` once it is complete.
enum Parsed<T> {
    Complete(T),
    Partial,
    Invalid(HttpError),
}

/// The request line, then the header block, then `build` on the line, the fields as parsed
/// (names as on the wire) and the head's length.
fn parse_head<T>(
    buf: &[u8],
    build: impl FnOnce(&RequestLine<'_>, &[httparse::Header<'_>], usize) -> Result<T, HttpError>,
) -> Parsed<T> {
    let start = skip_empty_lines(buf);
    let rest = buf.get(start..).unwrap_or_default();
    let Some(line_len) = line_length(rest) else {
        return if is_request_line_prefix(rest) {
            Parsed::Partial
        } else {
            Parsed::Invalid(HttpError::NotHttp)
        };
    };
    let (line_with_end, after_line) = rest.split_at_checked(line_len).unwrap_or_default();
    let Some(line) = split_request_line(strip_line_end(line_with_end)) else {
        return Parsed::Invalid(HttpError::NotHttp);
    };
    let built = with_header_block(after_line, |fields, block_len| {
        build(&line, fields, start + line_len + block_len)
    });
    match built {
        Ok(None) => Parsed::Partial,
        Ok(Some(Ok(t))) => Parsed::Complete(t),
        Ok(Some(Err(e))) | Err(e) => Parsed::Invalid(e),
    }
}

/// Request line put before the header block for `httparse`, which offers its lenient header
/// options only when parsing a whole request (the real line is already parsed).
const SYNTHETIC_LINE: &[u8] = b"GET / HTTP/1.1\r\n";

/// Header slots on the stack: a head with more lines takes them from the heap.
const STACK_SLOTS: usize = 32;

/// Header blocks up to this size (with [`SYNTHETIC_LINE`]) are parsed from a copy on the stack.
const STACK_BLOCK: usize = 2048;

/// Parses the header block (through its final empty line), skipping invalid lines, and calls
/// `f` on its fields and its length in bytes. `Ok(None)` when the block is incomplete.
fn with_header_block<T>(
    block: &[u8],
    f: impl FnOnce(&[httparse::Header<'_>], usize) -> T,
) -> Result<Option<T>, HttpError> {
    // The block ends at its first empty line: a body captured after it (a request read with
    // its body, up to 16 KiB) is neither copied nor scanned. Without one, the whole capture is
    // parsed, so that an invalid line is refused as soon as it is seen.
    let block = block.get(..head_block_end(block)).unwrap_or(block);
    let mut on_stack = [0u8; STACK_BLOCK];
    let mut on_heap = Vec::new();
    let input: &[u8] = if SYNTHETIC_LINE.len() + block.len() <= STACK_BLOCK {
        let n = SYNTHETIC_LINE.len() + block.len();
        on_stack[..SYNTHETIC_LINE.len()].copy_from_slice(SYNTHETIC_LINE);
        on_stack[SYNTHETIC_LINE.len()..n].copy_from_slice(block);
        &on_stack[..n]
    } else {
        on_heap.reserve_exact(SYNTHETIC_LINE.len() + block.len());
        on_heap.extend_from_slice(SYNTHETIC_LINE);
        on_heap.extend_from_slice(block);
        &on_heap
    };
    // As many slots as the block has lines (every field takes one), not a fixed table: small
    // heads stay cheap and large ones are not refused for their field count alone.
    let lines = block
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        .clamp(1, MAX_HEADERS);
    let mut stack = [httparse::EMPTY_HEADER; STACK_SLOTS];
    let mut heap = Vec::new();
    let slots: &mut [httparse::Header<'_>] = if lines <= STACK_SLOTS {
        &mut stack[..lines]
    } else {
        heap.resize(lines, httparse::EMPTY_HEADER);
        &mut heap
    };
    let mut request = httparse::Request::new(slots);
    let mut config = httparse::ParserConfig::default();
    config.ignore_invalid_headers_in_requests(true);
    match config.parse_request(&mut request, input) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => Ok(Some(f(
            request.headers,
            len.saturating_sub(SYNTHETIC_LINE.len()),
        ))),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooManyHeaders),
        Err(_) => Err(HttpError::BadHeader),
    }
}

/// Length of a header block through its final empty line (`CRLF` or bare `LF`), or the whole
/// buffer when it has none yet.
fn head_block_end(block: &[u8]) -> usize {
    if block.starts_with(b"\n") {
        return 1;
    }
    if block.starts_with(b"\r\n") {
        return 2;
    }
    // The first `LF` that an empty line follows (`LF` or `CR LF`): one pass over the line
    // ends, no substring searcher set up per head.
    memchr::memchr_iter(b'\n', block)
        .find_map(|i| match block.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        })
        .unwrap_or(block.len())
}

/// Assembles a [`RequestHead`] once the line and the header block are known to be valid.
fn build_head(
    line: &RequestLine<'_>,
    fields: &[httparse::Header<'_>],
    head_len: usize,
) -> Result<RequestHead, HttpError> {
    let framing = framing(fields, line.minor_version, head_len)?;
    Ok(RequestHead {
        method: String::from_utf8_lossy(line.method).into_owned(),
        target: String::from_utf8_lossy(line.target).into_owned(),
        minor_version: line.minor_version,
        headers: fields
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
        head_len,
        content_length: framing.content_length,
        chunked: framing.chunked,
        keep_alive: framing.keep_alive,
    })
}

/// Body framing and persistence from the header fields (RFC 9112 §6 and §9.3).
///
/// `Transfer-Encoding` overrides `Content-Length`; a request carrying both, or an HTTP/1.0
/// request carrying `Transfer-Encoding`, must be followed by a close, so it is not keep-alive.
fn framing(
    fields: &[httparse::Header<'_>],
    minor_version: u8,
    head_len: usize,
) -> Result<Framing, HttpError> {
    let named = |name: &'static str| {
        fields
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_transfer_encoding = named("transfer-encoding").next().is_some();
    let has_content_length = named("content-length").next().is_some();
    let (content_length, chunked) = if has_transfer_encoding {
        if !last_coding_is_chunked(named("transfer-encoding")) {
            return Err(HttpError::BadTransferEncoding);
        }
        (None, true)
    } else {
        (content_length(named("content-length"))?, false)
    };
    let close = has_token(named("connection"), b"close");
    let persistent = match minor_version {
        1 => !close,
        _ => !close && has_token(named("connection"), b"keep-alive"),
    };
    let ambiguous = has_transfer_encoding && (has_content_length || minor_version == 0);
    Ok(Framing {
        head_len,
        content_length,
        chunked,
        keep_alive: persistent && !ambiguous,
    })
}

/// The single `Content-Length` of a request: every value (and every element of a
/// comma-separated value, which RFC 9110 §8.6 tolerates) must be the same number.
fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, HttpError> {
    let mut found = None;
    let mut saw_value = false;
    for value in values {
        saw_value = true;
        for element in list_elements(value) {
            let n = parse_decimal(element).ok_or(HttpError::BadContentLength)?;
            match found {
                Some(previous) if previous != n => return Err(HttpError::ConflictingContentLength),
                _ => found = Some(n),
            }
        }
    }
    if saw_value && found.is_none() {
        // `Content-Length:` with an empty value.
        return Err(HttpError::BadContentLength);
    }
    Ok(found)
}

/// A non-empty run of ASCII digits as a `u64`; `None` on a sign, any other byte, or overflow
/// (`u64::from_str` alone would accept a leading `+`).
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0_u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Whether the last transfer coding over all `Transfer-Encoding` fields is `chunked`
/// (parameters after `;` ignored).
fn last_coding_is_chunked<'a>(values: impl Iterator<Item = &'a [u8]>) -> bool {
    values.flat_map(list_elements).last().is_some_and(|coding| {
        let name = coding.split(|&b| b == b';').next().unwrap_or_default();
        name.trim_ascii().eq_ignore_ascii_case(b"chunked")
    })
}

/// Whether any element of the comma-separated `values` equals `token` case-insensitively.
fn has_token<'a>(values: impl Iterator<Item = &'a [u8]>, token: &[u8]) -> bool {
    values
        .flat_map(list_elements)
        .any(|element| element.eq_ignore_ascii_case(token))
}

/// Non-empty, trimmed elements of a comma-separated field value (RFC 9110 §5.6.1).
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|element| !element.is_empty())
}

/// Method and target of the first request line of `buf`, for a head that never completed
/// (e.g. larger than the capture). `None` unless that line is complete and valid.
#[must_use]
pub fn request_line(buf: &[u8]) -> Option<(String, String)> {
    let rest = buf.get(skip_empty_lines(buf)..)?;
    let line = rest.get(..line_length(rest)?)?;
    let parsed = split_request_line(strip_line_end(line))?;
    Some((
        String::from_utf8_lossy(parsed.method).into_owned(),
        String::from_utf8_lossy(parsed.target).into_owned(),
    ))
}

/// Whether `buf` starts with a well-known method followed by a space (or tab): used to find
/// the next request on a connection after bytes that did not parse.
#[must_use]
pub fn looks_like_request_start(buf: &[u8]) -> bool {
    KNOWN_METHODS.iter().any(|method| {
        buf.strip_prefix(*method)
            .is_some_and(|rest| matches!(rest.first(), Some(b' ' | b'\t')))
    })
}

/// The `scheme` and `token` of an `Authorization`-style value, as byte ranges of `value`: the
/// value is trimmed, the scheme ends at the first space, the token is the rest, trimmed
/// (possibly empty). The one reading of these values, shared by identity (which trusts them)
/// and redaction (which rewrites them), so the two can never disagree on where a credential is.
#[must_use]
pub fn credential_parts(value: &[u8]) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let start = value
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    let scheme_end = value[start..end]
        .iter()
        .position(|&b| b == b' ')
        .map_or(end, |i| start + i);
    let token_start = scheme_end
        + value[scheme_end..end]
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    (start..scheme_end, token_start..end)
}

/// The token of an `Authorization`-style value whose scheme is `scheme` (case-insensitive),
/// possibly empty; `None` for other schemes.
#[must_use]
pub fn credential_token<'v>(value: &'v [u8], scheme: &[u8]) -> Option<&'v [u8]> {
    let (s, t) = credential_parts(value);
    value[s].eq_ignore_ascii_case(scheme).then(|| &value[t])
}

/// Status code of the response whose status line starts `buf`, e.g. `403` for
/// `HTTP/1.1 403 Forbidden\r\n`. The rest of the head may be missing, but the status line must
/// be complete (the 512-byte capture may cut it otherwise) and the code within 100..=599.
#[must_use]
pub fn response_status(buf: &[u8]) -> Option<u16> {
    let line = strip_line_end(buf.get(..line_length(buf)?)?);
    let rest = line
        .strip_prefix(b"HTTP/1.0 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.1 "))?;
    let (code, reason) = rest.split_at_checked(3)?;
    let reason_ok = match reason.split_first() {
        None => true,
        Some((b' ', text)) => text.iter().all(|&b| is_field_byte(b)),
        Some(_) => false,
    };
    let status = parse_decimal(code)?;
    if !reason_ok || !(100..=599).contains(&status) {
        return None;
    }
    u16::try_from(status).ok()
}

/// Values of header `name` (lowercase) in the complete lines of a captured response head (the
/// status line and anything past the blank line are skipped), trimmed.
pub fn response_header_values<'b>(
    head: &'b [u8],
    name: &'b str,
) -> impl Iterator<Item = &'b [u8]> + 'b {
    complete_lines(head).filter_map(move |line| {
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| strip_line_end(&line[colon + 1..]).trim_ascii())
    })
}

/// The field lines of a captured head: after the start line, up to the blank line, and only
/// those the capture holds whole (a line cut by the capture bound could read `Content-Length:
/// 12` where the response said `123`).
fn complete_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let whole = memchr::memrchr(b'\n', head).map_or(&[][..], |end| &head[..end]);
    whole
        .split(|&b| b == b'\n')
        .skip(1)
        .take_while(|line| !strip_line_end(line).is_empty())
}

/// Length of the body of the response whose whole head is `head`, as its fields say: one
/// `Content-Length` and no `Transfer-Encoding`, or a status that has no body (1xx, 204, 304).
/// `None` when unknown (chunked, until close). A response to `HEAD` has no body whatever its
/// fields say: only the request tells, so callers that know the method check it.
#[must_use]
pub fn response_body_length(head: &[u8]) -> Option<u64> {
    ResponseFraming::of(head).body_length(response_status(head)?)
}

/// The fields of a response head that frame its body, read in one pass over its complete lines
/// (the first write of every response is read for them: three passes were measured at 8 % of
/// the daemon's CPU).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFraming {
    /// A `Transfer-Encoding` field is present (whatever its codings).
    pub transfer_encoding: bool,
    /// The `Content-Length`, when every such field gives the same decimal value.
    pub content_length: Option<u64>,
    /// The first `Content-Length` field's value, as the response announced it (for the
    /// record), even when others disagree.
    pub first_content_length: Option<u64>,
}

impl ResponseFraming {
    #[must_use]
    pub fn of(head: &[u8]) -> Self {
        let mut framing = Self::default();
        let mut agree = true;
        let mut seen = false;
        for line in complete_lines(head) {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name = &line[..colon];
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                framing.transfer_encoding = true;
            } else if name.eq_ignore_ascii_case(b"content-length") {
                let value = strip_line_end(&line[colon + 1..]).trim_ascii();
                let n = parse_decimal(value);
                if seen {
                    agree &= n.is_some() && n == framing.content_length;
                } else {
                    seen = true;
                    framing.first_content_length = n;
                    framing.content_length = n;
                    agree = n.is_some();
                }
            }
        }
        if !agree {
            framing.content_length = None;
        }
        framing
    }

    /// Length of the body of a response with `status` and these fields; `None` when unknown
    /// (chunked or other codings, until close).
    #[must_use]
    pub fn body_length(&self, status: u16) -> Option<u64> {
        if status < 200 || status == 204 || status == 304 {
            Some(0)
        } else if self.transfer_encoding {
            None
        } else {
            self.content_length
        }
    }
}

/// Offset of the first byte that is not part of a leading empty line (`CRLF` or bare `LF`).
fn skip_empty_lines(buf: &[u8]) -> usize {
    let mut pos = 0;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        if rest.starts_with(b"\r\n") {
            pos += 2;
        } else if rest.starts_with(b"\n") {
            pos += 1;
        } else {
            return pos;
        }
    }
}

/// Length of the first line including its `LF`, or `None` when no `LF` has arrived yet.
fn line_length(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n').map(|i| i + 1)
}

/// A line without its terminator (`CRLF`, or a bare `LF` which RFC 9112 §2.2 lets us accept).
fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Whitespace separating request-line words: RFC 9112 §3 lets recipients split on runs of SP,
/// HTAB, VT, FF or bare CR and ignore them at both ends of the line.
fn is_line_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\x0b' | b'\x0c' | b'\r')
}

/// The whitespace-separated words of a request line.
fn words(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| is_line_space(b))
        .filter(|word| !word.is_empty())
}

/// Splits a complete request line (without its `LF`) into its parts, validating each.
fn split_request_line(line: &[u8]) -> Option<RequestLine<'_>> {
    let mut words = words(line);
    let method = words.next().filter(|m| is_token(m))?;
    let target = words.next().filter(|t| is_target(t))?;
    let minor_version = words.next().and_then(parse_version)?;
    words.next().is_none().then_some(RequestLine {
        method,
        target,
        minor_version,
    })
}

/// Whether `partial` (no `LF` yet) could still grow into a valid request line.
fn is_request_line_prefix(partial: &[u8]) -> bool {
    let last_word_may_grow = !partial.last().is_some_and(|&b| is_line_space(b));
    words(partial).enumerate().all(|(i, word)| match i {
        0 => is_token(word),
        1 => is_target(word),
        2 => parse_version(word).is_some() || (last_word_may_grow && b"HTTP/1.".starts_with(word)),
        _ => false,
    })
}

/// Minor version of `HTTP/1.<digit>`: 0 for 1.0, else 1, since RFC 9110 §2.5 says a higher
/// minor version is processed as the highest one implemented (nginx does so).
fn parse_version(word: &[u8]) -> Option<u8> {
    match word.strip_prefix(b"HTTP/1.")? {
        [b'0'] => Some(0),
        [d] if d.is_ascii_digit() => Some(1),
        _ => None,
    }
}

/// A non-empty RFC 9110 token (the grammar of methods).
fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token_byte(b))
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A non-empty request target: visible ASCII or obs-text, as `httparse` and nginx accept.
fn is_target(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_target_byte(b))
}

/// Bytes allowed in a target: anything but controls, space and DEL.
fn is_target_byte(b: u8) -> bool {
    b.is_ascii_graphic() || b >= 0x80
}

/// Bytes allowed in a reason phrase or field value: HTAB, SP, VCHAR, obs-text.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || is_target_byte(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> RequestHead {
        match parse_request_head(buf) {
            HeadParse::Complete(head) => head,
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    fn invalid(buf: &[u8]) -> HttpError {
        match parse_request_head(buf) {
            HeadParse::Invalid(e) => e,
            other => panic!("expected an invalid head, got {other:?}"),
        }
    }

    #[test]
    fn simple_get() {
        let buf = b"GET /docs/a.pdf?x=1 HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n";
        let head = complete(buf);
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/docs/a.pdf?x=1");
        assert_eq!(head.minor_version, 1);
        assert_eq!(head.head_len, buf.len());
        assert_eq!(head.header("host"), Some(&b"example.org"[..]));
        assert_eq!(head.headers.len(), 2);
        assert_eq!(head.content_length, None);
        assert!(!head.chunked);
        assert!(head.keep_alive);
    }

    #[test]
    fn headers_are_case_insensitive() {
        let head =
            complete(b"GET / HTTP/1.1\r\nX-Remote-USER: alice\r\nx-remote-user: bob\r\n\r\n");
        assert_eq!(head.headers[0].0, "x-remote-user");
        assert_eq!(head.header("x-remote-user"), Some(&b"alice"[..]));
        assert_eq!(head.header("X-Remote-User"), Some(&b"alice"[..]));
        let all: Vec<&[u8]> = head.header_values("X-REMOTE-USER").collect();
        assert_eq!(all, [&b"alice"[..], &b"bob"[..]]);
        assert_eq!(head.header("absent"), None);
    }

    #[test]
    fn header_values_are_raw_bytes() {
        let head = complete(b"GET / HTTP/1.1\r\nX-Bin: a\xff\xfeb\r\n\r\n");
        assert_eq!(head.header("x-bin"), Some(&b"a\xff\xfeb"[..]));
    }

    #[test]
    fn partial_heads() {
        let full = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n";
        for end in 0..full.len() {
            assert_eq!(
                parse_request_head(&full[..end]),
                HeadParse::Partial,
                "prefix of {end} bytes"
            );
        }
        assert!(matches!(parse_request_head(full), HeadParse::Complete(_)));
    }

    #[test]
    fn pipelined_requests() {
        let buf = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
        let first = complete(buf);
        assert_eq!(first.target, "/a");
        let second = complete(&buf[first.head_len..]);
        assert_eq!(second.target, "/b");
        assert_eq!(first.head_len + second.head_len, buf.len());
    }

    #[test]
    fn body_after_head_is_not_part_of_it() {
        let buf = b"POST /f HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGARBAGE";
        let head = complete(buf);
        assert_eq!(head.content_length, Some(4));
        assert_eq!(&buf[head.head_len..], b"abcdGARBAGE");
    }

    #[test]
    fn a_header_block_ends_at_its_first_empty_line_however_its_lines_end() {
        // The earliest `LF LF` or `LF CR LF`, as two substring searches found it.
        let searched = |block: &[u8]| {
            let find = |pat: &[u8]| block.windows(pat.len()).position(|w| w == pat);
            let crlf = find(b"\n\r\n").map(|i| i + 3);
            let lf = find(b"\n\n").map(|i| i + 2);
            match (crlf, lf) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(block.len()),
            }
        };
        let blocks: [&[u8]; 7] = [
            b"A: 1\r\nB: 2\r\n\r\nbody\n\nmore",
            b"A: 1\nB: 2\n\nbody\r\n\r\n",
            b"A: 1\r\n\n",
            b"A: 1\n\r\r\n\n",
            b"A: 1\r\nB: 2\r\n",
            b"A\n\r",
            b"x",
        ];
        for block in blocks {
            for end in 0..=block.len() {
                let b = &block[..end];
                if b.starts_with(b"\n") || b.starts_with(b"\r\n") {
                    continue;
                }
                assert_eq!(
                    head_block_end(b),
                    searched(b),
                    "{:?}",
                    String::from_utf8_lossy(b)
                );
            }
        }
    }

    #[test]
    fn leading_empty_lines_are_skipped_and_counted() {
        let buf = b"\r\n\nGET / HTTP/1.1\r\n\r\n";
        let head = complete(buf);
        assert_eq!(head.head_len, buf.len());
        assert_eq!(parse_request_head(b"\r\n"), HeadParse::Partial);
        assert_eq!(parse_request_head(b"\r\n\r"), HeadParse::Partial);
    }

    #[test]
    fn bare_lf_line_endings() {
        let head = complete(b"GET /x HTTP/1.0\nHost: h\n\n");
        assert_eq!(head.target, "/x");
        assert_eq!(head.minor_version, 0);
    }

    #[test]
    fn garbage_is_invalid() {
        for buf in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"\x00\x00\x00\x00",
            b"hello world\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.10\r\n\r\n",
            b"GET /\r\n\r\n",
            b" \r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET /a\x00b HTTP/1.1\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\rX",
            b"GET / HTTP/1.1 \t x",
            b"GET / HTTP/2",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(invalid(buf), HttpError::NotHttp, "{buf:?}");
        }
    }

    #[test]
    fn invalid_header_lines_are_skipped() {
        let buf = b"GET / HTTP/1.1\r\nBad Name: x\r\n: y\r\nNoColon\r\nHost : h\r\n\
                    Authorization: Basic Zm9vOmJhcg==\r\n\r\n";
        let head = complete(buf);
        assert_eq!(head.head_len, buf.len());
        assert_eq!(head.headers.len(), 1);
        assert_eq!(
            head.header("authorization"),
            Some(&b"Basic Zm9vOmJhcg=="[..])
        );
    }

    #[test]
    fn unrecoverable_header_bytes_are_invalid() {
        assert_eq!(
            invalid(b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n"),
            HttpError::BadHeader
        );
        assert_eq!(
            invalid(b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n"),
            HttpError::BadHeader
        );
        assert_eq!(invalid(b"GET / HTTP/1.1\r\n\rX"), HttpError::BadHeader);
    }

    #[test]
    fn lenient_request_line_whitespace() {
        for buf in [
            &b"GET  /a  HTTP/1.1\r\n\r\n"[..],
            b"GET\t/a\tHTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1 \r\n\r\n",
            b" GET /a HTTP/1.1\r\n\r\n",
            b"GET\x0b/a\x0cHTTP/1.1\r\n\r\n",
        ] {
            let head = complete(buf);
            assert_eq!(
                (head.method.as_str(), head.target.as_str()),
                ("GET", "/a"),
                "{buf:?}"
            );
            assert_eq!(head.head_len, buf.len());
        }
    }

    #[test]
    fn higher_minor_versions_are_http_1_1() {
        let head = complete(b"GET / HTTP/1.7\r\n\r\n");
        assert_eq!(head.minor_version, 1);
        assert!(head.keep_alive);
    }

    #[test]
    fn every_byte_prefix_of_garbage_never_panics() {
        let mut buf = Vec::new();
        let mut x: u32 = 0x1234_5678;
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            buf.push(x.to_le_bytes()[0]);
        }
        for end in 0..buf.len() {
            let _ = parse_request_head(&buf[..end]);
            let _ = request_line(&buf[..end]);
            let _ = response_status(&buf[..end]);
            let _ = looks_like_request_start(&buf[..end]);
        }
    }

    #[test]
    fn non_utf8_target_is_kept_lossily() {
        let head = complete(b"GET /caf\xe9/\xff.pdf HTTP/1.1\r\n\r\n");
        assert_eq!(head.target, "/caf\u{fffd}/\u{fffd}.pdf");
        let utf8 = complete("GET /café HTTP/1.1\r\n\r\n".as_bytes());
        assert_eq!(utf8.target, "/café");
    }

    #[test]
    fn too_many_headers() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            buf.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(invalid(&buf), HttpError::TooManyHeaders);
    }

    #[test]
    fn max_headers_is_accepted() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            buf.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(complete(&buf).headers.len(), MAX_HEADERS);
    }

    #[test]
    fn content_length_values() {
        let cl = |v: &str| parse_request_head(format!("POST / HTTP/1.1\r\n{v}\r\n\r\n").as_bytes());
        let ok = |v: &str| match cl(v) {
            HeadParse::Complete(head) => head.content_length,
            other => panic!("{v}: {other:?}"),
        };
        assert_eq!(ok("Content-Length: 42"), Some(42));
        assert_eq!(ok("Content-Length: 0"), Some(0));
        assert_eq!(ok("Content-Length: 42\r\nContent-Length: 42"), Some(42));
        assert_eq!(ok("Content-Length: 42, 42"), Some(42));
        assert_eq!(ok("Content-Length: 18446744073709551615"), Some(u64::MAX));
        for bad in [
            "Content-Length: -1",
            "Content-Length: +1",
            "Content-Length: 1e3",
            "Content-Length: 0x10",
            "Content-Length: 18446744073709551616",
            "Content-Length:",
            "Content-Length: 4 2",
        ] {
            assert_eq!(
                cl(bad),
                HeadParse::Invalid(HttpError::BadContentLength),
                "{bad}"
            );
        }
        for conflict in [
            "Content-Length: 1\r\nContent-Length: 2",
            "Content-Length: 1, 2",
        ] {
            assert_eq!(
                cl(conflict),
                HeadParse::Invalid(HttpError::ConflictingContentLength),
                "{conflict}"
            );
        }
    }

    #[test]
    fn chunked_wins_over_content_length() {
        let head = complete(
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(head.chunked);
        assert_eq!(head.content_length, None);
        assert!(
            !head.keep_alive,
            "RFC 9112 6.3: the server must close after such a request"
        );
    }

    #[test]
    fn transfer_encoding_forms() {
        let te = |v: &str| {
            parse_request_head(
                format!("POST / HTTP/1.1\r\nTransfer-Encoding: {v}\r\n\r\n").as_bytes(),
            )
        };
        for ok in ["chunked", "CHUNKED", "gzip, chunked", "gzip,chunked ;x=y"] {
            match te(ok) {
                HeadParse::Complete(head) => assert!(head.chunked && head.keep_alive, "{ok}"),
                other => panic!("{ok}: {other:?}"),
            }
        }
        for bad in ["gzip", "chunked, gzip", ""] {
            assert_eq!(
                te(bad),
                HeadParse::Invalid(HttpError::BadTransferEncoding),
                "{bad:?}"
            );
        }
        let split = complete(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(split.chunked);
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |version: &str, connection: &str| {
            complete(format!("GET / HTTP/1.{version}\r\n{connection}\r\n").as_bytes()).keep_alive
        };
        assert!(ka("1", ""));
        assert!(ka("1", "Connection: keep-alive\r\n"));
        assert!(!ka("1", "Connection: close\r\n"));
        assert!(!ka("1", "Connection: Upgrade, CLOSE\r\n"));
        assert!(!ka("0", ""));
        assert!(ka("0", "Connection: keep-alive\r\n"));
        assert!(ka("0", "Connection: Keep-Alive\r\n"));
        assert!(!ka("0", "Connection: keep-alive, close\r\n"));
        assert!(!ka("0", "Connection: keep-alive\r\nConnection: close\r\n"));
        assert!(!ka(
            "0",
            "Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n"
        ));
    }

    #[test]
    fn response_framing_in_one_pass() {
        let f = |h: &str| ResponseFraming::of(h.as_bytes());
        let ok = f("HTTP/1.1 200 OK\r\nContent-Length: 12\r\ncontent-length:12 \r\n\r\nbody");
        assert_eq!(
            (ok.content_length, ok.first_content_length),
            (Some(12), Some(12))
        );
        assert_eq!(ok.body_length(200), Some(12));
        assert_eq!(ok.body_length(304), Some(0));
        let split = f("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Length: 13\r\n\r\n");
        assert_eq!(
            (split.content_length, split.first_content_length),
            (None, Some(12))
        );
        let bad = f("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n");
        assert_eq!(bad.content_length, None);
        let te = f("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(te.transfer_encoding);
        assert_eq!(te.body_length(200), None);
        // Fields past the blank line are body, and the status line is no field.
        let body = f("Content-Length: 1\r\n\r\nContent-Length: 2\r\n");
        assert_eq!(body.content_length, None);
        // A head cut by the capture: the complete lines count.
        let cut = f("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-Long: aaa");
        assert_eq!(cut.content_length, Some(7));
        let cut = f("HTTP/1.1 200 OK\r\nX-Long: aaa\r\nContent-Length: 12");
        assert_eq!(
            cut.first_content_length, None,
            "the value may go on past the capture"
        );
        assert_eq!(
            response_body_length(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Some(0)
        );
    }

    #[test]
    fn request_line_of_incomplete_heads() {
        let mut huge = b"POST /big?q=1 HTTP/1.1\r\nCookie: ".to_vec();
        huge.resize(4096, b'a');
        assert_eq!(parse_request_head(&huge), HeadParse::Partial);
        assert_eq!(
            request_line(&huge),
            Some(("POST".to_owned(), "/big?q=1".to_owned()))
        );
        assert_eq!(
            request_line(b"\r\nGET /\xff HTTP/1.0\n"),
            Some(("GET".to_owned(), "/\u{fffd}".to_owned()))
        );
        assert_eq!(request_line(b"GET /never-ends HTTP/1.1"), None);
        assert_eq!(request_line(b"GET /x HTTP/1.1\r"), None);
        assert_eq!(request_line(b"GET /x\r\n"), None);
        assert_eq!(request_line(b"\x16\x03\x01\r\n"), None);
        assert_eq!(request_line(b""), None);
    }

    #[test]
    fn request_start_detection() {
        for yes in [
            &b"GET /"[..],
            b"POST ",
            b"PROPFIND /dav",
            b"MKCALENDAR /c",
            b"DELETE /x",
        ] {
            assert!(looks_like_request_start(yes), "{yes:?}");
        }
        for no in [
            &b""[..],
            b"GET",
            b"GET/",
            b"get /",
            b"GETX /",
            b"\r\nGET /",
            b"\xffGET /",
        ] {
            assert!(!looks_like_request_start(no), "{no:?}");
        }
    }

    #[test]
    fn response_headers() {
        let head = b"HTTP/1.1 302 Found\r\nSet-Cookie: a=1; Path=/\r\nset-cookie:b=2\r\n\r\nSet-Cookie: body";
        let got: Vec<&[u8]> = response_header_values(head, "set-cookie").collect();
        assert_eq!(got, [&b"a=1; Path=/"[..], b"b=2"]);
        assert_eq!(response_header_values(b"", "set-cookie").count(), 0);
        assert_eq!(
            response_header_values(b"Set-Cookie: x=1\r\n", "set-cookie").count(),
            0,
            "the first line is the status line"
        );
    }

    #[test]
    fn status_of_responses() {
        assert_eq!(
            response_status(b"HTTP/1.1 403 Forbidden\r\nContent-Le"),
            Some(403)
        );
        assert_eq!(response_status(b"HTTP/1.0 200 OK\r\n\r\n"), Some(200));
        assert_eq!(response_status(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(response_status(b"HTTP/1.1 200 \r\n"), Some(200));
        assert_eq!(response_status(b"HTTP/1.1 404 Not\xffFound\n"), Some(404));
        assert_eq!(response_status(b"HTTP/1.1 599 x\r\n"), Some(599));
    }

    #[test]
    fn status_of_partial_or_invalid_responses() {
        for bad in [
            &b""[..],
            b"HTTP/1.1 403 Forbidden",
            b"HTTP/1.1 40",
            b"HTTP/1.1 4033 x\r\n",
            b"HTTP/1.1 40x x\r\n",
            b"HTTP/1.1 +03 x\r\n",
            b"HTTP/1.1 099 x\r\n",
            b"HTTP/1.1 600 x\r\n",
            b"HTTP/2 200\r\n",
            b"HTTP/1.1  200 OK\r\n",
            b"HTTP/1.1 200OK\r\n",
            b"HTTP/1.1 200 O\x00K\r\n",
            b"http/1.1 200 OK\r\n",
            b"GET / HTTP/1.1\r\n",
            b"\x00\xff\r\n",
        ] {
            assert_eq!(response_status(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn debug_redacts_credentials() {
        let head = complete(
            b"GET / HTTP/1.1\r\nAuthorization: Basic YWxpY2U6czNjcjN0\r\n\
              Cookie: sid=abc\r\nHost: h\r\n\r\n",
        );
        let shown = format!("{head:?}");
        assert!(!shown.contains("YWxpY2U6czNjcjN0"), "{shown}");
        assert!(!shown.contains("sid=abc"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert!(shown.contains("\"h\""));
        assert!(is_sensitive_header("Proxy-Authorization"));
        assert!(!is_sensitive_header("host"));
    }
}
