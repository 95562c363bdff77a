//! Project tasks: `cargo xtask setup | build | demo | test | vm-test | fuzz | package | docs`.
mod bench;
mod demo;
mod docs;
mod fuzz;
mod package;
mod setup;
mod test;
mod vm;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Vigie project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and running Vigie needs (idempotent; root): apt packages, the eBPF
    /// nightly with rust-src, bpf-linker against LLVM 22, tracefs/bpffs mounts.
    Setup,
    /// Set up, then build `vigie` (with its probes) and the demo portal.
    Build,
    /// Set up, build, start the demo portal, attach Vigie, make alice read her own document and
    /// then bob's, show the one violation alert, stop everything.
    Demo {
        /// Portal model: thread, prefork or pool.
        #[arg(long, default_value = "thread")]
        model: String,
    },
    /// Set up, build release binaries, measure Vigie's overhead, capacity and latency
    /// (root; about 10 minutes; see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Set up, build, run the whole test suite (unit, then end-to-end with real probes, then the
    /// kernel matrix (`vm-test`; `VIGIE_SKIP_VM=1` skips it), then the fuzz targets for
    /// `fuzz::DEFAULT_SECONDS` each).
    Test {
        /// Extra arguments for the test harness (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, then run the privileged end-to-end tests on Debian's 6.1 and 6.12 kernels
    /// (and lockdown variants) in QEMU with software emulation; print a per-kernel table (about
    /// 6 minutes on 2 cores).
    VmTest(vm::VmArgs),
    /// Set up, then build the Debian package (`target/package/vigie_*.deb`: the release binary,
    /// the systemd unit, `/etc/vigie/vigie.toml`, the Prometheus rules and the docs), installing
    /// cargo-deb when missing.
    Package,
    /// Set up, build, then write the book's generated reference pages (`docs/src/reference/`:
    /// configuration keys, metrics catalogue, alert schema) from the code; `cargo xtask test`
    /// fails when the checked-in pages differ. With `--book`, also build the book (installing
    /// the pinned mdBook when missing) into `target/book`.
    Docs {
        /// Also build the book.
        #[arg(long)]
        book: bool,
    },
    /// Build the cargo-fuzz targets of `fuzz/` (installing cargo-fuzz when missing) and run each
    /// for a bounded time from a copy of its seed corpus; fails on any crash.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
        /// Build with AddressSanitizer (slower build and runs).
        #[arg(long)]
        asan: bool,
    },
}

fn main() -> anyhow::Result<()> {
    // Files the tasks write (configs, alerts, traces) must not be group- or world-writable:
    // Vigie refuses a config that is.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o022) };
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            build().map(|_| ())
        }
        Task::Demo { model } => {
            setup::run()?;
            demo::run(&build()?, &model)
        }
        Task::Bench(args) => {
            setup::run()?;
            match &args.vm {
                Some(kernel) => {
                    let args = args.effective();
                    vm::measure::run(&build()?, kernel, args.secs, args.rounds as u64)
                }
                None => bench::run(&args),
            }
        }
        Task::Test { args } => {
            setup::run()?;
            test::run(&build()?, &args)
        }
        Task::VmTest(args) => {
            args.check()?;
            setup::run()?;
            vm::run(&build()?, &args)
        }
        Task::Docs { book } => {
            setup::run()?;
            docs::write(&build()?.vigie)?;
            if book {
                docs::build_book()?;
            }
            Ok(())
        }
        Task::Fuzz { seconds, asan } => fuzz::run(seconds, asan),
        Task::Package => {
            setup::run()?;
            package::run().map(|deb| println!("{}", deb.display()))
        }
    }
}

/// Paths of the built binaries.
pub struct Binaries {
    pub vigie: PathBuf,
    pub portal: PathBuf,
    /// The Go net/http portal (`tests/go/portal`), static.
    pub go_portal: PathBuf,
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Builds the `vigie` binary (build.rs compiles the probes) and the demo portal, debug profile,
/// so the test suite reuses the same artifacts.
fn build() -> anyhow::Result<Binaries> {
    let root = workspace_root();
    step("build", "cargo build -p monitor -p vigie-tests --bins");
    cargo(&["build", "-p", "monitor", "-p", "vigie-tests", "--bins"])?;
    let target = root.join("target").join("debug");
    let go_portal = root.join("target").join("go-portal").join("go-portal");
    step("build", "go build tests/go/portal (static, CGO_ENABLED=0)");
    build_go_portal(&root, &go_portal)?;
    Ok(Binaries {
        vigie: target.join("vigie"),
        portal: target.join("demo-portal"),
        go_portal,
    })
}

/// The Go portal of `tests/tests/vigie/go.rs`, with Debian's `go` (`cargo xtask setup`): standard
/// library only, so no module download (`GOPROXY=off`); its build cache stays in `target/`.
fn build_go_portal(root: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let dir = out.parent().unwrap_or(root);
    std::fs::create_dir_all(dir)?;
    let status = Command::new("go")
        .args(["build", "-trimpath", "-o"])
        .arg(out)
        .arg(".")
        .current_dir(root.join("tests/go/portal"))
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", dir.join("go-cache"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .status()
        .context("running go build (is golang-go installed? cargo xtask setup)")?;
    if !status.success() {
        bail!("go build of tests/go/portal failed ({status})");
    }
    Ok(())
}

/// Clippy on the probes: the eBPF crate for its BPF target with the eBPF nightly, as
/// `monitor/build.rs` builds it (aya-build's flags), in a target directory of its own.
pub fn clippy_ebpf() -> anyhow::Result<()> {
    let root = workspace_root();
    let status = Command::new("cargo")
        .arg(format!("+{}", setup::EBPF_NIGHTLY))
        .args([
            "clippy",
            "--quiet",
            "--package",
            "monitor-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(root.join("target").join("clippy-ebpf"))
        .args(["--", "-D", "warnings"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"",
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO")
        .env("RUSTUP_TOOLCHAIN", setup::EBPF_NIGHTLY)
        .current_dir(&root)
        .status()
        .context("running cargo clippy on monitor-ebpf")?;
    if !status.success() {
        bail!("cargo clippy on the probes failed ({status})");
    }
    Ok(())
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

pub fn step(task: &str, what: &str) {
    eprintln!("[xtask {task}] {what}");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
