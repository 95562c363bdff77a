//! Identity extraction (trusted header, Basic, JWT bearer) from arbitrary request heads: with a
//! JWT configuration without key (claims read unverified), and with an HS256 key (signatures
//! checked), the key loaded through the public configuration path from a temporary file.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use monitor_core::{
    http::{self, HeadParse},
    identity::{self, IdentityConfig, IdentitySource, JwtConfig},
};

/// The HS256 secret of the seed tokens in `corpus/identity` (`fuzz-secret`).
const HS256_SECRET: &[u8] = b"fuzz-secret\n";

fn config(jwt: JwtConfig) -> IdentityConfig {
    IdentityConfig {
        sources: vec![
            IdentitySource::TrustedHeader,
            IdentitySource::Basic,
            IdentitySource::Jwt,
            IdentitySource::Session,
        ],
        trusted_header: "X-Remote-User".to_owned(),
        jwt,
        session: Some(identity::SessionConfig {
            cookie: "sid".to_owned(),
            login_path: "/login".to_owned(),
            user_field: "user".to_owned(),
            logout_path: Some("/logout".to_owned()),
            idle_timeout_seconds: 60,
            max_sessions: 8,
            store: None,
        }),
    }
}

static CONFIGS: LazyLock<[IdentityConfig; 3]> = LazyLock::new(|| {
    let unverified = config(JwtConfig::default());

    // The key file's bytes come from the caller's reader: no file needed.
    let mut jwt = JwtConfig::default();
    jwt.hs256_secret_file = Some("/fuzz/hs256.key".into());
    jwt.user_claim = "/user/login".to_owned();
    jwt.require_exp = true;
    jwt.load_key_with(&|_| Ok(HS256_SECRET.to_vec()))
        .expect("loading the HS256 secret");
    let hs256 = config(jwt);

    // A key file configured but not loaded.
    let mut not_loaded = JwtConfig::default();
    not_loaded.hs256_secret_file = Some("/nonexistent/vigie-fuzz.key".into());
    let not_loaded = config(not_loaded);
    [unverified, hs256, not_loaded]
});

fuzz_target!(|data: &[u8]| {
    // The first byte picks the clock (none, or a fixed instant), the rest is the head.
    let Some((&clock, bytes)) = data.split_first() else {
        return;
    };
    let now = match clock % 3 {
        0 => None,
        1 => Some(1_800_000_000),
        _ => Some(i64::from(clock) * 10_000_000),
    };
    let HeadParse::Complete(head) = http::parse_request_head(bytes) else {
        return;
    };
    for (i, cfg) in CONFIGS.iter().enumerate() {
        let found = identity::identify(&head, cfg, now);
        if let Some(id) = &found.identity {
            assert!(
                identity::valid_user_name(&id.user),
                "invalid user {:?}",
                id.user
            );
            assert!(id.roles.len() <= identity::jwt::MAX_ROLES);
            if id.source != IdentitySource::Jwt {
                assert!(id.roles.is_empty());
            }
            // With a key configured, only a signature marked as verified at capture time (see
            // `redact`) is trusted.
            if i > 0 && id.source == IdentitySource::Jwt {
                assert!(
                    bytes.windows(3).any(|w| w == b".V*"),
                    "token trusted without a verified signature"
                );
            }
        }
    }
});
