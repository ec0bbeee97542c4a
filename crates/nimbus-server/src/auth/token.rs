//! Token secrets: generation, parsing and constant-time comparison.
//!
//! A token reads `nmb_<id>_<secret>`: the id names the stored record and
//! the secret is 32 random bytes whose SHA-256 alone is stored.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub fn generate() -> (String, String) {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    (hex::encode(id), hex::encode(secret))
}

pub fn format(id: &str, secret: &str) -> String {
    format!("nmb_{id}_{secret}")
}

/// Split `nmb_<id>_<secret>` into its parts.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("nmb_")?;
    let (id, secret) = rest.split_once('_')?;
    let hexish = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexish(id, 16) && hexish(secret, 64)).then_some((id, secret))
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn hash_hex(secret: &str) -> String {
    hex::encode(hash_secret(secret))
}

pub fn decode_hash(hex_hash: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_hash).ok()?;
    bytes.try_into().ok()
}

pub fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_hash() {
        let (id, secret) = generate();
        let t = format(&id, &secret);
        assert_eq!(parse(&t), Some((id.as_str(), secret.as_str())));
        assert!(parse("nmb_short_x").is_none());
        assert!(parse("Bearer something").is_none());
        let h = hash_secret(&secret);
        assert!(hashes_equal(&h, &decode_hash(&hash_hex(&secret)).unwrap()));
        assert!(!hashes_equal(&h, &hash_secret("other")));
    }
}
