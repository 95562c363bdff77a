//! The demo portal as a process (all models), through the helpers the end-to-end tests use.
//! Needs no root.
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use vigie_tests::{KeepAlive, http_get, portal::document_content, spawn_portal};

/// A scratch directory removed on drop.
struct TempRoot(PathBuf);

impl TempRoot {
    fn new() -> TempRoot {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("vigie-portal-proc-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempRoot(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn spawned_portal_serves_every_model_and_stops_cleanly() {
    let bin = env!("CARGO_BIN_EXE_demo-portal");
    for model in ["thread", "prefork", "pool"] {
        let root = TempRoot::new();
        let ready = root.path().join("ready");
        let args = [
            "--root",
            root.path().to_str().unwrap(),
            "--model",
            model,
            "--generate",
            "--cache",
            "--fork-delay-ms",
            "50",
            "--ready-file",
            ready.to_str().unwrap(),
        ];
        let mut portal = spawn_portal(bin, args).unwrap();
        assert_eq!(std::fs::read_to_string(&ready).unwrap(), portal.addr());

        let mut conn = KeepAlive::connect(portal.addr()).unwrap();
        for (user, owner) in [("alice", "bob"), ("bob", "alice"), ("carol", "bob")] {
            let (status, body) = conn
                .get(
                    &format!("/docs/{owner}/health-record.pdf"),
                    &[("X-Remote-User", user)],
                )
                .unwrap();
            assert_eq!(
                (status, body),
                (200, document_content(owner, "health-record.pdf")),
                "{model}"
            );
        }
        assert_eq!(
            http_get(portal.addr(), "/docs/bob/notes.txt", &[])
                .unwrap()
                .0,
            401
        );
        drop(conn);

        let status = portal.stop().unwrap();
        assert!(status.success(), "{model}: {status:?}");
        let logged = portal.stderr_lines();
        // `pid tid user method target status bytes`; prefork requests are served by workers.
        let first: Vec<_> = logged
            .first()
            .expect("a log line per request")
            .split(' ')
            .collect();
        assert_eq!(
            first[2..],
            ["alice", "GET", "/docs/bob/health-record.pdf", "200", "9500"]
        );
        assert_eq!(
            first[0] == portal.pid().to_string(),
            model != "prefork",
            "{model}: {first:?}"
        );
    }
}

#[test]
fn spawn_portal_reports_startup_failures() {
    let bin = env!("CARGO_BIN_EXE_demo-portal");
    let error = spawn_portal(
        bin,
        [
            "--root",
            "/nonexistent/vigie",
            "--model",
            "thread",
            "--cache",
        ],
    )
    .unwrap_err();
    assert!(error.to_string().contains("nonexistent"), "{error}");
}

#[test]
fn crash_hook_kills_a_prefork_worker_and_the_master_replaces_it() {
    let bin = env!("CARGO_BIN_EXE_demo-portal");
    let root = TempRoot::new();
    let dir = root.path().to_str().unwrap();
    // Without the flag, `?crash` is an ordinary query.
    let plain = spawn_portal(bin, ["--root", dir, "--model", "prefork", "--generate"]).unwrap();
    let (status, _) = http_get(
        plain.addr(),
        "/docs/bob/notes.txt?crash",
        &[("X-Remote-User", "bob")],
    )
    .unwrap();
    assert_eq!(status, 200);
    drop(plain);

    let mut portal = spawn_portal(
        bin,
        [
            "--root",
            dir,
            "--model",
            "prefork",
            "--workers",
            "1",
            "--crash-hook",
        ],
    )
    .unwrap();
    let crashed = http_get(
        portal.addr(),
        "/docs/bob/notes.txt?crash",
        &[("X-Remote-User", "bob")],
    );
    assert!(crashed.is_err(), "the worker answered: {crashed:?}");
    // The only worker died: this request is served by its replacement.
    let (status, body) = http_get(
        portal.addr(),
        "/docs/bob/notes.txt",
        &[("X-Remote-User", "bob")],
    )
    .unwrap();
    assert_eq!((status, body), (200, document_content("bob", "notes.txt")));
    assert!(portal.stop().unwrap().success());
    let logged = portal.stderr_lines();
    assert!(
        logged
            .iter()
            .any(|l| l.contains("crash hook: /docs/bob/notes.txt?crash: read Ok(")),
        "{logged:#?}"
    );
    let replaced = logged
        .iter()
        .find(|l| l.starts_with("worker ") && l.contains("(wait status 0x6); replaced by worker"));
    assert!(
        replaced.is_some(),
        "SIGABRT, then a new worker: {logged:#?}"
    );
}
