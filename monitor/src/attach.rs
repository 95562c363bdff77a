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

use crate::kernel::{KernelFacts, KernelVersion, Lockdown};

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
    /// Use this program's entries (marked `standby`) instead.
    Program(&'static str),
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
}

impl Trigger {
    pub fn describe(self) -> &'static str {
        match self {
            Self::FileIo => "open, read and close a file",
            Self::Accept => "accept a connection on a Unix socket",
            Self::Spawn => "start and reap a child process",
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
    /// Used only as another program's [`Fallback::Program`].
    pub standby: bool,
    /// Why it is there: what it sees.
    pub why: &'static str,
}

const TRACEPOINT: &[Need] = &[Need::Tracefs, Need::KernelReads];
const TRACEPOINT_NO_READS: &[Need] = &[Need::Tracefs];

/// The attach table. A program with a [`Fallback::Program`] comes before the standby entries it
/// falls back to.
pub fn table() -> Vec<Entry> {
    let mut rows = Vec::new();
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
                why,
            });
        }
    };
    syscalls(
        "sys_enter_open",
        "sys_enter_",
        OPEN_SYSCALLS,
        Trigger::FileIo,
        "baseline: stashes the path of opens by targets",
    );
    syscalls(
        "sys_exit_open",
        "sys_exit_",
        OPEN_SYSCALLS,
        Trigger::FileIo,
        "baseline: document opens under the roots (path read at exit)",
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
    let sched = |program: &'static str, why: &'static str| Entry {
        program,
        hook: Hook::tracepoint("sched", program),
        min_kernel: MIN_KERNEL,
        needs: TRACEPOINT_NO_READS,
        fallback: Fallback::Required,
        fire_check: Trigger::Spawn,
        standby: false,
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
        why: "baseline: forked workers (raw, to tell a new process from a new thread)",
    });
    rows
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

/// Decides, from the kernel's facts alone, which entries to attach. Refuses when a required
/// entry cannot work here (or the kernel is too old or has no BTF for any of them).
pub fn plan(facts: &KernelFacts, table: Vec<Entry>) -> Result<Vec<Planned>, Refusal> {
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

/// Entry `i` cannot be used, for `reason`: applies its fallback. A skip or a fallback program
/// becomes the entry's decision (and wakes the standby entries it names, which come later in
/// the table); a required entry gives the reason back, for the caller to refuse.
pub fn give_up(planned: &mut [Planned], i: usize, reason: String) -> Result<(), String> {
    match planned[i].entry.fallback {
        Fallback::Required => Err(reason),
        Fallback::Skip(lost) => {
            planned[i].decision = Decision::Skip(format!("{reason}; {lost}"));
            Ok(())
        }
        Fallback::Program(other) => {
            planned[i].decision = Decision::Skip(format!("{reason}; {other} instead"));
            for p in planned.iter_mut().skip(i + 1) {
                if p.entry.program == other && p.decision == Decision::Standby {
                    p.decision = Decision::Attach;
                }
            }
            Ok(())
        }
    }
}

/// What happened to one entry at start-up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookReport {
    pub program: &'static str,
    pub hook: String,
    /// `attached`, `skipped` or `standby` (`planned` when nothing was loaded).
    pub status: &'static str,
    /// Why it is attached (the table's `why`), or why not.
    pub reason: String,
    /// How the fire check made it run, and how many times it ran then (`None`: not checked).
    pub fire_check: &'static str,
    pub fired: Option<u64>,
}

/// The whole start-up report: the kernel facts and every entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttachReport {
    pub facts: KernelFacts,
    pub hooks: Vec<HookReport>,
    /// Why the fire check could not run, when it could not.
    pub fire_check_unavailable: Option<String>,
}

impl AttachReport {
    /// The report of a plan that was not carried out (`vigie probes` without root): what would
    /// be attached is `planned`, nothing is verified.
    pub fn of_plan(facts: KernelFacts, planned: &[Planned]) -> Self {
        let hooks = planned
            .iter()
            .map(|p| {
                let (status, reason) = match &p.decision {
                    Decision::Attach => ("planned", p.entry.why.to_string()),
                    Decision::Skip(why) => ("skipped", why.clone()),
                    Decision::Standby => ("standby", p.entry.why.to_string()),
                };
                HookReport {
                    program: p.entry.program,
                    hook: p.entry.hook.to_string(),
                    status,
                    reason,
                    fire_check: p.entry.fire_check.describe(),
                    fired: None,
                }
            })
            .collect();
        Self {
            facts,
            hooks,
            fire_check_unavailable: Some("not root: nothing was loaded".into()),
        }
    }

    pub fn attached(&self) -> usize {
        self.hooks.iter().filter(|h| h.status == "attached").count()
    }

    /// Hooks the plan meant to attach: attached, or failed at attach time (not skipped for
    /// lack of kernel support).
    pub fn expected(&self) -> usize {
        self.hooks.iter().filter(|h| h.status != "standby").count()
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

    /// One line for logs and the VM matrix: `34/34 hooks attached, 11/11 programs fired`.
    pub fn summary(&self) -> String {
        let (programs, ran) = self.fired();
        let fired = match &self.fire_check_unavailable {
            None => format!("{ran}/{programs} programs fired"),
            Some(why) => format!("fire check not run ({why})"),
        };
        format!(
            "{}/{} hooks attached, {fired}",
            self.attached(),
            self.expected()
        )
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
        write!(f, "probes: {}", self.summary())
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn the_table_attaches_34_hooks_on_the_matrix_kernels() {
        for release in ["6.1.0-56-amd64", "6.12.117+deb12-amd64", "6.18.44-fc-v595"] {
            for lockdown in [Lockdown::None, Lockdown::Integrity] {
                let plan = plan(&facts(release, lockdown, LSMS), table()).unwrap();
                assert_eq!(plan.len(), 34);
                assert!(plan.iter().all(|p| p.decision == Decision::Attach));
            }
        }
        let names: Vec<String> = table().iter().map(|e| e.hook.to_string()).collect();
        assert!(names.contains(&"tracepoint syscalls/sys_enter_read".to_string()));
        assert!(names.contains(&"raw_tracepoint sched_process_fork".to_string()));
    }

    #[test]
    fn confidentiality_lockdown_is_refused_with_its_reasons() {
        let refusal = plan(
            &facts("6.12.117+deb12-amd64", Lockdown::Confidentiality, LSMS),
            table(),
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
        let old = plan(&facts("5.4.0-200-generic", Lockdown::None, LSMS), table()).unwrap_err();
        assert!(
            old.to_string()
                .contains("Vigie needs Linux 5.8 or later (BPF ring buffer), this is 5.4"),
            "{old}"
        );
        let mut no_btf = facts("6.1.0", Lockdown::None, LSMS);
        no_btf.btf = false;
        let err = plan(&no_btf, table()).unwrap_err();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }

    #[test]
    fn tracefs_missing_refuses_but_unreadable_does_not() {
        let mut f = facts("6.12.0", Lockdown::None, LSMS);
        f.tracefs = Some(false);
        let err = plan(&f, table()).unwrap_err();
        assert!(
            err.to_string().contains("tracefs events are not readable"),
            "{err}"
        );
        // Not root: tracefs is root's, so the facts cannot say; the plan stands.
        f.tracefs = None;
        assert!(plan(&f, table()).is_ok());
    }

    /// A preferred LSM program with a tracepoint fallback: the shape the table takes for BTF
    /// programs.
    fn lsm_table() -> Vec<Entry> {
        let mut rows = vec![Entry {
            program: "lsm_file_open",
            hook: Hook {
                kind: HookKind::Lsm,
                category: "",
                name: "file_open".into(),
            },
            min_kernel: KernelVersion::new(5, 7, 0),
            needs: &[Need::BpfLsm],
            fallback: Fallback::Program("sys_exit_open"),
            fire_check: Trigger::FileIo,
            standby: false,
            why: "preferred: every open, by inode",
        }];
        rows.extend(
            table()
                .into_iter()
                .filter(|e| e.program == "sys_exit_open")
                .map(|mut e| {
                    e.standby = true;
                    e
                }),
        );
        rows
    }

    #[test]
    fn an_lsm_program_that_could_not_fire_falls_back() {
        // `bpf` active: the LSM program, and its fallback stays on standby.
        let on = plan(&facts("6.12.0", Lockdown::None, LSMS), lsm_table()).unwrap();
        assert_eq!(on[0].decision, Decision::Attach);
        assert!(on[1..].iter().all(|p| p.decision == Decision::Standby));
        // Built in but not active: it would attach and never run. Detected, and the
        // tracepoints are used instead.
        let off = plan(
            &facts("6.12.0", Lockdown::None, "lockdown,capability,yama"),
            lsm_table(),
        )
        .unwrap();
        let Decision::Skip(why) = &off[0].decision else {
            panic!("{:?}", off[0].decision)
        };
        assert!(
            why.contains("`bpf` is not an active LSM (lockdown,capability,yama)")
                && why.ends_with("sys_exit_open instead"),
            "{why}"
        );
        assert!(off[1..].iter().all(|p| p.decision == Decision::Attach));
        // Unknown LSMs: not trusted either.
        let mut unknown = facts("6.12.0", Lockdown::None, LSMS);
        unknown.lsms = None;
        let plan = plan(&unknown, lsm_table()).unwrap();
        assert!(matches!(plan[0].decision, Decision::Skip(_)));
        // Too old a kernel for the hook: same fallback.
        let old = super::plan(&facts("5.4.0", Lockdown::None, LSMS), lsm_table());
        assert!(
            old.is_err(),
            "5.4 is below MIN_KERNEL for the tracepoints too"
        );
    }

    #[test]
    fn a_failure_at_attach_time_applies_the_same_fallback() {
        let mut planned = plan(&facts("6.18.44", Lockdown::None, LSMS), lsm_table()).unwrap();
        // The host refuses LSM programs with EPERM although `bpf` is listed.
        give_up(&mut planned, 0, "attach: Operation not permitted".into()).unwrap();
        assert!(planned[1..].iter().all(|p| p.decision == Decision::Attach));
        // A required entry gives its reason back for the caller to refuse.
        let mut base = plan(&facts("6.18.44", Lockdown::None, LSMS), table()).unwrap();
        assert_eq!(
            give_up(&mut base, 0, "boom".into()),
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
        for t in [table(), lsm_table()] {
            for (i, e) in t.iter().enumerate() {
                if let Fallback::Program(other) = e.fallback {
                    assert!(
                        t.iter()
                            .enumerate()
                            .any(|(j, s)| s.program == other && s.standby && j > i),
                        "{} falls back to {other}, which has no later standby entry",
                        e.program
                    );
                }
            }
        }
    }
}
