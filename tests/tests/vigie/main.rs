//! Vigie's integration tests: one test binary, one module per area, and the [`harness`] they all
//! share (portal, Vigie, alerts, traces, temp dirs, privilege checks).
//!
//! Run one area with a module filter: `cargo xtask test -- e2e::` (as root, with real probes), or
//! `cargo test -p vigie-tests --test vigie -- e2e::`.

mod harness;

mod adversarial;
mod chunked;
mod concurrency;
mod e2e;
mod fastcgi;
mod faults;
mod go;
mod hooks;
mod incidents;
mod jwt;
mod kernel;
mod mmap;
mod node;
mod ownership;
mod package;
mod paths;
mod portal_process;
mod prometheus;
mod replay;
mod secrets;
mod sessions;
mod shipping;
mod tls;
mod trail;
