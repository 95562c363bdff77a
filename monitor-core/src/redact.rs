//! Secrets out of captured bytes before anything else sees them: the correlator, the trace
//! recorder, `explain`. Redaction happens live, before the correlator, so that a trace is exactly
//! what the correlator consumed and replay stays identical.
//!
//! Lengths are preserved byte for byte (request-body accounting depends on them):
//! - `Authorization: Basic`: the password is replaced by `*`s of the same length, re-encoded
//!   (same base64 length), so the user name stays readable;
//! - `Authorization: Bearer`: the token's signature is checked here, with the portal's key when
//!   one is configured, and replaced by a mark of the outcome (`V***`, `X***`, `U***`; see
//!   `identity::jwt::mark_token`). No usable token is kept, and neither the correlator nor
//!   replay needs the key;
//! - other `Authorization` schemes: the credentials are masked with `*`;
//! - `Cookie:` values and the value of `Set-Cookie:`: replaced by a keyed hash (HMAC-SHA-256,
//!   hex, cycled to the value's length). The key is random per run and never written anywhere,
//!   unless the operator gives one (`[incidents] session_key_file`): then the same cookie maps to
//!   the same hash across restarts, and an analyst holding the key can tell which of the portal's
//!   sessions an alert's session handle is (`vigie session-handle`). Without the key, a hash maps
//!   to nothing.
//!
//! - query parameters named like credentials (`capture.secret_query_parameters`: `sid`,
//!   `token`, `password`, ...) in request lines, read or written, in `Referer`/`Location`, and
//!   in form bodies (any request, not only the login): their values are masked with `*`
//!   ([`query`]);
//! - the body of the portal's login request (`identity.session`): every form value but the user
//!   field's is replaced by `*`s (the password, CSRF tokens), so the correlator can bind the
//!   session to its user and nothing else of the form is kept.
//!
//! Request bytes are redacted as a stream per connection: a header line split across two socket
//! reads (a slow client, or one that tries to slip a forged mark past the check) is recognised
//! across the split. What was already passed on cannot be rewritten, so the part of a credential
//! seen before its line was complete is masked with `*`: such a credential fails closed
//! (no identity) instead of leaking or being trusted.
//!
//! FastCGI connections (decided per connection by [`fastcgi::Protocol`], the correlator's own
//! rule) get the same rules on their records ([`fcgi`]): the values of the `HTTP_AUTHORIZATION`,
//! `HTTP_PROXY_AUTHORIZATION` and `HTTP_COOKIE` params (and `PHP_AUTH_PW`, masked), and
//! `Set-Cookie` in the CGI head of STDOUT, across record and read boundaries.
use base64::Engine as _;

use crate::{
    fastcgi::Protocol,
    http,
    identity::{
        SessionConfig,
        jwt::{self, JwtConfig},
    },
    idmap::IdMap,
};

mod fcgi;
pub mod hold;

/// The key of cookie hashes lives with the session handles it also keys.
pub use crate::identity::handle::SessionKey;
pub mod payload;
pub mod query;

pub struct Redactor {
    key: SessionKey,
    jwt: JwtConfig,
    session: Option<SessionConfig>,
    /// Per connection: the raw bytes of the header line the last capture ended in the middle of.
    pending: IdMap<(u32, i32), Vec<u8>>,
    /// Per connection: its protocol, as far as decided (absent: joined mid-stream).
    protocols: IdMap<(u32, i32), Protocol>,
    /// Per FastCGI connection: the record framing and the params and heads in progress.
    fastcgi: IdMap<(u32, i32), Box<fcgi::Stream>>,
    /// Per connection: where a login request is (its head, then its form body).
    logins: IdMap<(u32, i32), Login>,
    /// With a session store: the session cookies of the last redacted chunk, raw and hashed
    /// (see [`Redactor::take_session_ids`]).
    session_ids: Vec<(Vec<u8>, Vec<u8>)>,
    /// Query parameters whose values are secrets (see [`query`]).
    query_names: Vec<String>,
}

/// A login request being read on a connection.
#[derive(Debug)]
enum Login {
    /// Its head: the body length, once its header was seen.
    Head { content_length: Option<u64> },
    /// Its form body: bytes left (`None`: up to the end of the current read), and the form
    /// field being read.
    Body {
        remaining: Option<u64>,
        name: Vec<u8>,
        /// `None` while reading a field name, then whether its value is kept (the user field).
        keep: Option<bool>,
    },
}

/// Longest form field name compared with the user field; longer ones are masked anyway.
const MAX_FIELD_NAME: usize = 256;

/// Longest partial line kept per connection (a head line longer than this is not a credential
/// Vigie could use anyway: tokens are at most 16 KiB).
const MAX_PENDING: usize = 17 * 1024;

impl Default for Redactor {
    fn default() -> Self {
        Self::new(JwtConfig::default())
    }
}

impl Redactor {
    /// `jwt` carries the portal's key (loaded by `Config::normalize`) when signatures are to be
    /// checked.
    pub fn new(jwt: JwtConfig) -> Self {
        Self {
            key: SessionKey::random(),
            jwt,
            session: None,
            pending: IdMap::default(),
            protocols: IdMap::default(),
            fastcgi: IdMap::default(),
            logins: IdMap::default(),
            session_ids: Vec::new(),
            query_names: query::DEFAULT_NAMES.iter().map(|n| n.to_string()).collect(),
        }
    }

    /// Hashes cookie values with `key` instead of a key of this run's own.
    #[must_use]
    pub fn with_key(mut self, key: SessionKey) -> Self {
        self.key = key;
        self
    }

    /// The query parameters whose values are masked (`capture.secret_query_parameters`).
    #[must_use]
    pub fn with_query_secrets(mut self, names: Vec<String>) -> Self {
        self.query_names = names;
        self
    }

    /// Redacts, in place, what process `pid` read from socket `fd`: `data` is the capture of a
    /// read of `total` bytes. HTTP or FastCGI, as the connection's first bytes decided.
    pub fn redact_read(&mut self, pid: u32, fd: i32, data: &mut [u8], total: u64) {
        let key = (pid, fd);
        let before = self.protocols.get(&key).copied().unwrap_or_default();
        // The correlator decides on the redacted bytes: decide FastCGI on bytes that FastCGI
        // redaction leaves as they are (its record headers), and HTTP only after redacting.
        let mut protocol = before;
        if before != Protocol::Unknown || crate::fastcgi::starts_fastcgi(data) {
            protocol.observe(data);
        }
        match protocol {
            Protocol::FastCgi => {
                let mut stream = self.fastcgi.remove(&key).unwrap_or_default();
                stream.redact_read(self, data, total);
                self.fastcgi.insert(key, stream);
            }
            Protocol::Http | Protocol::Fresh => {
                self.redact_request(pid, fd, data, total <= data.len() as u64);
            }
            Protocol::Unknown => {
                self.redact_request(pid, fd, data, total <= data.len() as u64);
                // Possibly FastCGI joined in the middle: no framing, but no credential either.
                fcgi::mask_params_by_name(data);
                protocol.observe(data);
            }
        }
        self.protocols.insert(key, protocol);
    }

    /// Redacts, in place, what process `pid` wrote to socket `fd` (`data` captured of `total`).
    pub fn redact_write(&mut self, pid: u32, fd: i32, data: &mut [u8], total: u64) {
        let key = (pid, fd);
        match self.protocols.get(&key).copied().unwrap_or_default() {
            Protocol::FastCgi => {
                let mut stream = self.fastcgi.remove(&key).unwrap_or_default();
                stream.redact_write(self, data, total);
                self.fastcgi.insert(key, stream);
            }
            Protocol::Http | Protocol::Fresh => self.redact_response(data),
            Protocol::Unknown => {
                self.redact_response(data);
                fcgi::mask_set_cookie_anywhere(data);
            }
        }
    }

    /// A connection was accepted on `fd`: its first bytes will decide its protocol.
    pub fn accepted(&mut self, pid: u32, fd: i32) {
        self.forget(pid, fd);
        self.protocols.insert((pid, fd), Protocol::Fresh);
    }

    /// Events were lost: FastCGI streams may be out of step, and wait for a point to resume.
    pub fn lost(&mut self) {
        for stream in self.fastcgi.values_mut() {
            stream.lose_sync();
        }
    }

    /// The session cookies (raw value, hashed value) the redacted request chunks carried since
    /// the last call, when a session store is configured: the raw value is what the store
    /// knows, the hashed one what the correlator sees. Taken at once, kept nowhere else.
    pub fn take_session_ids(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        std::mem::take(&mut self.session_ids)
    }

    /// With the portal's login exchange (`identity.session`): its form bodies are redacted.
    #[must_use]
    pub fn with_session(mut self, session: Option<SessionConfig>) -> Self {
        self.session = session;
        self
    }

    /// Redacts, in place, the next captured chunk of what process `pid` read from connection
    /// `fd`. `whole` says the capture holds every byte the read returned; when it does not, the
    /// stream position is lost and the partial line is dropped.
    pub fn redact_request(&mut self, pid: u32, fd: i32, data: &mut [u8], whole: bool) {
        let key = (pid, fd);
        let mut carried = self.pending.remove(&key).unwrap_or_default();
        let mut start = 0;
        loop {
            if let Some(Login::Body { .. }) = self.logins.get(&key) {
                start += self.mask_login_body(key, &mut data[start..], whole);
                if start >= data.len() {
                    break;
                }
                continue;
            }
            let Some((end, complete)) = next_line(data, start) else {
                break;
            };
            if carried.is_empty() {
                // The whole line is in this chunk (the rule, behind the line hold): redacted in
                // place, copied only when it is unfinished and carried to the next chunk.
                let raw = &mut data[start..end];
                if complete && self.session.is_some() {
                    self.follow_line_of_login(key, raw);
                }
                if !complete && raw.len() <= MAX_PENDING {
                    carried = raw.to_vec();
                }
                self.redact_line(raw, complete);
                start = end + 1;
                continue;
            }
            let prefix = carried.len();
            let mut raw = std::mem::take(&mut carried);
            raw.extend_from_slice(&data[start..end]);
            if complete && self.session.is_some() {
                self.follow_line_of_login(key, &raw);
            }
            let mut line = raw.clone();
            self.redact_line(&mut line, complete);
            data[start..end].copy_from_slice(&line[prefix..]);
            if !complete && raw.len() <= MAX_PENDING {
                carried = raw;
            }
            start = end + 1;
        }
        if whole && !carried.is_empty() {
            self.pending.insert(key, carried);
        }
    }

    /// Redacts the header lines of the next chunk of a stream in place (a FastCGI CGI head).
    /// `carried` holds the raw bytes of the line the previous chunk ended in (and, after, the
    /// one this chunk ends in). With `stop_at_blank`, stops after the first empty line (the end
    /// of a head) and returns where it ends.
    fn redact_lines(
        &mut self,
        carried: &mut Vec<u8>,
        data: &mut [u8],
        stop_at_blank: bool,
    ) -> Option<usize> {
        let mut start = 0;
        while let Some((end, complete)) = next_line(data, start) {
            let prefix = carried.len();
            let mut raw = std::mem::take(carried);
            raw.extend_from_slice(&data[start..end]);
            let mut line = raw.clone();
            self.redact_line(&mut line, complete);
            data[start..end].copy_from_slice(&line[prefix..]);
            if !complete && raw.len() <= MAX_PENDING {
                *carried = raw;
            } else if complete && stop_at_blank && matches!(raw.as_slice(), b"" | b"\r") {
                return Some(end + 1);
            }
            start = end + 1;
        }
        None
    }

    /// Tracks a login request through the complete head line `line`: its request line, its
    /// `Content-Length`, and the blank line after which its form body starts.
    fn follow_line_of_login(&mut self, key: (u32, i32), line: &[u8]) {
        let Some(session) = &self.session else {
            return;
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if http::looks_like_request_start(line) {
            let mut with_end = line.to_vec();
            with_end.push(b'\n');
            let is_login = http::request_line(&with_end).is_some_and(|(method, target)| {
                method == "POST"
                    && target.split(['?', '#']).next() == Some(session.login_path.as_str())
            });
            if is_login {
                self.logins.insert(
                    key,
                    Login::Head {
                        content_length: None,
                    },
                );
            } else {
                self.logins.remove(&key);
            }
            return;
        }
        let Some(Login::Head { content_length }) = self.logins.get_mut(&key) else {
            return;
        };
        if line.is_empty() {
            let remaining = *content_length;
            self.logins.insert(
                key,
                Login::Body {
                    remaining,
                    name: Vec::new(),
                    keep: None,
                },
            );
        } else if let Some(colon) = line.iter().position(|&b| b == b':')
            && line[..colon]
                .trim_ascii()
                .eq_ignore_ascii_case(b"content-length")
        {
            *content_length = std::str::from_utf8(&line[colon + 1..])
                .ok()
                .and_then(|v| v.trim().parse().ok());
        }
    }

    /// Masks the login form body at the start of `data`; returns the bytes it covered.
    fn mask_login_body(&mut self, key: (u32, i32), data: &mut [u8], whole: bool) -> usize {
        let user_field = self
            .session
            .as_ref()
            .map_or(&b""[..], |s| s.user_field.as_bytes());
        let Some(Login::Body {
            remaining,
            name,
            keep,
        }) = self.logins.get_mut(&key)
        else {
            return 0;
        };
        let n = remaining.map_or(data.len(), |r| {
            usize::try_from(r).unwrap_or(usize::MAX).min(data.len())
        });
        mask_form(&mut data[..n], name, keep, user_field);
        let done = match remaining {
            // A cut capture loses the position in the body: stop at the end of this read.
            Some(r) if whole => {
                *r -= n as u64;
                *r == 0
            }
            _ => true,
        };
        if done {
            self.logins.remove(&key);
        }
        n
    }

    /// Redacts, in place, a whole head of no connection's byte stream: an HTTP/2 stream's
    /// request or response head, rendered from its decoded fields ([`crate::http2::Item`]).
    /// The same rules as a request's lines (credentials, cookies, secret query parameters) and
    /// a response's (`Set-Cookie`); a session cookie it carries is reported like a read one's.
    pub fn redact_head(&mut self, head: &mut [u8]) {
        self.redact_response(head);
    }

    /// Redacts, in place, a whole login form of no connection's byte stream (an HTTP/2
    /// stream's, [`crate::http2::Item::LoginForm`]): every value but the user field's is
    /// masked, as in an HTTP/1 login body (all of them without `identity.session`).
    pub fn redact_login_form(&self, form: &mut [u8]) {
        let user_field = self
            .session
            .as_ref()
            .map_or(&b""[..], |s| s.user_field.as_bytes());
        mask_form(form, &mut Vec::new(), &mut None, user_field);
    }

    /// Redacts a captured chunk of a response (socket write) in place: `Set-Cookie` values.
    pub fn redact_response(&mut self, data: &mut [u8]) {
        let mut start = 0;
        while let Some((end, complete)) = next_line(data, start) {
            self.redact_line(&mut data[start..end], complete);
            start = end + 1;
        }
    }

    /// The connection is gone (closed, or its fd reused by a new accept).
    pub fn forget(&mut self, pid: u32, fd: i32) {
        self.pending.remove(&(pid, fd));
        self.protocols.remove(&(pid, fd));
        self.fastcgi.remove(&(pid, fd));
        self.logins.remove(&(pid, fd));
    }

    pub fn forget_process(&mut self, pid: u32) {
        self.pending.retain(|(p, _), _| *p != pid);
        self.protocols.retain(|(p, _), _| *p != pid);
        self.fastcgi.retain(|(p, _), _| *p != pid);
        self.logins.retain(|(p, _), _| *p != pid);
    }

    /// Redacts one header line; `complete` says it ended in this capture (a credential in an
    /// incomplete line cannot be checked yet and is masked).
    fn redact_line(&mut self, line: &mut [u8], complete: bool) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            // A request line, or a form body (`user=...&password=...`): the same names.
            if http::looks_like_request_start(line) {
                query::mask_request_line(line, &self.query_names);
            } else {
                query::mask_query(line, &self.query_names);
            }
            return;
        };
        query::mask_request_line(line, &self.query_names);
        let (name, rest) = line.split_at_mut(colon);
        // Blanks around the name (`\rAuthorization:`, ` Authorization :`) make an invalid field
        // that a lenient server may still honour: its credentials are redacted all the same.
        self.redact_field(name.trim_ascii(), &mut rest[1..], complete);
    }

    /// Redacts the value of the header field `name` (any case), if it carries a credential;
    /// `complete` says the whole value is there.
    fn redact_field(&mut self, name: &[u8], value: &mut [u8], complete: bool) {
        if name.eq_ignore_ascii_case(b"authorization")
            || name.eq_ignore_ascii_case(b"proxy-authorization")
        {
            // An incomplete line cannot be checked yet: its credentials are masked. A complete
            // one is a bearer token (marked), Basic (password masked) or anything else (masked).
            let handled =
                complete && (jwt::mark_bearer_value(value, &self.jwt) || redact_basic(value));
            if !handled {
                mask_credentials(value);
            }
        } else if name.eq_ignore_ascii_case(b"cookie") {
            for pair in value.split_mut(|&b| b == b';') {
                let raw = self.session_cookie(pair).filter(|_| complete);
                self.hash_cookie_value(pair, complete);
                if let Some((start, raw)) = raw {
                    let hashed = pair[start..start + raw.len()].to_vec();
                    self.session_ids.push((raw, hashed));
                }
            }
        } else if name.eq_ignore_ascii_case(b"referer") || name.eq_ignore_ascii_case(b"location") {
            query::mask_url(value, &self.query_names);
        } else if name.eq_ignore_ascii_case(b"set-cookie") {
            // Only the first pair is the cookie; the rest are attributes (Path, Expires, ...).
            if let Some(pair) = value.split_mut(|&b| b == b';').next() {
                self.hash_cookie_value(pair, complete);
            }
        }
    }

    /// With a session store configured: where the value of `pair` starts and its raw bytes, if
    /// `pair` is the session cookie.
    fn session_cookie(&self, pair: &[u8]) -> Option<(usize, Vec<u8>)> {
        let session = self.session.as_ref().filter(|s| s.store.is_some())?;
        let eq = pair.iter().position(|&b| b == b'=')?;
        if pair[..eq].trim_ascii() != session.cookie.as_bytes() {
            return None;
        }
        // The bytes `hash_cookie_value` replaces: the value up to trailing blanks.
        let raw = pair[eq + 1..].trim_ascii_end();
        (!raw.is_empty()).then(|| (eq + 1, raw.to_vec()))
    }

    /// `name=value` -> `name=<keyed hash of value, same length>`.
    fn hash_cookie_value(&self, pair: &mut [u8], complete: bool) {
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            return;
        };
        let value = &mut pair[eq + 1..];
        let trimmed_end = value
            .iter()
            .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r'))
            .map_or(0, |i| i + 1);
        let value = &mut value[..trimmed_end];
        if value.is_empty() {
            return;
        }
        if !complete {
            value.fill(b'*');
            return;
        }
        let hex = self.key.cookie_hash(value);
        for (dst, src) in value.iter_mut().zip(hex.bytes().cycle()) {
            *dst = src;
        }
    }
}

/// Masks the next bytes of a form body (`a=1&b=2`) in place but the value of `user_field`.
/// `name` and `keep` carry the field being read across chunks (`keep`: `None` while reading a
/// field name, then whether its value is kept).
fn mask_form(data: &mut [u8], name: &mut Vec<u8>, keep: &mut Option<bool>, user_field: &[u8]) {
    for b in data {
        match (*b, *keep) {
            (b'&', _) => {
                name.clear();
                *keep = None;
            }
            (b'=', None) => *keep = Some(name.as_slice() == user_field),
            (c, None) => {
                if name.len() <= MAX_FIELD_NAME {
                    name.push(c);
                }
            }
            (_, Some(false)) => *b = b'*',
            (_, Some(true)) => {}
        }
    }
}

/// The line starting at `start`: where it ends (its `\n`, or the end of `data`) and whether it
/// is complete (ends in `\n`). `None` past the end.
fn next_line(data: &[u8], start: usize) -> Option<(usize, bool)> {
    if start >= data.len() {
        return None;
    }
    Some(match data[start..].iter().position(|&b| b == b'\n') {
        Some(i) => (start + i, true),
        None => (data.len(), false),
    })
}

/// Everything after the scheme word is masked: `Digest ...`, `Token ...`, a lone token.
fn mask_credentials(value: &mut [u8]) {
    let (scheme, token) = http::credential_parts(value);
    // `Scheme credentials`: keep the scheme word; a lone token is all credentials.
    let creds = if token.is_empty() { scheme } else { token };
    for b in value[creds].iter_mut().filter(|b| !b.is_ascii_whitespace()) {
        *b = b'*';
    }
}

/// ` Basic dXNlcjpwYXNz` -> ` Basic dXNlcjoqKioq` (`user:****`), same length. Returns whether
/// the value was Basic.
fn redact_basic(value: &mut [u8]) -> bool {
    // Where `identity` reads the token from: the same definition.
    let (scheme, token) = http::credential_parts(value);
    if !value[scheme].eq_ignore_ascii_case(b"basic") {
        return false;
    }
    let token = &mut value[token];
    // Decoded as leniently as `identity` does (unpadded, trailing bits), re-encoded in the same
    // padding style, so the user name survives whenever `identity` could read it.
    let engine = if token.ends_with(b"=") {
        base64::engine::general_purpose::STANDARD
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD
    };
    let Ok(mut decoded) = crate::identity::BASIC_ENGINE.decode(&*token) else {
        // Not valid base64: whatever it is, do not keep it.
        token.fill(b'*');
        return true;
    };
    if let Some(colon) = decoded.iter().position(|&b| b == b':') {
        decoded[colon + 1..].fill(b'*');
    } else {
        decoded.fill(b'*');
    }
    let encoded = engine.encode(&decoded);
    decoded.fill(0);
    if encoded.len() == token.len() {
        token.copy_from_slice(encoded.as_bytes());
    } else {
        // Unpadded or otherwise unusual input: keep the length, lose the content.
        token.fill(b'*');
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        http::{HeadParse, parse_request_head},
        identity::{Identified, IdentityConfig, IdentityProblem, IdentitySource, identify},
    };

    const SECRET: &[u8] = b"portal-signing-secret";

    /// Redacts `chunks` as successive reads of one connection; returns what the correlator sees.
    fn stream(r: &mut Redactor, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks {
            let mut bytes = chunk.to_vec();
            r.redact_request(1, 5, &mut bytes, true);
            assert_eq!(bytes.len(), chunk.len(), "length preserved");
            out.extend_from_slice(&bytes);
        }
        out
    }

    fn redacted(r: &mut Redactor, text: &str) -> String {
        String::from_utf8(stream(r, &[text.as_bytes()])).unwrap()
    }

    fn identify_head(bytes: &[u8], cfg: &IdentityConfig) -> Identified {
        let HeadParse::Complete(h) = parse_request_head(bytes) else {
            panic!("{bytes:?}")
        };
        identify(&h, cfg, Some(1_800_000_000))
    }

    fn jwt_setup() -> (Redactor, IdentityConfig) {
        let path = std::env::temp_dir().join(format!("vigie-redact-secret-{}", std::process::id()));
        std::fs::write(&path, SECRET).unwrap();
        let mut jwt = JwtConfig::default();
        jwt.hs256_secret_file = Some(path);
        jwt.load_key_with(&crate::identity::jwt::read_for_tests)
            .unwrap();
        let cfg = IdentityConfig {
            sources: vec![IdentitySource::Jwt],
            jwt: jwt.clone(),
            ..IdentityConfig::default()
        };
        (Redactor::new(jwt), cfg)
    }

    fn token(user: &str, key: &[u8]) -> String {
        let claims = serde_json::json!({ "sub": user, "exp": 1_900_000_000 });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .unwrap()
    }

    #[test]
    fn basic_password_is_gone_and_the_user_survives() {
        let mut r = Redactor::default();
        let cred = base64::engine::general_purpose::STANDARD.encode("alice:hunter2-secret");
        let head = format!("GET / HTTP/1.1\r\nAuthorization: Basic {cred}\r\n\r\n");
        let out = redacted(&mut r, &head);
        assert!(!out.contains(&cred));
        let who = identify_head(out.as_bytes(), &IdentityConfig::default());
        assert_eq!(who.identity.unwrap().user, "alice");
        let HeadParse::Complete(h) = parse_request_head(out.as_bytes()) else {
            panic!()
        };
        let value = std::str::from_utf8(h.header("authorization").unwrap()).unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim_start_matches("Basic "))
            .unwrap();
        assert_eq!(
            decoded,
            format!("alice:{}", "*".repeat("hunter2-secret".len())).as_bytes()
        );
    }

    /// Shapes the fuzzer found leaking the password or losing the user (fuzz/corpus/redact).
    #[test]
    fn odd_basic_shapes_keep_the_user_and_lose_the_password() {
        let std = base64::engine::general_purpose::STANDARD;
        let padded = std.encode("alice:secret");
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode("alice:pw");
        for line in [
            format!("Authorization: Basic  {padded}\r\n"),
            format!("\rAuthorization: Basic {padded}\r\n"),
            format!(" Authorization : Basic {padded}\r\n"),
            format!("Authorization: Basic {unpadded}\r\n"),
        ] {
            let mut r = Redactor::default();
            let head = format!("GET / HTTP/1.1\r\n{line}\r\n");
            let out = redacted(&mut r, &head);
            assert!(
                !out.contains(&padded) && !out.contains(&unpadded),
                "{out:?}"
            );
            let token = out
                .split("Basic")
                .nth(1)
                .unwrap()
                .trim()
                .split('\r')
                .next()
                .unwrap();
            let decoded = crate::identity::BASIC_ENGINE.decode(token).unwrap();
            assert!(
                decoded.starts_with(b"alice:") && decoded[6..].iter().all(|&b| b == b'*'),
                "{out:?}"
            );
        }
    }

    #[test]
    fn invalid_basic_and_other_schemes_are_masked() {
        let mut r = Redactor::default();
        assert_eq!(
            redacted(&mut r, "authorization: basic %%pw%%\r\n"),
            format!("authorization: basic {}\r\n", "*".repeat(6))
        );
        assert_eq!(
            redacted(&mut r, "Authorization: Token abc123\r\n"),
            "Authorization: Token ******\r\n"
        );
        assert_eq!(
            redacted(&mut r, "Proxy-Authorization: secretvalue\r\n"),
            "Proxy-Authorization: ***********\r\n"
        );
    }

    #[test]
    fn bearer_signatures_are_checked_at_capture_and_replaced_by_their_mark() {
        let (mut r, cfg) = jwt_setup();
        let good = token("dana", SECRET);
        let out = redacted(
            &mut r,
            &format!("GET / HTTP/1.1\r\nAuthorization: Bearer {good}\r\n\r\n"),
        );
        let signature = good.rsplit('.').next().unwrap();
        assert!(!out.contains(signature), "signature kept");
        assert!(
            out.contains(&format!(".V{}", "*".repeat(signature.len() - 1))),
            "{out}"
        );
        assert_eq!(
            identify_head(out.as_bytes(), &cfg).identity.unwrap().user,
            "dana"
        );

        let forged = token("dana", b"attacker-key");
        let out = redacted(
            &mut r,
            &format!("GET / HTTP/1.1\r\nAuthorization: Bearer {forged}\r\n\r\n"),
        );
        assert!(out.contains(".X*"), "{out}");
        assert_eq!(
            identify_head(out.as_bytes(), &cfg).problem,
            Some(IdentityProblem::JwtBadSignature)
        );

        // Without a key: marked unverified, still no usable token kept.
        let mut plain = Redactor::default();
        let out = redacted(&mut plain, &format!("Authorization: Bearer {good}\r\n"));
        assert!(out.contains(".U*") && !out.contains(signature), "{out}");
    }

    #[test]
    fn a_forged_mark_split_across_reads_is_not_trusted() {
        let (mut r, cfg) = jwt_setup();
        let good = token("dana", SECRET);
        let (hp, sig) = good.rsplit_once('.').unwrap();
        // The attacker sends a mark instead of a signature, splitting the header name so that
        // a per-read redactor would not recognise the line.
        let forged = format!("{hp}.V{}", "*".repeat(sig.len() - 1));
        let head = format!("GET / HTTP/1.1\r\nAuthori|zation: Bearer {forged}\r\n\r\n");
        let (a, b) = head.split_once('|').unwrap();
        let out = stream(&mut r, &[a.as_bytes(), b.as_bytes()]);
        assert_eq!(
            identify_head(&out, &cfg).problem,
            Some(IdentityProblem::JwtBadSignature)
        );

        // A genuine token split inside its signature: what went out before the split was masked,
        // so it cannot verify (fails closed) and nothing of the signature is kept.
        let head = format!(
            "GET / HTTP/1.1\r\nAuthorization: Bearer {hp}.{}|{}\r\n\r\n",
            &sig[..10],
            &sig[10..]
        );
        let (a, b) = head.split_once('|').unwrap();
        let out = stream(&mut r, &[a.as_bytes(), b.as_bytes()]);
        let text = String::from_utf8_lossy(&out);
        assert!(
            !text.contains(&sig[..10]) && !text.contains(&sig[10..]),
            "{text}"
        );
        assert!(identify_head(&out, &cfg).identity.is_none());

        // Split in the header name only: the whole token is in the second read and verifies.
        let head = format!("GET / HTTP/1.1\r\nAuth|orization: Bearer {good}\r\n\r\n");
        let (a, b) = head.split_once('|').unwrap();
        let out = stream(&mut r, &[a.as_bytes(), b.as_bytes()]);
        assert_eq!(identify_head(&out, &cfg).identity.unwrap().user, "dana");
    }

    #[test]
    fn split_basic_is_masked_not_leaked() {
        let mut r = Redactor::default();
        let cred = base64::engine::general_purpose::STANDARD.encode("alice:hunter2-secret");
        let head = format!(
            "GET / HTTP/1.1\r\nAuthorization: Basic {}|{}\r\n\r\n",
            &cred[..8],
            &cred[8..]
        );
        let (a, b) = head.split_once('|').unwrap();
        let out = String::from_utf8(stream(&mut r, &[a.as_bytes(), b.as_bytes()])).unwrap();
        assert!(!out.contains(&cred[..8]), "{out}");
        assert!(
            !out.contains("aHVudGVyMi1zZWNyZXQ"),
            "password part kept: {out}"
        );
    }

    #[test]
    fn state_is_per_connection_and_forgotten() {
        let mut r = Redactor::default();
        let mut a = b"Authori".to_vec();
        r.redact_request(1, 5, &mut a, true);
        let mut other = b"zation: Basic dXNlcjpwYXNz\r\n".to_vec();
        r.redact_request(1, 6, &mut other, true);
        assert_eq!(
            other, b"zation: Basic dXNlcjpwYXNz\r\n",
            "another connection is not a continuation"
        );
        r.forget(1, 5);
        assert!(r.pending.is_empty());
        r.redact_request(2, 5, &mut b"Author".to_vec(), true);
        r.forget_process(2);
        assert!(r.pending.is_empty());
        // A capture that lost bytes loses the stream position too.
        r.redact_request(3, 5, &mut b"Authori".to_vec(), false);
        assert!(r.pending.is_empty());
    }

    #[test]
    fn cookies_are_hashed_consistently_within_a_run() {
        let mut r = Redactor::default();
        let a = redacted(&mut r, "Cookie: sid=abcdef0123456789xyz; theme=dark\r\n");
        let b = redacted(&mut r, "cookie: sid=abcdef0123456789xyz\r\n");
        assert!(!a.contains("abcdef0123456789xyz") && !a.contains("dark"));
        let sid = |s: &str| s.split("sid=").nth(1).unwrap()[..19].to_string();
        assert_eq!(sid(&a), sid(&b));
        let mut set = b"Set-Cookie: sid=abcdef0123456789xyz; Path=/; HttpOnly\r\n".to_vec();
        r.redact_response(&mut set);
        let set = String::from_utf8(set).unwrap();
        assert_eq!(sid(&set), sid(&a));
        assert!(set.ends_with("; Path=/; HttpOnly\r\n"));
        assert_ne!(
            sid(&a),
            sid(&redacted(
                &mut Redactor::default(),
                "Cookie: sid=abcdef0123456789xyz\r\n"
            ))
        );
    }

    fn session_cfg() -> SessionConfig {
        SessionConfig {
            cookie: "session".into(),
            login_path: "/login".into(),
            user_field: "user".into(),
            logout_path: None,
            idle_timeout_seconds: 60,
            max_sessions: 10,
            store: None,
        }
    }

    #[test]
    fn login_forms_keep_the_user_only() {
        let mut r = Redactor::default().with_session(Some(session_cfg()));
        let body = "user=alice&password=s3cret&csrf=abc";
        let head = format!(
            "POST /login?next=/ HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        // Head and body in one read, then the next request on the connection is untouched.
        let next = "GET /docs/a HTTP/1.1\r\nX-Remote-User: bob\r\n\r\n";
        let out = redacted(&mut r, &format!("{head}{body}{next}"));
        assert_eq!(
            out,
            format!("{head}user=alice&password=******&csrf=***{next}")
        );
        // Split anywhere: the same result.
        let all = format!("{head}{body}{next}");
        for cut in 1..all.len() {
            let mut r = Redactor::default().with_session(Some(session_cfg()));
            let got = stream(&mut r, &[&all.as_bytes()[..cut], &all.as_bytes()[cut..]]);
            assert!(
                !String::from_utf8_lossy(&got).contains("s3cret"),
                "cut {cut}"
            );
            assert!(
                String::from_utf8_lossy(&got).contains("user=alice"),
                "cut {cut}"
            );
        }
        // Other requests' bodies are left alone but for secret names; a login without a
        // session config keeps its user and loses its password by that rule.
        let mut r = Redactor::default().with_session(Some(session_cfg()));
        let other = "POST /comment HTTP/1.1\r\nContent-Length: 5\r\n\r\na=b&c";
        assert_eq!(redacted(&mut r, other), other);
        let mut r = Redactor::default();
        assert_eq!(
            redacted(&mut r, &format!("{head}{body}")),
            format!("{head}{}", body.replace("s3cret", "******"))
        );
        // Without Content-Length the rest of the read is the form.
        let mut r = Redactor::default().with_session(Some(session_cfg()));
        let no_len = "POST /login HTTP/1.1\r\n\r\nuser=bob&pw=x";
        assert_eq!(
            redacted(&mut r, no_len),
            "POST /login HTTP/1.1\r\n\r\nuser=bob&pw=*"
        );
    }

    #[test]
    fn other_bytes_are_untouched_and_hostile_input_is_fine() {
        let mut r = Redactor::default();
        let plain = "GET /x HTTP/1.1\r\nX-Remote-User: alice\r\nAccept: */*\r\n\r\nbody";
        assert_eq!(redacted(&mut r, plain), plain);
        for junk in [
            &b"\xff\xfe:\xff"[..],
            b":",
            b"cookie:",
            b"cookie:=",
            b"authorization: basic",
            b"\n\n\n",
            b"authorization: bearer a.b.",
            b"authorization: bearer ...",
        ] {
            let mut v = junk.to_vec();
            r.redact_request(9, 9, &mut v, true);
            assert_eq!(v.len(), junk.len());
            r.redact_response(&mut v);
        }
    }
}
