//! The HTTP/2 follower (frames, HPACK, streams) and the redaction of its heads, on arbitrary
//! byte streams cut into arbitrary reads and writes, with bytes out of the capture and lost
//! events. Besides "no panic":
//! - a lost connection says so once, and nothing of it is decoded after;
//! - every request head renders as a head the HTTP parser takes whole, before and after
//!   redaction, and redaction keeps its length;
//! - no Basic password survives the redaction of a head.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use monitor_core::{
    events::{Event, EventKind, Payload},
    http::{self, HeadParse},
    http2::{Demux, HTTP2_PREFACE, Item},
    redact::Redactor,
};

/// xorshift64: the cuts, captures and losses, from the input's first bytes.
struct Cuts(u64);

impl Cuts {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn ev(kind: EventKind) -> Event {
    Event {
        ts_ns: 1,
        pid: 1,
        tid: 1,
        comm: "f".into(),
        goid: None,
        kind,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let mut cuts = Cuts(u64::from_le_bytes(data[..8].try_into().unwrap()) | 1);
    let split = usize::from(data[8]).min(data.len() - 9) + 9;
    // The client's bytes (after the preface) and the server's.
    let mut client = HTTP2_PREFACE.to_vec();
    client.extend_from_slice(&data[9..split]);
    let server = &data[split..];
    let (mut demux, mut redactor) = (
        Demux::new().with_login_path(Some("/login")),
        Redactor::default(),
    );
    let (mut c, mut s) = (0usize, 0usize);
    let mut out = Vec::new();
    let mut lost = false;
    while c < client.len() || s < server.len() {
        let r = cuts.next();
        let read = s >= server.len() || (c < client.len() && r & 1 == 0);
        let (bytes, at) = if read { (&client[..], &mut c) } else { (server, &mut s) };
        let n = ((r >> 8) as usize % 300 + 1).min(bytes.len() - *at);
        // Sometimes the capture holds only a prefix of the transfer.
        let captured = if r & 0x30 == 0x30 { (r >> 20) as usize % (n + 1) } else { n };
        let chunk = Payload(bytes[*at..*at + captured].to_vec());
        let kind = if read {
            EventKind::SockRead {
                fd: 3,
                bytes: n as u64,
                data: chunk,
            }
        } else {
            EventKind::SockWrite {
                fd: 3,
                bytes: n as u64,
                data: chunk,
                body_fp: None,
                at: None,
            }
        };
        *at += n;
        demux.take(ev(kind), &mut out);
        for e in out.drain(..) {
            match e.kind {
                EventKind::Http2 { item, .. } => {
                    assert!(!lost, "decoded after the connection was lost: {item:?}");
                    match item {
                        Item::Lost { .. } => lost = true,
                        Item::Request { head, .. } => {
                            let mut redacted = head.0.clone();
                            redactor.redact_head(&mut redacted);
                            assert_eq!(redacted.len(), head.0.len());
                            for h in [&head.0, &redacted] {
                                assert!(
                                    matches!(http::parse_request_head(h), HeadParse::Complete(_)),
                                    "{:?}",
                                    String::from_utf8_lossy(h)
                                );
                            }
                            if let HeadParse::Complete(h) = http::parse_request_head(&redacted) {
                                for v in h.header_values("authorization") {
                                    let v = String::from_utf8_lossy(v);
                                    let Some(cred) = v.trim().strip_prefix("Basic ") else {
                                        continue;
                                    };
                                    let Ok(plain) = base64::engine::general_purpose::STANDARD
                                        .decode(cred.trim())
                                    else {
                                        continue;
                                    };
                                    if let Some(colon) = plain.iter().position(|&b| b == b':') {
                                        let pw = &plain[colon + 1..];
                                        assert!(pw.iter().all(|&b| b == b'*'), "{v}");
                                    }
                                }
                            }
                        }
                        Item::LoginForm { form, .. } => {
                            assert!(form.0.len() <= monitor_core::http2::LOGIN_FORM_CAP);
                            // Without a session config, every value is masked.
                            let mut redacted = form.0.clone();
                            redactor.redact_login_form(&mut redacted);
                            for pair in redacted.split(|&b| b == b'&') {
                                if let Some(eq) = pair.iter().position(|&b| b == b'=') {
                                    assert!(pair[eq + 1..].iter().all(|&b| b == b'*'));
                                }
                            }
                        }
                        Item::Response { .. } | Item::Data { .. } | Item::End { .. } => {}
                    }
                }
                EventKind::Unreadable { .. } => assert!(lost),
                _ => {}
            }
        }
        // Events lost after this transfer (an HTTP/2 connection followed by then is lost).
        if r & 0x7f00_0000 == 0x7f00_0000 {
            demux.events_lost();
            lost |= demux.tracked() > 0;
        }
    }
});
