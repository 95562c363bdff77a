//! The line format of `vigie.trail/1` and the bodies of its records.
//!
//! Every line is one JSON object whose first three members are, in this order and without
//! spaces, `{"seq":N,"prev":"<64 hex>","type":"<kind>"`: `seq` counts records from the first
//! one ever written (0) across files and restarts, `prev` is the SHA-256 of the previous line's
//! bytes (without its newline; 64 zeros before record 0). The fixed prefix lets `verify` follow
//! the chain without parsing the bodies (a million lines a second on one core). Signed records
//! (`checkpoint`, `start`, `stop`, `retention`) end with `,"sig":"<128 hex>"}`: an Ed25519
//! signature over every byte of the line before `,"sig"`, so it covers the link and hence the
//! whole chain before it.
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    correlate::{Access, Evidence, RequestInfo},
    identity::IdentitySource,
    judge::{Judgement, Verdict},
    ownership::fact::{BackendKind, LookupError},
    walltime::WallClock,
};

pub const SCHEMA: &str = "vigie.trail/1";

/// SHA-256 of a line.
pub type Digest = [u8; 32];

/// The link of record 0.
pub const GENESIS: Digest = [0; 32];

/// The digest of one line (without its newline).
pub fn digest(line: &[u8]) -> Digest {
    Sha256::digest(line).into()
}

/// Record kinds (`type`).
pub mod kind {
    /// A judged document access.
    pub const ACCESS: &str = "access";
    /// Events lost in the kernel: Vigie was blind for a moment.
    pub const GAP: &str = "coverage_gap";
    /// First record of every file.
    pub const FILE: &str = "file";
    /// A run started (signed; links to the end of the previous run).
    pub const START: &str = "start";
    /// The configuration differs from the previous run's.
    pub const CONFIG_CHANGE: &str = "config_change";
    /// Signed at an interval and as the last record of a rotated file.
    pub const CHECKPOINT: &str = "checkpoint";
    /// A run stopped cleanly (signed; the last record of its file).
    pub const STOP: &str = "stop";
    /// Files past `retention_days` were deleted (signed; states the dropped range).
    pub const RETENTION: &str = "retention";

    /// Kinds that must carry a signature.
    pub fn is_signed(kind: &[u8]) -> bool {
        matches!(kind, b"checkpoint" | b"start" | b"stop" | b"retention")
    }
}

/// What precedes the body of a signed line's signature.
pub const SIG_MARK: &[u8] = b",\"sig\":\"";

/// The fixed prefix of a line, read without parsing the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link<'a> {
    pub seq: u64,
    pub prev: Digest,
    pub kind: &'a [u8],
}

/// Why a line's prefix could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("does not start with {{\"seq\":")]
    NoSeq,
    #[error("`seq` is not a number")]
    BadSeq,
    #[error("no `prev` digest after `seq`")]
    NoPrev,
    #[error("no `type` after `prev`")]
    NoType,
}

/// Value of each hex digit (either case); 0xff for any other byte.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// 64 hex digits to a digest. A table and no early exit: `verify` decodes one per record, and
/// the `hex` crate's checked decoding was a fifth of its time.
fn decode_digest(hex: &[u8]) -> Option<Digest> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut seen = 0u8;
    for (o, [h, l]) in out.iter_mut().zip(hex.as_chunks::<2>().0) {
        let (hi, lo) = (HEX_VALUE[*h as usize], HEX_VALUE[*l as usize]);
        seen |= hi | lo;
        *o = (hi << 4) | lo;
    }
    // Valid digits are below 16; one invalid byte sets the high bits.
    (seen < 16).then_some(out)
}

/// Reads `{"seq":N,"prev":"<hex>","type":"<kind>"` from the start of `line`.
pub fn parse_link(line: &[u8]) -> Result<Link<'_>, LinkError> {
    let rest = line.strip_prefix(b"{\"seq\":").ok_or(LinkError::NoSeq)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 || (digits > 1 && rest[0] == b'0') {
        return Err(LinkError::BadSeq);
    }
    let mut seq: u64 = 0;
    for &d in &rest[..digits] {
        seq = seq
            .checked_mul(10)
            .and_then(|s| s.checked_add(u64::from(d - b'0')))
            .ok_or(LinkError::BadSeq)?;
    }
    let rest = rest[digits..]
        .strip_prefix(b",\"prev\":\"")
        .ok_or(LinkError::NoPrev)?;
    let (hex_prev, rest) = rest.split_at_checked(64).ok_or(LinkError::NoPrev)?;
    let prev = decode_digest(hex_prev).ok_or(LinkError::NoPrev)?;
    let rest = rest
        .strip_prefix(b"\",\"type\":\"")
        .ok_or(LinkError::NoType)?;
    let end = memchr::memchr(b'"', rest).ok_or(LinkError::NoType)?;
    let kind = &rest[..end];
    if kind.is_empty() || !kind.iter().all(|b| b.is_ascii_lowercase() || *b == b'_') {
        return Err(LinkError::NoType);
    }
    Ok(Link { seq, prev, kind })
}

/// A signed line split into the signed bytes and the signature, if it has the shape of one.
pub fn split_signature(line: &[u8]) -> Option<(&[u8], [u8; 64])> {
    let at = memchr::memmem::rfind(line, SIG_MARK)?;
    let hex_sig = line[at + SIG_MARK.len()..].strip_suffix(b"\"}")?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(hex_sig, &mut sig).ok()?;
    Some((&line[..at], sig))
}

/// A judged access, as written (borrows the pipeline's access and judgement).
#[derive(Serialize)]
pub struct AccessBody<'a> {
    pub time: String,
    pub verdict: Verdict,
    pub user: Option<&'a str>,
    pub identity_source: Option<IdentitySource>,
    pub owner: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_source: Option<BackendKind>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub shared_with: &'a [String],
    pub document: &'a str,
    pub pid: u32,
    pub tid: u32,
    pub comm: &'a str,
    pub request: Option<&'a RequestInfo>,
    pub evidence: &'a [Evidence],
    pub bytes: u64,
    pub rule: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ownership_error: Option<LookupError>,
    pub access_id: u64,
    /// Who was on the other end of the request: the connection's peer, or the client a trusted
    /// proxy names (as in the alert line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<&'a crate::client::Client>,
    /// Why the access is unattributed when a connection's stream could not be followed exactly
    /// (absent: attributed, or simply no request in scope).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unattributed: Option<crate::http::stream::Desync>,
}

impl<'a> AccessBody<'a> {
    pub fn new(access: &'a Access, judgement: &'a Judgement, clock: &WallClock) -> Self {
        let identity = access.request.as_ref().and_then(|r| r.identity.as_ref());
        Self {
            time: clock.rfc3339(access.first_ts_ns),
            verdict: judgement.verdict,
            user: identity.map(|i| i.user.as_str()),
            identity_source: identity.map(|i| i.source),
            owner: judgement.owner.as_deref(),
            owner_source: judgement.owner_source,
            shared_with: &judgement.shared_with,
            document: &access.document,
            pid: access.pid,
            tid: access.tid,
            comm: &access.comm,
            request: access.request.as_ref(),
            evidence: &access.evidence,
            bytes: access.bytes,
            rule: judgement.rule,
            ownership_error: judgement.ownership_error,
            access_id: access.id,
            client: access.request.as_ref().and_then(|r| r.client.as_ref()),
            unattributed: access.unattributed,
        }
    }
}

/// A judged access, as read back (what `report` needs of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRecord {
    pub time: String,
    pub verdict: String,
    pub user: Option<String>,
    #[serde(default)]
    pub identity_source: Option<IdentitySource>,
    pub owner: Option<String>,
    pub document: String,
    pub pid: u32,
    pub comm: String,
    #[serde(default)]
    pub request: Option<RequestLine>,
    pub rule: String,
    pub access_id: u64,
    #[serde(default)]
    pub bytes: u64,
}

/// The request line of an access, as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLine {
    pub method: String,
    pub target: String,
    /// Roles the identity came with (JWT): re-judging needs them for privileged roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<RecordedIdentity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedIdentity {
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapBody {
    pub time: String,
    pub reason: String,
    pub lost_events: u64,
}

/// First record of every file: its place in the sequence of files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileBody {
    pub time: String,
    pub schema: String,
    pub host: String,
    /// 0 for the first file ever written; +1 for each file after it.
    pub index: u64,
}

/// How the previous run ended, as the next start found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PreviousEnd {
    /// No trail before this run.
    None,
    /// The previous run wrote its stop record (seq `stop_seq`).
    Clean { stop_seq: u64 },
    /// The previous run ended without a stop record (killed, crashed, power lost): the records
    /// after its last checkpoint were unsigned until this start signed the chain through them.
    Unclean {
        last_seq: u64,
        last_checkpoint_seq: Option<u64>,
        unsigned_records: u64,
        /// Bytes of an incomplete last line (a write cut short), left in place and not part of
        /// the chain; its digest lets `verify` tell it from a line altered later.
        #[serde(default, skip_serializing_if = "is_zero")]
        partial_line_bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partial_line_sha256: Option<String>,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartBody {
    pub time: String,
    pub host: String,
    pub version: String,
    pub key_id: String,
    /// SHA-256 of the resolved configuration (never the configuration itself: it may hold
    /// database passwords).
    pub config_sha256: String,
    /// Top-level section -> SHA-256 of its content: what a later `config_change` compares.
    pub config_sections: serde_json::Value,
    pub previous: PreviousEnd,
}

/// The configuration differs from the one the previous run started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChangeBody {
    pub time: String,
    pub from_sha256: String,
    pub to_sha256: String,
    /// Top-level sections whose content changed (`documents`, `policy`, ...).
    pub sections: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointReason {
    Interval,
    Rotation,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointBody {
    pub time: String,
    pub reason: CheckpointReason,
    pub key_id: String,
    /// Rotation: the index of the file that continues the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_file: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopBody {
    pub time: String,
    pub key_id: String,
    pub reason: String,
}

/// Files past `retention_days` were deleted: what was dropped, and where the kept chain starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionBody {
    pub time: String,
    pub key_id: String,
    pub retention_days: u32,
    /// The exact period (tests run retention in minutes of simulated time).
    pub retention_seconds: u64,
    pub dropped_files: Vec<String>,
    /// First and last sequence numbers dropped by this deletion.
    pub dropped_seqs: [u64; 2],
    /// Time of the last record dropped.
    pub dropped_until: String,
    /// The first record kept, and its link (the digest of the last record dropped).
    pub first_kept_seq: u64,
    pub first_kept_prev: String,
}

/// The signed bodies all name their key.
#[derive(Debug, Clone, Deserialize)]
pub struct SignedCommon {
    pub key_id: String,
    pub time: String,
}

/// Top-level sections of a configuration (as JSON) whose content differs.
pub fn changed_sections(from: &serde_json::Value, to: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let a = from.as_object().unwrap_or(&empty);
    let b = to.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_decode_like_the_hex_crate() {
        let d = digest(b"x");
        for text in [hex::encode(d), hex::encode_upper(d)] {
            assert_eq!(decode_digest(text.as_bytes()), Some(d));
        }
        let good = hex::encode(d).into_bytes();
        for i in 0..64 {
            for bad in [b'g', b'G', b' ', b'"', 0xff, b'/', b':', b'@', b'`'] {
                let mut t = good.clone();
                t[i] = bad;
                assert_eq!(decode_digest(&t), None, "{i} {bad}");
                let mut h = [0u8; 32];
                assert!(hex::decode_to_slice(&t, &mut h).is_err());
            }
        }
        assert_eq!(decode_digest(&good[..62]), None);
    }

    #[test]
    fn link_round_trip() {
        let line = format!(
            "{{\"seq\":42,\"prev\":\"{}\",\"type\":\"access\",\"x\":1}}",
            "ab".repeat(32)
        );
        let link = parse_link(line.as_bytes()).unwrap();
        assert_eq!(link.seq, 42);
        assert_eq!(link.prev, [0xab; 32]);
        assert_eq!(link.kind, b"access");
    }

    #[test]
    fn bad_links_are_named() {
        let p = "00".repeat(32);
        let cases: [(String, LinkError); 6] = [
            ("{\"x\":1}".into(), LinkError::NoSeq),
            (format!("{{\"seq\":x,\"prev\":\"{p}\"}}"), LinkError::BadSeq),
            (
                format!("{{\"seq\":01,\"prev\":\"{p}\"}}"),
                LinkError::BadSeq,
            ),
            (
                "{\"seq\":99999999999999999999,\"prev\"".into(),
                LinkError::BadSeq,
            ),
            ("{\"seq\":1,\"prev\":\"zz\"}".into(), LinkError::NoPrev),
            (
                format!("{{\"seq\":1,\"prev\":\"{p}\",\"type\":\"A\"}}"),
                LinkError::NoType,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse_link(line.as_bytes()), Err(want), "{line}");
        }
    }

    #[test]
    fn sections_that_changed() {
        let a = serde_json::json!({"documents": {"roots": ["/a"]}, "policy": {"x": 1}});
        let b =
            serde_json::json!({"documents": {"roots": ["/b"]}, "policy": {"x": 1}, "kernel": {}});
        assert_eq!(changed_sections(&a, &b), ["documents", "kernel"]);
    }
}
