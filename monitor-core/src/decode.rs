//! Raw ring-buffer records -> typed [`Event`]s. Pure: a record that is too short, of an unknown
//! kind or with inconsistent lengths is an error, never a panic.
use monitor_common::{
    COMM_LEN, Header,
    files::{FdEvent, OpenEvent, PATH_CAP, path_source},
    header_flags, kind,
    process::ProcEvent,
    sockets::{AcceptEvent, CHUNK_MORE, DATA_CAP, DATA_HEADER_LEN, DataEvent, family},
};

use crate::{
    client::Endpoint,
    events::{Comm, Event, EventKind, Payload},
    idmap::IdMap,
    paths,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte layout (kind {kind})")]
    Short { kind: u32, len: usize, need: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("record claims {captured} captured bytes, more than the {cap}-byte capture")]
    BadCapture { captured: u32, cap: usize },
}

/// Reads a `T` from the start of `bytes` (records on the ring buffer are only 8-byte aligned).
fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked above; T is a #[repr(C)] record of integers and byte arrays, valid for
    // any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes records one after the other, sharing what can be shared between them, so that the
/// usual record costs no allocation: thread names are interned (the same kernel bytes give the
/// same [`Comm`]), and a captured payload reuses the buffer of an event given back with
/// [`Decoder::recycle`].
#[derive(Default)]
pub struct Decoder {
    comms: IdMap<[u8; COMM_LEN], Comm>,
    spare: Vec<u8>,
    /// Per thread: a socket read or write whose capture continues in the next records (reads
    /// larger than one record, writes of HTTP/2 connections; see
    /// `monitor_common::sockets::MAX_CHUNKS`).
    pending: IdMap<u32, Event>,
}

/// Names kept interned at most: a process that keeps naming threads anew cannot grow the table
/// without bound (it is emptied, then refilled with the names in use).
const MAX_COMMS: usize = 4096;

/// Largest payload buffer kept for reuse (a full capture is 4 KiB).
const MAX_SPARE: usize = 8 * 1024;

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one ring-buffer record.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Event, DecodeError> {
        decode_with(bytes, self)
    }

    /// Decodes the next ring-buffer record into `out`: nothing while a read's or write's
    /// capture goes on in further records, then the transfer with its whole capture. A thread's record that is not
    /// the expected continuation means the rest was lost (counted in the kernel): the read is
    /// passed on with what arrived (its byte count tells that the rest was not seen), and a
    /// stray continuation is dropped.
    pub fn next(&mut self, bytes: &[u8], out: &mut Vec<Event>) -> Result<(), DecodeError> {
        let ev = self.decode(bytes)?;
        let chunk = match &ev.kind {
            EventKind::SockRead { .. } | EventKind::SockWrite { .. } => {
                let at = std::mem::offset_of!(DataEvent, chunk);
                bytes
                    .get(at..at + 4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u32::from_ne_bytes)
            }
            _ => 0,
        };
        let offset = (chunk & !CHUNK_MORE) as usize;
        let more = chunk & CHUNK_MORE != 0;
        if offset > 0 {
            let continues = self.pending.get(&ev.tid).is_some_and(|p| {
                p.pid == ev.pid
                    && match (&p.kind, &ev.kind) {
                        (
                            EventKind::SockRead { fd: a, data, .. },
                            EventKind::SockRead { fd: b, .. },
                        )
                        | (
                            EventKind::SockWrite { fd: a, data, .. },
                            EventKind::SockWrite { fd: b, .. },
                        ) => a == b && data.0.len() == offset,
                        _ => false,
                    }
            });
            if !continues {
                if let Some(p) = self.pending.remove(&ev.tid) {
                    out.push(p);
                }
                return Ok(());
            }
            if let Some(mut p) = self.pending.remove(&ev.tid) {
                if let (
                    EventKind::SockRead { data, .. },
                    EventKind::SockRead {
                        data: more_data, ..
                    },
                )
                | (
                    EventKind::SockWrite { data, .. },
                    EventKind::SockWrite {
                        data: more_data, ..
                    },
                ) = (&mut p.kind, &ev.kind)
                {
                    data.0.extend_from_slice(&more_data.0);
                }
                self.recycle(ev);
                if more {
                    self.pending.insert(p.tid, p);
                } else {
                    out.push(p);
                }
            }
            return Ok(());
        }
        if let Some(p) = self.pending.remove(&ev.tid) {
            out.push(p);
        }
        if more {
            self.pending.insert(ev.tid, ev);
        } else {
            out.push(ev);
        }
        Ok(())
    }

    /// Passes on every read still waiting for the rest of its capture (events were lost, or
    /// the run ends), in thread order.
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        let mut tids: Vec<u32> = self.pending.keys().copied().collect();
        tids.sort_unstable();
        for tid in tids {
            if let Some(p) = self.pending.remove(&tid) {
                out.push(p);
            }
        }
    }

    /// Takes back a decoded event once it has been handled, to reuse its payload buffer.
    pub fn recycle(&mut self, ev: Event) {
        if let EventKind::SockRead { data, .. } | EventKind::SockWrite { data, .. } = ev.kind
            && data.0.capacity() <= MAX_SPARE
            && data.0.capacity() > self.spare.capacity()
        {
            self.spare = data.0;
        }
    }

    fn comm(&mut self, raw: &[u8; COMM_LEN]) -> Comm {
        if let Some(c) = self.comms.get(raw) {
            return c.clone();
        }
        if self.comms.len() >= MAX_COMMS {
            self.comms.clear();
        }
        let c = Comm::from(comm(raw));
        self.comms.insert(*raw, c.clone());
        c
    }

    fn payload(&mut self, data: &[u8]) -> Payload {
        let mut buf = std::mem::take(&mut self.spare);
        buf.clear();
        buf.extend_from_slice(data);
        Payload(buf)
    }
}

/// A record's kind and process, and for socket data its `op` (`op::SSL_*` for TLS plaintext),
/// without decoding it: for records that are not events (`kind::CODE_MAP`) and for counting.
pub fn peek(bytes: &[u8]) -> Option<(u32, u32, u32)> {
    let header: Header = read(bytes, 0).ok()?;
    let op = match header.kind {
        kind::SOCK_READ | kind::SOCK_WRITE => {
            let fixed: [u8; DATA_HEADER_LEN] = read(bytes, header.kind).ok()?;
            let at = std::mem::offset_of!(DataEvent, op);
            u32::from_ne_bytes(fixed[at..at + 4].try_into().ok()?)
        }
        _ => 0,
    };
    Some((header.kind, header.tgid, op))
}

/// When the kernel last lost an event, as of the moment `bytes`, a ring-buffer record, was
/// written ([`Header::last_loss_ns`]): a record carrying a new value comes after a gap.
pub fn last_loss(bytes: &[u8]) -> Option<u64> {
    let header: Header = read(bytes, 0).ok()?;
    Some(header.last_loss_ns)
}

/// Decodes one ring-buffer record (on its own: see [`Decoder`] for a stream of them).
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    Decoder::new().decode(bytes)
}

/// The peer an accept record carries; `None` when the probe could not read the socket.
fn peer(ev: &AcceptEvent) -> Option<Endpoint> {
    match ev.family {
        family::INET => {
            let [a, b, c, d, ..] = ev.addr;
            Some(Endpoint::Ipv4 {
                ip: std::net::Ipv4Addr::new(a, b, c, d),
                port: ev.port,
            })
        }
        family::INET6 => Some(Endpoint::Ipv6 {
            ip: std::net::Ipv6Addr::from(ev.addr),
            port: ev.port,
        }),
        family::UNIX => Some(Endpoint::Unix),
        _ => None,
    }
}

fn decode_with(bytes: &[u8], decoder: &mut Decoder) -> Result<Event, DecodeError> {
    let header: Header = read(bytes, 0)?;
    let k = header.kind;
    let kind = match k {
        kind::PROCESS_EXEC => EventKind::ProcessExec,
        kind::PROCESS_FORK => {
            let ev: ProcEvent = read(bytes, k)?;
            EventKind::ProcessFork {
                child_pid: ev.child_tgid,
            }
        }
        kind::PROCESS_EXIT => EventKind::ProcessExit,
        kind::THREAD_EXIT => EventKind::ThreadExit,
        kind::FILE_OPEN => {
            let ev: OpenEvent = read(bytes, k)?;
            let len = (ev.path_len as usize).min(PATH_CAP - 1);
            // A path has no NUL: bytes past one are left over from an earlier record.
            let path = ev.path[..len].split(|b| *b == 0).next().unwrap_or_default();
            EventKind::FileOpen {
                fd: ev.fd,
                path: paths::from_bytes(path),
                dirfd: ev.dirfd,
                truncated: ev.path_len as usize >= PATH_CAP,
                base: None,
                full_path: None,
                flags: ev.flags,
                exact: ev.source == path_source::KERNEL,
            }
        }
        kind::FILE_READ
        | kind::FILE_READ_MORE
        | kind::SOCK_WRITE_MORE
        | kind::FILE_MAP
        | kind::FILE_SENDFILE
        | kind::FILE_CLOSE
        | kind::SOCK_CLOSE => {
            let ev: FdEvent = read(bytes, k)?;
            let n = u64::try_from(ev.ret).unwrap_or(0);
            match k {
                kind::FILE_READ => EventKind::FileRead {
                    fd: ev.fd,
                    bytes: n,
                    fp: (ev.fp != 0).then_some(ev.fp),
                    // `u32::MAX`: 4 GiB or more, not a length to compare.
                    size: (ev.fp != 0 && ev.size != 0 && ev.size != u32::MAX)
                        .then_some(u64::from(ev.size)),
                },
                kind::FILE_READ_MORE => EventKind::FileReadMore {
                    fd: ev.fd,
                    bytes: n,
                    calls: ev.size,
                },
                kind::SOCK_WRITE_MORE => EventKind::SockWriteMore {
                    fd: ev.fd,
                    bytes: n,
                    calls: ev.size,
                },
                kind::FILE_MAP => EventKind::FileMap {
                    fd: ev.fd,
                    bytes: n,
                },
                kind::FILE_SENDFILE => EventKind::SendFile {
                    out_fd: ev.fd,
                    in_fd: ev.fd2,
                    bytes: n,
                },
                kind::FILE_CLOSE => EventKind::FileClose { fd: ev.fd },
                _ => EventKind::SockClose { fd: ev.fd },
            }
        }
        kind::SOCK_ACCEPT => {
            let ev: AcceptEvent = read(bytes, k)?;
            EventKind::SockAccept {
                fd: ev.fd,
                peer: peer(&ev),
            }
        }
        kind::SOCK_READ | kind::SOCK_WRITE => {
            // Variable length: header fields, then `captured` bytes.
            let fixed: [u8; DATA_HEADER_LEN] = read(bytes, k)?;
            let mut ev = std::mem::MaybeUninit::<DataEvent>::zeroed();
            // SAFETY: copying the fixed part of a #[repr(C)] record into a zeroed one.
            let ev = unsafe {
                std::ptr::copy_nonoverlapping(
                    fixed.as_ptr(),
                    ev.as_mut_ptr().cast::<u8>(),
                    DATA_HEADER_LEN,
                );
                ev.assume_init()
            };
            let captured = ev.captured as usize;
            if captured > DATA_CAP {
                return Err(DecodeError::BadCapture {
                    captured: ev.captured,
                    cap: DATA_CAP,
                });
            }
            let data = bytes
                .get(DATA_HEADER_LEN..DATA_HEADER_LEN + captured)
                .ok_or(DecodeError::Short {
                    kind: k,
                    len: bytes.len(),
                    need: DATA_HEADER_LEN + captured,
                })?;
            let n = u64::try_from(ev.ret).unwrap_or(0);
            let data = decoder.payload(data);
            if k == kind::SOCK_READ {
                EventKind::SockRead {
                    fd: ev.fd,
                    bytes: n,
                    data,
                }
            } else {
                EventKind::SockWrite {
                    fd: ev.fd,
                    bytes: n,
                    data,
                    body_fp: None,
                    at: (ev.offset != 0).then_some(ev.offset),
                }
            }
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(Event {
        ts_ns: header.ts_ns,
        pid: header.tgid,
        tid: header.tid,
        comm: decoder.comm(&header.comm),
        goid: (header.flags & header_flags::GOID != 0).then_some(header.goid),
        kind,
    })
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use monitor_common::op;

    use super::*;

    fn header(kind: u32) -> Header {
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"portal");
        Header {
            kind,
            tgid: 10,
            tid: 11,
            flags: 0,
            ts_ns: 99,
            goid: 0,
            comm,
            last_loss_ns: 0,
        }
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a #[repr(C)] record.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_open_with_path() {
        let mut path = [0u8; PATH_CAP];
        path[..12].copy_from_slice(b"/docs/a/x.pd");
        let ev = OpenEvent {
            header: header(kind::FILE_OPEN),
            fd: 5,
            dirfd: -100,
            flags: 0,
            path_len: 12,
            source: path_source::KERNEL,
            _pad: 0,
            path,
        };
        let e = decode(&bytes_of(&ev)).unwrap();
        assert_eq!(
            (e.pid, e.tid, e.ts_ns, e.comm.as_str()),
            (10, 11, 99, "portal")
        );
        assert!(
            matches!(e.kind, EventKind::FileOpen { fd: 5, ref path, exact: true, .. } if path == "/docs/a/x.pd")
        );
    }

    /// The goroutine id is the event's only when the probe says it read one (a Go target):
    /// otherwise the header's field means nothing, even if not zero.
    #[test]
    fn a_goroutine_id_is_kept_only_when_flagged() {
        let mut ev = ProcEvent {
            header: header(kind::THREAD_EXIT),
            child_tgid: 0,
            child_tid: 0,
        };
        ev.header.goid = 42;
        assert_eq!(decode(&bytes_of(&ev)).unwrap().goid, None);
        ev.header.flags = header_flags::GOID;
        assert_eq!(decode(&bytes_of(&ev)).unwrap().goid, Some(42));
        // Goroutine 0: the Go runtime's own stack, kept as such.
        ev.header.goid = 0;
        assert_eq!(decode(&bytes_of(&ev)).unwrap().goid, Some(0));
    }

    #[test]
    fn an_open_path_ends_at_its_first_nul() {
        let mut path = [b'x'; PATH_CAP];
        path[0] = 0;
        let ev = OpenEvent {
            header: header(kind::FILE_OPEN),
            fd: 5,
            dirfd: -100,
            flags: 0,
            path_len: PATH_CAP as u32,
            source: path_source::KERNEL,
            _pad: 0,
            path,
        };
        let e = decode(&bytes_of(&ev)).unwrap();
        assert!(
            matches!(e.kind, EventKind::FileOpen { ref path, truncated: true, .. } if path.is_empty()),
            "{e:?}"
        );
    }

    #[test]
    fn decodes_variable_length_data() {
        let mut ev = DataEvent {
            header: header(kind::SOCK_READ),
            fd: 4,
            op: op::READ,
            ret: 300,
            captured: 5,
            chunk: 0,
            offset: 0,
            data: [0; DATA_CAP],
        };
        ev.data[..5].copy_from_slice(b"GET /");
        let raw = bytes_of(&ev);
        let e = decode(&raw[..DATA_HEADER_LEN + 5]).unwrap();
        assert_eq!(
            e.kind,
            EventKind::SockRead {
                fd: 4,
                bytes: 300,
                data: Payload(b"GET /".to_vec())
            }
        );
        // Claims more than it carries: an error, not a panic.
        assert!(matches!(
            decode(&raw[..DATA_HEADER_LEN + 2]),
            Err(DecodeError::Short { .. })
        ));
        ev.captured = 9999;
        assert!(matches!(
            decode(&bytes_of(&ev)),
            Err(DecodeError::BadCapture { .. })
        ));
    }

    /// A socket record of thread `tid` on fd 4 (`kind` `SOCK_READ` or `SOCK_WRITE`): `text`
    /// captured of a transfer of `ret` bytes, at `chunk`.
    fn data_record(k: u32, tid: u32, text: &[u8], ret: usize, chunk: u32) -> Vec<u8> {
        let mut h = header(k);
        h.tid = tid;
        let mut ev = DataEvent {
            header: h,
            fd: 4,
            op: if k == kind::SOCK_WRITE {
                op::WRITE
            } else {
                op::READ
            },
            ret: ret as i64,
            captured: text.len() as u32,
            chunk,
            offset: 0,
            data: [0; DATA_CAP],
        };
        ev.data[..text.len()].copy_from_slice(text);
        bytes_of(&ev)[..DATA_HEADER_LEN + text.len()].to_vec()
    }

    #[test]
    fn a_read_captured_in_several_records_is_joined() {
        let record = |tid: u32, text: &[u8], ret: usize, chunk: u32| {
            data_record(kind::SOCK_READ, tid, text, ret, chunk)
        };
        let head = [b'a'; DATA_CAP * 2 + 100];
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let total = head.len();
        d.next(&record(11, &head[..DATA_CAP], total, CHUNK_MORE), &mut out)
            .unwrap();
        // Another thread's record in between changes nothing.
        d.next(&record(12, b"GET / HTTP/1.1\r\n", 16, 0), &mut out)
            .unwrap();
        d.next(
            &record(
                11,
                &head[DATA_CAP..2 * DATA_CAP],
                total,
                DATA_CAP as u32 | CHUNK_MORE,
            ),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        d.next(
            &record(11, &head[2 * DATA_CAP..], total, 2 * DATA_CAP as u32),
            &mut out,
        )
        .unwrap();
        let EventKind::SockRead { data, bytes, .. } = &out[1].kind else {
            panic!("{out:?}");
        };
        assert_eq!((data.0.as_slice(), *bytes), (&head[..], total as u64));
        // The rest lost: the thread's next record passes on what came, with its byte count.
        out.clear();
        d.next(&record(11, &head[..DATA_CAP], total, CHUNK_MORE), &mut out)
            .unwrap();
        d.next(&record(11, b"GET", 3, 0), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        let EventKind::SockRead { data, bytes, .. } = &out[0].kind else {
            panic!("{out:?}");
        };
        assert_eq!((data.0.len(), *bytes), (DATA_CAP, total as u64));
        // A stray continuation is dropped; flush passes on what waits.
        out.clear();
        d.next(&record(13, b"xx", 9000, 4096), &mut out).unwrap();
        assert!(out.is_empty());
        d.next(&record(14, &head[..DATA_CAP], total, CHUNK_MORE), &mut out)
            .unwrap();
        d.flush(&mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_write_captured_in_several_records_is_joined_never_with_a_read() {
        // An HTTP/2 connection's writes are captured past one record (`H2_CONNS`).
        let record = |k: u32, text: &[u8], ret: usize, chunk: u32| {
            data_record(k, header(k).tid, text, ret, chunk)
        };
        let frames: Vec<u8> = (0..DATA_CAP + 300).map(|i| i as u8).collect();
        let total = frames.len();
        let (first, rest) = frames.split_at(DATA_CAP);
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.next(
            &record(kind::SOCK_WRITE, first, total, CHUNK_MORE),
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());
        d.next(
            &record(kind::SOCK_WRITE, rest, total, DATA_CAP as u32),
            &mut out,
        )
        .unwrap();
        let [ev] = out.as_slice() else {
            panic!("{out:?}")
        };
        let EventKind::SockWrite { data, bytes, .. } = &ev.kind else {
            panic!("{out:?}");
        };
        assert_eq!((data.0.as_slice(), *bytes), (&frames[..], total as u64));
        // A read's continuation never completes a write: the write is passed on as far as it
        // came (its byte count says the rest was not seen), the stray record dropped.
        out.clear();
        d.next(
            &record(kind::SOCK_WRITE, first, total, CHUNK_MORE),
            &mut out,
        )
        .unwrap();
        d.next(
            &record(kind::SOCK_READ, rest, total, DATA_CAP as u32),
            &mut out,
        )
        .unwrap();
        let [ev] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert!(
            matches!(&ev.kind, EventKind::SockWrite { data, bytes, .. }
                if data.0.len() == DATA_CAP && *bytes == total as u64),
            "{ev:?}"
        );
    }

    #[test]
    fn a_decoder_shares_names_and_reuses_payload_buffers() {
        let mut d = Decoder::new();
        let data_event = |text: &[u8]| {
            let mut ev = DataEvent {
                header: header(kind::SOCK_READ),
                fd: 4,
                op: op::READ,
                ret: text.len() as i64,
                captured: text.len() as u32,
                chunk: 0,
                offset: 0,
                data: [0; DATA_CAP],
            };
            ev.data[..text.len()].copy_from_slice(text);
            bytes_of(&ev)[..DATA_HEADER_LEN + text.len()].to_vec()
        };
        let first = d.decode(&data_event(b"GET /a HTTP/1.1\r\n")).unwrap();
        let buffer = match &first.kind {
            EventKind::SockRead { data, .. } => data.0.as_ptr(),
            other => panic!("{other:?}"),
        };
        let name = first.comm.as_str().as_ptr();
        d.recycle(first);
        let second = d.decode(&data_event(b"GET /b")).unwrap();
        assert_eq!(second.comm.as_str(), "portal");
        assert_eq!(
            second.comm.as_str().as_ptr(),
            name,
            "the same name, not a copy"
        );
        match &second.kind {
            EventKind::SockRead { data, bytes, .. } => {
                assert_eq!((data.0.as_slice(), *bytes), (&b"GET /b"[..], 6));
                assert_eq!(data.0.as_ptr(), buffer, "the recycled buffer");
            }
            other => panic!("{other:?}"),
        }
        // Another name is another entry; the table is bounded.
        let mut h = header(kind::PROCESS_EXEC);
        h.comm = *b"worker-1\0\0\0\0\0\0\0\0";
        assert_eq!(d.decode(&bytes_of(&h)).unwrap().comm.as_str(), "worker-1");
        for i in 0..MAX_COMMS + 10 {
            let mut h = header(kind::PROCESS_EXEC);
            h.comm[..8].copy_from_slice(&(i as u64).to_le_bytes());
            h.comm[8] = b'x';
            d.decode(&bytes_of(&h)).unwrap();
        }
        assert!(d.comms.len() <= MAX_COMMS);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(matches!(decode(&[1, 2, 3]), Err(DecodeError::Short { .. })));
        let h = header(777);
        assert_eq!(decode(&bytes_of(&h)), Err(DecodeError::UnknownKind(777)));
        let h = header(kind::FILE_READ);
        assert!(matches!(
            decode(&bytes_of(&h)),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn decodes_a_mapping() {
        let ev = FdEvent {
            header: header(kind::FILE_MAP),
            fd: 7,
            fd2: -1,
            ret: 9500,
            op: op::MMAP,
            size: 0,
            fp: 0,
        };
        assert_eq!(
            decode(&bytes_of(&ev)).unwrap().kind,
            EventKind::FileMap { fd: 7, bytes: 9500 }
        );
    }

    #[test]
    fn decodes_a_count_of_reads() {
        let ev = FdEvent {
            header: header(kind::FILE_READ_MORE),
            fd: 7,
            fd2: -1,
            ret: 255 * 8192,
            op: op::PREAD64,
            size: 255,
            fp: 0,
        };
        assert_eq!(
            decode(&bytes_of(&ev)).unwrap().kind,
            EventKind::FileReadMore {
                fd: 7,
                bytes: 255 * 8192,
                calls: 255
            }
        );
    }

    #[test]
    fn negative_byte_counts_decode_as_zero() {
        let ev = FdEvent {
            header: header(kind::FILE_READ),
            fd: 3,
            fd2: -1,
            ret: -5,
            op: op::READ,
            size: 0,
            fp: 0,
        };
        assert_eq!(
            decode(&bytes_of(&ev)).unwrap().kind,
            EventKind::FileRead {
                fd: 3,
                bytes: 0,
                fp: None,
                size: None,
            }
        );
    }

    #[test]
    fn read_fingerprints_are_decoded() {
        let ev = FdEvent {
            header: header(kind::FILE_READ),
            fd: 3,
            fd2: -1,
            ret: 100,
            op: op::READ,
            size: 9000,
            fp: 0xfeed,
        };
        assert_eq!(
            decode(&bytes_of(&ev)).unwrap().kind,
            EventKind::FileRead {
                fd: 3,
                bytes: 100,
                fp: Some(0xfeed),
                size: Some(9000),
            }
        );
        // 4 GiB or more is no length to compare.
        let big = FdEvent {
            size: u32::MAX,
            ..ev
        };
        assert!(matches!(
            decode(&bytes_of(&big)).unwrap().kind,
            EventKind::FileRead { size: None, .. }
        ));
    }

    #[test]
    fn accepts_carry_their_peer() {
        let accept = |family: u16, port: u16, addr: [u8; 16]| AcceptEvent {
            header: header(kind::SOCK_ACCEPT),
            fd: 9,
            family,
            port,
            addr,
            op: op::ACCEPT4,
            _pad: 0,
        };
        let mut v4 = [0; 16];
        v4[..4].copy_from_slice(&[192, 0, 2, 7]);
        let mut loopback6 = [0; 16];
        loopback6[15] = 1;
        let cases = [
            (
                accept(family::INET, 5555, v4),
                r#"{"family":"ipv4","ip":"192.0.2.7","port":5555}"#,
            ),
            (
                accept(family::INET6, 80, loopback6),
                r#"{"family":"ipv6","ip":"::1","port":80}"#,
            ),
            (accept(family::UNIX, 0, [0; 16]), r#"{"family":"unix"}"#),
        ];
        for (ev, want) in cases {
            let EventKind::SockAccept {
                fd: 9,
                peer: Some(peer),
            } = decode(&bytes_of(&ev)).unwrap().kind
            else {
                panic!("no peer for {want}");
            };
            assert_eq!(serde_json::to_string(&peer).unwrap(), want);
        }
        // The probe could not read the socket: no peer, still an accept.
        assert_eq!(
            decode(&bytes_of(&accept(family::UNKNOWN, 0, [0; 16])))
                .unwrap()
                .kind,
            EventKind::SockAccept { fd: 9, peer: None }
        );
    }
}
