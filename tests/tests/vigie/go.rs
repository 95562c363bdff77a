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
    path::PathBuf,
    sync::{Mutex, OnceLock},
};

use crate::harness::*;

/// Every user's connections at once: 2 per user, 30 requests each.
const MIX: Mix = Mix {
    connections: 2,
    requests: 30,
    seed: (7919, 1, 104_729),
    check_bodies: false,
};

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

/// What one run found: the score, and the accesses attributed by goroutine (the goroutine that
/// read the request's head).
struct Run {
    score: Score,
    by_goroutine: usize,
}

/// When the portal starts: before Vigie (found at start-up by pid), or after it (selected by
/// name at its exec).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    Before,
    After,
}

fn run(test: &str, style: &str, goroutines: bool, start: Start) -> Option<Run> {
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
    let expected = MIX.run(portal.addr(), &users);
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
    let score = Score::of(&expected, &alerts);
    let by_goroutine = alerts
        .iter()
        .filter(|a| {
            a["evidence"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e == "goroutine"))
        })
        .count();
    eprintln!("go portal, style {style}, goroutines {goroutines}: {score}");
    assert_eq!(
        score.wrong,
        0,
        "accesses attributed to the wrong request: {:?}\n{log}",
        score.wrong_ones(&expected)
    );
    if !goroutines {
        assert_eq!(by_goroutine, 0, "goroutine scope while turned off");
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
    Some(Run {
        score,
        by_goroutine,
    })
}

/// With goroutine tracking, every read is bound to the goroutine that read its request's head:
/// nothing is left to chance, so every read is found.
fn tracked(test: &str, style: &str, start: Start) {
    let Some(Run {
        score,
        by_goroutine,
    }) = run(test, style, true, start)
    else {
        return;
    };
    assert_eq!(
        (score.right, score.unattributed),
        (score.expected, 0),
        "recall {:.3}",
        score.recall()
    );
    // And it is the goroutine that found them, not content evidence alone.
    assert_eq!(by_goroutine, score.expected);
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
