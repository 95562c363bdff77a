//! Support for Vigie's end-to-end tests: the deliberately vulnerable demo portal (also built as
//! the `demo-portal` binary), a tiny HTTP client, and a guard running the portal as a child
//! process.

pub mod client;
pub mod fcgi;
pub mod mapped;
pub mod portal;
pub mod process;
#[cfg(test)]
mod selftest;

pub use client::{KeepAlive, basic, http_get, login, send_raw};
pub use process::{PortalGuard, spawn_portal};
