//! Minimal HTTP/1.x: reading request heads (parsed by httparse), discarding bodies, building
//! response heads, and the portal's notion of identity.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::wire::Wire;

/// Largest accepted request head; larger heads get 431.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// Most headers accepted in one request; more gets 431 as well.
const MAX_HEADERS: usize = 64;

/// How many bytes one `recv` asks for.
pub(crate) const RECV_CHUNK: usize = 4096;

/// A request head, owned so that the receive buffer can be reused for the next request.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, up to [`MAX_BODY_KEPT`] bytes (the rest is discarded).
    pub body: Vec<u8>,
}

/// Body bytes kept per request (login forms); the rest is read and dropped.
pub(crate) const MAX_BODY_KEPT: usize = 4096;

/// Why no request could be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The peer went away (or the socket failed): nobody to answer.
    Closed,
    /// The request is unacceptable: answer with this status, then close.
    Reject(u16),
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether the connection stays open after the response: HTTP/1.1 unless `close`,
    /// HTTP/1.0 only with `keep-alive`.
    pub(crate) fn keep_alive(&self) -> bool {
        let has = |token: &str| {
            self.headers_named("connection")
                .flat_map(|v| v.split(|&b| b == b','))
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        };
        if self.version >= 1 {
            !has("close")
        } else {
            has("keep-alive")
        }
    }

    /// The identity the request claims: a trusted `X-Remote-User` header (as set by an
    /// authenticating proxy), else HTTP Basic credentials, whose password is not checked, else
    /// the `sub` claim of an `Authorization: Bearer` JWT, whose signature, algorithm and expiry
    /// are not checked either (a bug on purpose: forged and expired tokens are served, so that
    /// Vigie sees what they read).
    pub(crate) fn identity(&self) -> Option<String> {
        let remote_user = self
            .header("x-remote-user")
            .and_then(|v| std::str::from_utf8(v).ok());
        if let Some(user) = remote_user.map(str::trim).filter(|u| valid_user(u)) {
            return Some(user.to_owned());
        }
        let auth = std::str::from_utf8(self.header("authorization")?)
            .ok()?
            .trim();
        let (scheme, credentials) = auth.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            return jwt_subject(credentials.trim());
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(STANDARD.decode(credentials.trim()).ok()?).ok()?;
        let (user, _password) = decoded.split_once(':')?;
        valid_user(user).then(|| user.to_owned())
    }

    /// The declared body length: 0 without Content-Length, an error status when it cannot be
    /// relied upon (chunked bodies are not supported by this demo).
    pub(crate) fn body_len(&self) -> Result<u64, u16> {
        if self.header("transfer-encoding").is_some() {
            return Err(501);
        }
        let mut len = None;
        for value in self.headers_named("content-length") {
            let value = std::str::from_utf8(value).map_err(|_| 400u16)?.trim();
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(400);
            }
            let parsed = value.parse::<u64>().map_err(|_| 400u16)?;
            // Conflicting lengths are a request-smuggling classic: refuse them.
            if len.is_some_and(|l| l != parsed) {
                return Err(400);
            }
            len = Some(parsed);
        }
        Ok(len.unwrap_or(0))
    }
}

/// The `sub` claim of a compact JWS, decoded without any verification.
fn jwt_subject(token: &str) -> Option<String> {
    if token.len() > MAX_HEAD {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?)
            .ok()?;
    let user = claims.get("sub")?.as_str()?;
    valid_user(user).then(|| user.to_owned())
}

/// User names are echoed in a response header and in the log, so only a tame alphabet is
/// accepted.
pub(crate) fn valid_user(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// Reads the next request from `wire` and discards its body. `buf` carries bytes received
/// beyond the previous request (pipelining) and keeps those beyond this one.
pub(crate) fn read_request(wire: &mut impl Wire, buf: &mut Vec<u8>) -> Result<Request, ReadError> {
    loop {
        if !buf.is_empty() {
            if let Some((request, head_len)) = parse_head(buf)? {
                let mut request = request;
                let body_len = request.body_len().map_err(ReadError::Reject)?;
                buf.drain(..head_len);
                request.body = read_body(wire, buf, body_len)?;
                return Ok(request);
            }
            if buf.len() >= MAX_HEAD {
                return Err(ReadError::Reject(431));
            }
        }
        let mut chunk = [0; RECV_CHUNK];
        match wire.recv(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(ReadError::Closed),
            // The client stopped sending mid-head; it may still read the answer.
            Ok(0) => return Err(ReadError::Reject(400)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(ReadError::Closed),
        }
    }
}

/// Parses a complete head at the start of `buf`, returning it with its length.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::Reject(431)),
        Err(_) => return Err(ReadError::Reject(400)),
    };
    if head_len > MAX_HEAD {
        return Err(ReadError::Reject(431));
    }
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(ReadError::Reject(400));
    };
    let request = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        version,
        headers: parsed
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_owned()))
            .collect(),
        body: Vec::new(),
    };
    Ok(Some((request, head_len)))
}

/// Reads `len` body bytes, first from `buf`, then from the socket; keeps the first
/// [`MAX_BODY_KEPT`].
fn read_body(wire: &mut impl Wire, buf: &mut Vec<u8>, len: u64) -> Result<Vec<u8>, ReadError> {
    let mut body = Body::start(buf, len);
    let mut chunk = [0; RECV_CHUNK];
    while body.want() > 0 {
        match wire.recv(&mut chunk[..body.want()]) {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(n) => body.feed(&chunk[..n]),
        }
    }
    Ok(body.kept)
}

/// A request body being read: the first [`MAX_BODY_KEPT`] bytes kept, the rest counted and
/// dropped. The same for the blocking and the async models (only the reads differ).
pub(crate) struct Body {
    pub kept: Vec<u8>,
    left: u64,
}

impl Body {
    /// A body of `len` bytes, starting with what `buf` already holds past the head.
    pub(crate) fn start(buf: &mut Vec<u8>, len: u64) -> Body {
        let buffered = usize::try_from(len).unwrap_or(usize::MAX).min(buf.len());
        let kept = buf.drain(..buffered).take(MAX_BODY_KEPT).collect();
        Body {
            kept,
            left: len - buffered as u64,
        }
    }

    /// How many bytes to read next (at most one receive chunk); 0 once complete.
    pub(crate) fn want(&self) -> usize {
        usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(RECV_CHUNK)
    }

    /// Bytes received for the body (at most [`Body::want`]).
    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        let room = MAX_BODY_KEPT
            .saturating_sub(self.kept.len())
            .min(chunk.len());
        self.kept.extend_from_slice(&chunk[..room]);
        self.left = self.left.saturating_sub(chunk.len() as u64);
    }
}

/// Decodes `%XX` escapes; `None` on a malformed escape. `+` stays literal (this is a path).
pub(crate) fn percent_decode(input: &str) -> Option<Vec<u8>> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Both digits are checked first: from_str_radix alone would accept "+1".
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

/// What goes into a response head besides the body length.
#[derive(Debug)]
pub(crate) struct Head<'a> {
    pub status: u16,
    pub content_type: &'a str,
    pub user: &'a str,
    /// `Some("close")` or `Some("keep-alive")` when the default of the request's version does
    /// not say what the server will do.
    pub connection: Option<&'static str>,
    pub challenge: bool,
    /// A `Set-Cookie` value (and a `Location: /` with it).
    pub set_cookie: Option<&'a str>,
}

impl Head<'_> {
    pub(crate) fn to_bytes(&self, content_length: u64) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {content_length}\r\nX-Portal-User: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.user
        );
        if self.challenge {
            head.push_str("WWW-Authenticate: Basic realm=\"vigie-demo-portal\"\r\n");
        }
        if let Some(cookie) = self.set_cookie {
            head.push_str("Set-Cookie: ");
            head.push_str(cookie);
            head.push_str("\r\nLocation: /\r\n");
        }
        if let Some(connection) = self.connection {
            head.push_str("Connection: ");
            head.push_str(connection);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: u8, headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            target: "/".into(),
            version,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%2e%2E").unwrap(), b"a/b..");
        assert_eq!(percent_decode("a+b").unwrap(), b"a+b");
        assert_eq!(percent_decode("nul%00").unwrap(), b"nul\0");
        assert!(percent_decode("bad%2").is_none());
        assert!(percent_decode("bad%zz").is_none());
        assert!(percent_decode("bad%+1").is_none());
    }

    #[test]
    fn identity_from_proxy_header_or_basic() {
        assert_eq!(
            request(1, &[("X-Remote-User", "alice")])
                .identity()
                .as_deref(),
            Some("alice")
        );
        let basic = format!("Basic {}", STANDARD.encode("bob:whatever"));
        assert_eq!(
            request(1, &[("authorization", &basic)])
                .identity()
                .as_deref(),
            Some("bob")
        );
        assert_eq!(
            request(1, &[("authorization", "Bearer xyz")]).identity(),
            None
        );
        let jwt = |header: &str, claims: &str| {
            format!(
                "Bearer {}.{}.sig",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            )
        };
        // Unverified on purpose: alg none, any signature, expired.
        let none = jwt(r#"{"alg":"none"}"#, r#"{"sub":"carol","exp":1}"#);
        assert_eq!(
            request(1, &[("Authorization", &none)])
                .identity()
                .as_deref(),
            Some("carol")
        );
        for bad in [
            jwt(r#"{"alg":"HS256"}"#, r#"{"user":"carol"}"#),
            jwt(r#"{"alg":"HS256"}"#, r#"{"sub":"eve\r\nX: y"}"#),
            jwt(r#"{"alg":"HS256"}"#, "not json"),
            "Bearer a.!!!.c".to_owned(),
            "Bearer".to_owned(),
        ] {
            assert_eq!(
                request(1, &[("authorization", &bad)]).identity(),
                None,
                "{bad}"
            );
        }
        assert_eq!(
            request(1, &[("authorization", "Basic !!!")]).identity(),
            None
        );
        assert_eq!(
            request(1, &[("x-remote-user", "eve\r\nX: y")]).identity(),
            None
        );
        assert_eq!(request(1, &[]).identity(), None);
    }

    #[test]
    fn keep_alive_defaults() {
        assert!(request(1, &[]).keep_alive());
        assert!(!request(1, &[("Connection", "Upgrade, close")]).keep_alive());
        assert!(!request(0, &[]).keep_alive());
        assert!(request(0, &[("connection", "Keep-Alive")]).keep_alive());
    }

    #[test]
    fn body_length_rules() {
        assert_eq!(request(1, &[]).body_len(), Ok(0));
        assert_eq!(request(1, &[("Content-Length", "12")]).body_len(), Ok(12));
        assert_eq!(
            request(1, &[("Content-Length", "12"), ("content-length", "12")]).body_len(),
            Ok(12)
        );
        assert_eq!(
            request(1, &[("Content-Length", "12"), ("content-length", "13")]).body_len(),
            Err(400)
        );
        assert_eq!(request(1, &[("Content-Length", "-1")]).body_len(), Err(400));
        assert_eq!(
            request(1, &[("Transfer-Encoding", "chunked")]).body_len(),
            Err(501)
        );
    }
}
