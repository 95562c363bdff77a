//! Socket I/O per server model. The differences between these types are the point of the demo
//! portal: each issues a different family of syscalls for the same HTTP exchange.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use super::docs::{Document, ReadWith, retry};

/// The I/O of one connection.
pub(crate) trait Wire {
    /// Reads request bytes; `Ok(0)` is end of stream.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Sends all of `data`.
    fn send(&mut self, data: &[u8]) -> io::Result<()>;

    /// Sends the head built by `head(body_len)` followed by the document; returns the body size.
    fn send_document(&mut self, head: &dyn Fn(u64) -> Vec<u8>, doc: Document) -> io::Result<u64>;

    /// The connection, for socket options and shutdown.
    fn stream(&self) -> &TcpStream;
}

/// `thread` model: plain `read(2)`/`write(2)` on the socket descriptor, documents read with
/// `read(2)` (what a portal written against file-descriptor APIs does).
pub(crate) struct FdWire(pub TcpStream);

impl Wire for FdWire {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.0.as_raw_fd();
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes and `fd` is owned by `self.0`.
        retry(|| cvt(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }))
    }

    fn send(&mut self, mut data: &[u8]) -> io::Result<()> {
        let fd = self.0.as_raw_fd();
        while !data.is_empty() {
            // SAFETY: `data` is valid for reads of `data.len()` bytes and `fd` is owned by
            // `self.0`. SIGPIPE is ignored by the Rust runtime, so a closed peer is an EPIPE.
            let n = retry(|| cvt(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) }))?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
        }
        Ok(())
    }

    fn send_document(&mut self, head: &dyn Fn(u64) -> Vec<u8>, doc: Document) -> io::Result<u64> {
        // Read everything (closing the file) before writing, and send head and body with a
        // single write(2) when the socket takes it all.
        let body = doc.read_all(ReadWith::Read)?;
        let len = body.len() as u64;
        let mut response = head(len);
        response.extend_from_slice(&body);
        self.send(&response)?;
        Ok(len)
    }

    fn stream(&self) -> &TcpStream {
        &self.0
    }
}

/// `thread` model with `--mmap`: as [`FdWire`], but documents are mapped, closed, and written
/// from the mapping with the head in one `writev(2)`.
pub(crate) struct MapWire(pub FdWire);

impl Wire for MapWire {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.send(data)
    }

    fn send_document(&mut self, head: &dyn Fn(u64) -> Vec<u8>, doc: Document) -> io::Result<u64> {
        let len = doc.len();
        let map = doc.map()?;
        crate::mapped::writev_all(self.0.0.as_raw_fd(), &[&head(len), map.as_slice()])?;
        Ok(len)
    }

    fn stream(&self) -> &TcpStream {
        self.0.stream()
    }
}

/// `prefork` model: `recv`/`send` on the socket (recvfrom/sendto syscalls), document bodies
/// copied by the kernel with `sendfile`.
pub(crate) struct SockWire(pub TcpStream);

impl Wire for SockWire {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.0.as_raw_fd();
        // SAFETY: as in `FdWire::recv`.
        retry(|| cvt(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) }))
    }

    fn send(&mut self, mut data: &[u8]) -> io::Result<()> {
        let fd = self.0.as_raw_fd();
        while !data.is_empty() {
            // SAFETY: as in `FdWire::send`; MSG_NOSIGNAL because forked workers must not rely
            // on the inherited SIGPIPE disposition.
            let n = retry(|| {
                cvt(unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) })
            })?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
        }
        Ok(())
    }

    fn send_document(&mut self, head: &dyn Fn(u64) -> Vec<u8>, doc: Document) -> io::Result<u64> {
        let len = doc.len();
        self.send(&head(len))?;
        sendfile_all(self.0.as_raw_fd(), doc.file().as_raw_fd(), len)?;
        Ok(len)
    }

    fn stream(&self) -> &TcpStream {
        &self.0
    }
}

/// Sends `len` bytes of `file` from offset 0. An explicit offset leaves the file's own offset
/// alone, which matters for cached descriptors shared by requests.
fn sendfile_all(socket: RawFd, file: RawFd, len: u64) -> io::Result<()> {
    let mut offset: libc::off_t = 0;
    let end =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    while offset < end {
        let count = usize::try_from(end - offset).unwrap_or(usize::MAX);
        // SAFETY: both descriptors are open for the duration of the call; `offset` is a valid
        // pointer that the kernel advances by the bytes sent.
        let n = retry(|| cvt(unsafe { libc::sendfile(socket, file, &mut offset, count) }))?;
        if n == 0 {
            // The file shrank after its size went out as Content-Length: the response cannot
            // be completed, so the caller drops the connection.
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// `pool` model: the standard library's socket I/O (recvfrom/sendto), documents read with
/// `pread64`.
pub(crate) struct StreamWire(pub TcpStream);

impl Wire for StreamWire {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        retry(|| self.0.read(buf))
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data)
    }

    fn send_document(&mut self, head: &dyn Fn(u64) -> Vec<u8>, doc: Document) -> io::Result<u64> {
        let body = doc.read_all(ReadWith::Pread)?;
        let len = body.len() as u64;
        let mut response = head(len);
        response.extend_from_slice(&body);
        self.send(&response)?;
        Ok(len)
    }

    fn stream(&self) -> &TcpStream {
        &self.0
    }
}

/// Converts a libc return value (`-1` and errno on failure) into a byte count.
fn cvt(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}
