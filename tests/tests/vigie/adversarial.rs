//! A client cannot blind Vigie or make it name the wrong user (issue 19): what an attacker with
//! only their own account sends on raw sockets, against a real Debian nginx serving documents
//! itself (HTTP Basic checked by nginx, `sendfile`) and against the demo portal (a thread per
//! connection, `read` then `write`). Pipelined requests by different users and by anonymous
//! clients, heads cut byte by byte and at every header boundary, heads of 8, 16 and 60 KB and of
//! hundreds of fields, bodies (by length and chunked) that contain request lines,
//! `Connection: close` in the middle of a pipeline, HTTP/1.0 keep-alive.
//!
//! Each run asserts the exact alert set (verdict, user, owner, document; `--audit`, so allowed
//! reads too) against what the server itself says it served: nginx's access log (user, status,
//! file), the demo portal's expectations per request. Needs root (see `crate::harness::privileged`)
//! and nginx (`cargo xtask setup` installs it).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::harness::{nginx::Nginx, *};
use base64::Engine as _;

type Verdict = (String, String, String, String);

/// `Authorization: Basic` line for a user of [`crate::harness::nginx::PASSWORDS`].
fn auth(user: &str) -> String {
    let pw = crate::harness::nginx::PASSWORDS
        .iter()
        .find(|(u, _)| *u == user)
        .map(|(_, p)| *p)
        .expect("a known user");
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
    format!("Authorization: Basic {token}\r\n")
}

/// A request head: `user` `None` sends no credentials.
fn get(target: &str, user: Option<&str>, extra: &str, version: &str) -> String {
    let who = user.map(auth).unwrap_or_default();
    format!("GET {target} {version}\r\nHost: portal\r\n{extra}{who}\r\n")
}

/// Sends `pieces` on one connection, each in its own write after a short pause (so that the
/// server reads them one by one, as from a slow or hostile client), half-closes, and reads
/// until the server closes.
fn send_pieces<P: AsRef<[u8]>>(addr: &str, pieces: &[P]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connecting");
    s.set_nodelay(true).expect("TCP_NODELAY");
    s.set_read_timeout(Some(scaled(Duration::from_secs(20))))
        .expect("read timeout");
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            // Not a wait for a result: the gap that makes the server read the pieces apart.
            std::thread::sleep(Duration::from_millis(2));
        }
        s.write_all(piece.as_ref()).expect("writing");
    }
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    back
}

/// The stream cut after every line (each header field on its own).
fn at_every_line(stream: &str) -> Vec<String> {
    stream.split_inclusive('\n').map(str::to_owned).collect()
}

/// Status codes of the responses in `back`, in order.
fn statuses(back: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(back);
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// The owner of `file` under `root` (its first component).
fn owner_of(root: &Path, file: &str) -> Option<String> {
    let rel = Path::new(file).strip_prefix(root).ok()?;
    Some(rel.components().next()?.as_os_str().to_str()?.to_owned())
}

/// What Vigie must report for what nginx served: one access per request answered 200 with a
/// file under `root`, by its user (`-`: none) and the file's owner.
fn served(nginx: &Nginx, root: &Path) -> Vec<Verdict> {
    let mut out: Vec<Verdict> = nginx
        .access_log()
        .lines()
        .filter_map(|line| {
            let mut f = line.splitn(4, ' ');
            let (user, status, _bytes, file) = (f.next()?, f.next()?, f.next()?, f.next()?);
            if status != "200" {
                return None;
            }
            let owner = owner_of(root, file)?;
            let verdict = match user {
                "-" => "unauthenticated",
                u if u == owner => "allowed",
                _ => "violation",
            };
            Some(t(verdict, user, &owner, file))
        })
        .collect();
    out.sort();
    out
}

/// A document tree nginx's workers (`nobody`) can read: `root/<owner>/<owner>.txt`.
fn documents(dir: &TempDir) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let root = dir.path().join("docs");
    for (owner, size) in [("alice", 3000), ("bob", 5000), ("carol", 7000)] {
        let d = root.join(owner);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(
            d.join(format!("{owner}.txt")),
            owner.repeat(size / owner.len()),
        )
        .expect("writing a document");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    for p in [dir.path(), root.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    root
}

fn vigie_config(pids: &[u32], root: &Path, sources: &str) -> String {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let r = root.display();
    format!(
        "[targets]\npids = [{}]\n[documents]\nroots = [\"{r}\"]\nowner_templates = [\"{r}/{{owner}}/**\"]\n\
         [identity]\nsources = [{sources}]\n",
        pids.join(", ")
    )
}

/// Every attack of the issue against nginx itself, in one run: the alerts must be exactly what
/// nginx served, user by user.
#[test]
fn nginx_pipelining_fragments_long_heads_and_bodies_name_the_right_user() {
    let Some(p) =
        privileged("nginx_pipelining_fragments_long_heads_and_bodies_name_the_right_user")
    else {
        return;
    };
    let dir = TempDir::new("adversarial-docs");
    let root = documents(&dir);
    let Some(nginx) = Nginx::start_static("adversarial", &root, true) else {
        return;
    };
    let mut pids = vec![nginx.pid()];
    pids.extend(nginx.workers());
    let vigie = Vigie::start(
        &p,
        "adversarial-nginx",
        &vigie_config(&pids, &root, "\"basic\""),
        &["--audit"],
    );
    let addr = nginx.addr.clone();
    let doc = |owner: &str| format!("/docs/{owner}/{owner}.txt");
    let open = |owner: &str| format!("/open/{owner}/{owner}.txt");
    let h11 = "HTTP/1.1";
    // Each case: the bytes, how they are cut, and the statuses nginx must answer.
    let mut cases: Vec<(&str, Vec<String>, Vec<u16>)> = Vec::new();
    // Pipelining by different users, in one write: alice reads bob's, carol her own, alice
    // her own, bob alice's.
    let pipeline = get(&doc("bob"), Some("alice"), "", h11)
        + &get(&doc("carol"), Some("carol"), "", h11)
        + &get(&doc("alice"), Some("alice"), "", h11)
        + &get(&doc("alice"), Some("bob"), "", h11);
    cases.push(("pipelined users", vec![pipeline], vec![200; 4]));
    // A user's cross read followed by anonymous ones.
    let anonymous = get(&doc("bob"), Some("alice"), "", h11)
        + &get(&open("carol"), None, "", h11)
        + &get(&open("alice"), None, "", h11);
    cases.push(("pipelined anonymous", vec![anonymous], vec![200; 3]));
    // Fragmented heads: byte by byte, at every header boundary, in 7-byte pieces.
    let one = get(
        &doc("carol"),
        Some("bob"),
        "Accept: */*\r\nX-Trace: 1\r\n",
        h11,
    );
    let bytes: Vec<String> = one.chars().map(String::from).collect();
    cases.push(("byte by byte", bytes, vec![200]));
    let two = one.clone() + &get(&doc("bob"), Some("bob"), "Accept: */*\r\n", h11);
    cases.push(("every header boundary", at_every_line(&two), vec![200; 2]));
    let sevens: Vec<String> = one
        .as_bytes()
        .chunks(7)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    cases.push(("7-byte pieces", sevens, vec![200]));
    // Long heads: the credentials after 8, 16 and 60 KB of other fields (4 KB a line).
    for kb in [8, 16, 60] {
        let pad: String = (0..kb / 4)
            .map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(4000)))
            .collect();
        let head = get(&doc("alice"), Some("carol"), &pad, h11);
        cases.push(("long head", vec![head], vec![200]));
    }
    // Hundreds of fields.
    let many: String = (0..300).map(|i| format!("X-F{i}: v{i}\r\n")).collect();
    cases.push((
        "300 fields",
        vec![get(&doc("bob"), Some("alice"), &many, h11)],
        vec![200],
    ));
    // Bodies that contain a request (bob's, for carol's document), by length and chunked,
    // followed by carol reading her own: a body taken for a request would name bob.
    let fake = get(&doc("carol"), Some("bob"), "", h11);
    let by_length = format!(
        "POST {} {h11}\r\nHost: portal\r\n{}Content-Length: {}\r\n\r\n{fake}",
        doc("alice"),
        auth("alice"),
        fake.len()
    ) + &get(&doc("carol"), Some("carol"), "", h11);
    cases.push(("body by length", vec![by_length], vec![405, 200]));
    let (a, b) = fake.split_at(20);
    let chunked = format!(
        "POST {} {h11}\r\nHost: portal\r\n{}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        doc("alice"),
        auth("alice"),
        a.len(),
        b.len()
    ) + &get(&doc("carol"), Some("carol"), "", h11);
    cases.push(("chunked body", at_every_line(&chunked), vec![405, 200]));
    // `Connection: close` in the middle of a pipeline: the third request is never served.
    let close = get(&doc("alice"), Some("alice"), "", h11)
        + &get(&doc("bob"), Some("carol"), "Connection: close\r\n", h11)
        + &get(&doc("bob"), Some("bob"), "", h11);
    cases.push(("close mid-pipeline", vec![close], vec![200, 200]));
    // HTTP/1.0 keep-alive: two requests of different users on one connection.
    let ka = "Connection: keep-alive\r\n";
    let http10 = get(&doc("bob"), Some("alice"), ka, "HTTP/1.0")
        + &get(&doc("carol"), Some("carol"), ka, "HTTP/1.0")
        + &get(&doc("carol"), Some("alice"), "", "HTTP/1.0");
    cases.push(("HTTP/1.0 keep-alive", vec![http10], vec![200; 3]));

    for (name, pieces, want) in &cases {
        let back = send_pieces(&addr, pieces);
        assert_eq!(&statuses(&back), want, "{name}: nginx answered otherwise");
    }
    // nginx logs a request after its last byte went out: wait for every line.
    let answered: usize = cases.iter().map(|(_, _, want)| want.len()).sum();
    poll_until(
        "nginx's access log",
        Duration::from_secs(10),
        || (nginx.access_log().lines().count() >= answered).then_some(()),
        || nginx.access_log(),
    );
    let expected = served(&nginx, &root);
    // What nginx served, as the cases above make it (a check of the test itself).
    let violations = expected.iter().filter(|v| v.0 == "violation").count();
    assert_eq!(
        (expected.len(), violations),
        (22, 13),
        "nginx served: {expected:#?}"
    );
    vigie.wait_alerts("every access nginx served", |a| {
        a.iter().filter(|x| x["type"] == "access").count() >= expected.len()
    });
    let (alerts, log) = vigie.stop();
    assert_eq!(verdicts(&alerts), expected, "{log}");
}

/// The demo portal (a thread per connection, documents read then written, responses with a
/// `Content-Length`): pipelined users and anonymous clients, a head cut byte by byte, and a
/// body holding a request.
#[test]
fn demo_portal_pipelines_and_fragments_name_the_right_user() {
    let Some(p) = privileged("demo_portal_pipelines_and_fragments_name_the_right_user") else {
        return;
    };
    let (portal, vigie) = start_watched(
        &p,
        "adversarial-portal",
        &["--model", "thread", "--allow-anonymous"],
        &["--audit"],
    );
    let addr = portal.addr();
    let as_user = |target: &str, user: Option<&str>| {
        let who = user.map_or(String::new(), |u| format!("X-Remote-User: {u}\r\n"));
        format!("GET {target} HTTP/1.1\r\nHost: portal\r\n{who}\r\n")
    };
    let notes = |owner: &str| format!("/docs/{owner}/notes.txt");
    let mut expected = Vec::new();
    // alice reads bob's, carol her own, an anonymous client alice's, bob alice's: one write.
    let pipeline = as_user(&notes("bob"), Some("alice"))
        + &as_user(&notes("carol"), Some("carol"))
        + &as_user(&notes("alice"), None)
        + &as_user(&notes("alice"), Some("bob"));
    assert_eq!(statuses(&send_pieces(&addr, &[pipeline])), [200; 4]);
    expected.extend([
        t("violation", "alice", "bob", &portal.doc("bob", "notes.txt")),
        t(
            "allowed",
            "carol",
            "carol",
            &portal.doc("carol", "notes.txt"),
        ),
        t(
            "unauthenticated",
            "-",
            "alice",
            &portal.doc("alice", "notes.txt"),
        ),
        t(
            "violation",
            "bob",
            "alice",
            &portal.doc("alice", "notes.txt"),
        ),
    ]);
    // carol's cross read, one byte at a time.
    let one = as_user(&notes("alice"), Some("carol"));
    let bytes: Vec<String> = one.chars().map(String::from).collect();
    assert_eq!(statuses(&send_pieces(&addr, &bytes)), [200]);
    expected.push(t(
        "violation",
        "carol",
        "alice",
        &portal.doc("alice", "notes.txt"),
    ));
    // A body holding bob's request for carol's notes, then carol's own read.
    let fake = as_user(&notes("carol"), Some("bob"));
    let post = format!(
        "POST /echo HTTP/1.1\r\nHost: portal\r\nX-Remote-User: alice\r\nContent-Length: {}\r\n\r\n{fake}",
        fake.len()
    ) + &as_user(&notes("carol"), Some("carol"));
    let back = send_pieces(&addr, &at_every_line(&post));
    assert_eq!(
        statuses(&back).last(),
        Some(&200),
        "{}",
        String::from_utf8_lossy(&back)
    );
    expected.push(t(
        "allowed",
        "carol",
        "carol",
        &portal.doc("carol", "notes.txt"),
    ));
    expected.sort();
    vigie.wait_alerts("every access the portal served", |a| {
        a.iter().filter(|x| x["type"] == "access").count() >= expected.len()
    });
    let (alerts, log) = vigie.stop();
    assert_eq!(verdicts(&alerts), expected, "{log}");
}
