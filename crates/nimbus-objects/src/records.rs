//! What the store holds for buckets, objects and access keys (JSON).

use serde::{Deserialize, Serialize};

use crate::error::ObjectsError;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BucketRecord {
    pub name: String,
    /// The project that owns the bucket: only its access keys may use it.
    pub project: String,
    /// Anyone, without a signature, may GET and HEAD its objects.
    #[serde(default)]
    pub public_read: bool,
    pub created: chrono::DateTime<chrono::Utc>,
    /// `None` while versioning was never turned on: the bucket then keeps
    /// one record per key and nothing else, exactly as before versioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versioning: Option<Versioning>,
}

/// A bucket's versioning state once set (S3 has no way back to "never").
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Versioning {
    /// Every write makes a new version with its own id.
    Enabled,
    /// Writes make the `null` version, replacing an earlier one; the
    /// versions already stored stay.
    Suspended,
}

/// Which version an object record is, in a bucket whose versioning was
/// ever set. Absent in buckets that never had versioning.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    /// The S3 `VersionId`: 32 hex digits, or `null`.
    pub id: String,
    /// Orders the key's versions (higher is newer); unique per key.
    pub seq: u64,
    /// A delete marker: no data, GET answers 404.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_marker: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectRecord {
    /// The data file's id under `<data>/objects/data/` (never the key).
    pub data_id: String,
    pub size: u64,
    /// The S3 ETag without quotes: MD5 hex, or `<md5-of-md5s>-<parts>`.
    pub etag: String,
    pub content_type: Option<String>,
    #[serde(default)]
    pub user_metadata: std::collections::BTreeMap<String, String>,
    pub last_modified: chrono::DateTime<chrono::Utc>,
    /// Set in buckets whose versioning was ever set (see
    /// `crate::versioning`); a delete marker has an empty `data_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<VersionInfo>,
}

impl ObjectRecord {
    pub fn is_delete_marker(&self) -> bool {
        self.version.as_ref().is_some_and(|v| v.delete_marker)
    }

    /// The `VersionId` S3 shows for it: none in a never-versioned bucket.
    pub fn version_id(&self) -> Option<String> {
        self.version.as_ref().map(|v| v.id.clone())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CredentialRecord {
    pub access_key_id: String,
    /// The secret, sealed by the server's key (see [`crate::auth::Sealer`]).
    pub sealed_secret: String,
    pub project: String,
    pub user: String,
    pub created: chrono::DateTime<chrono::Utc>,
}

pub fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, ObjectsError> {
    serde_json::from_slice(bytes).map_err(|e| ObjectsError::Corrupt {
        what,
        key: key.to_string(),
        detail: e.to_string(),
    })
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs of strings and numbers cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// A multipart upload in progress: what the object gets on completion.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadRecord {
    pub key: String,
    pub content_type: Option<String>,
    #[serde(default)]
    pub user_metadata: std::collections::BTreeMap<String, String>,
    pub initiated: chrono::DateTime<chrono::Utc>,
}

/// One uploaded part of a multipart upload.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartRecord {
    pub data_id: String,
    pub size: u64,
    /// MD5 hex of the part.
    pub etag: String,
    pub last_modified: chrono::DateTime<chrono::Utc>,
}
