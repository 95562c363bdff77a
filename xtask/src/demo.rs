//! The demo: a real portal, real probes, one cross-user read, one alert.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use vigie_tests::{client::http_get, process::spawn_portal};

use crate::{Binaries, is_root, step};

/// Where `vigie run` serves metrics by default.
const METRICS: &str = "127.0.0.1:9464";

pub fn run(bins: &Binaries, model: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo loads eBPF programs: run it as root (e.g. `sudo -E cargo xtask demo`)");
    }
    let dir = std::env::temp_dir().join(format!("vigie-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let docs = dir.join("portal");
    step(
        "demo",
        &format!(
            "starting the demo portal ({model} model) on {}",
            docs.display()
        ),
    );
    let portal = spawn_portal(
        &bins.portal,
        [
            "--root",
            docs.to_str().unwrap_or_default(),
            "--generate",
            "--model",
            model,
            "--listen",
            "127.0.0.1:0",
        ],
    )
    .context("starting the demo portal")?;
    let addr = portal.addr().to_string();

    let config = dir.join("vigie.toml");
    let users = docs.join("users");
    std::fs::write(
        &config,
        format!(
            "[targets]\nnames = [\"demo-portal\"]\n\n[documents]\nroots = [\"{u}\"]\nowner_templates = [\"{u}/{{owner}}/**\"]\n\n[policy]\nprivileged_users = [\"agent\"]\n",
            u = users.display()
        ),
    )?;
    let alerts = dir.join("alerts.jsonl");
    let traces = dir.join("traces");
    let ready = dir.join("vigie.ready");
    step(
        "demo",
        &format!("starting vigie (config {})", config.display()),
    );
    let mut vigie = Command::new(&bins.vigie)
        .args(["run", "--config"])
        .arg(&config)
        .arg("--alerts")
        .arg(&alerts)
        .arg("--ready-file")
        .arg(&ready)
        .arg("--record")
        .arg(&traces)
        .stdin(Stdio::null())
        .spawn()
        .context("starting vigie")?;
    let result = scenario(&mut vigie, &addr, &ready, &alerts);
    stop(&mut vigie);
    drop(portal);
    result?;
    let text = std::fs::read_to_string(&alerts).unwrap_or_default();
    println!("\n=== alerts ({}) ===", alerts.display());
    for line in text.lines() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
            Err(_) => println!("{line}"),
        }
    }
    let violations = text
        .lines()
        .filter(|l| l.contains("\"verdict\":\"violation\""))
        .count();
    println!(
        "=== {violations} violation alert(s); files kept in {} ===",
        dir.display()
    );
    if violations != 1 {
        bail!("expected exactly one violation alert, got {violations}");
    }
    replay(&bins.vigie, &traces, &text)
}

/// Replays the recorded trace: the same alert, then the evidence behind it.
fn replay(vigie: &Path, traces: &Path, live: &str) -> anyhow::Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(traces)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    step(
        "demo",
        &format!(
            "vigie replay {}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    let out = Command::new(vigie)
        .arg("replay")
        .args(&files)
        .arg("--no-progress")
        .output()?;
    let replayed = String::from_utf8_lossy(&out.stdout);
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || replayed != live {
        bail!("replay did not reproduce the live alert:\n{replayed}");
    }
    println!("=== replay of the trace: the same alert, byte for byte ===");
    let id = serde_json::from_str::<serde_json::Value>(live.lines().next().unwrap_or_default())?["access_id"].to_string();
    step("demo", &format!("vigie replay ... --explain {id}"));
    let out = Command::new(vigie)
        .arg("replay")
        .args(&files)
        .args(["--no-progress", "--explain", &id])
        .output()?;
    if !out.status.success() {
        bail!("explain failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

fn scenario(vigie: &mut Child, addr: &str, ready: &Path, alerts: &Path) -> anyhow::Result<()> {
    wait_for("vigie to attach", Duration::from_secs(30), || {
        if let Ok(Some(status)) = vigie.try_wait() {
            bail!("vigie exited early ({status})");
        }
        Ok(ready.exists())
    })?;
    let alice = [("X-Remote-User", "alice")];
    for (who, doc) in [
        ("alice", "/docs/alice/health-record.pdf"),
        ("alice", "/docs/bob/health-record.pdf"),
    ] {
        let (status, body) = http_get(addr, doc, &alice).with_context(|| format!("GET {doc}"))?;
        step(
            "demo",
            &format!("{who} GET {doc} -> {status} ({} bytes)", body.len()),
        );
    }
    wait_for("the alert", Duration::from_secs(10), || {
        Ok(std::fs::read_to_string(alerts).is_ok_and(|t| t.contains("\"verdict\":\"violation\"")))
    })?;
    // The same violation as the SOC sees it: a Prometheus counter.
    let (status, body) = http_get(METRICS, "/metrics", &[]).context("GET /metrics")?;
    println!("\n=== Prometheus metrics (http://{METRICS}/metrics, status {status}) ===");
    for line in String::from_utf8_lossy(&body).lines() {
        if line.starts_with("vigie_violations_total")
            || line.starts_with("vigie_document_accesses_total")
        {
            println!("{line}");
        }
    }
    Ok(())
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// SIGINT, so vigie detaches, flushes and prints its summary.
fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
    }
    let _ = child.wait();
}
