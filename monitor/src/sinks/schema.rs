//! The documented shape of `vigie.alert/1` lines, field by field: the source of the generated
//! reference page (`vigie reference alerts`, `docs/src/reference/alerts.md`). A unit test checks
//! that every key an access line carries is listed here.

/// One top-level field of an alert line.
#[derive(Debug, Clone, Copy)]
pub struct AlertField {
    /// The key, or several keys documented together (`` `pid`, `tid`, `comm` ``).
    pub field: &'static str,
    pub kind: &'static str,
    pub meaning: &'static str,
}

/// What the schema promises about change.
pub const STABILITY: &str = "One JSON object per line. Fields may be added in a later `/1` \
release; existing fields never change meaning.";

/// The fields of an `access` line.
pub const ACCESS_FIELDS: &[AlertField] = &[
    AlertField {
        field: "`schema`",
        kind: "string",
        meaning: r#"`"vigie.alert/1"`"#,
    },
    AlertField {
        field: "`type`",
        kind: "string",
        meaning: r#"`"access"` (a judged document read), `"enumeration"` or `"privileged_bulk"` (a user read documents of many owners, see [Incidents](../operators/incidents.md)), or `"coverage_gap"` (events were lost)"#,
    },
    AlertField {
        field: "`time`",
        kind: "string",
        meaning: "RFC 3339 UTC, microseconds: when the first byte of the document was read",
    },
    AlertField {
        field: "`verdict`",
        kind: "string",
        meaning: "`violation`, `unauthenticated`, `unattributed`, `unknown_owner` (also `allowed` with `--audit`)",
    },
    AlertField {
        field: "`user`",
        kind: "string or null",
        meaning: "who the request was authenticated as",
    },
    AlertField {
        field: "`identity_source`",
        kind: "string or null",
        meaning: "`trusted_header`, `basic`, `jwt`, `session` or `remote_user`",
    },
    AlertField {
        field: "`session`",
        kind: "string, when known",
        meaning: "handle of the credential that carried the identity, never the credential: `s:` + 16 hex digits for a session cookie (a hash of its keyed hash), `jti:` + the token's `jti` claim, or `t:` + 16 hex digits (a hash of a JWT's header and payload, without its signature). None for Basic, trusted headers and `REMOTE_USER`. `vigie session-handle` computes it from a portal's session id or token",
    },
    AlertField {
        field: "`client`",
        kind: "object, when known",
        meaning: "who was on the other end: `family` (`ipv4`, `ipv6`, `unix`), `ip`, `port` (the peer's), `source` (`peer`; `forwarded`, `x_forwarded_for`, `x_real_ip` when a [trusted proxy](../operators/configure.md) named the client; `fastcgi` for `REMOTE_ADDR`), `proxies` (trusted proxies passed, nearest the client first), `forwarded_ignored` (true when the request carried forwarded headers that were not believed: its peer is no trusted proxy, or the header had an entry that is not an address). IPv4-mapped IPv6 addresses are shown as IPv4",
    },
    AlertField {
        field: "`incident`",
        kind: "string, for violations",
        meaning: "incident id (`inc-` + 12 hex digits) shared by the alerts of one user and session handle (or, for forged tokens, one client address) within `incidents.window_s`",
    },
    AlertField {
        field: "`owner`",
        kind: "string or null",
        meaning: "owner of the document, from the [ownership backends](../operators/ownership.md)",
    },
    AlertField {
        field: "`owner_source`",
        kind: "string",
        meaning: "the backend that decided: `templates`, `mapping`, `sqlite`, `postgres` (absent when no backend knows the document)",
    },
    AlertField {
        field: "`shared_with`",
        kind: "array of strings",
        meaning: "principals the document is shared with (absent when none)",
    },
    AlertField {
        field: "`document`",
        kind: "string",
        meaning: r#"absolute, normalised path. Bytes that are not UTF-8 are written `\xNN` and a backslash as `\\`"#,
    },
    AlertField {
        field: "`pid`, `tid`, `comm`",
        kind: "number, number, string",
        meaning: "process, thread and thread name that read the document",
    },
    AlertField {
        field: "`request`",
        kind: "object or null",
        meaning: "the request: `id`, `method`, `target` (as on the wire), `identity` (`user`, `source`, and `roles` when the token carried privileged or other roles), `identity_problem` (`invalid_basic`, `invalid_user_name`, `jwt_alg_none`, `jwt_bad_signature`, `jwt_expired`, `jwt_malformed`, `jwt_no_user_claim`; when several credentials are unusable, a forged token is reported first, then an expired one), `head_truncated`, `status` (the response's status: an access is judged at the response's first write when its document was closed before it, so thread-per-request, prefork and pool servers always have it), `tid` (thread that read the head), `fd` (connection), `ts_ns`, `peer` (the connection's peer as the kernel had it at accept: `family` `ipv4`/`ipv6` with `ip` and `port`, or `unix`; absent for connections accepted before Vigie started), and `client` and `session` as above",
    },
    AlertField {
        field: "`evidence`",
        kind: "array of strings",
        meaning: "how the read was tied to the request, strongest first: `sendfile`, `flow`, `thread`, `goroutine`, `fingerprint`; empty when unattributed",
    },
    AlertField {
        field: "`bytes`",
        kind: "number",
        meaning: "bytes of the document read or sent within this request",
    },
    AlertField {
        field: "`rule`",
        kind: "string",
        meaning: "which rule decided (see [Attribution and verdicts](../design/attribution.md#the-judge))",
    },
    AlertField {
        field: "`ownership_error`",
        kind: "string",
        meaning: "why the ownership lookup failed (verdict `unknown_owner`): `timeout`, `unavailable`, `query_failed`, `bad_result`, `not_recorded` (replay); absent otherwise",
    },
    AlertField {
        field: "`access_id`",
        kind: "number",
        meaning: "sequence number of the finding within this run",
    },
    AlertField {
        field: "`refused_after_read`",
        kind: "bool, only when true",
        meaning: "the portal answered with an error status (4xx/5xx) after the document was read: the read happened (an IDOR probe the portal caught late, or one it only pretended to refuse); the document may not have been sent",
    },
];

/// The fields of the other line types.
pub const OTHER_LINES: &[&str] = &[
    "A `coverage_gap` line has `schema`, `type`, `time`, `reason` (`ringbuf_full`, `stash_full`, \
     `fd_map_full`) and `lost_events`.",
    "An `enumeration` or `privileged_bulk` line has `schema`, `type`, `time` (the last read \
     counted), `user`, `session` and `client` (of the read that crossed the threshold), `owners` \
     and `documents` (distinct, within the window), `threshold`, `window_s`, `first_access` and \
     `last_access` (RFC 3339), `access_ids` (the reads counted, oldest first: their access lines \
     carry the same ids) and `incident`.",
];

/// The keys a documented row stands for (`` `pid`, `tid`, `comm` `` gives three).
pub fn documented_keys() -> impl Iterator<Item = &'static str> {
    ACCESS_FIELDS
        .iter()
        .flat_map(|f| f.field.split(", "))
        .map(|k| k.trim_matches('`'))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The keys `AccessAlert` serializes, read from its definition (a field's name, or its
    /// `rename`): a field added there without a row here fails.
    fn serialized_keys() -> BTreeSet<String> {
        let src = include_str!("alerts.rs");
        let start = src
            .find("struct AccessAlert<'a> {")
            .expect("AccessAlert in alerts.rs");
        let body = &src[start..];
        let body = &body[..body.find("\n}").expect("end of AccessAlert")];
        let mut keys = BTreeSet::new();
        let mut rename = None;
        for line in body.lines().skip(1).map(str::trim) {
            if let Some(r) = line.strip_prefix("#[serde(rename = \"") {
                rename = r.split('"').next().map(str::to_owned);
            } else if let Some((name, _)) = line.split_once(':')
                && !line.starts_with("///")
                && !line.starts_with('#')
            {
                keys.insert(rename.take().unwrap_or_else(|| name.to_owned()));
            }
        }
        keys
    }

    #[test]
    fn every_access_key_is_documented_and_nothing_else() {
        let documented: BTreeSet<String> = super::documented_keys().map(str::to_owned).collect();
        let serialized = serialized_keys();
        assert!(serialized.len() > 15, "parsed too few keys: {serialized:?}");
        assert_eq!(
            documented, serialized,
            "sinks/schema.rs ACCESS_FIELDS vs AccessAlert"
        );
    }
}
