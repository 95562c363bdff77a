//! The trail commands' file side: `vigie verify` and `vigie trail-keygen` read and write the
//! files; the checks themselves are [`monitor_core::trail::verify`]'s.
use std::{path::Path, path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use monitor_core::trail::{
    key::{PublicKey, TrailKey},
    verify::{Report, TrailFile, Verification},
};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("query").required(true).args(["subject", "user", "breach"])))]
pub struct ReportArgs {
    /// Trail files in chain order, or a trail directory.
    #[arg(required_unless_present_any = ["from_postgres", "traces"])]
    pub trail: Vec<PathBuf>,
    /// Answer over recorded traces instead of a trail (`vigie run --record`): they are replayed
    /// through the same correlator and judge (`vigie replay --audit`) and every judged access
    /// is answered on. Trace files in recording order, of one recording.
    #[arg(
        long = "trace",
        value_name = "FILE",
        num_args = 1..,
        conflicts_with_all = ["trail", "from_postgres", "key"]
    )]
    pub traces: Vec<PathBuf>,
    /// Read the trail from PostgreSQL (`[trail.postgres]`'s table) instead of files: a
    /// connection string without a password (see --password-file).
    #[arg(long, value_name = "CONNECTION", conflicts_with = "trail")]
    pub from_postgres: Option<String>,
    /// With --from-postgres: only this host's records (default: every host).
    #[arg(long, value_name = "HOST", requires = "from_postgres")]
    pub host: Option<String>,
    /// With --from-postgres: the password, from this file (mode 0600).
    #[arg(long, value_name = "FILE", requires = "from_postgres")]
    pub password_file: Option<String>,
    /// With --from-postgres: connect over TLS, the server's certificate checked against the
    /// certificate authorities of this PEM file (`sslmode=require` in the connection string:
    /// against the system's).
    #[arg(long, value_name = "FILE", requires = "from_postgres")]
    pub ca_file: Option<String>,
    /// With --from-postgres: present this PEM certificate chain (with --client-key), to a server that
    /// authenticates its clients by certificate (`clientcert=` in `pg_hba.conf`).
    #[arg(long, value_name = "FILE", requires_all = ["from_postgres", "client_key"])]
    pub client_cert: Option<String>,
    /// The private key of --client-cert (PEM; mode 0600).
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<String>,
    /// Shipped records were pseudonymised with this key (`[trail] pseudonym_key_file`):
    /// resolve the names given by --names and those of --subject and --user.
    #[arg(long, value_name = "FILE")]
    pub pseudonym_key: Option<String>,
    /// With --pseudonym-key: the candidate names (one per line, e.g. the portal's users).
    #[arg(long, value_name = "FILE", requires = "pseudonym_key")]
    pub names: Option<PathBuf>,
    /// Shipped records carry their names sealed to the DPO's key (`[trail]
    /// pseudonym_recipient_file`): open them with this secret key (`vigie dpo-keygen`), every
    /// name and address back, no candidate list needed.
    #[arg(long, value_name = "FILE")]
    pub dpo_key: Option<String>,
    /// Every access to documents owned by this person (a right-of-access request).
    #[arg(long, value_name = "OWNER")]
    pub subject: Option<String>,
    /// Everything this account read.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Every cross-user read, grouped by affected owner (the notification list).
    #[arg(long)]
    pub breach: bool,
    /// Only accesses at or after this time (RFC 3339, UTC).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only accesses before this time (RFC 3339, UTC).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Re-judge every access under this (corrected) configuration's ownership and policy.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the trail with this public key first, and say in the report whether it holds.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,
    /// Write the report to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Table,
    Csv,
    Json,
    Html,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Trail files in chain order, or a trail directory (its `trail-*.jsonl`, in order).
    #[arg(required_unless_present = "postgres")]
    pub trail: Vec<PathBuf>,
    /// Verify a host's chain as shipped to PostgreSQL (`[trail.postgres]`'s table): a
    /// connection string without a password (see --password-file).
    #[arg(
        long,
        value_name = "CONNECTION",
        conflicts_with = "trail",
        requires = "host"
    )]
    pub postgres: Option<String>,
    /// With --postgres: the host whose chain to verify (chains are per host).
    #[arg(long, value_name = "HOST", requires = "postgres")]
    pub host: Option<String>,
    /// With --postgres: the password, from this file (mode 0600).
    #[arg(long, value_name = "FILE", requires = "postgres")]
    pub password_file: Option<String>,
    /// With --postgres: connect over TLS, the server's certificate checked against the
    /// certificate authorities of this PEM file (`sslmode=require` in the connection string:
    /// against the system's).
    #[arg(long, value_name = "FILE", requires = "postgres")]
    pub ca_file: Option<String>,
    /// With --postgres: present this PEM certificate chain (with --client-key), to a server that
    /// authenticates its clients by certificate (`clientcert=` in `pg_hba.conf`).
    #[arg(long, value_name = "FILE", requires_all = ["postgres", "client_key"])]
    pub client_cert: Option<String>,
    /// The private key of --client-cert (PEM; mode 0600).
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<String>,
    /// Shipped records were pseudonymised with this key (`[trail] pseudonym_key_file`):
    /// resolve the names given by --names (the original lines, hence the chain, come back only where every name of a record is known).
    #[arg(long, value_name = "FILE")]
    pub pseudonym_key: Option<String>,
    /// With --pseudonym-key: the candidate names (one per line, e.g. the portal's users).
    #[arg(long, value_name = "FILE", requires = "pseudonym_key")]
    pub names: Option<PathBuf>,
    /// Shipped records carry their names sealed to the DPO's key (`[trail]
    /// pseudonym_recipient_file`): open them with this secret key (`vigie dpo-keygen`), every
    /// name and address back, no candidate list needed.
    #[arg(long, value_name = "FILE")]
    pub dpo_key: Option<String>,
    /// The public key file (`vigie trail-keygen` writes it as KEY.pub).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Trail files named on the command line, directories expanded, in chain order.
pub fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let listed =
                crate::sinks::trail::list(p).with_context(|| format!("listing {}", p.display()))?;
            if listed.is_empty() {
                anyhow::bail!("{}: no trail-*.jsonl files", p.display());
            }
            files.extend(listed.into_iter().map(|(_, f)| f));
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// A trail file's bytes, mapped rather than copied: `verify` reads each byte once, and the
/// copy into the process was as long as the check itself (0.6 s of system time per 600 MB).
enum FileBytes {
    Mapped(memmap2::Mmap),
    Empty,
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Empty => &[],
        }
    }
}

fn map_file(path: &Path) -> anyhow::Result<FileBytes> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len == 0 {
        // mmap refuses a zero length.
        return Ok(FileBytes::Empty);
    }
    // SAFETY: the mapping is read-only and private. Vigie only appends to a trail file (bytes
    // past the mapped length are not seen) and retention unlinks whole files (the mapping
    // stays valid); a file truncated by someone else while `verify` runs would end it with
    // SIGBUS, never with a wrong answer.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
        .with_context(|| format!("mapping {}", path.display()))?;
    // One pass from start to end.
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(FileBytes::Mapped(map))
}

/// Reads and verifies a trail, one file mapped at a time.
pub fn verify_paths(paths: &[PathBuf], key: &PublicKey) -> anyhow::Result<Report> {
    let mut v = Verification::new(key);
    for f in expand(paths)? {
        let bytes = map_file(&f)?;
        let name = f.file_name().map_or_else(
            || f.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        if !v.file(&TrailFile {
            name,
            bytes: &bytes,
        }) {
            break;
        }
    }
    Ok(v.finish())
}

/// Verifies a trail read whole, as (name, bytes) files in chain order.
fn verify_files(files: &[(String, Vec<u8>)], key: &PublicKey) -> Report {
    let mut v = Verification::new(key);
    for (name, bytes) in files {
        if !v.file(&TrailFile {
            name: name.clone(),
            bytes,
        }) {
            break;
        }
    }
    v.finish()
}

/// The trail as shipped to PostgreSQL (`[trail.postgres]`), per host.
/// TLS to the database when any of its files is given (`sslmode=require` in the connection
/// string asks for it too, with the system's certificate authorities).
fn pg_tls(
    ca_file: &Option<String>,
    client_cert: &Option<String>,
    client_key: &Option<String>,
) -> Option<crate::config::ShipTls> {
    let tls = crate::config::ShipTls {
        ca_file: ca_file.clone(),
        client_cert: client_cert.clone(),
        client_key: client_key.clone(),
    };
    (tls != crate::config::ShipTls::default()).then_some(tls)
}

fn postgres_trails(
    connection: &str,
    password_file: Option<&str>,
    tls: Option<crate::config::ShipTls>,
    host: Option<&str>,
) -> anyhow::Result<Vec<crate::sinks::ship::postgres::HostTrail>> {
    let config = crate::sinks::ship::postgres::connection(connection, password_file, tls.as_ref())
        .context("--postgres connection")?;
    let trails = crate::sinks::ship::postgres::read_trails(&config, host)
        .context("reading the trail from PostgreSQL")?;
    if trails.is_empty() {
        anyhow::bail!(
            "no trail records in PostgreSQL{}",
            host.map(|h| format!(" for host {h:?}")).unwrap_or_default()
        );
    }
    Ok(trails)
}

/// Opens the sealed names of shipped records with the DPO's key (lines without any are left
/// as they are). A line that does not open stays pseudonymised and is counted.
fn unseal_names(files: &mut [(String, Vec<u8>)], dpo_key: Option<&str>) -> anyhow::Result<()> {
    use monitor_core::trail::pseudonym::{DpoKey, unseal_line};
    let Some(file) = dpo_key else {
        return Ok(());
    };
    let bytes = crate::ownership::config::read_password_file(file).map_err(anyhow::Error::msg)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| anyhow::anyhow!("{file}: not text"))?;
    let key = DpoKey::parse(text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let mut failed: Option<(usize, String)> = None;
    for (name, bytes) in files.iter_mut() {
        *bytes = map_lines(bytes, |line| match unseal_line(&key, line) {
            Ok(l) => l,
            Err(e) => {
                let f = failed.get_or_insert((0, format!("{name}: {e}")));
                f.0 += 1;
                line.to_vec()
            }
        });
    }
    if let Some((n, first)) = failed {
        eprintln!("vigie: {n} shipped records keep their pseudonyms; the first: {first}");
    }
    Ok(())
}

/// Each line of `bytes` through `f` (newlines kept).
fn map_lines(bytes: &[u8], mut f: impl FnMut(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        let (body, nl) = match line.strip_suffix(b"\n") {
            Some(b) => (b, true),
            None => (line, false),
        };
        out.extend_from_slice(&f(body));
        if nl {
            out.push(b'\n');
        }
    }
    out
}

/// Undoes the pseudonyms of shipped records, for the names known (`--names` and `extra`).
fn restore_names(
    files: &mut [(String, Vec<u8>)],
    key_file: Option<&str>,
    names_file: Option<&Path>,
    extra: &[&str],
) -> anyhow::Result<()> {
    use monitor_core::trail::pseudonym::{dictionary, restore_line};
    let Some(key_file) = key_file else {
        return Ok(());
    };
    let key = crate::config::read_pseudonym_key(key_file).map_err(anyhow::Error::msg)?;
    let listed = match names_file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        None => String::new(),
    };
    let names = dictionary(
        &key,
        listed
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .chain(extra.iter().copied()),
    );
    for (_, bytes) in files.iter_mut() {
        *bytes = map_lines(bytes, |line| restore_line(&names, line));
    }
    Ok(())
}

pub fn read_public_key(path: &Path) -> anyhow::Result<PublicKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    PublicKey::parse(&text).with_context(|| path.display().to_string())
}

pub fn verify_command(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let verified = read_public_key(&args.key).and_then(|k| match &args.postgres {
        // One host (--host is required): its chain.
        Some(conn) => postgres_trails(
            conn,
            args.password_file.as_deref(),
            pg_tls(&args.ca_file, &args.client_cert, &args.client_key),
            args.host.as_deref(),
        )
        .and_then(|mut trails| {
            let files = &mut trails[0].files;
            unseal_names(files, args.dpo_key.as_deref())?;
            restore_names(
                files,
                args.pseudonym_key.as_deref(),
                args.names.as_deref(),
                &[],
            )?;
            Ok(verify_files(files, &k))
        }),
        None => verify_paths(&args.trail, &k),
    });
    let report = match verified {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vigie verify: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(ExitCode::from(report.outcome.exit_code()))
}

pub fn keygen_command(file: &Path) -> anyhow::Result<ExitCode> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = TrailKey::from_seed(seed);
    let public = PathBuf::from(format!("{}.pub", file.display()));
    let write = |path: &Path, mode: u32, text: &str| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    };
    write(file, 0o600, &key.to_file_text())?;
    write(&public, 0o644, &key.public().to_file_text())?;
    println!(
        "key id {}: secret in {} (0600, for [trail] key_file), public key in {} (for vigie verify)",
        key.key_id(),
        file.display(),
        public.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Replays `traces` (`vigie replay --audit`: every judged access, allowed ones included) and
/// hands each access, as an alert line, to `take`. The alerts go through a private temporary
/// file, read back line by line.
fn replayed_accesses(traces: &[PathBuf], take: &mut dyn FnMut(&[u8])) -> anyhow::Result<()> {
    use std::{io::BufRead as _, os::unix::fs::OpenOptionsExt as _};
    let mut name = [0u8; 8];
    getrandom::getrandom(&mut name).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let path = std::env::temp_dir().join(format!("vigie-report-{}.jsonl", hex::encode(name)));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    // Removed however the replay ends.
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _remove = Remove(&path);
    crate::replay::replay(&crate::replay::ReplayOptions {
        files: traces.to_vec(),
        config: None,
        alerts: Some(path.clone()),
        audit: true,
        since_ns: None,
        until_ns: None,
        pids: Vec::new(),
        on_corrupt: monitor_core::trace::OnCorrupt::Stop,
        explain: None,
        progress: false,
    })
    .context("replaying the traces")?;
    let mut reader = std::io::BufReader::new(
        std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?,
    );
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        if !body.is_empty() {
            take(body);
        }
    }
}

pub fn dpo_keygen_command(file: &Path) -> anyhow::Result<ExitCode> {
    use monitor_core::trail::pseudonym::DpoKey;
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = DpoKey::from_bytes(seed);
    let public = PathBuf::from(format!("{}.pub", file.display()));
    for (path, mode, text) in [
        (file, 0o600, key.to_file_text()),
        (public.as_path(), 0o644, key.recipient().to_file_text()),
    ] {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "DPO key: secret in {} (0600: keep it with the data-protection officer, off the hosts; for vigie report/verify --dpo-key), public key in {} (for [trail] pseudonym_recipient_file)",
        file.display(),
        public.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A bound given on the command line, in the records' own fixed-width form (so that times
/// compare as strings).
fn bound(flag: &str, v: Option<&String>) -> anyhow::Result<Option<String>> {
    v.map(|s| {
        monitor_core::walltime::parse_rfc3339(s)
            .map(monitor_core::walltime::rfc3339)
            .ok_or_else(|| {
                anyhow::anyhow!("--{flag} {s:?}: expected RFC 3339 UTC, e.g. 2026-11-22T16:41:26Z")
            })
    })
    .transpose()
}

pub fn report_command(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    use monitor_core::trail::report::{self, Query, Window};
    let window = Window {
        since: bound("since", args.since.as_ref())?,
        until: bound("until", args.until.as_ref())?,
    };
    let query = match (&args.subject, &args.user) {
        (Some(s), _) => Query::Subject(s.clone()),
        (_, Some(u)) => Query::User(u.clone()),
        _ => Query::Breach,
    };
    let mut shipped = args
        .from_postgres
        .as_ref()
        .map(|conn| {
            postgres_trails(
                conn,
                args.password_file.as_deref(),
                pg_tls(&args.ca_file, &args.client_cert, &args.client_key),
                args.host.as_deref(),
            )
        })
        .transpose()?;
    let asked: Vec<&str> = [args.subject.as_deref(), args.user.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    for t in shipped.iter_mut().flatten() {
        unseal_names(&mut t.files, args.dpo_key.as_deref())?;
        restore_names(
            &mut t.files,
            args.pseudonym_key.as_deref(),
            args.names.as_deref(),
            &asked,
        )?;
    }
    let first_line = |r: Report| r.to_string().lines().next().unwrap_or_default().to_string();
    let integrity = match (&args.key, &shipped) {
        (None, _) if !args.traces.is_empty() => {
            "replayed from traces (traces are not signed: no integrity check)".to_string()
        }
        (None, _) => "not verified (no --key given)".to_string(),
        // Chains are per host: one verification each.
        (Some(key), Some(trails)) => {
            let key = read_public_key(key)?;
            trails
                .iter()
                .map(|t| format!("{}: {}", t.host, first_line(verify_files(&t.files, &key))))
                .collect::<Vec<_>>()
                .join("; ")
        }
        (Some(key), None) => first_line(verify_paths(&args.trail, &read_public_key(key)?)?),
    };
    // Records are kept as they are read, only those the answer may hold: a trail file is
    // read line by line, never whole.
    let mut records = Vec::new();
    let mut unreadable = 0u64;
    let rejudged = args.config.is_some();
    let from_traces = !args.traces.is_empty();
    let mut take = |line: &[u8]| {
        if line.is_empty() {
            return;
        }
        // Replayed accesses come as alert lines (no chain link), trail lines as records.
        let parsed = if from_traces {
            report::replayed_access(line)
        } else {
            report::access_record(line)
        };
        match parsed {
            Ok(Some(r)) if report::may_keep(&r, &query, &window, rejudged) => records.push(r),
            Ok(_) => {}
            Err(report::Unreadable) => unreadable += 1,
        }
    };
    match shipped {
        Some(trails) => {
            for (_, bytes) in trails.iter().flat_map(|t| &t.files) {
                bytes.split(|b| *b == b'\n').for_each(&mut take);
            }
        }
        None if from_traces => replayed_accesses(&args.traces, &mut take)?,
        None => {
            use std::io::BufRead as _;
            for f in expand(&args.trail)? {
                let file =
                    std::fs::File::open(&f).with_context(|| format!("reading {}", f.display()))?;
                let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    let n = reader
                        .read_until(b'\n', &mut line)
                        .with_context(|| format!("reading {}", f.display()))?;
                    if n == 0 {
                        break;
                    }
                    take(line.strip_suffix(b"\n").unwrap_or(&line));
                }
            }
        }
    }
    if unreadable > 0 {
        eprintln!("vigie report: {unreadable} unreadable lines skipped");
    }
    let rejudge = args
        .config
        .as_ref()
        .map(|path| Rejudge::new(path))
        .transpose()?;
    let rejudge_fn = rejudge
        .as_ref()
        .map(|r| move |a: &monitor_core::trail::record::AccessRecord| r.judge(a));
    let answer = report::answer(
        &records,
        &query,
        &window,
        rejudge_fn.as_ref().map(|f| f as &dyn Fn(&_) -> _),
        integrity,
    );
    let text = match args.format {
        ReportFormat::Table => report::table(&answer),
        ReportFormat::Csv => report::csv(&answer)?,
        ReportFormat::Json => format!("{}\n", serde_json::to_string_pretty(&answer)?),
        ReportFormat::Html => report::html(&answer),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Judges recorded accesses again under a corrected configuration (its ownership backends and
/// privileged users), as the live judge would have.
struct Rejudge {
    judge: monitor_core::judge::Judge,
    resolver: std::cell::RefCell<crate::ownership::resolver::Resolver>,
}

impl Rejudge {
    fn new(path: &Path) -> anyhow::Result<Self> {
        let cfg = crate::config::Config::load(path)?;
        let mut resolver = cfg.resolver()?;
        resolver.start(std::time::Duration::from_secs(5))?;
        Ok(Self {
            judge: cfg.judge(),
            resolver: std::cell::RefCell::new(resolver),
        })
    }

    fn judge(&self, a: &monitor_core::trail::record::AccessRecord) -> (String, Option<String>) {
        use monitor_core::{
            correlate::{Access, RequestInfo},
            identity::{Identity, IdentitySource},
        };
        let request = a.request.as_ref().map(|q| RequestInfo {
            id: a.access_id,
            method: q.method.clone(),
            target: q.target.clone(),
            identity: a.user.as_ref().map(|u| Identity {
                user: u.clone(),
                source: a.identity_source.unwrap_or(IdentitySource::TrustedHeader),
                roles: q
                    .identity
                    .as_ref()
                    .map(|i| i.roles.clone())
                    .unwrap_or_default(),
            }),
            identity_problem: None,
            head_truncated: false,
            status: None,
            tid: 0,
            fd: 0,
            ts_ns: 0,
            peer: None,
            client: None,
            session: None,
        });
        // Only what the judge reads: who, which document, and whether a request was in scope.
        // An access recorded unattributed or unauthenticated stays so.
        if request.is_none() || a.user.is_none() {
            return (a.verdict.clone(), a.owner.clone());
        }
        let access = Access {
            id: a.access_id,
            pid: a.pid,
            tid: 0,
            comm: a.comm.as_str().into(),
            document: a.document.clone(),
            bytes: a.bytes,
            first_ts_ns: 0,
            last_ts_ns: 0,
            evidence: Vec::new(),
            unattributed: None,
            request,
        };
        let ownership = self.resolver.borrow_mut().resolve(
            &access.document,
            std::time::Instant::now(),
            &mut Vec::new(),
        );
        let j = self.judge.judge(&access, ownership);
        (j.verdict.as_str().to_string(), j.owner)
    }
}
