//! Pseudonyms for shipped trail records: the values of every `"user"` and `"owner"` member and
//! the entries of `"shared_with"` become `p:` + the first 16 bytes of HMAC-SHA-256(key, name),
//! hex. The rest of the line is left byte for byte, so a key holder who knows the candidate
//! names (the portal's user list) restores the original line exactly, and with it the chain and
//! the signatures: [`restore_line`].
//!
//! What it does not hide: document paths and request targets are shipped as they are, and they
//! often name people (`/users/alice/...`). And whoever holds the key can re-identify anyone by
//! hashing candidate names: the host that computes pseudonyms has the key too.
use std::collections::HashMap;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// Marks a pseudonymised value.
pub const PREFIX: &str = "p:";

/// The members whose string values are names.
const NAME_MEMBERS: [&[u8]; 2] = [b"\"user\":\"", b"\"owner\":\""];
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

/// Rewrites every name value of `line` with `f` (given the decoded name; None keeps it).
fn rewrite(line: &[u8], f: &dyn Fn(&str) -> Option<String>) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + 64);
    let mut i = 0;
    let replace = |out: &mut Vec<u8>, token: &[u8]| {
        let new = serde_json::from_slice::<String>(token)
            .ok()
            .and_then(|name| f(&name))
            .and_then(|n| serde_json::to_vec(&n).ok());
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

/// The line as shipped: names replaced by their pseudonyms.
pub fn pseudonymise_line(key: &PseudonymKey, line: &[u8]) -> Vec<u8> {
    rewrite(line, &|name| Some(key.pseudonym(name)))
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
pub fn restore_line(names: &HashMap<String, String>, line: &[u8]) -> Vec<u8> {
    rewrite(line, &|value| {
        value
            .starts_with(PREFIX)
            .then(|| names.get(value).cloned())
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
        let shipped = pseudonymise_line(&key, line);
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
            restore_line(&names, &pseudonymise_line(&key, &written)),
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
}
