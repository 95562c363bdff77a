//! The writer's side of the chain: numbers each record, links it to the previous line and
//! signs the records that must be signed. Returns line bytes; writing them is the caller's.
use serde::Serialize;

use super::{
    TrailError,
    key::TrailKey,
    record::{Digest, GENESIS, SIG_MARK, digest},
};

/// Where the chain stands: the next sequence number and the digest of the last line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub next_seq: u64,
    pub prev: Digest,
}

impl Head {
    pub const GENESIS: Head = Head {
        next_seq: 0,
        prev: GENESIS,
    };
}

#[derive(Debug)]
pub struct Chain {
    head: Head,
    /// Sequence number of the last signed record.
    last_signed: Option<u64>,
}

impl Chain {
    pub fn new(head: Head) -> Self {
        Self {
            head,
            last_signed: None,
        }
    }

    pub fn head(&self) -> Head {
        self.head
    }

    /// Records written since the last signature (or since this chain was opened).
    pub fn unsigned(&self) -> u64 {
        match self.last_signed {
            Some(s) => self.head.next_seq - s - 1,
            None => self.head.next_seq,
        }
    }

    /// One unsigned record, as a line with its newline.
    pub fn line(&mut self, kind: &str, body: &impl Serialize) -> Result<Vec<u8>, TrailError> {
        let mut line = self.prefix(kind, body)?;
        line.push(b'}');
        Ok(self.link(line))
    }

    /// One signed record: the signature covers every byte before `,"sig"`.
    pub fn signed_line(
        &mut self,
        kind: &str,
        body: &impl Serialize,
        key: &TrailKey,
    ) -> Result<Vec<u8>, TrailError> {
        let mut line = self.prefix(kind, body)?;
        let sig = key.sign(&line);
        line.extend_from_slice(SIG_MARK);
        line.extend_from_slice(hex::encode(sig).as_bytes());
        line.extend_from_slice(b"\"}");
        self.last_signed = Some(self.head.next_seq);
        Ok(self.link(line))
    }

    /// `{"seq":N,"prev":"..","type":"kind"` and the body's members, without the closing brace.
    fn prefix(&self, kind: &str, body: &impl Serialize) -> Result<Vec<u8>, TrailError> {
        let body = serde_json::to_vec(body)?;
        let members = body
            .strip_prefix(b"{")
            .and_then(|b| b.strip_suffix(b"}"))
            .ok_or(TrailError::BodyNotObject)?;
        let mut line = Vec::with_capacity(body.len() + 120);
        line.extend_from_slice(b"{\"seq\":");
        line.extend_from_slice(self.head.next_seq.to_string().as_bytes());
        line.extend_from_slice(b",\"prev\":\"");
        line.extend_from_slice(hex::encode(self.head.prev).as_bytes());
        line.extend_from_slice(b"\",\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.push(b'"');
        if !members.is_empty() {
            line.push(b',');
            line.extend_from_slice(members);
        }
        Ok(line)
    }

    fn link(&mut self, mut line: Vec<u8>) -> Vec<u8> {
        self.head = Head {
            next_seq: self.head.next_seq + 1,
            prev: digest(&line),
        };
        line.push(b'\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trail::record::{parse_link, split_signature};

    #[test]
    fn lines_link_and_sign() {
        let key = TrailKey::from_seed([1; 32]);
        let mut chain = Chain::new(Head::GENESIS);
        let a = chain.line("access", &serde_json::json!({"x": 1})).unwrap();
        let b = chain
            .signed_line("checkpoint", &serde_json::json!({"y": "z"}), &key)
            .unwrap();
        let a = a.strip_suffix(b"\n").unwrap();
        let b = b.strip_suffix(b"\n").unwrap();
        assert_eq!(parse_link(a).unwrap().prev, GENESIS);
        let lb = parse_link(b).unwrap();
        assert_eq!((lb.seq, lb.prev), (1, digest(a)));
        let (signed, sig) = split_signature(b).unwrap();
        assert!(key.public().verify(signed, &sig));
        assert!(serde_json::from_slice::<serde_json::Value>(b).is_ok());
        assert_eq!(chain.unsigned(), 0);
        chain.line("access", &serde_json::json!({})).unwrap();
        assert_eq!(chain.unsigned(), 1);
    }

    #[test]
    fn a_body_must_be_an_object() {
        let mut chain = Chain::new(Head::GENESIS);
        assert!(chain.line("access", &1).is_err());
        assert_eq!(chain.head(), Head::GENESIS);
    }
}
