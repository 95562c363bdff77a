//! Both ways of hooking reads, writes, sendfile, accepts and closes give the same alerts: BTF
//! programs on the syscall functions (`fexit __x64_sys_read`, ...), and the syscall tracepoints
//! they fall back to (`vigie run --hooks tracepoints`). One concurrent multi-user scenario on a
//! prefork portal (`recvfrom`, `sendfile`, `sendto`, `accept4`, `close`), run once each way, must
//! give the same accesses, and the expected ones. Needs root (see `crate::harness::privileged`).

use std::collections::BTreeMap;

use crate::harness::*;

/// Every user's connections at once: 2 per user, 20 requests each.
const MIX: Mix = Mix {
    connections: 2,
    requests: 20,
    seed: (7919, 3, 104_729),
    check_bodies: false,
};

/// How the start-up summary names the BTF way.
const BTF: &str = "syscalls hooked by BTF (fexit/fentry on the syscall functions)";

/// One run of the scenario on a fresh portal: the accesses expected, Vigie's score and its log.
fn run(
    p: &Privileged,
    test: &str,
    vigie_args: &[&str],
) -> (BTreeMap<Access, usize>, Score, String) {
    let (portal, vigie) = start_watched(p, test, &["--model", "prefork"], vigie_args);
    let expected = MIX.run(&portal.addr(), &portal.users);
    let (alerts, log) = vigie.stop();
    (expected.clone(), Score::of(&expected, &alerts), log)
}

/// Where the kernel runs BTF programs, they are what hooks the syscalls; elsewhere the report
/// must say why not. The comparison then runs on the kernels of the matrix (`cargo xtask
/// vm-test`: 6.1 and 6.12, where fentry and the BPF LSM work), not on a host that refuses BPF
/// trampolines (such as this project's CI machine, 6.18: EPERM): comparing the tracepoints
/// with themselves would prove nothing, and a skip would hide a kernel that should have used
/// BTF. That is why the rows' expected way in for opens decides: a row that expects an open
/// program on BPF trampolines (`lsm_file_open` or `fentry_file_open`) must have the syscalls on
/// BTF too.
#[test]
fn btf_syscall_hooks_and_tracepoints_give_the_same_alerts() {
    const TEST: &str = "btf_syscall_hooks_and_tracepoints_give_the_same_alerts";
    let Some(p) = privileged(TEST) else {
        return;
    };
    let (expected, btf, btf_log) = run(&p, TEST, &["--audit"]);
    let summary = btf_log
        .lines()
        .find(|l| l.contains("syscalls hooked by "))
        .unwrap_or_else(|| panic!("no syscall hooks in the start-up summary:\n{btf_log}"));
    let trampolines = std::env::var("VIGIE_EXPECT_OPEN_PROGRAM")
        .is_ok_and(|p| p == "lsm_file_open" || p == "fentry_file_open");
    if !summary.contains(BTF) {
        assert!(
            !trampolines,
            "BPF trampolines work on this kernel, and yet: {summary}\n{btf_log}"
        );
        // The fallback, with its reason: `syscalls hooked by tracepoints (<why>)`.
        let why = summary
            .split("syscalls hooked by tracepoints (")
            .nth(1)
            .unwrap_or_else(|| panic!("neither way named: {summary}"));
        assert!(why.len() > 2, "no reason given: {summary}");
        eprintln!(
            "{TEST}: this kernel refuses BPF trampolines ({why}); both ways are compared in the kernel matrix (cargo xtask vm-test)"
        );
        assert_eq!(btf.found, expected, "{btf}\n{btf_log}");
        return;
    }
    // The BTF programs really ran: attached, each fired, none replaced.
    for program in [
        "fexit_recvfrom",
        "fexit_sendfile64",
        "fexit_sendto",
        "fentry_close",
    ] {
        assert!(
            btf_log.contains(&format!("attached {program} on f")),
            "{program} not attached:\n{btf_log}"
        );
    }
    assert!(!btf_log.contains("replaced: fexit "), "{btf_log}");
    let (expected_tp, tracepoints, tp_log) = run(&p, TEST, &["--audit", "--hooks", "tracepoints"]);
    assert!(
        tp_log.contains("syscalls hooked by tracepoints (tracepoints forced"),
        "{tp_log}"
    );
    eprintln!("BTF hooks: {btf}\ntracepoints: {tracepoints}");
    // The scenario is deterministic: the same accesses are expected of both runs.
    assert_eq!(expected, expected_tp);
    assert_eq!(btf.found, expected, "BTF hooks: {btf}\n{btf_log}");
    assert_eq!(
        tracepoints.found, expected,
        "tracepoints: {tracepoints}\n{tp_log}"
    );
    assert_eq!(btf.found, tracepoints.found);
    assert_eq!(
        (btf.precision(), btf.recall()),
        (tracepoints.precision(), tracepoints.recall())
    );
}

/// Seconds of load in each round of [`measure_btf_hooks_against_tracepoints`]
/// (`VIGIE_MEASURE_SECONDS`), and rounds (`VIGIE_MEASURE_ROUNDS`).
fn measure_setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `kernel.bpf_stats_enabled` on for as long as this lives (the programs' run time is only
/// counted then), back to what it was after.
struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn on() -> Self {
        let before = std::fs::read_to_string(Self::PATH).unwrap_or_else(|_| "0".into());
        std::fs::write(Self::PATH, "1").expect("turning kernel.bpf_stats_enabled on");
        Self(before.trim().to_string())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// `seconds` of load on the portal at `addr`: every user on two keep-alive connections, reading
/// their own documents in turn. Returns the requests answered.
fn load(addr: &str, seconds: u64) -> u64 {
    use vigie_tests::{
        client::KeepAlive,
        portal::{DOCUMENTS, USERS},
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    std::thread::scope(|s| {
        let workers: Vec<_> = USERS
            .iter()
            .flat_map(|user| [user, user])
            .map(|user| {
                s.spawn(move || {
                    let mut c = KeepAlive::connect(addr).expect("connecting");
                    let mut n = 0u64;
                    while std::time::Instant::now() < until {
                        let doc = DOCUMENTS[n as usize % DOCUMENTS.len()];
                        let (status, _) = c
                            .get(&format!("/docs/{user}/{doc}"), &[("X-Remote-User", user)])
                            .expect("request");
                        assert_eq!(status, 200);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("load")).sum()
    })
}

/// Total run time of the probes (ns) in Vigie's `/metrics` at `addr`, and of each program.
fn probe_run_ns(addr: &str) -> (f64, BTreeMap<String, f64>) {
    let (_, body) =
        vigie_tests::client::http_get(addr, "/metrics", &[]).expect("GET /metrics from Vigie");
    let text = String::from_utf8_lossy(&body);
    let mut by_program = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("vigie_probe_run_seconds_total{program=\"") else {
            continue;
        };
        let Some((program, value)) = rest.split_once("\"} ") else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            by_program.insert(program.to_string(), v * 1e9);
        }
    }
    (by_program.values().sum(), by_program)
}

/// What `cargo xtask bench --vm` reports (not a test: ignored, and run by name there). The
/// demo portal (thread model: `read`, `write`, `accept4`, `close`) under load, in interleaved
/// rounds: nothing attached, Vigie on the syscall tracepoints (`--hooks tracepoints`), Vigie on
/// the BTF programs. Prints, per way, the throughput against the detached rounds and the
/// probes' run time per request (from the kernel's BPF statistics, on for every round).
#[test]
#[ignore = "a measurement, run by `cargo xtask bench --vm`"]
fn measure_btf_hooks_against_tracepoints() {
    const TEST: &str = "measure_btf_hooks_against_tracepoints";
    let Some(p) = privileged(TEST) else {
        return;
    };
    let seconds = measure_setting("VIGIE_MEASURE_SECONDS", 5);
    let rounds = measure_setting("VIGIE_MEASURE_ROUNDS", 3);
    let portal = Portal::start(TEST, &["--model", "thread"]);
    let _stats = BpfStats::on();
    let ways: [(&str, Option<&[&str]>); 3] = [
        ("detached", None),
        ("tracepoints", Some(&["--hooks", "tracepoints"])),
        ("btf", Some(&["--hooks", "auto"])),
    ];
    // way -> (requests, seconds, probe ns) summed over rounds, and per program.
    let mut totals: BTreeMap<&str, (u64, u64, f64)> = BTreeMap::new();
    let mut programs: BTreeMap<&str, BTreeMap<String, f64>> = BTreeMap::new();
    for round in 0..rounds {
        for (way, args) in ways {
            let (requests, ns) = match args {
                None => (load(&portal.addr(), seconds), 0.0),
                Some(args) => {
                    let metrics = format!("127.0.0.1:{}", free_port());
                    let mut all = vec!["--metrics-addr", metrics.as_str()];
                    all.extend_from_slice(args);
                    let vigie = Vigie::start(&p, TEST, &portal.config_by_pid(), &all);
                    let (before, _) = probe_run_ns(&metrics);
                    let requests = load(&portal.addr(), seconds);
                    let (after, each) = probe_run_ns(&metrics);
                    let log = vigie.log();
                    let want = if way == "btf" {
                        BTF
                    } else {
                        "tracepoints forced"
                    };
                    assert!(log.contains(want), "{way}: {want:?} not in the log:\n{log}");
                    drop(vigie.stop());
                    let slot = programs.entry(way).or_default();
                    for (program, ns) in each {
                        *slot.entry(program).or_default() += ns;
                    }
                    (requests, after - before)
                }
            };
            eprintln!(
                "VIGIE-MEASURE round={round} way={way} requests={requests} req_per_s={:.0} probe_ns_per_request={:.0}",
                requests as f64 / seconds as f64,
                ns / requests.max(1) as f64
            );
            let t = totals.entry(way).or_default();
            t.0 += requests;
            t.1 += seconds;
            t.2 += ns;
        }
    }
    let rate = |way: &str| totals[way].0 as f64 / totals[way].1 as f64;
    for (way, _) in ways {
        let (requests, _, ns) = totals[way];
        assert!(requests > 0, "{way}: no request answered");
        eprintln!(
            "VIGIE-MEASURE-SUMMARY way={way} req_per_s={:.0} throughput_ratio={:.3} probe_ns_per_request={:.0}",
            rate(way),
            rate(way) / rate("detached"),
            ns / requests as f64
        );
    }
    for (way, each) in &programs {
        let requests = totals[way].0 as f64;
        let list: Vec<String> = each
            .iter()
            .filter(|(_, ns)| **ns > 0.0)
            .map(|(p, ns)| format!("{p}={:.0}", ns / requests))
            .collect();
        eprintln!(
            "VIGIE-MEASURE-PROGRAMS way={way} ns_per_request: {}",
            list.join(" ")
        );
    }
}
