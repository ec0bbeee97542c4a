//! What decides whether an image may launch: a project's [`Policy`]
//! (`/v1/projects/{project}/policy`) and the cosign signatures stored for an
//! image digest ([`ImageSignatures`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::meta::Metadata;
use crate::resources::Object;

/// The name of a project's one policy object.
pub const POLICY_NAME: &str = "default";

/// A project's launch policy. Every field is optional so each checker
/// (signatures here, vulnerability severity elsewhere) adds its own
/// without touching the others.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Policy {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: PolicySpec,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PolicySpec {
    /// Refuse to launch an image without a signature by one of `keys`
    /// over its manifest digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_signature: Option<bool>,
    /// The public keys a signature may be made with, by fingerprint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<TrustedKey>,
    /// Refuse to launch images with a vulnerability finding above this
    /// severity (see `nimbus image scan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_severity: Option<crate::vulns::Severity>,
}

impl PolicySpec {
    pub fn requires_signature(&self) -> bool {
        self.require_signature == Some(true)
    }
}

/// A public key the policy trusts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TrustedKey {
    /// `sha256:<hex>` of the key's SubjectPublicKeyInfo DER.
    pub fingerprint: String,
    /// The key as a PEM `PUBLIC KEY` block (cosign.pub).
    pub public_key: String,
    /// Where it came from (the file name given), informational.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

/// `PUT /v1/projects/{project}/policy`: fields left out are left as they are.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct PolicyUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_signature: Option<bool>,
    /// Public keys to trust (PEM `PUBLIC KEY`), with where each came from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_keys: Vec<TrustedKey>,
    /// Fingerprints of keys to stop trusting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_keys: Vec<String>,
    /// The highest severity an image's findings may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_severity: Option<crate::vulns::Severity>,
    /// Remove the severity rule.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear_max_severity: bool,
}

impl Object for Policy {
    const COLLECTION: &'static str = "policies";
    const KIND: &'static str = "policy";
    const PROJECT_SCOPED: bool = true;
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }
}

/// The cosign signatures of one image manifest digest in a registry
/// repository, as `GET /v1/projects/{project}/images/{name}/signatures/{tag}`
/// answers them: the manifest of the repository's tag `sha256-<hex>.sig`
/// and its blobs. Named by that tag; not stored as a record of its own.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ImageSignatures {
    pub metadata: Metadata,
    pub spec: ImageSignaturesSpec,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ImageSignaturesSpec {
    /// The signed image manifest digest (`sha256:...`).
    pub digest: String,
    /// The `.sig` OCI manifest, as stored (JSON text).
    pub manifest: String,
    /// Digest of `manifest`.
    pub manifest_digest: String,
    /// The blobs the manifest names (config and payloads), base64, by digest.
    pub blobs: BTreeMap<String, String>,
    /// The registry repository (`<project>/<repository>`) holding the tag.
    #[serde(default)]
    pub references: Vec<String>,
}

/// `POST /v1/projects/{project}/images/{name}/signatures`: a signature made
/// on the client (the private key never leaves it).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SignatureUpload {
    /// The simple-signing payload, base64.
    pub payload: String,
    /// The ASN.1 ECDSA P-256 SHA-256 signature over it, base64.
    pub signature: String,
    /// The signer's public key (PEM `PUBLIC KEY`): the signature is checked
    /// against it, and its fingerprint recorded.
    pub public_key: String,
}

/// The answer to a signature upload.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SignatureAdded {
    pub image: String,
    pub digest: String,
    /// The tag a registry shows the signatures under: `sha256-<hex>.sig`.
    pub tag: String,
    pub key_fingerprint: String,
    /// How many signatures the digest has now.
    pub signatures: usize,
}
