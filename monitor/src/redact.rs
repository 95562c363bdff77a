//! Secrets out of captured bytes before anything else sees them: the correlator, the trace
//! recorder, `explain`. Redaction happens live, before the correlator, so that a trace is exactly
//! what the correlator consumed and replay stays identical.
//!
//! Lengths are preserved byte for byte (request-body accounting depends on them):
//! - `Authorization: Basic`: the password is replaced by `*`s of the same length, re-encoded
//!   (same base64 length), so the user name stays readable;
//! - `Cookie:` values and the value of `Set-Cookie:`: replaced by a keyed hash (hex, cycled to
//!   the value's length). The key is random per run and never written anywhere, so the same
//!   cookie maps to the same hash within a run (sessions can be followed) and to nothing outside.
//!
//! A header line split across two socket reads is not redacted (each capture is handled on its
//! own); request heads normally arrive in one read.
use std::hash::BuildHasher as _;

use base64::Engine as _;

pub struct Redactor {
    key: std::collections::hash_map::RandomState,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new()
    }
}

impl Redactor {
    pub fn new() -> Self {
        Self {
            key: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Redacts a captured chunk of a request (socket read) or a response (socket write) in place.
    pub fn redact(&self, data: &mut [u8]) {
        let mut start = 0;
        while start < data.len() {
            let end = data[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(data.len(), |i| start + i);
            self.redact_line(&mut data[start..end]);
            start = end + 1;
        }
    }

    fn redact_line(&self, line: &mut [u8]) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return;
        };
        let (name, rest) = line.split_at_mut(colon);
        let value = &mut rest[1..];
        if name.eq_ignore_ascii_case(b"authorization")
            || name.eq_ignore_ascii_case(b"proxy-authorization")
        {
            redact_basic(value);
        } else if name.eq_ignore_ascii_case(b"cookie") {
            for pair in value.split_mut(|&b| b == b';') {
                self.hash_cookie_value(pair);
            }
        } else if name.eq_ignore_ascii_case(b"set-cookie") {
            // Only the first pair is the cookie; the rest are attributes (Path, Expires, ...).
            let first = value.split_mut(|&b| b == b';').next();
            if let Some(pair) = first {
                self.hash_cookie_value(pair);
            }
        }
    }

    /// `name=value` -> `name=<keyed hash of value, same length>`.
    fn hash_cookie_value(&self, pair: &mut [u8]) {
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
        let hex = format!("{:016x}", self.key.hash_one(&*value));
        for (dst, src) in value.iter_mut().zip(hex.bytes().cycle()) {
            *dst = src;
        }
    }
}

/// ` Basic dXNlcjpwYXNz` -> ` Basic dXNlcjoqKioq` (`user:****`), same length.
fn redact_basic(value: &mut [u8]) {
    let text_start = value
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(value.len());
    let rest = &mut value[text_start..];
    let Some(space) = rest.iter().position(|&b| b == b' ') else {
        return;
    };
    if !rest[..space].eq_ignore_ascii_case(b"basic") {
        return;
    }
    let token = &mut rest[space + 1..];
    let token_end = token
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(token.len());
    let token = &mut token[..token_end];
    let engine = base64::engine::general_purpose::STANDARD;
    let Ok(mut decoded) = engine.decode(&*token) else {
        // Not valid base64: whatever it is, do not keep it.
        token.fill(b'*');
        return;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        http::{HeadParse, parse_request_head},
        identity::{IdentityConfig, identify},
    };

    fn redacted(r: &Redactor, text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        r.redact(&mut bytes);
        assert_eq!(bytes.len(), text.len(), "length preserved");
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn basic_password_is_gone_and_the_user_survives() {
        let r = Redactor::new();
        let cred = base64::engine::general_purpose::STANDARD.encode("alice:hunter2-secret");
        let head = format!("GET / HTTP/1.1\r\nAuthorization: Basic {cred}\r\n\r\n");
        let out = redacted(&r, &head);
        assert!(!out.contains(&cred));
        let HeadParse::Complete(h) = parse_request_head(out.as_bytes()) else {
            panic!("{out}")
        };
        let who = identify(&h, &IdentityConfig::default(), None);
        assert_eq!(who.identity.unwrap().user, "alice");
        let value = std::str::from_utf8(h.header("authorization").unwrap()).unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim_start_matches("Basic "))
            .unwrap();
        assert_eq!(
            decoded,
            format!("alice:{}", "*".repeat("hunter2-secret".len())).as_bytes()
        );
    }

    #[test]
    fn invalid_basic_is_masked() {
        let out = redacted(&Redactor::new(), "authorization: basic %%pw%%\r\n");
        assert_eq!(
            out,
            format!("authorization: basic {}\r\n", "*".repeat("%%pw%%".len()))
        );
    }

    #[test]
    fn cookies_are_hashed_consistently_within_a_run() {
        let r = Redactor::new();
        let a = redacted(&r, "Cookie: sid=abcdef0123456789xyz; theme=dark\r\n");
        let b = redacted(&r, "cookie: sid=abcdef0123456789xyz\r\n");
        assert!(!a.contains("abcdef0123456789xyz") && !a.contains("dark"));
        let sid = |s: &str| s.split("sid=").nth(1).unwrap()[..19].to_string();
        assert_eq!(sid(&a), sid(&b));
        let set = redacted(
            &r,
            "Set-Cookie: sid=abcdef0123456789xyz; Path=/; HttpOnly\r\n",
        );
        assert_eq!(sid(&set), sid(&a));
        assert!(set.ends_with("; Path=/; HttpOnly\r\n"));
        assert_ne!(
            sid(&a),
            sid(&redacted(
                &Redactor::new(),
                "Cookie: sid=abcdef0123456789xyz\r\n"
            ))
        );
    }

    #[test]
    fn other_bytes_are_untouched_and_hostile_input_is_fine() {
        let r = Redactor::new();
        let plain = "GET /x HTTP/1.1\r\nX-Remote-User: alice\r\nAuthorization: Bearer abc.def.ghi\r\n\r\nbody";
        assert_eq!(redacted(&r, plain), plain);
        for junk in [
            &b"\xff\xfe:\xff"[..],
            b":",
            b"cookie:",
            b"cookie:=",
            b"authorization: basic",
            b"\n\n\n",
        ] {
            let mut v = junk.to_vec();
            r.redact(&mut v);
            assert_eq!(v.len(), junk.len());
        }
    }
}
