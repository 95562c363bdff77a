//! `cargo xtask bench --vm <6.1|6.12>`: reads, writes, accepts and closes hooked both ways on
//! one kernel of the matrix, measured in the same boot. The row's kernel boots with the matrix's
//! initramfs and an `/init` that runs one ignored test,
//! `hooks::measure_btf_hooks_against_tracepoints`: the demo portal under load in interleaved
//! rounds (nothing attached, `--hooks tracepoints`, BTF programs), with the kernel's BPF
//! statistics on. Software emulation distorts absolute numbers: the ratios within the boot are
//! what counts. Not part of `cargo xtask test` (nor of `.ci/run`).
use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};

use crate::{Binaries, step, workspace_root};

/// The test that measures, run by exact name.
const MEASURE: &str = "hooks::measure_btf_hooks_against_tracepoints";

pub fn run(bins: &Binaries, row: &str, seconds: u64, rounds: u64) -> anyhow::Result<()> {
    let series = match row {
        "6.1" => super::DEBIAN_6_1,
        "6.12" => super::DEBIAN_6_12,
        other => bail!("--vm {other}: no such kernel (6.1 or 6.12)"),
    };
    let vm_dir = workspace_root().join("target").join("vm");
    let vmlinuz = super::fetch_kernel(&vm_dir.join("kernels"), series)?;
    step(
        "bench --vm",
        "cargo test -p vigie-tests --no-run (the test binary for the VM)",
    );
    let tests = super::test_binary()?;
    let initramfs = vm_dir.join("initramfs-measure.cpio");
    super::build_initramfs(&initramfs, bins, &tests)?;
    // A second archive after the first: the kernel unpacks both, and this `/init` replaces
    // the matrix's.
    let init = measure_init(&super::init_script(bins, &tests), seconds, rounds)?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&initramfs)
        .with_context(|| format!("opening {}", initramfs.display()))?;
    let mut cpio = super::cpio::Cpio::new(&mut file);
    cpio.file("/init", 0o755, init.as_bytes())?;
    cpio.finish()?;
    let log = vm_dir.join("logs").join(format!("measure-{row}.log"));
    std::fs::create_dir_all(log.parent().unwrap_or(Path::new(".")))?;
    step(
        "bench --vm",
        &format!(
            "boot {row}: {rounds} rounds of {seconds} s per way (log {})",
            log.display()
        ),
    );
    let cmdline = format!(
        "console=ttyS0 panic=-1 quiet vigie.tests={MEASURE} vigie.scale={}",
        super::TIME_SCALE
    );
    let budget = 600 + rounds * seconds * 3 * 4;
    let boot = super::boot(
        &format!("measure-{row}"),
        &vmlinuz,
        &initramfs,
        &cmdline,
        &log,
        Duration::from_secs(budget),
    )?;
    let lines: Vec<&str> = boot
        .console
        .lines()
        .filter(|l| l.contains("VIGIE-MEASURE") || l.contains("VIGIE-VM-KERNEL"))
        .collect();
    for l in &lines {
        println!("{l}");
    }
    let ended = boot
        .console
        .lines()
        .any(|l| l.starts_with(&format!("VIGIE-VM-END {MEASURE} rc=0")));
    if boot.timed_out || !ended || !lines.iter().any(|l| l.contains("MEASURE-SUMMARY")) {
        bail!(
            "the measurement did not complete (see {}):\n{}",
            log.display(),
            super::tail(&boot.console, 60)
        );
    }
    Ok(())
}

/// The matrix's `/init`, running the ignored measurement with its settings.
fn measure_init(matrix: &str, seconds: u64, rounds: u64) -> anyhow::Result<String> {
    const RUN: &str = "--test-threads=1 --exact $names";
    const CD: &str = "\ncd /tmp\n";
    if !matrix.contains(RUN) || !matrix.contains(CD) {
        bail!("the matrix's /init changed: update xtask/src/vm/measure.rs");
    }
    Ok(matrix
        .replace(
            RUN,
            "--test-threads=1 --include-ignored --nocapture --exact $names",
        )
        .replace(
            CD,
            &format!("\nexport VIGIE_MEASURE_SECONDS={seconds} VIGIE_MEASURE_ROUNDS={rounds}{CD}"),
        ))
}
