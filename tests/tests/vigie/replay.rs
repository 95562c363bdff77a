//! Record on a live run, replay the trace: the same alerts, byte for byte. Then a what-if and an
//! explain on the same trace. Needs root (see `crate::harness::privileged`).

use std::{ffi::OsStr, os::unix::fs::PermissionsExt as _};

use crate::harness::*;

#[test]
fn replay_gives_the_live_alerts_byte_for_byte_and_answers_what_if_and_explain() {
    let Some(p) =
        privileged("replay_gives_the_live_alerts_byte_for_byte_and_answers_what_if_and_explain")
    else {
        return;
    };
    let portal = Portal::start("replay", &["--model", "thread", "--allow-anonymous"]);
    let traces = TempDir::new("replay-traces");
    let trace_dir = traces.path().join("t");
    let record = trace_dir.to_str().unwrap();
    // Bearer tokens signed with the portal's key: Vigie checks them at capture time.
    let secret = traces.path().join("jwt-secret");
    std::fs::write(&secret, "replay-test-signing-secret").unwrap();
    let config = format!(
        "{}[identity]\nsources = [\"trusted_header\", \"basic\", \"jwt\"]\n[identity.jwt]\nhs256_secret_file = \"{}\"\n",
        portal.config_by_pid(),
        secret.display()
    );
    let bearer = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "bob", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"replay-test-signing-secret"),
    )
    .unwrap();
    let bearer_header = format!("Bearer {bearer}");
    let signature = bearer.rsplit('.').next().unwrap().to_string();
    let vigie = Vigie::start(&p, "replay", &config, &["--record", record, "--audit"]);
    let addr = portal.addr();
    let mut conn = KeepAlive::connect(&addr).unwrap();
    let password = "correct-horse-battery-staple";
    let carol = basic("carol", password);
    for (headers, target) in [
        (vec![("X-Remote-User", "alice")], "/docs/alice/notes.txt"),
        (
            vec![("X-Remote-User", "alice")],
            "/docs/bob/health-record.pdf",
        ),
        (
            vec![("Authorization", carol.as_str())],
            "/docs/alice/disability-file.pdf",
        ),
        (vec![], "/docs/carol/notes.txt"),
        (
            vec![("X-Remote-User", "agent")],
            "/docs/carol/health-record.pdf",
        ),
        (
            vec![("Authorization", bearer_header.as_str())],
            "/docs/carol/notes.txt",
        ),
    ] {
        assert_eq!(conn.get(target, &headers).unwrap().0, 200);
    }
    drop(conn);
    let (live_raw, log) = vigie.stop_raw();
    let live_alerts = parse_alerts(&live_raw);
    let by_token = live_alerts
        .iter()
        .find(|a| a["user"] == "bob")
        .expect("the bearer-token read");
    assert_eq!(by_token["identity_source"], "jwt", "{by_token}");
    assert_eq!(
        verdicts(&live_alerts),
        [
            t(
                "allowed",
                "agent",
                "carol",
                &portal.doc("carol", "health-record.pdf")
            ),
            t(
                "allowed",
                "alice",
                "alice",
                &portal.doc("alice", "notes.txt")
            ),
            t(
                "unauthenticated",
                "-",
                "carol",
                &portal.doc("carol", "notes.txt")
            ),
            t(
                "violation",
                "alice",
                "bob",
                &portal.doc("bob", "health-record.pdf")
            ),
            t(
                "violation",
                "bob",
                "carol",
                &portal.doc("carol", "notes.txt")
            ),
            t(
                "violation",
                "carol",
                "alice",
                &portal.doc("alice", "disability-file.pdf")
            ),
        ],
        "{log}"
    );

    // Trace files: private, and no password in them.
    let files = trace_files(&trace_dir);
    assert!(!files.is_empty());
    for f in &files {
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            f.display()
        );
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            !text.contains(password)
                && !text.contains(carol.trim_start_matches("Basic "))
                && !text.contains(&signature),
            "secret in trace"
        );
    }

    // Replay under the recorded config: identical bytes.
    let replayed = traces.path().join("replayed.jsonl");
    let mut args: Vec<&OsStr> = vec![OsStr::new("replay")];
    args.extend(files.iter().map(|f| f.as_os_str()));
    args.extend([
        OsStr::new("--audit"),
        OsStr::new("--alerts"),
        replayed.as_os_str(),
    ]);
    let (ok, _, stderr) = vigie_cmd(&p, &args);
    assert!(ok, "{stderr}");
    let replayed_raw = std::fs::read_to_string(&replayed).unwrap();
    assert_eq!(replayed_raw, live_raw, "replay differs from live");
    assert!(
        stderr.contains(
            "accesses by verdict {\"allowed\": 2, \"unauthenticated\": 1, \"violation\": 3}"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("top users by violations"), "{stderr}");

    // What-if: alice made privileged removes her violation, and the report says so.
    let whatif_cfg = traces.path().join("whatif.toml");
    std::fs::write(
        &whatif_cfg,
        config.replace(
            "privileged_users = [\"agent\"]",
            "privileged_users = [\"agent\", \"alice\"]",
        ),
    )
    .unwrap();
    let mut args: Vec<&OsStr> = vec![OsStr::new("replay")];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let whatif_alerts = traces.path().join("whatif.jsonl");
    args.extend([
        OsStr::new("--config"),
        whatif_cfg.as_os_str(),
        OsStr::new("--alerts"),
        whatif_alerts.as_os_str(),
    ]);
    let (ok, stdout, stderr) = vigie_cmd(&p, &args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("what-if: 1 verdict(s) differ"), "{stdout}");
    assert!(
        stdout.contains("alice read")
            && stdout.contains("violation -> allowed (user_is_privileged)"),
        "{stdout}"
    );
    let whatif = verdicts(&parse_alerts(
        &std::fs::read_to_string(&whatif_alerts).unwrap(),
    ));
    // bob's (by bearer token) and carol's remain.
    assert_eq!(
        whatif.iter().filter(|v| v.0 == "violation").count(),
        2,
        "{whatif:?}"
    );

    // Explain the violation by alice.
    let alice_violation = live_alerts
        .iter()
        .find(|a| a["verdict"] == "violation" && a["user"] == "alice")
        .unwrap();
    let id = alice_violation["access_id"].to_string();
    let mut args: Vec<&OsStr> = vec![OsStr::new("replay")];
    args.extend(files.iter().map(|f| f.as_os_str()));
    args.extend([OsStr::new("--explain"), OsStr::new(id.as_str())]);
    let (ok, stdout, stderr) = vigie_cmd(&p, &args);
    assert!(ok, "{stderr}");
    for expected in [
        "alice read",
        "verdict violation by rule cross_user_read (owner bob",
        "evidence: thread",
        "read request on fd",
        "GET /docs/bob/health-record.pdf HTTP/1.1",
        "opened ",
        "bytes of the document",
        "closed fd",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
