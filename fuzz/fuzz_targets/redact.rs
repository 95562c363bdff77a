//! Redaction of captured socket bytes, as the live pipeline does it, then identification, as the
//! correlator does it. On arbitrary bytes cut into arbitrary reads:
//! - nothing panics and every chunk keeps its length, byte for byte;
//! - no Basic password survives (as `identify` would decode it);
//! - a head whose reads did not cut its lines keeps its Basic user (replay needs it);
//! - a bearer token is trusted only if it is the validly signed seed token, unaltered (the
//!   signature is checked at capture time with the key and replaced by a mark).
#![no_main]

use std::sync::LazyLock;

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use libfuzzer_sys::fuzz_target;
use monitor_core::{
    http::{self, HeadParse},
    identity::{self, IdentityConfig, IdentitySource, JwtConfig},
    redact::Redactor,
};

/// The HS256 secret of the seed tokens in `corpus/redact` and `corpus/identity`.
const HS256_SECRET: &[u8] = b"fuzz-secret\n";

/// `header.payload.` of the one validly signed seed token (`{"sub":"alice","exp":4102444800}`).
const SIGNED_SEED_PREFIX: &[u8] =
    b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.";

/// As `identity` decodes Basic credentials (lenient padding and trailing bits).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

static JWT: LazyLock<JwtConfig> = LazyLock::new(|| {
    // The key file's bytes come from the caller's reader: no file needed.
    let mut jwt = JwtConfig::default();
    jwt.hs256_secret_file = Some("/fuzz/hs256.key".into());
    jwt.load_key_with(&|_| Ok(HS256_SECRET.to_vec()))
        .expect("loading the HS256 secret");
    jwt
});

static IDENTITY: LazyLock<IdentityConfig> = LazyLock::new(|| IdentityConfig {
    sources: vec![IdentitySource::Jwt, IdentitySource::Basic],
    trusted_header: "X-Remote-User".to_owned(),
    jwt: JWT.clone(),
    session: None,
});

/// The Basic credentials of every `Authorization` line, decoded as `identify` would: (user,
/// password) when the token decodes to `user:password`.
fn basic_credentials(head: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    head.split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (name, value) = line.split_at(colon);
            if !name.trim_ascii().eq_ignore_ascii_case(b"authorization") {
                return None;
            }
            let value = value[1..].trim_ascii();
            let space = value.iter().position(|&b| b == b' ')?;
            let (scheme, token) = value.split_at(space);
            if !scheme.eq_ignore_ascii_case(b"basic") {
                return None;
            }
            let decoded = LENIENT.decode(token.trim_ascii()).ok()?;
            let colon = decoded.iter().position(|&b| b == b':')?;
            Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
        })
        .collect()
}

fn basic_user(head: &[u8]) -> Option<String> {
    let HeadParse::Complete(head) = http::parse_request_head(head) else {
        return None;
    };
    let cfg = IdentityConfig {
        sources: vec![IdentitySource::Basic],
        ..IdentityConfig::default()
    };
    identity::identify(&head, &cfg, None)
        .identity
        .map(|i| i.user)
}

/// Is every Basic token of the head in canonical base64 (what a real client sends)? A token with
/// extra trailing bits or odd padding decodes leniently but cannot be re-encoded to the same
/// length, so the redactor masks it whole: the user is lost (fails closed), nothing leaks.
fn basic_tokens_canonical(head: &[u8]) -> bool {
    use base64::Engine as _;
    let (std, no_pad) = (
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
    );
    head.split(|&b| b == b'\n').all(|line| {
        let text = String::from_utf8_lossy(line);
        let Some((_, value)) = text.split_once(':') else {
            return true;
        };
        let mut words = value.split_ascii_whitespace();
        if !words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("basic"))
        {
            return true;
        }
        let token = words.next().unwrap_or_default();
        std.decode(token).is_ok_and(|d| std.encode(&d) == token)
            || no_pad
                .decode(token)
                .is_ok_and(|d| no_pad.encode(&d) == token)
    })
}

fuzz_target!(|input: &[u8]| {
    // First byte: how the bytes are cut into reads (0: one read; n: reads of n bytes).
    let Some((&cut, data)) = input.split_first() else {
        return;
    };
    let step = if cut == 0 {
        data.len().max(1)
    } else {
        usize::from(cut)
    };
    // With a login exchange configured, so that login form bodies are redacted too.
    let mut redactor = Redactor::new(JWT.clone()).with_session(Some(identity::SessionConfig {
        cookie: "sid".to_owned(),
        login_path: "/login".to_owned(),
        user_field: "user".to_owned(),
        logout_path: Some("/logout".to_owned()),
        idle_timeout_seconds: 60,
        max_sessions: 8,
        store: None,
    }));
    let mut redacted = Vec::with_capacity(data.len());
    for chunk in data.chunks(step) {
        let mut bytes = chunk.to_vec();
        redactor.redact_request(7, 5, &mut bytes, true);
        assert_eq!(
            bytes.len(),
            chunk.len(),
            "redaction changed the length of a read"
        );
        redacted.extend_from_slice(&bytes);
    }
    redactor.forget(7, 5);

    let mut response = data.to_vec();
    redactor.redact_response(&mut response);
    assert_eq!(response.len(), data.len());

    for (user, password) in basic_credentials(&redacted) {
        assert!(
            password.iter().all(|&b| b == b'*'),
            "a Basic password survived redaction: user {:?}, password {:?}",
            String::from_utf8_lossy(&user),
            String::from_utf8_lossy(&password),
        );
    }

    // One read holding the whole head, with one `Authorization` line: the Basic user is kept.
    // (With several, masking an invalid line that the parser skipped can make it count; the
    // outcome is then no identity, which fails closed.)
    let whole_head = match http::parse_request_head(data) {
        HeadParse::Complete(h) => {
            h.head_len <= step
                && data[..h.head_len]
                    .split(|&b| b == b'\n')
                    .filter(|l| {
                        l.iter().position(|&b| b == b':').is_some_and(|c| {
                            l[..c].trim_ascii().eq_ignore_ascii_case(b"authorization")
                        })
                    })
                    .count()
                    == 1
        }
        _ => false,
    };
    if whole_head
        && basic_tokens_canonical(data)
        && let Some(user) = basic_user(data)
    {
        assert_eq!(
            basic_user(&redacted).as_deref(),
            Some(user.as_str()),
            "the Basic user did not survive redaction"
        );
    }

    if let HeadParse::Complete(head) = http::parse_request_head(&redacted)
        && let Some(id) = identity::identify(&head, &IDENTITY, Some(1_800_000_000)).identity
        && id.source == IdentitySource::Jwt
    {
        assert!(
            data.windows(SIGNED_SEED_PREFIX.len())
                .any(|w| w == SIGNED_SEED_PREFIX),
            "a forged bearer token was trusted as {:?}",
            id.user
        );
    }
});
