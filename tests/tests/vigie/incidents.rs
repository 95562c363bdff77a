//! From alert to incident, end to end on the demo portal with real probes: the client of each
//! connection from the kernel (IPv4 through a dual-stack socket, IPv6 on `::1`), forwarded
//! headers believed from a real nginx reverse proxy and ignored from anyone else, session
//! handles, an enumeration crossing its threshold once, a privileged bulk read, incidents that
//! replay gives back byte for byte, and the incident webhook with its receiver down, then back.

use std::{
    ffi::OsStr,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use crate::harness::{
    Portal, TempDir, Vigie, free_port, nginx::Nginx, poll_until, privileged, trace_files, vigie_cmd,
};
use serde_json::Value;

/// `GET target` as `user` on a new connection to `addr`, with extra headers; returns the
/// status and the client's own address (what Vigie must name).
fn get(
    addr: &str,
    user: &str,
    target: &str,
    extra: &[(&str, &str)],
) -> (u16, std::net::SocketAddr) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = s.local_addr().unwrap();
    let mut head = format!(
        "GET {target} HTTP/1.1\r\nHost: portal\r\nX-Remote-User: {user}\r\nConnection: close\r\n"
    );
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let status = std::str::from_utf8(&resp[..12.min(resp.len())])
        .ok()
        .and_then(|l| l.get(9..12))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, local)
}

fn violations_of<'a>(alerts: &'a [Value], user: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["type"] == "access" && a["verdict"] == "violation" && a["user"] == user)
        .collect()
}

#[test]
fn clients_from_the_kernel_and_from_trusted_proxies_only() {
    let Some(p) = privileged("clients_from_the_kernel_and_from_trusted_proxies_only") else {
        return;
    };
    // Dual-stack: IPv4 clients arrive as v4-mapped addresses, IPv6 ones as they are.
    let portal = Portal::start("clients", &["--model", "thread", "--listen", "[::]:0"]);
    let port: u16 = portal
        .guard
        .addr()
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("the portal's port");
    let Some(proxy) = Nginx::reverse_proxy("clients", &format!("127.0.0.1:{port}"), "127.0.0.2")
    else {
        return;
    };
    let config = format!(
        "{}[clients]\ntrusted_proxies = [\"127.0.0.2\"]\n",
        portal.config_by_pid()
    );
    let vigie = Vigie::start(&p, "clients", &config, &[]);
    let v4 = format!("127.0.0.1:{port}");
    let v6 = format!("[::1]:{port}");
    // Direct, IPv4, claiming to be someone else: the claim is not believed.
    let (status, direct4) = get(
        &v4,
        "mallory",
        "/docs/alice/notes.txt",
        &[
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Real-IP", "203.0.113.9"),
        ],
    );
    assert_eq!(status, 200);
    // Direct, IPv6.
    let (status, direct6) = get(&v6, "mallory", "/docs/bob/notes.txt", &[]);
    assert_eq!(status, 200);
    // Through the trusted proxy, with a forged hop of its own on the left.
    let (status, _) = get(
        &proxy.addr,
        "trudy",
        "/docs/carol/notes.txt",
        &[("X-Forwarded-For", "198.51.100.7")],
    );
    assert_eq!(status, 200, "{}", proxy.error_log());
    let alerts = vigie.wait_alerts("three violations", |a| {
        violations_of(a, "mallory").len() == 2 && violations_of(a, "trudy").len() == 1
    });
    let (_, log) = vigie.stop();
    let by_doc = |owner: &str| {
        alerts
            .iter()
            .find(|a| a["verdict"] == "violation" && a["owner"] == owner)
            .unwrap_or_else(|| panic!("no violation on {owner}'s document: {alerts:#?}\n{log}"))
    };
    let alice = by_doc("alice");
    assert_eq!(alice["client"]["family"], "ipv4", "{alice:#}");
    assert_eq!(alice["client"]["ip"], "127.0.0.1");
    assert_eq!(alice["client"]["port"], direct4.port());
    assert_eq!(alice["client"]["source"], "peer");
    assert_eq!(alice["client"]["forwarded_ignored"], true);
    assert_eq!(
        alice["request"]["peer"]["family"], "ipv6",
        "the v4-mapped socket address"
    );
    assert_eq!(alice["request"]["peer"]["ip"], "::ffff:127.0.0.1");
    let bob = by_doc("bob");
    assert_eq!(bob["client"]["family"], "ipv6", "{bob:#}");
    assert_eq!(bob["client"]["ip"], "::1");
    assert_eq!(bob["client"]["port"], direct6.port());
    assert!(bob["client"].get("forwarded_ignored").is_none());
    let carol = by_doc("carol");
    eprintln!("through the proxy: {carol}");
    assert_eq!(carol["client"]["source"], "x_forwarded_for", "{carol:#}");
    // nginx appended the address the client connected from; the client's own entry is ignored.
    assert_eq!(carol["client"]["ip"], "127.0.0.1");
    assert_eq!(carol["client"]["proxies"], serde_json::json!(["127.0.0.2"]));
    assert_eq!(carol["request"]["peer"]["ip"], "::ffff:127.0.0.2");
    // Each user has an incident of their own.
    assert_eq!(alice["incident"], bob["incident"]);
    assert_ne!(alice["incident"], carol["incident"]);
}

#[test]
fn enumeration_once_privileged_bulk_and_replayed_incidents() {
    let Some(p) = privileged("enumeration_once_privileged_bulk_and_replayed_incidents") else {
        return;
    };
    let portal = Portal::start("enumeration", &["--model", "thread"]);
    let traces = TempDir::new("enumeration-traces");
    let trace_dir = traces.path().join("t");
    let config = format!(
        "{}[incidents]\nenumeration = {{ owners = 3, window_s = 600 }}\nprivileged_bulk = {{ owners = 3, window_s = 600 }}\n",
        portal.config_by_pid()
    );
    let vigie = Vigie::start(
        &p,
        "enumeration",
        &config,
        &["--record", trace_dir.to_str().unwrap()],
    );
    let addr = portal.addr();
    // mallory walks through the documents: 3 owners (the threshold), then more of the same.
    let walk = [
        "/docs/alice/notes.txt",
        "/docs/bob/notes.txt",
        "/docs/carol/notes.txt",
        "/docs/alice/health-record.pdf",
        "/docs/bob/health-record.pdf",
        "/docs/carol/health-record.pdf",
    ];
    for (i, doc) in walk.iter().enumerate() {
        assert_eq!(get(&addr, "mallory", doc, &[]).0, 200);
        // One read at a time: the alert lines come in the order of the walk.
        vigie.wait_alerts("mallory's read", |a| {
            violations_of(a, "mallory").len() == i + 1
        });
    }
    // The agent (privileged) reads every owner's documents: each read allowed.
    for owner in ["alice", "bob", "carol"] {
        assert_eq!(
            get(
                &addr,
                "agent",
                &format!("/docs/{owner}/disability-file.pdf"),
                &[]
            )
            .0,
            200
        );
    }
    vigie.wait_alerts("the privileged bulk read", |a| {
        a.iter().any(|l| l["type"] == "privileged_bulk")
    });
    let (live_raw, log) = vigie.stop_raw();
    let alerts = crate::harness::parse_alerts(&live_raw);
    let enumerations: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["type"] == "enumeration")
        .collect();
    assert_eq!(enumerations.len(), 1, "exactly once: {alerts:#?}\n{log}");
    let e = enumerations[0];
    // What the analyst sees (printed for the record of a run).
    eprintln!("incident lines:\n{}\n{}", alerts[0], e);
    assert_eq!(e["user"], "mallory");
    assert_eq!(
        (e["owners"].as_u64(), e["threshold"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(e["documents"], 3);
    assert!(e["first_access"].as_str() <= e["last_access"].as_str());
    // It came right after the read that crossed the threshold, in that read's incident.
    let pos = alerts
        .iter()
        .position(|a| a["type"] == "enumeration")
        .unwrap();
    assert_eq!(
        alerts[pos - 1]["document"],
        portal.doc("carol", "notes.txt")
    );
    let mallory = violations_of(&alerts, "mallory");
    assert_eq!(mallory.len(), 6);
    assert!(
        mallory.iter().all(|a| a["incident"] == e["incident"]),
        "one incident: {mallory:#?}"
    );
    assert_eq!(e["access_ids"].as_array().unwrap().len(), 3);
    let bulk: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["type"] == "privileged_bulk")
        .collect();
    assert_eq!(bulk.len(), 1, "{alerts:#?}");
    assert_eq!(bulk[0]["user"], "agent");
    assert_ne!(bulk[0]["incident"], e["incident"]);
    // The agent's reads themselves are allowed: no access line without --audit.
    assert!(
        !alerts
            .iter()
            .any(|a| a["type"] == "access" && a["user"] == "agent")
    );

    // Replay: the same lines, incidents and enumerations included, byte for byte.
    let replayed = traces.path().join("replayed.jsonl");
    let files = trace_files(&trace_dir);
    let mut args: Vec<&OsStr> = vec![OsStr::new("replay")];
    args.extend(files.iter().map(|f| f.as_os_str()));
    args.extend([OsStr::new("--alerts"), replayed.as_os_str()]);
    let (ok, _, stderr) = vigie_cmd(&p, &args);
    assert!(ok, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&replayed).unwrap(),
        live_raw,
        "replay differs"
    );
}

/// A webhook receiver on `port`: accepts connections, answers 200, sends each body to `tx`.
fn receiver(listener: TcpListener, tx: std::sync::mpsc::Sender<Value>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then Content-Length bytes of body.
            let body = loop {
                let Ok(n) = conn.read(&mut chunk) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break Some(buf[end + 4..end + 4 + len].to_vec());
                }
            };
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if let Some(body) = body.and_then(|b| serde_json::from_slice(&b).ok()) {
                let _ = tx.send(body);
            }
        }
    });
}

#[test]
fn webhook_once_per_incident_with_its_receiver_down_then_back() {
    let Some(p) = privileged("webhook_once_per_incident_with_its_receiver_down_then_back") else {
        return;
    };
    let portal = Portal::start("webhook", &["--model", "thread"]);
    let port = free_port();
    let config = format!(
        "{}[incidents.webhook]\nurl = \"http://127.0.0.1:{port}/incident\"\ntimeout_ms = 1000\nretries = 10\nretry_ms = 200\n",
        portal.config_by_pid()
    );
    let vigie = Vigie::start(&p, "webhook", &config, &[]);
    let addr = portal.addr();
    // The receiver is down: the alert is written all the same, without waiting for the hook.
    assert_eq!(get(&addr, "mallory", "/docs/alice/notes.txt", &[]).0, 200);
    assert_eq!(get(&addr, "mallory", "/docs/bob/notes.txt", &[]).0, 200);
    let alerts = vigie.wait_alerts("mallory's violations", |a| {
        violations_of(a, "mallory").len() == 2
    });
    let incident = violations_of(&alerts, "mallory")[0]["incident"].clone();
    assert!(incident.is_string(), "{alerts:#?}");
    // Back: the retries deliver the incident, once for both violations.
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("binding the receiver's port");
    let (tx, rx) = std::sync::mpsc::channel();
    receiver(listener, tx);
    let first = poll_until(
        "the incident at the webhook",
        Duration::from_secs(20),
        || rx.try_recv().ok(),
        || vigie.log(),
    );
    eprintln!("webhook body: {first}");
    assert_eq!(first["schema"], "vigie.incident/1");
    assert_eq!(first["incident"], incident);
    assert_eq!(first["opened_by"], "violation");
    assert_eq!(first["alert"]["user"], "mallory");
    assert_eq!(first["alert"]["owner"], "alice");
    // Another user's violation is another incident, the next (and only other) call: the
    // queue is in order, so mallory's second violation made none.
    assert_eq!(get(&addr, "trudy", "/docs/carol/notes.txt", &[]).0, 200);
    let second = poll_until(
        "the second incident at the webhook",
        Duration::from_secs(20),
        || rx.try_recv().ok(),
        || vigie.log(),
    );
    assert_eq!(second["alert"]["user"], "trudy", "{second:#}");
    assert_ne!(second["incident"], incident);
    let (_, log) = vigie.stop();
    assert!(rx.try_recv().is_err(), "one call per incident\n{log}");
}

#[test]
fn session_handles_name_the_token_never_show_it() {
    let Some(p) = privileged("session_handles_name_the_token_never_show_it") else {
        return;
    };
    let portal = Portal::start("handles", &["--model", "thread"]);
    let keys = TempDir::new("handles-keys");
    let secret = "incidents-e2e-hs256-secret";
    let secret_file = keys.path().join("portal.secret");
    std::fs::write(&secret_file, secret).unwrap();
    let u = portal.users.display();
    let config = format!(
        "[targets]\npids = [{pid}]\n[documents]\nroots = [\"{u}\"]\n\
         owner_templates = [\"{u}/{{owner}}/**\"]\n[identity]\nsources = [\"jwt\"]\n\
         [identity.jwt]\nhs256_secret_file = \"{s}\"\n",
        pid = portal.guard.pid(),
        s = secret_file.display()
    );
    let vigie = Vigie::start(&p, "handles", &config, &[]);
    let token = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let with_jti = token(serde_json::json!({"sub": "mallory", "jti": "sess-42"}));
    let without = token(serde_json::json!({"sub": "trudy", "iat": 1}));
    for (t, doc) in [
        (&with_jti, "/docs/alice/notes.txt"),
        (&without, "/docs/bob/notes.txt"),
    ] {
        let value = format!("Bearer {t}");
        let (status, _) =
            crate::harness::http_get(&portal.addr(), doc, &[("Authorization", &value)]).unwrap();
        assert_eq!(status, 200);
    }
    let alerts = vigie.wait_alerts("two violations", |a| {
        violations_of(a, "mallory").len() == 1 && violations_of(a, "trudy").len() == 1
    });
    let (raw, log) = vigie.stop_raw();
    assert_eq!(
        violations_of(&alerts, "mallory")[0]["session"],
        "jti:sess-42",
        "{log}"
    );
    let hashed = violations_of(&alerts, "trudy")[0]["session"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(hashed.starts_with("t:") && hashed.len() == 18, "{hashed}");
    // The signatures (the secret part) are nowhere in the alerts.
    for t in [&with_jti, &without] {
        let signature = t.rsplit('.').next().unwrap();
        assert!(!raw.contains(signature));
    }
    // The analyst computes the same handle from the token the portal logged (stdin only).
    let out = std::process::Command::new(&p.vigie)
        .args(["session-handle", "--kind", "bearer"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{without}\n{with_jti}\n").as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{hashed}\njti:sess-42\n")
    );
}
