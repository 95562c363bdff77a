//! The typed event stream: what the correlator consumes, live (decoded from the ring buffer) or
//! replayed (from a trace file). One event per line in traces, so the format is part of the
//! contract: add fields with `#[serde(default)]`, never repurpose one.
use serde::{Deserialize, Serialize};

/// One observation, stamped with the kernel's monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `CLOCK_MONOTONIC` nanoseconds (the kernel's `bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread name as the kernel knew it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comm: String,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The process became a target: it exec'd a selected program, or was selected at start-up.
    ProcessExec,
    /// A target forked a new process (its fd table is a copy of the parent's).
    ProcessFork { child_pid: u32 },
    /// The target's thread-group leader exited.
    ProcessExit,
    /// An fd found open when the process became a target: its open predates Vigie.
    FdFound { fd: i32, found: FoundFd },
    /// A file opened under a document root (or a path the kernel could not rule out).
    FileOpen {
        fd: i32,
        /// Path bytes as passed to `openat`, see [`crate::paths::from_bytes`].
        path: String,
        /// The `dirfd` argument (`AT_FDCWD` = -100).
        dirfd: i32,
        /// The probe's capture cut the path short.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
        /// For a relative path: the directory it is relative to (cwd or dirfd), resolved live.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base: Option<String>,
        /// For a path longer than the probe's capture: the full path, from `/proc/<pid>/fd`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        full_path: Option<String>,
        /// `open(2)` flags.
        flags: u32,
    },
    /// `bytes` read from a document fd.
    FileRead { fd: i32, bytes: u64 },
    /// `sendfile(out_fd, in_fd)` moved `bytes` from a document.
    SendFile { out_fd: i32, in_fd: i32, bytes: u64 },
    /// A document fd was closed.
    FileClose { fd: i32 },
    /// A connection was accepted.
    SockAccept { fd: i32 },
    /// `bytes` read from a socket; `data` is the captured prefix.
    SockRead { fd: i32, bytes: u64, data: Payload },
    /// `bytes` written to a socket; `data` is the captured prefix.
    SockWrite { fd: i32, bytes: u64, data: Payload },
    /// A socket was closed.
    SockClose { fd: i32 },
    /// `count` events were lost in the kernel since the previous report, for `reason`.
    Lost { reason: String, count: u64 },
    /// Time passes (live: the reader's timer). Lets the pure correlator expire state without a
    /// clock of its own; recorded like any event so replay expires the same way.
    Tick,
}

/// Kinds of fds found by scanning `/proc/<pid>/fd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundFd {
    Document { path: String },
    Socket,
}

/// Captured bytes. Serialized as a string: printable ASCII as is, anything else `\xNN`-escaped
/// (readable in a trace, exact on the way back).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({:?})", escape(&self.0))
    }
}

fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hex = s.get(i + 2..i + 4).ok_or("truncated \\x escape")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad \\x escape")?);
                i += 4;
            }
            _ => return Err("bad escape".into()),
        }
    }
    Ok(out)
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&escape(&self.0))
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        unescape(&s).map(Payload).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_any_bytes() {
        let all: Vec<u8> = (0..=255).collect();
        let json = serde_json::to_string(&Payload(all.clone())).unwrap();
        let back: Payload = serde_json::from_str(&json).unwrap();
        assert_eq!(back.0, all);
    }

    #[test]
    fn payload_keeps_http_readable() {
        let json = serde_json::to_string(&Payload(b"GET / HTTP/1.1\r\n".to_vec())).unwrap();
        assert_eq!(json, r#""GET / HTTP/1.1\\x0d\\x0a""#);
    }

    #[test]
    fn payload_rejects_bad_escapes() {
        for bad in [r#""\\x4""#, r#""\\q""#, r#""\\xzz""#] {
            assert!(serde_json::from_str::<Payload>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_json_shape() {
        let ev = Event {
            ts_ns: 5,
            pid: 1,
            tid: 2,
            comm: "portal".into(),
            kind: EventKind::FileRead { fd: 7, bytes: 100 },
        };
        let json = serde_json::to_string(&ev).unwrap();
        assert_eq!(
            json,
            r#"{"ts_ns":5,"pid":1,"tid":2,"comm":"portal","kind":{"file_read":{"fd":7,"bytes":100}}}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), ev);
    }
}
