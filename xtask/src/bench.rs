//! `cargo xtask bench`: Vigie's cost and capacity, measured on this machine in one run.
//!
//! Every comparison is made within the run, as a ratio of interleaved A/B rounds (detached,
//! attached; the order alternates each round), because the machine is noisy. Numbers are printed
//! as a Markdown report on stdout and written to `target/bench/report.md` and `report.json`.
//!
//! Sections (see BENCHMARKS.md for the method of each):
//! 1. portal overhead under `wrk` (thread model, prefork + sendfile, thread with `--record`),
//!    with the daemon's CPU per 1,000 requests, its peak RSS, its loss and its latency histogram;
//! 2. host tax on a process that is not a target (ns per hooked syscall);
//! 3. pipeline capacity: a forked target doing `pread` at fixed rates until events are lost;
//! 4. alert latency at light load, from the request's kernel timestamp to the alert line;
//! 5. daemon RSS with 10,000 idle keep-alive connections tracked;
//! 6. replay throughput of a synthetic trace;
//! 7. real servers from Debian packages (nginx with sendfile, gunicorn in 8 KiB chunks) with
//!    Vigie next to the tools a user would pick instead (auditd, a bpftrace logger) and the floor
//!    of Vigie's hooks, and nginx over HTTPS (`peers`, `servers`, `sides`).
mod peers;
mod servers;
mod sides;

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fmt::Write as _,
    io::{Read, Seek, SeekFrom},
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use vigie_tests::{
    client::KeepAlive,
    daemon::{Options, VigieProcess},
    process::{PortalGuard, spawn_portal_quiet},
};

use crate::{cargo, is_root, step, workspace_root};

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// A/B rounds per comparison.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds of load on each side of a round.
    #[arg(long, default_value_t = 2)]
    pub secs: u64,
    /// Events in the synthetic replay trace (10M is about 1.5 GB, deleted after).
    #[arg(long, default_value_t = 10_000_000)]
    pub replay_events: u64,
    /// Records in the synthetic audit trail that `vigie verify` checks (1M is about 0.7 GB,
    /// deleted after).
    #[arg(long, default_value_t = 1_000_000)]
    pub trail_records: u64,
    /// Idle keep-alive connections for the RSS measurement.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Another `vigie` binary (e.g. built from main) attached as a third side of every portal
    /// round: before/after figures from the same rounds.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Skip sections (comma-separated): portal, nginx, chunked, https, tax, pipeline, latency,
    /// conns, replay, trail.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// A short run of every section, to see that it works (its numbers are not worth
    /// publishing): 1 round of 1 s, 1M replay events, 100k trail records, 1,000 connections.
    #[arg(long)]
    pub quick: bool,
    /// Instead of the host bench: boot this kernel of the matrix (6.1 or 6.12) and measure the
    /// syscalls hooked by BTF programs against the tracepoints there (`--rounds`, `--secs`).
    #[arg(long, value_name = "KERNEL")]
    pub vm: Option<String>,
}

impl BenchArgs {
    /// These arguments, or `--quick`'s.
    pub fn effective(&self) -> BenchArgs {
        if !self.quick {
            return self.clone();
        }
        BenchArgs {
            rounds: 1,
            secs: 1,
            replay_events: 1_000_000,
            trail_records: 100_000,
            connections: 1_000,
            ..self.clone()
        }
    }
}

struct Bins {
    vigie: PathBuf,
    portal: PathBuf,
    synth: PathBuf,
    synth_trail: PathBuf,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let args = &args.effective();
    if !is_root() {
        bail!("the bench loads eBPF programs: run it as root");
    }
    step(
        "bench",
        "cargo build --release -p monitor -p vigie-tests --bins (+ synth_trace, synth_trail)",
    );
    cargo(&[
        "build",
        "--release",
        "-p",
        "monitor",
        "-p",
        "vigie-tests",
        "--bins",
    ])?;
    cargo(&[
        "build",
        "--release",
        "-p",
        "monitor",
        "--example",
        "synth_trace",
        "--example",
        "synth_trail",
    ])?;
    let rel = workspace_root().join("target").join("release");
    let bins = Bins {
        vigie: rel.join("vigie"),
        portal: rel.join("demo-portal"),
        synth: rel.join("examples").join("synth_trace"),
        synth_trail: rel.join("examples").join("synth_trail"),
    };
    ensure_wrk()?;
    raise_nofile();
    let dir = std::env::temp_dir().join(format!("vigie-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let out_dir = workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&out_dir)?;

    let started = Instant::now();
    let mut report = String::new();
    let mut json = serde_json::Map::new();
    let machine = machine();
    writeln!(report, "# Vigie bench report\n\n{}\n", machine.0)?;
    json.insert("machine".into(), machine.1);
    let skip = |s: &str| args.skip.iter().any(|x| x == s);
    let mut b = Bench {
        bins,
        dir: dir.clone(),
        secs: args.secs,
        rounds: args.rounds,
        baseline: args.baseline.clone(),
    };
    let sections: [(&str, Section); 10] = [
        ("portal", Bench::portal),
        ("nginx", Bench::nginx),
        ("chunked", Bench::chunked),
        ("https", Bench::https),
        ("tax", Bench::host_tax),
        ("pipeline", Bench::pipeline),
        ("latency", Bench::latency),
        ("conns", Bench::connections),
        ("replay", Bench::replay),
        ("trail", Bench::trail_verify),
    ];
    for (name, f) in sections {
        if skip(name) {
            continue;
        }
        let t = Instant::now();
        step("bench", &format!("section {name}"));
        match f(&mut b, args) {
            Ok((md, v)) => {
                report.push_str(&md);
                json.insert(name.into(), v);
            }
            Err(e) => {
                writeln!(report, "## {name}\n\nFAILED: {e:#}\n")?;
                json.insert(name.into(), json!({ "error": format!("{e:#}") }));
            }
        }
        step(
            "bench",
            &format!("section {name} took {:.0} s", t.elapsed().as_secs_f64()),
        );
    }
    writeln!(
        report,
        "Total bench time: {:.0} s.",
        started.elapsed().as_secs_f64()
    )?;
    std::fs::write(out_dir.join("report.md"), &report)?;
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(&Value::Object(json))?,
    )?;
    println!("{report}");
    step(
        "bench",
        &format!("written {}", out_dir.join("report.md").display()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A section: its Markdown and its JSON.
type Section = fn(&mut Bench, &BenchArgs) -> anyhow::Result<(String, Value)>;

struct Bench {
    bins: Bins,
    dir: PathBuf,
    secs: u64,
    rounds: usize,
    baseline: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// Sections.

/// One side of a portal round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Detached,
    /// This build's Vigie attached.
    Current,
    /// The `--baseline` Vigie attached.
    Baseline,
}

/// One portal configuration for the overhead comparison.
struct PortalCase {
    name: &'static str,
    model: &'static str,
    workers: Option<&'static str>,
    /// wrk connections.
    conns: u32,
    /// One request per connection (`Connection: close`): a prefork worker serves one connection
    /// at a time, and its `send` + `sendfile` responses on keep-alive stall 40 ms on delayed ACK.
    close: bool,
    record: bool,
}

impl Bench {
    fn portal(&mut self, _: &BenchArgs) -> anyhow::Result<(String, Value)> {
        let docs = ["health-record.pdf", "disability-file.pdf", "notes.txt"].map(String::from);
        let users = ["alice", "bob", "carol"].map(String::from);
        let keep = self.dir.join("mix.lua");
        std::fs::write(&keep, wrk_mix(&docs, "X-Remote-User", &users, ""))?;
        let close = self.dir.join("mix-close.lua");
        std::fs::write(
            &close,
            wrk_mix(
                &docs,
                "X-Remote-User",
                &users,
                ", [\"Connection\"] = \"close\"",
            ),
        )?;
        let cases = [
            PortalCase {
                name: "thread",
                model: "thread",
                workers: None,
                conns: 8,
                close: false,
                record: false,
            },
            PortalCase {
                name: "prefork+sendfile (2 workers), Connection: close",
                model: "prefork",
                workers: Some("2"),
                conns: 8,
                close: true,
                record: false,
            },
            PortalCase {
                name: "thread, --record",
                model: "thread",
                workers: None,
                conns: 8,
                close: false,
                record: true,
            },
        ];
        let mut md = String::from("## Portal overhead (wrk, detached vs attached)\n\n");
        writeln!(
            md,
            "{} rounds x {} s per side, order alternating (AB, BA, ...). wrk -t1 on loopback, \
             keep-alive, request mix: 3 users x 3 documents, 1 in 8 cross-user (an alert line each). \
             Ratios are attached/detached per round: median [min, max].\n",
            self.rounds, self.secs
        )?;
        md.push_str("| case | conns | detached req/s (median) | attached req/s (median) | throughput loss | p99 detached | p99 attached | p99 ratio | vigie CPU s / 1k req | portal CPU us / req, detached -> attached | vigie VmHWM | events/s (attached) | lost |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        let mut out = Vec::new();
        let mut profiles = String::new();
        let mut before_after = String::new();
        let mut base_hist: BTreeMap<String, f64> = BTreeMap::new();
        // BPF programs of other processes on hooks while the rounds ran: they tax the detached
        // side too, and make the comparison say less (the machine is shared).
        let mut foreign = std::collections::BTreeSet::new();
        let mut hist_all: BTreeMap<String, f64> = BTreeMap::new();
        for case in &cases {
            let root = self.dir.join(format!("portal-{}", case.model));
            let mut pargs = vec!["--model", case.model];
            if let Some(w) = case.workers {
                pargs.extend(["--workers", w]);
            }
            let portal = start_portal(&self.bins.portal, &root, &pargs)?;
            let url = format!("http://{}/", portal.addr());
            let script = if case.close { &close } else { &keep };
            wrk(&url, 1, case.conns, script)?; // warm-up
            let (mut ratio, mut p99r, mut a_rps, mut b_rps, mut a_p99, mut b_p99) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            let (mut cpu_per_k, mut hwm, mut evs, mut lost) = (vec![], 0u64, vec![], 0u64);
            // The portal's own CPU per request (its processes, kernel time in its syscalls and
            // the probes run there included), detached and attached: robust to other load.
            let (mut portal_us_a, mut portal_us_b) = (vec![], vec![]);
            // With --baseline: the same for the other build, and its throughput ratio.
            let (mut base_ratio, mut base_cpu_per_k, mut base_portal_us) = (vec![], vec![], vec![]);
            for r in 0..self.rounds {
                let mut detached = None;
                let mut attached = None;
                let mut baseline = None;
                // Every side in every position across rounds: AB, BA, ... (ABC, BCA, CAB, ...
                // with a baseline).
                let mut order = vec![Side::Detached, Side::Current];
                if self.baseline.is_some() {
                    order.push(Side::Baseline);
                }
                let n = order.len();
                order.rotate_left(r % n);
                for side in order {
                    let bin = match side {
                        Side::Detached => {
                            foreign.extend(foreign_attachments(None));
                            let c0 = tree_cpu_seconds(portal.pid());
                            let w = wrk(&url, self.secs, case.conns, script)?;
                            let c1 = tree_cpu_seconds(portal.pid());
                            portal_us_a.push((c1 - c0) / w.requests.max(1) as f64 * 1e6);
                            detached = Some(w);
                            continue;
                        }
                        Side::Current => self.bins.vigie.clone(),
                        Side::Baseline => self.baseline.clone().context("no baseline")?,
                    };
                    let record = case.record.then(|| self.dir.join(format!("rec-{r}")));
                    let v =
                        Vigie::start(&bin, &self.dir, &[portal.pid()], &root, record.as_deref())?;
                    foreign.extend(foreign_attachments(Some(v.pid)));
                    std::thread::sleep(Duration::from_millis(200));
                    let cpu0 = cpu_seconds(v.pid)?;
                    let p0 = tree_cpu_seconds(portal.pid());
                    let w = wrk(&url, self.secs, case.conns, script)?;
                    let cpu1 = cpu_seconds(v.pid)?;
                    let p1 = tree_cpu_seconds(portal.pid());
                    let portal_us = (p1 - p0) / w.requests.max(1) as f64 * 1e6;
                    let vigie_per_k = (cpu1 - cpu0) / w.requests.max(1) as f64 * 1000.0;
                    std::thread::sleep(Duration::from_millis(250));
                    if side == Side::Baseline {
                        let metrics = v.metrics().unwrap_or_default();
                        for (le, c) in histogram(&metrics, "vigie_pipeline_latency_seconds") {
                            *base_hist.entry(le).or_default() += c;
                        }
                        v.stop()?;
                        base_portal_us.push(portal_us);
                        base_cpu_per_k.push(vigie_per_k);
                        baseline = Some(w);
                    } else {
                        let metrics = v.metrics().unwrap_or_default();
                        for (le, c) in histogram(&metrics, "vigie_pipeline_latency_seconds") {
                            *hist_all.entry(le).or_default() += c;
                        }
                        hwm = hwm.max(proc_status_kib(v.pid, "VmHWM").unwrap_or(0));
                        let s = v.stop()?;
                        lost += s.lost;
                        evs.push(s.rate);
                        portal_us_b.push(portal_us);
                        cpu_per_k.push(vigie_per_k);
                        attached = Some(w);
                    }
                    if let Some(rec) = record {
                        let _ = std::fs::remove_dir_all(rec);
                    }
                }
                let (a, bb) = (
                    detached.context("no detached side")?,
                    attached.context("no attached side")?,
                );
                step(
                    "bench",
                    &format!(
                        "  {} round {r}: detached {:.0} req/s p99 {:.2} ms, attached {:.0} req/s p99 {:.2} ms{}",
                        case.name,
                        a.rps,
                        a.p99_ms,
                        bb.rps,
                        bb.p99_ms,
                        baseline
                            .as_ref()
                            .map_or(String::new(), |b| format!(", baseline {:.0} req/s", b.rps))
                    ),
                );
                if let Some(b) = &baseline {
                    base_ratio.push(b.rps / a.rps);
                }
                ratio.push(bb.rps / a.rps);
                p99r.push(bb.p99_ms / a.p99_ms);
                a_rps.push(a.rps);
                b_rps.push(bb.rps);
                a_p99.push(a.p99_ms);
                b_p99.push(bb.p99_ms);
            }
            let prof = self.profile(&portal, &root, &url, case, script)?;
            drop(portal);
            let loss: Vec<f64> = ratio.iter().map(|r| (1.0 - r) * 100.0).collect();
            writeln!(
                md,
                "| {} | {} | {:.0} | {:.0} | {} % | {:.2} ms | {:.2} ms | {} | {} | {:.1} -> {:.1} | {:.1} MiB | {:.0} | {} |",
                case.name,
                case.conns,
                median(&a_rps),
                median(&b_rps),
                spread(&loss, 2),
                median(&a_p99),
                median(&b_p99),
                spread(&p99r, 2),
                spread(&cpu_per_k, 3),
                median(&portal_us_a),
                median(&portal_us_b),
                hwm as f64 / 1024.0,
                median(&evs),
                lost
            )?;
            out.push(json!({
                "case": case.name, "conns": case.conns,
                "detached_rps": a_rps, "attached_rps": b_rps, "throughput_loss_pct": loss,
                "detached_p99_ms": a_p99, "attached_p99_ms": b_p99, "p99_ratio": p99r,
                "cpu_s_per_1k_requests": cpu_per_k, "vmhwm_kib": hwm, "events_per_s": evs, "lost": lost,
                "portal_cpu_us_per_request_detached": portal_us_a,
                "portal_cpu_us_per_request_attached": portal_us_b,
                "profile": prof.1,
            }));
            profiles.push_str(&prof.0);
            if self.baseline.is_some() {
                let base_loss: Vec<f64> = base_ratio.iter().map(|r| (1.0 - r) * 100.0).collect();
                writeln!(
                    before_after,
                    "| {} | {} % | {} % | {:.1} | {:.1} | {:.1} | {} | {} |",
                    case.name,
                    spread(&base_loss, 1),
                    spread(&loss, 1),
                    median(&portal_us_a),
                    median(&base_portal_us),
                    median(&portal_us_b),
                    spread(&base_cpu_per_k, 4),
                    spread(&cpu_per_k, 4),
                )?;
                out.last_mut().context("case")?["baseline"] = json!({
                    "throughput_loss_pct": base_loss, "portal_cpu_us_per_request": base_portal_us,
                    "cpu_s_per_1k_requests": base_cpu_per_k,
                });
            }
        }
        if let Some(b) = &self.baseline {
            writeln!(
                md,
                "\nBefore/after in the same rounds: the baseline is `{}`, run as a third side of each \
                 round (order rotating).\n\n\
                 | case | throughput loss, baseline | throughput loss, this build | portal CPU us/req detached | baseline | this build | vigie CPU s / 1k req, baseline | this build |\n\
                 |---|---|---|---|---|---|---|---|\n{before_after}",
                b.display()
            )?;
        }
        if !foreign.is_empty() {
            writeln!(
                md,
                "\n**Other BPF programs were attached while these rounds ran** (`bpftool perf show`), \
                 taxing the detached side as well: {}. Compare the CPU per request, not the \
                 throughput, from this run.\n",
                foreign.iter().cloned().collect::<Vec<_>>().join("; ")
            )?;
        }
        md.push_str(&profiles);
        let (p50, p99, n) = hist_quantiles(&hist_all);
        writeln!(
            md,
            "\nAlert latency under this load (`vigie_pipeline_latency_seconds`, all attached rounds, {n:.0} accesses; \
             buckets 0.25, 0.5, 1, 2, 5, 10, 20, 50 ms..., so a quantile is its bucket's upper bound): p50 <= {}, p99 <= {}; \
             {:.2} % over 10 ms.\n",
            fmt_le(p50),
            fmt_le(p99),
            share_over(&hist_all, "0.01") * 100.0
        )?;
        if self.baseline.is_some() {
            let (b50, b99, bn) = hist_quantiles(&base_hist);
            writeln!(
                md,
                "The baseline's, in the same rounds ({bn:.0} accesses): p50 <= {}, p99 <= {}; {:.2} % over 10 ms.\n",
                fmt_le(b50),
                fmt_le(b99),
                share_over(&base_hist, "0.01") * 100.0
            )?;
        }
        Ok((
            md,
            json!({ "cases": out, "latency_histogram": hist_all, "hist_p50_le_s": p50, "hist_p99_le_s": p99,
                    "foreign_bpf_attachments": foreign,
                    "baseline_latency_histogram": base_hist }),
        ))
    }

    /// One more attached run of `case`, with the kernel's BPF run statistics on (they cost two
    /// clock reads per program run, so the A/B rounds run without them): where the kernel-side
    /// time goes, program by program, against the daemon's CPU in the same run.
    fn profile(
        &self,
        portal: &PortalGuard,
        root: &Path,
        url: &str,
        case: &PortalCase,
        script: &Path,
    ) -> anyhow::Result<(String, Value)> {
        let _stats = BpfStats::enable()?;
        let v = Vigie::start(&self.bins.vigie, &self.dir, &[portal.pid()], root, None)?;
        std::thread::sleep(Duration::from_millis(200));
        let mut daemon_s = 0.0;
        let (costs, w) = peers::program_costs(
            self.secs,
            || peers::vigie_programs(&v),
            || {
                let cpu0 = cpu_seconds(v.pid)?;
                let w = wrk(url, self.secs, case.conns, script)?;
                daemon_s = cpu_seconds(v.pid)? - cpu0;
                Ok(w)
            },
        )?;
        v.stop()?;
        let mut rows: Vec<(&String, &(f64, f64))> = costs.iter().collect();
        rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
        let kernel_ns: f64 = rows.iter().map(|r| r.1.1).sum();
        let daemon_ns = daemon_s * 1e9 / w.requests.max(1) as f64;
        let mut md = format!(
            "\n**Where the time goes: {}** (one more attached run of {} s with \
             `kernel.bpf_stats_enabled=1`: {:.0} req/s, {} requests; the background of the same \
             length with the portal idle subtracted). Program run time only: the \
             tracepoint's own cost around each run (the host tax) is not in it; counting adds \
             about 45 ns to each run.\n\n\
             | program | runs per request | ns per run | ns per request |\n|---|---|---|---|\n",
            case.name, self.secs, w.rps, w.requests
        );
        let mut js = vec![];
        for (p, (runs, ns)) in &rows {
            let per_run = if *runs > 0.0 { ns / runs } else { 0.0 };
            writeln!(md, "| `{p}` | {runs:.2} | {per_run:.0} | {ns:.0} |")?;
            js.push(json!({ "program": p, "runs_per_request": runs, "ns_per_request": ns }));
        }
        writeln!(
            md,
            "| **all programs** | {:.2} | | **{kernel_ns:.0}** |\n\n\
             Kernel-side program time {:.2} us per request against Vigie's own CPU {:.2} us per \
             request in the same run ({:.1}x).\n",
            rows.iter().map(|r| r.1.0).sum::<f64>(),
            kernel_ns / 1e3,
            daemon_ns / 1e3,
            if kernel_ns > 0.0 {
                daemon_ns / kernel_ns
            } else {
                f64::NAN
            }
        )?;
        Ok((
            md,
            json!({ "rps": w.rps, "requests": w.requests, "programs": js,
                    "kernel_ns_per_request": kernel_ns,
                    "daemon_cpu_ns_per_request": daemon_ns }),
        ))
    }

    fn host_tax(&mut self, _: &BenchArgs) -> anyhow::Result<(String, Value)> {
        let root = self.dir.join("portal-tax");
        let portal = start_portal(&self.bins.portal, &root, &["--model", "thread"])?;
        let small = self.dir.join("small.txt");
        std::fs::write(&small, b"0123456789abcdef")?;
        let loops: [(&str, u64, u64); 3] = [
            ("read(/dev/zero, 1 B)", 2_000_000, 1),
            ("openat+read+close of a 16 B file", 300_000, 3),
            ("getppid (not hooked)", 2_000_000, 1),
        ];
        let mut diffs: Vec<Vec<f64>> = vec![vec![]; loops.len()];
        let mut base: Vec<Vec<f64>> = vec![vec![]; loops.len()];
        for r in 0..self.rounds {
            let order = if r % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            let mut res = [[0f64; 3]; 2];
            for with in order {
                let v = if with {
                    Some(Vigie::start(
                        &self.bins.vigie,
                        &self.dir,
                        &[portal.pid()],
                        &root,
                        None,
                    )?)
                } else {
                    None
                };
                for (i, (_, n, _)) in loops.iter().enumerate() {
                    res[usize::from(with)][i] = syscall_loop(i, *n, &small)?;
                }
                if let Some(v) = v {
                    v.stop()?;
                }
            }
            for (i, (_, _, per)) in loops.iter().enumerate() {
                base[i].push(res[0][i]);
                diffs[i].push((res[1][i] - res[0][i]) / *per as f64);
            }
        }
        drop(portal);
        let mut md = String::from("## Host tax (a process that is not a target)\n\n");
        writeln!(
            md,
            "The bench process itself runs each loop while Vigie is detached, then attached to a \
             portal (another process); {} rounds, alternating order. Cost per call without Vigie, \
             and the difference per hooked syscall, median [min, max]:\n",
            self.rounds
        )?;
        md.push_str("| loop | ns per iteration, detached | added ns per syscall, attached |\n|---|---|---|\n");
        let mut js = vec![];
        for (i, (name, _, _)) in loops.iter().enumerate() {
            writeln!(
                md,
                "| {name} | {:.0} | {} |",
                median(&base[i]),
                spread(&diffs[i], 1)
            )?;
            js.push(
                json!({ "loop": name, "detached_ns": base[i], "added_ns_per_syscall": diffs[i] }),
            );
        }
        md.push('\n');
        Ok((md, json!(js)))
    }

    fn pipeline(&mut self, _: &BenchArgs) -> anyhow::Result<(String, Value)> {
        let root = self.dir.join("portal-pipe");
        // Generate the tree (the portal exits right after: we only need the documents).
        let portal = start_portal(&self.bins.portal, &root, &["--model", "thread"])?;
        drop(portal);
        let doc = root.join("users/alice/notes.txt");
        let loader = Loader::fork(&doc)?;
        let v = Vigie::start(&self.bins.vigie, &self.dir, &[loader.pid], &root, None)?;
        let mut rows = vec![];
        let mut md =
            String::from("## Pipeline capacity (ring buffer -> decode -> correlate -> judge)\n\n");
        writeln!(
            md,
            "A forked target process calls `pread(doc, 1 byte)` at a fixed rate (paced every 1 ms) \
             for {} s per step; each call is one `file_read` event (no capture). Events and losses \
             are read from /metrics before and after each step. Rate 0 = as fast as it can.\n",
            self.secs
        )?;
        md.push_str("| offered events/s | achieved events/s | events received/s | lost | vigie CPU (cores) |\n|---|---|---|---|---|\n");
        let mut zero_loss_max = 0f64;
        let mut first_loss = None;
        for rate in [50_000u64, 100_000, 200_000, 400_000, 800_000, 0] {
            let m0 = v.metrics()?;
            let c0 = cpu_seconds(v.pid)?;
            let t = Instant::now();
            let done = loader.run(rate, self.secs * 1000)?;
            let el = t.elapsed().as_secs_f64();
            let c1 = cpu_seconds(v.pid)?;
            std::thread::sleep(Duration::from_millis(400));
            let m1 = v.metrics()?;
            let ev = metric_sum(&m1, "vigie_events_total", Some("kind=\"file_read\""))
                - metric_sum(&m0, "vigie_events_total", Some("kind=\"file_read\""));
            let lost = metric_sum(&m1, "vigie_events_lost_total", None)
                - metric_sum(&m0, "vigie_events_lost_total", None);
            let achieved = done as f64 / el;
            if lost == 0.0 {
                zero_loss_max = zero_loss_max.max(ev / el);
            } else if first_loss.is_none() {
                first_loss = Some(achieved);
            }
            writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.0} | {:.2} |",
                if rate == 0 {
                    "max".to_string()
                } else {
                    rate.to_string()
                },
                achieved,
                ev / el,
                lost,
                (c1 - c0) / el
            )?;
            step(
                "bench",
                &format!(
                    "  pipeline rate {rate}: achieved {achieved:.0}/s, received {:.0}/s, lost {lost}",
                    ev / el
                ),
            );
            rows.push(json!({ "offered": rate, "achieved": achieved, "received_per_s": ev / el, "lost": lost, "vigie_cores": (c1 - c0) / el }));
        }
        drop(loader);
        let s = v.stop()?;
        writeln!(
            md,
            "\nHighest sustained rate with zero loss: {zero_loss_max:.0} events/s. Loss starts at: {}. \
             Vigie's own summary: {} events, {} lost.\n",
            first_loss.map_or("not reached".to_string(), |r| format!(
                "{r:.0} events/s offered"
            )),
            s.events,
            s.lost
        )?;
        Ok((
            md,
            json!({ "steps": rows, "zero_loss_max": zero_loss_max, "first_loss": first_loss }),
        ))
    }

    fn latency(&mut self, _: &BenchArgs) -> anyhow::Result<(String, Value)> {
        let root = self.dir.join("portal-lat");
        let portal = start_portal(&self.bins.portal, &root, &["--model", "thread"])?;
        let v = Vigie::start(&self.bins.vigie, &self.dir, &[portal.pid()], &root, None)?;
        let alerts = v.alerts().to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        // Tail the alert file every 100 us: latency = arrival - request head's kernel timestamp.
        let tail = std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
            let mut f = std::fs::File::open(&alerts)?;
            let mut pos = 0u64;
            let mut pending = Vec::new();
            let mut lat = vec![];
            let mut buf = vec![0u8; 1 << 16];
            loop {
                f.seek(SeekFrom::Start(pos))?;
                let n = f.read(&mut buf)?;
                if n == 0 {
                    if stop2.load(Ordering::Relaxed) {
                        return Ok(lat);
                    }
                    std::thread::sleep(Duration::from_micros(100));
                    continue;
                }
                let now = monotonic_ns();
                pos += n as u64;
                pending.extend_from_slice(&buf[..n]);
                while let Some(i) = pending.iter().position(|&c| c == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&line)
                        && let Some(ts) = v["request"]["ts_ns"].as_u64()
                    {
                        lat.push((now.saturating_sub(ts)) as f64 / 1e6);
                    }
                }
            }
        });
        let mut c = KeepAlive::connect(portal.addr())?;
        let n = 200 * self.secs.max(2);
        let period = Duration::from_millis(5);
        let t0 = Instant::now();
        for i in 0..n {
            let doc = ["/docs/bob/health-record.pdf", "/docs/carol/notes.txt"][(i % 2) as usize];
            c.get(doc, &[("X-Remote-User", "alice")])?;
            let next = t0 + period * (i as u32 + 1);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let mut lat = tail
            .join()
            .map_err(|_| anyhow::anyhow!("tail thread panicked"))??;
        let metrics = v.metrics().unwrap_or_default();
        let hist = histogram(&metrics, "vigie_pipeline_latency_seconds");
        v.stop()?;
        drop(portal);
        lat.sort_by(f64::total_cmp);
        let (p50, p99, max) = (
            pct(&lat, 50.0),
            pct(&lat, 99.0),
            lat.last().copied().unwrap_or(0.0),
        );
        let (h50, h99, hn) = hist_quantiles(&hist);
        let mut md = String::from("## Alert latency (light load)\n\n");
        writeln!(
            md,
            "A client sends {n} cross-user requests at 200/s on one keep-alive connection to the \
             thread portal; a thread tails the alert file every 100 us and takes, for each alert \
             line, CLOCK_MONOTONIC at arrival minus the alert's `request.ts_ns` (the kernel \
             timestamp of the request head, which precedes the document read by the portal's \
             handling time, so this is an upper bound). {} alerts seen.\n\n\
             - from alert lines: p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms\n\
             - `vigie_pipeline_latency_seconds` ({hn:.0} accesses): p50 <= {}, p99 <= {}\n",
            lat.len(),
            fmt_le(h50),
            fmt_le(h99)
        )?;
        Ok((
            md,
            json!({ "alerts": lat.len(), "p50_ms": p50, "p99_ms": p99, "max_ms": max, "hist": hist, "hist_p50_le_s": h50, "hist_p99_le_s": h99 }),
        ))
    }

    fn connections(&mut self, args: &BenchArgs) -> anyhow::Result<(String, Value)> {
        let root = self.dir.join("portal-conns");
        let portal = start_portal(&self.bins.portal, &root, &["--model", "thread"])?;
        let v = Vigie::start(&self.bins.vigie, &self.dir, &[portal.pid()], &root, None)?;
        std::thread::sleep(Duration::from_millis(300));
        let rss0 = proc_status_kib(v.pid, "VmRSS").unwrap_or(0);
        let cpu0 = cpu_seconds(v.pid)?;
        let t = Instant::now();
        let mut conns = Vec::with_capacity(args.connections);
        let mut failed = None;
        for i in 0..args.connections {
            let r = KeepAlive::connect(portal.addr()).and_then(|mut c| {
                c.get("/docs/alice/notes.txt", &[("X-Remote-User", "alice")])?;
                Ok(c)
            });
            match r {
                Ok(c) => conns.push(c),
                Err(e) => {
                    failed = Some(format!("connection {i}: {e}"));
                    break;
                }
            }
        }
        let open_s = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(1000));
        let rss1 = proc_status_kib(v.pid, "VmRSS").unwrap_or(0);
        let hwm1 = proc_status_kib(v.pid, "VmHWM").unwrap_or(0);
        let portal_rss = proc_status_kib(portal.pid(), "VmRSS").unwrap_or(0);
        let portal_threads = proc_status_kib(portal.pid(), "Threads").unwrap_or(0);
        let cpu1 = cpu_seconds(v.pid)?;
        let opened = conns.len();
        drop(conns);
        std::thread::sleep(Duration::from_millis(1000));
        let rss2 = proc_status_kib(v.pid, "VmRSS").unwrap_or(0);
        let s = v.stop()?;
        drop(portal);
        let mut md = String::from("## Daemon RSS with idle keep-alive connections tracked\n\n");
        writeln!(
            md,
            "Thread portal (a thread per connection). The bench opens {opened} keep-alive \
             connections ({:.1} s), makes one request on each, and keeps them open and idle{}. \
             Vigie VmRSS before: {:.1} MiB; with the connections open: {:.1} MiB (VmHWM {:.1} MiB); \
             after they close: {:.1} MiB. Portal: {portal_threads} threads, {:.1} MiB. Vigie CPU \
             for the {opened} connections + requests: {:.2} s. Vigie summary: {} events, {} lost, {} requests.\n",
            open_s,
            failed
                .as_ref()
                .map_or(String::new(), |f| format!(" (stopped early: {f})")),
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            hwm1 as f64 / 1024.0,
            rss2 as f64 / 1024.0,
            portal_rss as f64 / 1024.0,
            cpu1 - cpu0,
            s.events,
            s.lost,
            s.requests
        )?;
        Ok((
            md,
            json!({ "opened": opened, "failed": failed, "rss_before_kib": rss0, "rss_open_kib": rss1, "hwm_kib": hwm1, "rss_after_kib": rss2, "portal_threads": portal_threads, "lost": s.lost }),
        ))
    }

    fn replay(&mut self, args: &BenchArgs) -> anyhow::Result<(String, Value)> {
        let trace = self.dir.join("synth.jsonl");
        let t = Instant::now();
        run_ok(
            Command::new(&self.bins.synth)
                .arg(&trace)
                .arg(args.replay_events.to_string()),
        )?;
        let gen_s = t.elapsed().as_secs_f64();
        let size = std::fs::metadata(&trace)?.len();
        let t = Instant::now();
        let out = Command::new(&self.bins.vigie)
            .arg("replay")
            .arg(&trace)
            .args(["--alerts", "/dev/null", "--no-progress"])
            .output()?;
        let wall = t.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&trace);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            bail!("vigie replay failed: {stderr}");
        }
        let rate = args.replay_events as f64 / wall;
        let line = stderr
            .lines()
            .find(|l| l.contains("/s"))
            .unwrap_or("")
            .to_string();
        let mut md = String::from("## Replay throughput\n\n");
        writeln!(
            md,
            "`synth_trace` wrote {} events ({:.2} GB) in {gen_s:.1} s; `vigie replay --alerts /dev/null \
             --no-progress` took {wall:.1} s wall: {:.2} M events/s. Its own line: `{}`. The file was deleted.\n",
            args.replay_events,
            size as f64 / 1e9,
            rate / 1e6,
            line.trim()
        )?;
        Ok((
            md,
            json!({ "events": args.replay_events, "bytes": size, "wall_s": wall, "events_per_s": rate, "stderr": stderr }),
        ))
    }
}

impl Bench {
    /// `vigie verify` over a synthetic trail written by the live writer: records per second
    /// on one core (verify is single-threaded), process start and file reads included.
    fn trail_verify(&mut self, args: &BenchArgs) -> anyhow::Result<(String, Value)> {
        let dir = self.dir.join("trail");
        let t = Instant::now();
        run_ok(
            Command::new(&self.bins.synth_trail)
                .arg(&dir)
                .arg(args.trail_records.to_string()),
        )?;
        let gen_s = t.elapsed().as_secs_f64();
        let size: u64 = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        let public = self.dir.join("trail.key.pub");
        let t = Instant::now();
        let out = Command::new(&self.bins.vigie)
            .arg("verify")
            .arg("--key")
            .arg(&public)
            .arg(&dir)
            .output()?;
        let wall = t.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&dir);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "vigie verify failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The trail holds the accesses plus its own records (file, start, checkpoints, stop).
        let records = stdout
            .split_once(" records in ")
            .and_then(|(a, _)| a.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(args.trail_records);
        let rate = records as f64 / wall;
        let mut md = String::from("## Trail verification\n\n");
        writeln!(
            md,
            "`synth_trail` wrote {records} records ({:.2} GB) in {gen_s:.1} s through the live \
             writer; `vigie verify` took {wall:.2} s wall on one core: {:.2} M records/s \
             (one SHA-256 per line, every signature checked). Its verdict: `{}`. Deleted after.\n",
            size as f64 / 1e9,
            rate / 1e6,
            stdout.lines().next().unwrap_or("").trim()
        )?;
        Ok((
            md,
            json!({ "records": records, "bytes": size, "wall_s": wall, "records_per_s": rate, "stdout": stdout }),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Processes under test.

/// The release demo portal on a free loopback port, its per-request log discarded.
fn start_portal(bin: &Path, root: &Path, args: &[&str]) -> anyhow::Result<PortalGuard> {
    let mut all: Vec<&OsStr> = vec![
        OsStr::new("--root"),
        root.as_os_str(),
        OsStr::new("--generate"),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
    ];
    all.extend(args.iter().map(OsStr::new));
    spawn_portal_quiet(bin, all).context("starting demo-portal")
}

/// `vigie run` (the tests' [`VigieProcess`]) with its metrics on a free port, logging warnings
/// only.
struct Vigie {
    process: VigieProcess,
    pid: u32,
    port: u16,
}

#[derive(Default)]
struct Summary {
    events: u64,
    rate: f64,
    lost: u64,
    requests: u64,
}

impl Vigie {
    fn start(
        bin: &Path,
        dir: &Path,
        pids: &[u32],
        root: &Path,
        record: Option<&Path>,
    ) -> anyhow::Result<Vigie> {
        let users = root.join("users");
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let config = format!(
            "[targets]\npids = [{}]\n[documents]\nroots = [\"{u}\"]\nowner_templates = [\"{u}/{{owner}}/**\"]\n",
            pids.join(", "),
            u = users.display()
        );
        let port = free_port()?;
        let metrics = format!("127.0.0.1:{port}");
        let mut args = vec!["--metrics-addr", metrics.as_str()];
        if let Some(rec) = record {
            args.push("--record");
            args.push(rec.to_str().context("a UTF-8 trace directory")?);
        }
        let options = Options {
            config: &config,
            log_level: "warn",
            args: &args,
            ready_within: Duration::from_secs(60),
        };
        let process = VigieProcess::start(bin, dir, &options)?;
        let pid = process.pid();
        Ok(Vigie { process, pid, port })
    }

    fn alerts(&self) -> &Path {
        self.process.alerts_path()
    }

    fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) =
            vigie_tests::client::http_get(&format!("127.0.0.1:{}", self.port), "/metrics", &[])?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// SIGINT, wait, and parse the exit summary
    /// (`vigie: 2.1s, N events (R/s), L lost, ..., Q requests, ...`).
    fn stop(mut self) -> anyhow::Result<Summary> {
        let st = self.process.interrupt()?;
        let err = self.process.log();
        if !st.success() {
            bail!("vigie exited with {st}: {err}");
        }
        let line = err
            .lines()
            .find(|l| l.starts_with("vigie: ") && l.contains(" events ("))
            .with_context(|| format!("no summary line in vigie's stderr: {err}"))?;
        let num_before = |key: &str| -> u64 {
            line.split(key)
                .next()
                .and_then(|s| s.rsplit([' ', ',']).find(|w| !w.is_empty()))
                .and_then(|w| w.parse().ok())
                .unwrap_or(0)
        };
        let rate = line
            .split(" events (")
            .nth(1)
            .and_then(|s| s.split("/s").next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        Ok(Summary {
            events: num_before(" events ("),
            rate,
            lost: num_before(" lost,"),
            requests: num_before(" requests,"),
        })
    }
}

/// A forked child that is a Vigie target and, on command, calls `pread(fd, 1 byte)` at a given
/// rate, on two fds of the document in turn (each call one `file_read` event). It only makes raw syscalls (safe after fork in a threaded parent).
struct Loader {
    pid: u32,
    cmd_w: i32,
    res_r: i32,
}

impl Loader {
    fn fork(doc: &Path) -> anyhow::Result<Loader> {
        let cpath = std::ffi::CString::new(doc.as_os_str().as_encoded_bytes())?;
        let (mut a, mut b) = ([0i32; 2], [0i32; 2]);
        // SAFETY: plain pipe creation.
        if unsafe { libc::pipe2(a.as_mut_ptr(), libc::O_CLOEXEC) } != 0
            || unsafe { libc::pipe2(b.as_mut_ptr(), libc::O_CLOEXEC) } != 0
        {
            bail!("pipe: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the child only makes async-signal-safe raw syscalls and exits with _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: the child drops the parent's ends, so closing them upstream ends it.
            unsafe {
                libc::close(a[1]);
                libc::close(b[0]);
                loader_child(&cpath, a[0], b[1])
            }
        }
        // SAFETY: closing our copies of the child's ends.
        unsafe {
            libc::close(a[0]);
            libc::close(b[1]);
        }
        Ok(Loader {
            pid: pid as u32,
            cmd_w: a[1],
            res_r: b[0],
        })
    }

    /// Runs `rate` preads per second (0: unpaced) for `ms`; returns how many were made.
    fn run(&self, rate: u64, ms: u64) -> anyhow::Result<u64> {
        let cmd = [rate, ms];
        // SAFETY: writing 16 bytes from a local array; reading 8 into one.
        let n = unsafe { libc::write(self.cmd_w, cmd.as_ptr().cast(), 16) };
        if n != 16 {
            bail!("loader command: {}", std::io::Error::last_os_error());
        }
        let mut done = 0u64;
        let n = unsafe { libc::read(self.res_r, (&raw mut done).cast(), 8) };
        if n != 8 {
            bail!("loader result: {}", std::io::Error::last_os_error());
        }
        Ok(done)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // SAFETY: closing the command pipe makes the child exit; then reap it.
        unsafe {
            libc::close(self.cmd_w);
            libc::close(self.res_r);
            libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0);
        }
    }
}

unsafe fn loader_child(path: &std::ffi::CStr, cmd_r: i32, res_w: i32) -> ! {
    unsafe {
        // Two open files of the document, read in turn: the probes count a thread's reads of
        // the fd it read last rather than send each, and every call here must be one event.
        let fds = [
            libc::open(path.as_ptr(), libc::O_RDONLY),
            libc::open(path.as_ptr(), libc::O_RDONLY),
        ];
        let mut byte = 0u8;
        loop {
            let mut cmd = [0u64; 2];
            if libc::read(cmd_r, cmd.as_mut_ptr().cast(), 16) != 16 {
                libc::_exit(0);
            }
            let (rate, ms) = (cmd[0], cmd[1]);
            let start = monotonic_ns();
            let end = start + ms * 1_000_000;
            let mut done = 0u64;
            loop {
                let now = monotonic_ns();
                if now >= end {
                    break;
                }
                let target = if rate == 0 {
                    done as u128 + 1000
                } else {
                    // Due by now, plus one millisecond's worth so each batch is ~1 ms.
                    (now - start) as u128 * rate as u128 / 1_000_000_000 + (rate / 1000) as u128
                } as u64;
                if done >= target {
                    let ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 200_000,
                    };
                    libc::nanosleep(&ts, std::ptr::null_mut());
                    continue;
                }
                while done < target {
                    libc::pread(fds[(done & 1) as usize], (&raw mut byte).cast(), 1, 0);
                    done += 1;
                }
            }
            libc::write(res_w, (&raw const done).cast(), 8);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Load generators and measurements.

struct WrkResult {
    rps: f64,
    p99_ms: f64,
    requests: u64,
}

fn wrk(url: &str, secs: u64, conns: u32, script: &Path) -> anyhow::Result<WrkResult> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| {
                l[prefix.len()..]
                    .split_whitespace()
                    .next()
                    .map(String::from)
            })
    };
    let rps: f64 = field("Requests/sec:")
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("wrk output: {text}"))?;
    let p99 = field("99%")
        .map(|s| parse_duration_ms(&s))
        .unwrap_or(f64::NAN);
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if text.contains("Non-2xx") {
        bail!("wrk saw non-2xx responses: {text}");
    }
    Ok(WrkResult {
        rps,
        p99_ms: p99,
        requests,
    })
}

fn parse_duration_ms(s: &str) -> f64 {
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e3)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().map(|v| v * mult).unwrap_or(f64::NAN)
}

/// wrk request mix: users alice, bob and carol (in that order, `creds` their values of the
/// `header` that says who they are) read their own `docs` under `/docs/<owner>/`, and 1 in 8
/// requests reads another user's (a violation alert each). `extra`: more headers, as Lua table
/// fields (`, ["Connection"] = "close"`).
fn wrk_mix(docs: &[String], header: &str, creds: &[String], extra: &str) -> String {
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
local users = {{"alice", "bob", "carol"}}
local creds = {{{}}}
local docs = {{{}}}
local reqs = {{}}
-- In init, once wrk knows the Host header it adds to each request.
init = function(args)
  for n = 0, 23 do
    local u = (n % 3) + 1
    local owner = users[u]
    if n % 8 == 7 then owner = users[((n + 1) % 3) + 1] end
    local d = docs[(math.floor(n / 3) % #docs) + 1]
    local headers = {{["Host"] = wrk.headers["Host"], [{header:?}] = creds[u]{extra}}}
    reqs[#reqs + 1] = wrk.format("GET", "/docs/" .. owner .. "/" .. d, headers)
  end
end
local i = 0
request = function()
  i = i + 1
  if i > #reqs then i = 1 end
  return reqs[i]
end
"#,
        list(creds),
        list(docs)
    )
}

/// Runs loop `which` `n` times in this (non-target) process; ns per iteration.
fn syscall_loop(which: usize, n: u64, small: &Path) -> anyhow::Result<f64> {
    let zero = std::ffi::CString::new("/dev/zero")?;
    let small = std::ffi::CString::new(small.as_os_str().as_encoded_bytes())?;
    let mut buf = [0u8; 64];
    // SAFETY: raw syscalls on fds we own and a local buffer.
    unsafe {
        let fd = libc::open(zero.as_ptr(), libc::O_RDONLY);
        if fd < 0 {
            bail!("open /dev/zero");
        }
        let t = Instant::now();
        for _ in 0..n {
            match which {
                0 => {
                    libc::read(fd, buf.as_mut_ptr().cast(), 1);
                }
                1 => {
                    let f = libc::open(small.as_ptr(), libc::O_RDONLY);
                    libc::read(f, buf.as_mut_ptr().cast(), buf.len());
                    libc::close(f);
                }
                _ => {
                    libc::syscall(libc::SYS_getppid);
                }
            }
        }
        let el = t.elapsed();
        libc::close(fd);
        Ok(el.as_nanos() as f64 / n as f64)
    }
}

fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let ticks: f64 = f.get(11).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// BPF programs attached to perf-based hooks (tracepoints, raw tracepoints, kprobes) by processes
/// other than `ours`, as `bpftool perf show` lists them, one line per process: `pid 123 (comm):
/// raw_tracepoint sys_enter, ...`. Empty when bpftool is missing.
fn foreign_attachments(ours: Option<u32>) -> Vec<String> {
    let Ok(out) = Command::new("bpftool").args(["perf", "show"]).output() else {
        return Vec::new();
    };
    let mut by_pid: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        // pid 31504  fd 29: prog_id 22581  raw_tracepoint  sys_enter
        let w: Vec<&str> = l.split_whitespace().collect();
        let Some(pid) = w.get(1).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Some(pid) != ours && w.len() > 6 {
            by_pid.entry(pid).or_default().push(w[6..].join(" "));
        }
    }
    by_pid
        .into_iter()
        .map(|(pid, mut hooks)| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            hooks.sort();
            hooks.dedup();
            let n = hooks.len();
            hooks.truncate(3);
            let more = if n > 3 {
                format!(" and {} more", n - 3)
            } else {
                String::new()
            };
            format!("pid {pid} ({}): {}{more}", comm.trim(), hooks.join(", "))
        })
        .collect()
}

/// CPU seconds of `pid` and its descendants now alive (prefork workers).
fn tree_cpu_seconds(pid: u32) -> f64 {
    tree_pids(pid)
        .into_iter()
        .map(|p| cpu_seconds(p).unwrap_or(0.0))
        .sum()
}

/// `pid` and its descendants now alive.
fn tree_pids(pid: u32) -> Vec<u32> {
    let mut all = vec![];
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        all.push(p);
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    all
}

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Sum of a metric's series, optionally only those whose labels contain `label`.
fn metric_sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))
        })
        .filter(|l| label.is_none_or(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A metric's series by the value of its one label `label`.
fn by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{name}{{{label}=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (value, rest) = l.split_once("\"}")?;
            Some((value.to_string(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// `kernel.bpf_stats_enabled` on for as long as this lives, then back to what it was.
struct BpfStats {
    before: String,
}

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> anyhow::Result<BpfStats> {
        let before = std::fs::read_to_string(BPF_STATS_SYSCTL)
            .with_context(|| format!("reading {BPF_STATS_SYSCTL}"))?;
        std::fs::write(BPF_STATS_SYSCTL, "1")
            .with_context(|| format!("turning on BPF run statistics ({BPF_STATS_SYSCTL})"))?;
        Ok(BpfStats {
            before: before.trim().to_string(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS_SYSCTL, &self.before);
    }
}

/// Cumulative buckets of a histogram: le -> count.
fn histogram(text: &str, name: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            Some((le.to_string(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// p50 and p99 upper bounds (bucket `le`, seconds) and the count.
fn hist_quantiles(h: &BTreeMap<String, f64>) -> (f64, f64, f64) {
    let mut b: Vec<(f64, f64)> = h
        .iter()
        .map(|(le, c)| {
            (
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                },
                *c,
            )
        })
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last().map_or(0.0, |x| x.1);
    let q = |p: f64| {
        b.iter()
            .find(|(_, c)| *c >= total * p)
            .map_or(f64::NAN, |x| x.0)
    };
    (q(0.5), q(0.99), total)
}

/// Share of a histogram's observations above the bucket bound `le` (as the metric spells it).
fn share_over(h: &BTreeMap<String, f64>, le: &str) -> f64 {
    let total = h.get("+Inf").copied().unwrap_or(0.0);
    match h.get(le) {
        Some(below) if total > 0.0 => 1.0 - below / total,
        _ => f64::NAN,
    }
}

fn fmt_le(s: f64) -> String {
    if s.is_finite() {
        // Bucket bounds: 0.25 ms, 10 ms, 100 ms...
        format!("{} ms", (s * 1e5).round() / 100.0)
    } else {
        "+Inf".into()
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    pct(&s, 50.0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `median [min, max]`.
fn spread(v: &[f64], decimals: usize) -> String {
    let mn = v.iter().copied().fold(f64::INFINITY, f64::min);
    let mx = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.d$} [{:.d$}, {:.d$}]", median(v), mn, mx, d = decimals)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn ensure_wrk() -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return Ok(());
    }
    step("bench", "apt-get install -y wrk");
    run_ok(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "wrk"]),
    )
}

/// The 10,000-connection test needs more than the usual 1,024 fds (children inherit this).
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn machine() -> (String, Value) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    (
        format!(
            "Machine: {nproc} vCPUs ({cpu}), kernel {kernel}, {:.1} GiB RAM.",
            mem as f64 / 1048576.0
        ),
        json!({ "nproc": nproc, "cpu": cpu, "kernel": kernel, "mem_kib": mem }),
    )
}
