//! A real PostgreSQL server for end-to-end tests: Debian's `postgresql` package, a fresh cluster
//! (`initdb`) in a temp dir, listening on a unix socket only, run as the unprivileged `postgres`
//! user (the server refuses to run as root). About a second to start; stopped on drop.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{TempDir, poll_until};

/// The superuser of the test cluster (trusted on the socket; tests use it to load data).
pub const ADMIN: &str = "admin";
const PORT: u16 = 5432;

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` and `postgres`.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// uid and gid of the `postgres` user (created by the package).
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: getpwnam with a NUL-terminated name; the result is read at once.
    unsafe {
        let pw = libc::getpwnam(c"postgres".as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

pub struct Postgres {
    bin: PathBuf,
    child: Option<Child>,
    /// The port (of the unix socket's name, and of TCP with TLS).
    port: u16,
    /// `-c` settings of the server (listening, TLS).
    settings: Vec<String>,
    pub socket_dir: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl Postgres {
    /// Starts a server, or `None` after a loud SKIPPED line when PostgreSQL is not installed
    /// (`cargo xtask test` installs it; `VIGIE_REQUIRE_PRIVILEGED=1` makes that a failure).
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, None)
    }

    /// [`Postgres::start`], also listening on TCP at 127.0.0.1 with TLS only (`cert` and `key`,
    /// PEM; the certificate must name `localhost`): plain-text TCP connections are rejected, and
    /// so are clients without a certificate signed by `client_ca` (`clientcert=verify-ca`).
    pub fn start_tls(test: &str, cert: &Path, key: &Path, client_ca: &Path) -> Option<Self> {
        Self::start_with(test, Some((cert, key, client_ca)))
    }

    fn start_with(test: &str, tls: Option<(&Path, &Path, &Path)>) -> Option<Self> {
        let (Some(bin), Some((uid, gid))) = (bin_dir(), postgres_user()) else {
            let msg = format!(
                "SKIPPED {test}: PostgreSQL is not installed (Debian's `postgresql`; run `cargo xtask test`)"
            );
            eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
            if std::env::var("VIGIE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
                panic!("{msg}, and VIGIE_REQUIRE_PRIVILEGED=1 turns skips into failures");
            }
            return None;
        };
        let dir = TempDir::new(&format!("{test}-pg"));
        let base = dir.path().join("pg");
        let data = base.join("data");
        let socket_dir = base.join("sock");
        let log = dir.path().join("postgres.log");
        for d in [&base, &socket_dir] {
            std::fs::create_dir_all(d).expect("creating the cluster directories");
            std::os::unix::fs::chown(d, Some(uid), Some(gid)).expect("chown to postgres");
        }
        let as_postgres = |program: &Path| {
            let mut cmd = Command::new(program);
            cmd.uid(uid)
                .gid(gid)
                .current_dir(&base)
                .stdin(Stdio::null());
            cmd
        };
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", ADMIN, "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The admin is trusted on the socket; every other role must give its password (over
        // TCP: with TLS only, and a client certificate).
        let hba = data.join("pg_hba.conf");
        std::fs::write(
            &hba,
            format!(
                "local all {ADMIN} trust\nlocal all all scram-sha-256\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n\
                 host all all 0.0.0.0/0 reject\n"
            ),
        )
        .expect("writing pg_hba.conf");
        std::os::unix::fs::chown(&hba, Some(uid), Some(gid)).expect("chown pg_hba.conf");
        let mut settings = vec!["max_connections=20".to_string()];
        let port = match tls {
            None => {
                settings.push("listen_addresses=".into());
                PORT
            }
            Some((cert, key, client_ca)) => {
                // The server reads its key only if it owns it, mode 0600.
                for (from, name) in [
                    (cert, "server.crt"),
                    (key, "server.key"),
                    (client_ca, "client-ca.crt"),
                ] {
                    let to = data.join(name);
                    std::fs::copy(from, &to).expect("copying the server's TLS files");
                    std::os::unix::fs::chown(&to, Some(uid), Some(gid)).expect("chown");
                    std::fs::set_permissions(
                        &to,
                        std::os::unix::fs::PermissionsExt::from_mode(0o600),
                    )
                    .expect("chmod");
                }
                settings.extend([
                    "listen_addresses=127.0.0.1".to_string(),
                    "ssl=on".into(),
                    "ssl_cert_file=server.crt".into(),
                    "ssl_key_file=server.key".into(),
                    "ssl_ca_file=client-ca.crt".into(),
                ]);
                super::free_port()
            }
        };
        let child = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&socket_dir)
            .args(["-p", &port.to_string(), "-F"])
            .args(settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("postgres log"))
            .spawn()
            .expect("starting postgres");
        let pg = Self {
            bin,
            child: Some(child),
            port,
            settings,
            socket_dir,
            log,
            _dir: dir,
        };
        poll_until(
            "PostgreSQL to accept connections",
            Duration::from_secs(20),
            || pg.try_psql("postgres", "SELECT 1").ok(),
            || pg.facts(),
        );
        Some(pg)
    }

    fn facts(&self) -> String {
        format!(
            "postgres log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                ADMIN,
                "-d",
                db,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `sql` as the admin in database `db`; panics with the server's message on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}\n{}", self.facts()))
    }

    /// A connection string for `user` on database `db` (no password: that goes in a file).
    pub fn connection(&self, db: &str, user: &str) -> String {
        format!(
            "host={} port={} dbname={db} user={user}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// A connection string over TCP to `localhost` (with [`Postgres::start_tls`]).
    pub fn tcp_connection(&self, db: &str, user: &str) -> String {
        format!("host=localhost port={} dbname={db} user={user}", self.port)
    }

    /// The postmaster and its children (backends run in sessions of their own: a process
    /// group signal would miss them).
    fn processes(&self) -> Vec<i32> {
        let Some(pid) = self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok()) else {
            return Vec::new();
        };
        let mut all = vec![pid];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid ...`: comm may hold spaces, the last `)` ends it.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(pid) {
                all.push(child);
            }
        }
        all
    }

    fn signal_all(&self, signal: i32) {
        for pid in self.processes() {
            // SAFETY: our own child and its children.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Freezes the server and its backends (SIGSTOP): queries hang, nothing answers.
    pub fn pause(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal_all(libc::SIGCONT);
    }

    /// Fast shutdown (SIGINT): sessions are closed, the socket goes away.
    pub fn stop(&mut self) {
        self.resume();
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let stopped = poll_until(
            "PostgreSQL to stop",
            Duration::from_secs(20),
            || child.try_wait().ok().flatten().map(|_| true),
            String::new,
        );
        assert!(stopped);
    }
}

impl Postgres {
    /// SIGKILL to the server and its backends: no shutdown, crash recovery at the next start.
    pub fn kill(&mut self) {
        self.resume();
        let processes = self.processes();
        if let Some(mut child) = self.child.take() {
            for pid in processes {
                // SAFETY: our own child and its children.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same cluster (after [`Postgres::kill`] or
    /// [`Postgres::stop`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let (uid, gid) = postgres_user().expect("the postgres user");
        let data = self.socket_dir.parent().expect("cluster base").join("data");
        let child = Command::new(self.bin.join("postgres"))
            .uid(uid)
            .gid(gid)
            .current_dir(self.socket_dir.parent().expect("cluster base"))
            .stdin(Stdio::null())
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-F"])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&self.log)
                    .expect("postgres log"),
            )
            .spawn()
            .expect("starting postgres again");
        self.child = Some(child);
        poll_until(
            "PostgreSQL to accept connections again",
            Duration::from_secs(20),
            || self.try_psql("postgres", "SELECT 1").ok(),
            || self.facts(),
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.resume();
        let processes = self.processes();
        if let Some(mut child) = self.child.take() {
            for pid in processes {
                // SAFETY: our own child and its children.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = child.wait();
        }
    }
}
