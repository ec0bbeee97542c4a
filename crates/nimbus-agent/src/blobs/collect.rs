//! Collection of a host's fetched blobs: what no instance bound to the host
//! uses goes, periodically and soon after an instance is removed.
//!
//! The keep-list is read from the servers with fetches held off: every
//! fetch that finished before was for an instance bound by then, so its
//! image is on the list. Whatever changed within the minimum age stays in
//! any case.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use nimbus_api::{ErrorCode, Image, Instance};
use nimbus_image::{GcReport, ImportedImage};
use tokio::sync::Notify;

use super::{BlobSource, RemoteBlobs};
use crate::agent::error::{blocking, AgentError};

/// Collects `blobs` every `every`, and when `wake` is notified (an
/// instance was removed), until the task is dropped. Returns at once for a
/// source that does not collect.
pub async fn run_collection(
    blobs: Arc<dyn BlobSource>,
    host: String,
    every: Duration,
    wake: Arc<Notify>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = wake.notified() => {}
        }
        match blobs.collect(&host).await {
            Ok(None) => return,
            Ok(Some(report)) => tracing::debug!(
                removed_blobs = report.removed_blobs.len(),
                removed_layers = report.removed_layers.len(),
                freed_bytes = report.freed_bytes,
                "fetched image blobs collected"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "collecting unused image blobs failed; trying again later")
            }
        }
    }
}

/// One collection of `blobs`' store against the instances bound to `host`.
pub(super) async fn collect_unused(
    blobs: &RemoteBlobs,
    host: &str,
) -> Result<GcReport, AgentError> {
    let _no_fetch = blobs.collecting.write().await;
    let keep = images_in_use(blobs, host).await?;
    let store = blobs.store();
    let min_age = blobs.min_age;
    blocking("collecting unused image blobs", move || {
        store
            .collect_unused(&keep, min_age)
            .map_err(|source| AgentError::ImageLayers {
                name: "(unused images)".into(),
                source: Box::new(source),
            })
    })
    .await
}

/// The images of the instances bound to `host`, from the servers. An image
/// gone since is skipped (the server refuses to remove an image in use, so
/// nothing runs from it); any other failure ends the collection.
async fn images_in_use(blobs: &RemoteBlobs, host: &str) -> Result<Vec<ImportedImage>, AgentError> {
    let instances = blobs
        .client()
        .list_all::<Instance>(&format!("/v1/instances?host={host}"))
        .await
        .map_err(|source| AgentError::ImageLookup {
            name: format!("(images of the instances on host {host})"),
            source,
        })?;
    let names: BTreeSet<(String, String)> = instances
        .items
        .iter()
        .filter(|i| i.status.host.as_deref() == Some(host))
        .flat_map(|i| {
            let project = i.metadata.project.clone().unwrap_or_default();
            let kernel = i.spec.vm.as_ref().and_then(|v| v.kernel_image.clone());
            std::iter::once(i.spec.image.clone())
                .chain(kernel)
                .map(move |name| (project.clone(), name))
        })
        .collect();
    let mut keep = Vec::with_capacity(names.len());
    for (project, name) in names {
        match blobs
            .client()
            .get::<Image>(&format!("/v1/projects/{project}/images/{name}"))
            .await
        {
            Ok(image) => keep.push(ImportedImage::from_api(&image.status)),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {}
            Err(source) => return Err(AgentError::ImageLookup { name, source }),
        }
    }
    Ok(keep)
}
