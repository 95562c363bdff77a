//! The demo portal: a small, deliberately vulnerable HTTP document server.
//!
//! It exists to be watched by Vigie. Its bugs are on purpose (any authenticated user may read
//! any document, `..` is never normalised, `--allow-anonymous` serves documents without an
//! identity), and each server model performs its I/O through exactly the syscalls the monitor's
//! probes are meant to see:
//!
//! | model     | accept    | request read        | document read         | response              |
//! |-----------|-----------|---------------------|-----------------------|-----------------------|
//! | `thread`  | `accept4` | `read(2)`           | `openat` + `read(2)`  | `write(2)`            |
//! | `prefork` | `accept4` | `recvfrom` (`recv`) | `openat` + `sendfile` | `sendto` + `sendfile` |
//! | `pool`    | `accept4` | `recvfrom`          | `openat` + `pread64`  | `sendto`              |
//! | `async`   | `accept4` | `recvfrom` (worker) | `read(2)` on a blocking-pool thread | `sendto` (worker) |
//! | `event-loop` | `accept4` | `recvfrom`       | `read(2)`, same thread | `sendto`, same thread |
//!
//! `async` runs on a multi-threaded tokio runtime whose documents are read by `tokio::fs` (the
//! runtime's blocking pool); `event-loop` serves every connection on one thread and yields
//! between a request's head, its document and its response, so that concurrent requests
//! interleave. Neither leaves the reading thread in charge of the connection: Vigie has to
//! attribute those reads by content fingerprint.
//!
//! With `--mmap` (thread model), documents are mapped and closed, then written from the mapping
//! with `writev(2)` (head and body in one call): `openat` + `mmap` + `close`, no `read(2)`.
//!
//! With `--cache`, documents are opened once per process and re-read with `pread64` (or sent
//! with `sendfile` at an explicit offset in `prefork`), so a document read may happen on a file
//! descriptor opened long before, possibly before the monitor started.

mod docs;
mod generate;
mod http;
mod prefork;
mod runtime;
mod serve;
mod sessions;
mod wire;

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use clap::{Parser, ValueEnum};

pub use generate::{API_DOCUMENTS, DOCUMENTS, ORPHAN_DOCUMENT, USERS, document_content, generate};

/// Deliberately vulnerable document portal used to demonstrate and test Vigie.
#[derive(Debug, Clone, Parser)]
#[command(name = "demo-portal", version)]
pub struct Config {
    /// Document root: documents live at ROOT/users/<owner>/<name> (served at /docs/...) and at
    /// ROOT/docs/<id>.pdf (served at /api/documents/<id>), public files at ROOT/public.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,

    /// Address to listen on; port 0 picks a free port (printed as `LISTENING <ip:port>`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// Server model, which decides the syscalls used to serve requests.
    #[arg(long, value_enum)]
    pub model: Model,

    /// Worker processes (prefork, default 2) or worker threads (pool, default 4; async,
    /// default 2).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=prefork::MAX_WORKERS as i64))]
    pub workers: Option<u16>,

    /// (Re)create the demo users, documents (by owner and by id), public files and portal.db
    /// (SQLite, with the owners of the documents by id) under ROOT first.
    #[arg(long)]
    pub generate: bool,

    /// Once listening, also write `ip:port` to this file (atomically: temporary file + rename).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Keep documents open in a process-wide cache and re-read them with pread; pre-opens
    /// users/bob/health-record.pdf before announcing LISTENING.
    #[arg(long)]
    pub cache: bool,

    /// With --cache: sleep this long after announcing LISTENING before accepting connections.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub preopen_delay_ms: u64,

    /// prefork: sleep this long after announcing LISTENING before forking the workers, so that
    /// a monitor started on the LISTENING line sees the forks.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub fork_delay_ms: u64,

    /// Serve documents to requests without any identity instead of answering 401 (a bug, on
    /// purpose).
    #[arg(long)]
    pub allow_anonymous: bool,

    /// thread: serve documents from a memory mapping (open, mmap, close, writev) instead of
    /// reading them.
    #[arg(long)]
    pub mmap: bool,

    /// Bytes a document is read in at a time (each chunk one `read`/`pread64`).
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(1..=(1 << 24)))]
    pub read_chunk: u32,

    /// Check ownership only after loading the document, and answer 403 to other users: the
    /// document is read all the same (a portal that authorises too late).
    #[arg(long)]
    pub late_check: bool,

    /// Keep sessions in this Redis (`redis://host:port`, keys `session:<id>` holding the user)
    /// instead of files under ROOT/sessions.
    #[arg(long, value_name = "URL")]
    pub session_redis: Option<String>,

    /// Fault injection: a document request whose query is `?crash` reads the whole document,
    /// then the serving process aborts (SIGABRT, no core dump) with the document still open and
    /// nothing answered. In `prefork` only that worker dies (and is replaced); in `thread` and
    /// `pool` the whole portal does.
    #[arg(long)]
    pub crash_hook: bool,
}

/// How connections are accepted and served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Model {
    /// Thread per connection; read(2), openat + read(2), write(2).
    Thread,
    /// Forked worker processes sharing the listening socket; recv, openat, send + sendfile.
    Prefork,
    /// An acceptor thread handing connections to worker threads; recvfrom, pread64, sendto.
    Pool,
    /// A multi-threaded async runtime reading documents on its blocking pool.
    Async,
    /// One thread serving every connection concurrently, documents read on that thread.
    EventLoop,
}

impl Config {
    /// Number of workers for the model (ignored by `thread`).
    fn worker_count(&self) -> usize {
        let default = match self.model {
            Model::Prefork => 2,
            Model::Pool => 4,
            Model::Async => 2,
            Model::Thread | Model::EventLoop => 1,
        };
        self.workers.map_or(default, usize::from)
    }
}

/// What request handling needs to know, shared by every connection.
#[derive(Debug)]
pub(crate) struct Context {
    pub root: PathBuf,
    pub cache: bool,
    pub allow_anonymous: bool,
    pub mmap: bool,
    pub late_check: bool,
    pub session_redis: Option<redis::Client>,
    pub crash_hook: bool,
}

/// The document pre-opened into the cache at startup (relative to ROOT/users).
const PREOPENED_DOCUMENT: &str = "bob/health-record.pdf";

/// Runs the portal as the `demo-portal` binary does: never returns unless setup fails.
pub fn run(config: Config) -> io::Result<()> {
    docs::READ_CHUNK.store(
        config.read_chunk as usize,
        std::sync::atomic::Ordering::Relaxed,
    );
    let (listener, ctx) = prepare(&config)?;
    let addr = listener.local_addr()?;
    announce(addr, config.ready_file.as_deref())?;
    if config.cache {
        thread::sleep(Duration::from_millis(config.preopen_delay_ms));
    }
    match config.model {
        Model::Thread | Model::Pool => {
            prefork::exit_on_termination_signals()?;
            serve::accept_loop(listener, ctx, config.model, config.worker_count(), None);
            Ok(())
        }
        Model::Prefork => prefork::run(
            listener,
            ctx,
            config.worker_count(),
            Duration::from_millis(config.fork_delay_ms),
        ),
        Model::Async | Model::EventLoop => {
            prefork::exit_on_termination_signals()?;
            runtime::run(listener, ctx, config.model, config.worker_count())
        }
    }
}

/// Generates the tree if asked, binds, and pre-opens the cached document: everything that must
/// happen before LISTENING is announced.
fn prepare(config: &Config) -> io::Result<(TcpListener, Arc<Context>)> {
    if config.generate {
        generate(&config.root)
            .map_err(|e| context(e, format!("generating {}", config.root.display())))?;
    }
    let listener = TcpListener::bind(config.listen)
        .map_err(|e| context(e, format!("binding {}", config.listen)))?;
    let ctx = Arc::new(Context {
        root: config.root.clone(),
        cache: config.cache,
        allow_anonymous: config.allow_anonymous,
        mmap: config.mmap,
        late_check: config.late_check,
        session_redis: config
            .session_redis
            .as_deref()
            .map(redis::Client::open)
            .transpose()
            .map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("--session-redis: {e}"))
            })?,
        crash_hook: config.crash_hook,
    });
    if config.cache {
        let path = docs::document_path(&ctx.root, "users", PREOPENED_DOCUMENT.as_bytes());
        docs::open_cached(&path)
            .map_err(|e| context(e, format!("pre-opening {}", path.display())))?;
    }
    Ok((listener, ctx))
}

/// Prefixes an error with what was being done, keeping its kind.
fn context(error: io::Error, what: String) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

/// Writes the ready file, then prints the single LISTENING line (what `spawn_portal` waits
/// for): whoever sees either signal can rely on the other one too.
fn announce(addr: SocketAddr, ready_file: Option<&Path>) -> io::Result<()> {
    if let Some(path) = ready_file {
        // Write then rename so that a poller never reads a half-written address.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, addr.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| context(e, format!("writing {}", path.display())))?;
    }
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "LISTENING {addr}")?;
    stdout.flush()
}

/// A portal served by threads of the current process, for the library's own tests.
///
/// Only the `thread` and `pool` models can run in-process (`prefork` forks). No LISTENING line
/// is printed, no signal handler is installed and delays are ignored.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    /// Prepares the root as `run` does and starts accepting on a background thread.
    pub fn start(config: &Config) -> io::Result<Server> {
        if !matches!(config.model, Model::Thread | Model::Pool) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only the thread and pool models can run in-process",
            ));
        }
        let (listener, ctx) = prepare(config)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (model, workers, flag) = (config.model, config.worker_count(), Arc::clone(&stop));
        let acceptor = thread::Builder::new()
            .name("portal-acceptor".into())
            .spawn(move || serve::accept_loop(listener, ctx, model, workers, Some(flag)))?;
        Ok(Server {
            addr,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The bound address, e.g. `127.0.0.1:40123`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The acceptor is blocked in accept(); a connection wakes it up to see the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}
