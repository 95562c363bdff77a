//! Go targets: where the probes find the goroutine a thread is running. Go multiplexes
//! goroutines over OS threads, so a thread id says nothing about which request a syscall
//! serves; the goroutine does (net/http serves each connection on one goroutine).
//!
//! A Go thread keeps its current `g` (the goroutine's runtime struct) in thread-local storage, at
//! a fixed offset from the thread pointer (the FS base on x86_64), and `g.goid` is the
//! goroutine's id. Both offsets depend on the binary (its Go version, how it was linked):
//! userspace reads them from the binary's own tables (ELF TLS segment and symbols, DWARF) and
//! gives them per process in the `GO_PROCS` map.

/// Where the current goroutine's id is, for one Go process (values of the `GO_PROCS` map, keyed
/// by tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoLayout {
    /// Offset from the thread's FS base of the slot holding the current `*g` (-8 for Go's own
    /// TLS on linux/amd64).
    pub g_tls: i64,
    /// Offset of `goid` in `runtime.g`.
    pub goid: u64,
}
const _: () = assert!(core::mem::size_of::<GoLayout>() == 16);

/// Value of the `TARGETS` array for a Go target with a layout in `GO_PROCS` (1: any other
/// target): lets the probes skip the layout lookup for every other process.
pub const GO_TARGET: u8 = 2;
