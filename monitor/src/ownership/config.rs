//! `[ownership]`: which backends say who owns a document, in which order, and how lookups are
//! cached and bounded in time.
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{fact::BackendKind, mapping::Mapping, sql};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OwnershipConfig {
    /// Asked in this order; the first that knows the document decides. A lookup that fails
    /// stops there: the verdict is `unknown_owner`, never a later backend's guess.
    #[serde(default = "default_backends")]
    pub backends: Vec<BackendKind>,
    /// Longest wait for one database lookup, in milliseconds (the ring buffer is not drained
    /// meanwhile).
    #[serde(default = "default_lookup_timeout_ms")]
    pub lookup_timeout_ms: u64,
    /// How long an owner found in the mapping file or a database is reused.
    #[serde(default = "default_cache_ttl_seconds")]
    pub cache_ttl_seconds: u64,
    /// How long "this backend does not know the document" is reused.
    #[serde(default = "default_negative_ttl_seconds")]
    pub negative_ttl_seconds: u64,
    /// Most answers kept in the cache (the oldest are dropped first).
    #[serde(default = "default_cache_max_entries")]
    pub cache_max_entries: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<MappingConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlite: Option<SqliteConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresConfig>,
}

fn default_backends() -> Vec<BackendKind> {
    vec![BackendKind::Templates]
}
fn default_lookup_timeout_ms() -> u64 {
    200
}
fn default_cache_ttl_seconds() -> u64 {
    60
}
fn default_negative_ttl_seconds() -> u64 {
    10
}
fn default_cache_max_entries() -> usize {
    100_000
}

pub const MAX_LOOKUP_TIMEOUT_MS: u64 = 10_000;
pub const MAX_TTL_SECONDS: u64 = 86_400;
pub const MAX_CACHE_ENTRIES: usize = 10_000_000;

impl Default for OwnershipConfig {
    fn default() -> Self {
        Self {
            backends: default_backends(),
            lookup_timeout_ms: default_lookup_timeout_ms(),
            cache_ttl_seconds: default_cache_ttl_seconds(),
            negative_ttl_seconds: default_negative_ttl_seconds(),
            cache_max_entries: default_cache_max_entries(),
            mapping: None,
            sqlite: None,
            postgres: None,
        }
    }
}

/// `[ownership.mapping]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// The mapping file (TOML; see the README). Refused when group or others can write it.
    pub file: String,
}

/// `[ownership.sqlite]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// The portal's SQLite database, opened read-only.
    pub database: String,
    /// One parameter (`?1`), returns the owner and optionally the principals it is shared with.
    pub query: String,
    /// Template capturing the parameter from the path, e.g. `/srv/portal/docs/{doc_id}.pdf`;
    /// without it, the parameter is the document's absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_id: Option<String>,
}

/// `[ownership.postgres]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq-style connection string without a password, e.g.
    /// `host=/run/postgresql dbname=portal user=vigie_reader`.
    pub connection: String,
    /// File holding the password (refused when group or others can read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// One parameter (`$1`), returns the owner and optionally the principals it is shared with.
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_id: Option<String>,
}

/// A bad key: the field (under `ownership.`) and the reason.
pub type FieldError = (String, String);

fn err(field: &str, reason: impl Into<String>) -> FieldError {
    (format!("ownership.{field}"), reason.into())
}

impl OwnershipConfig {
    /// Checks every key; reads the mapping file, opens the SQLite database and prepares its
    /// query, reads the PostgreSQL password file (the server itself is checked at start-up).
    /// `templates` is whether `documents.owner_templates` has any.
    pub fn check(&self, templates: bool) -> Result<(), FieldError> {
        if self.backends.is_empty() {
            return Err(err("backends", "at least one backend is required"));
        }
        for (i, b) in self.backends.iter().enumerate() {
            if self.backends[..i].contains(b) {
                return Err(err(
                    &format!("backends[{i}]"),
                    format!("`{}` is listed twice", b.as_str()),
                ));
            }
        }
        let listed = |b: BackendKind| self.backends.contains(&b);
        if templates && !listed(BackendKind::Templates) {
            return Err((
                "documents.owner_templates".into(),
                "is set but `templates` is not in `ownership.backends`".into(),
            ));
        }
        for (kind, present) in [
            (BackendKind::Mapping, self.mapping.is_some()),
            (BackendKind::Sqlite, self.sqlite.is_some()),
            (BackendKind::Postgres, self.postgres.is_some()),
        ] {
            let name = kind.as_str();
            match (listed(kind), present) {
                (true, false) => {
                    return Err(err(
                        name,
                        format!("is required when `{name}` is in `ownership.backends`"),
                    ));
                }
                (false, true) => {
                    return Err(err(
                        name,
                        format!("is configured but `{name}` is not in `ownership.backends`"),
                    ));
                }
                _ => {}
            }
        }
        if !(1..=MAX_LOOKUP_TIMEOUT_MS).contains(&self.lookup_timeout_ms) {
            return Err(err(
                "lookup_timeout_ms",
                format!("must be between 1 and {MAX_LOOKUP_TIMEOUT_MS}"),
            ));
        }
        for (field, v) in [
            ("cache_ttl_seconds", self.cache_ttl_seconds),
            ("negative_ttl_seconds", self.negative_ttl_seconds),
        ] {
            if v > MAX_TTL_SECONDS {
                return Err(err(field, format!("must be at most {MAX_TTL_SECONDS}")));
            }
        }
        if !(1..=MAX_CACHE_ENTRIES).contains(&self.cache_max_entries) {
            return Err(err(
                "cache_max_entries",
                format!("must be between 1 and {MAX_CACHE_ENTRIES}"),
            ));
        }
        if let Some(m) = &self.mapping {
            absolute(&m.file).map_err(|r| err("mapping.file", r))?;
            Mapping::load(Path::new(&m.file)).map_err(|e| err("mapping.file", e.to_string()))?;
        }
        if let Some(s) = &self.sqlite {
            absolute(&s.database).map_err(|r| err("sqlite.database", r))?;
            if let Some(t) = &s.document_id {
                sql::DocumentId::parse(t).map_err(|r| err("sqlite.document_id", r))?;
            }
            self.sqlite_lookup(s)
                .check()
                .map_err(|(field, reason)| err(&format!("sqlite.{field}"), reason))?;
        }
        if let Some(p) = &self.postgres {
            sql::parse_connection(&p.connection).map_err(|r| err("postgres.connection", r))?;
            sql::check_postgres_query(&p.query).map_err(|r| err("postgres.query", r))?;
            if let Some(t) = &p.document_id {
                sql::DocumentId::parse(t).map_err(|r| err("postgres.document_id", r))?;
            }
            read_password(p)?;
        }
        Ok(())
    }

    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.lookup_timeout_ms)
    }

    pub(crate) fn sqlite_lookup(&self, s: &SqliteConfig) -> sql::SqliteLookup {
        sql::SqliteLookup::new(s.database.clone().into(), s.query.clone(), self.timeout())
    }

    /// The PostgreSQL lookup, with the password read from its file.
    pub(crate) fn postgres_lookup(
        &self,
        p: &PostgresConfig,
    ) -> Result<sql::PostgresLookup, FieldError> {
        let config =
            sql::parse_connection(&p.connection).map_err(|r| err("postgres.connection", r))?;
        Ok(sql::PostgresLookup::new(
            config,
            read_password(p)?,
            p.query.clone(),
            self.timeout(),
        ))
    }
}

fn absolute(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(format!("{path:?} is not an absolute path"))
    }
}

/// The password, from a file only its owner can read (one trailing newline is ignored).
fn read_password(p: &PostgresConfig) -> Result<Option<Vec<u8>>, FieldError> {
    let Some(file) = &p.password_file else {
        return Ok(None);
    };
    let field = "postgres.password_file";
    absolute(file).map_err(|r| err(field, r))?;
    read_password_file(file)
        .map(Some)
        .map_err(|r| err(field, r))
}

/// A PostgreSQL password from a file only its owner can read (one trailing newline is
/// ignored); also the trail shipper's. Errors never quote the content.
pub fn read_password_file(file: &str) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(file)
        .map_err(|e| format!("cannot read {file}: {e}"))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{file} is readable or writable by group or others (mode {:04o}): chmod 600",
            mode & 0o7777
        ));
    }
    let mut secret = std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    if secret.last() == Some(&b'\n') {
        secret.pop();
    }
    if secret.is_empty() {
        return Err(format!("{file} is empty"));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use crate::config::Config;

    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir()
                .join(format!("vigie-ownership-cfg-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Self(d)
        }

        fn file(&self, name: &str, text: &str, mode: u32) -> String {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p.display().to_string()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const BASE: &str = "[documents]\nroots = [\"/d\"]\n";

    fn err(text: &str) -> String {
        Config::parse(text, "t").unwrap_err().to_string()
    }

    fn sqlite_db(dir: &Dir) -> String {
        let path = dir.0.join("portal.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE documents (id INTEGER PRIMARY KEY, owner TEXT);")
            .unwrap();
        path.display().to_string()
    }

    #[test]
    fn defaults_and_backend_lists() {
        let cfg = Config::parse(BASE, "t").unwrap();
        assert_eq!(cfg.ownership, super::OwnershipConfig::default());
        assert_eq!(cfg.ownership.lookup_timeout_ms, 200);
        for (text, field, why) in [
            (
                "[ownership]\nbackends = []",
                "ownership.backends",
                "at least one",
            ),
            (
                "[ownership]\nbackends = [\"templates\", \"templates\"]",
                "ownership.backends[1]",
                "twice",
            ),
            (
                "[ownership]\nbackends = [\"ldap\"]",
                "ldap",
                "unknown variant",
            ),
            (
                "[ownership]\nbackends = [\"sqlite\"]",
                "ownership.sqlite",
                "is required",
            ),
            (
                "[ownership]\nbackends = [\"postgres\"]",
                "ownership.postgres",
                "is required",
            ),
            (
                "[ownership]\nbackends = [\"mapping\"]",
                "ownership.mapping",
                "is required",
            ),
            (
                "[ownership.mapping]\nfile = \"/x\"",
                "ownership.mapping",
                "not in `ownership.backends`",
            ),
            (
                "[ownership]\nlookup_timeout_ms = 0",
                "ownership.lookup_timeout_ms",
                "between",
            ),
            (
                "[ownership]\ncache_ttl_seconds = 86401",
                "ownership.cache_ttl_seconds",
                "at most",
            ),
            (
                "[ownership]\ncache_max_entries = 0",
                "ownership.cache_max_entries",
                "between",
            ),
            ("[ownership]\ncache_size = 1", "cache_size", "unknown field"),
        ] {
            let e = err(&format!("{BASE}{text}\n"));
            assert!(e.contains(field) && e.contains(why), "{text}: {e}");
        }
        let e = err(
            "[documents]\nroots = [\"/d\"]\nowner_templates = [\"/d/{owner}/**\"]\n[ownership]\nbackends = [\"mapping\"]\n[ownership.mapping]\nfile = \"/x\"\n",
        );
        assert!(e.contains("`documents.owner_templates`"), "{e}");
    }

    #[test]
    fn mapping_file_is_read_and_checked() {
        let dir = Dir::new("mapping");
        let good = dir.file(
            "map.toml",
            "[[document]]\npath = \"/d/a\"\nowner = \"alice\"\n",
            0o644,
        );
        let cfg = |file: &str| {
            format!(
                "{BASE}[ownership]\nbackends = [\"mapping\"]\n[ownership.mapping]\nfile = \"{file}\"\n"
            )
        };
        assert!(Config::parse(&cfg(&good), "t").is_ok());
        let missing = dir.0.join("missing.toml").display().to_string();
        let e = err(&cfg(&missing));
        assert!(
            e.starts_with("invalid `ownership.mapping.file`: cannot read"),
            "{e}"
        );
        let writable = dir.file("w.toml", "", 0o666);
        assert!(err(&cfg(&writable)).contains("writable by group or others"));
        let bad = dir.file(
            "bad.toml",
            "[[document]]\npath = \"/d/a\"\nowner = \"\"\n",
            0o600,
        );
        let e = err(&cfg(&bad));
        assert!(
            e.contains("ownership.mapping.file") && e.contains("document[0].owner"),
            "{e}"
        );
        assert!(err(&cfg("relative.toml")).contains("not an absolute path"));
    }

    #[test]
    fn sqlite_database_and_query_are_checked() {
        let dir = Dir::new("sqlite");
        let db = sqlite_db(&dir);
        let cfg = |db: &str, query: &str, extra: &str| {
            format!(
                "{BASE}[ownership]\nbackends = [\"sqlite\"]\n[ownership.sqlite]\ndatabase = \"{db}\"\nquery = \"{query}\"\n{extra}"
            )
        };
        let q = "SELECT owner FROM documents WHERE id = ?1";
        let ok = Config::parse(&cfg(&db, q, "document_id = \"/d/{doc_id}.pdf\"\n"), "t").unwrap();
        // Printed (check-config) and recorded as written.
        let printed = toml::to_string(&ok).unwrap();
        assert_eq!(Config::parse(&printed, "t").unwrap(), ok);
        for (text, field) in [
            (
                cfg("/nonexistent/portal.db", q, ""),
                "ownership.sqlite.database",
            ),
            (cfg("portal.db", q, ""), "ownership.sqlite.database"),
            (
                cfg(&db, "SELECT owner FROM nope WHERE id = ?1", ""),
                "ownership.sqlite.query",
            ),
            (
                cfg(&db, "SELECT owner FROM documents", ""),
                "ownership.sqlite.query",
            ),
            (
                cfg(&db, q, "document_id = \"/d/{id}.pdf\"\n"),
                "ownership.sqlite.document_id",
            ),
        ] {
            let e = err(&text);
            assert!(e.starts_with(&format!("invalid `{field}`")), "{text}: {e}");
        }
    }

    #[test]
    fn postgres_connection_and_password_file_are_checked() {
        let dir = Dir::new("postgres");
        let password = dir.file("pw", "s3cret-password\n", 0o600);
        let cfg = |conn: &str, pw: &str, query: &str| {
            format!(
                "{BASE}[ownership]\nbackends = [\"postgres\"]\n[ownership.postgres]\nconnection = \"{conn}\"\npassword_file = \"{pw}\"\nquery = \"{query}\"\n"
            )
        };
        let conn = "host=/run/postgresql dbname=portal user=vigie";
        let q = "SELECT owner FROM documents WHERE id = $1";
        let ok = Config::parse(&cfg(conn, &password, q), "t").unwrap();
        let printed = toml::to_string(&ok).unwrap();
        assert!(
            printed.contains("password_file") && !printed.contains("s3cret"),
            "{printed}"
        );
        let readable = dir.file("pw-readable", "x", 0o640);
        let empty = dir.file("pw-empty", "\n", 0o600);
        for (text, field, why) in [
            (cfg(conn, &readable, q), "password_file", "chmod 600"),
            (cfg(conn, &empty, q), "password_file", "empty"),
            (
                cfg(conn, "/nonexistent/pw", q),
                "password_file",
                "cannot read",
            ),
            (
                cfg(
                    "host=/run/postgresql user=vigie password=hunter2",
                    &password,
                    q,
                ),
                "connection",
                "password_file",
            ),
            (cfg("dbname=portal", &password, q), "connection", "no host"),
            (
                cfg(conn, &password, "DELETE FROM documents WHERE id = $1"),
                "query",
                "SELECT",
            ),
            (
                cfg(conn, &password, "SELECT owner FROM documents"),
                "query",
                "$1",
            ),
        ] {
            let e = err(&text);
            assert!(
                e.starts_with(&format!("invalid `ownership.postgres.{field}`")) && e.contains(why),
                "{text}: {e}"
            );
            assert!(!e.contains("hunter2") && !e.contains("s3cret"), "{e}");
        }
    }
}
