//! The start-up report on the running kernel. `vigie probes` and `vigie run` name the kernel facts
//! Vigie chose its probes by (checked here against what the test reads itself), attach every
//! hook of the attach table and see each program run; under `lockdown=confidentiality` Vigie
//! refuses to start and says why. `cargo xtask vm-test` runs this on each kernel of the matrix.
mod support;

use serde_json::Value;
use support::*;

/// Every hook of the attach table: all of them attach on the kernels Vigie supports.
const HOOKS: usize = 34;
/// The programs behind them.
const PROGRAMS: usize = 11;

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
    for h in hooks {
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
        "tracepoint syscalls/sys_exit_openat",
        "tracepoint syscalls/sys_exit_accept4",
        "tracepoint sched/sched_process_exec",
        "raw_tracepoint sched_process_fork",
    ] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
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
    for want in [
        format!("kernel {}, BTF yes, tracefs yes, lockdown ", release.trim()),
        "attached sys_enter_io on tracepoint syscalls/sys_enter_read, sys_enter_pread64, ".into(),
        "attached sched_process_fork on raw_tracepoint sched_process_fork: baseline: ".into(),
        format!("probes: {HOOKS}/{HOOKS} hooks attached, {PROGRAMS}/{PROGRAMS} programs fired"),
    ] {
        assert!(log.contains(&want), "{want:?} not in the log:\n{log}");
    }
    assert!(!log.contains("not attached"), "{log}");
}
