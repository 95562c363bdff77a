//! The audit trail (`vigie.trail/1`): every judged access (allowed ones included), coverage
//! gaps and Vigie's own start, stop and configuration changes, as hash-chained JSON lines with
//! signed Ed25519 checkpoints. Pure: records are built and checked here from bytes and keys
//! (no files, no clock); `sinks::trail` writes the files and `cli` reads them.
//!
//! - [`record`]: the line format and the record bodies;
//! - [`chain`]: the writer's side of the chain (sequence numbers, links, signatures);
//! - [`key`]: the signing and verifying keys and their file format;
//! - [`verify`]: checks a trail with the public key only and names the first broken place;
//! - [`report`]: answers over the access records (per data subject, per user, breach scope);
//! - [`pseudonym`]: keyed-hash pseudonyms of the names in shipped records, and their undoing.
pub mod chain;
pub mod key;
pub mod pseudonym;
pub mod record;
pub mod report;
pub mod verify;

/// What can go wrong building or reading a trail record.
#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    #[error("record body is not a JSON object")]
    BodyNotObject,
    #[error("serializing a record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("key: {0}")]
    Key(String),
}
