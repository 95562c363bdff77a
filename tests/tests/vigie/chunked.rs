//! A document read in many small chunks costs a bounded number of events per request: the
//! probes send a thread's first read of a document and count the reads that follow
//! (`file_read_more`), and the alerts are those of every read sent one by one. Needs root (see
//! `crate::harness::privileged`). Native run only: under the kernel matrix's emulation it takes
//! about 35 s a row (2 MiB twice), and what it adds to `e2e` there is the same probes.

use serde_json::Value;

use crate::harness::*;

const DOCUMENT: usize = 2 << 20;
const CHUNK: &str = "8192";
/// Alice's own document, then bob's: an allowed read and a violation.
const REQUESTS: usize = 2;

#[test]
fn a_2_mib_document_read_in_8_kib_chunks_is_a_read_and_a_count_per_request() {
    let name = "a_2_mib_document_read_in_8_kib_chunks_is_a_read_and_a_count_per_request";
    let Some(p) = privileged(name) else {
        return;
    };
    let portal = Portal::start(name, &["--model", "thread", "--read-chunk", CHUNK]);
    for owner in ["alice", "bob"] {
        let content: Vec<u8> = (0..DOCUMENT)
            .map(|i| (i * 31 + owner.len()) as u8)
            .collect();
        std::fs::write(portal.users.join(owner).join("big.pdf"), content).unwrap();
    }
    let traces = TempDir::new("chunked-traces");
    let trace_dir = traces.path().join("t");
    let record = trace_dir.to_str().unwrap();
    let vigie = Vigie::start(
        &p,
        name,
        &portal.config_by_pid(),
        &["--record", record, "--audit"],
    );
    let mut conn = KeepAlive::connect(&portal.addr()).unwrap();
    for i in 0..REQUESTS {
        let owner = if i % 2 == 0 { "alice" } else { "bob" };
        let (status, body) = conn
            .get(
                &format!("/docs/{owner}/big.pdf"),
                &[("X-Remote-User", "alice")],
            )
            .unwrap();
        assert_eq!((status, body.len()), (200, DOCUMENT));
    }
    drop(conn);
    let (live_raw, log) = vigie.stop_raw();
    let alerts = parse_alerts(&live_raw);
    let (alice, bob) = (portal.doc("alice", "big.pdf"), portal.doc("bob", "big.pdf"));
    assert_eq!(
        verdicts(&alerts),
        [
            t("allowed", "alice", "alice", &alice),
            t("violation", "alice", "bob", &bob),
        ],
        "{log}"
    );
    for a in &alerts {
        assert_eq!(a["bytes"], DOCUMENT, "{a}");
        assert_eq!(a["evidence"], serde_json::json!(["thread"]), "{a}");
    }

    // The document reads the trace holds: the first of each request in full, the rest counted.
    let events = trace_events(&trace_dir);
    let of = |kind: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["pid"] == portal.guard.pid() && !e["kind"][kind].is_null())
            .collect()
    };
    let (reads, counts) = (of("file_read"), of("file_read_more"));
    let chunks = DOCUMENT / CHUNK.parse::<usize>().unwrap();
    let counted: u64 = counts
        .iter()
        .map(|c| c["kind"]["file_read_more"]["calls"].as_u64().unwrap())
        .sum();
    // Each request's reads: one sent, the others counted (the 0-byte read at the end of the
    // file returns nothing and is not a read).
    assert_eq!(reads.len(), REQUESTS, "{reads:?}");
    assert_eq!(counted as usize, REQUESTS * (chunks - 1));
    // A count is sent before the thread's next record, or every `idle_flush_ms / 4` of
    // reading: one per request here, a few on a slow machine.
    assert!(
        (REQUESTS..=4 * REQUESTS).contains(&counts.len()),
        "{} counts for {REQUESTS} requests",
        counts.len()
    );
    let per_request = events
        .iter()
        .filter(|e| e["pid"] == portal.guard.pid())
        .count()
        / REQUESTS;
    eprintln!(
        "{per_request} events per request ({} in the trace), {} reads sent, {} counts of {counted} reads",
        events.len(),
        reads.len(),
        counts.len()
    );
    assert!(per_request <= 16, "{per_request} events per request");

    // Replay: the same alerts, byte for byte.
    let replayed = traces.path().join("replayed.jsonl");
    let files = trace_files(&trace_dir);
    let replayed_raw = replay_alerts(&p, &files, &["--audit"], &replayed);
    assert_eq!(replayed_raw, live_raw, "replay differs from the live run");
}
