//! A minimal writer of `newc` cpio archives, the format the kernel unpacks as an initramfs. Only
//! what an initramfs needs: directories, regular files and symlinks, owned by root, with a fixed
//! time, so the same inputs give the same archive.
use std::{
    collections::BTreeSet,
    io::{self, Write},
    path::Path,
};

pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
    written: u64,
    dirs: BTreeSet<String>,
}

impl<W: Write> Cpio<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            ino: 1,
            written: 0,
            dirs: BTreeSet::new(),
        }
    }

    /// A directory, and its parents first (each once).
    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.dirs.insert(path.to_string());
        self.entry(path, 0o040_755, &[])
    }

    /// A regular file at `path` (absolute in the archive), its parents created as needed.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.entry(path, 0o100_000 | (mode & 0o7777), data)
    }

    /// A regular file with the contents and permission bits of `src` on this machine.
    pub fn copy(&mut self, path: &str, src: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let data = std::fs::read(src)?;
        let mode = std::fs::metadata(src)?.permissions().mode();
        self.file(path, mode, &data)
    }

    /// Ends the archive; returns the writer and the archive's size in bytes.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.entry("TRAILER!!!", 0, &[])?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{name}: larger than 4 GiB")))?;
        let name_size =
            u32::try_from(name.len() + 1).map_err(|_| io::Error::other("file name too long"))?;
        let ino = if name == "TRAILER!!!" { 0 } else { self.ino };
        self.ino += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check: 8 hex digits each.
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{name_size:08x}{:08x}",
            0, 0, 0, 0, 0, 0, 0, 0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Header+name and data are each padded to a multiple of 4 bytes.
    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.put(&[0; 3][..n as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_newc_entries_padded_to_four_bytes() {
        let mut c = Cpio::new(Vec::new());
        c.file("/bin/x", 0o755, b"hello").unwrap();
        let (out, size) = c.finish().unwrap();
        assert_eq!(size, out.len() as u64);
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        // The parent directory first, then the file, then the trailer.
        let bin = text.find("bin\0").unwrap();
        let x = text.find("bin/x\0").unwrap();
        let trailer = text.find("TRAILER!!!\0").unwrap();
        assert!(bin < x && x < trailer);
        assert!(text.starts_with("070701"));
        // Directory mode 040755, then the file's 0100755 and size 5.
        assert_eq!(&text[14..22], "000041ed");
        let file_header = &text[x - 110..x];
        assert_eq!(&file_header[14..22], "000081ed");
        assert_eq!(&file_header[54..62], "00000005");
        assert!(text.contains("hello"));
    }

    #[test]
    fn directories_are_written_once() {
        let mut c = Cpio::new(Vec::new());
        c.file("/a/b/one", 0o644, b"1").unwrap();
        c.file("/a/b/two", 0o644, b"2").unwrap();
        c.dir("a").unwrap();
        let (out, _) = c.finish().unwrap();
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("a/b\0").count(), 1);
        assert_eq!(text.matches("a\0").count(), 1);
    }
}
