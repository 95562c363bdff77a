//! Session cookies learned from the portal's login exchange, with real probes: logins and reads
//! interleaved across two prefork worker processes, a failed login, and a logout whose cookie
//! the portal (by a bug on purpose) still honours. Needs root (see `crate::harness::privileged`).

use crate::harness::*;
use vigie_tests::{http_get, login};

const HR: &str = "health-record.pdf";
const NOTES: &str = "notes.txt";

const SESSION_CONFIG: &str = "[identity]\nsources = [\"session\"]\n[identity.session]\n\
    cookie = \"session\"\nlogin_path = \"/login\"\nuser_field = \"user\"\n\
    logout_path = \"/logout\"\nidle_timeout_seconds = 600\n";

/// The pid of the worker that served the last `method target` line of the portal's log.
fn served_by(portal: &Portal, method: &str, target: &str) -> Vec<u32> {
    portal
        .guard
        .stderr_lines()
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() == 7 && f[3] == method && f[4] == target).then(|| f[0].parse().ok())?
        })
        .collect()
}

#[test]
fn cookie_sessions_bind_users_across_worker_processes_until_logout() {
    let Some(p) = privileged("cookie_sessions_bind_users_across_worker_processes_until_logout")
    else {
        return;
    };
    let portal = Portal::start(
        "sessions",
        &[
            "--model",
            "prefork",
            "--workers",
            "2",
            "--fork-delay-ms",
            "1500",
        ],
    );
    let config = format!("{}{SESSION_CONFIG}", portal.config_by_pid());
    let traces = TempDir::new("sessions-traces");
    let trace_dir = traces.path().join("t");
    let vigie = Vigie::start(
        &p,
        "sessions",
        &config,
        &["--audit", "--record", trace_dir.to_str().expect("utf-8")],
    );
    let addr = portal.addr();

    let (status, alice) = login(&addr, "alice", "alice-pw").expect("login");
    assert_eq!(status, 302);
    let alice = alice.expect("alice's session cookie");
    // The portal logs a request after answering it: wait for the line.
    let alice_login = poll_until(
        "the login in the portal's log",
        std::time::Duration::from_secs(10),
        || served_by(&portal, "POST", "/login").last().copied(),
        || portal.guard.stderr_lines().join("\n"),
    );
    let (status, bob) = login(&addr, "bob", "bob-pw").expect("login");
    assert_eq!(status, 302);
    let bob = bob.expect("bob's session cookie");
    let (status, none) = login(&addr, "mallory", "guess").expect("login");
    assert_eq!((status, none), (401, None));

    let get = |cookie: &str, owner: &str, doc: &str| {
        let (status, _) = http_get(
            &addr,
            &format!("/docs/{owner}/{doc}"),
            &[("Cookie", cookie)],
        )
        .expect("GET");
        assert_eq!(status, 200);
    };
    // Each read on a new connection. Which blocked worker the kernel wakes for a connection is
    // its choice: on an idle machine the same one took every connection of a sequential client
    // (CI). So every other round starts with a connection that sends nothing: the worker that
    // accepts it (a prefork worker serves one connection at a time) is busy with it, and the
    // round's reads go to the other one. Rounds go on (up to 12) until both workers have served
    // reads (one of them is then not the worker of alice's login).
    let mut rounds = 0;
    let mut workers: Vec<u32> = Vec::new();
    let both_served = |w: &[u32]| w.windows(2).any(|p| p[0] != p[1]);
    while rounds < 12 && (rounds < 3 || !both_served(&workers)) {
        let pin = (rounds % 2 == 1)
            .then(|| std::net::TcpStream::connect(&addr).expect("an idle connection"));
        get(&alice, "bob", HR);
        get(&bob, "bob", HR);
        get(&alice, "alice", NOTES);
        get(&bob, "alice", NOTES);
        drop(pin);
        rounds += 1;
        workers = poll_until(
            "every read in the portal's log",
            std::time::Duration::from_secs(10),
            || {
                let w = served_by(&portal, "GET", &format!("/docs/bob/{HR}"));
                (w.len() == 2 * rounds).then_some(w)
            },
            || portal.guard.stderr_lines().join("\n"),
        );
    }
    assert!(
        both_served(&workers) && workers.iter().any(|&pid| pid != alice_login),
        "the reads were not served by both workers (alice's login: {alice_login}): {workers:?}"
    );

    // Logout clears the cookie, but the portal keeps honouring it: Vigie does not.
    let (status, _) = http_get(&addr, "/logout", &[("Cookie", &alice)]).expect("logout");
    assert_eq!(status, 200);
    get(&alice, "bob", HR);

    let (live, log) = vigie.stop_raw();
    let alerts = parse_alerts(&live);
    let mut expected = Vec::new();
    for _ in 0..rounds {
        expected.push(t("violation", "alice", "bob", &portal.doc("bob", HR)));
        expected.push(t("allowed", "bob", "bob", &portal.doc("bob", HR)));
        expected.push(t("allowed", "alice", "alice", &portal.doc("alice", NOTES)));
        expected.push(t("violation", "bob", "alice", &portal.doc("alice", NOTES)));
    }
    expected.push(t("unauthenticated", "-", "bob", &portal.doc("bob", HR)));
    expected.sort();
    assert_eq!(verdicts(&alerts), expected, "{log}");
    for a in &alerts {
        let req = &a["request"];
        if a["verdict"] == "unauthenticated" {
            assert_eq!(req["identity_problem"], "unknown_session", "{a}");
        } else {
            assert_eq!(req["identity"]["source"], "session", "{a}");
        }
    }
    let served: std::collections::BTreeSet<u64> =
        alerts.iter().filter_map(|a| a["pid"].as_u64()).collect();
    assert!(
        served.len() >= 2,
        "reads seen from one worker only: {served:?}"
    );

    // The trace holds the login forms without their passwords, and replaying it learns the
    // same sessions: identical alerts.
    let files = trace_files(&trace_dir);
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("trace"))
        .collect();
    assert!(
        text.contains("user=alice&password=********"),
        "login form not in the trace"
    );
    assert!(
        !text.contains("alice-pw") && !text.contains(&alice[8..]),
        "secret in the trace"
    );
    let replayed = traces.path().join("replayed.jsonl");
    let mut args: Vec<&std::ffi::OsStr> = vec!["replay".as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    args.extend([
        "--audit".as_ref(),
        "--alerts".as_ref(),
        replayed.as_os_str(),
    ]);
    let (ok, _, stderr) = vigie_cmd(&p, &args);
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read_to_string(&replayed).expect("replayed"), live);
}

/// A session store configuration for Vigie, appended to the session config.
fn with_store(store: &str) -> String {
    format!("{SESSION_CONFIG}[identity.session.store]\n{store}")
}

#[test]
fn sessions_created_before_vigie_resolve_from_the_portals_session_files() {
    let Some(p) =
        privileged("sessions_created_before_vigie_resolve_from_the_portals_session_files")
    else {
        return;
    };
    let portal = Portal::start("store-files", &["--model", "thread", "--allow-anonymous"]);
    let addr = portal.addr();
    // Logged in before Vigie exists: no login exchange to learn from.
    let (status, alice) = login(&addr, "alice", "alice-pw").expect("login");
    assert_eq!(status, 302);
    let alice = alice.expect("cookie");
    let sessions = portal.dir.path().join("portal/sessions");
    let config = format!(
        "{}{}",
        portal.config_by_pid(),
        with_store(&format!(
            "files = \"{}/{{id}}\"\nformat = \"plain\"\n",
            sessions.display()
        ))
    );
    let vigie = Vigie::start(&p, "store-files", &config, &[]);
    let get = |cookie: &str| {
        http_get(&addr, &format!("/docs/bob/{HR}"), &[("Cookie", cookie)])
            .expect("GET")
            .0
    };
    assert_eq!(get(&alice), 200);
    // A hostile cookie is never used as a path (the portal itself serves it anonymously).
    assert_eq!(get("session=../../../../etc/passwd"), 200);
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [
            t("unauthenticated", "-", "bob", &portal.doc("bob", HR)),
            t("violation", "alice", "bob", &portal.doc("bob", HR)),
        ],
        "{log}"
    );
    for a in &alerts {
        if a["verdict"] == "violation" {
            assert_eq!(a["request"]["identity"]["source"], "session");
        } else {
            assert_eq!(a["request"]["identity_problem"], "unknown_session");
        }
    }
}

/// A throwaway `redis-server` on a free port, without persistence.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    fn start(bin: &std::path::Path, dir: &std::path::Path) -> Self {
        let port = free_port();
        let child = std::process::Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting redis-server");
        poll_until(
            "redis-server accepting",
            std::time::Duration::from_secs(10),
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
            String::new,
        );
        Self { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sessions_created_before_vigie_resolve_from_the_portals_redis() {
    const TEST: &str = "sessions_created_before_vigie_resolve_from_the_portals_redis";
    let Some(p) = privileged(TEST) else {
        return;
    };
    let Some(redis_server) = require_tool(TEST, "redis-server") else {
        return;
    };
    let dir = TempDir::new("store-redis-data");
    let redis = Redis::start(&redis_server, dir.path());
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    let portal = Portal::start("store-redis", &["--model", "pool", "--session-redis", &url]);
    let addr = portal.addr();
    let (status, alice) = login(&addr, "alice", "alice-pw").expect("login");
    assert_eq!(status, 302);
    let alice = alice.expect("cookie");
    let config = format!(
        "{}{}",
        portal.config_by_pid(),
        with_store(&format!("redis = \"{url}\"\nkey = \"session:{{id}}\"\n"))
    );
    let vigie = Vigie::start(&p, "store-redis", &config, &[]);
    let (status, _) =
        http_get(&addr, &format!("/docs/bob/{HR}"), &[("Cookie", &alice)]).expect("GET");
    assert_eq!(status, 200);
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "alice", "bob", &portal.doc("bob", HR))],
        "{log}"
    );
    assert_eq!(alerts[0]["request"]["identity"]["source"], "session");
}
