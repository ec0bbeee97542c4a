//! Cosign-compatible image signatures: ECDSA P-256 key pairs in cosign's
//! file formats, the simple-signing payload, the `.sig` manifest cosign
//! stores beside an image, and the launch policy's verdict.
//!
//! Everything here is pure: no file, network or store access, so the CLI
//! (which signs, holding the private key), the server and the agent (which
//! verify) share one implementation. Manifests, payloads, keys and
//! signatures come from users and are hostile: this crate must never
//! panic on them, never read past the size caps below, and never accept a
//! signature whose payload names a digest other than the one checked.

mod error;
mod keys;
mod manifest;
mod payload;
mod pem;
mod policy;
#[doc(hidden)]
pub mod testing;

pub use error::SignError;
pub use keys::{KeyPair, PublicKey, ScryptParams};
pub use manifest::{
    parse_signature_manifest, parse_stored_signatures, SignatureManifest, SignaturePair,
    MAX_PAYLOAD_BYTES, MAX_SIGNATURES, MAX_SIGNATURE_MANIFEST_BYTES, SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE,
};
pub use payload::{SimpleSigning, COSIGN_SIGNATURE_TYPE};
pub use policy::{check_signatures, Accepted, Found, Refusal};

/// The tag cosign stores an image's signatures under: `sha256-<hex>.sig`.
pub fn signature_tag(manifest_digest: &str) -> Result<String, SignError> {
    let hex = digest_hex(manifest_digest)?;
    Ok(format!("sha256-{hex}.sig"))
}

/// The hex part of a `sha256:<64 hex>` digest, refusing anything else.
pub fn digest_hex(digest: &str) -> Result<&str, SignError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(SignError::BadDigest(digest.chars().take(80).collect())),
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
