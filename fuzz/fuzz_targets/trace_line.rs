//! Trace lines: `Event` JSON on its own, and the trace reader on a stream of arbitrary bytes
//! behind a valid header (the replay path for a hostile or damaged trace).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use monitor_core::{
    events::Event,
    trace::{self, EventLines, Line, OnCorrupt, TraceHeader},
    walltime::WallClock,
};

/// A valid header line, as `vigie run --record` writes it (the configuration it records is
/// opaque to the format).
static HEADER: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let config = serde_json::json!({"documents": {"roots": ["/srv/portal/users"]}});
    let header = TraceHeader::new(
        &config,
        WallClock {
            realtime_offset_ns: 1_700_000_000_000_000_000,
        },
        "host".to_owned(),
        "6.18.0".to_owned(),
    );
    let mut line = serde_json::to_vec(&header).expect("serializing a trace header");
    line.push(b'\n');
    line
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
    let mut stream = HEADER.clone();
    stream.extend_from_slice(data);
    for on_corrupt in [OnCorrupt::Stop, OnCorrupt::Skip] {
        let mut reader = &stream[..];
        let _: TraceHeader<serde_json::Value> =
            trace::read_header(&mut reader, "fuzz").expect("a valid header");
        let mut lines = EventLines::new(reader, "fuzz".to_owned(), on_corrupt);
        let mut events = 0;
        loop {
            match lines.next_line() {
                Ok(Line::Event(_) | Line::Skipped { .. }) => {
                    events += 1;
                    assert!(events <= MAX_EVENTS, "more events than lines");
                }
                Ok(Line::End | Line::Truncated { .. }) | Err(_) => break,
            }
        }
        assert!(lines.bytes_read <= data.len() as u64);
    }
});
