//! Faults around Vigie, each with its expected outcome: the portal restarted, a worker crashing
//! mid-request, Vigie itself SIGKILLed and restarted under load, the ring buffer overflowing, and
//! thousands of short connections. Real probes, the real demo portal; needs root (see
//! `crate::harness::privileged`). Each test prints what it measured on stderr (`--nocapture`).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::harness::*;
use serde_json::Value;

const HR: &str = "health-record.pdf";
const NOTES: &str = "notes.txt";
const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the probes' `ts_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Vigie's `/metrics` text.
fn metrics_text(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    Some(raw.split_once("\r\n\r\n")?.1.to_owned())
}

/// One series' value in a `/metrics` text.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

const TRACKED: [&str; 5] = [
    "connections",
    "requests",
    "threads",
    "open_accesses",
    "documents",
];

/// `vigie_correlator_tracked` by kind.
fn tracked(text: &str) -> BTreeMap<&'static str, f64> {
    TRACKED
        .iter()
        .filter_map(|k| {
            series(text, &format!(r#"vigie_correlator_tracked{{kind="{k}"}}"#)).map(|v| (*k, v))
        })
        .collect()
}

/// (VmRSS, VmHWM) of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The request id a test put in the query (`?n=ID`), from an alert's request target.
fn request_tag(alert: &Value) -> Option<String> {
    let target = alert["request"]["target"].as_str()?;
    Some(target.split_once("?n=")?.1.to_owned())
}

/// 1. The portal, targeted by name, is SIGKILLed and started again on the same address: the new
///    pid is picked up at its exec and its cross-user read alerts, with the new pid.
#[test]
fn target_restart_is_picked_up_by_name() {
    let Some(p) = privileged("target_restart_is_picked_up_by_name") else {
        return;
    };
    let mut portal = Portal::start("restart", &["--model", "thread"]);
    let traces = TempDir::new("restart-traces");
    let record = traces.path().join("t");
    let vigie = Vigie::start(
        &p,
        "restart",
        &portal.config("names = [\"demo-portal\"]"),
        &["--record", record.to_str().unwrap()],
    );
    let addr = portal.addr();
    let first = portal.guard.pid();
    assert_eq!(get_as(&addr, "alice", "/docs/bob/health-record.pdf"), 200);
    vigie.wait_alerts("the first portal's violation", |a| verdicts(a).len() == 1);

    // SIGKILL: the portal gets no chance to close anything.
    // SAFETY: signalling our own child, not reaped yet.
    unsafe { libc::kill(i32::try_from(first).unwrap(), libc::SIGKILL) };
    let _ = portal.guard.stop();
    let root = portal.dir.path().join("portal");
    portal.guard = spawn_portal(
        PORTAL,
        [
            "--root",
            root.to_str().unwrap(),
            "--model",
            "thread",
            "--listen",
            &addr,
        ],
    )
    .expect("restarting the portal on the same address");
    let listening_ns = monotonic_ns();
    let listening = Instant::now();
    let second = portal.guard.pid();
    assert_ne!(first, second);
    assert_eq!(get_as(&addr, "carol", "/docs/alice/notes.txt"), 200);
    vigie.wait_alerts("the restarted portal's violation", |a| {
        a.iter().any(|x| x["pid"] == second)
    });
    let to_alert = listening.elapsed();
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [
            t("violation", "alice", "bob", &portal.doc("bob", HR)),
            t("violation", "carol", "alice", &portal.doc("alice", NOTES)),
        ],
        "{log}"
    );
    let pid_of = |owner: &str| {
        alerts
            .iter()
            .find(|a| a["owner"] == owner)
            .map(|a| a["pid"].clone())
            .unwrap()
    };
    assert_eq!(pid_of("bob"), first, "{log}");
    assert_eq!(pid_of("alice"), second, "{log}");
    assert!(log.contains("new target (exec)"), "{log}");

    // Pick-up, from the recorded events: the new pid's first event (its exec, matched by name in
    // the kernel) and its first request, relative to the LISTENING line.
    let events = trace_events(&record);
    let of_second: Vec<&Value> = events.iter().filter(|e| e["pid"] == second).collect();
    assert_eq!(
        of_second.first().map(|e| e["kind"].clone()),
        Some(Value::from("process_exec")),
        "the new pid's first event is its exec: {of_second:#?}"
    );
    let ms = |e: &Value| (e["ts_ns"].as_u64().unwrap() as f64 - listening_ns as f64) / 1e6;
    let first_read = of_second
        .iter()
        .find(|e| e["kind"].get("sock_read").is_some())
        .expect("the new pid's request head");
    eprintln!(
        "fault target restart: pid {first} -> {second}; exec event at {:+.1} ms from LISTENING, \
         first request head at {:+.1} ms, its alert written {:.1} ms after LISTENING",
        ms(of_second[0]),
        ms(first_read),
        to_alert.as_secs_f64() * 1e3
    );
}

/// The pid in a prefork master's line `worker P ended (...); replaced by worker Q`.
fn replaced_worker(lines: &[String]) -> Option<(u32, u32)> {
    lines.iter().find_map(|l| {
        let rest = l.strip_prefix("worker ")?;
        let (dead, rest) = rest.split_once(' ')?;
        let new = rest.split_once("; replaced by worker ")?.1;
        Some((dead.parse().ok()?, new.trim().parse().ok()?))
    })
}

/// The pid that served `user target` according to the portal's request log
/// (`pid tid user method target status bytes`).
fn served_by(lines: &[String], user: &str, target: &str) -> Option<u32> {
    lines.iter().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() == 7 && f[2] == user && f[4] == target).then(|| f[0].parse().ok())?
    })
}

/// 2. A prefork worker reads bob's health record for alice and aborts before answering. The
///    read is judged once, as alice's, when the worker's exit is seen; the other worker's
///    keep-alive connection is unaffected; the master's replacement worker is followed.
#[test]
fn worker_crash_mid_request_is_judged_once_and_its_replacement_followed() {
    let Some(p) =
        privileged("worker_crash_mid_request_is_judged_once_and_its_replacement_followed")
    else {
        return;
    };
    let portal = Portal::start(
        "crash",
        &["--model", "prefork", "--workers", "2", "--crash-hook"],
    );
    let master = portal.guard.pid();
    let vigie = Vigie::start(
        &p,
        "crash",
        &portal.config(&format!("pids = [{master}]")),
        &[],
    );
    let addr = portal.addr();
    // bob's keep-alive connection pins one worker (A) for the whole test.
    let mut bob = KeepAlive::connect(&addr).unwrap();
    let h = [("X-Remote-User", "bob")];
    assert_eq!(bob.get("/docs/bob/notes.txt", &h).unwrap().0, 200);
    // So alice's request goes to the other worker (B), which reads the document and aborts.
    let crashed = http_get(
        &addr,
        "/docs/bob/health-record.pdf?crash",
        &[("X-Remote-User", "alice")],
    );
    assert!(crashed.is_err(), "no answer expected: {crashed:?}");
    let (b, c) = poll_until(
        "the crashed worker replaced",
        Duration::from_secs(10),
        || replaced_worker(&portal.guard.stderr_lines()),
        || portal.guard.stderr_lines().join("\n"),
    );
    let a = poll_until(
        "bob's first request in the portal's log",
        Duration::from_secs(5),
        || served_by(&portal.guard.stderr_lines(), "bob", "/docs/bob/notes.txt"),
        || portal.guard.stderr_lines().join("\n"),
    );
    assert!(a != b && b != c && a != master, "workers {a} {b} {c}");
    // B's read is judged when its exit is seen.
    vigie.wait_alerts("the crashed worker's read", |al| {
        al.iter().any(|x| x["pid"] == b)
    });
    // A is unaffected: bob's connection still works, and is still watched.
    assert_eq!(bob.get("/docs/alice/notes.txt", &h).unwrap().0, 200);
    // A new connection can only go to C (A is pinned to bob's connection).
    assert_eq!(get_as(&addr, "carol", "/docs/alice/health-record.pdf"), 200);
    drop(bob);
    // The portal logs a request once it has answered it.
    let carol = poll_until(
        "carol's request in the portal's log",
        Duration::from_secs(5),
        || {
            served_by(
                &portal.guard.stderr_lines(),
                "carol",
                "/docs/alice/health-record.pdf",
            )
        },
        || portal.guard.stderr_lines().join("\n"),
    );
    assert_eq!(carol, c);
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [
            t("violation", "alice", "bob", &portal.doc("bob", HR)),
            t("violation", "bob", "alice", &portal.doc("alice", NOTES)),
            t("violation", "carol", "alice", &portal.doc("alice", HR)),
        ],
        "{log}"
    );
    let by_user = |u: &str| alerts.iter().find(|x| x["user"] == u).unwrap();
    let crash = by_user("alice");
    assert_eq!(crash["pid"], b);
    assert_eq!(
        crash["request"]["target"],
        "/docs/bob/health-record.pdf?crash"
    );
    assert_eq!(crash["evidence"], serde_json::json!(["thread"]));
    assert_eq!(
        crash["bytes"].as_u64(),
        Some(std::fs::metadata(portal.doc("bob", HR)).unwrap().len()),
        "the whole document was read before the crash"
    );
    assert_eq!(by_user("bob")["pid"], a);
    assert_eq!(by_user("carol")["pid"], c);
    eprintln!(
        "fault worker crash: worker {b} aborted after reading; 1 violation judged at its exit; \
         worker {a} unaffected; replacement {c} followed"
    );
}

/// One request of the load in the restart test: who asked for what, and when it was sent.
#[derive(Debug, Clone)]
struct Sent {
    tag: String,
    user: &'static str,
    owner: &'static str,
    doc: &'static str,
    sent: Instant,
}

/// Keep-alive clients, each switching users on its connection, until `stop`.
fn load(
    addr: String,
    client: usize,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sent>>>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut conn = KeepAlive::connect(&addr).expect("load connection");
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let user = USERS[(i + client) % 3];
            let owner = USERS[(i / 3 + client) % 3];
            let doc = if i % 2 == 0 { NOTES } else { HR };
            let tag = format!("{client}-{i}");
            log.lock().unwrap().push(Sent {
                tag: tag.clone(),
                user,
                owner,
                doc,
                sent: Instant::now(),
            });
            let (status, _) = conn
                .get(
                    &format!("/docs/{owner}/{doc}?n={tag}"),
                    &[("X-Remote-User", user)],
                )
                .expect("load request");
            assert_eq!(status, 200);
            i += 1;
        }
        i
    })
}

/// Every access alert that names a request must name the request that really read that
/// document: the user who sent it and the document it asked for. Returns how many did.
fn check_attribution(alerts: &[Value], sent: &BTreeMap<String, Sent>, portal: &Portal) -> usize {
    let mut attributed = 0;
    for a in alerts.iter().filter(|a| a["type"] == "access") {
        if a["request"].is_null() {
            assert_eq!(a["verdict"], "unattributed", "{a}");
            continue;
        }
        let tag = request_tag(a).unwrap_or_else(|| panic!("untagged request: {a}"));
        let s = sent
            .get(&tag)
            .unwrap_or_else(|| panic!("alert for a request never sent: {a}"));
        assert_eq!(
            a["user"], s.user,
            "attributed to the wrong user: {a}\n{s:?}"
        );
        assert_eq!(a["document"], portal.doc(s.owner, s.doc), "{a}\n{s:?}");
        let expected = if s.user == s.owner {
            "allowed"
        } else {
            "violation"
        };
        assert_eq!(a["verdict"], expected, "{a}");
        attributed += 1;
    }
    attributed
}

/// 3. Vigie is SIGKILLed and started again while keep-alive clients of three users keep the
///    portal busy (and one connection stays idle across the restart). The restarted Vigie adopts
///    the portal and its connections from /proc; what was in flight is `unattributed` or right,
///    never someone else's; every request sent after it is ready is found with its verdict; the
///    killed run's trace is whole lines and replays.
#[test]
fn vigie_sigkill_and_restart_under_load() {
    let Some(p) = privileged("vigie_sigkill_and_restart_under_load") else {
        return;
    };
    let portal = Portal::start("sigkill", &["--model", "thread"]);
    let addr = portal.addr();
    let config = portal.config_by_pid();
    let traces = TempDir::new("sigkill-traces");
    let (rec_a, rec_b) = (traces.path().join("a"), traces.path().join("b"));
    let first = Vigie::start(
        &p,
        "sigkill-a",
        &config,
        &["--audit", "--record", rec_a.to_str().unwrap()],
    );

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    const CLIENTS: usize = 3;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| load(addr.clone(), k, stop.clone(), log.clone()))
        .collect();
    // A connection that is idle across the restart: its server thread sits in read(2) since
    // before the new Vigie attached.
    let mut idle = KeepAlive::connect(&addr).unwrap();
    let idle_get =
        |idle: &mut KeepAlive, tag: &str, user: &'static str, owner: &'static str, doc| {
            log.lock().unwrap().push(Sent {
                tag: tag.into(),
                user,
                owner,
                doc,
                sent: Instant::now(),
            });
            let target = format!("/docs/{owner}/{doc}?n={tag}");
            assert_eq!(
                idle.get(&target, &[("X-Remote-User", user)]).unwrap().0,
                200
            );
        };
    idle_get(&mut idle, "idle-0", "bob", "bob", NOTES);
    // And one whose next request head is cut in two by the restart: the first part reaches the
    // portal now, the rest once the second Vigie is ready. That Vigie never sees the whole head.
    let mut cut = KeepAlive::connect(&addr).unwrap();
    idle_get(&mut cut, "cut-0", "alice", "alice", HR);
    let split = "/docs/alice/notes.txt?n=split";
    cut.send_part(format!("GET {split} HTTP/1.1\r\nHost: x\r\n").as_bytes())
        .unwrap();
    first.wait_alerts("the first Vigie judging the load", |a| a.len() >= 30);
    // Killed mid-recording: once part of the load is in its trace (flushed every 100 ms).
    poll_until(
        "the first Vigie's trace holding 100 events",
        Duration::from_secs(10),
        || (trace_events(&rec_a).len() >= 100).then_some(()),
        || first.log(),
    );

    let (a_raw, a_log) = first.kill();
    let killed = Instant::now();
    let second = Vigie::start(
        &p,
        "sigkill-b",
        &config,
        &["--audit", "--record", rec_b.to_str().unwrap()],
    );
    let ready = Instant::now();
    idle_get(&mut idle, "idle-1", "bob", "carol", NOTES);
    cut.send_part(b"X-Remote-User: carol\r\n\r\n").unwrap();
    assert_eq!(cut.response().unwrap().0, 200);
    idle_get(&mut cut, "cut-1", "carol", "bob", NOTES);
    // Load goes on until each client has sent 10 requests after the restart.
    poll_until(
        "10 requests per client after the restart",
        Duration::from_secs(20),
        || {
            let log = log.lock().unwrap();
            (0..CLIENTS)
                .all(|k| {
                    log.iter()
                        .filter(|s| s.tag.starts_with(&format!("{k}-")) && s.sent > ready)
                        .count()
                        >= 10
                })
                .then_some(())
        },
        || second.log(),
    );
    stop.store(true, Ordering::Relaxed);
    let total: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    drop((idle, cut));
    let (b_alerts, b_log) = second.stop();

    let sent: BTreeMap<String, Sent> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.tag.clone(), s.clone()))
        .collect();
    // The restarted Vigie: no access is anyone else's.
    let attributed = check_attribution(&b_alerts, &sent, &portal);
    let accesses = || b_alerts.iter().filter(|a| a["type"] == "access");
    let unattributed = accesses().filter(|a| a["request"].is_null()).count();
    // Every request sent after it was ready is found, once, with its verdict.
    let after: Vec<&Sent> = sent.values().filter(|s| s.sent > ready).collect();
    let found: BTreeMap<String, usize> =
        accesses()
            .filter_map(request_tag)
            .fold(BTreeMap::new(), |mut m, tag| {
                *m.entry(tag).or_default() += 1;
                m
            });
    let missed: Vec<&&Sent> = after
        .iter()
        .filter(|s| found.get(&s.tag) != Some(&1))
        .collect();
    let cross_after = after.iter().filter(|s| s.user != s.owner).count();
    let violations_after = after
        .iter()
        .filter(|s| s.user != s.owner && found.get(&s.tag) == Some(&1))
        .count();
    assert!(
        missed.is_empty(),
        "requests sent after the restart not found exactly once: {missed:#?}\n{b_log}"
    );
    assert!(
        unattributed <= CLIENTS + 2,
        "at most the requests in flight at the restart are unattributed ({unattributed})\n{b_log}"
    );
    assert!(
        b_log.contains("\"fd_found\""),
        "connections adopted: {b_log}"
    );
    // The split request: its read is unattributed (its head was never seen whole), and neither
    // bob's request before it on that connection nor the one after claims it.
    let split_tid = poll_until(
        "the split request in the portal's log",
        Duration::from_secs(5),
        || {
            portal.guard.stderr_lines().iter().find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.len() == 7 && f[4] == split).then(|| f[1].parse::<u64>().ok())?
            })
        },
        || portal.guard.stderr_lines().join("\n"),
    );
    let split_reads: Vec<&Value> = accesses()
        .filter(|a| a["tid"] == split_tid && a["document"] == portal.doc("alice", NOTES))
        .collect();
    assert_eq!(split_reads.len(), 1, "{split_reads:#?}");
    assert_eq!(
        split_reads[0]["verdict"], "unattributed",
        "{}",
        split_reads[0]
    );
    // Reads in progress when it attached (the idle connections at least) were adopted.
    let adopted = b_log.matches("adopted a read in progress").count();
    assert!(adopted >= 2, "{b_log}");

    // The killed run: its alerts are right too, and its trace is whole lines that replay.
    let a_alerts = parse_alerts(&a_raw);
    check_attribution(&a_alerts, &sent, &portal);
    let files = trace_files(&rec_a);
    assert!(!files.is_empty(), "{a_log}");
    let text = std::fs::read_to_string(files.last().unwrap()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let complete = text.ends_with('\n');
    for (i, l) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        if !(last && !complete) {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("trace line {} is not JSON ({e}): {l}", i + 1));
        }
    }
    let replayed = traces.path().join("replayed.jsonl");
    let mut args: Vec<&std::ffi::OsStr> = vec!["replay".as_ref(), "--audit".as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    args.extend(["--alerts".as_ref(), replayed.as_os_str()]);
    let (ok, _, stderr) = vigie_cmd(&p, &args);
    assert!(ok, "replay of the killed run's trace failed:\n{stderr}");
    assert_eq!(
        stderr.contains("truncated last line"),
        !complete,
        "a truncated last line, and only that, is reported:\n{stderr}"
    );
    let r_alerts = parse_alerts(&std::fs::read_to_string(&replayed).unwrap_or_default());
    check_attribution(&r_alerts, &sent, &portal);
    // The same accesses get the same verdicts live and in replay.
    let key = |a: &Value| {
        (
            a["verdict"].to_string(),
            a["user"].to_string(),
            a["document"].to_string(),
            a["request"]["target"].to_string(),
        )
    };
    let live: BTreeMap<u64, _> = a_alerts
        .iter()
        .filter_map(|a| Some((a["access_id"].as_u64()?, key(a))))
        .collect();
    let mut common = 0;
    for r in &r_alerts {
        if let Some(l) = r["access_id"].as_u64().and_then(|id| live.get(&id)) {
            assert_eq!(*l, key(r), "live and replay disagree on access {r}");
            common += 1;
        }
    }
    assert!(common > 0, "the replay judged none of the live accesses");
    // A trace cut in the middle of its last line still replays, with a warning.
    let cut = traces.path().join("cut.jsonl");
    let body = std::fs::read(files.last().unwrap()).unwrap();
    let keep = body.len() - lines.last().map_or(0, |l| l.len() / 2) - usize::from(complete);
    std::fs::write(&cut, &body[..keep]).unwrap();
    let (ok, _, stderr) = vigie_cmd(&p, &["replay".as_ref(), cut.as_os_str()]);
    assert!(ok && stderr.contains("truncated last line"), "{stderr}");

    eprintln!(
        "fault vigie sigkill: {total} load requests; killed run: {} alert lines, {} trace lines \
         ({}), replay agreed on {common} accesses; restart took {:.0} ms to ready, adopting \
         {adopted} reads in progress; restarted run: {attributed} attributed accesses all \
         correct, {unattributed} unattributed (in flight), requests after ready: {} found of {} \
         ({violations_after} of {cross_after} violations)",
        a_alerts.len(),
        lines.len(),
        if complete {
            "last line complete"
        } else {
            "last line truncated"
        },
        ready.duration_since(killed).as_secs_f64() * 1e3,
        after.len() - missed.len(),
        after.len(),
    );
}

/// 5. Keep-alive clients of three users, each switching users on its connection, against a
///    ring buffer far too small for them: events are lost all the time, anywhere in a request.
///    Every access judged with a request still names the user who sent that request and the
///    document it asked for: a gap is handled where it is in the stream (each record says when
///    the kernel last lost one), not at the next periodic check, by which time reads after the
///    gap would have gone to a request whose end was lost.
#[test]
fn sustained_loss_never_names_the_wrong_user() {
    let Some(p) = privileged("sustained_loss_never_names_the_wrong_user") else {
        return;
    };
    let portal = Portal::start("overload", &["--model", "thread"]);
    let config = format!(
        "{}[kernel]\nring_buffer_bytes = 8192\n",
        portal.config(&format!("pids = [{}]", portal.guard.pid()))
    );
    let vigie = Vigie::start(&p, "overload", &config, &["--audit"]);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..3)
        .map(|k| load(portal.addr(), k, stop.clone(), log.clone()))
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let total: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let (alerts, vlog) = vigie.stop();
    let sent: BTreeMap<String, Sent> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.tag.clone(), s.clone()))
        .collect();
    let lost: u64 = alerts
        .iter()
        .filter(|a| a["type"] == "coverage_gap")
        .map(|a| a["lost_events"].as_u64().unwrap_or(0))
        .sum();
    assert!(lost > 0, "the ring buffer never overflowed:\n{vlog}");
    let attributed = check_attribution(&alerts, &sent, &portal);
    let unattributed = alerts
        .iter()
        .filter(|a| a["type"] == "access" && a["request"].is_null())
        .count();
    assert!(attributed > 0, "no access attributed at all:\n{vlog}");
    eprintln!(
        "fault sustained loss: {total} requests, {lost} events lost; {attributed} accesses \
         attributed, all to the right user and document; {unattributed} unattributed"
    );
}

/// Requests with heads larger than the one-page ring buffer: their socket-read record (64 bytes
/// and a 4 KiB capture) can never be reserved, so each loses at least that event.
const BURST: usize = 16;

/// 4. A burst overflows a one-page ring buffer: the loss is counted per reason (metric and
///    `coverage_gap` lines agree), and once it is reported an own/cross sequence gives exactly
///    the right verdicts again.
#[test]
fn ring_buffer_overflow_is_counted_and_verdicts_recover() {
    let Some(p) = privileged("ring_buffer_overflow_is_counted_and_verdicts_recover") else {
        return;
    };
    let portal = Portal::start("overflow", &["--model", "thread"]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "{}[kernel]\nring_buffer_bytes = 4096\n",
        portal.config_by_pid()
    );
    let vigie = Vigie::start(
        &p,
        "overflow",
        &config,
        &["--audit", "--metrics-addr", &metrics],
    );
    let addr = portal.addr();
    let pad = "x".repeat(6000);
    let burst: Vec<_> = (0..BURST)
        .map(|_| {
            let (addr, pad) = (addr.clone(), pad.clone());
            std::thread::spawn(move || {
                http_get(
                    &addr,
                    "/docs/alice/notes.txt?burst",
                    &[("X-Remote-User", "alice"), ("X-Padding", &pad)],
                )
                .expect("burst request")
                .0
            })
        })
        .collect();
    for b in burst {
        assert_eq!(b.join().unwrap(), 200);
    }
    let gaps = |alerts: &[Value], reason: &str| -> u64 {
        alerts
            .iter()
            .filter(|a| a["type"] == "coverage_gap" && a["reason"] == reason)
            .map(|a| a["lost_events"].as_u64().unwrap_or(0))
            .sum()
    };
    let lost_metric = |reason: &str| {
        metrics_text(&metrics).and_then(|t| {
            series(
                &t,
                &format!(r#"vigie_events_lost_total{{reason="{reason}"}}"#),
            )
        })
    };
    let lost = poll_until(
        "the loss reported in the alerts and the metric alike",
        Duration::from_secs(10),
        || {
            let g = gaps(&vigie.alerts_now(), "ringbuf_full");
            (g >= BURST as u64 && lost_metric("ringbuf_full") == Some(g as f64)).then_some(g)
        },
        || format!("{:?}\n{}", metrics_text(&metrics), vigie.log()),
    );
    assert_eq!(lost_metric("stash_full"), Some(0.0));
    assert_eq!(lost_metric("fd_map_full"), Some(0.0));

    // After the burst: own, cross, own on fresh connections, then own and cross on a
    // keep-alive one. The one-page ring is tight even for these on a busy machine, so a round
    // that loses events itself is repeated: the test needs one round without loss.
    let round = |r: usize| {
        for (user, owner, doc) in [
            ("alice", "alice", NOTES),
            ("alice", "bob", HR),
            ("bob", "bob", NOTES),
        ] {
            assert_eq!(
                get_as(&addr, user, &format!("/docs/{owner}/{doc}?after={r}")),
                200
            );
        }
        let mut conn = KeepAlive::connect(&addr).unwrap();
        for (user, owner) in [("carol", "carol"), ("carol", "alice")] {
            let target = format!("/docs/{owner}/{NOTES}?after={r}");
            assert_eq!(
                conn.get(&target, &[("X-Remote-User", user)]).unwrap().0,
                200
            );
        }
    };
    let ticks =
        || metrics_text(&metrics).and_then(|t| series(&t, r#"vigie_events_total{kind="tick"}"#));
    let mut clean = None;
    let mut rounds = 0;
    while clean.is_none() && rounds < 5 {
        let before = gaps(&vigie.alerts_now(), "ringbuf_full");
        round(rounds);
        // Loss is read on the reader's 100 ms tick: two ticks later, any loss of this round
        // has been reported.
        let t0 = ticks().unwrap_or(0.0);
        poll_until(
            "two reader ticks after the round",
            Duration::from_secs(5),
            || (ticks()? >= t0 + 2.0).then_some(()),
            || vigie.log(),
        );
        if gaps(&vigie.alerts_now(), "ringbuf_full") == before {
            clean = Some(rounds);
        }
        rounds += 1;
    }
    let clean = clean.unwrap_or_else(|| panic!("every round lost events:\n{}", vigie.log()));
    let (alerts, log) = vigie.stop();
    // The gap lines add up to what the run counted in the kernel.
    let counted: u64 = log
        .lines()
        .find_map(|l| {
            l.strip_prefix("vigie: ")?
                .split(", ")
                .nth(2)?
                .strip_suffix(" lost")
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line:\n{log}"));
    assert_eq!(gaps(&alerts, "ringbuf_full"), counted, "{log}");
    let accesses: Vec<&Value> = alerts.iter().filter(|a| a["type"] == "access").collect();
    let tagged = |tag: &str| -> Vec<Value> {
        accesses
            .iter()
            .filter(|a| {
                a["request"]["target"]
                    .as_str()
                    .is_some_and(|t| t.ends_with(tag))
            })
            .map(|a| (*a).clone())
            .collect()
    };
    let expected = |verdict: &str, user: &str, owner: &str, doc: &str| {
        t(verdict, user, owner, &portal.doc(owner, doc))
    };
    let right = [
        expected("allowed", "alice", "alice", NOTES),
        expected("allowed", "bob", "bob", NOTES),
        expected("allowed", "carol", "carol", NOTES),
        expected("violation", "alice", "bob", HR),
        expected("violation", "carol", "alice", NOTES),
    ];
    assert_eq!(
        verdicts(&tagged(&format!("?after={clean}"))),
        right,
        "{log}"
    );
    // Whatever was judged while Vigie was partly blind (the burst, a round that lost events) is
    // right or unattributed, never someone else's.
    for r in (0..rounds).filter(|r| *r != clean) {
        for v in verdicts(&tagged(&format!("?after={r}"))) {
            assert!(right.contains(&v), "round {r}: {v:?}\n{log}");
        }
    }
    for a in &tagged("?burst") {
        assert_eq!(
            (&a["verdict"], &a["user"]),
            (&Value::from("allowed"), &Value::from("alice")),
            "{a}"
        );
    }
    let untagged: Vec<&&Value> = accesses.iter().filter(|a| a["request"].is_null()).collect();
    for a in &untagged {
        assert_eq!(a["verdict"], "unattributed", "{a}");
    }
    let burst_reads = tagged("?burst").len()
        + untagged
            .iter()
            .filter(|a| a["document"] == portal.doc("alice", NOTES))
            .count();
    eprintln!(
        "fault ring overflow: {BURST} oversized requests on a 4 KiB ring: {lost} events lost \
         (ringbuf_full) in the burst, {counted} in all; {burst_reads} burst reads judged, {} \
         reads unattributed in all; {rounds} round(s) after it, 5 of 5 verdicts right in a \
         round without loss",
        untagged.len(),
    );
}

/// 5. Thousands of short connections, one request each: the correlator's state stays bounded
///    while they run and returns to near zero once they are closed; Vigie's memory is measured.
#[test]
fn thousands_of_short_connections_keep_state_bounded() {
    let Some(p) = privileged("thousands_of_short_connections_keep_state_bounded") else {
        return;
    };
    let connections: usize = std::env::var("VIGIE_FAULT_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    const CLIENTS: usize = 4;
    /// One request in this many is a cross-user read.
    const CROSS_EVERY: usize = 250;
    let portal = Portal::start("churn", &["--model", "thread"]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let vigie = Vigie::start(
        &p,
        "churn",
        &portal.config_by_pid(),
        &["--metrics-addr", &metrics],
    );
    let (rss_before, _) = rss_kib(vigie.pid());
    let addr = portal.addr();
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    // Peak of each gauge while the connections come and go.
    let sampler = {
        let (metrics, done) = (metrics.clone(), done.clone());
        std::thread::spawn(move || {
            let mut peak: BTreeMap<&'static str, f64> = BTreeMap::new();
            let mut samples = 0;
            while !done.load(Ordering::Relaxed) {
                if let Some(text) = metrics_text(&metrics) {
                    samples += 1;
                    for (k, v) in tracked(&text) {
                        let p = peak.entry(k).or_default();
                        *p = p.max(v);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (peak, samples)
        })
    };
    let per_client = connections / CLIENTS;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                for i in 0..per_client {
                    let (user, owner) = if (i + k) % CROSS_EVERY == 0 {
                        ("carol", "bob")
                    } else {
                        ("alice", "alice")
                    };
                    assert_eq!(
                        get_as(&addr, user, &format!("/docs/{owner}/notes.txt")),
                        200
                    );
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let elapsed = started.elapsed();
    let total = per_client * CLIENTS;
    let cross = (0..CLIENTS)
        .map(|k| {
            (0..per_client)
                .filter(|i| (i + k) % CROSS_EVERY == 0)
                .count()
        })
        .sum::<usize>();
    // Everything is judged, and the state drains back to near zero.
    let settled = poll_until(
        "the correlator's state back to near zero",
        Duration::from_secs(20),
        || {
            let text = metrics_text(&metrics)?;
            let now = tracked(&text);
            let judged = series(&text, r#"vigie_document_accesses_total{verdict="allowed"}"#)?
                + series(
                    &text,
                    r#"vigie_document_accesses_total{verdict="violation"}"#,
                )?;
            (judged >= total as f64 && now.values().all(|v| *v <= 2.0)).then_some(now)
        },
        || format!("{:?}\n{}", metrics_text(&metrics), vigie.log()),
    );
    done.store(true, Ordering::Relaxed);
    let (peak, samples) = sampler.join().unwrap();
    let (rss_after, hwm) = rss_kib(vigie.pid());
    let (alerts, log) = vigie.stop();
    let v = verdicts(&alerts);
    assert_eq!(v.len(), cross, "{log}");
    assert!(
        v.iter()
            .all(|x| *x == t("violation", "carol", "bob", &portal.doc("bob", NOTES))),
        "{v:?}"
    );
    assert!(
        log.contains(&format!(
            "accesses {{\"allowed\": {}, \"violation\": {cross}}}",
            total - cross
        )),
        "every read judged:\n{log}"
    );
    assert!(samples > 0, "the gauges were never read");
    // Bounded by how many connections the portal holds at once (tens, when its threads lag
    // behind on a busy machine), not by how many it served.
    for k in TRACKED {
        assert!(
            peak.get(k).copied().unwrap_or(0.0) < (total / 20) as f64,
            "{k} peaked at {:?} with {total} connections: it grows with them",
            peak.get(k)
        );
    }
    assert!(
        rss_after < rss_before + 32 * 1024,
        "VmRSS grew from {rss_before} to {rss_after} KiB"
    );
    eprintln!(
        "fault short connections: {total} connections in {:.1} s ({:.0}/s), {cross} violations; \
         state peak {peak:?}, after {settled:?}; vigie VmRSS {} KiB before, {} KiB after, \
         VmHWM {} KiB",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        rss_before,
        rss_after,
        hwm
    );
}
