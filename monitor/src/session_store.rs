//! The portal's own session store, read-only: resolves a session cookie Vigie never saw bound by
//! a login (a session created before Vigie started, or on another host) to its user.
//!
//! This is I/O, so it runs live, next to the redactor (the only place the raw cookie value
//! exists), never in the correlator: what it finds becomes a `session_found` event, recorded in
//! the trace before the request that needed it, so replay needs no store.
//!
//! A cookie value is attacker-controlled: it is used as a file name or a Redis key only if it is
//! a plausible session id (letters, digits, `,`, `-` and `_`, at most 256 bytes), so a hostile
//! cookie can never make Vigie (which may read any file) open another path.
use std::{
    collections::HashMap,
    io::Read as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use monitor_core::identity::{
    store_config::{StoreConfig, StoreFormat},
    user_name,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading {path}: {error}")]
    File {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Most bytes of a stored session read.
const MAX_SESSION_BYTES: u64 = 64 * 1024;
/// How long an id the store did not know is not asked again.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);
const MAX_NEGATIVE: usize = 10_000;

pub struct SessionStore {
    cfg: StoreConfig,
    redis: Option<redis::Client>,
    conn: Option<redis::Connection>,
    /// Ids recently looked up in vain, and when.
    unknown: HashMap<Vec<u8>, Instant>,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    User(String),
    /// No such session, or one without a usable user.
    Nothing,
    /// Not a plausible session id: not looked up.
    Refused,
}

impl SessionStore {
    pub fn new(cfg: StoreConfig) -> Result<Self, StoreError> {
        let redis = cfg.redis.as_deref().map(redis::Client::open).transpose()?;
        Ok(Self {
            cfg,
            redis,
            conn: None,
            unknown: HashMap::new(),
        })
    }

    /// The user of the session whose raw cookie value is `id`.
    pub fn lookup(&mut self, id: &[u8]) -> Result<Found, StoreError> {
        let Some(id_str) = plausible_id(id) else {
            return Ok(Found::Refused);
        };
        if let Some(at) = self.unknown.get(id)
            && at.elapsed() < NEGATIVE_TTL
        {
            return Ok(Found::Nothing);
        }
        let stored = match &self.cfg.files {
            Some(template) => read_file(&PathBuf::from(template.replace("{id}", id_str)))?,
            None => self.redis_get(&self.cfg.key.replace("{id}", id_str))?,
        };
        let user = stored.and_then(|s| user_of(&s, self.cfg.format, &self.cfg.user_key));
        Ok(match user {
            Some(user) => Found::User(user),
            None => {
                if self.unknown.len() >= MAX_NEGATIVE {
                    self.unknown.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
                }
                if self.unknown.len() < MAX_NEGATIVE {
                    self.unknown.insert(id.to_vec(), Instant::now());
                }
                Found::Nothing
            }
        })
    }

    /// `GET key`, asked a second time on a new connection when the first try failed on an I/O
    /// error that is not a timeout: a signal (Vigie's own SIGINT or SIGTERM, arriving while it
    /// drains its last events) interrupts a socket read that has a timeout, which the kernel
    /// never restarts, and the session of the request being drained would be lost to it.
    fn redis_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.redis_get_once(key) {
            Err(StoreError::Redis(e)) if e.is_io_error() && !e.is_timeout() => {
                self.redis_get_once(key)
            }
            got => got,
        }
    }

    fn redis_get_once(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        if self.conn.is_none()
            && let Some(client) = &self.redis
        {
            let conn = client.get_connection_with_timeout(timeout)?;
            conn.set_read_timeout(Some(timeout))?;
            conn.set_write_timeout(Some(timeout))?;
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let got: Result<Option<Vec<u8>>, _> = redis::cmd("GET").arg(key).query(conn);
        if got.is_err() {
            // Reconnect next time: a timed-out connection may hold a late reply.
            self.conn = None;
        }
        Ok(got?)
    }
}

/// `id` as a session id worth looking up: `[A-Za-z0-9,_-]{1,256}` (PHP's alphabet, hex and
/// base64url ids all fit); never `/`, `.`, spaces or control bytes.
fn plausible_id(id: &[u8]) -> Option<&str> {
    let ok = (1..=256).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b',' | b'-' | b'_'));
    ok.then(|| std::str::from_utf8(id).ok()).flatten()
}

fn read_file(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(StoreError::File {
                path: path.to_owned(),
                error,
            });
        }
    };
    let mut bytes = Vec::new();
    file.take(MAX_SESSION_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|error| StoreError::File {
            path: path.to_owned(),
            error,
        })?;
    Ok(Some(bytes))
}

/// The user a stored session names.
pub fn user_of(stored: &[u8], format: StoreFormat, key: &str) -> Option<String> {
    match format {
        StoreFormat::Plain => user_name(stored.trim_ascii()),
        StoreFormat::Json => {
            let value: serde_json::Value = serde_json::from_slice(stored).ok()?;
            let found = if key.starts_with('/') {
                value.pointer(key)
            } else {
                value.get(key)
            };
            user_name(found?.as_str()?.as_bytes())
        }
        StoreFormat::Php => php_string(stored, key),
    }
}

/// The string variable `key` of a PHP-serialized session (`name|s:LEN:"value";...`). Only
/// top-level `|`-separated variables are looked at; the string's declared byte length is
/// trusted only if the quotes are where it says.
fn php_string(stored: &[u8], key: &str) -> Option<String> {
    let mut needle = key.as_bytes().to_vec();
    needle.extend_from_slice(b"|s:");
    let mut at = 0;
    while let Some(pos) = find(&stored[at..], &needle) {
        let start = at + pos;
        at = start + 1;
        // At the start of the session or right after a previous variable's `;` or `}`.
        if start > 0 && !matches!(stored[start - 1], b';' | b'}') {
            continue;
        }
        let rest = &stored[start + needle.len()..];
        let colon = rest.iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
        let value = rest.get(colon + 1..)?;
        if value.first() != Some(&b'"') || value.get(len + 1) != Some(&b'"') {
            return None;
        }
        return user_name(&value[1..=len]);
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(
            user_of(b" alice\n", StoreFormat::Plain, "user").as_deref(),
            Some("alice")
        );
        assert_eq!(
            user_of(br#"{"user":"bob","n":1}"#, StoreFormat::Json, "user").as_deref(),
            Some("bob")
        );
        assert_eq!(
            user_of(
                br#"{"auth":{"login":"carol"}}"#,
                StoreFormat::Json,
                "/auth/login"
            )
            .as_deref(),
            Some("carol")
        );
        let php = br#"csrf|s:4:"abcd";user|s:5:"alice";roles|a:1:{i:0;s:5:"agent";}"#;
        assert_eq!(
            user_of(php, StoreFormat::Php, "user").as_deref(),
            Some("alice")
        );
        assert_eq!(
            user_of(php, StoreFormat::Php, "csrf").as_deref(),
            Some("abcd")
        );
        // A variable whose name ends in `user` is not `user`.
        let tricky = br#"xuser|s:3:"eve";user|s:3:"bob";"#;
        assert_eq!(
            user_of(tricky, StoreFormat::Php, "user").as_deref(),
            Some("bob")
        );
        for bad in [
            &br#"user|s:9:"alice";"#[..],
            br#"user|s:-1:"a";"#,
            br#"user|s:5:alice;"#,
            br#"user|i:5;"#,
            b"",
            b"\xff\xfe",
        ] {
            assert_eq!(user_of(bad, StoreFormat::Php, "user"), None, "{bad:?}");
        }
        assert_eq!(user_of(b"{", StoreFormat::Json, "user"), None);
        assert_eq!(user_of(br#"{"user":5}"#, StoreFormat::Json, "user"), None);
        assert_eq!(user_of(b"", StoreFormat::Plain, "user"), None);
    }

    #[test]
    fn hostile_ids_are_never_looked_up() {
        for id in [
            &b"../../etc/shadow"[..],
            b"a/b",
            b"",
            b"a b",
            b"a\x00",
            &[b'a'; 300],
        ] {
            assert_eq!(plausible_id(id), None, "{id:?}");
        }
        assert_eq!(plausible_id(b"4f2a-b,c_9"), Some("4f2a-b,c_9"));
    }

    #[test]
    fn file_store_lookups() {
        let dir = std::env::temp_dir().join(format!("vigie-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("sess_abc123"), "alice").unwrap();
        let cfg = StoreConfig {
            files: Some(format!("{}/sess_{{id}}", dir.display())),
            redis: None,
            key: monitor_core::identity::store_config::default_key(),
            format: StoreFormat::Plain,
            user_key: monitor_core::identity::store_config::default_user_key(),
            timeout_ms: 50,
        };
        cfg.check().unwrap();
        let mut store = SessionStore::new(cfg).unwrap();
        assert_eq!(
            store.lookup(b"abc123").unwrap(),
            Found::User("alice".into())
        );
        assert_eq!(store.lookup(b"nope").unwrap(), Found::Nothing);
        // Remembered as unknown for a while, even once it exists.
        std::fs::write(dir.join("sess_nope"), "bob").unwrap();
        assert_eq!(store.lookup(b"nope").unwrap(), Found::Nothing);
        assert_eq!(store.lookup(b"../sess_abc123").unwrap(), Found::Refused);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_checks() {
        let base = StoreConfig {
            files: Some("/s/sess_{id}".into()),
            redis: None,
            key: monitor_core::identity::store_config::default_key(),
            format: StoreFormat::Php,
            user_key: monitor_core::identity::store_config::default_user_key(),
            timeout_ms: 50,
        };
        assert!(base.check().is_ok());
        let bad = |f: fn(&mut StoreConfig)| {
            let mut c = base.clone();
            f(&mut c);
            c.check().unwrap_err().0
        };
        assert_eq!(bad(|c| c.files = Some("sess_{id}".into())), "files");
        assert_eq!(bad(|c| c.files = Some("/s/{id}/{id}".into())), "files");
        assert_eq!(bad(|c| c.redis = Some("redis://h".into())), "files");
        assert_eq!(
            bad(|c| {
                c.files = None;
                c.redis = Some("not a url".into());
            }),
            "redis"
        );
        assert_eq!(bad(|c| c.timeout_ms = 0), "timeout_ms");
        assert_eq!(bad(|c| c.user_key = String::new()), "user_key");
    }
}
