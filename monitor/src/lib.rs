//! Vigie: an eBPF runtime data-access monitor. The pipeline, one module per stage:
//!
//! `loader` (load + attach probes) -> `reader` (ring buffer) -> `decode` (raw records -> typed
//! `events`) -> `correlate` (requests, identities, document accesses; pure) -> `judge` (verdicts;
//! pure) -> `sinks` (alerts). `procfs` holds what only a live run can read from `/proc`; `run`
//! wires the live pipeline, `pipeline` the part shared with replay.
pub mod attach;
pub mod btf;
pub mod cli;
pub mod config;
pub mod correlate;
pub mod decode;
pub mod events;
pub mod fastcgi;
pub mod fingerprint;
pub mod http;
pub mod identity;
pub mod idmap;
pub mod judge;
pub mod kernel;
pub mod loader;
pub mod ownership;
pub mod paths;
pub mod pipeline;
pub mod privilege;
pub mod procfs;
pub mod redact;
pub mod replay;
pub mod run;
pub mod sinks;
pub mod tls;
