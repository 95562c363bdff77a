//! Load and attach the probes. Everything kernel-specific is read from the running kernel: struct
//! offsets from `/sys/kernel/btf/vmlinux`, tracepoint record layouts from tracefs `format` files.
use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{RawTracePoint, TracePoint},
};
use btfparse::{Offset, Readable, TypeInformation, TypeVariant};
use monitor_common::{MAX_SYSCALL_NR, Stash, fd_kind, globals, loss, op};

use crate::config::Config;

const TRACEFS: &str = "/sys/kernel/tracing";
const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";
/// Must match `ROOT_KEY_LEN` in the probes.
const ROOT_KEY_LEN: usize = 128;

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
    #[error("tracefs is not mounted at {TRACEFS} and mounting it failed: {0}")]
    Mount(std::io::Error),
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

/// The syscalls each generic program is attached to, with the `op` it reports them as.
const IO_SYSCALLS: &[(&str, i64, u32)] = &[
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
const OPEN_SYSCALLS: &[(&str, i64, u32)] = &[
    ("openat", libc::SYS_openat, op::OPENAT),
    ("openat2", libc::SYS_openat2, op::OPENAT2),
];
const ACCEPT_SYSCALLS: &[(&str, i64, u32)] = &[
    ("accept", libc::SYS_accept, op::ACCEPT),
    ("accept4", libc::SYS_accept4, op::ACCEPT4),
];
const CLOSE_SYSCALLS: &[(&str, i64, u32)] = &[("close", libc::SYS_close, op::CLOSE)];
const MMAP_SYSCALLS: &[(&str, i64, u32)] = &[("mmap", libc::SYS_mmap, op::MMAP)];

/// The `op` of a syscall that reads from a socket (`read`, `readv`, `recvfrom`, `recvmsg`), by
/// number: for threads found asleep in one when a running process is adopted.
pub fn socket_read_op(nr: i64) -> Option<u32> {
    IO_SYSCALLS
        .iter()
        .find(|(_, n, op)| {
            *n == nr && matches!(*op, op::READ | op::READV | op::RECVFROM | op::RECVMSG)
        })
        .map(|(_, _, op)| *op)
}

/// `BPF_NOEXIST`: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Declarative attach table: program name, tracepoint category, tracepoint names.
fn attach_table() -> Vec<(&'static str, &'static str, Vec<String>)> {
    let names = |prefix: &str, set: &[(&str, i64, u32)]| -> Vec<String> {
        set.iter().map(|(n, _, _)| format!("{prefix}{n}")).collect()
    };
    vec![
        (
            "sys_enter_open",
            "syscalls",
            names("sys_enter_", OPEN_SYSCALLS),
        ),
        (
            "sys_exit_open",
            "syscalls",
            names("sys_exit_", OPEN_SYSCALLS),
        ),
        ("sys_enter_io", "syscalls", names("sys_enter_", IO_SYSCALLS)),
        ("sys_exit_io", "syscalls", names("sys_exit_", IO_SYSCALLS)),
        (
            "sys_exit_accept",
            "syscalls",
            names("sys_exit_", ACCEPT_SYSCALLS),
        ),
        (
            "sys_enter_close",
            "syscalls",
            names("sys_enter_", CLOSE_SYSCALLS),
        ),
        (
            "sys_enter_mmap",
            "syscalls",
            names("sys_enter_", MMAP_SYSCALLS),
        ),
        (
            "sys_exit_mmap",
            "syscalls",
            names("sys_exit_", MMAP_SYSCALLS),
        ),
        (
            "sched_process_exec",
            "sched",
            vec!["sched_process_exec".into()],
        ),
        (
            "sched_process_exit",
            "sched",
            vec!["sched_process_exit".into()],
        ),
    ]
}

/// Loaded and attached probes; dropping this detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    pub attached: Vec<String>,
}

/// BTF bytes for btfparse.
struct Bytes(Vec<u8>);

impl Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match self.0.get(start..start.saturating_add(buffer.len())) {
            Some(src) => {
                buffer.copy_from_slice(src);
                Ok(())
            }
            None => Err(btfparse::Error::new(
                btfparse::ErrorKind::IOError,
                "read past the end of BTF",
            )),
        }
    }
}

/// Byte offsets of the kernel struct fields the probes walk, from the running kernel's BTF.
pub fn kernel_offsets() -> Result<Vec<(&'static str, u64)>, LoadError> {
    if !Path::new(BTF_VMLINUX).exists() {
        return Err(LoadError::NoBtf);
    }
    let raw = std::fs::read(BTF_VMLINUX).map_err(|e| LoadError::Btf(e.to_string()))?;
    let info = TypeInformation::new(&Bytes(raw)).map_err(|e| LoadError::Btf(format!("{e:?}")))?;
    let find_struct = |name: &str| -> Option<u32> {
        info.get().iter().find_map(|(id, t)| match t {
            TypeVariant::Struct(s) if s.name().as_deref() == Some(name) => Some(*id),
            _ => None,
        })
    };
    let wanted = [
        (globals::OFF_TASK_FILES, "task_struct", "files"),
        (globals::OFF_TASK_TGID, "task_struct", "tgid"),
        (globals::OFF_TASK_PID, "task_struct", "pid"),
        (globals::OFF_FILES_FDT, "files_struct", "fdt"),
        (globals::OFF_FDT_MAX_FDS, "fdtable", "max_fds"),
        (globals::OFF_FDT_FD, "fdtable", "fd"),
        (globals::OFF_FILE_INODE, "file", "f_inode"),
        (globals::OFF_INODE_MODE, "inode", "i_mode"),
    ];
    let mut out = Vec::new();
    for (global, strukt, field) in wanted {
        let missing = || LoadError::MissingField(format!("{strukt}.{field}"));
        let id = find_struct(strukt).ok_or_else(missing)?;
        let (_, offset) = info.offset_of(id, field).map_err(|_| missing())?;
        let Offset::ByteOffset(off) = offset else {
            return Err(missing());
        };
        out.push((global, u64::from(off)));
    }
    Ok(out)
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

/// Checks that every syscall tracepoint we attach has the layout the probes assume (a
/// `__syscall_nr`, then 8-byte argument slots / an 8-byte `ret`), and returns the offsets.
fn syscall_layout() -> Result<Vec<(&'static str, u64)>, LoadError> {
    let mut nr_off = None;
    let mut args_off = None;
    let mut ret_off = None;
    let all: Vec<&str> = IO_SYSCALLS
        .iter()
        .chain(OPEN_SYSCALLS)
        .chain(ACCEPT_SYSCALLS)
        .chain(CLOSE_SYSCALLS)
        .chain(MMAP_SYSCALLS)
        .map(|(n, _, _)| *n)
        .collect();
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
    for sc in all {
        let enter = format!("sys_enter_{sc}");
        let fields = tracepoint_fields("syscalls", &enter)?;
        let nr = fields.iter().find(|f| f.0 == "__syscall_nr");
        let Some(nr) = nr else {
            return Err(LoadError::Tracepoint(enter, "no __syscall_nr field".into()));
        };
        same(&mut nr_off, nr.1, &enter)?;
        let args: Vec<_> = fields.iter().filter(|f| f.1 > nr.1).collect();
        if let Some(first) = args.first() {
            same(&mut args_off, first.1, &enter)?;
            for (i, f) in args.iter().enumerate() {
                if f.1 != first.1 + 8 * i as u64 || f.2 != 8 {
                    return Err(LoadError::Tracepoint(
                        enter,
                        format!("argument {} is not an 8-byte slot", f.0),
                    ));
                }
            }
        }
        let exit = format!("sys_exit_{sc}");
        let fields = tracepoint_fields("syscalls", &exit)?;
        let Some(ret) = fields.iter().find(|f| f.0 == "ret" && f.2 == 8) else {
            return Err(LoadError::Tracepoint(exit, "no 8-byte ret field".into()));
        };
        same(&mut ret_off, ret.1, &exit)?;
    }
    Ok(vec![
        (globals::TP_SYSCALL_NR, nr_off.unwrap_or(8)),
        (globals::TP_ENTER_ARGS, args_off.unwrap_or(16)),
        (globals::TP_EXIT_RET, ret_off.unwrap_or(16)),
    ])
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

/// Mounts tracefs if it is not there (a fresh machine may not have it).
pub fn ensure_tracefs() -> Result<(), LoadError> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS).unwrap_or_default();
    let fstype = c"tracefs";
    // SAFETY: plain mount(2) with NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(LoadError::Mount(std::io::Error::last_os_error()));
    }
    Ok(())
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
    /// Loads the probes with this kernel's layouts and the config's filters, and attaches them.
    pub fn load(cfg: &Config, object: &[u8]) -> Result<Self, LoadError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LoadError::NotRoot);
        }
        ensure_tracefs()?;
        raise_memlock();
        let mut values = kernel_offsets()?;
        values.extend(syscall_layout()?);
        values.extend(mmap_layout()?);
        values.push((
            globals::REQUEST_CAPTURE,
            u64::from(cfg.capture.request_bytes),
        ));
        values.push((
            globals::RESPONSE_CAPTURE,
            u64::from(cfg.capture.response_bytes),
        ));
        // A quarter of the ring pending wakes the reader at once; below that it drains every
        // `run::DRAIN` (a few ms), so a burst never waits for the timer to find a full ring.
        values.push((
            globals::WAKEUP_BYTES,
            u64::from(cfg.kernel.ring_buffer_bytes / 4),
        ));
        tracing::debug!(?values, "load-time globals");
        let mut loader = EbpfLoader::new();
        for (name, value) in &values {
            loader.override_global(name, value, true);
        }
        loader.map_max_entries("EVENTS", cfg.kernel.ring_buffer_bytes);
        let ebpf = loader.load(object)?;
        let mut probes = Self {
            ebpf,
            attached: Vec::new(),
        };
        probes.configure(cfg)?;
        probes.attach()?;
        Ok(probes)
    }

    fn configure(&mut self, cfg: &Config) -> Result<(), LoadError> {
        let mut ops: Array<_, u32> =
            Array::try_from(self.map_mut("SYSCALL_OPS")?).map_err(map_err("SYSCALL_OPS"))?;
        for (_, nr, op) in IO_SYSCALLS
            .iter()
            .chain(OPEN_SYSCALLS)
            .chain(ACCEPT_SYSCALLS)
            .chain(CLOSE_SYSCALLS)
            .chain(MMAP_SYSCALLS)
        {
            let nr = u32::try_from(*nr).ok().filter(|n| *n < MAX_SYSCALL_NR);
            if let Some(nr) = nr {
                ops.set(nr, op, 0).map_err(map_err("SYSCALL_OPS"))?;
            }
        }
        let mut roots: LpmTrie<_, [u8; ROOT_KEY_LEN], u32> =
            LpmTrie::try_from(self.map_mut("DOC_ROOTS")?).map_err(map_err("DOC_ROOTS"))?;
        for root in &cfg.documents.roots {
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

    fn attach(&mut self) -> Result<(), LoadError> {
        for (prog, category, tracepoints) in attach_table() {
            let program = self
                .ebpf
                .program_mut(prog)
                .ok_or_else(|| LoadError::Map(prog.into(), "program not in the object".into()))?;
            let tp: &mut TracePoint = program
                .try_into()
                .map_err(|e| LoadError::Program(prog.into(), e))?;
            tp.load().map_err(|e| LoadError::Program(prog.into(), e))?;
            for name in tracepoints {
                tp.attach(category, &name)
                    .map_err(|e| LoadError::Program(format!("{prog} -> {category}/{name}"), e))?;
                self.attached.push(format!("{category}/{name}"));
            }
        }
        let prog = "sched_process_fork";
        let program = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| LoadError::Map(prog.into(), "program not in the object".into()))?;
        let raw: &mut RawTracePoint = program
            .try_into()
            .map_err(|e| LoadError::Program(prog.into(), e))?;
        raw.load().map_err(|e| LoadError::Program(prog.into(), e))?;
        raw.attach("sched_process_fork")
            .map_err(|e| LoadError::Program(prog.into(), e))?;
        self.attached.push("raw:sched_process_fork".into());
        Ok(())
    }

    /// Makes `pid` a target (its threads included).
    pub fn add_target(&mut self, pid: u32) -> Result<(), LoadError> {
        let mut targets: HashMap<_, u32, u32> =
            HashMap::try_from(self.map_mut("TARGETS")?).map_err(map_err("TARGETS"))?;
        targets.insert(&pid, &1, 0).map_err(map_err("TARGETS"))
    }

    pub fn remove_target(&mut self, pid: u32) -> Result<(), LoadError> {
        let mut targets: HashMap<_, u32, u32> =
            HashMap::try_from(self.map_mut("TARGETS")?).map_err(map_err("TARGETS"))?;
        match targets.remove(&pid) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("TARGETS")(e)),
        }
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

    /// How many tracepoints [`Probes::load`] attaches: fewer in [`Probes::attached`] means a
    /// blind spot.
    pub fn expected() -> usize {
        attach_table()
            .iter()
            .map(|(_, _, tps)| tps.len())
            .sum::<usize>()
            + 1
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
