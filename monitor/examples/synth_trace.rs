//! Writes a synthetic but realistic trace for replay benchmarks:
//! `cargo run --release -p monitor --example synth_trace -- OUT.jsonl EVENTS`.
//!
//! Each request is what the thread-per-request demo portal produces: accept, request head, open,
//! two reads, close, response head, connection close; one request in eight is cross-user; a tick
//! every 1,000 events.
use std::{
    io::{BufWriter, Write},
    path::PathBuf,
};

use monitor_core::{
    events::{Event, EventKind, Payload},
    walltime::WallClock,
};
use vigie::config::Config;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: synth_trace OUT EVENTS"))?,
    );
    let total: u64 = args.next().unwrap_or_else(|| "10000000".into()).parse()?;
    let config = Config::parse(
        "[targets]\nnames = [\"portal\"]\n[documents]\nroots = [\"/srv/portal/users\"]\nowner_templates = [\"/srv/portal/users/{owner}/**\"]\n[policy]\nprivileged_users = [\"agent\"]\n",
        "synth",
    )?;
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&out)?);
    serde_json::to_writer(
        &mut w,
        &vigie::sinks::trace::header(
            &config,
            WallClock {
                realtime_offset_ns: 1_795_000_000_000_000_000,
            },
        ),
    )?;
    w.write_all(b"\n")?;
    let users = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "agent",
    ];
    let mut n = 0u64;
    let mut ts = 1_000_000_000u64;
    let mut req = 0u64;
    let pid = 4242;
    let emit = |w: &mut BufWriter<std::fs::File>,
                tid: u32,
                kind: EventKind,
                n: &mut u64,
                ts: &mut u64|
     -> anyhow::Result<()> {
        *ts += 2_000;
        serde_json::to_writer(
            &mut *w,
            &Event {
                ts_ns: *ts,
                pid,
                tid,
                comm: "portal-conn".into(),
                goid: None,
                kind,
            },
        )?;
        w.write_all(b"\n")?;
        *n += 1;
        if (*n).is_multiple_of(1000) {
            serde_json::to_writer(
                &mut *w,
                &Event {
                    ts_ns: *ts,
                    pid: 0,
                    tid: 0,
                    comm: monitor_core::events::Comm::default(),
                    goid: None,
                    kind: EventKind::Tick,
                },
            )?;
            w.write_all(b"\n")?;
            *n += 1;
        }
        Ok(())
    };
    while n < total {
        req += 1;
        let tid = 5000 + (req % 64) as u32;
        let fd = 5 + (req % 32) as i32;
        // One request in eight reads another user's document.
        let (user, owner) = if req.is_multiple_of(8) {
            (
                users[((req / 8) % 7) as usize],
                users[((req / 8 + 1) % 7) as usize],
            )
        } else {
            let u = users[(req % users.len() as u64) as usize];
            (u, u)
        };
        let head = format!(
            "GET /docs/{owner}/record-{}.pdf HTTP/1.1\r\nHost: portal\r\nUser-Agent: synth\r\nAccept: */*\r\nX-Remote-User: {user}\r\n\r\n",
            req % 100
        );
        let resp =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\nContent-Length: 20000\r\n\r\n"
                .to_vec();
        emit(
            &mut w,
            1,
            EventKind::SockAccept { fd, peer: None },
            &mut n,
            &mut ts,
        )?;
        emit(
            &mut w,
            tid,
            EventKind::SockRead {
                fd,
                bytes: head.len() as u64,
                data: Payload(head.into_bytes()),
            },
            &mut n,
            &mut ts,
        )?;
        let path = format!("/srv/portal/users/{owner}/record-{}.pdf", req % 100);
        emit(
            &mut w,
            tid,
            EventKind::FileOpen {
                fd: 100,
                path,
                dirfd: -100,
                truncated: false,
                base: None,
                full_path: None,
                flags: 0,
                exact: false,
            },
            &mut n,
            &mut ts,
        )?;
        emit(
            &mut w,
            tid,
            EventKind::FileRead {
                fd: 100,
                bytes: 16384,
                fp: None,
                size: None,
            },
            &mut n,
            &mut ts,
        )?;
        emit(
            &mut w,
            tid,
            EventKind::FileRead {
                fd: 100,
                bytes: 3616,
                fp: None,
                size: None,
            },
            &mut n,
            &mut ts,
        )?;
        emit(
            &mut w,
            tid,
            EventKind::FileClose { fd: 100 },
            &mut n,
            &mut ts,
        )?;
        emit(
            &mut w,
            tid,
            EventKind::SockWrite {
                fd,
                bytes: 20_080,
                data: Payload(resp),
                body_fp: None,
                at: None,
            },
            &mut n,
            &mut ts,
        )?;
        emit(&mut w, tid, EventKind::SockClose { fd }, &mut n, &mut ts)?;
    }
    w.flush()?;
    eprintln!(
        "synth_trace: {n} events, {req} requests -> {}",
        out.display()
    );
    Ok(())
}
