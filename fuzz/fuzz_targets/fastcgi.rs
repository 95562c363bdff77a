//! The FastCGI decoder and the FastCGI redaction, on arbitrary byte streams cut into arbitrary
//! reads and writes, with bytes out of the capture and lost events. Besides "no panic":
//! - every redacted chunk keeps its length;
//! - redaction never changes the framing: the raw and the redacted streams decode to the same
//!   requests (ids, method, target, truncation), statuses and ends;
//! - no Basic password survives in a redacted `HTTP_AUTHORIZATION` param;
//! - requests in flight stay bounded.
#![no_main]

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use libfuzzer_sys::fuzz_target;
use monitor_core::{
    fastcgi::{Connection, Happening, MAX_EXCHANGES, Protocol},
    http,
    redact::Redactor,
};

/// As `identity` decodes Basic credentials (lenient padding and trailing bits).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

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

/// What matters of a happening for the framing comparison (values may differ once redacted).
fn shape(h: &Happening) -> String {
    match h {
        Happening::Request {
            id,
            head,
            truncated,
        } => format!(
            "request {id} {} {} {truncated} {}",
            head.method,
            head.target,
            head.headers.len()
        ),
        // What redaction rewrites (cookie values, form values) is not framing.
        Happening::Status { id, status, head } => {
            format!("status {id} {status:?} {}", head.len())
        }
        Happening::Stdin { id, data } => format!("stdin {id} {}", data.len()),
        other => format!("{other:?}"),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((head, stream)) = input.split_first_chunk::<4>() else {
        return;
    };
    let seed = u64::from(u16::from_le_bytes([head[0], head[1]])) | 1 << 40;
    let split = usize::from(u16::from_le_bytes([head[2], head[3]])) % (stream.len() + 1);
    // What the front server sends, then what the application writes, interleaved below.
    let (to_app, from_app) = stream.split_at(split);
    let mut cuts = Cuts(seed);
    let mut redactor = Redactor::default();
    redactor.accepted(7, 5);
    let (mut raw_side, mut red_side) = (Connection::default(), Connection::default());
    let (mut raw_seen, mut red_seen) = (Vec::new(), Vec::new());
    let (mut inp, mut outp) = (to_app, from_app);
    // The redactor's decision, by its rule: the first captured bytes read.
    let mut protocol = Protocol::Fresh;
    while !inp.is_empty() || !outp.is_empty() {
        let r = cuts.next();
        if r % 64 == 0 {
            // Lost events, seen by both at the same point (by a connection that already spoke
            // FastCGI: before that, neither the redactor nor the correlator has its stream).
            redactor.lost();
            if protocol == Protocol::FastCgi {
                raw_side.lose_sync();
                red_side.lose_sync();
            }
        }
        let reading = !inp.is_empty() && (outp.is_empty() || r & 2 == 0);
        let src = if reading { &mut inp } else { &mut outp };
        let size = (1 + (r >> 8) % 300) as usize;
        let (chunk, rest) = src.split_at(size.min(src.len()));
        *src = rest;
        // A quarter of the syscalls are captured only in part.
        let captured = if r & 12 == 0 {
            chunk.len() / 2
        } else {
            chunk.len()
        };
        let total = chunk.len() as u64;
        let mut bytes = chunk[..captured].to_vec();
        // As the correlator does: the FastCGI stream starts with the read that decided it.
        if reading {
            let fastcgi = protocol.observe(&bytes) == Protocol::FastCgi;
            redactor.redact_read(7, 5, &mut bytes, total);
            assert_eq!(bytes.len(), captured, "redaction changed a read's length");
            if fastcgi {
                raw_seen.extend(raw_side.on_read(&chunk[..captured], total));
                red_seen.extend(red_side.on_read(&bytes, total));
            }
        } else {
            redactor.redact_write(7, 5, &mut bytes, total);
            assert_eq!(bytes.len(), captured, "redaction changed a write's length");
            if protocol == Protocol::FastCgi {
                raw_seen.extend(raw_side.on_write(&chunk[..captured], total));
                red_seen.extend(red_side.on_write(&bytes, total));
            }
        }
        assert!(raw_side.in_flight() <= MAX_EXCHANGES);
    }
    // Streams that do not start FastCGI are HTTP to the redactor: its rules are the `redact`
    // target's. The decoder must still hold up, which it did above.
    if protocol != Protocol::FastCgi {
        return;
    }
    let raw_shape: Vec<String> = raw_seen.iter().map(shape).collect();
    let red_shape: Vec<String> = red_seen.iter().map(shape).collect();
    assert_eq!(raw_shape, red_shape, "redaction changed the framing");
    for h in &red_seen {
        let Happening::Request { head, .. } = h else {
            continue;
        };
        for value in head.header_values("authorization") {
            let Some(token) = http::credential_token(value, b"basic") else {
                continue;
            };
            let Ok(decoded) = LENIENT.decode(token) else {
                continue;
            };
            if let Some(colon) = decoded.iter().position(|&b| b == b':') {
                assert!(
                    decoded[colon + 1..].iter().all(|&b| b == b'*'),
                    "a Basic password survived redaction: {:?}",
                    String::from_utf8_lossy(&decoded)
                );
            }
        }
    }
});
