use loona_hpack::Encoder;

use super::*;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST: u8 = 3;
const SETTINGS: u8 = 4;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn headers(enc: &mut Encoder<'_>, stream: u32, flags: u8, fields: &[(&str, &str)]) -> Vec<u8> {
    let block = enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    frame(HEADERS, END_HEADERS | flags, stream, &block)
}

fn get(path: &str, auth: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":scheme", "https".into()),
        (":authority", "portal.test".into()),
        (":path", path.into()),
        ("authorization", auth.into()),
        ("user-agent", "curl/8".into()),
    ]
}

fn req(enc: &mut Encoder<'_>, stream: u32, path: &str, auth: &str) -> Vec<u8> {
    let fields = get(path, auth);
    let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
    headers(enc, stream, END_STREAM, &fields)
}

fn head_of(item: &Item) -> String {
    match item {
        Item::Request { head, .. } | Item::Response { head, .. } => {
            String::from_utf8(head.0.clone()).unwrap()
        }
        other => panic!("not a head: {other:?}"),
    }
}

fn read(c: &mut Connection, data: &[u8]) -> Vec<Item> {
    let mut out = Vec::new();
    c.on_read(data, data.len() as u64, &mut out);
    out
}

fn write(c: &mut Connection, data: &[u8]) -> Vec<Item> {
    let mut out = Vec::new();
    c.on_write(data, data.len() as u64, &mut out);
    out
}

const DOC_A: &[u8] =
    b"Document of alice: health record, first line, with enough bytes to fingerprint.";
const DOC_B: &[u8] =
    b"Document of bob: insurance claim, first line, with enough bytes to fingerprint it.";

/// The client's first read (preface, SETTINGS, two requests, the second indexed from the
/// dynamic table), then interleaved responses.
fn two_streams() -> (Connection, Vec<Item>, Vec<Item>) {
    let mut c = Connection::new();
    let mut client = Encoder::new();
    let mut first = HTTP2_PREFACE.to_vec();
    first.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    first.extend(req(
        &mut client,
        1,
        "/docs/alice/a.txt",
        "Basic YWxpY2U6cHc=",
    ));
    first.extend(req(&mut client, 3, "/docs/bob/b.txt", "Basic Ym9iOnB3"));
    let reads = read(&mut c, &first);
    let mut server = Encoder::new();
    let mut out = headers(
        &mut server,
        3,
        0,
        &[(":status", "200"), ("content-length", "81")],
    );
    out.extend(headers(
        &mut server,
        1,
        0,
        &[(":status", "200"), ("content-length", "80")],
    ));
    out.extend(frame(DATA, 0, 1, &DOC_A[..40]));
    out.extend(frame(DATA, END_STREAM, 3, DOC_B));
    out.extend(frame(DATA, END_STREAM, 1, &DOC_A[40..]));
    let writes = write(&mut c, &out);
    (c, reads, writes)
}

#[test]
fn interleaved_streams_become_requests_responses_and_fingerprinted_bodies() {
    let (c, reads, writes) = two_streams();
    assert_eq!(reads.len(), 2);
    assert!(matches!(reads[0], Item::Request { stream: 1, .. }));
    assert_eq!(
        head_of(&reads[0]),
        "GET /docs/alice/a.txt HTTP/1.1\r\nhost: portal.test\r\nauthorization: Basic YWxpY2U6cHc=\r\nuser-agent: curl/8\r\n\r\n"
    );
    // Stream 3's head came partly from the dynamic table (`user-agent`, `:authority`).
    assert!(
        head_of(&reads[1]).starts_with("GET /docs/bob/b.txt HTTP/1.1\r\nhost: portal.test\r\n")
    );
    assert!(head_of(&reads[1]).contains("authorization: Basic Ym9iOnB3\r\nuser-agent: curl/8\r\n"));
    let fp = |d: &[u8]| crate::fingerprint::of(&d[..64]);
    assert_eq!(
        writes,
        [
            Item::Response {
                stream: 3,
                head: Payload(b"HTTP/1.1 200 \r\ncontent-length: 81\r\n\r\n".to_vec())
            },
            Item::Response {
                stream: 1,
                head: Payload(b"HTTP/1.1 200 \r\ncontent-length: 80\r\n\r\n".to_vec())
            },
            // Stream 1's first 40 bytes are not enough: its fingerprint comes with the frame
            // that completes them.
            Item::Data {
                stream: 1,
                bytes: 40,
                body_fp: None
            },
            Item::Data {
                stream: 3,
                bytes: DOC_B.len() as u64,
                body_fp: fp(DOC_B)
            },
            Item::End { stream: 3 },
            Item::Data {
                stream: 1,
                bytes: DOC_A.len() as u64 - 40,
                body_fp: fp(DOC_A)
            },
            Item::End { stream: 1 },
        ]
    );
    assert!(fp(DOC_A).is_some() && fp(DOC_A) != fp(DOC_B));
    assert_eq!(c.lost(), None);
    assert!(c.streams.is_empty());
}

#[test]
fn frames_split_anywhere_give_the_same_items() {
    let (_, reads, writes) = two_streams();
    // The same bytes, one byte per read and write.
    let mut c = Connection::new();
    let mut client = Encoder::new();
    let mut first = HTTP2_PREFACE.to_vec();
    first.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    first.extend(req(
        &mut client,
        1,
        "/docs/alice/a.txt",
        "Basic YWxpY2U6cHc=",
    ));
    first.extend(req(&mut client, 3, "/docs/bob/b.txt", "Basic Ym9iOnB3"));
    let got: Vec<Item> = first.iter().flat_map(|b| read(&mut c, &[*b])).collect();
    assert_eq!(got, reads);
    let mut server = Encoder::new();
    let mut out = headers(
        &mut server,
        3,
        0,
        &[(":status", "200"), ("content-length", "81")],
    );
    out.extend(headers(
        &mut server,
        1,
        0,
        &[(":status", "200"), ("content-length", "80")],
    ));
    out.extend(frame(DATA, 0, 1, &DOC_A[..40]));
    out.extend(frame(DATA, END_STREAM, 3, DOC_B));
    out.extend(frame(DATA, END_STREAM, 1, &DOC_A[40..]));
    let got: Vec<Item> = out.iter().flat_map(|b| write(&mut c, &[*b])).collect();
    assert_eq!(got, writes);
}

#[test]
fn a_header_block_not_captured_loses_the_connection_for_good() {
    let mut c = Connection::new();
    let mut client = Encoder::new();
    let mut first = HTTP2_PREFACE.to_vec();
    first.extend(req(
        &mut client,
        1,
        "/docs/alice/a.txt",
        "Basic YWxpY2U6cHc=",
    ));
    let mut out = Vec::new();
    // The capture stops inside the HEADERS frame.
    let cut = HTTP2_PREFACE.len() + 12;
    c.on_read(&first[..cut], first.len() as u64, &mut out);
    assert_eq!(
        out,
        [Item::Lost {
            why: Lost::Uncaptured
        }]
    );
    assert_eq!(c.lost(), Some(Lost::Uncaptured));
    // Nothing is decoded after it, even a well-formed request.
    let more = req(&mut client, 3, "/docs/bob/b.txt", "Basic Ym9iOnB3");
    assert!(read(&mut c, &more).is_empty());
}

#[test]
fn an_uncaptured_body_is_passed_over_by_length() {
    let (mut c, mut client) = (Connection::new(), Encoder::new());
    let mut first = HTTP2_PREFACE.to_vec();
    first.extend(req(&mut client, 1, "/big", "Basic YWxpY2U6cHc="));
    first.extend(req(&mut client, 3, "/small", "Basic YWxpY2U6cHc="));
    assert_eq!(read(&mut c, &first).len(), 2);
    let mut server = Encoder::new();
    let mut w = headers(&mut server, 1, 0, &[(":status", "200")]);
    let big = vec![b'x'; 10_000];
    w.extend(frame(DATA, END_STREAM, 1, &big));
    // Captured: the head and the body's first 100 bytes.
    let captured = w.len() - big.len() + 100;
    let mut out = Vec::new();
    c.on_write(&w[..captured], w.len() as u64, &mut out);
    assert_eq!(
        out[1..],
        [
            Item::Data {
                stream: 1,
                bytes: 10_000,
                body_fp: crate::fingerprint::of(&big[..64])
            },
            Item::End { stream: 1 }
        ]
    );
    // The next write is read as frames again. A body whose first bytes went uncaptured has
    // no fingerprint.
    let mut w = headers(&mut server, 3, 0, &[(":status", "404")]);
    let head_len = w.len();
    w.extend(frame(DATA, END_STREAM, 3, DOC_B));
    let mut out = Vec::new();
    c.on_write(&w[..head_len + 9 + 10], w.len() as u64, &mut out);
    assert_eq!(
        out[1..],
        [
            Item::Data {
                stream: 3,
                bytes: DOC_B.len() as u64,
                body_fp: None
            },
            Item::End { stream: 3 }
        ]
    );
    assert_eq!(c.lost(), None);
}

fn post(enc: &mut Encoder<'_>, stream: u32, path: &str) -> Vec<u8> {
    let fields = [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "portal.test"),
        (":path", path),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    headers(enc, stream, 0, &fields)
}

#[test]
fn a_login_form_is_kept_whole_and_no_other_body() {
    let login = Some(std::sync::Arc::from("/login"));
    let (mut c, mut client) = (
        Connection::new().with_login_path(login.clone()),
        Encoder::new(),
    );
    let mut first = HTTP2_PREFACE.to_vec();
    first.extend(post(&mut client, 1, "/login?next=/docs"));
    // The form in two DATA frames, the second padded.
    first.extend(frame(DATA, 0, 1, b"user=alice&pass"));
    let mut padded = vec![3];
    padded.extend_from_slice(b"word=alice-pw");
    padded.extend_from_slice(&[0; 3]);
    first.extend(frame(DATA, END_STREAM | PADDED, 1, &padded));
    // Another POST's body (an upload) is not kept.
    first.extend(post(&mut client, 3, "/upload"));
    first.extend(frame(DATA, END_STREAM, 3, b"user=mallory"));
    let items = read(&mut c, &first);
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(
        items[1],
        Item::LoginForm {
            stream: 1,
            form: Payload(b"user=alice&password=alice-pw".to_vec())
        }
    );
    assert!(matches!(items[2], Item::Request { stream: 3, .. }));

    // A form whose bytes went partly uncaptured is no form (never a user name cut short), nor
    // one longer than the bound, nor one whose body has not ended.
    let mut c = Connection::new().with_login_path(login);
    let mut client = Encoder::new();
    let mut first = HTTP2_PREFACE.to_vec();
    first.extend(post(&mut client, 1, "/login"));
    let head = first.len();
    first.extend(frame(DATA, END_STREAM, 1, b"user=alice&password=x"));
    let mut out = Vec::new();
    c.on_read(&first[..head + 9 + 7], first.len() as u64, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    let mut more = post(&mut client, 3, "/login");
    let long = format!("user=bob&csrf={}", "t".repeat(LOGIN_FORM_CAP));
    more.extend(frame(DATA, END_STREAM, 3, long.as_bytes()));
    more.extend(post(&mut client, 5, "/login"));
    more.extend(frame(DATA, 0, 5, b"user=carol"));
    let items = read(&mut c, &more);
    assert!(
        items.iter().all(|i| matches!(i, Item::Request { .. })),
        "{items:?}"
    );
    assert_eq!(c.lost(), None);
}

#[test]
fn padding_is_not_body() {
    let (mut c, mut client) = (Connection::new(), Encoder::new());
    let mut first = HTTP2_PREFACE.to_vec();
    first.extend(req(&mut client, 1, "/a", "Basic YWxpY2U6cHc="));
    read(&mut c, &first);
    let mut payload = vec![5u8];
    payload.extend_from_slice(DOC_A);
    payload.extend_from_slice(&[0; 5]);
    let out = write(&mut c, &frame(DATA, PADDED | END_STREAM, 1, &payload));
    assert_eq!(
        out[0],
        Item::Data {
            stream: 1,
            bytes: DOC_A.len() as u64,
            body_fp: crate::fingerprint::of(&DOC_A[..64])
        }
    );
}

#[test]
fn an_hpack_error_loses_the_connection() {
    let mut c = Connection::new();
    let mut first = HTTP2_PREFACE.to_vec();
    // Indexed field 70: past the static table, and the dynamic table is empty.
    first.extend(frame(HEADERS, END_HEADERS, 1, &[0x80 | 70]));
    assert_eq!(read(&mut c, &first), [Item::Lost { why: Lost::Hpack }]);
}

#[test]
fn line_breaks_in_a_field_lose_the_connection() {
    let (mut c, mut client) = (Connection::new(), Encoder::new());
    let mut first = HTTP2_PREFACE.to_vec();
    first.extend(req(
        &mut client,
        1,
        "/a",
        "Basic YWxpY2U6cHc=\r\nx-remote-user: admin",
    ));
    assert_eq!(
        read(&mut c, &first),
        [Item::Lost {
            why: Lost::InvalidHeaders
        }]
    );
}

#[test]
fn continuations_join_and_nothing_may_come_between() {
    let mut client = Encoder::new();
    let fields = get("/docs/alice/a.txt", "Basic YWxpY2U6cHc=");
    let block = client.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    let (a, b) = block.split_at(7);
    let mut ok = HTTP2_PREFACE.to_vec();
    ok.extend(frame(HEADERS, END_STREAM, 1, a));
    ok.extend(frame(CONTINUATION, END_HEADERS, 1, b));
    let items = read(&mut Connection::new(), &ok);
    assert!(head_of(&items[0]).starts_with("GET /docs/alice/a.txt HTTP/1.1\r\n"));
    let mut bad = HTTP2_PREFACE.to_vec();
    bad.extend(frame(HEADERS, END_STREAM, 1, a));
    bad.extend(frame(RST, 0, 3, &[0, 0, 0, 8]));
    bad.extend(frame(CONTINUATION, END_HEADERS, 1, b));
    assert_eq!(
        read(&mut Connection::new(), &bad),
        [Item::Lost { why: Lost::Framing }]
    );
}

#[test]
fn a_reset_ends_the_stream_and_events_lost_end_them_all() {
    let (mut c, mut client) = (Connection::new(), Encoder::new());
    let mut first = HTTP2_PREFACE.to_vec();
    first.extend(req(&mut client, 1, "/a", "Basic YWxpY2U6cHc="));
    first.extend(req(&mut client, 3, "/b", "Basic YWxpY2U6cHc="));
    first.extend(frame(RST, 0, 1, &[0, 0, 0, 8]));
    let items = read(&mut c, &first);
    assert_eq!(items[2], Item::End { stream: 1 });
    let mut out = Vec::new();
    c.lose(Lost::EventsLost, &mut out);
    c.lose(Lost::EventsLost, &mut out);
    assert_eq!(
        out,
        [Item::Lost {
            why: Lost::EventsLost
        }]
    );
    assert!(c.streams.is_empty());
}

#[test]
fn not_a_preface_is_framing() {
    let mut c = Connection::new();
    assert_eq!(
        read(&mut c, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
        [Item::Lost { why: Lost::Framing }]
    );
}

fn ev(kind: EventKind) -> Event {
    Event {
        ts_ns: 1,
        pid: 1,
        tid: 2,
        comm: "nginx".into(),
        goid: None,
        kind,
    }
}

fn sock_read(fd: i32, data: &[u8]) -> EventKind {
    EventKind::SockRead {
        fd,
        bytes: data.len() as u64,
        data: Payload(data.to_vec()),
    }
}

fn sock_write(fd: i32, data: &[u8]) -> EventKind {
    EventKind::SockWrite {
        fd,
        bytes: data.len() as u64,
        data: Payload(data.to_vec()),
        body_fp: None,
        at: None,
    }
}

use crate::events::{Event, EventKind, Unreadable};

#[test]
fn the_demux_replaces_http2_bytes_by_items_and_leaves_http1_alone() {
    let mut d = Demux::new();
    let mut out = Vec::new();
    let mut client = Encoder::new();
    let mut first = HTTP2_PREFACE.to_vec();
    first.extend(req(
        &mut client,
        1,
        "/docs/alice/a.txt",
        "Basic YWxpY2U6cHc=",
    ));
    d.take(ev(sock_read(7, &first)), &mut out);
    d.take(ev(sock_read(8, b"GET / HTTP/1.1\r\n\r\n")), &mut out);
    // A later read of the HTTP/1 connection that starts like a preface, not all of it: still
    // HTTP/1.
    d.take(ev(sock_read(8, &HTTP2_PREFACE[..10])), &mut out);
    let kinds: Vec<&EventKind> = out.iter().map(|e| &e.kind).collect();
    assert!(matches!(
        kinds[0],
        EventKind::Http2 {
            fd: 7,
            item: Item::Request { stream: 1, .. }
        }
    ));
    assert!(matches!(kinds[1], EventKind::SockRead { fd: 8, .. }));
    assert!(matches!(kinds[2], EventKind::SockRead { fd: 8, .. }));
    assert_eq!((d.connections, d.tracked()), (1, 1));
    // Lost: reads are unreadable, writes dropped, until the close.
    out.clear();
    d.events_lost();
    d.take(ev(sock_read(7, &[0, 0, 0, 4, 1, 0, 0, 0, 0])), &mut out);
    d.take(ev(sock_write(7, &[0, 0, 0, 4, 1, 0, 0, 0, 0])), &mut out);
    assert_eq!(
        out.iter().map(|e| &e.kind).collect::<Vec<_>>(),
        [&EventKind::Unreadable {
            fd: 7,
            bytes: 9,
            why: Unreadable::Http2
        }]
    );
    assert_eq!(d.lost.get("events_lost"), Some(&1));
    out.clear();
    d.take(ev(EventKind::SockClose { fd: 7 }), &mut out);
    d.take(ev(sock_read(7, b"GET / HTTP/1.1\r\n\r\n")), &mut out);
    assert!(matches!(out[1].kind, EventKind::SockRead { fd: 7, .. }));
    assert_eq!(d.tracked(), 0);
}

#[test]
fn no_credential_or_cookie_of_an_http2_exchange_reaches_a_trace() {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("alice:hunter2-secret");
    let bearer = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJlLW9mLWJvYi1zZWNyZXQ";
    let (mut d, mut r, mut client, mut server) = (
        Demux::new(),
        crate::redact::Redactor::default(),
        Encoder::new(),
        Encoder::new(),
    );
    let mut first = HTTP2_PREFACE.to_vec();
    first.extend(req(
        &mut client,
        1,
        "/a?token=querysecret1",
        &format!("Basic {basic}"),
    ));
    first.extend(req(&mut client, 3, "/b", &format!("Bearer {bearer}")));
    first.extend(headers(
        &mut client,
        5,
        END_STREAM,
        &[
            (":method", "GET"),
            (":path", "/c"),
            ("cookie", "sid=cookiesecret42"),
            ("cookie", "theme=darkcookie77"),
        ],
    ));
    // The same credentials again, now from the dynamic table.
    first.extend(req(&mut client, 7, "/d", &format!("Basic {basic}")));
    let reply = headers(
        &mut server,
        1,
        0,
        &[
            (":status", "200"),
            ("set-cookie", "sid=setcookiesecret9; Path=/"),
        ],
    );
    let mut out = Vec::new();
    d.take(ev(sock_read(7, &first)), &mut out);
    d.take(ev(sock_write(7, &reply)), &mut out);
    assert_eq!(out.len(), 5);
    let mut trace = String::new();
    for mut e in out {
        if let EventKind::Http2 {
            item: Item::Request { head, .. } | Item::Response { head, .. },
            ..
        } = &mut e.kind
        {
            r.redact_head(&mut head.0);
        }
        trace.push_str(&serde_json::to_string(&e).unwrap());
        trace.push('\n');
    }
    for secret in [
        "hunter2-secret",
        &basic,
        "c2lnbmF0dXJlLW9mLWJvYi1zZWNyZXQ",
        "cookiesecret42",
        "darkcookie77",
        "setcookiesecret9",
        "querysecret1",
    ] {
        assert!(!trace.contains(secret), "{secret} in {trace}");
    }
    // What identifies the requests is still there.
    let alice = base64::engine::general_purpose::STANDARD.encode("alice:");
    assert!(trace.contains(&alice[..8]), "{trace}");
    assert!(trace.contains("eyJzdWIiOiJib2IifQ"), "{trace}");
}

#[test]
fn a_head_the_http_parser_refuses_is_not_followed() {
    // Found by the `http2` fuzz target: an empty `transfer-encoding` (which the HTTP parser
    // refuses: the body's framing is unknown).
    let (mut c, mut client) = (Connection::new(), Encoder::new());
    let fields = [
        (":method", "POST"),
        (":path", "/index.html"),
        ("transfer-encoding", ""),
    ];
    let mut first = HTTP2_PREFACE.to_vec();
    first.extend(headers(&mut client, 1, END_STREAM, &fields));
    assert_eq!(
        read(&mut c, &first),
        [Item::Lost {
            why: Lost::InvalidHeaders
        }]
    );
}

#[test]
fn an_h2c_upgrade_makes_the_connection_unreadable_never_http1() {
    let lost = EventKind::Http2 {
        fd: 8,
        item: Item::Lost {
            why: Lost::H2cUpgrade,
        },
    };
    let unreadable = |bytes: usize| EventKind::Unreadable {
        fd: 8,
        bytes: bytes as u64,
        why: Unreadable::Http2,
    };
    let upgrade = b"GET /docs/a.txt HTTP/1.1\r\nHost: p\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n";
    let switching =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
    let frames = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    // The `101` seen: passed on (the upgrade request's response), then the connection is lost;
    // the server's frames are dropped, the client's preface and frames unreadable.
    let mut d = Demux::new();
    let mut out = Vec::new();
    d.take(ev(sock_read(8, upgrade)), &mut out);
    d.take(ev(sock_write(8, switching)), &mut out);
    d.take(ev(sock_write(8, &frames)), &mut out);
    d.take(ev(sock_read(8, HTTP2_PREFACE)), &mut out);
    let kinds: Vec<&EventKind> = out.iter().map(|e| &e.kind).collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert!(matches!(kinds[0], EventKind::SockRead { .. }));
    assert!(matches!(kinds[1], EventKind::SockWrite { .. }));
    assert_eq!(kinds[2..], [&lost, &unreadable(HTTP2_PREFACE.len())]);
    assert_eq!((d.connections, d.tracked()), (1, 1));
    // The `101` not seen (its write lost, say): the client's whole preface on an HTTP/1
    // connection is the switch, never a `PRI *` request.
    let mut d = Demux::new();
    let mut out = Vec::new();
    d.take(ev(sock_read(8, upgrade)), &mut out);
    d.take(ev(sock_read(8, HTTP2_PREFACE)), &mut out);
    let kinds: Vec<&EventKind> = out.iter().map(|e| &e.kind).collect();
    assert_eq!(kinds[1..], [&lost, &unreadable(HTTP2_PREFACE.len())]);
    // A `101` to something else (WebSocket) is not HTTP/2.
    let mut d = Demux::new();
    let mut out = Vec::new();
    d.take(ev(sock_read(8, b"GET /ws HTTP/1.1\r\n\r\n")), &mut out);
    d.take(
        ev(sock_write(
            8,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        )),
        &mut out,
    );
    assert_eq!((out.len(), d.tracked()), (2, 0));
}

#[test]
fn a_joined_connection_that_reads_http2_frames_is_unreadable_never_http1() {
    // Open before Vigie started (found at adoption): its first read seen is a request's
    // frames, no preface.
    let mut client = Encoder::new();
    let mut frames = req(&mut client, 5, "/docs/bob/b.txt", "Basic Ym9iOnB3");
    frames.extend(frame(DATA, END_STREAM, 3, b"GET /x HTTP/1.1"));
    let found = || {
        ev(EventKind::FdFound {
            fd: 9,
            found: crate::events::FoundFd::Socket,
        })
    };
    let mut d = Demux::new();
    let mut out = Vec::new();
    d.adopted(&found());
    d.take(ev(sock_read(9, &frames)), &mut out);
    d.take(ev(sock_read(9, b"GET / HTTP/1.1\r\n\r\n")), &mut out);
    let kinds: Vec<&EventKind> = out.iter().map(|e| &e.kind).collect();
    let unreadable = |bytes: usize| EventKind::Unreadable {
        fd: 9,
        bytes: bytes as u64,
        why: Unreadable::Http2,
    };
    assert_eq!(
        kinds,
        [
            &EventKind::Http2 {
                fd: 9,
                item: Item::Lost { why: Lost::Joined }
            },
            &unreadable(frames.len()),
            &unreadable(18),
        ]
    );
    // A first read that is not whole frames (HTTP/1, FastCGI, TLS, a frame cut by the
    // capture) is left to the HTTP/1 and FastCGI readers.
    for first in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        &[0x16, 3, 1, 0, 5, 1, 0, 0, 1, 3],
        &frames[..frames.len() - 1],
    ] {
        let mut d = Demux::new();
        let mut out = Vec::new();
        d.adopted(&found());
        d.take(ev(sock_read(9, first)), &mut out);
        assert!(
            matches!(out[0].kind, EventKind::SockRead { .. }),
            "{first:?}"
        );
        assert_eq!(d.tracked(), 0);
    }
    // A socket opened since Vigie started (a target's own HTTP/2 client connection, reading
    // the server's SETTINGS first) is not taken for a joined one.
    let mut d = Demux::new();
    let mut out = Vec::new();
    d.take(ev(sock_read(9, &frame(SETTINGS, 0, 0, &[]))), &mut out);
    assert!(matches!(out[0].kind, EventKind::SockRead { .. }));
    assert_eq!(d.tracked(), 0);
}
