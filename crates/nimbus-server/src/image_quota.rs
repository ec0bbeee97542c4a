//! A project's image bytes (`nimbus quota set --image-bytes`), read from
//! the store and the image store for `domain::image_usage` to count: used
//! by image import, the registry's blob uploads and `GET .../usage`.
//!
//! An upload's check at every piece re-reads the open sessions on disk
//! (every project's uploads stage under the image store's `tmp/` with an
//! `owner` label) and the imports in progress (`ImportsInFlight`), so two
//! uploads or imports racing see each other's bytes; the records are read
//! once per request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// Archive bytes received by the imports in progress, by import.
#[derive(Debug, Default)]
pub struct ImportsInFlight {
    next: AtomicU64,
    received: Mutex<BTreeMap<u64, (String, u64)>>,
}

impl ImportsInFlight {
    /// Registers an import into `project`; it counts until the ticket drops.
    fn start(self: &Arc<Self>, project: &str) -> ImportTicket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = self.received.lock() {
            map.insert(id, (project.to_string(), 0));
        }
        ImportTicket {
            table: self.clone(),
            id,
        }
    }

    /// The imports as sessions (`import-<n>`, owner `<project>/`) for the tally.
    fn as_sessions(&self) -> Vec<OpenUpload> {
        let Ok(map) = self.received.lock() else {
            return Vec::new();
        };
        map.iter()
            .map(|(id, (project, bytes))| OpenUpload {
                id: format!("import-{id}"),
                owner: format!("{project}/"),
                bytes: *bytes,
            })
            .collect()
    }
}

/// An import in progress; dropped when its request ends.
struct ImportTicket {
    table: Arc<ImportsInFlight>,
    id: u64,
}

impl ImportTicket {
    fn add(&self, bytes: u64) {
        if let Ok(mut map) = self.table.received.lock() {
            if let Some((_, received)) = map.get_mut(&self.id) {
                *received = received.saturating_add(bytes);
            }
        }
    }
}

impl Drop for ImportTicket {
    fn drop(&mut self) {
        if let Ok(mut map) = self.table.received.lock() {
            map.remove(&self.id);
        }
    }
}

/// Every upload session on disk and every import in progress.
fn sessions(
    store: &ImageStore,
    imports: &ImportsInFlight,
) -> Result<Vec<OpenUpload>, nimbus_image::ImageError> {
    let mut open = store.open_uploads()?;
    open.extend(imports.as_sessions());
    Ok(open)
}

async fn open_uploads(state: &AppState) -> ApiResult<Vec<OpenUpload>> {
    let (store, imports) = (state.images.clone(), state.image_imports.clone());
    blocking("listing open uploads and imports", move || {
        sessions(&store, &imports)
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
    let uploading_bytes = observe(&mut tally, project, &open_uploads(state).await?);
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
    /// What the project held when the request began.
    start: ImageUsage,
    tally: UploadTally,
    store: Arc<ImageStore>,
    imports: Arc<ImportsInFlight>,
}

impl UploadGuard {
    /// `Err(message)` when `incoming` more bytes would take the project
    /// past its limit, counting every open session as it is on disk now.
    pub fn admit(&mut self, incoming: u64) -> Result<(), String> {
        let open = sessions(&self.store, &self.imports)
            .map_err(|e| format!("the project's image quota could not be checked: {e}"))?;
        let uploading = observe(&mut self.tally, &self.project, &open);
        let used = self.start.stored_bytes.saturating_add(uploading);
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
        start: usage,
        tally,
        store: state.images.clone(),
        imports: state.image_imports.clone(),
    }))
}

/// An upload's budget from an optional guard (no guard: unlimited).
pub fn budget(guard: &mut Option<UploadGuard>) -> impl FnMut(u64) -> Result<(), String> + '_ {
    move |incoming| guard.as_mut().map_or(Ok(()), |g| g.admit(incoming))
}

/// How many received bytes an import checks at once (as an upload's piece).
const IMPORT_PIECE_BYTES: u64 = 256 * 1024;

/// The image quota of one import: the archive's bytes count as they
/// arrive (they are staged on the server's disk; racing imports and
/// uploads see them through `ImportsInFlight`), then the imported image's
/// blobs the project did not hold yet.
pub struct ImportQuota {
    project: String,
    limit: Option<u64>,
    before: ImageUsage,
    guard: Option<UploadGuard>,
    ticket: ImportTicket,
    unchecked: u64,
}

impl ImportQuota {
    pub async fn read(state: &AppState, project: &str) -> ApiResult<ImportQuota> {
        let guard = upload_guard(state, project).await?;
        let before = guard.as_ref().map(|g| g.start).unwrap_or_default();
        Ok(ImportQuota {
            project: project.to_string(),
            limit: guard.as_ref().map(|g| g.limit),
            before,
            guard,
            ticket: state.image_imports.start(project),
            unchecked: 0,
        })
    }

    /// Counts `bytes` more of the archive; refused (409) once they take
    /// the project past its limit. Checked a piece at a time.
    pub async fn admit_received(&mut self, bytes: u64) -> ApiResult<()> {
        self.unchecked = self.unchecked.saturating_add(bytes);
        if self.unchecked < IMPORT_PIECE_BYTES {
            return Ok(());
        }
        let piece = std::mem::take(&mut self.unchecked);
        if let Some(mut guard) = self.guard.take() {
            let (guard, admitted) = tokio::task::spawn_blocking(move || {
                let admitted = guard.admit(piece);
                (guard, admitted)
            })
            .await
            .map_err(|e| ApiError::internal(format!("image quota check task failed: {e}")))?;
            self.guard = Some(guard);
            admitted.map_err(|message| ServerError(ApiError::conflict(message)))?;
        }
        self.ticket.add(piece);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_in_progress_count_for_their_project_until_they_end() {
        let table = Arc::new(ImportsInFlight::default());
        let ops = table.start("ops");
        let dev = table.start("dev");
        ops.add(300);
        ops.add(200);
        dev.add(7);
        let mut tally = UploadTally::default();
        assert_eq!(observe(&mut tally, "ops", &table.as_sessions()), 500);
        drop(dev);
        assert_eq!(table.as_sessions().len(), 1);
        // An import that ended keeps counting for a request that saw it:
        // its blobs are stored by now, which that request's records miss.
        drop(ops);
        assert!(table.as_sessions().is_empty());
        assert_eq!(observe(&mut tally, "ops", &table.as_sessions()), 500);
        assert_eq!(
            observe(&mut UploadTally::default(), "ops", &table.as_sessions()),
            0
        );
    }
}
