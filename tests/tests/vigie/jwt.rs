//! End-to-end: JWT bearer identity. The demo portal takes the `sub` of any bearer token without
//! checking it (a bug on purpose), a real `vigie` with real probes verifies the tokens with the
//! portal's HS256 secret, and each test asserts the exact set of alerts. Needs root (see
//! `crate::harness::privileged`).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::harness::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const SECRET: &str = "demo-portal-hs256-secret-e2e-only";

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("plausible time")
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing a token")
}

/// An unsigned token, crafted by hand as an attacker would.
fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn get_bearer(addr: &str, token: &str, target: &str) -> u16 {
    let value = format!("Bearer {token}");
    http_get(addr, target, &[("Authorization", &value)])
        .expect("GET")
        .0
}

/// Vigie config for this portal with JWT identity; `jwt` is the `[identity.jwt]` body.
fn jwt_config(portal: &Portal, policy: &str, jwt: &str) -> String {
    let u = portal.users.display();
    format!(
        "[targets]\npids = [{pid}]\n[documents]\nroots = [\"{u}\"]\n\
         owner_templates = [\"{u}/{{owner}}/**\"]\n[policy]\nprivileged_users = [\"agent\"]\n\
         privileged_roles = [\"agent\"]\n{policy}\n[identity]\nsources = [\"jwt\"]\n\
         [identity.jwt]\n{jwt}\n",
        pid = portal.guard.pid()
    )
}

fn alert_for<'a>(alerts: &'a [Value], doc: &str) -> &'a Value {
    alerts
        .iter()
        .find(|a| a["document"] == doc)
        .unwrap_or_else(|| panic!("no alert for {doc}: {alerts:#?}"))
}

#[test]
fn hs256_tokens_own_cross_user_privileged_forged_and_expired() {
    let Some(p) = privileged("hs256_tokens_own_cross_user_privileged_forged_and_expired") else {
        return;
    };
    let portal = Portal::start("jwt-hs256", &["--model", "thread"]);
    let keys = TempDir::new("jwt-hs256-keys");
    let secret_file = keys.path().join("portal.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("writing the secret");
    let config = jwt_config(
        &portal,
        "",
        &format!("hs256_secret_file = \"{}\"", secret_file.display()),
    );
    let vigie = Vigie::start(&p, "jwt-hs256", &config, &[]);
    let addr = portal.addr();
    let t0 = now();
    let alice = hs256(
        &json!({"sub": "alice", "exp": t0 + 3600, "iat": t0}),
        SECRET,
    );
    let agent = hs256(
        &json!({"sub": "frank", "roles": ["support", "agent"], "exp": t0 + 3600}),
        SECRET,
    );
    let none = alg_none(&json!({"sub": "bob", "exp": t0 + 3600}));
    let bad_signature = hs256(&json!({"sub": "carol", "exp": t0 + 3600}), "guessed-secret");
    let expired = hs256(&json!({"sub": "carol", "exp": t0 - 3600}), SECRET);
    let requests = [
        (&alice, "/docs/alice/health-record.pdf"),
        (&alice, "/docs/bob/health-record.pdf"),
        (&agent, "/docs/bob/notes.txt"),
        (&none, "/docs/bob/disability-file.pdf"),
        (&bad_signature, "/docs/carol/health-record.pdf"),
        (&expired, "/docs/carol/notes.txt"),
    ];
    for (token, target) in requests {
        // The portal serves them all: it never checks a token.
        assert_eq!(get_bearer(&addr, token, target), 200, "{target}");
    }
    let (alerts, log) = vigie.stop();
    let hr = portal.doc("bob", "health-record.pdf");
    let forged_none = portal.doc("bob", "disability-file.pdf");
    let forged_sig = portal.doc("carol", "health-record.pdf");
    let stale = portal.doc("carol", "notes.txt");
    assert_eq!(
        verdicts(&alerts),
        {
            let mut v = vec![
                t("violation", "-", "bob", &forged_none),
                t("violation", "-", "carol", &forged_sig),
                t("violation", "-", "carol", &stale),
                t("violation", "alice", "bob", &hr),
            ];
            v.sort();
            v
        },
        "{log}"
    );
    let cross = alert_for(&alerts, &hr);
    assert_eq!(cross["identity_source"], "jwt");
    assert_eq!(cross["rule"], "cross_user_read");
    assert_eq!(
        cross["request"]["identity"],
        json!({"user": "alice", "source": "jwt"})
    );
    for (doc, rule, problem) in [
        (&forged_none, "forged_token", "jwt_alg_none"),
        (&forged_sig, "forged_token", "jwt_bad_signature"),
        (&stale, "expired_token", "jwt_expired"),
    ] {
        let a = alert_for(&alerts, doc);
        assert_eq!(a["rule"], rule, "{a}");
        assert_eq!(a["request"]["identity_problem"], problem, "{a}");
        assert!(a["user"].is_null() && a["identity_source"].is_null(), "{a}");
        assert!(a["request"].get("identity").is_none(), "{a}");
    }
    assert!(
        log.contains("\"allowed\": 2"),
        "own document and privileged role allowed:\n{log}"
    );
    // Neither a token nor the secret is ever written.
    let everything = format!("{alerts:?}{log}");
    for token in [&alice, &agent, &none, &bad_signature, &expired] {
        let (message, signature) = token.rsplit_once('.').expect("three parts");
        assert!(!everything.contains(message), "a token leaked");
        if !signature.is_empty() {
            assert!(!everything.contains(signature), "a signature leaked");
        }
    }
    assert!(!everything.contains(SECRET), "the secret leaked");
}

#[test]
fn unverified_tokens_and_forged_token_alerts_off() {
    let Some(p) = privileged("unverified_tokens_and_forged_token_alerts_off") else {
        return;
    };
    let portal = Portal::start("jwt-unverified", &["--model", "thread"]);
    // No key: tokens are decoded, not verified; `alg: none` is still refused.
    let config = jwt_config(
        &portal,
        "alert_forged_tokens = false",
        "user_claim = \"preferred_username\"\nroles_claim = \"/realm_access/roles\"",
    );
    let vigie = Vigie::start(&p, "jwt-unverified", &config, &[]);
    let addr = portal.addr();
    let t0 = now();
    // The demo portal reads `sub`; Vigie is told the user is `preferred_username`.
    let carol = hs256(
        &json!({"sub": "carol", "preferred_username": "carol", "exp": t0 + 60}),
        "whatever-the-portal-uses",
    );
    let agent = hs256(
        &json!({"sub": "frank", "preferred_username": "frank",
                "realm_access": {"roles": ["agent"]}}),
        "whatever-the-portal-uses",
    );
    let none = alg_none(&json!({"sub": "alice", "preferred_username": "alice"}));
    assert_eq!(get_bearer(&addr, &carol, "/docs/bob/notes.txt"), 200);
    assert_eq!(
        get_bearer(&addr, &agent, "/docs/alice/health-record.pdf"),
        200
    );
    assert_eq!(get_bearer(&addr, &none, "/docs/alice/notes.txt"), 200);
    let (alerts, log) = vigie.stop();
    let notes = portal.doc("bob", "notes.txt");
    let forged = portal.doc("alice", "notes.txt");
    assert_eq!(
        verdicts(&alerts),
        [
            t("unauthenticated", "-", "alice", &forged),
            t("violation", "carol", "bob", &notes),
        ],
        "{log}"
    );
    let a = alert_for(&alerts, &forged);
    assert_eq!(a["rule"], "request_without_identity");
    assert_eq!(a["request"]["identity_problem"], "jwt_alg_none");
    assert_eq!(alert_for(&alerts, &notes)["identity_source"], "jwt");
}

#[test]
fn a_missing_key_file_refuses_to_start() {
    let Some(p) = privileged("a_missing_key_file_refuses_to_start") else {
        return;
    };
    let dir = TempDir::new("jwt-missing-key");
    let config = dir.path().join("vigie.toml");
    std::fs::write(
        &config,
        "[targets]\nnames = [\"demo-portal\"]\n[documents]\nroots = [\"/srv/portal/users\"]\n\
         [identity]\nsources = [\"jwt\"]\n[identity.jwt]\n\
         hs256_secret_file = \"/nonexistent/vigie/portal.secret\"\n",
    )
    .expect("writing config");
    let out = std::process::Command::new(&p.vigie)
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("running vigie check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("identity.jwt.hs256_secret_file"),
        "the field is named: {stderr}"
    );
}
