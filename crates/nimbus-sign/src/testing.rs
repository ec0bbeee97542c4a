//! Helpers for tests of crates that use signatures: not for production use.

use crate::{KeyPair, SignaturePair, SimpleSigning};

/// A signature by `key` over the payload naming `reference` at `digest`,
/// with the signer's fingerprint recorded.
pub fn signed(key: &KeyPair, reference: &str, digest: &str) -> SignaturePair {
    let payload = SimpleSigning::new(reference, digest)
        .expect("a sha256 digest")
        .to_bytes();
    SignaturePair {
        signature: key.sign(&payload).expect("signing"),
        payload,
        signer: Some(key.public_key().fingerprint()),
    }
}
