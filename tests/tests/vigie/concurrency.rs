//! Attribution under concurrent load on servers whose reading thread is not in charge of the
//! connection: an async runtime reading documents on its blocking pool, and a single-threaded
//! event loop interleaving requests. Several users, each on their own keep-alive connections,
//! read a deterministic mix of their own and other users' documents at the same time; with
//! `--audit`, every access is reported, so precision and recall are measured on allowed reads
//! and violations alike. Needs root (see `crate::harness::privileged`).

use std::collections::BTreeMap;

use crate::harness::*;

/// Every user's connections at once: 2 per user, 30 requests each.
const MIX: Mix = Mix {
    connections: 2,
    requests: 30,
    seed: (7919, 1, 104_729),
    check_bodies: false,
};

fn run_model(test: &str, model: &str) {
    let Some(p) = privileged(test) else {
        return;
    };
    let (portal, vigie) = start_watched(&p, test, &["--model", model], &["--audit"]);
    let expected = MIX.run(&portal.addr(), &portal.users);
    let (alerts, log) = vigie.stop();
    let score = Score::of(&expected, &alerts);
    let violations = |m: &BTreeMap<Access, usize>| {
        m.iter()
            .filter(|(k, _)| k.0 == "violation")
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    eprintln!(
        "{model}: {} expected violations, {} violation alerts; {score}",
        violations(&expected),
        violations(&score.found),
    );
    assert_eq!(score.found, expected, "{model}: {score}\n{log}");
    // These servers never read a document on the thread that owns the request at that moment:
    // every attribution must come from content.
    for a in &alerts {
        let evidence = a["evidence"].as_array().expect("evidence");
        assert!(
            evidence.iter().any(|e| e == "fingerprint") || model == "event-loop",
            "{a}"
        );
    }
}

#[test]
fn async_runtime_with_blocking_pool_reads_is_attributed_by_fingerprint() {
    run_model(
        "async_runtime_with_blocking_pool_reads_is_attributed_by_fingerprint",
        "async",
    );
}

#[test]
fn single_thread_event_loop_interleaving_requests_is_attributed_by_fingerprint() {
    run_model(
        "single_thread_event_loop_interleaving_requests_is_attributed_by_fingerprint",
        "event-loop",
    );
}
