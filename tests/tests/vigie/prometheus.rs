//! SOC integration: the shipped alert rules, the systemd unit and the deployment configs are
//! checked with the real tools (promtool, amtool, systemd-analyze, `vigie check-config`), and a
//! real Prometheus and Alertmanager scraping a real `vigie` deliver its alerts to a webhook.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::harness::*;
use serde_json::{Value, json};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// Runs a checker; returns (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn alert_rules_pass_promtool_unit_tests() {
    let Some(promtool) = require_tool("alert_rules_pass_promtool_unit_tests", "promtool") else {
        return;
    };
    let (ok, out) = run(Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(deploy("prometheus/vigie.rules.yml")));
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    let (ok, out) = run(Command::new(&promtool)
        .arg("test")
        .arg("rules")
        .arg(deploy("prometheus/vigie.rules.test.yml")));
    assert!(ok, "promtool test rules failed:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    // The example Prometheus config loads the rules from next to it.
    let (ok, out) = run(Command::new(&promtool)
        .arg("check")
        .arg("config")
        .arg(deploy("prometheus/prometheus.example.yml")));
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 1 rule files found"), "{out}");
}

#[test]
fn example_alertmanager_config_is_valid() {
    let Some(amtool) = require_tool("example_alertmanager_config_is_valid", "amtool") else {
        return;
    };
    let (ok, out) = run(Command::new(&amtool)
        .arg("check-config")
        .arg(deploy("alertmanager/alertmanager.example.yml")));
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// `systemd-analyze verify` on the unit as shipped, offline: in a scratch root holding the
/// system's unit files and an executable at the unit's ExecStart path, so that it runs the same
/// with or without systemd as PID 1 and installs nothing on this machine. Warnings (unknown keys,
/// unknown syscall groups) fail the test too.
#[test]
fn systemd_unit_verifies() {
    let Some(analyze) = require_tool("systemd_unit_verifies", "systemd-analyze") else {
        return;
    };
    let root = TempDir::new("systemd-root");
    let units = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::copy(deploy("systemd/vigie.service"), units.join("vigie.service")).unwrap();
    // The unit's dependencies (sys-kernel-tracing.mount, multi-user.target, ...).
    std::fs::create_dir_all(root.path().join("lib/systemd")).unwrap();
    let (ok, out) = run(Command::new("cp")
        .arg("-a")
        .arg("/lib/systemd/system")
        .arg(root.path().join("lib/systemd/system")));
    assert!(ok, "copying /lib/systemd: {out}");
    let bin = root.path().join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("vigie"), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(bin.join("vigie"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, out) = run(Command::new(&analyze)
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("vigie.service"));
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
    let (ok, out) = run(Command::new(&analyze)
        .args(["security", "--offline=yes"])
        .arg(format!("--root={}", root.path().display()))
        .arg("vigie.service"));
    assert!(ok, "{out}");
    assert!(
        out.contains("Overall exposure level for vigie.service: 2.7 OK"),
        "sandboxing weakened:\n{out}"
    );
}

fn vigie_bin(test: &str) -> Option<PathBuf> {
    let bin = std::env::var_os("VIGIE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/vigie"));
    if bin.exists() {
        return Some(bin);
    }
    let msg = format!("SKIPPED {test}: no vigie binary at {}", bin.display());
    eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
    if std::env::var("VIGIE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
        panic!("{msg}, and VIGIE_REQUIRE_PRIVILEGED=1 turns skips into failures");
    }
    None
}

/// The configurations that ship (the example, the DaemonSet's ConfigMap) pass `check-config`,
/// and the new keys are validated by name.
#[test]
fn shipped_configs_pass_check_config() {
    let Some(vigie) = vigie_bin("shipped_configs_pass_check_config") else {
        return;
    };
    let (ok, out) = run(Command::new(&vigie)
        .arg("check-config")
        .arg(deploy("vigie.example.toml")));
    assert!(ok, "{out}");
    assert!(out.contains("addr = \"127.0.0.1:9464\""), "{out}");
    assert!(out.contains("ring_buffer_bytes = 8388608"), "{out}");

    // The ConfigMap's `vigie.toml: |` block, de-indented.
    let manifest = std::fs::read_to_string(deploy("kubernetes/vigie-daemonset.yaml")).unwrap();
    let block = manifest
        .split_once("  vigie.toml: |\n")
        .expect("ConfigMap has vigie.toml")
        .1
        .split("\n---")
        .next()
        .unwrap();
    let toml: String = block
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let dir = TempDir::new("check-config");
    let file = dir.path().join("k8s.toml");
    std::fs::write(&file, &toml).unwrap();
    let (ok, out) = run(Command::new(&vigie).arg("check-config").arg(&file));
    assert!(ok, "{toml}\n{out}");
    assert!(out.contains("addr = \"0.0.0.0:9464\""), "{out}");

    let bad = dir.path().join("bad.toml");
    for (extra, field) in [
        ("[metrics]\naddr = \"localhost:9464\"\n", "metrics.addr"),
        (
            "[kernel]\nring_buffer_bytes = 5000\n",
            "kernel.ring_buffer_bytes",
        ),
    ] {
        std::fs::write(&bad, format!("[documents]\nroots = [\"/srv\"]\n{extra}")).unwrap();
        let (ok, out) = run(Command::new(&vigie).arg("check-config").arg(&bad));
        assert!(!ok, "{extra} accepted:\n{out}");
        assert!(out.contains(&format!("invalid `{field}`")), "{out}");
    }
}

/// A child process killed and reaped on drop, with its output in a log file.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(name: &'static str, cmd: &mut Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("daemon log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name, child, log }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        format!(
            "--- {} log (last lines) ---\n{}",
            self.name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status})\n{}", self.name, self.log());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.0 (no chunked encoding, body until close): (status, body).
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant PromQL query with exactly one series, if there is one.
fn query_one(prometheus: &str, q: &str) -> Option<f64> {
    let (status, body) = get(prometheus, &format!("/api/v1/query?query={}", encode(q)))?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    let result = v["data"]["result"].as_array()?;
    match result.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// One series' value in Vigie's own `/metrics` text.
fn scrape(vigie_metrics: &str, series: &str) -> Option<f64> {
    let (_, body) = get(vigie_metrics, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The test's webhook receiver: records the JSON body of every POST (Alertmanager's
/// notifications) and answers 200.
struct Webhook {
    addr: String,
    posts: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Webhook {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("webhook listener");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (posts, stop) = (posts.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Some(body) = Self::receive(stream) {
                                posts.lock().unwrap().push(body);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Self {
            addr,
            posts,
            stop,
            thread: Some(thread),
        }
    }

    /// Reads one request (head, then Content-Length bytes), answers, closes.
    fn receive(mut stream: TcpStream) -> Option<Value> {
        stream.set_nonblocking(false).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let (head_len, body_len) = loop {
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (end + 4, len);
            }
            if buf.len() > 1 << 20 {
                return None;
            }
        };
        while buf.len() < head_len + body_len {
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let _ =
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        serde_json::from_slice(&buf[head_len..head_len + body_len]).ok()
    }

    /// Every alert of every notification so far, as received.
    fn alerts(&self) -> Vec<Value> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The first firing alert named `name`.
    fn firing(&self, name: &str) -> Option<Value> {
        self.alerts()
            .into_iter()
            .find(|a| a["status"] == "firing" && a["labels"]["alertname"] == name)
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Requests whose head is larger than the whole (one-page) ring buffer: the probe's record of
/// the socket read (64 bytes + a 4096-byte capture) can never be reserved, so each request loses
/// at least that event in the kernel (counted in the probes' LOST map, reason ringbuf_full).
const BURST: usize = 8;
const RING_BYTES: u32 = 4096;

#[test]
fn prometheus_and_alertmanager_deliver_violation_and_loss_alerts() {
    const TEST: &str = "prometheus_and_alertmanager_deliver_violation_and_loss_alerts";
    let Some(p) = privileged(TEST) else {
        return;
    };
    let (Some(prometheus_bin), Some(alertmanager_bin)) = (
        require_tool(TEST, "prometheus"),
        require_tool(TEST, "prometheus-alertmanager"),
    ) else {
        return;
    };
    let started = Instant::now();
    let dir = TempDir::new("prometheus");
    let webhook = Webhook::start();

    // Vigie with a one-page ring buffer, its metrics on a port of its own.
    let portal = Portal::start("prom", &["--model", "thread"]);
    let vigie_metrics = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "{}[kernel]\nring_buffer_bytes = {RING_BYTES}\n",
        portal.config_by_pid()
    );
    let vigie = Vigie::start(&p, "prom", &config, &["--metrics-addr", &vigie_metrics]);

    // Alertmanager: everything to the webhook at once, one notification per alert.
    let am_addr = format!("127.0.0.1:{}", free_port());
    let am_config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &am_config,
        format!(
            "route:\n  receiver: test\n  group_by: ['...']\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: test\n    webhook_configs:\n      - url: 'http://{}/alerts'\n        send_resolved: false\n",
            webhook.addr
        ),
    )
    .unwrap();
    let mut alertmanager = Daemon::start(
        "alertmanager",
        Command::new(&alertmanager_bin)
            .arg(format!("--config.file={}", am_config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("am-data").display()
            ))
            .arg(format!("--web.listen-address={am_addr}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn"),
        dir.path().join("alertmanager.log"),
    );

    // Prometheus: scrapes Vigie every second, evaluates the shipped rules every second.
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{}']\n\
             alerting:\n  alertmanagers:\n    - static_configs: [{{targets: ['{am_addr}']}}]\n\
             scrape_configs:\n  - job_name: vigie\n    static_configs: [{{targets: ['{vigie_metrics}']}}]\n",
            deploy("prometheus/vigie.rules.yml").display()
        ),
    )
    .unwrap();
    let mut prometheus = Daemon::start(
        "prometheus",
        Command::new(&prometheus_bin)
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("prom-data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .arg("--log.level=warn"),
        dir.path().join("prometheus.log"),
    );

    let facts = |what: &str| -> String {
        format!(
            "{what}\nwebhook got: {:#?}\nvigie metrics: {:?}\n{}",
            webhook.posts.lock().unwrap(),
            get(&vigie_metrics, "/metrics").map(|(_, b)| b
                .lines()
                .filter(|l| l.starts_with("vigie_") && !l.contains("_bucket"))
                .collect::<Vec<_>>()
                .join("\n")),
            vigie.log()
        )
    };
    for (name, addr) in [("alertmanager", &am_addr), ("prometheus", &prom_addr)] {
        poll_until(
            &format!("{name} ready"),
            Duration::from_secs(20),
            || get(addr, "/-/ready").filter(|(s, _)| *s == 200),
            || {
                let log = if name == "prometheus" {
                    prometheus.log()
                } else {
                    alertmanager.log()
                };
                format!("{}\n{log}", facts(""))
            },
        );
    }
    // Prometheus has scraped Vigie (the violation counter, at 0, is in its database).
    poll_until(
        "a first scrape of vigie",
        Duration::from_secs(20),
        || {
            query_one(
                &prom_addr,
                r#"vigie_violations_total{job="vigie",identity_source="trusted_header"}"#,
            )
            .filter(|v| *v == 0.0)
        },
        || format!("{}\n{}", facts(""), prometheus.log()),
    );

    // 1. One cross-user read: alice fetches bob's health record.
    let t0 = Instant::now();
    assert_eq!(
        get_as(&portal.addr(), "alice", "/docs/bob/health-record.pdf"),
        200
    );
    vigie.wait_alerts("the violation alert line", |a| {
        verdicts(a)
            == [t(
                "violation",
                "alice",
                "bob",
                &portal.doc("bob", "health-record.pdf"),
            )]
    });
    let violation = poll_until(
        "VigieCrossUserAccess at the webhook",
        Duration::from_secs(20),
        || {
            alertmanager.assert_alive();
            webhook.firing("VigieCrossUserAccess")
        },
        || format!("{}\n{}", facts(""), prometheus.log()),
    );
    let violation_secs = t0.elapsed().as_secs_f64();
    assert_eq!(
        violation["labels"],
        json!({
            "alertname": "VigieCrossUserAccess",
            "severity": "critical",
            "job": "vigie",
            "instance": vigie_metrics,
            "identity_source": "trusted_header",
        })
    );
    assert_eq!(
        violation["annotations"]["summary"],
        format!("Cross-user document read on {vigie_metrics}")
    );
    // The rest of the catalogue agrees: one request, one violation, one target, all probes.
    poll_until(
        "request and access counters published",
        Duration::from_secs(5),
        || {
            let m = |series: &str| scrape(&vigie_metrics, series);
            (m(r#"vigie_requests_total{identity_source="trusted_header"}"#) == Some(1.0)
                && m(r#"vigie_requests_total{identity_source="none"}"#) == Some(0.0)
                && m(r#"vigie_document_accesses_total{verdict="violation"}"#) == Some(1.0)
                && m(r#"vigie_document_accesses_total{verdict="allowed"}"#) == Some(0.0)
                && m("vigie_pipeline_latency_seconds_count") == Some(1.0)
                && m("vigie_targets") == Some(1.0)
                && m("vigie_probes_attached").is_some_and(|n| n > 0.0)
                && m("vigie_probes_attached") == m("vigie_probes_expected")
                && m("vigie_ringbuf_size_bytes") == Some(f64::from(RING_BYTES))
                // The kernel's run statistics of each program: at least the run the start-up
                // fire check made (statistics are on during it), with its time.
                && m(r#"vigie_probe_runs_total{program="sys_enter_io"}"#).is_some_and(|n| n >= 1.0)
                && m(r#"vigie_probe_run_seconds_total{program="sys_enter_io"}"#)
                    .is_some_and(|s| s > 0.0))
            .then_some(())
        },
        || facts(""),
    );
    // The violation opened an incident: one page for it...
    let incident = poll_until(
        "VigieIncident at the webhook",
        Duration::from_secs(20),
        || {
            alertmanager.assert_alive();
            webhook.firing("VigieIncident")
        },
        || format!("{}\n{}", facts(""), prometheus.log()),
    );
    eprintln!("Alertmanager notification: {incident}");
    assert_eq!(
        incident["labels"],
        json!({
            "alertname": "VigieIncident",
            "severity": "critical",
            "job": "vigie",
            "instance": vigie_metrics,
            "opened_by": "violation",
        })
    );
    // ...and none for more reads of the same user and session: still one incident.
    for doc in ["/docs/bob/notes.txt", "/docs/bob/disability-file.pdf"] {
        assert_eq!(get_as(&portal.addr(), "alice", doc), 200);
    }
    let lines = vigie.wait_alerts("three violations in one incident", |a| {
        verdicts(a).iter().filter(|v| v.0 == "violation").count() == 3
    });
    let ids: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter_map(|a| a["incident"].as_str())
        .collect();
    assert_eq!(ids.len(), 1, "{lines:#?}");
    poll_until(
        "three violations counted in one incident",
        Duration::from_secs(5),
        || {
            let m = |series: &str| scrape(&vigie_metrics, series);
            (m(r#"vigie_violations_total{identity_source="trusted_header"}"#) == Some(3.0)
                && m(r#"vigie_incidents_total{opened_by="violation"}"#) == Some(1.0))
            .then_some(())
        },
        || facts(""),
    );
    // Nothing was lost so far: the loss alert below is the burst's doing.
    assert_eq!(
        scrape(
            &vigie_metrics,
            r#"vigie_events_lost_total{reason="ringbuf_full"}"#
        ),
        Some(0.0),
        "{}",
        facts("")
    );
    assert!(webhook.firing("VigieEventsLost").is_none(), "{}", facts(""));

    // 2. A burst of requests with heads larger than the ring buffer: real kernel-side loss.
    let t1 = Instant::now();
    let pad = "x".repeat(6000);
    let addr = portal.addr();
    let clients: Vec<_> = (0..BURST)
        .map(|_| {
            let (addr, pad) = (addr.clone(), pad.clone());
            std::thread::spawn(move || {
                http_get(
                    &addr,
                    "/docs/alice/notes.txt",
                    &[("X-Remote-User", "alice"), ("X-Padding", &pad)],
                )
                .expect("padded GET")
                .0
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
    // The coverage_gap lines and the counter both come from the LOST map: equal once reported.
    let gap_total = |alerts: &[Value]| -> u64 {
        alerts
            .iter()
            .filter(|a| a["type"] == "coverage_gap" && a["reason"] == "ringbuf_full")
            .map(|a| a["lost_events"].as_u64().unwrap_or(0))
            .sum()
    };
    let lost = poll_until(
        "lost events reported in alerts and metrics alike",
        Duration::from_secs(10),
        || {
            let gaps = gap_total(&vigie.alerts_now());
            let metric = scrape(
                &vigie_metrics,
                r#"vigie_events_lost_total{reason="ringbuf_full"}"#,
            )?;
            (gaps >= BURST as u64 && metric == gaps as f64).then_some(gaps)
        },
        || facts("(gap lines vs vigie_events_lost_total)"),
    );
    let loss = poll_until(
        "VigieEventsLost at the webhook",
        Duration::from_secs(20),
        || {
            alertmanager.assert_alive();
            webhook.firing("VigieEventsLost")
        },
        || format!("{}\n{}", facts(""), prometheus.log()),
    );
    let loss_secs = t1.elapsed().as_secs_f64();
    assert_eq!(
        loss["labels"],
        json!({
            "alertname": "VigieEventsLost",
            "severity": "warning",
            "job": "vigie",
            "instance": vigie_metrics,
            "reason": "ringbuf_full",
        })
    );
    assert_eq!(
        loss["annotations"]["summary"],
        format!("Vigie lost events on {vigie_metrics} (ringbuf_full)")
    );
    assert_eq!(
        query_one(
            &prom_addr,
            r#"vigie_events_lost_total{job="vigie",reason="ringbuf_full"}"#
        ),
        Some(lost as f64)
    );
    // Vigie kept working: still exactly one violation, and every alert that fired is one of
    // the two caused here (no target or probe alert).
    let names: BTreeMap<String, usize> =
        webhook.alerts().iter().fold(BTreeMap::new(), |mut m, a| {
            *m.entry(a["labels"]["alertname"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
            m
        });
    assert_eq!(
        names.keys().map(String::as_str).collect::<Vec<_>>(),
        ["VigieCrossUserAccess", "VigieEventsLost", "VigieIncident"],
        "{}",
        facts("")
    );
    assert_eq!(
        names["VigieIncident"],
        1,
        "one page per incident: {}",
        facts("")
    );
    prometheus.assert_alive();
    alertmanager.assert_alive();
    let (alerts, log) = vigie.stop();
    assert_eq!(gap_total(&alerts), lost, "{log}");
    assert_eq!(
        verdicts(&alerts)
            .iter()
            .filter(|v| v.0 == "violation")
            .count(),
        3,
        "{log}"
    );
    eprintln!(
        "prometheus e2e: violation -> webhook {violation_secs:.1}s, burst -> loss alert {loss_secs:.1}s \
         ({lost} events lost), whole test {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
