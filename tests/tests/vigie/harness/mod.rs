//! Harness for end-to-end tests: a real `vigie` with real probes against a real portal. It holds
//! the privilege check, temp dirs, the demo portal ([`Portal`]) and `vigie run` ([`Vigie`], over
//! the library's `VigieProcess`, which the bench uses too), [`start_watched`] for the usual
//! start of both, alert helpers, trace readers (`traces`), the attribution load and its score
//! (`attribution`), and the other servers some tests run (`nginx`, `node`, `postgres`, `tls`).
//!
//! Privileged tests call [`privileged`] first: without root (or BTF, or the binary) they print a
//! loud SKIPPED line and return `None`; with `VIGIE_REQUIRE_PRIVILEGED=1` a skip is a failure.

mod attribution;
pub mod nginx;
pub mod node;
pub mod postgres;
pub mod tls;
mod traces;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::Value;
use vigie_tests::daemon::{Options, VigieProcess};

pub use attribution::{Access, Mix, Score};
pub use traces::{bytes_contain, trace_events, trace_files, trace_payloads};
pub use vigie_tests::{
    client::{KeepAlive, basic, http_get, send_raw},
    process::{PortalGuard, spawn_portal},
    scaled,
};

/// One end-to-end test at a time: each loads its own probes and runs a portal.
static SERIAL: Mutex<()> = Mutex::new(());

pub const PORTAL: &str = env!("CARGO_BIN_EXE_demo-portal");
pub const FCGI_APP: &str = env!("CARGO_BIN_EXE_demo-fcgi");

/// What a privileged test needs, or `None` (after saying why, loudly) when it must be skipped.
pub struct Privileged {
    pub vigie: PathBuf,
    _serial: MutexGuard<'static, ()>,
}

pub fn privileged(test: &str) -> Option<Privileged> {
    let serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let vigie = std::env::var_os("VIGIE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/vigie"));
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let reason = if !root {
        Some("not root".to_string())
    } else if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("no kernel BTF".to_string())
    } else if !vigie.exists() {
        Some(format!(
            "no vigie binary at {} (run `cargo xtask test`)",
            vigie.display()
        ))
    } else {
        None
    };
    match reason {
        None => Some(Privileged {
            vigie,
            _serial: serial,
        }),
        Some(why) => {
            let msg = format!("SKIPPED {test}: needs root, kernel BTF and a built vigie ({why})");
            eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
            if std::env::var("VIGIE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
                panic!("{msg}, and VIGIE_REQUIRE_PRIVILEGED=1 turns skips into failures");
            }
            None
        }
    }
}

impl Privileged {
    /// The same privileges, running another `vigie` (the installed package's, say).
    pub fn with_binary(self, vigie: PathBuf) -> Self {
        Self { vigie, ..self }
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vigie-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A demo portal with a generated document tree.
pub struct Portal {
    pub guard: PortalGuard,
    pub users: PathBuf,
    pub dir: TempDir,
}

impl Portal {
    pub fn start(name: &str, args: &[&str]) -> Self {
        let dir = TempDir::new(name);
        let root = dir.path().join("portal");
        Self::start_in(dir, &root, &root, args)
    }

    /// A portal serving `root`, whose documents Vigie is configured to find under `named`
    /// (the same directory, reached another way, e.g. through a symbolic link).
    pub fn start_in(dir: TempDir, root: &Path, named: &Path, args: &[&str]) -> Self {
        let mut all = vec![
            "--root",
            root.to_str().expect("utf-8 temp dir"),
            "--generate",
        ];
        all.extend_from_slice(args);
        let guard = spawn_portal(PORTAL, &all).expect("starting the demo portal");
        Self {
            guard,
            users: named.join("users"),
            dir,
        }
    }

    pub fn addr(&self) -> String {
        self.guard.addr().to_string()
    }

    pub fn doc(&self, owner: &str, name: &str) -> String {
        self.users.join(owner).join(name).display().to_string()
    }

    /// Config for Vigie watching this portal's process (by pid).
    pub fn config_by_pid(&self) -> String {
        self.config(&format!("pids = [{}]", self.guard.pid()))
    }

    /// Config for Vigie watching this portal, with `targets` as a TOML `[targets]` body.
    pub fn config(&self, targets: &str) -> String {
        let u = self.users.display();
        format!(
            "[targets]\n{targets}\n[documents]\nroots = [\"{u}\"]\nowner_templates = [\"{u}/{{owner}}/**\"]\n[policy]\nprivileged_users = [\"agent\"]\n"
        )
    }
}

/// The usual start of a privileged test: a demo portal run with `portal_args`, and Vigie (run
/// with `vigie_args`) watching its process. Bound as `let (portal, vigie) = ...`, Vigie is
/// dropped (killed) before the portal.
pub fn start_watched(
    p: &Privileged,
    name: &str,
    portal_args: &[&str],
    vigie_args: &[&str],
) -> (Portal, Vigie) {
    let portal = Portal::start(name, portal_args);
    let vigie = Vigie::start(p, name, &portal.config_by_pid(), vigie_args);
    (portal, vigie)
}

/// A running `vigie run`; [`Vigie::stop`] sends SIGINT and returns the alert lines.
pub struct Vigie {
    process: VigieProcess,
    _dir: TempDir,
}

impl Vigie {
    pub fn start(p: &Privileged, name: &str, config: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new(&format!("{name}-vigie"));
        let options = Options {
            config,
            log_level: "debug",
            args: extra,
            ready_within: scaled(Duration::from_secs(30)),
        };
        let process =
            VigieProcess::start(&p.vigie, dir.path(), &options).unwrap_or_else(|e| panic!("{e}"));
        Self { process, _dir: dir }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn alive(&mut self) -> bool {
        self.process.alive()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Alerts written so far.
    pub fn alerts_now(&self) -> Vec<Value> {
        parse_alerts(&self.process.alerts())
    }

    /// Waits (bounded) until `pred` holds on the alerts written so far.
    pub fn wait_alerts(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let alerts = self.alerts_now();
            if pred(&alerts) {
                return alerts;
            }
            assert!(
                start.elapsed() < scaled(Duration::from_secs(10)),
                "timed out waiting for {what}; alerts: {alerts:#?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT (detach, drain, judge what is open), then every alert line.
    pub fn stop(self) -> (Vec<Value>, String) {
        let (raw, log) = self.stop_raw();
        (parse_alerts(&raw), log)
    }

    /// Like [`Vigie::stop`], with the alerts file as written (for byte-level comparisons).
    pub fn stop_raw(mut self) -> (String, String) {
        let status = self.process.interrupt().expect("waiting for vigie");
        let log = self.log();
        assert!(status.success(), "vigie failed ({status}):\n{log}");
        (self.process.alerts(), log)
    }

    /// SIGKILL: no detach, no drain, no flush. Returns the alerts file as written and the log.
    pub fn kill(mut self) -> (String, String) {
        self.process.kill();
        (self.process.alerts(), self.log())
    }
}

pub fn parse_alerts(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("alert line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Access alerts as (verdict, user, owner, document) tuples, sorted.
pub fn verdicts(alerts: &[Value]) -> Vec<(String, String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut out: Vec<_> = alerts
        .iter()
        .filter(|a| a["type"] == "access")
        .map(|a| {
            (
                s(&a["verdict"]),
                s(&a["user"]),
                s(&a["owner"]),
                s(&a["document"]),
            )
        })
        .collect();
    out.sort();
    out
}

pub fn t(verdict: &str, user: &str, owner: &str, doc: &str) -> (String, String, String, String) {
    (verdict.into(), user.into(), owner.into(), doc.into())
}

pub fn get_as(addr: &str, user: &str, target: &str) -> u16 {
    let (status, _) = http_get(addr, target, &[("X-Remote-User", user)]).expect("GET");
    status
}

/// Runs `vigie` to completion with these arguments: (success, stdout, stderr).
pub fn vigie_cmd(p: &Privileged, args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = Command::new(&p.vigie)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running vigie");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A trail signing key made by `vigie trail-keygen` (`DIR/trail.key`, its `.pub` beside it) and
/// the trail directory `DIR/trail`.
pub struct SignedTrail {
    pub key: PathBuf,
    pub dir: PathBuf,
}

impl SignedTrail {
    pub fn new(p: &Privileged, dir: &Path) -> Self {
        let key = dir.join("trail.key");
        let (ok, out, err) = vigie_cmd(p, &["trail-keygen".as_ref(), key.as_os_str()]);
        assert!(ok, "{out}{err}");
        Self {
            key,
            dir: dir.join("trail"),
        }
    }

    /// `--trail DIR --trail-key KEY`, for `vigie run`.
    pub fn args(&self) -> [&str; 4] {
        [
            "--trail",
            self.dir.to_str().expect("a UTF-8 path"),
            "--trail-key",
            self.key.to_str().expect("a UTF-8 path"),
        ]
    }
}

/// `vigie replay FILES... [extra] --alerts out`, which must succeed: the alert lines it wrote.
pub fn replay_alerts(p: &Privileged, files: &[PathBuf], extra: &[&str], out: &Path) -> String {
    let mut args: Vec<&std::ffi::OsStr> = vec!["replay".as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    args.extend(["--alerts".as_ref(), out.as_os_str()]);
    let (ok, _, stderr) = vigie_cmd(p, &args);
    assert!(ok, "replay failed: {stderr}");
    std::fs::read_to_string(out).expect("replayed alerts")
}

/// An external program a test needs (`promtool`, `prometheus`, ...), from `PATH`. `None` after a
/// loud SKIPPED line when it is missing (`cargo xtask test` installs them); with
/// `VIGIE_REQUIRE_PRIVILEGED=1` a missing tool is a failure.
pub fn require_tool(test: &str, name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = format!("SKIPPED {test}: `{name}` is not installed (run `cargo xtask test`)");
        eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
        if std::env::var("VIGIE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
            panic!("{msg}, and VIGIE_REQUIRE_PRIVILEGED=1 turns skips into failures");
        }
    }
    found
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it), for daemons that
/// must be told their port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout` (times the test time
/// scale); then panics with `what` and whatever `facts` says about the state.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    facts: impl Fn() -> String,
) -> T {
    let timeout = scaled(timeout);
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}\n{}",
            facts()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `--fork-delay-ms` for prefork portals whose workers must fork after Vigie has attached:
/// 1.5 s, times the test time scale (Vigie attaches far slower under software emulation).
pub fn fork_delay_ms() -> String {
    scaled(Duration::from_millis(1500)).as_millis().to_string()
}
