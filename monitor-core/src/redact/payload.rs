//! Payloads of sockets that carry neither HTTP nor FastCGI (a cluster's IPC channel, database
//! and cache connections) are not kept: their kind and sizes are all Vigie needs, and they may
//! carry anything (session ids in IPC messages, passwords in a database handshake, cached
//! documents). Decided per connection, from the first captured bytes of either direction; a
//! connection joined in the middle of an HTTP exchange is kept from the first bytes that start
//! a request or a response.
use crate::{fastcgi, http, idmap::IdMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carries {
    /// HTTP or FastCGI, or accepted by a target (a server socket speaks its server protocol).
    Kept,
    /// Nothing seen yet shows HTTP or FastCGI.
    Other,
}

/// Which connections' payloads are kept.
#[derive(Debug, Default)]
pub struct PayloadGate {
    conns: IdMap<(u32, i32), Carries>,
}

impl PayloadGate {
    /// Accepted by `pid`: a connection to its server.
    pub fn accepted(&mut self, pid: u32, fd: i32) {
        self.conns.insert((pid, fd), Carries::Kept);
    }

    /// The captured bytes `data` that `pid` read from (`read`) or wrote to socket `fd`: cleared
    /// unless the connection carries HTTP or FastCGI. Returns whether they were kept.
    pub fn pass(&mut self, pid: u32, fd: i32, read: bool, data: &mut Vec<u8>) -> bool {
        if data.is_empty() {
            return true;
        }
        let carries = self.conns.entry((pid, fd)).or_insert(Carries::Other);
        if *carries == Carries::Other && starts_exchange(data, read) {
            *carries = Carries::Kept;
        }
        if *carries == Carries::Other {
            data.clear();
            return false;
        }
        true
    }

    pub fn forget(&mut self, pid: u32, fd: i32) {
        self.conns.remove(&(pid, fd));
    }

    pub fn forget_process(&mut self, pid: u32) {
        self.conns.retain(|(p, _), _| *p != pid);
    }
}

/// Bytes that start an HTTP request (`METHOD target HTTP/x`, the version unseen when the
/// capture cuts the line) or response (`HTTP/x`), or a FastCGI request (read) or record of
/// an application's reply (written).
fn starts_exchange(data: &[u8], read: bool) -> bool {
    if data.starts_with(b"HTTP/1.") || data.starts_with(b"HTTP/2") {
        return true;
    }
    if http::looks_like_request_start(data) {
        // A cache's inline command (`GET key\r\n`) has a method too: a complete request line
        // names its HTTP version.
        return match data.iter().position(|&b| b == b'\n') {
            Some(end) => memchr::memmem::find(&data[..end], b" HTTP/").is_some(),
            None => true,
        };
    }
    if read {
        fastcgi::starts_fastcgi(data)
    } else {
        // Version 1, then STDOUT, STDERR or END_REQUEST, for a request id other than 0.
        data.len() >= 4
            && data[0] == 1
            && matches!(data[1], 3 | 6 | 7)
            && (data[2] != 0 || data[3] != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(g: &mut PayloadGate, fd: i32, read: bool, data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        g.pass(1, fd, read, &mut v);
        v
    }

    #[test]
    fn other_protocols_lose_their_payload_http_keeps_it() {
        let mut g = PayloadGate::default();
        // Node.js cluster IPC, Redis, PostgreSQL: sizes only.
        let ipc = br#"{"cmd":"NODE_CLUSTER","sid":"s3cr3t"}"#;
        assert!(pass(&mut g, 3, true, ipc).is_empty());
        assert!(pass(&mut g, 4, false, b"*2\r\n$3\r\nGET\r\n$7\r\nsess:42\r\n").is_empty());
        assert!(pass(&mut g, 5, false, b"GET sess:42\r\n").is_empty());
        assert!(pass(&mut g, 6, false, b"\0\0\0\x08\x04\xd2\x16\x2f").is_empty());
        // The portal calling an internal HTTP service: kept (and redacted elsewhere).
        let call = b"GET /check?sid=*** HTTP/1.1\r\n\r\n";
        assert_eq!(pass(&mut g, 7, false, call), call);
        assert_eq!(
            pass(&mut g, 7, true, b"body of a reply"),
            b"body of a reply"
        );
        // Joined mid-exchange: kept from the first request on.
        assert!(pass(&mut g, 8, true, b"tail of a body").is_empty());
        let head = b"GET /docs/a HTTP/1.1\r\n";
        assert_eq!(pass(&mut g, 8, true, head), head);
        // Accepted connections are the server's.
        g.accepted(1, 9);
        assert_eq!(pass(&mut g, 9, true, b"\x16\x03\x01"), b"\x16\x03\x01");
        g.forget(1, 7);
        g.forget_process(1);
        assert!(g.conns.is_empty());
    }

    #[test]
    fn fastcgi_is_kept() {
        let mut g = PayloadGate::default();
        let begin = [1u8, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(pass(&mut g, 3, true, &begin), begin);
        let stdout = [1u8, 6, 0, 1, 0, 4, 0, 0, b'S', b't', b'a', b't'];
        assert_eq!(pass(&mut g, 4, false, &stdout), stdout);
    }
}
