//! Attribution on a Go `net/http` portal (`tests/go/portal`): one goroutine per connection, an
//! internal HTTP call to a session service before each document read, and goroutines that move
//! between OS threads at every blocking point. Several users on keep-alive connections read a
//! deterministic mix of their own and others' documents at once; with `--audit` every access is
//! reported, and each run is scored for precision (no access may name the wrong user, ever) and
//! recall. Both serving styles: read the file then write it, and `io.Copy` (512 bytes read, then
//! `sendfile`). With goroutine tracking (the probes read each thread's current goroutine) and
//! without it (`correlation.goroutines = false`: content and sendfile evidence only). Needs
//! root (see `crate::harness::privileged`) and Debian's golang-go (`cargo xtask setup`).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Mutex, OnceLock},
};

use crate::harness::*;
use vigie_tests::portal::{DOCUMENTS, USERS};

/// Connections per user, and requests per connection.
const CONNECTIONS: usize = 2;
const REQUESTS: usize = 30;

type Key = (String, String, String, String);

/// The Go portal binary: `VIGIE_GO_PORTAL` (built by xtask), else built here once with `go`.
/// `None` after a loud SKIPPED line when there is neither.
fn go_portal(test: &str) -> Option<PathBuf> {
    static BUILT: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    if let Some(p) = std::env::var_os("VIGIE_GO_PORTAL").map(PathBuf::from) {
        assert!(p.exists(), "VIGIE_GO_PORTAL={} does not exist", p.display());
        return Some(p);
    }
    let go = require_tool(test, "go")?;
    let mut built = BUILT
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if built.is_none() {
        let out =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/go-portal/go-portal");
        std::fs::create_dir_all(out.parent().expect("a parent")).expect("target/go-portal");
        *built = Some(vigie_tests::goportal::build(&go, &out).expect("building the Go portal"));
    }
    built.clone()
}

/// The requests one connection makes: (owner, document), about half of them cross-user.
fn plan(user_index: usize, conn: usize) -> Vec<(&'static str, &'static str)> {
    let mut state = (user_index as u64 + 1) * 7919 + conn as u64 * 104_729;
    (0..REQUESTS)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let r = (state >> 33) as usize;
            let owner = if r.is_multiple_of(2) {
                USERS[user_index]
            } else {
                USERS[(user_index + 1 + r / 2 % (USERS.len() - 1)) % USERS.len()]
            };
            (owner, DOCUMENTS[r / 7 % DOCUMENTS.len()])
        })
        .collect()
}

/// What one run found, scored.
struct Score {
    expected: usize,
    /// Attributed accesses whose evidence includes `goroutine` (the goroutine that read the
    /// request's head).
    by_goroutine: usize,
    right: usize,
    /// Attributed to the wrong request: a wrong user, or the right user's verdict on a
    /// document they did not read.
    wrong: usize,
    unattributed: usize,
}

impl Score {
    fn precision(&self) -> f64 {
        if self.right + self.wrong == 0 {
            return 1.0;
        }
        self.right as f64 / (self.right + self.wrong) as f64
    }

    fn recall(&self) -> f64 {
        self.right as f64 / self.expected as f64
    }
}

/// When the portal starts: before Vigie (found at start-up by pid), or after it (selected by
/// name at its exec).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    Before,
    After,
}

fn run(test: &str, style: &str, goroutines: bool, start: Start) -> Option<Score> {
    let p = privileged(test)?;
    let bin = go_portal(test)?;
    let dir = TempDir::new(test);
    let root = dir.path().join("portal");
    vigie_tests::portal::generate(&root).expect("generating the documents");
    let spawn = || {
        spawn_portal(
            &bin,
            [
                "--root",
                root.to_str().expect("utf-8 temp dir"),
                "--style",
                style,
            ],
        )
        .expect("starting the Go portal")
    };
    let users = root.join("users");
    let u = users.display();
    // Every run is recorded, and its replay must give the live alerts byte for byte: the
    // goroutine ids are in the trace.
    let traces = dir.path().join("traces");
    let record = traces.to_str().expect("utf-8 temp dir").to_string();
    let args = ["--audit", "--record", record.as_str()];
    let config = |targets: &str| {
        format!(
            "[targets]\n{targets}\n[documents]\nroots = [\"{u}\"]\nowner_templates = [\"{u}/{{owner}}/**\"]\n[correlation]\ngoroutines = {goroutines}\n"
        )
    };
    let (portal, vigie) = match start {
        Start::Before => {
            let portal = spawn();
            let targets = format!("pids = [{}]", portal.pid());
            let vigie = Vigie::start(&p, test, &config(&targets), &args);
            (portal, vigie)
        }
        Start::After => {
            let name = bin.file_name().expect("a file name").to_string_lossy();
            let targets = format!("names = [\"{name}\"]");
            let vigie = Vigie::start(&p, test, &config(&targets), &args);
            let portal = spawn();
            // Its exec is seen, its binary read, its goroutines followed (or not): then the
            // load. Events before that are the runtime's start-up.
            poll_until(
                "Vigie to read the Go portal's binary",
                std::time::Duration::from_secs(10),
                || vigie.log().contains("Go target: go").then_some(()),
                || vigie.log(),
            );
            (portal, vigie)
        }
    };
    let addr = portal.addr().to_string();
    let mut handles = Vec::new();
    for (i, user) in USERS.iter().enumerate() {
        for conn in 0..CONNECTIONS {
            let addr = addr.clone();
            handles.push(std::thread::spawn(move || {
                let mut c = KeepAlive::connect(&addr).expect("connecting");
                for (owner, doc) in plan(i, conn) {
                    let (status, _) = c
                        .get(&format!("/docs/{owner}/{doc}"), &[("X-Remote-User", user)])
                        .expect("request");
                    assert_eq!(status, 200);
                }
            }));
        }
    }
    for h in handles {
        h.join().expect("client thread");
    }
    let mut expected: BTreeMap<Key, usize> = BTreeMap::new();
    for (i, user) in USERS.iter().enumerate() {
        for conn in 0..CONNECTIONS {
            for (owner, doc) in plan(i, conn) {
                let verdict = if owner == *user {
                    "allowed"
                } else {
                    "violation"
                };
                let path = users.join(owner).join(doc).display().to_string();
                *expected.entry(t(verdict, user, owner, &path)).or_insert(0) += 1;
            }
        }
    }
    let (live_raw, log) = vigie.stop_raw();
    let alerts = parse_alerts(&live_raw);
    let replayed = dir.path().join("replayed.jsonl");
    let mut replay: Vec<std::ffi::OsString> = vec!["replay".into()];
    replay.extend(trace_files(&traces).into_iter().map(Into::into));
    replay.extend(["--audit".into(), "--alerts".into(), replayed.clone().into()]);
    let replay: Vec<&std::ffi::OsStr> = replay.iter().map(std::ffi::OsString::as_os_str).collect();
    let (ok, _, stderr) = vigie_cmd(&p, &replay);
    assert!(ok, "replay failed: {stderr}");
    assert_eq!(
        std::fs::read_to_string(&replayed).expect("replayed alerts"),
        live_raw,
        "replay differs from live"
    );
    let mut found: BTreeMap<Key, usize> = BTreeMap::new();
    let mut unattributed = 0;
    for v in verdicts(&alerts) {
        if v.0 == "unattributed" {
            unattributed += 1;
        } else {
            *found.entry(v).or_insert(0) += 1;
        }
    }
    let mut right = 0;
    let mut wrong = 0;
    for (k, &n) in &found {
        let e = expected.get(k).copied().unwrap_or(0);
        right += n.min(e);
        wrong += n.saturating_sub(e);
    }
    let by_goroutine = alerts
        .iter()
        .filter(|a| {
            a["evidence"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e == "goroutine"))
        })
        .count();
    let score = Score {
        expected: expected.values().sum(),
        by_goroutine,
        right,
        wrong,
        unattributed,
    };
    let by_evidence = alerts
        .iter()
        .filter_map(|a| a["evidence"].as_array())
        .map(|e| format!("{e:?}"))
        .fold(BTreeMap::<String, usize>::new(), |mut m, e| {
            *m.entry(e).or_default() += 1;
            m
        });
    eprintln!(
        "go portal, style {style}, goroutines {goroutines}: {} reads, {} right, {} wrong, {} unattributed: precision {:.3}, recall {:.3}; evidence {by_evidence:?}",
        score.expected,
        score.right,
        score.wrong,
        score.unattributed,
        score.precision(),
        score.recall()
    );
    let wrong_ones: Vec<_> = found
        .iter()
        .filter(|(k, n)| **n > expected.get(*k).copied().unwrap_or(0))
        .collect();
    assert_eq!(
        score.wrong, 0,
        "accesses attributed to the wrong request: {wrong_ones:?}\n{log}"
    );
    if !goroutines {
        assert_eq!(score.by_goroutine, 0, "goroutine scope while turned off");
        assert!(
            !alerts.iter().any(|a| a["evidence"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e == "thread"))),
            "thread scope in a Go target"
        );
    }
    // Start-up says what it found in the binary.
    let reported = if goroutines {
        "goroutines followed"
    } else {
        "goroutines not followed (correlation.goroutines = false"
    };
    assert!(log.contains(reported), "no `{reported}` in the log:\n{log}");
    Some(score)
}

/// With goroutine tracking, every read is bound to the goroutine that read its request's head:
/// nothing is left to chance, so every read is found.
fn tracked(test: &str, style: &str, start: Start) {
    let Some(score) = run(test, style, true, start) else {
        return;
    };
    assert_eq!(
        (score.right, score.unattributed),
        (score.expected, 0),
        "recall {:.3}",
        score.recall()
    );
    // And it is the goroutine that found them, not content evidence alone.
    assert_eq!(score.by_goroutine, score.expected);
}

#[test]
fn go_read_then_write_is_attributed_by_goroutine() {
    tracked(
        "go_read_then_write_is_attributed_by_goroutine",
        "read",
        Start::Before,
    );
}

#[test]
fn go_io_copy_with_sendfile_is_attributed_by_goroutine() {
    tracked(
        "go_io_copy_with_sendfile_is_attributed_by_goroutine",
        "copy",
        Start::Before,
    );
}

/// A Go portal started after Vigie: selected by name at its exec, its binary read then.
#[test]
fn go_portal_started_after_vigie_is_followed_from_its_exec() {
    tracked(
        "go_portal_started_after_vigie_is_followed_from_its_exec",
        "read",
        Start::After,
    );
}

/// Without goroutine tracking, a Go target's threads scope nothing: what is found comes from
/// content and sendfile, and nothing is ever attributed to the wrong user.
#[test]
fn go_without_goroutine_tracking_never_names_the_wrong_user() {
    let test = "go_without_goroutine_tracking_never_names_the_wrong_user";
    for style in ["read", "copy"] {
        if run(test, style, false, Start::Before).is_none() {
            return;
        }
    }
}
