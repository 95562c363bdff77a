//! Writes the audit trail (`vigie.trail/1`, built by [`monitor_core::trail`]) to files
//! `trail-NNNNNNNN.jsonl` (mode 0600) in a directory: one line per record, written with one
//! `write` each (a record never waits in a buffer), synced at every signature. Rotates past a
//! size (signed checkpoint as the last record of the old file), signs a checkpoint at an
//! interval, deletes whole files past the retention period (after a signed record stating the
//! dropped range), and on start continues the chain where the last run left it, saying how
//! that run ended.
//!
//! Time comes in from the caller (Unix nanoseconds): live runs pass the wall clock, the
//! simulated-time tests their own.
use std::{
    fs::File,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use monitor_core::{
    correlate::Access,
    judge::Judgement,
    trail::{
        chain::{Chain, Head},
        key::TrailKey,
        record::{
            self, AccessBody, CheckpointBody, CheckpointReason, ConfigChangeBody, FileBody,
            GapBody, PreviousEnd, RetentionBody, StartBody, StopBody, kind,
        },
    },
    walltime::{WallClock, rfc3339},
};

/// What the trail keeps and how often it signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrailPolicy {
    pub checkpoint_interval: Duration,
    pub max_file_bytes: u64,
    /// Whole files whose last record is older than this are deleted (None: kept forever).
    pub retention: Option<Duration>,
}

/// The configuration a run starts with, as the trail records it (digests only).
#[derive(Debug, Clone)]
pub struct ConfigDigest {
    pub sha256: String,
    /// Top-level section -> SHA-256 of its JSON.
    pub sections: serde_json::Value,
}

impl ConfigDigest {
    pub fn of(config: &impl serde::Serialize) -> Self {
        let value = serde_json::to_value(config).unwrap_or_default();
        let digest_of = |v: &serde_json::Value| {
            hex::encode(record::digest(
                serde_json::to_string(v).unwrap_or_default().as_bytes(),
            ))
        };
        let sections = match &value {
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(digest_of(v))))
                .collect(),
            _ => serde_json::Map::new(),
        };
        Self {
            sha256: digest_of(&value),
            sections: serde_json::Value::Object(sections),
        }
    }
}

/// What the trail files in the directory hold, per file.
#[derive(Debug, Clone)]
struct FileInfo {
    path: PathBuf,
    index: u64,
    first_seq: u64,
    first_prev: String,
    last_seq: u64,
    last_time: i128,
    last_time_text: String,
}

/// The previous run, as found in the directory at start.
#[derive(Debug)]
struct Found {
    head: Head,
    previous: PreviousEnd,
    config: Option<(String, serde_json::Value)>,
    files: Vec<FileInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrailWriteError {
    /// The cause is the source: printed after the path by error chains.
    #[error("{path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a trail file this Vigie can continue: {why}")]
    Foreign { path: String, why: String },
    #[error(transparent)]
    Record(#[from] monitor_core::trail::TrailError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrailWriteError + '_ {
    move |source| TrailWriteError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub struct TrailWriter {
    dir: PathBuf,
    key: TrailKey,
    host: String,
    policy: TrailPolicy,
    clock: WallClock,
    chain: Chain,
    file: File,
    files: Vec<FileInfo>,
    written: u64,
    /// Latest time seen (ticks, records): the time of the records Vigie writes on its own.
    now: i128,
    last_signature: i128,
    last_retention_check: i128,
}

impl std::fmt::Debug for TrailWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrailWriter")
            .field("dir", &self.dir)
            .field("key_id", &self.key.key_id())
            .field("head", &self.chain.head())
            .finish_non_exhaustive()
    }
}

/// The name of file `index`.
pub fn file_name(index: u64) -> String {
    format!("trail-{index:08}.jsonl")
}

fn file_index(name: &str) -> Option<u64> {
    name.strip_prefix("trail-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// Trail files in `dir`, in chain order.
pub fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(i) = entry.file_name().to_str().and_then(file_index) {
            files.push((i, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

impl TrailWriter {
    /// Opens the trail in `dir` (created 0700 if missing): continues the chain of the files
    /// there, in a new file that starts with a signed `start` record.
    pub fn open(
        dir: &Path,
        key: TrailKey,
        policy: TrailPolicy,
        clock: WallClock,
        config: &ConfigDigest,
        now: i128,
    ) -> Result<Self, TrailWriteError> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let found = scan(dir)?;
        let index = found.files.last().map_or(0, |f| f.index + 1);
        let path = dir.join(file_name(index));
        let file = create(&path)?;
        let mut w = Self {
            dir: dir.to_path_buf(),
            host: crate::sinks::ocsf::hostname(),
            key,
            policy,
            clock,
            chain: Chain::new(found.head),
            file,
            files: found.files,
            written: 0,
            now,
            last_signature: now,
            last_retention_check: now,
        };
        w.begin_file(index, path)?;
        let start = StartBody {
            time: rfc3339(now),
            host: w.host.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            key_id: w.key.key_id().to_string(),
            config_sha256: config.sha256.clone(),
            config_sections: config.sections.clone(),
            previous: found.previous,
        };
        let line = w.chain.signed_line(kind::START, &start, &w.key)?;
        w.write(&line, kind::START, now)?;
        if let Some((sha, sections)) = found.config
            && sha != config.sha256
        {
            let change = ConfigChangeBody {
                time: rfc3339(now),
                from_sha256: sha,
                to_sha256: config.sha256.clone(),
                sections: record::changed_sections(&sections, &config.sections),
            };
            let line = w.chain.line(kind::CONFIG_CHANGE, &change)?;
            w.write(&line, kind::CONFIG_CHANGE, now)?;
        }
        w.sync()?;
        w.retention(now)?;
        Ok(w)
    }

    pub fn key_id(&self) -> &str {
        self.key.key_id()
    }

    /// Records written by this run.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn current_file(&self) -> &Path {
        &self.files.last().expect("a trail writer has a file").path
    }

    pub fn access(
        &mut self,
        access: &Access,
        judgement: &Judgement,
    ) -> Result<(), TrailWriteError> {
        let body = AccessBody::new(access, judgement, &self.clock);
        let line = self.chain.line(kind::ACCESS, &body)?;
        let time = self.clock.unix_ns(access.first_ts_ns);
        self.write(&line, kind::ACCESS, time)?;
        self.maybe_rotate()
    }

    pub fn gap(&mut self, ts_ns: u64, reason: &str, count: u64) -> Result<(), TrailWriteError> {
        let body = GapBody {
            time: self.clock.rfc3339(ts_ns),
            reason: reason.to_string(),
            lost_events: count,
        };
        let line = self.chain.line(kind::GAP, &body)?;
        self.write(&line, kind::GAP, self.clock.unix_ns(ts_ns))?;
        self.maybe_rotate()
    }

    /// Time passes: a checkpoint when the interval is over and records wait for a signature;
    /// the retention check once an hour.
    pub fn tick(&mut self, now: i128) -> Result<(), TrailWriteError> {
        self.now = self.now.max(now);
        let interval = self.policy.checkpoint_interval.as_nanos() as i128;
        if self.now - self.last_signature >= interval && self.chain.unsigned() > 0 {
            self.checkpoint(CheckpointReason::Interval, None)?;
        }
        if self.now - self.last_retention_check >= 3_600_000_000_000 {
            self.retention(self.now)?;
        }
        Ok(())
    }

    /// The last record of a run: signed, synced.
    pub fn stop(&mut self, reason: &str, now: i128) -> Result<(), TrailWriteError> {
        self.now = self.now.max(now);
        let body = StopBody {
            time: rfc3339(self.now),
            key_id: self.key.key_id().to_string(),
            reason: reason.to_string(),
        };
        let line = self.chain.signed_line(kind::STOP, &body, &self.key)?;
        self.write(&line, kind::STOP, self.now)?;
        self.sync()
    }

    fn checkpoint(
        &mut self,
        reason: CheckpointReason,
        next_file: Option<u64>,
    ) -> Result<(), TrailWriteError> {
        let body = CheckpointBody {
            time: rfc3339(self.now),
            reason,
            key_id: self.key.key_id().to_string(),
            next_file,
        };
        let line = self.chain.signed_line(kind::CHECKPOINT, &body, &self.key)?;
        self.write(&line, kind::CHECKPOINT, self.now)?;
        self.last_signature = self.now;
        self.sync()
    }

    fn maybe_rotate(&mut self) -> Result<(), TrailWriteError> {
        let size = self.file.metadata().map_err(io_err(&self.dir))?.len();
        if size < self.policy.max_file_bytes {
            return Ok(());
        }
        let next = self.files.last().map_or(0, |f| f.index + 1);
        self.checkpoint(CheckpointReason::Rotation, Some(next))?;
        let path = self.dir.join(file_name(next));
        self.file = create(&path)?;
        self.begin_file(next, path)?;
        self.retention(self.now)
    }

    /// The `file` record that starts every file.
    fn begin_file(&mut self, index: u64, path: PathBuf) -> Result<(), TrailWriteError> {
        let head = self.chain.head();
        self.files.push(FileInfo {
            path,
            index,
            first_seq: head.next_seq,
            first_prev: hex::encode(head.prev),
            last_seq: head.next_seq,
            last_time: self.now,
            last_time_text: rfc3339(self.now),
        });
        let body = FileBody {
            time: rfc3339(self.now),
            schema: record::SCHEMA.to_string(),
            host: self.host.clone(),
            index,
        };
        let line = self.chain.line(kind::FILE, &body)?;
        self.write(&line, kind::FILE, self.now)
    }

    /// Deletes the oldest whole files whose last record is past retention, after writing the
    /// signed record that states what goes (a crash in between leaves files the record names:
    /// harmless; the reverse order could leave a trail that starts nowhere).
    fn retention(&mut self, now: i128) -> Result<(), TrailWriteError> {
        self.last_retention_check = now;
        let Some(keep) = self.policy.retention else {
            return Ok(());
        };
        let cutoff = now - keep.as_nanos() as i128;
        // Never the file being written.
        let candidates = self.files.len().saturating_sub(1);
        let n = self.files[..candidates]
            .iter()
            .take_while(|f| f.last_time < cutoff)
            .count();
        if n == 0 {
            return Ok(());
        }
        let dropped: Vec<FileInfo> = self.files[..n].to_vec();
        let kept = &self.files[n];
        let body = RetentionBody {
            time: rfc3339(now),
            key_id: self.key.key_id().to_string(),
            retention_days: u32::try_from(keep.as_secs() / 86_400).unwrap_or(u32::MAX),
            retention_seconds: keep.as_secs(),
            dropped_files: dropped
                .iter()
                .map(|f| {
                    f.path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .collect(),
            dropped_seqs: [dropped[0].first_seq, dropped[n - 1].last_seq],
            dropped_until: dropped[n - 1].last_time_text.clone(),
            first_kept_seq: kept.first_seq,
            first_kept_prev: kept.first_prev.clone(),
        };
        let line = self.chain.signed_line(kind::RETENTION, &body, &self.key)?;
        self.write(&line, kind::RETENTION, now)?;
        self.last_signature = self.now;
        self.sync()?;
        for f in &dropped {
            std::fs::remove_file(&f.path).map_err(io_err(&f.path))?;
            tracing::info!(file = %f.path.display(), "trail file past retention deleted");
        }
        self.files.drain(..n);
        Ok(())
    }

    fn write(&mut self, line: &[u8], _kind: &str, time: i128) -> Result<(), TrailWriteError> {
        let path = &self.files.last().expect("a trail writer has a file").path;
        self.file.write_all(line).map_err(io_err(path))?;
        self.written += 1;
        self.now = self.now.max(time);
        let last = self.files.last_mut().expect("a trail writer has a file");
        last.last_seq = self.chain.head().next_seq - 1;
        if time >= last.last_time {
            last.last_time = time;
            last.last_time_text = rfc3339(time);
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), TrailWriteError> {
        let path = &self.files.last().expect("a trail writer has a file").path;
        self.file.sync_data().map_err(io_err(path))
    }
}

/// Reads the signing key: a file only its owner can read (it signs what the regulator trusts).
pub fn load_key(path: &Path) -> Result<TrailKey, TrailWriteError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(io_err(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TrailWriteError::Foreign {
            path: path.display().to_string(),
            why: format!(
                "the trail key is readable or writable by group or others (mode {:04o}): chmod 600",
                mode & 0o7777
            ),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    TrailKey::parse(&text).map_err(|e| TrailWriteError::Foreign {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

/// Wall-clock time now, in Unix nanoseconds.
pub fn wall_now() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn create(path: &Path) -> Result<File, TrailWriteError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))
}

/// How much of a file's start or end is read to find its first or last line (a record is a
/// few hundred bytes; a request target is capped well below this).
const EDGE: u64 = 256 << 10;

/// The first `lines` complete lines of a file.
fn head_lines(path: &Path, lines: usize) -> Result<Vec<Vec<u8>>, TrailWriteError> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|f| f.take(EDGE).read_to_end(&mut buf))
        .map_err(io_err(path))?;
    Ok(buf
        .split_inclusive(|b| *b == b'\n')
        .take_while(|l| l.ends_with(b"\n"))
        .take(lines)
        .map(|l| l[..l.len() - 1].to_vec())
        .collect())
}

/// The last complete line of a file (a cut-short line after it is ignored).
fn tail_line(path: &Path) -> Result<Option<Vec<u8>>, TrailWriteError> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    let from = len.saturating_sub(EDGE);
    let mut buf = Vec::new();
    f.seek(SeekFrom::Start(from))
        .and_then(|_| f.read_to_end(&mut buf))
        .map_err(io_err(path))?;
    let Some(end) = memchr::memrchr(b'\n', &buf) else {
        return Ok(None);
    };
    match memchr::memrchr(b'\n', &buf[..end]) {
        Some(start) => Ok(Some(buf[start + 1..end].to_vec())),
        None if from == 0 => Ok(Some(buf[..end].to_vec())),
        None => Ok(None),
    }
}

/// Reads what the directory holds: the head of the chain, how the last run ended, the last
/// configuration digest, and each file's range. Only the first and last lines of older files
/// are read (a year of trail is not read at every start); the last file is read whole.
fn scan(dir: &Path) -> Result<Found, TrailWriteError> {
    let mut listed = list(dir).map_err(io_err(dir))?;
    if let Some((_, last)) = listed.last()
        && std::fs::metadata(last).map_err(io_err(last))?.len() == 0
    {
        // Created by a run killed before its first record: nothing to keep or to chain.
        std::fs::remove_file(last).map_err(io_err(last))?;
        listed.pop();
    }
    let foreign = |path: &Path, why: String| TrailWriteError::Foreign {
        path: path.display().to_string(),
        why,
    };
    let mut files = Vec::new();
    for (index, path) in &listed[..listed.len().saturating_sub(1)] {
        let first = head_lines(path, 1)?;
        let last = tail_line(path)?;
        let (Some(first), Some(last)) = (first.first(), last) else {
            return Err(foreign(path, "no complete record".into()));
        };
        let f = record::parse_link(first).map_err(|e| foreign(path, e.to_string()))?;
        let l = record::parse_link(&last).map_err(|e| foreign(path, e.to_string()))?;
        let (last_time, last_time_text) = time_of(&last).unwrap_or_default();
        files.push(FileInfo {
            path: path.clone(),
            index: *index,
            first_seq: f.seq,
            first_prev: hex::encode(f.prev),
            last_seq: l.seq,
            last_time,
            last_time_text,
        });
    }
    let mut head = Head::GENESIS;
    let mut previous = PreviousEnd::None;
    if let Some((index, path)) = listed.last() {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let end = memchr::memrchr(b'\n', &bytes).map_or(0, |e| e + 1);
        let (complete, partial) = bytes.split_at(end);
        let mut info: Option<FileInfo> = None;
        let mut last_signed = None;
        let mut last_kind = Vec::new();
        let mut last_line: &[u8] = &[];
        for line in complete.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let link = record::parse_link(line).map_err(|e| foreign(path, e.to_string()))?;
            if kind::is_signed(link.kind) {
                last_signed = Some(link.seq);
            }
            let info = info.get_or_insert_with(|| FileInfo {
                path: path.clone(),
                index: *index,
                first_seq: link.seq,
                first_prev: hex::encode(link.prev),
                last_seq: link.seq,
                last_time: 0,
                last_time_text: String::new(),
            });
            info.last_seq = link.seq;
            head = Head {
                next_seq: link.seq + 1,
                prev: record::digest(line),
            };
            last_kind = link.kind.to_vec();
            last_line = line;
        }
        let Some(mut info) = info else {
            return Err(foreign(path, "no complete record".into()));
        };
        if let Some((ns, text)) = time_of(last_line) {
            info.last_time = ns;
            info.last_time_text = text;
        }
        // A file without a signed record continues a rotated one, which ended signed.
        let last_signed = last_signed.or_else(|| info.first_seq.checked_sub(1));
        files.push(info);
        previous = if last_kind == kind::STOP.as_bytes() && partial.is_empty() {
            PreviousEnd::Clean {
                stop_seq: head.next_seq - 1,
            }
        } else {
            PreviousEnd::Unclean {
                last_seq: head.next_seq - 1,
                last_checkpoint_seq: last_signed,
                unsigned_records: head.next_seq - last_signed.map_or(0, |s| s + 1),
                partial_line_bytes: partial.len() as u64,
                partial_line_sha256: (!partial.is_empty())
                    .then(|| hex::encode(record::digest(partial))),
            }
        };
    }
    // The configuration of the last run: the `start` record that opens its first file.
    let mut config = None;
    for (_, path) in listed.iter().rev() {
        let lines = head_lines(path, 2)?;
        if let Some(line) = lines.get(1)
            && record::parse_link(line).is_ok_and(|l| l.kind == kind::START.as_bytes())
        {
            let start: StartBody = serde_json::from_slice(line)
                .map_err(|e| foreign(path, format!("unreadable start record: {e}")))?;
            config = Some((start.config_sha256, start.config_sections));
            break;
        }
    }
    Ok(Found {
        head,
        previous,
        config,
        files,
    })
}

/// A record's time, as Unix nanoseconds and as written.
fn time_of(line: &[u8]) -> Option<(i128, String)> {
    #[derive(serde::Deserialize)]
    struct T {
        time: String,
    }
    let t: T = serde_json::from_slice(line).ok()?;
    Some((monitor_core::walltime::parse_rfc3339(&t.time)?, t.time))
}

#[cfg(test)]
mod tests;
