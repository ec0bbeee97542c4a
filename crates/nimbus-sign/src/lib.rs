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

/// The registry repository an image name lives in: the name without its
/// `:tag` (`app:1.0` → `app`), as cosign signs a repository, not a tag.
pub fn image_repository(image_name: &str) -> &str {
    match image_name.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') && !repository.is_empty() => repository,
        _ => image_name,
    }
}

/// The docker-reference a payload names for `image_name` of `project`:
/// the registry repository `<project>/<repository>`. The client that signs
/// and the server that stores use this one definition.
pub fn docker_reference(project: &str, image_name: &str) -> String {
    format!("{project}/{}", image_repository(image_name))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_signed_under_its_repository_without_the_tag() {
        assert_eq!(image_repository("app:1.0"), "app");
        assert_eq!(image_repository("app"), "app");
        assert_eq!(docker_reference("ops", "app:1.0"), "ops/app");
        assert_eq!(docker_reference("ops", "app"), "ops/app");
    }
}
