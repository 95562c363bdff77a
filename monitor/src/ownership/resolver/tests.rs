use std::sync::{Arc, Mutex};

use super::*;
use crate::ownership::sql::{Lookup, ProbeError};

/// A database: owners by key, a delay per lookup, and a log of the keys it was asked.
#[derive(Clone, Default)]
struct FakeDb {
    owners: Arc<Mutex<HashMap<String, Answer>>>,
    asked: Arc<Mutex<Vec<String>>>,
    delay: Duration,
}

impl FakeDb {
    fn set(&self, key: &str, answer: Answer) {
        self.owners.lock().unwrap().insert(key.into(), answer);
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Lookup for FakeDb {
    fn probe(&mut self) -> Result<(), ProbeError> {
        Ok(())
    }

    fn lookup(&mut self, key: &str, _deadline: Instant) -> Answer {
        std::thread::sleep(self.delay);
        self.asked.lock().unwrap().push(key.to_owned());
        self.owners
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or(Answer::NotFound)
    }
}

fn owner(o: &str, shared: &[&str]) -> Answer {
    Answer::Owner {
        owner: o.into(),
        shared_with: shared.iter().map(|s| (*s).to_owned()).collect(),
        matched: None,
    }
}

fn cfg(ttl: u64, negative: u64, max: usize, timeout_ms: u64) -> OwnershipConfig {
    OwnershipConfig {
        cache_ttl_seconds: ttl,
        negative_ttl_seconds: negative,
        cache_max_entries: max,
        lookup_timeout_ms: timeout_ms,
        ..OwnershipConfig::default()
    }
}

fn query(db: &FakeDb, id: Option<&str>, timeout_ms: u64) -> Link {
    Link {
        kind: BackendKind::Sqlite,
        source: Source::Query {
            id: id.map(|t| DocumentId::parse(t).unwrap()),
            worker: Worker::new(
                "test",
                Box::new(db.clone()),
                Duration::from_millis(timeout_ms),
            ),
        },
    }
}

fn templates(t: &str) -> Link {
    Link {
        kind: BackendKind::Templates,
        source: Source::Templates(OwnershipRules::new(vec![t.parse().unwrap()])),
    }
}

fn read_by(user: &str, document: &str) -> monitor_core::correlate::Access {
    use monitor_core::{
        correlate::{Access, Evidence, RequestInfo},
        identity::{Identity, IdentitySource},
    };
    Access {
        id: 1,
        pid: 1,
        tid: 1,
        comm: "p".into(),
        document: document.into(),
        bytes: 1,
        first_ts_ns: 0,
        last_ts_ns: 0,
        evidence: vec![Evidence::Thread],
        request: Some(RequestInfo {
            id: 1,
            method: "GET".into(),
            target: "/".into(),
            identity: Some(Identity {
                user: user.into(),
                source: IdentitySource::TrustedHeader,
                roles: Vec::new(),
            }),
            identity_problem: None,
            head_truncated: false,
            status: None,
            tid: 1,
            fd: 4,
            ts_ns: 0,
            peer: None,
            client: None,
            session: None,
        }),
        unattributed: None,
    }
}

fn resolve(r: &mut Resolver, doc: &str, now: Instant) -> (Ownership, Vec<UsedFact>) {
    let mut used = Vec::new();
    let o = r.resolve(doc, now, &mut used);
    (o, used)
}

#[test]
fn answers_are_cached_for_their_ttl_and_not_found_for_the_negative_ttl() {
    let db = FakeDb::default();
    db.set("/d/1.pdf", owner("bob", &["alice"]));
    let mut r = Resolver::with_links(vec![query(&db, None, 1000)], &cfg(60, 5, 100, 1000));
    let t0 = Instant::now();
    let (o, used) = resolve(&mut r, "/d/1.pdf", t0);
    assert_eq!(
        (o.owner.as_deref(), o.shared_with.clone(), o.source),
        (
            Some("bob"),
            vec!["alice".to_string()],
            Some(BackendKind::Sqlite)
        )
    );
    assert_eq!(used.len(), 1);
    let first_generation = used[0].generation;
    assert_eq!(used[0].fact.owner.as_deref(), Some("bob"));
    // Within the TTL: from the cache, same generation (the trace has it already).
    let (_, used) = resolve(&mut r, "/d/1.pdf", t0 + Duration::from_secs(59));
    assert_eq!(used[0].generation, first_generation);
    assert_eq!(db.asked(), ["/d/1.pdf"]);
    // Past it: asked again, a new generation.
    db.set("/d/1.pdf", owner("carol", &[]));
    let (o, used) = resolve(&mut r, "/d/1.pdf", t0 + Duration::from_secs(61));
    assert_eq!(o.owner.as_deref(), Some("carol"));
    assert!(used[0].generation > first_generation);
    // Unknown documents: cached for the negative TTL only.
    let (o, used) = resolve(&mut r, "/d/2.pdf", t0);
    assert_eq!(
        (o, used[0].fact.owner.clone()),
        (Ownership::default(), None)
    );
    resolve(&mut r, "/d/2.pdf", t0 + Duration::from_secs(4));
    assert_eq!(db.asked().iter().filter(|k| *k == "/d/2.pdf").count(), 1);
    resolve(&mut r, "/d/2.pdf", t0 + Duration::from_secs(6));
    assert_eq!(db.asked().iter().filter(|k| *k == "/d/2.pdf").count(), 2);
}

#[test]
fn the_cache_is_bounded_oldest_first() {
    let db = FakeDb::default();
    let mut r = Resolver::with_links(vec![query(&db, None, 1000)], &cfg(60, 60, 3, 1000));
    let t0 = Instant::now();
    for d in ["/a", "/b", "/c", "/a", "/d"] {
        resolve(&mut r, d, t0);
    }
    // The second /a was a cache hit; /d then pushed out the oldest insertion, /a.
    assert_eq!(r.cached(), 3);
    assert_eq!(db.asked(), ["/a", "/b", "/c", "/d"]);
    resolve(&mut r, "/a", t0);
    assert_eq!(db.asked().last().map(String::as_str), Some("/a"));
    for i in 0..1000 {
        resolve(&mut r, &format!("/x{i}"), t0);
        resolve(&mut r, "/x0", t0 + Duration::from_secs(61));
    }
    assert!(r.cached() <= 3 && r.lookups.cache.order.len() <= 2 * 16 + 1);
}

#[test]
fn a_timeout_is_unknown_owner_and_never_cached() {
    let db = FakeDb {
        delay: Duration::from_millis(300),
        ..FakeDb::default()
    };
    db.set("/d/1.pdf", owner("bob", &[]));
    let mut r = Resolver::with_links(
        vec![query(&db, None, 50), templates("/d/{owner}")],
        &cfg(60, 60, 100, 50),
    );
    let t0 = Instant::now();
    let started = Instant::now();
    let (o, used) = resolve(&mut r, "/d/1.pdf", t0);
    assert!(started.elapsed() < Duration::from_millis(250));
    // The failure stops the chain: no guess from the template after it.
    assert_eq!(
        (o.owner, o.error, o.source),
        (None, Some(LookupError::Timeout), Some(BackendKind::Sqlite))
    );
    assert_eq!(used[0].fact.error, Some(LookupError::Timeout));
    let judge = monitor_core::judge::Judge::new(Vec::new());
    let mut access = read_by("alice", "/d/1.pdf");
    let (o, _) = resolve(&mut r, "/d/1.pdf", t0);
    let j = judge.judge(&access, o);
    assert_eq!(
        (j.verdict, j.rule),
        (
            monitor_core::judge::Verdict::UnknownOwner,
            "ownership_lookup_timeout"
        )
    );
    // A database that answers in time (a new lookup thread): the owner is found, since the
    // timeout was not cached.
    if let Source::Query { worker, .. } = &mut r.links[0].source {
        *worker = Worker::new(
            "test",
            Box::new(FakeDb {
                delay: Duration::ZERO,
                ..db.clone()
            }),
            Duration::from_secs(1),
        );
    }
    let (o, _) = resolve(&mut r, "/d/1.pdf", t0);
    assert_eq!(o.owner.as_deref(), Some("bob"));
    access.document = "/d/1.pdf".into();
    assert_eq!(judge.judge(&access, o).rule, "cross_user_read");
}

#[test]
fn backends_in_order_first_that_knows_wins() {
    let db = FakeDb::default();
    db.set("7", owner("carol", &[]));
    let mapping = Mapping::parse(
        "[[document]]\npath = \"/docs/7.pdf\"\nowner = \"dana\"\nshared_with = [\"erin\"]\n",
    )
    .unwrap();
    let links = vec![
        templates("/users/{owner}/**"),
        query(&db, Some("/docs/{doc_id}.pdf"), 1000),
        Link {
            kind: BackendKind::Mapping,
            source: Source::Mapping(mapping),
        },
    ];
    let mut r = Resolver::with_links(links, &cfg(60, 60, 100, 1000));
    let t0 = Instant::now();
    // The template knows it: no lookup, no fact.
    let (o, used) = resolve(&mut r, "/users/alice/x.pdf", t0);
    assert_eq!((o.owner.as_deref(), used.len()), (Some("alice"), 0));
    assert_eq!(o.matched.as_deref(), Some("/users/{owner}/**"));
    // The database knows 7 (asked by id).
    let (o, used) = resolve(&mut r, "/docs/7.pdf", t0);
    assert_eq!(
        (o.owner.as_deref(), o.source),
        (Some("carol"), Some(BackendKind::Sqlite))
    );
    assert_eq!(used[0].fact.document, "/docs/7.pdf");
    assert_eq!(db.asked(), ["7"]);
    // Not a path the id template knows: the database is not asked; the mapping is.
    let (o, used) = resolve(&mut r, "/elsewhere/7.pdf", t0);
    assert_eq!(o, Ownership::default());
    assert_eq!(used.len(), 2);
    assert_eq!(db.asked(), ["7"]);
    // Unknown to the database: the mapping decides, with its delegation.
    db.set("7", Answer::NotFound);
    let mut r2 = Resolver::with_links(
        vec![
            query(&db, Some("/docs/{doc_id}.pdf"), 1000),
            Link {
                kind: BackendKind::Mapping,
                source: Source::Mapping(
                    Mapping::parse("[[document]]\npath = \"/docs/*.pdf\"\nowner = \"dana\"\nshared_with = [\"erin\"]\n")
                        .unwrap(),
                ),
            },
        ],
        &cfg(60, 60, 100, 1000),
    );
    let (o, used) = resolve(&mut r2, "/docs/7.pdf", t0);
    assert_eq!(
        (
            o.owner.as_deref(),
            o.shared_with.clone(),
            o.source,
            o.matched.as_deref()
        ),
        (
            Some("dana"),
            vec!["erin".to_string()],
            Some(BackendKind::Mapping),
            Some("/docs/*.pdf")
        )
    );
    assert_eq!(
        used.iter().map(|u| u.fact.backend).collect::<Vec<_>>(),
        [BackendKind::Sqlite, BackendKind::Mapping]
    );
}

#[test]
fn replay_answers_from_recorded_facts_without_asking() {
    let db = FakeDb::default();
    db.set("/d/1.pdf", owner("bob", &["alice"]));
    let mut live = Resolver::with_links(vec![query(&db, None, 1000)], &cfg(60, 60, 100, 1000));
    let t0 = Instant::now();
    let (live_answer, used) = resolve(&mut live, "/d/1.pdf", t0);
    let mut replay = Resolver::with_links(
        vec![Link {
            kind: BackendKind::Sqlite,
            source: Source::Recorded(None),
        }],
        &cfg(60, 60, 100, 1000),
    );
    // No fact recorded: the lookup cannot be answered, and says so.
    let (o, _) = resolve(&mut replay, "/d/1.pdf", t0);
    assert_eq!(o.error, Some(LookupError::NotRecorded));
    for u in used {
        replay.learn(u.fact);
    }
    let (o, _) = resolve(&mut replay, "/d/1.pdf", t0 + Duration::from_secs(3600));
    assert_eq!(o, live_answer);
    assert_eq!(db.asked().len(), 1);
    // A later fact replaces the earlier one.
    replay.learn(Fact::new(
        BackendKind::Sqlite,
        "/d/1.pdf",
        &Answer::Failed(LookupError::Unavailable),
    ));
    assert_eq!(
        resolve(&mut replay, "/d/1.pdf", t0).0.error,
        Some(LookupError::Unavailable)
    );
}

#[test]
fn from_config_and_for_replay() {
    let dir = std::env::temp_dir().join(format!("vigie-resolver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let map = dir.join("map.toml");
    std::fs::write(&map, "[[document]]\npath = \"/d/a\"\nowner = \"alice\"\n").unwrap();
    let text = format!(
        "[documents]\nroots = [\"/d\"]\nowner_templates = [\"/d/{{owner}}/**\"]\n[ownership]\nbackends = [\"mapping\", \"templates\"]\n[ownership.mapping]\nfile = \"{}\"\n",
        map.display()
    );
    let cfg = crate::config::Config::parse(&text, "t").unwrap();
    let mut live = cfg.resolver().unwrap();
    let t0 = Instant::now();
    let (alice, mut facts) = resolve(&mut live, "/d/a", t0);
    assert_eq!(alice.owner.as_deref(), Some("alice"));
    let (bob, more) = resolve(&mut live, "/d/bob/x", t0);
    assert_eq!(bob.owner.as_deref(), Some("bob"));
    // The mapping said it does not know /d/bob/x: that is a fact too.
    assert_eq!(more.len(), 1);
    facts.extend(more);
    // Replay under the recorded config: the mapping file is not read (it may be gone).
    std::fs::remove_file(&map).unwrap();
    let mut replay = cfg.replay_resolver(&cfg).unwrap();
    assert_eq!(
        resolve(&mut replay, "/d/a", t0).0.error,
        Some(LookupError::NotRecorded)
    );
    for f in facts {
        replay.learn(f.fact);
    }
    assert_eq!(resolve(&mut replay, "/d/a", t0).0, alice);
    assert_eq!(resolve(&mut replay, "/d/bob/x", t0).0, bob);
    // A what-if with another mapping file reads that one.
    let other = dir.join("other.toml");
    std::fs::write(&other, "[[document]]\npath = \"/d/a\"\nowner = \"zoe\"\n").unwrap();
    let mut what_if = cfg.clone();
    what_if.ownership.mapping.as_mut().unwrap().file = other.display().to_string();
    let mut r = what_if.replay_resolver(&cfg).unwrap();
    assert_eq!(resolve(&mut r, "/d/a", t0).0.owner.as_deref(), Some("zoe"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_what_if_asks_an_unchanged_backend_what_the_recording_never_asked() {
    let dir = std::env::temp_dir().join(format!("vigie-resolver-whatif-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let map = dir.join("map.toml");
    std::fs::write(
        &map,
        "[[document]]\npath = \"/d/bob/special\"\nowner = \"zed\"\n",
    )
    .unwrap();
    let text = |order: &str| {
        format!(
            "[documents]\nroots = [\"/d\"]\nowner_templates = [\"/d/{{owner}}/**\"]\n[ownership]\nbackends = [{order}]\n[ownership.mapping]\nfile = \"{}\"\n",
            map.display()
        )
    };
    let recorded = crate::config::Config::parse(&text("\"templates\", \"mapping\""), "t").unwrap();
    let what_if = crate::config::Config::parse(&text("\"mapping\", \"templates\""), "t").unwrap();
    let t0 = Instant::now();
    // Live, the template decided: the mapping was never asked, so no fact was recorded.
    let mut live = recorded.resolver().unwrap();
    let (o, used) = resolve(&mut live, "/d/bob/special", t0);
    assert_eq!((o.owner.as_deref(), used.len()), (Some("bob"), 0));
    // The what-if puts the mapping first: it is asked for real, and names zed.
    let mut r = what_if.replay_resolver(&recorded).unwrap();
    assert_eq!(
        resolve(&mut r, "/d/bob/special", t0).0.owner.as_deref(),
        Some("zed")
    );
    assert_eq!(
        resolve(&mut r, "/d/bob/other", t0).0.owner.as_deref(),
        Some("bob")
    );
    // A recorded fact still wins over the file in a what-if.
    r.learn(Fact::new(
        BackendKind::Mapping,
        "/d/bob/x",
        &owner("yan", &[]),
    ));
    assert_eq!(
        resolve(&mut r, "/d/bob/x", t0).0.owner.as_deref(),
        Some("yan")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
