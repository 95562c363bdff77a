//! What only a live run can know, read from `/proc`: which running processes are targets, the fds
//! they already hold, and the directory a relative path is relative to. Whatever is learned here
//! becomes an event (`FdFound`, `FileOpen.base`), so the correlator stays pure and replay sees
//! the same facts.
use std::{collections::HashMap, fs, path::Path};

use monitor_core::{
    events::{Event, EventKind, FoundFd},
    paths,
};

use crate::config::Config;

pub const AT_FDCWD: i32 = -100;

fn readlink(path: impl AsRef<Path>) -> Option<String> {
    fs::read_link(path).ok().map(|p| {
        use std::os::unix::ffi::OsStrExt as _;
        paths::from_bytes(p.as_os_str().as_bytes())
    })
}

pub fn comm_of(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

pub fn exe_of(pid: u32) -> Option<String> {
    readlink(format!("/proc/{pid}/exe"))
}

fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn ppid_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may contain spaces and parentheses, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Does a process match the selectors (by name, by executable)?
pub fn matches(cfg: &Config, pid: u32) -> bool {
    let name_match = comm_of(pid).is_some_and(|c| cfg.targets.names.contains(&c));
    name_match || exe_of(pid).is_some_and(|e| cfg.targets.executables.contains(&e))
}

/// Running processes to watch: selected pids and their descendants, and processes matching a
/// name or executable. Never Vigie itself.
pub fn initial_targets(cfg: &Config) -> Vec<u32> {
    let me = std::process::id();
    let pids = all_pids();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for &pid in &pids {
        if let Some(ppid) = ppid_of(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out: Vec<u32> = Vec::new();
    let mut stack: Vec<u32> = cfg.targets.pids.clone();
    stack.extend(pids.iter().copied().filter(|&p| matches(cfg, p)));
    while let Some(pid) = stack.pop() {
        if pid == me || out.contains(&pid) || !Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        out.push(pid);
        stack.extend(children.get(&pid).into_iter().flatten());
    }
    out.sort_unstable();
    out
}

/// The fds a process already holds that matter: sockets, and files under the document roots.
pub fn scan_fds(pid: u32, roots: &[String]) -> Vec<(i32, FoundFd)> {
    let denied = |e: &std::io::Error| e.kind() == std::io::ErrorKind::PermissionDenied;
    let dir = match fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(dir) => dir,
        Err(e) => {
            if denied(&e) {
                warn_fds_unreadable(pid);
            }
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    let mut unreadable = false;
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Some(target) = readlink(entry.path()) else {
            unreadable |= fs::read_link(entry.path()).is_err_and(|e| denied(&e));
            continue;
        };
        if target.starts_with("socket:") {
            found.push((fd, FoundFd::Socket));
        } else if let Some(path) = paths::normalize(&target)
            && roots.iter().any(|r| paths::is_under(&path, r))
        {
            found.push((fd, FoundFd::Document { path }));
        }
    }
    if unreadable {
        warn_fds_unreadable(pid);
    }
    found.sort_by_key(|(fd, _)| *fd);
    found
}

/// Without the capabilities to read another user's fd table, documents a target opened before
/// Vigie (file caches) are invisible: a blind spot that must not be silent.
fn warn_fds_unreadable(pid: u32) {
    tracing::warn!(
        pid,
        "permission denied reading /proc/{pid}/fd: documents this process already holds open \
         will be missed (Vigie needs CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE)"
    );
}

/// The document roots as the live side sees them. A root that is, or passes through, a symbolic
/// link (`/srv/portal/current/docs` -> `/data/docs`) has two names: the kernel's exact open paths
/// (`bpf_d_path`) and `/proc` fd links give the real one, a process may open either. Both are
/// watched, and documents are always named as configured, so owner templates, alerts and replay
/// do not depend on which way the kernel gave the path.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    pub configured: Vec<String>,
    /// `(real, configured)` for each root whose real path differs.
    pub aliases: Vec<(String, String)>,
}

impl Roots {
    /// Resolves each configured root's symbolic links now (a root that does not exist yet has
    /// no alias).
    pub fn read(configured: &[String]) -> Self {
        let aliases = configured
            .iter()
            .filter_map(|root| {
                let real = fs::canonicalize(root).ok()?.to_str()?.to_string();
                (real != root.trim_end_matches('/')).then(|| (real, root.clone()))
            })
            .collect();
        Self {
            configured: configured.to_vec(),
            aliases,
        }
    }

    /// Every name of every root: for the kernel's filter and the fd scans.
    pub fn all(&self) -> Vec<String> {
        let mut all = self.configured.clone();
        all.extend(self.aliases.iter().map(|(real, _)| real.clone()));
        all
    }

    /// `path` named as configured, when it is under a root's real path.
    pub fn configured_name(&self, path: &str) -> Option<String> {
        // A path under a configured root keeps its name, even when another root's real path
        // also covers it.
        if self.configured.iter().any(|r| paths::is_under(path, r)) {
            return None;
        }
        self.aliases
            .iter()
            .find_map(|(real, configured)| paths::rebase(path, real, configured))
    }

    /// Renames, in a live event, every path that names a document by a root's real path.
    pub fn rename(&self, ev: &mut Event) {
        if self.aliases.is_empty() {
            return;
        }
        match &mut ev.kind {
            // The path the correlator will resolve, renamed.
            EventKind::FileOpen {
                path,
                base,
                full_path,
                ..
            } => {
                let opened = paths::of_open(path, base.as_deref(), full_path.as_deref());
                if let Some(named) = opened.and_then(|p| self.configured_name(&p)) {
                    match full_path {
                        Some(full) => *full = named,
                        None => {
                            *path = named;
                            *base = None;
                        }
                    }
                }
            }
            EventKind::FdFound {
                found: FoundFd::Document { path },
                ..
            } => {
                if let Some(named) = self.configured_name(path) {
                    *path = named;
                }
            }
            _ => {}
        }
    }
}

/// Events describing a process that just became a target, as of now.
pub fn describe(pid: u32, roots: &[String], now_ns: u64) -> Vec<Event> {
    let exec = Event {
        ts_ns: now_ns,
        pid,
        tid: pid,
        comm: comm_of(pid).unwrap_or_default().into(),
        goid: None,
        kind: EventKind::ProcessExec,
    };
    let mut events = found_fds(&exec, roots);
    if let Some(found) = crate::runtime::found(&exec) {
        events.insert(0, found);
    }
    events.insert(0, exec);
    events
}

/// `FdFound` events for the fds the process of `at` holds now, stamped like `at` (time, thread,
/// name): at adoption, and after an exec (fds that survive it).
pub fn found_fds(at: &Event, roots: &[String]) -> Vec<Event> {
    scan_fds(at.pid, roots)
        .into_iter()
        .map(|(fd, found)| Event {
            ts_ns: at.ts_ns,
            pid: at.pid,
            tid: at.tid,
            comm: at.comm.clone(),
            goid: None,
            kind: EventKind::FdFound { fd, found },
        })
        .collect()
}

/// A thread asleep in a syscall, as `/proc/<pid>/task/<tid>/syscall` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sleeping {
    pub nr: i64,
    /// The six argument registers, as the syscall received them.
    pub args: [u64; 6],
}

/// Parses `/proc/<pid>/task/<tid>/syscall`: `nr a0 a1 a2 a3 a4 a5 sp pc` (the number in
/// decimal, the rest in hex) while the thread sleeps in a syscall; `-1 sp pc` outside of one,
/// `running` when it is on a CPU.
pub fn parse_syscall(text: &str) -> Option<Sleeping> {
    let mut fields = text.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = u64::from_str_radix(fields.next()?.strip_prefix("0x")?, 16).ok()?;
    }
    Some(Sleeping { nr, args })
}

/// The syscall thread `tid` of `pid` sleeps in now, if any.
pub fn sleeping_syscall(pid: u32, tid: u32) -> Option<Sleeping> {
    parse_syscall(&fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?)
}

/// Voluntary context switches of thread `tid` so far: it goes up each time the thread sleeps.
pub fn voluntary_switches(pid: u32, tid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

/// The threads of `pid` (ascending).
pub fn threads_of(pid: u32) -> Vec<u32> {
    let mut tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable();
    tids
}

/// Fills in what a live `FileOpen` needs from `/proc`: the base of a relative path, the full
/// path when the probe's capture was too short.
pub fn enrich(ev: &mut Event) {
    if let EventKind::FileOpen {
        fd,
        path,
        dirfd,
        truncated,
        base,
        full_path,
        ..
    } = &mut ev.kind
    {
        if *truncated {
            *full_path = readlink(format!("/proc/{}/fd/{fd}", ev.pid));
        }
        if !path.starts_with('/') {
            *base = if *dirfd == AT_FDCWD {
                readlink(format!("/proc/{}/task/{}/cwd", ev.pid, ev.tid))
                    .or_else(|| readlink(format!("/proc/{}/cwd", ev.pid)))
            } else {
                readlink(format!("/proc/{}/fd/{dirfd}", ev.pid))
            };
        }
    }
}

/// `CLOCK_MONOTONIC` now, in the kernel probes' time base.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_REALTIME - CLOCK_MONOTONIC`.
pub fn realtime_offset_ns() -> i64 {
    let mono = clock_ns(libc::CLOCK_MONOTONIC);
    let real = clock_ns(libc::CLOCK_REALTIME);
    i64::try_from(i128::from(real) - i128::from(mono)).unwrap_or(0)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_reached_by_a_roots_real_path_are_named_as_configured() {
        let roots = Roots {
            configured: vec!["/srv/current/docs".into()],
            aliases: vec![("/data/docs".into(), "/srv/current/docs".into())],
        };
        assert_eq!(roots.all(), ["/srv/current/docs", "/data/docs"]);
        let open = |path: &str, base: Option<&str>| Event {
            ts_ns: 1,
            pid: 2,
            tid: 2,
            comm: "portal".into(),
            goid: None,
            kind: EventKind::FileOpen {
                fd: 3,
                path: path.into(),
                dirfd: AT_FDCWD,
                truncated: false,
                base: base.map(str::to_string),
                full_path: None,
                flags: 0,
                exact: true,
            },
        };
        let renamed = |mut ev: Event| {
            roots.rename(&mut ev);
            match ev.kind {
                EventKind::FileOpen { path, base, .. } => (path, base),
                _ => unreachable!(),
            }
        };
        assert_eq!(
            renamed(open("/data/docs/bob/x.pdf", None)),
            ("/srv/current/docs/bob/x.pdf".to_string(), None)
        );
        // Relative to a working directory given by its real path.
        assert_eq!(
            renamed(open("bob/../bob/x.pdf", Some("/data/docs"))),
            ("/srv/current/docs/bob/x.pdf".to_string(), None)
        );
        // Already named as configured, or not a document: unchanged.
        for p in [
            "/srv/current/docs/bob/x.pdf",
            "/data/docs2/x",
            "/etc/passwd",
        ] {
            assert_eq!(renamed(open(p, None)), (p.to_string(), None));
        }
        let mut found = Event {
            kind: EventKind::FdFound {
                fd: 4,
                found: FoundFd::Document {
                    path: "/data/docs/alice/y".into(),
                },
            },
            ..open("", None)
        };
        roots.rename(&mut found);
        assert!(matches!(
            found.kind,
            EventKind::FdFound { found: FoundFd::Document { ref path }, .. } if path == "/srv/current/docs/alice/y"
        ));
    }

    #[test]
    fn syscall_file_forms() {
        assert_eq!(
            parse_syscall(
                "0 0x5 0x7fb8ee6d2000 0x1000 0x7fb8ee765b60 0xffffffff 0x0 0x7ffcd916d998 0x7fb8ee84e2ad\n"
            ),
            Some(Sleeping {
                nr: 0,
                args: [
                    5,
                    0x7fb8_ee6d_2000,
                    0x1000,
                    0x7fb8_ee76_5b60,
                    0xffff_ffff,
                    0
                ],
            })
        );
        assert_eq!(parse_syscall("-1 0x7ffcd916d998 0x7fb8ee84e2ad\n"), None);
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(parse_syscall("0 0x5 0x6\n"), None);
        assert_eq!(parse_syscall(""), None);
    }

    #[test]
    fn a_sleeping_thread_of_this_process_is_seen_in_its_syscall() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let mut b = [0u8; 7];
            std::io::Read::read(&mut reader, &mut b).unwrap()
        });
        let tid = rx.recv().unwrap();
        let me = std::process::id();
        // Until the thread is asleep in read(2) on the pipe (bounded).
        let start = std::time::Instant::now();
        let seen = loop {
            if let Some(s) = sleeping_syscall(me, tid).filter(|s| s.nr == libc::SYS_read) {
                break s;
            }
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
            std::thread::yield_now();
        };
        assert_eq!(seen.args[2], 7);
        assert!(threads_of(me).contains(&tid));
        assert!(voluntary_switches(me, tid).is_some());
        drop(writer);
        assert_eq!(t.join().unwrap(), 0);
    }
}
