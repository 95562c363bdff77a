//! Reading what `vigie run --record` wrote: the files of a trace directory, their events, the
//! socket payloads they captured.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;

/// The files of a trace directory, in recording order; none while the directory does not exist
/// yet (a test polling a recording Vigie has just started).
pub fn trace_files(dir: &Path) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("reading the trace directory {}: {e}", dir.display()),
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("trace directory entry").path())
        .collect();
    files.sort();
    files
}

/// The events of a trace directory (each file's header skipped).
pub fn trace_events(dir: &Path) -> Vec<Value> {
    trace_files(dir)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .expect("reading a trace file")
                .lines()
                .skip(1)
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// Every captured socket payload of the trace files, decoded (a string, or base64), and the
/// HTTP/2 streams' heads.
pub fn trace_payloads(files: &[PathBuf]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).expect("reading a trace file");
        for line in text.lines().skip(1) {
            let ev: Value = serde_json::from_str(line).expect("a trace event is JSON");
            let mut push = |payload: &Value| match payload {
                Value::String(s) => out.push(s.as_bytes().to_vec()),
                Value::Object(o) => out.push(
                    base64::engine::general_purpose::STANDARD
                        .decode(o["b64"].as_str().expect("b64 payload"))
                        .expect("base64 payload"),
                ),
                _ => {}
            };
            // HTTP/2 streams' heads and login forms, as decoded and redacted live.
            let item = &ev["kind"]["http2"]["item"];
            push(&item["request"]["head"]);
            push(&item["response"]["head"]);
            push(&item["login_form"]["form"]);
            for k in ["sock_read", "sock_write"] {
                push(&ev["kind"][k]["data"]);
            }
        }
    }
    out
}

/// Whether `needle` occurs in `hay`.
pub fn bytes_contain(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
