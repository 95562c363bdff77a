//! Raw records that Vigie's eBPF probes write to the ring buffer, and the constants both sides
//! agree on. Every record is `#[repr(C)]` with explicit padding (no `bool`, no implicit holes) and
//! starts with a [`Header`]; sizes are checked at compile time.
//!
//! Userspace decodes these into owned serde events (`vigie::events`) right after the ring buffer:
//! nothing past the decoder sees these types.
#![no_std]

pub mod files;
pub mod go;
pub mod process;
pub mod sockets;
pub mod tls;

/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;

/// First bytes of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// One of [`kind`].
    pub kind: u32,
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// [`header_flags`] bits.
    pub flags: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, nanoseconds.
    pub ts_ns: u64,
    /// The id of the goroutine the thread was running (`runtime.g.goid`; 0 on the Go runtime's
    /// own stacks), when [`header_flags::GOID`] is set: the thread belongs to a Go target whose
    /// layout userspace found ([`go::GoLayout`]).
    pub goid: u64,
    /// `comm` of the thread, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// When the kernel last lost an event (`bpf_ktime_get_ns()`, any CPU, every reason that
    /// leaves a gap in what userspace sees; 0: none yet), read as the record went into the ring
    /// buffer: a record carrying a new value comes after a gap, which userspace handles before
    /// it (see the probes' `LAST_LOSS`).
    pub last_loss_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Header>() == 56);

/// Bits of [`Header::flags`].
pub mod header_flags {
    /// [`super::Header::goid`] was read from the thread's Go runtime.
    pub const GOID: u32 = 1;
}

/// Record kinds, numbered by domain (`process` 1.., `files` 100.., `sockets` 200..).
pub mod kind {
    pub const PROCESS_EXEC: u32 = 1;
    pub const PROCESS_FORK: u32 = 2;
    pub const PROCESS_EXIT: u32 = 3;
    pub const THREAD_EXIT: u32 = 4;
    /// A target mapped a file executable (`mmap` with `PROT_EXEC`): the dynamic loader or
    /// `dlopen` brought in code, perhaps a TLS library to hook. Not an event of the correlator.
    pub const CODE_MAP: u32 = 5;

    pub const FILE_OPEN: u32 = 100;
    pub const FILE_READ: u32 = 101;
    pub const FILE_CLOSE: u32 = 102;
    pub const FILE_SENDFILE: u32 = 103;
    /// A document mapped into memory (`mmap` with `PROT_READ`): a read without `read(2)`.
    pub const FILE_MAP: u32 = 104;
    /// More reads of a document fd by one thread, counted in the kernel after the thread's
    /// `FILE_READ` of that fd rather than sent one by one (see [`crate::files::FdEvent`]).
    pub const FILE_READ_MORE: u32 = 105;

    pub const SOCK_ACCEPT: u32 = 200;
    pub const SOCK_READ: u32 = 201;
    pub const SOCK_WRITE: u32 = 202;
    pub const SOCK_CLOSE: u32 = 203;
    /// More writes of a connection by one thread, inside a response body whose span userspace
    /// gave ([`crate::sockets::BodySpan`]), counted in the kernel rather than sent one by one
    /// (see [`crate::files::FdEvent`]).
    pub const SOCK_WRITE_MORE: u32 = 204;
}

/// The syscalls the probes decode, as stored in [`files::FdEvent::op`] and
/// [`sockets::DataEvent::op`]. Userspace fills the `SYSCALL_OPS` map (syscall number -> op) so the
/// probes stay free of architecture-specific syscall numbers.
pub mod op {
    pub const NONE: u32 = 0;
    pub const READ: u32 = 1;
    pub const PREAD64: u32 = 2;
    pub const READV: u32 = 3;
    pub const RECVFROM: u32 = 4;
    pub const RECVMSG: u32 = 5;
    pub const WRITE: u32 = 6;
    pub const WRITEV: u32 = 7;
    pub const SENDTO: u32 = 8;
    pub const SENDMSG: u32 = 9;
    pub const SENDFILE64: u32 = 10;
    pub const OPENAT: u32 = 11;
    pub const OPENAT2: u32 = 12;
    pub const ACCEPT: u32 = 13;
    pub const ACCEPT4: u32 = 14;
    pub const CLOSE: u32 = 15;
    pub const PREADV: u32 = 16;
    pub const MMAP: u32 = 17;
    /// Plaintext a TLS library handed to the process (`SSL_read`, `SSL_read_ex`): not a syscall.
    pub const SSL_READ: u32 = 18;
    /// Plaintext the process gave its TLS library (`SSL_write`, `SSL_write_ex`).
    pub const SSL_WRITE: u32 = 19;
    /// `SSL_do_handshake`: no plaintext, but the socket it reads and writes is learnt.
    pub const SSL_HANDSHAKE: u32 = 20;
    /// One past the highest op.
    pub const COUNT: u32 = 21;

    /// Ops whose buffer argument is an `iovec` array.
    pub const fn is_vectored(op: u32) -> bool {
        matches!(op, READV | WRITEV | PREADV)
    }
    /// Ops whose buffer argument is a `struct user_msghdr`.
    pub const fn is_msg(op: u32) -> bool {
        matches!(op, RECVMSG | SENDMSG)
    }
    /// Ops that move data out of the process (towards a socket).
    pub const fn is_output(op: u32) -> bool {
        matches!(op, WRITE | WRITEV | SENDTO | SENDMSG | SSL_WRITE)
    }
    /// Ops of a TLS library call (uprobes), not of a syscall.
    pub const fn is_tls(op: u32) -> bool {
        matches!(op, SSL_READ | SSL_WRITE | SSL_HANDSHAKE)
    }
}

/// Largest syscall number the `SYSCALL_OPS` map covers.
pub const MAX_SYSCALL_NR: u32 = 512;

/// What the probes know about a `(tgid, fd)` pair (values of the `FD_KIND` map).
pub mod fd_kind {
    /// Not known (the map's entry for a closed fd, whose number the next open or socket reuses):
    /// classified again at its next use, like an fd without an entry.
    pub const UNKNOWN: u8 = 0;
    /// Opened under a document root, or a relative/`..` path that userspace must resolve.
    pub const DOCUMENT: u8 = 1;
    pub const SOCKET: u8 = 2;
    /// Anything else: checked once, then ignored at the cost of one lookup.
    pub const OTHER: u8 = 3;
    /// A socket the process's TLS library reads and writes: its syscalls carry ciphertext and
    /// are never captured; its plaintext comes from the library's uprobes instead.
    pub const TLS: u8 = 4;
}

/// Why an event was lost in the kernel (index into the per-CPU `LOST` array).
pub mod loss {
    /// The ring buffer was full: the reader is behind.
    pub const RINGBUF_FULL: u32 = 0;
    /// The per-thread syscall-argument stash was full: an exit could not be matched to its entry.
    pub const STASH_FULL: u32 = 1;
    /// The fd classification map refused an insert.
    pub const FD_MAP_FULL: u32 = 2;
    /// TLS plaintext whose socket was never seen (no syscall inside any call of that `SSL`
    /// object yet): dropped, since it cannot be tied to a connection.
    pub const TLS_NO_FD: u32 = 3;
    pub const COUNT: u32 = 4;

    pub const fn name(reason: u32) -> &'static str {
        match reason {
            RINGBUF_FULL => "ringbuf_full",
            STASH_FULL => "stash_full",
            FD_MAP_FULL => "fd_map_full",
            TLS_NO_FD => "tls_no_fd",
            _ => "unknown",
        }
    }
}

/// Syscall arguments stashed at `sys_enter` and consumed at `sys_exit` (values of the `STASH`
/// map, keyed by pid_tgid). Userspace writes one too, for a thread it finds blocked in a socket
/// read when it adopts a running process: that read's `sys_enter` came before the probes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stash {
    /// One of [`op`].
    pub op: u32,
    /// `fd_kind::*` of `fd` at entry.
    pub kind: u32,
    pub fd: i32,
    /// The second fd (`sendfile`'s in_fd, `openat`'s dirfd); -1 when unused, or
    /// [`Stash::ADOPTED`] in a stash userspace wrote.
    pub fd2: i32,
    /// User pointer: buffer, iovec array, msghdr or path.
    pub ptr: u64,
    /// Third argument: count, iovcnt or flags.
    pub arg: u64,
}
const _: () = assert!(core::mem::size_of::<Stash>() == 32);

impl Stash {
    /// `fd2` of a stash written by userspace for a socket read (where `fd2` is otherwise -1),
    /// so that userspace can tell it from the probe's own when it takes a stale one back.
    pub const ADOPTED: i32 = -2;
}

/// Names of the read-only globals userspace sets at load time (`EbpfLoader::override_global`).
/// Kernel struct offsets come from the running kernel's BTF, tracepoint field offsets from its
/// tracefs `format` files: never from constants.
pub mod globals {
    pub const OFF_TASK_FILES: &str = "OFF_TASK_FILES";
    pub const OFF_TASK_TGID: &str = "OFF_TASK_TGID";
    pub const OFF_TASK_PID: &str = "OFF_TASK_PID";
    pub const OFF_FILES_FDT: &str = "OFF_FILES_FDT";
    pub const OFF_FDT_MAX_FDS: &str = "OFF_FDT_MAX_FDS";
    pub const OFF_FDT_FD: &str = "OFF_FDT_FD";
    pub const OFF_FILE_INODE: &str = "OFF_FILE_INODE";
    pub const OFF_INODE_MODE: &str = "OFF_INODE_MODE";
    pub const OFF_INODE_SIZE: &str = "OFF_INODE_SIZE";
    pub const OFF_FILE_PATH: &str = "OFF_FILE_PATH";
    pub const OFF_FILE_FLAGS: &str = "OFF_FILE_FLAGS";
    /// Offset of the saved user FS base in `task_struct` (`thread.fsbase`, x86_64): where a Go
    /// thread's TLS, and so its current goroutine, is found. 0: not known on this kernel.
    pub const OFF_TASK_FSBASE: &str = "OFF_TASK_FSBASE";
    /// `file.private_data` (a socket file's `struct socket *`), `socket.sk`, `sock.__sk_common`
    /// and the peer fields of `sock_common`: the client endpoint of an accepted connection.
    pub const OFF_FILE_PRIVATE: &str = "OFF_FILE_PRIVATE";
    pub const OFF_SOCKET_SK: &str = "OFF_SOCKET_SK";
    pub const OFF_SOCK_COMMON: &str = "OFF_SOCK_COMMON";
    pub const OFF_SKC_FAMILY: &str = "OFF_SKC_FAMILY";
    pub const OFF_SKC_DPORT: &str = "OFF_SKC_DPORT";
    pub const OFF_SKC_DADDR: &str = "OFF_SKC_DADDR";
    pub const OFF_SKC_V6_DADDR: &str = "OFF_SKC_V6_DADDR";
    /// Offsets of the registers that hold a syscall's first four arguments in the `struct
    /// pt_regs` the syscall functions get (`__x64_sys_read(const struct pt_regs *regs)`; x86-64:
    /// `di`, `si`, `dx`, `r10`), for the BTF programs on those functions.
    pub const OFF_REGS_ARG0: &str = "OFF_REGS_ARG0";
    pub const OFF_REGS_ARG1: &str = "OFF_REGS_ARG1";
    pub const OFF_REGS_ARG2: &str = "OFF_REGS_ARG2";
    pub const OFF_REGS_ARG3: &str = "OFF_REGS_ARG3";
    /// Offset of `__syscall_nr` in `sys_enter_*`/`sys_exit_*` records.
    pub const TP_SYSCALL_NR: &str = "TP_SYSCALL_NR";
    /// Offset of the first argument slot in `sys_enter_*` records (slots are 8 bytes).
    pub const TP_ENTER_ARGS: &str = "TP_ENTER_ARGS";
    /// Offset of `ret` in `sys_exit_*` records.
    pub const TP_EXIT_RET: &str = "TP_EXIT_RET";
    /// Offsets of the `len`, `prot` and `fd` fields of `sys_enter_mmap` records.
    pub const TP_MMAP_LEN: &str = "TP_MMAP_LEN";
    pub const TP_MMAP_PROT: &str = "TP_MMAP_PROT";
    pub const TP_MMAP_FD: &str = "TP_MMAP_FD";
    /// Bytes of each socket read captured (at most [`crate::sockets::MAX_CAPTURE`], in records
    /// of [`crate::sockets::DATA_CAP`]).
    pub const REQUEST_CAPTURE: &str = "REQUEST_CAPTURE";
    /// Bytes of each socket write captured (at most [`crate::sockets::DATA_CAP`]).
    pub const RESPONSE_CAPTURE: &str = "RESPONSE_CAPTURE";
    /// Longest a thread's counted document reads wait in the kernel while the thread keeps
    /// reading (`kind::FILE_READ_MORE`): past it, the count so far is sent and a new one starts.
    pub const READ_BATCH_NS: &str = "READ_BATCH_NS";
    /// Pending ring-buffer bytes past which a record wakes the reader; below it records are
    /// submitted without a wake-up and the reader drains on a short timer (0: wake every time).
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
}

#[cfg(feature = "user")]
mod pod {
    use super::{Header, Stash, files, go, process, sockets, tls};
    // SAFETY: plain #[repr(C)] integers and byte arrays, no padding holes, no pointers.
    unsafe impl aya::Pod for Header {}
    unsafe impl aya::Pod for files::OpenEvent {}
    unsafe impl aya::Pod for files::FdEvent {}
    unsafe impl aya::Pod for process::ProcEvent {}
    unsafe impl aya::Pod for sockets::DataEvent {}
    unsafe impl aya::Pod for sockets::BodySpan {}
    unsafe impl aya::Pod for Stash {}
    unsafe impl aya::Pod for tls::TlsCall {}
    unsafe impl aya::Pod for go::GoLayout {}
}
