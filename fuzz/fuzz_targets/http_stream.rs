//! Differential: one connection's request stream fed as one read, and the same bytes cut into
//! reads at arbitrary points, must give the same requests (heads, bodies, and where the stream
//! is lost), up to the first desync (after one, resuming depends on where reads start).
//!
//! Input: two bytes of seed for the cut points, then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_core::http::{
    RequestHead,
    stream::{Desync, Item, RequestStream},
};

/// A bound small enough that fuzzed heads reach it.
const MAX_HEAD: usize = 2048;

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Head(RequestHead),
    Body(Vec<u8>),
    Desync(Desync),
}

/// Items of `reads`, bodies joined, up to the first desync.
fn items(reads: &[&[u8]]) -> Vec<Seen> {
    let mut s = RequestStream::new(MAX_HEAD);
    let mut seen: Vec<Seen> = Vec::new();
    for r in reads {
        let mut out = Vec::new();
        s.feed(r, r.len() as u64, &mut out);
        for item in out {
            match item {
                Item::Head(h) => seen.push(Seen::Head(h)),
                Item::Body(b) => match seen.last_mut() {
                    Some(Seen::Body(all)) => all.extend_from_slice(b),
                    _ => seen.push(Seen::Body(b.to_vec())),
                },
                Item::Desync(d) => {
                    seen.push(Seen::Desync(d));
                    return seen;
                }
            }
        }
    }
    seen
}

fuzz_target!(|data: &[u8]| {
    let Some((seed, stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let whole = items(&[stream]);
    // Cut points from a small LCG on the seed: from 1-byte reads to a few large ones.
    let mut state = u32::from(u16::from_le_bytes(*seed)) | 1;
    let max_piece = 1 + (state as usize % 64);
    let mut reads = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = 1 + ((state >> 16) as usize % max_piece);
        let (a, b) = rest.split_at(n.min(rest.len()));
        reads.push(a);
        rest = b;
    }
    assert_eq!(items(&reads), whole, "cut into {} reads", reads.len());
});
