//! `vigie verify`: checks a trail with the public key only. Follows the chain line by line
//! (fixed prefix, one SHA-256 per line), checks every signature, and names the first broken
//! place and what broke: a record modified, deleted, inserted or reordered, a file missing, an
//! end cut, a checkpoint signed by another key. Pure: files come in as bytes.
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    key::PublicKey,
    record::{
        self, CheckpointBody, CheckpointReason, Digest, FileBody, GENESIS, Link, PreviousEnd,
        RetentionBody, SignedCommon, StartBody, kind,
    },
};

/// How far ahead a record missing from its place is looked for before calling it deleted.
const REORDER_WINDOW: usize = 1024;

/// One trail file, in chain order.
pub struct TrailFile<'a> {
    pub name: String,
    pub bytes: &'a [u8],
}

/// A place in the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    pub file: String,
    /// 1-based.
    pub line: usize,
    pub seq: Option<u64>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}", self.file, self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        Ok(())
    }
}

/// A place without allocating (most lines never need one).
#[derive(Debug, Clone, Copy)]
struct At<'a> {
    file: &'a str,
    line: usize,
    seq: Option<u64>,
}

impl At<'_> {
    fn place(self) -> Place {
        Place {
            file: self.file.to_string(),
            line: self.line,
            seq: self.seq,
        }
    }
}

/// What broke, at the first broken place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "break", rename_all = "snake_case")]
pub enum Break {
    /// The record's bytes changed after it was written.
    Modified { at: Place, why: String },
    /// Records are missing from the middle of the chain.
    Deleted { at: Place, first: u64, last: u64 },
    /// A record that was never part of the chain.
    Inserted { at: Place },
    /// A record out of its place.
    Reordered {
        at: Place,
        expected: u64,
        found: u64,
    },
    /// Whole files are missing (indexes `first..=last`).
    MissingFile {
        after: String,
        first: u64,
        last: u64,
        seqs: Option<[u64; 2]>,
    },
    /// The trail starts after record 0 and no signed retention record accounts for the rest.
    MissingStart { at: Place, first_seq: u64 },
    /// A file's end was cut: it ends without a rotation checkpoint or stop record and no
    /// restart explains it.
    CutEnd {
        file: String,
        last_seq: u64,
        why: String,
    },
    /// A signature that does not verify with the given key (the record was altered).
    BadSignature { at: Place },
    /// A signature made with another key.
    ForeignKey {
        at: Place,
        key_id: String,
        expected: String,
    },
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Modified { at, why } => write!(f, "{at}: record modified: {why}"),
            Self::Deleted { at, first, last } if first == last => {
                write!(f, "{at}: record deleted before it: seq {first} is missing")
            }
            Self::Deleted { at, first, last } => write!(
                f,
                "{at}: records deleted before it: seq {first}..{last} ({} records) are missing",
                last - first + 1
            ),
            Self::Inserted { at } => {
                write!(f, "{at}: record inserted: it is not part of the chain")
            }
            Self::Reordered {
                at,
                expected,
                found,
            } => write!(
                f,
                "{at}: records reordered: found seq {found} where seq {expected} belongs (it comes later)"
            ),
            Self::MissingFile {
                after,
                first,
                last,
                seqs,
            } => {
                let files = if first == last {
                    format!("file {first} is")
                } else {
                    format!("files {first}..{last} are")
                };
                write!(f, "after {after}: {files} missing from the trail")?;
                if let Some([a, b]) = seqs {
                    write!(f, " (records seq {a}..{b})")?;
                }
                Ok(())
            }
            // A hostile trail can claim seq 0 without the start record (found by the `trail`
            // fuzz target: `first_seq - 1` overflowed).
            Self::MissingStart { at, first_seq: 0 } => write!(
                f,
                "{at}: the trail starts at seq 0 without the start record that begins every trail"
            ),
            Self::MissingStart { at, first_seq } => write!(
                f,
                "{at}: the trail starts at seq {first_seq}, and no signed retention record says why records 0..{} are missing",
                first_seq - 1
            ),
            Self::CutEnd {
                file,
                last_seq,
                why,
            } => write!(f, "{file}: end cut after seq {last_seq}: {why}"),
            Self::BadSignature { at } => write!(
                f,
                "{at}: signature does not verify: the signed record was altered"
            ),
            Self::ForeignKey {
                at,
                key_id,
                expected,
            } => write!(
                f,
                "{at}: signed by another key (key id {key_id}, expected {expected})"
            ),
        }
    }
}

/// How a verification ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Every record is covered by a signature and the trail ends with a stop record.
    Intact,
    /// The chain is intact but its last records are not signed yet: Vigie is still running,
    /// was killed and not restarted, or the end after the last checkpoint was cut.
    UnsignedTail {
        first_seq: u64,
        last_seq: u64,
        /// Bytes of an incomplete last line.
        partial_line_bytes: u64,
    },
    Broken(Break),
}

impl Outcome {
    /// `vigie verify`'s exit code: 0 intact, 1 broken, 3 unsigned tail (2 is for errors
    /// before verification: unreadable files, a bad key).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Intact => 0,
            Self::Broken(_) => 1,
            Self::UnsignedTail { .. } => 3,
        }
    }
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub outcome: Outcome,
    pub files: usize,
    pub records: u64,
    /// The range of intact records (up to the first broken place).
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    /// Last record covered by a signature.
    pub last_signed_seq: Option<u64>,
    pub checkpoints: u64,
    pub runs: u64,
    pub key_id: String,
    /// Explained irregularities: runs that ended without a stop, ranges dropped by retention.
    pub notes: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => format!(
                "seq {a}..{b}, {} .. {}",
                self.first_time.as_deref().unwrap_or("?"),
                self.last_time.as_deref().unwrap_or("?")
            ),
            _ => "no records".to_string(),
        };
        let counts = format!(
            "{} records in {} files, {} runs, {} signed records (key {})",
            self.records, self.files, self.runs, self.checkpoints, self.key_id
        );
        match &self.outcome {
            Outcome::Intact => writeln!(f, "OK: {range}; {counts}; ends with a stop record")?,
            Outcome::UnsignedTail {
                first_seq,
                last_seq,
                partial_line_bytes,
            } => {
                writeln!(
                    f,
                    "OK up to seq {}: {range}; {counts}",
                    self.last_signed_seq
                        .map_or_else(|| "-".to_string(), |s| s.to_string())
                )?;
                if first_seq <= last_seq {
                    write!(
                        f,
                        "UNSIGNED TAIL: records seq {first_seq}..{last_seq} come after the last signature"
                    )?;
                } else {
                    write!(f, "UNSIGNED TAIL: the trail ends without a stop record")?;
                }
                if *partial_line_bytes > 0 {
                    write!(f, ", then an incomplete line of {partial_line_bytes} bytes")?;
                }
                writeln!(
                    f,
                    " (Vigie still running, killed and not restarted, or the end was cut)"
                )?;
            }
            Outcome::Broken(b) => {
                writeln!(f, "BROKEN: {b}")?;
                writeln!(f, "intact before it: {range}; {counts}")?;
            }
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// How a file ended.
#[derive(Debug, Clone)]
enum FileEnd {
    Rotation {
        next: u64,
    },
    Stop {
        seq: u64,
    },
    Open {
        last_seq: u64,
        partial: Option<Digest>,
        partial_len: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Expect {
    seq: u64,
    prev: Digest,
}

struct Verifier<'k> {
    key: &'k PublicKey,
    report: Report,
    expect: Option<Expect>,
    /// Names of the files seen so far, and where the previous record was (file number, line,
    /// seq).
    names: Vec<String>,
    prev_at: Option<(usize, usize, u64)>,
    last_file_index: Option<u64>,
    prev_file: Option<(String, FileEnd)>,
    /// A file ended open: the next file's second record must be the restart that explains it.
    awaiting_start: Option<(String, FileEnd)>,
    last_checkpoint_seq: Option<u64>,
    unanchored: Option<(Place, u64, Digest)>,
    retention: Vec<RetentionBody>,
    last_line: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct TimeOnly {
    time: Option<String>,
}

fn time_of(line: &[u8]) -> Option<String> {
    serde_json::from_slice::<TimeOnly>(line).ok()?.time
}

/// Verifies `files` (in chain order) with `key`.
pub fn verify(files: &[TrailFile<'_>], key: &PublicKey) -> Report {
    let mut v = Verification::new(key);
    for f in files {
        if !v.file(f) {
            break;
        }
    }
    v.finish()
}

/// A verification fed one file at a time, so that a trail of any size is checked in the
/// memory of its largest file.
pub struct Verification<'k> {
    v: Verifier<'k>,
    broken: Option<Break>,
}

impl<'k> Verification<'k> {
    pub fn new(key: &'k PublicKey) -> Self {
        Self {
            v: Verifier {
                key,
                report: Report {
                    outcome: Outcome::Intact,
                    files: 0,
                    records: 0,
                    first_seq: None,
                    last_seq: None,
                    first_time: None,
                    last_time: None,
                    last_signed_seq: None,
                    checkpoints: 0,
                    runs: 0,
                    key_id: key.key_id().to_string(),
                    notes: Vec::new(),
                },
                expect: None,
                names: Vec::new(),
                prev_at: None,
                last_file_index: None,
                prev_file: None,
                awaiting_start: None,
                last_checkpoint_seq: None,
                unanchored: None,
                retention: Vec::new(),
                last_line: None,
            },
            broken: None,
        }
    }

    /// The next file in chain order; false once the trail is broken (later files add nothing).
    pub fn file(&mut self, file: &TrailFile<'_>) -> bool {
        if self.broken.is_some() {
            return false;
        }
        self.v.report.files += 1;
        if let Err(b) = self.v.file(file) {
            self.broken = Some(b);
            return false;
        }
        true
    }

    pub fn finish(self) -> Report {
        let mut v = self.v;
        if let Some(line) = &v.last_line {
            v.report.last_time = time_of(line);
        }
        let outcome = match self.broken {
            Some(b) => {
                // A modified record is named by the link after it: it is not intact itself.
                if let Break::Modified { at, .. } = &b
                    && at.seq.is_some()
                    && at.seq == v.report.last_seq
                {
                    v.report.last_seq = at.seq.and_then(|s| s.checked_sub(1));
                    v.report.last_time = None;
                    v.report.records = v.report.records.saturating_sub(1);
                }
                Outcome::Broken(b)
            }
            None => v.end(),
        };
        v.report.outcome = outcome;
        v.report
    }
}

impl Verifier<'_> {
    fn file(&mut self, file: &TrailFile<'_>) -> Result<(), Break> {
        self.names.push(file.name.clone());
        let file_no = self.names.len() - 1;
        let mut lines: Vec<&[u8]> = Vec::with_capacity(file.bytes.len() / 256 + 1);
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', file.bytes) {
            lines.push(&file.bytes[start..end]);
            start = end + 1;
        }
        let partial = &file.bytes[start..];
        if lines.is_empty() {
            return Err(Break::Modified {
                at: Place {
                    file: file.name.clone(),
                    line: 1,
                    seq: None,
                },
                why: "the file holds no complete record".into(),
            });
        }
        let mut end = None;
        for i in 0..lines.len() {
            match self.record(&lines, i, &file.name, file_no) {
                Ok(e) => end = Some(e),
                Err(b) => {
                    if i > 0 {
                        self.last_line = Some(lines[i - 1].to_vec());
                    }
                    return Err(b);
                }
            }
        }
        self.last_line = lines.last().map(|l| l.to_vec());
        let mut end = end.expect("a file with lines has an end");
        if !partial.is_empty() {
            let last_seq = self.report.last_seq.unwrap_or_default();
            end = FileEnd::Open {
                last_seq,
                partial: Some(record::digest(partial)),
                partial_len: partial.len() as u64,
            };
        }
        self.prev_file = Some((file.name.clone(), end));
        Ok(())
    }

    /// One line: its link, its place in the file, its signature.
    fn record(
        &mut self,
        lines: &[&[u8]],
        i: usize,
        name: &str,
        file_no: usize,
    ) -> Result<FileEnd, Break> {
        let at = At {
            file: name,
            line: i + 1,
            seq: None,
        };
        let link = record::parse_link(lines[i]).map_err(|e| Break::Modified {
            at: at.place(),
            why: format!("unreadable ({e})"),
        })?;
        let at = At {
            seq: Some(link.seq),
            ..at
        };
        self.link(lines, i, &link, at)?;
        if i == 0 {
            self.file_record(lines[0], &link, at)?;
        } else if let Some((name, ended)) = self.awaiting_start.take() {
            self.restart(lines[i], &link, at, &name, &ended)?;
        }
        if kind::is_signed(link.kind) {
            self.signature(lines[i], &link, at)?;
        }
        let open = FileEnd::Open {
            last_seq: link.seq,
            partial: None,
            partial_len: 0,
        };
        let end = match link.kind {
            b"checkpoint" => match parse::<CheckpointBody>(lines[i], at)? {
                CheckpointBody {
                    reason: CheckpointReason::Rotation,
                    next_file: Some(next),
                    ..
                } => FileEnd::Rotation { next },
                _ => open,
            },
            b"stop" => FileEnd::Stop { seq: link.seq },
            b"retention" => {
                self.retention.push(parse(lines[i], at)?);
                open
            }
            _ => open,
        };
        self.report.records += 1;
        self.report.last_seq = Some(link.seq);
        self.prev_at = Some((file_no, i + 1, link.seq));
        Ok(end)
    }

    /// The chain: sequence number and link against the previous line.
    fn link(
        &mut self,
        lines: &[&[u8]],
        i: usize,
        link: &Link<'_>,
        at: At<'_>,
    ) -> Result<(), Break> {
        let digest = record::digest(lines[i]);
        let Some(exp) = self.expect else {
            self.report.first_seq = Some(link.seq);
            self.report.first_time = time_of(lines[i]);
            if link.seq != 0 || link.prev != GENESIS {
                self.unanchored = Some((at.place(), link.seq, link.prev));
            }
            self.expect = Some(Expect {
                seq: link.seq + 1,
                prev: digest,
            });
            return Ok(());
        };
        if link.seq == exp.seq && link.prev == exp.prev {
            self.expect = Some(Expect {
                seq: link.seq + 1,
                prev: digest,
            });
            return Ok(());
        }
        Err(self.classify(lines, i, link, at, exp))
    }

    /// Names what broke where the chain does not continue.
    fn classify(
        &self,
        lines: &[&[u8]],
        i: usize,
        link: &Link<'_>,
        at: At<'_>,
        exp: Expect,
    ) -> Break {
        let prev_place = match self.prev_at {
            Some((file_no, line, seq)) => Place {
                file: self.names[file_no].clone(),
                line,
                seq: Some(seq),
            },
            None => at.place(),
        };
        let next = lines.get(i + 1).and_then(|l| record::parse_link(l).ok());
        let seq_changed = || Break::Modified {
            at: at.place(),
            why: format!("its sequence number was changed (seq {} expected)", exp.seq),
        };
        if link.seq == exp.seq {
            if next.is_some_and(|n| n.seq == link.seq && n.prev == exp.prev) {
                return Break::Inserted { at: at.place() };
            }
            return Break::Modified {
                at: prev_place,
                why: format!(
                    "its digest no longer matches the link in the next record (seq {})",
                    link.seq
                ),
            };
        }
        if link.seq > exp.seq {
            if i == 0
                && let Some(b) = self.missing_files(lines[0], link, exp)
            {
                return b;
            }
            let later = lines[i + 1..]
                .iter()
                .take(REORDER_WINDOW)
                .filter_map(|l| record::parse_link(l).ok())
                .any(|l| l.seq == exp.seq);
            if later {
                return Break::Reordered {
                    at: at.place(),
                    expected: exp.seq,
                    found: link.seq,
                };
            }
            if link.prev == exp.prev {
                return seq_changed();
            }
            return Break::Deleted {
                at: at.place(),
                first: exp.seq,
                last: link.seq - 1,
            };
        }
        if link.prev == exp.prev {
            return seq_changed();
        }
        // The same seq twice: the next record tells which of the two the chain goes on from.
        let this = record::digest(lines[i]);
        if link.seq + 1 == exp.seq && next.is_some_and(|n| n.seq == exp.seq && n.prev == this) {
            return Break::Inserted { at: prev_place };
        }
        Break::Inserted { at: at.place() }
    }

    /// A sequence gap at the start of a file whose index jumps: whole files are missing.
    fn missing_files(&self, line: &[u8], link: &Link<'_>, exp: Expect) -> Option<Break> {
        let body: FileBody = serde_json::from_slice(line).ok()?;
        let last = self.last_file_index?;
        (body.index > last + 1).then(|| Break::MissingFile {
            after: self
                .prev_file
                .as_ref()
                .map_or_else(String::new, |(n, _)| n.clone()),
            first: last + 1,
            last: body.index - 1,
            seqs: Some([exp.seq, link.seq - 1]),
        })
    }

    /// The first record of a file: its index follows the previous file's.
    fn file_record(&mut self, line: &[u8], link: &Link<'_>, at: At<'_>) -> Result<(), Break> {
        if link.kind != kind::FILE.as_bytes() {
            return Err(Break::Modified {
                at: at.place(),
                why: "a file must start with a `file` record".into(),
            });
        }
        let body: FileBody = parse(line, at)?;
        if let Some((name, ended)) = self.prev_file.take() {
            let expected = match ended {
                FileEnd::Rotation { next } => next,
                _ => self.last_file_index.map_or(0, |i| i + 1),
            };
            if body.index > expected {
                return Err(Break::MissingFile {
                    after: name,
                    first: expected,
                    last: body.index - 1,
                    seqs: None,
                });
            }
            if body.index < expected {
                return Err(Break::Reordered {
                    at: at.place(),
                    expected,
                    found: body.index,
                });
            }
            if !matches!(ended, FileEnd::Rotation { .. }) {
                self.awaiting_start = Some((name, ended));
            }
        }
        self.last_file_index = Some(body.index);
        Ok(())
    }

    /// The record after a file that ended without rotation or stop: the restart explaining it.
    fn restart(
        &mut self,
        line: &[u8],
        link: &Link<'_>,
        at: At<'_>,
        prev_name: &str,
        ended: &FileEnd,
    ) -> Result<(), Break> {
        let (last_seq, partial, partial_len) = match ended {
            FileEnd::Open {
                last_seq,
                partial,
                partial_len,
            } => (last_seq, partial, partial_len),
            FileEnd::Stop { seq } => {
                let start = (link.kind == kind::START.as_bytes())
                    .then(|| parse::<StartBody>(line, at))
                    .transpose()?;
                return match start.map(|s| s.previous) {
                    Some(PreviousEnd::Clean { stop_seq }) if stop_seq == *seq => Ok(()),
                    _ => Err(Break::Modified {
                        at: at.place(),
                        why: format!(
                            "after the stop record ending {prev_name}, a file continues with the restart that names it (seq {seq})"
                        ),
                    }),
                };
            }
            FileEnd::Rotation { .. } => return Ok(()),
        };
        let cut = |why: &str| Break::CutEnd {
            file: prev_name.to_string(),
            last_seq: *last_seq,
            why: why.to_string(),
        };
        if link.kind != kind::START.as_bytes() {
            return Err(cut(
                "no rotation checkpoint or stop record, and the next file does not begin with a restart",
            ));
        }
        let start: StartBody = parse(line, at)?;
        match start.previous {
            PreviousEnd::Unclean {
                last_seq: said,
                last_checkpoint_seq,
                unsigned_records,
                partial_line_bytes,
                partial_line_sha256,
            } => {
                if said != *last_seq {
                    return Err(cut(&format!(
                        "the restart says the previous run ended at seq {said}"
                    )));
                }
                let partial_hex = partial.map(hex::encode);
                if partial_line_bytes != *partial_len || partial_line_sha256 != partial_hex {
                    return Err(cut(
                        "its incomplete last line is not the one the restart found",
                    ));
                }
                let checkpoint =
                    last_checkpoint_seq.map_or_else(|| "none".to_string(), |s| format!("seq {s}"));
                let mut note = format!(
                    "{prev_name}: run ended at seq {said} without a stop record (killed or crashed); last checkpoint {checkpoint}; {unsigned_records} records after it were signed by the restart at {} (seq {})",
                    start.time, link.seq
                );
                if partial_line_bytes > 0 {
                    note.push_str(&format!(
                        "; an incomplete last line of {partial_line_bytes} bytes is not part of the chain"
                    ));
                }
                self.report.notes.push(note);
                Ok(())
            }
            PreviousEnd::Clean { .. } | PreviousEnd::None => Err(cut(
                "the restart says the previous run stopped cleanly, but its stop record is missing",
            )),
        }
    }

    fn signature(&mut self, line: &[u8], link: &Link<'_>, at: At<'_>) -> Result<(), Break> {
        let Some((signed, sig)) = record::split_signature(line) else {
            return Err(Break::Modified {
                at: at.place(),
                why: "a signed record without its signature".into(),
            });
        };
        let common: SignedCommon = parse(line, at)?;
        if common.key_id != self.key.key_id() {
            return Err(Break::ForeignKey {
                at: at.place(),
                key_id: common.key_id,
                expected: self.key.key_id().to_string(),
            });
        }
        if !self.key.verify(signed, &sig) {
            return Err(Break::BadSignature { at: at.place() });
        }
        self.report.checkpoints += 1;
        self.report.last_signed_seq = Some(link.seq);
        if link.kind == kind::START.as_bytes() {
            self.report.runs += 1;
        }
        if link.kind == kind::CHECKPOINT.as_bytes() {
            self.last_checkpoint_seq = Some(link.seq);
        }
        Ok(())
    }

    fn end(&mut self) -> Outcome {
        if let Some((at, first_seq, prev)) = self.unanchored.take() {
            let prev_hex = hex::encode(prev);
            let retained = self
                .retention
                .iter()
                .find(|r| r.first_kept_seq == first_seq && r.first_kept_prev == prev_hex);
            match retained {
                Some(r) => self.report.notes.insert(
                    0,
                    format!(
                        "records seq {}..{} (until {}, {} files) were dropped by retention ({} days) at {}; the kept trail starts at seq {first_seq}",
                        r.dropped_seqs[0],
                        r.dropped_seqs[1],
                        r.dropped_until,
                        r.dropped_files.len(),
                        r.retention_days,
                        r.time
                    ),
                ),
                None => return Outcome::Broken(Break::MissingStart { at, first_seq }),
            }
        }
        match &self.prev_file {
            Some((_, FileEnd::Stop { .. })) => Outcome::Intact,
            Some((name, FileEnd::Rotation { next })) => Outcome::Broken(Break::MissingFile {
                after: name.clone(),
                first: *next,
                last: *next,
                seqs: None,
            }),
            Some((_, FileEnd::Open { partial_len, .. })) => {
                let last = self.report.last_seq.unwrap_or_default();
                Outcome::UnsignedTail {
                    first_seq: self.report.last_signed_seq.map_or(0, |s| s + 1),
                    last_seq: last,
                    partial_line_bytes: *partial_len,
                }
            }
            None => Outcome::UnsignedTail {
                first_seq: 0,
                last_seq: 0,
                partial_line_bytes: 0,
            },
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(line: &'a [u8], at: At<'_>) -> Result<T, Break> {
    serde_json::from_slice(line).map_err(|e| Break::Modified {
        at: at.place(),
        why: format!("unreadable ({e})"),
    })
}

#[cfg(test)]
mod tests;
