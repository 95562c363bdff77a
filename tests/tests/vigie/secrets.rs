//! Secrets never reach a trace: each demo model (the Rust demo portal's five server models, the
//! Node.js Express portal in its three ways of serving) is driven with session ids, tokens and
//! passwords in every place a client or a portal puts them (Basic credentials, a bearer token,
//! a session cookie, query parameters, a login form, and, on the Node.js portal, an internal
//! HTTP call and cluster IPC messages carrying the session id), recorded with `--record`, and
//! the trace is searched for every one of them. Needs root (see `crate::harness::privileged`).

use std::path::Path;

use crate::harness::*;
use base64::Engine as _;
use vigie_tests::client::KeepAlive;

/// The secrets of one run: unique per model, so a hit cannot come from elsewhere.
struct Secrets {
    password: String,
    token: String,
    cookie: String,
    sid: String,
    query_token: String,
    query_password: String,
    form_password: String,
}

impl Secrets {
    fn new(model: &str) -> Self {
        let tag = format!("{}{}", model.replace('-', ""), std::process::id());
        Self {
            password: format!("pw{tag}Basic"),
            token: format!("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.sig{tag}"),
            cookie: format!("cookie{tag}"),
            sid: format!("sid{tag}"),
            query_token: format!("qtok{tag}"),
            query_password: format!("qpw{tag}"),
            form_password: format!("form{tag}"),
        }
    }

    /// Every secret as it travels, with what it is.
    fn all(&self) -> Vec<(&'static str, String)> {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("alice:{}", self.password));
        vec![
            ("basic password", self.password.clone()),
            ("basic credentials", basic),
            ("bearer token", self.token.clone()),
            (
                "bearer token signature",
                self.token.rsplit('.').next().unwrap().into(),
            ),
            ("session cookie", self.cookie.clone()),
            ("sid query parameter", self.sid.clone()),
            ("token query parameter", self.query_token.clone()),
            ("password query parameter", self.query_password.clone()),
            ("login form password", self.form_password.clone()),
        ]
    }
}

/// Sends requests carrying every secret to the portal at `addr`.
fn drive(addr: &str, s: &Secrets) {
    let mut c = KeepAlive::connect(addr).expect("connecting");
    let doc = "/docs/alice/notes.txt";
    let basic = basic("alice", &s.password);
    let bearer = format!("Bearer {}", s.token);
    let cookie = format!("session={}", s.cookie);
    let with_query = format!(
        "{doc}?sid={}&token={}&password={}",
        s.sid, s.query_token, s.query_password
    );
    for (target, headers) in [
        (doc, vec![("Authorization", basic.as_str())]),
        (doc, vec![("Authorization", bearer.as_str())]),
        (doc, vec![("X-Remote-User", "alice"), ("Cookie", &cookie)]),
        (with_query.as_str(), vec![("X-Remote-User", "alice")]),
    ] {
        c.get(target, &headers).expect("request");
    }
    // A login form, on a connection of its own (the portal may not read its body).
    let body = format!("user=alice&password={}", s.form_password);
    let req = format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    send_raw(addr, req.as_bytes()).expect("login request");
}

/// Records a run of `config` while `drive` runs, then searches the trace.
fn record_and_search(p: &Privileged, model: &str, config: &str, addr: &str) {
    let dir = TempDir::new(&format!("secrets-{model}"));
    let traces = dir.path().join("traces");
    let s = Secrets::new(model);
    let vigie = Vigie::start(
        p,
        &format!("secrets-{model}"),
        config,
        &["--record", traces.to_str().expect("utf-8 path")],
    );
    drive(addr, &s);
    let (_, log) = vigie.stop();
    let trace = read_traces(&traces);
    // The requests are in the trace, their secrets masked in place.
    let masked = format!("sid={}", "*".repeat(s.sid.len()));
    assert!(
        trace.contains(&masked),
        "{model}: the request with query secrets is not in the trace\n{log}"
    );
    for (what, secret) in s.all() {
        assert!(
            !trace.contains(&secret),
            "{model}: the {what} ({secret}) reached the trace"
        );
    }
    eprintln!(
        "{model}: {} bytes of trace, none of {} secrets in it",
        trace.len(),
        s.all().len()
    );
}

fn read_traces(dir: &Path) -> String {
    trace_files(dir)
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("reading a trace file"))
        .collect()
}

#[test]
fn no_secret_of_a_demo_portal_model_reaches_a_trace() {
    let Some(p) = privileged("no_secret_of_a_demo_portal_model_reaches_a_trace") else {
        return;
    };
    for model in ["thread", "prefork", "pool", "async", "event-loop"] {
        let delay = fork_delay_ms();
        let mut args = vec!["--model", model];
        if model == "prefork" {
            args.extend(["--workers", "2", "--fork-delay-ms", &delay]);
        }
        let portal = Portal::start(&format!("secrets-portal-{model}"), &args);
        let config = portal.config_by_pid();
        record_and_search(&p, model, &config, &portal.addr());
    }
}

#[test]
fn no_secret_of_the_node_portal_reaches_a_trace() {
    let Some(p) = privileged("no_secret_of_the_node_portal_reaches_a_trace") else {
        return;
    };
    for (name, serve, cluster) in [
        ("node-read-file", "read-file", None),
        ("node-stream", "stream", None),
        ("node-cluster", "read-file", Some("2")),
    ] {
        let Some(portal) = crate::harness::node::NodePortal::start(name, serve, cluster) else {
            return;
        };
        record_and_search(&p, name, &portal.config(), portal.guard.addr());
    }
}
