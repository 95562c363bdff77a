//! Load and attach the probes. Everything kernel-specific is read from the running kernel: struct
//! offsets from `/sys/kernel/btf/vmlinux`, tracepoint record layouts from tracefs `format` files.
//! Which program goes on which hook is decided by the attach table (`attach`), from the kernel's
//! facts (`kernel`); after attaching, each program is made to run once (the fire check).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        FEntry, FExit, Lsm, Program, RawTracePoint, TracePoint, UProbe,
        fentry::FEntryLinkId,
        fexit::FExitLinkId,
        lsm::LsmLinkId,
        raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
        uprobe::{UProbeLinkId, UProbeScope},
    },
};
use monitor_common::{
    MAX_SYSCALL_NR, Stash, fd_kind,
    files::ROOT_KEY_LEN,
    globals,
    go::{GO_TARGET, GoLayout},
    loss, op,
};

use crate::{
    attach::{self, AttachReport, Decision, HookKind, HookReport, Planned, Refusal},
    btf::{Btf, Member},
    config::Config,
    kernel::KernelFacts,
};

mod fire;
mod stats;
use fire::fire_check;
pub use stats::ProgramStats;

const TRACEFS: &str = "/sys/kernel/tracing";
const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "Vigie must run as root (or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN) to load eBPF programs"
    )]
    NotRoot,
    #[error(
        "no kernel BTF at {BTF_VMLINUX}: this kernel was built without CONFIG_DEBUG_INFO_BTF, which Vigie needs for struct offsets"
    )]
    NoBtf,
    #[error("cannot read kernel BTF: {0}")]
    Btf(String),
    #[error("kernel BTF has no {0}: unsupported kernel layout")]
    MissingField(String),
    #[error("this kernel cannot run Vigie's probes: {1} [{0}]")]
    Unsupported(String, Refusal),
    #[error("{0} is required and cannot be used: {1}")]
    Required(String, String),
    #[error("tracepoint {0}: {1}")]
    Tracepoint(String, String),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {0}: {1}")]
    Program(String, aya::programs::ProgramError),
    #[error("map {0}: {1}")]
    Map(String, String),
}

fn map_err(name: &str) -> impl Fn(aya::maps::MapError) -> LoadError + '_ {
    move |e| LoadError::Map(name.to_string(), e.to_string())
}

/// The `op` of a syscall that reads from a socket (`read`, `readv`, `recvfrom`, `recvmsg`), by
/// number: for threads found asleep in one when a running process is adopted.
pub fn socket_read_op(nr: i64) -> Option<u32> {
    attach::IO_SYSCALLS
        .iter()
        .find(|(_, n, op)| {
            *n == nr && matches!(*op, op::READ | op::READV | op::RECVFROM | op::RECVMSG)
        })
        .map(|(_, _, op)| *op)
}

/// `BPF_NOEXIST`: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Loaded and attached probes; dropping this detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    /// What was attached on which hook and why, and the kernel facts behind it.
    pub report: AttachReport,
    /// Offset of `task_struct.thread.fsbase` (`None`: Go targets' goroutines cannot be read).
    pub task_fsbase: Option<u64>,
    /// Every link, to detach them all at once on drop.
    links: Vec<(&'static str, LinkId)>,
    /// The document roots, with the real paths of those behind symbolic links (all of them
    /// are in the kernel's filter).
    pub roots: crate::procfs::Roots,
    /// The kernel's BTF as aya reads it, parsed on first need: BTF programs (LSM, fentry) are
    /// loaded against it. Tracepoint-only kernels never pay for the parse.
    kernel_btf: Option<aya::Btf>,
    /// Which flavour of the TLS programs is loaded: `uprobe.multi` (`Some(true)`), classic
    /// (`Some(false)`), or none.
    tls_multi: Option<bool>,
}

enum LinkId {
    Tracepoint(TracePointLinkId),
    Raw(RawTracePointLinkId),
    Lsm(LsmLinkId),
    Fentry(FEntryLinkId),
    Fexit(FExitLinkId),
    UProbe(UProbeLinkId),
}

/// Byte offsets of the kernel struct fields the probes walk, from the running kernel's BTF.
pub fn kernel_offsets() -> Result<Vec<(&'static str, u64)>, LoadError> {
    if !Path::new(BTF_VMLINUX).exists() {
        return Err(LoadError::NoBtf);
    }
    let raw = std::fs::read(BTF_VMLINUX).map_err(|e| LoadError::Btf(e.to_string()))?;
    let btf = Btf::parse(&raw).map_err(|e| LoadError::Btf(e.to_string()))?;
    let wanted = [
        (globals::OFF_TASK_FILES, "task_struct", "files"),
        (globals::OFF_TASK_TGID, "task_struct", "tgid"),
        (globals::OFF_TASK_PID, "task_struct", "pid"),
        (globals::OFF_FILES_FDT, "files_struct", "fdt"),
        (globals::OFF_FDT_MAX_FDS, "fdtable", "max_fds"),
        (globals::OFF_FDT_FD, "fdtable", "fd"),
        (globals::OFF_FILE_INODE, "file", "f_inode"),
        (globals::OFF_INODE_MODE, "inode", "i_mode"),
        (globals::OFF_INODE_SIZE, "inode", "i_size"),
        (globals::OFF_FILE_PATH, "file", "f_path"),
        (globals::OFF_FILE_FLAGS, "file", "f_flags"),
        (globals::OFF_FILE_PRIVATE, "file", "private_data"),
        (globals::OFF_SOCKET_SK, "socket", "sk"),
        (globals::OFF_SOCK_COMMON, "sock", "__sk_common"),
        (globals::OFF_SKC_FAMILY, "sock_common", "skc_family"),
        (globals::OFF_SKC_DPORT, "sock_common", "skc_dport"),
        (globals::OFF_SKC_DADDR, "sock_common", "skc_daddr"),
        (globals::OFF_SKC_V6_DADDR, "sock_common", "skc_v6_daddr"),
    ];
    let mut names: Vec<&str> = wanted.iter().map(|(_, s, _)| *s).collect();
    names.push("thread_struct");
    names.push("pt_regs");
    let ids = btf.struct_ids(&names);
    let mut out = Vec::new();
    for (global, strukt, field) in wanted {
        let missing = || LoadError::MissingField(format!("{strukt}.{field}"));
        let id = ids
            .iter()
            .find_map(|(n, id)| (*n == strukt).then_some(*id))
            .ok_or_else(missing)?;
        match btf.member(id, field) {
            Ok(Some(Member::Bytes(off))) => out.push((global, u64::from(off))),
            _ => return Err(missing()),
        }
    }
    // Optional: without it, Go targets' goroutines are not followed (reported at start-up).
    let id = |name: &str| ids.iter().find_map(|(n, id)| (*n == name).then_some(*id));
    let fsbase = id("task_struct")
        .zip(id("thread_struct"))
        .and_then(|(task, thread)| {
            let Ok(Some(Member::Bytes(t))) = btf.member(task, "thread") else {
                return None;
            };
            let Ok(Some(Member::Bytes(f))) = btf.member(thread, "fsbase") else {
                return None;
            };
            Some(u64::from(t) + u64::from(f))
        });
    out.push((globals::OFF_TASK_FSBASE, fsbase.unwrap_or(0)));
    // Optional: without them, the BTF programs on the syscall functions are not used.
    out.extend(regs_offsets(&btf, id("pt_regs")));
    Ok(out)
}

/// Where `struct pt_regs` holds a syscall's first four arguments (x86-64: `di`, `si`, `dx`,
/// `r10`), for the BTF programs on the syscall functions; all 0 when the kernel's BTF has no
/// such `pt_regs` (another architecture): those programs then fall back to the tracepoints.
fn regs_offsets(btf: &Btf, pt_regs: Option<u32>) -> Vec<(&'static str, u64)> {
    let names = [
        (globals::OFF_REGS_ARG0, "di"),
        (globals::OFF_REGS_ARG1, "si"),
        (globals::OFF_REGS_ARG2, "dx"),
        (globals::OFF_REGS_ARG3, "r10"),
    ];
    let found: Option<Vec<(&'static str, u64)>> = names
        .iter()
        .map(|(global, field)| match btf.member(pt_regs?, field) {
            Ok(Some(Member::Bytes(off))) => Some((*global, u64::from(off))),
            _ => None,
        })
        .collect();
    found.unwrap_or_else(|| names.iter().map(|(g, _)| (*g, 0)).collect())
}

/// The kernel's `pid_max` (tgids are below it): the size of the `TARGETS` array. The largest
/// value Linux allows (2^22) when it cannot be read.
fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 22)
}

/// The facts the planner decides on. `VIGIE_ASSUME_BPF_LSM=1` (for tests) makes it believe `bpf`
/// is an active LSM: the LSM program is then attached where it cannot run, and the fire check
/// must catch it. The report keeps the real facts.
fn plan_facts(facts: &KernelFacts) -> KernelFacts {
    let mut facts = facts.clone();
    if std::env::var_os("VIGIE_ASSUME_BPF_LSM").is_some_and(|v| v == "1") {
        let lsms = facts.lsms.get_or_insert_with(Vec::new);
        if !lsms.iter().any(|l| l == "bpf") {
            tracing::warn!("VIGIE_ASSUME_BPF_LSM=1: planning as if `bpf` were an active LSM");
            lsms.push("bpf".into());
        }
    }
    facts
}

/// The reason an entry could not be attached, without aya's empty verifier log.
fn attach_failure(e: &LoadError) -> String {
    let text = e.to_string();
    match text.strip_suffix(" Verifier output: ") {
        Some(short) => short.trim_end_matches('.').to_string(),
        None => text,
    }
}

/// Field offsets of one tracefs event `format` file.
fn tracepoint_fields(category: &str, name: &str) -> Result<Vec<(String, u64, u64)>, LoadError> {
    let path = format!("{TRACEFS}/events/{category}/{name}/format");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| LoadError::Tracepoint(format!("{category}/{name}"), format!("{path}: {e}")))?;
    Ok(parse_format(&text))
}

/// `field:int __syscall_nr; offset:8; size:4; signed:1;` (tab-separated) -> ("__syscall_nr", 8, 4).
fn parse_format(text: &str) -> Vec<(String, u64, u64)> {
    let mut fields = Vec::new();
    for line in text.lines() {
        let mut name = None;
        let mut offset = None;
        let mut size = None;
        for part in line.split(';') {
            let part = part.trim();
            if let Some(decl) = part.strip_prefix("field:") {
                name = decl
                    .split_whitespace()
                    .last()
                    .map(|n| n.split('[').next().unwrap_or(n).to_string());
            } else if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        if let (Some(n), Some(o), Some(s)) = (name, offset, size) {
            fields.push((n, o, s));
        }
    }
    fields
}

/// Offsets of the `sys_enter_mmap` fields the mmap probe reads, by name.
fn mmap_layout() -> Result<Vec<(&'static str, u64)>, LoadError> {
    mmap_fields(&tracepoint_fields("syscalls", "sys_enter_mmap")?)
}

fn mmap_fields(fields: &[(String, u64, u64)]) -> Result<Vec<(&'static str, u64)>, LoadError> {
    [
        (globals::TP_MMAP_LEN, "len"),
        (globals::TP_MMAP_PROT, "prot"),
        (globals::TP_MMAP_FD, "fd"),
    ]
    .into_iter()
    .map(|(global, name)| {
        fields
            .iter()
            .find(|f| f.0 == name && f.2 == 8)
            .map(|f| (global, f.1))
            .ok_or_else(|| {
                LoadError::Tracepoint("sys_enter_mmap".into(), format!("no 8-byte `{name}` field"))
            })
    })
    .collect()
}

/// Checks that every syscall tracepoint in the plan has the layout the probes assume (a
/// `__syscall_nr`, then 8-byte argument slots / an 8-byte `ret`), and returns the offsets. A
/// tracepoint this kernel lacks gets its entry's fallback.
fn syscall_layout(planned: &mut [Planned]) -> Result<Vec<(&'static str, u64)>, LoadError> {
    let mut nr_off = None;
    let mut args_off = None;
    let mut ret_off = None;
    let same = |slot: &mut Option<u64>, v: u64, what: &str| -> Result<(), LoadError> {
        match *slot {
            Some(prev) if prev != v => Err(LoadError::Tracepoint(
                what.to_string(),
                format!("layout differs between syscalls ({prev} vs {v})"),
            )),
            _ => {
                *slot = Some(v);
                Ok(())
            }
        }
    };
    for i in 0..planned.len() {
        let hook = &planned[i].entry.hook;
        if planned[i].decision != Decision::Attach
            || hook.kind != HookKind::Tracepoint
            || hook.category != "syscalls"
        {
            continue;
        }
        let name = hook.name.clone();
        let fields = match tracepoint_fields("syscalls", &name) {
            Ok(f) => f,
            Err(e) => {
                attach::give_up(planned, i, e.to_string()).map_err(|reason| {
                    LoadError::Required(format!("tracepoint syscalls/{name}"), reason)
                })?;
                continue;
            }
        };
        if name.starts_with("sys_enter_") {
            let nr = fields.iter().find(|f| f.0 == "__syscall_nr");
            let Some(nr) = nr else {
                return Err(LoadError::Tracepoint(name, "no __syscall_nr field".into()));
            };
            same(&mut nr_off, nr.1, &name)?;
            let args: Vec<_> = fields.iter().filter(|f| f.1 > nr.1).collect();
            if let Some(first) = args.first() {
                same(&mut args_off, first.1, &name)?;
                for (i, f) in args.iter().enumerate() {
                    if f.1 != first.1 + 8 * i as u64 || f.2 != 8 {
                        return Err(LoadError::Tracepoint(
                            name,
                            format!("argument {} is not an 8-byte slot", f.0),
                        ));
                    }
                }
            }
        } else {
            let Some(ret) = fields.iter().find(|f| f.0 == "ret" && f.2 == 8) else {
                return Err(LoadError::Tracepoint(name, "no 8-byte ret field".into()));
            };
            same(&mut ret_off, ret.1, &name)?;
        }
    }
    let missing = |what: &str| {
        LoadError::Tracepoint(
            "syscalls".into(),
            format!("no syscall tracepoint in the plan gave the offset of {what}"),
        )
    };
    Ok(vec![
        (
            globals::TP_SYSCALL_NR,
            nr_off.ok_or_else(|| missing("__syscall_nr"))?,
        ),
        (
            globals::TP_ENTER_ARGS,
            args_off.ok_or_else(|| missing("the arguments"))?,
        ),
        (globals::TP_EXIT_RET, ret_off.ok_or_else(|| missing("ret"))?),
    ])
}

fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        // Kernels >= 5.11 charge BPF maps to the memory cgroup instead: loading still works.
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Probes {
    /// Loads the probes with this kernel's layouts and the config's filters, and attaches them
    /// as the attach table decides for this kernel.
    pub fn load(cfg: &Config, object: &[u8]) -> Result<Self, LoadError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LoadError::NotRoot);
        }
        // A fresh machine may have neither mounted; the facts say what is missing if this fails.
        crate::kernel::mount_if_missing("tracefs", TRACEFS, "events");
        let facts = KernelFacts::read();
        let mut planned = attach::plan(&plan_facts(&facts), attach::table(), cfg.kernel.hooks)
            .map_err(|refusal| LoadError::Unsupported(facts.to_string(), refusal))?;
        raise_memlock();
        let mut values = kernel_offsets()?;
        if values
            .iter()
            .any(|(name, off)| *name == globals::OFF_REGS_ARG0 && *off == 0)
            && let Some(i) = planned.iter().position(|p| {
                p.entry.group == Some(attach::SYSCALL_FUNCTIONS) && p.decision == Decision::Attach
            })
        {
            attach::give_up(
                &mut planned,
                i,
                "the kernel's BTF has no x86-64 `struct pt_regs` (di, si, dx, r10) to read the syscalls' arguments from".into(),
            )
            .map_err(|reason| LoadError::Required(planned[i].entry.hook.to_string(), reason))?;
        }
        values.extend(syscall_layout(&mut planned)?);
        values.extend(mmap_layout()?);
        values.push((
            globals::REQUEST_CAPTURE,
            u64::from(cfg.capture.request_bytes),
        ));
        values.push((
            globals::RESPONSE_CAPTURE,
            u64::from(cfg.capture.response_bytes),
        ));
        // A document read's count is sent at least this often while its thread keeps reading,
        // well within the idle horizon that judges an access its reads stopped coming to.
        values.push((
            globals::READ_BATCH_NS,
            cfg.correlation.idle_flush_ms.saturating_mul(1_000_000) / 4,
        ));
        // A quarter of the ring pending wakes the reader at once; below that it drains every
        // `run::DRAIN` (a few ms), so a burst never waits for the timer to find a full ring.
        values.push((
            globals::WAKEUP_BYTES,
            u64::from(cfg.kernel.ring_buffer_bytes / 4),
        ));
        let fsbase = values
            .iter()
            .find(|(name, off)| *name == globals::OFF_TASK_FSBASE && *off != 0)
            .map(|(_, off)| *off);
        tracing::debug!(?values, "load-time globals");
        let mut loader = EbpfLoader::new();
        for (name, value) in &values {
            loader.override_global(name, value, true);
        }
        loader.map_max_entries("EVENTS", cfg.kernel.ring_buffer_bytes);
        loader.map_max_entries("TARGETS", pid_max());
        let ebpf = loader.load(object)?;
        let mut probes = Self {
            ebpf,
            report: AttachReport {
                facts,
                hooks: Vec::new(),
                fire_check_unavailable: None,
                tls: Vec::new(),
                goroutines: attach::goroutines_report(fsbase),
            },
            task_fsbase: fsbase,
            links: Vec::new(),
            roots: crate::procfs::Roots::read(&cfg.documents.roots),
            kernel_btf: None,
            tls_multi: None,
        };
        probes.configure(cfg)?;
        probes.attach(planned)?;
        probes.load_tls();
        Ok(probes)
    }

    fn configure(&mut self, cfg: &Config) -> Result<(), LoadError> {
        let mut ops: Array<_, u32> =
            Array::try_from(self.map_mut("SYSCALL_OPS")?).map_err(map_err("SYSCALL_OPS"))?;
        for (_, nr, op) in attach::all_syscalls() {
            let nr = u32::try_from(*nr).ok().filter(|n| *n < MAX_SYSCALL_NR);
            if let Some(nr) = nr {
                ops.set(nr, op, 0).map_err(map_err("SYSCALL_OPS"))?;
            }
        }
        let all_roots = self.roots.all();
        let mut roots: LpmTrie<_, [u8; ROOT_KEY_LEN], u32> =
            LpmTrie::try_from(self.map_mut("DOC_ROOTS")?).map_err(map_err("DOC_ROOTS"))?;
        for root in &all_roots {
            let mut data = [0u8; ROOT_KEY_LEN];
            let with_slash = format!("{root}/");
            let bytes = with_slash.as_bytes();
            if bytes.len() > ROOT_KEY_LEN {
                return Err(LoadError::Map(
                    "DOC_ROOTS".into(),
                    format!("root {root} too long"),
                ));
            }
            data[..bytes.len()].copy_from_slice(bytes);
            let prefix_bits = u32::try_from(bytes.len() * 8).unwrap_or(u32::MAX);
            roots
                .insert(&Key::new(prefix_bits, data), &1, 0)
                .map_err(map_err("DOC_ROOTS"))?;
        }
        let mut comms: HashMap<_, [u8; 16], u32> =
            HashMap::try_from(self.map_mut("TARGET_COMMS")?).map_err(map_err("TARGET_COMMS"))?;
        for name in cfg.exec_names() {
            let mut comm = [0u8; 16];
            let b = name.as_bytes();
            let n = b.len().min(15);
            comm[..n].copy_from_slice(&b[..n]);
            comms
                .insert(&comm, &1, 0)
                .map_err(map_err("TARGET_COMMS"))?;
        }
        Ok(())
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map, LoadError> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| LoadError::Map(name.into(), "not in the object".into()))
    }

    /// Attaches what the plan says, then makes each new program run (the fire check). An entry
    /// that fails to attach, or whose program did not run, gets its fallback: a required one
    /// stops Vigie, a fallback program is attached (and checked) in turn.
    fn attach(&mut self, mut planned: Vec<Planned>) -> Result<(), LoadError> {
        let mut attached = BTreeSet::new();
        let mut loaded = BTreeSet::new();
        let mut fired = BTreeMap::new();
        loop {
            let mut new_programs = BTreeMap::new();
            for i in 0..planned.len() {
                if planned[i].decision != Decision::Attach || attached.contains(&i) {
                    continue;
                }
                let entry = planned[i].entry.clone();
                match self.attach_entry(&entry, &mut loaded) {
                    Ok(()) => {
                        attached.insert(i);
                        new_programs.insert(entry.program, entry.fire_check);
                    }
                    Err(e) => {
                        attach::give_up(&mut planned, i, attach_failure(&e)).map_err(|reason| {
                            LoadError::Required(entry.hook.to_string(), reason)
                        })?;
                        for program in self.detach_given_up(&planned, &mut attached) {
                            new_programs.remove(program);
                        }
                    }
                }
            }
            if new_programs.is_empty() {
                break;
            }
            let counts = match fire_check(&self.ebpf, &new_programs) {
                Ok(counts) => counts,
                Err(why) => {
                    self.report.fire_check_unavailable = Some(why);
                    BTreeMap::new()
                }
            };
            for (program, trigger) in &new_programs {
                let runs = counts.get(program).copied();
                fired.insert(*program, runs);
                if runs != Some(0) {
                    continue;
                }
                // Attached, and yet it did not run when made to: as good as not attached.
                self.unload(program);
                for i in 0..planned.len() {
                    if planned[i].entry.program == *program && attached.remove(&i) {
                        let reason = format!(
                            "attached, but did not run when Vigie made it fire ({})",
                            trigger.describe()
                        );
                        attach::give_up(&mut planned, i, reason).map_err(|reason| {
                            LoadError::Required(planned[i].entry.hook.to_string(), reason)
                        })?;
                    }
                }
                self.detach_given_up(&planned, &mut attached);
            }
        }
        self.report.hooks = planned
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (status, reason) = p.status(Some(attached.contains(&i)));
                HookReport {
                    program: p.entry.program,
                    hook: p.entry.hook.to_string(),
                    status,
                    reason,
                    fire_check: p.entry.fire_check.describe(),
                    fired: if status == "attached" {
                        fired.get(p.entry.program).copied().flatten()
                    } else {
                        None
                    },
                    group: p.entry.group,
                }
            })
            .collect();
        // Only loading needed it; kept, it would hold about 10 MiB for Vigie's whole life.
        self.kernel_btf = None;
        Ok(())
    }

    /// Detaches the attached entries a group's fallback took back ([`attach::give_up`]), and
    /// returns their programs.
    fn detach_given_up(
        &mut self,
        planned: &[Planned],
        attached: &mut BTreeSet<usize>,
    ) -> Vec<&'static str> {
        let gone: Vec<usize> = attached
            .iter()
            .copied()
            .filter(|&i| planned[i].decision != Decision::Attach)
            .collect();
        let mut programs = Vec::new();
        for i in gone {
            attached.remove(&i);
            let program = planned[i].entry.program;
            if !programs.contains(&program) {
                self.unload(program);
                programs.push(program);
            }
        }
        programs
    }

    fn attach_entry(
        &mut self,
        entry: &attach::Entry,
        loaded: &mut BTreeSet<&'static str>,
    ) -> Result<(), LoadError> {
        let name = entry.program;
        if matches!(
            entry.hook.kind,
            HookKind::Lsm | HookKind::Fentry | HookKind::Fexit
        ) && self.kernel_btf.is_none()
        {
            let started = std::time::Instant::now();
            let btf = aya::Btf::from_sys_fs().map_err(|e| LoadError::Btf(e.to_string()))?;
            tracing::debug!(
                "kernel BTF parsed for BTF programs in {:?}",
                started.elapsed()
            );
            self.kernel_btf = Some(btf);
        }
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| LoadError::Map(name.into(), "program not in the object".into()))?;
        let err = |e| LoadError::Program(format!("{name} -> {}", entry.hook), e);
        match entry.hook.kind {
            HookKind::Tracepoint => {
                let tp: &mut TracePoint = program.try_into().map_err(err)?;
                if loaded.insert(name) {
                    tp.load().map_err(err)?;
                }
                let link = tp
                    .attach(entry.hook.category, &entry.hook.name)
                    .map_err(err)?;
                self.links.push((name, LinkId::Tracepoint(link)));
            }
            HookKind::RawTracepoint => {
                let raw: &mut RawTracePoint = program.try_into().map_err(err)?;
                if loaded.insert(name) {
                    raw.load().map_err(err)?;
                }
                let link = raw.attach(&entry.hook.name).map_err(err)?;
                self.links.push((name, LinkId::Raw(link)));
            }
            HookKind::Lsm => {
                let lsm: &mut Lsm = program.try_into().map_err(err)?;
                if loaded.insert(name) {
                    let btf = self.kernel_btf.as_ref().ok_or(LoadError::NoBtf)?;
                    lsm.load(&entry.hook.name, btf).map_err(err)?;
                }
                let link = lsm.attach().map_err(err)?;
                self.links.push((name, LinkId::Lsm(link)));
            }
            HookKind::Fentry => {
                let fentry: &mut FEntry = program.try_into().map_err(err)?;
                if loaded.insert(name) {
                    let btf = self.kernel_btf.as_ref().ok_or(LoadError::NoBtf)?;
                    fentry.load(&entry.hook.name, btf).map_err(err)?;
                }
                let link = fentry.attach().map_err(err)?;
                self.links.push((name, LinkId::Fentry(link)));
            }
            HookKind::Fexit => {
                let fexit: &mut FExit = program.try_into().map_err(err)?;
                if loaded.insert(name) {
                    let btf = self.kernel_btf.as_ref().ok_or(LoadError::NoBtf)?;
                    fexit.load(&entry.hook.name, btf).map_err(err)?;
                }
                let link = fexit.attach().map_err(err)?;
                self.links.push((name, LinkId::Fexit(link)));
            }
        }
        Ok(())
    }

    /// Detaches and unloads a program (one that attached but did not run).
    fn unload(&mut self, name: &str) {
        self.links.retain(|(program, _)| *program != name);
        let result = match self.ebpf.program_mut(name) {
            Some(Program::TracePoint(p)) => p.unload(),
            Some(Program::RawTracePoint(p)) => p.unload(),
            Some(Program::Lsm(p)) => p.unload(),
            Some(Program::FEntry(p)) => p.unload(),
            Some(Program::FExit(p)) => p.unload(),
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!("unloading {name}: {e}");
        }
    }

    /// How the TLS hooks are made: `uprobe.multi` links (6.6+, also after the capability drop),
    /// classic uprobes (only before it), or `None`: no TLS program could be loaded.
    pub fn tls_way(&self) -> Option<&'static str> {
        self.tls_multi.map(|multi| {
            if multi {
                "uprobe.multi"
            } else {
                "classic uprobes"
            }
        })
    }

    /// Whether the TLS hooks are classic uprobes: attached only while Vigie holds its
    /// capabilities.
    pub fn tls_classic(&self) -> bool {
        self.tls_multi == Some(false)
    }

    /// Hooks the TLS functions of the OpenSSL library at `path` (a path Vigie can open), for
    /// every process that maps it: the kernel puts the uprobe on the file's inode. `shown` is
    /// the path as the target sees it, for the report. Returns how many hooks attached; each
    /// is in `report.tls`.
    pub fn attach_tls(&mut self, path: &Path, shown: &str, inode: u64) -> usize {
        let Some(multi) = self.tls_multi else {
            return 0;
        };
        let mut attached = 0;
        let mut rows = Vec::new();
        for (function, single_entry, multi_entry) in attach::TLS_FUNCTIONS {
            let (entry, ret) = if multi {
                (*multi_entry, attach::TLS_RETURN.1)
            } else {
                (*single_entry, attach::TLS_RETURN.0)
            };
            for (program, hook) in [(entry, "uprobe"), (ret, "uretprobe")] {
                let status = match self.attach_uprobe(program, function, path) {
                    Ok(()) => {
                        attached += 1;
                        "attached".to_string()
                    }
                    Err(e) => {
                        tracing::warn!("TLS hook {hook} {shown}:{function}: {e}");
                        format!("failed: {e}")
                    }
                };
                rows.push(attach::TlsHookReport {
                    library: shown.to_string(),
                    inode,
                    function,
                    program,
                    hook,
                    status,
                    fire_check: "runs at a target's first TLS call (vigie_tls_records_total)",
                    fired: None,
                });
            }
        }
        self.report.tls.extend(rows);
        attached
    }

    /// Loads the TLS programs now, while Vigie holds every capability: they are attached later,
    /// to each library as targets map it. The `uprobe.multi` flavour where the kernel has it
    /// (6.6+), else the classic one. A kernel that refuses both leaves HTTPS unread (said).
    fn load_tls(&mut self) {
        // A kernel before 6.6 may load the multi programs and refuse only their links: ask it
        // first, so that the classic ones are loaded and attached while Vigie still may.
        let multi_links =
            aya::sys::is_uprobe_multi_supported(aya::sys::UProbeMultiFeature::LinkCreation);
        for multi in [true, false] {
            if multi && let Ok(false) = multi_links {
                tracing::info!(
                    "this kernel has no uprobe.multi links: the TLS hooks are classic uprobes, attached before the capability drop (libraries a target maps later, other than the system's libssl, cannot be hooked)"
                );
                continue;
            }
            let programs = attach::TLS_FUNCTIONS
                .iter()
                .map(|(_, single, m)| if multi { *m } else { *single })
                .chain([if multi {
                    attach::TLS_RETURN.1
                } else {
                    attach::TLS_RETURN.0
                }]);
            let mut failed = None;
            for name in programs {
                let loaded = match self.ebpf.program_mut(name) {
                    Some(Program::UProbe(p)) => p.load().map_err(|e| e.to_string()),
                    _ => Err("not a uprobe in the object".to_string()),
                };
                if let Err(e) = loaded {
                    failed = Some(format!("{name}: {e}"));
                    break;
                }
            }
            match failed {
                None => {
                    self.tls_multi = Some(multi);
                    return;
                }
                Some(e) if multi => tracing::debug!(
                    "uprobe.multi TLS programs not loaded ({e}): TLS libraries mapped after start-up will not be hooked"
                ),
                Some(e) => {
                    tracing::warn!("TLS programs not loaded: HTTPS plaintext is not read: {e}")
                }
            }
        }
    }

    fn attach_uprobe(
        &mut self,
        name: &'static str,
        function: &str,
        path: &Path,
    ) -> Result<(), LoadError> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| LoadError::Map(name.into(), "program not in the object".into()))?;
        let err = |e| LoadError::Program(format!("{name} -> {}:{function}", path.display()), e);
        let probe: &mut UProbe = program.try_into().map_err(err)?;
        let link = probe
            .attach([function], path, UProbeScope::AllProcesses)
            .map_err(err)?;
        self.links.push((name, LinkId::UProbe(link)));
        Ok(())
    }

    /// Makes `pid` a target (its threads included).
    pub fn add_target(&mut self, pid: u32) -> Result<(), LoadError> {
        self.set_target(pid, 1)
    }

    /// Makes `pid` a Go target whose events carry the goroutine id, found with `layout`.
    pub fn add_go_target(&mut self, pid: u32, layout: &GoLayout) -> Result<(), LoadError> {
        let mut procs: HashMap<_, u32, GoLayout> =
            HashMap::try_from(self.map_mut("GO_PROCS")?).map_err(map_err("GO_PROCS"))?;
        procs.insert(&pid, layout, 0).map_err(map_err("GO_PROCS"))?;
        self.set_target(pid, GO_TARGET)
    }

    /// Whether the probes report `pid` (made a target here, or by the fork probe).
    pub fn is_target(&self, pid: u32) -> bool {
        self.ebpf
            .map("TARGETS")
            .and_then(|m| Array::<_, u8>::try_from(m).ok())
            .and_then(|targets| targets.get(&pid, 0).ok())
            .is_some_and(|v| v != 0)
    }

    pub fn remove_target(&mut self, pid: u32) -> Result<(), LoadError> {
        self.set_target(pid, 0)
    }

    fn set_target(&mut self, pid: u32, value: u8) -> Result<(), LoadError> {
        let mut targets: Array<_, u8> =
            Array::try_from(self.map_mut("TARGETS")?).map_err(map_err("TARGETS"))?;
        targets.set(pid, &value, 0).map_err(map_err("TARGETS"))
    }

    /// Tells the probes what an fd is (fds found in `/proc`, inherited over fork).
    pub fn set_fd_kind(&mut self, pid: u32, fd: i32, document: bool) -> Result<(), LoadError> {
        let mut kinds: HashMap<_, u64, u8> =
            HashMap::try_from(self.map_mut("FD_KIND")?).map_err(map_err("FD_KIND"))?;
        let key = (u64::from(pid) << 32) | u64::from(fd as u32);
        let kind = if document {
            fd_kind::DOCUMENT
        } else {
            fd_kind::SOCKET
        };
        kinds.insert(&key, &kind, 0).map_err(map_err("FD_KIND"))
    }

    /// Tells the probes where the body of the response being written on connection `fd` of
    /// `pid` lies (see `monitor_common::sockets::BodySpan`): its writes past the first body
    /// bytes and within it are counted rather than sent.
    pub fn set_body_span(
        &mut self,
        pid: u32,
        fd: i32,
        span: &monitor_common::sockets::BodySpan,
    ) -> Result<(), LoadError> {
        let mut spans: HashMap<_, u64, monitor_common::sockets::BodySpan> =
            HashMap::try_from(self.map_mut("BODY_SPANS")?).map_err(map_err("BODY_SPANS"))?;
        let key = (u64::from(pid) << 32) | u64::from(fd as u32);
        spans.insert(&key, span, 0).map_err(map_err("BODY_SPANS"))
    }

    /// Gives thread `tid` of `pid` the stash its `sys_enter` would have left, unless it already
    /// has one (the probes' own entry wins). True when inserted.
    pub fn stash_for(&mut self, pid: u32, tid: u32, stash: &Stash) -> Result<bool, LoadError> {
        let mut map: HashMap<_, u64, Stash> =
            HashMap::try_from(self.map_mut("STASH")?).map_err(map_err("STASH"))?;
        let key = (u64::from(pid) << 32) | u64::from(tid);
        match map.insert(&key, stash, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(false)
            }
            Err(e) => Err(map_err("STASH")(e)),
        }
    }

    /// Takes back a stash given by [`Probes::stash_for`], if it is still there unchanged (mark
    /// it, e.g. with [`Stash::ADOPTED`], to tell it from one the probes wrote since).
    pub fn unstash(&mut self, pid: u32, tid: u32, stash: &Stash) -> Result<(), LoadError> {
        let mut map: HashMap<_, u64, Stash> =
            HashMap::try_from(self.map_mut("STASH")?).map_err(map_err("STASH"))?;
        let key = (u64::from(pid) << 32) | u64::from(tid);
        if map.get(&key, 0).is_ok_and(|s| s == *stash) {
            match map.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("STASH")(e)),
            }
        }
        Ok(())
    }

    /// Events lost in the kernel so far, per reason (summed over CPUs).
    pub fn lost(&self) -> Result<[u64; loss::COUNT as usize], LoadError> {
        let map = self
            .ebpf
            .map("LOST")
            .ok_or_else(|| LoadError::Map("LOST".into(), "not in the object".into()))?;
        let lost: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_err("LOST"))?;
        let mut out = [0u64; loss::COUNT as usize];
        for (reason, slot) in out.iter_mut().enumerate() {
            let per_cpu = lost.get(&(reason as u32), 0).map_err(map_err("LOST"))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Whether reads reach the probes through the BTF programs on the syscall functions rather
    /// than the tracepoints: a read already in progress when they attached is then not seen at
    /// its return (a BPF trampoline only runs for calls that enter after it is in place), and
    /// there is no exit tracepoint for a stash to be given to.
    pub fn syscalls_by_btf(&self) -> bool {
        self.report
            .hooks
            .iter()
            .any(|h| h.group == Some(attach::SYSCALL_FUNCTIONS) && h.status == "attached")
    }

    /// How many hooks the plan meant to attach on this kernel: fewer attached means a blind spot.
    pub fn expected(&self) -> usize {
        self.report.expected()
    }

    pub fn attached(&self) -> usize {
        self.report.attached()
    }

    /// The ring buffer, for the reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| LoadError::Map("EVENTS".into(), "not in the object".into()))?;
        RingBuf::try_from(map).map_err(map_err("EVENTS"))
    }
}

/// Detaching a tracepoint waits for an RCU grace period in the kernel (60-75 ms measured here,
/// longer under emulation): one after the other, 32 links took 2 s at every stop. Closed from
/// one thread each, the waits overlap.
impl Drop for Probes {
    fn drop(&mut self) {
        let mut links: Vec<Box<dyn Send>> = Vec::new();
        for (name, id) in std::mem::take(&mut self.links) {
            let link: Option<Box<dyn Send>> = match (self.ebpf.program_mut(name), id) {
                (Some(Program::TracePoint(p)), LinkId::Tracepoint(id)) => {
                    p.take_link(id).ok().map(|l| Box::new(l) as Box<dyn Send>)
                }
                (Some(Program::RawTracePoint(p)), LinkId::Raw(id)) => {
                    p.take_link(id).ok().map(|l| Box::new(l) as Box<dyn Send>)
                }
                (Some(Program::Lsm(p)), LinkId::Lsm(id)) => {
                    p.take_link(id).ok().map(|l| Box::new(l) as Box<dyn Send>)
                }
                (Some(Program::FEntry(p)), LinkId::Fentry(id)) => {
                    p.take_link(id).ok().map(|l| Box::new(l) as Box<dyn Send>)
                }
                (Some(Program::FExit(p)), LinkId::Fexit(id)) => {
                    p.take_link(id).ok().map(|l| Box::new(l) as Box<dyn Send>)
                }
                (Some(Program::UProbe(p)), LinkId::UProbe(id)) => {
                    p.take_link(id).ok().map(|l| Box::new(l) as Box<dyn Send>)
                }
                _ => None,
            };
            links.extend(link);
        }
        std::thread::scope(|s| {
            for link in links {
                s.spawn(move || drop(link));
            }
        });
    }
}

/// How full the ring buffer is, read from its producer and consumer positions: two shared pages
/// the kernel keeps up to date, mapped read-only a second time (aya keeps its own mapping to
/// consume). Reading it costs two loads, no syscall.
pub struct RingUsage {
    consumer: *const u8,
    producer: *const u8,
    page: usize,
    size: u64,
}

impl RingUsage {
    /// Maps the position pages of the ring buffer behind `fd`, whose data area is `size` bytes.
    pub fn new(fd: std::os::fd::BorrowedFd<'_>, size: u32) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::other("no page size"))?;
        let map = |offset: usize| -> std::io::Result<*const u8> {
            // SAFETY: a fresh read-only shared mapping of one page of a ring buffer map: page 0
            // holds the consumer position, page 1 the producer position (kernel/bpf/ringbuf.c).
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    libc::off_t::try_from(offset).unwrap_or(0),
                )
            };
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            Ok(p.cast::<u8>().cast_const())
        };
        let consumer = map(0)?;
        let producer = match map(page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: unmapping the page mapped just above.
                unsafe { libc::munmap(consumer.cast_mut().cast(), page) };
                return Err(e);
            }
        };
        Ok(Self {
            consumer,
            producer,
            page,
            size: u64::from(size),
        })
    }

    /// Bytes written by the probes and not yet consumed, over the ring's size (0.0 to 1.0).
    pub fn fill_ratio(&self) -> f64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: both pages stay mapped until drop; the kernel updates the positions (unsigned
        // long, 8-byte aligned at the start of each page) atomically.
        let (cons, prod) = unsafe {
            (
                (*self.consumer.cast::<AtomicU64>()).load(Ordering::Acquire),
                (*self.producer.cast::<AtomicU64>()).load(Ordering::Acquire),
            )
        };
        let used = prod.saturating_sub(cons).min(self.size);
        used as f64 / self.size as f64
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for RingUsage {
    fn drop(&mut self) {
        // SAFETY: unmapping the two pages mapped in `new`, once.
        unsafe {
            libc::munmap(self.consumer.cast_mut().cast(), self.page);
            libc::munmap(self.producer.cast_mut().cast(), self.page);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracefs_format() {
        let text = "name: sys_enter_read\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:char * buf;\toffset:24;\tsize:8;\tsigned:0;\n\tfield:char comm[16];\toffset:32;\tsize:16;\tsigned:0;\n";
        let f = parse_format(text);
        assert_eq!(f[1], ("__syscall_nr".to_string(), 8, 4));
        assert_eq!(f[2], ("fd".to_string(), 16, 8));
        assert_eq!(f[3], ("buf".to_string(), 24, 8));
        assert_eq!(f[4], ("comm".to_string(), 32, 16));
    }

    #[test]
    fn mmap_offsets_come_from_the_format_file() {
        let text = "name: sys_enter_mmap\nformat:\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:unsigned long addr;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:unsigned long len;\toffset:24;\tsize:8;\tsigned:0;\n\tfield:unsigned long prot;\toffset:32;\tsize:8;\tsigned:0;\n\tfield:unsigned long flags;\toffset:40;\tsize:8;\tsigned:0;\n\tfield:unsigned long fd;\toffset:48;\tsize:8;\tsigned:0;\n";
        assert_eq!(
            mmap_fields(&parse_format(text)).unwrap(),
            [
                (globals::TP_MMAP_LEN, 24),
                (globals::TP_MMAP_PROT, 32),
                (globals::TP_MMAP_FD, 48)
            ]
        );
        let missing = parse_format("\tfield:unsigned long len;\toffset:24;\tsize:8;\tsigned:0;\n");
        assert!(
            mmap_fields(&missing)
                .unwrap_err()
                .to_string()
                .contains("`prot`")
        );
    }
}
