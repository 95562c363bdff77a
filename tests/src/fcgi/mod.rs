//! The FastCGI demo application: a small, deliberately vulnerable document service that runs
//! behind a real front web server (nginx, in the tests) and speaks real FastCGI with it, on a
//! unix socket or TCP.
//!
//! Its bug is the demo portal's: any identified user may read any user's document (an IDOR).
//! It serves documents the way PHP's `readfile()` and many static servers do, from a memory
//! mapping, and reads its records the way php-fpm does:
//!
//! | step      | syscalls                                                                      |
//! |-----------|-------------------------------------------------------------------------------|
//! | accept    | `accept4`, a thread per connection (`fcgi-conn`), requests in turn on it      |
//! | records   | `read(2)` of each 8-byte header, then of its content and padding              |
//! | documents | `openat`, `mmap`, `close` at once, then `writev(header, mapping slice)`       |
//! | responses | `write(2)` of the CGI head in one STDOUT record, body records, END_REQUEST    |
//!
//! Who the user is, as the application decides it (not as Vigie does): `REMOTE_USER` (the front
//! server authenticated the user), else the `X-Remote-User` header, else the user of HTTP Basic
//! credentials (not checked), else the `session` cookie. Routes:
//! - `POST /login` with `user=NAME&password=...`: a session, in a `session` cookie (303);
//! - `GET /logout`: the session ends;
//! - `GET [/secure]/docs/OWNER/NAME[?deny]`: the document, or, with `deny`, a 403 *after* the
//!   document was mapped (a late refusal: the read happened);
//! - `GET /healthz`.
//!
//! With `--session-dir`, sessions are also files `sess_<id>` holding the user name, as PHP's
//! default session handler keeps them: a restarted application still knows them.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use base64::Engine as _;
use clap::Parser;

use crate::mapped::{Mapping, writev_all};

/// Record types used here (FastCGI specification, section 8).
mod kind {
    pub const BEGIN_REQUEST: u8 = 1;
    pub const ABORT_REQUEST: u8 = 2;
    pub const END_REQUEST: u8 = 3;
    pub const PARAMS: u8 = 4;
    pub const STDIN: u8 = 5;
    pub const STDOUT: u8 = 6;
    pub const GET_VALUES: u8 = 9;
    pub const GET_VALUES_RESULT: u8 = 10;
    pub const UNKNOWN_TYPE: u8 = 11;
}

/// `FCGI_KEEP_CONN`: the front server keeps the connection for further requests.
const KEEP_CONN: u8 = 1;

/// Body records written from a mapping carry at most this much.
const BODY_RECORD: usize = 32 * 1024;

/// Largest request body kept (a login form is small).
const MAX_STDIN: usize = 64 * 1024;

/// Deliberately vulnerable FastCGI document application used to test Vigie behind nginx.
#[derive(Debug, Clone, Parser)]
#[command(name = "demo-fcgi", version)]
pub struct Config {
    /// Document root: documents live at ROOT/users/<owner>/<name>.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,

    /// `unix:PATH`, or `IP:PORT` (port 0 picks a free port). Announced as `LISTENING <addr>`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: String,

    /// (Re)create the demo users and documents under ROOT first.
    #[arg(long)]
    pub generate: bool,

    /// Keep sessions as files `sess_<id>` in this directory too (PHP's files handler).
    #[arg(long, value_name = "DIR")]
    pub session_dir: Option<PathBuf>,
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn accept(&self) -> io::Result<OwnedFd> {
        // std's accept is accept4(SOCK_CLOEXEC).
        Ok(match self {
            Listener::Unix(l) => l.accept()?.0.into(),
            Listener::Tcp(l) => l.accept()?.0.into(),
        })
    }
}

/// Sessions: id -> user, in memory and (with `--session-dir`) in files.
struct Sessions {
    map: Mutex<HashMap<String, String>>,
    dir: Option<PathBuf>,
}

impl Sessions {
    fn user(&self, id: &str) -> Option<String> {
        if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let known = self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        known.or_else(|| {
            let dir = self.dir.as_ref()?;
            let user = std::fs::read_to_string(dir.join(format!("sess_{id}"))).ok()?;
            Some(user.trim().to_owned()).filter(|u| !u.is_empty())
        })
    }

    fn create(&self, user: &str) -> io::Result<String> {
        let mut raw = [0u8; 16];
        // SAFETY: getrandom writes at most `raw.len()` bytes into `raw`.
        let n = unsafe { libc::getrandom(raw.as_mut_ptr().cast(), raw.len(), 0) };
        if n != raw.len() as isize {
            return Err(io::Error::last_os_error());
        }
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        if let Some(dir) = &self.dir {
            std::fs::write(dir.join(format!("sess_{id}")), format!("{user}\n"))?;
        }
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), user.to_owned());
        Ok(id)
    }

    fn end(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        if let Some(dir) = &self.dir
            && id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            let _ = std::fs::remove_file(dir.join(format!("sess_{id}")));
        }
    }
}

struct App {
    root: PathBuf,
    sessions: Sessions,
}

/// Runs the application: never returns unless set-up fails.
pub fn run(config: Config) -> io::Result<()> {
    if config.generate {
        crate::portal::generate(&config.root)?;
    }
    if let Some(dir) = &config.session_dir {
        std::fs::create_dir_all(dir)?;
    }
    let (listener, announced) = match config.listen.strip_prefix("unix:") {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path)?;
            // The front server's workers run as another user.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
            (Listener::Unix(l), config.listen.clone())
        }
        None => {
            let addr: std::net::SocketAddr = config.listen.parse().map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("--listen: {e}"))
            })?;
            let l = TcpListener::bind(addr)?;
            let local = l.local_addr()?.to_string();
            (Listener::Tcp(l), local)
        }
    };
    exit_on_sigterm();
    let app = Arc::new(App {
        root: config.root,
        sessions: Sessions {
            map: Mutex::new(HashMap::new()),
            dir: config.session_dir,
        },
    });
    {
        let mut out = io::stdout().lock();
        writeln!(out, "LISTENING {announced}")?;
        out.flush()?;
    }
    loop {
        let conn = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                log_line(&format!("accept failed: {e}"));
                thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let app = Arc::clone(&app);
        let spawned = thread::Builder::new()
            .name("fcgi-conn".into())
            .spawn(move || serve_connection(&conn, &app));
        if let Err(e) = spawned {
            log_line(&format!("cannot spawn a connection thread: {e}"));
        }
    }
}

/// SIGTERM ends the process at once with status 0 (the test guards stop it so).
fn exit_on_sigterm() {
    extern "C" fn bye(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: installing a handler that only calls _exit.
    unsafe {
        libc::signal(libc::SIGTERM, bye as *const () as libc::sighandler_t);
    }
}

/// One request being received.
#[derive(Default)]
struct Pending {
    id: u16,
    keep_conn: bool,
    params: Vec<u8>,
    stdin: Vec<u8>,
}

fn serve_connection(conn: &OwnedFd, app: &App) {
    let fd = conn.as_raw_fd();
    let mut pending: Option<Pending> = None;
    loop {
        let mut header = [0u8; 8];
        match read_full(fd, &mut header) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                log_line(&format!("read failed: {e}"));
                return;
            }
        }
        if header[0] != 1 {
            log_line("not FastCGI: closing");
            return;
        }
        let (kind, id) = (header[1], u16::from_be_bytes([header[2], header[3]]));
        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let mut content = vec![0u8; len + usize::from(header[6])];
        if !content.is_empty() && !matches!(read_full(fd, &mut content), Ok(true)) {
            return;
        }
        content.truncate(len);
        let sent = match kind {
            kind::BEGIN_REQUEST => {
                pending = Some(Pending {
                    id,
                    keep_conn: content.get(2).is_some_and(|f| f & KEEP_CONN != 0),
                    ..Pending::default()
                });
                Ok(())
            }
            kind::PARAMS => {
                if let Some(p) = pending.as_mut().filter(|p| p.id == id) {
                    p.params.extend_from_slice(&content);
                }
                Ok(())
            }
            kind::STDIN if !content.is_empty() => {
                if let Some(p) = pending.as_mut().filter(|p| p.id == id)
                    && p.stdin.len() + content.len() <= MAX_STDIN
                {
                    p.stdin.extend_from_slice(&content);
                }
                Ok(())
            }
            kind::STDIN => match pending.take().filter(|p| p.id == id) {
                Some(p) => {
                    let keep = p.keep_conn;
                    let result = app.respond(fd, &p);
                    if result.is_ok() && !keep {
                        return;
                    }
                    result
                }
                None => Ok(()),
            },
            kind::ABORT_REQUEST => {
                pending = None;
                write_record(fd, kind::END_REQUEST, id, &end_request_body())
            }
            kind::GET_VALUES => write_record(fd, kind::GET_VALUES_RESULT, 0, &[]),
            other => write_record(fd, kind::UNKNOWN_TYPE, 0, &[other, 0, 0, 0, 0, 0, 0, 0]),
        };
        if let Err(e) = sent {
            log_line(&format!("write failed: {e}"));
            return;
        }
    }
}

/// What happened to one request, for the log line.
struct Outcome {
    user: Option<String>,
    status: u16,
    bytes: usize,
    /// Whether the response went out: a request is logged (and its document was read) even
    /// when the front server closed the connection under it.
    sent: io::Result<()>,
}

impl App {
    fn respond(&self, fd: i32, req: &Pending) -> io::Result<()> {
        let params = parse_params(&req.params);
        let param = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
        let method = param("REQUEST_METHOD");
        let uri = param("REQUEST_URI");
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let path = path.strip_prefix("/secure").unwrap_or(path);
        let cookie = session_cookie(param("HTTP_COOKIE"));
        let user = self.identify(&params, cookie.as_deref());
        let mut outcome = match (method, path) {
            ("GET", "/healthz") => text(fd, req.id, user, 200, "", "ok\n"),
            ("POST", "/login") => self.login(fd, req)?,
            ("GET", "/logout") => {
                if let Some(id) = &cookie {
                    self.sessions.end(id);
                }
                text(
                    fd,
                    req.id,
                    user,
                    200,
                    "Set-Cookie: session=; Path=/; Max-Age=0\r\n",
                    "bye\n",
                )
            }
            ("GET", p) if p.starts_with("/docs/") => {
                let rest = &p["/docs/".len()..];
                self.document(
                    fd,
                    req.id,
                    user,
                    rest,
                    query.split('&').any(|q| q == "deny"),
                )?
            }
            _ => text(fd, req.id, user, 404, "", "Not Found\n"),
        };
        if outcome.sent.is_ok() {
            outcome.sent = write_record(fd, kind::END_REQUEST, req.id, &end_request_body());
        }
        log_line(&format!(
            "{} {} {} {method} {uri} {} {}",
            // SAFETY: getpid and gettid cannot fail.
            unsafe { libc::getpid() },
            unsafe { libc::gettid() },
            outcome.user.as_deref().unwrap_or("-"),
            outcome.status,
            outcome.bytes
        ));
        outcome.sent
    }

    /// The user as the application sees it (see the module documentation).
    fn identify(&self, params: &HashMap<String, String>, cookie: Option<&str>) -> Option<String> {
        let non_empty = |name: &str| params.get(name).filter(|v| !v.is_empty()).cloned();
        non_empty("REMOTE_USER")
            .or_else(|| non_empty("HTTP_X_REMOTE_USER"))
            .or_else(|| {
                let token = params.get("HTTP_AUTHORIZATION")?.strip_prefix("Basic ")?;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(token.trim())
                    .ok()?;
                let text = String::from_utf8(decoded).ok()?;
                Some(text.split_once(':')?.0.to_owned())
            })
            .or_else(|| self.sessions.user(cookie?))
    }

    fn login(&self, fd: i32, req: &Pending) -> io::Result<Outcome> {
        let form = String::from_utf8_lossy(&req.stdin).into_owned();
        let field = |name: &str| {
            form.split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_default()
                .to_owned()
        };
        let (user, password) = (field("user"), field("password"));
        if user.is_empty()
            || password.is_empty()
            || !user.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Ok(text(fd, req.id, None, 403, "", "bad credentials\n"));
        }
        let id = self.sessions.create(&user)?;
        let head = format!(
            "Status: 303 See Other\r\nSet-Cookie: session={id}; Path=/; HttpOnly\r\nLocation: /\r\nContent-Length: 0\r\n\r\n"
        );
        let sent = write_record(fd, kind::STDOUT, req.id, head.as_bytes())
            .and_then(|()| write_record(fd, kind::STDOUT, req.id, &[]));
        Ok(Outcome {
            user: Some(user),
            status: 303,
            bytes: 0,
            sent,
        })
    }

    fn document(
        &self,
        fd: i32,
        id: u16,
        user: Option<String>,
        rest: &str,
        deny: bool,
    ) -> io::Result<Outcome> {
        if user.is_none() {
            return Ok(text(fd, id, None, 401, "", "Unauthorized\n"));
        }
        if rest.is_empty() || rest.contains('\0') {
            return Ok(text(fd, id, user, 400, "", "Bad Request\n"));
        }
        // The IDOR: any identified user reads any owner's document.
        let path = self.root.join("users").join(rest);
        let Some((map, len)) = open_mapped(&path)? else {
            return Ok(text(fd, id, user, 404, "", "Not Found\n"));
        };
        if deny {
            // A late refusal: the document was mapped (read) before the application said no.
            drop(map);
            return Ok(text(fd, id, user, 403, "", "document locked\n"));
        }
        let shown = user.as_deref().unwrap_or("-");
        // No `Status:`: a CGI response without one is a 200.
        let head = format!(
            "Content-Type: application/octet-stream\r\nContent-Length: {len}\r\nX-Portal-User: {shown}\r\n\r\n"
        );
        let sent = write_record(fd, kind::STDOUT, id, head.as_bytes())
            .and_then(|()| {
                map.as_slice().chunks(BODY_RECORD).try_for_each(|chunk| {
                    let header = record_header(kind::STDOUT, id, chunk.len(), 0);
                    writev_all(fd, &[&header, chunk])
                })
            })
            .and_then(|()| write_record(fd, kind::STDOUT, id, &[]));
        Ok(Outcome {
            user,
            status: 200,
            bytes: map.as_slice().len(),
            sent,
        })
    }
}

/// Opens, maps and closes a regular file: `None` when it does not exist or is not a file.
fn open_mapped(path: &Path) -> io::Result<Option<(Mapping, u64)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let map = Mapping::of(&file, meta.len())?;
    // Closed at once: the mapping is what gets served.
    drop(file);
    Ok(Some((map, meta.len())))
}

/// A small response: CGI head and body in one STDOUT record, then its end.
fn text(fd: i32, id: u16, user: Option<String>, status: u16, extra: &str, body: &str) -> Outcome {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        _ => "Not Found",
    };
    // A 200 says nothing: a CGI response without `Status:` is a 200.
    let status_line = if status == 200 {
        String::new()
    } else {
        format!("Status: {status} {reason}\r\n")
    };
    let response = format!(
        "{status_line}{extra}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let sent = write_record(fd, kind::STDOUT, id, response.as_bytes())
        .and_then(|()| write_record(fd, kind::STDOUT, id, &[]));
    Outcome {
        user,
        status,
        bytes: body.len(),
        sent,
    }
}

fn end_request_body() -> [u8; 8] {
    // appStatus 0, protocolStatus FCGI_REQUEST_COMPLETE.
    [0; 8]
}

fn record_header(kind: u8, id: u16, len: usize, padding: u8) -> [u8; 8] {
    let [i0, i1] = id.to_be_bytes();
    let [l0, l1] = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
    [1, kind, i0, i1, l0, l1, padding, 0]
}

/// One record in one `write(2)`, padded to 8 bytes as php-fpm does.
fn write_record(fd: i32, kind: u8, id: u16, content: &[u8]) -> io::Result<()> {
    let padding = (8 - content.len() % 8) % 8;
    let mut rec = record_header(kind, id, content.len(), padding as u8).to_vec();
    rec.extend_from_slice(content);
    rec.resize(rec.len() + padding, 0);
    let mut data = rec.as_slice();
    while !data.is_empty() {
        // SAFETY: `data` is valid for reads of its length; `fd` is the open connection.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Fills `buf` with `read(2)`: `Ok(false)` at end of stream before the first byte.
fn read_full(fd: i32, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the destination is the unfilled rest of `buf`.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return if got == 0 {
                Ok(false)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n as usize;
    }
    Ok(true)
}

/// Name-value pairs of a params stream (lossy UTF-8; a pair cut short ends the list).
fn parse_params(mut b: &[u8]) -> HashMap<String, String> {
    fn len(b: &mut &[u8]) -> Option<usize> {
        let first = *b.first()?;
        if first < 0x80 {
            *b = &b[1..];
            return Some(usize::from(first));
        }
        let four: [u8; 4] = b.get(..4)?.try_into().ok()?;
        *b = &b[4..];
        usize::try_from(u32::from_be_bytes(four) & 0x7fff_ffff).ok()
    }
    let mut out = HashMap::new();
    while !b.is_empty() {
        let (Some(n), Some(v)) = (len(&mut b), len(&mut b)) else {
            break;
        };
        let (Some(name), Some(value)) = (b.get(..n), b.get(n..n + v)) else {
            break;
        };
        out.insert(
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        );
        b = &b[n + v..];
    }
    out
}

/// The `session` cookie of a `Cookie` header value.
fn session_cookie(header: &str) -> Option<String> {
    header
        .split(';')
        .find_map(|kv| kv.trim().strip_prefix("session="))
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
}

/// One line to stderr, in one write: `pid tid user method target status bytes` per request.
fn log_line(line: &str) {
    let line = format!("{line}\n");
    let _ = io::stderr().lock().write_all(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_cookies() {
        let mut b = vec![11, 3];
        b.extend_from_slice(b"REMOTE_USERbob");
        b.extend_from_slice(&[0x80, 0, 0, 4, 5]);
        b.extend_from_slice(b"LONGx");
        let p = parse_params(&b);
        assert_eq!(p["REMOTE_USER"], "bob");
        assert_eq!(p.len(), 1, "cut pair dropped");
        // The four-byte length form.
        let mut long = vec![0x80, 0, 0, 4, 1];
        long.extend_from_slice(b"LONGx");
        assert_eq!(parse_params(&long)["LONG"], "x");
        assert_eq!(
            session_cookie("theme=dark; session=ab12"),
            Some("ab12".into())
        );
        assert_eq!(session_cookie("session="), None);
    }
}
