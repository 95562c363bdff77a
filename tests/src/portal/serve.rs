//! Accepting connections and answering requests, shared by all server models.

use std::io::{self, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::Duration;

use super::docs::{Document, ReadWith, document_path, read_portal_db};
use super::http::{self, Head, ReadError, Request};
use super::sessions;
use super::wire::{FdWire, MapWire, SockWire, StreamWire, Wire};
use super::{Context, Model};

/// An idle keep-alive connection is dropped after this long, so that a forgotten client
/// cannot pin a prefork worker forever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds of the drain before closing a rejected connection (see `linger`).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// Accepts connections until `stop` is raised (never, without one) and serves them per `model`:
/// a thread each (`thread`), through a worker pool (`pool`), or one at a time on this thread
/// (`prefork`, which runs this loop in every worker process).
pub(crate) fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Context>,
    model: Model,
    workers: usize,
    stop: Option<Arc<AtomicBool>>,
) {
    let pool = (model == Model::Pool).then(|| Pool::start(workers, &ctx));
    loop {
        // std's accept is accept4(SOCK_CLOEXEC).
        let accepted = listener.accept();
        if stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                log_line(&format!("accept failed: {e}"));
                // Back off: errors such as EMFILE would otherwise spin.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if let Err(e) = stream.set_read_timeout(Some(IDLE_TIMEOUT)) {
            log_line(&format!("cannot set the idle timeout: {e}"));
        }
        match model {
            Model::Thread => {
                let ctx = Arc::clone(&ctx);
                let spawned = thread::Builder::new()
                    .name("portal-conn".into())
                    .spawn(move || {
                        if ctx.mmap {
                            serve_connection(MapWire(FdWire(stream)), &ctx);
                        } else {
                            serve_connection(FdWire(stream), &ctx);
                        }
                    });
                if let Err(e) = spawned {
                    log_line(&format!("cannot spawn a connection thread: {e}"));
                }
            }
            Model::Pool => {
                if let Some(pool) = &pool {
                    pool.submit(stream);
                }
            }
            Model::Prefork => serve_connection(SockWire(stream), &ctx),
            // Served by `runtime`, never by this loop.
            Model::Async | Model::EventLoop => drop(stream),
        }
    }
}

/// Fixed worker threads fed by the acceptor over a channel: the accepting thread never serves.
struct Pool {
    sender: mpsc::Sender<TcpStream>,
}

impl Pool {
    fn start(workers: usize, ctx: &Arc<Context>) -> Pool {
        let (sender, receiver) = mpsc::channel::<TcpStream>();
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..workers {
            let (receiver, ctx) = (Arc::clone(&receiver), Arc::clone(ctx));
            let spawned = thread::Builder::new()
                .name(format!("portal-worker-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is released as soon as a connection is taken, before serving.
                        let next = receiver
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .recv();
                        match next {
                            Ok(stream) => serve_connection(StreamWire(stream), &ctx),
                            // The acceptor is gone (in-process server stopped).
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                log_line(&format!("cannot spawn pool worker {i}: {e}"));
            }
        }
        Pool { sender }
    }

    fn submit(&self, stream: TcpStream) {
        if self.sender.send(stream).is_err() {
            log_line("no pool worker left: connection dropped");
        }
    }
}

/// Serves requests on one connection until it closes or a response asks to close it.
pub(crate) fn serve_connection(mut wire: impl Wire, ctx: &Context) {
    let mut buf = Vec::new();
    loop {
        let request = match http::read_request(&mut wire, &mut buf) {
            Ok(request) => request,
            Err(ReadError::Closed) => return,
            Err(ReadError::Reject(status)) => {
                let body = format!("{}\n", http::reason(status));
                let sent = text(&mut wire, None, status, &body, Some("close"), None).bytes;
                log_request("-", "-", "-", status, sent);
                linger(&mut wire);
                return;
            }
        };
        let keep_alive = request.keep_alive();
        let connection = match (keep_alive, request.version) {
            (false, _) => Some("close"),
            (true, 0) => Some("keep-alive"),
            (true, _) => None,
        };
        let outcome = respond(&mut wire, ctx, &request, connection);
        let user = outcome.user.as_deref().unwrap_or("-");
        log_request(
            user,
            &request.method,
            &request.target,
            outcome.status,
            outcome.bytes,
        );
        if !keep_alive || !outcome.sent {
            return;
        }
    }
}

/// Half-closes, then drains (for a bounded time and size) what the client still sends.
///
/// After a rejected request, unread bytes may remain (the rest of an oversized head, say);
/// closing with unread data makes the kernel send a reset, which can destroy the error
/// response before the client reads it.
fn linger(wire: &mut impl Wire) {
    let stream = wire.stream();
    if stream.shutdown(Shutdown::Write).is_err() || stream.set_read_timeout(Some(LINGER)).is_err() {
        return;
    }
    let mut chunk = [0; 4096];
    let mut budget = LINGER_BYTES;
    while budget > 0 {
        match wire.recv(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => budget = budget.saturating_sub(n),
        }
    }
}

/// What happened to one request, for the log.
struct Outcome {
    user: Option<String>,
    status: u16,
    bytes: u64,
    /// False when the response could not be sent completely: the connection is unusable.
    sent: bool,
}

/// Where a request goes.
enum Route<'a> {
    Health,
    /// `/api/documents/<id>`: the document stored as `ROOT/docs/<id>.pdf`. The URL names an id,
    /// not the file: ownership is only in `portal.db`.
    ApiDocument(&'a str),
    /// `POST /login` with a form body.
    Login,
    /// `/logout`: clears the session cookie.
    Logout,
    /// A file under `ROOT/<area>/`, named by the still percent-encoded `rest` of the path.
    File {
        area: &'static str,
        rest: &'a str,
        needs_identity: bool,
    },
    Unknown,
}

fn route(request: &Request) -> Route<'_> {
    let path = request.target.split(['?', '#']).next().unwrap_or_default();
    if request.method == "POST" && path == "/login" {
        Route::Login
    } else if path == "/logout" {
        Route::Logout
    } else if request.method != "GET" {
        Route::Unknown
    } else if path == "/healthz" {
        Route::Health
    } else if let Some(id) = path.strip_prefix("/api/documents/") {
        if (1..=18).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit()) {
            Route::ApiDocument(id)
        } else {
            Route::Unknown
        }
    } else if let Some(rest) = path.strip_prefix("/docs/") {
        Route::File {
            area: "users",
            rest,
            needs_identity: true,
        }
    } else if let Some(rest) = path.strip_prefix("/public/") {
        Route::File {
            area: "public",
            rest,
            needs_identity: false,
        }
    } else {
        Route::Unknown
    }
}

/// What a request gets, short of reading the document: the file to send, or a status and
/// text body. Shared by every model (the async ones included).
pub(crate) enum Plan {
    Document(PathBuf),
    Text(u16, &'static str),
    /// A text answer setting a cookie (login, logout).
    Cookie(u16, &'static str, String),
}

/// The user a request is made as: an identity it carries (header, Basic, bearer), else its
/// session cookie.
pub(crate) fn user_of(ctx: &Context, request: &Request) -> Option<String> {
    request.identity().or_else(|| sessions::user(ctx, request))
}

/// Routes the request and applies the portal's (deliberately weak) access check.
pub(crate) fn plan(ctx: &Context, request: &Request, user: Option<&str>) -> Plan {
    let api_path;
    let (area, rest, needs_identity) = match route(request) {
        Route::Health => return Plan::Text(200, "ok"),
        Route::Login => {
            return match sessions::login(ctx, &request.body) {
                Ok(Some(id)) => Plan::Cookie(
                    302,
                    "logged in\n",
                    format!("{}={id}; Path=/; HttpOnly", sessions::COOKIE),
                ),
                Ok(None) => Plan::Text(401, "Unauthorized\n"),
                Err(e) => {
                    log_line(&format!("creating a session: {e}"));
                    Plan::Text(500, "Internal Server Error\n")
                }
            };
        }
        Route::Logout => {
            return Plan::Cookie(
                200,
                "logged out\n",
                format!("{}=; Path=/; Max-Age=0", sessions::COOKIE),
            );
        }
        Route::Unknown => return Plan::Text(404, "Not Found\n"),
        Route::File {
            area,
            rest,
            needs_identity,
        } => (area, rest, needs_identity),
        Route::ApiDocument(id) => {
            api_path = format!("{id}.pdf");
            ("docs", api_path.as_str(), true)
        }
    };
    // A real portal consults its own database before serving anything: a file access that is
    // not a document read, which the monitor must not report.
    if let Err(e) = read_portal_db(&ctx.root) {
        log_line(&format!("portal.db: {e}"));
        return Plan::Text(500, "portal database unavailable\n");
    }
    let Some(relative) = http::percent_decode(rest).filter(|p| !p.contains(&0)) else {
        return Plan::Text(400, "Bad Request\n");
    };
    // The IDOR: any identity may read any owner's document; only its presence is checked.
    if needs_identity && user.is_none() && !ctx.allow_anonymous {
        return Plan::Text(401, "Unauthorized\n");
    }
    Plan::Document(document_path(&ctx.root, area, &relative))
}

/// Status and body for a document that could not be opened or read.
pub(crate) fn failure(e: &io::Error) -> (u16, &'static str) {
    match e.kind() {
        io::ErrorKind::NotFound => (404, "Not Found\n"),
        io::ErrorKind::PermissionDenied => (403, "Forbidden\n"),
        _ => (500, "Internal Server Error\n"),
    }
}

fn respond(
    wire: &mut impl Wire,
    ctx: &Context,
    request: &Request,
    connection: Option<&'static str>,
) -> Outcome {
    let user = user_of(ctx, request);
    let path = match plan(ctx, request, user.as_deref()) {
        Plan::Document(path) => path,
        Plan::Text(status, body) => {
            let user = if status == 401 { None } else { user };
            return text(wire, user, status, body, connection, None);
        }
        Plan::Cookie(status, body, cookie) => {
            return text(wire, user, status, body, connection, Some(&cookie));
        }
    };
    let doc = match Document::open(&path, ctx.cache) {
        Ok(doc) => doc,
        Err(e) => {
            let (status, body) = failure(&e);
            return text(wire, user, status, body, connection, None);
        }
    };
    // `--late-check`: the document is loaded first, and only then refused to other users.
    let owner = request
        .target
        .strip_prefix("/docs/")
        .and_then(|rest| rest.split('/').next());
    if ctx.late_check && owner.is_some() && owner != user.as_deref() {
        if let Err(e) = doc.read_all(ReadWith::Read) {
            log_line(&format!("loading {}: {e}", request.target));
        }
        return text(wire, user, 403, "Forbidden\n", connection, None);
    }
    if ctx.crash_hook
        && request
            .target
            .split_once('?')
            .is_some_and(|(_, q)| q == "crash")
    {
        crash_after_reading(&doc, &request.target);
    }
    let shown = user.as_deref().unwrap_or("-");
    let head = |len| {
        Head {
            status: 200,
            content_type: "application/octet-stream",
            user: shown,
            connection,
            challenge: false,
            set_cookie: None,
        }
        .to_bytes(len)
    };
    match wire.send_document(&head, doc) {
        Ok(bytes) => Outcome {
            user,
            status: 200,
            bytes,
            sent: true,
        },
        Err(e) => {
            log_line(&format!("sending {} failed: {e}", request.target));
            Outcome {
                user,
                status: 200,
                bytes: 0,
                sent: false,
            }
        }
    }
}

/// `--crash-hook`: reads the whole document (pread64, so a cached fd's offset is left alone),
/// then aborts with the document still open and nothing answered. No core dump: the point is
/// the crash, not a core file in the working directory.
fn crash_after_reading(doc: &Document, target: &str) -> ! {
    let read = doc.read_keeping_open();
    log_line(&format!("crash hook: {target}: read {read:?}, aborting"));
    // SAFETY: prctl and abort have no preconditions; abort never returns.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
        libc::abort()
    }
}

/// Sends a small text response.
fn text(
    wire: &mut impl Wire,
    user: Option<String>,
    status: u16,
    body: &str,
    connection: Option<&'static str>,
    set_cookie: Option<&str>,
) -> Outcome {
    let head = Head {
        status,
        content_type: "text/plain",
        user: user.as_deref().unwrap_or("-"),
        connection,
        challenge: status == 401,
        set_cookie,
    };
    let mut response = head.to_bytes(body.len() as u64);
    response.extend_from_slice(body.as_bytes());
    let sent = wire.send(&response).is_ok();
    Outcome {
        user,
        status,
        bytes: if sent { body.len() as u64 } else { 0 },
        sent,
    }
}

/// `pid tid user method target status bytes`: pid and tid let tests match requests with the
/// processes and threads the monitor reports.
pub(crate) fn log_request(user: &str, method: &str, target: &str, status: u16, bytes: u64) {
    // SAFETY: getpid and gettid cannot fail.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    log_line(&format!(
        "{pid} {tid} {user} {method} {target} {status} {bytes}"
    ));
}

/// Writes one line to stderr with a single write, so that lines from concurrent workers (and
/// worker processes, which do not share the stderr lock) do not interleave.
pub(crate) fn log_line(line: &str) {
    let line = format!("{line}\n");
    let _ = io::stderr().lock().write_all(line.as_bytes());
}
