//! The fire check: after attaching, Vigie makes each program's kernel event happen itself and
//! reads how many times the program ran (the kernel's BPF run statistics). Attaching is no proof
//! of running: an LSM program attaches when `bpf` is not an active LSM and then never runs.
//!
//! The probes run for every process and filter targets inside, so Vigie's own syscalls make them
//! run without producing any event (Vigie is no target). Statistics are on only for the check.
use std::{
    collections::BTreeMap,
    io::Read as _,
    os::unix::net::{UnixListener, UnixStream},
    process::{Command, Stdio},
};

use aya::{
    Ebpf,
    sys::{Stats, enable_stats},
};

use crate::attach::Trigger;

/// Run counts of `programs` while Vigie triggered each once. `Err` says why the check could not
/// run at all (BPF statistics need CAP_SYS_ADMIN). A program whose trigger failed is left out:
/// unchecked, not failed.
pub fn fire_check(
    ebpf: &Ebpf,
    programs: &BTreeMap<&'static str, Trigger>,
) -> Result<BTreeMap<&'static str, u64>, String> {
    let _stats = match enable_stats(Stats::RunTime) {
        Ok(fd) => Some(fd),
        // Someone turned them on for the whole system: they count anyway.
        Err(_) if stats_enabled_by_sysctl() => None,
        Err(e) => {
            return Err(format!(
                "BPF run statistics unavailable: {e}: {}; they need CAP_SYS_ADMIN or kernel.bpf_stats_enabled=1",
                e.io_error
            ));
        }
    };
    let run_count = |name: &str| -> Option<u64> {
        let info = ebpf.program(name)?.info().ok()?;
        Some(info.run_count())
    };
    let before: BTreeMap<_, _> = programs
        .keys()
        .filter_map(|p| Some((*p, run_count(p)?)))
        .collect();
    let triggers: std::collections::BTreeSet<Trigger> = programs.values().copied().collect();
    let mut failed = Vec::new();
    for trigger in triggers {
        if let Err(e) = run(trigger) {
            tracing::warn!("fire check: could not {}: {e}", trigger.describe());
            failed.push(trigger);
        }
    }
    Ok(programs
        .iter()
        .filter(|(_, t)| !failed.contains(t))
        .filter_map(|(p, _)| {
            let after = run_count(p)?;
            Some((*p, after.saturating_sub(*before.get(p)?)))
        })
        .collect())
}

fn stats_enabled_by_sysctl() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
}

/// Makes the kernel event of `trigger` happen, synchronously: when this returns, the programs on
/// it have run.
fn run(trigger: Trigger) -> std::io::Result<()> {
    match trigger {
        Trigger::FileIo => {
            // openat, read, close.
            let mut buf = [0u8; 64];
            let mut f = std::fs::File::open("/proc/self/stat")?;
            let _ = f.read(&mut buf)?;
            Ok(())
        }
        Trigger::Accept => {
            // An abstract Unix socket: no file, no network, allowed by the systemd unit.
            use std::os::linux::net::SocketAddrExt as _;
            let name = format!("vigie-fire-check-{}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            let listener = UnixListener::bind_addr(&addr)?;
            let _client = UnixStream::connect_addr(&addr)?;
            let _ = listener.accept()?;
            Ok(())
        }
        Trigger::Syscalls => {
            // Each fails with EBADF, after entering and leaving its syscall function.
            for (_, nr, _) in crate::attach::IO_SYSCALLS
                .iter()
                .chain(crate::attach::ACCEPT_SYSCALLS)
                .chain(crate::attach::CLOSE_SYSCALLS)
            {
                // SAFETY: both possible fds are -1 (sendfile's in_fd is the second argument),
                // the rest 0: the kernel returns EBADF before it would look at any pointer.
                unsafe { libc::syscall(*nr, -1, -1, 0, 0, 0, 0) };
            }
            Ok(())
        }
        Trigger::Spawn => {
            // fork, exec and exit, with Vigie's own binary (always there).
            let status = Command::new("/proc/self/exe")
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "`vigie --version`: {status}"
                )))
            }
        }
    }
}
