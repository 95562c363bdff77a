//! Who made a request: the authenticated user named by a trusted proxy header, by HTTP Basic
//! credentials, by a JWT bearer token ([`jwt`]), by a session cookie learned from the
//! portal's login exchange ([`session`]), or by the front server of a FastCGI application
//! (`REMOTE_USER`).
//!
//! Only the user name (and a token's roles) ever leaves this module. Basic passwords are decoded
//! into a buffer that is zeroed when dropped, on every path, and never copied elsewhere. Bearer
//! tokens are never copied: only the claims named in the configuration are kept.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::http::RequestHead;

pub mod handle;
pub mod jwt;
pub mod session;
pub mod store_config;

pub use jwt::JwtConfig;
pub use session::SessionConfig;

/// Longest user name accepted, in bytes.
pub const MAX_USER_NAME_LEN: usize = 256;

/// Longest base64 Basic credential decoded, in bytes: bounds the work and the memory that a
/// hostile header can make us spend, while leaving room for long passwords.
pub const MAX_BASIC_CREDENTIALS_LEN: usize = 8 * 1024;

/// Standard alphabet, lenient about padding and trailing bits as common servers are: we report
/// what the server most likely understood, we do not validate the client.
pub(crate) const BASIC_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Where a user name can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// A header set by an authenticating reverse proxy ([`IdentityConfig::trusted_header`]).
    TrustedHeader,
    /// `Authorization: Basic` credentials (the user part only).
    Basic,
    /// `Authorization: Bearer` JSON Web Token ([`IdentityConfig::jwt`]).
    Jwt,
    /// A session cookie bound to a user by an earlier login ([`IdentityConfig::session`]).
    Session,
    /// `REMOTE_USER` (or `AUTH_USER`) set by the front server of a FastCGI application after it
    /// authenticated the user. Only FastCGI requests carry it ([`crate::fastcgi`]): no HTTP
    /// header can.
    RemoteUser,
}

/// The user a request was made as, and how we know.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// The user name, validated by [`valid_user_name`].
    pub user: String,
    /// Which source named the user.
    pub source: IdentitySource,
    /// Roles the source vouches for (JWT only), valid names, without duplicates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// How to identify users.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Sources tried in order; the first that yields a user wins.
    #[serde(default = "default_sources")]
    pub sources: Vec<IdentitySource>,
    /// Header set by a trusted auth proxy.
    #[serde(default = "default_trusted_header")]
    pub trusted_header: String,
    /// How to read bearer tokens (`[identity.jwt]`), for the `jwt` source.
    #[serde(default)]
    pub jwt: JwtConfig,
    /// How the portal logs users in (`[identity.session]`), for the `session` source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionConfig>,
}

fn default_sources() -> Vec<IdentitySource> {
    vec![IdentitySource::TrustedHeader, IdentitySource::Basic]
}

fn default_trusted_header() -> String {
    "X-Remote-User".to_owned()
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            sources: default_sources(),
            trusted_header: default_trusted_header(),
            jwt: JwtConfig::default(),
            session: None,
        }
    }
}

/// A credential was present but unusable: worth reporting, since a client or proxy is
/// misbehaving or probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityProblem {
    /// `Authorization: Basic` that is not base64 of `user:password` with a valid user name, is
    /// too long, or is repeated with different values.
    InvalidBasic,
    /// The trusted header is not a valid user name, or is repeated with different values.
    InvalidUserName,
    /// A bearer token with `alg: none` (any case): unsigned, so forged.
    JwtAlgNone,
    /// A bearer token whose signature does not verify with the configured key, uses another
    /// algorithm than the key's, or has an empty signature: forged.
    JwtBadSignature,
    /// A bearer token outside its validity period: `exp` passed or `nbf` not reached (with the
    /// configured leeway), or no `exp` while `require_exp` is set.
    JwtExpired,
    /// A bearer token that is not a compact JWS with JSON object header and claims: bad
    /// base64url, not three parts, too long, non-numeric `exp`, repeated with different values.
    JwtMalformed,
    /// A valid bearer token without a usable user claim (missing, not a string, not a valid
    /// user name).
    JwtNoUserClaim,
    /// A session cookie Vigie has not seen bound by a login (created before Vigie started, or
    /// on another host), or that was logged out or expired.
    UnknownSession,
}

impl IdentityProblem {
    /// A token that cannot have been issued by the portal: `alg: none` or a bad signature.
    #[must_use]
    pub fn is_forged_token(self) -> bool {
        matches!(self, Self::JwtAlgNone | Self::JwtBadSignature)
    }

    /// How much the problem matters when several credentials are unusable: forged tokens
    /// first, then expired ones, then the rest.
    fn severity(self) -> u8 {
        match self {
            Self::JwtAlgNone | Self::JwtBadSignature => 2,
            Self::JwtExpired => 1,
            _ => 0,
        }
    }
}

/// Result of [`identify`]: the user, if any, and the most severe unusable credential seen, if
/// any (forged tokens before expired ones before the rest; the first in source order among
/// equals). Both can be set: a bad credential is reported even when another source named the
/// user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[must_use]
pub struct Identified {
    /// The user, from the first configured source that yields one.
    pub identity: Option<Identity>,
    /// The most severe unusable credential met (see above).
    pub problem: Option<IdentityProblem>,
}

/// Identifies the user of a request from the configured sources.
///
/// Every configured source is examined, so that an unusable credential is reported even after
/// an earlier source already named the user; the identity is the first source's that yields one.
///
/// `now_unix` is the wall time of the request (Unix seconds), used for token expiry. It comes
/// from the request's event timestamp, never from the system clock, so that a replay decides as
/// the live run did; `None` when no clock is known, and then expiry is not checked.
pub fn identify(head: &RequestHead, cfg: &IdentityConfig, now_unix: Option<i64>) -> Identified {
    identify_with_sessions(head, cfg, now_unix, &mut |_| None)
}

/// [`identify`], with `session_user` resolving the session cookie's (hashed) value to the user
/// it is bound to, for the `session` source.
pub fn identify_with_sessions(
    head: &RequestHead,
    cfg: &IdentityConfig,
    now_unix: Option<i64>,
    session_user: &mut dyn FnMut(&[u8]) -> Option<String>,
) -> Identified {
    let mut identified = Identified::default();
    for &source in &cfg.sources {
        let outcome = match source {
            IdentitySource::TrustedHeader => {
                trusted_header_user(head, &cfg.trusted_header).map(|r| r.map(|u| (u, Vec::new())))
            }
            IdentitySource::Basic => basic_user(head).map(|r| r.map(|u| (u, Vec::new()))),
            IdentitySource::Jwt => {
                jwt::bearer_user(head, &cfg.jwt, now_unix).map(|r| r.map(|p| (p.user, p.roles)))
            }
            IdentitySource::Session => cfg.session.as_ref().and_then(|s| {
                let id = session::cookie_values(head.header_values("cookie"), &s.cookie).next()?;
                Some(
                    session_user(id)
                        .map(|u| (u, Vec::new()))
                        .ok_or(IdentityProblem::UnknownSession),
                )
            }),
            IdentitySource::RemoteUser => remote_user(head).map(|r| r.map(|u| (u, Vec::new()))),
        };
        match outcome {
            None => {}
            Some(Ok((user, roles))) => {
                identified.identity.get_or_insert(Identity {
                    user,
                    source,
                    roles,
                });
            }
            Some(Err(problem)) => match identified.problem {
                Some(kept) if kept.severity() >= problem.severity() => {}
                _ => identified.problem = Some(problem),
            },
        }
    }
    identified
}

/// Whether `s` is acceptable as a user name: 1 to [`MAX_USER_NAME_LEN`] bytes, no control
/// characters, no leading or trailing whitespace (which would make look-alike users).
#[must_use]
pub fn valid_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_USER_NAME_LEN
        && !s.chars().any(char::is_control)
        && !s.starts_with(char::is_whitespace)
        && !s.ends_with(char::is_whitespace)
}

/// User named by the trusted header: `None` when absent. Repeated with different values is a
/// problem, because which one the application honours is unknown (a proxy that appends rather
/// than replaces would let the client choose).
fn trusted_header_user(head: &RequestHead, name: &str) -> Option<Result<String, IdentityProblem>> {
    let mut values = head.header_values(name).map(<[u8]>::trim_ascii);
    let first = values.next()?;
    if values.any(|other| other != first) {
        return Some(Err(IdentityProblem::InvalidUserName));
    }
    Some(user_name(first).ok_or(IdentityProblem::InvalidUserName))
}

/// User named by the FastCGI front server (`REMOTE_USER`, `AUTH_USER`): `None` when absent or
/// empty (CGI's "no authenticated user": nginx sends `$remote_user` empty without
/// credentials). Several different values are a problem, as for the trusted header.
fn remote_user(head: &RequestHead) -> Option<Result<String, IdentityProblem>> {
    let mut values = head
        .header_values(crate::fastcgi::REMOTE_USER_HEADER)
        .filter(|v| !v.is_empty());
    let first = values.next()?;
    if values.any(|other| other != first) {
        return Some(Err(IdentityProblem::InvalidUserName));
    }
    Some(user_name(first).ok_or(IdentityProblem::InvalidUserName))
}

/// `bytes` as a valid user name, checking the length before any conversion.
pub fn user_name(bytes: &[u8]) -> Option<String> {
    if bytes.len() > MAX_USER_NAME_LEN {
        return None;
    }
    let name = std::str::from_utf8(bytes).ok()?;
    valid_user_name(name).then(|| name.to_owned())
}

/// User of the `Authorization: Basic` credentials: `None` without Basic credentials.
fn basic_user(head: &RequestHead) -> Option<Result<String, IdentityProblem>> {
    let mut tokens = head.header_values("authorization").filter_map(basic_token);
    let first = tokens.next()?;
    if tokens.any(|other| other != first) {
        return Some(Err(IdentityProblem::InvalidBasic));
    }
    Some(user_from_basic_token(first).ok_or(IdentityProblem::InvalidBasic))
}

/// The token68 of an `Authorization` value whose scheme is `Basic` (case-insensitive), possibly
/// empty; `None` for other schemes.
fn basic_token(value: &[u8]) -> Option<&[u8]> {
    crate::http::credential_token(value, b"basic")
}

/// Decodes `user:password` and keeps the user only (split at the first `:`, since RFC 7617
/// forbids `:` in user names but not in passwords).
fn user_from_basic_token(token: &[u8]) -> Option<String> {
    if token.is_empty() || token.len() > MAX_BASIC_CREDENTIALS_LEN {
        return None;
    }
    let mut decoded = Secret::with_capacity(base64::decoded_len_estimate(token.len()));
    BASIC_ENGINE.decode_vec(token, &mut decoded.0).ok()?;
    let colon = decoded.0.iter().position(|&b| b == b':')?;
    user_name(decoded.0.get(..colon)?)
}

/// Decoded credentials, zeroed (up to the full capacity) when dropped.
///
/// Sized up front so that decoding never reallocates and leaves a copy behind. The zeroing is
/// best effort: `black_box` keeps the writes from being optimised away in practice.
struct Secret(Vec<u8>);

impl Secret {
    fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let capacity = self.0.capacity();
        self.0.clear();
        self.0.resize(capacity, 0);
        std::hint::black_box(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use serde::Deserialize as _;
    use serde::de::value::{Error as DeError, MapDeserializer, StrDeserializer};

    /// Without a clock: expiry is covered by the `jwt` tests.
    fn identify(head: &RequestHead, cfg: &IdentityConfig) -> Identified {
        super::identify(head, cfg, None)
    }

    pub(super) fn head(headers: &[(&str, &[u8])]) -> RequestHead {
        RequestHead {
            method: "GET".to_owned(),
            target: "/".to_owned(),
            minor_version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
                .collect(),
            head_len: 0,
            content_length: None,
            chunked: false,
            keep_alive: true,
        }
    }

    fn basic(credentials: &[u8]) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(credentials)).into_bytes()
    }

    #[expect(
        clippy::unnecessary_wraps,
        reason = "compared with `Identified::identity`"
    )]
    fn user(user: &str, source: IdentitySource) -> Option<Identity> {
        Some(Identity {
            user: user.to_owned(),
            source,
            roles: Vec::new(),
        })
    }

    fn only(source: IdentitySource) -> IdentityConfig {
        IdentityConfig {
            sources: vec![source],
            ..IdentityConfig::default()
        }
    }

    fn basic_only(value: &[u8]) -> Identified {
        identify(
            &head(&[("authorization", value)]),
            &only(IdentitySource::Basic),
        )
    }

    fn trusted_only(value: &[u8]) -> Identified {
        identify(
            &head(&[("x-remote-user", value)]),
            &only(IdentitySource::TrustedHeader),
        )
    }

    fn problem(problem: IdentityProblem) -> Identified {
        Identified {
            identity: None,
            problem: Some(problem),
        }
    }

    #[test]
    fn defaults() {
        let cfg = IdentityConfig::default();
        assert_eq!(
            cfg.sources,
            [IdentitySource::TrustedHeader, IdentitySource::Basic]
        );
        assert_eq!(cfg.trusted_header, "X-Remote-User");
    }

    #[test]
    fn config_deserialization() {
        let empty = MapDeserializer::<_, DeError>::new(std::iter::empty::<(&str, &str)>());
        assert_eq!(
            IdentityConfig::deserialize(empty),
            Ok(IdentityConfig::default())
        );
        let unknown = MapDeserializer::<_, DeError>::new([("trusted_headr", "X")].into_iter());
        assert!(IdentityConfig::deserialize(unknown).is_err());
        let header = MapDeserializer::<_, DeError>::new([("trusted_header", "X-User")].into_iter());
        assert_eq!(
            IdentityConfig::deserialize(header).map(|c| c.trusted_header),
            Ok("X-User".to_owned())
        );
        for (text, source) in [
            ("trusted_header", IdentitySource::TrustedHeader),
            ("basic", IdentitySource::Basic),
            ("jwt", IdentitySource::Jwt),
        ] {
            let de = StrDeserializer::<DeError>::new(text);
            assert_eq!(IdentitySource::deserialize(de), Ok(source));
        }
    }

    #[test]
    fn basic_valid() {
        let got = basic_only(&basic(b"alice:s3cr3t"));
        assert_eq!(got.identity, user("alice", IdentitySource::Basic));
        assert_eq!(got.problem, None);
    }

    #[test]
    fn basic_scheme_is_case_insensitive() {
        let token = STANDARD.encode(b"alice:pw");
        for scheme in ["basic", "BASIC", "bAsIc"] {
            let got = basic_only(format!("{scheme} {token}").as_bytes());
            assert_eq!(
                got.identity,
                user("alice", IdentitySource::Basic),
                "{scheme}"
            );
        }
        let extra_spaces = basic_only(format!("  Basic   {token}  ").as_bytes());
        assert_eq!(extra_spaces.identity, user("alice", IdentitySource::Basic));
    }

    #[test]
    fn basic_without_padding() {
        let token = STANDARD.encode(b"bob:x");
        let got = basic_only(format!("Basic {}", token.trim_end_matches('=')).as_bytes());
        assert_eq!(got.identity, user("bob", IdentitySource::Basic));
    }

    #[test]
    fn basic_password_with_colons() {
        let got = basic_only(&basic(b"alice:pa:ss:word"));
        assert_eq!(got.identity, user("alice", IdentitySource::Basic));
        assert_eq!(
            basic_only(&basic(b"alice:")).identity,
            user("alice", IdentitySource::Basic)
        );
    }

    #[test]
    fn basic_unusable() {
        for value in [
            &b"Basic"[..],
            b"Basic ",
            b"Basic !!!not-base64!!!",
            b"Basic YWxpY2U6cHc=garbage",
            &basic(b"no-colon-here"),
            &basic(b":password-only"),
            &basic(b"ali\xffce:pw"),
            &basic(b" alice:pw"),
            &basic(b"al\nice:pw"),
            &basic(format!("{}:pw", "u".repeat(MAX_USER_NAME_LEN + 1)).as_bytes()),
            &basic(b""),
        ] {
            assert_eq!(
                basic_only(value),
                problem(IdentityProblem::InvalidBasic),
                "{value:?}"
            );
        }
    }

    #[test]
    fn other_schemes_and_absence_are_not_problems() {
        assert_eq!(basic_only(b"Bearer abc.def.ghi"), Identified::default());
        assert_eq!(basic_only(b"Basicx YWxpY2U6cHc="), Identified::default());
        assert_eq!(basic_only(b""), Identified::default());
        assert_eq!(
            identify(&head(&[]), &IdentityConfig::default()),
            Identified::default()
        );
    }

    #[test]
    fn basic_huge_value() {
        let password = "p".repeat(16 * 1024);
        let got = basic_only(&basic(format!("alice:{password}").as_bytes()));
        assert_eq!(got, problem(IdentityProblem::InvalidBasic));
        let mut long_garbage = b"Basic ".to_vec();
        long_garbage.resize(64 * 1024, b'\xff');
        assert_eq!(
            basic_only(&long_garbage),
            problem(IdentityProblem::InvalidBasic)
        );
        let long_but_allowed = "p".repeat(4 * 1024);
        let got = basic_only(&basic(format!("alice:{long_but_allowed}").as_bytes()));
        assert_eq!(got.identity, user("alice", IdentitySource::Basic));
    }

    #[test]
    fn basic_repeated() {
        let a = basic(b"alice:pw");
        let b = basic(b"bob:pw");
        let cfg = only(IdentitySource::Basic);
        let same = identify(&head(&[("authorization", &a), ("authorization", &a)]), &cfg);
        assert_eq!(same.identity, user("alice", IdentitySource::Basic));
        let differ = identify(&head(&[("authorization", &a), ("authorization", &b)]), &cfg);
        assert_eq!(differ, problem(IdentityProblem::InvalidBasic));
        let with_bearer = identify(
            &head(&[("authorization", b"Bearer t"), ("authorization", &b)]),
            &cfg,
        );
        assert_eq!(with_bearer.identity, user("bob", IdentitySource::Basic));
    }

    #[test]
    fn trusted_header_valid_and_trimmed() {
        let got = trusted_only(b"  alice@example.org\t");
        assert_eq!(
            got.identity,
            user("alice@example.org", IdentitySource::TrustedHeader)
        );
        assert_eq!(got.problem, None);
        let unicode = trusted_only("élodie".as_bytes());
        assert_eq!(
            unicode.identity,
            user("élodie", IdentitySource::TrustedHeader)
        );
    }

    #[test]
    fn trusted_header_name_is_case_insensitive() {
        let cfg = IdentityConfig {
            sources: vec![IdentitySource::TrustedHeader],
            trusted_header: "x-AUTH-user".to_owned(),
            ..IdentityConfig::default()
        };
        let got = identify(&head(&[("X-Auth-User", b"carol")]), &cfg);
        assert_eq!(got.identity, user("carol", IdentitySource::TrustedHeader));
    }

    #[test]
    fn trusted_header_unusable() {
        let huge = vec![b'a'; 9 * 1024];
        for value in [
            &b""[..],
            b"   ",
            b"ali\xffce",
            b"al\x01ice",
            b"alice\x7f",
            "alice\u{a0}".as_bytes(),
            "\u{2003}alice".as_bytes(),
            "ali\u{85}ce".as_bytes(),
            &huge,
        ] {
            assert_eq!(
                trusted_only(value),
                problem(IdentityProblem::InvalidUserName),
                "{value:?}"
            );
        }
    }

    #[test]
    fn trusted_header_repeated() {
        let cfg = only(IdentitySource::TrustedHeader);
        let same = identify(
            &head(&[("x-remote-user", b"al"), ("x-remote-user", b" al")]),
            &cfg,
        );
        assert_eq!(same.identity, user("al", IdentitySource::TrustedHeader));
        let differ = identify(
            &head(&[("x-remote-user", b"admin"), ("x-remote-user", b"al")]),
            &cfg,
        );
        assert_eq!(differ, problem(IdentityProblem::InvalidUserName));
    }

    #[test]
    fn sources_order() {
        let creds = basic(b"basic-user:pw");
        let request = head(&[("x-remote-user", b"proxy-user"), ("authorization", &creds)]);
        let default = identify(&request, &IdentityConfig::default());
        assert_eq!(
            default.identity,
            user("proxy-user", IdentitySource::TrustedHeader)
        );
        let reversed = IdentityConfig {
            sources: vec![IdentitySource::Basic, IdentitySource::TrustedHeader],
            ..IdentityConfig::default()
        };
        let got = identify(&request, &reversed);
        assert_eq!(got.identity, user("basic-user", IdentitySource::Basic));
        let none = IdentityConfig {
            sources: vec![],
            ..IdentityConfig::default()
        };
        assert_eq!(identify(&request, &none), Identified::default());
        let missing_first = identify(
            &head(&[("authorization", &creds)]),
            &IdentityConfig::default(),
        );
        assert_eq!(
            missing_first.identity,
            user("basic-user", IdentitySource::Basic)
        );
    }

    #[test]
    fn problem_reported_when_another_source_succeeds() {
        let creds = basic(b"bob:pw");
        let bad_trusted = head(&[("x-remote-user", b"bad\x00name"), ("authorization", &creds)]);
        let got = identify(&bad_trusted, &IdentityConfig::default());
        assert_eq!(got.identity, user("bob", IdentitySource::Basic));
        assert_eq!(got.problem, Some(IdentityProblem::InvalidUserName));

        let bad_basic = head(&[("x-remote-user", b"alice"), ("authorization", b"Basic %%%")]);
        let got = identify(&bad_basic, &IdentityConfig::default());
        assert_eq!(got.identity, user("alice", IdentitySource::TrustedHeader));
        assert_eq!(got.problem, Some(IdentityProblem::InvalidBasic));
    }

    #[test]
    fn first_problem_is_kept() {
        let request = head(&[("x-remote-user", b""), ("authorization", b"Basic %%%")]);
        let got = identify(&request, &IdentityConfig::default());
        assert_eq!(got, problem(IdentityProblem::InvalidUserName));
    }

    #[test]
    fn identity_never_contains_the_password() {
        let got = basic_only(&basic(b"alice:hunter2"));
        assert!(!format!("{got:?}").contains("hunter2"));
    }

    #[test]
    fn from_parsed_head() {
        let wire = b"GET /x HTTP/1.1\r\nauthorization: basic YWxpY2U6cHc=\r\n\r\n";
        let crate::http::HeadParse::Complete(parsed) = crate::http::parse_request_head(wire) else {
            panic!("head did not parse");
        };
        let got = identify(&parsed, &IdentityConfig::default());
        assert_eq!(got.identity, user("alice", IdentitySource::Basic));
    }

    #[test]
    fn remote_user_comes_from_fastcgi_params_only() {
        use crate::fastcgi::{Params, build::pair};
        let cfg = only(IdentitySource::RemoteUser);
        let params = |pairs: &[(&[u8], &[u8])]| {
            Params::parse(
                &pairs
                    .iter()
                    .flat_map(|(n, v)| pair(n, v))
                    .collect::<Vec<_>>(),
            )
            .request_head()
        };
        let got = identify(&params(&[(b"REMOTE_USER", b"alice")]), &cfg);
        assert_eq!(got.identity, user("alice", IdentitySource::RemoteUser));
        let got = identify(&params(&[(b"AUTH_USER", b"bob")]), &cfg);
        assert_eq!(got.identity, user("bob", IdentitySource::RemoteUser));
        // Both, agreeing: fine; disagreeing: nobody.
        let both = params(&[(b"REMOTE_USER", b"bob"), (b"AUTH_USER", b"bob")]);
        assert_eq!(
            identify(&both, &cfg).identity,
            user("bob", IdentitySource::RemoteUser)
        );
        let differ = params(&[(b"REMOTE_USER", b"bob"), (b"AUTH_USER", b"agent")]);
        assert_eq!(
            identify(&differ, &cfg),
            problem(IdentityProblem::InvalidUserName)
        );
        // Empty (nginx's `$remote_user` without credentials): nobody, and no problem.
        assert_eq!(
            identify(&params(&[(b"REMOTE_USER", b"")]), &cfg),
            Identified::default()
        );
        assert_eq!(
            identify(&params(&[(b"REMOTE_USER", b" x")]), &cfg),
            problem(IdentityProblem::InvalidUserName)
        );
        // An HTTP client cannot send it: the header line is invalid and skipped.
        let wire = b"GET /x HTTP/1.1\r\n:remote-user: agent\r\nremote-user: agent\r\n\r\n";
        let crate::http::HeadParse::Complete(parsed) = crate::http::parse_request_head(wire) else {
            panic!("head did not parse");
        };
        assert_eq!(identify(&parsed, &cfg), Identified::default());
        // Not a default source.
        assert!(
            !IdentityConfig::default()
                .sources
                .contains(&IdentitySource::RemoteUser)
        );
    }

    #[test]
    fn user_name_rules() {
        assert!(valid_user_name("a"));
        assert!(valid_user_name("alice smith"));
        assert!(valid_user_name(&"x".repeat(MAX_USER_NAME_LEN)));
        assert!(!valid_user_name(&"x".repeat(MAX_USER_NAME_LEN + 1)));
        assert!(!valid_user_name(""));
        assert!(!valid_user_name(" alice"));
        assert!(!valid_user_name("alice\n"));
        assert!(!valid_user_name("ali\tce"));
        assert!(!valid_user_name("ali\u{9f}ce"));
    }
}
