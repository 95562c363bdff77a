//! Vigie: an eBPF runtime data-access monitor; this crate is the `vigie` daemon, everything
//! around the pure core (`monitor_core`: decoding, redaction, protocols, identity,
//! correlation, judging, the trace format). The live pipeline, stage by stage:
//!
//! `loader` (load + attach probes, with the `attach` table and the `kernel`'s facts) -> `run`
//! (the ring-buffer reader and its loop) -> `capture` (the live capture stage: redaction, body
//! cuts, `/proc` facts, session-store lookups) -> `pipeline` (core correlator -> `ownership` backends -> core judge -> `sinks`:
//! alerts, metrics, trace). `replay` feeds recorded traces to the same `pipeline`. `config`
//! loads and checks the TOML file and hands each stage its own settings.
//! `golang` reads Go targets' executables: where their threads keep the running goroutine.
pub mod adoption;
pub mod attach;
pub mod btf;
pub mod capture;
pub mod cli;
pub mod config;
pub mod golang;
pub mod incidents;
pub mod kernel;
pub mod loader;
pub mod ownership;
pub mod pipeline;
pub mod privilege;
pub mod procfs;
pub mod reference;
pub mod replay;
pub mod run;
pub mod runtime;
pub mod session_store;
pub mod sinks;
pub mod tls;
pub mod trail_files;
