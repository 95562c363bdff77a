//! TLS plaintext: what the uprobes on a target's TLS library (OpenSSL 3's `libssl.so.3`) keep
//! between a call's entry and its return. The plaintext itself travels as an ordinary
//! [`crate::sockets::DataEvent`] (op `SSL_READ`/`SSL_WRITE`) on the socket the call used, so
//! everything after the ring buffer treats it like a cleartext socket capture.

/// A TLS library call in progress on a thread (values of the `TLS_CALLS` map, keyed by
/// pid_tgid), from its uprobe to its uretprobe.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsCall {
    /// `op::SSL_READ`, `op::SSL_WRITE` or `op::SSL_HANDSHAKE`; `op::NONE` when no call is in
    /// progress (the entry is kept and rewritten in place, like the syscall stash).
    pub op: u32,
    /// The socket a syscall made inside this call used; -1 until one is seen.
    pub fd: i32,
    /// The `SSL *` argument: the key of the connection's socket once learnt.
    pub ssl: u64,
    /// The plaintext buffer.
    pub buf: u64,
    /// `num` (the buffer's size for a read, the bytes to write for a write).
    pub len: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the library stores the byte count (its return value
    /// is then 1 for success); 0 for `SSL_read`/`SSL_write`, which return the count.
    pub count_ptr: u64,
}
const _: () = assert!(core::mem::size_of::<TlsCall>() == 40);

/// Key of the `SSL_FDS` map: an `SSL *` in process `tgid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SslKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}
const _: () = assert!(core::mem::size_of::<SslKey>() == 16);
