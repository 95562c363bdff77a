//! Read-only ownership queries against the portal's own database: SQLite and PostgreSQL.
//!
//! The query comes from the config and takes exactly one parameter: the document's normalized
//! absolute path, or the document id captured by a `document_id` template such as
//! `/srv/portal/docs/{doc_id}.pdf`. It returns at most one row: the owner (text), and optionally
//! a second column with the principals the document is shared with (comma-separated text, or a
//! text array in PostgreSQL). No row, or a NULL owner: the backend does not know the document.
//!
//! Read-only on both sides: SQLite is opened with `SQLITE_OPEN_READ_ONLY` and `query_only`;
//! PostgreSQL sessions start with `default_transaction_read_only=on` and each lookup runs in a
//! `READ ONLY` transaction, with a `statement_timeout`. These calls block: they run on a
//! lookup thread of their own ([`super::worker`]), never on the thread draining the ring buffer.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use super::fact::{Answer, LookupError};

/// The placeholder capturing a document id in a `document_id` template.
const DOC_ID: &str = "{doc_id}";

/// Extracts a document id from a path: `/srv/portal/docs/{doc_id}.pdf` gives `1234` for
/// `/srv/portal/docs/1234.pdf`. The id is never empty and never contains `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentId {
    prefix: String,
    suffix: String,
}

impl DocumentId {
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((prefix, suffix)) = text.split_once(DOC_ID) else {
            return Err(format!("{text:?} has no `{DOC_ID}`"));
        };
        if suffix.contains(DOC_ID) {
            return Err(format!("{text:?} has more than one `{DOC_ID}`"));
        }
        if prefix.contains(['{', '}', '*']) || suffix.contains(['{', '}', '*']) {
            return Err(format!(
                "{text:?}: only one `{DOC_ID}` is allowed, no other placeholder or wildcard"
            ));
        }
        let example = format!("{prefix}1{suffix}");
        if monitor_core::paths::normalize(&example).as_deref() != Some(example.as_str()) {
            return Err(format!(
                "{text:?} is not an absolute, normalized path (no `.`, `..`, `//` or trailing `/`)"
            ));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    /// The id in a normalized path, or `None` when the path does not match.
    #[must_use]
    pub fn id_of<'p>(&self, path: &'p str) -> Option<&'p str> {
        let id = path
            .strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)?;
        (!id.is_empty() && !id.contains('/') && id != "." && id != "..").then_some(id)
    }
}

/// A check made at start-up (or by `check-config`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The query can never work (syntax, unknown table, wrong parameter count): Vigie refuses
    /// to start, naming the field.
    #[error("{0}")]
    Query(String),
    /// The database cannot be reached now: a warning, lookups fail until it is back.
    #[error("{0}")]
    Unavailable(String),
}

/// A blocking ownership lookup, run on a worker thread.
pub trait Lookup: Send + 'static {
    /// Checks the database and the query.
    fn probe(&mut self) -> Result<(), ProbeError>;
    /// The answer for `key` (a path or a document id); should give up by `deadline`.
    fn lookup(&mut self, key: &str, deadline: Instant) -> Answer;
}

/// Turns the result rows into an answer: owner and optional shared-with principals.
fn answer_from(rows: Vec<(Option<String>, Vec<String>)>) -> Answer {
    let mut rows = rows.into_iter();
    let Some((owner, shared)) = rows.next() else {
        return Answer::NotFound;
    };
    if rows.next().is_some() {
        // Two owners for one document: refuse to pick one.
        return Answer::Failed(LookupError::BadResult);
    }
    let Some(owner) = owner else {
        return Answer::NotFound;
    };
    if !monitor_core::identity::valid_user_name(&owner) {
        return Answer::Failed(LookupError::BadResult);
    }
    // A principal that is not a valid name grants nothing: it is left out (fails closed).
    let shared_with = shared
        .into_iter()
        .filter(|p| monitor_core::identity::valid_user_name(p))
        .collect();
    Answer::Owner {
        owner,
        shared_with,
        matched: None,
    }
}

/// Principals from comma-separated text.
fn split_principals(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A query against an SQLite database file, opened read-only at each lookup: a database the
/// portal replaces or removes is noticed at once. Lookups are rare (answers are cached).
pub struct SqliteLookup {
    database: PathBuf,
    query: String,
    timeout: Duration,
}

impl SqliteLookup {
    pub fn new(database: PathBuf, query: String, timeout: Duration) -> Self {
        Self {
            database,
            query,
            timeout,
        }
    }

    fn open(&self) -> rusqlite::Result<rusqlite::Connection> {
        use rusqlite::OpenFlags;
        let conn = rusqlite::Connection::open_with_flags(
            &self.database,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.timeout)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }

    fn run(&self, key: &str, deadline: Instant) -> rusqlite::Result<Answer> {
        let mut conn = self.open()?;
        // Interrupts a query still running at the deadline (checked every 1000 VM steps).
        conn.progress_handler(1000, Some(move || Instant::now() >= deadline))?;
        let mut stmt = conn.prepare(&self.query)?;
        let two = stmt.column_count() > 1;
        let mut rows = stmt.query([key])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            use rusqlite::types::ValueRef;
            let owner = match row.get_ref(0)? {
                ValueRef::Null => None,
                ValueRef::Text(t) => match std::str::from_utf8(t) {
                    Ok(s) => Some(s.to_owned()),
                    Err(_) => return Ok(Answer::Failed(LookupError::BadResult)),
                },
                _ => return Ok(Answer::Failed(LookupError::BadResult)),
            };
            let shared = if two {
                match row.get_ref(1)? {
                    ValueRef::Null => Vec::new(),
                    ValueRef::Text(t) => split_principals(&String::from_utf8_lossy(t)),
                    _ => return Ok(Answer::Failed(LookupError::BadResult)),
                }
            } else {
                Vec::new()
            };
            out.push((owner, shared));
            if out.len() > 1 {
                break;
            }
        }
        Ok(answer_from(out))
    }

    /// Opens the database and prepares the query: what `check-config` validates.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let conn = self
            .open()
            .map_err(|e| ("database", format!("cannot open read-only: {e}")))?;
        let stmt = conn.prepare(&self.query).map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if is_unavailable(f.code) => {
                ("database", format!("cannot read: {e}"))
            }
            _ => ("query", format!("SQLite refuses it: {e}")),
        })?;
        if !stmt.readonly() {
            return Err(("query", "writes to the database: it must only read".into()));
        }
        check_shape(stmt.parameter_count(), stmt.column_count(), "?1").map_err(|r| ("query", r))
    }
}

fn is_unavailable(code: rusqlite::ErrorCode) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        code,
        C::CannotOpen
            | C::NotADatabase
            | C::PermissionDenied
            | C::DatabaseCorrupt
            | C::SystemIoFailure
    )
}

/// One parameter, one or two columns.
fn check_shape(params: usize, columns: usize, placeholder: &str) -> Result<(), String> {
    if params != 1 {
        return Err(format!(
            "takes {params} parameters; it must take exactly one ({placeholder}: the document's path, or its id with `document_id`)"
        ));
    }
    if !(1..=2).contains(&columns) {
        return Err(format!(
            "returns {columns} columns; it must return the owner, and optionally the principals it is shared with"
        ));
    }
    Ok(())
}

impl Lookup for SqliteLookup {
    fn probe(&mut self) -> Result<(), ProbeError> {
        self.check().map_err(|(field, reason)| match field {
            "query" => ProbeError::Query(reason),
            _ => ProbeError::Unavailable(reason),
        })
    }

    fn lookup(&mut self, key: &str, deadline: Instant) -> Answer {
        match self.run(key, deadline) {
            Ok(answer) => answer,
            Err(rusqlite::Error::SqliteFailure(f, _)) => {
                use rusqlite::ErrorCode as C;
                match f.code {
                    C::OperationInterrupted | C::DatabaseBusy | C::DatabaseLocked => {
                        Answer::Failed(LookupError::Timeout)
                    }
                    c if is_unavailable(c) => Answer::Failed(LookupError::Unavailable),
                    _ => Answer::Failed(LookupError::QueryFailed),
                }
            }
            Err(_) => Answer::Failed(LookupError::QueryFailed),
        }
    }
}

/// How long a failed connection is not retried: a database that is down costs one attempt
/// per second, not one per document read.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// A query against PostgreSQL over one session kept open (and reopened after a failure).
pub struct PostgresLookup {
    config: postgres::Config,
    query: String,
    session: Option<(postgres::Client, postgres::Statement)>,
    retry_at: Option<Instant>,
}

/// Checks a `connection` string: it parses, names a host and a user, carries no password (it
/// belongs in `password_file`: configs are printed and recorded), and asks for no TLS.
pub fn parse_connection(text: &str) -> Result<postgres::Config, String> {
    let config = parse_connection_tls(text)?;
    if config.get_ssl_mode() == postgres::config::SslMode::Require {
        return Err(
            "sslmode=require: TLS to the ownership database is not supported yet; connect over a unix socket or loopback".into(),
        );
    }
    Ok(config)
}

/// [`parse_connection`] for a client that can do TLS (the trail's shipping): `sslmode=require`
/// accepted.
pub fn parse_connection_tls(text: &str) -> Result<postgres::Config, String> {
    let config: postgres::Config = text
        .parse()
        .map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
    if config.get_password().is_some() {
        return Err(
            "holds a password: put it in the `password_file` beside it (the config is printed by check-config and recorded in traces)"
                .into(),
        );
    }
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err(
            "names no host: give host=/run/postgresql (a unix socket directory) or an address"
                .into(),
        );
    }
    if config.get_user().is_none() {
        return Err("names no user: give user=... (a role allowed to SELECT only)".into());
    }
    Ok(config)
}

/// Static checks of a PostgreSQL query (the server checks it for real at start-up).
pub fn check_postgres_query(query: &str) -> Result<(), String> {
    let q = query.trim().trim_end_matches(';').trim_end();
    let head = q
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if head != "select" && head != "with" {
        return Err("must be a SELECT (or WITH ... SELECT) query".into());
    }
    if q.contains(';') {
        return Err("must be a single statement (no `;` inside)".into());
    }
    if !q.contains("$1") {
        return Err("must take its parameter as $1".into());
    }
    if (2..=9).any(|n| q.contains(&format!("${n}"))) {
        return Err("must take exactly one parameter ($1)".into());
    }
    Ok(())
}

impl PostgresLookup {
    /// `config` from [`parse_connection`]; `password` from the password file.
    pub fn new(
        mut config: postgres::Config,
        password: Option<Vec<u8>>,
        query: String,
        timeout: Duration,
    ) -> Self {
        let ms = timeout.as_millis().max(1);
        // Appended to any options of the connection string: later settings win.
        let options = format!(
            "{} -c default_transaction_read_only=on -c statement_timeout={ms}",
            config.get_options().unwrap_or_default()
        );
        config
            .options(options.trim_start())
            .application_name("vigie")
            .connect_timeout(timeout.max(Duration::from_millis(100)))
            .tcp_user_timeout(timeout.max(Duration::from_millis(100)));
        if let Some(p) = password {
            config.password(p);
        }
        Self {
            config,
            query,
            session: None,
            retry_at: None,
        }
    }

    fn connect(&mut self) -> Result<(), ProbeError> {
        let mut client = self
            .config
            .connect(postgres::NoTls)
            .map_err(|e| ProbeError::Unavailable(format!("cannot connect: {e}")))?;
        let stmt = client.prepare(&self.query).map_err(|e| {
            if e.as_db_error().is_some() {
                ProbeError::Query(format!("PostgreSQL refuses it: {}", db_message(&e)))
            } else {
                ProbeError::Unavailable(format!("preparing the query: {e}"))
            }
        })?;
        check_shape(stmt.params().len(), stmt.columns().len(), "$1").map_err(ProbeError::Query)?;
        use postgres::types::Type;
        let param = &stmt.params()[0];
        if !(is_text(param) || [Type::INT2, Type::INT4, Type::INT8].contains(param)) {
            return Err(ProbeError::Query(format!(
                "its parameter is of type {param}: use a text or integer parameter (or cast: $1::text)"
            )));
        }
        let owner = stmt.columns()[0].type_();
        if !is_text(owner) {
            return Err(ProbeError::Query(format!(
                "its first column (the owner) is of type {owner}: select it as text (owner::text)"
            )));
        }
        if let Some(shared) = stmt.columns().get(1).map(postgres::Column::type_)
            && !is_text(shared)
            && ![Type::TEXT_ARRAY, Type::VARCHAR_ARRAY].contains(shared)
        {
            return Err(ProbeError::Query(format!(
                "its second column (shared with) is of type {shared}: select text or text[]"
            )));
        }
        self.session = Some((client, stmt));
        Ok(())
    }

    fn run(
        client: &mut postgres::Client,
        stmt: &postgres::Statement,
        key: &str,
    ) -> Result<Answer, postgres::Error> {
        use postgres::types::{ToSql, Type};
        let param: Box<dyn ToSql + Sync> = match stmt.params()[0] {
            Type::INT2 => match key.parse::<i16>() {
                Ok(v) => Box::new(v),
                Err(_) => return Ok(Answer::NotFound),
            },
            Type::INT4 => match key.parse::<i32>() {
                Ok(v) => Box::new(v),
                Err(_) => return Ok(Answer::NotFound),
            },
            Type::INT8 => match key.parse::<i64>() {
                Ok(v) => Box::new(v),
                Err(_) => return Ok(Answer::NotFound),
            },
            _ => Box::new(key.to_owned()),
        };
        let mut tx = client.build_transaction().read_only(true).start()?;
        let rows = tx.query(stmt, &[param.as_ref()])?;
        tx.commit()?;
        let array = stmt
            .columns()
            .get(1)
            .is_some_and(|c| [Type::TEXT_ARRAY, Type::VARCHAR_ARRAY].contains(c.type_()));
        let mut out = Vec::new();
        for row in rows.iter().take(2) {
            let owner: Option<String> = row.try_get(0)?;
            let shared = match (row.len(), array) {
                (1, _) => Vec::new(),
                (_, true) => row
                    .try_get::<_, Option<Vec<Option<String>>>>(1)?
                    .unwrap_or_default()
                    .into_iter()
                    .flatten()
                    .collect(),
                (_, false) => row
                    .try_get::<_, Option<String>>(1)?
                    .map(|s| split_principals(&s))
                    .unwrap_or_default(),
            };
            out.push((owner, shared));
        }
        Ok(answer_from(out))
    }
}

fn is_text(t: &postgres::types::Type) -> bool {
    use postgres::types::Type;
    [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(t)
}

/// The server's message, without the client's prefix.
fn db_message(e: &postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

impl Lookup for PostgresLookup {
    fn probe(&mut self) -> Result<(), ProbeError> {
        self.session = None;
        self.connect()
    }

    fn lookup(&mut self, key: &str, _deadline: Instant) -> Answer {
        // The deadline is enforced by the server (statement_timeout) and the client
        // (connect_timeout); a server that stops answering is the caller's timeout.
        if self.session.is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return Answer::Failed(LookupError::Unavailable);
            }
            if let Err(e) = self.connect() {
                tracing::warn!("ownership lookup (postgres): {e}");
                self.retry_at = Some(Instant::now() + RECONNECT_AFTER);
                return Answer::Failed(match e {
                    ProbeError::Query(_) => LookupError::QueryFailed,
                    ProbeError::Unavailable(_) => LookupError::Unavailable,
                });
            }
            self.retry_at = None;
        }
        let Some((client, stmt)) = self.session.as_mut() else {
            return Answer::Failed(LookupError::Unavailable);
        };
        match Self::run(client, stmt, key) {
            Ok(answer) => answer,
            Err(e) => {
                let canceled = e
                    .code()
                    .is_some_and(|c| *c == postgres::error::SqlState::QUERY_CANCELED);
                if client.is_closed() {
                    tracing::warn!("ownership lookup (postgres): connection lost: {e}");
                    self.session = None;
                    Answer::Failed(LookupError::Unavailable)
                } else if canceled {
                    Answer::Failed(LookupError::Timeout)
                } else {
                    tracing::warn!("ownership lookup (postgres): {}", db_message(&e));
                    Answer::Failed(if e.as_db_error().is_some() {
                        LookupError::QueryFailed
                    } else {
                        LookupError::BadResult
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_ids_from_paths() {
        let t = DocumentId::parse("/srv/portal/docs/{doc_id}.pdf").unwrap();
        assert_eq!(t.id_of("/srv/portal/docs/1234.pdf"), Some("1234"));
        assert_eq!(t.id_of("/srv/portal/docs/abc-9.pdf"), Some("abc-9"));
        assert_eq!(t.id_of("/srv/portal/docs/.pdf"), None);
        assert_eq!(t.id_of("/srv/portal/docs/a/b.pdf"), None);
        assert_eq!(t.id_of("/srv/portal/docs/1234.txt"), None);
        assert_eq!(t.id_of("/srv/portal/other/1234.pdf"), None);
        let dir = DocumentId::parse("/data/{doc_id}/content").unwrap();
        assert_eq!(dir.id_of("/data/77/content"), Some("77"));
        assert_eq!(dir.id_of("/data/../content"), None);
        let whole = DocumentId::parse("/docs/{doc_id}").unwrap();
        assert_eq!(whole.id_of("/docs/x"), Some("x"));
        assert_eq!(whole.id_of("/docs/x/y"), None);
        for bad in [
            "/docs/{id}.pdf",
            "docs/{doc_id}",
            "/docs/{doc_id}/{doc_id}",
            "/docs/*/{doc_id}",
            "/docs/../{doc_id}",
            "/docs//{doc_id}",
            "/docs/{doc_id}/",
            "/docs/{owner}/{doc_id}",
        ] {
            assert!(DocumentId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rows_to_answers() {
        let own = |o: &str, s: &[&str]| {
            (
                Some(o.to_owned()),
                s.iter().map(|x| (*x).to_owned()).collect(),
            )
        };
        assert_eq!(answer_from(vec![]), Answer::NotFound);
        assert_eq!(answer_from(vec![(None, vec![])]), Answer::NotFound);
        assert_eq!(
            answer_from(vec![own("bob", &["alice", " padded", "carol"])]),
            Answer::Owner {
                owner: "bob".into(),
                shared_with: vec!["alice".into(), "carol".into()],
                matched: None
            }
        );
        assert_eq!(
            answer_from(vec![own("bob", &[]), own("bob", &[])]),
            Answer::Failed(LookupError::BadResult)
        );
        assert_eq!(
            answer_from(vec![own("bad\nname", &[])]),
            Answer::Failed(LookupError::BadResult)
        );
        assert_eq!(split_principals(" a, b,,c ,"), ["a", "b", "c"]);
    }

    #[test]
    fn postgres_connection_strings_and_queries() {
        assert!(parse_connection("host=/run/postgresql user=vigie dbname=portal").is_ok());
        assert!(parse_connection("postgresql://vigie@localhost/portal").is_ok());
        for (bad, why) in [
            (
                "host=/run/postgresql user=vigie password=secret",
                "password_file",
            ),
            (
                "postgresql://vigie:secret@localhost/portal",
                "password_file",
            ),
            ("user=vigie dbname=portal", "no host"),
            ("host=/run/postgresql dbname=portal", "no user"),
            ("host=db user=v sslmode=require", "TLS"),
            ("host=db user=v bogus=1", "connection string"),
        ] {
            let e = parse_connection(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
        assert!(check_postgres_query("SELECT owner FROM documents WHERE id = $1").is_ok());
        assert!(
            check_postgres_query(
                " with d as (select 1) select owner from documents where id = $1;"
            )
            .is_ok()
        );
        for bad in [
            "DELETE FROM documents WHERE id = $1",
            "SELECT owner FROM documents WHERE id = $1; DROP TABLE documents",
            "SELECT owner FROM documents",
            "SELECT owner FROM documents WHERE id = $1 AND x = $2",
        ] {
            assert!(check_postgres_query(bad).is_err(), "{bad}");
        }
    }

    fn temp_db(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("vigie-sql-{name}-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE documents (id INTEGER PRIMARY KEY, owner TEXT, shared_with TEXT);
             INSERT INTO documents VALUES (1, 'alice', NULL), (2, 'bob', 'alice, carol'),
                                          (3, NULL, NULL), (4, ' padded', NULL);
             CREATE TABLE dup (path TEXT, owner);
             INSERT INTO dup VALUES ('/d/x', 'alice'), ('/d/x', 'bob'), ('/d/y', 7);",
        )
        .unwrap();
        path
    }

    fn sqlite(path: &std::path::Path, query: &str) -> SqliteLookup {
        SqliteLookup::new(path.to_owned(), query.into(), Duration::from_millis(200))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn sqlite_lookups() {
        let path = temp_db("lookups");
        let mut q = sqlite(
            &path,
            "SELECT owner, shared_with FROM documents WHERE id = ?1",
        );
        assert_eq!(q.probe(), Ok(()));
        // A text id against an INTEGER column: SQLite's affinity converts it.
        assert_eq!(
            q.lookup("1", soon()),
            Answer::Owner {
                owner: "alice".into(),
                shared_with: vec![],
                matched: None
            }
        );
        assert_eq!(
            q.lookup("2", soon()),
            Answer::Owner {
                owner: "bob".into(),
                shared_with: vec!["alice".into(), "carol".into()],
                matched: None
            }
        );
        assert_eq!(q.lookup("3", soon()), Answer::NotFound);
        assert_eq!(q.lookup("99", soon()), Answer::NotFound);
        assert_eq!(
            q.lookup("4", soon()),
            Answer::Failed(LookupError::BadResult)
        );
        let mut by_path = sqlite(&path, "SELECT owner FROM dup WHERE path = ?1");
        assert_eq!(
            by_path.lookup("/d/x", soon()),
            Answer::Failed(LookupError::BadResult)
        );
        assert_eq!(
            by_path.lookup("/d/y", soon()),
            Answer::Failed(LookupError::BadResult)
        );
        // Read-only: a write is refused by SQLite itself.
        let mut write = sqlite(&path, "DELETE FROM documents WHERE id = ?1 RETURNING owner");
        assert_eq!(
            write.lookup("1", soon()),
            Answer::Failed(LookupError::QueryFailed)
        );
        assert_eq!(q.lookup("1", soon()).outcome(), "found");
        // The database goes away: unavailable, not a panic.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            q.lookup("1", soon()),
            Answer::Failed(LookupError::Unavailable)
        );
        assert!(matches!(q.probe(), Err(ProbeError::Unavailable(_))));
    }

    #[test]
    fn a_slow_sqlite_query_is_interrupted_at_the_deadline() {
        let path = temp_db("slow");
        let mut q = sqlite(
            &path,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000000)
             SELECT owner FROM documents WHERE id = ?1 AND (SELECT max(i) FROM n) > 0",
        );
        let started = Instant::now();
        let answer = q.lookup("1", Instant::now() + Duration::from_millis(50));
        let took = started.elapsed();
        assert_eq!(answer, Answer::Failed(LookupError::Timeout));
        assert!(took < Duration::from_secs(2), "{took:?}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn sqlite_checks_name_the_field() {
        let path = temp_db("checks");
        let check = |query: &str| sqlite(&path, query).check();
        assert_eq!(check("SELECT owner FROM documents WHERE id = ?1"), Ok(()));
        for (query, field, why) in [
            (
                "SELECT owner FROM nope WHERE id = ?1",
                "query",
                "no such table",
            ),
            ("SELEC owner", "query", "syntax"),
            ("SELECT owner FROM documents", "query", "exactly one"),
            (
                "SELECT owner FROM documents WHERE id = ?1 AND owner = ?2",
                "query",
                "exactly one",
            ),
            (
                "SELECT id, owner, shared_with FROM documents WHERE id = ?1",
                "query",
                "3 columns",
            ),
            (
                "DELETE FROM documents WHERE id = ?1 RETURNING owner",
                "query",
                "only read",
            ),
        ] {
            let (f, reason) = check(query).unwrap_err();
            assert_eq!(f, field, "{query}");
            assert!(reason.contains(why), "{query}: {reason}");
        }
        let missing = sqlite(
            std::path::Path::new("/nonexistent/portal.db"),
            "SELECT 1 WHERE ?1",
        );
        assert_eq!(missing.check().unwrap_err().0, "database");
        let text = std::env::temp_dir().join(format!("vigie-sql-text-{}.db", std::process::id()));
        std::fs::write(&text, vec![b'x'; 8192]).unwrap();
        let (f, reason) = sqlite(&text, "SELECT 1 WHERE ?1").check().unwrap_err();
        assert_eq!(f, "database", "{reason}");
        let _ = std::fs::remove_file(&text);
        let _ = std::fs::remove_file(&path);
    }
}
