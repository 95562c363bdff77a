//! The async server models, on tokio: what portals built on async runtimes do to the syscalls.
//!
//! - `async`: a multi-threaded runtime; request heads are read and responses written by the
//!   runtime's worker threads (whichever runs the task at that moment), and documents are read
//!   with `tokio::fs`, that is on the runtime's blocking-pool threads. The thread that reads a
//!   document never touches the connection.
//! - `event-loop`: one thread serves every connection; documents are read on that thread, and
//!   the task yields between reading the head, reading the document and writing the response,
//!   so that under concurrent load the thread reads other requests' heads in between (as any
//!   single-threaded event loop does).
//!
//! Socket I/O goes through tokio (recvfrom/sendto on nonblocking sockets, epoll); head and body
//! are sent with one write when the socket takes them.
use std::io;
use std::net::TcpListener;
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::http::{self, Head, RECV_CHUNK, ReadError, Request};
use super::serve::{Plan, failure, log_line, log_request, plan, user_of};
use super::{Context, Model};

/// Runs the model's runtime and serves `listener` forever.
pub(crate) fn run(
    listener: TcpListener,
    ctx: Arc<Context>,
    model: Model,
    workers: usize,
) -> io::Result<()> {
    let runtime = match model {
        Model::EventLoop => tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?,
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("portal-async")
            .enable_io()
            .build()?,
    };
    runtime.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log_line(&format!("accept failed: {e}"));
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let ctx = Arc::clone(&ctx);
            tokio::spawn(async move { serve(stream, &ctx, model).await });
        }
    })
}

async fn serve(mut stream: TcpStream, ctx: &Context, model: Model) {
    let mut buf = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buf).await {
            Ok(request) => request,
            Err(ReadError::Closed) => return,
            Err(ReadError::Reject(status)) => {
                let body = format!("{}\n", http::reason(status));
                let _ = send(
                    &mut stream,
                    None,
                    status,
                    "text/plain",
                    body.as_bytes(),
                    false,
                    None,
                )
                .await;
                return;
            }
        };
        let keep_alive = request.keep_alive();
        let user = user_of(ctx, &request);
        let mut cookie = None;
        let (status, body, content_type) = match plan(ctx, &request, user.as_deref()) {
            Plan::Text(status, text) => (status, text.as_bytes().to_vec(), "text/plain"),
            Plan::Cookie(status, text, set) => {
                cookie = Some(set);
                (status, text.as_bytes().to_vec(), "text/plain")
            }
            Plan::Document(path) => {
                if model == Model::EventLoop {
                    // Let the loop read other connections' requests before this document.
                    tokio::task::yield_now().await;
                }
                let read = match model {
                    Model::EventLoop => std::fs::read(&path),
                    _ => tokio::fs::read(&path).await,
                };
                match read {
                    Ok(body) => (200, body, "application/octet-stream"),
                    Err(e) => {
                        let (status, text) = failure(&e);
                        (status, text.as_bytes().to_vec(), "text/plain")
                    }
                }
            }
        };
        if model == Model::EventLoop {
            tokio::task::yield_now().await;
        }
        let shown = if status == 401 { None } else { user.as_deref() };
        let sent = send(
            &mut stream,
            shown,
            status,
            content_type,
            &body,
            keep_alive,
            cookie.as_deref(),
        )
        .await;
        log_request(
            shown.unwrap_or("-"),
            &request.method,
            &request.target,
            status,
            if sent.is_ok() { body.len() as u64 } else { 0 },
        );
        if !keep_alive || sent.is_err() {
            return;
        }
    }
}

async fn send(
    stream: &mut TcpStream,
    user: Option<&str>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    set_cookie: Option<&str>,
) -> io::Result<()> {
    let mut response = Head {
        status,
        content_type,
        user: user.unwrap_or("-"),
        connection: (!keep_alive).then_some("close"),
        challenge: status == 401,
        set_cookie,
    }
    .to_bytes(body.len() as u64);
    response.extend_from_slice(body);
    stream.write_all(&response).await
}

/// Reads the next request head (and drops its body), as `http::read_request` does for the
/// blocking models.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Request, ReadError> {
    loop {
        if !buf.is_empty() {
            if let Some((mut request, head_len)) = http::parse_head(buf)? {
                let body_len = request.body_len().map_err(ReadError::Reject)?;
                buf.drain(..head_len);
                let mut body = http::Body::start(buf, body_len);
                let mut chunk = [0; RECV_CHUNK];
                while body.want() > 0 {
                    match stream.read(&mut chunk[..body.want()]).await {
                        Ok(0) | Err(_) => return Err(ReadError::Closed),
                        Ok(n) => body.feed(&chunk[..n]),
                    }
                }
                request.body = body.kept;
                return Ok(request);
            }
            if buf.len() >= http::MAX_HEAD {
                return Err(ReadError::Reject(431));
            }
        }
        let mut chunk = [0; RECV_CHUNK];
        match stream.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::Reject(400)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(ReadError::Closed),
        }
    }
}
