//! Least privilege: once the probes are loaded and attached, Vigie drops every capability it no
//! longer uses, from its effective, permitted, inheritable, ambient and bounding sets, and sets
//! `no_new_privs`. What stays, and why:
//! - `CAP_BPF`: updating the probes' maps at run time (new targets at fork/exec, fds found in
//!   `/proc`). On kernels that still gate every `bpf()` command behind it when unprivileged BPF
//!   is disabled, map updates fail without it.
//! - `CAP_SYS_PTRACE`: reading `/proc/<pid>/fd`, `cwd` and `exe` of target processes running as
//!   other users (fds opened before Vigie, relative paths, executable selectors).
//! - `CAP_DAC_READ_SEARCH`: the same `/proc` reads when the target's directories are not
//!   readable by root's DAC alone.
//! - `CAP_PERFMON`: attaching uprobes to the TLS library of a target that starts, or loads it,
//!   after Vigie (`perf_event_open` of a uprobe needs it); the programs were loaded at start-up.
//!
//! Gone after start-up: `CAP_SYS_ADMIN` (loading programs, attaching tracepoints, mounting
//! tracefs), `CAP_SYS_NICE` (the reader's priority, [`set_nice`]), and
//! everything else root would have, e.g. `CAP_DAC_OVERRIDE`, `CAP_SETUID`, `CAP_NET_ADMIN`. A
//! compromised Vigie can no longer load programs, mount filesystems or write files it does not
//! own.

/// Capability numbers (linux/capability.h).
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SETPCAP: u32 = 8;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// What Vigie keeps after attaching.
pub const KEPT: [u32; 4] = [CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH];

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0u64, |m, c| m | (1u64 << c))
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(Iterator::count)
        .unwrap_or(1)
}

/// Drops everything but [`KEPT`]. Returns the effective set kept (a bit mask).
pub fn drop_after_attach() -> std::io::Result<u64> {
    // Capabilities are per thread: every thread must do this, so it must run while there is one.
    let n = threads();
    if n != 1 {
        return Err(std::io::Error::other(format!(
            "{n} threads: capabilities can only be dropped process-wide from a single thread"
        )));
    }
    // SAFETY: prctl/capget/capset with valid arguments and structs of the kernel's layout.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let keep = mask(&KEPT);
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let effective = u64::from(data[0].effective) | (u64::from(data[1].effective) << 32);
        // The bounding set needs CAP_SETPCAP; under a unit that already bounds the set (systemd's
        // CapabilityBoundingSet) it is not there, and the unit's bound applies.
        if effective & (1 << CAP_SETPCAP) != 0 {
            for cap in 0..=last_cap() {
                if keep & (1 << cap) == 0 {
                    libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0);
                }
            }
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        let permitted = u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32);
        let kept = permitted & keep;
        #[expect(
            clippy::cast_possible_truncation,
            reason = "splitting a 64-bit mask in two halves"
        )]
        let halves = [kept as u32, (kept >> 32) as u32];
        for (d, half) in data.iter_mut().zip(halves) {
            *d = CapData {
                effective: half,
                permitted: half,
                inheritable: 0,
            };
        }
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(kept)
    }
}

/// Capability names for logs.
pub fn describe(mask: u64) -> Vec<&'static str> {
    [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
    ]
    .into_iter()
    .filter(|(c, _)| mask & (1 << c) != 0)
    .map(|(_, n)| n)
    .collect()
}

/// Sets the calling thread's nice value (and so that of the threads it starts afterwards) to
/// `nice`, unless it is 0 or already that. Raising the priority needs `CAP_SYS_NICE`: called
/// before the capabilities are dropped (under systemd, the unit's `Nice=` does it instead).
/// Returns the value set, if it changed.
pub fn set_nice(nice: i32) -> std::io::Result<Option<i32>> {
    if nice == 0 {
        return Ok(None);
    }
    // SAFETY: getpriority/setpriority on the calling thread; -1 is a valid priority, so errno
    // is cleared first to tell it from an error.
    unsafe {
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, 0);
        if now == -1 && *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if now == nice {
            return Ok(None);
        }
        if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(Some(nice))
}
