//! The Debian package, as an operator uses it: `dpkg -i` on this machine, `vigie check-config`
//! on the installed configuration, the unit checked by `systemd-analyze verify`, the installed
//! `/usr/bin/vigie` watching the demo portal (one cross-user read, one alert), then `dpkg
//! --purge` leaving nothing behind. `cargo xtask test` builds the package and passes its path
//! in `VIGIE_DEB`. Needs root (see `crate::harness::privileged`).

use std::{path::Path, process::Command};

use crate::harness::*;

const PACKAGE: &str = "vigie";
const BIN: &str = "/usr/bin/vigie";
const CONFIG: &str = "/etc/vigie/vigie.toml";
const UNIT: &str = "/lib/systemd/system/vigie.service";

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("running a command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn installed() -> bool {
    run(Command::new("dpkg-query").args(["-W", "-f=${Status}", PACKAGE]))
        .1
        .contains("ok installed")
}

/// Purges the package on drop, so that a failing test leaves the machine as it found it.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if installed() {
            let _ = run(Command::new("dpkg").args(["--purge", PACKAGE]));
        }
    }
}

#[test]
fn package_installs_runs_and_purges() {
    let Some(p) = privileged("package_installs_runs_and_purges") else {
        return;
    };
    let Some(deb) = std::env::var_os("VIGIE_DEB") else {
        let msg = "SKIPPED package_installs_runs_and_purges: no VIGIE_DEB (run `cargo xtask test`, \
                   which builds the package)";
        eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
        assert!(
            std::env::var("VIGIE_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "{msg}, and VIGIE_REQUIRE_PRIVILEGED=1 turns skips into failures"
        );
        return;
    };
    assert!(
        !installed(),
        "a vigie package is already installed on this machine: not touching it"
    );

    let (ok, out) = run(Command::new("dpkg").arg("-i").arg(&deb));
    let guard = Installed;
    assert!(ok, "dpkg -i {}:\n{out}", deb.to_string_lossy());
    let (_, files) = run(Command::new("dpkg").args(["-L", PACKAGE]));
    for path in [
        BIN,
        CONFIG,
        UNIT,
        "/usr/share/vigie/prometheus/vigie.rules.yml",
        "/usr/share/vigie/alertmanager/alertmanager.example.yml",
        "/usr/share/doc/vigie/README.md",
    ] {
        assert!(Path::new(path).exists(), "{path} not installed:\n{files}");
    }
    let (_, conffiles) = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]));
    assert!(
        conffiles.contains(CONFIG),
        "{CONFIG} is a conffile: {conffiles}"
    );
    // Vigie refuses a configuration others can write; the packaged one is root's alone.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(CONFIG).expect("config").permissions(),
    );
    assert_eq!(mode & 0o077, 0, "{CONFIG} mode {mode:o}");

    let (ok, out) = run(Command::new(BIN).args(["check-config", CONFIG]));
    assert!(ok, "vigie check-config {CONFIG}:\n{out}");
    let unit = std::fs::read_to_string(UNIT).expect("unit");
    assert!(unit.contains("ExecStart=/usr/bin/vigie run --config /etc/vigie/vigie.toml"));
    assert!(!unit.contains("/usr/local/bin"), "{unit}");
    if let Some(analyze) = require_tool("package_installs_runs_and_purges", "systemd-analyze") {
        let (ok, out) = run(Command::new(analyze).args(["verify", UNIT]));
        assert!(ok, "systemd-analyze verify {UNIT}:\n{out}");
    }

    // The installed binary, with its probes, on the demo portal.
    let p = p.with_binary(BIN.into());
    let (portal, vigie) = start_watched(&p, "package", &["--model", "thread"], &[]);
    assert_eq!(
        get_as(&portal.addr(), "alice", "/docs/alice/notes.txt"),
        200
    );
    assert_eq!(get_as(&portal.addr(), "alice", "/docs/bob/notes.txt"), 200);
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t(
            "violation",
            "alice",
            "bob",
            &portal.doc("bob", "notes.txt")
        )],
        "{log}"
    );

    let (ok, out) = run(Command::new("dpkg").args(["--purge", PACKAGE]));
    assert!(ok, "dpkg --purge:\n{out}");
    drop(guard);
    assert!(!installed());
    for path in [BIN, CONFIG, UNIT, "/usr/share/vigie", "/etc/vigie"] {
        assert!(!Path::new(path).exists(), "{path} left after purge");
    }
}
