//! End-to-end over FastCGI: a real nginx in front of the FastCGI demo application (unix socket
//! or TCP, kept connections), a real `vigie` watching the application only, exact alert sets.
//! Needs root (see `crate::harness::privileged`) and nginx (`cargo xtask setup` installs it).

use std::{collections::BTreeMap, ffi::OsStr, path::PathBuf, time::Duration};

use crate::harness::{nginx::Nginx, *};
use serde_json::Value;

const HR: &str = "health-record.pdf";
const NOTES: &str = "notes.txt";

/// nginx in front of the FastCGI demo application, on a generated document tree.
struct Stack {
    nginx: Nginx,
    app: PortalGuard,
    users: PathBuf,
    dir: TempDir,
}

impl Stack {
    /// `None` (after a loud SKIPPED line) without nginx.
    fn start(name: &str, tcp: bool) -> Option<Stack> {
        let dir = TempDir::new(&format!("fcgi-{name}"));
        let root = dir.path().join("portal");
        let sessions = dir.path().join("sessions");
        let listen = if tcp {
            "127.0.0.1:0".to_owned()
        } else {
            format!("unix:{}", dir.path().join("app.sock").display())
        };
        let app = spawn_portal(
            FCGI_APP,
            [
                "--root",
                root.to_str().expect("utf-8 temp dir"),
                "--generate",
                "--listen",
                &listen,
                "--session-dir",
                sessions.to_str().expect("utf-8 temp dir"),
            ],
        )
        .expect("starting the FastCGI application");
        let nginx = Nginx::start(name, app.addr())?;
        Some(Stack {
            nginx,
            app,
            users: root.join("users"),
            dir,
        })
    }

    fn addr(&self) -> &str {
        &self.nginx.addr
    }

    fn doc(&self, owner: &str, name: &str) -> String {
        self.users.join(owner).join(name).display().to_string()
    }

    /// Vigie's config: the application process only (not nginx), these identity sources.
    fn config(&self, sources: &str) -> String {
        let u = self.users.display();
        format!(
            "[targets]\npids = [{}]\n[documents]\nroots = [\"{u}\"]\nowner_templates = [\"{u}/{{owner}}/**\"]\n[policy]\nprivileged_users = [\"agent\"]\n[identity]\nsources = [{sources}]\n",
            self.app.pid()
        )
    }

    /// The request lines once the application has logged at least `n`: it logs a request just
    /// after answering it, so its last lines may trail the client's last response.
    fn served_at_least(&self, n: usize) -> Vec<(String, String, String, u16)> {
        poll_until(
            &format!("{n} request lines from the application"),
            Duration::from_secs(5),
            || {
                let served = self.served();
                (served.len() >= n).then_some(served)
            },
            || format!("{} logged", self.served().len()),
        )
    }

    /// Request lines the application logged: (tid, user, target, status).
    fn served(&self) -> Vec<(String, String, String, u16)> {
        self.app
            .stderr_lines()
            .iter()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let request_line = f.len() == 7 && f[5].parse::<u16>().is_ok();
                if !request_line {
                    eprintln!("application: {l}");
                }
                request_line.then(|| {
                    (
                        f[1].to_owned(),
                        f[2].to_owned(),
                        f[4].to_owned(),
                        f[5].parse().unwrap_or(0),
                    )
                })
            })
            .collect()
    }
}

/// `GET target` through nginx with Basic credentials of a user nginx knows.
fn get_secure(addr: &str, user: &str, target: &str) -> u16 {
    let password = nginx::PASSWORDS
        .iter()
        .find(|(u, _)| *u == user)
        .map_or("wrong", |(_, p)| p);
    http_get(addr, target, &[("Authorization", &basic(user, password))])
        .expect("GET through nginx")
        .0
}

#[test]
fn fastcgi_remote_user_own_cross_and_privileged_reads() {
    let Some(p) = privileged("fastcgi_remote_user_own_cross_and_privileged_reads") else {
        return;
    };
    let Some(stack) = Stack::start("remote-user", false) else {
        return;
    };
    let vigie = Vigie::start(
        &p,
        "fcgi-remote-user",
        &stack.config("\"remote_user\""),
        &[],
    );
    let addr = stack.addr();
    // nginx checks the password (auth_basic) and passes REMOTE_USER.
    assert_eq!(
        get_secure(addr, "alice", "/secure/docs/alice/notes.txt"),
        200
    );
    assert_eq!(
        get_secure(addr, "alice", "/secure/docs/bob/health-record.pdf"),
        200
    );
    assert_eq!(
        get_secure(addr, "agent", "/secure/docs/carol/health-record.pdf"),
        200
    );
    // A wrong password never reaches the application.
    assert_eq!(
        http_get(
            addr,
            "/secure/docs/carol/notes.txt",
            &[("Authorization", &basic("carol", "guess"))]
        )
        .unwrap()
        .0,
        401
    );
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "alice", "bob", &stack.doc("bob", HR))],
        "{log}"
    );
    let a = &alerts[0];
    assert_eq!(a["identity_source"], "remote_user");
    // nginx reached the application over a unix socket; the client is its REMOTE_ADDR.
    assert_eq!(a["request"]["peer"]["family"], "unix", "{a:#}");
    assert_eq!(a["client"]["source"], "fastcgi");
    assert_eq!(a["client"]["ip"], "127.0.0.1");
    assert!(a["client"]["port"].as_u64().is_some_and(|p| p > 0));
    assert_eq!(a["pid"], stack.app.pid());
    assert_eq!(a["comm"], "fcgi-conn");
    assert_eq!(a["request"]["method"], "GET");
    assert_eq!(a["request"]["target"], "/secure/docs/bob/health-record.pdf");
    // The application sent no `Status:` header: a CGI 200.
    assert_eq!(a["request"]["status"], 200);
    assert_eq!(a["evidence"], serde_json::json!(["thread"]));
    assert_eq!(
        a["bytes"].as_u64(),
        Some(std::fs::metadata(stack.doc("bob", HR)).unwrap().len()),
        "the mapping's length"
    );
    assert!(
        log.contains("accesses {\"allowed\": 2, \"violation\": 1}"),
        "{log}"
    );
    assert!(
        log.contains("\"file_map\": 3"),
        "three mapped documents: {log}"
    );
}

#[test]
fn fastcgi_basic_in_http_authorization_is_redacted_and_replays_identically() {
    let Some(p) =
        privileged("fastcgi_basic_in_http_authorization_is_redacted_and_replays_identically")
    else {
        return;
    };
    let Some(stack) = Stack::start("basic", false) else {
        return;
    };
    let traces = stack.dir.path().join("traces");
    let vigie = Vigie::start(
        &p,
        "fcgi-basic",
        &stack.config("\"basic\""),
        &["--record", traces.to_str().unwrap()],
    );
    let addr = stack.addr();
    let password = "carols-fastcgi-password";
    let carol = basic("carol", password);
    let cookie = "session=0123456789abcdef0123; theme=dark";
    // Not under /secure/: nginx only passes the header on, as HTTP_AUTHORIZATION.
    let (status, _) = http_get(
        addr,
        "/docs/bob/notes.txt",
        &[("Authorization", &carol), ("Cookie", cookie)],
    )
    .unwrap();
    assert_eq!(status, 200);
    let own = basic("bob", "bobs-password");
    assert_eq!(
        http_get(addr, "/docs/bob/notes.txt", &[("Authorization", &own)])
            .unwrap()
            .0,
        200
    );
    let (live_raw, log) = vigie.stop_raw();
    let alerts = parse_alerts(&live_raw);
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "carol", "bob", &stack.doc("bob", NOTES))],
        "{log}"
    );
    assert_eq!(alerts[0]["identity_source"], "basic");

    // No secret in the trace, whatever the payload encoding (FastCGI is binary: base64).
    let files = trace_files(&traces);
    let captured = trace_payloads(&files);
    assert!(
        captured
            .iter()
            .any(|d| bytes_contain(d, b"HTTP_AUTHORIZATION")),
        "the params were captured"
    );
    for secret in [
        password.as_bytes(),
        carol.trim_start_matches("Basic ").as_bytes(),
        b"0123456789abcdef0123",
        b"theme=dark",
        b"bobs-password",
    ] {
        assert!(
            !captured.iter().any(|d| bytes_contain(d, secret)),
            "{:?} in the trace",
            String::from_utf8_lossy(secret)
        );
    }
    assert!(!format!("{alerts:?}{log}").contains(password));

    // Replay decodes the same FastCGI from the trace: the same alerts, byte for byte.
    let replayed = stack.dir.path().join("replayed.jsonl");
    let mut args: Vec<&OsStr> = vec![OsStr::new("replay")];
    args.extend(files.iter().map(|f| f.as_os_str()));
    args.extend([OsStr::new("--alerts"), replayed.as_os_str()]);
    let (ok, _, stderr) = vigie_cmd(&p, &args);
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read_to_string(&replayed).unwrap(), live_raw);
}

#[test]
fn fastcgi_status_passes_through_and_kept_connections_serve_users_in_turn() {
    let Some(p) =
        privileged("fastcgi_status_passes_through_and_kept_connections_serve_users_in_turn")
    else {
        return;
    };
    let Some(stack) = Stack::start("status", false) else {
        return;
    };
    let vigie = Vigie::start(&p, "fcgi-status", &stack.config("\"remote_user\""), &[]);
    let addr = stack.addr();
    // One at a time: nginx reuses its kept upstream connections for every user.
    for (user, target, status) in [
        ("carol", "/secure/docs/carol/notes.txt", 200),
        // Mapped (read), then refused: the read happened, the 403 is on the alert.
        ("carol", "/secure/docs/bob/notes.txt?deny", 403),
        ("bob", "/secure/docs/bob/notes.txt", 200),
        ("alice", "/secure/docs/carol/notes.txt", 200),
        ("alice", "/secure/docs/nobody/none.txt", 404),
    ] {
        assert_eq!(get_secure(addr, user, target), status, "{user} {target}");
    }
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [
            t("violation", "alice", "carol", &stack.doc("carol", NOTES)),
            t("violation", "carol", "bob", &stack.doc("bob", NOTES)),
        ],
        "{log}"
    );
    let status_of = |user: &str| {
        alerts
            .iter()
            .find(|a| a["user"] == user)
            .map(|a| a["request"]["status"].clone())
    };
    assert_eq!(status_of("carol"), Some(serde_json::json!(403)));
    assert_eq!(status_of("alice"), Some(serde_json::json!(200)));
    // Several users were served on one kept connection (one application thread each).
    let served = stack.served();
    let mut users_by_thread: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tid, user, _, _) in &served {
        users_by_thread.entry(tid).or_default().push(user);
    }
    assert!(
        users_by_thread.values().any(|u| {
            let mut u = u.clone();
            u.dedup();
            u.len() > 1
        }),
        "no connection was reused across users: {served:?}"
    );
}

#[test]
fn fastcgi_over_tcp() {
    let Some(p) = privileged("fastcgi_over_tcp") else {
        return;
    };
    let Some(stack) = Stack::start("tcp", true) else {
        return;
    };
    let vigie = Vigie::start(&p, "fcgi-tcp", &stack.config("\"remote_user\""), &[]);
    assert_eq!(
        get_secure(stack.addr(), "bob", "/secure/docs/alice/health-record.pdf"),
        200
    );
    assert_eq!(
        get_secure(stack.addr(), "bob", "/secure/docs/bob/health-record.pdf"),
        200
    );
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "bob", "alice", &stack.doc("alice", HR))],
        "{log}"
    );
}

/// Cookie sessions learnt from the login exchange (`[identity.session]`), over FastCGI: the
/// login form comes in STDIN records, its `Set-Cookie` goes back in STDOUT. The form's password
/// and the documents never reach the trace.
#[test]
fn fastcgi_cookie_session_learnt_from_the_login_response() {
    let Some(p) = privileged("fastcgi_cookie_session_learnt_from_the_login_response") else {
        return;
    };
    let Some(stack) = Stack::start("session", false) else {
        return;
    };
    let traces = stack.dir.path().join("traces");
    // A key of the operator's: the analyst computes handles with it (created by Vigie).
    let key_file = stack.dir.path().join("session.key");
    let config = format!(
        "{}[identity.session]\ncookie = \"session\"\nlogin_path = \"/login\"\nuser_field = \"user\"\nlogout_path = \"/logout\"\n[incidents]\nsession_key_file = \"{}\"\n",
        stack.config("\"session\""),
        key_file.display()
    );
    let vigie = Vigie::start(
        &p,
        "fcgi-session",
        &config,
        &["--record", traces.to_str().unwrap()],
    );
    let addr = stack.addr();
    let alice = login(addr, "alice");
    let carol = login(addr, "carol");
    for (cookie, target) in [
        (&alice, "/docs/alice/notes.txt"),
        (&alice, "/docs/bob/health-record.pdf"),
        (&carol, "/docs/carol/notes.txt"),
    ] {
        assert_eq!(
            http_get(addr, target, &[("Cookie", cookie)]).unwrap().0,
            200,
            "{target}"
        );
    }
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "alice", "bob", &stack.doc("bob", HR))],
        "{log}"
    );
    assert_eq!(alerts[0]["identity_source"], "session");
    // The session handle is the one the analyst gets from the portal's session id.
    let value = alice.split_once('=').map_or(alice.as_str(), |(_, v)| v);
    let mut analyst = std::process::Command::new(&p.vigie)
        .args(["session-handle", "--key-file"])
        .arg(&key_file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut analyst.stdin.take().unwrap(),
        format!("{value}\n").as_bytes(),
    )
    .unwrap();
    let out = analyst.wait_with_output().unwrap();
    assert_eq!(
        alerts[0]["session"].as_str().map(|s| format!("{s}\n")),
        Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        "{log}"
    );
    let captured = trace_payloads(&trace_files(&traces));
    assert!(
        captured
            .iter()
            .any(|d| bytes_contain(d, b"user=alice&password=")),
        "the login form was captured"
    );
    let alice_id = alice.trim_start_matches("session=");
    for secret in [
        &b"alice-pw"[..],
        b"carol-pw",
        alice_id.as_bytes(),
        b"confidential to bob",
    ] {
        assert!(
            !captured.iter().any(|d| bytes_contain(d, secret)),
            "{:?} in the trace",
            String::from_utf8_lossy(secret)
        );
    }
}

/// A session created before Vigie started (here: a session file, as PHP's handler writes it)
/// is found in the portal's store (`[identity.session.store]`), read-only, when a FastCGI
/// request carries its cookie in `HTTP_COOKIE`.
#[test]
fn fastcgi_session_from_before_vigie_is_found_in_the_portal_store() {
    let Some(p) = privileged("fastcgi_session_from_before_vigie_is_found_in_the_portal_store")
    else {
        return;
    };
    let Some(stack) = Stack::start("store", false) else {
        return;
    };
    let sessions = stack.dir.path().join("sessions");
    let id = "c0ffee00c0ffee00c0ffee00c0ffee00";
    std::fs::write(sessions.join(format!("sess_{id}")), "carol\n").unwrap();
    let config = format!(
        "{}[identity.session]\ncookie = \"session\"\nlogin_path = \"/login\"\n[identity.session.store]\nfiles = \"{}/sess_{{id}}\"\nformat = \"plain\"\n",
        stack.config("\"session\""),
        sessions.display()
    );
    let vigie = Vigie::start(&p, "fcgi-store", &config, &[]);
    let cookie = format!("theme=dark; session={id}");
    assert_eq!(
        http_get(
            stack.addr(),
            "/docs/alice/notes.txt",
            &[("Cookie", &cookie)]
        )
        .unwrap()
        .0,
        200
    );
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [t("violation", "carol", "alice", &stack.doc("alice", NOTES))],
        "{log}"
    );
    assert_eq!(alerts[0]["identity_source"], "session");
}

/// POSTs the login form through nginx; returns the `session=...` cookie it set.
fn login(addr: &str, user: &str) -> String {
    let body = format!("user={user}&password={user}-pw");
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // Not `send_raw`: nginx takes a half-closed client for one that went away (499).
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut conn, request.as_bytes()).unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut conn, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 303"), "{response}");
    response
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

#[test]
fn hostile_fastcgi_input_has_defined_outcomes_and_the_daemon_keeps_running() {
    let Some(p) =
        privileged("hostile_fastcgi_input_has_defined_outcomes_and_the_daemon_keeps_running")
    else {
        return;
    };
    let Some(stack) = Stack::start("hostile", false) else {
        return;
    };
    let mut vigie = Vigie::start(&p, "fcgi-hostile", &stack.config("\"remote_user\""), &[]);
    let sock = stack.app.addr().trim_start_matches("unix:").to_owned();
    let params = |user: &str, doc: &str| {
        [
            ("REQUEST_METHOD", "GET".to_owned()),
            ("REQUEST_URI", format!("/docs/{doc}")),
            ("REMOTE_USER", user.to_owned()),
        ]
    };
    let pairs = |ps: &[(&str, String)]| -> Vec<u8> {
        ps.iter()
            .flat_map(|(n, v)| pair(n.as_bytes(), v.as_bytes()))
            .collect()
    };
    // 1. Padding abuse (255 bytes after every record) and params cut into 1-byte records:
    //    decoded as any server decodes it. carol reads bob's notes: one violation.
    let mut padded = record(1, 1, &[0, 1, 1, 0, 0, 0, 0, 0], 255);
    for b in pairs(&params("carol", "bob/notes.txt")) {
        padded.extend(record(4, 1, &[b], 255));
    }
    padded.extend(record(4, 1, &[], 255));
    padded.extend(record(5, 1, &[], 255));
    exchange(&sock, &padded);
    // 2. A params pair claiming more bytes than its record: the application finds no user and
    //    answers 401 without reading anything; Vigie sees truncated params, no identity.
    let mut bogus = record(1, 2, &[0, 1, 1, 0, 0, 0, 0, 0], 0);
    let mut evil = pairs(&params("agent", "alice/notes.txt")[..2]);
    evil.extend([11, 0x80 | 0x7f, 0xff, 0xff, 0xff]);
    evil.extend(b"REMOTE_USERagent");
    bogus.extend(record(4, 2, &evil, 0));
    bogus.extend(record(4, 2, &[], 0));
    bogus.extend(record(5, 2, &[], 0));
    exchange(&sock, &bogus);
    // 3. Truncated records and garbage, then the peer goes away.
    let mut cut = record(1, 3, &[0, 1, 1, 0, 0, 0, 0, 0], 0);
    cut.extend(&record(4, 3, &pairs(&params("agent", "bob/notes.txt")), 0)[..20]);
    exchange(&sock, &cut);
    exchange(&sock, &[1, 4, 0, 1, 0xff, 0xff, 0xff]);
    exchange(&sock, &[0xff; 300]);
    exchange(
        &sock,
        b"GET /docs/bob/notes.txt HTTP/1.1\r\nX-Remote-User: agent\r\n\r\n",
    );
    assert!(vigie.alive(), "vigie died:\n{}", vigie.log());
    // 4. Normal traffic is still judged right.
    assert_eq!(
        get_secure(stack.addr(), "alice", "/secure/docs/bob/health-record.pdf"),
        200
    );
    let (alerts, log) = vigie.stop();
    assert_eq!(
        verdicts(&alerts),
        [
            t("violation", "alice", "bob", &stack.doc("bob", HR)),
            t("violation", "carol", "bob", &stack.doc("bob", NOTES)),
        ],
        "{log}"
    );
}

/// Sends `bytes` on a new connection to the application's socket, half-closes, and reads what
/// comes back until the application closes or goes quiet.
fn exchange(sock: &str, bytes: &[u8]) -> Vec<u8> {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connecting to the app");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn record(kind: u8, id: u16, content: &[u8], padding: u8) -> Vec<u8> {
    let [i0, i1] = id.to_be_bytes();
    let [l0, l1] = u16::try_from(content.len()).unwrap().to_be_bytes();
    let mut out = vec![1, kind, i0, i1, l0, l1, padding, 0];
    out.extend_from_slice(content);
    out.extend(std::iter::repeat_n(0, usize::from(padding)));
    out
}

fn pair(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![name.len() as u8, value.len() as u8];
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    out
}

/// A concurrent run: four users (one privileged) each make many requests through nginx, own and
/// cross-user, with the expected violations known from the application's own log. Prints
/// precision and recall, and requires both to be 1.
#[test]
fn concurrent_fastcgi_run_precision_and_recall() {
    let Some(p) = privileged("concurrent_fastcgi_run_precision_and_recall") else {
        return;
    };
    let Some(stack) = Stack::start("concurrent", false) else {
        return;
    };
    let vigie = Vigie::start(&p, "fcgi-concurrent", &stack.config("\"remote_user\""), &[]);
    const PER_USER: usize = 100;
    let users = ["alice", "bob", "carol", "agent"];
    let owners = ["alice", "bob", "carol"];
    let docs = ["health-record.pdf", "disability-file.pdf", "notes.txt"];
    let addr = stack.addr().to_owned();
    std::thread::scope(|s| {
        for (i, user) in users.iter().enumerate() {
            let addr = addr.clone();
            s.spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
                for _ in 0..PER_USER {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let owner = owners[(x % 3) as usize];
                    let doc = docs[((x >> 8) % 3) as usize];
                    let deny = if (x >> 16).is_multiple_of(8) {
                        "?deny"
                    } else {
                        ""
                    };
                    let target = format!("/secure/docs/{owner}/{doc}{deny}");
                    let status = get_secure(&addr, user, &target);
                    assert_eq!(status, if deny.is_empty() { 200 } else { 403 });
                }
            });
        }
    });
    // Expected: every request the application served (it logs each) whose user is neither the
    // owner nor privileged. Statuses 200 and 403 both read the document.
    let served = stack.served_at_least(users.len() * PER_USER);
    assert_eq!(served.len(), users.len() * PER_USER, "{served:?}");
    let mut expected: BTreeMap<Access, usize> = BTreeMap::new();
    for (_, user, target, _) in &served {
        let path = target.trim_start_matches("/secure/docs/");
        let path = path.split('?').next().unwrap();
        let (owner, doc) = path.split_once('/').unwrap();
        if user != owner && user != "agent" {
            let access = (
                "violation".into(),
                user.clone(),
                owner.into(),
                stack.doc(owner, doc),
            );
            *expected.entry(access).or_insert(0) += 1;
        }
    }
    let (alerts, log) = vigie.stop();
    assert!(
        !alerts.iter().any(|a| a["type"] == "coverage_gap"),
        "events lost: {log}"
    );
    let score = Score::of(&expected, &alerts);
    eprintln!(
        "FASTCGI CONCURRENT RUN: {} requests, {} expected violations; {score}",
        served.len(),
        score.expected,
    );
    let others: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["type"] == "access" && a["verdict"] != "violation")
        .collect();
    assert!(others.is_empty(), "unexpected alerts: {others:#?}");
    assert_eq!((score.wrong, score.missed), (0, 0), "{log}");
}
