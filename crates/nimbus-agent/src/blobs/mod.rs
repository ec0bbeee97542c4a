//! Where a host's image blobs come from.
//!
//! Under `nimbus up` the agent shares the server's image store: every blob
//! an instance needs is there already ([`SharedStore`]). A host that joined
//! a remote server has a store of its own and fills it on demand: it fetches
//! the blobs its instances need from the servers by digest, verifies them,
//! keeps them and later collects the unused ones ([`RemoteBlobs`]). Drivers
//! and the reconcile worker see only [`BlobSource`].

mod collect;
mod remote;
#[cfg(test)]
mod remote_tests;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use nimbus_api::Image;
use nimbus_image::{GcReport, ImageStore, ImportedImage};

use crate::agent::error::{blocking, AgentError};

pub use collect::run_collection;
pub use remote::RemoteBlobs;

/// The image store of a host and how blobs reach it.
#[async_trait]
pub trait BlobSource: Send + Sync {
    /// The store instances read layers and disks from.
    fn store(&self) -> Arc<ImageStore>;

    /// Makes sure the store holds every blob `image` needs to run (its
    /// layers, disk, kernel, initrd).
    async fn ensure(&self, image: &Image) -> Result<(), AgentError>;

    /// Removes the blobs and layers no instance bound to `host` uses;
    /// `None` for a store this agent does not own.
    async fn collect(&self, host: &str) -> Result<Option<GcReport>, AgentError>;

    /// The unpacked layer directories of `image`, lowest first, fetching
    /// what is missing first.
    async fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, AgentError> {
        self.ensure(image).await?;
        let imported = runnable_here(image)?;
        let store = self.store();
        let name = image.metadata.name.clone();
        blocking("resolving image layers", move || {
            store
                .layer_dirs(&imported)
                .map_err(|source| AgentError::ImageLayers {
                    name,
                    source: Box::new(source),
                })
        })
        .await
    }
}

/// The image as this host runs it: for an image of several platforms, the
/// manifest, layers and config of the host's architecture.
pub(crate) fn runnable_here(image: &Image) -> Result<ImportedImage, AgentError> {
    ImportedImage::from_api(&image.status)
        .for_architecture(nimbus_image::host_platform())
        .map_err(|source| AgentError::ImageLayers {
            name: image.metadata.name.clone(),
            source: Box::new(source),
        })
}

/// The server's own store, shared in process (`nimbus up`): images were
/// imported into it, so nothing is fetched, and the server collects it.
pub struct SharedStore(pub Arc<ImageStore>);

#[async_trait]
impl BlobSource for SharedStore {
    fn store(&self) -> Arc<ImageStore> {
        self.0.clone()
    }

    async fn ensure(&self, _image: &Image) -> Result<(), AgentError> {
        Ok(())
    }

    async fn collect(&self, _host: &str) -> Result<Option<GcReport>, AgentError> {
        Ok(None)
    }
}
