//! Session handles: which credential carried a request's identity, as a short, stable,
//! non-reversible name an analyst can compare between alerts and match against the portal's
//! sessions to revoke the right one. Never the secret itself.
//!
//! - `session` identities: `s:` and a hash of the session cookie as the trace holds it, which is
//!   already a keyed hash of the cookie (see [`crate::redact`]): with the operator's key file,
//!   `vigie session-handle --key-file F --cookie VALUE` gives the same handle for the portal's
//!   session id;
//! - `jwt` identities: `jti:` and the token's `jti` claim when it has a usable one (an id meant
//!   for revocation lists), else `t:` and a hash of the token's header and payload (the claims
//!   the trace holds anyway; the signature, the secret part, is never hashed);
//! - other sources (trusted header, Basic, `REMOTE_USER`): no handle. Hashing a Basic
//!   `user:password` would publish a password hash.
//!
//! Computed from the redacted request head alone, so replay gives the handles of the live run.
use sha2::Digest as _;

use super::{Identity, IdentitySource, jwt};
use crate::http::RequestHead;

/// Longest `jti` shown as it is; longer (or unprintable) ones are hashed.
const MAX_JTI: usize = 64;

fn hex16(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The handle of the credential that gave `identity`; `session_cookie` is the session cookie's
/// value as redacted (for `session` identities).
#[must_use]
pub fn session_handle(
    identity: &Identity,
    head: &RequestHead,
    session_cookie: Option<&[u8]>,
) -> Option<String> {
    match identity.source {
        IdentitySource::Session => session_cookie.map(|c| format!("s:{}", hex16(c))),
        IdentitySource::Jwt => {
            let (signed, jti) = jwt::token_for_handle(head)?;
            Some(match jti {
                Some(j)
                    if !j.is_empty()
                        && j.len() <= MAX_JTI
                        && j.bytes().all(|b| b.is_ascii_graphic()) =>
                {
                    format!("jti:{j}")
                }
                _ => format!("t:{}", hex16(signed)),
            })
        }
        IdentitySource::TrustedHeader | IdentitySource::Basic | IdentitySource::RemoteUser => None,
    }
}

/// The handle an analyst computes for a session cookie of the portal, with the key Vigie hashes
/// cookies with: the handle alerts show for requests that carried it.
#[must_use]
pub fn cookie_handle(key: &SessionKey, cookie: &[u8]) -> String {
    let hashed = key.cookie_hash(cookie);
    // The redactor cycles the hash to the cookie's length: the trace holds that.
    let cycled: Vec<u8> = hashed.bytes().cycle().take(cookie.len()).collect();
    format!("s:{}", hex16(&cycled))
}

/// The handle alerts show for a request that carried bearer `token`.
#[must_use]
pub fn bearer_handle(token: &[u8]) -> Option<String> {
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(token);
    let head = RequestHead {
        method: "GET".into(),
        target: "/".into(),
        minor_version: 1,
        headers: vec![("authorization".into(), value)],
        head_len: 0,
        content_length: None,
        chunked: false,
        keep_alive: true,
    };
    let identity = Identity {
        user: String::new(),
        source: IdentitySource::Jwt,
        roles: Vec::new(),
    };
    session_handle(&identity, &head, None)
}

/// The key of the cookie hashes (HMAC-SHA-256). Never logged, never in a trace.
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// A key of this run's own: hashes mean nothing outside it. From std's per-process random
    /// hasher keys (the core does no I/O of its own; the daemon loads or makes a key with the
    /// OS's generator, see `vigie::incidents`).
    #[must_use]
    pub fn random() -> Self {
        use std::hash::BuildHasher as _;
        let state = std::collections::hash_map::RandomState::new();
        let mut key = [0u8; 32];
        for (i, chunk) in key.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&state.hash_one(i).to_le_bytes());
        }
        Self(key)
    }

    #[must_use]
    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(key)
    }

    /// 16 hex digits of HMAC-SHA-256(key, value): what a cookie value becomes in the trace.
    #[must_use]
    pub fn cookie_hash(&self, value: &[u8]) -> String {
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn head(name: &str, value: &str) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            target: "/".into(),
            minor_version: 1,
            headers: vec![(name.into(), value.as_bytes().to_vec())],
            head_len: 0,
            content_length: None,
            chunked: false,
            keep_alive: true,
        }
    }

    fn identity(source: IdentitySource) -> Identity {
        Identity {
            user: "alice".into(),
            source,
            roles: Vec::new(),
        }
    }

    fn b64(json: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn jwt_handles_use_jti_or_a_hash_without_the_signature() {
        let h = b64(r#"{"alg":"HS256"}"#);
        let with_jti = format!(
            "Bearer {h}.{}.V***",
            b64(r#"{"sub":"alice","jti":"abc-1"}"#)
        );
        let got = session_handle(
            &identity(IdentitySource::Jwt),
            &head("authorization", &with_jti),
            None,
        );
        assert_eq!(got.as_deref(), Some("jti:abc-1"));
        let payload = b64(r#"{"sub":"alice"}"#);
        let a = session_handle(
            &identity(IdentitySource::Jwt),
            &head("authorization", &format!("Bearer {h}.{payload}.V***")),
            None,
        )
        .unwrap();
        // Another signature mark (or signature) of the same claims: the same session.
        let b = session_handle(
            &identity(IdentitySource::Jwt),
            &head("authorization", &format!("Bearer {h}.{payload}.X*******")),
            None,
        )
        .unwrap();
        assert!(a.starts_with("t:") && a.len() == 18, "{a}");
        assert_eq!(a, b);
        assert!(!a.contains(&payload));
    }

    #[test]
    fn cookie_handles_match_what_the_analyst_computes() {
        let key = SessionKey::from_bytes([7; 32]);
        let cookie = b"0123456789abcdef0123456789";
        let redacted: Vec<u8> = key
            .cookie_hash(cookie)
            .bytes()
            .cycle()
            .take(cookie.len())
            .collect();
        let got = session_handle(
            &identity(IdentitySource::Session),
            &head("cookie", "x=1"),
            Some(&redacted),
        )
        .unwrap();
        assert_eq!(got, cookie_handle(&key, cookie));
        let other = SessionKey::from_bytes([8; 32]);
        assert_ne!(got, cookie_handle(&other, cookie));
    }

    #[test]
    fn no_handle_for_passwords_or_headers() {
        let basic = head("authorization", "Basic YWxpY2U6KioqKg==");
        assert_eq!(
            session_handle(&identity(IdentitySource::Basic), &basic, None),
            None
        );
        assert_eq!(
            session_handle(&identity(IdentitySource::TrustedHeader), &basic, None),
            None
        );
    }
}
