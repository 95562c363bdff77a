//! `cargo xtask package`: the Debian package an operator installs (cargo-deb, installed when
//! missing). It holds the release `vigie` (with its probes), the systemd unit with the
//! packaged binary's path, the example configuration as `/etc/vigie/vigie.toml` (a conffile:
//! upgrades keep local edits), the Prometheus rules and Alertmanager example under
//! `/usr/share/vigie/`, and the docs. The unit is installed, not enabled: the configuration
//! must name the portal first.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{step, workspace_root};

/// cargo-deb release installed when missing (`cargo install --locked`, about two minutes).
const CARGO_DEB: &str = "3.8.0";

/// Builds the package; returns its path.
pub fn run() -> anyhow::Result<PathBuf> {
    cargo_deb()?;
    let root = workspace_root();
    let package = root.join("target").join("package");
    std::fs::create_dir_all(&package)?;
    // The unit of deploy/systemd names the binary where a manual install puts it; the package
    // puts it in /usr/bin.
    let unit = std::fs::read_to_string(root.join("deploy/systemd/vigie.service"))
        .context("reading deploy/systemd/vigie.service")?;
    let packaged = unit.replace("/usr/local/bin/vigie", "/usr/bin/vigie");
    if packaged == unit {
        bail!("deploy/systemd/vigie.service no longer names /usr/local/bin/vigie: update xtask");
    }
    std::fs::write(package.join("vigie.service"), packaged)?;
    step(
        "package",
        "cargo deb -p monitor (release build of vigie and its probes)",
    );
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["deb", "-p", "monitor", "--output"])
        .arg(&package)
        .current_dir(&root)
        .output()
        .context("running cargo deb")?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("cargo deb failed ({})", out.status);
    }
    // cargo-deb prints the path of the package it wrote.
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb printed no package path")?;
    step("package", &format!("wrote {}", deb.display()));
    Ok(deb)
}

fn cargo_deb() -> anyhow::Result<()> {
    let have = Command::new("cargo-deb")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DEB));
    if have {
        return Ok(());
    }
    step(
        "package",
        &format!("cargo install cargo-deb {CARGO_DEB} (about two minutes)"),
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            "--locked",
            "--force",
            "cargo-deb",
            "--version",
            CARGO_DEB,
        ])
        .status()
        .context("running cargo install cargo-deb")?;
    if !status.success() {
        bail!("cargo install cargo-deb failed ({status})");
    }
    Ok(())
}
