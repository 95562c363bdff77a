//! End-to-end: the demo portal serves documents, a real `vigie` watches it with real probes, and
//! each test asserts the exact set of alerts. Needs root (see `crate::harness::privileged`).

use crate::harness::*;

const HR: &str = "health-record.pdf";
const NOTES: &str = "notes.txt";

#[test]
fn own_document_raises_nothing() {
    let Some(p) = privileged("own_document_raises_nothing") else {
        return;
    };
    let (portal, vigie) = start_watched(&p, "own", &["--model", "thread"], &[]);
    assert_eq!(
        get_as(&portal.addr(), "alice", "/docs/alice/health-record.pdf"),
        200
    );
    assert_eq!(get_as(&portal.addr(), "bob", "/docs/bob/notes.txt"), 200);
    let (alerts, log) = vigie.stop();
    assert_eq!(verdicts(&alerts), [], "{log}");
    assert!(
        log.contains("accesses {\"allowed\": 2}"),
        "both reads seen and allowed:\n{log}"
    );
}

#[test]
fn cross_user_read_is_exactly_one_violation() {
    let Some(p) = privileged("cross_user_read_is_exactly_one_violation") else {
        return;
    };
    let (portal, vigie) = start_watched(&p, "cross", &["--model", "thread"], &[]);
    assert_eq!(
        get_as(&portal.addr(), "alice", "/docs/alice/health-record.pdf"),
        200
    );
    assert_eq!(
        get_as(&portal.addr(), "alice", "/docs/bob/health-record.pdf"),
        200
    );
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "alice", "bob", &portal.doc("bob", HR))],
        "{log}"
    );
    let a = &alerts[0];
    assert_eq!(a["pid"], portal.guard.pid());
    assert_eq!(a["request"]["method"], "GET");
    assert_eq!(a["request"]["target"], "/docs/bob/health-record.pdf");
    assert_eq!(a["identity_source"], "trusted_header");
    assert_eq!(a["evidence"], serde_json::json!(["thread"]));
    assert_eq!(
        a["bytes"].as_u64(),
        Some(std::fs::metadata(portal.doc("bob", HR)).unwrap().len())
    );
    assert!(a["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    // The client, from the kernel's socket at accept (the client's port is the OS's choice).
    assert_eq!(a["client"]["family"], "ipv4", "{a:#}");
    assert_eq!(a["client"]["ip"], "127.0.0.1");
    assert!(a["client"]["port"].as_u64().is_some_and(|p| p > 0));
    assert_eq!(a["request"]["peer"]["ip"], "127.0.0.1");
    assert!(
        a["incident"]
            .as_str()
            .is_some_and(|i| i.starts_with("inc-"))
    );
}

#[test]
fn basic_auth_identity_and_privileged_user() {
    let Some(p) = privileged("basic_auth_identity_and_privileged_user") else {
        return;
    };
    let (portal, vigie) = start_watched(&p, "basic", &["--model", "thread"], &[]);
    let addr = portal.addr();
    // The privileged agent reads anyone's documents: allowed.
    let agent = basic("agent", "s3cret-agent-password");
    assert_eq!(
        http_get(
            &addr,
            "/docs/bob/health-record.pdf",
            &[("Authorization", &agent)]
        )
        .unwrap()
        .0,
        200
    );
    // carol over Basic reads bob's notes: violation.
    let carol = basic("carol", "carols-password");
    assert_eq!(
        http_get(&addr, "/docs/bob/notes.txt", &[("Authorization", &carol)])
            .unwrap()
            .0,
        200
    );
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "carol", "bob", &portal.doc("bob", NOTES))],
        "{log}"
    );
    assert_eq!(alerts[0]["identity_source"], "basic");
    let everything = format!("{alerts:?}{log}");
    for secret in ["s3cret-agent-password", "carols-password"] {
        assert!(
            !everything.contains(secret),
            "a password leaked into alerts or logs"
        );
    }
}

#[test]
fn unauthenticated_read_is_alerted() {
    let Some(p) = privileged("unauthenticated_read_is_alerted") else {
        return;
    };
    let (portal, vigie) =
        start_watched(&p, "anon", &["--model", "thread", "--allow-anonymous"], &[]);
    assert_eq!(
        http_get(&portal.addr(), "/docs/carol/notes.txt", &[])
            .unwrap()
            .0,
        200
    );
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t(
            "unauthenticated",
            "-",
            "carol",
            &portal.doc("carol", NOTES)
        )],
        "{log}"
    );
}

#[test]
fn keep_alive_connection_with_two_users_in_turn() {
    let Some(p) = privileged("keep_alive_connection_with_two_users_in_turn") else {
        return;
    };
    let (portal, vigie) = start_watched(&p, "keepalive", &["--model", "thread"], &[]);
    let mut conn = KeepAlive::connect(&portal.addr()).unwrap();
    assert_eq!(
        conn.get("/docs/alice/notes.txt", &[("X-Remote-User", "alice")])
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        conn.get("/docs/alice/notes.txt", &[("X-Remote-User", "bob")])
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        conn.get("/docs/bob/notes.txt", &[("X-Remote-User", "bob")])
            .unwrap()
            .0,
        200
    );
    drop(conn);
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "bob", "alice", &portal.doc("alice", NOTES))],
        "{log}"
    );
}

#[test]
fn prefork_workers_forked_after_vigie_started_with_sendfile_bodies() {
    let Some(p) = privileged("prefork_workers_forked_after_vigie_started_with_sendfile_bodies")
    else {
        return;
    };
    // The master forks its workers 1.5 s after listening (times the test time scale): Vigie is
    // attached by then.
    let portal = Portal::start(
        "prefork",
        &[
            "--model",
            "prefork",
            "--workers",
            "2",
            "--fork-delay-ms",
            &fork_delay_ms(),
        ],
    );
    let master = portal.guard.pid();
    let vigie = Vigie::start(
        &p,
        "prefork",
        &portal.config(&format!("pids = [{master}]")),
        &[],
    );
    // Requests queue in the listen backlog until the workers exist.
    assert_eq!(
        get_as(&portal.addr(), "bob", "/docs/bob/disability-file.pdf"),
        200
    );
    assert_eq!(
        get_as(&portal.addr(), "alice", "/docs/bob/disability-file.pdf"),
        200
    );
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t(
            "violation",
            "alice",
            "bob",
            &portal.doc("bob", "disability-file.pdf")
        )],
        "{log}"
    );
    let a = &alerts[0];
    assert_ne!(a["pid"], master, "served by a worker, not the master");
    assert_eq!(a["evidence"], serde_json::json!(["sendfile"]));
    assert!(log.contains("process_fork"), "forks seen:\n{log}");
}

#[test]
fn pool_threads_serve_what_the_acceptor_accepted() {
    let Some(p) = privileged("pool_threads_serve_what_the_acceptor_accepted") else {
        return;
    };
    let (portal, vigie) = start_watched(&p, "pool", &["--model", "pool", "--workers", "3"], &[]);
    let addr = portal.addr();
    // Concurrent clients: each thread's reads belong to the request that thread read.
    let handles: Vec<_> = [
        ("alice", "alice"),
        ("bob", "alice"),
        ("carol", "carol"),
        ("alice", "bob"),
    ]
    .into_iter()
    .map(|(user, owner)| {
        let addr = addr.clone();
        std::thread::spawn(move || get_as(&addr, user, &format!("/docs/{owner}/notes.txt")))
    })
    .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [
            t("violation", "alice", "bob", &portal.doc("bob", NOTES)),
            t("violation", "bob", "alice", &portal.doc("alice", NOTES)),
        ],
        "{log}"
    );
}

#[test]
fn cached_document_fd_opened_before_vigie_is_reused_across_users() {
    let Some(p) = privileged("cached_document_fd_opened_before_vigie_is_reused_across_users")
    else {
        return;
    };
    // The portal opens bob's health record into its file cache at start-up, before Vigie runs.
    let (portal, vigie) = start_watched(&p, "cache", &["--model", "thread", "--cache"], &[]);
    let mut conn = KeepAlive::connect(&portal.addr()).unwrap();
    assert_eq!(
        conn.get("/docs/bob/health-record.pdf", &[("X-Remote-User", "bob")])
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        conn.get("/docs/bob/health-record.pdf", &[("X-Remote-User", "alice")])
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        conn.get("/docs/bob/health-record.pdf", &[("X-Remote-User", "agent")])
            .unwrap()
            .0,
        200
    );
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "alice", "bob", &portal.doc("bob", HR))],
        "{log}"
    );
    // bob's document was never opened while Vigie watched: its fd was resolved from /proc.
    assert!(
        !log.contains("\"file_open\""),
        "expected no open events:\n{log}"
    );
}

#[test]
fn dotdot_in_the_request_path_is_judged_on_the_real_file() {
    let Some(p) = privileged("dotdot_in_the_request_path_is_judged_on_the_real_file") else {
        return;
    };
    let (portal, vigie) = start_watched(&p, "dotdot", &["--model", "thread"], &[]);
    assert_eq!(
        get_as(&portal.addr(), "alice", "/docs/alice/../bob/notes.txt"),
        200
    );
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "alice", "bob", &portal.doc("bob", NOTES))],
        "{log}"
    );
    assert_eq!(
        alerts[0]["request"]["target"],
        "/docs/alice/../bob/notes.txt"
    );
}

#[test]
fn non_documents_and_non_targets_raise_nothing() {
    let Some(p) = privileged("non_documents_and_non_targets_raise_nothing") else {
        return;
    };
    let (portal, vigie) = start_watched(&p, "nondoc", &["--model", "thread"], &[]);
    // Every request also reads the portal's database (outside the document roots).
    assert_eq!(
        http_get(&portal.addr(), "/public/welcome.txt", &[])
            .unwrap()
            .0,
        200
    );
    // Another process reads bob's documents: not a target.
    let out = std::process::Command::new("cat")
        .arg(portal.doc("bob", HR))
        .output()
        .unwrap();
    assert!(out.status.success() && !out.stdout.is_empty());
    let (alerts, log) = vigie.stop();
    assert_eq!(verdicts(&alerts), [], "{log}");
    assert!(
        !log.contains("\"file_open\""),
        "no document open events at all:\n{log}"
    );
}

#[test]
fn target_started_after_vigie_is_picked_up_by_name() {
    let Some(p) = privileged("target_started_after_vigie_is_picked_up_by_name") else {
        return;
    };
    let dir = TempDir::new("byname");
    let users = dir.path().join("portal/users");
    let config = format!(
        "[targets]\nnames = [\"demo-portal\"]\n[documents]\nroots = [\"{u}\"]\nowner_templates = [\"{u}/{{owner}}/**\"]\n",
        u = users.display()
    );
    let vigie = Vigie::start(&p, "byname", &config, &[]);
    let root = dir.path().join("portal");
    let portal = spawn_portal(
        PORTAL,
        [
            "--root",
            root.to_str().unwrap(),
            "--generate",
            "--model",
            "thread",
        ],
    )
    .unwrap();
    assert_eq!(get_as(portal.addr(), "carol", "/docs/alice/notes.txt"), 200);
    let (alerts, log) = vigie.stop();
    let doc = users.join("alice/notes.txt").display().to_string();
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "carol", "alice", &doc)],
        "{log}"
    );
    assert_eq!(alerts[0]["pid"], portal.pid());
}

#[test]
fn hostile_input_has_defined_outcomes_and_the_daemon_keeps_running() {
    let Some(p) = privileged("hostile_input_has_defined_outcomes_and_the_daemon_keeps_running")
    else {
        return;
    };
    let (portal, mut vigie) = start_watched(
        &p,
        "hostile",
        &["--model", "thread", "--allow-anonymous"],
        &[],
    );
    let addr = portal.addr();
    // Garbage bytes: the portal answers 400, no document is read, no alert.
    let _ = send_raw(
        &addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    );
    let _ = send_raw(&addr, &[0xff; 3000]);
    // A head the portal reads in two 4 KiB reads, the identity header past the first: the head
    // is reassembled across the reads, so alice reading her own notes is no alert.
    let big = format!(
        "GET /docs/alice/notes.txt HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\nX-Remote-User: alice\r\nConnection: close\r\n\r\n",
        "p".repeat(6000)
    );
    let _ = send_raw(&addr, big.as_bytes());
    // Invalid Basic encoding: no identity from it (the portal serves anonymously).
    let _ = http_get(
        &addr,
        "/docs/bob/notes.txt",
        &[("Authorization", "Basic %%%not-base64%%%")],
    );
    // Non-UTF-8 bytes in the path: the portal 404s; nothing under the roots is opened.
    let _ = send_raw(&addr, b"GET /docs/alice/\xff\xfe.pdf HTTP/1.1\r\nX-Remote-User: alice\r\nConnection: close\r\n\r\n");
    assert!(
        vigie.alive(),
        "vigie died on hostile input:\n{}",
        vigie.log()
    );
    // And it still judges correctly afterwards.
    assert_eq!(get_as(&addr, "alice", "/docs/carol/notes.txt"), 200);
    vigie.wait_alerts("the final violation", |a| {
        a.iter()
            .any(|x| x["user"] == "alice" && x["owner"] == "carol")
    });
    let (alerts, log) = vigie.stop();
    let got = verdicts(&alerts);
    assert_eq!(
        got,
        [
            t("unauthenticated", "-", "bob", &portal.doc("bob", NOTES)),
            t("violation", "alice", "carol", &portal.doc("carol", NOTES)),
        ],
        "{log}"
    );
    let bad_basic = alerts.iter().find(|a| a["owner"] == "bob").unwrap();
    assert_eq!(bad_basic["request"]["identity_problem"], "invalid_basic");
}

#[test]
fn capabilities_are_dropped_once_attached_and_workers_are_still_followed() {
    let Some(p) =
        privileged("capabilities_are_dropped_once_attached_and_workers_are_still_followed")
    else {
        return;
    };
    // Workers fork after Vigie has dropped its capabilities: following them needs map updates
    // and /proc reads with what is left.
    let (portal, vigie) = start_watched(
        &p,
        "caps",
        &[
            "--model",
            "prefork",
            "--workers",
            "2",
            "--fork-delay-ms",
            &fork_delay_ms(),
        ],
        &[],
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", vigie.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap_or(u64::MAX))
            .unwrap_or(u64::MAX)
    };
    // CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_PERFMON (38: TLS libraries mapped
    // later get their uprobes), CAP_BPF (39).
    let kept = (1u64 << 2) | (1 << 19) | (1 << 38) | (1 << 39);
    assert_eq!(field("CapEff:"), kept, "{status}");
    assert_eq!(field("CapPrm:"), kept, "{status}");
    assert_eq!(field("CapBnd:"), kept, "{status}");
    assert_eq!(field("CapInh:"), 0, "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')),
        "{status}"
    );
    // The reader runs above the portal's priority (`kernel.reader_nice`, -10 by default): field
    // 19 of /proc/<pid>/stat, after the parenthesised name.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", vigie.pid())).unwrap();
    let nice = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(16))
        .and_then(|v| v.parse::<i32>().ok());
    assert_eq!(nice, Some(-10), "{stat}");
    assert_eq!(get_as(&portal.addr(), "carol", "/docs/bob/notes.txt"), 200);
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "carol", "bob", &portal.doc("bob", NOTES))],
        "{log}"
    );
    assert_ne!(
        alerts[0]["pid"],
        portal.guard.pid(),
        "served by a worker forked after the drop"
    );
}

#[test]
fn a_document_read_then_refused_is_still_a_read_and_the_alert_says_so() {
    let Some(p) = privileged("a_document_read_then_refused_is_still_a_read_and_the_alert_says_so")
    else {
        return;
    };
    let (portal, vigie) = start_watched(
        &p,
        "late-check",
        &["--model", "thread", "--late-check"],
        &[],
    );
    assert_eq!(
        get_as(&portal.addr(), "alice", "/docs/alice/notes.txt"),
        200
    );
    assert_eq!(get_as(&portal.addr(), "alice", "/docs/bob/notes.txt"), 403);
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "alice", "bob", &portal.doc("bob", NOTES))],
        "{log}"
    );
    assert_eq!(alerts[0]["request"]["status"], 403);
    assert_eq!(alerts[0]["refused_after_read"], true);
}
