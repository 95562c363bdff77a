//! `[incidents]` as the daemon reads it: the core's rules (`monitor_core::incident`), plus what
//! only a live run uses: the key file of session handles and the response webhook.
use std::path::{Path, PathBuf};

use monitor_core::{incident::IncidentConfig, redact::SessionKey};
use serde::{Deserialize, Serialize};

/// `[incidents.webhook]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host:port/path` (plain HTTP: the receiver is local, or behind a local relay).
    pub url: String,
    /// Per attempt: connect, send and read the answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts after the first one, with a doubling pause (`retry_ms`, then twice that...).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Pause before the first retry, in milliseconds; each further pause doubles.
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
    /// Incidents waiting to be sent; past this, new ones are dropped (and counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_timeout_ms() -> u64 {
    2000
}
fn default_retries() -> u32 {
    3
}
fn default_retry_ms() -> u64 {
    500
}
fn default_queue() -> usize {
    256
}

impl WebhookConfig {
    /// `(field, reason)` of the first bad setting.
    pub fn check(&self) -> Result<(), (String, String)> {
        let parsed = self
            .url
            .parse::<ureq::http::Uri>()
            .map_err(|e| ("url".to_string(), format!("{:?}: {e}", self.url)))?;
        if parsed.scheme_str() != Some("http") || parsed.host().is_none() {
            return Err((
                "url".into(),
                format!("{:?}: an http://host[:port]/path URL is required", self.url),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return Err(("timeout_ms".into(), "must be 1 to 60000".into()));
        }
        if self.retries > 10 {
            return Err(("retries".into(), "must be at most 10".into()));
        }
        if self.queue == 0 {
            return Err(("queue".into(), "must be positive".into()));
        }
        Ok(())
    }
}

/// `[incidents]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentsSection {
    /// Alerts of one user and session this close together (seconds) are one incident.
    #[serde(default = "default_window_s")]
    pub window_s: u64,
    /// Cross-user reads of many owners (`enumeration`); absent: off.
    #[serde(default = "default_enumeration")]
    pub enumeration: Option<monitor_core::incident::Rule>,
    /// Privileged reads of many owners (`privileged_bulk`); absent: off.
    #[serde(default = "default_privileged_bulk")]
    pub privileged_bulk: Option<monitor_core::incident::Rule>,
    /// Key of the cookie hashes behind session handles (32 bytes, mode 0600, created when
    /// missing). Without it the key is random per run: handles are then stable within a run
    /// (and its replay) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key_file: Option<PathBuf>,
    /// HTTP hook called once per new incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookConfig>,
}

fn default_window_s() -> u64 {
    IncidentConfig::default().window_s
}

fn default_enumeration() -> Option<monitor_core::incident::Rule> {
    IncidentConfig::default().enumeration
}

fn default_privileged_bulk() -> Option<monitor_core::incident::Rule> {
    IncidentConfig::default().privileged_bulk
}

impl Default for IncidentsSection {
    fn default() -> Self {
        let rules = IncidentConfig::default();
        Self {
            window_s: rules.window_s,
            enumeration: rules.enumeration,
            privileged_bulk: rules.privileged_bulk,
            session_key_file: None,
            webhook: None,
        }
    }
}

impl IncidentsSection {
    /// The rules the (pure) incident stage applies, live and in replay.
    #[must_use]
    pub fn rules(&self) -> IncidentConfig {
        IncidentConfig {
            window_s: self.window_s,
            enumeration: self.enumeration,
            privileged_bulk: self.privileged_bulk,
        }
    }

    /// `(field, reason)` of the first bad setting.
    pub fn check(&self) -> Result<(), (String, String)> {
        self.rules().check()?;
        if let Some(w) = &self.webhook {
            w.check()
                .map_err(|(f, r)| (format!("incidents.webhook.{f}"), r))?;
        }
        Ok(())
    }
}

/// A session key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SessionKeyError {
    #[error("session key file {0}: {1}")]
    Io(String, std::io::Error),
    #[error("session key file {0} must hold at least 32 bytes (it holds {1})")]
    Short(String, usize),
    #[error("session key file {0} is readable by group or others (mode {1:o}): make it 0600")]
    Mode(String, u32),
    #[error("no randomness for a session key: {0}")]
    Random(String),
}

/// Reads the key file, creating it (mode 0600, 32 bytes from the OS's generator) when it does
/// not exist. A file others can read is refused: with it, anyone could confirm a guessed cookie.
pub fn load_or_create_key(path: &Path) -> Result<SessionKey, SessionKeyError> {
    use std::io::Write as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let name = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(path)
                .map_err(|e| SessionKeyError::Io(name.clone(), e))?
                .mode();
            if mode & 0o077 != 0 {
                return Err(SessionKeyError::Mode(name, mode & 0o777));
            }
            let key: [u8; 32] = bytes
                .get(..32)
                .and_then(|b| b.try_into().ok())
                .ok_or(SessionKeyError::Short(name, bytes.len()))?;
            Ok(SessionKey::from_bytes(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::getrandom(&mut key).map_err(|e| SessionKeyError::Random(e.to_string()))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| SessionKeyError::Io(name.clone(), e))?;
            f.write_all(&key)
                .and_then(|()| f.sync_all())
                .map_err(|e| SessionKeyError::Io(name, e))?;
            Ok(SessionKey::from_bytes(key))
        }
        Err(e) => Err(SessionKeyError::Io(name, e)),
    }
}

/// Reads an existing key file (the analyst's side: a typo must not create a new key).
pub fn load_existing_key(path: &Path) -> Result<SessionKey, SessionKeyError> {
    if !path.exists() {
        return Err(SessionKeyError::Io(
            path.display().to_string(),
            std::io::ErrorKind::NotFound.into(),
        ));
    }
    load_or_create_key(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("vigie-key-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("session.key");
        assert!(
            load_existing_key(&path).is_err(),
            "not created by the analyst's side"
        );
        let made = load_or_create_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_existing_key(&path).unwrap();
        assert_eq!(made.cookie_hash(b"abc"), again.cookie_hash(b"abc"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_existing_key(&path),
            Err(SessionKeyError::Mode(..))
        ));
        std::fs::write(dir.join("short.key"), b"short").unwrap();
        std::fs::set_permissions(
            dir.join("short.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert!(matches!(
            load_existing_key(&dir.join("short.key")),
            Err(SessionKeyError::Short(_, 5))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_section_gives_the_core_its_rules() {
        let s: IncidentsSection = toml::from_str(
            "window_s = 60\nenumeration = { owners = 3, window_s = 30 }\n[webhook]\nurl = \"http://127.0.0.1:9/x\"\n",
        )
        .unwrap();
        assert!(s.check().is_ok());
        assert_eq!(s.rules().window_s, 60);
        assert_eq!(s.rules().enumeration.unwrap().owners, 3);
        assert_eq!(
            s.rules().privileged_bulk,
            IncidentConfig::default().privileged_bulk
        );
        let bad: IncidentsSection =
            toml::from_str("[webhook]\nurl = \"ftp://example/x\"\n").unwrap();
        assert_eq!(bad.check().unwrap_err().0, "incidents.webhook.url");
    }
}
