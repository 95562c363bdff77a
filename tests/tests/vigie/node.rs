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

use crate::harness::*;

/// Every user's connections at once: 2 per user, each making 25 requests (8 under software
/// emulation, where V8 serves a few requests a second: the kernel matrix checks precision, not
/// volume), every body checked.
fn mix() -> Mix {
    Mix {
        connections: 2,
        requests: if vigie_tests::time_scale() > 1.0 {
            8
        } else {
            25
        },
        seed: (15_485_863, 3, 32_452_843),
        check_bodies: true,
    }
}

/// Recall below this is a regression (measured: see the README's attribution section).
const RECALL_FLOOR: f64 = 0.9;

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
    let expected = mix().run(portal.guard.addr(), &users);
    let (alerts, log) = vigie.stop();
    drop(portal);

    let score = Score::of(&expected, &alerts);
    eprintln!("node {serve} cluster={cluster:?}: {score}");
    assert_eq!(
        score.wrong,
        0,
        "a read was attributed to the wrong request: {:?}\nfound {:#?}\nexpected {expected:#?}\n{log}",
        score.wrong_ones(&expected),
        score.found
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
        score.recall() >= RECALL_FLOOR,
        "recall {:.3} below {RECALL_FLOOR}:\nfound {:#?}\n{log}",
        score.recall(),
        score.found
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
