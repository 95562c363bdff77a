//! Document files: opens under the document roots, reads of those fds, `sendfile`, closes.
use crate::Header;

/// Bytes of the path captured at open. A path of exactly this length was truncated: userspace then
/// resolves it from `/proc/<pid>/fd/<fd>`.
pub const PATH_CAP: usize = 256;

/// `kind::FILE_OPEN`: a successful `openat`/`openat2` of a path under a document root, or of a path
/// the probe cannot rule out (relative, or containing `..`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpenEvent {
    pub header: Header,
    /// The fd returned.
    pub fd: i32,
    /// The `dirfd` argument (`AT_FDCWD` is -100).
    pub dirfd: i32,
    /// `open(2)` flags (low 32 bits).
    pub flags: u32,
    /// Bytes of `path` before the NUL; `PATH_CAP` means truncated.
    pub path_len: u32,
    pub path: [u8; PATH_CAP],
}
const _: () = assert!(core::mem::size_of::<OpenEvent>() == 40 + 16 + PATH_CAP);

/// Small fd-level records:
/// - `kind::FILE_READ`: `fd` read `ret` bytes (op: read, pread64, readv, preadv), whose first
///   bytes hash to `fp` (see [`fingerprint`]; 0 when there is none);
/// - `kind::FILE_SENDFILE`: `sendfile(out = fd, in = fd2)` moved `ret` bytes;
/// - `kind::FILE_MAP`: `fd` was mapped readable, `ret` bytes long (op: mmap);
/// - `kind::FILE_CLOSE` / `kind::SOCK_CLOSE`: `fd` closed;
/// - `kind::SOCK_ACCEPT`: `fd` is a new connection.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FdEvent {
    pub header: Header,
    pub fd: i32,
    pub fd2: i32,
    pub ret: i64,
    /// One of [`crate::op`].
    pub op: u32,
    pub _pad: u32,
    /// `kind::FILE_READ` only: [`fingerprint`] of the bytes read (first iovec), else 0.
    pub fp: u64,
}
const _: () = assert!(core::mem::size_of::<FdEvent>() == 40 + 32);

/// Bytes a content fingerprint covers: the first bytes of a document read, matched against the
/// first bytes of a response body (DESIGN.md §4, attribution by content).
pub const FP_BYTES: usize = 64;
/// Fewer bytes than this make no fingerprint: too little to tell documents apart.
pub const FP_MIN: usize = 16;

/// FNV-1a (64 bit) of the first `len` bytes of `buf` (at most [`FP_BYTES`]), mixed with that
/// length, so that a document shorter than [`FP_BYTES`] only matches a body of the same
/// length. 0 means "no fingerprint" (fewer than [`FP_MIN`] bytes); a real hash of 0 becomes 1.
///
/// Computed in the kernel on document reads (the bytes never leave it) and in userspace on
/// response bodies. Not a cryptographic hash: it only has to tell apart documents served at the
/// same time; what it reveals of 64 bytes of a document is no more than its file name does.
#[inline(always)]
pub fn fingerprint(buf: &[u8; FP_BYTES], len: usize) -> u64 {
    if len < FP_MIN {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < FP_BYTES && i < len {
        h ^= buf[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    let n = if len > FP_BYTES { FP_BYTES } else { len };
    h ^= n as u64;
    h = h.wrapping_mul(0x0000_0100_0000_01b3);
    if h == 0 { 1 } else { h }
}
