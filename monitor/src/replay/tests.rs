//! Bad traces and the RFC 3339 parser. Live-vs-replay identity is proven end to end in
//! tests/tests/replay.rs.

use super::*;
use crate::events::Payload;

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
    serde_json::to_string(&TraceHeader::new(
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
            },
        ),
        e(
            30,
            EventKind::FileRead {
                fd: 7,
                bytes: 9,
                fp: None,
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
