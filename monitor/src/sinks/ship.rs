//! Ships the audit trail off the host, at least once. The trail files are the spool: a shipper
//! follows them from a cursor (the next sequence number to ship, kept in a small file beside
//! the trail), so records written while the destination was down, or before a SIGKILL of
//! Vigie, are sent when both are back. Duplicates are possible (a record whose delivery was
//! not confirmed is sent again) and carry the same `seq`.
//!
//! - [`Follower`]: reads trail records from a sequence number on, across rotations and
//!   restarts, waiting at the end of the newest file for more;
//! - [`syslog`]: the RFC 5424 over TCP (or TLS, RFC 5425) destination;
//! - [`postgres`]: the PostgreSQL table partitioned by month;
//! - [`tls`]: TLS to both, the server's certificate always verified;
//! - [`Shipper`]: a destination's thread, stopped after sending what the trail holds.
pub mod postgres;
pub mod syslog;
pub mod tls;

use std::{
    fs::File,
    io::{Read as _, Seek as _},
    path::{Path, PathBuf},
};

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use monitor_core::trail::record;

use monitor_core::trail::pseudonym::Pseudonymiser;

/// A record's bytes as shipped: pseudonymised when a key is configured.
pub fn shipped_line<'a>(
    pseudonyms: Option<&Pseudonymiser>,
    line: &'a [u8],
) -> std::borrow::Cow<'a, [u8]> {
    match pseudonyms {
        Some(p) => std::borrow::Cow::Owned(p.line(line)),
        None => std::borrow::Cow::Borrowed(line),
    }
}

/// How long a stopping shipper may take to send what the trail holds.
pub const FINISH_GRACE: Duration = Duration::from_secs(5);

/// A destination's shipping thread; [`Shipper::finish`] stops it.
#[derive(Debug)]
pub struct Shipper {
    name: &'static str,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Shipper {
    /// Runs `body` on a thread of its own; `body` returns once the flag it gets is set and it
    /// sent what it could (within [`FINISH_GRACE`]).
    pub fn spawn(
        name: &'static str,
        body: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ship-{name}"))
            .spawn(move || body(flag))?;
        Ok(Self {
            name,
            stop,
            thread: Some(thread),
        })
    }

    /// Tells the thread to send what the trail holds now and stop (see [`Shipper::finish`]).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Sends what the trail holds now (at most [`FINISH_GRACE`]), then stops. The next run
    /// sends whatever was left.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + FINISH_GRACE + Duration::from_secs(1);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            tracing::warn!(
                destination = self.name,
                "trail shipping did not finish in time: the next run sends the rest"
            );
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// When a stopping shipper must give up: set at the first look after the stop flag.
#[derive(Debug, Default)]
pub struct StopClock(Option<Instant>);

impl StopClock {
    /// `Some(past_deadline)` once stopping.
    pub fn check(&mut self, flag: &AtomicBool) -> Option<bool> {
        if !flag.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        Some(now >= *self.0.get_or_insert(now + FINISH_GRACE))
    }
}

/// One trail record as written (without its newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipped {
    pub seq: u64,
    pub line: Vec<u8>,
}

/// Reads trail records in order from the files of a trail directory, from a sequence number on.
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    /// The file being read: its index and the open file.
    current: Option<(u64, File)>,
    /// Bytes read from `current` not yet split into lines (a line being written).
    pending: Vec<u8>,
    /// Records before this are skipped.
    from: u64,
    /// The sequence number of the last record returned, if any.
    last: Option<u64>,
}

impl Follower {
    /// Starts at the record numbered `from` (or the first record kept, when retention deleted
    /// the file that held it).
    pub fn open(dir: &Path, from: u64) -> std::io::Result<Self> {
        let mut f = Self {
            dir: dir.to_path_buf(),
            current: None,
            pending: Vec::new(),
            from,
            last: None,
        };
        // The newest file whose first record is at or before `from`.
        let files = crate::sinks::trail::list(dir)?;
        let mut start = files.first().map(|(i, _)| *i);
        for (index, path) in &files {
            match first_seq(path)? {
                Some(seq) if seq <= from => start = Some(*index),
                Some(_) => break,
                None => {}
            }
        }
        if let Some(index) = start {
            f.open_index(index)?;
        }
        Ok(f)
    }

    fn open_index(&mut self, index: u64) -> std::io::Result<()> {
        let path = self.dir.join(crate::sinks::trail::file_name(index));
        self.current = Some((index, File::open(path)?));
        self.pending.clear();
        Ok(())
    }

    /// The next file after the current one, if the writer created one.
    fn next_file(&self) -> std::io::Result<Option<u64>> {
        let after = self.current.as_ref().map(|(i, _)| *i);
        Ok(crate::sinks::trail::list(&self.dir)?
            .into_iter()
            .map(|(i, _)| i)
            .find(|i| after.is_none_or(|a| *i > a)))
    }

    /// Up to `max` records; none when the trail has nothing new yet.
    pub fn next_batch(&mut self, max: usize) -> std::io::Result<Vec<Shipped>> {
        let mut out = Vec::new();
        loop {
            self.take_lines(&mut out, max);
            if out.len() >= max {
                return Ok(out);
            }
            let Some((_, file)) = self.current.as_mut() else {
                // No file yet: the trail is being created.
                if let Some(i) = self.next_file()? {
                    self.open_index(i)?;
                    continue;
                }
                return Ok(out);
            };
            let mut buf = vec![0; 256 << 10];
            let n = file.read(&mut buf)?;
            if n > 0 {
                self.pending.extend_from_slice(&buf[..n]);
                continue;
            }
            // At the end of this file. A newer file means this one is complete: a cut-short
            // last line (a write a SIGKILL interrupted) is outside the chain and left behind.
            match self.next_file()? {
                Some(i) => {
                    // Read what came between our read and the listing first.
                    let (_, file) = self.current.as_mut().expect("a current file");
                    let pos = file.stream_position()?;
                    let len = file.metadata()?.len();
                    if len > pos {
                        continue;
                    }
                    self.open_index(i)?;
                }
                None => return Ok(out),
            }
        }
    }

    fn take_lines(&mut self, out: &mut Vec<Shipped>, max: usize) {
        let mut used = 0;
        while out.len() < max {
            let Some(nl) = memchr::memchr(b'\n', &self.pending[used..]) else {
                break;
            };
            let line = &self.pending[used..used + nl];
            used += nl + 1;
            let Ok(link) = record::parse_link(line) else {
                tracing::warn!("trail shipping: a line that is not a trail record skipped");
                continue;
            };
            if link.seq < self.from || self.last.is_some_and(|l| link.seq <= l) {
                continue;
            }
            self.last = Some(link.seq);
            out.push(Shipped {
                seq: link.seq,
                line: line.to_vec(),
            });
        }
        self.pending.drain(..used);
    }
}

/// The sequence number of a file's first record (None: no complete line yet).
fn first_seq(path: &Path) -> std::io::Result<Option<u64>> {
    let mut f = File::open(path)?;
    let mut buf = vec![0; 64 << 10];
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
        if memchr::memchr(b'\n', &buf[..n]).is_some() {
            break;
        }
    }
    let Some(nl) = memchr::memchr(b'\n', &buf[..n]) else {
        return Ok(None);
    };
    Ok(record::parse_link(&buf[..nl]).ok().map(|l| l.seq))
}

/// Where a destination's shipping stands: the next sequence number to ship, in a file of the
/// trail directory (`ship-<name>.cursor`). Losing it only means sending again.
#[derive(Debug)]
pub struct Cursor {
    path: PathBuf,
    next: u64,
}

impl Cursor {
    pub fn load(dir: &Path, name: &str) -> std::io::Result<Self> {
        let path = dir.join(format!("ship-{name}.cursor"));
        let next = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                tracing::warn!(file = %path.display(), "unreadable shipping cursor: shipping the whole trail again");
                0
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(Self { path, next })
    }

    pub fn next(&self) -> u64 {
        self.next
    }

    /// Records before `next` are delivered (written with a rename: never half a number).
    pub fn advance(&mut self, next: u64) -> std::io::Result<()> {
        if next <= self.next {
            return Ok(());
        }
        self.next = next;
        let tmp = self.path.with_extension("cursor.tmp");
        std::fs::write(&tmp, format!("{next}\n"))?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64) -> String {
        format!(
            "{{\"seq\":{seq},\"prev\":\"{}\",\"type\":\"access\",\"time\":\"x\"}}\n",
            "0".repeat(64)
        )
    }

    #[test]
    fn follows_files_from_a_seq_and_waits_for_whole_lines() {
        let dir = std::env::temp_dir().join(format!("vigie-follow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f0 = dir.join(crate::sinks::trail::file_name(0));
        // File 0 ends with a line a kill cut short: skipped once file 1 exists.
        std::fs::write(
            &f0,
            format!("{}{}{}{{\"seq\":3,", line(0), line(1), line(2)),
        )
        .unwrap();
        let mut f = Follower::open(&dir, 1).unwrap();
        let got: Vec<u64> = f.next_batch(10).unwrap().iter().map(|s| s.seq).collect();
        assert_eq!(got, [1, 2]);
        assert!(f.next_batch(10).unwrap().is_empty());
        let f1 = dir.join(crate::sinks::trail::file_name(1));
        std::fs::write(&f1, format!("{}{}", line(3), &line(4)[..10])).unwrap();
        let got: Vec<u64> = f.next_batch(10).unwrap().iter().map(|s| s.seq).collect();
        assert_eq!(got, [3]);
        // The rest of the line being written arrives.
        use std::io::Write as _;
        let mut w = std::fs::OpenOptions::new().append(true).open(&f1).unwrap();
        w.write_all(&line(4).as_bytes()[10..]).unwrap();
        let got = f.next_batch(10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].line, line(4).trim_end().as_bytes());
        // Starting later skips whole files.
        let mut f = Follower::open(&dir, 4).unwrap();
        assert_eq!(f.next_batch(10).unwrap()[0].seq, 4);
        // A cursor survives a reload.
        let mut c = Cursor::load(&dir, "test").unwrap();
        assert_eq!(c.next(), 0);
        c.advance(5).unwrap();
        assert_eq!(Cursor::load(&dir, "test").unwrap().next(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
