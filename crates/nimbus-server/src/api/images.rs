//! Images: imported from a root-filesystem tarball or an OCI archive
//! uploaded as the request body, stored content-addressed.

use std::io::Read;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use futures::StreamExt;
use nimbus_api::{
    validate_name, ApiError, Image, ImageSpec, Instance, ListOptions, Metadata, ResourceList, Role,
};
use nimbus_image::ImportedImage;

use super::St;
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};

#[utoipa::path(get, path = "/v1/projects/{project}/images", params(ListOptions), responses((status = 200, body = ResourceList<Image>)))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    Query(opts): Query<ListOptions>,
    headers: axum::http::HeaderMap,
) -> ApiResult<axum::response::Response> {
    super::watch::list_in_project::<Image>(&state, caller, project, &opts, &headers).await
}

#[utoipa::path(get, path = "/v1/projects/{project}/images/{name}", responses((status = 200, body = Image)))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Image>> {
    auth::require_host_or_role(&state.repo, &caller, &project, Role::Reader).await?;
    Ok(Json(state.repo.get(Some(&project), &name).await?))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
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
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    current: bytes::Bytes,
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

#[utoipa::path(post, path = "/v1/projects/{project}/images", params(ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "A root-filesystem tarball (plain, gzip or zstd) or an OCI image archive"),
    responses((status = 201, body = Image), (status = 422, description = "rejected archive")))]
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
    let _importing = state.image_lock.read().await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let images = state.images.clone();
    let display_name = q.name.clone();
    let importer = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            current: bytes::Bytes::new(),
        };
        match kind {
            Kind::Archive => images.import(reader, &mut |_| {}),
            Kind::Disk(format) => images.import_disk(reader, &display_name, format),
            Kind::Kernel(bytes) => images.import_kernel(reader, &display_name, bytes),
        }
    });
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
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
        if tx.send(item).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    let imported = importer
        .await
        .map_err(|e| ApiError::internal(format!("image import task failed: {e}")))?
        .map_err(|e| ApiError::invalid(format!("image {:?} was not imported: {e}", q.name)))?;
    let mut metadata = Metadata::new(&q.name, Some(&project));
    metadata
        .labels
        .insert("nimbus.io/format".into(), imported.to_api().format);
    let image = state
        .repo
        .create(Image {
            metadata,
            spec: ImageSpec { source: q.source },
            status: imported.to_api(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(image)))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/images/{name}",
    responses((status = 204), (status = 409, description = "in use by an instance")))]
pub async fn delete(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let _: Image = state.repo.get(Some(&project), &name).await?;
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
        .delete::<Image>(Some(&project), &name, None)
        .await?;
    let remaining = state
        .repo
        .list::<Image>(
            None,
            &ListOptions {
                limit: Some(5000),
                ..Default::default()
            },
            |_| true,
        )
        .await?;
    let keep: Vec<ImportedImage> = remaining
        .items
        .iter()
        .map(|i| ImportedImage::from_api(&i.status))
        .collect();
    let images = state.images.clone();
    let _collecting = state.image_lock.write().await;
    let gc = tokio::task::spawn_blocking(move || images.gc(&keep)).await;
    if let Ok(Err(e)) = gc {
        tracing::warn!(error = %e, "image garbage collection failed; it will run again on the next delete");
    }
    Ok(StatusCode::NO_CONTENT)
}
