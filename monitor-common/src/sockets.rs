//! Socket traffic: bounded captures of what a target reads from and writes to its sockets.
use crate::Header;

/// Capacity of [`DataEvent::data`]. The captured length per event is further bounded by the
/// `REQUEST_CAPTURE`/`RESPONSE_CAPTURE` globals.
pub const DATA_CAP: usize = 4096;

/// Most records one transfer's capture is cut into: a read larger than [`DATA_CAP`] (a request
/// head a server reads 8 or 16 KiB at a time) is captured in consecutive records of one
/// thread, each naming its offset in [`DataEvent::chunk`].
pub const MAX_CHUNKS: usize = 16;

/// Most bytes captured of one transfer.
pub const MAX_CAPTURE: usize = DATA_CAP * MAX_CHUNKS;

/// Set in [`DataEvent::chunk`] when another record of the same transfer follows.
pub const CHUNK_MORE: u32 = 1 << 31;

/// `kind::SOCK_READ` / `kind::SOCK_WRITE`: `ret` bytes moved on socket `fd`; the first `captured`
/// of them follow. The record is variable-length on the ring buffer: only
/// `DATA_HEADER_LEN + captured` bytes are written.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataEvent {
    pub header: Header,
    pub fd: i32,
    /// One of [`crate::op`].
    pub op: u32,
    pub ret: i64,
    pub captured: u32,
    /// Offset of `data` in the transfer's capture, with [`CHUNK_MORE`] when another record of
    /// this transfer follows (from the same thread, next).
    pub chunk: u32,
    /// `kind::SOCK_WRITE` of a plain socket (not TLS plaintext): where the write's first byte
    /// is in the connection's output, as the probes count it (cumulative bytes written on
    /// `(tgid, fd)`, from a base of their own). 0: not known.
    pub offset: u64,
    pub data: [u8; DATA_CAP],
}

/// Bytes before [`DataEvent::data`].
pub const DATA_HEADER_LEN: usize = core::mem::offset_of!(DataEvent, data);
const _: () = assert!(DATA_HEADER_LEN == 56 + 32);

/// `kind::SOCK_ACCEPT`: `fd` is a new connection, whose peer the probe read from the kernel's
/// socket (`file->private_data->sk->__sk_common`) at the syscall's exit. Read from the socket, not
/// from the `accept` address argument: servers may pass NULL there, and the user buffer is the
/// process's to rewrite.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AcceptEvent {
    pub header: Header,
    pub fd: i32,
    /// `skc_family`: one of [`family`] (0 when the socket could not be read).
    pub family: u16,
    /// The peer's port, host byte order (0 for unix sockets).
    pub port: u16,
    /// The peer's address: IPv4 in the first 4 bytes (network order), IPv6 all 16.
    pub addr: [u8; 16],
    /// One of [`crate::op`].
    pub op: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<AcceptEvent>() == 56 + 32);

/// Address families of [`AcceptEvent::family`] (`AF_*` in the kernel's `socket.h`).
pub mod family {
    pub const UNKNOWN: u16 = 0;
    pub const UNIX: u16 = 1;
    pub const INET: u16 = 2;
    pub const INET6: u16 = 10;
}

/// Where the body of the response being written on a connection lies in its output, in the
/// offsets of [`DataEvent::offset`]: `start` is its first byte, `end` one past its last.
/// Userspace writes it (the `BODY_SPANS` map, key `tgid << 32 | fd`) once a response head gave
/// the body's length; the probes then only count the connection's writes that lie after the
/// write holding the body's first bytes and within `end` (`kind::SOCK_WRITE_MORE`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodySpan {
    pub start: u64,
    pub end: u64,
}
const _: () = assert!(core::mem::size_of::<BodySpan>() == 16);
