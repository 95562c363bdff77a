//! The real-server rounds of `cargo xtask bench` (issue 17) and its HTTPS round (issue 15).
//!
//! Each case runs a real server from Debian packages ([`servers`](super::servers)) and measures,
//! in the same interleaved rounds (the order rotates each round), the sides a user could pick:
//! nothing attached, Vigie (and the `--baseline` build), a real auditd with a read watch on the
//! document root, a bpftrace logger of the target's opens, and the floor (Vigie's hook set with
//! programs that only check the target). Per side: throughput as a ratio to nothing attached,
//! the server's CPU per request, p99 latency, and Vigie's events per request. Then, with the
//! kernel's BPF run statistics on, Vigie's kernel-side time per request program by program
//! against the floor's on the same hooks.
//!
//! auditd's side runs on a second instance of the server, started while auditd runs: the kernel
//! gives a process an audit context at fork only once auditing is on, so a host that runs
//! auditd from boot has every server process audited, and this is that.
use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::{
    Bench, BpfStats, Vigie, WrkResult, by_label, median, metric_sum,
    servers::{self, DOCS, Kind, Server, USERS},
    sides::{self, Auditd, Bpftrace, Hook},
    spread, step, tree_cpu_seconds, wrk, wrk_mix,
};

/// One side of a peer round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Nothing,
    Vigie,
    Baseline,
    Auditd,
    Bpftrace,
    Floor,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Nothing => "nothing attached",
            Peer::Vigie => "Vigie",
            Peer::Baseline => "Vigie (baseline)",
            Peer::Auditd => "auditd (read watch)",
            Peer::Bpftrace => "bpftrace open logger",
            Peer::Floor => "floor (hooks, target check only)",
        }
    }
}

/// One server configuration.
struct Case {
    name: &'static str,
    kind: Kind,
    doc_bytes: usize,
    /// wrk connections.
    conns: u32,
    /// Every side, or only nothing attached and Vigie (the HTTPS round).
    peers: bool,
}

/// What one side measured in one round.
#[derive(Default)]
struct SideRun {
    wrk: Option<WrkResult>,
    portal_us: f64,
    events_per_request: Option<f64>,
    records_per_request: Option<f64>,
    lost: u64,
}

/// All rounds of one side.
#[derive(Default)]
struct SideRuns {
    rps: Vec<f64>,
    ratio: Vec<f64>,
    p99_ms: Vec<f64>,
    portal_us: Vec<f64>,
    events_per_request: Vec<f64>,
    records_per_request: Vec<f64>,
    lost: u64,
}

impl Bench {
    /// nginx serving 64 KiB documents with `sendfile on`.
    pub(super) fn nginx(&mut self, _: &super::BenchArgs) -> anyhow::Result<(String, Value)> {
        self.peer_cases(
            "Real server: nginx with sendfile, against the peers and the floor",
            &[Case {
                name: "nginx, sendfile, 64 KiB documents",
                kind: Kind::Nginx,
                doc_bytes: 64 << 10,
                conns: 8,
                peers: true,
            }],
        )
    }

    /// gunicorn reading and writing 8 KiB chunks, 64 KiB and 2 MiB documents.
    pub(super) fn chunked(&mut self, _: &super::BenchArgs) -> anyhow::Result<(String, Value)> {
        self.peer_cases(
            "Real server: gunicorn in 8 KiB chunks, against the peers and the floor",
            &[
                Case {
                    name: "gunicorn, 8 KiB chunks, 64 KiB documents",
                    kind: Kind::Chunked,
                    doc_bytes: 64 << 10,
                    conns: 8,
                    peers: true,
                },
                Case {
                    name: "gunicorn, 8 KiB chunks, 2 MiB documents",
                    kind: Kind::Chunked,
                    doc_bytes: 2 << 20,
                    conns: 8,
                    peers: true,
                },
            ],
        )
    }

    /// nginx over TLS (HTTP/1.1): nothing attached against Vigie, and the TLS uprobes' cost.
    pub(super) fn https(&mut self, _: &super::BenchArgs) -> anyhow::Result<(String, Value)> {
        self.peer_cases(
            "HTTPS: nginx terminating TLS, and the TLS uprobes' cost",
            &[Case {
                name: "nginx, HTTPS (HTTP/1.1), 64 KiB documents",
                kind: Kind::NginxTls,
                doc_bytes: 64 << 10,
                conns: 8,
                peers: false,
            }],
        )
    }

    fn peer_cases(&mut self, title: &str, cases: &[Case]) -> anyhow::Result<(String, Value)> {
        let mut md = format!("## {title}\n\n");
        let mut js = vec![];
        for case in cases {
            step("bench", &format!("  case {}", case.name));
            match self.peer_case(case) {
                Ok((m, v)) => {
                    md.push_str(&m);
                    js.push(v);
                }
                Err(e) => {
                    writeln!(md, "### {}\n\nFAILED: {e:#}\n", case.name)?;
                    js.push(json!({ "case": case.name, "error": format!("{e:#}") }));
                }
            }
        }
        Ok((md, Value::Array(js)))
    }

    fn peer_case(&mut self, case: &Case) -> anyhow::Result<(String, Value)> {
        let dir = self.dir.join(format!("{:?}-{}", case.kind, case.doc_bytes));
        let root = dir.join("root");
        servers::documents(&root, case.doc_bytes)?;
        let server = Server::start(case.kind, &dir.join("server"), &root)?;
        let script = dir.join("mix.lua");
        let docs: Vec<String> = (0..DOCS).map(|n| format!("doc-{n}.bin")).collect();
        let creds: Vec<String> = USERS
            .iter()
            .map(|u| vigie_tests::basic(u, &format!("{u}-pw")))
            .collect();
        std::fs::write(&script, wrk_mix(&docs, "Authorization", &creds, ""))?;
        let url = format!("{}/", server.base);
        wrk(&url, 1, case.conns, &script).context("warm-up")?;

        let mut notes = vec![];
        let mut peers = vec![Peer::Nothing, Peer::Vigie];
        if self.baseline.is_some() {
            peers.push(Peer::Baseline);
        }
        let mut hooks = vec![];
        let mut floor = String::new();
        let mut audited = None;
        if case.peers {
            peers.push(Peer::Bpftrace);
            match self.audited_server(case, &dir, &root, &script) {
                Ok(s) => {
                    audited = Some(s);
                    peers.push(Peer::Auditd);
                    notes.push(
                        "auditd's side ran on a second instance of the server, started while \
                         auditd ran, so that its processes are audited as on a host that runs \
                         auditd from boot (the kernel gives a process an audit context at fork \
                         only once auditing is on)."
                            .into(),
                    );
                }
                Err(e) => notes.push(format!(
                    "**auditd could not run here, so its side is missing**: {e:#}."
                )),
            }
            hooks = sides::vigie_hooks(&self.bins.vigie)?;
            let (script, left_out) = sides::floor_script(&hooks, &server.pids());
            if !left_out.is_empty() {
                notes.push(format!(
                    "Hooks of Vigie's table the floor leaves out: {}.",
                    left_out.join("; ")
                ));
            }
            floor = script;
            peers.push(Peer::Floor);
        }

        let mut runs: BTreeMap<&str, SideRuns> = BTreeMap::new();
        for r in 0..self.rounds {
            let mut order = peers.clone();
            order.rotate_left(r % peers.len());
            let mut this_round = vec![];
            for peer in order {
                let target = match peer {
                    Peer::Auditd => audited.as_ref().context("no audited server")?,
                    _ => &server,
                };
                let run = self
                    .peer_side(peer, target, &root, &script, case, &floor)
                    .with_context(|| format!("{} side, round {r}", peer.name()))?;
                this_round.push((peer, run));
            }
            let nothing = this_round
                .iter()
                .find(|(p, _)| *p == Peer::Nothing)
                .and_then(|(_, r)| r.wrk.as_ref())
                .map_or(f64::NAN, |w| w.rps);
            let mut line = format!("  {} round {r}:", case.name);
            for (peer, run) in this_round {
                let w = run.wrk.context("no wrk result")?;
                write!(line, " {} {:.0} req/s;", peer.name(), w.rps)?;
                let s = runs.entry(peer.name()).or_default();
                s.rps.push(w.rps);
                s.ratio.push(w.rps / nothing);
                s.p99_ms.push(w.p99_ms);
                s.portal_us.push(run.portal_us);
                s.events_per_request.extend(run.events_per_request);
                s.records_per_request.extend(run.records_per_request);
                s.lost += run.lost;
            }
            step("bench", &line);
        }

        let mut md = format!("### {}\n\n", case.name);
        writeln!(
            md,
            "{} rounds x {} s per side, order rotating; wrk -t1 -c{} on loopback, keep-alive, \
             HTTP Basic, 3 users x {DOCS} documents of {} KiB, 1 request in 8 cross-user. \
             Ratio: the side's req/s over nothing attached's in the same round, median [min, max]. \
             Portal CPU: the server's processes (workers included, kernel time in their syscalls \
             and the programs run there included) per request.\n",
            self.rounds,
            self.secs,
            case.conns,
            case.doc_bytes >> 10
        )?;
        md.push_str("| side | req/s (median) | throughput ratio | p99 (median) | portal CPU us / req | Vigie events / req | log records / req (auditd SYSCALL records, bpftrace lines) |\n|---|---|---|---|---|---|---|\n");
        let mut sides_js = serde_json::Map::new();
        for peer in &peers {
            let Some(s) = runs.get(peer.name()) else {
                continue;
            };
            let opt = |v: &[f64]| {
                if v.is_empty() {
                    String::new()
                } else {
                    format!("{:.1}", median(v))
                }
            };
            writeln!(
                md,
                "| {} | {:.0} | {} | {:.2} ms | {:.1} | {} | {} |",
                peer.name(),
                median(&s.rps),
                spread(&s.ratio, 3),
                median(&s.p99_ms),
                median(&s.portal_us),
                opt(&s.events_per_request),
                opt(&s.records_per_request),
            )?;
            sides_js.insert(
                peer.name().into(),
                json!({ "rps": s.rps, "ratio": s.ratio, "p99_ms": s.p99_ms,
                        "portal_cpu_us_per_request": s.portal_us,
                        "events_per_request": s.events_per_request,
                        "records_per_request": s.records_per_request, "lost": s.lost }),
            );
        }
        let lost: u64 = runs.values().map(|s| s.lost).sum();
        if lost > 0 {
            notes.push(format!("Vigie lost {lost} events over its rounds."));
        }
        if let (Some(f), Some(n)) = (runs.get(Peer::Floor.name()), runs.get(Peer::Nothing.name())) {
            notes.push(format!(
                "The hooks' own cost (portal CPU per request with the floor attached minus \
                 nothing attached): {:.1} us per request.",
                median(&f.portal_us) - median(&n.portal_us)
            ));
        }
        for n in &notes {
            writeln!(md, "\n{n}")?;
        }
        md.push('\n');

        let (prof_md, prof_js) = if case.peers {
            self.against_floor(&server, &root, &url, &script, case, &hooks, &floor)?
        } else {
            self.tls_cost(&server, &root, &url, &script, case, &runs)?
        };
        md.push_str(&prof_md);
        Ok((
            md,
            json!({ "case": case.name, "doc_bytes": case.doc_bytes, "sides": sides_js,
                    "notes": notes, "programs": prof_js }),
        ))
    }

    /// A second instance of the server, started while auditd runs (and warmed up), so that its
    /// processes have audit contexts as on a host that runs auditd from boot.
    fn audited_server(
        &self,
        case: &Case,
        dir: &Path,
        root: &Path,
        script: &Path,
    ) -> anyhow::Result<Server> {
        let auditd = Auditd::start(&self.dir, root)?;
        let s = Server::start(case.kind, &dir.join("server-audited"), root)?;
        wrk(&format!("{}/", s.base), 1, case.conns, script).context("warm-up")?;
        drop(auditd);
        Ok(s)
    }

    /// One side of one round: attach it, run wrk, measure, detach.
    fn peer_side(
        &self,
        peer: Peer,
        server: &Server,
        root: &Path,
        script: &Path,
        case: &Case,
        floor: &str,
    ) -> anyhow::Result<SideRun> {
        let url = format!("{}/", server.base);
        let mut vigie = None;
        let mut auditd = None;
        let mut tracer = None;
        match peer {
            Peer::Nothing => {}
            Peer::Vigie | Peer::Baseline => {
                let bin = match peer {
                    Peer::Vigie => self.bins.vigie.clone(),
                    _ => self.baseline.clone().context("no baseline")?,
                };
                vigie = Some(Vigie::start(&bin, &self.dir, &[server.pid()], root, None)?);
            }
            Peer::Auditd => auditd = Some(Auditd::start(&self.dir, root)?),
            Peer::Bpftrace => {
                let s = sides::logger_script(&server.pids());
                tracer = Some(Bpftrace::start(&self.dir, "logger", &s, 1)?);
            }
            Peer::Floor => {
                let n = floor.lines().count();
                tracer = Some(Bpftrace::start(&self.dir, "floor", floor, n)?);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let m0 = vigie.as_ref().map(Vigie::metrics).transpose()?;
        let a0 = auditd.as_ref().map_or(0, Auditd::records);
        let c0 = tree_cpu_seconds(server.pid());
        let w = wrk(&url, self.secs, case.conns, script)?;
        let c1 = tree_cpu_seconds(server.pid());
        let requests = w.requests.max(1) as f64;
        let mut run = SideRun {
            portal_us: (c1 - c0) / requests * 1e6,
            ..SideRun::default()
        };
        if let Some(a) = auditd {
            run.records_per_request = Some((a.records_settled() - a0) as f64 / requests);
        }
        if let (Some(v), Some(m0)) = (vigie, m0) {
            // The metrics are published on the reader's 100 ms tick.
            std::thread::sleep(Duration::from_millis(250));
            let m1 = v.metrics()?;
            run.events_per_request = Some(
                (metric_sum(&m1, "vigie_events_total", None)
                    - metric_sum(&m0, "vigie_events_total", None))
                    / requests,
            );
            run.lost = v.stop()?.lost;
        }
        if let Some(t) = tracer.take() {
            let output = t.output.clone();
            // bpftrace writes out what it buffered as it exits.
            drop(t);
            if peer == Peer::Bpftrace {
                let lines = std::fs::read_to_string(&output).unwrap_or_default();
                let opens = lines.lines().filter(|l| l.contains('/')).count();
                run.records_per_request = Some(opens as f64 / requests);
            }
        }
        run.wrk = Some(w);
        Ok(run)
    }

    /// Vigie's programs' time per request over one more attached run ([`program_costs`]; the
    /// caller turns the kernel's statistics on).
    fn vigie_costs(
        &self,
        server: &Server,
        root: &Path,
        url: &str,
        script: &Path,
        case: &Case,
    ) -> anyhow::Result<(Costs, WrkResult)> {
        let v = Vigie::start(&self.bins.vigie, &self.dir, &[server.pid()], root, None)?;
        std::thread::sleep(Duration::from_millis(200));
        let costs = program_costs(
            self.secs,
            || vigie_programs(&v),
            || wrk(url, self.secs, case.conns, script),
        )?;
        v.stop()?;
        Ok(costs)
    }

    /// One more run each of Vigie and of the floor with the kernel's BPF run statistics on:
    /// program time per request, Vigie's against the floor's on the same hooks.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, the case's context"
    )]
    fn against_floor(
        &self,
        server: &Server,
        root: &Path,
        url: &str,
        script: &Path,
        case: &Case,
        hooks: &[Hook],
        floor: &str,
    ) -> anyhow::Result<(String, Value)> {
        let _stats = BpfStats::enable()?;
        let (vigie_cost, vw) = self.vigie_costs(server, root, url, script, case)?;
        let tracer = Bpftrace::start(&self.dir, "floor", floor, floor.lines().count())?;
        let (floor_cost, fw) = program_costs(
            self.secs,
            || sides::floor_by_program(tracer.pid(), hooks),
            || wrk(url, self.secs, case.conns, script),
        )?;
        drop(tracer);
        let mut md = format!(
            "**Vigie against the floor, program by program** (one more run of {} s each with \
             `kernel.bpf_stats_enabled=1`: Vigie {:.0} req/s, floor {:.0} req/s; the background \
             of the same length with the server idle subtracted). Program run time only, per \
             request; the floor's programs on each hook Vigie's program is attached to, added up; \
             programs that ran less than once per 100 requests left out.\n\n\
             | program | Vigie runs / req | floor runs / req | Vigie ns / req | floor ns / req | Vigie / floor |\n|---|---|---|---|---|---|\n",
            self.secs, vw.rps, fw.rps
        );
        let mut programs: Vec<&String> = vigie_cost.keys().chain(floor_cost.keys()).collect();
        programs.sort();
        programs.dedup();
        let mut js = vec![];
        let (mut vt, mut ft) = (0.0, 0.0);
        for p in programs {
            let (vr, vns) = vigie_cost.get(p).copied().unwrap_or_default();
            let (fr, fns) = floor_cost.get(p).copied().unwrap_or_default();
            // Programs that run less than once per 100 requests (process events): their
            // figures per request are noise.
            if vr < 0.01 && fr < 0.01 {
                continue;
            }
            vt += vns;
            ft += fns;
            writeln!(
                md,
                "| `{p}` | {vr:.2} | {fr:.2} | {vns:.0} | {fns:.0} | {} |",
                multiple(vns, fns)
            )?;
            js.push(
                json!({ "program": p, "vigie_runs_per_request": vr, "vigie_ns_per_request": vns,
                            "floor_runs_per_request": fr, "floor_ns_per_request": fns }),
            );
        }
        writeln!(
            md,
            "| **all** | | | **{vt:.0}** | **{ft:.0}** | **{}** |\n",
            multiple(vt, ft)
        )?;
        Ok((md, Value::Array(js)))
    }

    /// The HTTPS round's profile: Vigie's TLS uprobe programs per SSL call, and the server's
    /// CPU added per SSL call.
    fn tls_cost(
        &self,
        server: &Server,
        root: &Path,
        url: &str,
        script: &Path,
        case: &Case,
        runs: &BTreeMap<&str, SideRuns>,
    ) -> anyhow::Result<(String, Value)> {
        let _stats = BpfStats::enable()?;
        let (cost, w) = self.vigie_costs(server, root, url, script, case)?;
        let ssl: Vec<(&String, &(f64, f64))> =
            cost.iter().filter(|(p, _)| p.starts_with("ssl_")).collect();
        // Entry programs: one run per SSL call; the return program runs once more per call.
        let calls: f64 = ssl
            .iter()
            .filter(|(p, _)| !p.contains("return"))
            .map(|(_, c)| c.0)
            .sum();
        let ssl_ns: f64 = ssl.iter().map(|(_, c)| c.1).sum();
        let all_ns: f64 = cost.values().map(|c| c.1).sum();
        let cpu = |side: Peer| {
            runs.get(side.name())
                .map_or(f64::NAN, |s| median(&s.portal_us))
        };
        let delta_us = cpu(Peer::Vigie) - cpu(Peer::Nothing);
        let mut md = format!(
            "**TLS uprobes** (one more run of {} s with `kernel.bpf_stats_enabled=1`, {:.0} req/s, \
             the idle background subtracted): {calls:.2} SSL calls per request (`SSL_read*`, \
             `SSL_write*`, `SSL_do_handshake`, counted by their entry programs).\n\n",
            self.secs, w.rps
        );
        if calls > 0.0 {
            writeln!(
                md,
                "- Vigie's `ssl_*` programs (entry and return): {:.0} ns per SSL call, {:.0} ns \
                 per request, out of {:.0} ns per request for all of Vigie's programs.\n\
                 - The server's CPU added by Vigie (median over the rounds above): {delta_us:.1} us \
                 per request, i.e. {:.2} us per SSL call if it were all theirs (an upper bound: \
                 the syscall tracepoints are in it too, and the uprobe traps themselves, which \
                 program run time does not count).\n",
                ssl_ns / calls,
                ssl_ns,
                all_ns,
                delta_us / calls
            )?;
        } else {
            md.push_str(
                "- **No SSL call counted**: Vigie's metrics list no `ssl_*` program run while \
                 the server served HTTPS (its TLS uprobes did not attach or do not report \
                 their statistics).\n\n",
            );
        }
        let programs: Vec<Value> = cost
            .iter()
            .map(
                |(p, (r, ns))| json!({ "program": p, "runs_per_request": r, "ns_per_request": ns }),
            )
            .collect();
        Ok((
            md,
            json!({ "ssl_calls_per_request": calls, "ssl_ns_per_request": ssl_ns,
                    "ssl_ns_per_call": if calls > 0.0 { ssl_ns / calls } else { f64::NAN },
                    "portal_cpu_us_added_per_request": delta_us, "programs": programs }),
        ))
    }
}

fn multiple(x: f64, floor: f64) -> String {
    if floor > 0.0 {
        format!("{:.1}x", x / floor)
    } else {
        "-".into()
    }
}

/// Per program: runs and run time (ns), cumulative or per request.
pub(super) type Costs = BTreeMap<String, (f64, f64)>;

/// Vigie's programs' cumulative runs and run time (ns), from its metrics.
pub(super) fn vigie_programs(v: &Vigie) -> anyhow::Result<Costs> {
    let m = v.metrics()?;
    let runs = by_label(&m, "vigie_probe_runs_total", "program");
    let secs = by_label(&m, "vigie_probe_run_seconds_total", "program");
    Ok(runs
        .into_iter()
        .map(|(p, r)| {
            let ns = secs.get(&p).copied().unwrap_or(0.0) * 1e9;
            (p, (r, ns))
        })
        .collect())
}

/// Per program, runs and run time (ns) per request of `load`, less the background: the
/// programs run for every process on the host (the target check is inside them), so the same
/// length of time idle is sampled first and subtracted. `sample` gives cumulative counts.
pub(super) fn program_costs(
    secs: u64,
    sample: impl Fn() -> anyhow::Result<Costs>,
    load: impl FnOnce() -> anyhow::Result<WrkResult>,
) -> anyhow::Result<(Costs, WrkResult)> {
    let t0 = std::time::Instant::now();
    let idle0 = sample()?;
    std::thread::sleep(Duration::from_secs(secs));
    let idle1 = sample()?;
    let idle_s = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let load0 = sample()?;
    let w = load()?;
    // Vigie publishes its statistics on the reader's 100 ms tick.
    std::thread::sleep(Duration::from_millis(250));
    let load1 = sample()?;
    let scale = t1.elapsed().as_secs_f64() / idle_s;
    let requests = w.requests.max(1) as f64;
    let delta = |a: &Costs, b: &Costs, p: &str| {
        let (x, y) = (a.get(p).copied().unwrap_or_default(), b.get(p).copied());
        y.map_or((0.0, 0.0), |y| (y.0 - x.0, y.1 - x.1))
    };
    let out = load1
        .keys()
        .map(|p| {
            let (lr, lns) = delta(&load0, &load1, p);
            let (ir, ins) = delta(&idle0, &idle1, p);
            let runs = (lr - ir * scale).max(0.0) / requests;
            let ns = (lns - ins * scale).max(0.0) / requests;
            (p.clone(), (runs, ns))
        })
        .collect();
    Ok((out, w))
}
