//! A host's own image store, filled from the servers: each blob an instance
//! needs is fetched once by digest, hashed while it streams to a staging
//! file, and kept only if it matches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use nimbus_api::client::Client;
use nimbus_api::Image;
use nimbus_image::{GcReport, ImageStore};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::BlobSource;
use crate::agent::error::{blocking, AgentError};

pub struct RemoteBlobs {
    store: Arc<ImageStore>,
    client: Client,
    /// One lock per digest being fetched: concurrent starts needing the
    /// same blob wait for the first fetch instead of making their own.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Fetches hold it shared, a collection exclusively, so a collection
    /// never sees a half-fetched image.
    pub(super) collecting: tokio::sync::RwLock<()>,
    /// What changed more recently is never collected.
    pub(super) min_age: Duration,
    fetched: AtomicU64,
}

impl RemoteBlobs {
    pub fn new(store: Arc<ImageStore>, client: Client, min_age: Duration) -> RemoteBlobs {
        RemoteBlobs {
            store,
            client,
            fetching: Mutex::new(HashMap::new()),
            collecting: tokio::sync::RwLock::new(()),
            min_age,
            fetched: AtomicU64::new(0),
        }
    }

    /// How many blobs were downloaded so far.
    pub fn fetched_count(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    fn digest_lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(digest.to_string()).or_default().clone()
    }

    /// Fetches blob `digest` of `image` unless it is (by now) stored.
    async fn fetch_once(&self, image: &Image, digest: &str) -> Result<(), AgentError> {
        let lock = self.digest_lock(digest);
        let _one_fetch = lock.lock().await;
        let result = self.fetch_if_missing(image, digest).await;
        self.fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest);
        result
    }

    async fn fetch_if_missing(&self, image: &Image, digest: &str) -> Result<(), AgentError> {
        let wanted = super::runnable_here(image)?;
        let still_missing = self
            .store
            .missing_blobs(&wanted)
            .map_err(|source| refused(image, digest, source))?
            .iter()
            .any(|d| d == digest);
        if still_missing {
            self.download(image, digest).await?;
            self.fetched.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Streams the blob from the servers into the store, which hashes it on
    /// the way and keeps it only if it matches `digest`.
    async fn download(&self, image: &Image, digest: &str) -> Result<(), AgentError> {
        let project = image.metadata.project.clone().unwrap_or_default();
        let name = &image.metadata.name;
        let fetch_error = |source| AgentError::BlobFetch {
            image: name.clone(),
            digest: digest.to_string(),
            source,
        };
        let chunks = self
            .client
            .stream(&format!(
                "/v1/projects/{project}/images/{name}/blobs/{digest}"
            ))
            .await
            .map_err(fetch_error)?;
        let chunks = Box::pin(chunks.map_err(std::io::Error::other));
        let mut reader = SyncIoBridge::new(StreamReader::new(chunks));
        let store = self.store.clone();
        let (image, digest) = (image.clone(), digest.to_string());
        blocking("fetching an image blob", move || {
            store
                .add_blob(&digest, &mut reader)
                .map(drop)
                .map_err(|source| refused(&image, &digest, source))
        })
        .await
    }
}

fn refused(image: &Image, digest: &str, source: nimbus_image::ImageError) -> AgentError {
    AgentError::BlobRefused {
        image: image.metadata.name.clone(),
        digest: digest.to_string(),
        source: Box::new(source),
    }
}

#[async_trait]
impl BlobSource for RemoteBlobs {
    fn store(&self) -> Arc<ImageStore> {
        self.store.clone()
    }

    async fn ensure(&self, image: &Image) -> Result<(), AgentError> {
        let _not_collecting = self.collecting.read().await;
        let wanted = super::runnable_here(image)?;
        let missing =
            self.store
                .missing_blobs(&wanted)
                .map_err(|source| AgentError::ImageLayers {
                    name: image.metadata.name.clone(),
                    source: Box::new(source),
                })?;
        futures::future::try_join_all(missing.iter().map(|d| self.fetch_once(image, d))).await?;
        Ok(())
    }

    async fn collect(&self, host: &str) -> Result<Option<GcReport>, AgentError> {
        super::collect::collect_unused(self, host).await.map(Some)
    }
}
