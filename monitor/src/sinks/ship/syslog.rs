//! Trail records to a syslog collector: one RFC 5424 message per record (formatted by the
//! `syslog` crate's `Formatter5424`), sent over TCP with octet-counted framing (RFC 6587,
//! `LEN SP MSG`, so a record may hold any byte but never splits or merges), or over TLS with
//! the same framing (RFC 5425), on a thread of its own.
//!
//! The message: facility `log audit` (13), severity `info`, APP-NAME `vigie`, MSGID `1` (the
//! trail schema's version), structured data `[<sd_id> host="..." seq="N"]`, and the trail line
//! itself (JSON, with its `prev` chain digest) as MSG.
//!
//! Delivery: plain TCP syslog has no application acknowledgement. A record counts as delivered
//! once the collector's TCP acknowledged its bytes (`TIOCOUTQ`; over TLS, the ciphertext bytes
//! up to the end of its record) and the connection stayed up `resend_window_secs` after that;
//! then the cursor moves past it. A lost connection sends again every record not yet counted
//! as delivered.
use std::{
    collections::VecDeque,
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use syslog::{Facility, Formatter5424, LogFormat as _, Severity};

use monitor_core::trail::pseudonym::Pseudonymiser;

use super::{Cursor, Follower, Shipped, Shipper, StopClock};
use crate::config::SyslogShipping;

/// Starts shipping the trail in `dir` from where the last run's shipping stood.
pub fn start(
    dir: &Path,
    cfg: &SyslogShipping,
    host: String,
    pseudonyms: Option<Pseudonymiser>,
) -> std::io::Result<Shipper> {
    let cursor = Cursor::load(dir, "syslog")?;
    let tls = match &cfg.tls {
        Some(t) => Some(Tls {
            config: super::tls::client_config(t).map_err(std::io::Error::other)?,
            name: super::tls::server_name(&cfg.address).map_err(std::io::Error::other)?,
        }),
        None => None,
    };
    tracing::info!(address = %cfg.address, tls = tls.is_some(), from_seq = cursor.next(), "shipping the trail to syslog");
    let mut ship = Ship {
        dir: dir.to_path_buf(),
        address: cfg.address.clone(),
        window: Duration::from_secs(cfg.resend_window_secs),
        formatter: Formatter5424 {
            facility: Facility::LOG_AUDIT,
            hostname: Some(host.clone()),
            process: "vigie".to_string(),
            pid: std::process::id(),
        },
        sd_id: cfg.sd_id.clone(),
        host,
        cursor,
        pseudonyms,
        tls,
    };
    Shipper::spawn("syslog", move |stop| ship.run(&stop))
}

/// Syslog over TLS: the client configuration and the name the certificate must carry.
struct Tls {
    config: std::sync::Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

struct Ship {
    dir: PathBuf,
    address: String,
    window: Duration,
    formatter: Formatter5424,
    sd_id: String,
    host: String,
    cursor: Cursor,
    pseudonyms: Option<Pseudonymiser>,
    tls: Option<Tls>,
}

/// A record sent on the current connection, not yet counted as delivered.
struct InFlight {
    seq: u64,
    /// Bytes sent on the connection up to the end of this record.
    end: u64,
    acked_at: Option<Instant>,
}

struct Conn {
    stream: Stream,
    /// Bytes put on the wire (over TLS: ciphertext, handshake included).
    sent: u64,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<super::tls::TlsStream>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => &t.sock.stream,
        }
    }
}

impl Ship {
    fn run(&mut self, stop: &AtomicBool) {
        let mut conn: Option<Conn> = None;
        let mut follower: Option<Follower> = None;
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let mut next_try = Instant::now();
        let mut stop_clock = StopClock::default();
        let mut warned = false;
        loop {
            let now = Instant::now();
            let stopping = stop_clock.check(stop);
            if stopping == Some(true) {
                return;
            }
            let Some(c) = conn.as_mut() else {
                if stopping.is_some() {
                    // Down at stop: the next run sends the rest.
                    return;
                }
                if now >= next_try {
                    match self.connect() {
                        Ok(c) => {
                            tracing::info!(address = %self.address, from_seq = self.cursor.next(), "syslog collector connected");
                            conn = Some(c);
                            follower = None;
                            inflight.clear();
                            warned = false;
                            continue;
                        }
                        Err(e) => {
                            if !warned {
                                tracing::warn!(address = %self.address, error = %e, from_seq = self.cursor.next(), "syslog collector unreachable: the trail keeps the records, sent when it is back");
                                warned = true;
                            }
                            next_try = now + Duration::from_secs(1);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let f = match follower.as_mut() {
                Some(f) => f,
                None => match Follower::open(&self.dir, self.cursor.next()) {
                    Ok(f) => follower.insert(f),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the trail for shipping");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            let batch = match f.next_batch(256) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the trail for shipping");
                    follower = None;
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let mut result = Ok(());
            for rec in &batch {
                result = self.send(c, rec);
                if result.is_err() {
                    break;
                }
                inflight.push_back(InFlight {
                    seq: rec.seq,
                    end: c.sent,
                    acked_at: None,
                });
            }
            let result = result.and_then(|()| c.alive()).and_then(|()| c.acked());
            let acked = match result {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(address = %self.address, error = %e, from_seq = self.cursor.next(), "syslog collector connection lost: records not yet confirmed are sent again");
                    conn = None;
                    warned = true;
                    next_try = Instant::now() + Duration::from_secs(1);
                    continue;
                }
            };
            let now = Instant::now();
            for r in inflight.iter_mut().take_while(|r| r.end <= acked) {
                r.acked_at.get_or_insert(now);
            }
            let mut delivered = None;
            while inflight
                .front()
                .and_then(|r| r.acked_at)
                .is_some_and(|t| now.duration_since(t) >= self.window)
            {
                delivered = inflight.pop_front().map(|r| r.seq);
            }
            if let Some(seq) = delivered
                && let Err(e) = self.cursor.advance(seq + 1)
            {
                tracing::warn!(error = %e, "saving the shipping cursor");
            }
            if stopping.is_some() && batch.is_empty() && acked == c.sent {
                // All on the collector's side; the last window is sent again next run.
                return;
            }
            if batch.is_empty() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn connect(&self) -> std::io::Result<Conn> {
        let mut last = std::io::Error::other(format!("{}: no address", self.address));
        for addr in self.address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                Ok(stream) => {
                    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
                    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                    stream.set_nodelay(true)?;
                    let Some(tls) = &self.tls else {
                        return Ok(Conn {
                            stream: Stream::Plain(stream),
                            sent: 0,
                        });
                    };
                    let t = super::tls::handshake(&tls.config, tls.name.clone(), stream)?;
                    return Ok(Conn {
                        sent: t.sock.written,
                        stream: Stream::Tls(Box::new(t)),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn send(&self, c: &mut Conn, rec: &Shipped) -> std::io::Result<()> {
        let msg = self.message(rec)?;
        let mut frame = format!("{} ", msg.len()).into_bytes();
        frame.extend_from_slice(&msg);
        match &mut c.stream {
            Stream::Plain(s) => {
                s.write_all(&frame)?;
                c.sent += frame.len() as u64;
            }
            Stream::Tls(t) => {
                t.write_all(&frame)?;
                // Puts the record's ciphertext on the wire now.
                t.flush()?;
                c.sent = t.sock.written;
            }
        }
        Ok(())
    }

    /// The RFC 5424 message (without framing) of one record.
    fn message(&self, rec: &Shipped) -> std::io::Result<Vec<u8>> {
        let mut sd = std::collections::BTreeMap::new();
        sd.insert(
            self.sd_id.clone(),
            [
                ("host".to_string(), self.host.clone()),
                ("seq".to_string(), rec.seq.to_string()),
            ]
            .into(),
        );
        let mut msg = Vec::with_capacity(rec.line.len() + 128);
        self.formatter
            .format(
                &mut msg,
                Severity::LOG_INFO,
                (
                    1,
                    sd,
                    String::from_utf8_lossy(&super::shipped_line(
                        self.pseudonyms.as_ref(),
                        &rec.line,
                    )),
                ),
            )
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(msg)
    }
}

impl Conn {
    /// The peer closed the connection (a collector never sends on it): EOF or an error.
    fn alive(&mut self) -> std::io::Result<()> {
        let Stream::Tls(t) = &mut self.stream else {
            return self.peek();
        };
        // Over TLS the collector may send (session tickets, an alert, close_notify): let
        // rustls read what came, without waiting.
        t.sock.stream.set_nonblocking(true)?;
        let mut b = [0u8; 512];
        let r = t.read(&mut b);
        t.sock.stream.set_nonblocking(false)?;
        self.sent = t.sock.written;
        match r {
            Ok(0) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the collector closed the TLS session",
            )),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn peek(&self) -> std::io::Result<()> {
        let mut b = [0u8; 1];
        // SAFETY: a valid socket and a 1-byte buffer; MSG_PEEK leaves the data in place.
        let n = unsafe {
            libc::recv(
                self.stream.tcp().as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the collector closed the connection",
            )),
            n if n > 0 => Ok(()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Bytes of this connection the collector's TCP acknowledged.
    fn acked(&self) -> std::io::Result<u64> {
        let mut outq: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) on a TCP socket writes one int: bytes not yet acknowledged.
        let r = unsafe { libc::ioctl(self.stream.tcp().as_raw_fd(), libc::TIOCOUTQ, &mut outq) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(self.sent.saturating_sub(u64::try_from(outq).unwrap_or(0)))
    }
}
