//! The other sides of a real-server round, next to Vigie: a real auditd with a read watch on the
//! document root, a one-line bpftrace logger of the target's opens, and the floor (Vigie's own
//! hook set, read from `vigie probes --json`, with programs that only check the target), each a
//! guard that undoes what it set up when dropped. Also the kernel's BPF run statistics of the
//! programs a process attached (`bpftool`), for the floor's cost program by program.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;
use vigie_tests::process::stop_child;

/// A hook of Vigie's attach table and the program Vigie runs there.
#[derive(Debug, Clone)]
pub struct Hook {
    pub program: String,
    /// As the table spells it: `tracepoint syscalls/sys_enter_read`, `raw_tracepoint
    /// sched_process_fork`, `uprobe /usr/lib/.../libssl.so.3:SSL_read`, ...
    pub hook: String,
}

/// The hooks `vigie probes --json` reports attached on this kernel (its plan carried out and
/// checked), with the programs Vigie runs there.
pub fn vigie_hooks(vigie: &Path) -> anyhow::Result<Vec<Hook>> {
    let out = Command::new(vigie)
        .args(["probes", "--json"])
        .output()
        .context("running vigie probes --json")?;
    let table: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "vigie probes --json: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let hooks: Vec<Hook> = table["hooks"]
        .as_array()
        .context("no hooks in vigie probes --json")?
        .iter()
        .filter(|h| h["status"] == "attached")
        .filter_map(|h| {
            Some(Hook {
                program: h["program"].as_str()?.to_string(),
                hook: h["hook"].as_str()?.to_string(),
            })
        })
        .collect();
    if hooks.is_empty() {
        bail!("vigie probes --json reports no attached hook");
    }
    Ok(hooks)
}

/// The bpftrace probe for one of Vigie's hooks, or why the floor leaves it out.
fn bpftrace_probe(hook: &str) -> Result<String, String> {
    let (kind, what) = hook.split_once(' ').ok_or_else(|| hook.to_string())?;
    match kind {
        "tracepoint" => Ok(format!("tracepoint:{}", what.replacen('/', ":", 1))),
        // bpftrace 0.17 (Debian 12) has no raw tracepoints: the tracepoint of the same event,
        // found by name in tracefs, is the nearest.
        "raw_tracepoint" => {
            let system = std::fs::read_dir("/sys/kernel/tracing/events")
                .ok()
                .into_iter()
                .flatten()
                .flatten()
                .find(|d| d.path().join(what).is_dir())
                .ok_or_else(|| format!("{hook}: no tracepoint of that name in tracefs"))?;
            Ok(format!(
                "tracepoint:{}:{what}",
                system.file_name().to_string_lossy()
            ))
        }
        "uprobe" | "uretprobe" => Ok(format!("{kind}:{what}")),
        "fentry" | "fexit" => Ok(format!("{}:{what}", kind.replace("fentry", "kfunc"))),
        _ => Err(format!("{hook}: no bpftrace probe of that kind")),
    }
}

/// `/pid == a || pid == b/`: the target check, as the floor and the logger make it.
fn target_check(pids: &[u32]) -> String {
    let each: Vec<String> = pids.iter().map(|p| format!("pid == {p}")).collect();
    format!("/{}/", each.join(" || "))
}

/// The floor's bpftrace script: every hook of `hooks` with a program that only checks the
/// target; and the hooks it leaves out, with why.
pub fn floor_script(hooks: &[Hook], pids: &[u32]) -> (String, Vec<String>) {
    let check = target_check(pids);
    let (mut probes, mut left_out) = (Vec::new(), Vec::new());
    for h in hooks {
        match bpftrace_probe(&h.hook) {
            Ok(p) if !probes.contains(&p) => probes.push(p),
            Ok(_) => {}
            Err(why) => left_out.push(why),
        }
    }
    let script = probes
        .iter()
        .map(|p| format!("{p} {check} {{}}\n"))
        .collect();
    (script, left_out)
}

/// The bpftrace logger: one line per open by the target, `pid path`.
pub fn logger_script(pids: &[u32]) -> String {
    format!(
        "tracepoint:syscalls:sys_enter_openat {} {{ printf(\"%d %s\\n\", pid, str(args->filename)); }}\n",
        target_check(pids)
    )
}

/// A running bpftrace, its programs attached; stopped (SIGINT, then SIGKILL) on drop.
pub struct Bpftrace {
    child: Child,
    pub output: PathBuf,
}

impl Bpftrace {
    /// Runs `script` (written to `dir/name.bt`, its output to `dir/name.out`) and waits until
    /// `bpftool perf show` lists `probes` attachments of its own.
    pub fn start(dir: &Path, name: &str, script: &str, probes: usize) -> anyhow::Result<Bpftrace> {
        let file = dir.join(format!("{name}.bt"));
        std::fs::write(&file, script)?;
        let output = dir.join(format!("{name}.out"));
        let _ = std::fs::remove_file(&output);
        let child = Command::new("bpftrace")
            .arg("-o")
            .arg(&output)
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.err")))?)
            .spawn()
            .context("starting bpftrace (the bpftrace package)")?;
        let mut b = Bpftrace { child, output };
        let start = Instant::now();
        while attached(b.child.id()).len() < probes {
            let err = std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default();
            if let Some(st) = b.child.try_wait()? {
                bail!("bpftrace {name} exited ({st}): {err}");
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("bpftrace {name} did not attach its {probes} probes in 60 s: {err}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(b)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGINT);
    }
}

/// The perf-based attachments (tracepoints, kprobes, uprobes) of process `pid`, as `bpftool perf
/// show` lists them: program id -> hook (`tracepoint sys_enter_read`, `uprobe filename ...`).
pub fn attached(pid: u32) -> BTreeMap<u64, String> {
    let Ok(out) = Command::new("bpftool").args(["perf", "show"]).output() else {
        return BTreeMap::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // pid 31504  fd 29: prog_id 22581  tracepoint  sys_enter
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.get(1)?.parse::<u32>().ok()? == pid && w.get(4) == Some(&"prog_id")).then_some(())?;
            Some((w.get(5)?.parse().ok()?, w.get(6..)?.join(" ")))
        })
        .collect()
}

/// Run count and run time (ns) of every loaded program, by id (`bpftool prog show`; counted
/// only while `kernel.bpf_stats_enabled` is on).
pub fn run_stats() -> anyhow::Result<BTreeMap<u64, (f64, f64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool (the bpftool package)")?;
    let progs: Value = serde_json::from_slice(&out.stdout).context("bpftool prog show --json")?;
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                (
                    p["run_cnt"].as_f64().unwrap_or(0.0),
                    p["run_time_ns"].as_f64().unwrap_or(0.0),
                ),
            ))
        })
        .collect())
}

/// The floor's runs and run time (ns) per Vigie program: each floor program counted under the
/// program Vigie runs on the same hook (the TLS uprobes together, as `ssl uprobes`).
pub fn floor_by_program(
    floor_pid: u32,
    hooks: &[Hook],
) -> anyhow::Result<BTreeMap<String, (f64, f64)>> {
    let stats = run_stats()?;
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (id, hook) in attached(floor_pid) {
        // `tracepoint sys_enter_read`: the event's name is the last word.
        let program = if hook.starts_with("uprobe") || hook.starts_with("uretprobe") {
            "ssl uprobes".to_string()
        } else {
            let event = hook.rsplit(' ').next().unwrap_or("");
            hooks
                .iter()
                .find(|h| h.hook.rsplit(['/', ' ']).next() == Some(event))
                .map_or_else(|| format!("({hook})"), |h| h.program.clone())
        };
        let (runs, ns) = stats.get(&id).copied().unwrap_or_default();
        let e = out.entry(program).or_default();
        e.0 += runs;
        e.1 += ns;
    }
    Ok(out)
}

/// A real auditd (Debian's, its packaged `auditd.conf` with the log in the bench's directory,
/// and its packaged rules, `/etc/audit/audit.rules`: backlog, wait and failure mode) with a read
/// watch on the document root (`auditctl -w ROOT -p r`): what an operator deploys today for
/// access traceability. Dropping it removes the rule, stops auditd and sets the kernel's audit
/// settings back to what they were.
pub struct Auditd {
    child: Child,
    root: PathBuf,
    /// `auditctl -s` before: `enabled`, `failure`, `backlog_limit`, `backlog_wait_time`.
    before: BTreeMap<String, String>,
    pub log: PathBuf,
}

/// The packaged rules augenrules loads at boot.
const AUDIT_RULES: &str = "/etc/audit/audit.rules";

/// The kernel's audit settings the packaged rules change, and `auditctl`'s flag for each.
const AUDIT_SETTINGS: [(&str, &str); 4] = [
    ("enabled", "-e"),
    ("failure", "-f"),
    ("backlog_limit", "-b"),
    ("backlog_wait_time", "--backlog_wait_time"),
];

const AUDIT_KEY: &str = "vigie-bench";

impl Auditd {
    pub fn start(dir: &Path, root: &Path) -> anyhow::Result<Auditd> {
        // Without kernel audit support auditctl cannot talk to the kernel: say why.
        let status = Command::new("auditctl")
            .arg("-s")
            .output()
            .context("running auditctl (the auditd package)")?;
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        if !status.status.success() {
            bail!(
                "auditctl -s failed (no audit support in this kernel, or no permission): {}",
                String::from_utf8_lossy(&status.stderr).trim()
            );
        }
        let before: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(k, _)| AUDIT_SETTINGS.iter().any(|(s, _)| s == k))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        if text.lines().any(|l| l.starts_with("pid ") && l != "pid 0") {
            bail!("an auditd is already running on this host ({text}): not touching it");
        }
        // The packaged rules start with `-D` (delete all): only where there are none.
        let rules = Command::new("auditctl").arg("-l").output()?;
        if String::from_utf8_lossy(&rules.stdout).trim() != "No rules" {
            bail!(
                "audit rules are loaded on this host: not touching them ({})",
                String::from_utf8_lossy(&rules.stdout).trim()
            );
        }
        let conf_dir = dir.join("auditd");
        std::fs::create_dir_all(&conf_dir)?;
        let log = conf_dir.join("audit.log");
        let _ = std::fs::remove_file(&log);
        let packaged = std::fs::read_to_string("/etc/audit/auditd.conf")
            .context("reading /etc/audit/auditd.conf (the auditd package)")?;
        let conf: String = packaged
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("log_file") {
                    format!("log_file = {}\n", log.display())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let conf_file = conf_dir.join("auditd.conf");
        std::fs::write(&conf_file, conf)?;
        // auditd refuses a config others can write.
        std::fs::set_permissions(
            &conf_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o640),
        )?;
        let child = Command::new("auditd")
            .arg("-n")
            .arg("-c")
            .arg(&conf_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(conf_dir.join("stderr.log"))?)
            .spawn()
            .context("starting auditd")?;
        let mut a = Auditd {
            child,
            root: root.to_path_buf(),
            before,
            log,
        };
        let want = format!("pid {}", a.child.id());
        let start = Instant::now();
        loop {
            let s = Command::new("auditctl").arg("-s").output()?;
            if String::from_utf8_lossy(&s.stdout)
                .lines()
                .any(|l| l == want)
            {
                break;
            }
            if let Some(st) = a.child.try_wait()? {
                bail!(
                    "auditd exited ({st}): {}",
                    std::fs::read_to_string(conf_dir.join("stderr.log")).unwrap_or_default()
                );
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("auditd did not register with the kernel in 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = Command::new("auditctl")
            .args(["-R", AUDIT_RULES])
            .output()?;
        if !st.status.success() {
            bail!(
                "auditctl -R {AUDIT_RULES}: {}",
                String::from_utf8_lossy(&st.stderr).trim()
            );
        }
        a.rule("-w")?;
        Ok(a)
    }

    /// `auditctl -w ROOT -p r -k KEY` (add) or `-W` (remove).
    fn rule(&self, op: &str) -> anyhow::Result<()> {
        let st = Command::new("auditctl")
            .arg(op)
            .arg(&self.root)
            .args(["-p", "r", "-k", AUDIT_KEY])
            .output()?;
        if !st.status.success() {
            bail!(
                "auditctl {op} {}: {}",
                self.root.display(),
                String::from_utf8_lossy(&st.stderr).trim()
            );
        }
        Ok(())
    }

    /// SYSCALL records of the watch written so far, once auditd has caught up (the count has
    /// not moved for 300 ms; 10 s at most): it writes behind the kernel's backlog.
    pub fn records_settled(&self) -> u64 {
        let start = Instant::now();
        let mut last = self.records();
        while start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.records();
            if now == last {
                break;
            }
            last = now;
        }
        last
    }

    /// SYSCALL records of the watch written so far.
    pub fn records(&self) -> u64 {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("type=SYSCALL") && l.contains(AUDIT_KEY))
            .count() as u64
    }
}

impl Drop for Auditd {
    fn drop(&mut self) {
        let _ = self.rule("-W");
        stop_child(&mut self.child, libc::SIGTERM);
        for (setting, flag) in AUDIT_SETTINGS {
            if let Some(v) = self.before.get(setting) {
                let _ = Command::new("auditctl").args([flag, v]).output();
            }
        }
    }
}
