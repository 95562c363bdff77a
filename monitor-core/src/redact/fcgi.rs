//! FastCGI records redacted in place, with the rules of HTTP heads (see the parent module).
//!
//! The record framing comes from [`fastcgi::Reader`], as in the correlator. Within it:
//! - the params stream of each request is read pair by pair; the value of a credential param is
//!   redacted as the header it came from. A value cut by a read boundary is handled as an HTTP
//!   line cut by one: what went out before the end was masked, so it fails closed;
//! - the CGI head at the start of STDOUT is read line by line, as an HTTP response head.
//!
//! Where the framing is unknown, nothing is left to chance: params past a gap in their stream,
//! and whole reads while the stream is lost, are masked with `*`; head lines cut by a gap are
//! masked to their end. The lengths of records and pairs never change, so the correlator frames
//! the redacted bytes exactly as the raw ones.
use std::{collections::BTreeMap, ops::Range};

use super::{MAX_PENDING, Redactor, mask_form};
use crate::fastcgi::{self, Direction, Piece, Reader, kind};

/// What a credential param is redacted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// As this HTTP header's value.
    Header(&'static [u8]),
    /// A password as such: masked whole.
    Mask,
    /// A URL or request target: its secret query parameters are masked.
    Url,
    /// A query string (no `?`): its secret parameters are masked.
    Query,
}

/// Params that carry credentials. Names are compared ignoring case: an application that
/// honours `http_cookie` must not see it unredacted.
const SENSITIVE: [(&[u8], Field); 7] = [
    (b"HTTP_AUTHORIZATION", Field::Header(b"authorization")),
    (
        b"HTTP_PROXY_AUTHORIZATION",
        Field::Header(b"proxy-authorization"),
    ),
    (b"HTTP_COOKIE", Field::Header(b"cookie")),
    (b"PHP_AUTH_PW", Field::Mask),
    (b"REQUEST_URI", Field::Url),
    (b"HTTP_REFERER", Field::Url),
    (b"QUERY_STRING", Field::Query),
];

/// Longest sensitive name: longer names are not kept while reading pairs.
const MAX_NAME: usize = 24;

fn sensitive(name: &[u8]) -> Option<Field> {
    SENSITIVE
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, f)| *f)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Stage {
    #[default]
    NameLen,
    ValueLen,
    Name,
    Value,
}

/// The params stream of one request, read pair by pair across records and reads.
#[derive(Debug, Default)]
struct Pairs {
    stage: Stage,
    len: [u8; 4],
    len_have: usize,
    name_left: u32,
    value_left: u32,
    name: Vec<u8>,
    field: Option<Field>,
    /// Raw bytes of a credential value seen in earlier chunks (already passed on, masked).
    carried: Vec<u8>,
    /// A credential value longer than [`MAX_PENDING`]: masked to its end.
    overlong: bool,
    /// Bytes of the stream went unseen: pair boundaries are unknown, so the rest is masked.
    broken: bool,
    /// `REQUEST_METHOD` and `REQUEST_URI` (bounded), to recognise the portal's login request.
    method: Vec<u8>,
    uri: Vec<u8>,
    /// The current value is one of those two (`true`: the method).
    wanted: Option<bool>,
}

/// Longest `REQUEST_METHOD` or `REQUEST_URI` kept.
const MAX_KEPT: usize = 2048;

impl Pairs {
    fn broken() -> Self {
        Self {
            broken: true,
            ..Self::default()
        }
    }

    /// Redacts the next bytes of the params stream in place.
    fn redact(&mut self, r: &mut Redactor, buf: &mut [u8]) {
        if self.broken {
            buf.fill(b'*');
            return;
        }
        let mut i = 0;
        while i < buf.len() || matches!(self.stage, Stage::Name | Stage::Value) {
            match self.stage {
                Stage::NameLen | Stage::ValueLen => {
                    let Some(&byte) = buf.get(i) else { return };
                    i += 1;
                    let len = if self.len_have == 0 && byte < 0x80 {
                        u32::from(byte)
                    } else {
                        self.len[self.len_have] = byte;
                        self.len_have += 1;
                        if self.len_have < 4 {
                            continue;
                        }
                        self.len_have = 0;
                        u32::from_be_bytes(self.len) & 0x7fff_ffff
                    };
                    if self.stage == Stage::NameLen {
                        self.name_left = len;
                        self.stage = Stage::ValueLen;
                    } else {
                        self.value_left = len;
                        self.stage = Stage::Name;
                    }
                }
                Stage::Name => {
                    let take = (self.name_left as usize).min(buf.len() - i);
                    let room = (MAX_NAME + 1).saturating_sub(self.name.len());
                    self.name.extend_from_slice(&buf[i..i + take.min(room)]);
                    self.name_left -= take as u32;
                    i += take;
                    if self.name_left > 0 {
                        return;
                    }
                    self.field = sensitive(&self.name);
                    self.wanted = match self.name.as_slice() {
                        b"REQUEST_METHOD" => Some(true),
                        b"REQUEST_URI" => Some(false),
                        _ => None,
                    };
                    self.stage = Stage::Value;
                }
                Stage::Value => {
                    let take = (self.value_left as usize).min(buf.len() - i);
                    self.value_left -= take as u32;
                    let done = self.value_left == 0;
                    if let Some(method) = self.wanted {
                        let kept = if method {
                            &mut self.method
                        } else {
                            &mut self.uri
                        };
                        let room = MAX_KEPT.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[i..i + take.min(room)]);
                    }
                    self.redact_value(r, &mut buf[i..i + take], done);
                    i += take;
                    if !done {
                        return;
                    }
                    // The next pair; what identifies the request is kept.
                    let (method, uri) = (
                        std::mem::take(&mut self.method),
                        std::mem::take(&mut self.uri),
                    );
                    *self = Self {
                        method,
                        uri,
                        ..Self::default()
                    };
                }
            }
        }
    }

    /// The next `part` of the current value; `done` says the value ends with it.
    fn redact_value(&mut self, r: &mut Redactor, part: &mut [u8], done: bool) {
        match self.field {
            None => {}
            Some(Field::Mask) => part.fill(b'*'),
            Some(Field::Header(_) | Field::Url | Field::Query) if self.overlong => {
                part.fill(b'*');
            }
            Some(field @ (Field::Url | Field::Query)) => {
                // As one value: a parameter split across records is recognised whole.
                let prefix = self.carried.len();
                let mut raw = std::mem::take(&mut self.carried);
                raw.extend_from_slice(part);
                let mut value = raw.clone();
                if field == Field::Url {
                    super::query::mask_url(&mut value, &r.query_names);
                } else {
                    super::query::mask_query(&mut value, &r.query_names);
                }
                part.copy_from_slice(&value[prefix..]);
                if !done {
                    if raw.len() <= MAX_PENDING {
                        self.carried = raw;
                    } else {
                        self.overlong = true;
                    }
                }
            }
            Some(Field::Header(name)) => {
                let prefix = self.carried.len();
                let mut raw = std::mem::take(&mut self.carried);
                raw.extend_from_slice(part);
                let mut value = raw.clone();
                r.redact_field(name, &mut value, done);
                part.copy_from_slice(&value[prefix..]);
                if !done {
                    if raw.len() <= MAX_PENDING {
                        self.carried = raw;
                    } else {
                        self.overlong = true;
                    }
                }
            }
        }
    }
}

/// The CGI head at the start of one request's STDOUT, then its body.
#[derive(Debug, Default)]
struct Head {
    /// Raw bytes of the line the last chunk ended in.
    carried: Vec<u8>,
    /// Bytes of the head went unseen: the line they were in is masked to its end.
    skip_line: bool,
    /// The head is over: the rest is the body (document content: masked).
    done: bool,
}

/// The login form in the STDIN of a request to the portal's login path (`identity.session`).
#[derive(Debug, Default)]
struct Form {
    name: Vec<u8>,
    keep: Option<bool>,
    /// Bytes of the form went unseen: the position in it is lost, the rest is masked.
    lost: bool,
}

/// One FastCGI connection, both directions.
#[derive(Debug)]
pub(super) struct Stream {
    input: Reader,
    output: Reader,
    params: BTreeMap<u16, Pairs>,
    forms: BTreeMap<u16, Form>,
    heads: BTreeMap<u16, Head>,
}

impl Default for Stream {
    fn default() -> Self {
        Self {
            input: Reader::new(Direction::ToApp),
            output: Reader::new(Direction::FromApp),
            params: BTreeMap::new(),
            forms: BTreeMap::new(),
            heads: BTreeMap::new(),
        }
    }
}

/// Where a piece of a chunk goes. `kind` is the record type of the stream (PARAMS, STDIN,
/// STDOUT).
enum Seg {
    Begin(u16),
    /// Captured content of a stream.
    Content(u8, u16, Range<usize>),
    /// Content of that stream went unseen.
    Gap(u8, u16),
    /// That stream of that request ended (its empty record; END_REQUEST ends STDOUT).
    End(u8, u16),
    /// The framing was lost from here on.
    Lost(usize),
}

/// The streams of the front server's records that are redacted.
fn input_seg(p: Piece<'_>) -> Option<Seg> {
    match p {
        Piece::End(h) if h.kind == kind::BEGIN_REQUEST => Some(Seg::Begin(h.request_id)),
        Piece::Content { header, at, bytes }
            if matches!(header.kind, kind::PARAMS | kind::STDIN) =>
        {
            Some(Seg::Content(
                header.kind,
                header.request_id,
                at..at + bytes.len(),
            ))
        }
        Piece::Unseen { header, .. } if matches!(header.kind, kind::PARAMS | kind::STDIN) => {
            Some(Seg::Gap(header.kind, header.request_id))
        }
        Piece::End(h) if matches!(h.kind, kind::PARAMS | kind::STDIN) && h.content_len == 0 => {
            Some(Seg::End(h.kind, h.request_id))
        }
        _ => None,
    }
}

/// The application's STDOUT records.
fn output_seg(p: Piece<'_>) -> Option<Seg> {
    match p {
        Piece::Content { header, at, bytes } if header.kind == kind::STDOUT => Some(Seg::Content(
            kind::STDOUT,
            header.request_id,
            at..at + bytes.len(),
        )),
        Piece::Unseen { header, .. } if header.kind == kind::STDOUT => {
            Some(Seg::Gap(kind::STDOUT, header.request_id))
        }
        Piece::End(h)
            if (h.kind == kind::STDOUT && h.content_len == 0) || h.kind == kind::END_REQUEST =>
        {
            Some(Seg::End(kind::STDOUT, h.request_id))
        }
        _ => None,
    }
}

impl Stream {
    pub(super) fn lose_sync(&mut self) {
        self.input.lose_sync();
        self.output.lose_sync();
    }

    /// Redacts a read of `total` bytes whose capture is `data`.
    pub(super) fn redact_read(&mut self, r: &mut Redactor, data: &mut [u8], total: u64) {
        let Some(segs) = frame(&mut self.input, data, total, input_seg) else {
            data.fill(b'*');
            return;
        };
        for (id, seg) in batches(segs) {
            match seg {
                Batch::Begin => {
                    // A new request with this id: its response starts afresh, as the decoder's.
                    bounded_insert(&mut self.params, id, Pairs::default());
                    self.forms.remove(&id);
                    self.heads.remove(&id);
                }
                Batch::Content(kind::PARAMS, ranges) => {
                    let pairs = self.params.entry(id).or_insert_with(Pairs::broken);
                    scattered(data, &ranges, |buf| pairs.redact(r, buf));
                }
                Batch::Content(_, ranges) => {
                    if let Some(form) = self.forms.get_mut(&id) {
                        let user_field = r
                            .session
                            .as_ref()
                            .map_or(&b""[..], |s| s.user_field.as_bytes());
                        scattered(data, &ranges, |buf| {
                            if form.lost {
                                buf.fill(b'*');
                            } else {
                                mask_form(buf, &mut form.name, &mut form.keep, user_field);
                            }
                        });
                    }
                }
                Batch::Gap(kind::PARAMS) => {
                    self.params.insert(id, Pairs::broken());
                }
                Batch::Gap(_) => {
                    if let Some(form) = self.forms.get_mut(&id) {
                        form.lost = true;
                    }
                }
                Batch::End(kind::PARAMS) => {
                    // The params are complete: a POST to the login path has its form in STDIN.
                    let login = self.params.remove(&id).is_some_and(|p| {
                        r.session.as_ref().is_some_and(|s| {
                            p.method == b"POST"
                                && p.uri.split(|&b| b == b'?' || b == b'#').next()
                                    == Some(s.login_path.as_bytes())
                        })
                    });
                    if login {
                        bounded_insert(&mut self.forms, id, Form::default());
                    }
                }
                Batch::End(_) => {
                    self.forms.remove(&id);
                }
                Batch::Lost(at) => data[at..].fill(b'*'),
            }
        }
    }

    /// Redacts a write of `total` bytes whose capture is `data`.
    pub(super) fn redact_write(&mut self, r: &mut Redactor, data: &mut [u8], total: u64) {
        let Some(segs) = frame(&mut self.output, data, total, output_seg) else {
            data.fill(b'*');
            return;
        };
        for (id, seg) in batches(segs) {
            match seg {
                Batch::Begin => {}
                Batch::Content(_, ranges) => {
                    if !self.heads.contains_key(&id) {
                        bounded_insert(&mut self.heads, id, Head::default());
                    }
                    if let Some(head) = self.heads.get_mut(&id) {
                        scattered(data, &ranges, |buf| redact_head(r, head, buf));
                    }
                }
                Batch::Gap(_) => {
                    if let Some(head) = self.heads.get_mut(&id) {
                        head.carried.clear();
                        head.skip_line = true;
                    }
                }
                Batch::End(_) => {
                    self.heads.remove(&id);
                }
                Batch::Lost(at) => data[at..].fill(b'*'),
            }
        }
    }
}

/// Runs the reader over a chunk and keeps the pieces `pick` wants (as positions: the chunk is
/// rewritten afterwards). `None` when the whole chunk is outside the framing (lost before, and
/// not resumed).
fn frame(
    reader: &mut Reader,
    data: &[u8],
    total: u64,
    mut pick: impl FnMut(Piece<'_>) -> Option<Seg>,
) -> Option<Vec<Seg>> {
    let was_lost = !reader.in_sync();
    let mut resumed = false;
    let mut segs = Vec::new();
    reader.feed(data, total, |p| match p {
        Piece::Resync => resumed = true,
        Piece::Desync { at } => segs.push(Seg::Lost(at)),
        other => segs.extend(pick(other)),
    });
    (!was_lost || resumed).then_some(segs)
}

enum Batch {
    Begin,
    /// Consecutive captured content of one request's stream: one logical run of bytes.
    Content(u8, Vec<Range<usize>>),
    Gap(u8),
    End(u8),
    Lost(usize),
}

/// Groups consecutive content of one request's stream into one batch, so that a value or line
/// that spans two records of the same chunk is seen whole.
fn batches(segs: Vec<Seg>) -> Vec<(u16, Batch)> {
    let mut out: Vec<(u16, Batch)> = Vec::new();
    for seg in segs {
        match seg {
            Seg::Content(kind, id, range) => match out.last_mut() {
                Some((last, Batch::Content(k, ranges))) if *last == id && *k == kind => {
                    ranges.push(range);
                }
                _ => out.push((id, Batch::Content(kind, vec![range]))),
            },
            Seg::Begin(id) => out.push((id, Batch::Begin)),
            Seg::Gap(kind, id) => out.push((id, Batch::Gap(kind))),
            Seg::End(kind, id) => out.push((id, Batch::End(kind))),
            Seg::Lost(at) => out.push((0, Batch::Lost(at))),
        }
    }
    out
}

/// Runs `f` on the bytes of `ranges` of `data` as one buffer, then writes them back.
fn scattered(data: &mut [u8], ranges: &[Range<usize>], f: impl FnOnce(&mut [u8])) {
    let mut buf: Vec<u8> = ranges
        .iter()
        .flat_map(|r| data[r.clone()].iter().copied())
        .collect();
    f(&mut buf);
    let mut from = 0;
    for r in ranges {
        data[r.clone()].copy_from_slice(&buf[from..from + r.len()]);
        from += r.len();
    }
}

/// Inserts, forgetting the lowest request id when [`fastcgi::MAX_EXCHANGES`] are in flight.
fn bounded_insert<T>(map: &mut BTreeMap<u16, T>, id: u16, value: T) {
    if !map.contains_key(&id) && map.len() >= fastcgi::MAX_EXCHANGES {
        map.pop_first();
    }
    map.insert(id, value);
}

/// The next bytes of a STDOUT stream: header lines until the head ends.
fn redact_head(r: &mut Redactor, head: &mut Head, buf: &mut [u8]) {
    if head.done {
        // The body: document content never reaches the correlator or a trace.
        buf.fill(b'*');
        return;
    }
    let mut start = 0;
    if head.skip_line {
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            buf.fill(b'*');
            return;
        };
        buf[..nl].fill(b'*');
        head.skip_line = false;
        start = nl + 1;
    }
    if let Some(end) = r.redact_lines(&mut head.carried, &mut buf[start..], true) {
        head.done = true;
        head.carried = Vec::new();
        buf[start + end..].fill(b'*');
    }
}

/// For bytes that may be FastCGI with unknown framing (a connection joined in the middle):
/// masks the value after each credential param name found, by the value length written before
/// the name when it reads as one, else to the end of `data`.
pub(super) fn mask_params_by_name(data: &mut [u8]) {
    // Credentials only: a request target with unknown framing would be masked whole.
    for (name, _) in SENSITIVE
        .iter()
        .filter(|(_, f)| matches!(f, Field::Header(_) | Field::Mask))
    {
        let mut from = 0;
        while let Some(i) = find_ignore_case(&data[from..], name) {
            let at = from + i;
            let value = at + name.len();
            let len = value_len_before(&data[..at], name.len()).map_or(usize::MAX, |n| n as usize);
            let end = value.saturating_add(len).min(data.len());
            data[value..end].fill(b'*');
            from = value;
        }
    }
}

/// The value length of a pair whose name (of `name_len` bytes) starts at the end of `before`.
fn value_len_before(before: &[u8], name_len: usize) -> Option<u32> {
    let n = before.len();
    // One-byte value length, preceded by the one-byte name length.
    if n >= 2 && before[n - 1] < 0x80 && usize::from(before[n - 2]) == name_len {
        return Some(u32::from(before[n - 1]));
    }
    // Four-byte value length.
    if n >= 5 && before[n - 4] & 0x80 != 0 && usize::from(before[n - 5]) == name_len {
        let b: [u8; 4] = before[n - 4..].try_into().ok()?;
        return Some(u32::from_be_bytes(b) & 0x7fff_ffff);
    }
    None
}

/// For bytes that may be FastCGI STDOUT with unknown framing: masks `Set-Cookie` values that
/// do not start a line (those are redacted as HTTP lines already), to the end of their line.
pub(super) fn mask_set_cookie_anywhere(data: &mut [u8]) {
    const NAME: &[u8] = b"set-cookie:";
    let mut from = 0;
    while let Some(i) = find_ignore_case(&data[from..], NAME) {
        let at = from + i;
        let value = at + NAME.len();
        if at > 0 && data[at - 1] != b'\n' {
            let end = data[value..]
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .map_or(data.len(), |e| value + e);
            data[value..end].fill(b'*');
        }
        from = value;
    }
}

fn find_ignore_case(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests;
