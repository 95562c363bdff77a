//! `cargo xtask fuzz`: the cargo-fuzz targets of `fuzz/` (the parsers of hostile input), each run
//! for a bounded time from a copy of its checked-in seed corpus. Any crash fails the step, with
//! the artifact and the command that reproduces it.
//!
//! Builds once with the pinned nightly (cargo-fuzz needs one; the eBPF nightly is reused). The
//! targets depend on the pure core (`monitor-core`) only: no probes, no aya, no database
//! clients. Debug assertions and overflow checks are on; AddressSanitizer with `--asan`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{setup::EBPF_NIGHTLY, step, workspace_root};

/// cargo-fuzz release installed when missing (`cargo install --locked`, about a minute).
const CARGO_FUZZ: &str = "0.13.2";

/// Default seconds per target: 8 targets x 20 s = 2 minutes 40 of fuzzing, plus the build.
pub const DEFAULT_SECONDS: u64 = 20;

/// The targets and their largest input (`-max_len`), about what one capture or line can hold.
const TARGETS: &[(&str, usize)] = &[
    // Request heads: the capture is at most 4 KiB (`DATA_CAP`).
    ("http_head", 4096),
    // A connection's request stream (pipelined heads, bodies, chunked), cut into reads.
    ("http_stream", 16 * 1024),
    // A head with a token up to the 16 KiB `MAX_TOKEN_LEN`, plus the clock byte.
    ("identity", 17 * 1024),
    ("redact", 17 * 1024),
    // The largest record: a 64-byte `DataEvent` header and 4 KiB of capture, and a little more.
    ("decode", 64 + 4096 + 64),
    // Several event lines, each with an escaped 4 KiB payload.
    ("trace_line", 32 * 1024),
    // Structured: bytes decoded by `arbitrary` into event sequences.
    ("correlator", 16 * 1024),
    // A FastCGI exchange (both directions) cut into reads and writes: a few requests.
    ("fastcgi", 16 * 1024),
    // An HTTP/2 exchange (both directions, after the preface) cut into reads and writes.
    ("http2", 16 * 1024),
    // Audit-trail files: a few dozen records across up to four files.
    ("trail", 32 * 1024),
];

/// `asan`: build with AddressSanitizer (cargo-fuzz's default). Off by default: it makes the cold
/// build about 2 minutes longer and the runs about half as fast, and the code under test is safe
/// Rust but for the length-checked reads of `decode`; debug assertions and overflow checks stay on.
pub fn run(seconds: u64, asan: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    cargo_fuzz()?;
    let fuzz_dir = workspace_root().join("fuzz");
    let sanitizer = if asan { "address" } else { "none" };
    step(
        "fuzz",
        &format!("cargo +{EBPF_NIGHTLY} fuzz build --sanitizer {sanitizer} (all targets)"),
    );
    let status = nightly_cargo(&fuzz_dir)
        .args(["fuzz", "build", "--sanitizer", sanitizer])
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    let bin_dir = fuzz_dir.join("target").join(host_triple()).join("release");
    let run_dir = fuzz_dir.join("target").join("corpus-run");
    let log_dir = fuzz_dir.join("target").join("fuzz-logs");
    fs::create_dir_all(&log_dir).context("creating fuzz/target/fuzz-logs")?;

    let mut failures = Vec::new();
    for &(target, max_len) in TARGETS {
        let corpus = run_dir.join(target);
        copy_seeds(&fuzz_dir.join("corpus").join(target), &corpus)?;
        let artifacts = fuzz_dir.join("artifacts").join(target);
        fs::create_dir_all(&artifacts)
            .with_context(|| format!("creating {}", artifacts.display()))?;
        let before = list(&artifacts);
        let log = log_dir.join(format!("{target}.log"));
        let log_file = fs::File::create(&log).context("creating the fuzz log")?;
        step(
            "fuzz",
            &format!(
                "{target}: {seconds} s, -max_len={max_len} (log: {})",
                log.display()
            ),
        );
        let mut child = Command::new(bin_dir.join(target))
            .arg(&corpus)
            .arg(format!("-max_total_time={seconds}"))
            // CI (`CI` set) explores the same sequence every run, so a landing is not decided by
            // a lucky draw; developers get a fresh random seed each time.
            .args(std::env::var_os("CI").map(|_| "-seed=20261122"))
            .arg(format!("-max_len={max_len}"))
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .stdout(log_file.try_clone().context("duplicating the log fd")?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("running the {target} fuzz target"))?;
        let pid = child.id();
        let status = child.wait().context("waiting for the fuzz target")?;
        // The trace_line target's scratch file (it cannot remove it: libFuzzer exits directly).
        for dir in ["/dev/shm", "/tmp"] {
            let _ = fs::remove_file(format!("{dir}/vigie-fuzz-trace-{pid}.jsonl"));
        }
        let text = fs::read_to_string(&log).unwrap_or_default();
        let execs = final_stat(&text, "number_of_executed_units");
        let rate = final_stat(&text, "average_exec_per_sec");
        if status.success() {
            step(
                "fuzz",
                &format!(
                    "{target}: ok, {} executions, {} exec/s, corpus {} inputs",
                    execs.as_deref().unwrap_or("?"),
                    rate.as_deref().unwrap_or("?"),
                    list(&corpus).len(),
                ),
            );
            continue;
        }
        let new: Vec<PathBuf> = list(&artifacts)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        eprintln!("{}", crash_summary(&text));
        for artifact in &new {
            eprintln!(
                "[xtask fuzz] {target}: FAILED ({status}), artifact {}\n  reproduce: cd fuzz && \
                 cargo +{EBPF_NIGHTLY} fuzz run --sanitizer {sanitizer} {target} {}",
                artifact.display(),
                artifact.display(),
            );
        }
        if new.is_empty() {
            eprintln!("[xtask fuzz] {target}: FAILED ({status}), no artifact; see the log above");
        }
        failures.push(target);
    }
    step(
        "fuzz",
        &format!("done in {:.0} s", started.elapsed().as_secs_f64()),
    );
    if !failures.is_empty() {
        bail!("fuzz targets failed: {}", failures.join(", "));
    }
    Ok(())
}

/// `cargo +<nightly>` in `dir`, with the variables of the outer (stable) cargo removed so that
/// the nightly and cargo-fuzz's own flags apply.
fn nightly_cargo(dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{EBPF_NIGHTLY}"))
        .current_dir(dir)
        .env("RUSTUP_TOOLCHAIN", EBPF_NIGHTLY);
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Installs cargo-fuzz when missing or of another release (idempotent).
fn cargo_fuzz() -> anyhow::Result<()> {
    let have = Command::new("cargo-fuzz")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .ends_with(CARGO_FUZZ)
        });
    if have {
        return Ok(());
    }
    step(
        "fuzz",
        &format!("cargo install cargo-fuzz {CARGO_FUZZ} (about a minute and a half)"),
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            "--locked",
            "--force",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ,
        ])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}

/// The target triple cargo-fuzz builds for (the host's).
fn host_triple() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// A fresh copy of the checked-in seeds: the run's corpus growth never touches `fuzz/corpus`.
fn copy_seeds(seeds: &Path, to: &Path) -> anyhow::Result<()> {
    if to.exists() {
        fs::remove_dir_all(to).with_context(|| format!("removing {}", to.display()))?;
    }
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for seed in list(seeds) {
        if let Some(name) = seed.file_name() {
            fs::copy(&seed, to.join(name))
                .with_context(|| format!("copying {}", seed.display()))?;
        }
    }
    Ok(())
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A `stat::<name>: <value>` line of libFuzzer's final statistics.
fn final_stat(log: &str, name: &str) -> Option<String> {
    let prefix = format!("stat::{name}:");
    log.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_owned())
}

/// The panic message (with a few lines after it) and libFuzzer's error lines, else the log's end.
fn crash_summary(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("panicked at") {
            out.extend(lines[i..].iter().take(4));
        } else if line.contains("ERROR: ") || line.starts_with("SUMMARY: ") {
            out.push(line);
        }
    }
    if out.is_empty() {
        out = lines.iter().rev().take(40).rev().collect();
    }
    out.iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
