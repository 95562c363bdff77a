//! Tests of the demo portal and of the test helpers, against portals served in-process (thread
//! and pool models) and, when it has been built, the `demo-portal` binary (all models).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser as _;

use crate::portal::{Config, DOCUMENTS, Server, USERS, document_content};
use crate::{KeepAlive, basic, http_get, send_raw};

/// A scratch directory removed on drop.
struct TempRoot(PathBuf);

impl TempRoot {
    fn new() -> TempRoot {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("vigie-portal-selftest-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempRoot(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts an in-process portal on a freshly generated root.
fn start(model: &str, extra: &[&str]) -> (TempRoot, Server) {
    let root = TempRoot::new();
    let mut args = vec![
        "demo-portal",
        "--root",
        root.path().to_str().unwrap(),
        "--model",
        model,
        "--generate",
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&Config::try_parse_from(args).unwrap()).unwrap();
    (root, server)
}

const ALL_SETUPS: [(&str, &[&str]); 4] = [
    ("thread", &[]),
    ("thread", &["--cache"]),
    ("pool", &[]),
    ("pool", &["--cache", "--workers", "2"]),
];

#[test]
fn documents_by_id_are_served_from_docs() {
    for (model, extra) in ALL_SETUPS {
        let (_root, server) = start(model, extra);
        let addr = server.addr().to_string();
        let alice = [("X-Remote-User", "alice")];
        // The URL names an id; the file is ROOT/docs/<id>.pdf, bob's (the IDOR again).
        let (status, body) = http_get(&addr, "/api/documents/2001", &alice).unwrap();
        assert_eq!(
            (status, body),
            (200, document_content("bob", "2001.pdf")),
            "{model} {extra:?}"
        );
        assert_eq!(http_get(&addr, "/api/documents/2001", &[]).unwrap().0, 401);
        for missing in [
            "/api/documents/4242",
            "/api/documents/x1",
            "/api/documents/",
            "/api/documents/1/2",
        ] {
            assert_eq!(
                http_get(&addr, missing, &alice).unwrap().0,
                404,
                "{missing}"
            );
        }
    }
}

#[test]
fn documents_need_an_identity_but_not_the_owners() {
    for (model, extra) in ALL_SETUPS {
        let (_root, server) = start(model, extra);
        let addr = server.addr().to_string();
        let alice = [("X-Remote-User", "alice")];

        let (status, body) = http_get(&addr, "/docs/alice/notes.txt", &alice).unwrap();
        assert_eq!(
            (status, body),
            (200, document_content("alice", "notes.txt")),
            "{model} {extra:?}"
        );
        // The IDOR: alice reads bob's document.
        let (status, body) = http_get(&addr, "/docs/bob/health-record.pdf", &alice).unwrap();
        assert_eq!(
            (status, body),
            (200, document_content("bob", "health-record.pdf"))
        );
        // `..` is not normalised by the portal, and still reaches bob's file.
        let (status, body) = http_get(&addr, "/docs/alice/../bob/notes.txt", &alice).unwrap();
        assert_eq!((status, body), (200, document_content("bob", "notes.txt")));
        let (status, body) = http_get(
            &addr,
            "/docs/alice/%2e%2e/carol/disability-file.pdf",
            &alice,
        )
        .unwrap();
        assert_eq!(
            (status, body),
            (200, document_content("carol", "disability-file.pdf"))
        );

        let basic_bob = basic("bob", "any password");
        let (status, body) = http_get(
            &addr,
            "/docs/carol/notes.txt",
            &[("Authorization", &basic_bob)],
        )
        .unwrap();
        assert_eq!(
            (status, body),
            (200, document_content("carol", "notes.txt"))
        );

        assert_eq!(
            http_get(&addr, "/docs/alice/notes.txt", &[]).unwrap().0,
            401
        );
        assert_eq!(
            http_get(
                &addr,
                "/docs/alice/notes.txt",
                &[("Authorization", "Basic !!")]
            )
            .unwrap()
            .0,
            401
        );
        assert_eq!(
            http_get(&addr, "/docs/alice/missing.pdf", &alice)
                .unwrap()
                .0,
            404
        );
        assert_eq!(
            http_get(&addr, "/docs/alice", &alice).unwrap().0,
            404,
            "a directory is not a document"
        );
        assert_eq!(
            http_get(&addr, "/docs/alice/notes.txt%00", &alice)
                .unwrap()
                .0,
            400
        );
        assert_eq!(http_get(&addr, "/docs/alice/%zz", &alice).unwrap().0, 400);
        assert_eq!(http_get(&addr, "/elsewhere", &alice).unwrap().0, 404);

        assert_eq!(
            http_get(&addr, "/healthz", &[]).unwrap(),
            (200, b"ok".to_vec())
        );
        let (status, body) = http_get(&addr, "/public/welcome.txt", &[]).unwrap();
        assert_eq!(status, 200);
        assert!(body.starts_with(b"Welcome"));
    }
}

#[test]
fn anonymous_reads_when_allowed() {
    let (_root, server) = start("thread", &["--allow-anonymous"]);
    let (status, body) = http_get(&server.addr().to_string(), "/docs/bob/notes.txt", &[]).unwrap();
    assert_eq!((status, body), (200, document_content("bob", "notes.txt")));
}

#[test]
fn keep_alive_carries_several_users() {
    for (model, extra) in ALL_SETUPS {
        let (_root, server) = start(model, extra);
        let mut conn = KeepAlive::connect(&server.addr().to_string()).unwrap();
        for round in 0..2 {
            for (i, user) in USERS.iter().enumerate() {
                let owner = USERS[(i + 1) % USERS.len()];
                let name = DOCUMENTS[(i + round) % DOCUMENTS.len()];
                let (status, body) = conn
                    .get(&format!("/docs/{owner}/{name}"), &[("X-Remote-User", user)])
                    .unwrap();
                assert_eq!(
                    (status, body),
                    (200, document_content(owner, name)),
                    "{model} {extra:?} {user}"
                );
            }
        }
        // Errors do not close the connection either.
        assert_eq!(conn.get("/docs/alice/notes.txt", &[]).unwrap().0, 401);
        assert_eq!(conn.get("/nowhere", &[]).unwrap().0, 404);
        assert_eq!(conn.get("/healthz", &[]).unwrap(), (200, b"ok".to_vec()));
    }
}

#[test]
fn malformed_requests_are_rejected_and_closed() {
    let (_root, server) = start("thread", &[]);
    let addr = server.addr().to_string();
    let status_of = |response: Vec<u8>| {
        String::from_utf8_lossy(&response)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    };

    assert_eq!(
        status_of(send_raw(&addr, b"garbage\r\n\r\n").unwrap()),
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        status_of(send_raw(&addr, b"\x00\x01\x02\xff\r\n\r\n").unwrap()),
        "HTTP/1.1 400 Bad Request"
    );
    // The client gives up in the middle of a head.
    assert_eq!(
        status_of(send_raw(&addr, b"GET /healthz HTTP/1.1\r\nHost:").unwrap()),
        "HTTP/1.1 400 Bad Request"
    );
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    assert_eq!(
        status_of(send_raw(&addr, huge.as_bytes()).unwrap()),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    let chunked = b"POST /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(
        status_of(send_raw(&addr, chunked).unwrap()),
        "HTTP/1.1 501 Not Implemented"
    );
    let conflicting = b"POST /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    assert_eq!(
        status_of(send_raw(&addr, conflicting).unwrap()),
        "HTTP/1.1 400 Bad Request"
    );
    // A request that is only a nearly-complete head of 16 KiB is still fine.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nConnection: close\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(16 * 1024 - 100)
    );
    assert_eq!(
        status_of(send_raw(&addr, big.as_bytes()).unwrap()),
        "HTTP/1.1 200 OK"
    );
}

#[test]
fn bodies_are_skipped_and_pipelining_works() {
    let (_root, server) = start("pool", &[]);
    let requests = b"POST /docs/alice/notes.txt HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
GET /healthz HTTP/1.1\r\n\r\n\
GET /docs/alice/notes.txt HTTP/1.1\r\nX-Remote-User: bob\r\nConnection: close\r\n\r\n";
    let response = send_raw(&server.addr().to_string(), requests).unwrap();
    let text = String::from_utf8_lossy(&response);
    let statuses: Vec<_> = text
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &text[at..at + 12])
        .collect();
    assert_eq!(statuses, ["HTTP/1.1 404", "HTTP/1.1 200", "HTTP/1.1 200"]);
    assert!(response.ends_with(&document_content("alice", "notes.txt")));
}

#[test]
fn http_1_0_closes_unless_keep_alive() {
    let (_root, server) = start("thread", &[]);
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    // No half-close: reaching the end proves the server closed by itself.
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200 OK\r\n") && response.contains("Connection: close\r\n")
    );

    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for _ in 0..2 {
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let mut buf = [0; 1024];
        let n = stream.read(&mut buf).unwrap();
        let response = String::from_utf8_lossy(&buf[..n]);
        assert!(
            response.contains("Connection: keep-alive\r\n") && response.ends_with("ok"),
            "{response}"
        );
    }
}
