//! Builds the eBPF probes (monitor-ebpf) with the pinned nightly and bpf-linker, and puts the
//! object in OUT_DIR/monitor for `include_bytes_aligned!`.
//!
//! `VIGIE_SKIP_EBPF_BUILD=1` writes an empty object instead, so that `cargo check`, clippy and the
//! unprivileged unit tests work on a machine without bpf-linker; such a binary refuses `vigie run`.
use aya_build::{Package, Toolchain};

/// The eBPF toolchain: its LLVM must not be newer than the one bpf-linker links against (LLVM 22,
/// see `cargo xtask setup`).
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-01";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=VIGIE_SKIP_EBPF_BUILD");
    if std::env::var_os("VIGIE_SKIP_EBPF_BUILD").is_some_and(|v| v == "1") {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("monitor");
        std::fs::write(out, [])?;
        return Ok(());
    }
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../monitor-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "monitor-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
