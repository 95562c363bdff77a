//! End-to-end over HTTPS: portals that terminate TLS themselves, read through the uprobes on
//! their OpenSSL (`libssl.so.3`). Real servers (Debian's nginx with `ssl` and `http2`, a
//! Python application server with the `ssl` module), real clients (curl), certificates made
//! by the test, exact alert sets, byte-identical replays, and traces that hold no secret and no
//! ciphertext. Needs root (see `crate::harness::privileged`), nginx, python3, openssl and curl
//! (`cargo xtask setup` installs them).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::harness::{tls::*, *};
use base64::Engine as _;
use serde_json::Value;

/// A trace of connections Vigie could not read: no payload at all.
fn assert_clean_trace_without_requests(files: &[PathBuf]) {
    let payloads = trace_payloads(files);
    assert!(payloads.is_empty(), "{} payloads recorded", payloads.len());
}

/// The trace holds plaintext requests and no secret: no password (nor its Basic encoding), no
/// session id, no document content, no TLS record (ciphertext).
fn assert_clean_trace(files: &[PathBuf], secrets: &[&str]) {
    let payloads = trace_payloads(files);
    assert!(
        payloads.iter().any(|d| d.starts_with(b"GET /")),
        "plaintext requests were recorded"
    );
    let mut forbidden: Vec<Vec<u8>> = vec![SECRET.as_bytes().to_vec()];
    for s in secrets {
        forbidden.push(s.as_bytes().to_vec());
    }
    for user in USERS {
        forbidden.push(format!("{user}-pw").into_bytes());
        forbidden.push(
            base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{user}-pw"))
                .into_bytes(),
        );
    }
    for secret in &forbidden {
        assert!(
            !payloads.iter().any(|d| bytes_contain(d, secret)),
            "{:?} in the trace",
            String::from_utf8_lossy(secret)
        );
    }
    for d in &payloads {
        assert!(
            !matches!(d.as_slice(), [0x14..=0x17, 0x03, ..]),
            "a TLS record in the trace: {:?}",
            &d[..d.len().min(16)]
        );
    }
}

/// Replays `files` and checks the alerts are the live ones, byte for byte.
fn assert_replays_identically(p: &Privileged, files: &[PathBuf], live: &str, out: &Path) {
    let replayed = replay_alerts(p, files, &[], out);
    assert_eq!(replayed, live, "replay differs from the live run");
}

/// No HTTP/2 connection's bytes reached the trace (HTTP/2 is decoded before the recorder).
fn assert_no_http2_frames(files: &[PathBuf]) {
    assert!(
        !trace_payloads(files)
            .iter()
            .any(|d| d.starts_with(b"PRI * HTTP/2.0")),
        "HTTP/2 frames in the trace"
    );
}

/// Waits until Vigie has handled the library a target mapped after start-up: `true` when it
/// hooked it, `false` on a kernel without `uprobe.multi` (before 6.6: Debian's 6.1 in the
/// matrix), where a library mapped after the capability drop cannot be hooked and is reported.
fn wait_late_hook(vigie: &Vigie) -> bool {
    poll_until(
        "the late libssl hooked, or reported not hookable",
        Duration::from_secs(10),
        || {
            let log = vigie.log();
            if log.contains("TLS library hooked") {
                Some(true)
            } else if log.contains("TLS library could not be hooked") {
                assert!(
                    log.contains("uprobe.multi TLS programs not loaded"),
                    "only a kernel without uprobe.multi may fail to hook a late library:\n{log}"
                );
                eprintln!(
                    "NOTE: no uprobe.multi on this kernel: the late library is reported, its HTTPS unread"
                );
                Some(false)
            } else {
                None
            }
        },
        || vigie.log(),
    )
}

fn https(addr: &str, path: &str) -> String {
    format!("https://{addr}{path}")
}

/// nginx running before Vigie, documents served directly over HTTPS/1.1 behind Basic: cross
/// reads of several users on kept connections are alerted, own reads are silent; the trace
/// holds plaintext without secrets, and replays to the same alerts byte for byte.
#[test]
fn https_nginx_http1_cross_user_reads_exact_alerts_and_replay() {
    let test = "https_nginx_http1_cross_user_reads_exact_alerts_and_replay";
    let Some(p) = privileged(test) else {
        return;
    };
    let Some(nginx) = nginx(test) else {
        return;
    };
    let traces = nginx.dir.path().join("traces");
    let vigie = Vigie::start(
        &p,
        "tls-nginx-h1",
        &nginx.config(&format!("pids = [{}]", nginx.pid()), "\"basic\"", ""),
        &["--record", traces.to_str().unwrap()],
    );
    assert!(
        vigie.log().contains("TLS library hooked"),
        "nginx's libssl is hooked at adoption:\n{}",
        vigie.log()
    );
    let a = &nginx.addr;
    // Each user on one kept-alive connection: own document, then another's.
    let runs = [
        ("alice", ["/users/alice/notes.txt", "/users/bob/notes.txt"]),
        ("bob", ["/users/bob/notes.txt", "/users/bob/notes.txt"]),
        (
            "carol",
            ["/users/carol/notes.txt", "/users/alice/notes.txt"],
        ),
    ];
    for (user, paths) in runs {
        let creds = format!("{user}:{user}-pw");
        let statuses = curl(
            test,
            &["--http1.1", "-u", &creds],
            &[https(a, paths[0]), https(a, paths[1])],
        )
        .unwrap();
        assert_eq!(statuses, [200, 200], "{user}");
    }
    // A wrong password: nginx refuses, nothing is read.
    let statuses = curl(
        test,
        &["--http1.1", "-u", "bob:guess"],
        &[https(a, "/users/alice/notes.txt")],
    )
    .unwrap();
    assert_eq!(statuses, [401]);
    let want = [
        t("violation", "alice", "bob", &nginx.doc("bob")),
        t("violation", "carol", "alice", &nginx.doc("alice")),
    ];
    vigie.wait_alerts("both cross-user reads", |al| verdicts(al).len() >= 2);
    let (raw, log) = vigie.stop_raw();
    let alerts = parse_alerts(&raw);
    assert_eq!(verdicts(&alerts), want, "{log}");
    for alert in &alerts {
        assert_eq!(alert["identity_source"], "basic");
        assert_eq!(alert["comm"], "nginx");
        assert_eq!(alert["request"]["status"], 200);
    }
    assert!(
        log.contains("\"violation\": 2") && !log.contains("unattributed"),
        "{log}"
    );
    let files = trace_files(&traces);
    assert_clean_trace(&files, &[]);
    assert_replays_identically(&p, &files, &raw, &nginx.dir.path().join("replayed.jsonl"));
}

/// nginx started after Vigie (selected by its executable): its libssl is hooked at the
/// dynamic loader's mappings, before it serves. HTTP/2 (ALPN h2, several streams at once on
/// one connection, one nginx worker): each stream is a request with its Basic user, and a read
/// goes to the stream whose DATA carried its first bytes: carol's two cross reads are alerted
/// with her name, her own read is silent, as the HTTP/1.1 cross read on the same server. The
/// trace holds the redacted stream heads, no frame and no credential.
#[test]
fn https_nginx_started_after_vigie_http2_streams_are_attributed_by_content() {
    let test = "https_nginx_started_after_vigie_http2_streams_are_attributed_by_content";
    let Some(p) = privileged(test) else {
        return;
    };
    let Some(mut nginx) = nginx_setup(test) else {
        return;
    };
    let traces = nginx.dir.path().join("traces");
    let vigie = Vigie::start(
        &p,
        "tls-nginx-late",
        &nginx.config("executables = [\"/usr/sbin/nginx\"]", "\"basic\"", ""),
        &["--record", traces.to_str().unwrap()],
    );
    nginx.start("nginx");
    let a = &nginx.addr;
    let hooked = wait_late_hook(&vigie);
    let statuses = curl(
        test,
        &["--http1.1", "-u", "alice:alice-pw"],
        &[https(a, "/users/bob/notes.txt")],
    )
    .unwrap();
    assert_eq!(statuses, [200]);
    if hooked {
        vigie.wait_alerts("the HTTP/1.1 cross read", |al| !verdicts(al).is_empty());
    }
    // HTTP/2: three streams at once on one connection, own and cross reads of carol.
    let statuses = curl(
        test,
        &["--http2", "--parallel", "-u", "carol:carol-pw"],
        &[
            https(a, "/users/carol/notes.txt"),
            https(a, "/users/alice/notes.txt"),
            https(a, "/users/bob/notes.txt"),
        ],
    )
    .unwrap();
    assert_eq!(statuses, [200, 200, 200]);
    if hooked {
        vigie.wait_alerts("the HTTP/2 cross reads", |al| verdicts(al).len() >= 3);
    }
    let (raw, log) = vigie.stop_raw();
    let alerts = parse_alerts(&raw);
    // Not hooked: every connection is ciphertext, kept out whole.
    let mut want = if hooked {
        vec![
            t("violation", "alice", "bob", &nginx.doc("bob")),
            t("violation", "carol", "alice", &nginx.doc("alice")),
            t("violation", "carol", "bob", &nginx.doc("bob")),
        ]
    } else {
        vec![
            t("unattributed", "-", "alice", &nginx.doc("alice")),
            t("unattributed", "-", "bob", &nginx.doc("bob")),
            t("unattributed", "-", "bob", &nginx.doc("bob")),
            t("unattributed", "-", "carol", &nginx.doc("carol")),
        ]
    };
    want.sort();
    assert_eq!(verdicts(&alerts), want, "{log}");
    let files = trace_files(&traces);
    if hooked {
        let h2: Vec<&Value> = alerts.iter().filter(|a| a["user"] == "carol").collect();
        for alert in h2 {
            assert_eq!(
                alert["evidence"],
                serde_json::json!(["fingerprint"]),
                "{alert}"
            );
            assert_eq!(alert["request"]["status"], 200);
        }
        assert_clean_trace(&files, &[]);
    } else {
        assert_clean_trace_without_requests(&files);
    }
    assert_no_http2_frames(&files);
    assert_replays_identically(&p, &files, &raw, &nginx.dir.path().join("replayed.jsonl"));
}

/// Several users at once, each on one HTTP/2 connection with many streams in flight, against
/// one nginx worker: every violation alert must name the user who asked for that document
/// (precision 1: a wrong user is the one failure Vigie must not have); recall is reported.
#[test]
fn https_nginx_http2_concurrent_users_precision_is_one() {
    let test = "https_nginx_http2_concurrent_users_precision_is_one";
    let Some(p) = privileged(test) else {
        return;
    };
    let Some(mut nginx) = nginx_setup(test) else {
        return;
    };
    // Four documents per owner, each with its own first bytes.
    for owner in USERS {
        for i in 0..4 {
            let text = format!("{SECRET} {owner}, number {i}: {}\n", "x".repeat(200));
            std::fs::write(nginx.users().join(owner).join(format!("d{i}.txt")), text).unwrap();
        }
    }
    let _ = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(nginx.users())
        .status();
    nginx.start("nginx");
    let vigie = Vigie::start(
        &p,
        "tls-nginx-h2-concurrent",
        &nginx.config(&format!("pids = [{}]", nginx.pid()), "\"basic\"", ""),
        &[],
    );
    if !vigie.log().contains("TLS library hooked") {
        eprintln!("NOTE: {test}: nginx's libssl not hooked on this kernel: nothing to score");
        return;
    }
    // Who reads what: each user all of their own, and some others' (each cross read once).
    let cross: [(&str, &[(&str, u32)]); 3] = [
        ("alice", &[("bob", 0), ("carol", 0)]),
        ("bob", &[("alice", 1)]),
        (
            "carol",
            &[("alice", 2), ("alice", 3), ("bob", 1), ("bob", 2)],
        ),
    ];
    let a = nginx.addr.clone();
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for (user, others) in cross {
            let a = a.clone();
            s.spawn(move || {
                let mut urls: Vec<String> = (0..4)
                    .map(|i| https(&a, &format!("/users/{user}/d{i}.txt")))
                    .collect();
                for (owner, i) in others {
                    urls.insert(1, https(&a, &format!("/users/{owner}/d{i}.txt")));
                }
                let creds = format!("{user}:{user}-pw");
                let statuses = curl(test, &["--http2", "--parallel", "-u", &creds], &urls).unwrap();
                assert!(statuses.iter().all(|s| *s == 200), "{user}: {statuses:?}");
            });
        }
    });
    let truth: Vec<(String, String)> = cross
        .iter()
        .flat_map(|(user, others)| {
            others.iter().map(|(owner, i)| {
                let doc = nginx.users().join(owner).join(format!("d{i}.txt"));
                (user.to_string(), doc.display().to_string())
            })
        })
        .collect();
    vigie.wait_alerts("the cross reads", |al| verdicts(al).len() >= truth.len());
    let (raw, log) = vigie.stop_raw();
    let alerts = parse_alerts(&raw);
    let violations: Vec<(String, String)> = verdicts(&alerts)
        .into_iter()
        .filter(|(v, ..)| v == "violation")
        .map(|(_, user, _, doc)| (user, doc))
        .collect();
    let wrong: Vec<&(String, String)> = violations.iter().filter(|v| !truth.contains(v)).collect();
    assert!(
        wrong.is_empty(),
        "violations naming the wrong user: {wrong:?}\n{log}"
    );
    let found = truth.iter().filter(|t| violations.contains(t)).count();
    eprintln!(
        "{test}: precision 1 ({} violation alerts), recall {found}/{} ({:.2}), {} unattributed, {:.1} s",
        violations.len(),
        truth.len(),
        found as f64 / truth.len() as f64,
        verdicts(&alerts)
            .iter()
            .filter(|(v, ..)| v == "unattributed")
            .count(),
        started.elapsed().as_secs_f64()
    );
    assert!(found > 0, "no cross read found at all:\n{log}");
}

/// Documents of 30 to 50 KiB over HTTP/2 with the default capture bounds: nginx writes them
/// as 16 KiB TLS records holding several DATA frames (8 KiB `http2_chunk_size`), so frame
/// headers lie far past the configured 512 bytes of a response capture. The kernel captures an
/// HTTP/2 connection's writes whole (up to 64 KiB, in chained records) once its first read was
/// the preface: the connection is followed to the end, each cross read alerted with its user
/// (the documents nginx reads in two buffers as one access: the rest joins the first read).
#[test]
fn https_nginx_http2_large_documents_are_followed_with_the_default_capture() {
    let test = "https_nginx_http2_large_documents_are_followed_with_the_default_capture";
    let Some(p) = privileged(test) else {
        return;
    };
    let Some(mut nginx) = nginx_setup(test) else {
        return;
    };
    for owner in USERS {
        let text = format!("{SECRET} {owner}, large: {}\n", owner.repeat(40 * 1024 / 4));
        std::fs::write(nginx.users().join(owner).join("large.txt"), text).unwrap();
    }
    let _ = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(nginx.users())
        .status();
    nginx.start("nginx");
    let vigie = Vigie::start(
        &p,
        "tls-nginx-h2-large",
        &nginx.config(&format!("pids = [{}]", nginx.pid()), "\"basic\"", ""),
        &[],
    );
    if !vigie.log().contains("TLS library hooked") {
        eprintln!("NOTE: {test}: nginx's libssl not hooked on this kernel: nothing to check");
        return;
    }
    let a = &nginx.addr;
    let large = |owner: &str| https(a, &format!("/users/{owner}/large.txt"));
    let doc = |owner: &str| nginx.users().join(owner).join("large.txt");
    // Two connections one after the other: the second checks the first ended in step.
    for urls in [
        [large("carol"), large("alice"), large("bob")],
        [large("bob"), large("carol"), large("alice")],
    ] {
        let statuses = curl(
            test,
            &["--http2", "--parallel", "-u", "carol:carol-pw"],
            &urls,
        )
        .unwrap();
        assert_eq!(statuses, [200, 200, 200]);
    }
    let d = |owner: &str| doc(owner).display().to_string();
    let mut want = vec![
        t("violation", "carol", "alice", &d("alice")),
        t("violation", "carol", "alice", &d("alice")),
        t("violation", "carol", "bob", &d("bob")),
        t("violation", "carol", "bob", &d("bob")),
    ];
    want.sort();
    vigie.wait_alerts("the four cross reads", |al| verdicts(al).len() >= 4);
    let (raw, log) = vigie.stop_raw();
    let alerts = parse_alerts(&raw);
    assert_eq!(verdicts(&alerts), want, "{log}");
    for alert in &alerts {
        assert_eq!(
            alert["evidence"],
            serde_json::json!(["fingerprint"]),
            "{alert}"
        );
    }
    assert!(
        !log.contains("unattributed") && !log.contains("unreadable"),
        "an HTTP/2 connection was lost:\n{log}"
    );
}

/// A Python application server terminating TLS itself, running before Vigie but loading OpenSSL
/// (`import ssl`, a `dlopen` of `_ssl`) only after Vigie started: its libssl is hooked at that
/// mapping. Sessions are learnt from the logins over TLS; the cross read is alerted with the
/// session's user; the trace holds no password or session id; replay is byte-identical.
#[test]
fn https_python_loads_libssl_after_vigie_session_from_the_tls_login() {
    let test = "https_python_loads_libssl_after_vigie_session_from_the_tls_login";
    let Some(p) = privileged(test) else {
        return;
    };
    let Some((mut portal, gate)) = python_portal(test) else {
        return;
    };
    let traces = portal.dir.path().join("traces");
    let vigie = Vigie::start(
        &p,
        "tls-python",
        &portal.session_config(),
        &["--record", traces.to_str().unwrap()],
    );
    assert!(
        !vigie.log().contains("TLS library hooked"),
        "the portal has not loaded ssl yet:\n{}",
        vigie.log()
    );
    open_gate(&mut portal, &gate);
    let hooked = wait_late_hook(&vigie);
    let a = portal.addr.clone();
    let alice = login(test, &a, "alice").unwrap();
    let carol = login(test, &a, "carol").unwrap();
    for (cookie, owner) in [(&alice, "alice"), (&alice, "bob"), (&carol, "carol")] {
        let statuses = curl(
            test,
            &["-b", cookie],
            &[https(&a, &format!("/docs/{owner}/notes.txt"))],
        )
        .unwrap();
        assert_eq!(statuses, [200], "{owner}: {}", portal.log());
    }
    if !hooked {
        // Ciphertext only: every read is unattributed, no user is ever named.
        let (alerts, log) = vigie.stop();
        assert!(
            verdicts(&alerts)
                .iter()
                .all(|(v, u, _, _)| v == "unattributed" && u == "-"),
            "{log}"
        );
        assert_clean_trace_without_requests(&trace_files(&traces));
        return;
    }
    vigie.wait_alerts("the cross read", |al| !verdicts(al).is_empty());
    let (raw, log) = vigie.stop_raw();
    let alerts = parse_alerts(&raw);
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "alice", "bob", &portal.doc("bob"))],
        "{log}"
    );
    assert_eq!(alerts[0]["identity_source"], "session");
    assert_eq!(alerts[0]["evidence"], serde_json::json!(["thread"]));
    let files = trace_files(&traces);
    let ids: Vec<String> = [&alice, &carol]
        .iter()
        .map(|c| c.trim_start_matches("session=").to_owned())
        .collect();
    assert_clean_trace(&files, &[&ids[0], &ids[1]]);
    assert!(
        trace_payloads(&files)
            .iter()
            .any(|d| bytes_contain(d, b"user=alice&password=")),
        "the login form was captured (its password redacted)"
    );
    assert_replays_identically(&p, &files, &raw, &portal.dir.path().join("replayed.jsonl"));
}

/// A Python portal that speaks HTTP/2 itself (ALPN `h2`, the `h2` library over the `ssl`
/// module), running before Vigie: the logins are HTTP/2 POSTs whose form (a request body, in
/// DATA frames) names the user the response's `Set-Cookie` binds, as an HTTP/1 login does. The
/// cross read is alerted with the session's user, own reads are silent; the trace holds the
/// login forms with their passwords masked, no session id, no frame; replay is byte-identical.
#[test]
fn https_python_http2_login_binds_the_session_from_its_form() {
    let test = "https_python_http2_login_binds_the_session_from_its_form";
    let Some(p) = privileged(test) else {
        return;
    };
    let Some(portal) = python_h2_portal(test, true) else {
        return;
    };
    let traces = portal.dir.path().join("traces");
    let vigie = Vigie::start(
        &p,
        "tls-python-h2",
        &portal.session_config(),
        &["--record", traces.to_str().unwrap()],
    );
    assert!(
        vigie.log().contains("TLS library hooked"),
        "the portal's libssl is hooked at adoption:\n{}",
        vigie.log()
    );
    let a = portal.addr.clone();
    let alice = login_with(test, &a, "alice", "--http2").unwrap();
    let carol = login_with(test, &a, "carol", "--http2").unwrap();
    // A wrong password binds nothing.
    let statuses = curl(
        test,
        &["--http2", "--data", "user=bob&password=guess"],
        &[https(&a, "/login")],
    )
    .unwrap();
    assert_eq!(statuses, [403]);
    for (cookie, owners) in [(&alice, ["alice", "bob"]), (&carol, ["carol", "carol"])] {
        let urls = owners.map(|o| https(&a, &format!("/docs/{o}/notes.txt")));
        let statuses = curl(test, &["--http2", "-b", cookie], &urls).unwrap();
        assert_eq!(statuses, [200, 200], "{owners:?}: {}", portal.log());
    }
    vigie.wait_alerts("the cross read", |al| !verdicts(al).is_empty());
    let (raw, log) = vigie.stop_raw();
    let alerts = parse_alerts(&raw);
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "alice", "bob", &portal.doc("bob"))],
        "{log}"
    );
    assert_eq!(alerts[0]["identity_source"], "session");
    assert_eq!(alerts[0]["evidence"], serde_json::json!(["fingerprint"]));
    assert!(!log.contains("unattributed"), "{log}");
    let files = trace_files(&traces);
    let ids: Vec<String> = [&alice, &carol]
        .iter()
        .map(|c| c.trim_start_matches("session=").to_owned())
        .collect();
    assert_clean_trace(&files, &[&ids[0], &ids[1]]);
    let forms: Vec<Vec<u8>> = trace_payloads(&files)
        .into_iter()
        .filter(|d| d.starts_with(b"user="))
        .collect();
    assert_eq!(
        forms,
        [
            b"user=alice&password=********".to_vec(),
            b"user=carol&password=********".to_vec(),
            b"user=bob&password=*****".to_vec(),
        ],
        "the login forms, passwords masked"
    );
    assert_no_http2_frames(&files);
    assert_replays_identically(&p, &files, &raw, &portal.dir.path().join("replayed.jsonl"));
}

/// An HTTP/2 connection opened before Vigie started (a client keeping one connection to
/// nginx): Vigie never saw its preface nor its HPACK tables, so it cannot follow it. Its first
/// read Vigie sees is whole HTTP/2 frames: the connection is lost for good at once
/// (`unreadable`, counted as `http2_lost`), never read as HTTP/1, and the documents it serves
/// are `unattributed`, never anybody's. A connection opened after the start is followed.
#[test]
fn https_nginx_http2_connection_open_before_vigie_is_never_attributed() {
    let test = "https_nginx_http2_connection_open_before_vigie_is_never_attributed";
    let Some(p) = privileged(test) else {
        return;
    };
    let Some(nginx) = nginx(test) else {
        return;
    };
    let a = nginx.addr.clone();
    let doc = |owner: &str| format!("/users/{owner}/notes.txt");
    let after = [doc("alice"), doc("bob")];
    let after: Vec<&str> = after.iter().map(String::as_str).collect();
    let Some(client) = H2Client::start(test, &a, "carol", &[&doc("carol")], &after) else {
        return;
    };
    let vigie = Vigie::start(
        &p,
        "tls-nginx-h2-joined",
        &nginx.config(&format!("pids = [{}]", nginx.pid()), "\"basic\"", ""),
        &[],
    );
    if !vigie.log().contains("TLS library hooked") {
        eprintln!("NOTE: {test}: nginx's libssl not hooked on this kernel: nothing to check");
        return;
    }
    assert_eq!(client.go(2), [200, 200]);
    // A new connection of the same user: followed from its preface.
    let statuses = curl(
        test,
        &["--http2", "-u", "carol:carol-pw"],
        &[https(&a, &doc("alice"))],
    )
    .unwrap();
    assert_eq!(statuses, [200]);
    vigie.wait_alerts("the three reads", |al| verdicts(al).len() >= 3);
    let (raw, log) = vigie.stop_raw();
    let mut want = vec![
        t("unattributed", "-", "alice", &nginx.doc("alice")),
        t("unattributed", "-", "bob", &nginx.doc("bob")),
        t("violation", "carol", "alice", &nginx.doc("alice")),
    ];
    want.sort();
    assert_eq!(verdicts(&parse_alerts(&raw)), want, "{log}");
    assert!(
        log.contains("\"unreadable\""),
        "the joined connection's reads are unreadable:\n{log}"
    );
}

/// `Upgrade: h2c` (curl `--http2` on `http://`) to a Python portal that switches: Vigie does
/// not follow HTTP/2 reached that way. The connection is lost at the `101` (counted as
/// `http2_lost`, its later reads `unreadable`), its HTTP/2 bytes never read as HTTP/1, and
/// what it serves is `unattributed`, never anybody's; the login before it, over HTTP/1.1,
/// binds its session as usual, and an HTTP/1.1 cross read after it is alerted. The trace is
/// recorded (and shown on failure).
#[test]
fn h2c_upgrade_is_an_unreadable_connection_never_attributed() {
    let test = "h2c_upgrade_is_an_unreadable_connection_never_attributed";
    let Some(p) = privileged(test) else {
        return;
    };
    let Some(portal) = python_h2_portal(test, false) else {
        return;
    };
    let traces = portal.dir.path().join("traces");
    let vigie = Vigie::start(
        &p,
        "h2c-upgrade",
        &portal.session_config(),
        &["--record", traces.to_str().unwrap()],
    );
    let a = portal.addr.clone();
    let http = |owner: &str| format!("http://{a}/docs/{owner}/notes.txt");
    let Some(curl_bin) = require_tool(test, "curl") else {
        return;
    };
    let out = std::process::Command::new(&curl_bin)
        .args(["-s", "--http1.1", "-o", "/dev/null", "-D", "-", "--data"])
        .arg("user=alice&password=alice-pw")
        .arg(format!("http://{a}/login"))
        .output()
        .expect("running curl");
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie in {head}"))
        .to_owned();
    // The upgrade request (stream 1) and a second request on the upgraded connection.
    let out = std::process::Command::new(&curl_bin)
        .args([
            "-s",
            "--http2",
            "-b",
            &cookie,
            "-w",
            "%{http_code} %{http_version}\\n",
        ])
        .args([
            "-o",
            "/dev/null",
            &http("bob"),
            "-o",
            "/dev/null",
            &http("alice"),
        ])
        .output()
        .expect("running curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 2\n200 2\n",
        "curl upgraded to h2c"
    );
    // Then HTTP/1.1 as usual: the cross read is alerted (another document: the same content
    // could claim the upgraded connection's read, waiting for a response that names it).
    let statuses = curl(test, &["--http1.1", "-b", &cookie], &[http("carol")]).unwrap();
    assert_eq!(statuses, [200]);
    vigie.wait_alerts("the three reads", |al| verdicts(al).len() >= 3);
    let (raw, log) = vigie.stop_raw();
    let trace: String = trace_files(&traces)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let log = format!("{log}\ntrace:\n{trace}");
    let mut want = vec![
        t("unattributed", "-", "alice", &portal.doc("alice")),
        t("unattributed", "-", "bob", &portal.doc("bob")),
        t("violation", "alice", "carol", &portal.doc("carol")),
    ];
    want.sort();
    assert_eq!(verdicts(&parse_alerts(&raw)), want, "{log}");
    assert!(
        log.contains("\"unreadable\"") && log.contains("\"http2\""),
        "the upgraded connection is lost, its reads unreadable:\n{log}"
    );
}
