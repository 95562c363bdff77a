//! File access: the portal database, documents, and the document cache.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{
    Arc, LazyLock, Mutex, PoisonError,
    atomic::{AtomicUsize, Ordering},
};

/// Documents are read in chunks of this size (`--read-chunk`, 16 KiB unless told), so a large
/// document shows up as several reads.
pub(crate) static READ_CHUNK: AtomicUsize = AtomicUsize::new(16 * 1024);

/// How much of the portal database each request reads.
const PORTAL_DB_READ: usize = 4 * 1024;

/// Documents opened once and shared by every request of the process (`--cache`).
static CACHE: LazyLock<Mutex<HashMap<PathBuf, Arc<File>>>> = LazyLock::new(Default::default);

/// `ROOT/<area>/<rest>`, built by concatenation and never normalised.
///
/// `Path::join` is avoided on purpose: it would replace ROOT when `rest` starts with `/`, while
/// the portal's bug is to keep `..` components literally (the monitor must resolve them).
pub(crate) fn document_path(root: &Path, area: &str, rest: &[u8]) -> PathBuf {
    let mut path = root.as_os_str().as_bytes().to_vec();
    if !path.ends_with(b"/") {
        path.push(b'/');
    }
    path.extend_from_slice(area.as_bytes());
    path.push(b'/');
    path.extend_from_slice(rest);
    PathBuf::from(OsString::from_vec(path))
}

/// Opens `ROOT/portal.db` and reads up to 4 KiB of it: the non-document file access every
/// document request makes, as a real portal would consult its own database.
pub(crate) fn read_portal_db(root: &Path) -> io::Result<usize> {
    let mut db = File::open(root.join("portal.db"))?;
    let mut buf = [0; PORTAL_DB_READ];
    retry(|| db.read(&mut buf))
}

/// Returns the cached open file for `path`, opening it on first use.
pub(crate) fn open_cached(path: &Path) -> io::Result<Arc<File>> {
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(file) = cache.get(path) {
        return Ok(Arc::clone(file));
    }
    let file = File::open(path)?;
    regular_len(&file)?;
    let file = Arc::new(file);
    cache.insert(path.to_owned(), Arc::clone(&file));
    Ok(file)
}

/// How a whole document is read into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadWith {
    /// `read(2)` from the current offset.
    Read,
    /// `pread64` from offset 0.
    Pread,
}

/// An open document, ready to be sent.
#[derive(Debug)]
pub(crate) struct Document {
    file: DocFile,
    len: u64,
}

#[derive(Debug)]
enum DocFile {
    /// Opened for this request; dropping it closes it.
    Owned(File),
    /// Shared through the cache: never closed, and its offset must not be relied upon.
    Cached(Arc<File>),
}

impl Document {
    /// Opens the document (through the cache if asked). A path that exists but is not a
    /// regular file (a directory, say) is reported as not found.
    pub(crate) fn open(path: &Path, cache: bool) -> io::Result<Document> {
        let file = if cache {
            DocFile::Cached(open_cached(path)?)
        } else {
            DocFile::Owned(File::open(path)?)
        };
        let len = regular_len(file.as_file())?;
        Ok(Document { file, len })
    }

    /// The size at open time (used as Content-Length when the body is not read beforehand).
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn file(&self) -> &File {
        self.file.as_file()
    }

    /// Maps the whole document, then closes it (unless cached): the mapping outlives the fd.
    pub(crate) fn map(self) -> io::Result<crate::mapped::Mapping> {
        crate::mapped::Mapping::of(self.file.as_file(), self.len)
    }

    /// Reads the whole document with `pread64` and keeps it open; returns the bytes read.
    pub(crate) fn read_keeping_open(&self) -> io::Result<u64> {
        let mut chunk = vec![0; READ_CHUNK.load(Ordering::Relaxed)];
        let mut total = 0u64;
        loop {
            match retry(|| self.file().read_at(&mut chunk, total))? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    }

    /// Reads the whole document in chunks (`READ_CHUNK`), then closes it unless cached.
    ///
    /// A cached file is always read with `pread64`: its offset is shared by every request.
    pub(crate) fn read_all(self, with: ReadWith) -> io::Result<Vec<u8>> {
        let mut body = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        let mut chunk = vec![0; READ_CHUNK.load(Ordering::Relaxed)];
        let mut file = self.file.as_file();
        let positional = with == ReadWith::Pread || matches!(self.file, DocFile::Cached(_));
        loop {
            let n = if positional {
                retry(|| file.read_at(&mut chunk, body.len() as u64))?
            } else {
                retry(|| file.read(&mut chunk))?
            };
            if n == 0 {
                return Ok(body);
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
}

impl DocFile {
    fn as_file(&self) -> &File {
        match self {
            DocFile::Owned(file) => file,
            DocFile::Cached(file) => file,
        }
    }
}

/// The size of `file` if it is a regular file, else `NotFound`.
fn regular_len(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.is_file() {
        Ok(meta.len())
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "not a regular file",
        ))
    }
}

/// Repeats `op` while it is interrupted by a signal.
pub(crate) fn retry<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_path_keeps_dot_dot_and_leading_slashes() {
        let root = Path::new("/srv/portal");
        assert_eq!(
            document_path(root, "users", b"alice/../bob/notes.txt"),
            Path::new("/srv/portal/users/alice/../bob/notes.txt")
        );
        assert_eq!(
            document_path(Path::new("/srv/portal/"), "users", b"/etc"),
            Path::new("/srv/portal/users//etc")
        );
    }
}
