//! The TOML configuration. A bad file refuses to start with the field and the reason: nothing
//! falls back silently.
use std::path::Path;

use monitor_core::{
    correlate::CorrelatorConfig,
    identity::IdentityConfig,
    judge::Judge,
    ownership::{OwnershipRules, PathTemplate},
    paths,
};
use serde::{Deserialize, Serialize};

/// Longest document root the kernel's prefix trie can hold (its key is 128 bytes, with the `/`).
pub const MAX_ROOT_LEN: usize = 126;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub targets: Targets,
    pub documents: Documents,
    #[serde(default)]
    pub policy: Policy,
    /// Ownership backends besides the templates (mapping file, SQLite, PostgreSQL).
    #[serde(default)]
    pub ownership: crate::ownership::config::OwnershipConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub capture: Capture,
    #[serde(default)]
    pub correlation: Correlation,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub kernel: Kernel,
    /// Reverse proxies whose forwarded headers name the client.
    #[serde(default)]
    pub clients: monitor_core::client::ClientConfig,
    /// Enumeration detection, incident grouping and the response hook.
    #[serde(default)]
    pub incidents: crate::incidents::IncidentsSection,
    /// The signed audit trail (off unless `dir` is set).
    #[serde(default)]
    pub trail: Trail,
}

/// The audit trail (`vigie.trail/1`, `docs/src/operators/trail.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Trail {
    /// Directory of the trail files (created 0700). No directory, no trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<std::path::PathBuf>,
    /// The Ed25519 secret (`vigie trail-keygen`), mode 0600, read once at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<std::path::PathBuf>,
    /// Seconds between signed checkpoints (when records wait for one): the most an intruder
    /// can cut from the end of the trail without `verify` seeing an unsigned tail.
    #[serde(default = "default_checkpoint_interval_secs")]
    pub checkpoint_interval_secs: u64,
    /// Start a new file past this size.
    #[serde(default = "default_trail_max_file_mb")]
    pub max_file_mb: u64,
    /// Delete whole files whose last record is older than this (CNIL: 6 to 12 months). None:
    /// keep everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// Pseudonymise the records shipped off the host (syslog, PostgreSQL): every `user`,
    /// `owner` and `ip` (client address) value and `shared_with` entry becomes `p:` +
    /// HMAC-SHA-256 with this key (64 hex digits, `openssl rand -hex 32`; mode 0600). The local
    /// trail keeps the names. Whoever holds the key, this host included, can re-identify by
    /// hashing candidates (see `pseudonym_recipient_file` for a way back only the DPO has);
    /// document paths and request targets are shipped as they are (docs/trail.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudonym_key_file: Option<String>,
    /// With `pseudonym_key_file`: the data-protection officer's X25519 public key (`vigie
    /// dpo-keygen` writes it as KEY.pub). Each shipped record then also carries its original
    /// names and addresses sealed to that key, which only the DPO's secret key opens (`vigie
    /// report --dpo-key`); this host cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudonym_recipient_file: Option<String>,
    /// Ship every trail record off the host to a syslog collector (RFC 5424 over TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog: Option<SyslogShipping>,
    /// Ship every trail record off the host to a PostgreSQL table partitioned by month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresShipping>,
}

/// Off-host shipping of the trail to PostgreSQL: table `vigie_trail` (created if missing),
/// partitioned by month on the record's time, one row per record, several hosts side by side
/// (one chain per host). At least once, and no duplicate rows: the table itself says where this
/// host's shipping stands, the trail files are the spool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PostgresShipping {
    /// libpq-style connection string without a password, e.g.
    /// `host=db.example.net dbname=audit user=vigie_writer`. `sslmode=require` asks for TLS
    /// with the system's certificate authorities (see `tls`); the server certificate and its
    /// name are always verified (libpq's `verify-full`).
    pub connection: String,
    /// File holding the password (refused when group or others can read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// The name this host's chain goes by in the table (default: the host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// TLS to the server (required when present): its certificate authority and a client
    /// certificate. The server's certificate is verified against the host name of `connection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ShipTls>,
}

/// TLS to a trail destination. The server's certificate is always verified (chain and name);
/// there is no switch to turn that off.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShipTls {
    /// PEM file of the certificate authorities to trust for the server's certificate (default:
    /// the system's, `/etc/ssl/certs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// PEM certificate chain to present to the server (with `client_key`), for collectors and
    /// databases that authenticate their clients by certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1), mode 0600 (refused otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

/// Off-host shipping of the trail to a syslog collector (rsyslog, syslog-ng, a SIEM's
/// receiver): RFC 5424 messages over TCP with octet-counted framing (RFC 6587), one per trail
/// record, at least once. The trail files are the spool: a record is sent from them, so what the
/// collector missed while it was down, or while Vigie was stopped, is sent when both are back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SyslogShipping {
    /// `host:port` of the collector's TCP syslog input (with `tls`: its TLS input, RFC 5425,
    /// usually port 6514; the certificate must name `host`).
    pub address: String,
    /// Plain TCP syslog has no application-level acknowledgement: records the collector's TCP
    /// acknowledged less than this many seconds before a lost connection are sent again (the
    /// collector may have held them in memory when it died). Duplicates carry the same `seq`.
    #[serde(default = "default_resend_window_secs")]
    pub resend_window_secs: u64,
    /// The SD-ID of the structured data element carrying `host` and `seq`
    /// (`name@private-enterprise-number`; the default uses the documentation number 32473 of
    /// RFC 5612: put your organisation's number here if it has one).
    #[serde(default = "default_sd_id")]
    pub sd_id: String,
    /// Syslog over TLS (RFC 5425) instead of plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ShipTls>,
}

fn default_resend_window_secs() -> u64 {
    5
}
fn default_sd_id() -> String {
    "vigie@32473".to_string()
}

fn default_checkpoint_interval_secs() -> u64 {
    60
}
fn default_trail_max_file_mb() -> u64 {
    64
}

impl Default for Trail {
    fn default() -> Self {
        Self {
            dir: None,
            key_file: None,
            checkpoint_interval_secs: default_checkpoint_interval_secs(),
            max_file_mb: default_trail_max_file_mb(),
            retention_days: None,
            pseudonym_key_file: None,
            pseudonym_recipient_file: None,
            syslog: None,
            postgres: None,
        }
    }
}

impl Trail {
    fn check(&self) -> Result<(), ConfigError> {
        if self.dir.is_some() && self.key_file.is_none() {
            return Err(invalid(
                "trail.key_file",
                "is required with `trail.dir`: checkpoints are signed",
            ));
        }
        if self.checkpoint_interval_secs == 0 {
            return Err(invalid(
                "trail.checkpoint_interval_secs",
                "must be at least 1",
            ));
        }
        if self.max_file_mb == 0 {
            return Err(invalid("trail.max_file_mb", "must be at least 1"));
        }
        if self.retention_days == Some(0) {
            return Err(invalid(
                "trail.retention_days",
                "must be at least 1 (leave it out to keep everything)",
            ));
        }
        if let Some(s) = &self.syslog {
            if s.address
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(invalid("trail.syslog.address", "must be host:port"));
            }
            let sd_ok = !s.sd_id.is_empty()
                && s.sd_id.len() <= 32
                && s.sd_id
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b'=' | b']' | b'"' | b' '));
            if !sd_ok {
                return Err(invalid(
                    "trail.syslog.sd_id",
                    "must be 1 to 32 printable ASCII characters without '=', ']', '\"' or space (RFC 5424 SD-NAME)",
                ));
            }
        }
        pseudonymiser(self).map_err(|(field, r)| invalid(field, r))?;
        if let Some(tls) = self.syslog.as_ref().and_then(|s| s.tls.as_ref()) {
            crate::sinks::ship::tls::client_config(tls)
                .map_err(|r| invalid(format!("trail.syslog.tls.{}", r.field), r.reason))?;
        }
        if let Some(p) = &self.postgres {
            crate::ownership::sql::parse_connection_tls(&p.connection)
                .map_err(|r| invalid("trail.postgres.connection", r))?;
            if let Some(tls) = &p.tls {
                crate::sinks::ship::tls::client_config(tls)
                    .map_err(|r| invalid(format!("trail.postgres.tls.{}", r.field), r.reason))?;
            }
            if let Some(file) = &p.password_file {
                crate::ownership::config::read_password_file(file)
                    .map_err(|r| invalid("trail.postgres.password_file", r))?;
            }
            if p.host.as_ref().is_some_and(|h| h.is_empty()) {
                return Err(invalid("trail.postgres.host", "must not be empty"));
            }
        }
        Ok(())
    }
}

/// Which processes to watch. Processes that start later are picked up by name (at exec) and
/// children of targets at fork.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Process ids, with their children (those running at start-up and those forked later).
    #[serde(default)]
    pub pids: Vec<u32>,
    /// Process names (`comm`, as in `ps -o comm`; the kernel keeps 15 bytes).
    #[serde(default)]
    pub names: Vec<String>,
    /// Executables (absolute paths): matched by name in the kernel, then checked against
    /// `/proc/<pid>/exe`.
    #[serde(default)]
    pub executables: Vec<String>,
}

/// Where users' documents are, and who owns them (the `templates` ownership backend).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Documents {
    /// Directories holding users' documents. Files elsewhere (libraries, the portal's database,
    /// `/etc/passwd`) are not documents and produce no events.
    pub roots: Vec<String>,
    /// Path templates with an `{owner}` segment, e.g. `/srv/portal/users/{owner}/**`.
    #[serde(default)]
    pub owner_templates: Vec<String>,
}

/// Who may read any document, and how forged credentials are judged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Principals allowed to read any document (agents, administrators).
    #[serde(default)]
    pub privileged_users: Vec<String>,
    /// Roles (from an identity source that carries roles: JWT) allowed to read any document.
    #[serde(default)]
    pub privileged_roles: Vec<String>,
    /// A document read by a request whose only credential was a forged (`alg: none`, bad
    /// signature) or expired bearer token is a `violation` (rules `forged_token`,
    /// `expired_token`) rather than `unauthenticated`.
    #[serde(default = "default_alert_forged_tokens")]
    pub alert_forged_tokens: bool,
}

fn default_alert_forged_tokens() -> bool {
    true
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            privileged_users: Vec::new(),
            privileged_roles: Vec::new(),
            alert_forged_tokens: default_alert_forged_tokens(),
        }
    }
}

/// What the probes capture of socket traffic, and what is masked before anything keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// Bytes of each socket read captured in the kernel (request heads).
    #[serde(default = "default_request_bytes")]
    pub request_bytes: u32,
    /// Bytes of each socket write captured in the kernel (response heads). Writes on HTTP/2
    /// connections are captured up to 64 KiB whatever this says: following HTTP/2 needs every
    /// frame header.
    #[serde(default = "default_response_bytes")]
    pub response_bytes: u32,
    /// Longest request head reassembled per connection, across reads: a longer one is
    /// reported (`head_too_large`) and its connection's reads are unattributed. The default
    /// covers what nginx (32 KiB), Tomcat (8 KiB) and Node (16 KiB) accept by default.
    #[serde(default = "default_max_head_bytes")]
    pub max_head_bytes: u32,
    /// Query parameters whose values are secrets, masked in every captured request target
    /// (names compared ignoring case).
    #[serde(default = "default_secret_query_parameters")]
    pub secret_query_parameters: Vec<String>,
    /// Count the writes of a response body in the kernel rather than send each (the first
    /// body write, which carries the fingerprint, is always sent): a server that writes a
    /// document in small chunks then costs a few events per response, whatever its size. Only
    /// HTTP/1 bodies of a known `Content-Length` on plain connections; chunked bodies, HTTP/2
    /// and TLS plaintext are sent write by write. Off: every write is sent, as before.
    #[serde(default = "default_true")]
    pub count_body_writes: bool,
}

fn default_secret_query_parameters() -> Vec<String> {
    monitor_core::redact::query::DEFAULT_NAMES
        .iter()
        .map(|n| n.to_string())
        .collect()
}

/// 16 KiB: a request head a server reads in one go is captured whole up to this (nginx reads
/// heads into 8 KiB buffers by default, Node into 16 KiB); larger reads (bodies, uploads) are
/// captured only this far, and bodies are skipped by their length.
fn default_request_bytes() -> u32 {
    16 * 1024
}
fn default_response_bytes() -> u32 {
    512
}
fn default_max_head_bytes() -> u32 {
    monitor_core::http::stream::DEFAULT_MAX_HEAD as u32
}

impl Default for Capture {
    fn default() -> Self {
        Self {
            request_bytes: default_request_bytes(),
            response_bytes: default_response_bytes(),
            max_head_bytes: default_max_head_bytes(),
            secret_query_parameters: default_secret_query_parameters(),
            count_body_writes: true,
        }
    }
}

/// How the correlator ties document reads to requests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Correlation {
    /// An access with no activity for this long is judged even if its request has not ended
    /// (document fds kept open by file caches, idle keep-alive connections).
    #[serde(default = "default_idle_flush_ms")]
    pub idle_flush_ms: u64,
    /// Follow the goroutines of Go targets (their events carry the goroutine id, which scopes
    /// requests instead of the thread). Off: Go targets get flow and content evidence only.
    #[serde(default = "default_true")]
    pub goroutines: bool,
}

fn default_idle_flush_ms() -> u64 {
    500
}

impl Default for Correlation {
    fn default() -> Self {
        Self {
            idle_flush_ms: default_idle_flush_ms(),
            goroutines: true,
        }
    }
}

/// The Prometheus endpoint (`/metrics`). On by default, on loopback only: the counters say
/// when Vigie was blind, which an attacker would like to know.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Serve the endpoint (`--no-metrics` turns it off for one run).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `IP:port` to listen on (no host names: nothing to resolve at start-up).
    #[serde(default = "default_metrics_addr")]
    pub addr: String,
}

fn default_true() -> bool {
    true
}
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
fn default_metrics_addr() -> String {
    DEFAULT_METRICS_ADDR.to_owned()
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            enabled: true,
            addr: default_metrics_addr(),
        }
    }
}

impl Metrics {
    /// The listen address; valid after [`Config::normalize`].
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        self.addr.parse().ok()
    }
}

/// Kernel-side resources.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Size of the ring buffer between the probes and Vigie. A burst the reader cannot drain
    /// in time is lost (and counted): raise it on busy hosts.
    #[serde(default = "default_ring_buffer_bytes")]
    pub ring_buffer_bytes: u32,
    /// Nice value of the reader (-20 to 19; 0 leaves it alone). On a host whose CPUs the portal
    /// saturates, a reader at the portal's priority waits behind it for each drain, and the
    /// alert latency grows with the load (p99 50 ms measured on 2 saturated vCPUs, 10 ms at
    /// -10). It changes when Vigie's work runs, not how much there is.
    #[serde(default = "default_reader_nice")]
    pub reader_nice: i32,
    /// How reads, writes, sendfile, accepts and closes are hooked: `auto` (BTF programs on the
    /// syscall functions where the kernel runs them, the syscall tracepoints elsewhere) or
    /// `tracepoints` (always the tracepoints: to compare both ways on one kernel).
    #[serde(default)]
    pub hooks: HookChoice,
}

/// [`Kernel::hooks`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HookChoice {
    /// BTF programs (`fexit`/`fentry` on the syscall functions) where they load and run.
    #[default]
    Auto,
    /// The syscall tracepoints, even where BTF programs would run.
    Tracepoints,
}

/// Smallest ring buffer the kernel accepts (one page on 4 KiB-page machines).
pub const MIN_RING_BUFFER_BYTES: u32 = 4096;
pub const MAX_RING_BUFFER_BYTES: u32 = 1 << 30;
fn default_ring_buffer_bytes() -> u32 {
    8 << 20
}

fn default_reader_nice() -> i32 {
    -10
}

impl Default for Kernel {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: default_ring_buffer_bytes(),
            reader_nice: default_reader_nice(),
            hooks: HookChoice::Auto,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error(
        "{path}: writable by group or others (mode {mode:04o}); anyone who can write it can blind Vigie: chmod go-w"
    )]
    Insecure { path: String, mode: u32 },
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

/// The pseudonym key of shipped trail records, from a file only its owner can read.
/// The shippers' pseudonymiser of `[trail]` (None: names shipped as they are), or the key and
/// why it is refused.
pub fn pseudonymiser(
    trail: &Trail,
) -> Result<Option<monitor_core::trail::pseudonym::Pseudonymiser>, (&'static str, String)> {
    let recipient = trail
        .pseudonym_recipient_file
        .as_deref()
        .map(|file| {
            let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
            monitor_core::trail::pseudonym::Recipient::parse(&text)
                .map_err(|e| format!("{file}: {e}"))
        })
        .transpose()
        .map_err(|r| ("trail.pseudonym_recipient_file", r))?;
    let Some(file) = &trail.pseudonym_key_file else {
        if recipient.is_some() {
            return Err((
                "trail.pseudonym_recipient_file",
                "needs `trail.pseudonym_key_file` (the key of the stable pseudonyms)".into(),
            ));
        }
        return Ok(None);
    };
    let key = read_pseudonym_key(file).map_err(|r| ("trail.pseudonym_key_file", r))?;
    Ok(Some(monitor_core::trail::pseudonym::Pseudonymiser {
        key,
        recipient,
    }))
}

pub fn read_pseudonym_key(
    file: &str,
) -> Result<monitor_core::trail::pseudonym::PseudonymKey, String> {
    let bytes = crate::ownership::config::read_password_file(file)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("{file}: not text"))?;
    monitor_core::trail::pseudonym::PseudonymKey::parse(text).map_err(|e| format!("{file}: {e}"))
}

/// Reads a key file named by the configuration (the JWT key): at most
/// [`MAX_KEY_FILE_LEN`](monitor_core::identity::jwt::MAX_KEY_FILE_LEN) bytes. Errors never quote
/// the content.
pub fn read_key_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;

    use monitor_core::identity::jwt::MAX_KEY_FILE_LEN;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(format!(
            "{} is larger than {MAX_KEY_FILE_LEN} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// The correlator's slice of the configuration, without a wall clock (see
    /// [`CorrelatorConfig::with_realtime_offset_ns`]).
    pub fn correlator(&self) -> CorrelatorConfig {
        CorrelatorConfig {
            roots: self.documents.roots.clone(),
            identity: self.identity.clone(),
            max_head: self.capture.max_head_bytes as usize,
            idle_flush_ns: self.correlation.idle_flush_ms.saturating_mul(1_000_000),
            realtime_offset_ns: None,
            // Checked by `Config::normalize`: a bad entry never gets this far.
            proxies: monitor_core::client::TrustedProxies::parse(&self.clients).unwrap_or_default(),
        }
    }

    /// The judge of this configuration's policy.
    /// The live ownership resolver: every configured backend is asked.
    pub fn resolver(&self) -> Result<crate::ownership::resolver::Resolver, ConfigError> {
        crate::ownership::resolver::Resolver::live(&self.ownership, self.ownership()?)
            .map_err(|(field, reason)| ConfigError::Invalid { field, reason })
    }

    /// The ownership resolver of a replay under this configuration, of a run recorded under
    /// `recorded` (see `Resolver::replaying`).
    pub fn replay_resolver(
        &self,
        recorded: &Config,
    ) -> Result<crate::ownership::resolver::Resolver, ConfigError> {
        crate::ownership::resolver::Resolver::replaying(
            &self.ownership,
            self.ownership()?,
            &recorded.ownership,
            self == recorded,
        )
        .map_err(|(field, reason)| ConfigError::Invalid { field, reason })
    }

    pub fn judge(&self) -> Judge {
        Judge::new(self.policy.privileged_users.iter().cloned())
            .with_privileged_roles(self.policy.privileged_roles.iter().cloned())
            .with_forged_token_alerts(self.policy.alert_forged_tokens)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use std::os::unix::fs::PermissionsExt as _;
        let read_err = |source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        };
        let mode = std::fs::metadata(path)
            .map_err(read_err)?
            .permissions()
            .mode();
        // Whoever can write the config can blind Vigie (drop a document root, make everyone
        // privileged): only its owner may.
        if mode & 0o022 != 0 {
            return Err(ConfigError::Insecure {
                path: path.display().to_string(),
                mode: mode & 0o7777,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        cfg.normalize()?;
        Ok(cfg)
    }

    /// Checks every field and puts paths in canonical form. Also used after command-line
    /// overrides.
    pub fn normalize(&mut self) -> Result<(), ConfigError> {
        if self.documents.roots.is_empty() {
            return Err(invalid(
                "documents.roots",
                "at least one document root is required",
            ));
        }
        for (i, root) in self.documents.roots.iter_mut().enumerate() {
            let field = format!("documents.roots[{i}]");
            let Some(norm) = paths::normalize(root) else {
                return Err(invalid(field, format!("{root:?} is not an absolute path")));
            };
            if norm == "/" {
                return Err(invalid(field, "`/` would make every file a document"));
            }
            if norm.len() > MAX_ROOT_LEN {
                return Err(invalid(field, format!("longer than {MAX_ROOT_LEN} bytes")));
            }
            *root = norm;
        }
        self.ownership()?;
        self.ownership
            .check(!self.documents.owner_templates.is_empty())
            .map_err(|(field, reason)| invalid(field, reason))?;
        for (i, user) in self.policy.privileged_users.iter().enumerate() {
            if !monitor_core::identity::valid_user_name(user) {
                return Err(invalid(
                    format!("policy.privileged_users[{i}]"),
                    format!("{user:?} is not a valid user name"),
                ));
            }
        }
        self.trail.check()?;
        if self.identity.sources.is_empty() {
            return Err(invalid(
                "identity.sources",
                "at least one identity source is required",
            ));
        }
        for (i, role) in self.policy.privileged_roles.iter().enumerate() {
            if !monitor_core::identity::valid_user_name(role) {
                return Err(invalid(
                    format!("policy.privileged_roles[{i}]"),
                    format!("{role:?} is not a valid role name"),
                ));
            }
        }
        let uses_jwt = self
            .identity
            .sources
            .contains(&monitor_core::identity::IdentitySource::Jwt);
        if !uses_jwt && self.identity.jwt != monitor_core::identity::JwtConfig::default() {
            return Err(invalid(
                "identity.jwt",
                "is configured but `jwt` is not in `identity.sources`",
            ));
        }
        self.identity
            .jwt
            .load_key_with(&read_key_file)
            .map_err(|e| invalid(format!("identity.jwt.{}", e.field), e.reason))?;
        let uses_session = self
            .identity
            .sources
            .contains(&monitor_core::identity::IdentitySource::Session);
        match (&self.identity.session, uses_session) {
            (None, true) => {
                return Err(invalid(
                    "identity.session",
                    "is required when `session` is in `identity.sources`",
                ));
            }
            (Some(_), false) => {
                return Err(invalid(
                    "identity.session",
                    "is configured but `session` is not in `identity.sources`",
                ));
            }
            (Some(session), true) => {
                session.check().map_err(|(field, reason)| {
                    invalid(format!("identity.session.{field}"), reason)
                })?;
                // The store's settings are checked in the core; the Redis URL by the client
                // that will use it.
                if let Some(url) = session.store.as_ref().and_then(|s| s.redis.as_deref()) {
                    redis::Client::open(url)
                        .map_err(|e| invalid("identity.session.store.redis", e.to_string()))?;
                }
            }
            (None, false) => {}
        }
        let header = &self.identity.trusted_header;
        if header.is_empty()
            || !header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "identity.trusted_header",
                format!("{header:?} is not an HTTP header name"),
            ));
        }
        let cap = monitor_common::sockets::DATA_CAP as u32;
        let read_cap = monitor_common::sockets::MAX_CAPTURE as u32;
        if !(64..=read_cap).contains(&self.capture.request_bytes) {
            return Err(invalid(
                "capture.request_bytes",
                format!("must be between 64 and {read_cap}"),
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.capture.max_head_bytes) {
            return Err(invalid(
                "capture.max_head_bytes",
                "must be between 1024 and 16777216".to_owned(),
            ));
        }
        if self.capture.response_bytes > cap {
            return Err(invalid(
                "capture.response_bytes",
                format!("must be at most {cap}"),
            ));
        }
        for (i, name) in self.capture.secret_query_parameters.iter().enumerate() {
            if name.is_empty() || name.bytes().any(|b| matches!(b, b'=' | b'&' | b';' | b'#')) {
                return Err(invalid(
                    format!("capture.secret_query_parameters[{i}]"),
                    format!("{name:?} is not a query parameter name"),
                ));
            }
        }
        for (i, name) in self.targets.names.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains('/') {
                return Err(invalid(
                    format!("targets.names[{i}]"),
                    format!("{name:?}: a process name is 1 to 15 bytes without `/`"),
                ));
            }
        }
        for (i, exe) in self.targets.executables.iter().enumerate() {
            if !exe.starts_with('/') {
                return Err(invalid(
                    format!("targets.executables[{i}]"),
                    format!("{exe:?} is not an absolute path"),
                ));
            }
        }
        monitor_core::client::TrustedProxies::parse(&self.clients)
            .map_err(|e| invalid("clients.trusted_proxies", e.to_string()))?;
        self.incidents
            .check()
            .map_err(|(field, reason)| invalid(field, reason))?;
        if self.correlation.idle_flush_ms == 0 {
            return Err(invalid("correlation.idle_flush_ms", "must be positive"));
        }
        match self.metrics.addr.parse::<std::net::SocketAddr>() {
            Err(_) => {
                return Err(invalid(
                    "metrics.addr",
                    format!(
                        "{:?} is not an IP:port address (e.g. {DEFAULT_METRICS_ADDR})",
                        self.metrics.addr
                    ),
                ));
            }
            Ok(a) if a.port() == 0 => {
                return Err(invalid("metrics.addr", "port 0 cannot be scraped"));
            }
            Ok(_) => {}
        }
        let ring = self.kernel.ring_buffer_bytes;
        if !ring.is_power_of_two()
            || !(MIN_RING_BUFFER_BYTES..=MAX_RING_BUFFER_BYTES).contains(&ring)
        {
            return Err(invalid(
                "kernel.ring_buffer_bytes",
                format!(
                    "{ring}: must be a power of two from {MIN_RING_BUFFER_BYTES} to {MAX_RING_BUFFER_BYTES}"
                ),
            ));
        }
        let nice = self.kernel.reader_nice;
        if !(-20..=19).contains(&nice) {
            return Err(invalid(
                "kernel.reader_nice",
                format!("{nice}: a nice value is from -20 to 19"),
            ));
        }
        Ok(())
    }

    /// The compiled ownership templates.
    pub fn ownership(&self) -> Result<OwnershipRules, ConfigError> {
        let mut templates = Vec::new();
        for (i, t) in self.documents.owner_templates.iter().enumerate() {
            let parsed: PathTemplate = t
                .parse()
                .map_err(|e| invalid(format!("documents.owner_templates[{i}]"), format!("{e}")))?;
            templates.push(parsed);
        }
        Ok(OwnershipRules::new(templates))
    }

    /// Process names to match at exec: configured names plus the executables' base names.
    pub fn exec_names(&self) -> Vec<String> {
        let mut names = self.targets.names.clone();
        for exe in &self.targets.executables {
            let base = exe.rsplit('/').next().unwrap_or(exe);
            let comm: String = base.chars().take(15).collect();
            if !names.contains(&comm) {
                names.push(comm);
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [targets]
        names = ["demo-portal"]
        [documents]
        roots = ["/srv/portal/users/"]
        owner_templates = ["/srv/portal/users/{owner}/**"]
        [policy]
        privileged_users = ["agent"]
    "#;

    #[test]
    fn key_files_are_read_bounded() {
        let path = std::env::temp_dir().join(format!("vigie-huge-key-{}", std::process::id()));
        std::fs::write(&path, vec![b'k'; 100 * 1024]).unwrap();
        let e = read_key_file(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(e.contains("larger"), "{e}");
        assert!(!e.contains("kkkk"), "the content is never quoted: {e}");
        assert!(read_key_file(std::path::Path::new("/nonexistent/vigie/key")).is_err());
    }

    #[test]
    fn trail_syslog_is_checked_field_by_field() {
        let with = |extra: &str| Config::parse(&format!("{GOOD}\n[trail.syslog]\n{extra}"), "test");
        let cfg = with("address = \"127.0.0.1:514\"").unwrap();
        let s = cfg.trail.syslog.unwrap();
        assert_eq!((s.resend_window_secs, s.sd_id.as_str()), (5, "vigie@32473"));
        for (bad, field) in [
            ("address = \"no-port\"", "trail.syslog.address"),
            ("address = \"h:99999\"", "trail.syslog.address"),
            ("address = \"h:1\"\nsd_id = \"a b\"", "trail.syslog.sd_id"),
            ("address = \"h:1\"\nsd_id = \"\"", "trail.syslog.sd_id"),
            (
                "address = \"h:1\"\n[trail.syslog.tls]\nca_file = \"/nonexistent/ca.pem\"",
                "trail.syslog.tls.ca_file",
            ),
            (
                "address = \"h:1\"\n[trail.syslog.tls]\nca_file = \"/etc/hostname\"",
                "trail.syslog.tls.ca_file",
            ),
            (
                "address = \"h:1\"\n[trail.syslog.tls]\nclient_key = \"/nonexistent/k.pem\"",
                "trail.syslog.tls.client_cert",
            ),
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
        assert!(
            with("address = \"h:1\"\nspool = 3").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn sealed_pseudonyms_need_the_hash_key_and_a_public_key() {
        let dir = std::env::temp_dir().join(format!("vigie-cfg-dpo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let public = dir.join("dpo.pub");
        std::fs::write(&public, format!("{}\n", "11".repeat(32))).unwrap();
        let with = |extra: &str| Config::parse(&format!("{GOOD}\n[trail]\n{extra}"), "test");
        let e = with(&format!(
            "pseudonym_recipient_file = \"{}\"",
            public.display()
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("pseudonym_key_file"), "{e}");
        std::fs::write(&public, "not hex\n").unwrap();
        let e = with(&format!(
            "pseudonym_recipient_file = \"{}\"",
            public.display()
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("trail.pseudonym_recipient_file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parses_and_normalizes() {
        let cfg = Config::parse(GOOD, "test").unwrap();
        assert_eq!(cfg.documents.roots, ["/srv/portal/users"]);
        assert_eq!(cfg.capture.request_bytes, 16 * 1024);
        assert_eq!(cfg.identity.trusted_header, "X-Remote-User");
    }

    fn err(text: &str) -> String {
        Config::parse(text, "test").unwrap_err().to_string()
    }

    #[test]
    fn bad_files_name_the_field() {
        assert!(err("[documents]\nroots = []").contains("documents.roots"));
        assert!(err("[documents]\nroots = [\"relative\"]").contains("documents.roots[0]"));
        assert!(err("[documents]\nroots = [\"/\"]").contains("documents.roots[0]"));
        let bad_tpl = "[documents]\nroots = [\"/d\"]\nowner_templates = [\"/d/x/**\"]";
        assert!(err(bad_tpl).contains("documents.owner_templates[0]"));
        assert!(
            err("[documents]\nroots = [\"/d\"]\n[capture]\nrequest_bytes = 999999")
                .contains("capture.request_bytes")
        );
        assert!(
            err("[documents]\nroots = [\"/d\"]\n[targets]\nnames = [\"a-name-longer-than-15\"]")
                .contains("targets.names[0]")
        );
        assert!(
            err("[documents]\nroots = [\"/d\"]\n[identity]\ntrusted_header = \"X Bad\"")
                .contains("identity.trusted_header")
        );
    }

    #[test]
    fn session_identity() {
        let base = "[documents]\nroots = [\"/d\"]\n";
        let ok = format!(
            "{base}[identity]\nsources = [\"session\", \"basic\"]\n[identity.session]\n\
             cookie = \"PHPSESSID\"\nlogin_path = \"/login\"\nlogout_path = \"/logout\"\n"
        );
        let cfg = Config::parse(&ok, "test").unwrap();
        let session = cfg.identity.session.as_ref().unwrap();
        assert_eq!(
            (session.user_field.as_str(), session.idle_timeout_seconds),
            ("user", 3600)
        );
        assert!(
            err(&format!("{base}[identity]\nsources = [\"session\"]\n"))
                .contains("identity.session")
        );
        assert!(err(&ok.replace("\"session\", ", "")).contains("`session` is not in"));
        assert!(
            err(&ok.replace("\"/login\"", "\"login\"")).contains("identity.session.login_path")
        );
        assert!(err(&format!("{ok}bogus = 1\n")).contains("bogus"));
    }

    #[test]
    fn jwt_identity_and_roles() {
        let dir = std::env::temp_dir().join(format!("vigie-config-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cret-for-config-test\n").unwrap();
        let base = "[documents]\nroots = [\"/d\"]\n";
        let good = format!(
            "{base}[policy]\nprivileged_roles = [\"agent\"]\n[identity]\nsources = [\"jwt\"]\n\
             [identity.jwt]\nhs256_secret_file = \"{}\"\nroles_claim = \"/realm/roles\"\n",
            secret.display()
        );
        let cfg = Config::parse(&good, "t").unwrap();
        assert_eq!(cfg.policy.privileged_roles, ["agent"]);
        assert!(cfg.policy.alert_forged_tokens);
        assert_eq!(cfg.identity.jwt.user_claim, "sub");
        assert!(cfg.identity.jwt.verifies());
        // Printed (check-config) and recorded configurations name the file, never the secret.
        let printed = toml::to_string(&cfg).unwrap();
        assert!(printed.contains("hs256_secret_file") && !printed.contains("s3cret"));
        let missing = good.replace(&secret.display().to_string(), "/nonexistent/secret");
        assert!(
            err(&missing).contains("identity.jwt.hs256_secret_file"),
            "{}",
            err(&missing)
        );
        let unused = good.replace("sources = [\"jwt\"]", "sources = [\"basic\"]");
        assert!(err(&unused).contains("`identity.jwt`"));
        let typo = format!("{good}verfy = true\n");
        assert!(err(&typo).contains("verfy"));
        let bad_role = format!("{base}[policy]\nprivileged_roles = [\"\"]\n");
        assert!(err(&bad_role).contains("policy.privileged_roles[0]"));
        let off = format!("{base}[policy]\nalert_forged_tokens = false\n");
        assert!(!Config::parse(&off, "t").unwrap().policy.alert_forged_tokens);
        let default = Config::parse(base, "t").unwrap();
        assert!(default.policy.alert_forged_tokens);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_config_writable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let path =
            std::env::temp_dir().join(format!("vigie-config-perms-{}.toml", std::process::id()));
        std::fs::write(&path, GOOD).unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o644, true),
            (0o664, false),
            (0o646, false),
            (0o666, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let got = Config::load(&path);
            assert_eq!(got.is_ok(), ok, "mode {mode:o}: {got:?}");
            if let Err(e) = got {
                assert!(e.to_string().contains("writable by group or others"), "{e}");
            }
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn unknown_fields_and_syntax_errors_are_refused() {
        assert!(err("[documents]\nroots = [\"/d\"]\nrootz = 1").contains("rootz"));
        assert!(err("[documents\n").contains("test"));
    }

    #[test]
    fn metrics_and_kernel_keys() {
        let cfg = Config::parse(GOOD, "t").unwrap();
        assert!(cfg.metrics.enabled);
        assert_eq!(cfg.metrics.addr, "127.0.0.1:9464");
        assert_eq!(cfg.kernel.ring_buffer_bytes, 8 << 20);
        assert_eq!(cfg.kernel.reader_nice, -10);
        let set = format!(
            "{GOOD}\n[metrics]\nenabled = false\naddr = \"[::1]:9000\"\n[kernel]\nring_buffer_bytes = 4096\nreader_nice = 0\n"
        );
        let cfg = Config::parse(&set, "t").unwrap();
        assert!(!cfg.metrics.enabled);
        assert_eq!(
            cfg.metrics.socket_addr(),
            Some("[::1]:9000".parse().unwrap())
        );
        assert_eq!(cfg.kernel.ring_buffer_bytes, 4096);
        assert_eq!(cfg.kernel.reader_nice, 0);
        let base = "[documents]\nroots = [\"/d\"]\n";
        for bad in ["localhost:9464", "127.0.0.1", "127.0.0.1:0"] {
            let e = err(&format!("{base}[metrics]\naddr = \"{bad}\""));
            assert!(e.starts_with("invalid `metrics.addr`"), "{bad}: {e}");
        }
        for bad in [0u64, 2048, 12288, 1 << 31] {
            let e = err(&format!("{base}[kernel]\nring_buffer_bytes = {bad}"));
            assert!(
                e.starts_with("invalid `kernel.ring_buffer_bytes`"),
                "{bad}: {e}"
            );
        }
        for bad in [-21, 20] {
            let e = err(&format!("{base}[kernel]\nreader_nice = {bad}"));
            assert!(e.starts_with("invalid `kernel.reader_nice`"), "{bad}: {e}");
        }
        assert!(err(&format!("{base}[metrics]\nport = 1")).contains("port"));
    }

    #[test]
    fn executables_add_exec_names() {
        let mut cfg = Config::parse(GOOD, "t").unwrap();
        cfg.targets.executables = vec!["/usr/local/bin/a-very-long-portal-name".into()];
        assert_eq!(cfg.exec_names(), ["demo-portal", "a-very-long-por"]);
    }
}
