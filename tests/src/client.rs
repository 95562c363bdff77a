//! A tiny blocking HTTP/1.1 client for tests: just enough to drive the demo portal (or another
//! portal) and check status codes and bodies.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Socket timeout: a test fails with an error instead of hanging on a silent server.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The `Authorization` header value for HTTP Basic credentials.
#[must_use]
pub fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")))
}

/// `GET target` on a new connection (sent with `Connection: close`); returns status and body.
pub fn http_get(addr: &str, target: &str, headers: &[(&str, &str)]) -> io::Result<(u16, Vec<u8>)> {
    let mut stream = connect(addr)?;
    stream.write_all(&request_head(addr, target, headers, true))?;
    let mut buf = Vec::new();
    read_response(&mut stream, &mut buf)
}

/// Sends raw bytes on a new connection, half-closes it, and returns everything the server
/// sends back until it closes: for malformed or hand-crafted requests.
pub fn send_raw(addr: &str, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = connect(addr)?;
    stream.write_all(bytes)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(response)
}

/// `POST /login` with the demo portal's form on a new connection; returns the status and the
/// `name=value` of the cookie the response sets, if any.
pub fn login(addr: &str, user: &str, password: &str) -> io::Result<(u16, Option<String>)> {
    let body = format!("user={user}&password={password}");
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = send_raw(addr, request.as_bytes())?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(io::ErrorKind::InvalidData, "no status line"))?;
    let cookie = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    Ok((status, cookie))
}

/// One persistent connection carrying successive requests, e.g. from different users, as a
/// reverse proxy multiplexing users over a pooled upstream connection would.
#[derive(Debug)]
pub struct KeepAlive {
    addr: String,
    stream: TcpStream,
    /// Bytes received beyond the last response.
    buf: Vec<u8>,
}

impl KeepAlive {
    pub fn connect(addr: &str) -> io::Result<KeepAlive> {
        Ok(KeepAlive {
            addr: addr.to_owned(),
            stream: connect(addr)?,
            buf: Vec::new(),
        })
    }

    /// `GET target` on this connection; the response is delimited by its Content-Length.
    pub fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> io::Result<(u16, Vec<u8>)> {
        self.stream
            .write_all(&request_head(&self.addr, target, headers, false))?;
        read_response(&mut self.stream, &mut self.buf)
    }

    /// Sends raw bytes on this connection, e.g. one part of a request head sent in pieces.
    pub fn send_part(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads the next response (after a request sent with [`KeepAlive::send_part`]).
    pub fn response(&mut self) -> io::Result<(u16, Vec<u8>)> {
        read_response(&mut self.stream, &mut self.buf)
    }

    /// The local address of the connection (the client side of the 4-tuple).
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.stream.local_addr()
    }
}

fn connect(addr: &str) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

fn request_head(host: &str, target: &str, headers: &[(&str, &str)], close: bool) -> Vec<u8> {
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n");
    if close {
        head.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Reads one response from `stream`, starting with the bytes already in `buf` and leaving
/// there whatever follows it. Without Content-Length the body runs to the end of the stream.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<(u16, Vec<u8>)> {
    let (status, head_len, content_length) = loop {
        if let Some(head) = parse_head(buf)? {
            break head;
        }
        if fill(stream, buf)? == 0 {
            return Err(invalid(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response head",
            ));
        }
    };
    let body = match content_length {
        Some(len) => {
            while buf.len() < head_len + len {
                if fill(stream, buf)? == 0 {
                    return Err(invalid(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a response body",
                    ));
                }
            }
            let body = buf[head_len..head_len + len].to_vec();
            buf.drain(..head_len + len);
            body
        }
        None => {
            stream.read_to_end(buf)?;
            let body = buf[head_len..].to_vec();
            buf.clear();
            body
        }
    };
    Ok((status, body))
}

/// Status, head length and Content-Length of a complete response head at the start of `buf`.
fn parse_head(buf: &[u8]) -> io::Result<Option<(u16, usize, Option<usize>)>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(invalid(
                io::ErrorKind::InvalidData,
                &format!("bad response head: {e}"),
            ));
        }
    };
    let status = response.code.unwrap_or_default();
    let content_length = match response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        Some(h) => Some(
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| invalid(io::ErrorKind::InvalidData, "bad Content-Length"))?,
        ),
        None => None,
    };
    Ok(Some((status, head_len, content_length)))
}

/// Appends what one read returns to `buf`.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0; 16 * 1024];
    let n = stream.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn invalid(kind: io::ErrorKind, message: &str) -> io::Error {
    io::Error::new(kind, message.to_owned())
}
