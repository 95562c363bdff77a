//! `cargo xtask vm-test`: the privileged end-to-end suite on other kernels. Debian's 6.1 and 6.12
//! kernels (from apt, cached under `target/vm/kernels`) boot in QEMU with software emulation
//! (`-accel tcg`: this machine's KVM cannot boot stock kernels) from one initramfs that holds
//! the test binary, `vigie`, the demo portal, their shared libraries, a static busybox and an
//! `/init` that mounts what Vigie needs, runs `vigie probes` and each row's test modules, prints
//! machine-readable result lines and powers off. The rows boot side by side, one lane per CPU
//! ([`lanes`]). Each boot's console goes to `target/vm/logs/<row>.log`; a table sums the matrix
//! up, and any failed row fails the task.
mod cpio;
pub mod measure;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{Binaries, step, workspace_root};

/// The integration test binary (`tests/tests/vigie`), packed into the initramfs.
const TEST_BINARY: &str = "vigie";
/// Its modules run in the VMs, one after the other (each by the exact names of its tests).
/// `prometheus` needs Prometheus and Alertmanager, and one test of `sessions` a Redis server,
/// which the initramfs does not hold; `portal_process` tests the portal alone (no probes);
/// `faults` opens 10,000 connections, too slow under emulation: they stay with the native run.
/// `adversarial` runs nginx itself: the initramfs holds it (see [`VM_TOOLS`]).
const FULL: &[&str] = &[
    "e2e",
    "jwt",
    "replay",
    "kernel",
    "hooks",
    "concurrency",
    "paths",
    "go",
    "adversarial",
];
/// Programs of this machine the tests in the VMs run, packed with their shared libraries (nginx
/// for `adversarial` and the HTTPS test, curl and openssl for the latter, installed by `cargo
/// xtask setup`), and the accounts they switch to.
const VM_TOOLS: &[&str] = &["/usr/sbin/nginx", "/usr/bin/curl", "/usr/bin/openssl"];
/// Files the tools read: `openssl req` wants its configuration.
const VM_FILES: &[(&str, &str)] = &[
    ("/usr/lib/ssl/openssl.cnf", "/etc/ssl/openssl.cnf"),
    ("/etc/ssl/openssl.cnf", "/etc/ssl/openssl.cnf"),
];
const VM_PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const VM_GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
/// `FULL` and the Node.js tests (`node`: Node.js at `/bin/node`, the Express portal with its
/// `node_modules`), on one row only: V8 under software emulation needs minutes for them, and one
/// kernel older than this machine's is what shows libuv's I/O is seen there too.
const FULL_NODE: &[&str] = &[
    "e2e",
    "jwt",
    "replay",
    "kernel",
    "hooks",
    "concurrency",
    "paths",
    "go",
    "node",
    "adversarial",
];
/// The 6.1 row, whose kernel runs about three times slower under emulation than 6.12's: what
/// depends on the kernel (the probes' captures, the attach report, goroutine ids read through
/// the thread's fsbase, nginx's vectored and chunked I/O, thread scope). `jwt` and `replay` are
/// userspace logic on the same events (they run natively and on the 6.12 row); `paths` runs on
/// 6.1 in the `6.1-integrity-nobpflsm` row (with fentry, the way that row differs) and on 6.12.
/// Keeps `.ci/run` under its 45 minutes (with the rows side by side, see [`lanes`]: this row is
/// the longest lane).
/// One HTTPS test there (nginx over TLS, its libssl hooked with classic uprobes, which only
/// kernels before 6.6 use); the other TLS tests need python3, which the initramfs does not
/// hold (its standard library is 54 MB).
const OLDEST: &[&str] = &[
    "e2e",
    "kernel",
    "hooks",
    "concurrency",
    "go",
    "adversarial",
    "tls::https_nginx_http1_cross_user_reads_exact_alerts_and_replay",
];
/// The start-up report only: facts, attach table, fire check (or the refusal).
const REPORT: &[&str] = &["kernel"];
/// The report, and the tests that tell exact open paths from paths as written.
const FENTRY: &[&str] = &["kernel", "paths"];

/// A Debian kernel line: the newest `linux-image-<prefix><n><suffix>` that apt offers.
#[derive(Clone, Copy)]
struct Series {
    name: &'static str,
    prefix: &'static str,
    suffix: &'static str,
}

const DEBIAN_6_1: Series = Series {
    name: "6.1",
    prefix: "linux-image-6.1.0-",
    suffix: "-amd64-unsigned",
};
const DEBIAN_6_12: Series = Series {
    name: "6.12",
    prefix: "linux-image-6.12.",
    suffix: "+deb12-amd64-unsigned",
};

/// One boot of the matrix.
struct Row {
    id: &'static str,
    series: Series,
    /// Extra kernel command line.
    cmdline: &'static str,
    tests: &'static [&'static str],
    /// The program that must give open paths there (the `kernel` tests check it).
    opens: &'static str,
    /// About how long the row takes in CI, to spread the rows over the lanes (see [`lanes`]).
    seconds: u32,
}

const MATRIX: &[Row] = &[
    Row {
        id: "6.1",
        series: DEBIAN_6_1,
        cmdline: "",
        tests: OLDEST,
        opens: "lsm_file_open",
        seconds: 540,
    },
    Row {
        id: "6.12",
        series: DEBIAN_6_12,
        cmdline: "",
        tests: FULL_NODE,
        opens: "lsm_file_open",
        seconds: 490,
    },
    // Secure Boot's lockdown mode, and a kernel built with the BPF LSM that does not run it:
    // the facts must say so, the LSM program must not be trusted (nor, attached anyway, pass
    // the fire check), and opens come through fentry instead.
    Row {
        id: "6.1-integrity-nobpflsm",
        series: DEBIAN_6_1,
        cmdline: "lockdown=integrity lsm=lockdown,capability,landlock,yama",
        tests: FENTRY,
        opens: "fentry_file_open",
        seconds: 120,
    },
    // Vigie must refuse, saying why (tracefs and kernel reads are closed).
    Row {
        id: "6.12-confidentiality",
        series: DEBIAN_6_12,
        cmdline: "lockdown=confidentiality",
        tests: REPORT,
        opens: "",
        seconds: 10,
    },
];

/// Deadlines inside the tests stretch by this much under emulation (`VIGIE_TEST_TIME_SCALE`).
const TIME_SCALE: u32 = 3;

#[derive(clap::Args)]
pub struct VmArgs {
    /// Only these rows of the matrix (repeatable): 6.1, 6.12, 6.1-integrity-nobpflsm,
    /// 6.12-confidentiality, host.
    #[arg(long)]
    pub only: Vec<String>,
    /// Give up on a boot after this many seconds (a FULL row runs e2e, the Go and adversarial
    /// suites and more under software emulation: several minutes).
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// A test name filter for the tests in the VMs (within each row's modules).
    #[arg(long)]
    pub filter: Option<String>,
}

impl VmArgs {
    /// Refuses an unknown `--only` row before anything is built.
    pub fn check(&self) -> anyhow::Result<()> {
        for o in &self.only {
            if o != "host" && !MATRIX.iter().any(|r| r.id == o) {
                let ids: Vec<&str> = MATRIX.iter().map(|r| r.id).chain(["host"]).collect();
                bail!("--only {o}: no such row (rows: {})", ids.join(", "));
            }
        }
        Ok(())
    }
}

impl Default for VmArgs {
    fn default() -> Self {
        Self {
            only: Vec::new(),
            timeout: 900,
            filter: None,
        }
    }
}

/// `cargo xtask test` runs the matrix after the native suite. `VIGIE_SKIP_VM=1` skips it,
/// loudly, except under `VIGIE_REQUIRE_PRIVILEGED=1` (CI), where a skip is a failure like any
/// skipped privileged test.
pub fn run_from_test(bins: &Binaries) -> anyhow::Result<()> {
    let var = |name| std::env::var(name).ok();
    if skip(
        var("VIGIE_SKIP_VM").as_deref(),
        var("VIGIE_REQUIRE_PRIVILEGED").as_deref(),
    )? {
        step(
            "test",
            "!!!!!!!! SKIPPED the kernel matrix (VIGIE_SKIP_VM=1): only the running kernel was tested !!!!!!!!",
        );
        return Ok(());
    }
    run(bins, &VmArgs::default())
}

/// Whether to skip the matrix, from `VIGIE_SKIP_VM` and `VIGIE_REQUIRE_PRIVILEGED`.
fn skip(skip_vm: Option<&str>, require_privileged: Option<&str>) -> anyhow::Result<bool> {
    if skip_vm != Some("1") {
        return Ok(false);
    }
    if require_privileged == Some("1") {
        bail!(
            "VIGIE_SKIP_VM=1 is refused with VIGIE_REQUIRE_PRIVILEGED=1: the kernel matrix is \
             part of the privileged suite"
        );
    }
    Ok(true)
}

pub fn run(bins: &Binaries, args: &VmArgs) -> anyhow::Result<()> {
    args.check()?;
    let started = Instant::now();
    let vm_dir = workspace_root().join("target").join("vm");
    let host = host_kernel();
    let rows: Vec<BootPlan> = {
        let wanted = |id: &str| args.only.is_empty() || args.only.iter().any(|o| o == id);
        let mut kernels = BTreeMap::new();
        let mut rows = Vec::new();
        for row in MATRIX.iter().filter(|r| wanted(r.id)) {
            let vmlinuz = match kernels.get(row.series.name) {
                Some(k) => k,
                None => {
                    let k = fetch_kernel(&vm_dir.join("kernels"), row.series)?;
                    kernels.entry(row.series.name).or_insert(k)
                }
            };
            rows.push(BootPlan {
                id: row.id,
                vmlinuz: vmlinuz.clone(),
                extra: row.cmdline,
                tests: row.tests,
                opens: row.opens,
                seconds: row.seconds,
            });
        }
        if wanted("host") {
            match &host {
                Ok(vmlinuz) => rows.push(BootPlan {
                    id: "host",
                    vmlinuz: vmlinuz.clone(),
                    extra: "",
                    tests: FULL,
                    opens: "",
                    seconds: 600,
                }),
                Err(why) => step("vm-test", why),
            }
        }
        rows
    };
    if rows.is_empty() {
        bail!("nothing to boot (--only {})", args.only.join(" --only "));
    }
    step(
        "vm-test",
        "cargo test -p vigie-tests --no-run (the test binary for the VMs)",
    );
    let tests = test_binary()?;
    let initramfs = vm_dir.join("initramfs.cpio");
    let size = build_initramfs(&initramfs, bins, &tests)?;
    step(
        "vm-test",
        &format!(
            "initramfs {} ({:.1} MiB)",
            initramfs.display(),
            size as f64 / f64::from(1 << 20)
        ),
    );
    let logs = vm_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lanes = lanes(&rows, cpus);
    step(
        "vm-test",
        &format!(
            "{} boots in {} lane(s), one per CPU (each QEMU emulates on one thread): {}",
            rows.len(),
            lanes.len(),
            lanes
                .iter()
                .map(|lane| lane
                    .iter()
                    .map(|&i| rows[i].id)
                    .collect::<Vec<_>>()
                    .join(" then "))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
    );
    let mut results: Vec<(usize, RowResult)> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter()
            .map(|lane| {
                let (rows, initramfs, logs) = (&rows, &initramfs, &logs);
                scope.spawn(move || -> anyhow::Result<Vec<(usize, RowResult)>> {
                    lane.iter()
                        .map(|&i| Ok((i, boot_row(&rows[i], initramfs, logs, args)?)))
                        .collect()
                })
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            let lane = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a matrix lane panicked"))??;
            all.extend(lane);
        }
        anyhow::Ok(all)
    })?;
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<RowResult> = results.into_iter().map(|(_, r)| r).collect();
    print_table(&results);
    if let Err(why) = &host {
        eprintln!("{why}");
    }
    eprintln!(
        "[xtask vm-test] {} boots in {:.0} s; logs in {}",
        results.len(),
        started.elapsed().as_secs_f64(),
        logs.display()
    );
    let failed: Vec<&str> = results.iter().filter(|r| !r.ok()).map(|r| r.id).collect();
    if !failed.is_empty() {
        bail!("kernel matrix failed on: {}", failed.join(", "));
    }
    Ok(())
}

/// One boot to make: a row of the matrix (or the host's kernel).
struct BootPlan {
    id: &'static str,
    vmlinuz: PathBuf,
    /// Extra kernel command line.
    extra: &'static str,
    tests: &'static [&'static str],
    opens: &'static str,
    /// Expected duration, for [`lanes`].
    seconds: u32,
}

/// Spreads the boots over `cpus` lanes that run side by side, longest first, each onto the lane
/// that ends soonest. Each QEMU emulates its guest on one host thread (see [`boot`]), so on this
/// 2-CPU machine the 6.1 row runs beside the 6.12 row instead of before it: the matrix takes the
/// longest lane's time instead of the sum (about 10 minutes of CI instead of 19).
fn lanes(boots: &[BootPlan], cpus: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..boots.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(boots[i].seconds));
    let mut lanes: Vec<(u32, Vec<usize>)> =
        vec![(0, Vec::new()); cpus.clamp(1, boots.len().max(1))];
    for i in order {
        let lane = lanes
            .iter_mut()
            .min_by_key(|(load, _)| *load)
            .expect("at least one lane");
        lane.0 += boots[i].seconds;
        lane.1.push(i);
    }
    lanes
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Boots one row and reads its result; a failed row's console tail goes to stderr.
fn boot_row(
    b: &BootPlan,
    initramfs: &Path,
    logs: &Path,
    args: &VmArgs,
) -> anyhow::Result<RowResult> {
    let mut cmdline = format!(
        "console=ttyS0 panic=-1 quiet vigie.tests={} vigie.scale={TIME_SCALE}",
        b.tests.join(",")
    );
    if !b.opens.is_empty() {
        cmdline.push_str(&format!(" vigie.opens={}", b.opens));
    }
    if let Some(f) = &args.filter {
        cmdline.push_str(&format!(" vigie.filter={f}"));
    }
    if !b.extra.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(b.extra);
    }
    let log = logs.join(format!("{}.log", b.id));
    step(
        "vm-test",
        &format!("boot {}: {}", b.id, b.vmlinuz.display()),
    );
    let outcome = boot(
        b.id,
        &b.vmlinuz,
        initramfs,
        &cmdline,
        &log,
        Duration::from_secs(args.timeout),
    )?;
    let result = RowResult::parse(b.id, b.extra, &outcome, b.tests);
    if !result.ok() {
        eprintln!(
            "[xtask vm-test] {} FAILED: {}; console tail ({}):\n{}",
            b.id,
            result.problem.as_deref().unwrap_or("see the log"),
            log.display(),
            tail(&outcome.console, 60)
        );
    }
    Ok(result)
}

/// The host's kernel image, when it is there to boot; otherwise why not.
fn host_kernel() -> Result<PathBuf, String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    let path = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "host kernel {release}: no {} to boot; the native run of the suite (cargo xtask test) covers it",
            path.display()
        ))
    }
}

/// `apt-get download` as root hands the download to the `_apt` user, which cannot write under
/// `target/`: download as the caller instead (the file is only unpacked, never installed).
const SANDBOX: &[&str] = &["-o", "APT::Sandbox::User=root"];

/// The newest kernel of `series` that apt offers, downloaded and unpacked once into
/// `dir/<package>/vmlinuz`. Offline, the newest one already there.
fn fetch_kernel(dir: &Path, series: Series) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let package = match newest_package(series) {
        Ok(p) => p,
        Err(e) => {
            let cached = cached_packages(dir, series).pop();
            let Some(p) = cached else {
                return Err(e);
            };
            step("vm-test", &format!("{e:#}; using the cached {p} instead"));
            p
        }
    };
    let vmlinuz = dir.join(&package).join("vmlinuz");
    if vmlinuz.exists() {
        return Ok(vmlinuz);
    }
    let download = dir.join("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    step("vm-test", &format!("apt-get download {package}"));
    let fetched = Command::new("apt-get")
        .args(["download", "-q", &package])
        .args(SANDBOX)
        .current_dir(&download)
        .status()
        .context("running apt-get download")?;
    if !fetched.success() {
        // The lists may name a version the mirror has dropped: refresh them once.
        step(
            "vm-test",
            "apt-get download failed: apt-get update, then again",
        );
        crate::setup::apt_update()?;
        let again = Command::new("apt-get")
            .args(["download", "-q", &package])
            .args(SANDBOX)
            .current_dir(&download)
            .status()
            .context("running apt-get download")?;
        if !again.success() {
            bail!("apt-get download {package} failed ({again})");
        }
    }
    let deb = std::fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    // Only ./boot: the modules are not needed (nothing Vigie uses is a module in Debian's
    // config: BPF, tracefs, securityfs and the serial console are built in).
    let unpacked = download.join("root");
    std::fs::create_dir_all(&unpacked)?;
    let status = Command::new("sh")
        .arg("-c")
        .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" ./boot")
        .arg("sh")
        .arg(&deb)
        .arg(&unpacked)
        .status()
        .context("unpacking the kernel package")?;
    if !status.success() {
        bail!("unpacking {} failed ({status})", deb.display());
    }
    let image = std::fs::read_dir(unpacked.join("boot"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))?;
    let target = dir.join(&package);
    std::fs::create_dir_all(&target)?;
    for entry in std::fs::read_dir(unpacked.join("boot"))?.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("config-") {
            std::fs::copy(entry.path(), target.join("config"))?;
        }
    }
    std::fs::copy(&image, &vmlinuz)?;
    let _ = std::fs::remove_dir_all(&download);
    Ok(vmlinuz)
}

/// `linux-image-6.1.0-56-amd64-unsigned` for series 6.1: the middle must be a number (that
/// leaves out the `-cloud-` and `-rt-` flavours), the highest wins.
fn pick_newest(series: Series, names: &str) -> Option<String> {
    names
        .lines()
        .map(str::trim)
        .filter_map(|n| {
            let mid = n.strip_prefix(series.prefix)?.strip_suffix(series.suffix)?;
            let num: u32 = mid.parse().ok()?;
            Some((num, n.to_string()))
        })
        .max()
        .map(|(_, n)| n)
}

fn newest_package(series: Series) -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(["pkgnames", series.prefix])
        .output()
        .context("running apt-cache pkgnames")?;
    pick_newest(series, &String::from_utf8_lossy(&out.stdout)).with_context(|| {
        format!(
            "apt offers no {}<n>{} (Debian 12 with its security suite has them)",
            series.prefix, series.suffix
        )
    })
}

fn cached_packages(dir: &Path, series: Series) -> Vec<String> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().join("vmlinuz").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    pick_newest(series, &names.join("\n")).into_iter().collect()
}

/// The integration test executable, from cargo's JSON messages.
fn test_binary() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "test",
            "-p",
            "vigie-tests",
            "--test",
            TEST_BINARY,
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|msg| {
            let is_test = msg["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"));
            (is_test && msg["target"]["name"] == TEST_BINARY)
                .then(|| msg["executable"].as_str().map(PathBuf::from))
                .flatten()
        })
        .with_context(|| format!("cargo built no test binary `{TEST_BINARY}`"))
}

/// Writes the initramfs: each binary at its path on this machine (the tests find the portal by
/// the absolute path cargo compiled in), stripped of debug info, with the shared libraries `ldd`
/// names, a static busybox and `/init`.
fn build_initramfs(path: &Path, bins: &Binaries, tests: &Path) -> anyhow::Result<u64> {
    let busybox = Path::new("/bin/busybox");
    let ldd = Command::new("ldd").arg(busybox).output();
    let is_static = ldd.is_ok_and(|o| {
        let text = String::from_utf8_lossy(&o.stdout) + String::from_utf8_lossy(&o.stderr);
        text.contains("not a dynamic executable") || text.contains("statically linked")
    });
    if !is_static {
        bail!("/bin/busybox is missing or not static: install busybox-static (cargo xtask setup)");
    }
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    let strip_dir = path.with_extension("strip");
    let _ = std::fs::remove_dir_all(&strip_dir);
    std::fs::create_dir_all(&strip_dir)?;
    let mut cpio = cpio::Cpio::new(std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    ));
    for dir in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "etc",
        "bin",
        "sys/kernel/tracing",
    ] {
        cpio.dir(dir)?;
    }
    cpio.copy("/bin/busybox", busybox)?;
    // The Go portal keeps its DWARF: Vigie reads `runtime.g`'s layout there. It is static: no
    // libraries to carry.
    cpio.copy(&bins.go_portal.to_string_lossy(), &bins.go_portal)?;
    let binaries: [&Path; 3] = [&bins.vigie, &bins.portal, tests];
    let mut libs = std::collections::BTreeSet::new();
    for tool in VM_TOOLS {
        let tool = Path::new(tool);
        if !tool.exists() {
            bail!("{} is missing: run cargo xtask setup", tool.display());
        }
        cpio.copy(&tool.to_string_lossy(), tool)?;
        libs.extend(shared_libraries(tool)?);
    }
    for (at, from) in VM_FILES {
        cpio.copy(at, Path::new(from))?;
    }
    cpio.file("/etc/passwd", 0o644, VM_PASSWD.as_bytes())?;
    cpio.file("/etc/group", 0o644, VM_GROUP.as_bytes())?;
    for (i, bin) in binaries.iter().enumerate() {
        let stripped = strip_dir.join(i.to_string());
        let status = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(bin)
            .arg(&stripped)
            .status()
            .context("running objcopy (binutils)")?;
        if !status.success() {
            bail!("objcopy --strip-debug {} failed ({status})", bin.display());
        }
        cpio.copy(&bin.to_string_lossy(), &stripped)?;
        libs.extend(shared_libraries(bin)?);
    }
    // For `node` (in `FULL_NODE`): every row boots the same initramfs.
    add_node(&mut cpio, &mut libs)?;
    for lib in &libs {
        // The library under the name the loader looks for, with the contents of its target.
        cpio.copy(lib, Path::new(lib))?;
    }
    cpio.file("/init", 0o755, init_script(bins, tests).as_bytes())?;
    let (_, size) = cpio.finish()?;
    let _ = std::fs::remove_dir_all(&strip_dir);
    Ok(size)
}

/// Node.js for `tests/tests/vigie/node.rs`: the `node` on this machine at `/bin/node` (the VM's
/// only `PATH` entry; its name is how Vigie recognises the runtime), its shared libraries, and the
/// Express portal (`tests/node-portal`, with its `node_modules`) at its path on this machine.
fn add_node<W: std::io::Write>(
    cpio: &mut cpio::Cpio<W>,
    libs: &mut std::collections::BTreeSet<String>,
) -> anyhow::Result<()> {
    let node = ["/usr/bin/node", "/usr/bin/nodejs", "/usr/local/bin/node"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("no node installed (cargo xtask setup)")?;
    cpio.copy("/bin/node", node)?;
    libs.extend(shared_libraries(node)?);
    let portal = workspace_root().join("tests/node-portal");
    if !portal.join("node_modules/express").is_dir() {
        bail!("Express is not installed in tests/node-portal (cargo xtask setup)");
    }
    add_tree(cpio, &portal)
}

/// Every regular file under `dir`, at its path on this machine (symbolic links are left out:
/// `node_modules/.bin` is not needed to run the portal).
fn add_tree<W: std::io::Write>(cpio: &mut cpio::Cpio<W>, dir: &Path) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::path);
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            add_tree(cpio, &path)?;
        } else if kind.is_file() {
            cpio.copy(&path.to_string_lossy(), &path)?;
        }
    }
    Ok(())
}

/// Absolute paths `ldd` lists (libraries and the program interpreter).
fn shared_libraries(bin: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ldd(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => l,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// `/init`: mounts, loopback, the facts and the start-up report, then each test module named
/// by `vigie.tests=` on the kernel command line (its tests by exact name, those matching
/// `vigie.filter=` when given), one `VIGIE-VM-END` line each, then power off.
fn init_script(bins: &Binaries, tests: &Path) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# No tmpfs on /tmp: the initramfs root is already in RAM and writable, and a checkout under
# /tmp (binaries packed at their host paths) would be hidden by it.
mkdir -p /tmp && chmod 1777 /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t securityfs securityfs /sys/kernel/security
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
arg() {{ tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p"; }}
echo "VIGIE-VM-KERNEL $(uname -r) lockdown=$(cat /sys/kernel/security/lockdown 2>/dev/null | tr ' ' ,) lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)"
# The tools the tests find by name (curl, openssl, nginx: `require_tool`).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export VIGIE_BIN={vigie} VIGIE_GO_PORTAL={go_portal} VIGIE_REQUIRE_PRIVILEGED=1 VIGIE_TEST_TIME_SCALE=$(arg vigie.scale) RUST_BACKTRACE=1
export VIGIE_EXPECT_OPEN_PROGRAM=$(arg vigie.opens)
cd /tmp
start=$(date +%s)
{vigie} probes
echo "VIGIE-VM-PROBES rc=$? seconds=$(( $(date +%s) - start ))"
# libtest ORs its filters: a module's tests (or one test, `module::test`) are selected here,
# by exact name.
all=$({tests} --list 2>/dev/null | sed -n 's/: test$//p')
for name in $(arg vigie.tests | tr , ' '); do
  echo "VIGIE-VM-BEGIN $name"
  start=$(date +%s)
  names=$(echo "$all" | grep -e "^$name::" -e "^$name\$" | grep -e "$(arg vigie.filter)")
  if [ -z "$(echo "$all" | grep -e "^$name::" -e "^$name\$")" ]; then
    echo "VIGIE-VM-END $name rc=127 seconds=0"; continue
  fi
  rc=0
  [ -n "$names" ] && {{ {tests} --test-threads=1 --exact $names 2>&1; rc=$?; }}
  echo "VIGIE-VM-END $name rc=$rc seconds=$(( $(date +%s) - start ))"
done
echo VIGIE-VM-DONE
poweroff -f
"#,
        vigie = bins.vigie.display(),
        go_portal = bins.go_portal.display(),
        tests = tests.display(),
    )
}

struct Boot {
    console: String,
    seconds: f64,
    timed_out: bool,
}

/// Boots `vmlinuz` with the initramfs; streams the console to `log` (and the result lines to
/// stderr, after the row's `id`: rows boot side by side) until QEMU exits or `timeout` passes.
fn boot(
    id: &str,
    vmlinuz: &Path,
    initramfs: &Path,
    cmdline: &str,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<Boot> {
    let started = Instant::now();
    // Two guest CPUs on one emulator thread. With a thread per vCPU (multi-threaded TCG), a
    // kernel patching its own text (the tracepoints' static keys, BPF trampolines, at every
    // attach and detach) raced the other vCPU's translated code: a CI run oopsed on a stale int3
    // in syscall_trace_enter (6.12) and panicked. Real CPUs do not do that.
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=single", "-cpu", "max"])
        .args(["-m", "2G", "-smp", "2"])
        .args([
            "-nographic",
            "-no-reboot",
            "-net",
            "none",
            "-monitor",
            "none",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (install qemu-system-x86: cargo xtask setup)")?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut file = std::fs::File::create(log)?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
            let _ = tx2.send(format!("qemu: {}", String::from_utf8_lossy(&line)));
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let _ = tx.send(String::from_utf8_lossy(&line).trim_end().to_string());
        }
    });
    let mut console = String::new();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(mut line) => {
                // The firmware's screen reset (escape sequences) can end up before our first line.
                if let Some(at) = line.find("VIGIE-VM-").filter(|at| *at > 0) {
                    line.drain(..at);
                }
                use std::io::Write as _;
                writeln!(file, "{line}")?;
                if line.starts_with("VIGIE-VM")
                    || line.starts_with("test result:")
                    || line.starts_with("probes: ")
                    || line.starts_with("vigie: this kernel cannot")
                    || (line.starts_with("test ") && line.ends_with("FAILED"))
                {
                    eprintln!("    {id}: {line}");
                }
                console.push_str(&line);
                console.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Both pipes closed: QEMU is gone.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if started.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break;
        }
    }
    let _ = child.wait();
    Ok(Boot {
        console,
        seconds: started.elapsed().as_secs_f64(),
        timed_out,
    })
}

/// What one boot showed.
struct RowResult {
    id: &'static str,
    kernel: String,
    extra: &'static str,
    lockdown: String,
    bpf_lsm: String,
    probes: String,
    passed: u64,
    failed: u64,
    seconds: f64,
    /// Why the row failed, when it did.
    problem: Option<String>,
}

impl RowResult {
    fn ok(&self) -> bool {
        self.problem.is_none()
    }

    fn parse(id: &'static str, extra: &'static str, boot: &Boot, tests: &[&str]) -> Self {
        let mut r = Self {
            id,
            kernel: "?".into(),
            extra,
            lockdown: "?".into(),
            bpf_lsm: "?".into(),
            probes: "?".into(),
            passed: 0,
            failed: 0,
            seconds: boot.seconds,
            problem: None,
        };
        let mut ended = Vec::new();
        let mut done = false;
        for line in boot.console.lines() {
            if let Some(rest) = line.strip_prefix("VIGIE-VM-KERNEL ") {
                let mut words = rest.split_whitespace();
                r.kernel = words.next().unwrap_or("?").to_string();
                for w in words {
                    if let Some(mode) = w.strip_prefix("lockdown=") {
                        r.lockdown = mode
                            .split(',')
                            .find_map(|m| m.strip_prefix('[')?.strip_suffix(']'))
                            .unwrap_or("?")
                            .to_string();
                    } else if let Some(lsms) = w.strip_prefix("lsm=") {
                        r.bpf_lsm = if lsms.split(',').any(|l| l == "bpf") {
                            "active".into()
                        } else {
                            "inactive".into()
                        };
                    }
                }
            } else if let Some(summary) = line.strip_prefix("probes: ") {
                r.probes = summary.replace(" hooks attached,", " attached,");
            } else if line.starts_with("vigie: this kernel cannot run Vigie's probes") {
                r.probes = "refused (lockdown)".into();
            } else if let Some(result) = line.strip_prefix("test result: ") {
                let count = |what: &str| {
                    result
                        .split(';')
                        .find_map(|p| {
                            p.trim()
                                .trim_start_matches("ok. ")
                                .trim_start_matches("FAILED. ")
                                .strip_suffix(what)
                        })
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                r.passed += count(" passed");
                r.failed += count(" failed");
            } else if let Some(rest) = line.strip_prefix("VIGIE-VM-END ") {
                let mut words = rest.split_whitespace();
                let name = words.next().unwrap_or("?").to_string();
                let rc = words
                    .next()
                    .and_then(|w| w.strip_prefix("rc="))
                    .unwrap_or("?");
                if rc != "0" && r.problem.is_none() {
                    r.problem = Some(format!("{name} exited with rc={rc}"));
                }
                ended.push(name);
            } else if line == "VIGIE-VM-DONE" {
                done = true;
            }
        }
        if r.problem.is_none() {
            if boot.timed_out {
                r.problem = Some(format!("timed out after {:.0} s", boot.seconds));
            } else if !done {
                r.problem = Some("the VM stopped before VIGIE-VM-DONE (kernel panic?)".into());
            } else if let Some(missing) = tests.iter().find(|t| !ended.iter().any(|e| e == *t)) {
                r.problem = Some(format!("{missing} did not run"));
            } else if r.passed == 0 {
                r.problem = Some("no test passed".into());
            }
        }
        r
    }
}

fn print_table(results: &[RowResult]) {
    eprintln!();
    eprintln!(
        "{:<24} {:<22} {:<15} {:<8} {:<34} {:>6} {:>6} {:>6}  result",
        "row", "kernel", "lockdown", "BPF LSM", "probes", "passed", "failed", "time"
    );
    for r in results {
        eprintln!(
            "{:<24} {:<22} {:<15} {:<8} {:<34} {:>6} {:>6} {:>5.0}s  {}",
            r.id,
            r.kernel,
            r.lockdown,
            r.bpf_lsm,
            r.probes,
            r.passed,
            r.failed,
            r.seconds,
            match &r.problem {
                None => "ok".to_string(),
                Some(p) => format!("FAILED: {p}"),
            }
        );
        if !r.extra.is_empty() {
            eprintln!("{:<24} (kernel command line: {})", "", r.extra);
        }
    }
    eprintln!();
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rows_spread_over_the_cpus_longest_first() {
        let plan = |id, seconds| BootPlan {
            id,
            vmlinuz: PathBuf::new(),
            extra: "",
            tests: &[],
            opens: "",
            seconds,
        };
        let boots: Vec<BootPlan> = MATRIX.iter().map(|r| plan(r.id, r.seconds)).collect();
        let ids = |lanes: Vec<Vec<usize>>| -> Vec<Vec<&str>> {
            lanes
                .into_iter()
                .map(|l| l.into_iter().map(|i| boots[i].id).collect())
                .collect()
        };
        assert_eq!(
            ids(lanes(&boots, 2)),
            [
                vec!["6.1", "6.12-confidentiality"],
                vec!["6.12", "6.1-integrity-nobpflsm"]
            ]
        );
        assert_eq!(lanes(&boots, 1), [vec![0, 1, 2, 3]]);
        // More CPUs than boots: one boot per lane, no empty lane.
        assert_eq!(lanes(&boots, 16).len(), 4);
        assert_eq!(lanes(&boots[..1], 2), [vec![0]]);
        assert!(lanes(&[], 2).is_empty());
    }

    #[test]
    fn skipping_the_matrix_is_refused_when_privileged_tests_are_required() {
        assert!(!skip(None, None).unwrap());
        assert!(!skip(Some("0"), Some("1")).unwrap());
        assert!(skip(Some("1"), None).unwrap());
        assert!(skip(Some("1"), Some("0")).unwrap());
        let err = skip(Some("1"), Some("1")).unwrap_err().to_string();
        assert!(err.contains("VIGIE_SKIP_VM=1 is refused"), "{err}");
    }

    #[test]
    fn picks_the_newest_plain_flavour() {
        let names = "linux-image-6.1.0-47-amd64-unsigned\nlinux-image-6.1.0-56-cloud-amd64-unsigned\nlinux-image-6.1.0-9-amd64-unsigned\nlinux-image-6.1.0-56-amd64-unsigned\nlinux-image-6.1.0-56-rt-amd64-unsigned\nlinux-image-6.12.117+deb12-amd64-unsigned\nlinux-image-6.12.99+deb12-amd64-unsigned\nlinux-image-6.12.117+deb12-cloud-amd64-unsigned\n";
        assert_eq!(
            pick_newest(DEBIAN_6_1, names).as_deref(),
            Some("linux-image-6.1.0-56-amd64-unsigned")
        );
        assert_eq!(
            pick_newest(DEBIAN_6_12, names).as_deref(),
            Some("linux-image-6.12.117+deb12-amd64-unsigned")
        );
        assert_eq!(pick_newest(DEBIAN_6_1, ""), None);
    }

    #[test]
    fn parses_ldd() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    fn boot(console: &str) -> Boot {
        Boot {
            console: console.into(),
            seconds: 90.0,
            timed_out: false,
        }
    }

    #[test]
    fn reads_a_passing_boot() {
        let console = "SeaBIOS\nVIGIE-VM-KERNEL 6.1.0-56-amd64 lockdown=[none],integrity,confidentiality lsm=lockdown,capability,bpf\nprobes: 32/32 hooks attached, 9/9 programs fired\nVIGIE-VM-PROBES rc=0 seconds=3\nVIGIE-VM-BEGIN e2e\ntest result: ok. 13 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 72.1s\nVIGIE-VM-END e2e rc=0 seconds=72\nVIGIE-VM-BEGIN kernel\ntest result: ok. 2 passed; 0 failed; 0 ignored\nVIGIE-VM-END kernel rc=0 seconds=9\nVIGIE-VM-DONE\n";
        let r = RowResult::parse("6.1", "", &boot(console), &["e2e", "kernel"]);
        assert!(r.ok(), "{:?}", r.problem);
        assert_eq!(
            (r.kernel.as_str(), r.lockdown.as_str(), r.bpf_lsm.as_str()),
            ("6.1.0-56-amd64", "none", "active")
        );
        assert_eq!(r.probes, "32/32 attached, 9/9 programs fired");
        assert_eq!((r.passed, r.failed), (15, 0));
    }

    #[test]
    fn a_failed_test_a_missing_binary_a_crash_and_a_timeout_fail_the_row() {
        let failed = "VIGIE-VM-BEGIN e2e\ntest result: FAILED. 12 passed; 1 failed; 0 ignored\nVIGIE-VM-END e2e rc=101 seconds=80\nVIGIE-VM-DONE\n";
        let r = RowResult::parse("6.1", "", &boot(failed), &["e2e"]);
        assert_eq!((r.passed, r.failed), (12, 1));
        assert_eq!(r.problem.as_deref(), Some("e2e exited with rc=101"));
        let missing = "VIGIE-VM-BEGIN e2e\ntest result: ok. 13 passed; 0 failed\nVIGIE-VM-END e2e rc=0 seconds=80\nVIGIE-VM-DONE\n";
        let r = RowResult::parse("6.1", "", &boot(missing), &["e2e", "jwt"]);
        assert_eq!(r.problem.as_deref(), Some("jwt did not run"));
        let crash = "VIGIE-VM-BEGIN e2e\nKernel panic - not syncing\n";
        let r = RowResult::parse("6.1", "", &boot(crash), &["e2e"]);
        assert!(r.problem.unwrap().contains("before VIGIE-VM-DONE"));
        let mut slow = boot("VIGIE-VM-BEGIN e2e\n");
        slow.timed_out = true;
        let r = RowResult::parse("6.1", "", &slow, &["e2e"]);
        assert_eq!(r.problem.as_deref(), Some("timed out after 90 s"));
        let none = "VIGIE-VM-DONE\n";
        let r = RowResult::parse("6.1", "", &boot(none), &[]);
        assert_eq!(r.problem.as_deref(), Some("no test passed"));
    }

    #[test]
    fn reads_a_refusal() {
        let console = "VIGIE-VM-KERNEL 6.12.117+deb12-amd64 lockdown=none,integrity,[confidentiality] lsm=lockdown,capability,bpf\nvigie: this kernel cannot run Vigie's probes: kernel lockdown is `confidentiality`, which closes tracefs\nVIGIE-VM-PROBES rc=1 seconds=2\nVIGIE-VM-BEGIN kernel\ntest result: ok. 2 passed; 0 failed\nVIGIE-VM-END kernel rc=0 seconds=5\nVIGIE-VM-DONE\n";
        let r = RowResult::parse(
            "6.12-confidentiality",
            "lockdown=confidentiality",
            &boot(console),
            &["kernel"],
        );
        assert!(r.ok());
        assert_eq!(r.lockdown, "confidentiality");
        assert_eq!(r.probes, "refused (lockdown)");
    }
}
