//! The audit trail from live runs: a real `vigie` watches the demo portal with `--trail`, is
//! killed once and restarted, then `vigie verify` checks the files with the public key only,
//! and every kind of tampering on copies of those files is named with its exit code.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::harness::*;

/// `vigie verify --key PUB ARGS...`: (exit code, stdout + stderr).
fn verify(p: &Privileged, public: &Path, trail: &[PathBuf]) -> (i32, String) {
    let out = Command::new(&p.vigie)
        .arg("verify")
        .arg("--key")
        .arg(public)
        .args(trail)
        .stdin(Stdio::null())
        .output()
        .expect("running vigie verify");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn trail_text(dir: &Path) -> String {
    trace_files(dir)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("trail file")
        .lines()
        .map(|l| format!("{l}\n"))
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.concat()).expect("writing a tampered copy");
}

/// A copy of the trail directory to tamper with.
fn copy(from: &Path, to: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(to).unwrap();
    trace_files(from)
        .iter()
        .map(|f| {
            let dst = to.join(f.file_name().unwrap());
            std::fs::copy(f, &dst).unwrap();
            dst
        })
        .collect()
}

/// Index of the first access line of `lines`.
fn first_access(lines: &[String]) -> usize {
    lines
        .iter()
        .position(|l| l.contains("\"type\":\"access\""))
        .expect("an access record")
}

#[test]
fn live_trail_verifies_and_every_tampering_is_named() {
    let Some(p) = privileged("live_trail_verifies_and_every_tampering_is_named") else {
        return;
    };
    let tmp = TempDir::new("trail-keys");
    let signed = SignedTrail::new(&p, tmp.path());
    let (key, trail) = (signed.key.clone(), signed.dir.clone());
    let public = tmp.path().join("trail.key.pub");
    let secret = std::fs::read_to_string(&key).unwrap();
    let trail_args = signed.args();
    let portal = Portal::start("trail", &["--model", "thread"]);
    let config = portal.config_by_pid();

    // Run 1: reads, then SIGKILL (no stop record).
    let vigie = Vigie::start(&p, "trail1", &config, &trail_args);
    assert_eq!(
        get_as(&portal.addr(), "alice", "/docs/alice/notes.txt"),
        200
    );
    assert_eq!(get_as(&portal.addr(), "alice", "/docs/bob/notes.txt"), 200);
    vigie.wait_alerts("the violation", |a| !a.is_empty());
    // The kill comes once both reads are in the trail (each record is its own write).
    poll_until(
        "both reads in the trail",
        std::time::Duration::from_secs(10),
        || (trail_text(&trail).matches("\"type\":\"access\"").count() >= 2).then_some(()),
        || trail_text(&trail),
    );
    let (_, log1) = vigie.kill();
    // Runs 2 and 3: more reads, clean stops. Run 3 is recorded too (`report --trace`).
    let mut logs = log1;
    let recorded = tmp.path().join("rec3");
    for (run, user) in [("trail2", "bob"), ("trail3", "carol")] {
        let mut args = trail_args.to_vec();
        if run == "trail3" {
            args.extend(["--record", recorded.to_str().unwrap()]);
        }
        let vigie = Vigie::start(&p, run, &config, &args);
        assert_eq!(get_as(&portal.addr(), user, "/docs/alice/notes.txt"), 200);
        assert_eq!(
            get_as(&portal.addr(), user, &format!("/docs/{user}/notes.txt")),
            200
        );
        vigie.wait_alerts("the violation", |a| !a.is_empty());
        let (_, log) = vigie.stop();
        logs.push_str(&log);
    }
    assert!(
        !logs.contains(secret.trim()),
        "the signing key reached the log"
    );
    let original = trace_files(&trail);
    assert_eq!(original.len(), 3, "{original:?}\n{logs}");
    let all: String = original
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(
        !all.contains(secret.trim()),
        "the signing key reached the trail"
    );
    let accesses = all.matches("\"type\":\"access\"").count();
    assert!(
        accesses >= 6,
        "allowed accesses are in the trail too:\n{all}"
    );
    assert!(all.contains("\"verdict\":\"allowed\"") && all.contains("\"verdict\":\"violation\""));

    // Intact: exit 0, the range, the killed run explained.
    let (code, out) = verify(&p, &public, std::slice::from_ref(&trail));
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK: seq 0.."), "{out}");
    assert!(out.contains("3 runs"), "{out}");
    assert!(out.contains("killed or crashed"), "{out}");
    eprintln!("verify on the live trail:\n{out}");
    let (ok, json, err) = vigie_cmd(
        &p,
        &[
            "verify".as_ref(),
            "--json".as_ref(),
            "--key".as_ref(),
            public.as_os_str(),
            trail.as_os_str(),
        ],
    );
    assert!(ok, "{json}{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["outcome"]["status"], "intact", "{json}");
    assert_eq!(v["first_seq"], 0, "{json}");

    let case = |name: &str| tmp.path().join(name);
    // Modified: an allowed access turned into someone else's.
    let dir = case("modified");
    let copied = copy(&trail, &dir);
    let mut l = lines(&copied[1]);
    let i = first_access(&l);
    l[i] = l[i].replacen("\"user\":\"bob\"", "\"user\":\"mallory\"", 1);
    assert!(l[i].contains("mallory"), "{}", l[i]);
    write_lines(&copied[1], &l);
    let (code, out) = verify(&p, &public, std::slice::from_ref(&dir));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("trail-00000001.jsonl line {}", i + 1))
            && out.contains("record modified"),
        "{out}"
    );
    eprintln!("modified:\n{out}");

    // Deleted.
    let dir = case("deleted");
    let copied = copy(&trail, &dir);
    let mut l = lines(&copied[1]);
    let i = first_access(&l);
    l.remove(i);
    write_lines(&copied[1], &l);
    let (code, out) = verify(&p, &public, std::slice::from_ref(&dir));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record deleted before it"), "{out}");
    eprintln!("deleted:\n{out}");

    // Inserted: a copy of a record from another run.
    let dir = case("inserted");
    let copied = copy(&trail, &dir);
    let mut l = lines(&copied[2]);
    let donor = lines(&copied[0]);
    let i = first_access(&l);
    l.insert(i, donor[first_access(&donor)].clone());
    write_lines(&copied[2], &l);
    let (code, out) = verify(&p, &public, std::slice::from_ref(&dir));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record inserted"), "{out}");
    eprintln!("inserted:\n{out}");

    // Reordered.
    let dir = case("reordered");
    let copied = copy(&trail, &dir);
    let mut l = lines(&copied[2]);
    let i = first_access(&l);
    l.swap(i, i + 1);
    write_lines(&copied[2], &l);
    let (code, out) = verify(&p, &public, std::slice::from_ref(&dir));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("records reordered"), "{out}");
    eprintln!("reordered:\n{out}");

    // A file missing from the middle.
    let dir = case("missing");
    let copied = copy(&trail, &dir);
    std::fs::remove_file(&copied[1]).unwrap();
    let (code, out) = verify(&p, &public, std::slice::from_ref(&dir));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("file 1 is missing from the trail"), "{out}");
    eprintln!("missing file:\n{out}");

    // A truncated end: the stop record and the line before it cut.
    let dir = case("truncated");
    let copied = copy(&trail, &dir);
    let mut l = lines(&copied[2]);
    l.truncate(l.len() - 2);
    write_lines(&copied[2], &l);
    let (code, out) = verify(&p, &public, std::slice::from_ref(&dir));
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("UNSIGNED TAIL"), "{out}");
    eprintln!("truncated:\n{out}");

    // The end of a file in the middle cut: the next restart no longer matches it.
    let dir = case("cut");
    let copied = copy(&trail, &dir);
    let mut l = lines(&copied[0]);
    l.pop();
    write_lines(&copied[0], &l);
    let (code, out) = verify(&p, &public, std::slice::from_ref(&dir));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BROKEN"), "{out}");
    eprintln!("cut:\n{out}");

    // Signed by another key: the intruder re-signs a whole trail of its own.
    let other = tmp.path().join("other.key");
    let (ok, out, err) = vigie_cmd(&p, &["trail-keygen".as_ref(), other.as_os_str()]);
    assert!(ok, "{out}{err}");
    let (code, out) = verify(
        &p,
        &tmp.path().join("other.key.pub"),
        std::slice::from_ref(&trail),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signed by another key"), "{out}");
    eprintln!("foreign key:\n{out}");

    // Not a trail at all, or no such file: exit 2 (could not verify).
    let (code, out) = verify(&p, &public, &[tmp.path().join("nothing-here.jsonl")]);
    assert_eq!(code, 2, "{out}");

    report_from_the_live_trail(&p, &trail, &public, &portal, tmp.path());
    report_from_a_replayed_trace(&p, &trail, &recorded);
}

/// `vigie report --trace` over run 3's recording (carol's two reads) answers as the trail does.
fn report_from_a_replayed_trace(p: &Privileged, trail: &Path, recorded: &Path) {
    let rows = |source: Vec<&std::ffi::OsStr>| -> Vec<(String, String, String, String)> {
        let mut args: Vec<&std::ffi::OsStr> = vec!["report".as_ref()];
        args.extend(source);
        args.extend(["--user", "carol", "--format", "json"].map(std::ffi::OsStr::new));
        let (ok, out, err) = vigie_cmd(p, &args);
        assert!(ok, "vigie report {args:?}: {out}{err}");
        // A replay's other alert lines (coverage gaps, enumerations) are not accesses, nor
        // unreadable; nor are a trail's other records.
        assert!(!err.contains("unreadable"), "vigie report {args:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut rows: Vec<_> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (s("user"), s("verdict"), s("owner"), s("document"))
            })
            .collect();
        rows.sort();
        rows
    };
    let traces = trace_files(recorded);
    assert!(!traces.is_empty(), "run 3 recorded no trace");
    let mut source: Vec<&std::ffi::OsStr> = vec!["--trace".as_ref()];
    source.extend(traces.iter().map(|t| t.as_os_str()));
    let replayed = rows(source);
    let from_trail = rows(vec![trail.as_os_str()]);
    assert_eq!(replayed.len(), 2, "carol's two reads: {replayed:?}");
    assert_eq!(replayed, from_trail, "the trace and the trail answer alike");
    assert!(
        replayed
            .iter()
            .any(|r| r.1 == "violation" && r.2 == "alice"),
        "{replayed:?}"
    );
}

/// `vigie report` over the live trail: the answers, and the HTML page in headless Chromium.
fn report_from_the_live_trail(
    p: &Privileged,
    trail: &Path,
    public: &Path,
    portal: &Portal,
    tmp: &Path,
) {
    let report = |args: &[&str]| -> String {
        let mut all: Vec<&std::ffi::OsStr> = vec!["report".as_ref(), trail.as_os_str()];
        all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        let (ok, out, err) = vigie_cmd(p, &all);
        assert!(ok, "vigie report {args:?}: {out}{err}");
        out
    };
    // alice's documents: her own read, bob's and carol's cross-user reads.
    let subject = report(&["--subject", "alice", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&subject).unwrap();
    let mut readers: Vec<(String, String)> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap().to_string(),
                r["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    readers.sort();
    assert_eq!(
        readers,
        [
            ("alice".to_string(), "allowed".to_string()),
            ("bob".to_string(), "violation".to_string()),
            ("carol".to_string(), "violation".to_string())
        ],
        "{subject}"
    );
    // The breach list: every cross-user read, grouped by owner (alice and bob).
    let breach = report(&[
        "--breach",
        "--format",
        "csv",
        "--key",
        public.to_str().unwrap(),
    ]);
    let owners: Vec<&str> = breach
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(owners, ["alice", "alice", "bob"], "{breach}");
    let table = report(&["--user", "bob", "--key", public.to_str().unwrap()]);
    assert!(table.contains("OK: seq 0.."), "the integrity line: {table}");
    assert!(table.contains(&portal.doc("alice", "notes.txt")), "{table}");
    // The HTML page, rendered by a real browser.
    let Some(chromium) = require_tool("trail report html", "chromium") else {
        return;
    };
    let html = tmp.join("breach.html");
    report(&[
        "--breach",
        "--format",
        "html",
        "--key",
        public.to_str().unwrap(),
        "--output",
        html.to_str().unwrap(),
    ]);
    let url = format!("file://{}", html.display());
    let profile = tmp.join("chromium-profile");
    let chrome = |extra: &[&str]| {
        let out = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .stdin(Stdio::null())
            .output()
            .expect("running chromium");
        assert!(
            out.status.success(),
            "chromium: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The DOM as the browser built it: the owners' sections and both timelines are there.
    let dom = chrome(&["--dump-dom"]);
    for needle in [
        "alice: 2 cross-user reads",
        "bob: 1 cross-user reads",
        "Timeline per document",
        "Timeline per user",
        "OK: seq 0..",
    ] {
        assert!(
            dom.contains(needle),
            "{needle:?} not in the rendered page:\n{dom}"
        );
    }
    // A screenshot to look at (kept under target/ for the reviewer).
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("trail-report.png");
    let _ = std::fs::remove_file(&shot);
    chrome(&[
        "--window-size=1280,900",
        &format!("--screenshot={}", shot.display()),
    ]);
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("report screenshot: {}", shot.display());
}
