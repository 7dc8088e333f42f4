//! Password storage: PBKDF2-HMAC-SHA256 (RFC 8018) with a random salt, kept
//! as `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>` so the cost can be
//! raised later without invalidating stored hashes. Built on `sha2` alone.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Cost for new hashes. A login costs this many HMACs; the login rate limit
/// keeps that from becoming a CPU lever.
pub const ITERATIONS: u32 = 100_000;
const SCHEME: &str = "pbkdf2-sha256";
const BLOCK: usize = 64;

/// HMAC-SHA256 with the key schedule done once: `inner`/`outer` are the
/// hashers after absorbing `key ^ ipad` / `key ^ opad`.
struct Hmac {
    inner: Sha256,
    outer: Sha256,
}

impl Hmac {
    fn new(key: &[u8]) -> Self {
        let mut k = [0u8; BLOCK];
        if key.len() > BLOCK {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        Hmac { inner: Sha256::new_with_prefix(&ipad), outer: Sha256::new_with_prefix(&opad) }
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut inner = self.inner.clone();
        for p in parts {
            inner.update(p);
        }
        let mut outer = self.outer.clone();
        outer.update(inner.finalize());
        outer.finalize().into()
    }
}

/// PBKDF2-HMAC-SHA256 with a 32-byte output (one block).
pub fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let prf = Hmac::new(password);
    let mut u = prf.mac(&[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = prf.mac(&[&u]);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

/// Hash a password for storage (slow by design; call off the async workers).
pub fn hash(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let h = pbkdf2_sha256(password.as_bytes(), &salt, ITERATIONS);
    format!("{SCHEME}${ITERATIONS}${}${}", hex::encode(salt), hex::encode(h))
}

/// Check a password against a stored hash in constant time. A malformed
/// stored hash never verifies.
pub fn verify(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(SCHEME), Some(iter), Some(salt), Some(want), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(iter), Ok(salt), Ok(want)) = (iter.parse::<u32>(), hex::decode(salt), hex::decode(want)) else {
        return false;
    };
    if iter == 0 || want.len() != 32 {
        return false;
    }
    let got = pbkdf2_sha256(password.as_bytes(), &salt, iter);
    got.ct_eq(want.as_slice()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_test_vectors() {
        // PBKDF2-HMAC-SHA256 vectors (RFC 7914 section 11 style, widely published).
        let v = |p: &str, s: &str, c| hex::encode(pbkdf2_sha256(p.as_bytes(), s.as_bytes(), c));
        assert_eq!(
            v("password", "salt", 1),
            "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"
        );
        assert_eq!(
            v("password", "salt", 2),
            "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"
        );
        assert_eq!(
            v("password", "salt", 4096),
            "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"
        );
    }

    #[test]
    fn long_keys_are_hashed_first() {
        // HMAC-SHA256 RFC 4231 test case 6: a 131-byte key.
        let key = [0xaau8; 131];
        let mac = Hmac::new(&key).mac(&[b"Test Using Larger Than Block-Size Key - Hash Key First"]);
        assert_eq!(hex::encode(mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse");
        assert!(h.starts_with("pbkdf2-sha256$100000$"));
        assert!(verify("correct horse", &h));
        assert!(!verify("correct horsE", &h));
        assert!(!verify("x", "garbage"));
        assert!(!verify("x", "pbkdf2-sha256$0$00$00"));
        assert_ne!(hash("a"), hash("a"), "salted");
    }
}
