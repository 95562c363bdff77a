//! The start-up report on the running kernel. `vigie probes` and `vigie run` name the kernel facts
//! Vigie chose its probes by (checked here against what the test reads itself), attach every
//! hook of the attach table and see each program run; under `lockdown=confidentiality` Vigie
//! refuses to start and says why. `cargo xtask vm-test` runs this on each kernel of the matrix.

use crate::harness::*;
use serde_json::Value;

/// Every hook of the attach table.
const HOOKS: usize = 50;
/// The programs behind the hooks attached: one of the three ways in for opens, and the ten
/// others where reads, writes, sendfile, accepts and closes are on their tracepoints (4
/// programs), or the 24 others where they are on BTF programs (14, one per syscall function).
const PROGRAMS_TRACEPOINTS: usize = 11;
const PROGRAMS_BTF: usize = 21;
/// The tracepoint programs the BTF programs on the syscall functions replace.
const SYSCALL_TRACEPOINTS: [&str; 4] = [
    "sys_enter_io",
    "sys_exit_io",
    "sys_exit_accept",
    "sys_enter_close",
];

/// Whether this kernel runs BPF trampolines, as far as the matrix row says (`cargo xtask
/// vm-test` names the open program each row must use): the BTF syscall programs must be used
/// there. `None` outside the matrix.
fn trampolines_expected() -> Option<bool> {
    let want = std::env::var("VIGIE_EXPECT_OPEN_PROGRAM").ok()?;
    (!want.is_empty()).then(|| want == "lsm_file_open" || want == "fentry_file_open")
}

/// Exactly one way for the syscalls: every BTF program on the syscall functions attached and
/// fired, their tracepoints on standby; or every one replaced, saying why, and the tracepoints
/// attached. Returns whether it is BTF.
fn check_syscall_ways(hooks: &[Value]) -> bool {
    let group: Vec<&Value> = hooks
        .iter()
        .filter(|h| h["group"] == "syscall functions")
        .collect();
    assert_eq!(group.len(), 14, "{hooks:#?}");
    let btf = group[0]["status"] == "attached";
    for h in &group {
        if btf {
            assert_eq!(h["status"], "attached", "{h:#}");
            assert!(h["fired"].as_u64().is_some_and(|n| n > 0), "{h:#}");
        } else {
            assert_eq!(h["status"], "replaced", "{h:#}");
            assert!(
                h["reason"].as_str().is_some_and(|r| r.contains(" instead")),
                "{h:#}"
            );
        }
    }
    for h in hooks
        .iter()
        .filter(|h| SYSCALL_TRACEPOINTS.iter().any(|p| h["program"] == *p))
    {
        if btf {
            assert_eq!(h["status"], "standby", "{h:#}");
        } else {
            assert_eq!(h["status"], "attached", "{h:#}");
            assert!(h["fired"].as_u64().is_some_and(|n| n > 0), "{h:#}");
        }
    }
    btf
}
/// The ways in for opens, best first, and how the start-up summary names each.
const OPEN_WAYS: [(&str, &str); 3] = [
    ("lsm_file_open", "exact, lsm file_open"),
    ("fentry_file_open", "exact, fentry security_file_open"),
    ("sys_enter_open", "as written, openat tracepoints"),
];

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The bracketed mode of `/sys/kernel/security/lockdown`, if readable.
fn lockdown() -> Option<String> {
    let text = read("/sys/kernel/security/lockdown")?;
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .map(str::to_string)
}

const REFUSAL: &str = "this kernel cannot run Vigie's probes: kernel lockdown is `confidentiality`";

#[test]
fn probes_report_matches_the_kernel_and_every_program_fires() {
    let Some(p) = privileged("probes_report_matches_the_kernel_and_every_program_fires") else {
        return;
    };
    let (ok, stdout, stderr) = vigie_cmd(&p, &["probes".as_ref(), "--json".as_ref()]);
    // Vigie mounts securityfs when it is missing: read the facts after it ran.
    if lockdown().as_deref() == Some("confidentiality") {
        assert!(
            !ok,
            "vigie probes must fail under confidentiality:\n{stdout}"
        );
        assert!(stderr.contains(REFUSAL), "{stderr}");
        assert!(stderr.contains("closes tracefs"), "{stderr}");
        assert!(
            stderr.contains("refuses BPF reads of kernel memory"),
            "{stderr}"
        );
        return;
    }
    assert!(ok, "vigie probes failed:\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("vigie probes --json");
    let facts = &report["facts"];
    let release = read("/proc/sys/kernel/osrelease").unwrap_or_default();
    assert_eq!(facts["release"], release.trim(), "{report:#}");
    assert_eq!(facts["btf"], true);
    assert_eq!(facts["tracefs"], true);
    match lockdown() {
        Some(mode) => assert_eq!(facts["lockdown"], mode.as_str()),
        None => assert_eq!(facts["lockdown"], Value::Null),
    }
    match read("/sys/kernel/security/lsm") {
        Some(lsms) => {
            let want: Vec<&str> = lsms.trim().split(',').collect();
            assert_eq!(facts["lsms"], serde_json::json!(want));
        }
        None => assert_eq!(facts["lsms"], Value::Null),
    }
    assert_eq!(report["fire_check_unavailable"], Value::Null);
    let hooks = report["hooks"].as_array().expect("hooks");
    assert_eq!(hooks.len(), HOOKS, "{report:#}");
    // The TLS hooks, on the system's libssl (`xtask setup` installs it with openssl): entry and
    // return of each of the five functions, attached.
    let tls = report["tls"].as_array().expect("tls");
    let functions = [
        "SSL_read",
        "SSL_read_ex",
        "SSL_write",
        "SSL_write_ex",
        "SSL_do_handshake",
    ];
    assert_eq!(tls.len(), 2 * functions.len(), "{report:#}");
    // The TLS hooks are uprobe.multi links on 6.6 and later, classic uprobes (attached while
    // Vigie holds its capabilities) before: attached either way, and the summary says which.
    let version = &facts["version"];
    let multi_uprobes =
        (version["major"].as_u64(), version["minor"].as_u64()) >= (Some(6), Some(6));
    for f in functions {
        for hook in ["uprobe", "uretprobe"] {
            assert!(
                tls.iter().any(|t| t["function"] == f
                    && t["hook"] == hook
                    && t["status"] == "attached"
                    && t["program"]
                        .as_str()
                        .is_some_and(|p| p.ends_with("_multi") == multi_uprobes)
                    && t["library"]
                        .as_str()
                        .is_some_and(|l| l.contains("libssl.so"))),
                "{hook} {f}: {report:#}"
            );
        }
    }
    let way = if multi_uprobes {
        "TLS hooked (uprobe.multi) in "
    } else {
        "TLS hooked (classic uprobes) in "
    };
    let (ok, text, _) = vigie_cmd(&p, &["probes".as_ref()]);
    assert!(ok && text.contains(way), "{text}");
    let bpf_lsm = facts["lsms"]
        .as_array()
        .is_some_and(|l| l.iter().any(|l| l == "bpf"));
    let way = check_open_ways(hooks, bpf_lsm);
    // Set by `cargo xtask vm-test` for each kernel of the matrix.
    if let Ok(want) = std::env::var("VIGIE_EXPECT_OPEN_PROGRAM")
        && !want.is_empty()
    {
        assert_eq!(OPEN_WAYS[way].0, want, "{report:#}");
    }
    let btf = check_syscall_ways(hooks);
    if let Some(expected) = trampolines_expected() {
        assert_eq!(btf, expected, "{report:#}");
    }
    for h in hooks {
        if OPEN_WAYS.iter().any(|(p, _)| h["program"] == *p)
            || h["group"] == "syscall functions"
            || SYSCALL_TRACEPOINTS.iter().any(|p| h["program"] == *p)
        {
            continue;
        }
        assert_eq!(h["status"], "attached", "{h:#}");
        assert!(h["fired"].as_u64().is_some_and(|n| n > 0), "{h:#}");
        assert!(
            h["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("baseline: ")),
            "{h:#}"
        );
    }
    let names: Vec<&str> = hooks.iter().filter_map(|h| h["hook"].as_str()).collect();
    for want in [
        "tracepoint syscalls/sys_enter_read",
        "fexit __x64_sys_read",
        "fentry __x64_sys_close",
        "tracepoint syscalls/sys_exit_openat",
        "tracepoint syscalls/sys_exit_accept4",
        "tracepoint sched/sched_process_exec",
        "raw_tracepoint sched_process_fork",
    ] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
}

/// Exactly one way in for opens is attached (and ran); the better ones before it were replaced,
/// saying why; the ones after it wait on standby. Returns its index in [`OPEN_WAYS`].
fn check_open_ways(hooks: &[Value], bpf_lsm: bool) -> usize {
    let statuses = |program: &str| -> Vec<&Value> {
        hooks.iter().filter(|h| h["program"] == program).collect()
    };
    let chosen = OPEN_WAYS
        .iter()
        .position(|(p, _)| statuses(p).iter().any(|h| h["status"] == "attached"))
        .expect("no way in for opens is attached");
    for (i, (program, _)) in OPEN_WAYS.iter().enumerate() {
        for h in statuses(program) {
            let want = match i.cmp(&chosen) {
                std::cmp::Ordering::Less => "replaced",
                std::cmp::Ordering::Equal => "attached",
                std::cmp::Ordering::Greater => "standby",
            };
            assert_eq!(h["status"], want, "{h:#}");
            if want == "attached" {
                assert!(h["fired"].as_u64().is_some_and(|n| n > 0), "{h:#}");
            }
        }
    }
    let lsm = statuses("lsm_file_open")[0];
    if !bpf_lsm {
        assert!(
            lsm["reason"]
                .as_str()
                .is_some_and(|r| r.contains("`bpf` is not an active LSM")),
            "{lsm:#}"
        );
    }
    chosen
}

/// Planned as if `bpf` were an active LSM where it is not, the LSM program attaches without
/// error and never runs: the fire check must catch it, and the next way in take over.
#[test]
fn an_lsm_program_that_attaches_but_cannot_run_is_caught() {
    let Some(p) = privileged("an_lsm_program_that_attaches_but_cannot_run_is_caught") else {
        return;
    };
    if lockdown().as_deref() == Some("confidentiality") {
        return; // Refused before any program loads: see the test above.
    }
    let lsms = read("/sys/kernel/security/lsm").unwrap_or_default();
    let bpf_lsm = lsms.trim().split(',').any(|l| l == "bpf");
    let mut cmd = std::process::Command::new(&p.vigie);
    cmd.args(["probes", "--json"])
        .env("VIGIE_ASSUME_BPF_LSM", "1");
    let out = cmd.output().expect("vigie probes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("vigie probes --json");
    let hooks = report["hooks"].as_array().expect("hooks");
    let lsm = hooks
        .iter()
        .find(|h| h["program"] == "lsm_file_open")
        .expect("lsm_file_open row");
    let way = check_open_ways(hooks, true);
    eprintln!("LSMs {}: {lsm:#}", lsms.trim());
    if bpf_lsm {
        // Nothing to catch: the LSM runs (or the kernel refuses BPF LSM programs outright).
        assert!(
            lsm["status"] == "attached"
                || lsm["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("BPF_PROG_LOAD")),
            "{lsm:#}"
        );
    } else {
        assert_eq!(lsm["status"], "replaced", "{lsm:#}");
        // A kernel built without the BPF LSM refuses the load instead. The matrix's kernels
        // have it built in (not active on this row), so there it must be the fire check.
        let in_matrix = std::env::var("VIGIE_EXPECT_OPEN_PROGRAM").is_ok_and(|v| !v.is_empty());
        let reason = lsm["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(
                "attached, but did not run when Vigie made it fire (open, read and close a file)"
            ) || (!in_matrix && reason.contains("BPF_PROG_LOAD")),
            "{lsm:#}"
        );
        assert_ne!(way, 0);
        assert!(stderr.contains("VIGIE_ASSUME_BPF_LSM=1"), "{stderr}");
    }
}

#[test]
fn vigie_run_logs_what_it_attached_and_why() {
    let Some(p) = privileged("vigie_run_logs_what_it_attached_and_why") else {
        return;
    };
    let dir = TempDir::new("report");
    let users = dir.path().join("users");
    let config = format!(
        "[targets]\nnames = [\"no-such-target\"]\n[documents]\nroots = [\"{u}\"]\nowner_templates = [\"{u}/{{owner}}/**\"]\n",
        u = users.display()
    );
    if lockdown().as_deref() == Some("confidentiality") {
        let cfg = dir.path().join("vigie.toml");
        std::fs::write(&cfg, &config).unwrap();
        std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let (ok, _, stderr) = vigie_cmd(
            &p,
            &[
                "run".as_ref(),
                "--no-metrics".as_ref(),
                "--config".as_ref(),
                cfg.as_os_str(),
            ],
        );
        assert!(!ok && stderr.contains(REFUSAL), "{stderr}");
        return;
    }
    let vigie = Vigie::start(&p, "report", &config, &[]);
    let (alerts, log) = vigie.stop();
    assert_eq!(verdicts(&alerts), [], "{log}");
    let release = read("/proc/sys/kernel/osrelease").unwrap_or_default();
    let btf = log.contains("syscalls hooked by BTF (fexit/fentry on the syscall functions)");
    if let Some(expected) = trampolines_expected() {
        assert_eq!(btf, expected, "{log}");
    }
    let (programs, syscalls) = if btf {
        (
            PROGRAMS_BTF,
            "attached fexit_read on fexit __x64_sys_read: preferred: ",
        )
    } else {
        (
            PROGRAMS_TRACEPOINTS,
            "attached sys_enter_io on tracepoint syscalls/sys_enter_read, sys_enter_pread64, ",
        )
    };
    for want in [
        format!("kernel {}, BTF yes, tracefs yes, lockdown ", release.trim()),
        syscalls.into(),
        "attached sched_process_fork on raw_tracepoint sched_process_fork: baseline: ".into(),
        format!("hooks attached, {programs}/{programs} programs fired, open paths "),
    ] {
        assert!(log.contains(&want), "{want:?} not in the log:\n{log}");
    }
    assert!(
        OPEN_WAYS.iter().any(|(_, how)| log.contains(&format!(
            "programs fired, open paths {how}, syscalls hooked by "
        ))),
        "{log}"
    );
    assert!(!log.contains("not attached"), "{log}");
    // The better ways in for opens that this kernel cannot use are replaced, with their reason.
    for line in log.lines().filter(|l| l.contains("replaced: ")) {
        assert!(
            line.contains("replaced: lsm file_open (lsm_file_open): ")
                || line.contains("replaced: fentry security_file_open (fentry_file_open): ")
                || (!btf && line.contains("replaced: fexit __x64_sys_"))
                || (!btf && line.contains("replaced: fentry __x64_sys_close (fentry_close): ")),
            "{line}\n{log}"
        );
    }
}
