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
    #[serde(default, skip_serializing_if = "Comm::is_empty")]
    pub comm: Comm,
    /// In a Go target whose layout Vigie found: the goroutine the thread was running (0: the
    /// Go runtime's own stack, on no goroutine's behalf). Go moves goroutines between threads,
    /// so for such a process the goroutine, not the thread, is what serves one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goid: Option<u64>,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The process became a target: it exec'd a selected program, or was selected at start-up.
    ProcessExec,
    /// A target forked a new process (its fd table is a copy of the parent's).
    ProcessFork { child_pid: u32 },
    /// The program the process runs (since its exec, or when it was adopted) is built on a
    /// runtime that multiplexes requests over OS threads: its threads never stand for its
    /// requests (DESIGN.md §4). Found live from the executable, recorded so replay needs none.
    RuntimeFound { runtime: Runtime },
    /// The target's thread-group leader exited.
    ProcessExit,
    /// Another thread of the target exited (`tid`).
    ThreadExit,
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
        /// `path` is the kernel's exact path of the opened file (`bpf_d_path` in `file_open`):
        /// absolute, symlinks and `..` resolved. Otherwise it is the `openat` argument as written.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        exact: bool,
    },
    /// `bytes` read from a document fd.
    FileRead {
        fd: i32,
        bytes: u64,
        /// Content fingerprint of the first bytes read, computed in the kernel
        /// (`monitor_common::files::fingerprint`); absent when fewer than 16 bytes were read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fp: Option<u64>,
        /// The document's size at the read (with a fingerprint only): a response body of
        /// another length is not this document.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    /// `calls` more reads of document fd `fd` by this thread, `bytes` in all, each right after
    /// the previous one and the first right after the thread's last [`EventKind::FileRead`] of
    /// `fd`, with no event of the thread in between but writes inside a response body that did
    /// not complete it ([`EventKind::SockWriteMore`], or a [`EventKind::SockWrite`] of such): counted in the kernel rather than sent one
    /// by one (no fingerprint: the first read has it). The time is the last read's. Traces
    /// recorded before the probes counted reads have a `FileRead` per read instead.
    FileReadMore { fd: i32, bytes: u64, calls: u32 },
    /// A document fd was mapped readable (`mmap`), `bytes` long: read through memory, without
    /// read syscalls. The mapping outlives a close of the fd.
    FileMap { fd: i32, bytes: u64 },
    /// `sendfile(out_fd, in_fd)` moved `bytes` from a document.
    SendFile { out_fd: i32, in_fd: i32, bytes: u64 },
    /// A document fd was closed.
    FileClose { fd: i32 },
    /// A connection was accepted, from `peer` (read from the kernel's socket at the accept).
    SockAccept {
        fd: i32,
        /// Absent in traces recorded before Vigie read peers, and when the kernel's socket
        /// could not be read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<crate::client::Endpoint>,
    },
    /// `bytes` read from a socket; `data` is the captured prefix.
    SockRead { fd: i32, bytes: u64, data: Payload },
    /// `bytes` written to a socket; `data` is the captured prefix, cut at the end of the
    /// response head: body bytes (document content) are never kept, only their fingerprint.
    SockWrite {
        fd: i32,
        bytes: u64,
        data: Payload,
        /// Fingerprint of the first bytes of the response body, when this write carries them
        /// (see [`crate::fingerprint`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_fp: Option<u64>,
        /// Where the write's first byte is in the connection's output, as the probes count it
        /// (from a base of their own): plain connections only, not TLS plaintext. Absent in
        /// traces recorded before the probes counted body writes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<u64>,
    },
    /// `calls` more writes on connection `fd` by this thread, `bytes` in all, inside the body
    /// of the response being written and past its first bytes, each right after the previous
    /// one with no event of the thread in between but counted document reads, the first after
    /// the thread's last [`EventKind::SockWrite`] of `fd`: counted in the kernel once the
    /// correlator said where the body ends ([`crate::correlate::BodySpan`]), rather than sent one
    /// by one (nothing of them would have been kept: a body is cut). The time is the last
    /// write's.
    SockWriteMore { fd: i32, bytes: u64, calls: u32 },
    /// A socket was closed.
    SockClose { fd: i32 },
    /// `bytes` read from a connection Vigie cannot read (see `tls::ConnectionGate`): TLS
    /// ciphertext of a library that is not hooked, or HTTP/2. Nothing of it is kept; the
    /// thread that read it may now serve a request Vigie cannot see.
    Unreadable {
        fd: i32,
        bytes: u64,
        why: Unreadable,
    },
    /// What an HTTP/2 connection's frames told (see [`crate::http2`]): decoded live, its heads
    /// redacted; the connection's raw reads and writes are not passed on.
    Http2 { fd: i32, item: Http2Item },
    /// The portal's session store says session `session` (the cookie value as the redactor
    /// hashed it) is `user`'s: a session Vigie did not see created. Found live, recorded so
    /// that replay needs no store.
    SessionFound { session: String, user: String },
    /// The process runs a Go program (found in its executable when it became a target): its
    /// threads take turns running goroutines, so a thread scopes no request. `goroutines`: its
    /// events carry goroutine ids from now on, which do.
    GoRuntime { version: String, goroutines: bool },
    /// `count` events were lost in the kernel since the previous report, for `reason`.
    Lost { reason: String, count: u64 },
    /// Time passes (live: the reader's timer). Lets the pure correlator expire state without a
    /// clock of its own; recorded like any event so replay expires the same way.
    Tick,
    /// An ownership backend's answer (mapping file, database), recorded before the event whose
    /// accesses needed it; replay gives it to the ownership resolver instead of asking again.
    /// Never given to the correlator.
    OwnershipFact(crate::ownership::fact::Fact),
}

/// Runtimes that schedule many tasks (requests) over few OS threads, recognised at exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// A Go program: goroutines move between OS threads at any blocking call.
    Go,
    /// Node.js: one event loop thread serves every connection, libuv pool threads do file I/O.
    Node,
}

/// A thread's name (`comm`), as text. Shared rather than copied: every event carries one, a
/// portal's threads have a handful of names, and the decoder hands out the same one for the
/// same kernel bytes, so an event costs no allocation for its name. In traces it is a plain
/// string, as a `String` was.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Comm(std::sync::Arc<str>);

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Comm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Comm;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a thread name")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Comm, E> {
                Ok(Comm(v.into()))
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl Comm {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Comm {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Comm {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<String> for Comm {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

/// Why a connection is unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unreadable {
    /// TLS ciphertext: the target's TLS library is not hooked.
    Tls,
    /// HTTP/2 frames Vigie cannot follow: the connection was lost (see [`crate::http2::Lost`]),
    /// and its HPACK state is unknown for good. (Traces recorded before HTTP/2 was parsed have
    /// every HTTP/2 connection so.)
    Http2,
}

/// What an HTTP/2 connection's frames tell the correlator (`crate::http2` decodes them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Http2Item {
    /// Stream `stream`'s request headers, as an HTTP/1.1 head (`:method`, `:path`, then the
    /// other fields; `:authority` as `host`), redacted before anything keeps it.
    Request { stream: u32, head: Payload },
    /// Its final response headers, as an HTTP/1.1 status line and fields (redacted).
    Response { stream: u32, head: Payload },
    /// `bytes` of its response body went out in DATA frames; `body_fp`: the fingerprint of the
    /// body's first bytes, on the frame that completed them.
    Data {
        stream: u32,
        bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_fp: Option<u64>,
    },
    /// The request body of the portal's login (`POST` to `identity.session`'s `login_path`),
    /// read whole (END_STREAM) and at most [`crate::http2::LOGIN_FORM_CAP`] bytes: the form
    /// whose user field names the user its response's session cookie is bound to. Redacted
    /// before anything keeps it: every value but the user field's is masked.
    LoginForm { stream: u32, form: Payload },
    /// The stream is over (the response's END_STREAM, or a reset from either side).
    End { stream: u32 },
    /// The connection cannot be followed any more, for good: every stream ends.
    Lost { why: Http2Lost },
}

/// Why an HTTP/2 connection was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Http2Lost {
    /// Bytes the target read or wrote that the capture did not hold, where they mattered (a
    /// frame header, a header block).
    Uncaptured,
    /// Events were lost in the kernel: a read or write of this connection may be among them.
    EventsLost,
    /// An HPACK block failed to decode: the dynamic table is unknown from now on.
    Hpack,
    /// Frames that break the protocol (a bad preface, a CONTINUATION out of place, a header
    /// block or frame over Vigie's bounds, too many streams).
    Framing,
    /// Header fields no HTTP/1 head can carry (line breaks or NUL in a name or value, no
    /// `:method` or `:path`): Vigie does not guess what the server made of them.
    InvalidHeaders,
    /// An HTTP/1.1 connection switched to HTTP/2 (`Upgrade: h2c`, answered `101`, or the
    /// client preface after HTTP/1 requests): not followed, unreadable from then on.
    H2cUpgrade,
    /// A connection open before Vigie started whose first read Vigie saw was whole HTTP/2
    /// frames: its dynamic tables are unknown, it is never followed.
    Joined,
}

impl Http2Lost {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Http2Lost::Uncaptured => "uncaptured",
            Http2Lost::EventsLost => "events_lost",
            Http2Lost::Hpack => "hpack_error",
            Http2Lost::Framing => "framing",
            Http2Lost::InvalidHeaders => "invalid_headers",
            Http2Lost::H2cUpgrade => "h2c_upgrade",
            Http2Lost::Joined => "joined",
        }
    }
}

/// Kinds of fds found by scanning `/proc/<pid>/fd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundFd {
    Document { path: String },
    Socket,
}

/// Captured bytes. Serialized as a JSON string when they are UTF-8 (the usual case for HTTP
/// heads: readable in a trace, parsed in one pass), else as `{"b64": "..."}`. Exact either way.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({:?})", String::from_utf8_lossy(&self.0))
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        use serde::ser::SerializeMap as _;
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("b64", &B64.encode(&self.0))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Payload;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, or {\"b64\": ...} for bytes that are not UTF-8")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Payload, E> {
                Ok(Payload(v.as_bytes().to_vec()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Payload, E> {
                Ok(Payload(v.into_bytes()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Payload, A::Error> {
                use base64::Engine as _;
                let mut bytes = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key != "b64" || bytes.is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "unexpected payload field {key:?}"
                        )));
                    }
                    let text = map.next_value::<std::borrow::Cow<'de, str>>()?;
                    bytes = Some(
                        B64.decode(text.as_bytes())
                            .map_err(serde::de::Error::custom)?,
                    );
                }
                bytes
                    .map(Payload)
                    .ok_or_else(|| serde::de::Error::missing_field("b64"))
            }
        }
        d.deserialize_any(Visitor)
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
        assert_eq!(json, r#""GET / HTTP/1.1\r\n""#);
        let binary = serde_json::to_string(&Payload(vec![0xff, 0x00, b'a'])).unwrap();
        assert_eq!(binary, r#"{"b64":"/wBh"}"#);
    }

    #[test]
    fn payload_rejects_malformed_input() {
        for bad in [
            r#"{"b64":"!!"}"#,
            r#"{"hex":"00"}"#,
            r#"{}"#,
            r#"{"b64":"AA==","b64":"AA=="}"#,
            "12",
            "null",
        ] {
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
            goid: None,
            kind: EventKind::FileRead {
                fd: 7,
                bytes: 100,
                fp: None,
                size: None,
            },
        };
        let json = serde_json::to_string(&ev).unwrap();
        assert_eq!(
            json,
            r#"{"ts_ns":5,"pid":1,"tid":2,"comm":"portal","kind":{"file_read":{"fd":7,"bytes":100}}}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), ev);
    }
}
