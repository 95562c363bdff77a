//! The trail shipped off the host to a real rsyslog (Debian's `rsyslog`, started here on a
//! loopback port with its own config, writing each message it receives to a file): rsyslog is
//! killed mid-run and restarted, Vigie is killed and restarted, and every trail record still
//! arrives (duplicates allowed, found by their `seq`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::harness::{
    tls::{Pki, pki},
    *,
};

/// A running `rsyslogd -n` with a TCP input on a loopback port; SIGKILLed on drop.
struct Rsyslog {
    bin: PathBuf,
    child: Option<Child>,
    conf: PathBuf,
    pid_file: PathBuf,
    received: PathBuf,
    port: u16,
    _dir: TempDir,
}

impl Rsyslog {
    fn start(test: &str) -> Option<Self> {
        Self::start_with(test, None)
    }

    /// Syslog over TLS (RFC 5425, rsyslog's `gtls` driver, Debian's `rsyslog-gnutls`): the
    /// server certificate of `pki`, and clients must present a certificate its CA signed.
    fn start_tls(test: &str, pki: &Pki) -> Option<Self> {
        if !Path::new("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so").exists()
            && !Path::new("/usr/lib/rsyslog/lmnsd_gtls.so").exists()
        {
            let msg = format!(
                "SKIPPED {test}: rsyslog's TLS driver is not installed (Debian's `rsyslog-gnutls`; run `cargo xtask test`)"
            );
            eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
            if std::env::var("VIGIE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
                panic!("{msg}, and VIGIE_REQUIRE_PRIVILEGED=1 turns skips into failures");
            }
            return None;
        }
        Self::start_with(test, Some(pki))
    }

    fn start_with(test: &str, tls: Option<&Pki>) -> Option<Self> {
        let Some(bin) = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|b| b.exists())
        else {
            let msg = format!(
                "SKIPPED {test}: rsyslog is not installed (Debian's `rsyslog`; run `cargo xtask test`)"
            );
            eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
            if std::env::var("VIGIE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
                panic!("{msg}, and VIGIE_REQUIRE_PRIVILEGED=1 turns skips into failures");
            }
            return None;
        };
        let dir = TempDir::new(&format!("{test}-rsyslog"));
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let received = dir.path().join("received.log");
        let conf = dir.path().join("rsyslog.conf");
        let (tls_global, tls_module) = match tls {
            None => (String::new(), ""),
            Some(pki) => (
                format!(
                    " defaultNetstreamDriverCAFile=\"{}\" defaultNetstreamDriverCertFile=\"{}\" defaultNetstreamDriverKeyFile=\"{}\"",
                    pki.ca.display(),
                    pki.server_cert.display(),
                    pki.server_key.display()
                ),
                " streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=\"x509/certvalid\"",
            ),
        };
        // `%rawmsg%`: the message exactly as received, framing removed; one per line (a trail
        // record never holds a newline).
        std::fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{}\" maxMessageSize=\"64k\"{tls_global})\n\
                 module(load=\"imtcp\"{tls_module})\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
                 template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
                 action(type=\"omfile\" file=\"{}\" template=\"raw\")\n",
                work.display(),
                received.display()
            ),
        )
        .unwrap();
        let mut r = Self {
            bin,
            child: None,
            pid_file: dir.path().join("rsyslogd.pid"),
            conf,
            received,
            port,
            _dir: dir,
        };
        r.run();
        Some(r)
    }

    fn run(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
        let child = Command::new(&self.bin)
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(&self.pid_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting rsyslogd");
        self.child = Some(child);
        poll_until(
            "rsyslog listening",
            Duration::from_secs(10),
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).ok(),
            || format!("rsyslogd on port {}", self.port),
        );
    }

    /// SIGKILL: what rsyslog held in memory is lost.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The messages received so far, parsed as RFC 5424.
    fn messages(&self) -> Vec<syslog_rfc5424::SyslogMessage> {
        std::fs::read_to_string(&self.received)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                syslog_rfc5424::parse_message(l)
                    .unwrap_or_else(|e| panic!("not an RFC 5424 message ({e}): {l}"))
            })
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Complete lines of the trail files, by seq.
fn trail_records(dir: &Path) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for f in trace_files(dir) {
        if !f
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("trail-")
        {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let line = line.trim_end();
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            out.insert(v["seq"].as_u64().unwrap(), line.to_string());
        }
    }
    out
}

/// Received seq -> (times received, the MSG of the first).
fn received(r: &Rsyslog, host: &str) -> BTreeMap<u64, (usize, String)> {
    let mut out: BTreeMap<u64, (usize, String)> = BTreeMap::new();
    for m in r.messages() {
        assert_eq!(m.appname.as_deref(), Some("vigie"));
        assert_eq!(m.msgid.as_deref(), Some("1"));
        assert_eq!(m.hostname.as_deref(), Some(host));
        assert_eq!(m.facility, syslog_rfc5424::SyslogFacility::LOG_AUDIT);
        let sd = m.sd.find_sdid("vigie@32473").expect("the vigie SD element");
        assert_eq!(sd.get("host").map(String::as_str), Some(host));
        let seq: u64 = sd.get("seq").expect("seq param").parse().unwrap();
        let json: serde_json::Value = serde_json::from_str(&m.msg).expect("MSG is a trail line");
        assert_eq!(
            json["seq"].as_u64(),
            Some(seq),
            "SD seq and record seq differ"
        );
        let e = out.entry(seq).or_insert((0, m.msg.clone()));
        e.0 += 1;
        assert_eq!(
            e.1, m.msg,
            "a duplicate of seq {seq} differs from its first copy"
        );
    }
    out
}

#[test]
fn syslog_shipping_survives_collector_and_vigie_kills() {
    let Some(p) = privileged("syslog_shipping_survives_collector_and_vigie_kills") else {
        return;
    };
    let Some(mut rsyslog) = Rsyslog::start("shipping") else {
        return;
    };
    let started = Instant::now();
    let tmp = TempDir::new("shipping-keys");
    let signed = SignedTrail::new(&p, tmp.path());
    let trail = signed.dir.clone();
    let trail_args = signed.args();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let portal = Portal::start("shipping", &["--model", "thread"]);
    let config = format!(
        "{}[trail]\ncheckpoint_interval_secs = 1\n[trail.syslog]\naddress = \"{}\"\nresend_window_secs = 1\n",
        portal.config_by_pid(),
        rsyslog.address()
    );
    let reads = |n: usize| {
        for i in 0..n {
            let user = ["alice", "bob"][i % 2];
            assert_eq!(get_as(&portal.addr(), user, "/docs/alice/notes.txt"), 200);
        }
    };
    let accesses = |dir: &Path| {
        trail_records(dir)
            .values()
            .filter(|l| l.contains("\"type\":\"access\""))
            .count()
    };
    let facts = |r: &Rsyslog, dir: &Path| {
        let t = trail_records(dir);
        let got = received(r, &host);
        let missing: Vec<_> = t.keys().filter(|s| !got.contains_key(s)).collect();
        format!(
            "trail seqs {:?}\nreceived {:?}\nmissing {missing:?}",
            t.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>()
        )
    };

    // Run 1: records reach rsyslog.
    let vigie = Vigie::start(&p, "ship1", &config, &trail_args);
    reads(4);
    poll_until(
        "the first accesses at rsyslog",
        Duration::from_secs(10),
        || {
            let got = received(&rsyslog, &host);
            (got.values()
                .filter(|(_, m)| m.contains("\"type\":\"access\""))
                .count()
                >= 4)
                .then_some(())
        },
        || facts(&rsyslog, &trail),
    );
    // rsyslog dies; the trail (the spool) keeps growing meanwhile.
    rsyslog.kill();
    let before = accesses(&trail);
    reads(6);
    poll_until(
        "accesses written while rsyslog is down",
        Duration::from_secs(10),
        || (accesses(&trail) >= before + 6).then_some(()),
        || facts(&rsyslog, &trail),
    );
    let backlog = trail_records(&trail).len() - received(&rsyslog, &host).len();
    let back = Instant::now();
    rsyslog.run();
    poll_until(
        "the backlog delivered after rsyslog's restart",
        Duration::from_secs(15),
        || {
            let t = trail_records(&trail);
            let got = received(&rsyslog, &host);
            t.keys().all(|s| got.contains_key(s)).then_some(())
        },
        || facts(&rsyslog, &trail),
    );
    eprintln!(
        "rsyslog down: {backlog} records waited in the trail; delivered {:?} after its restart",
        back.elapsed()
    );
    // Vigie dies right after more reads: what it had not shipped goes with the next run.
    reads(4);
    poll_until(
        "the last reads in the trail",
        Duration::from_secs(10),
        || (accesses(&trail) >= before + 10).then_some(()),
        || facts(&rsyslog, &trail),
    );
    // Once rsyslog's TCP acknowledged them a window ago, the cursor moves past them: those are
    // not sent again by the next run.
    let cursor_file = trail.join("ship-syslog.cursor");
    let cursor = || {
        std::fs::read_to_string(&cursor_file)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let last = *trail_records(&trail).keys().last().unwrap();
    poll_until(
        "the shipping cursor past the last reads",
        Duration::from_secs(10),
        || (cursor() > last).then_some(()),
        || format!("cursor {}\n{}", cursor(), facts(&rsyslog, &trail)),
    );
    let (_, log1) = vigie.kill();
    let confirmed = cursor();
    let counts_at_kill = received(&rsyslog, &host);
    let vigie = Vigie::start(&p, "ship2", &config, &trail_args);
    reads(2);
    vigie.wait_alerts("a violation of run 2", |a| !a.is_empty());
    let (_, log2) = vigie.stop();
    let records = trail_records(&trail);
    poll_until(
        "every trail record at rsyslog",
        Duration::from_secs(15),
        || {
            let got = received(&rsyslog, &host);
            records.keys().all(|s| got.contains_key(s)).then_some(())
        },
        || format!("{}\n{log1}\n{log2}", facts(&rsyslog, &trail)),
    );
    let got = received(&rsyslog, &host);
    for (seq, line) in &records {
        assert_eq!(&got[seq].1, line, "seq {seq} arrived altered");
    }
    assert!(
        got.keys().all(|s| records.contains_key(s)),
        "rsyslog got records the trail does not hold"
    );
    for (seq, (n, _)) in got.range(..confirmed) {
        assert_eq!(
            *n, counts_at_kill[seq].0,
            "seq {seq} was confirmed before the kill, yet sent again by the next run"
        );
    }
    let duplicates: usize = got.values().map(|(n, _)| n - 1).sum();
    assert!(
        records
            .values()
            .last()
            .unwrap()
            .contains("\"type\":\"stop\""),
        "the trail ends with run 2's stop record"
    );
    eprintln!(
        "{} trail records, all at rsyslog, {duplicates} duplicates (seq {confirmed} on sent again after Vigie's kill); test took {:?}",
        records.len(),
        started.elapsed()
    );
}

/// `vigie ARGS...`: (exit code, stdout + stderr).
fn vigie_status(p: &Privileged, args: &[&str]) -> (i32, String) {
    let out = Command::new(&p.vigie)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running vigie");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn postgres_shipping_from_two_hosts_survives_postgres_and_vigie_kills() {
    use crate::harness::postgres::Postgres;
    let Some(p) = privileged("postgres_shipping_from_two_hosts_survives_postgres_and_vigie_kills")
    else {
        return;
    };
    let Some(mut pg) = Postgres::start("ship-pg") else {
        return;
    };
    let started = Instant::now();
    pg.psql("postgres", "CREATE DATABASE audit");
    pg.psql(
        "audit",
        "CREATE ROLE vigie_writer LOGIN PASSWORD 'writer-password-7';
         GRANT CREATE ON SCHEMA public TO vigie_writer;",
    );
    let tmp = TempDir::new("ship-pg-keys");
    let password = tmp.path().join("pg-password");
    std::fs::write(&password, "writer-password-7\n").unwrap();
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let connection = pg.connection("audit", "vigie_writer");
    // web-b ships pseudonyms (the DPO's key); its local trail keeps the names.
    let pseudonym_key = tmp.path().join("pseudonym.key");
    std::fs::write(&pseudonym_key, format!("{}\n", "5a".repeat(32))).unwrap();
    std::fs::set_permissions(
        &pseudonym_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // The candidates for the hash-only way back: the users and the client's address.
    let names = tmp.path().join("names.txt");
    std::fs::write(&names, "alice\nbob\ncarol\n127.0.0.1\n").unwrap();
    // ... and the sealed way: the DPO's key pair; web-b gets only the public half.
    let dpo_key = tmp.path().join("dpo.key");
    let (ok, out, err) = vigie_cmd(&p, &["dpo-keygen".as_ref(), dpo_key.as_os_str()]);
    assert!(ok, "{out}{err}");
    let dpo_pub = format!("{}.pub", dpo_key.display());
    let portal = Portal::start("ship-pg", &["--model", "thread"]);
    // Two hosts: two Vigies, each with its trail and its key, writing to the same table.
    let hosts = ["web-a", "web-b"];
    let setup: Vec<(PathBuf, PathBuf, String, Vec<String>)> = hosts
        .iter()
        .map(|h| {
            let key = tmp.path().join(format!("{h}.key"));
            let (ok, out, err) = vigie_cmd(&p, &["trail-keygen".as_ref(), key.as_os_str()]);
            assert!(ok, "{out}{err}");
            let trail = tmp.path().join(format!("{h}-trail"));
            let pseudonyms = if *h == "web-b" {
                format!(
                    "pseudonym_key_file = \"{}\"\npseudonym_recipient_file = \"{dpo_pub}\"\n",
                    pseudonym_key.display()
                )
            } else {
                String::new()
            };
            let config = format!(
                "{}[trail]\ncheckpoint_interval_secs = 1\n{pseudonyms}[trail.postgres]\nconnection = \"{connection}\"\npassword_file = \"{}\"\nhost = \"{h}\"\n",
                portal.config_by_pid(),
                password.display()
            );
            let args = vec![
                "--trail".to_string(),
                trail.display().to_string(),
                "--trail-key".to_string(),
                key.display().to_string(),
            ];
            (trail, key, config, args)
        })
        .collect();
    let start = |i: usize, run: &str| {
        let (_, _, config, args) = &setup[i];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Vigie::start(&p, run, config, &args)
    };
    let reads = |n: usize| {
        for i in 0..n {
            let user = ["alice", "bob"][i % 2];
            assert_eq!(get_as(&portal.addr(), user, "/docs/alice/notes.txt"), 200);
        }
    };
    let rows = |pg: &Postgres, host: &str, kind: &str| -> usize {
        pg.try_psql(
            "audit",
            &format!("SELECT count(*) FROM vigie_trail WHERE host = '{host}' AND type = '{kind}'"),
        )
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
    };
    let accesses = |dir: &Path| {
        trail_records(dir)
            .values()
            .filter(|l| l.contains("\"type\":\"access\""))
            .count()
    };

    let a = start(0, "ship-pg-a1");
    let b = start(1, "ship-pg-b1");
    reads(4);
    poll_until(
        "accesses of both hosts in PostgreSQL",
        Duration::from_secs(15),
        || {
            hosts
                .iter()
                .all(|h| rows(&pg, h, "access") >= 4)
                .then_some(())
        },
        || format!("{}\n{}", a.log(), b.log()),
    );
    // PostgreSQL killed: the trails keep the records meanwhile.
    pg.kill();
    let before = accesses(&setup[0].0);
    reads(4);
    poll_until(
        "accesses written while PostgreSQL is down",
        Duration::from_secs(10),
        || (accesses(&setup[0].0) >= before + 4).then_some(()),
        || a.log(),
    );
    let back = Instant::now();
    pg.restart();
    poll_until(
        "the backlog in PostgreSQL after its restart",
        Duration::from_secs(15),
        || (rows(&pg, "web-a", "access") >= before + 4).then_some(()),
        || a.log(),
    );
    eprintln!(
        "PostgreSQL down: backlog in the table {:?} after its restart",
        back.elapsed()
    );
    // web-a killed right after more reads, restarted: its unshipped records go with run 2.
    reads(2);
    poll_until(
        "the last reads in web-a's trail",
        Duration::from_secs(10),
        || (accesses(&setup[0].0) >= before + 6).then_some(()),
        || a.log(),
    );
    let _ = a.kill();
    let a = start(0, "ship-pg-a2");
    reads(2);
    a.wait_alerts("a violation of web-a's run 2", |al| !al.is_empty());
    let (_, log_a) = a.stop();
    let (_, log_b) = b.stop();
    for (h, (trail, key, _, _)) in hosts.iter().zip(&setup) {
        let records = trail_records(trail);
        poll_until(
            &format!("every record of {h} in PostgreSQL"),
            Duration::from_secs(15),
            || {
                let n: usize = pg
                    .psql(
                        "audit",
                        &format!("SELECT count(*) FROM vigie_trail WHERE host = '{h}'"),
                    )
                    .parse()
                    .unwrap();
                (n >= records.len()).then_some(())
            },
            || format!("{log_a}\n{log_b}"),
        );
        let stored = pg.psql(
            "audit",
            &format!("SELECT seq || ' ' || line FROM vigie_trail WHERE host = '{h}' ORDER BY seq"),
        );
        let expected: Vec<String> = records.iter().map(|(s, l)| format!("{s} {l}")).collect();
        let stored: Vec<&str> = stored.lines().collect();
        let public = format!("{}.pub", key.display());
        let mut verify = vec![
            "verify",
            "--key",
            &public,
            "--postgres",
            &connection,
            "--password-file",
            password.to_str().unwrap(),
            "--host",
            h,
        ];
        if *h == "web-a" {
            assert_eq!(
                stored, expected,
                "{h}: the table holds the trail, each record once, byte for byte"
            );
        } else {
            let seqs = |v: &[&str]| -> Vec<String> {
                v.iter()
                    .map(|l| l.split(' ').next().unwrap().to_string())
                    .collect()
            };
            let exp: Vec<&str> = expected.iter().map(String::as_str).collect();
            assert_eq!(seqs(&stored), seqs(&exp), "{h}: each record once");
            let all = stored.join("\n");
            for name in ["alice", "bob"] {
                for member in ["user", "owner"] {
                    let plain = format!("\"{member}\":\"{name}\"");
                    assert!(!all.contains(&plain), "{plain} shipped in clear");
                    assert!(
                        records
                            .values()
                            .any(|l| l.contains(&format!("\"user\":\"{name}\""))),
                        "the local trail keeps {name}"
                    );
                }
            }
            assert!(all.contains("\"user\":\"p:"), "{all}");
            // The client's address too (the local trail keeps it).
            assert!(
                records.values().any(|l| l.contains("\"ip\":\"127.0.0.1\"")),
                "the local trail keeps the client's address"
            );
            assert!(!all.contains("127.0.0.1"), "an address shipped in clear");
            assert!(all.contains("\"ip\":\"p:"), "{all}");
            assert!(all.contains(",\"sealed\":\""), "{all}");
            // Without a key the pseudonymised records do not match their chain.
            let (code, out) = vigie_status(&p, &verify);
            assert_eq!(code, 1, "verify of pseudonyms without the key:\n{out}");
            // The DPO's key alone opens the sealed names: the chain holds, no name list.
            let mut with_dpo = verify.clone();
            with_dpo.extend(["--dpo-key", dpo_key.to_str().unwrap()]);
            let (code, out) = vigie_status(&p, &with_dpo);
            assert_eq!(code, 0, "verify --dpo-key:\n{out}");
            // The hash key with the candidates works too.
            verify.extend([
                "--pseudonym-key",
                pseudonym_key.to_str().unwrap(),
                "--names",
                names.to_str().unwrap(),
            ]);
        }
        let (code, out) = vigie_status(&p, &verify);
        assert_eq!(code, 0, "verify --postgres --host {h}:\n{out}");
        assert!(out.starts_with("OK: seq 0.."), "{out}");
        eprintln!(
            "verify --postgres --host {h}: {}",
            out.lines().next().unwrap()
        );
    }
    // Monthly partitions, this month's and the next one created ahead.
    let partitions: usize = pg
        .psql(
            "audit",
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'vigie_trail'::regclass",
        )
        .parse()
        .unwrap();
    assert!(partitions >= 2, "{partitions} partitions");
    // The other key does not verify web-b's chain.
    let (code, out) = vigie_status(
        &p,
        &[
            "verify",
            "--key",
            &format!("{}.pub", setup[0].1.display()),
            "--postgres",
            &connection,
            "--password-file",
            password.to_str().unwrap(),
            "--host",
            "web-b",
        ],
    );
    assert_eq!(code, 1, "{out}");
    // A report over the fleet: alice's documents, read through both hosts; web-b's names
    // resolved with the hash key (by hashing `alice`), or with the DPO's key alone (out of
    // their seals).
    let total: usize = setup.iter().map(|(t, _, _, _)| accesses(t)).sum();
    let fleet_report = |flag: &str, file: &Path| {
        let (code, out) = vigie_status(
            &p,
            &[
                "report",
                "--from-postgres",
                &connection,
                "--password-file",
                password.to_str().unwrap(),
                "--subject",
                "alice",
                "--format",
                "csv",
                flag,
                file.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            out.lines().filter(|l| l.contains("alice")).count(),
            total,
            "one report row per access of both hosts ({flag}):\n{out}"
        );
        out
    };
    fleet_report("--pseudonym-key", &pseudonym_key);
    let out = fleet_report("--dpo-key", &dpo_key);
    assert!(
        !out.contains("p:"),
        "a pseudonym left with the DPO key:\n{out}"
    );
    eprintln!("postgres shipping test took {:?}", started.elapsed());
}

/// The certificates of the destination's authority (`dir/pki`) and of another one
/// (`dir/other-pki`), which the destination must refuse.
fn two_pkis(test: &str, dir: &Path) -> Option<(Pki, Pki)> {
    let (good, other) = (dir.join("pki"), dir.join("other-pki"));
    std::fs::create_dir_all(&good).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    Some((pki(test, &good)?, pki(test, &other)?))
}

#[test]
fn syslog_over_tls_checks_the_collector_and_presents_a_client_certificate() {
    let test = "syslog_over_tls_checks_the_collector_and_presents_a_client_certificate";
    let Some(p) = privileged(test) else {
        return;
    };
    let tmp = TempDir::new("ship-tls-keys");
    let Some((pki, other)) = two_pkis(test, tmp.path()) else {
        return;
    };
    let Some(rsyslog) = Rsyslog::start_tls("ship-tls", &pki) else {
        return;
    };
    let started = Instant::now();
    let signed = SignedTrail::new(&p, tmp.path());
    let trail = signed.dir.clone();
    let trail_args = signed.args();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let portal = Portal::start("ship-tls", &["--model", "thread"]);
    // `localhost`: the name the server certificate carries, checked by Vigie.
    let config = |ca: &Path| {
        format!(
            "{}[trail]\ncheckpoint_interval_secs = 1\n[trail.syslog]\naddress = \"localhost:{}\"\nresend_window_secs = 1\n\
             [trail.syslog.tls]\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            portal.config_by_pid(),
            rsyslog.port,
            ca.display(),
            pki.client_cert.display(),
            pki.client_key.display()
        )
    };
    let reads = |n: usize| {
        for i in 0..n {
            let user = ["alice", "bob"][i % 2];
            assert_eq!(get_as(&portal.addr(), user, "/docs/alice/notes.txt"), 200);
        }
    };

    // Trusting another CA: rsyslog's certificate is refused, nothing is sent, the log says why;
    // the records wait in the trail.
    let vigie = Vigie::start(&p, "ship-tls1", &config(&other.ca), &trail_args);
    reads(2);
    poll_until(
        "the refused certificate in Vigie's log",
        Duration::from_secs(10),
        || {
            let log = vigie.log();
            (log.contains("syslog collector unreachable") && log.contains("certificate"))
                .then_some(())
        },
        || vigie.log(),
    );
    let (_, log1) = vigie.stop();
    assert!(
        rsyslog.messages().is_empty(),
        "records reached a collector whose certificate was not trusted"
    );
    let refusal = log1
        .lines()
        .find(|l| l.contains("syslog collector unreachable"))
        .unwrap()
        .to_string();

    // The CA that signed it: everything arrives, the first run's records included, byte for
    // byte, over TLS with the client certificate (rsyslog requires one: `x509/certvalid`).
    let vigie = Vigie::start(&p, "ship-tls2", &config(&pki.ca), &trail_args);
    reads(2);
    vigie.wait_alerts("a violation of run 2", |a| !a.is_empty());
    let (_, log2) = vigie.stop();
    let records = trail_records(&trail);
    poll_until(
        "every trail record at rsyslog over TLS",
        Duration::from_secs(15),
        || {
            let got = received(&rsyslog, &host);
            records.keys().all(|s| got.contains_key(s)).then_some(())
        },
        || format!("{log2}\nreceived {:?}", received(&rsyslog, &host).keys()),
    );
    let got = received(&rsyslog, &host);
    for (seq, line) in &records {
        assert_eq!(&got[seq].1, line, "seq {seq} arrived altered");
    }
    eprintln!(
        "syslog over TLS: refused with the wrong CA ({refusal}); {} records delivered with the right one; test took {:?}",
        records.len(),
        started.elapsed()
    );
}

#[test]
fn postgres_over_tls_checks_the_server_and_presents_a_client_certificate() {
    use crate::harness::postgres::Postgres;
    let test = "postgres_over_tls_checks_the_server_and_presents_a_client_certificate";
    let Some(p) = privileged(test) else {
        return;
    };
    let tmp = TempDir::new("ship-pg-tls-keys");
    let Some((pki, other)) = two_pkis(test, tmp.path()) else {
        return;
    };
    let Some(pg) = Postgres::start_tls("ship-pg-tls", &pki.server_cert, &pki.server_key, &pki.ca)
    else {
        return;
    };
    let started = Instant::now();
    pg.psql("postgres", "CREATE DATABASE audit");
    pg.psql(
        "audit",
        "CREATE ROLE vigie_writer LOGIN PASSWORD 'writer-password-9';
         GRANT CREATE ON SCHEMA public TO vigie_writer;",
    );
    let password = tmp.path().join("pg-password");
    std::fs::write(&password, "writer-password-9\n").unwrap();
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let signed = SignedTrail::new(&p, tmp.path());
    let (key, trail) = (signed.key.clone(), signed.dir.clone());
    let trail_args = signed.args();
    // TCP to `localhost`, which the server certificate names; the server rejects plain text.
    let connection = pg.tcp_connection("audit", "vigie_writer");
    let portal = Portal::start("ship-pg-tls", &["--model", "thread"]);
    let config = format!(
        "{}[trail]\ncheckpoint_interval_secs = 1\n[trail.postgres]\nconnection = \"{connection}\"\npassword_file = \"{}\"\nhost = \"web-tls\"\n\
         [trail.postgres.tls]\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
        portal.config_by_pid(),
        password.display(),
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let vigie = Vigie::start(&p, "ship-pg-tls", &config, &trail_args);
    for user in ["alice", "bob"] {
        assert_eq!(get_as(&portal.addr(), user, "/docs/alice/notes.txt"), 200);
    }
    vigie.wait_alerts("bob's violation", |a| !a.is_empty());
    let (_, log) = vigie.stop();
    let records = trail_records(&trail);
    let rows = || -> usize {
        pg.try_psql("audit", "SELECT count(*) FROM vigie_trail")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    poll_until(
        "every record in PostgreSQL over TLS",
        Duration::from_secs(10),
        || (rows() == records.len()).then_some(()),
        || format!("{} rows, {} records\n{log}", rows(), records.len()),
    );
    // Reading back over TLS: `verify` with the right CA and a client certificate passes; without
    // the certificate (the server requires one), with another CA, or without TLS (the server
    // rejects plain text), it cannot connect (exit 2) and says why.
    let pub_key = format!("{}.pub", key.display());
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--key",
            &pub_key,
            "--postgres",
            &connection,
            "--host",
            "web-tls",
            "--password-file",
            password.to_str().unwrap(),
        ];
        args.extend(extra);
        vigie_status(&p, &args)
    };
    let client = [
        "--client-cert",
        pki.client_cert.to_str().unwrap(),
        "--client-key",
        pki.client_key.to_str().unwrap(),
    ];
    let (code, out) = verify(&[&["--ca-file", pki.ca.to_str().unwrap()][..], &client].concat());
    assert_eq!(code, 0, "{out}");
    let (code, no_client) = verify(&["--ca-file", pki.ca.to_str().unwrap()]);
    assert_eq!(code, 2, "{no_client}");
    assert!(no_client.contains("certificate"), "{no_client}");
    let (code, other_ca) =
        verify(&[&["--ca-file", other.ca.to_str().unwrap()][..], &client].concat());
    assert_eq!(code, 2, "{other_ca}");
    assert!(other_ca.contains("certificate"), "{other_ca}");
    let (code, out) = verify(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("no encryption") || out.contains("rejects"),
        "{out}"
    );
    eprintln!(
        "PostgreSQL over TLS: {} records shipped and verified; no client certificate: {}; another CA: {}; no TLS: {}; test took {:?}",
        records.len(),
        no_client.lines().next().unwrap_or_default(),
        other_ca.lines().next().unwrap_or_default(),
        out.lines().next().unwrap_or_default(),
        started.elapsed()
    );
}
