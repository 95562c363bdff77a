//! Vigie's pure core. Everything between the kernel's raw records and a verdict, in pipeline
//! order:
//!
//! - [`decode`]: raw ring-buffer records (`monitor-common`) -> typed [`events`];
//! - [`redact`]: secrets out of each connection's byte stream, lengths kept, before anything
//!   else sees it;
//! - [`http`], [`fastcgi`]: the protocols read from those streams; [`identity`]: who a request
//!   is authenticated as; [`fingerprint`]: content evidence; [`paths`]: lexical normalization;
//! - [`client`]: who was on the other end (the peer at accept, or whom a trusted proxy names);
//! - [`correlate`]: requests, identities and document accesses (the attribution model);
//! - [`ownership`]: path templates, the ownership facts backends record, and [`judge`]: the
//!   verdict;
//! - [`incident`]: alerts grouped into incidents, enumeration rules, on event timestamps;
//! - [`trace`]: the recorded trace format, its writer and reader;
//! - [`tls`]: which TLS stack a target maps, and ciphertext kept from the HTTP parser;
//! - [`trail`]: the signed audit trail's records, chain, verification and reports.
//!
//! No I/O, no clock, no globals: this crate depends on no I/O crate, so the rule is a compile
//! error rather than a convention. The `vigie` binary (crate `monitor`) does the I/O around it:
//! configuration files, probes, the live capture stage, ownership backends, session stores,
//! sinks and replay. Live runs and replay feed it the same events and get the same verdicts.
pub mod client;
pub mod correlate;
pub mod decode;
pub mod events;
pub mod fastcgi;
pub mod fingerprint;
pub mod http;
pub mod http2;
pub mod identity;
pub mod idmap;
pub mod incident;
pub mod judge;
pub mod ownership;
pub mod paths;
pub mod redact;
pub mod tls;
pub mod trace;
pub mod trail;
pub mod walltime;
