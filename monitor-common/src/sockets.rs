//! Socket traffic: bounded captures of what a target reads from and writes to its sockets.
use crate::Header;

/// Capacity of [`DataEvent::data`]. The captured length per event is further bounded by the
/// `REQUEST_CAPTURE`/`RESPONSE_CAPTURE` globals.
pub const DATA_CAP: usize = 4096;

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
    pub _pad: u32,
    pub data: [u8; DATA_CAP],
}

/// Bytes before [`DataEvent::data`].
pub const DATA_HEADER_LEN: usize = core::mem::offset_of!(DataEvent, data);
const _: () = assert!(DATA_HEADER_LEN == 48 + 24);
