//! Pipelined requests answered in order, bodies that look like requests, and desyncs reported
//! with their reason (issue 19): what a hostile client sends in one write, or cut anywhere.
use super::*;

fn head(user: Option<&str>, target: &str, extra: &str) -> String {
    let who = user.map_or(String::new(), |u| format!("X-Remote-User: {u}\r\n"));
    format!("GET {target} HTTP/1.1\r\nHost: x\r\n{who}{extra}\r\n")
}

fn reason(a: &Access) -> Option<Desync> {
    a.unattributed
}

#[test]
fn pipelined_requests_by_different_users_are_answered_in_order() {
    let mut s = Scenario::new();
    let both = head(Some("alice"), "/docs/bob/x", "") + &head(Some("carol"), "/docs/carol/y", "");
    s.accept(1, 2, 5).request(1, 2, 5, &both);
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read(1, 2, 7, 10)
        .close(1, 2, 7);
    s.respond(1, 2, 5, 200).body(1, 2, 5, 3);
    s.open(1, 2, 7, "/srv/users/carol/y")
        .read(1, 2, 7, 10)
        .close(1, 2, 7);
    s.respond(1, 2, 5, 200).body(1, 2, 5, 3);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (
                u("alice"),
                "/srv/users/bob/x".into(),
                vec![Evidence::Thread]
            ),
            (
                u("carol"),
                "/srv/users/carol/y".into(),
                vec![Evidence::Thread]
            ),
        ]
    );
    assert_eq!(got[0].request.as_ref().unwrap().status, Some(200));
    assert_eq!(s.c.stats().pipelined_requests, 1);
}

#[test]
fn an_anonymous_request_behind_a_user_does_not_hide_the_user() {
    let mut s = Scenario::new();
    let both = head(Some("alice"), "/docs/bob/x", "") + &head(None, "/public", "");
    s.accept(1, 2, 5).request(1, 2, 5, &both);
    // sendfile: the document goes to the request being answered, the oldest.
    s.open(1, 2, 7, "/srv/users/bob/x");
    s.ev(
        1,
        2,
        EventKind::SendFile {
            out_fd: 5,
            in_fd: 7,
            bytes: 100,
        },
    );
    s.close(1, 2, 7);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [(
            u("alice"),
            "/srv/users/bob/x".into(),
            vec![Evidence::Sendfile]
        )]
    );
}

#[test]
fn sendfile_responses_move_to_the_next_request_by_length() {
    let mut s = Scenario::new();
    let three = head(Some("alice"), "/docs/alice/a", "")
        + &head(Some("carol"), "/docs/bob/b", "")
        + &head(Some("bob"), "/docs/bob/b", "");
    s.accept(1, 2, 5).request(1, 2, 5, &three);
    for (doc, size) in [
        ("/srv/users/alice/a", 100),
        ("/srv/users/bob/b", 50),
        ("/srv/users/bob/b", 50),
    ] {
        let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").into_bytes();
        s.ev(
            1,
            2,
            EventKind::SockWrite {
                fd: 5,
                bytes: h.len() as u64,
                data: Payload(h),
                body_fp: None,
                at: None,
            },
        );
        s.open(1, 2, 7, doc);
        s.ev(
            1,
            2,
            EventKind::SendFile {
                out_fd: 5,
                in_fd: 7,
                bytes: size,
            },
        );
        s.close(1, 2, 7);
    }
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (
                u("alice"),
                "/srv/users/alice/a".into(),
                vec![Evidence::Sendfile]
            ),
            (
                u("carol"),
                "/srv/users/bob/b".into(),
                vec![Evidence::Sendfile]
            ),
            (
                u("bob"),
                "/srv/users/bob/b".into(),
                vec![Evidence::Sendfile]
            ),
        ]
    );
}

#[test]
fn responses_of_unknown_length_in_a_pipeline_leave_the_rest_to_nobody() {
    let mut s = Scenario::new();
    let both = head(Some("alice"), "/docs/alice/a", "") + &head(Some("carol"), "/docs/bob/b", "");
    s.accept(1, 2, 5).request(1, 2, 5, &both);
    s.open(1, 2, 7, "/srv/users/alice/a")
        .read(1, 2, 7, 10)
        .close(1, 2, 7);
    // alice's response has no length: where it ends, and carol's starts, is unknown.
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    s.ev(
        1,
        2,
        EventKind::SockWrite {
            fd: 5,
            bytes: chunked.len() as u64,
            data: Payload(chunked),
            body_fp: None,
            at: None,
        },
    );
    s.open(1, 2, 7, "/srv/users/bob/b")
        .read(1, 2, 7, 10)
        .close(1, 2, 7);
    s.respond(1, 2, 5, 200);
    s.open(1, 2, 7, "/srv/users/bob/b");
    s.ev(
        1,
        2,
        EventKind::SendFile {
            out_fd: 5,
            in_fd: 7,
            bytes: 10,
        },
    );
    s.close(1, 2, 7);
    // The next request read on the connection is followed again.
    s.get_as(1, 2, 5, "bob", "/docs/bob/b");
    s.open(1, 2, 7, "/srv/users/bob/b")
        .read(1, 2, 7, 10)
        .close(1, 2, 7);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (
                u("alice"),
                "/srv/users/alice/a".into(),
                vec![Evidence::Thread]
            ),
            (None, "/srv/users/bob/b".into(), vec![]),
            (None, "/srv/users/bob/b".into(), vec![]),
            (u("bob"), "/srv/users/bob/b".into(), vec![Evidence::Thread]),
        ]
    );
    assert_eq!(reason(&got[1]), Some(Desync::PipelineAmbiguous));
    assert_eq!(reason(&got[2]), Some(Desync::PipelineAmbiguous));
}

#[test]
fn a_body_that_looks_like_requests_is_skipped_chunked_or_not() {
    let mut s = Scenario::new();
    let inner = head(Some("bob"), "/docs/bob/b", "");
    let post = format!(
        "POST /docs/x HTTP/1.1\r\nX-Remote-User: alice\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    s.accept(1, 2, 5).request(1, 2, 5, &post);
    s.open(1, 2, 7, "/srv/users/bob/b")
        .read(1, 2, 7, 10)
        .close(1, 2, 7);
    s.respond(1, 2, 5, 200).body(1, 2, 5, 3);
    let chunked = format!(
        "POST /docs/y HTTP/1.1\r\nX-Remote-User: carol\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
        inner.len()
    );
    // Cut inside the chunk data: the decoder carries across reads.
    let (a, b) = chunked.split_at(chunked.len() - 20);
    s.request(1, 2, 5, a).request(1, 2, 5, b);
    s.open(1, 2, 7, "/srv/users/bob/b")
        .read(1, 2, 7, 10)
        .close(1, 2, 7);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (
                u("alice"),
                "/srv/users/bob/b".into(),
                vec![Evidence::Thread]
            ),
            (
                u("carol"),
                "/srv/users/bob/b".into(),
                vec![Evidence::Thread]
            ),
        ]
    );
    assert_eq!(s.c.stats().requests, 2);
}

#[test]
fn connection_close_mid_pipeline_ends_the_requests() {
    let mut s = Scenario::new();
    let three = head(Some("alice"), "/docs/alice/a", "")
        + &head(Some("carol"), "/docs/carol/c", "Connection: close\r\n")
        + &head(Some("bob"), "/docs/bob/b", "");
    s.accept(1, 2, 5).request(1, 2, 5, &three);
    assert_eq!(s.c.stats().requests, 2);
}

#[test]
fn garbage_and_oversized_heads_leave_reads_unattributed_with_the_reason() {
    let mut s = Scenario::new();
    s.accept(1, 2, 5).get_as(1, 2, 5, "alice", "/docs/alice/a");
    s.respond(1, 2, 5, 200).body(1, 2, 5, 3);
    s.request(1, 2, 5, "\x16\x03\x01 not http\r\n\r\n");
    s.open(1, 2, 7, "/srv/users/bob/b")
        .read(1, 2, 7, 10)
        .close(1, 2, 7);
    let big = format!("GET /x HTTP/1.1\r\nX-Pad: {}\r\n", "p".repeat(5000));
    s.accept(1, 3, 6).request(1, 3, 6, &big);
    s.open(1, 3, 8, "/srv/users/bob/b")
        .read(1, 3, 8, 10)
        .close(1, 3, 8);
    let got = s.finish();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|a| a.request.is_none()));
    assert_eq!(reason(&got[0]), Some(Desync::InvalidHead));
    assert_eq!(reason(&got[1]), Some(Desync::HeadTooLarge));
}

#[test]
fn a_head_cut_byte_by_byte_keeps_its_user() {
    let mut s = Scenario::new();
    let h = head(
        Some("alice"),
        "/docs/bob/x",
        "Authorization: Basic Ym9iOnB3\r\n",
    );
    s.accept(1, 2, 5);
    for b in h.as_bytes() {
        s.request(1, 2, 5, std::str::from_utf8(&[*b]).unwrap());
    }
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read(1, 2, 7, 10)
        .close(1, 2, 7);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [(
            u("alice"),
            "/srv/users/bob/x".into(),
            vec![Evidence::Thread]
        )]
    );
}
