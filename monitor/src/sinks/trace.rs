//! Trace recorder: versioned JSON lines, exactly the events the correlator consumed, so that
//! `vigie replay` gives the same verdicts. Files rotate by size with a retention cap, are created
//! 0600 (they hold user names and paths of health documents), and only ever receive whole lines:
//! a crash leaves at most one partial last line, which the reader skips with a warning.
use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use monitor_core::{events::Event, ownership::fact::BackendKind, trace};

use crate::{config::Config, ownership::resolver::UsedFact};

/// The header of traces this daemon writes: the core's format, recording the resolved
/// configuration.
pub type TraceHeader = trace::TraceHeader<Config>;

/// The header of a new recording on this host.
pub fn header(config: &Config, clock: monitor_core::walltime::WallClock) -> TraceHeader {
    TraceHeader::new(
        config,
        clock,
        read_trim("/proc/sys/kernel/hostname"),
        read_trim("/proc/sys/kernel/osrelease"),
    )
}

pub(crate) fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Size-based rotation and retention.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Start a new file past this many bytes.
    pub max_file_bytes: u64,
    /// Keep at most this many files (the oldest are deleted).
    pub max_files: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_file_bytes: 256 << 20,
            max_files: 16,
        }
    }
}

pub struct TraceWriter {
    dir: PathBuf,
    /// Common prefix of this recording's files: `vigie-<unix seconds>-<pid>`.
    stem: String,
    header: TraceHeader,
    rotation: Rotation,
    out: BufWriter<File>,
    file_bytes: u64,
    files: Vec<PathBuf>,
    line: Vec<u8>,
    /// Ownership facts written to the current file: (backend, document) -> lookup generation.
    facts: HashMap<(BackendKind, String), u64>,
    /// Timestamp of the last event written (facts written at the end of input take it).
    last_ts_ns: u64,
}

/// Facts remembered per file before the set starts over (and facts are written again).
const MAX_FACTS_PER_FILE: usize = 65_536;

impl TraceWriter {
    /// Creates the directory (0700) if needed and the first file.
    pub fn create(dir: &Path, header: TraceHeader, rotation: Rotation) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let stem = format!("vigie-{unix}-{}", std::process::id());
        let (out, path) = open(dir, &stem, 0)?;
        let mut w = Self {
            dir: dir.to_path_buf(),
            stem,
            header,
            rotation,
            out,
            file_bytes: 0,
            files: vec![path],
            line: Vec::with_capacity(512),
            facts: HashMap::new(),
            last_ts_ns: 0,
        };
        w.write_header()?;
        Ok(w)
    }

    /// Files written so far, oldest first (deleted ones excluded).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Writes the header with its own buffer (`record` may be holding the next event's line),
    /// and flushes it at once: a file killed before its first flush is still a trace that
    /// replays, not an empty file replay refuses.
    fn write_header(&mut self) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&self.header).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.file_bytes += line.len() as u64;
        self.out.flush()
    }

    pub fn record(&mut self, ev: &Event) -> std::io::Result<()> {
        self.line.clear();
        trace::encode_event(&mut self.line, ev)?;
        if self.file_bytes + self.line.len() as u64 > self.rotation.max_file_bytes {
            self.rotate()?;
        }
        self.out.write_all(&self.line)?;
        self.file_bytes += self.line.len() as u64;
        self.last_ts_ns = ev.ts_ns;
        Ok(())
    }

    /// Writes the ownership facts the accesses of `ev` rest on, then `ev` (`None`: the end of
    /// input), all in one file: replaying that file alone, once retention deleted the older
    /// ones, still finds every fact it needs. A fact already in the current file (same lookup
    /// generation) is not written again.
    pub fn record_with_facts(
        &mut self,
        facts: &[UsedFact],
        ev: Option<&Event>,
    ) -> std::io::Result<()> {
        if facts.is_empty() {
            return ev.map_or(Ok(()), |ev| self.record(ev));
        }
        let ts_ns = ev.map_or(self.last_ts_ns, |e| e.ts_ns);
        let mut group = self.fact_lines(facts, ts_ns)?;
        let mut event_line = Vec::new();
        if let Some(ev) = ev {
            trace::encode_event(&mut event_line, ev)?;
        }
        if self.file_bytes + (group.len() + event_line.len()) as u64 > self.rotation.max_file_bytes
        {
            self.rotate()?;
            group = self.fact_lines(facts, ts_ns)?;
        }
        group.extend_from_slice(&event_line);
        self.out.write_all(&group)?;
        self.file_bytes += group.len() as u64;
        self.last_ts_ns = ts_ns;
        Ok(())
    }

    /// The lines of the facts not yet in the current file, marked as written.
    fn fact_lines(&mut self, facts: &[UsedFact], ts_ns: u64) -> std::io::Result<Vec<u8>> {
        let mut lines = Vec::new();
        for used in facts {
            let key = (used.fact.backend, used.fact.document.clone());
            if self.facts.get(&key) == Some(&used.generation) {
                continue;
            }
            if self.facts.len() >= MAX_FACTS_PER_FILE {
                self.facts.clear();
            }
            self.facts.insert(key, used.generation);
            trace::encode_event(&mut lines, &trace::fact_event(ts_ns, used.fact.clone()))?;
        }
        Ok(lines)
    }

    /// Pushes buffered lines to the file (called on every reader tick and at exit).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.header.file_seq += 1;
        self.facts.clear();
        let (out, path) = open(&self.dir, &self.stem, self.header.file_seq)?;
        self.out = out;
        self.file_bytes = 0;
        self.files.push(path);
        while self.files.len() > self.rotation.max_files.max(1) {
            let old = self.files.remove(0);
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!("trace retention: cannot delete {}: {e}", old.display());
            }
        }
        self.write_header()
    }
}

fn open(dir: &Path, stem: &str, seq: u64) -> std::io::Result<(BufWriter<File>, PathBuf)> {
    let path = dir.join(format!("{stem}-{seq:04}.jsonl"));
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)?;
    Ok((BufWriter::with_capacity(64 << 10, file), path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use monitor_core::events::EventKind;

    fn config() -> Config {
        Config::parse("[documents]\nroots = [\"/srv/d\"]\n", "t").unwrap()
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vigie-trace-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    use monitor_core::{
        trace::{FORMAT, config_digest},
        walltime::WallClock,
    };

    fn ev(i: u64) -> Event {
        Event {
            ts_ns: i,
            pid: 1,
            tid: 1,
            comm: "p".into(),
            goid: None,
            kind: EventKind::FileRead {
                fd: 3,
                bytes: i,
                fp: None,
                size: None,
            },
        }
    }

    #[test]
    fn files_are_private_rotated_and_capped() {
        let dir = tmp("rotate");
        let header = super::header(
            &config(),
            WallClock {
                realtime_offset_ns: 5,
            },
        );
        let mut w = TraceWriter::create(
            &dir,
            header,
            Rotation {
                max_file_bytes: 4096,
                max_files: 3,
            },
        )
        .unwrap();
        for i in 0..500 {
            w.record(&ev(i)).unwrap();
        }
        w.flush().unwrap();
        let files = w.files().to_vec();
        assert_eq!(files.len(), 3);
        // Nothing lost within the kept files: the last file ends with the last event.
        let last = std::fs::read_to_string(files.last().unwrap()).unwrap();
        let last_event: Event = serde_json::from_str(last.lines().last().unwrap()).unwrap();
        assert_eq!(last_event, ev(499));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            3,
            "older files deleted"
        );
        for f in &files {
            let meta = std::fs::metadata(f).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            assert!(meta.len() <= 4096 + 512);
            let text = std::fs::read_to_string(f).unwrap();
            let header: TraceHeader = serde_json::from_str(text.lines().next().unwrap()).unwrap();
            assert_eq!(header.vigie_trace, FORMAT);
            for line in text.lines().skip(1) {
                serde_json::from_str::<Event>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn fact(doc: &str, owner: &str, generation: u64) -> UsedFact {
        use monitor_core::ownership::fact::{Answer, Fact};
        UsedFact {
            fact: Fact::new(
                BackendKind::Sqlite,
                doc,
                &Answer::Owner {
                    owner: owner.into(),
                    shared_with: vec![],
                    matched: None,
                },
            ),
            generation,
        }
    }

    fn kinds(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| match serde_json::from_str::<Event>(l).unwrap().kind {
                EventKind::OwnershipFact(f) => format!("fact {} {}", f.document, f.owner.unwrap()),
                EventKind::FileRead { bytes, .. } => format!("read {bytes}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn facts_precede_their_event_once_per_file_and_rotate_with_it() {
        let dir = tmp("facts");
        let header = super::header(
            &config(),
            WallClock {
                realtime_offset_ns: 0,
            },
        );
        let mut w = TraceWriter::create(
            &dir,
            header,
            Rotation {
                max_file_bytes: 8192,
                max_files: 10,
            },
        )
        .unwrap();
        let a1 = fact("/d/a", "alice", 1);
        w.record_with_facts(&[a1.clone(), a1.clone()], Some(&ev(1)))
            .unwrap();
        // Same lookup (a cache hit): not written again in this file.
        w.record_with_facts(std::slice::from_ref(&a1), Some(&ev(2)))
            .unwrap();
        // A new lookup of the same document: written again.
        let a2 = fact("/d/a", "bob", 2);
        w.record_with_facts(std::slice::from_ref(&a2), Some(&ev(3)))
            .unwrap();
        w.record_with_facts(&[], Some(&ev(4))).unwrap();
        w.record_with_facts(&[fact("/d/b", "carol", 3)], None)
            .unwrap();
        w.flush().unwrap();
        assert_eq!(
            kinds(&w.files()[0]),
            [
                "fact /d/a alice",
                "read 1",
                "read 2",
                "fact /d/a bob",
                "read 3",
                "read 4",
                "fact /d/b carol"
            ]
        );
        // Fill the file: the group that does not fit goes to the next file whole, with the fact
        // again although the previous file has it.
        let mut i = 10;
        while w.files().len() == 1 {
            w.record_with_facts(std::slice::from_ref(&a2), Some(&ev(i)))
                .unwrap();
            i += 1;
        }
        w.flush().unwrap();
        assert_eq!(
            kinds(&w.files()[1]),
            ["fact /d/a bob", &format!("read {}", i - 1)]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_new_file_holds_its_header_before_any_flush() {
        let dir = tmp("header");
        let header = super::header(
            &config(),
            WallClock {
                realtime_offset_ns: 5,
            },
        );
        let mut w = TraceWriter::create(&dir, header.clone(), Rotation::default()).unwrap();
        w.record(&ev(1)).unwrap();
        // As a SIGKILL would find it: no flush since creation.
        let text = std::fs::read_to_string(&w.files()[0]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(
            serde_json::from_str::<TraceHeader>(lines[0]).unwrap(),
            header
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn digest_follows_the_config() {
        let a = config();
        let mut b = config();
        assert_eq!(config_digest(&a), config_digest(&b));
        b.policy.privileged_users.push("agent".into());
        assert_ne!(config_digest(&a), config_digest(&b));
    }
}
