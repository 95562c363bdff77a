//! Where findings go: alert lines (`alerts`, in Vigie's schema or as OCSF events), Prometheus
//! `metrics`, the recorded `trace`, the audit `trail` and its shipping off the host (`ship`).
pub mod alerts;
pub mod metrics;
pub mod ocsf;
pub mod ship;
pub mod trace;
pub mod trail;
pub mod webhook;

/// The schema of Vigie's alert lines (documented in the README), also named in OCSF events.
pub const ALERT_SCHEMA: &str = "vigie.alert/1";
