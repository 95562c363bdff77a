//! Command line (clap derive; doc comments are the help text).
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{
    config::Config,
    run::RunOptions,
    trail_files::{ReportArgs, VerifyArgs},
};

/// `--on-corrupt`: what to do with a line in the middle of a trace that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnCorruptArg {
    /// Stop with an error naming the file and line.
    Stop,
    /// Warn, count it, and go on.
    Skip,
}

impl From<OnCorruptArg> for monitor_core::trace::OnCorrupt {
    fn from(arg: OnCorruptArg) -> Self {
        match arg {
            OnCorruptArg::Stop => Self::Stop,
            OnCorruptArg::Skip => Self::Skip,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "vigie",
    version,
    about = "eBPF runtime data-access monitor: who read whose document"
)]
pub struct Cli {
    /// Log level for stderr (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch target processes and write an alert for every document read that is not allowed.
    Run(Box<RunArgs>),
    /// Replay recorded traces through the same correlator and judge: the same alerts as live,
    /// or, with --config, what a changed config would have decided.
    Replay(ReplayArgs),
    /// Validate a configuration file and print it resolved; exit 1 naming the bad field.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Print the kernel's facts (release, BTF, lockdown, active LSMs) and which program Vigie
    /// puts on which hook, and why. As root, load and attach them for real (watching nothing),
    /// check that each one runs, print what happened and detach; exit 1 if Vigie could not run.
    Probes {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Plan (and as root, attach) with these hooks for reads, writes, sendfile, accepts
        /// and closes: `auto` (BTF programs where the kernel runs them) or `tracepoints`.
        #[arg(long, value_enum, default_value = "auto")]
        hooks: crate::config::HookChoice,
    },
    /// Check an audit trail with the public key only: OK with the range covered, or the first
    /// broken place and what broke. Exit 0 intact (ends with a stop record), 1 broken, 2 could
    /// not verify (unreadable file, bad key), 3 intact but the last records are not signed yet
    /// (Vigie running, killed and not restarted, or the end after the last checkpoint cut).
    Verify(VerifyArgs),
    /// Answer questions over an audit trail (or a recorded trace, replayed: --trace): every
    /// access to a person's documents (--subject),
    /// everything an account read (--user), or every cross-user read between two times grouped
    /// by affected owner (--breach), optionally re-judged under a corrected config.
    Report(ReportArgs),
    /// Make a trail signing key: writes FILE (the secret, mode 0600) and FILE.pub (for verify).
    TrailKeygen {
        /// Where to write the secret key; must not exist.
        file: PathBuf,
    },
    /// Make the data-protection officer's key for sealed pseudonyms: writes FILE (the X25519
    /// secret, mode 0600, kept by the DPO, never on a monitored host) and FILE.pub (for
    /// `[trail] pseudonym_recipient_file` on the hosts).
    DpoKeygen {
        /// Where to write the secret key; must not exist.
        file: PathBuf,
    },
    /// Print a generated reference page of the book (`cargo xtask docs` writes them).
    #[command(hide = true)]
    Reference {
        /// Which page.
        page: crate::reference::Page,
    },
    /// Print the session handle alerts show for credentials read from stdin, one per line
    /// (never from the command line, where `ps` would show them): which of the portal's
    /// sessions an incident is, to revoke the right one.
    SessionHandle {
        /// `incidents.session_key_file` of the Vigie that wrote the alerts (for cookies).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// What the lines are: session cookie values, or bearer tokens (JWT).
        #[arg(long, value_enum, default_value = "cookie")]
        kind: CredentialKind,
    },
}

/// Credentials `vigie session-handle` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CredentialKind {
    Cookie,
    Bearer,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML configuration file (see deploy/vigie.example.toml).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Watch this process (and its children); repeatable.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Watch processes with this name, running now or started later; repeatable.
    #[arg(long = "name")]
    pub names: Vec<String>,
    /// Watch processes running this executable (absolute path); repeatable.
    #[arg(long = "exe")]
    pub executables: Vec<String>,
    /// Document root (adds to the config's); repeatable.
    #[arg(long = "root")]
    pub roots: Vec<String>,
    /// Ownership template such as `/srv/portal/users/{owner}/**` (adds to the config's).
    #[arg(long = "owner-template")]
    pub owner_templates: Vec<String>,
    /// A user allowed to read any document (adds to the config's); repeatable.
    #[arg(long = "privileged")]
    pub privileged: Vec<String>,
    /// Append alerts to this file (mode 0600) instead of stdout.
    #[arg(long)]
    pub alerts: Option<PathBuf>,
    /// Also write allowed accesses (a full audit trail), not only alerts.
    #[arg(long)]
    pub audit: bool,
    /// Alert line format: `vigie` (schema vigie.alert/1) or `ocsf` (OCSF 1.3.0 File System
    /// Activity, for SIEMs).
    #[arg(long, value_enum, default_value = "vigie")]
    pub alerts_format: crate::sinks::alerts::AlertFormat,
    /// Serve Prometheus metrics on this IP:port (overrides `[metrics] addr`; default
    /// 127.0.0.1:9464, loopback only).
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve no metrics (overrides `[metrics] enabled`).
    #[arg(long, conflicts_with = "metrics_addr")]
    pub no_metrics: bool,
    /// Write this file once the probes are attached and the targets known.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Record every event to trace files (0600) in this directory, for `vigie replay`.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// Start a new trace file past this size.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub record_max_mb: u64,
    /// Keep at most this many trace files (the oldest are deleted).
    #[arg(long, default_value_t = 16)]
    pub record_max_files: usize,
    /// Keep the signed audit trail in this directory (overrides `[trail] dir`).
    #[arg(long, value_name = "DIR")]
    pub trail: Option<PathBuf>,
    /// The trail's signing key (overrides `[trail] key_file`; mode 0600).
    #[arg(long, value_name = "FILE")]
    pub trail_key: Option<PathBuf>,
    /// How reads, writes, sendfile, accepts and closes are hooked (overrides `[kernel] hooks`):
    /// `auto` (BTF programs where the kernel runs them) or `tracepoints`.
    #[arg(long, value_enum)]
    pub hooks: Option<crate::config::HookChoice>,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Trace files, in recording order (e.g. `DIR/vigie-*.jsonl`).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Judge under this config instead of the recorded one, and list the verdicts that change.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Append alerts to this file instead of stdout.
    #[arg(long)]
    pub alerts: Option<PathBuf>,
    /// Also write allowed accesses.
    #[arg(long)]
    pub audit: bool,
    /// Only report accesses that started at or after this time (RFC 3339, UTC).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only report accesses that started before this time (RFC 3339, UTC).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only report accesses by this process; repeatable.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// A line that does not parse in the middle of a trace: stop, or skip it.
    #[arg(long, value_enum, default_value = "stop")]
    pub on_corrupt: OnCorruptArg,
    /// Print the chain of evidence behind one alert (its `access_id`) instead of the alerts.
    #[arg(long, value_name = "ACCESS_ID")]
    pub explain: Option<u64>,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

pub fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(cfg) => {
                println!(
                    "{}",
                    toml::to_string_pretty(&cfg).context("printing the config")?
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("vigie: {}: {e}", file.display());
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Probes { json, hooks } => crate::run::probes_command(json, hooks),
        Command::Verify(args) => crate::trail_files::verify_command(&args),
        Command::Report(args) => crate::trail_files::report_command(&args),
        Command::TrailKeygen { file } => crate::trail_files::keygen_command(&file),
        Command::DpoKeygen { file } => crate::trail_files::dpo_keygen_command(&file),
        Command::SessionHandle { key_file, kind } => session_handles(key_file, kind),
        Command::Reference { page } => {
            print!("{}", crate::reference::page(page)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(args) => {
            let opts = replay_options(args)?;
            let summary = crate::replay::replay(&opts)?;
            let mut err = std::io::stderr().lock();
            summary.print(&mut err)?;
            if opts.config.is_some() {
                summary.print_changes(&mut std::io::stdout().lock())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let opts = run_options(*args)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(crate::run::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `vigie session-handle`: one handle per line of stdin.
fn session_handles(key_file: Option<PathBuf>, kind: CredentialKind) -> anyhow::Result<ExitCode> {
    use std::io::BufRead as _;
    let key = match (&key_file, kind) {
        (Some(path), _) => Some(
            // Read only: an analyst's typo must not create a new key.
            crate::incidents::load_existing_key(path).context("--key-file")?,
        ),
        (None, CredentialKind::Cookie) => {
            anyhow::bail!("--key-file is required for cookies: handles are keyed hashes")
        }
        (None, CredentialKind::Bearer) => None,
    };
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        let value = line.trim();
        if value.is_empty() {
            continue;
        }
        let handle = match (kind, &key) {
            (CredentialKind::Cookie, Some(key)) => Some(
                monitor_core::identity::handle::cookie_handle(key, value.as_bytes()),
            ),
            _ => monitor_core::identity::handle::bearer_handle(value.as_bytes()),
        };
        println!("{}", handle.as_deref().unwrap_or("-"));
    }
    Ok(ExitCode::SUCCESS)
}

fn replay_options(args: ReplayArgs) -> anyhow::Result<crate::replay::ReplayOptions> {
    let time = |flag: &str, v: Option<String>| -> anyhow::Result<Option<i128>> {
        v.map(|s| {
            monitor_core::walltime::parse_rfc3339(&s).ok_or_else(|| {
                anyhow::anyhow!("--{flag} {s:?}: expected RFC 3339 UTC, e.g. 2026-11-22T16:41:26Z")
            })
        })
        .transpose()
    };
    Ok(crate::replay::ReplayOptions {
        since_ns: time("since", args.since)?,
        until_ns: time("until", args.until)?,
        files: args.files,
        config: args.config,
        alerts: args.alerts,
        audit: args.audit,
        pids: args.pids,
        on_corrupt: args.on_corrupt.into(),
        explain: args.explain,
        progress: !args.no_progress,
    })
}

fn run_options(args: RunArgs) -> anyhow::Result<RunOptions> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    cfg.targets.pids.extend(args.pids);
    cfg.targets.names.extend(args.names);
    cfg.targets.executables.extend(args.executables);
    cfg.documents.roots.extend(args.roots);
    cfg.documents.owner_templates.extend(args.owner_templates);
    cfg.policy.privileged_users.extend(args.privileged);
    if let Some(addr) = args.metrics_addr {
        cfg.metrics.addr = addr.to_string();
        cfg.metrics.enabled = true;
    }
    if args.no_metrics {
        cfg.metrics.enabled = false;
    }
    if let Some(dir) = args.trail {
        cfg.trail.dir = Some(dir);
    }
    if let Some(key) = args.trail_key {
        cfg.trail.key_file = Some(key);
    }
    if let Some(hooks) = args.hooks {
        cfg.kernel.hooks = hooks;
    }
    cfg.normalize().context("invalid configuration")?;
    if cfg.targets.pids.is_empty()
        && cfg.targets.names.is_empty()
        && cfg.targets.executables.is_empty()
    {
        anyhow::bail!("no targets: give --pid, --name or --exe, or [targets] in the config");
    }
    let duration = match args.duration {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => anyhow::bail!("--duration {s}: must be a positive number of seconds"),
        None => None,
    };
    Ok(RunOptions {
        config: cfg,
        alerts: args.alerts,
        audit: args.audit,
        alerts_format: args.alerts_format,
        ready_file: args.ready_file,
        duration,
        record: args.record.map(|dir| {
            let rotation = crate::sinks::trace::Rotation {
                max_file_bytes: args.record_max_mb.max(1) << 20,
                max_files: args.record_max_files.max(1),
            };
            (dir, rotation)
        }),
    })
}
