//! The registry's record of one repository (`<project>/<name>`): its tags,
//! the manifests pushed to it, and the blobs it may serve. Blob and manifest
//! bytes live in the image store; this is what names them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::resources::{object, Object};
use crate::Metadata;

/// A repository; its name is the path below the project (`app`, `team/app`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Repository {
    pub metadata: Metadata,
    #[serde(default)]
    pub status: RepositoryStatus,
}

object!(Repository, "repositories", "repository", true);

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct RepositoryStatus {
    /// Tag → manifest digest.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Manifest digest → what it is and references.
    #[serde(default)]
    pub manifests: BTreeMap<String, StoredManifest>,
    /// Blob digest → size: the blobs pushed or mounted here, the only ones
    /// this repository serves and its manifests may name.
    #[serde(default)]
    pub blobs: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StoredManifest {
    pub media_type: String,
    pub size_bytes: u64,
    /// Blobs (config, layers) or child manifests it names.
    #[serde(default)]
    pub references: Vec<String>,
}

impl RepositoryStatus {
    /// Every digest the repository keeps alive in the image store.
    pub fn kept_digests(&self) -> impl Iterator<Item = &String> {
        self.blobs.keys().chain(self.manifests.keys())
    }
}
