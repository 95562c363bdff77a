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
/// - `kind::FILE_READ`: `fd` read `ret` bytes (op: read, pread64, readv, preadv);
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
}
const _: () = assert!(core::mem::size_of::<FdEvent>() == 40 + 24);
