//! The live capture stage, between the decoder and the pipeline: what the probes captured is
//! made fit to keep before anything else sees it. HTTP/2 connections become stream items,
//! connections Vigie cannot read are dropped,
//! request lines split across reads are passed on whole, secrets are redacted, document content
//! is cut from response bodies (a fingerprint is kept), payloads that are neither HTTP nor
//! FastCGI are cleared, session cookies the correlator does not know are looked up in the
//! portal's session store, and opened files get their `/proc` facts and configured root names.
//! The kernel is told back what it must know about fds ([`tell_kernel`]).
//!
//! Replay does not run this stage: a trace holds what it let through.

use monitor_core::{
    events::{Event, EventKind, FoundFd},
    fingerprint::Bodies,
    redact::{Redactor, SessionKey, hold::LineHold, payload::PayloadGate},
    tls::ConnectionGate,
};

use crate::{
    config::Config,
    loader::{LoadError, Probes},
    procfs,
    session_store::{Found, SessionStore},
};

/// What the capture stage needs of the configuration.
pub struct CaptureSettings {
    pub jwt: monitor_core::identity::jwt::JwtConfig,
    pub session: Option<monitor_core::identity::SessionConfig>,
    /// `capture.max_head_bytes`: the longest request head held until complete.
    pub max_head: usize,
    /// `capture.secret_query_parameters`.
    pub query_secrets: Vec<String>,
    /// The key of session handles: the operator's (stable across restarts), or this run's own.
    pub session_key: SessionKey,
}

impl CaptureSettings {
    /// From the configuration; reads (or creates) `incidents.session_key_file`.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let session_key = match &cfg.incidents.session_key_file {
            Some(path) => {
                crate::incidents::load_or_create_key(path).context("incidents.session_key_file")?
            }
            None => SessionKey::random(),
        };
        Ok(Self {
            // The redactor holds the portal's JWT key (loaded by Config::normalize): signatures
            // are checked at capture time, never by the correlator.
            jwt: cfg.identity.jwt.clone(),
            session: cfg.identity.session.clone(),
            max_head: cfg.capture.max_head_bytes as usize,
            query_secrets: cfg.capture.secret_query_parameters.clone(),
            session_key,
        })
    }
}

pub struct Capture {
    redactor: Redactor,
    /// Request lines held until complete, before the redactor (`redact::hold`).
    hold: LineHold,
    /// Clears the payloads of sockets that carry neither HTTP nor FastCGI.
    gate: PayloadGate,
    bodies: Bodies,
    /// Connections Vigie cannot read (TLS not hooked) never go past the decoder.
    conn_gate: ConnectionGate,
    /// HTTP/2 connections, followed before the gate (their bytes become items).
    http2: monitor_core::http2::Demux,
    /// Events the HTTP/2 stage passed on (reused buffer).
    demuxed: Vec<Event>,
    /// The portal's session store (`identity.session.store`), if configured.
    session_store: Option<SessionStore>,
    store_errors: u64,
}

impl Capture {
    pub fn new(settings: CaptureSettings) -> anyhow::Result<Self> {
        let session_store = settings
            .session
            .as_ref()
            .and_then(|s| s.store.clone())
            .map(SessionStore::new)
            .transpose()
            .map_err(|e| anyhow::anyhow!("identity.session.store: {e}"))?;
        let login_path = settings.session.as_ref().map(|s| s.login_path.as_str());
        let http2 = monitor_core::http2::Demux::new().with_login_path(login_path);
        Ok(Self {
            redactor: Redactor::new(settings.jwt)
                .with_session(settings.session)
                .with_key(settings.session_key)
                .with_query_secrets(settings.query_secrets),
            hold: LineHold::new(settings.max_head),
            gate: PayloadGate::default(),
            bodies: Bodies::new(),
            conn_gate: ConnectionGate::new(),
            http2,
            demuxed: Vec::new(),
            session_store,
            store_errors: 0,
        })
    }

    /// A decoded event enters the stage: an HTTP/2 connection's bytes become its stream items;
    /// an event of a connection that cannot be read is handed to `dropped` (for reuse); the
    /// rest is held or passed on to `passed` whole.
    pub fn admit(&mut self, ev: Event, passed: &mut Vec<Event>, mut dropped: impl FnMut(Event)) {
        let mut demuxed = std::mem::take(&mut self.demuxed);
        self.http2.take(ev, &mut demuxed);
        for mut ev in demuxed.drain(..) {
            if self.conn_gate.drops(&mut ev) {
                dropped(ev);
                continue;
            }
            self.hold.take(ev, passed);
        }
        self.demuxed = demuxed;
    }

    /// Events were lost, or the run ends: the decoder's `pending` events, then every request
    /// line still held, are passed on to `passed`.
    pub fn flush(&mut self, pending: Vec<Event>, passed: &mut Vec<Event>) {
        for ev in pending {
            self.admit(ev, passed, drop);
        }
        self.hold.flush_all(passed);
    }

    /// Events were lost: a lost read may have been part of a FastCGI stream, the redactor
    /// waits for a point to resume; every HTTP/2 connection may have lost a frame: lost for good.
    pub fn lost(&mut self) {
        self.redactor.lost();
        self.http2.events_lost();
    }

    /// Redacts and enriches `ev` (a passed event) before anything else sees it; returns the
    /// events to feed before it: sessions found in the portal's store for the cookies it
    /// carries, those `knows_session` (the correlator) does not know already.
    pub fn prepare(
        &mut self,
        ev: &mut Event,
        roots: &procfs::Roots,
        knows_session: impl Fn(&[u8]) -> bool,
    ) -> Vec<Event> {
        let pid = ev.pid;
        let mut first = Vec::new();
        match &mut ev.kind {
            EventKind::SockRead { fd, bytes, data } => {
                self.redactor.redact_read(pid, *fd, &mut data.0, *bytes);
                self.gate.pass(pid, *fd, true, &mut data.0);
                if !data.0.is_empty() {
                    self.bodies.request(pid, *fd);
                }
            }
            EventKind::SockWrite {
                fd,
                bytes,
                data,
                body_fp,
                ..
            } => {
                // Document content in an HTTP response body is cut here, before anything keeps
                // it (FastCGI writes are left alone here: the redactor masks their bodies).
                *body_fp = self.bodies.response(pid, *fd, *bytes, &mut data.0);
                self.redactor.redact_write(pid, *fd, &mut data.0, *bytes);
                if !self.gate.pass(pid, *fd, false, &mut data.0) {
                    *body_fp = None;
                }
            }
            EventKind::SendFile { out_fd, bytes, .. } => {
                self.bodies.sent(pid, *out_fd, *bytes);
            }
            // Body writes the probes counted: their bytes were never captured.
            EventKind::SockWriteMore { fd, bytes, .. } => {
                self.bodies.sent(pid, *fd, *bytes);
            }
            EventKind::Http2 { item, .. } => {
                use monitor_core::http2::Item;
                match item {
                    Item::Request { head, .. } | Item::Response { head, .. } => {
                        self.redactor.redact_head(&mut head.0);
                    }
                    Item::LoginForm { form, .. } => self.redactor.redact_login_form(&mut form.0),
                    _ => {}
                }
            }
            EventKind::SockAccept { fd, .. } => {
                self.redactor.accepted(pid, *fd);
                self.gate.accepted(pid, *fd);
                self.bodies.forget(pid, *fd);
            }
            EventKind::SockClose { fd } => {
                self.redactor.forget(pid, *fd);
                self.gate.forget(pid, *fd);
                self.bodies.forget(pid, *fd);
            }
            EventKind::ProcessExit => {
                self.redactor.forget_process(pid);
                self.gate.forget_process(pid);
                self.bodies.forget_process(pid);
            }
            EventKind::FileOpen { .. } => {
                procfs::enrich(ev);
                roots.rename(ev);
            }
            _ => {}
        }
        // The session cookies a request head carried (HTTP/1 read or HTTP/2 stream), when
        // the portal's store knows them and the correlator does not.
        for (raw, hashed) in self.redactor.take_session_ids() {
            if knows_session(&hashed) {
                continue;
            }
            if let Some(user) = self.session_from_store(&raw) {
                first.push(Event {
                    ts_ns: ev.ts_ns,
                    pid,
                    tid: ev.tid,
                    comm: ev.comm.clone(),
                    goid: None,
                    kind: EventKind::SessionFound {
                        session: String::from_utf8_lossy(&hashed).into_owned(),
                        user,
                    },
                });
            }
        }
        first
    }

    /// The user of a session cookie, from the portal's session store (if one is configured).
    fn session_from_store(&mut self, raw: &[u8]) -> Option<String> {
        let store = self.session_store.as_mut()?;
        match store.lookup(raw) {
            Ok(Found::User(user)) => {
                tracing::debug!(user, "session found in the portal's store");
                Some(user)
            }
            Ok(Found::Nothing | Found::Refused) => None,
            Err(e) => {
                self.store_errors += 1;
                if self.store_errors.is_power_of_two() {
                    tracing::warn!(
                        errors = self.store_errors,
                        "session store lookup failed: {e}"
                    );
                }
                None
            }
        }
    }

    /// Connections of TLS not hooked kept out, and HTTP/2 connections followed, so far (for the
    /// metrics).
    /// An adoption's event, fed to the correlator without this stage: the HTTP/2 stage
    /// learns which sockets were open before Vigie started.
    pub fn adopted(&mut self, ev: &Event) {
        self.http2.adopted(ev);
    }

    pub fn connections(&self) -> (u64, u64) {
        (self.conn_gate.tls_connections, self.http2.connections)
    }
}

/// Feeds the kernel's fd map back: an fd found open (at adoption, or surviving an exec) is a
/// document fd or not, so the probes capture its reads, or leave them.
pub fn tell_kernel(probes: &mut Probes, ev: &Event) -> Result<(), LoadError> {
    if let EventKind::FdFound { fd, found } = &ev.kind {
        probes.set_fd_kind(ev.pid, *fd, matches!(found, FoundFd::Document { .. }))?;
    }
    Ok(())
}
