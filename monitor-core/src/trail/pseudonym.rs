//! Pseudonyms for shipped trail records: the values of every `"user"`, `"owner"` and `"ip"`
//! member (the client's and the peer's addresses) and the entries of `"shared_with"` become
//! `p:` + the first 16 bytes of HMAC-SHA-256(key, value), hex: stable, so the off-host copy can
//! still be grouped per person. The rest of the line is left byte for byte.
//!
//! Two ways back to the original line (hence the chain and the signatures):
//! - with a [`Recipient`] (the data-protection officer's X25519 public key), each shipped line
//!   also carries, as its last member `"sealed"`, the original values sealed to that key (a
//!   libsodium sealed box): only the holder of the [`DpoKey`] opens them ([`unseal_line`]). The
//!   host never has that secret: it cannot open what it shipped;
//! - with the HMAC key and the candidate values (the portal's user list, the addresses):
//!   [`restore_line`]. Whoever holds the HMAC key, the host included, can re-identify that way.
//!
//! Records shipped before addresses were pseudonymised (their `ip` values are plain) restore
//! the same way: only `p:` values are replaced.
//!
//! What it does not hide: document paths and request targets are shipped as they are, and they
//! often name people (`/users/alice/...`).
use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// Marks a pseudonymised value.
pub const PREFIX: &str = "p:";

/// The members whose string values name a person: user names, and the client's address.
const NAME_MEMBERS: [&[u8]; 3] = [b"\"user\":\"", b"\"owner\":\"", b"\"ip\":\""];
/// The last member of a shipped line with sealed originals.
const SEALED_MEMBER: &[u8] = b",\"sealed\":\"";
const LIST_MEMBER: &[u8] = b"\"shared_with\":[";

/// The HMAC key (32 bytes). `Debug` never prints it.
#[derive(Clone)]
pub struct PseudonymKey([u8; 32]);

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(..)")
    }
}

impl PseudonymKey {
    /// 64 hex digits (surrounding white space ignored), as `openssl rand -hex 32` writes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut k = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut k)
            .map_err(|_| "a pseudonym key is 64 hex digits (openssl rand -hex 32)".to_string())?;
        Ok(Self(k))
    }

    pub fn pseudonym(&self, name: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(name.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!("{PREFIX}{}", hex::encode(&tag[..16]))
    }
}

/// The end (exclusive) of the JSON string token starting at `line[start]` (a `"`).
fn string_end(line: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < line.len() {
        match line[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Given a name value (decoded, and its JSON token as written): its new token, or None.
type Replacer<'a> = dyn FnMut(&str, &[u8]) -> Option<Vec<u8>> + 'a;

/// Rewrites every name value of `line` with `f` (given the decoded name and its JSON token as
/// written; returns the new token, None keeps it).
fn rewrite(line: &[u8], f: &mut Replacer<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + 64);
    let mut i = 0;
    let mut replace = |out: &mut Vec<u8>, token: &[u8]| {
        let new = serde_json::from_slice::<String>(token)
            .ok()
            .and_then(|name| f(&name, token));
        out.extend_from_slice(new.as_deref().unwrap_or(token));
    };
    while i < line.len() {
        let rest = &line[i..];
        if let Some(m) = NAME_MEMBERS.iter().find(|m| rest.starts_with(m)) {
            let start = i + m.len() - 1;
            let Some(end) = string_end(line, start) else {
                break;
            };
            out.extend_from_slice(&line[i..start]);
            replace(&mut out, &line[start..end]);
            i = end;
        } else if rest.starts_with(LIST_MEMBER) {
            out.extend_from_slice(LIST_MEMBER);
            i += LIST_MEMBER.len();
            while i < line.len() && line[i] == b'"' {
                let Some(end) = string_end(line, i) else {
                    break;
                };
                replace(&mut out, &line[i..end]);
                i = end;
                if line.get(i) == Some(&b',') {
                    out.push(b',');
                    i += 1;
                }
            }
        } else {
            out.push(line[i]);
            i += 1;
        }
    }
    out.extend_from_slice(&line[i.min(line.len())..]);
    out
}

/// A JSON string token.
fn token(text: &str) -> Vec<u8> {
    serde_json::to_vec(text).expect("a string serialises")
}

/// The line as shipped: names and addresses replaced by their pseudonyms and, with a
/// `recipient`, the original tokens sealed to it in a last member `"sealed"`.
pub fn pseudonymise_line(
    key: &PseudonymKey,
    recipient: Option<&Recipient>,
    line: &[u8],
) -> Vec<u8> {
    // Pseudonym -> the original token, byte for byte (escapes as written).
    let mut originals: BTreeMap<String, String> = BTreeMap::new();
    let mut out = rewrite(line, &mut |name, original| {
        let p = key.pseudonym(name);
        if recipient.is_some() {
            originals.insert(p.clone(), String::from_utf8_lossy(original).into_owned());
        }
        Some(token(&p))
    });
    if let Some(r) = recipient
        && !originals.is_empty()
        && out.last() == Some(&b'}')
    {
        let plain = serde_json::to_vec(&originals).expect("a map of strings serialises");
        out.pop();
        out.extend_from_slice(SEALED_MEMBER);
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(r.seal(&plain))
                .as_bytes(),
        );
        out.extend_from_slice(b"\"}");
    }
    out
}

/// What the shippers apply to each record: the HMAC key, and the DPO's public key when the
/// originals are sealed to it.
#[derive(Debug, Clone)]
pub struct Pseudonymiser {
    pub key: PseudonymKey,
    pub recipient: Option<Recipient>,
}

impl Pseudonymiser {
    pub fn line(&self, line: &[u8]) -> Vec<u8> {
        pseudonymise_line(&self.key, self.recipient.as_ref(), line)
    }
}

/// The DPO's X25519 public key: shipped names are sealed to it.
#[derive(Clone)]
pub struct Recipient(crypto_box::PublicKey);

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipient({})", hex::encode(self.0.as_bytes()))
    }
}

impl Recipient {
    /// 64 hex digits (`vigie dpo-keygen` writes them).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut k = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut k).map_err(|_| {
            "a DPO public key is 64 hex digits (the .pub file of vigie dpo-keygen)".to_string()
        })?;
        Ok(Self(crypto_box::PublicKey::from_bytes(k)))
    }

    pub fn to_file_text(&self) -> String {
        format!("{}\n", hex::encode(self.0.as_bytes()))
    }

    fn seal(&self, plain: &[u8]) -> Vec<u8> {
        self.0
            .seal(&mut crypto_box::aead::OsRng, plain)
            .expect("sealing to an X25519 key cannot fail")
    }
}

/// The DPO's X25519 secret key: opens the sealed names. Kept off the hosts. `Debug` never
/// prints it.
pub struct DpoKey(crypto_box::SecretKey);

impl std::fmt::Debug for DpoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DpoKey(..)")
    }
}

impl DpoKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(crypto_box::SecretKey::from_bytes(bytes))
    }

    /// 64 hex digits.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut k = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut k)
            .map_err(|_| "a DPO key is 64 hex digits (vigie dpo-keygen)".to_string())?;
        Ok(Self::from_bytes(k))
    }

    pub fn to_file_text(&self) -> String {
        format!("{}\n", hex::encode(self.0.to_bytes()))
    }

    pub fn recipient(&self) -> Recipient {
        Recipient(self.0.public_key())
    }
}

/// Where a shipped line's `"sealed"` member starts, and its base64 text.
fn sealed_at(line: &[u8]) -> Option<(usize, &[u8])> {
    let at = memchr::memmem::rfind(line, SEALED_MEMBER)?;
    let b64 = line[at + SEALED_MEMBER.len()..].strip_suffix(b"\"}")?;
    Some((at, b64))
}

/// Why a shipped line's sealed names could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsealError {
    #[error("its sealed names are not base64")]
    Encoding,
    #[error("its sealed names do not open with this DPO key (sealed to another key, or altered)")]
    WrongKey,
    #[error("its sealed names are not a map of pseudonyms")]
    Content,
}

/// The original line of a shipped one with sealed names: the `"sealed"` member removed and
/// every pseudonym it holds replaced by the original token. A line without it is returned as
/// it is (shipped without a recipient, or not pseudonymised).
pub fn unseal_line(key: &DpoKey, line: &[u8]) -> Result<Vec<u8>, UnsealError> {
    let Some((at, b64)) = sealed_at(line) else {
        return Ok(line.to_vec());
    };
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| UnsealError::Encoding)?;
    let plain = key.0.unseal(&sealed).map_err(|_| UnsealError::WrongKey)?;
    let originals: HashMap<String, String> =
        serde_json::from_slice(&plain).map_err(|_| UnsealError::Content)?;
    let mut body = line[..at].to_vec();
    body.push(b'}');
    Ok(rewrite(&body, &mut |value, _| {
        originals.get(value).map(|t| t.as_bytes().to_vec())
    }))
}

/// Pseudonym -> name, for the names a key holder knows.
pub fn dictionary<'a>(
    key: &PseudonymKey,
    names: impl IntoIterator<Item = &'a str>,
) -> HashMap<String, String> {
    names
        .into_iter()
        .map(|n| (key.pseudonym(n), n.to_string()))
        .collect()
}

/// The original line, where every pseudonym is in `names` (others are left as they are).
/// A line with sealed names loses its seal (a restored line is the original).
pub fn restore_line(names: &HashMap<String, String>, line: &[u8]) -> Vec<u8> {
    let unsealed;
    let line = match sealed_at(line) {
        Some((at, _)) => {
            unsealed = [&line[..at], b"}"].concat();
            &unsealed[..]
        }
        None => line,
    };
    rewrite(line, &mut |value, _| {
        value
            .starts_with(PREFIX)
            .then(|| names.get(value).map(|n| token(n)))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_pseudonyms_and_come_back_byte_for_byte() {
        let key = PseudonymKey::parse(&"ab".repeat(32)).unwrap();
        let line = br#"{"seq":7,"prev":"00","type":"access","verdict":"violation","user":"al\"ice","owner":"bob","shared_with":["carol","d\u00e9"],"document":"/users/bob/x","request":{"identity":{"user":"al\"ice","roles":[]}},"x":"\"user\":\"no\""}"#;
        let shipped = pseudonymise_line(&key, None, line);
        let text = String::from_utf8(shipped.clone()).unwrap();
        for name in ["al\\\"ice", "\"bob\"", "carol", "d\\u00e9"] {
            assert!(!text.contains(name), "{name} in {text}");
        }
        assert!(text.contains(&key.pseudonym("bob")), "{text}");
        assert!(text.contains(&key.pseudonym("dé")), "{text}");
        // Members that only look like names inside another string stay.
        assert!(text.contains(r#""x":"\"user\":\"no\"""#), "{text}");
        let v: serde_json::Value = serde_json::from_slice(&shipped).unwrap();
        assert_eq!(v["request"]["identity"]["user"], key.pseudonym("al\"ice"));
        // The key holder with the names gets the original bytes back, hence the chain.
        let names = dictionary(&key, ["al\"ice", "bob", "carol", "dé"]);
        let restored = restore_line(&names, &shipped);
        // serde_json writes é as UTF-8, the original had \u00e9: compare as JSON there.
        let a: serde_json::Value = serde_json::from_slice(&restored).unwrap();
        let b: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(a, b);
        // Lines as Vigie writes them (serde_json) come back exactly.
        let written = serde_json::to_vec(&b).unwrap();
        assert_eq!(
            restore_line(&names, &pseudonymise_line(&key, None, &written)),
            written
        );
        // Without a name, its pseudonym stays; another key's pseudonyms differ.
        let partial = restore_line(&dictionary(&key, ["bob"]), &shipped);
        assert!(
            String::from_utf8(partial)
                .unwrap()
                .contains(&key.pseudonym("carol"))
        );
        let other = PseudonymKey::parse(&"cd".repeat(32)).unwrap();
        assert_ne!(other.pseudonym("bob"), key.pseudonym("bob"));
        assert!(PseudonymKey::parse("zz").is_err());
        assert!(!format!("{key:?}").contains("ab"));
    }

    #[test]
    fn addresses_are_pseudonymised_and_sealed_names_open_only_with_the_dpo_key() {
        let key = PseudonymKey::parse(&"ab".repeat(32)).unwrap();
        let dpo = DpoKey::from_bytes([7; 32]);
        let recipient = dpo.recipient();
        let line = br#"{"seq":3,"prev":"00","type":"access","user":"b\u00f6b","owner":"alice","client":{"family":"ipv4","ip":"203.0.113.7","port":51000,"source":"peer"},"shared_with":["carol"],"sig":"ff"}"#;
        let shipped = pseudonymise_line(&key, Some(&recipient), line);
        let text = String::from_utf8(shipped.clone()).unwrap();
        for plain in ["203.0.113.7", "alice", "carol", "b\\u00f6b"] {
            assert!(!text.contains(plain), "{plain} in {text}");
        }
        assert!(text.contains(&key.pseudonym("203.0.113.7")), "{text}");
        // Still JSON, grouping by the same pseudonyms as without a recipient.
        let v: serde_json::Value = serde_json::from_slice(&shipped).unwrap();
        assert_eq!(v["owner"], key.pseudonym("alice"));
        assert!(v["sealed"].is_string());
        // The DPO gets the exact original bytes back (the escape as written included).
        assert_eq!(unseal_line(&dpo, &shipped).unwrap(), line.to_vec());
        // Another key cannot open it; an altered seal fails; a line without one is unchanged.
        let other = DpoKey::from_bytes([8; 32]);
        assert_eq!(unseal_line(&other, &shipped), Err(UnsealError::WrongKey));
        let mut altered = shipped.clone();
        let n = altered.len();
        altered[n - 5] = if altered[n - 5] == b'A' { b'B' } else { b'A' };
        assert!(unseal_line(&dpo, &altered).is_err());
        assert_eq!(unseal_line(&dpo, line).unwrap(), line.to_vec());
        // Two shippings of one line seal differently (no equality test on the seal).
        assert_ne!(pseudonymise_line(&key, Some(&recipient), line), shipped);
        // The hash-only way back needs the address among the candidates.
        let all = dictionary(&key, ["b\u{f6}b", "alice", "carol", "203.0.113.7"]);
        let v: serde_json::Value = serde_json::from_slice(&restore_line(&all, &shipped)).unwrap();
        assert_eq!(
            v,
            serde_json::from_slice::<serde_json::Value>(line).unwrap()
        );
        let names = dictionary(&key, ["b\u{f6}b", "alice", "carol"]);
        let partial = restore_line(&names, &pseudonymise_line(&key, None, line));
        assert!(
            String::from_utf8(partial)
                .unwrap()
                .contains(&key.pseudonym("203.0.113.7"))
        );
        assert!(!format!("{dpo:?}").contains("0707"));
        assert_eq!(
            Recipient::parse(&recipient.to_file_text())
                .unwrap()
                .to_file_text(),
            recipient.to_file_text()
        );
        assert_eq!(
            DpoKey::parse(&dpo.to_file_text()).unwrap().to_file_text(),
            dpo.to_file_text()
        );
    }
}
