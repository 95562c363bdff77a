//! Vigie's probes: syscall tracepoints on target processes, filtered in the kernel, written to one
//! ring buffer. Filtering order, cheapest first (DESIGN.md §3): target tgid (one hash lookup, every
//! other process leaves here), then the per-(tgid, fd) kind, then the document-root prefix at open.
#![no_std]
#![no_main]

mod maps;
mod probes;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
