//! Decoding of raw ring-buffer records: any byte string is an event or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_common::{files::PATH_CAP, sockets::DATA_CAP};
use monitor_core::{decode, events::EventKind};

fuzz_target!(|data: &[u8]| {
    let Ok(ev) = decode::decode(data) else {
        return;
    };
    match &ev.kind {
        EventKind::SockRead { data: p, .. } | EventKind::SockWrite { data: p, .. } => {
            assert!(p.0.len() <= DATA_CAP);
        }
        // Each byte becomes at most `\xNN` (4 chars).
        EventKind::FileOpen { path, .. } => assert!(path.len() <= 4 * PATH_CAP),
        _ => {}
    }
    // Whatever decodes must survive the trace format exactly (record and replay).
    let json = serde_json::to_vec(&ev).expect("serializing a decoded event");
    let back: monitor_core::events::Event = serde_json::from_slice(&json).expect("reading it back");
    assert_eq!(back, ev);
});
