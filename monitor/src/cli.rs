//! Command line (clap derive; doc comments are the help text).
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{config::Config, run::RunOptions};

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
    /// Validate a configuration file and print it resolved; exit 1 naming the bad field.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
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
    /// Write this file once the probes are attached and the targets known.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
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
        ready_file: args.ready_file,
        duration,
    })
}
