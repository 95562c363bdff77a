//! Session cookies learned from the portal's own login exchange.
//!
//! The portal's login request (a configured path, a form field naming the user) and the
//! `Set-Cookie` of its response bind a session id to a user; later requests carrying that cookie
//! are that user. Logout (a configured path), a `Set-Cookie` clearing the cookie, and idle expiry
//! unbind it. One table serves every worker process of the portal.
//!
//! Cookie values never reach this module in clear: the redactor replaced them with a keyed hash
//! (random key per run) before anything else saw them, so the table holds hashes, and so do
//! traces. The table is pure state: time comes from event timestamps.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{user_name, valid_user_name};

/// `[identity.session]`: how the portal logs users in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Name of the session cookie (`PHPSESSID`, `JSESSIONID`, `session`, ...).
    pub cookie: String,
    /// Path of the login request (a POST with a form body), without query string.
    pub login_path: String,
    /// Form field of the login body that names the user.
    #[serde(default = "default_user_field")]
    pub user_field: String,
    /// Path of the logout request, if the portal has one: the session is unbound when it is
    /// requested.
    #[serde(default)]
    pub logout_path: Option<String>,
    /// A session unused for this long is forgotten (the portal's own session lifetime).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// Most sessions kept; the least recently used go first.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// The portal's session store (`[identity.session.store]`), read to resolve sessions Vigie
    /// did not see being created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<super::store_config::StoreConfig>,
}

fn default_user_field() -> String {
    "user".to_owned()
}

fn default_idle_timeout() -> u64 {
    3600
}

fn default_max_sessions() -> usize {
    100_000
}

impl SessionConfig {
    /// The field and reason of the first invalid setting.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.cookie.is_empty() || !self.cookie.bytes().all(is_cookie_name_byte) {
            return Err(("cookie", format!("{:?} is not a cookie name", self.cookie)));
        }
        for (field, path) in [
            ("login_path", Some(&self.login_path)),
            ("logout_path", self.logout_path.as_ref()),
        ] {
            if let Some(p) = path
                && (!p.starts_with('/') || p.contains(['?', '#', ' ']))
            {
                return Err((
                    field,
                    format!("{p:?} is not an absolute path without query"),
                ));
            }
        }
        if self.user_field.is_empty() || self.user_field.contains(['&', '=']) {
            return Err((
                "user_field",
                format!("{:?} is not a form field name", self.user_field),
            ));
        }
        if self.idle_timeout_seconds == 0 || self.idle_timeout_seconds > 30 * 86_400 {
            return Err(("idle_timeout_seconds", "must be 1 to 2592000".to_owned()));
        }
        if self.max_sessions == 0 || self.max_sessions > 10_000_000 {
            return Err(("max_sessions", "must be 1 to 10000000".to_owned()));
        }
        if let Some(store) = &self.store {
            store.check().map_err(|(field, reason)| {
                let field = match field {
                    "files" => "store.files",
                    "redis" => "store.redis",
                    "key" => "store.key",
                    "user_key" => "store.user_key",
                    _ => "store.timeout_ms",
                };
                (field, reason)
            })?;
        }
        Ok(())
    }
}

fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)
}

#[derive(Debug, Clone)]
struct Bound {
    user: String,
    last_used_ns: u64,
}

/// Session id (hashed) -> user.
#[derive(Debug, Default)]
pub struct Sessions {
    bound: HashMap<Vec<u8>, Bound>,
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether session `id` is bound (expired or not).
    pub fn contains(&self, id: &[u8]) -> bool {
        self.bound.contains_key(id)
    }

    /// Binds session `id` to `user` at `ts_ns` (a login, or the portal renewing the id).
    pub fn bind(&mut self, cfg: &SessionConfig, id: &[u8], user: &str, ts_ns: u64) {
        if id.is_empty() || !valid_user_name(user) {
            return;
        }
        if self.bound.len() >= cfg.max_sessions && !self.bound.contains_key(id) {
            self.evict(cfg, ts_ns);
        }
        self.bound.insert(
            id.to_vec(),
            Bound {
                user: user.to_owned(),
                last_used_ns: ts_ns,
            },
        );
    }

    pub fn unbind(&mut self, id: &[u8]) {
        self.bound.remove(id);
    }

    /// The user of session `id` at `ts_ns`, if it is bound and not idle past the timeout (then
    /// it is forgotten). A use refreshes it.
    pub fn user(&mut self, cfg: &SessionConfig, id: &[u8], ts_ns: u64) -> Option<String> {
        let timeout = cfg.idle_timeout_seconds.saturating_mul(1_000_000_000);
        let bound = self.bound.get_mut(id)?;
        if ts_ns.saturating_sub(bound.last_used_ns) > timeout {
            self.bound.remove(id);
            return None;
        }
        bound.last_used_ns = bound.last_used_ns.max(ts_ns);
        Some(bound.user.clone())
    }

    pub fn len(&self) -> usize {
        self.bound.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bound.is_empty()
    }

    /// Makes room: expired sessions first, then the least recently used tenth.
    fn evict(&mut self, cfg: &SessionConfig, ts_ns: u64) {
        let timeout = cfg.idle_timeout_seconds.saturating_mul(1_000_000_000);
        self.bound
            .retain(|_, b| ts_ns.saturating_sub(b.last_used_ns) <= timeout);
        if self.bound.len() < cfg.max_sessions {
            return;
        }
        let mut ages: Vec<(u64, Vec<u8>)> = self
            .bound
            .iter()
            .map(|(id, b)| (b.last_used_ns, id.clone()))
            .collect();
        ages.sort_unstable();
        let drop = (cfg.max_sessions / 10).max(1);
        for (_, id) in ages.into_iter().take(drop) {
            self.bound.remove(&id);
        }
    }
}

/// Values of cookie `name` in `Cookie` header values (`a=1; b=2`), in order.
pub fn cookie_values<'h>(
    headers: impl Iterator<Item = &'h [u8]>,
    name: &'h str,
) -> impl Iterator<Item = &'h [u8]> {
    headers
        .flat_map(|v| v.split(|&b| b == b';'))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

/// What a `Set-Cookie` value does to cookie `name`: `Some(Some(value))` sets it,
/// `Some(None)` clears it (empty value, `Max-Age` of 0 or less), `None` is another cookie.
pub fn set_cookie(value: &[u8], name: &str) -> Option<Option<Vec<u8>>> {
    let mut parts = value.split(|&b| b == b';');
    let first = parts.next()?.trim_ascii();
    let eq = first.iter().position(|&b| b == b'=')?;
    if first[..eq].trim_ascii() != name.as_bytes() {
        return None;
    }
    let v = first[eq + 1..].trim_ascii();
    let cleared = v.is_empty()
        || parts.any(|attr| {
            let attr = attr.trim_ascii();
            attr.len() > 8
                && attr[..8].eq_ignore_ascii_case(b"max-age=")
                && std::str::from_utf8(&attr[8..])
                    .ok()
                    .and_then(|n| n.trim().parse::<i64>().ok())
                    .is_some_and(|n| n <= 0)
        });
    Some((!cleared).then(|| v.to_vec()))
}

/// The user named by form field `field` in an `application/x-www-form-urlencoded` body
/// (percent-decoded, `+` as space), if it is a valid user name.
pub fn form_user(body: &[u8], field: &str) -> Option<String> {
    body.split(|&b| b == b'&').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        let name = form_decode(&pair[..eq])?;
        if name != field.as_bytes() {
            return None;
        }
        user_name(&form_decode(&pair[eq + 1..])?)
    })
}

fn form_decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SessionConfig {
        SessionConfig {
            cookie: "session".into(),
            login_path: "/login".into(),
            user_field: "user".into(),
            logout_path: Some("/logout".into()),
            idle_timeout_seconds: 10,
            max_sessions: 4,
            store: None,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn bind_use_expire_unbind() {
        let c = cfg();
        let mut s = Sessions::new();
        s.bind(&c, b"h1", "alice", S);
        assert_eq!(s.user(&c, b"h1", 5 * S).as_deref(), Some("alice"));
        // Used at 5 s: still there at 14 s, gone at 26 s.
        assert_eq!(s.user(&c, b"h1", 14 * S).as_deref(), Some("alice"));
        assert_eq!(s.user(&c, b"h1", 26 * S), None);
        assert!(s.is_empty());
        s.bind(&c, b"h2", "bob", S);
        s.unbind(b"h2");
        assert_eq!(s.user(&c, b"h2", S), None);
        // Invalid users and empty ids are never bound.
        s.bind(&c, b"", "bob", S);
        s.bind(&c, b"h3", " bob", S);
        assert!(s.is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let c = cfg();
        let mut s = Sessions::new();
        for i in 0..100u64 {
            s.bind(&c, &i.to_be_bytes(), "u", i);
            assert!(s.len() <= c.max_sessions);
        }
        // The most recent survives.
        assert_eq!(s.user(&c, &99u64.to_be_bytes(), 100).as_deref(), Some("u"));
    }

    #[test]
    fn cookies_and_set_cookies() {
        let headers: [&[u8]; 2] = [b"theme=dark; session=abc ; x=1", b"session=def"];
        let got: Vec<&[u8]> = cookie_values(headers.into_iter(), "session").collect();
        assert_eq!(got, [&b"abc"[..], b"def"]);
        assert_eq!(
            set_cookie(b"session=abc; Path=/; HttpOnly", "session"),
            Some(Some(b"abc".to_vec()))
        );
        assert_eq!(set_cookie(b"session=; Path=/", "session"), Some(None));
        assert_eq!(set_cookie(b"session=abc; Max-Age=0", "session"), Some(None));
        assert_eq!(
            set_cookie(b"session=abc; max-age=-1", "session"),
            Some(None)
        );
        assert_eq!(set_cookie(b"other=abc", "session"), None);
        assert_eq!(set_cookie(b"garbage", "session"), None);
    }

    #[test]
    fn form_users() {
        assert_eq!(
            form_user(b"user=alice&password=x", "user").as_deref(),
            Some("alice")
        );
        assert_eq!(
            form_user(b"password=x&user=a%40b.fr", "user").as_deref(),
            Some("a@b.fr")
        );
        assert_eq!(form_user(b"user=%zz", "user"), None);
        assert_eq!(form_user(b"user=+alice", "user"), None);
        assert_eq!(form_user(b"login=alice", "user"), None);
        assert_eq!(form_user(&[0xff; 100], "user"), None);
    }

    #[test]
    fn hostile_cookie_and_form_input_has_defined_outcomes() {
        let huge = vec![b'a'; 1 << 20];
        let mut header = b"sid=".to_vec();
        header.extend_from_slice(&huge);
        let got: Vec<&[u8]> = cookie_values([&header[..]].into_iter(), "sid").collect();
        assert_eq!(got[0].len(), huge.len());
        let many = "x=1; ".repeat(100_000) + "sid=z";
        assert_eq!(
            cookie_values([many.as_bytes()].into_iter(), "sid").collect::<Vec<_>>(),
            [&b"z"[..]]
        );
        for hostile in [
            &b"\xff\xfe=\x00; sid"[..],
            b";;;;=;=",
            b"sid",
            b"=sid=",
            b"sid==",
        ] {
            let _ = cookie_values([hostile].into_iter(), "sid").count();
            let _ = set_cookie(hostile, "sid");
            assert_eq!(form_user(hostile, "user"), None);
        }
        assert_eq!(
            set_cookie(b"sid==; Max-Age=99999999999999999999", "sid"),
            Some(Some(b"=".to_vec()))
        );
        let mut form = b"user=".to_vec();
        form.extend_from_slice(&huge);
        assert_eq!(form_user(&form, "user"), None, "longer than a user name");
        assert_eq!(form_user(b"user=%", "user"), None);
        assert_eq!(form_user(b"user=%4", "user"), None);
        assert_eq!(
            form_user(b"user=%C3%A9lise", "user").as_deref(),
            Some("élise")
        );
        assert_eq!(form_user(b"user=%FF", "user"), None, "not UTF-8");
    }

    #[test]
    fn config_checks() {
        assert!(cfg().check().is_ok());
        let bad = |f: fn(&mut SessionConfig)| {
            let mut c = cfg();
            f(&mut c);
            c.check().unwrap_err().0
        };
        assert_eq!(bad(|c| c.cookie = "a b".into()), "cookie");
        assert_eq!(bad(|c| c.login_path = "login".into()), "login_path");
        assert_eq!(bad(|c| c.logout_path = Some("/x?y".into())), "logout_path");
        assert_eq!(bad(|c| c.user_field = String::new()), "user_field");
        assert_eq!(bad(|c| c.idle_timeout_seconds = 0), "idle_timeout_seconds");
        assert_eq!(bad(|c| c.max_sessions = 0), "max_sessions");
    }
}
