//! Attribution under concurrent load on servers whose reading thread is not in charge of the
//! connection: an async runtime reading documents on its blocking pool, and a single-threaded
//! event loop interleaving requests. Several users, each on their own keep-alive connections,
//! read a deterministic mix of their own and other users' documents at the same time; with
//! `--audit`, every access is reported, so precision and recall are measured on allowed reads
//! and violations alike. Needs root (see `crate::harness::privileged`).

use std::collections::BTreeMap;

use crate::harness::*;
use vigie_tests::client::KeepAlive;
use vigie_tests::portal::{DOCUMENTS, USERS};

/// Connections per user, and requests per connection.
const CONNECTIONS: usize = 2;
const REQUESTS: usize = 30;

type Key = (String, String, String, String);

/// The requests one connection makes: (owner, document), from a small deterministic generator,
/// about half of them cross-user.
fn plan(user_index: usize, conn: usize) -> Vec<(&'static str, &'static str)> {
    let mut state = (user_index as u64 + 1) * 7919 + conn as u64 * 104_729;
    (0..REQUESTS)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let r = (state >> 33) as usize;
            let owner = if r.is_multiple_of(2) {
                USERS[user_index]
            } else {
                USERS[(user_index + 1 + r / 2 % (USERS.len() - 1)) % USERS.len()]
            };
            (owner, DOCUMENTS[r / 7 % DOCUMENTS.len()])
        })
        .collect()
}

/// Runs every user's connections at once; returns the expected multiset of (verdict, user,
/// owner, document).
fn load(portal: &Portal) -> BTreeMap<Key, usize> {
    let addr = portal.addr();
    let mut handles = Vec::new();
    for (i, user) in USERS.iter().enumerate() {
        for conn in 0..CONNECTIONS {
            let addr = addr.clone();
            handles.push(std::thread::spawn(move || {
                let mut c = KeepAlive::connect(&addr).expect("connecting");
                for (owner, doc) in plan(i, conn) {
                    let (status, _) = c
                        .get(&format!("/docs/{owner}/{doc}"), &[("X-Remote-User", user)])
                        .expect("request");
                    assert_eq!(status, 200);
                }
            }));
        }
    }
    for h in handles {
        h.join().expect("client thread");
    }
    let mut expected = BTreeMap::new();
    for (i, user) in USERS.iter().enumerate() {
        for conn in 0..CONNECTIONS {
            for (owner, doc) in plan(i, conn) {
                let verdict = if owner == *user {
                    "allowed"
                } else {
                    "violation"
                };
                *expected
                    .entry(t(verdict, user, owner, &portal.doc(owner, doc)))
                    .or_insert(0) += 1;
            }
        }
    }
    expected
}

/// (true positives, false positives, false negatives) of `found` against `expected`.
fn score(expected: &BTreeMap<Key, usize>, found: &BTreeMap<Key, usize>) -> (usize, usize, usize) {
    let mut tp = 0;
    let mut fp = 0;
    for (k, &n) in found {
        let e = expected.get(k).copied().unwrap_or(0);
        tp += n.min(e);
        fp += n.saturating_sub(e);
    }
    let fneg = expected
        .iter()
        .map(|(k, &e)| e.saturating_sub(found.get(k).copied().unwrap_or(0)))
        .sum();
    (tp, fp, fneg)
}

fn run_model(test: &str, model: &str) {
    let Some(p) = privileged(test) else {
        return;
    };
    let portal = Portal::start(test, &["--model", model]);
    let vigie = Vigie::start(
        &p,
        test,
        &portal.config(&format!("pids = [{}]", portal.guard.pid())),
        &["--audit"],
    );
    let expected = load(&portal);
    let (alerts, log) = vigie.stop();
    let mut found = BTreeMap::new();
    for v in verdicts(&alerts) {
        *found.entry(v).or_insert(0) += 1;
    }
    let (tp, fp, fneg) = score(&expected, &found);
    let violations = |m: &BTreeMap<Key, usize>| {
        m.iter()
            .filter(|(k, _)| k.0 == "violation")
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    eprintln!(
        "{model}: {} requests, {} expected violations, {} violation alerts; \
         accesses: {tp} right, {fp} wrong, {fneg} missed",
        expected.values().sum::<usize>(),
        violations(&expected),
        violations(&found),
    );
    let by_evidence = alerts
        .iter()
        .filter_map(|a| a["evidence"].as_array())
        .map(|e| format!("{e:?}"))
        .fold(BTreeMap::<String, usize>::new(), |mut m, e| {
            *m.entry(e).or_default() += 1;
            m
        });
    eprintln!("{model}: evidence {by_evidence:?}");
    assert_eq!(
        found, expected,
        "{model}: {tp} right, {fp} wrong, {fneg} missed\n{log}"
    );
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
