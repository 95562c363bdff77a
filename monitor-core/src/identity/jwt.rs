//! `Authorization: Bearer` JSON Web Tokens (JWS compact form): the user and roles from configured
//! claims, the signature checked with the portal's key when one is configured.
//!
//! Nothing of the token leaves this module but the user name and the roles. Hostile tokens have
//! a defined outcome and never panic: the size is bounded before any decoding, the alphabet is
//! checked before splitting, and JSON nesting is bounded by `serde_json`'s recursion limit.
//!
//! "Now" is an argument: the correlator passes the wall time of the request, derived from the
//! event stream, so a replay judges expiry exactly as the live run did.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::{IdentityProblem, MAX_USER_NAME_LEN, valid_user_name};
use crate::http::RequestHead;

/// Longest token examined, in bytes. Longer ones are [`IdentityProblem::JwtMalformed`] without
/// any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Most roles kept from one token; the rest are ignored.
pub const MAX_ROLES: usize = 64;

/// Longest leeway accepted in the configuration: one day.
pub const MAX_LEEWAY_SECONDS: u64 = 86_400;

/// Largest key file read, in bytes: a PEM public key or a secret is far smaller.
pub const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// Reads a key file for [`JwtConfig::load_key_with`]: the bytes, or why not.
pub type KeyReader<'a> = dyn Fn(&Path) -> Result<Vec<u8>, String> + 'a;

/// URL-safe alphabet, lenient about padding (a few issuers pad).
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `[identity.jwt]`: how to read bearer tokens.
#[derive(Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Claim naming the user: a top-level claim name, or a JSON pointer such as
    /// `/user/login` when it starts with `/`.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Claim holding the roles (same syntax): a JSON array of strings, or one string of roles
    /// separated by spaces or commas.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// HS256: file holding the portal's shared secret (raw bytes; one trailing newline is
    /// ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs256_secret_file: Option<PathBuf>,
    /// RS256: the portal's RSA public key (PEM, `PUBLIC KEY` or `RSA PUBLIC KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rs256_public_key_file: Option<PathBuf>,
    /// ES256: the portal's P-256 public key (PEM, `PUBLIC KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub es256_public_key_file: Option<PathBuf>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_seconds")]
    pub leeway_seconds: u64,
    /// A token without `exp` is refused (as [`IdentityProblem::JwtExpired`]).
    #[serde(default)]
    pub require_exp: bool,
    /// The key read from the configured file by [`JwtConfig::load_key_with`]. Never serialized: a
    /// configuration printed or recorded in a trace carries the file's path, not the key.
    #[serde(skip)]
    key: Option<JwtKey>,
}

fn default_user_claim() -> String {
    "sub".to_owned()
}

fn default_roles_claim() -> String {
    "roles".to_owned()
}

fn default_leeway_seconds() -> u64 {
    60
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            user_claim: default_user_claim(),
            roles_claim: default_roles_claim(),
            hs256_secret_file: None,
            rs256_public_key_file: None,
            es256_public_key_file: None,
            leeway_seconds: default_leeway_seconds(),
            require_exp: false,
            key: None,
        }
    }
}

/// The settings, not the key material: two configurations naming the same key file are equal.
impl PartialEq for JwtConfig {
    fn eq(&self, other: &Self) -> bool {
        self.user_claim == other.user_claim
            && self.roles_claim == other.roles_claim
            && self.hs256_secret_file == other.hs256_secret_file
            && self.rs256_public_key_file == other.rs256_public_key_file
            && self.es256_public_key_file == other.es256_public_key_file
            && self.leeway_seconds == other.leeway_seconds
            && self.require_exp == other.require_exp
    }
}

impl Eq for JwtConfig {}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("user_claim", &self.user_claim)
            .field("roles_claim", &self.roles_claim)
            .field("hs256_secret_file", &self.hs256_secret_file)
            .field("rs256_public_key_file", &self.rs256_public_key_file)
            .field("es256_public_key_file", &self.es256_public_key_file)
            .field("leeway_seconds", &self.leeway_seconds)
            .field("require_exp", &self.require_exp)
            .field("key_loaded", &self.key.is_some())
            .finish()
    }
}

/// A verification key and the one algorithm it is used with.
#[derive(Clone)]
struct JwtKey {
    alg: Algorithm,
    key: DecodingKey,
}

/// A configuration error: the field (under `identity.jwt.`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfigError {
    pub field: &'static str,
    pub reason: String,
}

fn config_error(field: &'static str, reason: impl Into<String>) -> JwtConfigError {
    JwtConfigError {
        field,
        reason: reason.into(),
    }
}

impl JwtConfig {
    /// Checks the settings and reads the configured key file, if any, with `read` (the caller's
    /// I/O: at most [`MAX_KEY_FILE_LEN`] bytes, or an error that never quotes the content).
    /// Called at configuration load (again after command-line overrides: reading twice is
    /// harmless).
    pub fn load_key_with(&mut self, read: &KeyReader<'_>) -> Result<(), JwtConfigError> {
        for (field, claim) in [
            ("user_claim", &self.user_claim),
            ("roles_claim", &self.roles_claim),
        ] {
            if claim.is_empty() || claim == "/" || claim.chars().any(char::is_control) {
                return Err(config_error(
                    field,
                    format!("{claim:?} is not a claim name or a JSON pointer"),
                ));
            }
        }
        if self.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(config_error(
                "leeway_seconds",
                format!("must be at most {MAX_LEEWAY_SECONDS}"),
            ));
        }
        let configured: Vec<(&'static str, &PathBuf, Algorithm)> = [
            (
                "hs256_secret_file",
                self.hs256_secret_file.as_ref(),
                Algorithm::HS256,
            ),
            (
                "rs256_public_key_file",
                self.rs256_public_key_file.as_ref(),
                Algorithm::RS256,
            ),
            (
                "es256_public_key_file",
                self.es256_public_key_file.as_ref(),
                Algorithm::ES256,
            ),
        ]
        .into_iter()
        .filter_map(|(field, path, alg)| path.map(|p| (field, p, alg)))
        .collect();
        self.key = match configured.as_slice() {
            [] => None,
            [(field, path, alg)] => Some(read_key(field, path, *alg, read)?),
            [_, (field, ..), ..] => {
                return Err(config_error(
                    field,
                    "only one of hs256_secret_file, rs256_public_key_file and \
                     es256_public_key_file may be set",
                ));
            }
        };
        Ok(())
    }

    /// Whether a key file is configured (signatures are verified).
    #[must_use]
    pub fn verifies(&self) -> bool {
        self.hs256_secret_file.is_some()
            || self.rs256_public_key_file.is_some()
            || self.es256_public_key_file.is_some()
    }
}

/// Reads and checks one key file. Errors never quote the file's content.
fn read_key(
    field: &'static str,
    path: &Path,
    alg: Algorithm,
    read: &KeyReader<'_>,
) -> Result<JwtKey, JwtConfigError> {
    if !path.is_absolute() {
        return Err(config_error(
            field,
            format!("{} is not an absolute path", path.display()),
        ));
    }
    let bytes = read(path).map_err(|e| config_error(field, e))?;
    let key = match alg {
        Algorithm::HS256 => {
            let secret = bytes
                .strip_suffix(b"\r\n")
                .or_else(|| bytes.strip_suffix(b"\n"))
                .unwrap_or(&bytes);
            if secret.is_empty() {
                return Err(config_error(
                    field,
                    format!("{} holds an empty secret", path.display()),
                ));
            }
            DecodingKey::from_secret(secret)
        }
        Algorithm::RS256 => {
            let key = DecodingKey::from_rsa_pem(&bytes).map_err(|e| {
                config_error(
                    field,
                    format!("{} is not a PEM RSA public key ({e})", path.display()),
                )
            })?;
            // The PEM layer only unwraps the DER: parse the key now rather than refuse every
            // token later.
            let parse = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER
                .key_utils
                .rsa_pub_components_from_public_key;
            let der = match key.kind() {
                jsonwebtoken::DecodingKeyKind::SecretOrDer(der) => der.as_slice(),
                jsonwebtoken::DecodingKeyKind::RsaModulusExponent { .. } => &[],
            };
            parse(der).map_err(|e| {
                config_error(
                    field,
                    format!("{} is not a valid RSA public key ({e})", path.display()),
                )
            })?;
            key
        }
        _ => {
            let key = DecodingKey::from_ec_pem(&bytes).map_err(|e| {
                config_error(
                    field,
                    format!("{} is not a PEM EC public key ({e})", path.display()),
                )
            })?;
            // Building a verifier parses the point: a key on another curve fails here.
            let probe = jsonwebtoken::crypto::verify("AA", b"probe", &key, alg);
            if probe.is_err() {
                return Err(config_error(
                    field,
                    format!("{} is not a P-256 public key", path.display()),
                ));
            }
            key
        }
    };
    Ok(JwtKey { alg, key })
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Principal {
    pub user: String,
    pub roles: Vec<String>,
}

/// The user of the `Authorization: Bearer` token: `None` without a bearer token.
///
/// `now_unix` is the wall time of the request in seconds; with `None` (no clock known), `exp`
/// and `nbf` are not checked.
pub(super) fn bearer_user(
    head: &RequestHead,
    cfg: &JwtConfig,
    now_unix: Option<i64>,
) -> Option<Result<Principal, IdentityProblem>> {
    let mut tokens = head.header_values("authorization").filter_map(bearer_token);
    let first = tokens.next()?;
    if tokens.any(|other| other != first) {
        // Which one the portal honours is unknown.
        return Some(Err(IdentityProblem::JwtMalformed));
    }
    Some(check_token(first, cfg, now_unix))
}

/// The bearer token of a request and its `jti` claim, for its session handle
/// ([`super::handle`]): (header and payload as the trace holds them, `jti`). The signature is
/// left out: it is the part that makes the token a credential, and the redactor replaced it.
pub(super) fn token_for_handle(head: &RequestHead) -> Option<(&[u8], Option<String>)> {
    let token = head.header_values("authorization").find_map(bearer_token)?;
    let cut = token.iter().rposition(|&b| b == b'.')?;
    let signed = &token[..cut];
    let payload = signed.split(|&b| b == b'.').nth(1)?;
    let jti = decode_object(payload).and_then(|claims| match claims.get("jti")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    Some((signed, jti))
}

/// The token of an `Authorization` value whose scheme is `Bearer` (case-insensitive), possibly
/// empty; `None` for other schemes.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    crate::http::credential_token(value, b"bearer")
}

/// Checks one compact JWS, cheapest checks first; the signature before any claim is trusted.
pub(super) fn check_token(
    token: &[u8],
    cfg: &JwtConfig,
    now_unix: Option<i64>,
) -> Result<Principal, IdentityProblem> {
    use IdentityProblem::{JwtAlgNone, JwtBadSignature, JwtMalformed};
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(JwtMalformed);
    }
    // Only the base64url alphabet, padding and dots: also makes the token ASCII.
    if !token
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'=' | b'*'))
    {
        return Err(JwtMalformed);
    }
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        // JWE (five parts) and anything else that is not a compact JWS.
        return Err(JwtMalformed);
    };
    let header_json = decode_object(header).ok_or(JwtMalformed)?;
    let alg = header_json
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtMalformed)?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(JwtAlgNone);
    }
    if signature.is_empty() {
        // A stripped signature is a forgery whatever the key.
        return Err(JwtBadSignature);
    }
    // The signature was checked at capture time (live, with the key) and replaced by its mark:
    // see `mark_token`. Only an exact mark counts; anything else fails closed.
    match (read_mark(signature), cfg.verifies()) {
        (Some(SignatureMark::Verified), true) => {}
        (_, true) | (Some(SignatureMark::Bad), false) => return Err(JwtBadSignature),
        (Some(_), false) => {}
        (None, false) => {
            if B64URL.decode(signature).is_err() {
                return Err(JwtMalformed);
            }
        }
    }
    let claims = decode_object(payload).ok_or(JwtMalformed)?;
    check_time(&claims, cfg, now_unix)?;
    let user = claim(&claims, &cfg.user_claim)
        .and_then(Value::as_str)
        .filter(|u| valid_user_name(u))
        .ok_or(IdentityProblem::JwtNoUserClaim)?
        .to_owned();
    let roles = claim(&claims, &cfg.roles_claim).map_or_else(Vec::new, roles_of);
    Ok(Principal { user, roles })
}

/// In an `Authorization` value with the `Bearer` scheme (read as [`crate::http::credential_parts`]),
/// marks the token in place (see [`mark_token`]); other values are left alone. Returns whether
/// it was a bearer value.
pub fn mark_bearer_value(value: &mut [u8], cfg: &JwtConfig) -> bool {
    let (scheme, token) = crate::http::credential_parts(value);
    if !value[scheme].eq_ignore_ascii_case(b"bearer") {
        return false;
    }
    if !token.is_empty() {
        mark_token(&mut value[token], cfg);
    }
    true
}

/// What the capture-time check found, written over the signature by [`mark_token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureMark {
    /// The signature verifies with the configured key, for the key's algorithm.
    Verified,
    /// It does not (or the token cannot be checked).
    Bad,
    /// No key is configured: nothing was checked.
    Unverified,
}

impl SignatureMark {
    fn byte(self) -> u8 {
        match self {
            Self::Verified => b'V',
            Self::Bad => b'X',
            Self::Unverified => b'U',
        }
    }
}

/// The mark of a signature rewritten by [`mark_token`]: its mark byte, then only `*` (`*` is not
/// base64url, so no real signature looks like this).
pub fn read_mark(signature: &[u8]) -> Option<SignatureMark> {
    let (&first, rest) = signature.split_first()?;
    if rest.is_empty() || !rest.iter().all(|&b| b == b'*') {
        return None;
    }
    match first {
        b'V' => Some(SignatureMark::Verified),
        b'X' => Some(SignatureMark::Bad),
        b'U' => Some(SignatureMark::Unverified),
        _ => None,
    }
}

/// Capture time (live only, with the key loaded): checks the token's signature and overwrites
/// it, same length, with its mark. The correlator, traces and replay then never hold a usable
/// token nor need the key. A token that is not a three-part JWS is masked with `*` entirely.
pub fn mark_token(token: &mut [u8], cfg: &JwtConfig) {
    let dots: Vec<usize> = token
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'.')
        .map(|(i, _)| i)
        .collect();
    let [_, second] = dots[..] else {
        token.fill(b'*');
        return;
    };
    let signature = &mut token[second + 1..];
    if signature.is_empty() {
        // Nothing to hide (`alg: none`, stripped signatures): the correlator judges it as is.
        return;
    }
    if signature.len() < 2 || B64URL.decode(&*signature).is_err() {
        // Not a signature at all, or too short to carry a mark: masked without a mark, so it
        // never verifies.
        signature.fill(b'*');
        return;
    }
    let mark = signature_mark(token, second, cfg);
    let signature = &mut token[second + 1..];
    signature.fill(b'*');
    signature[0] = mark.byte();
}

fn signature_mark(token: &[u8], second_dot: usize, cfg: &JwtConfig) -> SignatureMark {
    let Some(key) = &cfg.key else {
        return SignatureMark::Unverified;
    };
    let (message, signature) = (&token[..second_dot], &token[second_dot + 1..]);
    let header = message.split(|&b| b == b'.').next().unwrap_or_default();
    let alg =
        decode_object(header).and_then(|h| h.get("alg").and_then(Value::as_str).map(str::to_owned));
    // Only the configured algorithm: anything else (HS256 signed with the RSA public key, a
    // downgrade) cannot have been issued with the portal's key.
    if alg.as_deref() != Some(algorithm_name(key.alg)) || token.len() > MAX_TOKEN_LEN {
        return SignatureMark::Bad;
    }
    let Ok(signature) = std::str::from_utf8(signature) else {
        return SignatureMark::Bad;
    };
    match jsonwebtoken::crypto::verify(signature, message, &key.key, key.alg) {
        Ok(true) => SignatureMark::Verified,
        Ok(false) | Err(_) => SignatureMark::Bad,
    }
}

fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "",
    }
}

/// base64url-decoded JSON object, `None` for anything else (including nesting deeper than
/// `serde_json`'s recursion limit).
fn decode_object(part: &[u8]) -> Option<Value> {
    let bytes = B64URL.decode(part).ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(Value::is_object)
}

/// A claim by name, or by JSON pointer (RFC 6901) when `name` starts with `/`.
fn claim<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if name.starts_with('/') {
        claims.pointer(name)
    } else {
        claims.get(name)
    }
}

/// `exp`, `nbf` and `require_exp`, against `now_unix` with the configured leeway.
fn check_time(
    claims: &Value,
    cfg: &JwtConfig,
    now_unix: Option<i64>,
) -> Result<(), IdentityProblem> {
    let number = |name: &str| -> Result<Option<f64>, IdentityProblem> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or(IdentityProblem::JwtMalformed),
        }
    };
    let exp = number("exp")?;
    let nbf = number("nbf")?;
    if exp.is_none() && cfg.require_exp {
        return Err(IdentityProblem::JwtExpired);
    }
    let Some(now) = now_unix else {
        return Ok(());
    };
    // f64 holds every plausible time exactly; the comparisons saturate on absurd values.
    let now = now as f64;
    let leeway = cfg.leeway_seconds as f64;
    if exp.is_some_and(|exp| now >= exp + leeway) || nbf.is_some_and(|nbf| now + leeway < nbf) {
        return Err(IdentityProblem::JwtExpired);
    }
    Ok(())
}

/// Roles from a JSON array of strings or a string separated by spaces or commas. Values that
/// are not valid names are ignored; at most [`MAX_ROLES`] are kept, without duplicates.
fn roles_of(value: &Value) -> Vec<String> {
    let candidates: Vec<&str> = match value {
        Value::String(s) => s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|r| !r.is_empty())
            .collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let mut roles: Vec<String> = Vec::new();
    for role in candidates {
        if roles.len() == MAX_ROLES {
            break;
        }
        if role.len() <= MAX_USER_NAME_LEN
            && valid_user_name(role)
            && !roles.iter().any(|r| r == role)
        {
            roles.push(role.to_owned());
        }
    }
    roles
}

/// Reads a key file the way the `vigie` crate does, for this crate's tests.
#[cfg(test)]
pub(crate) fn read_for_tests(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests;
