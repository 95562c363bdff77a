//! `[identity.session.store]`: where the portal keeps its sessions, and how a stored session
//! names its user. The settings only; reading the store is I/O, done by the `vigie` crate
//! (`session_store`), whose answers reach the correlator as `session_found` events.
use serde::{Deserialize, Serialize};

/// `[identity.session.store]`: where the portal keeps its sessions, and how a session names its
/// user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Session files: a path with one `{id}`, e.g. `/var/lib/php/sessions/sess_{id}`.
    #[serde(default)]
    pub files: Option<String>,
    /// Redis: `redis://host:port/db` (or `redis+unix:///path`), read with `GET`.
    #[serde(default)]
    pub redis: Option<String>,
    /// The Redis key, with one `{id}`, e.g. `PHPREDIS_SESSION:{id}`.
    #[serde(default = "default_key")]
    pub key: String,
    /// How the stored session names its user.
    #[serde(default)]
    pub format: StoreFormat,
    /// `php`: the session variable; `json`: a top-level key or a JSON pointer (`/user/login`).
    #[serde(default = "default_user_key")]
    pub user_key: String,
    /// Longest a lookup may take (connection included).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

pub fn default_key() -> String {
    "{id}".to_owned()
}

pub fn default_user_key() -> String {
    "user".to_owned()
}

fn default_timeout_ms() -> u64 {
    50
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreFormat {
    /// The stored value is the user name.
    #[default]
    Plain,
    /// PHP's default session serialization: `user|s:5:"alice";...`.
    Php,
    /// A JSON object.
    Json,
}

impl StoreConfig {
    /// The field and reason of the first invalid setting.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match (&self.files, &self.redis) {
            (Some(_), Some(_)) | (None, None) => {
                return Err((
                    "files",
                    "exactly one of `files` and `redis` is required".into(),
                ));
            }
            (Some(files), None) => {
                if files.matches("{id}").count() != 1 || !files.starts_with('/') {
                    return Err(("files", "an absolute path with exactly one `{id}`".into()));
                }
            }
            (None, Some(url)) => {
                if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
                    return Err((
                        "redis",
                        format!("{url:?} is not a redis:// or redis+unix:// URL"),
                    ));
                }
                if self.key.matches("{id}").count() != 1 {
                    return Err(("key", "exactly one `{id}` is required".into()));
                }
            }
        }
        if self.user_key.is_empty() {
            return Err(("user_key", "must not be empty".into()));
        }
        if !(1..=5_000).contains(&self.timeout_ms) {
            return Err(("timeout_ms", "must be 1 to 5000".into()));
        }
        Ok(())
    }
}
