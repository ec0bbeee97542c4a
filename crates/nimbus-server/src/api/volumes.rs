//! Volumes: a project's block volumes and their snapshots. The server only
//! records what the user wants and what the volume's host reports; the
//! agent of that host makes the data real (`nimbus_agent::volume`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use nimbus_api::{
    ApiError, CreateRequest, CreateSnapshot, Host, HostPhase, ListOptions, Metadata, Project,
    ResizeVolume, ResourceList, Role, Volume, VolumeSpec, VolumeStatus, WatchEvent,
};

use super::body::JsonBody;
use super::params::{ProjectPath, SnapshotPath, VolumePath};
use super::St;
use crate::auth::{self, Caller};
use crate::domain::volumes as domain;
use crate::error::{ApiResult, ServerError};
use crate::repo::{Repo, MAX_PAGE};

/// Quota checks read the project's volumes, then write one: changes that
/// add bytes or volumes go one at a time, so two never both fit in the
/// room left for one. The server is the store's only writer.
static QUOTA_CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Attachments are derived from instance records (an instance holds the
/// volumes its spec names until its record is gone), so they hold across
/// restarts. Checking them and writing the instance (or marking the
/// volume deleted) go one at a time, so two creates never both take one
/// read-write volume.
pub(crate) static ATTACH_CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Check the volumes a new instance names (they exist in `project`, are
/// available, on one host, and no other instance holds them in a
/// conflicting mode). The returned guard must be held until the instance
/// is stored.
pub(crate) async fn check_new_attachments(
    repo: &Repo,
    project: &str,
    spec: &nimbus_api::InstanceSpec,
) -> ApiResult<Option<tokio::sync::MutexGuard<'static, ()>>> {
    if spec.volumes.is_empty() {
        return Ok(None);
    }
    crate::domain::attachments::check_kind(spec.kind, &spec.volumes)?;
    let guard = ATTACH_CHANGES.lock().await;
    let volumes = repo.list_every::<Volume>(Some(project), MAX_PAGE).await?;
    let instances = repo
        .list_every::<nimbus_api::Instance>(Some(project), MAX_PAGE)
        .await?;
    domain::check_attachments(project, &spec.volumes, &volumes, &instances)?;
    Ok(Some(guard))
}

/// The host an instance's volumes pin it to: `None` when it names no
/// volumes, or when they cannot be read (the agent then refuses and the
/// instance fails with the reason).
pub(crate) async fn volumes_host(repo: &Repo, instance: &nimbus_api::Instance) -> Option<String> {
    if instance.spec.volumes.is_empty() {
        return None;
    }
    let project = instance.metadata.project.as_deref();
    let volumes = repo.list_every::<Volume>(project, MAX_PAGE).await.ok()?;
    domain::volume_host(instance, &volumes)
}

#[utoipa::path(get, path = "/v1/projects/{project}/volumes", operation_id = "list_volumes", params(ProjectPath, ListOptions), tag = "volumes",
    responses((status = 200, description = "A page of the project's volumes; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<Volume> = "application/json"), (WatchEvent<Volume> = "application/x-ndjson")))))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    Query(opts): Query<ListOptions>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    super::watch::list_in_project::<Volume>(&state, caller, project, &opts, &headers).await
}

/// Volumes of every project: for system administrators and host agents.
#[utoipa::path(get, path = "/v1/volumes", operation_id = "list_all_volumes", params(ListOptions), tag = "volumes",
    responses((status = 200, description = "A page of volumes of every project; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<Volume> = "application/json"), (WatchEvent<Volume> = "application/x-ndjson")))))]
pub async fn list_all(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Query(opts): Query<ListOptions>,
) -> ApiResult<Response> {
    super::networks::list_every_project::<Volume>(&state, &caller, &opts).await
}

#[utoipa::path(get, path = "/v1/projects/{project}/volumes/{name}", operation_id = "get_volume", params(VolumePath), tag = "volumes",
    responses((status = 200, body = Volume, description = "The volume, its snapshots and what its host reports")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Volume>> {
    auth::require_host_or_role(&state.repo, &caller, &project, Role::Reader).await?;
    Ok(Json(state.repo.get(Some(&project), &name).await?))
}

/// The host a new volume goes to: the first ready host by name.
async fn default_host(repo: &Repo) -> ApiResult<String> {
    let hosts = repo.list_every::<Host>(None, MAX_PAGE).await?;
    let mut ready: Vec<String> = hosts
        .into_iter()
        .filter(|h| h.status.phase == HostPhase::Ready)
        .map(|h| h.metadata.name)
        .collect();
    ready.sort();
    ready.into_iter().next().ok_or_else(|| {
        ServerError(ApiError::unavailable(
            "no host is ready to keep the volume; start one with `nimbus up` (or an agent) and retry",
        ))
    })
}

/// Refuses `new_volumes` more volumes and `new_bytes` more bytes beyond the
/// project's quota, counting its volumes and snapshots as stored now. Call
/// it holding `QUOTA_CHANGES` until the write is made.
async fn check_quota(
    repo: &Repo,
    project: &str,
    new_volumes: usize,
    new_bytes: u64,
) -> ApiResult<()> {
    let p: Project = repo.get(None, project).await?;
    let existing = repo.list_every::<Volume>(Some(project), MAX_PAGE).await?;
    domain::check_quota(project, &p.spec.quota, &existing, new_volumes, new_bytes)?;
    Ok(())
}

#[utoipa::path(post, path = "/v1/projects/{project}/volumes", operation_id = "create_volume", params(ProjectPath), tag = "volumes", request_body = CreateRequest<VolumeSpec>,
    responses((status = 201, body = Volume, description = "Recorded; the host's agent makes it (`status.phase` becomes `available`)"),
        (status = 409, description = "A volume of that name exists, or the project's volume quota is reached")))]
pub async fn create(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    JsonBody(req): JsonBody<CreateRequest<VolumeSpec>>,
) -> ApiResult<(StatusCode, Json<Volume>)> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    domain::validate_volume_name(&req.name)?;
    let source = match &req.spec.from_snapshot {
        Some(text) => {
            let (vol, snap) = domain::parse_source(text)?;
            let v: Volume = state.repo.get(Some(&project), vol).await?;
            Some((v, snap.to_string()))
        }
        None => None,
    };
    let default = match (&req.spec.host, &source) {
        (None, None) => Some(default_host(&state.repo).await?),
        _ => None,
    };
    let spec = domain::new_volume_spec(
        &req.spec,
        source.as_ref().map(|(v, s)| (v, s.as_str())),
        default,
    )?;
    let _one_at_a_time = QUOTA_CHANGES.lock().await;
    check_quota(&state.repo, &project, 1, spec.size_bytes).await?;
    let mut metadata = Metadata::new(&req.name, Some(&project));
    metadata.labels = req.labels;
    let volume = state
        .repo
        .create_with(
            Volume {
                metadata,
                spec,
                status: VolumeStatus::default(),
            },
            crate::usage::volume_created,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(volume)))
}

#[utoipa::path(post, path = "/v1/projects/{project}/volumes/{name}/resize", operation_id = "resize_volume", params(VolumePath), tag = "volumes", request_body = ResizeVolume,
    responses((status = 200, body = Volume, description = "The new size is recorded; the host's agent grows the data, also while an instance holds it: a running container's ext4 is grown online, a running VM sees the larger disk (growing the guest's filesystem is the guest's job)"),
        (status = 400, description = "The size is not larger than the volume's: a volume only grows"),
        (status = 409, description = "The project's volume quota does not admit the growth")))]
pub async fn resize(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<ResizeVolume>,
) -> ApiResult<Json<Volume>> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let _one_at_a_time = QUOTA_CHANGES.lock().await;
    let volume: Volume = state.repo.get(Some(&project), &name).await?;
    let growth = domain::resize_growth(&volume, req.size_bytes)?;
    check_quota(&state.repo, &project, 0, growth).await?;
    let saved = state
        .repo
        .modify_with::<Volume, _>(Some(&project), &name, |v| {
            domain::resize_growth(v, req.size_bytes)?;
            let before = v.clone();
            v.spec.size_bytes = req.size_bytes;
            crate::usage::volume_changed(&before, v)
        })
        .await?;
    Ok(Json(saved))
}

#[utoipa::path(post, path = "/v1/projects/{project}/volumes/{name}/snapshots", operation_id = "create_volume_snapshot", params(VolumePath), tag = "volumes", request_body = CreateSnapshot,
    responses((status = 201, body = Volume, description = "The snapshot is recorded; the host's agent takes it"),
        (status = 409, description = "The project's volume quota does not admit the snapshot")))]
pub async fn create_snapshot(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<CreateSnapshot>,
) -> ApiResult<(StatusCode, Json<Volume>)> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let _one_at_a_time = QUOTA_CHANGES.lock().await;
    let volume: Volume = state.repo.get(Some(&project), &name).await?;
    let snapshot = domain::new_snapshot(&volume, &req.name, chrono::Utc::now())?;
    check_quota(&state.repo, &project, 0, snapshot.size_bytes).await?;
    let saved = state
        .repo
        .modify_with::<Volume, _>(Some(&project), &name, |v| {
            let s = domain::new_snapshot(v, &req.name, snapshot.created_at)?;
            let before = v.clone();
            v.spec.snapshots.push(s);
            crate::usage::volume_changed(&before, v)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(saved)))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/volumes/{name}/snapshots/{snapshot}", operation_id = "delete_volume_snapshot", params(SnapshotPath), tag = "volumes",
    responses((status = 204, description = "The snapshot is removed from the spec; the host's agent deletes it")))]
pub async fn delete_snapshot(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name, snapshot)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    state
        .repo
        .modify_with::<Volume, _>(Some(&project), &name, |v| {
            let before = v.clone();
            v.spec.snapshots.retain(|s| s.name != snapshot);
            if v.spec.snapshots.len() == before.spec.snapshots.len() {
                return Err(ServerError(ApiError::not_found(format!(
                    "volume {name:?} has no snapshot {snapshot:?}; list them with `nimbus volume snapshot list {name}`"
                ))));
            }
            crate::usage::volume_changed(&before, v)
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Marks the volume for deletion; the agent of its host removes the data
/// and then the record goes. A volume no host ever made goes at once.
#[utoipa::path(delete, path = "/v1/projects/{project}/volumes/{name}", operation_id = "delete_volume", params(VolumePath), tag = "volumes",
    responses((status = 202, body = Volume, description = "Marked for deletion: the host's agent removes the data, then the volume is gone"),
        (status = 204, description = "Deleted"),
        (status = 409, description = "An instance has the volume attached: the message names it")))]
pub async fn delete(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let _attachments = ATTACH_CHANGES.lock().await;
    let volume: Volume = state.repo.get(Some(&project), &name).await?;
    let instances = state
        .repo
        .list_every::<nimbus_api::Instance>(Some(&project), MAX_PAGE)
        .await?;
    domain::check_not_attached(&name, &instances)?;
    if volume.spec.host.is_none() {
        state
            .repo
            .delete_with::<Volume>(
                Some(&project),
                &name,
                volume.metadata.revision,
                crate::usage::volume_deleted(&volume)?,
            )
            .await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let saved = state
        .repo
        .modify_with::<Volume, _>(Some(&project), &name, |v| {
            if v.metadata.deletion_requested_at.is_some() {
                return Ok(Vec::new());
            }
            v.metadata.deletion_requested_at = Some(chrono::Utc::now());
            crate::usage::volume_deleted(v)
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(saved)).into_response())
}

/// The agent of the volume's host reports what it made; `finalized` on a
/// deleting volume removes the record.
#[utoipa::path(post, path = "/v1/projects/{project}/volumes/{name}/status", operation_id = "report_volume_status", params(VolumePath), tag = "volumes", request_body = VolumeStatus,
    responses((status = 200, body = Volume, description = "The status is recorded (or, finalized, the volume is gone)"),
        (status = 403, description = "Not the agent of the volume's host")))]
pub async fn report_status(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    JsonBody(status): JsonBody<VolumeStatus>,
) -> ApiResult<Json<Volume>> {
    // Users without a role in the project must not learn what exists there.
    if !caller.is_host_agent() {
        auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    }
    let volume: Volume = state.repo.get(Some(&project), &name).await?;
    if !(caller.system_admin || (caller.host.is_some() && caller.host == volume.spec.host)) {
        return Err(ServerError(ApiError::forbidden(format!(
            "only the agent of host {:?} may report the status of volume {name:?}",
            volume.spec.host.as_deref().unwrap_or("-")
        ))));
    }
    if status.finalized && volume.metadata.deletion_requested_at.is_some() {
        state
            .repo
            .delete::<Volume>(Some(&project), &name, None)
            .await?;
        let mut gone = volume;
        gone.status = status;
        return Ok(Json(gone));
    }
    let saved = state
        .repo
        .modify::<Volume, _>(Some(&project), &name, |v| {
            v.status = VolumeStatus {
                finalized: false,
                ..status.clone()
            };
            Ok(())
        })
        .await?;
    Ok(Json(saved))
}
