//! The trace format (`vigie.trace`, version [`FORMAT`]): JSON lines, a [`TraceHeader`] first,
//! then each [`Event`] exactly as the correlator consumed it, ownership facts included. Both
//! sides live here: [`encode_event`] writes a line, [`read_header`] and [`EventLines`] read a
//! stream back. Files, rotation and retention are the `vigie` crate's (`sinks::trace` writes,
//! `replay` reads several files in order).
//!
//! The header is generic over the configuration it records: this crate does not know the
//! configuration file's schema, only that it serializes.
use std::io::BufRead;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    events::{Comm, Event, EventKind},
    ownership::fact::Fact,
    walltime::WallClock,
};

/// Trace format version. Readers refuse other versions.
pub const FORMAT: u32 = 1;

/// Longest header line read: a header is a few KiB; a huge first "line" is not a trace.
const MAX_HEADER_LINE: u64 = 1 << 20;

/// First line of every trace file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TraceHeader<C> {
    /// Format version: always [`FORMAT`] for files this build writes.
    pub vigie_trace: u32,
    pub vigie_version: String,
    pub host: String,
    pub kernel: String,
    /// Turns event timestamps (CLOCK_MONOTONIC) into wall time, as the live run did.
    pub clock: WallClock,
    /// FNV-1a 64 of the resolved config below, in hex: tells at a glance whether two traces
    /// were recorded under the same configuration.
    pub config_digest: String,
    /// The resolved configuration of the live run: replay judges with it unless told otherwise.
    pub config: C,
    /// Sequence number of this file within the recording (rotation).
    pub file_seq: u64,
}

impl<C: Serialize + Clone> TraceHeader<C> {
    /// The header of a new recording; `host` and `kernel` are read by the caller.
    pub fn new(config: &C, clock: WallClock, host: String, kernel: String) -> Self {
        Self {
            vigie_trace: FORMAT,
            vigie_version: env!("CARGO_PKG_VERSION").to_string(),
            host,
            kernel,
            clock,
            config_digest: config_digest(config),
            config: config.clone(),
            file_seq: 0,
        }
    }
}

/// FNV-1a 64 over the config's canonical JSON.
pub fn config_digest<C: Serialize>(config: &C) -> String {
    let json = serde_json::to_vec(config).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Appends `ev` as one line (JSON and `\n`) to `line`.
pub fn encode_event(line: &mut Vec<u8>, ev: &Event) -> std::io::Result<()> {
    serde_json::to_writer(&mut *line, ev).map_err(std::io::Error::other)?;
    line.push(b'\n');
    Ok(())
}

/// The trace line that records an ownership fact, at `ts_ns` (it precedes the event whose
/// accesses needed it).
pub fn fact_event(ts_ns: u64, fact: Fact) -> Event {
    Event {
        ts_ns,
        pid: 0,
        tid: 0,
        comm: Comm::default(),
        goid: None,
        kind: EventKind::OwnershipFact(fact),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a Vigie trace (the first line is not a trace header: {reason})")]
    NotATrace { path: String, reason: String },
    #[error(
        "{path}: trace format version {found}, this Vigie reads version {FORMAT}: use a matching Vigie release"
    )]
    Version { path: String, found: u64 },
    #[error("{path}:{line}: corrupt line ({reason}); pass --on-corrupt skip to skip such lines")]
    Corrupt {
        path: String,
        line: u64,
        reason: String,
    },
    #[error("no trace files given")]
    Empty,
}

/// What to do with a line in the middle of a trace that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCorrupt {
    /// Stop with an error naming the file and line.
    Stop,
    /// Warn, count it, and go on.
    Skip,
}

/// Reads the header line of the trace `path` from `reader`, which is left at the first event.
pub fn read_header<C: DeserializeOwned>(
    reader: &mut impl BufRead,
    path: &str,
) -> Result<TraceHeader<C>, TraceError> {
    let mut first = Vec::new();
    let n = std::io::Read::take(&mut *reader, MAX_HEADER_LINE)
        .read_until(b'\n', &mut first)
        .map_err(|source| TraceError::Io {
            path: path.to_string(),
            source,
        })?;
    if n == 0 {
        return Err(TraceError::NotATrace {
            path: path.to_string(),
            reason: "empty file".into(),
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(&first).map_err(|e| TraceError::NotATrace {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
    let Some(version) = value.get("vigie_trace").and_then(serde_json::Value::as_u64) else {
        return Err(TraceError::NotATrace {
            path: path.to_string(),
            reason: "no vigie_trace field".into(),
        });
    };
    if version != u64::from(FORMAT) {
        return Err(TraceError::Version {
            path: path.to_string(),
            found: version,
        });
    }
    serde_json::from_value(value).map_err(|e| TraceError::NotATrace {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// What the next line of a stream held.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "returned by value once per line and matched at once: boxing would add an allocation per event"
)]
pub enum Line {
    Event(Event),
    /// The writer was killed mid-line: everything before is intact, and this stream is over.
    Truncated {
        bytes: usize,
    },
    /// A line that does not parse, skipped under [`OnCorrupt::Skip`].
    Skipped {
        reason: String,
    },
    End,
}

/// The events of one trace stream, after its header.
pub struct EventLines<R> {
    reader: R,
    path: String,
    /// Line number of the last line read (the header is line 1).
    pub line_no: u64,
    buf: Vec<u8>,
    on_corrupt: OnCorrupt,
    pub bytes_read: u64,
}

impl<R: BufRead> EventLines<R> {
    /// `reader` is positioned after the header (see [`read_header`]).
    pub fn new(reader: R, path: String, on_corrupt: OnCorrupt) -> Self {
        Self {
            reader,
            path,
            line_no: 1,
            buf: Vec::with_capacity(1024),
            on_corrupt,
            bytes_read: 0,
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The next line; an error only for I/O or, under [`OnCorrupt::Stop`], a corrupt line.
    pub fn next_line(&mut self) -> Result<Line, TraceError> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| TraceError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.bytes_read += n as u64;
        if n == 0 {
            return Ok(Line::End);
        }
        self.line_no += 1;
        if self.buf.last() != Some(&b'\n') {
            return Ok(Line::Truncated { bytes: n });
        }
        match serde_json::from_slice::<Event>(&self.buf) {
            Ok(ev) => Ok(Line::Event(ev)),
            Err(e) => match self.on_corrupt {
                OnCorrupt::Stop => Err(TraceError::Corrupt {
                    path: self.path.clone(),
                    line: self.line_no,
                    reason: e.to_string(),
                }),
                OnCorrupt::Skip => Ok(Line::Skipped {
                    reason: e.to_string(),
                }),
            },
        }
    }
}
