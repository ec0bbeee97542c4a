//! Images: imported from a root-filesystem tarball or an OCI archive
//! uploaded as the request body, stored content-addressed.

use std::io::Read;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use futures::StreamExt;
use nimbus_api::{
    validate_name, ApiError, ErrorCode, Image, ImageSpec, Instance, ListOptions, Metadata,
    ResourceList, Role, WatchEvent,
};
use nimbus_image::ImportedImage;

use super::params::{ImagePath, ProjectPath};
use super::St;
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};

#[utoipa::path(get, path = "/v1/projects/{project}/images", operation_id = "list_images", params(ProjectPath, ListOptions),
    responses((status = 200, description = "A page of the project's images; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<Image> = "application/json"), (WatchEvent<Image> = "application/x-ndjson")))))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    Query(opts): Query<ListOptions>,
    headers: axum::http::HeaderMap,
) -> ApiResult<axum::response::Response> {
    super::watch::list_in_project::<Image>(&state, caller, project, &opts, &headers).await
}

#[utoipa::path(get, path = "/v1/projects/{project}/images/{name}", operation_id = "get_image", params(ImagePath),
    responses((status = 200, body = Image, description = "The image")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Image>> {
    auth::require_host_or_role(&state.repo, &caller, &project, Role::Reader).await?;
    let mut image: Image = state.repo.get(Some(&project), &name).await?;
    if let Some(scan) = crate::vulnscan::stored_scan(&state, &project, &image).await? {
        image.status.vulnerabilities = Some((&scan.status).into());
    }
    Ok(Json(image))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Name of the new image.
    pub name: String,
    /// Where it came from (informational).
    #[serde(default)]
    pub source: String,
    /// `archive` (default: rootfs tarball or OCI archive), `disk` (qcow2 or
    /// raw VM disk) or `kernel` (ELF kernel, optionally followed by an initrd).
    #[serde(default)]
    pub kind: Option<String>,
    /// For `kind=disk`: the format the file must have (`qcow2` or `raw`).
    #[serde(default)]
    pub format: Option<String>,
    /// For `kind=kernel`: how many leading bytes of the body are the kernel;
    /// the rest is the initrd.
    #[serde(default)]
    pub kernel_bytes: Option<u64>,
}

/// Reads the uploaded body on the blocking side of a channel.
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    current: bytes::Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>) -> Self {
        ChannelReader {
            rx,
            current: bytes::Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// How much of a refused upload is still read (and discarded) before the
/// answer is sent.
pub(crate) const REFUSED_UPLOAD_DRAIN_BYTES: usize = 64 << 20;

/// Reads and discards up to `limit` more bytes of a request body.
pub(crate) async fn drain_rest<S, E>(stream: &mut S, limit: usize)
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    let mut read = 0usize;
    while read < limit {
        match stream.next().await {
            Some(Ok(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
}

#[utoipa::path(post, path = "/v1/projects/{project}/images", operation_id = "import_image", params(ProjectPath, ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "A root-filesystem tarball (plain, gzip or zstd) or an OCI image archive; with `kind=disk` a qcow2 or raw disk; with `kind=kernel` an ELF kernel, optionally followed by an initrd. Capped by the server's image size limit (413 past it)"),
    responses((status = 201, body = Image, description = "Imported"),
        (status = 409, description = "An image of that name already exists in the project, or the project's image quota (`image_bytes`) does not admit it"),
        (status = 422, description = "The archive, disk or kernel was rejected")))]
pub async fn import(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Image>)> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    validate_name("image", &q.name).map_err(ApiError::invalid)?;
    if state
        .repo
        .try_get::<Image>(Some(&project), &q.name)
        .await?
        .is_some()
    {
        return Err(ServerError(ApiError::already_exists(format!(
            "image {:?} already exists in project {project:?}; remove it or pick another name",
            q.name
        ))));
    }
    enum Kind {
        Archive,
        Disk(Option<nimbus_image::DiskFormat>),
        Kernel(u64),
    }
    let kind = match q.kind.as_deref().unwrap_or("archive") {
        "archive" => Kind::Archive,
        "disk" => Kind::Disk(match q.format.as_deref() {
            None | Some("") => None,
            Some(f) => Some(nimbus_image::DiskFormat::parse(f).ok_or_else(|| {
                ApiError::invalid(format!("disk format {f:?} is not qcow2 or raw"))
            })?),
        }),
        "kernel" => Kind::Kernel(q.kernel_bytes.ok_or_else(|| {
            ApiError::invalid(
                "a kernel import needs kernel_bytes: the length of the kernel at the start of the body",
            )
        })?),
        other => {
            return Err(ServerError(ApiError::invalid(format!(
                "image kind {other:?} is not archive, disk or kernel"
            ))))
        }
    };
    let mut quota = crate::image_quota::ImportQuota::read(&state, &project).await?;
    let importing = state.image_lock.read().await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let images = state.images.clone();
    let display_name = q.name.clone();
    let importer = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader::new(rx);
        match kind {
            Kind::Archive => images.import(reader, &mut |_| {}),
            Kind::Disk(format) => images.import_disk(reader, &display_name, format),
            Kind::Kernel(bytes) => images.import_kernel(reader, &display_name, bytes),
        }
    });
    let mut stream = body.into_data_stream();
    let mut refused = None;
    while let Some(chunk) = stream.next().await {
        if let Ok(bytes) = &chunk {
            if let Err(e) = quota.admit_received(bytes.len() as u64).await {
                let _ = tx.send(Err(e.0.message.clone())).await;
                refused = Some(e);
                drain_rest(&mut stream, REFUSED_UPLOAD_DRAIN_BYTES).await;
                break;
            }
        }
        let item = chunk.map_err(|e| {
            let msg = e.to_string();
            if msg.contains("length limit") {
                format!(
                    "the archive is larger than the server's limit of {} bytes",
                    state.config.max_image_bytes
                )
            } else {
                format!("upload interrupted: {msg}")
            }
        });
        let failed = item.is_err();
        if failed {
            let _ = tx.send(item).await;
            break;
        }
        if tx.send(item).await.is_err() {
            // The importer stopped early (a bad archive, a full disk).
            // Read a little more of what the client is still sending, so
            // a client that writes its whole body before reading gets the
            // answer instead of a reset connection.
            drain_rest(&mut stream, REFUSED_UPLOAD_DRAIN_BYTES).await;
            break;
        }
    }
    drop(tx);
    let outcome = importer
        .await
        .map_err(|e| ApiError::internal(format!("image import task failed: {e}")))?;
    if let Some(e) = refused {
        return Err(e);
    }
    let imported = outcome.map_err(|e| {
            if e.is_disk_full() {
                tracing::error!(error = %e, "the image store's disk is full");
                ApiError::new(
                    ErrorCode::InsufficientStorage,
                    format!(
                        "image {:?} was not imported: no space left on the disk holding {}; nothing was kept. Free space on that filesystem (remove unused images with `nimbus image rm`, or delete other files there) and retry",
                        q.name,
                        state.config.images_dir().display()
                    ),
                )
            } else {
                ApiError::invalid(format!("image {:?} was not imported: {e}", q.name))
            }
        })?;
    if let Err(e) = quota.admit_imported(&state, &imported).await {
        // Its blobs are stored but nothing names them: collect them.
        drop(importing);
        collect_after_refusal(&state).await;
        return Err(e);
    }
    let mut metadata = Metadata::new(&q.name, Some(&project));
    metadata
        .labels
        .insert("nimbus.io/format".into(), imported.to_api().format);
    let image = state
        .repo
        .create_with(
            Image {
                metadata,
                spec: ImageSpec { source: q.source },
                status: imported.to_api(),
            },
            crate::usage::image_created,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(image)))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/images/{name}", operation_id = "delete_image", params(ImagePath),
    responses((status = 204, description = "Deleted"), (status = 409, description = "An instance still uses the image")))]
pub async fn delete(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let image: Image = state.repo.get(Some(&project), &name).await?;
    let users = state
        .repo
        .list::<Instance>(Some(&project), &ListOptions::default(), |i| {
            i.spec.image == name
                || i.spec.vm.as_ref().and_then(|v| v.kernel_image.as_deref()) == Some(&name)
        })
        .await?;
    if let Some(i) = users.items.first() {
        return Err(ServerError(ApiError::conflict(format!(
            "image {name:?} is used by instance {:?}; remove the instance first",
            i.metadata.name
        ))));
    }
    state
        .repo
        .delete_with::<Image>(
            Some(&project),
            &name,
            image.metadata.revision,
            crate::usage::image_deleted(&image)?,
        )
        .await?;
    if let Err(e) =
        crate::vulnscan::forget_scan_if_unused(&state, &project, &image.status.digest).await
    {
        tracing::warn!(error = %e.0, image = %name, "the image's scan record was not removed");
    }
    if let Err(e) = super::registry::records::forget_tag_of(&state, &image).await {
        tracing::warn!(image = %name, %project, error = %e.message, "the registry tag of a removed image stays");
    }
    if let Err(e) = collect_garbage(
        &state.repo,
        state.images.clone(),
        &state.image_lock,
        crate::repo::MAX_PAGE,
    )
    .await
    {
        tracing::warn!(error = %e.0, "image garbage collection failed; it will run again on the next delete");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Collects what a refused import stored; a failure only postpones that.
async fn collect_after_refusal(state: &crate::state::AppState) {
    let images = state.images.clone();
    let collected = collect_garbage(
        &state.repo,
        images,
        &state.image_lock,
        crate::repo::MAX_PAGE,
    );
    if let Err(e) = collected.await {
        tracing::warn!(error = %e.0, "image garbage collection after a refused import failed; it runs again on the next delete");
    }
}

/// Removes the blobs and layers no image of any project and no registry
/// repository references.
///
/// The keep-list is read under the exclusive image lock: an import holds
/// the lock shared until its image record is stored, so every import has
/// either finished (and is listed) or not begun writing. It is read page by
/// page (`page_size` images each) to the end, so no project's images fall
/// off a page boundary.
pub(crate) async fn collect_garbage(
    repo: &crate::repo::Repo,
    images: std::sync::Arc<nimbus_image::ImageStore>,
    image_lock: &tokio::sync::RwLock<()>,
    page_size: usize,
) -> ApiResult<nimbus_image::GcReport> {
    let _collecting = image_lock.write().await;
    let keep: Vec<ImportedImage> = repo
        .list_every::<Image>(None, page_size)
        .await?
        .iter()
        .map(|i| ImportedImage::from_api(&i.status))
        .collect();
    // Pushed blobs and manifests no image uses (yet) stay while a
    // repository names them.
    let pushed = super::registry::records::kept_digests(repo).await?;
    tokio::task::spawn_blocking(move || images.gc_keeping(&keep, &pushed))
        .await
        .map_err(|e| ApiError::internal(format!("image garbage collection task failed: {e}")))?
        .map_err(|e| ServerError(ApiError::internal(format!("image garbage collection: {e}"))))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use nimbus_api::{Image, ImageSpec, Metadata};
    use nimbus_image::{ImageStore, ImportedImage, Limits};
    use nimbus_store::SqliteStore;

    use super::collect_garbage;
    use crate::repo::{Repo, MAX_PAGE};

    use nimbus_image::testing::one_file_rootfs_tar as rootfs_tar;

    struct Fixture {
        _dir: tempfile::TempDir,
        repo: Repo,
        images: Arc<ImageStore>,
        lock: tokio::sync::RwLock<()>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("temp dir");
            let images = Arc::new(
                ImageStore::open(&dir.path().join("images"), Limits::default())
                    .expect("image store"),
            );
            let store = SqliteStore::open_in_memory().expect("store");
            Fixture {
                _dir: dir,
                repo: Repo::new(Arc::new(store)),
                images,
                lock: tokio::sync::RwLock::new(()),
            }
        }

        fn import(&self, content: &str) -> ImportedImage {
            self.images
                .import(std::io::Cursor::new(rootfs_tar(content)), &mut |_| {})
                .expect("import")
        }

        async fn record(&self, project: &str, name: &str, image: &ImportedImage) {
            self.repo
                .create(Image {
                    metadata: Metadata::new(name, Some(project)),
                    spec: ImageSpec::default(),
                    status: image.to_api(),
                })
                .await
                .expect("image record");
        }

        /// Whether the image's layer blobs and unpacked layers are all there.
        fn intact(&self, image: &ImportedImage) -> bool {
            let root = self.images.root();
            image.layers.iter().all(|digest| {
                let hex = digest.trim_start_matches("sha256:");
                root.join("blobs/sha256").join(hex).is_file()
                    && root.join("layers").join(hex).is_dir()
            })
        }
    }

    // More images than one page of the largest list the API serves: the
    // keep-list must not end at the first page. Records share one layer,
    // as real tags of one image do, so making them is cheap.
    #[tokio::test]
    async fn gc_keeps_blobs_of_images_beyond_the_first_page() {
        let f = Fixture::new();
        let shared = f.import("shared by many tags");
        let other = f.import("another project's image");
        for i in 0..MAX_PAGE + 2 {
            f.record("aaa", &format!("tag-{i:05}"), &shared).await;
        }
        f.record("zzz", "web", &other).await;
        f.repo
            .delete::<Image>(Some("aaa"), "tag-00000", None)
            .await
            .expect("delete one record");
        let report = collect_garbage(&f.repo, f.images.clone(), &f.lock, MAX_PAGE)
            .await
            .expect("gc");
        assert!(f.intact(&shared), "{report:?}");
        assert!(
            f.intact(&other),
            "project zzz's image lost its blobs: {report:?}"
        );
    }

    // The same with a small page, and an image that no record keeps.
    #[tokio::test]
    async fn gc_reads_every_page_and_collects_only_unreferenced_blobs() {
        let f = Fixture::new();
        let kept: Vec<ImportedImage> = (0..7).map(|i| f.import(&format!("kept {i}"))).collect();
        let doomed = f.import("doomed");
        for (i, image) in kept.iter().enumerate() {
            f.record(&format!("p{i}"), "img", image).await;
        }
        let report = collect_garbage(&f.repo, f.images.clone(), &f.lock, 2)
            .await
            .expect("gc");
        for image in &kept {
            assert!(f.intact(image), "{report:?}");
        }
        assert!(
            !f.intact(&doomed),
            "an unreferenced image stays: {report:?}"
        );
    }

    // An import whose record is stored while a delete's collection waits:
    // the collection must see the record. The import holds the lock shared
    // until its record is stored, as the import handler does.
    #[tokio::test]
    async fn an_import_racing_a_delete_keeps_its_blobs() {
        let f = Arc::new(Fixture::new());
        let existing = f.import("existing");
        f.record("ops", "base", &existing).await;
        let importing = f.lock.read().await;
        let arriving = f.import("arriving while a delete collects");
        let gc = {
            let f = f.clone();
            tokio::spawn(async move {
                collect_garbage(&f.repo, f.images.clone(), &f.lock, MAX_PAGE).await
            })
        };
        // Wait until the collection is queued for the lock behind the
        // import (tokio's lock is fair: a queued writer blocks new readers).
        let deadline = Instant::now() + Duration::from_secs(10);
        while f.lock.try_read().is_ok() {
            assert!(
                Instant::now() < deadline,
                "the collection never asked for the lock"
            );
            tokio::task::yield_now().await;
        }
        f.record("dev", "fresh", &arriving).await;
        drop(importing);
        let report = gc.await.expect("gc task").expect("gc");
        assert!(
            f.intact(&arriving),
            "the import's blobs were collected: {report:?}"
        );
        assert!(f.intact(&existing), "{report:?}");
    }
}
