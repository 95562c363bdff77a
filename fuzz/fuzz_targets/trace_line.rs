//! Trace lines: `Event` JSON on its own, and the `TraceReader` on a file of arbitrary bytes behind
//! a valid header (the replay path for a hostile or damaged trace).
#![no_main]

use std::{io::Write as _, path::PathBuf, sync::LazyLock};

use libfuzzer_sys::fuzz_target;
use vigie::{
    config::Config,
    events::Event,
    replay::{OnCorrupt, TraceReader},
    sinks::{alerts::WallClock, trace::TraceHeader},
};

/// A valid header line, as `vigie run --record` writes it.
static HEADER: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut config = Config::default();
    config.documents.roots = vec!["/srv/portal/users".to_owned()];
    let header = TraceHeader::new(
        &config,
        WallClock {
            realtime_offset_ns: 1_700_000_000_000_000_000,
        },
    );
    let mut line = serde_json::to_vec(&header).expect("serializing a trace header");
    line.push(b'\n');
    line
});

/// The trace file, rewritten for each input: in memory when `/dev/shm` is there.
static FILE: LazyLock<PathBuf> = LazyLock::new(|| {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("vigie-fuzz-trace-{}.jsonl", std::process::id()))
});

/// Bounds the events read from one input (each line is at least one byte).
const MAX_EVENTS: usize = 100_000;

fuzz_target!(|data: &[u8]| {
    // One event line on its own: whatever parses must round-trip exactly.
    if let Ok(ev) = serde_json::from_slice::<Event>(data) {
        let json = serde_json::to_vec(&ev).expect("serializing an event");
        let back: Event = serde_json::from_slice(&json).expect("reading it back");
        assert_eq!(back, ev);
    }

    // The reader, on a trace whose body is the input, under both corruption policies.
    let mut file = std::fs::File::create(&*FILE).expect("creating the trace file");
    file.write_all(&HEADER).expect("writing the header");
    file.write_all(data).expect("writing the body");
    drop(file);
    for on_corrupt in [OnCorrupt::Stop, OnCorrupt::Skip] {
        let mut reader =
            TraceReader::open(std::slice::from_ref(&*FILE), on_corrupt).expect("a valid header");
        let mut events = 0;
        while let Ok(Some(_)) = reader.next_event() {
            events += 1;
            assert!(events <= MAX_EVENTS, "more events than lines");
        }
        assert!(reader.bytes_read <= data.len() as u64 + HEADER.len() as u64);
    }
});
