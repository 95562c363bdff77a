//! Every kind of break on trails built in memory (the same breaks on files from a live run are
//! in the end-to-end tests).
use serde_json::json;

use super::*;
use crate::trail::{
    chain::{Chain, Head},
    key::TrailKey,
    record::{CheckpointBody, CheckpointReason, FileBody, StartBody, StopBody, kind},
};

/// Builds trails the way the writer lays them out.
struct Builder {
    chain: Chain,
    key: TrailKey,
    files: Vec<Vec<u8>>,
    index: u64,
    /// The key id written in signed records.
    key_id: String,
}

const T: &str = "2026-12-03T10:00:00.000000Z";

impl Builder {
    fn new(key: TrailKey) -> Self {
        Self {
            chain: Chain::new(Head::GENESIS),
            key_id: key.key_id().to_string(),
            key,
            files: Vec::new(),
            index: 0,
        }
    }

    fn push(&mut self, line: Vec<u8>) {
        self.files.last_mut().unwrap().extend_from_slice(&line);
    }

    fn file(&mut self) {
        self.files.push(Vec::new());
        let body = FileBody {
            time: T.into(),
            schema: "vigie.trail/1".into(),
            host: "h".into(),
            index: self.index,
        };
        self.index += 1;
        let line = self.chain.line(kind::FILE, &body).unwrap();
        self.push(line);
    }

    fn start(&mut self, previous: PreviousEnd) {
        self.file();
        let body = StartBody {
            time: T.into(),
            host: "h".into(),
            version: "0".into(),
            key_id: self.key_id.clone(),
            config_sha256: "c".into(),
            config_sections: json!({}),
            previous,
        };
        let line = self
            .chain
            .signed_line(kind::START, &body, &self.key)
            .unwrap();
        self.push(line);
    }

    fn accesses(&mut self, n: usize) {
        for i in 0..n {
            let body = json!({"time": T, "verdict": "allowed", "user": "alice", "owner": "alice",
                "document": format!("/srv/d/alice/{i}"), "access_id": i});
            let line = self.chain.line(kind::ACCESS, &body).unwrap();
            self.push(line);
        }
    }

    fn checkpoint(&mut self, reason: CheckpointReason) {
        let next_file = (reason == CheckpointReason::Rotation).then_some(self.index);
        let body = CheckpointBody {
            time: T.into(),
            reason,
            key_id: self.key_id.clone(),
            next_file,
        };
        let line = self
            .chain
            .signed_line(kind::CHECKPOINT, &body, &self.key)
            .unwrap();
        self.push(line);
        if reason == CheckpointReason::Rotation {
            self.file();
        }
    }

    fn stop(&mut self) {
        let body = StopBody {
            time: T.into(),
            key_id: self.key_id.clone(),
            reason: "sigterm".into(),
        };
        let line = self
            .chain
            .signed_line(kind::STOP, &body, &self.key)
            .unwrap();
        self.push(line);
    }
}

fn key() -> TrailKey {
    TrailKey::from_seed([3; 32])
}

/// Two runs, three files: start, accesses, interval checkpoint, rotation, stop; restart; stop.
fn trail() -> Vec<Vec<u8>> {
    let mut b = Builder::new(key());
    b.start(PreviousEnd::None);
    b.accesses(10);
    b.checkpoint(CheckpointReason::Interval);
    b.accesses(10);
    b.checkpoint(CheckpointReason::Rotation);
    b.accesses(10);
    b.stop();
    let stop_seq = b.chain.head().next_seq - 1;
    b.start(PreviousEnd::Clean { stop_seq });
    b.accesses(5);
    b.stop();
    b.files
}

fn check(files: &[Vec<u8>]) -> Report {
    check_with(files, &key().public())
}

fn check_with(files: &[Vec<u8>], key: &PublicKey) -> Report {
    let named: Vec<TrailFile<'_>> = files
        .iter()
        .enumerate()
        .map(|(i, bytes)| TrailFile {
            name: format!("trail-{i:08}.jsonl"),
            bytes,
        })
        .collect();
    verify(&named, key)
}

fn lines(file: &[u8]) -> Vec<Vec<u8>> {
    file.split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn join(lines: &[Vec<u8>]) -> Vec<u8> {
    lines.concat()
}

fn broken(report: &Report) -> &Break {
    match &report.outcome {
        Outcome::Broken(b) => b,
        other => panic!("expected a break, got {other:?}\n{report}"),
    }
}

#[test]
fn an_intact_trail_verifies_with_its_range() {
    let files = trail();
    let r = check(&files);
    assert_eq!(r.outcome, Outcome::Intact, "{r}");
    assert_eq!(r.outcome.exit_code(), 0);
    assert_eq!((r.first_seq, r.last_seq), (Some(0), Some(43)));
    assert_eq!((r.files, r.records, r.runs), (3, 44, 2));
    assert!(r.to_string().starts_with("OK: seq 0..43"), "{r}");
}

#[test]
fn a_modified_record_is_named() {
    let mut files = trail();
    let mut l = lines(&files[0]);
    let s = String::from_utf8(l[5].clone())
        .unwrap()
        .replace("alice", "bobby");
    l[5] = s.into_bytes();
    files[0] = join(&l);
    let r = check(&files);
    let Break::Modified { at, why } = broken(&r) else {
        panic!("{r}")
    };
    assert_eq!((at.line, at.seq), (6, Some(5)), "{r}");
    assert!(why.contains("digest"), "{why}");
    assert_eq!(r.outcome.exit_code(), 1);
    assert_eq!(
        r.last_seq,
        Some(4),
        "intact up to the record before the modified one"
    );
}

#[test]
fn a_modified_last_record_of_a_file_is_named() {
    let mut files = trail();
    let mut l = lines(&files[0]);
    let last = l.len() - 1;
    l[last] = String::from_utf8(l[last].clone())
        .unwrap()
        .replace("rotation", "interval")
        .into_bytes();
    files[0] = join(&l);
    let r = check(&files);
    // The checkpoint's own signature fails first.
    assert!(
        matches!(broken(&r), Break::BadSignature { at } if at.seq == Some(23)),
        "{r}"
    );
}

#[test]
fn a_deleted_record_is_named() {
    let mut files = trail();
    let mut l = lines(&files[0]);
    l.remove(7);
    files[0] = join(&l);
    let r = check(&files);
    assert_eq!(
        broken(&r),
        &Break::Deleted {
            at: Place {
                file: "trail-00000000.jsonl".into(),
                line: 8,
                seq: Some(8)
            },
            first: 7,
            last: 7
        },
        "{r}"
    );
    assert!(r.to_string().contains("seq 7 is missing"), "{r}");
}

#[test]
fn deleted_records_are_counted() {
    let mut files = trail();
    let mut l = lines(&files[0]);
    l.drain(4..9);
    files[0] = join(&l);
    let r = check(&files);
    assert!(
        matches!(
            broken(&r),
            Break::Deleted {
                first: 4,
                last: 8,
                ..
            }
        ),
        "{r}"
    );
}

#[test]
fn an_inserted_record_is_named() {
    let mut files = trail();
    let mut l = lines(&files[0]);
    // A forged access that claims the place of seq 6, with a plausible link.
    let forged = String::from_utf8(l[6].clone())
        .unwrap()
        .replace("alice/4", "alice/99");
    l.insert(6, forged.into_bytes());
    files[0] = join(&l);
    let r = check(&files);
    assert!(
        matches!(broken(&r), Break::Inserted { at } if at.line == 7),
        "{r}"
    );
}

#[test]
fn a_copied_older_record_is_an_insertion() {
    let mut files = trail();
    let mut l = lines(&files[0]);
    let copy = l[3].clone();
    l.insert(9, copy);
    files[0] = join(&l);
    let r = check(&files);
    assert!(
        matches!(broken(&r), Break::Inserted { at } if at.line == 10),
        "{r}"
    );
}

#[test]
fn reordered_records_are_named() {
    let mut files = trail();
    let mut l = lines(&files[0]);
    l.swap(5, 6);
    files[0] = join(&l);
    let r = check(&files);
    assert!(
        matches!(
            broken(&r),
            Break::Reordered {
                expected: 5,
                found: 6,
                ..
            }
        ),
        "{r}"
    );
}

#[test]
fn a_file_missing_from_the_middle_is_named() {
    let mut files = trail();
    files.remove(1);
    let r = check(&files);
    assert!(
        matches!(
            broken(&r),
            Break::MissingFile {
                first: 1,
                last: 1,
                ..
            }
        ),
        "{r}"
    );
    assert!(r.to_string().contains("file 1 is missing"), "{r}");
}

#[test]
fn files_given_out_of_order_are_named() {
    let mut files = trail();
    files.swap(1, 2);
    let r = check(&files);
    assert!(matches!(broken(&r), Break::MissingFile { .. }), "{r}");
}

#[test]
fn a_missing_last_file_after_a_rotation_is_named() {
    let mut b = Builder::new(key());
    b.start(PreviousEnd::None);
    b.accesses(3);
    b.checkpoint(CheckpointReason::Rotation);
    let files = vec![b.files[0].clone()];
    let r = check(&files);
    assert!(
        matches!(broken(&r), Break::MissingFile { first: 1, .. }),
        "{r}"
    );
}

#[test]
fn a_truncated_end_is_an_unsigned_tail() {
    let mut files = trail();
    let last = files.len() - 1;
    let mut l = lines(&files[last]);
    l.truncate(l.len() - 2);
    files[last] = join(&l);
    let r = check(&files);
    assert_eq!(r.outcome.exit_code(), 3, "{r}");
    assert!(
        matches!(
            r.outcome,
            Outcome::UnsignedTail {
                first_seq: 38,
                last_seq: 41,
                partial_line_bytes: 0
            }
        ),
        "{r}"
    );
    // Cut in the middle of a line.
    let mut l = lines(&files[last]);
    let cut = l.len() - 1;
    l[cut].truncate(20);
    files[last] = join(&l);
    let r = check(&files);
    assert!(
        matches!(
            r.outcome,
            Outcome::UnsignedTail {
                partial_line_bytes: 20,
                ..
            }
        ),
        "{r}"
    );
    assert!(r.to_string().contains("incomplete line of 20 bytes"), "{r}");
}

#[test]
fn a_cut_file_in_the_middle_is_named() {
    let mut files = trail();
    // The first run's last file loses its stop record: the next start says it was clean.
    let mut l = lines(&files[1]);
    l.pop();
    files[1] = join(&l);
    let r = check(&files);
    // The link from the next file fails first: the stop record is gone.
    assert!(
        matches!(broken(&r), Break::Deleted { .. } | Break::CutEnd { .. }),
        "{r}"
    );
}

#[test]
fn a_checkpoint_signed_by_another_key_is_named() {
    let mut b = Builder::new(TrailKey::from_seed([9; 32]));
    b.start(PreviousEnd::None);
    b.accesses(3);
    b.stop();
    let r = check(&b.files);
    let Break::ForeignKey {
        key_id, expected, ..
    } = broken(&r)
    else {
        panic!("{r}")
    };
    assert_eq!(key_id, TrailKey::from_seed([9; 32]).key_id());
    assert_eq!(expected, key().key_id());
}

#[test]
fn a_key_id_forged_to_ours_still_fails() {
    // The intruder rewrites the whole chain with its own key but claims our key id.
    let mut b = Builder::new(TrailKey::from_seed([9; 32]));
    b.key_id = key().key_id().to_string();
    b.start(PreviousEnd::None);
    b.accesses(3);
    b.stop();
    let r = check(&b.files);
    assert!(
        matches!(broken(&r), Break::BadSignature { at } if at.seq == Some(1)),
        "{r}"
    );
}

#[test]
fn a_killed_run_is_explained_by_the_restart() {
    let mut b = Builder::new(key());
    b.start(PreviousEnd::None);
    b.accesses(4);
    b.checkpoint(CheckpointReason::Interval);
    b.accesses(3);
    // SIGKILL: no stop. The restart finds the last record and how many were unsigned.
    let last = b.chain.head().next_seq - 1;
    b.start(PreviousEnd::Unclean {
        last_seq: last,
        last_checkpoint_seq: Some(last - 3),
        unsigned_records: 3,
        partial_line_bytes: 0,
        partial_line_sha256: None,
    });
    b.accesses(2);
    b.stop();
    let r = check(&b.files);
    assert_eq!(r.outcome, Outcome::Intact, "{r}");
    assert!(
        r.notes[0].contains("without a stop record (killed or crashed)"),
        "{r}"
    );
    assert!(
        r.notes[0].contains("3 records after it were signed by the restart"),
        "{r}"
    );
}

#[test]
fn a_killed_run_whose_end_was_cut_later_is_named() {
    let mut b = Builder::new(key());
    b.start(PreviousEnd::None);
    b.accesses(4);
    let last = b.chain.head().next_seq - 1;
    b.start(PreviousEnd::Unclean {
        last_seq: last,
        last_checkpoint_seq: Some(1),
        unsigned_records: 4,
        partial_line_bytes: 0,
        partial_line_sha256: None,
    });
    b.stop();
    let mut l = lines(&b.files[0]);
    l.pop();
    b.files[0] = join(&l);
    let r = check(&b.files);
    assert!(
        matches!(
            broken(&r),
            Break::Deleted {
                first: 5,
                last: 5,
                ..
            }
        ),
        "{r}"
    );
}

#[test]
fn a_retention_cut_is_explained_and_an_unexplained_one_is_not() {
    let mut b = Builder::new(key());
    b.start(PreviousEnd::None);
    b.accesses(5);
    b.checkpoint(CheckpointReason::Rotation);
    b.accesses(5);
    let kept = lines(&b.files[1]);
    let first = crate::trail::record::parse_link(kept[0].strip_suffix(b"\n").unwrap()).unwrap();
    let body = RetentionBody {
        time: T.into(),
        key_id: key().key_id().into(),
        retention_days: 180,
        retention_seconds: 180 * 86_400,
        dropped_files: vec!["trail-00000000.jsonl".into()],
        dropped_seqs: [0, first.seq - 1],
        dropped_until: T.into(),
        first_kept_seq: first.seq,
        first_kept_prev: hex::encode(first.prev),
    };
    let line = b.chain.signed_line(kind::RETENTION, &body, &b.key).unwrap();
    b.push(line);
    b.stop();
    let kept = vec![b.files[1].clone()];
    let r = check(&kept);
    assert_eq!(r.outcome, Outcome::Intact, "{r}");
    assert!(
        r.notes[0].contains("dropped by retention (180 days)"),
        "{r}"
    );
    // Without the retention record, the same start is a missing start.
    let mut l = lines(&kept[0]);
    let n = l.len();
    l.remove(n - 2);
    let stop_only = vec![join(&l)];
    let r = check(&stop_only);
    assert!(matches!(broken(&r), Break::Deleted { .. }), "{r}");
    let mut b2 = Builder::new(key());
    b2.start(PreviousEnd::None);
    b2.accesses(5);
    b2.checkpoint(CheckpointReason::Rotation);
    b2.accesses(2);
    b2.stop();
    let r = check(&b2.files[1..]);
    assert!(
        matches!(broken(&r), Break::MissingStart { first_seq: 8, .. }),
        "{r}"
    );
}

#[test]
fn garbage_is_a_clear_break_not_a_panic() {
    for junk in [
        &b""[..],
        b"\n",
        b"{}\n",
        b"{\"seq\":0,\"prev\":\"",
        &[0xff; 300],
    ] {
        let r = check(&[junk.to_vec()]);
        assert!(!matches!(r.outcome, Outcome::Intact), "{junk:?}: {r}");
    }
}

/// Found by the `trail` fuzz target: a trail claiming seq 0 without its start record made the
/// message's `first_seq - 1` overflow.
#[test]
fn a_missing_start_at_seq_zero_is_described_not_a_panic() {
    let at = Place {
        file: "trail-00000000.jsonl".into(),
        line: 1,
        seq: Some(0),
    };
    let text = Break::MissingStart { at, first_seq: 0 }.to_string();
    assert!(
        text.contains("starts at seq 0 without the start record"),
        "{text}"
    );
}
