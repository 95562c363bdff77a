//! The ownership resolver: asks the configured backends, in order, who owns a document, and
//! hands the judge the answer ([`Ownership`]). It does the I/O the judge must not do: database
//! lookups (on lookup threads, bounded by a timeout), with a cache (TTL, negative TTL, bounded
//! size). Every answer that came from outside the config (mapping file, database) is also
//! returned as a [`Fact`] so that the live run can record it in its trace; replay feeds those
//! facts back ([`Resolver::learn`]) instead of asking again, and so judges exactly as live did.
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

pub use monitor_core::ownership::Ownership;

use super::{
    OwnershipRules,
    config::{FieldError, OwnershipConfig},
    fact::{Answer, BackendKind, Fact, LookupError},
    mapping::Mapping,
    sql::DocumentId,
    worker::Worker,
};

/// A fact the resolution used, with the generation of the lookup that produced it (a cached
/// answer keeps its generation): the trace writer records each generation once per file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedFact {
    pub fact: Fact,
    pub generation: u64,
}

enum Source {
    Templates(OwnershipRules),
    Mapping(Mapping),
    Query {
        id: Option<DocumentId>,
        worker: Worker,
    },
    /// Replay: answers come from the facts recorded in the trace. In a what-if, the backend
    /// itself answers for documents the recording never asked it about (another backend
    /// order, say).
    Recorded(Option<Box<Source>>),
}

struct Link {
    kind: BackendKind,
    source: Source,
}

type Key = (BackendKind, String);

struct Entry {
    answer: Answer,
    generation: u64,
    expires: Instant,
}

/// Answers by (backend, document), with an expiry each, at most `max` of them: the oldest
/// insertion goes first.
struct Cache {
    map: HashMap<Key, Entry>,
    order: VecDeque<(Key, u64)>,
    max: usize,
}

impl Cache {
    fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            max,
        }
    }

    fn get(&self, key: &Key, now: Instant) -> Option<&Entry> {
        self.map.get(key).filter(|e| e.expires > now)
    }

    fn insert(&mut self, key: Key, entry: Entry) {
        self.order.push_back((key.clone(), entry.generation));
        self.map.insert(key, entry);
        while self.map.len() > self.max {
            let Some((old, generation)) = self.order.pop_front() else {
                break;
            };
            if self
                .map
                .get(&old)
                .is_some_and(|e| e.generation == generation)
            {
                self.map.remove(&old);
            }
        }
        // Keys inserted again leave stale positions behind: compact now and then.
        if self.order.len() > 2 * self.max.max(16) {
            let map = &self.map;
            self.order
                .retain(|(k, g)| map.get(k).is_some_and(|e| e.generation == *g));
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

pub struct Resolver {
    links: Vec<Link>,
    lookups: Lookups,
    /// Replay: the last recorded fact per (backend, document).
    recorded: HashMap<Key, Fact>,
}

/// A database refused the configured query at start-up: the configuration is wrong.
#[derive(Debug, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct QueryRefused {
    pub field: String,
    pub reason: String,
}

/// Where the resolver counts its lookups (live runs: `vigie_ownership_lookups_total` and
/// `vigie_ownership_lookup_seconds`, implemented by the metrics sink).
pub trait LookupMetrics: Send + Sync {
    /// Every outcome of each backend that asks something outside Vigie, at zero.
    fn init_ownership(&self, backends: &[BackendKind]);
    /// One lookup of `backend` with its outcome, and how long the backend took to answer.
    fn ownership_lookup(&self, backend: &str, outcome: &str, seconds: Option<f64>);
}

/// What live lookups share: the cache, its TTLs, the metrics, the generation counter.
struct Lookups {
    cache: Cache,
    ttl: Duration,
    negative_ttl: Duration,
    metrics: Option<Arc<dyn LookupMetrics>>,
    next_generation: u64,
}

/// Where a backend's answers come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The backend itself.
    Live,
    /// The trace's facts only (replay under the recorded config: exactly the live verdicts).
    Recorded,
    /// The trace's facts, else the backend (a what-if that keeps this backend as recorded).
    RecordedOrLive,
}

fn link(
    mode: Mode,
    kind: BackendKind,
    make: impl FnOnce() -> Result<Source, FieldError>,
) -> Result<Link, FieldError> {
    let source = match mode {
        Mode::Live => make()?,
        Mode::Recorded => Source::Recorded(None),
        Mode::RecordedOrLive => Source::Recorded(Some(Box::new(make()?))),
    };
    Ok(Link { kind, source })
}

impl Resolver {
    /// Templates only (tests, and configs without `[ownership]` backends).
    pub fn templates(rules: OwnershipRules) -> Self {
        Self::with_links(
            vec![Link {
                kind: BackendKind::Templates,
                source: Source::Templates(rules),
            }],
            &OwnershipConfig::default(),
        )
    }

    fn with_links(links: Vec<Link>, cfg: &OwnershipConfig) -> Self {
        Self {
            links,
            lookups: Lookups {
                cache: Cache::new(cfg.cache_max_entries),
                ttl: Duration::from_secs(cfg.cache_ttl_seconds),
                negative_ttl: Duration::from_secs(cfg.negative_ttl_seconds),
                metrics: None,
                next_generation: 1,
            },
            recorded: HashMap::new(),
        }
    }

    /// The live resolver of ownership section `own` (with `templates`, the document roots'
    /// owner templates): every backend is asked. Built by `Config::resolver`.
    pub fn live(own: &OwnershipConfig, templates: OwnershipRules) -> Result<Self, FieldError> {
        Self::build(own, templates, |_| Mode::Live)
    }

    /// For replay (built by `Config::replay_resolver`). Under the recorded config (`same`: the
    /// whole configuration is the recorded one), every backend answers from the recorded facts
    /// only, so the verdicts are the live ones. In a what-if, a backend configured as recorded
    /// answers from the facts, and asks for real about documents the recording never asked it
    /// about; a backend the what-if changes is asked for real.
    pub fn replaying(
        now: &OwnershipConfig,
        templates: OwnershipRules,
        then: &OwnershipConfig,
        same: bool,
    ) -> Result<Self, FieldError> {
        let same_timeout = now.lookup_timeout_ms == then.lookup_timeout_ms;
        let unchanged = if same {
            Mode::Recorded
        } else {
            Mode::RecordedOrLive
        };
        Self::build(now, templates, |kind| {
            let same = match kind {
                BackendKind::Templates => true,
                BackendKind::Mapping => now.mapping == then.mapping,
                BackendKind::Sqlite => now.sqlite == then.sqlite && same_timeout,
                BackendKind::Postgres => now.postgres == then.postgres && same_timeout,
            };
            if same { unchanged } else { Mode::Live }
        })
    }

    fn build(
        own: &OwnershipConfig,
        templates: OwnershipRules,
        mode: impl Fn(BackendKind) -> Mode,
    ) -> Result<Self, FieldError> {
        let id_of = |t: &Option<String>, field: &str| {
            t.as_deref()
                .map(DocumentId::parse)
                .transpose()
                .map_err(|r| (format!("ownership.{field}.document_id"), r))
        };
        let mut links = Vec::new();
        for &kind in &own.backends {
            let link = match kind {
                BackendKind::Templates => Link {
                    kind,
                    source: Source::Templates(templates.clone()),
                },
                BackendKind::Mapping => link(mode(kind), kind, || {
                    let m = own.mapping.as_ref().ok_or_else(|| missing(kind))?;
                    let mapping = Mapping::load(std::path::Path::new(&m.file))
                        .map_err(|e| ("ownership.mapping.file".to_owned(), e.to_string()))?;
                    Ok(Source::Mapping(mapping))
                })?,
                BackendKind::Sqlite => link(mode(kind), kind, || {
                    let s = own.sqlite.as_ref().ok_or_else(|| missing(kind))?;
                    Ok(Source::Query {
                        id: id_of(&s.document_id, "sqlite")?,
                        worker: Worker::new(
                            "sqlite",
                            Box::new(own.sqlite_lookup(s)),
                            own.timeout(),
                        ),
                    })
                })?,
                BackendKind::Postgres => link(mode(kind), kind, || {
                    let p = own.postgres.as_ref().ok_or_else(|| missing(kind))?;
                    Ok(Source::Query {
                        id: id_of(&p.document_id, "postgres")?,
                        worker: Worker::new(
                            "postgres",
                            Box::new(own.postgres_lookup(p)?),
                            own.timeout(),
                        ),
                    })
                })?,
            };
            links.push(link);
        }
        Ok(Self::with_links(links, own))
    }

    /// Counts lookups in `vigie_ownership_lookups_total` (live runs).
    pub fn set_metrics(&mut self, metrics: Arc<dyn LookupMetrics>) {
        let external: Vec<BackendKind> = self
            .links
            .iter()
            .filter(|l| !matches!(l.source, Source::Templates(_) | Source::Recorded(None)))
            .map(|l| l.kind)
            .collect();
        metrics.init_ownership(&external);
        self.lookups.metrics = Some(metrics);
    }

    /// Checks each database and its query (start-up; waits at most `wait` per database). A
    /// query the database refuses is an error naming the field; a database that cannot be
    /// reached only a warning: lookups fail (`unknown_owner`) until it is back.
    pub fn start(&mut self, wait: Duration) -> Result<(), QueryRefused> {
        for link in &mut self.links {
            let source = match &mut link.source {
                Source::Recorded(Some(fallback)) => fallback.as_mut(),
                other => other,
            };
            if let Source::Query { worker, .. } = source {
                let name = link.kind.as_str();
                match worker.probe(wait) {
                    Ok(()) => tracing::info!(backend = name, "ownership database ready"),
                    Err(super::sql::ProbeError::Query(reason)) => {
                        return Err(QueryRefused {
                            field: format!("ownership.{name}.query"),
                            reason,
                        });
                    }
                    Err(super::sql::ProbeError::Unavailable(reason)) => tracing::warn!(
                        backend = name,
                        "ownership database unavailable: {reason}; its lookups fail (unknown_owner) until it answers"
                    ),
                }
            }
        }
        Ok(())
    }

    /// Replay: a fact the live run recorded.
    pub fn learn(&mut self, fact: Fact) {
        self.recorded
            .insert((fact.backend, fact.document.clone()), fact);
    }

    /// Answers cached now.
    pub fn cached(&self) -> usize {
        self.lookups.cache.len()
    }

    /// Who owns `document` (normalized absolute path). `now` ages the cache; `used` receives
    /// the facts from outside the config that the answer rests on.
    pub fn resolve(&mut self, document: &str, now: Instant, used: &mut Vec<UsedFact>) -> Ownership {
        for link in &mut self.links {
            let kind = link.kind;
            let (answer, generation) = match &mut link.source {
                Source::Templates(rules) => match rules.ownership(document) {
                    Some(ownership) => return ownership,
                    None => continue,
                },
                Source::Recorded(fallback) => {
                    match (self.recorded.get(&(kind, document.to_owned())), fallback) {
                        (Some(fact), _) => (fact.answer(), 0),
                        (None, Some(source)) => self.lookups.ask(source, kind, document, now),
                        (None, None) => (Answer::Failed(LookupError::NotRecorded), 0),
                    }
                }
                live => self.lookups.ask(live, kind, document, now),
            };
            used.push(UsedFact {
                fact: Fact::new(kind, document, &answer),
                generation,
            });
            match answer {
                Answer::Owner {
                    owner,
                    shared_with,
                    matched,
                } => {
                    return Ownership {
                        owner: Some(owner),
                        shared_with,
                        source: Some(kind),
                        matched,
                        error: None,
                    };
                }
                Answer::NotFound => {}
                Answer::Failed(e) => {
                    return Ownership {
                        source: Some(kind),
                        error: Some(e),
                        ..Ownership::default()
                    };
                }
            }
        }
        Ownership::default()
    }
}

impl Lookups {
    /// The answer of a live backend (mapping file or database), from the cache while fresh,
    /// with the generation of the lookup that produced it.
    fn ask(
        &mut self,
        source: &mut Source,
        kind: BackendKind,
        document: &str,
        now: Instant,
    ) -> (Answer, u64) {
        let key = (kind, document.to_owned());
        if let Some(entry) = self.cache.get(&key, now) {
            if let Some(m) = &self.metrics {
                m.ownership_lookup(kind.as_str(), "cached", None);
            }
            return (entry.answer.clone(), entry.generation);
        }
        let started = Instant::now();
        let (answer, asked) = match source {
            Source::Mapping(m) => (m.lookup(document), true),
            Source::Query { id, worker } => {
                match id.as_ref().map_or(Some(document), |t| t.id_of(document)) {
                    Some(k) => (worker.ask(k), true),
                    // Not a path the id template knows: not this backend's document.
                    None => (Answer::NotFound, false),
                }
            }
            Source::Templates(_) | Source::Recorded(_) => (Answer::NotFound, false),
        };
        if let Some(m) = self.metrics.as_ref().filter(|_| asked) {
            m.ownership_lookup(
                kind.as_str(),
                answer.outcome(),
                Some(started.elapsed().as_secs_f64()),
            );
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        // Failures are not cached: the next read asks again (a database that is down answers
        // at once; one that hangs fails fast, see the worker).
        let ttl = match answer {
            Answer::Owner { .. } => Some(self.ttl),
            Answer::NotFound => Some(self.negative_ttl),
            Answer::Failed(_) => None,
        };
        if let Some(ttl) = ttl {
            self.cache.insert(
                key,
                Entry {
                    answer: answer.clone(),
                    generation,
                    expires: now + ttl,
                },
            );
        }
        (answer, generation)
    }
}

fn missing(kind: BackendKind) -> FieldError {
    (
        format!("ownership.{}", kind.as_str()),
        format!(
            "is required when `{}` is in `ownership.backends`",
            kind.as_str()
        ),
    )
}

#[cfg(test)]
mod tests;
