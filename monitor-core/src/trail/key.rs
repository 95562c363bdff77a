//! Checkpoint keys. A key file holds the 32-byte Ed25519 secret as 64 hex digits on one line;
//! its public half (`.pub`) the 32-byte verifying key the same way. The key id written in the
//! trail is the first 8 bytes of the SHA-256 of the public key, in hex: it names the key
//! without revealing anything. The secret never appears in `Debug` output.
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use super::TrailError;

/// The signing half, held by the running Vigie.
pub struct TrailKey {
    signing: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for TrailKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrailKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl TrailKey {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        let key_id = key_id(&signing.verifying_key());
        Self { signing, key_id }
    }

    /// Parses a key file's content.
    pub fn parse(text: &str) -> Result<Self, TrailError> {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| {
            TrailError::Key("a key file holds 64 hex digits (a 32-byte Ed25519 secret)".into())
        })?;
        Ok(Self::from_seed(seed))
    }

    /// The key file content (for `vigie trail-keygen`).
    pub fn to_file_text(&self) -> String {
        format!("{}\n", hex::encode(self.signing.to_bytes()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.signing.verifying_key(),
            key_id: self.key_id.clone(),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

/// The verifying half: all `verify` and `report` need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    key_id: String,
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<Self, TrailError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| {
            TrailError::Key("a public key file holds 64 hex digits (32 bytes)".into())
        })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| TrailError::Key("not a valid Ed25519 public key".into()))?;
        Ok(Self {
            key_id: key_id(&key),
            key,
        })
    }

    pub fn to_file_text(&self) -> String {
        format!("{}\n", hex::encode(self.key.to_bytes()))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Strict verification (no malleable signatures).
    pub fn verify(&self, message: &[u8], sig: &[u8; 64]) -> bool {
        self.key
            .verify_strict(message, &Signature::from_bytes(sig))
            .is_ok()
    }
}

fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_file_round_trip() {
        let key = TrailKey::from_seed([7; 32]);
        let again = TrailKey::parse(&key.to_file_text()).unwrap();
        assert_eq!(again.key_id(), key.key_id());
        let public = PublicKey::parse(&key.public().to_file_text()).unwrap();
        let sig = key.sign(b"hello");
        assert!(public.verify(b"hello", &sig));
        assert!(!public.verify(b"hellp", &sig));
        let other = TrailKey::from_seed([8; 32]).public();
        assert!(!other.verify(b"hello", &sig));
        assert_ne!(other.key_id(), key.key_id());
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = TrailKey::from_seed([7; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains(&hex::encode([7u8; 32])), "{shown}");
        assert!(!shown.contains("07070707"), "{shown}");
    }

    #[test]
    fn bad_key_files_are_refused() {
        assert!(TrailKey::parse("nothex").is_err());
        assert!(TrailKey::parse(&"ab".repeat(31)).is_err());
        assert!(PublicKey::parse(&"zz".repeat(32)).is_err());
    }
}
