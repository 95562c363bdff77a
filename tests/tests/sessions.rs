//! Session cookies learned from the portal's login exchange, with real probes: logins and reads
//! interleaved across two prefork worker processes, a failed login, and a logout whose cookie
//! the portal (by a bug on purpose) still honours. Needs root (see `support::privileged`).
mod support;

use support::*;
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
    let config = format!(
        "{}{SESSION_CONFIG}",
        portal.config(&format!("pids = [{}]", portal.guard.pid()))
    );
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
    let alice_login = *served_by(&portal, "POST", "/login").last().expect("logged");
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
    // Each read on a new connection: the two workers take turns accepting.
    let rounds = 3;
    for _ in 0..rounds {
        get(&alice, "bob", HR);
        get(&bob, "bob", HR);
        get(&alice, "alice", NOTES);
        get(&bob, "alice", NOTES);
    }
    let workers: Vec<u32> = served_by(&portal, "GET", &format!("/docs/bob/{HR}"));
    assert!(
        workers.iter().any(|&pid| pid != alice_login),
        "no read served by another worker than alice's login ({alice_login}): {workers:?}"
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
