//! A `vigie run` child process, for the end-to-end tests (`tests/tests/vigie/harness`) and the
//! bench (`cargo xtask bench`): its config written where Vigie accepts it, its alerts and its
//! log in files of a working directory, started once its ready file says it attached.

use std::{
    io,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// How to start one `vigie run`.
pub struct Options<'a> {
    /// The TOML configuration.
    pub config: &'a str,
    /// `--log-level`.
    pub log_level: &'a str,
    /// More arguments (`--audit`, `--record DIR`, `--metrics-addr ADDR`, ...). Without a
    /// `--metrics-addr` nor `--no-metrics`, `--no-metrics` is added: runs side by side on one
    /// machine must not share a fixed port.
    pub args: &'a [&'a str],
    /// How long attaching may take.
    pub ready_within: Duration,
}

/// Why Vigie did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("starting vigie: {0}")]
    Io(#[from] io::Error),
    /// It exited before attaching; its log.
    #[error("vigie exited before attaching ({0}):\n{1}")]
    Exited(ExitStatus, String),
    /// It did not attach in time (it was killed); its log.
    #[error("vigie did not attach in {0:?}:\n{1}")]
    NotReady(Duration, String),
}

/// A running `vigie run`, killed on drop if still running.
pub struct VigieProcess {
    child: Child,
    alerts: PathBuf,
    stderr: PathBuf,
}

impl VigieProcess {
    /// Starts `bin` with its files in `dir` (`vigie.toml`, `alerts.jsonl`, `stderr.log`,
    /// `ready`), and waits until it has attached.
    pub fn start(bin: &Path, dir: &Path, opts: &Options<'_>) -> Result<Self, StartError> {
        let cfg = dir.join("vigie.toml");
        std::fs::write(&cfg, opts.config)?;
        // Vigie refuses a config writable by group or others.
        std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let alerts = dir.join("alerts.jsonl");
        let ready = dir.join("ready");
        let stderr = dir.join("stderr.log");
        // A directory may serve several runs in turn (the bench's): each starts afresh.
        let _ = std::fs::remove_file(&ready);
        let _ = std::fs::remove_file(&alerts);
        let metrics_chosen = opts
            .args
            .iter()
            .any(|a| a.starts_with("--metrics-addr") || *a == "--no-metrics");
        let child = Command::new(bin)
            .args(["run", "--log-level", opts.log_level, "--config"])
            .arg(&cfg)
            .arg("--alerts")
            .arg(&alerts)
            .arg("--ready-file")
            .arg(&ready)
            .args((!metrics_chosen).then_some("--no-metrics"))
            .args(opts.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()?;
        let mut v = Self {
            child,
            alerts,
            stderr,
        };
        let start = Instant::now();
        while !ready.exists() {
            if let Some(status) = v.child.try_wait()? {
                return Err(StartError::Exited(status, v.log()));
            }
            if start.elapsed() > opts.ready_within {
                v.kill();
                return Err(StartError::NotReady(opts.ready_within, v.log()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(v)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Where the alerts are written.
    pub fn alerts_path(&self) -> &Path {
        &self.alerts
    }

    /// The alerts file as written so far.
    pub fn alerts(&self) -> String {
        std::fs::read_to_string(&self.alerts).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGINT (detach, drain, judge what is open, print the summary), and its exit status.
    pub fn interrupt(&mut self) -> io::Result<ExitStatus> {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        self.child.wait()
    }

    /// SIGKILL: no detach, no drain, no flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for VigieProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
