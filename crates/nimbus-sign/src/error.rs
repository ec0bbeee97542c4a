//! What can go wrong with keys, payloads and signature manifests.

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{what} is not a PEM file (no \"-----BEGIN {label}-----\" block): {hint}")]
    NotPem {
        what: &'static str,
        label: &'static str,
        hint: &'static str,
    },
    #[error("the PEM block {label:?} is malformed: {reason}; the file is damaged or truncated, create it again (`nimbus key create`)")]
    BadPem { label: String, reason: String },
    #[error("the private key could not be decrypted: wrong password (set COSIGN_PASSWORD to the password given when the key was created)")]
    WrongPassword,
    #[error("the encrypted private key's envelope is invalid: {0}; it was not written by cosign or `nimbus key create`")]
    BadEnvelope(String),
    #[error("the key is {found}, not an ECDSA P-256 key; cosign signatures need P-256: create one with `nimbus key create`")]
    NotP256 { found: String },
    #[error("the key could not be read: {0}; create a new one with `nimbus key create`")]
    BadKey(String),
    #[error("digest {0:?} is not of the form sha256:<64 lowercase hex>")]
    BadDigest(String),
    #[error("the signature payload is invalid: {0}")]
    BadPayload(String),
    #[error("the signature manifest is invalid: {0}")]
    BadManifest(String),
    #[error("signing failed: {0}")]
    Crypto(String),
}
