//! Ownership backends: the I/O side of "who owns this document". Asked in the order of
//! `ownership.backends`:
//! - path templates such as `/srv/portal/users/{owner}/**` (pure: `monitor_core::ownership`);
//! - a mapping file, document or glob -> owner and principals it is shared with ([`mapping`]);
//! - a read-only query to the portal's SQLite or PostgreSQL database ([`sql`]), on a lookup
//!   thread bounded by a timeout ([`worker`]).
//!
//! The [`resolver`] asks them, caches the answers, and records those that came from outside
//! the config as facts for replay; the judge only sees the resulting
//! [`monitor_core::ownership::Ownership`] and stays pure.

pub mod config;
pub mod mapping;
pub mod resolver;
pub mod sql;
pub mod worker;

pub use monitor_core::ownership::{Ownership, OwnershipRules, PathTemplate, TemplateError, fact};
