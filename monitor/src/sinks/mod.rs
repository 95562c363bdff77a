//! Where findings go.
pub mod alerts;
