//! The whole test suite: unit tests (no root), then the end-to-end tests, which start real
//! portals and a real `vigie` with its probes. Without root those report themselves SKIPPED;
//! with `VIGIE_REQUIRE_PRIVILEGED=1` (set by .ci/run) a skip is a failure. Then the same
//! end-to-end tests on other kernels (`cargo xtask vm-test`) and the fuzz targets (`cargo xtask
//! fuzz`), and the book (`cargo xtask docs --book`), unless arguments select particular tests.
//! The generated reference pages of the book are checked against the code every time.
use crate::{Binaries, cargo, is_root, step};

pub fn run(bins: &Binaries, args: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        step(
            "test",
            "NOT ROOT: the end-to-end tests with real probes will be SKIPPED",
        );
    }
    // SAFETY (edition 2024 set_var): single-threaded at this point.
    unsafe {
        std::env::set_var("VIGIE_BIN", &bins.vigie);
        std::env::set_var("VIGIE_GO_PORTAL", &bins.go_portal);
    }
    // The Debian package, for `tests/tests/vigie/package.rs` (a release build: only for the whole
    // suite, or when the filter names the package test).
    if args.is_empty() || args.iter().any(|a| a.contains("package")) {
        let deb = crate::package::run()?;
        // SAFETY: as above.
        unsafe { std::env::set_var("VIGIE_DEB", &deb) };
    }
    // Default members: everything but the eBPF crate, which only builds for the BPF target
    // (build.rs builds it).
    step(
        "test",
        "cargo fmt --check, cargo clippy -D warnings (userspace, then the probes)",
    );
    cargo(&["fmt", "--all", "--check"])?;
    crate::docs::check(&bins.vigie)?;
    cargo(&["clippy", "--all-targets", "--quiet", "--", "-D", "warnings"])?;
    crate::clippy_ebpf()?;
    step("test", "cargo test");
    let mut cmd = vec!["test", "--"];
    cmd.extend(args.iter().map(String::as_str));
    cargo(&cmd)?;
    // Then the kernel matrix and, last, the bounded fuzzing run; not when a filter selects
    // particular tests.
    if args.is_empty() {
        step("test", "the kernel matrix (cargo xtask vm-test)");
        crate::vm::run_from_test(bins)?;
        crate::fuzz::run(crate::fuzz::DEFAULT_SECONDS, false)?;
        crate::docs::build_book()?;
    } else {
        step(
            "test",
            "a test filter was given: the kernel matrix and the fuzz targets are not run",
        );
    }
    Ok(())
}
