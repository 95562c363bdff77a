//! The audit-trail reader on hostile bytes: `verify` (chain, signatures, file boundaries) and
//! `report` (access records, every output format) must answer, never panic. The input is cut
//! into up to four trail files at 0x1e bytes; the key is the one `synth_trail` signs with, so
//! the seeds (real trails from it) reach the signature and restart checks.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use monitor_core::trail::{
    key::{PublicKey, TrailKey},
    report::{self, Query, Window},
    verify::{TrailFile, verify},
};

static KEY: LazyLock<PublicKey> = LazyLock::new(|| TrailKey::from_seed([42; 32]).public());

fuzz_target!(|data: &[u8]| {
    let files: Vec<TrailFile<'_>> = data
        .split(|b| *b == 0x1e)
        .take(4)
        .enumerate()
        .map(|(i, bytes)| TrailFile {
            name: format!("trail-{i:08}.jsonl"),
            bytes,
        })
        .collect();
    let r = verify(&files, &KEY);
    let _ = r.to_string();
    let _ = r.outcome.exit_code();
    let (records, _) = report::access_records(data.split(|b| *b == b'\n'));
    let window = Window::default();
    for query in [Query::Breach, Query::Subject("alice".into())] {
        let a = report::answer(&records, &query, &window, None, String::new());
        let _ = report::table(&a);
        let _ = report::csv(&a);
        let _ = report::html(&a);
    }
});
