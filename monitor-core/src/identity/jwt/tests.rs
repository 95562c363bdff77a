//! Bearer tokens: valid ones for each algorithm, forged, expired, and hostile inputs.
use std::path::PathBuf;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use super::*;
use crate::identity::{Identified, Identity, IdentityConfig, IdentitySource, identify};

const NOW: i64 = 1_800_000_000;
const SECRET: &[u8] = b"portal-shared-secret-for-unit-tests-only";

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/identity/testdata"
    ))
    .join(name)
}

/// A file under the temp dir holding `bytes`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let path =
            std::env::temp_dir().join(format!("vigie-jwt-unit-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn loaded(mut cfg: JwtConfig) -> JwtConfig {
    cfg.load_key_with(&crate::identity::jwt::read_for_tests)
        .unwrap();
    cfg
}

fn hs256_config(file: &TempFile) -> JwtConfig {
    loaded(JwtConfig {
        hs256_secret_file: Some(file.0.clone()),
        ..JwtConfig::default()
    })
}

fn rs256_config(public: &str) -> JwtConfig {
    loaded(JwtConfig {
        rs256_public_key_file: Some(testdata(public)),
        ..JwtConfig::default()
    })
}

fn es256_config() -> JwtConfig {
    loaded(JwtConfig {
        es256_public_key_file: Some(testdata("es256-test-only.pub.pem")),
        ..JwtConfig::default()
    })
}

fn hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn rs256(claims: &serde_json::Value) -> String {
    let pem = std::fs::read(testdata("rs256-test-only.key.pem")).unwrap();
    encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

fn es256(claims: &serde_json::Value) -> String {
    let pem = std::fs::read(testdata("es256-test-only.key.pem")).unwrap();
    encode(
        &Header::new(Algorithm::ES256),
        claims,
        &EncodingKey::from_ec_pem(&pem).unwrap(),
    )
    .unwrap()
}

/// `header.payload.signature` from JSON texts, encoded by hand (for `alg: none` and friends).
fn raw(header: &str, payload: &str, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

fn check(token: &str, cfg: &JwtConfig) -> Result<Principal, IdentityProblem> {
    check_at(token.as_bytes(), cfg, Some(NOW))
}

/// As a live run does: the token is marked at capture time, then checked by the correlator.
fn check_at(token: &[u8], cfg: &JwtConfig, now: Option<i64>) -> Result<Principal, IdentityProblem> {
    let mut marked = token.to_vec();
    mark_token(&mut marked, cfg);
    check_token(&marked, cfg, now)
}

fn principal(user: &str, roles: &[&str]) -> Result<Principal, IdentityProblem> {
    Ok(Principal {
        user: user.to_owned(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
    })
}

fn alice() -> serde_json::Value {
    json!({"sub": "alice", "exp": NOW + 3600, "iat": NOW})
}

#[test]
fn hs256_valid_token_names_the_user_and_roles() {
    let secret = TempFile::new("hs-valid", SECRET);
    let cfg = hs256_config(&secret);
    assert_eq!(
        check(&hs256(&alice(), SECRET), &cfg),
        principal("alice", &[])
    );
    let agent = json!({"sub": "dana", "roles": ["agent", "reader"], "exp": NOW + 60});
    assert_eq!(
        check(&hs256(&agent, SECRET), &cfg),
        principal("dana", &["agent", "reader"])
    );
}

#[test]
fn secret_file_trailing_newline_is_ignored() {
    let secret = TempFile::new("hs-newline", b"portal-shared-secret-for-unit-tests-only\n");
    let cfg = hs256_config(&secret);
    assert_eq!(
        check(&hs256(&alice(), SECRET), &cfg),
        principal("alice", &[])
    );
}

#[test]
fn rs256_and_es256_valid_tokens() {
    let rs = rs256_config("rs256-test-only.pub.pem");
    assert_eq!(check(&rs256(&alice()), &rs), principal("alice", &[]));
    let es = es256_config();
    assert_eq!(check(&es256(&alice()), &es), principal("alice", &[]));
}

#[test]
fn roles_claim_forms() {
    let cfg = JwtConfig::default();
    let with_roles =
        |roles: serde_json::Value| check(&hs256(&json!({"sub": "u", "roles": roles}), b"k"), &cfg);
    assert_eq!(
        with_roles(json!("agent reader,auditor, agent")),
        principal("u", &["agent", "reader", "auditor"])
    );
    assert_eq!(
        with_roles(json!(["agent", 7, null, {"x": 1}, "", " padded", "ok"])),
        principal("u", &["agent", "ok"])
    );
    assert_eq!(with_roles(json!(42)), principal("u", &[]));
    assert_eq!(with_roles(json!({"agent": true})), principal("u", &[]));
    let many: Vec<String> = (0..1000).map(|i| format!("r{i}")).collect();
    let got = with_roles(json!(many)).unwrap();
    assert_eq!(got.roles.len(), MAX_ROLES);
    let long = "r".repeat(MAX_USER_NAME_LEN + 1);
    assert_eq!(
        with_roles(json!([long, "short"])),
        principal("u", &["short"])
    );
}

#[test]
fn custom_claims_and_json_pointers() {
    let cfg = JwtConfig {
        user_claim: "preferred_username".into(),
        roles_claim: "/realm_access/roles".into(),
        ..JwtConfig::default()
    };
    let claims = json!({
        "sub": "f3a1-uuid",
        "preferred_username": "carol",
        "realm_access": {"roles": ["agent"]},
    });
    assert_eq!(
        check(&hs256(&claims, b"k"), &cfg),
        principal("carol", &["agent"])
    );
    // A claim name with dots and slashes (namespaced claims) through an escaped pointer.
    let cfg = JwtConfig {
        roles_claim: "/https:~1~1portal.example~1roles".into(),
        ..JwtConfig::default()
    };
    let claims = json!({"sub": "bob", "https://portal.example/roles": ["agent"]});
    assert_eq!(
        check(&hs256(&claims, b"k"), &cfg),
        principal("bob", &["agent"])
    );
    let cfg = JwtConfig {
        roles_claim: "https://portal.example/roles".into(),
        ..JwtConfig::default()
    };
    assert_eq!(
        check(&hs256(&claims, b"k"), &cfg),
        principal("bob", &["agent"])
    );
}

#[test]
fn without_a_key_signatures_are_not_checked_but_alg_none_is_refused() {
    let cfg = JwtConfig::default();
    assert_eq!(
        check(&hs256(&alice(), b"any secret at all"), &cfg),
        principal("alice", &[])
    );
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        for signature in ["", "c2ln"] {
            assert_eq!(
                check(&raw(&header, r#"{"sub":"alice"}"#, signature), &cfg),
                Err(IdentityProblem::JwtAlgNone),
                "{alg} {signature:?}"
            );
        }
    }
    // A signed algorithm with the signature stripped is a forgery too.
    let stripped = hs256(&alice(), b"k");
    let stripped = &stripped[..=stripped.rfind('.').unwrap()];
    assert_eq!(check(stripped, &cfg), Err(IdentityProblem::JwtBadSignature));
}

#[test]
fn forged_tokens_with_a_key() {
    let secret = TempFile::new("hs-forged", SECRET);
    let cfg = hs256_config(&secret);
    let none = raw(r#"{"alg":"none"}"#, r#"{"sub":"alice"}"#, "");
    assert_eq!(check(&none, &cfg), Err(IdentityProblem::JwtAlgNone));
    let wrong_secret = hs256(&alice(), b"guessed-secret");
    assert_eq!(
        check(&wrong_secret, &cfg),
        Err(IdentityProblem::JwtBadSignature)
    );
    // The claims of a genuine token replaced: the signature no longer matches.
    let genuine = hs256(&json!({"sub": "alice", "exp": NOW + 60}), SECRET);
    let mut parts: Vec<&str> = genuine.split('.').collect();
    let evil = URL_SAFE_NO_PAD.encode(r#"{"sub":"bob","exp":1900000000,"roles":["agent"]}"#);
    parts[1] = &evil;
    assert_eq!(
        check(&parts.join("."), &cfg),
        Err(IdentityProblem::JwtBadSignature)
    );
    // Another algorithm than the key's.
    let rs = rs256(&alice());
    assert_eq!(check(&rs, &cfg), Err(IdentityProblem::JwtBadSignature));
    let stripped = &genuine[..=genuine.rfind('.').unwrap()];
    assert_eq!(check(stripped, &cfg), Err(IdentityProblem::JwtBadSignature));
    // Signature bytes that are not base64url at all.
    let bad_b64 = format!("{}.{}.====", parts[0], parts[2]);
    assert!(check(&bad_b64, &cfg).is_err());
}

#[test]
fn forged_public_key_tokens() {
    let rs = rs256_config("rs256-test-only.pub.pem");
    // Key confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    let public_pem = std::fs::read(testdata("rs256-test-only.pub.pem")).unwrap();
    let confused = hs256(&alice(), &public_pem);
    assert_eq!(check(&confused, &rs), Err(IdentityProblem::JwtBadSignature));
    // Signed with another key pair.
    let other = rs256_config("rs256-other-test-only.pub.pem");
    assert_eq!(
        check(&rs256(&alice()), &other),
        Err(IdentityProblem::JwtBadSignature)
    );
    let es = es256_config();
    assert_eq!(
        check(&rs256(&alice()), &es),
        Err(IdentityProblem::JwtBadSignature)
    );
    let token = es256(&alice());
    let (message, _) = token.rsplit_once('.').unwrap();
    let garbage = format!("{message}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]));
    assert_eq!(check(&garbage, &es), Err(IdentityProblem::JwtBadSignature));
    let short = format!("{message}.AAAA");
    assert_eq!(check(&short, &es), Err(IdentityProblem::JwtBadSignature));
}

#[test]
fn every_single_byte_change_of_a_signed_token_is_refused() {
    let secret = TempFile::new("hs-mutate", SECRET);
    let cfg = hs256_config(&secret);
    let token = hs256(&json!({"sub": "alice", "roles": ["x"]}), SECRET);
    let bytes = token.as_bytes();
    for i in 0..bytes.len() {
        for &replacement in b"Az.-=\xff\0" {
            if bytes[i] == replacement {
                continue;
            }
            let mut mutated = bytes.to_vec();
            mutated[i] = replacement;
            assert!(
                check_at(&mutated, &cfg, Some(NOW)).is_err(),
                "byte {i} set to {replacement:#x} still verified"
            );
        }
    }
}

#[test]
fn expiry_uses_the_given_time_and_leeway() {
    let cfg = JwtConfig::default();
    let at = |claims: serde_json::Value, now: Option<i64>| {
        check_at(hs256(&claims, b"k").as_bytes(), &cfg, now)
    };
    let expired = json!({"sub": "alice", "exp": NOW - 61});
    assert_eq!(
        at(expired.clone(), Some(NOW)),
        Err(IdentityProblem::JwtExpired)
    );
    assert_eq!(
        at(expired.clone(), Some(NOW - 120)),
        principal("alice", &[])
    );
    // No clock: expiry cannot be judged.
    assert_eq!(at(expired, None), principal("alice", &[]));
    // Within the leeway.
    let recent = json!({"sub": "alice", "exp": NOW - 30});
    assert_eq!(at(recent, Some(NOW)), principal("alice", &[]));
    let exactly = json!({"sub": "alice", "exp": NOW - 60});
    assert_eq!(at(exactly, Some(NOW)), Err(IdentityProblem::JwtExpired));
    let fractional = json!({"sub": "alice", "exp": (NOW - 61) as f64 + 0.5});
    assert_eq!(at(fractional, Some(NOW)), Err(IdentityProblem::JwtExpired));
    let future = json!({"sub": "alice", "nbf": NOW + 3600});
    assert_eq!(at(future, Some(NOW)), Err(IdentityProblem::JwtExpired));
    let soon = json!({"sub": "alice", "nbf": NOW + 30});
    assert_eq!(at(soon, Some(NOW)), principal("alice", &[]));
    for absurd in [
        json!(1e300),
        json!(-1e300),
        json!(u64::MAX),
        json!(i64::MIN),
    ] {
        let got = at(json!({"sub": "alice", "exp": absurd}), Some(NOW));
        assert!(matches!(got, Ok(_) | Err(IdentityProblem::JwtExpired)));
    }
    let strict = JwtConfig {
        leeway_seconds: 0,
        require_exp: true,
        ..JwtConfig::default()
    };
    let no_exp = hs256(&json!({"sub": "alice"}), b"k");
    assert_eq!(
        check_at(no_exp.as_bytes(), &strict, Some(NOW)),
        Err(IdentityProblem::JwtExpired)
    );
    let one_second_ago = hs256(&json!({"sub": "alice", "exp": NOW - 1}), b"k");
    assert_eq!(
        check_at(one_second_ago.as_bytes(), &strict, Some(NOW)),
        Err(IdentityProblem::JwtExpired)
    );
}

#[test]
fn a_forged_expired_token_is_reported_as_forged() {
    let secret = TempFile::new("hs-forged-expired", SECRET);
    let cfg = hs256_config(&secret);
    let token = hs256(&json!({"sub": "alice", "exp": NOW - 3600}), b"wrong");
    assert_eq!(check(&token, &cfg), Err(IdentityProblem::JwtBadSignature));
    let genuine = hs256(&json!({"sub": "alice", "exp": NOW - 3600}), SECRET);
    assert_eq!(check(&genuine, &cfg), Err(IdentityProblem::JwtExpired));
}

#[test]
fn unusable_user_claims() {
    let cfg = JwtConfig::default();
    for claims in [
        json!({}),
        json!({"sub": 12345}),
        json!({"sub": null}),
        json!({"sub": ["alice"]}),
        json!({"sub": ""}),
        json!({"sub": " alice"}),
        json!({"sub": "ali\nce"}),
        json!({"sub": "u".repeat(MAX_USER_NAME_LEN + 1)}),
    ] {
        assert_eq!(
            check(&hs256(&claims, b"k"), &cfg),
            Err(IdentityProblem::JwtNoUserClaim),
            "{claims}"
        );
    }
}

#[test]
fn malformed_tokens() {
    let cfg = JwtConfig::default();
    let b = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let header = b(r#"{"alg":"HS256"}"#);
    let payload = b(r#"{"sub":"alice"}"#);
    for token in [
        String::new(),
        "abc".into(),
        "a.b".into(),
        format!("{header}.{payload}"),
        format!("{header}.{payload}.c2ln.extra"),
        format!("{header}.{payload}.c2ln.a.b"),
        format!("{header}..c2ln"),
        format!(".{payload}.c2ln"),
        format!("{header}.!!!.c2ln"),
        format!("{header}.{payload}.c2*n"),
        format!("{header}.{payload}.c"),
        format!("{}.{payload}.c2ln", b("not json")),
        format!("{}.{payload}.c2ln", b(r#"["HS256"]"#)),
        format!("{}.{payload}.c2ln", b(r#"{"typ":"JWT"}"#)),
        format!("{}.{payload}.c2ln", b(r#"{"alg":7}"#)),
        format!("{}.{payload}.c2ln", b(r#"{"alg":null}"#)),
        format!("{header}.{}.c2ln", b(r#""alice""#)),
        format!("{header}.{}.c2ln", b(r#"{"sub":"alice","exp":"tomorrow"}"#)),
        format!("{header}.{}.c2ln", b(r#"{"sub":"alice","nbf":[1]}"#)),
        format!("{header}.{}.c2ln", b(r#"{"sub":"alice""#)),
        format!("{header} .{payload}.c2ln"),
    ] {
        assert_eq!(
            check(&token, &cfg),
            Err(IdentityProblem::JwtMalformed),
            "{token:?}"
        );
    }
}

#[test]
fn hostile_inputs_have_a_defined_outcome() {
    let secret = TempFile::new("hs-hostile", SECRET);
    let keyed = hs256_config(&secret);
    let configs = [JwtConfig::default(), keyed];
    let b = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let header = b(r#"{"alg":"HS256"}"#);
    // Deeper than serde_json's recursion limit (128), yet short enough to be decoded.
    let deep_array = format!("{}{}", "[".repeat(3_000), "]".repeat(3_000));
    let deep_object = format!(
        r#"{{"sub":"alice","roles":{}1{}}}"#,
        r#"{"a":"#.repeat(1_000),
        "}".repeat(1_000)
    );
    let mut hostile: Vec<Vec<u8>> = vec![
        // Huge: refused before decoding.
        vec![b'a'; MAX_TOKEN_LEN + 1],
        format!("{header}.{}.c2ln", "A".repeat(64 * 1024)).into_bytes(),
        vec![b'.'; 10_000],
        // Bad base64 and invalid UTF-8.
        b"\xff\xfe\xfd.\xc3\x28.\xa0\xa1".to_vec(),
        format!("{header}.\u{e9}\u{e9}.c2ln").into_bytes(),
        b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.\x00\x01".to_vec(),
        // Deeply nested JSON, in the header and in the claims.
        format!("{}.{}.c2ln", b(&deep_array), b(r#"{"sub":"alice"}"#)).into_bytes(),
        format!("{header}.{}.c2ln", b(&deep_array)).into_bytes(),
        format!("{header}.{}.c2ln", b(&deep_object)).into_bytes(),
        // Invalid UTF-8 inside the decoded JSON.
        format!(
            "{header}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(b"{\"sub\":\"al\xffice\"}")
        )
        .into_bytes(),
        // Numbers serde_json cannot hold as f64 exactly.
        format!(
            "{header}.{}.c2ln",
            b(&format!(r#"{{"sub":"a","exp":1{}}}"#, "0".repeat(400)))
        )
        .into_bytes(),
    ];
    // Deterministic pseudo-random bytes, drawn from the token alphabet and from all bytes.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=";
    for round in 0..2_000 {
        let len = (next() % 300) as usize;
        let token: Vec<u8> = (0..len)
            .map(|_| {
                let r = next();
                if round % 2 == 0 {
                    alphabet[(r % alphabet.len() as u64) as usize]
                } else {
                    r as u8
                }
            })
            .collect();
        hostile.push(token);
    }
    for cfg in &configs {
        for token in &hostile {
            match check_at(token, cfg, Some(NOW)) {
                Ok(p) => panic!("hostile token accepted as {p:?}"),
                Err(problem) => assert!(
                    matches!(
                        problem,
                        IdentityProblem::JwtMalformed
                            | IdentityProblem::JwtBadSignature
                            | IdentityProblem::JwtAlgNone
                    ),
                    "{problem:?}"
                ),
            }
        }
    }
    // Nesting past the limit makes the whole claims set malformed, even under the size bound.
    assert!(b(&deep_object).len() < MAX_TOKEN_LEN);
    assert_eq!(
        check_token(
            format!("{header}.{}.c2ln", b(&deep_object)).as_bytes(),
            &configs[0],
            Some(NOW)
        ),
        Err(IdentityProblem::JwtMalformed)
    );
}

#[test]
fn a_large_but_bounded_token_is_accepted() {
    let cfg = JwtConfig::default();
    let claims = json!({"sub": "alice", "padding": "p".repeat(11 * 1024)});
    let token = hs256(&claims, b"k");
    assert!(token.len() <= MAX_TOKEN_LEN);
    assert_eq!(check(&token, &cfg), principal("alice", &[]));
}

fn jwt_only(jwt: JwtConfig) -> IdentityConfig {
    IdentityConfig {
        sources: vec![IdentitySource::Jwt],
        jwt,
        ..IdentityConfig::default()
    }
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

/// As a live run does: bearer tokens are marked at capture time, then identified.
fn identify_at(headers: &[(&str, &[u8])], cfg: &IdentityConfig) -> Identified {
    let marked: Vec<(&str, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| {
            let mut value = value.to_vec();
            if name.eq_ignore_ascii_case("authorization") {
                mark_bearer_value(&mut value, &cfg.jwt);
            }
            (*name, value)
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = marked.iter().map(|(n, v)| (*n, v.as_slice())).collect();
    identify(&crate::identity::tests::head(&refs), cfg, Some(NOW))
}

#[test]
fn identify_from_the_authorization_header() {
    let secret = TempFile::new("hs-identify", SECRET);
    let cfg = jwt_only(hs256_config(&secret));
    let token = hs256(&json!({"sub": "dana", "roles": "agent"}), SECRET);
    let got = identify_at(&[("authorization", &bearer(&token))], &cfg);
    assert_eq!(
        got.identity,
        Some(Identity {
            user: "dana".into(),
            source: IdentitySource::Jwt,
            roles: vec!["agent".into()],
        })
    );
    assert_eq!(got.problem, None);
    for scheme in ["bearer", "BEARER", "  Bearer  "] {
        let value = format!("{scheme} {token} ");
        let got = identify_at(&[("authorization", value.as_bytes())], &cfg);
        assert_eq!(got.identity.map(|i| i.user).as_deref(), Some("dana"));
    }
    // Other schemes and absence are not problems.
    for value in [
        &b"Basic YWxpY2U6cHc="[..],
        b"Bearerx abc",
        b"Token abc",
        b"",
    ] {
        assert_eq!(
            identify_at(&[("authorization", value)], &cfg),
            Identified::default()
        );
    }
    assert_eq!(
        identify_at(&[("authorization", b"Bearer")], &cfg).problem,
        Some(IdentityProblem::JwtMalformed)
    );
    // Repeated: the same token is fine, two different ones are ambiguous.
    let other = hs256(&json!({"sub": "alice"}), SECRET);
    let same = identify_at(
        &[
            ("authorization", &bearer(&token)),
            ("authorization", &bearer(&token)),
        ],
        &cfg,
    );
    assert_eq!(same.identity.map(|i| i.user).as_deref(), Some("dana"));
    let differ = identify_at(
        &[
            ("authorization", &bearer(&token)),
            ("authorization", &bearer(&other)),
        ],
        &cfg,
    );
    assert_eq!(
        differ,
        Identified {
            identity: None,
            problem: Some(IdentityProblem::JwtMalformed)
        }
    );
}

#[test]
fn the_token_is_never_kept() {
    let secret = TempFile::new("hs-kept", SECRET);
    let cfg = jwt_only(hs256_config(&secret));
    let token = hs256(&json!({"sub": "dana", "roles": ["agent"]}), SECRET);
    let (_, signature) = token.rsplit_once('.').unwrap();
    let got = identify_at(&[("authorization", &bearer(&token))], &cfg);
    let shown = format!("{got:?}{}", serde_json::to_string(&got.identity).unwrap());
    assert!(!shown.contains(signature) && !shown.contains(&token[..20]));
    let forged = identify_at(&[("authorization", &bearer(&hs256(&alice(), b"x")))], &cfg);
    assert!(!format!("{forged:?}").contains("alice"));
}

#[test]
fn forged_token_outranks_other_problems_and_keeps_other_identities() {
    let secret = TempFile::new("hs-rank", SECRET);
    let cfg = IdentityConfig {
        sources: vec![
            IdentitySource::TrustedHeader,
            IdentitySource::Basic,
            IdentitySource::Jwt,
        ],
        jwt: hs256_config(&secret),
        ..IdentityConfig::default()
    };
    let forged = bearer(&hs256(&alice(), b"x"));
    let got = identify_at(
        &[("x-remote-user", b"bad\x01"), ("authorization", &forged)],
        &cfg,
    );
    assert_eq!(got.problem, Some(IdentityProblem::JwtBadSignature));
    assert_eq!(got.identity, None);
    let expired = bearer(&hs256(&json!({"sub": "a", "exp": NOW - 3600}), SECRET));
    let got = identify_at(
        &[("x-remote-user", b"carol"), ("authorization", &expired)],
        &cfg,
    );
    assert_eq!(got.problem, Some(IdentityProblem::JwtExpired));
    assert_eq!(got.identity.map(|i| i.user).as_deref(), Some("carol"));
    let both = identify_at(
        &[("authorization", &expired), ("authorization", b"Basic %%%")],
        &cfg,
    );
    assert_eq!(both.problem, Some(IdentityProblem::JwtExpired));
}

#[test]
fn key_configured_but_not_loaded_refuses_tokens() {
    let cfg = JwtConfig {
        hs256_secret_file: Some("/nonexistent/secret".into()),
        ..JwtConfig::default()
    };
    // The capture-time check had no key, so the token carries no verified mark.
    assert_eq!(
        check(&hs256(&alice(), b"k"), &cfg),
        Err(IdentityProblem::JwtBadSignature)
    );
}

#[test]
fn key_loading_errors_name_the_field() {
    let err = |cfg: JwtConfig| {
        let mut cfg = cfg;
        cfg.load_key_with(&crate::identity::jwt::read_for_tests)
            .unwrap_err()
    };
    let missing = err(JwtConfig {
        hs256_secret_file: Some("/nonexistent/vigie/secret".into()),
        ..JwtConfig::default()
    });
    assert_eq!(missing.field, "hs256_secret_file");
    assert!(missing.reason.contains("/nonexistent/vigie/secret"));
    let relative = err(JwtConfig {
        hs256_secret_file: Some("secret".into()),
        ..JwtConfig::default()
    });
    assert!(relative.reason.contains("absolute"));
    let empty = TempFile::new("empty", b"\n");
    let empty = err(JwtConfig {
        hs256_secret_file: Some(empty.0.clone()),
        ..JwtConfig::default()
    });
    assert!(empty.reason.contains("empty"));
    let not_pem = TempFile::new("not-pem", b"definitely not a key");
    for cfg in [
        JwtConfig {
            rs256_public_key_file: Some(not_pem.0.clone()),
            ..JwtConfig::default()
        },
        JwtConfig {
            // A private key where the public one belongs.
            rs256_public_key_file: Some(testdata("rs256-test-only.key.pem")),
            ..JwtConfig::default()
        },
        JwtConfig {
            rs256_public_key_file: Some(testdata("es256-test-only.pub.pem")),
            ..JwtConfig::default()
        },
    ] {
        assert_eq!(err(cfg).field, "rs256_public_key_file");
    }
    for file in [
        not_pem.0.clone(),
        testdata("rs256-test-only.pub.pem"),
        testdata("es256-test-only.key.pem"),
    ] {
        let e = err(JwtConfig {
            es256_public_key_file: Some(file.clone()),
            ..JwtConfig::default()
        });
        assert_eq!(e.field, "es256_public_key_file", "{}", file.display());
        // The content of the file is never quoted.
        assert!(!e.reason.contains("BEGIN"), "{}", e.reason);
    }
    let two = err(JwtConfig {
        hs256_secret_file: Some("/a".into()),
        es256_public_key_file: Some("/b".into()),
        ..JwtConfig::default()
    });
    assert_eq!(two.field, "es256_public_key_file");
    assert!(two.reason.contains("only one"));
    let leeway = err(JwtConfig {
        leeway_seconds: MAX_LEEWAY_SECONDS + 1,
        ..JwtConfig::default()
    });
    assert_eq!(leeway.field, "leeway_seconds");
    for bad in ["", "/", "a\nb"] {
        let e = err(JwtConfig {
            user_claim: bad.into(),
            ..JwtConfig::default()
        });
        assert_eq!(e.field, "user_claim");
    }
}

#[test]
fn config_is_serialized_without_the_key() {
    let secret = TempFile::new("hs-serialize", SECRET);
    let cfg = hs256_config(&secret);
    let text = serde_json::to_string(&cfg).unwrap();
    assert!(!text.contains("portal-shared-secret"), "{text}");
    assert!(!format!("{cfg:?}").contains("portal-shared-secret"));
    let back: JwtConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(back, cfg);
    assert!(back.key.is_none() && back.verifies());
    let unknown = serde_json::from_str::<JwtConfig>(r#"{"user_clam":"x"}"#);
    assert!(unknown.is_err());
}
