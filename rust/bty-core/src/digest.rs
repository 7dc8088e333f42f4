//! Inline digests over the published byte stream: SHA-256 (what catalogs and
//! OCI registries publish) and BLAKE3 (fast; what bty records and compares).

use sha2::Digest as _;

use crate::error::{Error, Result};

/// Validate and normalise a hex SHA-256 (optionally `sha256:`-prefixed).
pub fn parse_sha256_hex(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// Running SHA-256 + BLAKE3 of one stream.
pub struct StreamDigests {
    sha256: sha2::Sha256,
    blake3: blake3::Hasher,
    bytes: u64,
}

/// Final digests of a stream, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Digests {
    pub sha256: String,
    pub blake3: String,
    pub bytes: u64,
}

impl Default for StreamDigests {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDigests {
    pub fn new() -> Self {
        StreamDigests { sha256: sha2::Sha256::new(), blake3: blake3::Hasher::new(), bytes: 0 }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        self.blake3.update(data);
        self.bytes += data.len() as u64;
    }

    pub fn finish(self) -> Digests {
        Digests {
            sha256: hex::encode(self.sha256.finalize()),
            blake3: self.blake3.finalize().to_hex().to_string(),
            bytes: self.bytes,
        }
    }
}

/// Expected digests given by the operator or a catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Expected {
    pub sha256: Option<String>,
    pub blake3: Option<String>,
}

impl Expected {
    pub fn is_empty(&self) -> bool {
        self.sha256.is_none() && self.blake3.is_none()
    }

    /// Compare against what the stream hashed to. The message says the target
    /// already holds the bytes, because a stream cannot be checked before it is written.
    pub fn check(&self, got: &Digests, what: &str) -> Result<()> {
        for (name, want, have) in
            [("SHA-256", &self.sha256, &got.sha256), ("BLAKE3", &self.blake3, &got.blake3)]
        {
            if let Some(want) = want {
                if !constant_time_eq(want.as_bytes(), have.as_bytes()) {
                    return Err(Error::integrity(format!(
                        "{name} mismatch for {what}: expected {want}, got {have}; the target holds \
                         unverified data, do not boot it; re-flash from a trusted source"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Validate a hex digest given on the command line or in a catalog.
pub fn parse_hex_digest(name: &str, s: &str, len: usize) -> Result<String> {
    let t = s.trim();
    let t = t.split_once(':').map(|(_, h)| h).unwrap_or(t);
    if t.len() == len && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(Error::usage(format!("{name} digest must be {len} hex characters, got {s:?}")))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// SHA-256 of a buffer, lowercase hex (bmap ranges, small files).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        let mut d = StreamDigests::new();
        d.update(b"ab");
        d.update(b"c");
        let got = d.finish();
        assert_eq!(got.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(got.blake3, blake3::hash(b"abc").to_hex().to_string());
        assert_eq!(got.bytes, 3);
        let ok = Expected { sha256: Some(got.sha256.clone()), blake3: None };
        ok.check(&got, "x").unwrap();
        let bad = Expected { sha256: None, blake3: Some("0".repeat(64)) };
        let err = bad.check(&got, "x").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Integrity);
    }

    #[test]
    fn digest_parsing() {
        assert!(parse_hex_digest("SHA-256", "xyz", 64).is_err());
        assert_eq!(
            parse_hex_digest("SHA-256", &format!("sha256:{}", "AB".repeat(32)), 64).unwrap(),
            "ab".repeat(32)
        );
    }
}
