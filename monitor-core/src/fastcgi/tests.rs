//! The decoder on what front servers send and applications write, cut at every byte, with
//! bytes out of sight, and on hostile records.
use super::{build::*, *};

const PARAMS: &[(&str, &str)] = &[
    ("SCRIPT_FILENAME", "/srv/app/index.php"),
    ("QUERY_STRING", ""),
    ("REQUEST_METHOD", "GET"),
    ("REQUEST_URI", "/docs/bob/health-record.pdf"),
    ("SERVER_PROTOCOL", "HTTP/1.1"),
    ("REMOTE_USER", "alice"),
    ("HTTP_HOST", "portal"),
    ("HTTP_X_REMOTE_USER", "carol"),
    ("HTTP_AUTHORIZATION", "Basic YWxpY2U6c2VjcmV0"),
];

/// `h` without the response heads and body bytes it carries (compared separately).
fn shapes(h: Vec<Happening>) -> Vec<Happening> {
    h.into_iter()
        .filter(|h| !matches!(h, Happening::Stdin { .. }))
        .map(|h| match h {
            Happening::Status { id, status, .. } => Happening::Status {
                id,
                status,
                head: Vec::new(),
            },
            other => other,
        })
        .collect()
}

/// Feeds `bytes` to a connection's read side in chunks of `size`.
fn read_in(c: &mut Connection, bytes: &[u8], size: usize) -> Vec<Happening> {
    bytes
        .chunks(size.max(1))
        .flat_map(|chunk| c.on_read(chunk, chunk.len() as u64))
        .collect()
}

fn write_in(c: &mut Connection, bytes: &[u8], size: usize) -> Vec<Happening> {
    bytes
        .chunks(size.max(1))
        .flat_map(|chunk| c.on_write(chunk, chunk.len() as u64))
        .collect()
}

fn only_request(h: &[Happening]) -> (&RequestHead, bool) {
    let reqs: Vec<_> = h
        .iter()
        .filter_map(|h| match h {
            Happening::Request {
                head, truncated, ..
            } => Some((head, *truncated)),
            _ => None,
        })
        .collect();
    assert_eq!(reqs.len(), 1, "{h:?}");
    reqs[0]
}

#[test]
fn a_request_cut_at_every_size_gives_the_same_head() {
    let bytes = request(1, PARAMS, 40);
    for size in 1..=bytes.len() {
        let mut c = Connection::default();
        let got = read_in(&mut c, &bytes, size);
        let (head, truncated) = only_request(&got);
        assert!(!truncated, "size {size}");
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/docs/bob/health-record.pdf");
        assert_eq!(head.header(REMOTE_USER_HEADER), Some(&b"alice"[..]));
        assert_eq!(head.header("x-remote-user"), Some(&b"carol"[..]));
        assert_eq!(head.header("host"), Some(&b"portal"[..]));
        assert_eq!(
            head.header("authorization"),
            Some(&b"Basic YWxpY2U6c2VjcmV0"[..])
        );
        assert_eq!(head.header("script-filename"), None, "not a header");
        assert_eq!(c.in_flight(), 1);
    }
}

#[test]
fn kept_connection_serves_requests_in_turn_and_responses_give_status() {
    let mut c = Connection::default();
    let mut bytes = request(1, PARAMS, 1000);
    assert_eq!(
        only_request(&c.on_read(&bytes, bytes.len() as u64))
            .0
            .method,
        "GET"
    );
    let resp = response(
        1,
        b"Status: 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nno",
    );
    let got = write_in(&mut c, &resp, 7);
    assert!(got.contains(&Happening::Output { id: 1 }));
    assert_eq!(
        shapes(got)
            .into_iter()
            .filter(|h| !matches!(h, Happening::Output { .. }))
            .collect::<Vec<_>>(),
        [
            Happening::Status {
                id: 1,
                status: Some(403),
                head: Vec::new(),
            },
            Happening::Ended { id: 1 },
        ]
    );
    assert_eq!(c.in_flight(), 0);
    // The same connection, request id 1 again (nginx with fastcgi_keep_conn).
    bytes = request(
        1,
        &[("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/login")],
        1000,
    );
    assert_eq!(
        only_request(&c.on_read(&bytes, bytes.len() as u64))
            .0
            .target,
        "/login"
    );
    let resp = response(
        1,
        b"Content-Type: text/html\r\nSet-Cookie: session=x\r\n\r\n<p>hi</p>",
    );
    let got = c.on_write(&resp, resp.len() as u64);
    assert!(shapes(got.clone()).contains(&Happening::Status {
        id: 1,
        status: Some(200),
        head: Vec::new(),
    }));
}

#[test]
fn multiplexed_requests_are_kept_apart() {
    let mut c = Connection::default();
    let a = request(1, &[("REQUEST_URI", "/a"), ("REMOTE_USER", "alice")], 5);
    let b = request(2, &[("REQUEST_URI", "/b"), ("REMOTE_USER", "bob")], 5);
    // Interleave the records of the two requests.
    let split = |v: &[u8]| -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = v;
        while rest.len() >= HEADER_LEN {
            let h = Header::parse(rest.first_chunk().unwrap()).unwrap();
            let n = HEADER_LEN + usize::from(h.content_len) + usize::from(h.padding_len);
            out.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        out
    };
    let (ra, rb) = (split(&a), split(&b));
    let mut stream = Vec::new();
    for i in 0..ra.len().max(rb.len()) {
        for r in [&ra, &rb] {
            if let Some(rec) = r.get(i) {
                stream.extend_from_slice(rec);
            }
        }
    }
    let got = read_in(&mut c, &stream, 13);
    let users: Vec<_> = got
        .iter()
        .filter_map(|h| match h {
            Happening::Request { id, head, .. } => {
                Some((*id, head.header(REMOTE_USER_HEADER).unwrap().to_vec()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(users, [(1, b"alice".to_vec()), (2, b"bob".to_vec())]);
    let mut out = response(2, b"Status: 404 Not Found\r\n\r\n");
    out.extend(response(1, b"\r\nbody"));
    let got = c.on_write(&out, out.len() as u64);
    assert!(shapes(got.clone()).contains(&Happening::Status {
        id: 2,
        status: Some(404),
        head: Vec::new(),
    }));
    assert!(shapes(got.clone()).contains(&Happening::Status {
        id: 1,
        status: Some(200),
        head: Vec::new(),
    }));
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn uncaptured_content_is_skipped_by_its_length() {
    // A response whose body is far larger than the 512-byte capture of each write: the head is
    // read, the body skipped, END_REQUEST still found in the next write.
    let mut c = Connection::default();
    let req = request(1, PARAMS, 1000);
    c.on_read(&req, req.len() as u64);
    let mut body = b"Content-Type: application/pdf\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 60_000));
    let resp = response(1, &body);
    let (first, rest) = resp.split_at(HEADER_LEN + body.len());
    let got = c.on_write(&first[..512], first.len() as u64);
    assert_eq!(
        shapes(got),
        [
            Happening::Output { id: 1 },
            Happening::Status {
                id: 1,
                status: Some(200),
                head: Vec::new(),
            }
        ]
    );
    assert_eq!(
        c.on_write(rest, rest.len() as u64),
        [Happening::Ended { id: 1 }]
    );
    assert!(c.output.in_sync());

    // writev(header, mapping) with only the first iovec captured: 8 bytes of 8 + n.
    let mut c = Connection::default();
    c.on_read(&req, req.len() as u64);
    let head = record(kind::STDOUT, 1, b"Status: 200 OK\r\n\r\n", 0);
    c.on_write(&head, head.len() as u64);
    let hdr = Header {
        kind: kind::STDOUT,
        request_id: 1,
        content_len: 32768,
        padding_len: 0,
    }
    .to_bytes();
    assert_eq!(c.on_write(&hdr, 8 + 32768), [Happening::Output { id: 1 }]);
    let end = record(kind::END_REQUEST, 1, &[0; 8], 0);
    assert_eq!(c.on_write(&end, 8 + 8), [Happening::Ended { id: 1 }]);
}

#[test]
fn params_out_of_sight_make_the_request_truncated() {
    let mut c = Connection::default();
    let req = request(1, PARAMS, 60_000);
    // The params record is read whole, but only its first 88 bytes were captured.
    let params_end = 16
        + HEADER_LEN
        + PARAMS
            .iter()
            .map(|(n, v)| pair(n.as_bytes(), v.as_bytes()).len())
            .sum::<usize>();
    c.on_read(&req[..16], 16);
    assert!(
        c.on_read(&req[16..16 + 88], (params_end - 16) as u64)
            .is_empty()
    );
    let got = c.on_read(&req[params_end..], (req.len() - params_end) as u64);
    let (head, truncated) = only_request(&got);
    assert!(truncated);
    assert_eq!(head.method, "GET", "what was seen is kept");
}

#[test]
fn a_header_out_of_sight_loses_the_stream_until_a_begin_request() {
    let mut c = Connection::default();
    let mut two = request(1, PARAMS, 1000);
    let first_len = two.len();
    two.extend(request(
        1,
        &[("REQUEST_URI", "/second"), ("REMOTE_USER", "bob")],
        1000,
    ));
    // One read of both requests with only 20 bytes captured: the rest is out of sight.
    assert_eq!(c.on_read(&two[..20], two.len() as u64), [Happening::Desync]);
    assert!(!c.input.in_sync());
    // Garbage, a record that is not a BEGIN_REQUEST: still lost.
    let stdin = record(kind::STDIN, 1, b"xx", 0);
    assert!(c.on_read(&stdin, stdin.len() as u64).is_empty());
    // A BEGIN_REQUEST not at the start of a read does not resume it.
    let mut shifted = vec![0u8];
    shifted.extend_from_slice(&two[first_len..]);
    assert!(c.on_read(&shifted, shifted.len() as u64).is_empty());
    // At the start of a read it does.
    let got = c.on_read(&two[first_len..], (two.len() - first_len) as u64);
    assert_eq!(only_request(&got).0.target, "/second");
}

#[test]
fn hostile_records_have_defined_outcomes() {
    // Bad version, bad type: lost.
    for bad in [
        [2u8, 1, 0, 1, 0, 8, 0, 0],
        [1, 0, 0, 1, 0, 0, 0, 0],
        [1, 12, 0, 1, 0, 0, 0, 0],
    ] {
        let mut r = Reader::new(Direction::ToApp);
        let mut pieces = Vec::new();
        r.feed(&bad, 8, |p| pieces.push(format!("{p:?}")));
        assert_eq!(pieces, ["Desync { at: 8 }"]);
    }
    // Bogus lengths: a params record claiming 65535 bytes that never come is content, not a
    // crash; a pair claiming 2^31 bytes is a truncated params stream.
    let mut c = Connection::default();
    let mut bytes = record(kind::BEGIN_REQUEST, 7, &[0, 1, 0, 0, 0, 0, 0, 0], 0);
    let mut evil = vec![0x80 | 0x7f, 0xff, 0xff, 0xff, 1];
    evil.extend_from_slice(b"ABC");
    bytes.extend(record(kind::PARAMS, 7, &evil, 0));
    bytes.extend(record(kind::PARAMS, 7, &[], 0));
    let got = read_in(&mut c, &bytes, 3);
    let (head, truncated) = only_request(&got);
    assert!(truncated);
    assert_eq!(head.method, "-");
    // Padding abuse: 255 bytes of padding after every record, split anywhere.
    let mut padded = record(kind::BEGIN_REQUEST, 1, &[0, 1, 1, 0, 0, 0, 0, 0], 255);
    padded.extend(record(kind::PARAMS, 1, &pair(b"REQUEST_URI", b"/p"), 255));
    padded.extend(record(kind::PARAMS, 1, &[], 255));
    for size in [1, 7, 255, 1000] {
        let mut c = Connection::default();
        assert_eq!(only_request(&read_in(&mut c, &padded, size)).0.target, "/p");
    }
    // Truncated records at the end of input wait; nothing is emitted for them.
    let mut c = Connection::default();
    assert!(c.on_read(&padded[..5], 5).is_empty());
    // Request ids reused without END_REQUEST end the previous exchange.
    let mut c = Connection::default();
    let one = request(3, PARAMS, 1000);
    c.on_read(&one, one.len() as u64);
    let got = c.on_read(&one, one.len() as u64);
    assert_eq!(got[0], Happening::Ended { id: 3 });
    assert_eq!(c.in_flight(), 1);
}

#[test]
fn exchanges_in_flight_are_bounded() {
    let mut c = Connection::default();
    let mut ended = 0;
    for id in 1..=(MAX_EXCHANGES as u16 + 10) {
        let begin = record(kind::BEGIN_REQUEST, id, &[0, 1, 1, 0, 0, 0, 0, 0], 0);
        ended += c
            .on_read(&begin, begin.len() as u64)
            .iter()
            .filter(|h| matches!(h, Happening::Ended { .. }))
            .count();
    }
    assert_eq!(c.in_flight(), MAX_EXCHANGES);
    assert_eq!(ended, 10);
}

#[test]
fn params_decode_long_lengths_and_bounds() {
    let long = "v".repeat(300);
    let stream = [pair(b"HTTP_COOKIE", long.as_bytes()), pair(b"X", b"")].concat();
    let p = Params::parse(&stream);
    assert!(!p.truncated);
    assert_eq!(p.pairs[0].1.len(), 300);
    assert_eq!(p.pairs[1], (b"X".to_vec(), Vec::new()));
    let many: Vec<u8> = (0..MAX_PARAMS + 1).flat_map(|_| pair(b"A", b"b")).collect();
    let p = Params::parse(&many);
    assert!(p.truncated);
    assert_eq!(p.pairs.len(), MAX_PARAMS);
    assert_eq!(nv_length(&[0x80, 0, 1]), None);
    assert_eq!(nv_length(&[0x80, 0, 1, 0]), Some((256, 4)));
}

#[test]
fn request_line_falls_back_to_script_name_and_path_info() {
    let p = Params::parse(
        &[
            pair(b"SCRIPT_NAME", b"/index.php"),
            pair(b"PATH_INFO", b"/docs/a"),
            pair(b"QUERY_STRING", b"x=1"),
            pair(b"SERVER_PROTOCOL", b"HTTP/1.0"),
            pair(b"CONTENT_LENGTH", b"12"),
            pair(b"HTTP_BAD NAME", b"x"),
            pair(b"AUTH_USER", b"dana"),
        ]
        .concat(),
    );
    let head = p.request_head();
    assert_eq!(head.target, "/index.php/docs/a?x=1");
    assert_eq!(head.minor_version, 0);
    assert_eq!(head.header("content-length"), Some(&b"12"[..]));
    assert_eq!(head.headers.len(), 2, "{head:?}");
    assert_eq!(head.header(REMOTE_USER_HEADER), Some(&b"dana"[..]));
}

#[test]
fn cgi_status() {
    assert_eq!(
        response_status(b"Status: 404 Not Found\r\n", false),
        Some(404)
    );
    assert_eq!(response_status(b"status:302\n", false), Some(302));
    assert_eq!(response_status(b"Content-Type: x\r\n", true), Some(200));
    assert_eq!(response_status(b"Content-Type: x\r\n", false), None);
    assert_eq!(
        response_status(b"Location: https://idp/login\r\n", true),
        Some(302)
    );
    assert_eq!(response_status(b"Location: /local\r\n", true), Some(200));
    assert_eq!(response_status(b"Status: 40", true), Some(200), "cut line");
    assert_eq!(response_status(b"Status: 999\n", true), None);
    assert_eq!(response_status(b"Status: 20x\n", true), None);
    assert_eq!(response_status(b"Status: 2\n", true), None);
    assert_eq!(response_head_end(b"A: b\r\n\r\nbody"), Some(8));
    assert_eq!(response_head_end(b"\nbody"), Some(1));
    assert_eq!(response_head_end(b"A: b\r\n"), None);
}

#[test]
fn protocol_is_decided_by_the_first_bytes() {
    let begin = request(1, PARAMS, 100);
    let mut p = Protocol::Fresh;
    assert_eq!(p.observe(&[]), Protocol::Fresh);
    assert_eq!(p.observe(&begin), Protocol::FastCgi);
    assert_eq!(p.observe(b"GET / HTTP/1.1\r\n"), Protocol::FastCgi);
    let mut p = Protocol::Fresh;
    assert_eq!(
        p.observe(&begin[..1]),
        Protocol::FastCgi,
        "php-fpm reads 8, or less"
    );
    let mut p = Protocol::Fresh;
    assert_eq!(p.observe(b"\x16\x03\x01"), Protocol::Http, "garbage: HTTP");
    assert_eq!(p.observe(&begin), Protocol::Http, "decided once");
    // Joined mid-stream: the first recognisable start decides.
    let mut p = Protocol::Unknown;
    assert_eq!(p.observe(b"ody of something"), Protocol::Unknown);
    assert_eq!(p.observe(&begin), Protocol::FastCgi);
    let mut p = Protocol::Unknown;
    assert_eq!(p.observe(b"GET / HTTP/1.1\r\n"), Protocol::Http);
    assert!(starts_fastcgi(&[1, 9, 0, 0, 0, 0, 0, 0]));
    assert!(is_begin_request(&begin[..8]), "a header read alone");
    assert!(!is_begin_request(&begin[..7]));
    let mut bad_role = begin.clone();
    bad_role[9] = 4;
    assert!(!is_begin_request(&bad_role));
    assert!(!is_begin_request(&bad_role[..10]));
    assert!(is_begin_request(&bad_role[..9]));
    let mut id_zero = begin.clone();
    id_zero[3] = 0;
    assert!(!is_begin_request(&id_zero));
}

#[test]
fn from_app_stream_resumes_at_a_write_of_whole_records() {
    let mut r = Reader::new(Direction::FromApp);
    r.lose_sync();
    let mut pieces = 0;
    r.feed(&record(kind::PARAMS, 1, b"x", 0), 9, |_| pieces += 1);
    assert_eq!(pieces, 0, "not a record an application writes");
    r.feed(&record(kind::STDOUT, 0, b"x", 0), 9, |_| pieces += 1);
    assert_eq!(pieces, 0, "request id 0 is management");
    let mut got = Vec::new();
    r.feed(&record(kind::STDOUT, 1, b"x", 0), 9, |p| {
        got.push(format!("{p:?}"))
    });
    assert_eq!(got[0], "Resync");
    assert!(r.in_sync());
}
