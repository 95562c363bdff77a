//! Documents served from a memory mapping, as PHP's `readfile()` and many static servers do:
//! open, `mmap`, close, then write from the mapping. No `read(2)` ever touches the document.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A read-only private mapping of a whole file, unmapped on drop. It stays valid after the
/// file is closed.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned; the pointer is only read through `as_slice`.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `file` (its size). An empty file maps to an empty slice
    /// without a syscall (`mmap` refuses a length of 0).
    pub fn of(file: &File, len: u64) -> io::Result<Mapping> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if len == 0 {
            return Ok(Mapping {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh private read-only mapping of an open file; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes until drop. A file truncated under the
        // mapping would fault on access (SIGBUS): the demo's documents are never truncated.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping what `of` mapped, once.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

/// Writes all of `parts` to `fd` with `writev(2)`, continuing after short writes.
pub fn writev_all(fd: i32, parts: &[&[u8]]) -> io::Result<()> {
    let mut parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    while !parts.is_empty() {
        let iov: Vec<libc::iovec> = parts
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr().cast_mut().cast(),
                iov_len: p.len(),
            })
            .collect();
        let count = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: each iovec points into a live slice of `parts`.
        let n = unsafe { libc::writev(fd, iov.as_ptr(), count) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut n = n as usize;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while let Some(first) = parts.first_mut() {
            if n < first.len() {
                *first = &first[n..];
                break;
            }
            n -= first.len();
            parts.remove(0);
        }
    }
    Ok(())
}
