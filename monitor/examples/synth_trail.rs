//! Writes a realistic audit trail for `vigie verify` benchmarks:
//! `cargo run --release -p monitor --example synth_trail -- DIR RECORDS` writes DIR/trail-*.jsonl
//! (64 MiB files, a checkpoint every simulated minute) and DIR.key / DIR.key.pub.
//!
//! Each record is a judged access as the demo portal produces them (one in ten cross-user), one
//! per simulated millisecond, through the same writer as a live run.
use std::{path::PathBuf, time::Duration};

use monitor_core::{
    correlate::{Access, Evidence, RequestInfo},
    identity::{Identity, IdentitySource},
    judge::Judge,
    trail::key::TrailKey,
    walltime::WallClock,
};
use vigie::{
    ownership::{OwnershipRules, resolver::Resolver},
    sinks::trail::{ConfigDigest, TrailPolicy, TrailWriter},
};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: synth_trail DIR RECORDS"))?,
    );
    let total: u64 = args.next().unwrap_or_else(|| "1000000".into()).parse()?;
    let key = TrailKey::from_seed([42; 32]);
    std::fs::write(
        format!("{}.key.pub", dir.display()),
        key.public().to_file_text(),
    )?;
    let t0: i128 = 1_796_292_000_000_000_000;
    let clock = WallClock {
        realtime_offset_ns: t0 as i64,
    };
    let policy = TrailPolicy {
        checkpoint_interval: Duration::from_secs(60),
        max_file_bytes: 64 << 20,
        retention: None,
    };
    let config =
        ConfigDigest::of(&serde_json::json!({"documents": {"roots": ["/srv/portal/users"]}}));
    let mut w = TrailWriter::open(&dir, key, policy, clock, &config, t0)?;
    let tpl = "/srv/portal/users/{owner}/**".parse()?;
    let judge = Judge::new(["agent".to_string()]);
    let mut resolver = Resolver::templates(OwnershipRules::new(vec![tpl]));
    let users = ["alice", "bob", "carol", "dave", "erin", "frank", "grace"];
    for id in 0..total {
        let user = users[(id % 7) as usize];
        let owner = if id % 10 == 0 {
            users[((id + 1) % 7) as usize]
        } else {
            user
        };
        let ts = id * 1_000_000;
        let access = Access {
            id,
            pid: 4242,
            tid: 4243 + (id % 8) as u32,
            comm: "portal".into(),
            document: format!(
                "/srv/portal/users/{owner}/records/health-record-{}.pdf",
                id % 50
            ),
            bytes: 18_734,
            first_ts_ns: ts,
            last_ts_ns: ts + 200_000,
            evidence: vec![Evidence::Thread],
            unattributed: None,
            request: Some(RequestInfo {
                id,
                method: "GET".into(),
                target: format!("/docs/{owner}/records/health-record-{}.pdf", id % 50),
                identity: Some(Identity {
                    user: user.into(),
                    source: IdentitySource::TrustedHeader,
                    roles: Vec::new(),
                }),
                identity_problem: None,
                head_truncated: false,
                status: Some(200),
                tid: 4243 + (id % 8) as u32,
                fd: 9,
                ts_ns: ts,
                peer: None,
                client: None,
                session: None,
            }),
        };
        let ownership =
            resolver.resolve(&access.document, std::time::Instant::now(), &mut Vec::new());
        let judgement = judge.judge(&access, ownership);
        w.access(&access, &judgement)?;
        w.tick(t0 + i128::from(ts))?;
    }
    w.stop("sigterm", t0 + i128::from(total) * 1_000_000)?;
    println!("{} records in {}", w.written(), dir.display());
    Ok(())
}
