//! A project's image bytes (`nimbus quota set --image-bytes`), read from
//! the store and the image store for `domain::image_usage` to count: used
//! by image import, the registry's blob uploads and `GET .../usage`.
//!
//! An upload's check at every piece re-reads the open sessions on disk
//! (every project's uploads stage under the image store's `tmp/` with an
//! `owner` label), so two uploads racing see each other's bytes; the
//! records are read once per request.

use std::collections::BTreeMap;
use std::sync::Arc;

use nimbus_api::{ApiError, Image, Project, Repository};
use nimbus_image::{ImageStore, ImportedImage, OpenUpload};

use crate::domain::image_usage::{self, ImageUsage, UploadTally};
use crate::error::{ApiResult, ServerError};
use crate::repo::MAX_PAGE;
use crate::state::AppState;

/// The project's `image_bytes` limit; `None` when unlimited.
pub async fn limit(state: &AppState, project: &str) -> ApiResult<Option<u64>> {
    let p: Project = state.repo.get(None, project).await?;
    Ok(p.spec.quota.image_bytes)
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, nimbus_image::ImageError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("{what}: task failed: {e}")))?
        .map_err(|e| ServerError(ApiError::internal(format!("{what}: {e}"))))
}

/// Bytes of the distinct blobs the project's images (and `extra`, an
/// image about to be recorded) and its repositories name.
pub async fn stored_bytes(
    state: &AppState,
    project: &str,
    extra: Option<&ImportedImage>,
) -> ApiResult<u64> {
    let mut images: Vec<ImportedImage> = state
        .repo
        .list_every::<Image>(Some(project), MAX_PAGE)
        .await?
        .iter()
        .map(|i| ImportedImage::from_api(&i.status))
        .collect();
    images.extend(extra.cloned());
    let repositories = state
        .repo
        .list_every::<Repository>(Some(project), MAX_PAGE)
        .await?;
    let store = state.images.clone();
    let of_images = blocking("reading the sizes of a project's image blobs", move || {
        store.blobs_held_by(&images)
    })
    .await?;
    let manifests: Vec<BTreeMap<String, u64>> = repositories
        .iter()
        .map(|r| {
            r.status
                .manifests
                .iter()
                .map(|(d, m)| (d.clone(), m.size_bytes))
                .collect()
        })
        .collect();
    let lists = std::iter::once(&of_images)
        .chain(repositories.iter().map(|r| &r.status.blobs))
        .chain(manifests.iter());
    Ok(image_usage::distinct_blob_bytes(lists))
}

async fn open_uploads(store: Arc<ImageStore>) -> ApiResult<Vec<OpenUpload>> {
    blocking("listing open registry uploads", move || {
        store.open_uploads()
    })
    .await
}

fn observe(tally: &mut UploadTally, project: &str, open: &[OpenUpload]) -> u64 {
    tally.observe(
        project,
        open.iter()
            .map(|u| (u.id.as_str(), u.owner.as_str(), u.bytes)),
    )
}

/// What the project holds now. Sessions are read before the records, so
/// one closing in between counts twice rather than not at all.
async fn usage_with_tally(state: &AppState, project: &str) -> ApiResult<(ImageUsage, UploadTally)> {
    let mut tally = UploadTally::default();
    let uploading_bytes = observe(
        &mut tally,
        project,
        &open_uploads(state.images.clone()).await?,
    );
    let stored_bytes = stored_bytes(state, project, None).await?;
    let usage = ImageUsage {
        stored_bytes,
        uploading_bytes,
    };
    Ok((usage, tally))
}

/// What the project holds now (for `usage` and the quota table).
pub async fn usage(state: &AppState, project: &str) -> ApiResult<ImageUsage> {
    Ok(usage_with_tally(state, project).await?.0)
}

/// The quota check of one upload request, asked before each piece is
/// written (see `nimbus_image::UploadBudget`).
pub struct UploadGuard {
    project: String,
    limit: u64,
    stored_bytes: u64,
    tally: UploadTally,
    store: Arc<ImageStore>,
}

impl UploadGuard {
    /// `Err(message)` when `incoming` more bytes would take the project
    /// past its limit, counting every open session as it is on disk now.
    pub fn admit(&mut self, incoming: u64) -> Result<(), String> {
        let open = self
            .store
            .open_uploads()
            .map_err(|e| format!("the project's image quota could not be checked: {e}"))?;
        let uploading = observe(&mut self.tally, &self.project, &open);
        let used = self.stored_bytes.saturating_add(uploading);
        image_usage::check(&self.project, Some(self.limit), used, incoming)
            .map_err(|e| e.to_string())
    }
}

/// The guard of an upload to `project`; `None` when it has no limit.
pub async fn upload_guard(state: &AppState, project: &str) -> ApiResult<Option<UploadGuard>> {
    let Some(limit) = limit(state, project).await? else {
        return Ok(None);
    };
    let (usage, tally) = usage_with_tally(state, project).await?;
    Ok(Some(UploadGuard {
        project: project.to_string(),
        limit,
        stored_bytes: usage.stored_bytes,
        tally,
        store: state.images.clone(),
    }))
}

/// An upload's budget from an optional guard (no guard: unlimited).
pub fn budget(guard: &mut Option<UploadGuard>) -> impl FnMut(u64) -> Result<(), String> + '_ {
    move |incoming| guard.as_mut().map_or(Ok(()), |g| g.admit(incoming))
}

/// The image quota of one import: the archive's bytes count as they
/// arrive (they are staged on the server's disk), then the imported
/// image's blobs the project did not hold yet.
pub struct ImportQuota {
    project: String,
    limit: Option<u64>,
    before: ImageUsage,
}

impl ImportQuota {
    pub async fn read(state: &AppState, project: &str) -> ApiResult<ImportQuota> {
        let limit = limit(state, project).await?;
        let before = match limit {
            Some(_) => usage(state, project).await?,
            None => ImageUsage::default(),
        };
        Ok(ImportQuota {
            project: project.to_string(),
            limit,
            before,
        })
    }

    /// Refuses once `received` archive bytes exceed what the quota has left.
    pub fn admit_received(&self, received: u64) -> Result<(), image_usage::ImageQuotaError> {
        image_usage::check(&self.project, self.limit, self.before.total(), received)
    }

    /// Refuses `image` (imported, not recorded yet) if the blobs it adds
    /// to what the project holds do not fit.
    pub async fn admit_imported(&self, state: &AppState, image: &ImportedImage) -> ApiResult<()> {
        if self.limit.is_none() {
            return Ok(());
        }
        let after = stored_bytes(state, &self.project, Some(image)).await?;
        let more = after.saturating_sub(self.before.stored_bytes);
        image_usage::check(&self.project, self.limit, self.before.total(), more)?;
        Ok(())
    }
}
