//! Where findings go.
pub mod alerts;
pub mod metrics;
pub mod ocsf;
pub mod trace;
pub mod webhook;
