//! Which program goes on which kernel hook, and why. A declarative table (program, hook, the
//! oldest kernel that has it, what else it needs, its fallback, how to check that it really
//! fires), a pure planner that decides from the kernel's facts, and the report that `vigie run`
//! logs and `vigie probes` prints. The loader executes the plan (`loader::Probes::load`).
//!
//! Attaching is not enough: an LSM program attaches without error when `bpf` is not an active
//! LSM, and then never runs. So each program has a fire check: after attaching, Vigie makes the
//! kernel event happen itself (a file read, an accepted connection, a child process) and reads the
//! program's run count. A program that did not run is treated like one that failed to attach.
use std::fmt;

use monitor_common::op;

use crate::{
    config::HookChoice,
    kernel::{KernelFacts, KernelVersion, Lockdown},
};

/// The oldest kernel the probes load on: they write to a BPF ring buffer (5.8) and read with
/// `bpf_probe_read_kernel`/`_user` (5.5).
pub const MIN_KERNEL: KernelVersion = KernelVersion::new(5, 8, 0);

/// The syscalls each generic program is attached to, with the `op` it reports them as.
pub const IO_SYSCALLS: &[(&str, i64, u32)] = &[
    ("read", libc::SYS_read, op::READ),
    ("pread64", libc::SYS_pread64, op::PREAD64),
    ("readv", libc::SYS_readv, op::READV),
    ("preadv", libc::SYS_preadv, op::PREADV),
    ("recvfrom", libc::SYS_recvfrom, op::RECVFROM),
    ("recvmsg", libc::SYS_recvmsg, op::RECVMSG),
    ("write", libc::SYS_write, op::WRITE),
    ("writev", libc::SYS_writev, op::WRITEV),
    ("sendto", libc::SYS_sendto, op::SENDTO),
    ("sendmsg", libc::SYS_sendmsg, op::SENDMSG),
    ("sendfile64", libc::SYS_sendfile, op::SENDFILE64),
];
pub const OPEN_SYSCALLS: &[(&str, i64, u32)] = &[
    ("openat", libc::SYS_openat, op::OPENAT),
    ("openat2", libc::SYS_openat2, op::OPENAT2),
];
pub const ACCEPT_SYSCALLS: &[(&str, i64, u32)] = &[
    ("accept", libc::SYS_accept, op::ACCEPT),
    ("accept4", libc::SYS_accept4, op::ACCEPT4),
];
pub const CLOSE_SYSCALLS: &[(&str, i64, u32)] = &[("close", libc::SYS_close, op::CLOSE)];
pub const MMAP_SYSCALLS: &[(&str, i64, u32)] = &[("mmap", libc::SYS_mmap, op::MMAP)];

/// Every syscall a program is attached to, for the `SYSCALL_OPS` map.
pub fn all_syscalls() -> impl Iterator<Item = &'static (&'static str, i64, u32)> {
    IO_SYSCALLS
        .iter()
        .chain(OPEN_SYSCALLS)
        .chain(ACCEPT_SYSCALLS)
        .chain(CLOSE_SYSCALLS)
        .chain(MMAP_SYSCALLS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// A tracefs event, through perf (`category/name`).
    Tracepoint,
    /// A raw tracepoint, by name: the kernel's arguments, no tracefs.
    RawTracepoint,
    /// A BPF LSM hook (runs only when `bpf` is an active LSM).
    Lsm,
    /// A BTF-typed function entry probe.
    Fentry,
    /// A BTF-typed function exit probe (the arguments and the return value).
    Fexit,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hook {
    pub kind: HookKind,
    /// The tracefs category of a tracepoint (`syscalls`, `sched`); empty for the others.
    pub category: &'static str,
    pub name: String,
}

impl Hook {
    pub fn tracepoint(category: &'static str, name: impl Into<String>) -> Self {
        Self {
            kind: HookKind::Tracepoint,
            category,
            name: name.into(),
        }
    }

    pub fn raw_tracepoint(name: impl Into<String>) -> Self {
        Self {
            kind: HookKind::RawTracepoint,
            category: "",
            name: name.into(),
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            HookKind::Tracepoint => write!(f, "tracepoint {}/{}", self.category, self.name),
            HookKind::RawTracepoint => write!(f, "raw_tracepoint {}", self.name),
            HookKind::Lsm => write!(f, "lsm {}", self.name),
            HookKind::Fentry => write!(f, "fentry {}", self.name),
            HookKind::Fexit => write!(f, "fexit {}", self.name),
        }
    }
}

/// What a program needs from the kernel besides its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// Tracepoint ids and record layouts, read from tracefs.
    Tracefs,
    /// Reads of kernel memory with `bpf_probe_read_kernel` (tracepoint records, the task's fd
    /// table, a new task's ids).
    KernelReads,
    /// `bpf` among the active LSMs: otherwise an LSM program attaches and never runs.
    BpfLsm,
}

/// What to do when a program cannot be used on this kernel (unmet need, attach error, or it did
/// not fire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// None: Vigie refuses to start without it.
    Required,
    /// Go on without it; the text says what is then not seen.
    Skip(&'static str),
    /// Use these programs' entries (marked `standby`) instead.
    Programs(&'static [&'static str]),
}

/// How the fire check makes a program run: Vigie does this itself right after attaching. The
/// programs run for any process (their target filter comes after), so Vigie's own syscalls count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Open, read and close a file.
    FileIo,
    /// Accept a connection on a Unix socket.
    Accept,
    /// Start a child process and reap it (fork, exec, exit).
    Spawn,
    /// Call each hooked syscall once, on fd -1: it fails with `EBADF`, and the programs on the
    /// syscall functions' entry and return run all the same.
    Syscalls,
}

impl Trigger {
    pub fn describe(self) -> &'static str {
        match self {
            Self::FileIo => "open, read and close a file",
            Self::Accept => "accept a connection on a Unix socket",
            Self::Spawn => "start and reap a child process",
            Self::Syscalls => "call each hooked syscall on fd -1",
        }
    }
}

/// One row of the attach table: `program` on `hook`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    /// The program's name in the eBPF object.
    pub program: &'static str,
    pub hook: Hook,
    /// The oldest kernel that has the hook (and everything the program uses).
    pub min_kernel: KernelVersion,
    pub needs: &'static [Need],
    pub fallback: Fallback,
    pub fire_check: Trigger,
    /// Used only as another program's [`Fallback::Programs`].
    pub standby: bool,
    /// Entries that are used together or not at all: one that cannot be used takes the others
    /// of its group to their fallbacks with it (see [`SYSCALL_FUNCTIONS`]).
    pub group: Option<&'static str>,
    /// Why it is there: what it sees.
    pub why: &'static str,
}

const TRACEPOINT: &[Need] = &[Need::Tracefs, Need::KernelReads];
const TRACEPOINT_NO_READS: &[Need] = &[Need::Tracefs];

/// `bpf_d_path` (5.10) in a BTF program on `file_open`.
const EXACT_PATHS: KernelVersion = KernelVersion::new(5, 10, 0);

/// The group of BTF programs on the syscall functions (`fexit __x64_sys_read`, ...), which
/// replace the syscall tracepoints of reads, writes, sendfile, accepts and closes. They fall
/// back as a group: whatever stops one (no BPF trampolines, a refusal by the kernel or the
/// verifier, a program that does not fire) almost always stops them all, and a mix would make
/// the report, and a comparison of both ways on one kernel, hard to read. Each falls back to
/// the tracepoint programs of its own syscalls.
pub const SYSCALL_FUNCTIONS: &str = "syscall functions";

/// The kernel function behind syscall `name` (the `pt_regs` wrapper `SYSCALL_DEFINE` makes).
pub fn syscall_function(name: &str) -> String {
    format!("{SYSCALL_FUNCTION_PREFIX}{name}")
}

#[cfg(target_arch = "aarch64")]
const SYSCALL_FUNCTION_PREFIX: &str = "__arm64_sys_";
#[cfg(not(target_arch = "aarch64"))]
const SYSCALL_FUNCTION_PREFIX: &str = "__x64_sys_";

/// The attach table. A program with a [`Fallback::Programs`] comes before the standby entries
/// it falls back to.
///
/// Opens have three ways in, best first: the BPF LSM `file_open` hook, `fentry` on
/// `security_file_open` (BPF trampolines, where the BPF LSM is not active), then the `openat`
/// tracepoints. The first two read the opened file's exact path with `bpf_d_path`; the
/// tracepoint reads the path argument as the process wrote it. `sys_exit_open` is needed by all
/// three: the fd is only known at the syscall's exit.
///
/// Reads, writes, sendfile, accepts and closes have two: BTF programs on the syscall functions
/// (the [`SYSCALL_FUNCTIONS`] group), then the syscall tracepoints, on standby until the group
/// falls back (or `--hooks tracepoints` forces them).
pub fn table() -> Vec<Entry> {
    let mut rows = vec![
        Entry {
            program: "lsm_file_open",
            hook: Hook {
                kind: HookKind::Lsm,
                category: "",
                name: "file_open".into(),
            },
            min_kernel: EXACT_PATHS,
            needs: &[Need::BpfLsm],
            fallback: Fallback::Programs(&["fentry_file_open"]),
            fire_check: Trigger::FileIo,
            standby: false,
            group: None,
            why: "preferred: exact path of every open by a target (bpf_d_path: symlinks and `..` resolved)",
        },
        Entry {
            program: "fentry_file_open",
            hook: Hook {
                kind: HookKind::Fentry,
                category: "",
                name: "security_file_open".into(),
            },
            min_kernel: EXACT_PATHS,
            needs: &[],
            fallback: Fallback::Programs(&["sys_enter_open"]),
            fire_check: Trigger::FileIo,
            standby: true,
            group: None,
            why: "exact path of every open by a target (bpf_d_path), without the BPF LSM",
        },
    ];
    // Reads, writes, sendfile, accepts and closes: one BTF program per syscall function, each
    // with what its tracepoint pair does, in one program and without the stash between them.
    let mut btf = |program: &'static str,
                   kind: HookKind,
                   syscall: &str,
                   fallback: &'static [&'static str],
                   why: &'static str| {
        rows.push(Entry {
            program,
            hook: Hook {
                kind,
                category: "",
                name: syscall_function(syscall),
            },
            min_kernel: MIN_KERNEL,
            needs: &[],
            fallback: Fallback::Programs(fallback),
            fire_check: Trigger::Syscalls,
            standby: false,
            group: Some(SYSCALL_FUNCTIONS),
            why,
        });
    };
    for (name, _, _) in IO_SYSCALLS {
        btf(
            fexit_program(name),
            HookKind::Fexit,
            name,
            &["sys_enter_io", "sys_exit_io"],
            "preferred: document reads, sendfile, request and response heads (arguments and byte count in one program)",
        );
    }
    for (name, _, _) in ACCEPT_SYSCALLS {
        btf(
            fexit_program(name),
            HookKind::Fexit,
            name,
            &["sys_exit_accept"],
            "preferred: new connections",
        );
    }
    btf(
        "fentry_close",
        HookKind::Fentry,
        "close",
        &["sys_enter_close"],
        "preferred: end of documents and connections",
    );
    let mut syscalls = |program: &'static str,
                        prefix: &str,
                        set: &[(&str, i64, u32)],
                        trigger: Trigger,
                        why: &'static str| {
        for (name, _, _) in set {
            rows.push(Entry {
                program,
                hook: Hook::tracepoint("syscalls", format!("{prefix}{name}")),
                min_kernel: MIN_KERNEL,
                needs: TRACEPOINT,
                fallback: Fallback::Required,
                fire_check: trigger,
                standby: false,
                group: None,
                why,
            });
        }
    };
    syscalls(
        "sys_enter_open",
        "sys_enter_",
        OPEN_SYSCALLS,
        Trigger::FileIo,
        "",
    );
    syscalls(
        "sys_exit_open",
        "sys_exit_",
        OPEN_SYSCALLS,
        Trigger::FileIo,
        "baseline: document opens under the roots (the fd, and the path from file_open or the argument)",
    );
    syscalls(
        "sys_enter_io",
        "sys_enter_",
        IO_SYSCALLS,
        Trigger::FileIo,
        "baseline: classifies the fd (socket, document) and stashes the buffer",
    );
    syscalls(
        "sys_exit_io",
        "sys_exit_",
        IO_SYSCALLS,
        Trigger::FileIo,
        "baseline: document reads, sendfile, request and response heads",
    );
    syscalls(
        "sys_exit_accept",
        "sys_exit_",
        ACCEPT_SYSCALLS,
        Trigger::Accept,
        "baseline: new connections",
    );
    syscalls(
        "sys_enter_close",
        "sys_enter_",
        CLOSE_SYSCALLS,
        Trigger::FileIo,
        "baseline: end of documents and connections",
    );
    syscalls(
        "sys_enter_mmap",
        "sys_enter_",
        MMAP_SYSCALLS,
        Trigger::Spawn,
        "baseline: stashes mappings of document fds by targets",
    );
    syscalls(
        "sys_exit_mmap",
        "sys_exit_",
        MMAP_SYSCALLS,
        Trigger::Spawn,
        "baseline: memory-mapped documents (a mapping counts as a read)",
    );
    // openat2 exists since 5.6, below MIN_KERNEL; the row still says what its absence costs.
    for row in rows
        .iter_mut()
        .filter(|r| r.hook.name.ends_with("_openat2"))
    {
        row.min_kernel = MIN_KERNEL.max(KernelVersion::new(5, 6, 0));
        row.fallback = Fallback::Skip("opens through openat2 are not seen");
    }
    for row in rows.iter_mut().filter(|r| r.program == "sys_enter_open") {
        row.standby = true;
        row.why = "fallback: stashes the path argument of opens by targets (as written: symlinks not resolved)";
    }
    for row in rows.iter_mut().filter(|r| {
        [
            "sys_enter_io",
            "sys_exit_io",
            "sys_exit_accept",
            "sys_enter_close",
        ]
        .contains(&r.program)
    }) {
        row.standby = true;
        row.why = match row.program {
            "sys_enter_io" => {
                "fallback: classifies the fd (socket, document) and stashes the buffer"
            }
            "sys_exit_io" => "fallback: document reads, sendfile, request and response heads",
            "sys_exit_accept" => "fallback: new connections",
            _ => "fallback: end of documents and connections",
        };
    }
    let sched = |program: &'static str, why: &'static str| Entry {
        program,
        hook: Hook::tracepoint("sched", program),
        min_kernel: MIN_KERNEL,
        needs: TRACEPOINT_NO_READS,
        fallback: Fallback::Required,
        fire_check: Trigger::Spawn,
        standby: false,
        group: None,
        why,
    };
    rows.push(sched(
        "sched_process_exec",
        "baseline: targets started later, by name",
    ));
    rows.push(sched("sched_process_exit", "baseline: targets that exit"));
    rows.push(Entry {
        program: "sched_process_fork",
        hook: Hook::raw_tracepoint("sched_process_fork"),
        min_kernel: MIN_KERNEL,
        needs: &[Need::KernelReads],
        fallback: Fallback::Required,
        fire_check: Trigger::Spawn,
        standby: false,
        group: None,
        why: "baseline: forked workers (raw, to tell a new process from a new thread)",
    });
    rows
}

/// The `fexit` program on syscall `name` (`fexit_read`, ...; `probes/io.rs`, `probes/sockets.rs`).
fn fexit_program(name: &str) -> &'static str {
    match name {
        "read" => "fexit_read",
        "pread64" => "fexit_pread64",
        "readv" => "fexit_readv",
        "preadv" => "fexit_preadv",
        "recvfrom" => "fexit_recvfrom",
        "recvmsg" => "fexit_recvmsg",
        "write" => "fexit_write",
        "writev" => "fexit_writev",
        "sendto" => "fexit_sendto",
        "sendmsg" => "fexit_sendmsg",
        "sendfile64" => "fexit_sendfile64",
        "accept" => "fexit_accept",
        "accept4" => "fexit_accept4",
        _ => unreachable!("no fexit program for {name}"),
    }
}

/// What the planner decided for an entry, before anything is loaded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "decision", content = "reason")]
pub enum Decision {
    Attach,
    /// Not used on this kernel, and why (what is then not seen).
    Skip(String),
    /// A fallback nobody needs (yet): attached only if what it replaces fails.
    Standby,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Planned {
    pub entry: Entry,
    pub decision: Decision,
}

impl Planned {
    /// Its status in the report, and why: `attached` says whether it was (`None`: nothing was
    /// loaded). An entry another program took over from is `replaced`, not missing.
    pub fn status(&self, attached: Option<bool>) -> (&'static str, String) {
        let why = || self.entry.why.to_string();
        match (&self.decision, attached) {
            (Decision::Attach, None) => ("planned", why()),
            (Decision::Attach, Some(true)) => ("attached", why()),
            (Decision::Attach, Some(false)) => ("skipped", "not attached".into()),
            (Decision::Skip(reason), _) if matches!(self.entry.fallback, Fallback::Programs(_)) => {
                ("replaced", reason.clone())
            }
            (Decision::Skip(reason), _) => ("skipped", reason.clone()),
            (Decision::Standby, _) => ("standby", why()),
        }
    }
}

/// The kernel cannot run what Vigie requires: every reason, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub Vec<String>);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.join("; "))
    }
}

/// Why `entry` cannot be used on this kernel, if it cannot.
pub fn unmet(facts: &KernelFacts, entry: &Entry) -> Option<String> {
    if let Some(v) = facts.version
        && v < entry.min_kernel
    {
        return Some(format!(
            "{} needs Linux {} or later, this is {v}",
            entry.hook, entry.min_kernel
        ));
    }
    let confidential = facts.lockdown == Some(Lockdown::Confidentiality);
    for need in entry.needs {
        let problem = match need {
            Need::Tracefs if confidential => Some(
                "kernel lockdown is `confidentiality`, which closes tracefs (tracepoint ids and layouts)"
                    .to_string(),
            ),
            Need::Tracefs if facts.tracefs == Some(false) => {
                Some("tracefs events are not readable at /sys/kernel/tracing (no tracefs?)".to_string())
            }
            // Verified on 6.12: aya, finding bpf_probe_read_kernel refused, rewrites the calls
            // to the legacy bpf_probe_read, which the verifier refuses as well.
            Need::KernelReads if confidential => Some(
                "kernel lockdown is `confidentiality`, which refuses BPF reads of kernel memory (bpf_probe_read_kernel and bpf_probe_read)"
                    .to_string(),
            ),
            Need::BpfLsm => match (facts.bpf_lsm_active(), &facts.lsms) {
                (Some(true), _) => None,
                (Some(false), Some(lsms)) => Some(format!(
                    "`bpf` is not an active LSM ({}): the program would attach and never run",
                    lsms.join(",")
                )),
                _ => Some(
                    "the active LSMs are unknown (securityfs not readable): the program might never run"
                        .to_string(),
                ),
            },
            _ => None,
        };
        if problem.is_some() {
            return problem;
        }
    }
    None
}

/// Decides, from the kernel's facts alone (and the operator's [`HookChoice`]), which entries to
/// attach. Refuses when a required entry cannot work here (or the kernel is too old or has no
/// BTF for any of them).
pub fn plan(
    facts: &KernelFacts,
    table: Vec<Entry>,
    hooks: HookChoice,
) -> Result<Vec<Planned>, Refusal> {
    let mut refusals = Vec::new();
    if !facts.btf {
        refusals.push(
            "no kernel BTF at /sys/kernel/btf/vmlinux: this kernel was built without CONFIG_DEBUG_INFO_BTF, and the probes' struct offsets come from it"
                .to_string(),
        );
    }
    if let Some(v) = facts.version
        && v < MIN_KERNEL
    {
        refusals.push(format!(
            "Vigie needs Linux {MIN_KERNEL} or later (BPF ring buffer), this is {v}"
        ));
    }
    if !refusals.is_empty() {
        return Err(Refusal(refusals));
    }
    let mut planned: Vec<Planned> = table
        .into_iter()
        .map(|entry| Planned {
            decision: if entry.standby {
                Decision::Standby
            } else {
                Decision::Attach
            },
            entry,
        })
        .collect();
    if hooks == HookChoice::Tracepoints
        && let Some(i) = planned
            .iter()
            .position(|p| p.entry.group == Some(SYSCALL_FUNCTIONS))
    {
        // Never required: the group always has its tracepoints to fall back to.
        let _ = give_up(&mut planned, i, FORCED.to_string());
    }
    let mut i = 0;
    while i < planned.len() {
        if planned[i].decision == Decision::Attach
            && let Some(reason) = unmet(facts, &planned[i].entry)
        {
            match give_up(&mut planned, i, reason) {
                Ok(()) => {}
                Err(reason) => {
                    if !refusals.contains(&reason) {
                        refusals.push(reason);
                    }
                }
            }
        }
        i += 1;
    }
    if refusals.is_empty() {
        Ok(planned)
    } else {
        Err(Refusal(refusals))
    }
}

/// The reason the BTF programs on the syscall functions are not used under
/// `--hooks tracepoints`.
pub const FORCED: &str = "tracepoints forced (--hooks tracepoints, or kernel.hooks)";

/// Entry `i` cannot be used, for `reason`: applies its fallback. A skip or a fallback program
/// becomes the entry's decision (and wakes the standby entries it names, which come later in
/// the table); a required entry gives the reason back, for the caller to refuse. The other
/// entries of its group, if it has one, go to their fallbacks too (the caller detaches those it
/// had attached: [`Decision::Attach`] no more).
pub fn give_up(planned: &mut [Planned], i: usize, reason: String) -> Result<(), String> {
    if let Some(group) = planned[i].entry.group {
        let failed = planned[i].entry.hook.to_string();
        for j in 0..planned.len() {
            if j != i
                && planned[j].entry.group == Some(group)
                && planned[j].decision == Decision::Attach
            {
                give_up_one(planned, j, format!("with its group ({failed} not used)"))?;
            }
        }
    }
    give_up_one(planned, i, reason)
}

fn give_up_one(planned: &mut [Planned], i: usize, reason: String) -> Result<(), String> {
    match planned[i].entry.fallback {
        Fallback::Required => Err(reason),
        Fallback::Skip(lost) => {
            planned[i].decision = Decision::Skip(format!("{reason}; {lost}"));
            Ok(())
        }
        Fallback::Programs(others) => {
            planned[i].decision =
                Decision::Skip(format!("{reason}; {} instead", others.join(" and ")));
            // The entries of the same syscalls only: a tracepoint program is attached to
            // several syscalls, each of which may have its own BTF program.
            let syscall = syscall_of(&planned[i].entry).map(str::to_owned);
            for p in planned.iter_mut().skip(i + 1) {
                if others.contains(&p.entry.program)
                    && p.decision == Decision::Standby
                    && (syscall.is_none() || syscall_of(&p.entry) == syscall.as_deref())
                {
                    p.decision = Decision::Attach;
                }
            }
            Ok(())
        }
    }
}

/// The syscall an entry hooks, for the entries on one syscall (`read` of `fexit
/// __x64_sys_read` and of `tracepoint syscalls/sys_exit_read`).
fn syscall_of(entry: &Entry) -> Option<&str> {
    let name = entry.hook.name.as_str();
    match entry.hook.kind {
        HookKind::Tracepoint if entry.hook.category == "syscalls" => name
            .strip_prefix("sys_enter_")
            .or_else(|| name.strip_prefix("sys_exit_")),
        HookKind::Fentry | HookKind::Fexit => name.strip_prefix(SYSCALL_FUNCTION_PREFIX),
        _ => None,
    }
}

/// What happened to one entry at start-up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookReport {
    pub program: &'static str,
    pub hook: String,
    /// `attached`, `skipped`, `replaced` (by its fallback program) or `standby` (`planned` when
    /// nothing was loaded).
    pub status: &'static str,
    /// Why it is attached (the table's `why`), or why not.
    pub reason: String,
    /// How the fire check made it run, and how many times it ran then (`None`: not checked).
    pub fire_check: &'static str,
    pub fired: Option<u64>,
    /// The entry's group ([`Entry::group`]).
    pub group: Option<&'static str>,
}

/// The whole start-up report: the kernel facts and every entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttachReport {
    pub facts: KernelFacts,
    pub hooks: Vec<HookReport>,
    /// Why the fire check could not run, when it could not.
    pub fire_check_unavailable: Option<String>,
    /// Uprobes on TLS libraries, one row per library and function, added as targets map them.
    pub tls: Vec<TlsHookReport>,
    /// How Go targets' goroutines are followed here (or why not): no hook of its own, the
    /// probes above read each Go thread's current goroutine from its TLS.
    pub goroutines: String,
}

/// [`AttachReport::goroutines`] for a kernel where `task_struct.thread.fsbase` is at `fsbase`.
pub fn goroutines_report(fsbase: Option<u64>) -> String {
    match fsbase {
        Some(off) => format!(
            "Go targets: goroutine ids read by the probes above from each thread's TLS (task_struct.thread.fsbase at +{off}); the offsets of each Go binary are read from its ELF and DWARF when it becomes a target"
        ),
        None => "Go targets: goroutines not followed (no task_struct.thread.fsbase in this kernel's BTF): their reads need flow or content evidence".into(),
    }
}

/// The TLS library functions hooked in each OpenSSL 3 `libssl` a target maps, with the program
/// on their entry: what nginx (`SSL_read`, `SSL_write`, `SSL_do_handshake`) and Python's `_ssl`
/// (`SSL_read_ex`, `SSL_write_ex`, `SSL_do_handshake`) import. [`TLS_RETURN`] is on the return
/// of each. Each program has a `uprobe.multi` twin (`_multi`, Linux 6.6+): a multi link needs
/// no `CAP_SYS_ADMIN`, so it can be made after Vigie dropped it, for a library a target maps
/// later; the classic perf-event uprobe cannot (EACCES from `perf_event_open`, measured).
pub const TLS_FUNCTIONS: &[(&str, &str, &str)] = &[
    ("SSL_read", "ssl_read", "ssl_read_multi"),
    ("SSL_read_ex", "ssl_read_ex", "ssl_read_ex_multi"),
    ("SSL_write", "ssl_write", "ssl_write_multi"),
    ("SSL_write_ex", "ssl_write_ex", "ssl_write_ex_multi"),
    ("SSL_do_handshake", "ssl_handshake", "ssl_handshake_multi"),
];
/// The uretprobe on every function of [`TLS_FUNCTIONS`], and its multi twin.
pub const TLS_RETURN: (&str, &str) = ("ssl_return", "ssl_return_multi");

/// One uprobe or uretprobe on a TLS library.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TlsHookReport {
    /// The library's path (as the target maps it) and inode: hooked once per inode.
    pub library: String,
    pub inode: u64,
    pub function: &'static str,
    pub program: &'static str,
    /// `uprobe` (entry) or `uretprobe` (return).
    pub hook: &'static str,
    /// `attached`, or `failed: <why>`.
    pub status: String,
    /// How the fire check made it run, and how many times it ran then (`None`: not checked).
    pub fire_check: &'static str,
    pub fired: Option<u64>,
}

impl AttachReport {
    /// The report of a plan that was not carried out (`vigie probes` without root): what would
    /// be attached is `planned`, nothing is verified.
    pub fn of_plan(facts: KernelFacts, planned: &[Planned]) -> Self {
        let hooks = planned
            .iter()
            .map(|p| {
                let (status, reason) = p.status(None);
                HookReport {
                    program: p.entry.program,
                    hook: p.entry.hook.to_string(),
                    status,
                    reason,
                    fire_check: p.entry.fire_check.describe(),
                    fired: None,
                    group: p.entry.group,
                }
            })
            .collect();
        Self {
            facts,
            hooks,
            fire_check_unavailable: Some("not root: nothing was loaded".into()),
            tls: Vec::new(),
            goroutines:
                "Go targets: planned (the kernel's task_struct.thread.fsbase is read at load)"
                    .into(),
        }
    }

    pub fn attached(&self) -> usize {
        self.hooks.iter().filter(|h| h.status == "attached").count()
    }

    /// Hooks that should be attached: attached, or skipped (something is then not seen). Not
    /// those on standby, nor those another program replaced.
    pub fn expected(&self) -> usize {
        self.hooks
            .iter()
            .filter(|h| h.status != "standby" && h.status != "replaced")
            .count()
    }

    /// Programs attached, and how many of them the fire check saw run.
    pub fn fired(&self) -> (usize, usize) {
        let mut programs: Vec<(&str, Option<u64>)> = self
            .hooks
            .iter()
            .filter(|h| h.status == "attached")
            .map(|h| (h.program, h.fired))
            .collect();
        programs.sort();
        programs.dedup();
        let ran = programs.iter().filter(|(_, n)| n.unwrap_or(0) > 0).count();
        (programs.len(), ran)
    }

    /// Where open paths come from: the first of the three ways in (see [`table`]) that is
    /// attached. `None` when none is (nothing was loaded).
    pub fn open_paths(&self) -> Option<&'static str> {
        let attached = |program: &str| {
            self.hooks
                .iter()
                .any(|h| h.program == program && h.status == "attached")
        };
        [
            ("lsm_file_open", "exact, lsm file_open"),
            ("fentry_file_open", "exact, fentry security_file_open"),
            ("sys_enter_open", "as written, openat tracepoints"),
        ]
        .into_iter()
        .find_map(|(program, how)| attached(program).then_some(how))
    }

    /// How reads, writes, sendfile, accepts and closes are hooked: `BTF (fexit/fentry on the
    /// syscall functions)`, or `tracepoints (<why not BTF>)`. `None` when nothing was loaded or
    /// planned.
    pub fn syscall_hooks(&self) -> Option<String> {
        let group: Vec<&HookReport> = self
            .hooks
            .iter()
            .filter(|h| h.group == Some(SYSCALL_FUNCTIONS))
            .collect();
        if group
            .iter()
            .any(|h| h.status == "attached" || h.status == "planned")
        {
            return Some("BTF (fexit/fentry on the syscall functions)".into());
        }
        // The reason of the one that failed; the others say `with its group (...)`.
        let replaced = group
            .iter()
            .find(|h| h.status == "replaced" && !h.reason.starts_with("with its group"))
            .or_else(|| group.iter().find(|h| h.status == "replaced"))?;
        let why = replaced
            .reason
            .rsplit_once("; ")
            .map_or(replaced.reason.as_str(), |(why, _)| why);
        Some(format!("tracepoints ({why})"))
    }

    /// One line for logs and the VM matrix: `33/33 hooks attached, 11/11 programs fired, open
    /// paths exact, lsm file_open, syscalls hooked by BTF (fexit/fentry on the syscall
    /// functions)`.
    pub fn summary(&self) -> String {
        let (programs, ran) = self.fired();
        let fired = match &self.fire_check_unavailable {
            None => format!("{ran}/{programs} programs fired"),
            Some(why) => format!("fire check not run ({why})"),
        };
        let opens = match self.open_paths() {
            Some(how) => format!(", open paths {how}"),
            None => String::new(),
        };
        let syscalls = match self.syscall_hooks() {
            Some(how) => format!(", syscalls hooked by {how}"),
            None => String::new(),
        };
        let tls = self.tls_summary();
        format!(
            "{}/{} hooks attached, {fired}{opens}{syscalls}{tls}",
            self.attached(),
            self.expected()
        )
    }
}

impl AttachReport {
    /// `, TLS hooked (uprobe.multi) in <libraries>`, `, TLS hooked (classic uprobes) in ...`,
    /// and `, TLS not readable in <libraries> (hooks failed)` for the libraries none attached
    /// on; empty without TLS libraries.
    fn tls_summary(&self) -> String {
        let mut libraries: Vec<&str> = self.tls.iter().map(|t| t.library.as_str()).collect();
        libraries.dedup();
        let hooked = |lib: &str| {
            self.tls
                .iter()
                .any(|t| t.library == lib && t.status == "attached")
        };
        let way = |lib: &str| {
            let multi = self.tls.iter().any(|t| {
                t.library == lib && t.status == "attached" && t.program.ends_with("_multi")
            });
            if multi {
                "uprobe.multi"
            } else {
                "classic uprobes"
            }
        };
        let mut out = String::new();
        for way_name in ["uprobe.multi", "classic uprobes"] {
            let libs: Vec<&str> = libraries
                .iter()
                .copied()
                .filter(|l| hooked(l) && way(l) == way_name)
                .collect();
            if !libs.is_empty() {
                out.push_str(&format!(", TLS hooked ({way_name}) in {}", libs.join(", ")));
            }
        }
        let failed: Vec<&str> = libraries.iter().copied().filter(|l| !hooked(l)).collect();
        if !failed.is_empty() {
            out.push_str(&format!(
                ", TLS not readable in {} (hooks failed)",
                failed.join(", ")
            ));
        }
        out
    }
}

impl fmt::Display for AttachReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.facts)?;
        for h in &self.hooks {
            let fired = match h.fired {
                Some(n) => format!(" [fired {n}x: {}]", h.fire_check),
                None => String::new(),
            };
            writeln!(
                f,
                "{:<8} {:<44} {:<19} {}{fired}",
                h.status, h.hook, h.program, h.reason
            )?;
        }
        for t in &self.tls {
            let fired = match t.fired {
                Some(n) => format!(" [fired {n}x: {}]", t.fire_check),
                None => format!(" [{}]", t.fire_check),
            };
            writeln!(
                f,
                "{:<8} {:<44} {:<19} {}{fired}",
                if t.status == "attached" {
                    "attached"
                } else {
                    "skipped"
                },
                format!("{} {}:{}", t.hook, t.library, t.function),
                t.program,
                if t.status == "attached" {
                    "TLS plaintext of targets that map this library"
                } else {
                    &t.status
                },
            )?;
        }
        writeln!(f, "{}", self.goroutines)?;
        write!(f, "probes: {}", self.summary())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::kernel::parse_lsms;

    fn facts(release: &str, lockdown: Lockdown, lsms: &str) -> KernelFacts {
        KernelFacts {
            release: release.into(),
            version: KernelVersion::parse(release),
            btf: true,
            tracefs: Some(lockdown != Lockdown::Confidentiality),
            lockdown: Some(lockdown),
            lsms: Some(parse_lsms(lsms)),
        }
    }

    const LSMS: &str = "lockdown,capability,landlock,yama,apparmor,tomoyo,bpf";

    /// The decision for each program (the same for all of a program's hooks).
    fn decisions(plan: &[Planned]) -> BTreeMap<&'static str, Decision> {
        let mut by_program = BTreeMap::new();
        for p in plan {
            let previous = by_program.insert(p.entry.program, p.decision.clone());
            // openat2's row may differ only by its own skip.
            if let Some(previous) = previous
                && !p.entry.hook.name.ends_with("openat2")
            {
                assert_eq!(previous, p.decision, "{}", p.entry.program);
            }
        }
        by_program
    }

    #[test]
    fn the_table_attaches_22_hooks_with_the_lsm_and_fexit_on_the_matrix_kernels() {
        for release in ["6.1.0-56-amd64", "6.12.117+deb12-amd64", "6.18.44-fc-v595"] {
            for lockdown in [Lockdown::None, Lockdown::Integrity] {
                let plan =
                    plan(&facts(release, lockdown, LSMS), table(), HookChoice::Auto).unwrap();
                // 22 attached; on standby: the fentry and tracepoints of opens, and the 25
                // tracepoints of the syscalls the 14 BTF syscall programs hook.
                assert_eq!(plan.len(), 50);
                assert_eq!(
                    plan.iter()
                        .filter(|p| p.decision == Decision::Attach)
                        .count(),
                    22
                );
                let d = decisions(&plan);
                assert_eq!(d["lsm_file_open"], Decision::Attach);
                assert_eq!(d["fexit_read"], Decision::Attach);
                assert_eq!(d["fentry_close"], Decision::Attach);
                let standby = [
                    "fentry_file_open",
                    "sys_enter_open",
                    "sys_enter_io",
                    "sys_exit_io",
                    "sys_exit_accept",
                    "sys_enter_close",
                ];
                for program in standby {
                    assert_eq!(d[program], Decision::Standby, "{program}");
                }
                assert!(
                    d.iter()
                        .filter(|(p, _)| !standby.contains(p))
                        .all(|(_, d)| *d == Decision::Attach),
                    "{d:?}"
                );
                let report = AttachReport::of_plan(facts(release, lockdown, LSMS), &plan);
                assert_eq!(
                    report.syscall_hooks().as_deref(),
                    Some("BTF (fexit/fentry on the syscall functions)")
                );
            }
        }
        let names: Vec<String> = table().iter().map(|e| e.hook.to_string()).collect();
        assert!(names.contains(&"tracepoint syscalls/sys_enter_read".to_string()));
        assert!(names.contains(&"raw_tracepoint sched_process_fork".to_string()));
        assert!(names.contains(&"lsm file_open".to_string()));
        assert!(names.contains(&"fentry security_file_open".to_string()));
        assert!(names.contains(&"fexit __x64_sys_recvmsg".to_string()));
        assert!(names.contains(&"fexit __x64_sys_accept4".to_string()));
        assert!(names.contains(&"fentry __x64_sys_close".to_string()));
    }

    #[test]
    fn forced_tracepoints_replace_every_btf_syscall_program_and_say_why() {
        let f = facts("6.12.117+deb12-amd64", Lockdown::None, LSMS);
        let plan = plan(&f, table(), HookChoice::Tracepoints).unwrap();
        let d = decisions(&plan);
        for program in [
            "sys_enter_io",
            "sys_exit_io",
            "sys_exit_accept",
            "sys_enter_close",
        ] {
            assert_eq!(d[program], Decision::Attach, "{program}");
        }
        for p in plan
            .iter()
            .filter(|p| p.entry.group == Some(SYSCALL_FUNCTIONS))
        {
            let Decision::Skip(why) = &p.decision else {
                panic!("{}: {:?}", p.entry.program, p.decision)
            };
            assert!(
                why.starts_with(FORCED) || why.starts_with("with its group"),
                "{why}"
            );
        }
        // The open programs are not the syscall functions': the LSM still gives the paths.
        assert_eq!(d["lsm_file_open"], Decision::Attach);
        let report = AttachReport::of_plan(f, &plan);
        assert_eq!(
            report.syscall_hooks(),
            Some(format!("tracepoints ({FORCED})"))
        );
        assert!(
            report
                .summary()
                .contains(&format!("syscalls hooked by tracepoints ({FORCED})")),
            "{}",
            report.summary()
        );
        assert_eq!(report.expected(), 33);
    }

    #[test]
    fn one_btf_syscall_program_failing_takes_the_group_to_the_tracepoints() {
        // The host refuses BPF trampolines (EPERM): the first fexit fails to load, and every
        // syscall goes back to its tracepoints, the close one included.
        let f = facts("6.18.44", Lockdown::None, LSMS);
        let mut planned = plan(&f, table(), HookChoice::Auto).unwrap();
        let sendto = planned
            .iter()
            .position(|p| p.entry.program == "fexit_sendto")
            .unwrap();
        give_up(
            &mut planned,
            sendto,
            "attach: Operation not permitted".into(),
        )
        .unwrap();
        let d = decisions(&planned);
        for program in [
            "sys_enter_io",
            "sys_exit_io",
            "sys_exit_accept",
            "sys_enter_close",
        ] {
            assert_eq!(d[program], Decision::Attach, "{program}");
        }
        assert_eq!(
            d["fexit_sendto"],
            Decision::Skip(
                "attach: Operation not permitted; sys_enter_io and sys_exit_io instead".into()
            )
        );
        assert_eq!(
            d["fentry_close"],
            Decision::Skip(
                "with its group (fexit __x64_sys_sendto not used); sys_enter_close instead".into()
            )
        );
        let report = AttachReport::of_plan(f, &planned);
        assert_eq!(
            report.syscall_hooks().as_deref(),
            Some("tracepoints (attach: Operation not permitted)")
        );
        assert_eq!(report.expected(), 33);
    }

    #[test]
    fn a_btf_syscall_program_wakes_the_tracepoints_of_its_own_syscalls_only() {
        // Without its group (give_up_one): the fallback of one syscall is that syscall's pair.
        let mut planned = plan(
            &facts("6.12.0", Lockdown::None, LSMS),
            table(),
            HookChoice::Auto,
        )
        .unwrap();
        let read = planned
            .iter()
            .position(|p| p.entry.program == "fexit_read")
            .unwrap();
        give_up_one(&mut planned, read, "x".into()).unwrap();
        let woken: Vec<String> = planned
            .iter()
            .filter(|p| p.entry.standby && p.decision == Decision::Attach)
            .map(|p| p.entry.hook.name.clone())
            .collect();
        assert_eq!(woken, ["sys_enter_read", "sys_exit_read"]);
    }

    #[test]
    fn confidentiality_lockdown_is_refused_with_its_reasons() {
        let refusal = plan(
            &facts("6.12.117+deb12-amd64", Lockdown::Confidentiality, LSMS),
            table(),
            HookChoice::Auto,
        )
        .unwrap_err();
        // One line per distinct reason, not one per hook.
        assert_eq!(refusal.0.len(), 2, "{refusal}");
        let text = refusal.to_string();
        assert!(text.contains("closes tracefs"), "{text}");
        assert!(
            text.contains("refuses BPF reads of kernel memory"),
            "{text}"
        );
    }

    #[test]
    fn old_kernels_and_kernels_without_btf_are_refused() {
        let old = plan(
            &facts("5.4.0-200-generic", Lockdown::None, LSMS),
            table(),
            HookChoice::Auto,
        )
        .unwrap_err();
        assert!(
            old.to_string()
                .contains("Vigie needs Linux 5.8 or later (BPF ring buffer), this is 5.4"),
            "{old}"
        );
        let mut no_btf = facts("6.1.0", Lockdown::None, LSMS);
        no_btf.btf = false;
        let err = plan(&no_btf, table(), HookChoice::Auto).unwrap_err();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }

    #[test]
    fn tracefs_missing_refuses_but_unreadable_does_not() {
        let mut f = facts("6.12.0", Lockdown::None, LSMS);
        f.tracefs = Some(false);
        let err = plan(&f, table(), HookChoice::Auto).unwrap_err();
        assert!(
            err.to_string().contains("tracefs events are not readable"),
            "{err}"
        );
        // Not root: tracefs is root's, so the facts cannot say; the plan stands.
        f.tracefs = None;
        assert!(plan(&f, table(), HookChoice::Auto).is_ok());
    }

    #[test]
    fn an_lsm_program_that_could_not_fire_falls_back() {
        // Built in but not active: it would attach and never run. Detected, and fentry is used
        // instead; the openat tracepoints stay on standby.
        let off = plan(
            &facts("6.12.0", Lockdown::None, "lockdown,capability,yama"),
            table(),
            HookChoice::Auto,
        )
        .unwrap();
        let Decision::Skip(why) = &off[0].decision else {
            panic!("{:?}", off[0].decision)
        };
        assert!(
            why.contains("`bpf` is not an active LSM (lockdown,capability,yama)")
                && why.ends_with("fentry_file_open instead"),
            "{why}"
        );
        let d = decisions(&off);
        assert_eq!(d["fentry_file_open"], Decision::Attach);
        assert_eq!(d["sys_enter_open"], Decision::Standby);
        // Unknown LSMs: not trusted either.
        let mut unknown = facts("6.12.0", Lockdown::None, LSMS);
        unknown.lsms = None;
        let plan = plan(&unknown, table(), HookChoice::Auto).unwrap();
        assert!(matches!(plan[0].decision, Decision::Skip(_)));
        assert_eq!(decisions(&plan)["fentry_file_open"], Decision::Attach);
    }

    #[test]
    fn kernels_before_bpf_d_path_use_the_openat_tracepoints() {
        let plan = plan(
            &facts("5.8.0", Lockdown::None, LSMS),
            table(),
            HookChoice::Auto,
        )
        .unwrap();
        let d = decisions(&plan);
        for program in ["lsm_file_open", "fentry_file_open"] {
            let Decision::Skip(why) = &d[program] else {
                panic!("{program}: {:?}", d[program])
            };
            assert!(
                why.contains("needs Linux 5.10 or later, this is 5.8"),
                "{why}"
            );
        }
        assert_eq!(d["sys_enter_open"], Decision::Attach);
    }

    #[test]
    fn a_failure_at_attach_time_applies_the_same_fallback() {
        let mut planned = plan(
            &facts("6.18.44", Lockdown::None, LSMS),
            table(),
            HookChoice::Auto,
        )
        .unwrap();
        // The host refuses LSM and fentry programs with EPERM although `bpf` is listed.
        give_up(&mut planned, 0, "attach: Operation not permitted".into()).unwrap();
        assert_eq!(decisions(&planned)["fentry_file_open"], Decision::Attach);
        assert_eq!(decisions(&planned)["sys_enter_open"], Decision::Standby);
        give_up(&mut planned, 1, "attach: Operation not permitted".into()).unwrap();
        let d = decisions(&planned);
        assert_eq!(d["sys_enter_open"], Decision::Attach);
        assert_eq!(
            d["fentry_file_open"],
            Decision::Skip("attach: Operation not permitted; sys_enter_open instead".into())
        );
        // Replaced by their fallback: not missing.
        let report = AttachReport::of_plan(facts("6.18.44", Lockdown::None, LSMS), &planned);
        let status = |program: &str| {
            report
                .hooks
                .iter()
                .find(|h| h.program == program)
                .map(|h| h.status)
        };
        assert_eq!(status("lsm_file_open"), Some("replaced"));
        assert_eq!(status("fentry_file_open"), Some("replaced"));
        assert_eq!(status("sys_enter_open"), Some("planned"));
        assert_eq!(report.expected(), 23);
        // The BTF syscall programs stay: only the open ones were refused here.
        assert_eq!(status("fexit_read"), Some("planned"));
        // A required entry gives its reason back for the caller to refuse.
        let mut base = plan(
            &facts("6.18.44", Lockdown::None, LSMS),
            table(),
            HookChoice::Auto,
        )
        .unwrap();
        let exec = base
            .iter()
            .position(|p| p.entry.hook.name == "sched_process_exec")
            .unwrap();
        assert_eq!(
            give_up(&mut base, exec, "boom".into()),
            Err("boom".to_string())
        );
        // openat2 is optional: skipped, saying what is not seen.
        let i = base
            .iter()
            .position(|p| p.entry.hook.name == "sys_exit_openat2")
            .unwrap();
        give_up(&mut base, i, "missing".into()).unwrap();
        assert_eq!(
            base[i].decision,
            Decision::Skip("missing; opens through openat2 are not seen".into())
        );
    }

    #[test]
    fn standby_entries_come_after_what_they_replace() {
        for t in [table()] {
            for (i, e) in t.iter().enumerate() {
                if let Fallback::Programs(others) = e.fallback {
                    for other in others {
                        assert!(
                            t.iter()
                                .enumerate()
                                .any(|(j, s)| s.program == *other && s.standby && j > i),
                            "{} falls back to {other}, which has no later standby entry",
                            e.program
                        );
                    }
                }
            }
        }
    }
}
