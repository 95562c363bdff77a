//! Open paths: exact where the kernel runs BTF programs (`file_open` with `bpf_d_path`: absolute,
//! symbolic links resolved), as the process wrote them elsewhere (the `openat` tracepoints). A
//! portal deployed through a symbolic link (`current -> releases/N`, `uploads -> /data/...`) is the
//! case where the two differ. `cargo xtask vm-test` runs this on each way in: LSM (6.1, 6.12),
//! fentry (6.1 without the BPF LSM), tracepoints (the host). Needs root.

use std::path::PathBuf;

use crate::harness::*;

const HR: &str = "health-record.pdf";

/// `dir/data` holds the portal; `dir/current` is a symbolic link to it, and the portal is
/// started through the link. Returns (the root through the link, the real root).
fn deployment(dir: &TempDir) -> (PathBuf, PathBuf) {
    let real = dir.path().join("data");
    std::fs::create_dir_all(&real).unwrap();
    let link = dir.path().join("current");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    (link.join("portal"), real.join("portal"))
}

/// Whether this run of Vigie had exact open paths, from its start-up summary.
fn exact_paths(log: &str) -> bool {
    if log.contains("programs fired, open paths exact, ") {
        return true;
    }
    assert!(
        log.contains("programs fired, open paths as written, openat tracepoints"),
        "no open-path summary in the log:\n{log}"
    );
    false
}

fn alice_reads_her_record_and_bobs(portal: &Portal) {
    assert_eq!(
        get_as(&portal.addr(), "alice", "/docs/alice/health-record.pdf"),
        200
    );
    assert_eq!(
        get_as(&portal.addr(), "alice", "/docs/bob/health-record.pdf"),
        200
    );
}

/// The root is configured as the portal names it (through the link). The tracepoints see that
/// name; the kernel's exact path is the real one, which Vigie also watches and names back as
/// configured. Same alert either way.
#[test]
fn a_root_configured_through_a_symlink_gives_the_same_alert_either_way() {
    let Some(p) = privileged("a_root_configured_through_a_symlink_gives_the_same_alert_either_way")
    else {
        return;
    };
    let dir = TempDir::new("paths-link");
    let (through_link, _) = deployment(&dir);
    let portal = Portal::start_in(dir, &through_link, &through_link, &["--model", "thread"]);
    let vigie = Vigie::start(&p, "paths-link", &portal.config_by_pid(), &[]);
    alice_reads_her_record_and_bobs(&portal);
    let (alerts, log) = vigie.stop();
    eprintln!("exact open paths: {}", exact_paths(&log));
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "alice", "bob", &portal.doc("bob", HR))],
        "{log}"
    );
    assert!(portal.doc("bob", HR).contains("/current/portal/"));
    assert!(
        log.contains("accesses {\"allowed\": 1, \"violation\": 1}"),
        "{log}"
    );
}

/// The root is configured by its real location (as an auditor names the storage), and the
/// portal reaches it through the link. Only exact paths see these reads: the tracepoints see
/// the path as the portal wrote it, outside every root. A known limit of the tracepoint way in
/// (README, "What works and what does not yet").
#[test]
fn a_portal_reaching_its_root_through_a_symlink_is_seen_with_exact_paths() {
    let Some(p) =
        privileged("a_portal_reaching_its_root_through_a_symlink_is_seen_with_exact_paths")
    else {
        return;
    };
    let dir = TempDir::new("paths-real");
    let (through_link, real) = deployment(&dir);
    let portal = Portal::start_in(dir, &through_link, &real, &["--model", "thread"]);
    let vigie = Vigie::start(&p, "paths-real", &portal.config_by_pid(), &[]);
    alice_reads_her_record_and_bobs(&portal);
    let (alerts, log) = vigie.stop();
    if exact_paths(&log) {
        assert_eq!(
            verdicts(&alerts),
            [t("violation", "alice", "bob", &portal.doc("bob", HR))],
            "{log}"
        );
        assert!(portal.doc("bob", HR).contains("/data/portal/"));
        assert!(
            log.contains("accesses {\"allowed\": 1, \"violation\": 1}"),
            "{log}"
        );
    } else {
        assert_eq!(verdicts(&alerts), [], "{log}");
        assert!(!log.contains("accesses {\""), "no access expected:\n{log}");
    }
}
