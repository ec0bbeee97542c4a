//! The OCI manifest cosign stores under `sha256-<hex>.sig`: a config blob
//! and one layer per signature, each layer being the simple-signing
//! payload with the base64 signature in an annotation.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::{sha256_digest, SignError};

pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Nimbus's own annotation: the fingerprint of the key the uploader said
/// signed the layer. Only informative (refusals name it); cosign ignores it.
pub const SIGNER_ANNOTATION: &str = "io.nimbus.signature/key-fingerprint";
const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// Caps on what a hostile `.sig` manifest can make us read.
pub const MAX_SIGNATURE_MANIFEST_BYTES: usize = 256 << 10;
pub const MAX_SIGNATURES: usize = 64;
pub const MAX_PAYLOAD_BYTES: usize = 64 << 10;
/// An ASN.1 P-256 signature is at most 72 bytes; base64 of 512 is plenty.
const MAX_SIGNATURE_B64_BYTES: usize = 512;

/// One signature: the payload bytes, the raw signature over them, and the
/// fingerprint of the key its uploader named, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignaturePair {
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
    pub signer: Option<String>,
}

/// A built `.sig` manifest and the blobs it names (config and payloads).
#[derive(Clone, Debug)]
pub struct SignatureManifest {
    pub manifest: Vec<u8>,
    pub digest: String,
    pub blobs: BTreeMap<String, Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    size: u64,
    digest: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

impl SignatureManifest {
    /// The manifest holding `pairs`, in order. To append a signature as
    /// cosign does, parse the existing manifest, push, and build again:
    /// an identical signature already there is not added twice.
    pub fn build(pairs: &[SignaturePair]) -> Result<SignatureManifest, SignError> {
        if pairs.len() > MAX_SIGNATURES {
            return Err(SignError::BadManifest(format!(
                "{} signatures, more than the {MAX_SIGNATURES} one image may have",
                pairs.len()
            )));
        }
        let mut blobs = BTreeMap::new();
        let mut layers: Vec<Descriptor> = Vec::new();
        for pair in pairs {
            let digest = sha256_digest(&pair.payload);
            let sig = STANDARD.encode(&pair.signature);
            let duplicate = layers.iter().any(|l| {
                l.digest == digest && l.annotations.get(SIGNATURE_ANNOTATION) == Some(&sig)
            });
            if duplicate {
                continue;
            }
            let mut annotations = BTreeMap::from([(SIGNATURE_ANNOTATION.to_string(), sig)]);
            if let Some(signer) = &pair.signer {
                annotations.insert(SIGNER_ANNOTATION.to_string(), signer.clone());
            }
            layers.push(Descriptor {
                media_type: SIMPLE_SIGNING_MEDIA_TYPE.into(),
                size: pair.payload.len() as u64,
                digest: digest.clone(),
                annotations,
            });
            blobs.insert(digest, pair.payload.clone());
        }
        let config = config_blob(&layers);
        let config_digest = sha256_digest(&config);
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST_MEDIA_TYPE.into()),
            config: Descriptor {
                media_type: OCI_CONFIG_MEDIA_TYPE.into(),
                size: config.len() as u64,
                digest: config_digest.clone(),
                annotations: BTreeMap::new(),
            },
            layers,
        };
        blobs.insert(config_digest, config);
        let manifest = serde_json::to_vec(&manifest)
            .map_err(|e| SignError::BadManifest(format!("encoding: {e}")))?;
        Ok(SignatureManifest {
            digest: sha256_digest(&manifest),
            manifest,
            blobs,
        })
    }
}

/// The image config go-containerregistry writes for cosign's signature
/// image: no platform, one diff id per (uncompressed) payload layer.
fn config_blob(layers: &[Descriptor]) -> Vec<u8> {
    const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
    let config = serde_json::json!({
        "architecture": "",
        "created": ZERO_TIME,
        "history": layers.iter().map(|_| serde_json::json!({"created": ZERO_TIME})).collect::<Vec<_>>(),
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>()},
        "config": {},
    });
    config.to_string().into_bytes()
}

/// The signatures in a `.sig` manifest; `blob` returns a blob's bytes by
/// digest (the payloads). Every payload is checked against its digest and
/// size; layers of other media types are skipped, as cosign skips them.
pub fn parse_signature_manifest(
    manifest: &[u8],
    blob: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<Vec<SignaturePair>, SignError> {
    if manifest.len() > MAX_SIGNATURE_MANIFEST_BYTES {
        return Err(SignError::BadManifest(format!(
            "{} bytes, more than the {MAX_SIGNATURE_MANIFEST_BYTES} a signature manifest may have",
            manifest.len()
        )));
    }
    let parsed: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| SignError::BadManifest(format!("not an OCI manifest: {e}")))?;
    if parsed.schema_version != 2 {
        return Err(SignError::BadManifest(format!(
            "schemaVersion {} is not 2",
            parsed.schema_version
        )));
    }
    if parsed.layers.len() > MAX_SIGNATURES {
        return Err(SignError::BadManifest(format!(
            "{} layers, more than the {MAX_SIGNATURES} signatures one image may have",
            parsed.layers.len()
        )));
    }
    parsed
        .layers
        .iter()
        .filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
        .map(|l| read_layer(l, &blob))
        .collect()
}

/// [`parse_signature_manifest`] over a manifest stored as text with its
/// blobs base64 by digest (how the API carries a `.sig` manifest).
pub fn parse_stored_signatures(
    manifest: &str,
    blobs_base64: &BTreeMap<String, String>,
) -> Result<Vec<SignaturePair>, SignError> {
    parse_signature_manifest(manifest.as_bytes(), |digest| {
        blobs_base64
            .get(digest)
            .filter(|b| b.len() <= MAX_PAYLOAD_BYTES * 2)
            .and_then(|b| STANDARD.decode(b).ok())
    })
}

fn read_layer(
    layer: &Descriptor,
    blob: &impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<SignaturePair, SignError> {
    let bad = |why: String| SignError::BadManifest(format!("layer {}: {why}", layer.digest));
    let sig_b64 = layer
        .annotations
        .get(SIGNATURE_ANNOTATION)
        .ok_or_else(|| bad(format!("no {SIGNATURE_ANNOTATION} annotation")))?;
    if sig_b64.len() > MAX_SIGNATURE_B64_BYTES {
        return Err(bad(format!("a {}-byte signature", sig_b64.len())));
    }
    let signature = STANDARD
        .decode(sig_b64)
        .map_err(|e| bad(format!("the signature is not base64: {e}")))?;
    if layer.size > MAX_PAYLOAD_BYTES as u64 {
        return Err(bad(format!(
            "a {}-byte payload, more than {MAX_PAYLOAD_BYTES}",
            layer.size
        )));
    }
    crate::digest_hex(&layer.digest)?;
    let payload = blob(&layer.digest).ok_or_else(|| bad("its payload blob is missing".into()))?;
    if payload.len() as u64 != layer.size || sha256_digest(&payload) != layer.digest {
        return Err(bad(
            "the payload blob does not match its size and digest".into()
        ));
    }
    Ok(SignaturePair {
        payload,
        signature,
        signer: layer.annotations.get(SIGNER_ANNOTATION).cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(n: u8) -> SignaturePair {
        SignaturePair {
            payload: format!("{{\"n\":{n}}}").into_bytes(),
            signature: vec![n; 70],
            signer: Some(format!("sha256:{n}")),
        }
    }

    fn parse(m: &SignatureManifest) -> Result<Vec<SignaturePair>, SignError> {
        parse_signature_manifest(&m.manifest, |d| m.blobs.get(d).cloned())
    }

    #[test]
    fn build_then_parse_returns_the_pairs_in_order_without_duplicates() {
        let m = SignatureManifest::build(&[pair(1), pair(2), pair(1)]).expect("build");
        assert_eq!(parse(&m).expect("parse"), vec![pair(1), pair(2)]);
        let v: serde_json::Value = serde_json::from_slice(&m.manifest).expect("json");
        assert_eq!(v["mediaType"], OCI_MANIFEST_MEDIA_TYPE);
        assert_eq!(v["layers"][0]["mediaType"], SIMPLE_SIGNING_MEDIA_TYPE);
        assert_eq!(
            v["layers"][0]["annotations"][SIGNATURE_ANNOTATION],
            STANDARD.encode(vec![1u8; 70])
        );
        let config = &m.blobs[v["config"]["digest"].as_str().expect("digest")];
        let config: serde_json::Value = serde_json::from_slice(config).expect("config");
        assert_eq!(config["rootfs"]["diff_ids"][1], v["layers"][1]["digest"]);
    }

    #[test]
    fn appending_keeps_earlier_signatures() {
        let first = SignatureManifest::build(&[pair(1)]).expect("build");
        let mut pairs = parse(&first).expect("parse");
        pairs.push(pair(2));
        let second = SignatureManifest::build(&pairs).expect("append");
        assert_ne!(first.digest, second.digest);
        assert_eq!(parse(&second).expect("parse"), vec![pair(1), pair(2)]);
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let m = SignatureManifest::build(&[pair(1)]).expect("build");
        // A payload blob that does not match its digest.
        let err = parse_signature_manifest(&m.manifest, |_| Some(b"other".to_vec()));
        assert!(err.is_err());
        // A missing payload blob.
        assert!(parse_signature_manifest(&m.manifest, |_| None).is_err());
        // Bad base64 and an oversized signature.
        let text = String::from_utf8(m.manifest.clone()).expect("utf8");
        let sig = STANDARD.encode(vec![1u8; 70]);
        let bad_b64 = text.replace(&sig, "!!notbase64!!");
        assert!(parse_signature_manifest(bad_b64.as_bytes(), |d| m.blobs.get(d).cloned()).is_err());
        let long = text.replace(&sig, &"A".repeat(4096));
        assert!(parse_signature_manifest(long.as_bytes(), |d| m.blobs.get(d).cloned()).is_err());
        // A declared huge payload.
        let size = format!("\"size\":{}", pair(1).payload.len());
        let huge = text.replace(&size, "\"size\":10737418240");
        let err = parse_signature_manifest(huge.as_bytes(), |d| m.blobs.get(d).cloned())
            .expect_err("huge");
        assert!(err.to_string().contains("payload"), "{err}");
        // Too big a manifest, and not JSON at all.
        let big = vec![b' '; MAX_SIGNATURE_MANIFEST_BYTES + 1];
        assert!(parse_signature_manifest(&big, |_| None).is_err());
        assert!(parse_signature_manifest(b"\x00\xff", |_| None).is_err());
        assert!(SignatureManifest::build(&vec![pair(1); MAX_SIGNATURES + 1]).is_err());
    }
}
