//! Maps and load-time globals shared by the probes.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use monitor_common::{
    COMM_LEN, Header, MAX_SYSCALL_NR, fd_kind,
    files::{FdEvent, OpenEvent},
    go::{GO_TARGET, GoLayout},
    header_flags, kind, loss, op,
    sockets::{BodySpan, DataEvent},
    tls::{SslKey, TlsCall},
};

/// Bytes of a path the document-root trie compares (roots must be shorter).
pub use monitor_common::files::ROOT_KEY_LEN;

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Target processes: byte `tgid` is 1 for a target. Filled by userspace (pid selectors, /proc
/// scan), by the exec probe (name selectors) and by the fork probe (children of targets). An
/// array indexed by tgid, sized to the kernel's `pid_max` at load: the verifier inlines its
/// lookup, which every hooked syscall of every process makes (measured about 35 ns cheaper per
/// hooked syscall than the hash map it replaced).
#[map]
pub static TARGETS: Array<u8> = Array::with_max_entries(1 << 22, 0);

/// Go targets (tgid -> where their threads' current goroutine id is), filled by userspace from
/// each binary's own tables; their `TARGETS` byte is `GO_TARGET`. LRU: the entry of an exited
/// process ages out (the `TARGETS` byte, reset at exec and exit, decides whether it is read).
#[map]
pub static GO_PROCS: LruHashMap<u32, GoLayout> = LruHashMap::with_max_entries(4096, 0);

/// Process names (`comm`, NUL-padded) whose exec makes the process a target.
#[map]
pub static TARGET_COMMS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(64, 0);

/// Document roots, with their trailing `/`, as an LPM trie over path bytes.
#[map]
pub static DOC_ROOTS: LpmTrie<[u8; ROOT_KEY_LEN], u32> = LpmTrie::with_max_entries(64, 1);

/// `(tgid << 32 | fd)` -> `fd_kind::*`. LRU so entries of exited processes age out. A closed
/// fd's entry is kept, marked `fd_kind::UNKNOWN`, and rewritten in place when its number is
/// reused (see [`set_fd_kind`]): a process's entries are about as many as its fds at their peak.
#[map]
pub static FD_KIND: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// Connections (`fd_key`) whose first captured read was the HTTP/2 client preface: their writes
/// are captured up to `MAX_CAPTURE` (in chained records), whatever `RESPONSE_CAPTURE` says,
/// because following HTTP/2 needs every frame header a write holds (nginx fills 16 KiB TLS
/// records with several frames). Set by the read capture itself, so the first response write
/// already sees it; removed at the fd's close. Only a capture bound: userspace decides on its
/// own whether a connection is HTTP/2. LRU: entries of exited processes age out.
#[map]
pub static H2_CONNS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// Syscall number -> `op::*` (userspace fills it from the target architecture's numbers).
#[map]
pub static SYSCALL_OPS: Array<u32> = Array::with_max_entries(MAX_SYSCALL_NR, 0);

/// Arguments stashed at `sys_enter`, consumed at `sys_exit` (key: pid_tgid). A thread's entry
/// stays from its first stash to its exit (`sched_process_exit` removes it) and is rewritten in
/// place: see [`stash_put`].
#[map]
pub static STASH: HashMap<u64, Stash> = HashMap::with_max_entries(16384, 0);

/// TLS library calls in progress (key: pid_tgid), from a uprobe to its uretprobe: the socket
/// a syscall inside the call uses is written into the entry. Like `STASH`, an entry is kept
/// (marked `op::NONE` between calls) and removed when the thread exits.
#[map]
pub static TLS_CALLS: HashMap<u64, TlsCall> = HashMap::with_max_entries(16384, 0);

/// `SSL *` -> the socket its calls were last seen using, for calls that make no syscall (the
/// plaintext was already decrypted in the library's buffer). LRU: freed `SSL` objects age out;
/// a reused address is relearnt at its handshake, which always reads the socket.
#[map]
pub static SSL_FDS: LruHashMap<SslKey, i32> = LruHashMap::with_max_entries(65536, 0);

/// Events lost in the kernel, per reason (`loss::*`), per CPU.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(loss::COUNT, 0);

/// When the kernel last lost an event that leaves a gap in what userspace sees (any CPU; one
/// entry). Every record carries its value as of the moment it went into the ring buffer
/// ([`Header::last_loss_ns`]), so userspace knows where a gap is in the stream and forgets what
/// the lost events could have changed before it handles the records that follow, not at its
/// next periodic check of `LOST` (by then, reads after the gap could have been given to a
/// request whose end was lost). A time rather than a count: the BPF target has no atomic
/// increment, and CPUs losing events together would overwrite each other's counts, possibly
/// back to a value userspace already saw; a time stored late is still a new value.
#[map]
pub static LAST_LOSS: Array<u64> = Array::with_max_entries(1, 0);

/// A [`DataEvent`] with room past its `data` for a whole iovec more: a vectored capture writes
/// each iovec at the bytes captured so far (below `DATA_CAP`) for up to `DATA_CAP` bytes, and the
/// verifier checks that write against the map value's size without knowing that the two add up
/// to at most `DATA_CAP` (it tracks the offset and the length as independent ranges).
#[repr(C)]
pub struct DataScratch {
    pub ev: DataEvent,
    pub spill: [u8; monitor_common::sockets::DATA_CAP],
    /// Non-zero: the record being built continues a long response body, and wakes the reader
    /// when it goes out (set by `sockets::emit_data`, here rather than carried
    /// through the capture loops for 6.1's verifier).
    pub wake: u64,
}

/// Per-CPU scratch for records larger than the 512-byte stack.
#[map]
pub static DATA_SCRATCH: PerCpuArray<DataScratch> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static OPEN_SCRATCH: PerCpuArray<OpenEvent> = PerCpuArray::with_max_entries(1, 0);

/// What a BTF `file_open` program saw of a target thread's open, kept for that thread's `openat`
/// exit (which knows the fd). The record is written in place and sent from the map.
#[repr(C)]
pub struct Opened {
    pub ev: OpenEvent,
    /// The `struct file *` opened: the exit checks that its fd is this file.
    pub file: u64,
    /// `fd_kind::DOCUMENT` (under a root, or undecided) or `fd_kind::OTHER`.
    pub kind: u8,
}

/// Key: pid_tgid. LRU: an open no `openat` exit collects (exec, `open(2)`, io_uring) ages out.
#[map]
pub static OPENED: LruHashMap<u64, Opened> = LruHashMap::with_max_entries(4096, 0);
#[map]
pub static OPENED_SCRATCH: PerCpuArray<Opened> = PerCpuArray::with_max_entries(1, 0);

/// A thread's run of reads of one document fd (values of `READ_AGG`, key: pid_tgid). The
/// thread's `FILE_READ` record of `fd` arms it; the reads of `fd` that follow with no other
/// record of the thread in between (but counted writes, and writes inside a response body that
/// do not complete it: see [`flush_counts_keeping`]) are only counted here, and sent as one
/// `FILE_READ_MORE` before the thread's next record (which disarms it, but for such a write),
/// when another thread closes `fd`, or
/// when the count gets `READ_BATCH_NS` old. A server reading a document in chunks then costs
/// one record, one fingerprint and one size lookup per request rather than per chunk.
#[repr(C)]
pub struct ReadAgg {
    /// The document fd whose reads are counted; -1: none (a read is sent in full).
    pub fd: i32,
    /// Reads counted and not sent yet.
    pub calls: u32,
    pub bytes: u64,
    /// Time of the first and of the last read counted.
    pub first_ns: u64,
    pub last_ns: u64,
    /// `LAST_LOSS` when armed: a loss since ends the run (userspace handles a gap before the
    /// reads that follow it).
    pub loss_ns: u64,
    /// The last counted read's op.
    pub op: u32,
    pub _pad: u32,
    /// The thread's `comm`, for a record sent by another thread (a close).
    pub comm: [u8; COMM_LEN],
}

/// Runs of document reads being counted, by thread. A plain hash map: an entry is written in
/// place once a thread has one, and removed when the thread exits (`sched_process_exit`).
#[map]
pub static READ_AGG: HashMap<u64, ReadAgg> = HashMap::with_max_entries(16384, 0);

/// `(tgid << 32 | fd)` -> the pid_tgid of the thread whose run counts reads of that fd, so that
/// a close by another thread sends that count before its own record. LRU: an entry lost to
/// eviction only delays a count to its thread's next record.
#[map]
pub static READ_AGG_FD: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// A thread's run of writes on one connection (values of `WRITE_AGG`, key: pid_tgid), in the
/// shape of [`ReadAgg`]: the thread's `SOCK_WRITE` record of `fd` arms it; the writes of `fd`
/// that follow inside the body span userspace gave ([`BODY_SPANS`]), with no record of the
/// thread in between but counted document reads, are only counted, and sent as one
/// `SOCK_WRITE_MORE` before the thread's next record, before another thread's record of `fd`,
/// at the write that completes the body, or when the count gets `READ_BATCH_NS` old. A server
/// that reads a document a chunk at a time and writes each chunk as it reads it then costs a
/// read, a count of reads, a few writes and a count of writes per request.
pub type WriteAgg = ReadAgg;

/// Runs of response writes being counted, by thread; an entry is written in place, and removed
/// when the thread exits.
#[map]
pub static WRITE_AGG: HashMap<u64, WriteAgg> = HashMap::with_max_entries(16384, 0);

/// `(tgid << 32 | fd)` -> the pid_tgid of the thread whose run counts writes of that
/// connection, so that another thread's record of it (a request read, a write, the close) sends
/// that count first. LRU: an entry lost to eviction only delays a count.
#[map]
pub static WRITE_AGG_FD: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// What the probes count of a connection's output (values of `CONN_WRITES`).
#[repr(C)]
pub struct ConnWrites {
    /// Where the next write starts: bytes written on `(tgid, fd)` since the entry was made, plus
    /// the entry's base (see `sockets::advance_offset`).
    pub offset: u64,
    /// `offset` when the current connection on this fd began (its accept, or the previous one's
    /// close): a body span below it is a former connection's, given too late, and never used.
    pub floor: u64,
    /// Where the last write of the response being written ended (0: none): a write starting
    /// there continues its body (see `sockets::advance_offset`).
    pub chain_end: u64,
    /// Writes that continued the body since its head: the reader is woken at the
    /// `sockets::WAKE_AFTER_WRITES`th (see `sockets::emit_data`).
    pub chain: u64,
}

/// `(tgid << 32 | fd)` -> the connection's output offsets. Kernel-owned. LRU: entries of
/// exited processes age out, and an entry made again starts at a new base.
#[map]
pub static CONN_WRITES: LruHashMap<u64, ConnWrites> = LruHashMap::with_max_entries(65536, 0);

/// `(tgid << 32 | fd)` -> where the body of the response being written lies in the connection's
/// output ([`BodySpan`]). Written by userspace only (the correlator learns it from a response
/// head with a `Content-Length`), read here. LRU: a connection's span is replaced by its next
/// response's, and stale ones age out.
#[map]
pub static BODY_SPANS: LruHashMap<u64, BodySpan> = LruHashMap::with_max_entries(16384, 0);

pub use monitor_common::Stash;

macro_rules! global {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub static $name: u64 = 0;
    };
}
// Kernel struct offsets, from the running kernel's BTF. They live in .rodata, frozen at load, so
// the verifier sees constants.
global!(OFF_TASK_FILES);
global!(OFF_TASK_TGID);
global!(OFF_TASK_PID);
global!(OFF_FILES_FDT);
global!(OFF_FDT_MAX_FDS);
global!(OFF_FDT_FD);
global!(OFF_FILE_INODE);
global!(OFF_INODE_MODE);
global!(OFF_INODE_SIZE);
global!(OFF_FILE_PATH);
global!(OFF_FILE_FLAGS);
global!(OFF_TASK_FSBASE);
global!(OFF_FILE_PRIVATE);
global!(OFF_SOCKET_SK);
global!(OFF_SOCK_COMMON);
global!(OFF_SKC_FAMILY);
global!(OFF_SKC_DPORT);
global!(OFF_SKC_DADDR);
global!(OFF_SKC_V6_DADDR);
// Where the syscall wrappers' `struct pt_regs` holds the first four arguments (x86-64: di, si,
// dx, r10), from BTF, for the BTF programs on the syscall functions.
global!(OFF_REGS_ARG0);
global!(OFF_REGS_ARG1);
global!(OFF_REGS_ARG2);
global!(OFF_REGS_ARG3);
// Tracepoint record layout, from tracefs `format` files.
global!(TP_SYSCALL_NR);
global!(TP_ENTER_ARGS);
global!(TP_EXIT_RET);
global!(TP_MMAP_LEN);
global!(TP_MMAP_PROT);
global!(TP_MMAP_FD);
// Capture bounds.
global!(REQUEST_CAPTURE);
global!(RESPONSE_CAPTURE);
// Longest a run of counted document reads waits (see `ReadAgg`).
global!(READ_BATCH_NS);
// Batched wake-ups (see `wakeup_flags`).
global!(WAKEUP_BYTES);

/// Reads a load-time global (volatile: the compiler must not fold the placeholder 0).
#[inline(always)]
pub fn global(v: &'static u64) -> u64 {
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn count_loss(reason: u32) {
    if let Some(p) = LOST.get_ptr_mut(reason) {
        unsafe { *p += 1 }
    }
    // TLS plaintext with no socket belongs to no stream Vigie follows: no gap.
    if reason != loss::TLS_NO_FD
        && let Some(p) = LAST_LOSS.get_ptr_mut(0)
    {
        // SAFETY: a map value, valid and 8-byte aligned (an aligned store is not torn).
        unsafe { core::ptr::write_volatile(p, bpf_ktime_get_ns()) }
    }
}

/// Stamps `h` with the time of the last loss, right before its record goes into the ring
/// buffer: a record stamped after a loss comes after it in the ring. A loss on another CPU in
/// the few instructions between this read and the record's reservation is seen at the next
/// record: it cannot be one of this thread's own events (those were counted before this one was
/// made), nor one this event follows from (a request handed to this thread was read, and its
/// loss counted, before the hand-over).
#[inline(always)]
pub fn stamp_losses(h: &mut Header) {
    h.last_loss_ns = match LAST_LOSS.get(0) {
        Some(v) => unsafe { core::ptr::read_volatile(v) },
        None => 0,
    };
}

#[inline(always)]
pub fn is_target(tgid: u32) -> bool {
    TARGETS.get(tgid).is_some_and(|t| *t != 0)
}

/// Marks `tgid` a target (`on`) or not.
#[inline(always)]
pub fn set_target(tgid: u32, on: bool) {
    if let Some(p) = TARGETS.get_ptr_mut(tgid) {
        unsafe { *p = u8::from(on) }
    }
}

/// Stashes a syscall's arguments for its exit. The thread's entry is overwritten in place when it
/// has one: an update of a hash map takes a bucket lock and swaps in a new element, and with the
/// delete at exit that cost ~100 ns per syscall here against a store through a lookup's pointer.
/// Only the thread itself writes its entry (userspace adds one only where none exists), so
/// nothing races the store.
#[inline(always)]
pub fn stash_put(pid_tgid: u64, stash: &Stash) {
    if let Some(slot) = STASH.get_ptr_mut(&pid_tgid) {
        unsafe { *slot = *stash };
    } else if STASH.insert(&pid_tgid, stash, 0).is_err() {
        count_loss(loss::STASH_FULL);
    }
}

/// Takes the arguments stashed by this thread's `sys_enter`, if any: the entry is kept, marked
/// consumed (`op::NONE`), for the next stash.
#[inline(always)]
pub fn stash_take(pid_tgid: u64) -> Option<Stash> {
    let slot = STASH.get_ptr_mut(&pid_tgid)?;
    let stash = unsafe { *slot };
    if stash.op == op::NONE {
        return None;
    }
    unsafe { (*slot).op = op::NONE };
    Some(stash)
}

/// [`stash_take`], only when the stash is `op`'s: another op's is left for its own exit.
#[inline(always)]
pub fn stash_take_if(pid_tgid: u64, op: u32) -> Option<Stash> {
    let slot = STASH.get_ptr_mut(&pid_tgid)?;
    let stash = unsafe { *slot };
    if stash.op != op {
        return None;
    }
    unsafe { (*slot).op = op::NONE };
    Some(stash)
}

#[inline(always)]
pub fn fd_key(tgid: u32, fd: i32) -> u64 {
    ((tgid as u64) << 32) | (fd as u32 as u64)
}

/// Records what `fd` of `tgid` is. An fd number is reused all the time (a server's connections
/// and per-request files get the lowest free one), so its entry usually exists and is rewritten
/// in place: an insert into the LRU map takes its locks and swaps elements, and with the delete
/// at close that was 230–320 ns of every open and close of a target here.
#[inline(always)]
pub fn set_fd_kind(tgid: u32, fd: i32, kind: u8) {
    let key = fd_key(tgid, fd);
    if let Some(slot) = FD_KIND.get_ptr_mut(&key) {
        unsafe { *slot = kind };
    } else if FD_KIND.insert(&key, &kind, 0).is_err() {
        count_loss(loss::FD_MAP_FULL);
    }
}

/// What `fd` of `tgid` was known to be, now that it is closed; its entry is marked unknown for
/// the next file to get that number.
#[inline(always)]
pub fn forget_fd_kind(tgid: u32, fd: i32) -> u8 {
    let Some(slot) = FD_KIND.get_ptr_mut(&fd_key(tgid, fd)) else {
        return fd_kind::UNKNOWN;
    };
    let kind = unsafe { *slot };
    if kind != fd_kind::UNKNOWN {
        unsafe { *slot = fd_kind::UNKNOWN };
    }
    kind
}

#[inline(always)]
pub fn fill_header(h: &mut Header, kind: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    h.kind = kind;
    h.tgid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.ts_ns = unsafe { bpf_ktime_get_ns() };
    current_comm(&mut h.comm);
    match current_goid(h.tgid) {
        Some(goid) => {
            h.flags = header_flags::GOID;
            h.goid = goid;
        }
        None => {
            h.flags = 0;
            h.goid = 0;
        }
    }
}

/// Arms the thread's run of reads (of a document) or writes (of a connection) on `fd` in
/// `runs`, and makes the thread `fd`'s counter in `owners` (see [`READ_AGG`], [`WRITE_AGG`]).
/// A full map only means the calls are sent one by one. Not in a Go target, whose threads take
/// turns running goroutines: two calls of one thread may be two goroutines'.
#[inline(always)]
pub fn arm_run(
    runs: &HashMap<u64, ReadAgg>,
    owners: &LruHashMap<u64, u64>,
    pid_tgid: u64,
    fd: i32,
    loss_ns: u64,
) {
    let tgid = (pid_tgid >> 32) as u32;
    if TARGETS.get(tgid).copied() == Some(GO_TARGET) {
        return;
    }
    if let Some(agg) = runs.get_ptr_mut(&pid_tgid) {
        let agg = unsafe { &mut *agg };
        agg.fd = fd;
        agg.calls = 0;
        agg.bytes = 0;
        agg.loss_ns = loss_ns;
        current_comm(&mut agg.comm);
    } else {
        let mut comm = [0; COMM_LEN];
        current_comm(&mut comm);
        let agg = ReadAgg {
            fd,
            calls: 0,
            bytes: 0,
            first_ns: 0,
            last_ns: 0,
            loss_ns,
            op: 0,
            _pad: 0,
            comm,
        };
        if runs.insert(&pid_tgid, &agg, 0).is_err() {
            return;
        }
    }
    let key = fd_key(tgid, fd);
    if let Some(slot) = owners.get_ptr_mut(&key) {
        unsafe { *slot = pid_tgid };
    } else {
        let _ = owners.insert(&key, &pid_tgid, 0);
    }
}

/// Writes the current thread's name into `comm`, NUL-padded. The helper writes the buffer in
/// place and pads it itself (zeroes on failure): `bpf_get_current_comm().unwrap_or([0; 16])`
/// made LLVM zero a stack copy and move it with three calls to a byte-loop `memset` (about 250
/// instructions per record).
#[inline(always)]
pub fn current_comm(comm: &mut [u8; COMM_LEN]) {
    unsafe {
        aya_ebpf::helpers::generated::bpf_get_current_comm(
            comm.as_mut_ptr().cast(),
            COMM_LEN as u32,
        )
    };
}

/// The id of the goroutine the current thread runs, for a Go target with a known layout:
/// `*(fsbase + g_tls)` is the current `g`, `g + goid` its id. Go switches `g` in that slot at
/// every goroutine switch, so during a syscall it names the goroutine that made it (0: the
/// runtime's own stack, `g0`). Any other process costs one array lookup.
#[inline(always)]
fn current_goid(tgid: u32) -> Option<u64> {
    if TARGETS.get(tgid).copied() != Some(GO_TARGET) {
        return None;
    }
    let off_fsbase = global(&OFF_TASK_FSBASE);
    if off_fsbase == 0 {
        return None;
    }
    let layout = unsafe { GO_PROCS.get(&tgid) }?;
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let fsbase: u64 = crate::task::read(task, off_fsbase)?;
        if fsbase == 0 {
            return None;
        }
        let slot = fsbase.wrapping_add(layout.g_tls as u64);
        let g: u64 = bpf_probe_read_user(slot as *const u64).ok()?;
        if g == 0 {
            return None;
        }
        bpf_probe_read_user(g.wrapping_add(layout.goid) as *const u64).ok()
    }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Waking the reader for every record costs more than the record itself (measured: a traced
/// `pread` 4.8 us with per-record wake-ups, 2.1 us without). So records go in silently until
/// `WAKEUP_BYTES` are pending; the reader also drains on a short timer, which bounds the delay.
#[inline(always)]
fn wakeup_flags() -> u64 {
    let threshold = global(&WAKEUP_BYTES);
    if threshold == 0 {
        return 0;
    }
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Writes a fixed-size record; a full ring buffer is counted, never silent. The thread's
/// counted document reads and response writes go first (see [`ReadAgg`], [`WriteAgg`]).
#[inline(always)]
pub fn submit<T: 'static>(fill: impl FnOnce(&mut T)) {
    submit_keeping(false, false, fill);
}

/// [`submit`], with the thread's runs kept as [`flush_counts_keeping`] says.
#[inline(always)]
pub fn submit_keeping<T: 'static>(keep_reads: bool, keep_writes: bool, fill: impl FnOnce(&mut T)) {
    flush_counts_keeping(bpf_get_current_pid_tgid(), keep_reads, keep_writes);
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            fill(unsafe { &mut *entry.as_mut_ptr() });
            // Every record starts with its `Header` (#[repr(C)], first field).
            stamp_losses(unsafe { &mut *entry.as_mut_ptr().cast::<Header>() });
            entry.submit(wakeup_flags());
        }
        None => count_loss(loss::RINGBUF_FULL),
    }
}

/// Sends the reads and then the writes `pid_tgid` counted, if any, and ends both runs: the
/// thread's next record follows them. Reads first: a counted write completes a body only with
/// a flush of its own (see `sockets`), so every counted read before a flush came before the
/// writes that matter to the order. Called before every record but through [`output_bytes`],
/// whose callers call it once per syscall (a loop of chunks would repeat it for the verifier to
/// walk).
#[inline(always)]
pub fn flush_counts(pid_tgid: u64) {
    flush_counts_keeping(pid_tgid, false, false);
}

/// [`flush_counts`], the counts sent all the same, but a run kept going where the record that
/// follows cannot change where its next calls go: a document read keeps the run of response
/// writes (`keep_writes`), a write inside a response body that does not complete it keeps the
/// run of document reads (`keep_reads`). So a server that reads a chunk and writes it, again
/// and again, has both runs going at once.
#[inline(always)]
pub fn flush_counts_keeping(pid_tgid: u64, keep_reads: bool, keep_writes: bool) {
    if let Some(agg) = READ_AGG.get_ptr_mut(&pid_tgid) {
        let agg = unsafe { &mut *agg };
        if agg.fd >= 0 {
            send_reads(pid_tgid, agg);
            if !keep_reads {
                agg.fd = -1;
            }
        }
    }
    if let Some(agg) = WRITE_AGG.get_ptr_mut(&pid_tgid) {
        let agg = unsafe { &mut *agg };
        if agg.fd >= 0 {
            send_writes(pid_tgid, agg);
            if !keep_writes {
                agg.fd = -1;
            }
        }
    }
}

/// The time of the last lost event (0: none), as every record is stamped with it.
#[inline(always)]
pub fn last_loss() -> u64 {
    match LAST_LOSS.get(0) {
        Some(v) => unsafe { core::ptr::read_volatile(v) },
        None => 0,
    }
}

/// Counts a call of `stash.fd` (a read of a document, or a write of a connection) in the
/// thread's run in `runs`, when it continues one: the run is armed for that fd and no event was
/// lost since. A count `READ_BATCH_NS` old is sent first (as a `more` record), so that a long
/// run stays visible to the idle horizon.
#[inline(always)]
pub fn count_call(
    runs: &HashMap<u64, ReadAgg>,
    more: u32,
    pid_tgid: u64,
    stash: &Stash,
    ret: i64,
) -> bool {
    let Some(agg) = runs.get_ptr_mut(&pid_tgid) else {
        return false;
    };
    let agg = unsafe { &mut *agg };
    // A process found to be a Go target since the run started counts no more.
    if agg.fd != stash.fd
        || agg.loss_ns != last_loss()
        || TARGETS.get((pid_tgid >> 32) as u32).copied() == Some(GO_TARGET)
    {
        return false;
    }
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if agg.calls != 0 && now.wrapping_sub(agg.first_ns) > global(&READ_BATCH_NS) {
        send_count(pid_tgid, agg, more);
    }
    if agg.calls == 0 {
        agg.first_ns = now;
    }
    agg.calls += 1;
    agg.bytes = agg.bytes.wrapping_add(ret as u64);
    agg.last_ns = now;
    agg.op = stash.op;
    true
}

/// Sends `agg`'s count as a `FILE_READ_MORE` of thread `pid_tgid` (stamped with the last read's
/// time), and zeroes it; the run goes on.
#[inline(always)]
pub fn send_reads(pid_tgid: u64, agg: &mut ReadAgg) {
    send_count(pid_tgid, agg, kind::FILE_READ_MORE);
}

/// Sends `agg`'s count as a `SOCK_WRITE_MORE` (see [`send_reads`]).
#[inline(always)]
pub fn send_writes(pid_tgid: u64, agg: &mut WriteAgg) {
    send_count(pid_tgid, agg, kind::SOCK_WRITE_MORE);
}

#[inline(always)]
fn send_count(pid_tgid: u64, agg: &mut ReadAgg, record: u32) {
    if agg.calls == 0 {
        return;
    }
    match EVENTS.reserve::<FdEvent>(0) {
        Some(mut entry) => {
            let ev = unsafe { &mut *entry.as_mut_ptr() };
            ev.header.kind = record;
            ev.header.tgid = (pid_tgid >> 32) as u32;
            ev.header.tid = pid_tgid as u32;
            // Go targets never count (a thread's calls may be different goroutines').
            ev.header.flags = 0;
            ev.header.goid = 0;
            ev.header.ts_ns = agg.last_ns;
            ev.header.comm = agg.comm;
            ev.fd = agg.fd;
            ev.fd2 = -1;
            ev.ret = agg.bytes as i64;
            ev.op = agg.op;
            ev.size = agg.calls;
            ev.fp = 0;
            stamp_losses(&mut ev.header);
            entry.submit(wakeup_flags());
        }
        None => count_loss(loss::RINGBUF_FULL),
    }
    agg.calls = 0;
    agg.bytes = 0;
}

/// Copies the first `len` bytes of a scratch record to the ring buffer (callers send the
/// thread's counts first: [`flush_counts`]).
#[inline(always)]
pub fn output_bytes(bytes: &[u8]) {
    if EVENTS.output(bytes, wakeup_flags()).is_err() {
        count_loss(loss::RINGBUF_FULL);
    }
}

/// [`output_bytes`], waking the reader at once: a body written in several writes, whose span
/// userspace should give back while the rest is still being written (see [`BODY_SPANS`]).
#[inline(always)]
pub fn output_bytes_waking(bytes: &[u8]) {
    let flags = if global(&WAKEUP_BYTES) == 0 {
        0
    } else {
        BPF_RB_FORCE_WAKEUP
    };
    if EVENTS.output(bytes, flags).is_err() {
        count_loss(loss::RINGBUF_FULL);
    }
}
