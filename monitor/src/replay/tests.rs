//! Bad traces and the RFC 3339 parser. Live-vs-replay identity is proven end to end in
//! tests/tests/vigie/replay.rs.

use monitor_core::events::Payload;

use super::*;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vigie-replay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn header_line() -> String {
    let cfg = Config::parse(
        "[documents]\nroots = [\"/srv/users\"]\nowner_templates = [\"/srv/users/{owner}/**\"]\n",
        "t",
    )
    .unwrap();
    serde_json::to_string(&crate::sinks::trace::header(
        &cfg,
        WallClock {
            realtime_offset_ns: 0,
        },
    ))
    .unwrap()
}

fn line(ev: &Event) -> String {
    serde_json::to_string(ev).unwrap()
}

/// alice reads bob's document: one violation.
fn events() -> Vec<Event> {
    let e = |ts, kind| Event {
        ts_ns: ts,
        pid: 1,
        tid: 2,
        comm: "p".into(),
        goid: None,
        kind,
    };
    let head = b"GET /b HTTP/1.1\r\nX-Remote-User: alice\r\n\r\n".to_vec();
    vec![
        e(
            10,
            EventKind::SockRead {
                fd: 5,
                bytes: head.len() as u64,
                data: Payload(head),
            },
        ),
        e(
            20,
            EventKind::FileOpen {
                fd: 7,
                path: "/srv/users/bob/x".into(),
                dirfd: -100,
                truncated: false,
                base: None,
                full_path: None,
                flags: 0,
                exact: false,
            },
        ),
        e(
            30,
            EventKind::FileRead {
                fd: 7,
                bytes: 9,
                fp: None,
                size: None,
            },
        ),
        e(40, EventKind::FileClose { fd: 7 }),
    ]
}

fn write(path: &Path, lines: &[String], tail: &str) {
    let mut f = File::create(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    f.write_all(tail.as_bytes()).unwrap();
}

fn opts(files: Vec<PathBuf>, alerts: &Path) -> ReplayOptions {
    ReplayOptions {
        files,
        config: None,
        alerts: Some(alerts.to_path_buf()),
        audit: false,
        since_ns: None,
        until_ns: None,
        pids: vec![],
        on_corrupt: OnCorrupt::Stop,
        explain: None,
        progress: false,
    }
}

fn good_lines() -> Vec<String> {
    let mut lines = vec![header_line()];
    lines.extend(events().iter().map(line));
    lines
}

#[test]
fn replays_a_trace() {
    let d = dir("good");
    let trace = d.join("t.jsonl");
    write(&trace, &good_lines(), "");
    let s = replay(&opts(vec![trace], &d.join("a"))).unwrap();
    assert_eq!(
        (s.events, s.by_verdict.get("violation").copied()),
        (4, Some(1))
    );
    assert_eq!(s.violations_by_user.get("alice"), Some(&1));
    let alerts = std::fs::read_to_string(d.join("a")).unwrap();
    assert_eq!(alerts.lines().count(), 1);
}

#[test]
fn truncated_last_line_is_ignored_with_a_warning() {
    let d = dir("trunc");
    let trace = d.join("t.jsonl");
    write(&trace, &good_lines(), "{\"ts_ns\":50,\"pid\":1,\"ti");
    let s = replay(&opts(vec![trace], &d.join("a"))).unwrap();
    assert_eq!((s.events, s.truncated_files), (4, 1));
}

#[test]
fn corrupt_line_in_the_middle_stops_or_is_skipped() {
    let d = dir("corrupt");
    let trace = d.join("t.jsonl");
    let mut lines = good_lines();
    lines.insert(2, "{not json".into());
    write(&trace, &lines, "");
    let err = replay(&opts(vec![trace.clone()], &d.join("a")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("t.jsonl:3: corrupt line"), "{err}");
    let mut o = opts(vec![trace], &d.join("b"));
    o.on_corrupt = OnCorrupt::Skip;
    let s = replay(&o).unwrap();
    assert_eq!(
        (
            s.events,
            s.skipped_lines,
            s.by_verdict.get("violation").copied()
        ),
        (4, 1, Some(1))
    );
}

#[test]
fn unknown_version_and_non_traces_are_refused() {
    let d = dir("bad");
    let v9 = d.join("v9.jsonl");
    write(
        &v9,
        &[header_line().replace("\"vigie_trace\":1", "\"vigie_trace\":9")],
        "",
    );
    let err = replay(&opts(vec![v9], &d.join("a")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("format version 9"), "{err}");
    for (name, text) in [
        ("empty", ""),
        ("text", "hello world\n"),
        ("json", "{\"a\":1}\n"),
        ("bin", "\u{0}\u{1}\u{2}"),
    ] {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        let err = replay(&opts(vec![p], &d.join("a")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a Vigie trace"), "{name}: {err}");
    }
    let err = replay(&opts(vec![d.join("missing")], &d.join("a")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn what_if_lists_changed_verdicts() {
    let d = dir("whatif");
    let trace = d.join("t.jsonl");
    write(&trace, &good_lines(), "");
    let cfg = d.join("c.toml");
    std::fs::write(&cfg, "[documents]\nroots = [\"/srv/users\"]\nowner_templates = [\"/srv/users/{owner}/**\"]\n[policy]\nprivileged_users = [\"alice\"]\n").unwrap();
    let mut o = opts(vec![trace], &d.join("a"));
    o.config = Some(cfg);
    let s = replay(&o).unwrap();
    assert_eq!(s.changed.len(), 1);
    assert!(
        s.changed[0].contains("violation -> allowed (user_is_privileged)"),
        "{:?}",
        s.changed
    );
    assert!(
        std::fs::read_to_string(d.join("a"))
            .unwrap_or_default()
            .is_empty()
    );
}

#[test]
fn filters_by_pid_and_time() {
    let d = dir("filter");
    let trace = d.join("t.jsonl");
    write(&trace, &good_lines(), "");
    let mut o = opts(vec![trace.clone()], &d.join("a"));
    o.pids = vec![99];
    assert_eq!(replay(&o).unwrap().by_verdict.get("violation"), None);
    let mut o = opts(vec![trace], &d.join("b"));
    o.since_ns = Some(31);
    assert_eq!(replay(&o).unwrap().by_verdict.get("violation"), None);
}

#[test]
fn rfc3339_round_trip() {
    for ns in [0i128, 1_795_000_000_123_456_000, 951_782_400_000_000_000] {
        assert_eq!(parse_rfc3339(&rfc3339(ns)), Some(ns));
    }
    assert_eq!(
        parse_rfc3339("2026-11-22T16:41:26Z"),
        Some(1_795_365_686_000_000_000)
    );
    for bad in [
        "",
        "2026-11-22",
        "2026-13-01T00:00:00Z",
        "2026-11-22T16:41:26",
        "x-y-zT1:2:3Z",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad}");
    }
}

/// One request by `user` on its own connection and thread, reading `path` whole.
fn request_reading(ts: u64, n: u32, user: &str, path: &str) -> Vec<Event> {
    let e = |dt: u64, kind| Event {
        ts_ns: ts + dt,
        pid: 1,
        tid: 100 + n,
        comm: "p".into(),
        goid: None,
        kind,
    };
    let fd = 10 + i32::try_from(n).unwrap();
    let head =
        format!("GET /api/documents/{n} HTTP/1.1\r\nX-Remote-User: {user}\r\n\r\n").into_bytes();
    vec![
        e(0, EventKind::SockAccept { fd, peer: None }),
        e(
            1,
            EventKind::SockRead {
                fd,
                bytes: head.len() as u64,
                data: Payload(head),
            },
        ),
        e(
            2,
            EventKind::FileOpen {
                fd: 50,
                path: path.into(),
                dirfd: -100,
                truncated: false,
                base: None,
                full_path: None,
                flags: 0,
                exact: false,
            },
        ),
        e(
            3,
            EventKind::FileRead {
                fd: 50,
                bytes: 100,
                fp: None,
                size: None,
            },
        ),
        e(4, EventKind::FileClose { fd: 50 }),
        e(5, EventKind::SockClose { fd }),
    ]
}

#[test]
fn a_database_backed_run_replays_identically_without_the_database() {
    use crate::sinks::trace::{Rotation, TraceWriter};
    let d = dir("sqlite");
    let db = d.join("portal.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE documents (id INTEGER PRIMARY KEY, owner TEXT, shared_with TEXT);
         INSERT INTO documents VALUES (1, 'bob', 'carol'), (3, 'alice', NULL);",
    )
    .unwrap();
    drop(conn);
    let text = format!(
        "[documents]\nroots = [\"/srv/docs\"]\n[ownership]\nbackends = [\"sqlite\"]\n\
         [ownership.sqlite]\ndatabase = \"{}\"\nquery = \"SELECT owner, shared_with FROM documents WHERE id = ?1\"\n\
         document_id = \"/srv/docs/{{doc_id}}.pdf\"\n",
        db.display()
    );
    let cfg = Config::parse(&text, "t").unwrap();
    let clock = WallClock {
        realtime_offset_ns: 0,
    };
    let live_alerts = d.join("live.jsonl");
    let mut live = Pipeline::new(
        Correlator::new(cfg.correlator().with_realtime_offset_ns(0)),
        cfg.judge(),
        cfg.resolver().unwrap(),
        AlertSink::new(
            Box::new(crate::sinks::alerts::open_alert_file(&live_alerts).unwrap()),
            clock,
            true,
        ),
    );
    let trace_dir = d.join("trace");
    live.set_trace(
        TraceWriter::create(
            &trace_dir,
            crate::sinks::trace::header(&cfg, clock),
            Rotation::default(),
        )
        .unwrap(),
    );
    let mut ts = 1_000;
    let mut feed = |n: u32, user: &str, doc: &str, live: &mut Pipeline| {
        for ev in request_reading(ts, n, user, doc) {
            live.handle(&ev).unwrap();
        }
        ts += 1_000;
    };
    feed(1, "alice", "/srv/docs/1.pdf", &mut live); // violation, owner bob
    feed(2, "carol", "/srv/docs/1.pdf", &mut live); // delegated (from the cache)
    feed(3, "bob", "/srv/docs/2.pdf", &mut live); // unknown to the database
    feed(4, "bob", "/srv/docs/3.pdf", &mut live); // violation, owner alice
    std::fs::remove_file(&db).unwrap();
    feed(5, "alice", "/srv/docs/4.pdf", &mut live); // the database is gone
    feed(6, "alice", "/srv/docs/3.pdf", &mut live); // still cached: own document
    live.finish().unwrap();
    drop(live);
    let live_raw = std::fs::read_to_string(&live_alerts).unwrap();
    let rules: Vec<(String, String)> = live_raw
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["rule"].as_str().unwrap().to_owned(),
                v["owner"].to_string(),
            )
        })
        .collect();
    let r = |rule: &str, owner: &str| (rule.to_owned(), owner.to_owned());
    assert_eq!(
        rules,
        [
            r("cross_user_read", "\"bob\""),
            r("user_is_delegated", "\"bob\""),
            r("no_ownership_rule_matches", "null"),
            r("cross_user_read", "\"alice\""),
            r("ownership_lookup_failed", "null"),
            r("user_is_owner", "\"alice\""),
        ]
    );
    assert!(
        live_raw.contains("\"ownership_error\":\"unavailable\""),
        "{live_raw}"
    );
    assert!(
        live_raw.contains("\"shared_with\":[\"carol\"]"),
        "{live_raw}"
    );
    let files: Vec<PathBuf> = std::fs::read_dir(&trace_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let trace = std::fs::read_to_string(&files[0]).unwrap();
    // One fact per lookup: 1 (reused from the cache for carol), 2, 3, 4; none for the cached 3.
    assert_eq!(trace.matches("\"ownership_fact\"").count(), 4, "{trace}");

    // Replay with no database at all: the same bytes.
    let replayed = d.join("replayed.jsonl");
    let mut o = opts(files.clone(), &replayed);
    o.audit = true;
    replay(&o).unwrap();
    assert_eq!(std::fs::read_to_string(&replayed).unwrap(), live_raw);

    // A what-if that keeps the database backend as recorded uses the recorded facts, even with
    // a database that now says otherwise.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE documents (id INTEGER PRIMARY KEY, owner TEXT, shared_with TEXT);
         INSERT INTO documents VALUES (1, 'alice', NULL);",
    )
    .unwrap();
    let whatif = d.join("whatif.toml");
    std::fs::write(
        &whatif,
        format!("{text}[policy]\nprivileged_users = [\"bob\"]\n"),
    )
    .unwrap();
    let mut o = opts(files, &d.join("whatif.jsonl"));
    o.config = Some(whatif);
    o.audit = true;
    let s = replay(&o).unwrap();
    assert_eq!(s.changed.len(), 1, "{:?}", s.changed);
    assert!(
        s.changed[0].contains("bob read /srv/docs/3.pdf (owner alice): violation -> allowed"),
        "{:?}",
        s.changed
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_document_is_resolved_once_per_event_however_many_accesses_it_ends() {
    use crate::sinks::trace::{Rotation, TraceWriter};
    let d = dir("batch");
    let db = d.join("portal.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE documents (id INTEGER PRIMARY KEY, owner TEXT);")
        .unwrap();
    let text = format!(
        "[documents]\nroots = [\"/srv/docs\"]\n[ownership]\nbackends = [\"sqlite\"]\n\
         [ownership.sqlite]\ndatabase = \"{}\"\nquery = \"SELECT owner FROM documents WHERE id = ?1\"\n\
         document_id = \"/srv/docs/{{doc_id}}.pdf\"\n",
        db.display()
    );
    let cfg = Config::parse(&text, "t").unwrap();
    // The database goes away: lookups fail, and failures are not cached.
    std::fs::remove_file(&db).unwrap();
    let clock = WallClock {
        realtime_offset_ns: 0,
    };
    let alerts = d.join("live.jsonl");
    let mut live = Pipeline::new(
        Correlator::new(cfg.correlator().with_realtime_offset_ns(0)),
        cfg.judge(),
        cfg.resolver().unwrap(),
        AlertSink::new(
            Box::new(crate::sinks::alerts::open_alert_file(&alerts).unwrap()),
            clock,
            false,
        ),
    );
    let trace_dir = d.join("trace");
    live.set_trace(
        TraceWriter::create(
            &trace_dir,
            crate::sinks::trace::header(&cfg, clock),
            Rotation::default(),
        )
        .unwrap(),
    );
    // 40 requests on 40 threads read documents 1 and 2 and keep them open; the process exit
    // ends all 80 accesses in one batch.
    for n in 0..40u32 {
        let mut events = request_reading(1_000 + u64::from(n) * 10, n, "alice", "/srv/docs/1.pdf");
        events.truncate(4); // accept, head, open, read: no close
        for ev in events {
            live.handle(&ev).unwrap();
        }
        let open2 = Event {
            ts_ns: 1_005 + u64::from(n) * 10,
            pid: 1,
            tid: 100 + n,
            comm: "p".into(),
            goid: None,
            kind: EventKind::FileOpen {
                fd: 60,
                path: "/srv/docs/2.pdf".into(),
                dirfd: -100,
                truncated: false,
                base: None,
                full_path: None,
                flags: 0,
                exact: false,
            },
        };
        live.handle(&open2).unwrap();
        live.handle(&Event {
            ts_ns: 1_006 + u64::from(n) * 10,
            kind: EventKind::FileRead {
                fd: 60,
                bytes: 1,
                fp: None,
                size: None,
            },
            ..open2
        })
        .unwrap();
    }
    live.handle(&Event {
        ts_ns: 5_000,
        pid: 1,
        tid: 1,
        comm: "p".into(),
        goid: None,
        kind: EventKind::ProcessExit,
    })
    .unwrap();
    live.finish().unwrap();
    drop(live);
    let live_raw = std::fs::read_to_string(&alerts).unwrap();
    assert_eq!(live_raw.lines().count(), 80);
    assert!(
        live_raw
            .lines()
            .all(|l| l.contains("ownership_lookup_failed"))
    );
    let files: Vec<PathBuf> = std::fs::read_dir(&trace_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let trace = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(
        trace.matches("\"ownership_fact\"").count(),
        2,
        "one lookup per document"
    );
    let replayed = d.join("replayed.jsonl");
    replay(&opts(files, &replayed)).unwrap();
    assert_eq!(std::fs::read_to_string(&replayed).unwrap(), live_raw);
    let _ = std::fs::remove_dir_all(&d);
}
