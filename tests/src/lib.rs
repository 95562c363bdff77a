//! Support for Vigie's end-to-end tests and its bench: the deliberately vulnerable demo portal
//! (also built as the `demo-portal` binary), a tiny HTTP client, and guards running the portal
//! and `vigie run` as child processes.

pub mod client;
pub mod daemon;
pub mod fcgi;
pub mod goportal;
pub mod mapped;
pub mod nginx;
pub mod portal;
pub mod process;
#[cfg(test)]
mod selftest;

pub use client::{KeepAlive, basic, http_get, login, send_raw};
pub use process::{PortalGuard, spawn_portal};

/// How many times slower than native this machine runs the tests: `VIGIE_TEST_TIME_SCALE`, a
/// number of at least 1 (default 1). `cargo xtask vm-test` sets it for the suite under software
/// emulation, so deadlines and start-up delays stretch there, and nowhere else.
///
/// # Panics
/// On a value that is not a number of at least 1: a test run must not guess.
#[must_use]
pub fn time_scale() -> f64 {
    match std::env::var("VIGIE_TEST_TIME_SCALE") {
        Err(_) => 1.0,
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 1.0 => x,
            _ => panic!("VIGIE_TEST_TIME_SCALE={v:?}: expected a number of at least 1"),
        },
    }
}

/// `d` stretched by [`time_scale`].
#[must_use]
pub fn scaled(d: std::time::Duration) -> std::time::Duration {
    d.mul_f64(time_scale())
}
