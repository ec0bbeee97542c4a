//! The simple-signing payload cosign signs: it names the image by
//! repository and manifest digest. Field order and spelling match cosign's
//! Go structs byte for byte, so a payload we build is the one cosign builds.

use serde::{Deserialize, Serialize};

use crate::SignError;

pub const COSIGN_SIGNATURE_TYPE: &str = "cosign container image signature";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimpleSigning {
    pub critical: Critical,
    pub optional: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Critical {
    pub identity: Identity,
    pub image: ImageRef,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRef {
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

impl SimpleSigning {
    /// The payload for the image `reference` (a repository, no tag) whose
    /// manifest has `digest`.
    pub fn new(reference: &str, digest: &str) -> Result<SimpleSigning, SignError> {
        crate::digest_hex(digest)?;
        Ok(SimpleSigning {
            critical: Critical {
                identity: Identity {
                    docker_reference: reference.to_string(),
                },
                image: ImageRef {
                    docker_manifest_digest: digest.to_string(),
                },
                kind: COSIGN_SIGNATURE_TYPE.to_string(),
            },
            optional: None,
        })
    }

    /// The bytes that are signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain strings and maps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Read a payload back; refuses one that is not a cosign signature.
    pub fn parse(bytes: &[u8]) -> Result<SimpleSigning, SignError> {
        if bytes.len() > crate::MAX_PAYLOAD_BYTES {
            return Err(SignError::BadPayload(format!(
                "{} bytes, more than the {} a payload may have",
                bytes.len(),
                crate::MAX_PAYLOAD_BYTES
            )));
        }
        let payload: SimpleSigning = serde_json::from_slice(bytes)
            .map_err(|e| SignError::BadPayload(format!("not simple-signing JSON: {e}")))?;
        if payload.critical.kind != COSIGN_SIGNATURE_TYPE {
            return Err(SignError::BadPayload(format!(
                "type {:?} is not {COSIGN_SIGNATURE_TYPE:?}",
                payload.critical.kind
            )));
        }
        Ok(payload)
    }

    pub fn digest(&self) -> &str {
        &self.critical.image.docker_manifest_digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";

    #[test]
    fn bytes_are_cosigns() {
        let p = SimpleSigning::new("127.0.0.1:7443/ops/app", DIGEST).expect("payload");
        let expected = format!(
            "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"127.0.0.1:7443/ops/app\"}},\"image\":{{\"docker-manifest-digest\":\"{DIGEST}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}"
        );
        assert_eq!(String::from_utf8(p.to_bytes()).expect("utf8"), expected);
        assert_eq!(SimpleSigning::parse(expected.as_bytes()).expect("parse"), p);
    }

    #[test]
    fn foreign_payloads_are_refused() {
        let other = br#"{"critical":{"identity":{"docker-reference":"x"},"image":{"docker-manifest-digest":"sha256:00"},"type":"atomic container signature"},"optional":null}"#;
        assert!(SimpleSigning::parse(other).is_err());
        assert!(SimpleSigning::parse(b"[]").is_err());
        assert!(SimpleSigning::new("x", "sha256:short").is_err());
        let huge = vec![b' '; crate::MAX_PAYLOAD_BYTES + 1];
        assert!(SimpleSigning::parse(&huge).is_err());
    }
}
