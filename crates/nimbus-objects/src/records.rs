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
