//! Trail records to PostgreSQL: table `vigie_trail`, partitioned by month on the record's time
//! (declarative partitioning; this month's and next month's partitions are created ahead, under
//! an advisory lock so that hosts starting together do not race), one row per record:
//! `(host, seq, time, type, line)`, the line byte for byte. Several hosts write side by side;
//! each host's rows are its own chain.
//!
//! Delivery: batches are inserted in one transaction each, in `seq` order, `ON CONFLICT DO
//! NOTHING`. At (re)connection the table says where this host's shipping stands (its highest
//! `seq`), and the shipper resumes from the trail files there: nothing lost across a restart of
//! PostgreSQL or of Vigie, and no duplicate rows.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use monitor_core::trail::pseudonym::Pseudonymiser;

use super::{Follower, Shipped, Shipper, StopClock};
use crate::config::PostgresShipping;

/// The table every host writes to.
pub const TABLE: &str = "vigie_trail";

/// Starts shipping the trail in `dir`; the password (if any) is read here.
pub fn start(
    dir: &Path,
    cfg: &PostgresShipping,
    pseudonyms: Option<Pseudonymiser>,
) -> anyhow::Result<Shipper> {
    use anyhow::Context as _;
    let config = connection(
        &cfg.connection,
        cfg.password_file.as_deref(),
        cfg.tls.as_ref(),
    )
    .context("trail.postgres.connection")?;
    let host = cfg
        .host
        .clone()
        .unwrap_or_else(crate::sinks::ocsf::hostname);
    tracing::info!(host = %host, "shipping the trail to PostgreSQL");
    let mut ship = Ship {
        dir: dir.to_path_buf(),
        config,
        host,
        months: BTreeSet::new(),
        pseudonyms,
    };
    Ok(Shipper::spawn("postgres", move |stop| ship.run(&stop))?)
}

/// How to reach the database: the client configuration, and TLS when asked for.
pub struct Database {
    config: postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl Database {
    pub fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(postgres::NoTls),
        }
    }
}

/// A client configuration from a connection string (no password in it), a password file and
/// TLS settings. TLS is used (and required) with `tls`, or with `sslmode=require` in the
/// connection string (then with the system's certificate authorities); the server's
/// certificate and name are verified either way.
pub fn connection(
    text: &str,
    password_file: Option<&str>,
    tls: Option<&crate::config::ShipTls>,
) -> anyhow::Result<Database> {
    let mut config =
        crate::ownership::sql::parse_connection_tls(text).map_err(anyhow::Error::msg)?;
    if let Some(file) = password_file {
        config.password(
            crate::ownership::config::read_password_file(file).map_err(anyhow::Error::msg)?,
        );
    }
    config
        .application_name("vigie")
        .connect_timeout(Duration::from_secs(3))
        .tcp_user_timeout(Duration::from_secs(10));
    let require = config.get_ssl_mode() == postgres::config::SslMode::Require;
    let tls = match (tls, require) {
        (Some(t), _) => Some(t.clone()),
        (None, true) => Some(crate::config::ShipTls::default()),
        (None, false) => None,
    };
    let tls = match tls {
        Some(t) => {
            let client = super::tls::client_config(&t).map_err(|e| anyhow::anyhow!("tls.{e}"))?;
            // Without TLS the server would be asked nothing (a prefer fallback to plain text
            // would defeat the point).
            config.ssl_mode(postgres::config::SslMode::Require);
            Some(tokio_postgres_rustls::MakeRustlsConnect::new(
                std::sync::Arc::unwrap_or_clone(client),
            ))
        }
        None => {
            // A server offering TLS is not asked for it: the client has no CA to check it with.
            config.ssl_mode(postgres::config::SslMode::Disable);
            None
        }
    };
    Ok(Database { config, tls })
}

struct Ship {
    dir: PathBuf,
    config: Database,
    host: String,
    /// Months whose partitions this run made sure of ("2026-12").
    months: BTreeSet<String>,
    pseudonyms: Option<Pseudonymiser>,
}

/// The time and type of a record.
#[derive(serde::Deserialize)]
struct Head {
    time: String,
    #[serde(rename = "type")]
    kind: String,
}

impl Ship {
    fn run(&mut self, stop: &AtomicBool) {
        let mut session: Option<(postgres::Client, Follower)> = None;
        let mut next_try = Instant::now();
        let mut warned = false;
        let mut stop_clock = StopClock::default();
        loop {
            let stopping = stop_clock.check(stop);
            if stopping == Some(true) {
                return;
            }
            let Some((client, follower)) = session.as_mut() else {
                if stopping.is_some() {
                    return;
                }
                if Instant::now() >= next_try {
                    match self.connect() {
                        Ok(s) => {
                            tracing::info!("PostgreSQL connected for trail shipping");
                            session = Some(s);
                            warned = false;
                            continue;
                        }
                        Err(e) => {
                            if !warned {
                                tracing::warn!(error = %e, "PostgreSQL unreachable for trail shipping: the trail keeps the records, sent when it is back");
                                warned = true;
                            }
                            next_try = Instant::now() + Duration::from_secs(1);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let batch = match follower.next_batch(500) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the trail for shipping");
                    session = None;
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if batch.is_empty() {
                if stopping.is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            if let Err(e) = self.insert(client, &batch) {
                tracing::warn!(error = %e, "PostgreSQL trail shipping failed: records not committed are sent again");
                session = None;
                warned = true;
                next_try = Instant::now() + Duration::from_secs(1);
            }
        }
    }

    /// Connects, creates the table if missing, and opens the trail where this host's rows end.
    fn connect(&mut self) -> anyhow::Result<(postgres::Client, Follower)> {
        let mut client = self.config.connect()?;
        let mut tx = client.transaction()?;
        lock(&mut tx)?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (
                host text NOT NULL,
                seq bigint NOT NULL,
                time timestamptz NOT NULL,
                type text NOT NULL,
                line text NOT NULL,
                PRIMARY KEY (host, seq, time)
            ) PARTITION BY RANGE (time)"
        ))?;
        tx.commit()?;
        self.months.clear();
        let next: i64 = client
            .query_one(
                &format!("SELECT coalesce(max(seq) + 1, 0) FROM {TABLE} WHERE host = $1"),
                &[&self.host],
            )?
            .get(0);
        let from = u64::try_from(next).unwrap_or(0);
        tracing::info!(from_seq = from, "PostgreSQL trail shipping resumes");
        Ok((client, Follower::open(&self.dir, from)?))
    }

    fn insert(&mut self, client: &mut postgres::Client, batch: &[Shipped]) -> anyhow::Result<()> {
        let mut rows = Vec::with_capacity(batch.len());
        for rec in batch {
            let head: Head = serde_json::from_slice(&rec.line)
                .map_err(|e| anyhow::anyhow!("trail record seq {}: {e}", rec.seq))?;
            let line = String::from_utf8(
                super::shipped_line(self.pseudonyms.as_ref(), &rec.line).into_owned(),
            )?;
            rows.push((i64::try_from(rec.seq)?, head, line));
        }
        let months: BTreeSet<String> = rows
            .iter()
            .filter_map(|(_, h, _)| h.time.get(..7).map(str::to_string))
            .filter(|m| !self.months.contains(m))
            .collect();
        if !months.is_empty() {
            let mut tx = client.transaction()?;
            lock(&mut tx)?;
            for m in &months {
                let this = month(m)?;
                tx.batch_execute(&partition_sql(this))?;
                // Ahead: the next month's records never wait for a partition.
                tx.batch_execute(&partition_sql(next_month(this)))?;
            }
            tx.commit()?;
            self.months.extend(months);
        }
        let mut tx = client.transaction()?;
        let stmt = tx.prepare(&format!(
            "INSERT INTO {TABLE} (host, seq, time, type, line)
             VALUES ($1, $2, $3::text::timestamptz, $4, $5) ON CONFLICT DO NOTHING"
        ))?;
        for (seq, head, line) in &rows {
            tx.execute(&stmt, &[&self.host, seq, &head.time, &head.kind, line])?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// One schema change at a time across hosts (the lock ends with the transaction).
fn lock(tx: &mut postgres::Transaction<'_>) -> Result<(), postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('vigie_trail'))", &[])
        .map(|_| ())
}

/// "2026-12" -> (2026, 12).
fn month(text: &str) -> anyhow::Result<(i32, u32)> {
    let (y, m) = text
        .split_once('-')
        .ok_or_else(|| anyhow::anyhow!("record time {text:?}"))?;
    let m: u32 = m.parse()?;
    anyhow::ensure!((1..=12).contains(&m), "record time {text:?}");
    Ok((y.parse()?, m))
}

fn next_month((y, m): (i32, u32)) -> (i32, u32) {
    if m == 12 { (y + 1, 1) } else { (y, m + 1) }
}

/// The partition of a month: `vigie_trail_y2026m12`, from its first instant (UTC) to the next
/// month's.
fn partition_sql(this: (i32, u32)) -> String {
    let (ny, nm) = next_month(this);
    let (y, m) = this;
    format!(
        "CREATE TABLE IF NOT EXISTS {TABLE}_y{y:04}m{m:02} PARTITION OF {TABLE}
         FOR VALUES FROM ('{y:04}-{m:02}-01 00:00:00+00') TO ('{ny:04}-{nm:02}-01 00:00:00+00')"
    )
}

/// One host's trail as stored in the table: its files (each starts with a `file` record) as
/// (name, bytes), in `seq` order.
#[derive(Debug)]
pub struct HostTrail {
    pub host: String,
    pub files: Vec<(String, Vec<u8>)>,
}

/// What `vigie verify --postgres` and `vigie report --from-postgres` read: `host`'s trail, or
/// every host's (None).
pub fn read_trails(config: &Database, host: Option<&str>) -> anyhow::Result<Vec<HostTrail>> {
    let mut client = config.connect()?;
    let rows = client.query(
        &format!(
            "SELECT host, type, line FROM {TABLE} WHERE $1::text IS NULL OR host = $1 ORDER BY host, seq, time"
        ),
        &[&host],
    )?;
    let mut trails: Vec<HostTrail> = Vec::new();
    for row in rows {
        let h: &str = row.get(0);
        let kind: &str = row.get(1);
        let line: &str = row.get(2);
        if trails.last().is_none_or(|t| t.host != h) {
            trails.push(HostTrail {
                host: h.to_string(),
                files: Vec::new(),
            });
        }
        let t = trails.last_mut().expect("a host");
        if kind == "file" || t.files.is_empty() {
            let name = format!("postgres:{h}#{}", t.files.len());
            t.files.push((name, Vec::new()));
        }
        let bytes = &mut t.files.last_mut().expect("a file").1;
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    Ok(trails)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monthly_partitions() {
        assert_eq!(month("2026-12").unwrap(), (2026, 12));
        assert!(month("2026-13").is_err());
        assert_eq!(next_month((2026, 12)), (2027, 1));
        let sql = partition_sql((2026, 12));
        assert!(sql.contains("vigie_trail_y2026m12"), "{sql}");
        assert!(
            sql.contains("FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')"),
            "{sql}"
        );
    }
}
