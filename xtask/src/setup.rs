//! Idempotent machine set-up: each step checks first and does nothing when already done, so it
//! runs before every demo and test (a few hundred milliseconds when all is there).
use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{is_root, step};

/// The eBPF crate's toolchain (keep in sync with monitor/build.rs).
pub const EBPF_NIGHTLY: &str = "nightly-2026-07-01";
/// bpf-linker must link an LLVM at least as new as the nightly's (LLVM 22 for the nightly above;
/// a newer one fails with "Invalid record").
const LLVM: &str = "22";
const BPF_LINKER: &str = "0.13.0";

const APT_PACKAGES: &[&str] = &[
    "build-essential",
    "pkg-config",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "libxml2-dev",
    "libffi-dev",
    // `promtool` (alert rule unit tests) and the Prometheus server, and Alertmanager: the
    // end-to-end test runs its own instances of both (see `tests/tests/vigie/prometheus.rs`).
    "prometheus",
    "prometheus-alertmanager",
    // PostgreSQL server and client: the ownership tests start their own cluster (initdb in a
    // temp dir, unix socket only; see `tests/tests/vigie/harness/postgres.rs`). No system cluster
    // is started (see below).
    "postgresql",
    // The front web server of the FastCGI demo (`tests/tests/vigie/fastcgi.rs` runs its own, on a
    // temporary prefix): never started as a system service (see `NoServiceStarts`).
    "nginx",
    // A portal's Redis session store, run by `tests/tests/vigie/sessions.rs`.
    "redis-server",
    // HTTPS portals (`tests/tests/vigie/tls.rs`): certificates made with the `openssl` command,
    // requests (HTTP/1.1 and HTTP/2) made with curl, and a Python application server that
    // terminates TLS with its `ssl` module (Debian's python3, OpenSSL 3); the HTTP/2 login
    // portal speaks HTTP/2 itself with the `h2` library.
    "openssl",
    "curl",
    "python3",
    "python3-h2",
    // The Go net/http portal of `tests/tests/vigie/go.rs` (standard library only), built by the
    // test harness and by `cargo xtask vm-test`.
    "golang-go",
    // The kernel matrix (`cargo xtask vm-test`): QEMU with software emulation, and a static
    // busybox for the initramfs's `/init` (the initramfs itself is written by xtask).
    "qemu-system-x86",
    "busybox-static",
    // Debian's Chromium, headless: `tests/tests/vigie/trail.rs` renders the HTML report of
    // `vigie report` and takes a screenshot of it.
    "chromium",
    // The peers of `cargo xtask bench` (`xtask/src/bench/sides.rs`, `servers.rs`): auditd (run
    // there with its own config, a watch rule added and removed; never started as a system
    // service), bpftrace (an open logger, and the floor of Vigie's hooks), bpftool (the floor's
    // BPF run statistics), and gunicorn (a WSGI app server serving documents in 8 KiB chunks).
    "auditd",
    "bpftrace",
    "bpftool",
    "gunicorn",
    // The syslog collector of `tests/tests/vigie/shipping.rs` (run there with its own config on a
    // loopback port; never started as a system service).
    "rsyslog",
    // rsyslog's TLS driver (`gtls`): syslog over TLS (RFC 5425) in `tests/tests/vigie/shipping.rs`.
    "rsyslog-gnutls",
];

/// Debian's policy-rc.d protocol: while this file exists and exits 101, maintainer scripts do not
/// start services (invoke-rc.d and deb-systemd-invoke both ask it).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn run() -> anyhow::Result<()> {
    check_kernel()?;
    apt()?;
    nightly()?;
    bpf_linker()?;
    mounts()?;
    node_portal()?;
    Ok(())
}

/// Node.js and Express for the Node.js demo portal (`tests/node-portal`, run by
/// `tests/tests/vigie/node.rs`), Express at the versions its lock file pins. Debian's `nodejs` and
/// `npm` only where no `node`/`npm` is installed: a Node.js from another source bundles its own
/// npm, which Debian's `npm` package conflicts with.
fn node_portal() -> anyhow::Result<()> {
    let dir = crate::workspace_root().join("tests/node-portal");
    if dir.join("node_modules/express/package.json").is_file() {
        return Ok(());
    }
    let missing: Vec<&str> = [("node", "nodejs"), ("npm", "npm")]
        .into_iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(_, pkg)| pkg)
        .collect();
    if !missing.is_empty() {
        need_root("installing Node.js")?;
        step("setup", &format!("apt-get install {}", missing.join(" ")));
        apt_update()?;
        run_cmd(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing),
        )?;
    }
    step("setup", "npm ci (tests/node-portal)");
    run_cmd(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
    )
}

fn need_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("{what} needs root: run this command as root (e.g. `sudo -E cargo xtask ...`)");
    }
    Ok(())
}

fn check_kernel() -> anyhow::Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel has no BTF (/sys/kernel/btf/vmlinux): Vigie needs CONFIG_DEBUG_INFO_BTF=y \
             to compute kernel struct offsets"
        );
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"))
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    need_root("installing apt packages")?;
    step("setup", &format!("apt-get install {}", missing.join(" ")));
    apt_update()?;
    // prometheus, prometheus-alertmanager, postgresql and redis-server would start system
    // daemons on 9090/9093/5432/6379 (and fail the install where they cannot start): the tests
    // run their own, so none is started.
    let _no_daemons = NoServiceStarts::new()?;
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

pub fn apt_update() -> anyhow::Result<()> {
    need_root("apt-get update")?;
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))
}

/// Forbids service starts by maintainer scripts for as long as it lives, through a temporary
/// `policy-rc.d`. An existing one is the administrator's: it is left alone, and used as it is.
struct NoServiceStarts {
    created: bool,
}

impl NoServiceStarts {
    fn new() -> anyhow::Result<Self> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(Self { created: false });
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# Written by `cargo xtask setup` during apt-get install; removed after.\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {POLICY_RC_D} executable"))?;
        Ok(Self { created: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

fn nightly() -> anyhow::Result<()> {
    let have = Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_NIGHTLY,
        ])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with("rust-src"))
        });
    if have {
        return Ok(());
    }
    step(
        "setup",
        &format!("rustup toolchain install {EBPF_NIGHTLY} with rust-src"),
    );
    run_cmd(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let version_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .ends_with(BPF_LINKER)
        });
    let llvm_ok = which("bpf-linker").is_some_and(|path| {
        Command::new("ldd").arg(path).output().is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).contains(&format!("libLLVM.so.{LLVM}"))
                || String::from_utf8_lossy(&o.stdout).contains(&format!("libLLVM-{LLVM}"))
        })
    });
    if version_ok && llvm_ok {
        return Ok(());
    }
    step(
        "setup",
        &format!("cargo install bpf-linker {BPF_LINKER} against LLVM {LLVM} (about a minute)"),
    );
    let prefix = format!("/usr/lib/llvm-{LLVM}");
    let path = format!("{prefix}/bin:{}", std::env::var("PATH").unwrap_or_default());
    run_cmd(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .env("LLVM_PREFIX", &prefix)
            .env("PATH", path)
            .args([
                "install",
                "--locked",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM}"),
            ]),
    )
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

fn mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(path)))
}

fn mounts() -> anyhow::Result<()> {
    for (fstype, path) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        if mounted(path) {
            continue;
        }
        if !is_root() {
            // Not fatal here: building works without; `vigie run` (root) mounts tracefs itself.
            step(
                "setup",
                &format!(
                    "{path} is not mounted (needs root); privileged tests will report themselves skipped"
                ),
            );
            continue;
        }
        step("setup", &format!("mount -t {fstype} {fstype} {path}"));
        let status = Command::new("mount")
            .args(["-t", fstype, fstype, path])
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mounting {fstype} at {path} failed ({status})");
        }
    }
    Ok(())
}

fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
