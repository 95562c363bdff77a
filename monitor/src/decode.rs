//! Raw ring-buffer records -> typed [`Event`]s. Pure: a record that is too short, of an unknown
//! kind or with inconsistent lengths is an error, never a panic.
use monitor_common::{
    Header,
    files::{FdEvent, OpenEvent, PATH_CAP, path_source},
    kind,
    process::ProcEvent,
    sockets::{DATA_CAP, DATA_HEADER_LEN, DataEvent},
};

use crate::{
    events::{Event, EventKind, Payload},
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

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
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
        | kind::FILE_MAP
        | kind::FILE_SENDFILE
        | kind::FILE_CLOSE
        | kind::SOCK_ACCEPT
        | kind::SOCK_CLOSE => {
            let ev: FdEvent = read(bytes, k)?;
            let n = u64::try_from(ev.ret).unwrap_or(0);
            match k {
                kind::FILE_READ => EventKind::FileRead {
                    fd: ev.fd,
                    bytes: n,
                    fp: (ev.fp != 0).then_some(ev.fp),
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
                kind::SOCK_ACCEPT => EventKind::SockAccept { fd: ev.fd },
                _ => EventKind::SockClose { fd: ev.fd },
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
            let data = Payload(data.to_vec());
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
                }
            }
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(Event {
        ts_ns: header.ts_ns,
        pid: header.tgid,
        tid: header.tid,
        comm: comm(&header.comm),
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
            _pad: 0,
            ts_ns: 99,
            comm,
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
            _pad: 0,
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
            _pad: 0,
            fp: 0,
        };
        assert_eq!(
            decode(&bytes_of(&ev)).unwrap().kind,
            EventKind::FileMap { fd: 7, bytes: 9500 }
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
            _pad: 0,
            fp: 0,
        };
        assert_eq!(
            decode(&bytes_of(&ev)).unwrap().kind,
            EventKind::FileRead {
                fd: 3,
                bytes: 0,
                fp: None
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
            _pad: 0,
            fp: 0xfeed,
        };
        assert_eq!(
            decode(&bytes_of(&ev)).unwrap().kind,
            EventKind::FileRead {
                fd: 3,
                bytes: 100,
                fp: Some(0xfeed)
            }
        );
    }
}
