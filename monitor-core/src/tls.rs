//! TLS: which TLS stack a target uses, and keeping ciphertext away from the HTTP parser.
//!
//! Vigie reads HTTPS in plaintext where the target's TLS library can be hooked: OpenSSL's
//! `libssl` (uprobes on `SSL_read`/`SSL_write` and their `_ex` forms, see the eBPF `tls`
//! probes). The plaintext arrives as ordinary socket reads and writes of the connection, so the
//! redactor, HTTP parser, identity sources and correlator need nothing of their own. Other TLS
//! stacks (GnuTLS, NSS, Java's JSSE, Go's crypto/tls, rustls, BoringSSL linked in) are not
//! readable: a target that maps one is reported at start-up, and each connection whose
//! ciphertext reaches Vigie without plaintext is counted and kept from the correlator
//! ([`ConnectionGate`], which also keeps out HTTP/2 until it is parsed), never silently
//! parsed as garbage.
//!
//! This module is pure (maps text in, classifications out; events in, decisions out); the live
//! side that reads `/proc` and attaches the uprobes is the `vigie` binary's `tls` module.
use std::collections::{HashMap, HashSet};

use crate::events::{Event, EventKind, Unreadable};

/// A TLS stack found in a target's memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stack {
    /// OpenSSL's `libssl` (3.x, or 1.1: the hooked functions have the same prototypes).
    OpenSsl,
    /// A stack whose plaintext Vigie cannot read; the name is for the start-up line.
    Unreadable(&'static str),
}

/// The TLS stack a mapped file is, from its file name. `libssl3.so` is NSS's, not OpenSSL's.
pub fn classify(path: &str) -> Option<Stack> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    if name.starts_with("libssl.so") {
        return Some(Stack::OpenSsl);
    }
    const UNREADABLE: &[(&str, &str)] = &[
        ("libgnutls.so", "GnuTLS"),
        ("libssl3.so", "NSS"),
        ("libnss3.so", "NSS"),
        ("libwolfssl.so", "wolfSSL"),
        ("libmbedtls.so", "Mbed TLS"),
        ("libboringssl", "BoringSSL"),
        ("libjvm.so", "Java (JSSE)"),
    ];
    UNREADABLE
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, stack)| Stack::Unreadable(stack))
}

/// An executable file mapping of a process (a line of `/proc/<pid>/maps` with `x` in its
/// permissions and a path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub path: String,
    /// `major:minor` of the file's device, as the maps line gives it.
    pub dev: String,
    pub inode: u64,
}

/// The executable file mappings in the text of `/proc/<pid>/maps`, each file once.
pub fn executable_mappings(maps: &str) -> Vec<Mapped> {
    let mut out: Vec<Mapped> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path (the path may contain spaces)
        let mut fields = line.splitn(6, ' ');
        let (Some(_), Some(perms), Some(_), Some(dev), Some(inode), Some(path)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let path = path.trim_start();
        if !perms.contains('x') || !path.starts_with('/') {
            continue;
        }
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        if inode == 0 || out.iter().any(|m| m.inode == inode && m.dev == dev) {
            continue;
        }
        out.push(Mapped {
            path: path.to_string(),
            dev: dev.to_string(),
            inode,
        });
    }
    out
}

/// A TLS record header of a handshake message, as the first bytes a client sends (its
/// ClientHello): content type 22, version 3.x. No HTTP/1 request or HTTP/2 preface starts so.
pub fn is_tls_handshake(data: &[u8]) -> bool {
    matches!(data, [0x16, 0x03, 0x00..=0x04, ..])
}

/// Keeps the bytes of connections Vigie cannot read away from the redactor, the HTTP parser,
/// the trace and the correlator. A connection whose first captured read is a TLS handshake
/// record (a ClientHello: its TLS library is not hooked) is unreadable until the socket is
/// closed (or its number is reused by an accept): each of its reads becomes an
/// [`EventKind::Unreadable`] (no bytes kept; the correlator stops presuming that the thread
/// serves one visible request at a time), its writes are dropped. Hooked TLS connections never
/// show their ciphertext (the probes do not capture a TLS socket's syscalls), so what reaches
/// this gate from them is plaintext. The documents such connections serve are then judged
/// `unattributed`, never guessed. (HTTP/2 is followed before this gate, by
/// [`crate::http2::Demux`].)
///
/// Pure and deterministic. Live runs drop before recording, so a trace holds no ciphertext,
/// and replay needs no gate.
#[derive(Debug, Default)]
pub struct ConnectionGate {
    /// Connections (pid, fd) that have had a capture: only a connection's first read can be a
    /// ClientHello (a body chunk that happens to start so must not blind the rest).
    spoken: HashSet<(u32, i32)>,
    unreadable: HashMap<(u32, i32), Unreadable>,
    /// Connections found unreadable so far: TLS ciphertext.
    pub tls_connections: u64,
}

impl ConnectionGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `ev` must be dropped; a read of an unreadable connection is rewritten in place
    /// to [`EventKind::Unreadable`] instead (then `false`). Follows connections' lifetimes.
    pub fn drops(&mut self, ev: &mut Event) -> bool {
        let pid = ev.pid;
        match &ev.kind {
            EventKind::SockRead { fd, data, bytes } => {
                let (fd, bytes) = (*fd, *bytes);
                let key = (pid, fd);
                let why = match self.unreadable.get(&key) {
                    Some(why) => *why,
                    None if !self.spoken.insert(key) => return false,
                    None if is_tls_handshake(&data.0) => {
                        self.tls_connections += 1;
                        Unreadable::Tls
                    }
                    None => return false,
                };
                self.unreadable.insert(key, why);
                ev.kind = EventKind::Unreadable { fd, bytes, why };
                false
            }
            EventKind::SockWrite { fd, .. } | EventKind::SockWriteMore { fd, .. } => {
                self.unreadable.contains_key(&(pid, *fd))
            }
            EventKind::SockAccept { fd, .. } | EventKind::SockClose { fd } => {
                self.spoken.remove(&(pid, *fd));
                self.unreadable.remove(&(pid, *fd));
                false
            }
            EventKind::ProcessExit => {
                self.spoken.retain(|(p, _)| *p != pid);
                self.unreadable.retain(|(p, _), _| *p != pid);
                false
            }
            _ => false,
        }
    }

    /// Connections followed at the moment (for bounds checks in tests and metrics).
    pub fn tracked(&self) -> usize {
        self.spoken.len()
    }
}

/// Whether `ev` is a read the gate made unreadable.
#[cfg(test)]
fn unreadable(ev: &Event) -> bool {
    matches!(ev.kind, EventKind::Unreadable { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Payload;

    fn ev(pid: u32, kind: EventKind) -> Event {
        Event {
            ts_ns: 1,
            pid,
            tid: pid,
            goid: None,
            comm: "t".into(),
            kind,
        }
    }

    fn read(fd: i32, data: &[u8]) -> EventKind {
        EventKind::SockRead {
            fd,
            bytes: data.len() as u64,
            data: Payload(data.to_vec()),
        }
    }

    const HELLO: &[u8] = &[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];

    #[test]
    fn libraries_are_classified_by_file_name() {
        let cases = [
            (
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                Some(Stack::OpenSsl),
            ),
            ("/opt/app/lib/libssl.so.1.1", Some(Stack::OpenSsl)),
            (
                "/usr/lib/x86_64-linux-gnu/libssl.so.3 (deleted)",
                Some(Stack::OpenSsl),
            ),
            (
                "/usr/lib/x86_64-linux-gnu/libssl3.so",
                Some(Stack::Unreadable("NSS")),
            ),
            (
                "/usr/lib/x86_64-linux-gnu/libgnutls.so.30.34.3",
                Some(Stack::Unreadable("GnuTLS")),
            ),
            (
                "/usr/lib/jvm/java-17/lib/server/libjvm.so",
                Some(Stack::Unreadable("Java (JSSE)")),
            ),
            ("/usr/lib/x86_64-linux-gnu/libcrypto.so.3", None),
            ("/usr/lib/x86_64-linux-gnu/libc.so.6", None),
        ];
        for (path, want) in cases {
            assert_eq!(classify(path), want, "{path}");
        }
    }

    #[test]
    fn executable_file_mappings_once_each() {
        let maps = "\
55d0c8a00000-55d0c8a2e000 r--p 00000000 08:01 131 /usr/sbin/nginx
55d0c8a2e000-55d0c8b3e000 r-xp 0002e000 08:01 131 /usr/sbin/nginx
7f10a0000000-7f10a0021000 rw-p 00000000 00:00 0
7f10a1000000-7f10a1060000 r-xp 00020000 08:01 2044 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f10a1060000-7f10a1070000 r-xp 00080000 08:01 2044 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f10a2000000-7f10a2001000 r-xp 00000000 00:05 77 /memfd:jit (deleted)
7ffd1a3f0000-7ffd1a3f2000 r-xp 00000000 00:00 0                          [vdso]
7f10a3000000-7f10a3001000 r-xp 00000000 08:01 900 /opt/my app/lib ssl.so
";
        let got = executable_mappings(maps);
        let paths: Vec<&str> = got.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/usr/sbin/nginx",
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/memfd:jit (deleted)",
                "/opt/my app/lib ssl.so"
            ]
        );
        assert_eq!(got[1].inode, 2044);
        assert_eq!(got[1].dev, "08:01");
        assert!(executable_mappings("garbage\n\n1 2 3\n").is_empty());
    }

    #[test]
    fn a_client_hello_first_blinds_the_connection_until_close() {
        let mut gate = ConnectionGate::new();
        let gated = |gate: &mut ConnectionGate, mut e: Event| {
            let dropped = gate.drops(&mut e);
            (dropped, unreadable(&e))
        };
        assert_eq!(gated(&mut gate, ev(1, read(5, HELLO))), (false, true));
        // Later records of it (application data) too; writes are dropped.
        assert_eq!(
            gated(&mut gate, ev(1, read(5, &[0x17, 0x03, 0x03, 0, 5]))),
            (false, true)
        );
        let write = EventKind::SockWrite {
            fd: 5,
            bytes: 5,
            data: Payload(vec![0x17, 0x03, 0x03]),
            body_fp: None,
            at: None,
        };
        assert_eq!(gated(&mut gate, ev(1, write)), (true, false));
        // Another process's fd 5, another fd: untouched.
        let get = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(gated(&mut gate, ev(2, read(5, get))), (false, false));
        assert_eq!(gated(&mut gate, ev(1, read(6, get))), (false, false));
        assert_eq!(gate.tls_connections, 1);
        // The number reused by a plain connection: read again.
        let close = ev(1, EventKind::SockClose { fd: 5 });
        assert_eq!(gated(&mut gate, close), (false, false));
        assert_eq!(gated(&mut gate, ev(1, read(5, get))), (false, false));
        assert_eq!(
            gated(&mut gate, ev(1, EventKind::ProcessExit)),
            (false, false)
        );
        assert_eq!(
            gate.tracked(),
            1,
            "process 2's connection is still followed"
        );
    }

    #[test]
    fn only_a_connections_first_read_can_be_a_client_hello() {
        let mut gate = ConnectionGate::new();
        let post = b"POST /up HTTP/1.1\r\nContent-Length: 9\r\n\r\n";
        let mut e = ev(1, read(5, post));
        assert!(!gate.drops(&mut e) && !unreadable(&e));
        // A body chunk that starts like a TLS record: still the same plain connection.
        let mut e = ev(1, read(5, HELLO));
        assert!(!gate.drops(&mut e) && !unreadable(&e));
        assert_eq!(gate.tls_connections, 0);
        assert!(!is_tls_handshake(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!is_tls_handshake(&[0x16, 0x03]));
        assert!(!is_tls_handshake(&[0x16, 0x02, 0x01]));
    }
}
