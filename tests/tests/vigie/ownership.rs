//! Ownership from the portal's own database (SQLite, a real PostgreSQL server) and from a
//! mapping file with delegation, with the real demo portal and real probes. Documents reached
//! through `/api/documents/<id>` are judged on the file actually opened (`ROOT/docs/<id>.pdf`)
//! and its owner in the database, not on the URL. Needs root (see `crate::harness::privileged`).

use std::{ffi::OsStr, path::PathBuf, time::Duration};

use crate::harness::{postgres::Postgres, *};
use serde_json::Value;

/// `(verdict, rule, user, owner, document)` of each access alert, sorted.
fn judged(alerts: &[Value]) -> Vec<(String, String, String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut out: Vec<_> = alerts
        .iter()
        .filter(|a| a["type"] == "access")
        .map(|a| {
            (
                s(&a["verdict"]),
                s(&a["rule"]),
                s(&a["user"]),
                s(&a["owner"]),
                s(&a["document"]),
            )
        })
        .collect();
    out.sort();
    out
}

fn j(
    verdict: &str,
    rule: &str,
    user: &str,
    owner: &str,
    doc: &str,
) -> (String, String, String, String, String) {
    (
        verdict.into(),
        rule.into(),
        user.into(),
        owner.into(),
        doc.into(),
    )
}

/// The portal's root (`ROOT/users`, `ROOT/docs`, `ROOT/portal.db`).
fn root_of(portal: &Portal) -> PathBuf {
    portal.users.parent().expect("ROOT/users").to_path_buf()
}

fn by_id(root: &std::path::Path, id: u32) -> String {
    root.join("docs")
        .join(format!("{id}.pdf"))
        .display()
        .to_string()
}

fn read(addr: &str, user: &str, id: u32) {
    assert_eq!(
        get_as(addr, user, &format!("/api/documents/{id}")),
        200,
        "{user} reading {id}"
    );
}

/// The alert of `user` reading `document`.
fn alert_of<'a>(alerts: &'a [Value], user: &str, document: &str) -> &'a Value {
    alerts
        .iter()
        .find(|a| a["user"] == user && a["document"] == document)
        .unwrap_or_else(|| panic!("no alert for {user} reading {document}: {alerts:#?}"))
}

/// Replays `files` (`--audit` or not) and returns the alert file's bytes.
fn replay(p: &Privileged, files: &[PathBuf], audit: bool, out: &std::path::Path) -> String {
    let mut args: Vec<&OsStr> = vec![OsStr::new("replay")];
    args.extend(files.iter().map(|f| f.as_os_str()));
    if audit {
        args.push(OsStr::new("--audit"));
    }
    args.extend([OsStr::new("--alerts"), out.as_os_str()]);
    let (ok, _, stderr) = vigie_cmd(p, &args);
    assert!(ok, "replay failed: {stderr}");
    std::fs::read_to_string(out).expect("replayed alerts")
}

/// The live lines that are not `allowed`: what a run without `--audit` writes.
fn without_allowed(raw: &str) -> String {
    raw.lines()
        .filter(|l| !l.contains("\"verdict\":\"allowed\""))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn sqlite_owners_of_documents_by_id_and_replay_without_the_database() {
    let Some(p) = privileged("sqlite_owners_of_documents_by_id_and_replay_without_the_database")
    else {
        return;
    };
    let portal = Portal::start("own-sqlite", &["--model", "thread"]);
    let root = root_of(&portal);
    let db = root.join("portal.db");
    let docs = root.join("docs");
    let config = format!(
        "[targets]\npids = [{pid}]\n[documents]\nroots = [\"{docs}\"]\n[policy]\nprivileged_users = [\"agent\"]\n\
         [ownership]\nbackends = [\"sqlite\"]\n[ownership.sqlite]\ndatabase = \"{db}\"\n\
         query = \"SELECT owner, shared_with FROM documents WHERE id = ?1\"\n\
         document_id = \"{docs}/{{doc_id}}.pdf\"\n",
        pid = portal.guard.pid(),
        docs = docs.display(),
        db = db.display(),
    );
    let traces = TempDir::new("own-sqlite-traces");
    let record = traces.path().join("t");
    let vigie = Vigie::start(
        &p,
        "own-sqlite",
        &config,
        &["--audit", "--record", record.to_str().unwrap()],
    );
    let addr = portal.addr();
    read(&addr, "alice", 1001); // her own
    read(&addr, "alice", 2001); // bob's
    read(&addr, "alice", 2002); // bob's, shared with alice
    read(&addr, "carol", 2002); // bob's, not shared with carol
    read(&addr, "bob", 9001); // in no table
    vigie.wait_alerts("five judged reads", |a| a.len() == 5);
    // The portal's database is overwritten with something that is not a database (the portal
    // only reads its first bytes and goes on serving).
    let size = std::fs::metadata(&db).unwrap().len() as usize;
    std::fs::write(&db, vec![b'x'; size]).unwrap();
    read(&addr, "alice", 3001); // not cached: the lookup fails
    read(&addr, "alice", 1001); // cached: still hers
    vigie.wait_alerts("seven judged reads", |a| a.len() == 7);
    let mut vigie = vigie;
    assert!(vigie.alive(), "vigie died:\n{}", vigie.log());
    let (live_raw, log) = vigie.stop_raw();
    let alerts = parse_alerts(&live_raw);
    let d = |id| by_id(&root, id);
    assert_eq!(
        judged(&alerts),
        [
            j("allowed", "user_is_delegated", "alice", "bob", &d(2002)),
            j("allowed", "user_is_owner", "alice", "alice", &d(1001)),
            j("allowed", "user_is_owner", "alice", "alice", &d(1001)),
            j(
                "unknown_owner",
                "no_ownership_rule_matches",
                "bob",
                "-",
                &d(9001)
            ),
            j(
                "unknown_owner",
                "ownership_lookup_failed",
                "alice",
                "-",
                &d(3001)
            ),
            j("violation", "cross_user_read", "alice", "bob", &d(2001)),
            j("violation", "cross_user_read", "carol", "bob", &d(2002)),
        ],
        "{log}"
    );
    // The alert names the file opened, the owner from the database and the request's URL.
    let cross = alert_of(&alerts, "alice", &d(2001));
    assert_eq!(cross["owner_source"], "sqlite", "{cross}");
    assert_eq!(cross["request"]["target"], "/api/documents/2001", "{cross}");
    let shared = alert_of(&alerts, "carol", &d(2002));
    assert_eq!(
        shared["shared_with"],
        serde_json::json!(["alice"]),
        "{shared}"
    );
    let failed = alert_of(&alerts, "alice", &d(3001));
    assert_eq!(
        (&failed["owner_source"], &failed["ownership_error"]),
        (&Value::from("sqlite"), &Value::from("unavailable")),
        "{failed}"
    );

    // No database at all for the replay: the recorded facts answer, byte for byte.
    std::fs::remove_file(&db).unwrap();
    let files = trace_files(&record);
    let facts = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .matches("\"ownership_fact\"")
                .count()
        })
        .sum::<usize>();
    assert_eq!(
        facts, 5,
        "one fact per lookup: the second reads of 1001 and 2002 are cache hits"
    );
    let audit = replay(
        &p,
        &files,
        true,
        &traces.path().join("replayed-audit.jsonl"),
    );
    assert_eq!(audit, live_raw, "replay differs from live");
    let alerts_only = replay(&p, &files, false, &traces.path().join("replayed.jsonl"));
    assert_eq!(alerts_only, without_allowed(&live_raw));
    assert_eq!(alerts_only.lines().count(), 4);
}

/// A PostgreSQL cluster with the portal's `documents` table (owners as text, shared_with as
/// text[]), and a login role that may only SELECT it, its password in a 0600 file.
fn portal_database(pg: &Postgres, dir: &TempDir) -> (String, PathBuf) {
    pg.psql("postgres", "CREATE DATABASE portal");
    let mut sql = String::from(
        "CREATE TABLE documents (id integer PRIMARY KEY, owner text NOT NULL, shared_with text[]);",
    );
    for (id, owner, shared) in vigie_tests::portal::API_DOCUMENTS {
        let shared = shared
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(",");
        sql.push_str(&format!(
            "INSERT INTO documents VALUES ({id}, '{owner}', ARRAY[{shared}]::text[]);"
        ));
    }
    sql.push_str(
        "CREATE ROLE vigie_reader LOGIN PASSWORD 'reader-password-42';
         GRANT SELECT ON documents TO vigie_reader;",
    );
    pg.psql("portal", &sql);
    let password = dir.path().join("pg-password");
    std::fs::write(&password, "reader-password-42\n").unwrap();
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    (pg.connection("portal", "vigie_reader"), password)
}

fn postgres_config(
    portal: &Portal,
    connection: &str,
    password: &std::path::Path,
    query: &str,
) -> String {
    let docs = root_of(portal).join("docs");
    format!(
        "[targets]\npids = [{pid}]\n[documents]\nroots = [\"{docs}\"]\n\
         [ownership]\nbackends = [\"postgres\"]\n[ownership.postgres]\nconnection = \"{connection}\"\n\
         password_file = \"{password}\"\nquery = \"{query}\"\ndocument_id = \"{docs}/{{doc_id}}.pdf\"\n",
        pid = portal.guard.pid(),
        docs = docs.display(),
        password = password.display(),
    )
}

const PG_QUERY: &str = "SELECT owner, shared_with FROM documents WHERE id = $1";

#[test]
fn postgres_owners_of_documents_by_id_and_replay_without_the_server() {
    let Some(p) = privileged("postgres_owners_of_documents_by_id_and_replay_without_the_server")
    else {
        return;
    };
    let Some(mut pg) = Postgres::start("own-postgres") else {
        return;
    };
    let dir = TempDir::new("own-postgres-files");
    let (connection, password) = portal_database(&pg, &dir);
    let portal = Portal::start("own-postgres", &["--model", "pool"]);
    let root = root_of(&portal);
    let record = dir.path().join("t");
    let vigie = Vigie::start(
        &p,
        "own-postgres",
        &postgres_config(&portal, &connection, &password, PG_QUERY),
        &["--audit", "--record", record.to_str().unwrap()],
    );
    let addr = portal.addr();
    read(&addr, "alice", 1001);
    read(&addr, "alice", 2001);
    read(&addr, "alice", 2002);
    read(&addr, "carol", 2002);
    read(&addr, "bob", 9001);
    read(&addr, "carol", 3001);
    let (live_raw, log) = vigie.stop_raw();
    let alerts = parse_alerts(&live_raw);
    let d = |id| by_id(&root, id);
    assert_eq!(
        judged(&alerts),
        [
            j("allowed", "user_is_delegated", "alice", "bob", &d(2002)),
            j("allowed", "user_is_owner", "alice", "alice", &d(1001)),
            j("allowed", "user_is_owner", "carol", "carol", &d(3001)),
            j(
                "unknown_owner",
                "no_ownership_rule_matches",
                "bob",
                "-",
                &d(9001)
            ),
            j("violation", "cross_user_read", "alice", "bob", &d(2001)),
            j("violation", "cross_user_read", "carol", "bob", &d(2002)),
        ],
        "{log}"
    );
    let cross = alert_of(&alerts, "alice", &d(2001));
    assert_eq!(
        (&cross["owner_source"], &cross["request"]["target"]),
        (
            &Value::from("postgres"),
            &Value::from("/api/documents/2001")
        ),
        "{cross}"
    );
    assert_eq!(
        alert_of(&alerts, "carol", &d(2002))["shared_with"],
        serde_json::json!(["alice"])
    );
    assert!(!log.contains("reader-password-42"), "password in the log");
    // The server is gone for the replay.
    pg.stop();
    let files = trace_files(&record);
    for f in &files {
        assert!(
            !std::fs::read_to_string(f)
                .unwrap()
                .contains("reader-password-42")
        );
    }
    let replayed = replay(&p, &files, true, &dir.path().join("replayed.jsonl"));
    assert_eq!(replayed, live_raw, "replay differs from live");
}

#[test]
fn postgres_that_hangs_or_stops_gives_unknown_owner_and_vigie_keeps_running() {
    let Some(p) =
        privileged("postgres_that_hangs_or_stops_gives_unknown_owner_and_vigie_keeps_running")
    else {
        return;
    };
    let Some(mut pg) = Postgres::start("own-pg-fail") else {
        return;
    };
    let dir = TempDir::new("own-pg-fail-files");
    let (connection, password) = portal_database(&pg, &dir);
    let portal = Portal::start("own-pg-fail", &["--model", "thread"]);
    let root = root_of(&portal);
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut vigie = Vigie::start(
        &p,
        "own-pg-fail",
        &postgres_config(&portal, &connection, &password, PG_QUERY),
        &["--audit", &format!("--metrics-addr={metrics_addr}")],
    );
    let addr = portal.addr();
    let d = |id| by_id(&root, id);
    read(&addr, "alice", 1001);
    vigie.wait_alerts("alice's own read", |a| a.len() == 1);

    // The server hangs (SIGSTOP): the lookup gives up after lookup_timeout_ms (200 ms).
    pg.pause();
    read(&addr, "alice", 3001);
    let alerts = vigie.wait_alerts("the timed-out lookup", |a| a.len() == 2);
    assert_eq!(
        alerts[1]["rule"], "ownership_lookup_timeout",
        "{:#?}",
        alerts[1]
    );
    assert_eq!(alerts[1]["ownership_error"], "timeout");
    pg.resume();
    // The stuck query completes; then lookups work again.
    poll_until(
        "the late answer",
        Duration::from_secs(10),
        || vigie.log().contains("after its deadline").then_some(()),
        || vigie.log(),
    );
    read(&addr, "carol", 1002);
    vigie.wait_alerts("carol's delegated read", |a| a.len() == 3);

    // The server stops: lookups fail at once, Vigie goes on.
    pg.stop();
    read(&addr, "alice", 3001);
    vigie.wait_alerts("the failed lookup", |a| a.len() == 4);
    assert!(vigie.alive(), "vigie died:\n{}", vigie.log());
    let (status, body) = http_get(&metrics_addr, "/metrics", &[]).expect("GET /metrics");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200);
    for (outcome, n) in [
        ("found", 2.0),
        ("timeout", 1.0),
        ("failed", 1.0),
        ("not_found", 0.0),
    ] {
        let series =
            format!("vigie_ownership_lookups_total{{backend=\"postgres\",outcome=\"{outcome}\"}}");
        assert_eq!(metric(&text, &series), Some(n), "{series}\n{text}");
    }
    let (alerts, log) = vigie.stop();
    assert_eq!(
        judged(&alerts),
        [
            j("allowed", "user_is_delegated", "carol", "alice", &d(1002)),
            j("allowed", "user_is_owner", "alice", "alice", &d(1001)),
            j(
                "unknown_owner",
                "ownership_lookup_failed",
                "alice",
                "-",
                &d(3001)
            ),
            j(
                "unknown_owner",
                "ownership_lookup_timeout",
                "alice",
                "-",
                &d(3001)
            ),
        ],
        "{log}"
    );
}

#[test]
fn postgres_queries_are_checked_at_start_and_run_read_only() {
    let Some(p) = privileged("postgres_queries_are_checked_at_start_and_run_read_only") else {
        return;
    };
    let Some(pg) = Postgres::start("own-pg-ro") else {
        return;
    };
    let dir = TempDir::new("own-pg-ro-files");
    let (connection, password) = portal_database(&pg, &dir);
    let portal = Portal::start("own-pg-ro", &["--model", "thread"]);
    // A query the server refuses stops Vigie at start, naming the field.
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        postgres_config(
            &portal,
            &connection,
            &password,
            "SELECT owner FROM nope WHERE id = $1",
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (ok, _, stderr) = vigie_cmd(
        &p,
        &[
            OsStr::new("run"),
            OsStr::new("--no-metrics"),
            OsStr::new("--config"),
            cfg.as_os_str(),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("invalid `ownership.postgres.query`")
            && stderr.contains("\"nope\" does not exist"),
        "{stderr}"
    );
    // A query that would write passes the static check, but runs in a read-only transaction.
    let writing =
        "WITH d AS (DELETE FROM documents WHERE id = $1 RETURNING owner) SELECT owner FROM d";
    let vigie = Vigie::start(
        &p,
        "own-pg-ro",
        &postgres_config(&portal, &connection, &password, writing),
        &[],
    );
    read(&portal.addr(), "alice", 2001);
    let (alerts, log) = vigie.stop();
    assert_eq!(
        judged(&alerts),
        [j(
            "unknown_owner",
            "ownership_lookup_failed",
            "alice",
            "-",
            &by_id(&root_of(&portal), 2001)
        )],
        "{log}"
    );
    assert!(log.contains("read-only transaction"), "{log}");
    assert_eq!(
        pg.psql("portal", "SELECT owner FROM documents WHERE id = 2001"),
        "bob"
    );
}

#[test]
fn mapping_file_with_a_delegated_principal() {
    let Some(p) = privileged("mapping_file_with_a_delegated_principal") else {
        return;
    };
    let portal = Portal::start("own-mapping", &["--model", "thread"]);
    let dir = TempDir::new("own-mapping-files");
    let u = portal.users.display().to_string();
    let mapping = dir.path().join("ownership.toml");
    std::fs::write(
        &mapping,
        format!(
            "[[document]]\npath = \"{u}/bob/health-record.pdf\"\nowner = \"bob\"\nshared_with = [\"alice\"]\n\n\
             [[document]]\npath = \"{u}/bob/**\"\nowner = \"bob\"\n\n\
             [[document]]\npath = \"{u}/alice/*.txt\"\nowner = \"alice\"\n"
        ),
    )
    .unwrap();
    let config = format!(
        "[targets]\npids = [{}]\n[documents]\nroots = [\"{u}\"]\n[ownership]\nbackends = [\"mapping\"]\n\
         [ownership.mapping]\nfile = \"{}\"\n",
        portal.guard.pid(),
        mapping.display()
    );
    let vigie = Vigie::start(&p, "own-mapping", &config, &["--audit"]);
    let addr = portal.addr();
    for (user, target) in [
        ("alice", "/docs/alice/notes.txt"),
        ("alice", "/docs/bob/health-record.pdf"),
        ("alice", "/docs/bob/notes.txt"),
        ("carol", "/docs/bob/health-record.pdf"),
        ("alice", "/docs/alice/health-record.pdf"),
    ] {
        assert_eq!(get_as(&addr, user, target), 200, "{user} {target}");
    }
    let (alerts, log) = vigie.stop();
    assert_eq!(
        judged(&alerts),
        [
            j(
                "allowed",
                "user_is_delegated",
                "alice",
                "bob",
                &portal.doc("bob", "health-record.pdf")
            ),
            j(
                "allowed",
                "user_is_owner",
                "alice",
                "alice",
                &portal.doc("alice", "notes.txt")
            ),
            j(
                "unknown_owner",
                "no_ownership_rule_matches",
                "alice",
                "-",
                &portal.doc("alice", "health-record.pdf")
            ),
            j(
                "violation",
                "cross_user_read",
                "alice",
                "bob",
                &portal.doc("bob", "notes.txt")
            ),
            j(
                "violation",
                "cross_user_read",
                "carol",
                "bob",
                &portal.doc("bob", "health-record.pdf")
            ),
        ],
        "{log}"
    );
    let carol = alert_of(&alerts, "carol", &portal.doc("bob", "health-record.pdf"));
    assert_eq!(
        (&carol["owner_source"], &carol["shared_with"]),
        (&Value::from("mapping"), &serde_json::json!(["alice"])),
        "{carol}"
    );
}
