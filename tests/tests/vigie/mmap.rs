//! End-to-end: documents served from a memory mapping (open, `mmap`, close, then `writev` from
//! the mapping; no `read(2)` of the document), by the demo portal's `thread` model with
//! `--mmap`. Needs root (see `crate::harness::privileged`). The FastCGI application serves this way
//! too: see `tests/fastcgi.rs`.

use crate::harness::*;

const HR: &str = "health-record.pdf";

#[test]
fn mmap_served_cross_user_read_is_alerted_exactly_once() {
    let Some(p) = privileged("mmap_served_cross_user_read_is_alerted_exactly_once") else {
        return;
    };
    let (portal, vigie) = start_watched(&p, "mmap-cross", &["--model", "thread", "--mmap"], &[]);
    let addr = portal.addr();
    // On one kept connection: the mapping outlives the close of its fd, and must still be
    // judged once, for the right request.
    let mut conn = KeepAlive::connect(&addr).unwrap();
    let (status, body) = conn
        .get("/docs/bob/health-record.pdf", &[("X-Remote-User", "alice")])
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read(portal.doc("bob", HR)).unwrap());
    assert_eq!(
        conn.get("/docs/carol/notes.txt", &[("X-Remote-User", "carol")])
            .unwrap()
            .0,
        200
    );
    drop(conn);
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "alice", "bob", &portal.doc("bob", HR))],
        "{log}"
    );
    let a = &alerts[0];
    assert_eq!(a["evidence"], serde_json::json!(["thread"]));
    assert_eq!(a["request"]["target"], "/docs/bob/health-record.pdf");
    assert_eq!(a["request"]["status"], 200);
    assert_eq!(
        a["bytes"].as_u64(),
        Some(std::fs::metadata(portal.doc("bob", HR)).unwrap().len())
    );
    // Seen as mappings, never as reads of the documents.
    assert!(log.contains("\"file_map\": 2"), "{log}");
    assert!(!log.contains("\"file_read\""), "{log}");
    assert!(
        log.contains("accesses {\"allowed\": 1, \"violation\": 1}"),
        "{log}"
    );
}

#[test]
fn mmap_served_own_read_is_silent() {
    let Some(p) = privileged("mmap_served_own_read_is_silent") else {
        return;
    };
    let (portal, vigie) = start_watched(&p, "mmap-own", &["--model", "thread", "--mmap"], &[]);
    assert_eq!(
        get_as(&portal.addr(), "alice", "/docs/alice/health-record.pdf"),
        200
    );
    let (alerts, log) = vigie.stop();
    assert_eq!(verdicts(&alerts), [], "{log}");
    assert!(log.contains("accesses {\"allowed\": 1}"), "{log}");
    assert!(log.contains("\"file_map\": 1"), "{log}");
}
