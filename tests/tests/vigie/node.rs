//! Attribution on a Node.js Express portal (`tests/node-portal`, Debian's nodejs, Express from
//! npm, installed by `cargo xtask setup`): documents read by libuv pool threads, replies written
//! by the event loop with `writev([head, body])` (`readFile` + `res.end`) or in stream chunks
//! (`pipe`), in one process or in `node:cluster` workers. Only content can tie a read to its
//! request there; thread scope must never be used (Node.js is an M:N runtime).
//!
//! Several users, each on their own keep-alive connections, read a deterministic mix of their
//! own and other users' documents at once; with `--audit` every access is reported, scored for
//! precision (must be 1: a wrong user is the one failure Vigie must not have) and recall
//! (printed; a floor catches a regression to blindness). Needs root (see `crate::harness::privileged`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::harness::*;
use vigie_tests::client::KeepAlive;
use vigie_tests::portal::{DOCUMENTS, USERS};

/// Connections per user, and requests per connection (fewer under software emulation, where
/// V8 serves a few requests a second: the kernel matrix checks precision, not volume).
const CONNECTIONS: usize = 2;
fn requests() -> usize {
    if vigie_tests::time_scale() > 1.0 {
        8
    } else {
        25
    }
}

/// Recall below this is a regression (measured: see the README's attribution section).
const RECALL_FLOOR: f64 = 0.9;

type Key = (String, String, String, String);

/// The requests one connection makes: (owner, document), about half of them cross-user.
fn plan(user_index: usize, conn: usize) -> Vec<(&'static str, &'static str)> {
    let mut state = (user_index as u64 + 3) * 15_485_863 + conn as u64 * 32_452_843;
    (0..requests())
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
fn load(addr: &str, users: &Path) -> BTreeMap<Key, usize> {
    let mut handles = Vec::new();
    for (i, user) in USERS.iter().enumerate() {
        for conn in 0..CONNECTIONS {
            let addr = addr.to_string();
            handles.push(std::thread::spawn(move || {
                let mut c = KeepAlive::connect(&addr).expect("connecting");
                for (owner, doc) in plan(i, conn) {
                    let (status, body) = c
                        .get(&format!("/docs/{owner}/{doc}"), &[("X-Remote-User", user)])
                        .expect("request");
                    assert_eq!(status, 200);
                    assert_eq!(body, vigie_tests::portal::document_content(owner, doc));
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
                let path = users.join(owner).join(doc).display().to_string();
                *expected.entry(t(verdict, user, owner, &path)).or_insert(0) += 1;
            }
        }
    }
    expected
}

fn run_model(test: &str, serve: &str, cluster: Option<&str>) {
    let Some(p) = privileged(test) else {
        return;
    };
    let Some(portal) = crate::harness::node::NodePortal::start(test, serve, cluster) else {
        return;
    };
    let users = portal.users.clone();
    let config = portal.config();
    let vigie = Vigie::start(&p, test, &config, &["--audit"]);
    let expected = load(portal.guard.addr(), &users);
    let (alerts, log) = vigie.stop();
    drop(portal);

    let mut found: BTreeMap<Key, usize> = BTreeMap::new();
    for v in verdicts(&alerts) {
        *found.entry(v).or_insert(0) += 1;
    }
    let attributed = |k: &Key| k.0 == "allowed" || k.0 == "violation";
    let (mut right, mut wrong) = (0, 0);
    for (k, &n) in found.iter().filter(|(k, _)| attributed(k)) {
        let e = expected.get(k).copied().unwrap_or(0);
        right += n.min(e);
        wrong += n.saturating_sub(e);
    }
    let total: usize = expected.values().sum();
    let unattributed: usize = found
        .iter()
        .filter(|(k, _)| !attributed(k))
        .map(|(_, n)| n)
        .sum();
    let precision = if right + wrong == 0 {
        1.0
    } else {
        right as f64 / (right + wrong) as f64
    };
    let recall = right as f64 / total as f64;
    let by_evidence = alerts
        .iter()
        .filter_map(|a| a["evidence"].as_array())
        .map(|e| format!("{e:?}"))
        .fold(BTreeMap::<String, usize>::new(), |mut m, e| {
            *m.entry(e).or_default() += 1;
            m
        });
    eprintln!(
        "node {serve} cluster={cluster:?}: {total} reads; {right} right, {wrong} wrong, \
         {unattributed} unattributed; precision {precision:.3}, recall {recall:.3}; \
         evidence {by_evidence:?}"
    );
    assert_eq!(
        wrong, 0,
        "a read was attributed to the wrong request:\nfound {found:#?}\nexpected {expected:#?}\n{log}"
    );
    // Every attribution here must come from content (or sendfile): never from thread scope.
    for a in alerts.iter().filter(|a| a["type"] == "access") {
        let evidence = a["evidence"].as_array().expect("evidence");
        assert!(
            evidence.is_empty() || evidence.iter().any(|e| e == "fingerprint"),
            "{a}"
        );
        assert!(!evidence.iter().any(|e| e == "thread"), "{a}");
    }
    assert!(
        recall >= RECALL_FLOOR,
        "recall {recall:.3} below {RECALL_FLOOR}:\nfound {found:#?}\n{log}"
    );
}

#[test]
fn node_express_read_file_and_end_is_attributed_by_content() {
    run_model(
        "node_express_read_file_and_end_is_attributed_by_content",
        "read-file",
        None,
    );
}

#[test]
fn node_express_streams_are_attributed_by_content() {
    run_model(
        "node_express_streams_are_attributed_by_content",
        "stream",
        None,
    );
}

#[test]
fn node_cluster_workers_are_attributed_by_content() {
    run_model(
        "node_cluster_workers_are_attributed_by_content",
        "read-file",
        Some("2"),
    );
}
