//! Attaching a volume to an existing instance and detaching it. The
//! server only changes the instance's `spec.volumes` (the rules are in
//! `domain::attachments`); the agent of the instance's host makes it real:
//! a hot-plugged disk for a running VM, a mount at the next start for a
//! stopped container.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use nimbus_api::{AttachVolume, DetachVolume, Instance, Role, Volume, VolumeMount};

use super::body::JsonBody;
use super::params::VolumePath;
use super::volumes::ATTACH_CHANGES;
use super::St;
use crate::auth::{self, Caller};
use crate::domain::attachments;
use crate::error::ApiResult;
use crate::repo::MAX_PAGE;

#[utoipa::path(post, path = "/v1/projects/{project}/volumes/{name}/attach", operation_id = "attach_volume", params(VolumePath), tag = "volumes", request_body = AttachVolume,
    responses((status = 200, body = Instance, description = "The instance now names the volume: a running VM gets it hot-plugged, a running container gets it mounted at the path (see `status.volumes`), a stopped instance at its next start"),
        (status = 404, description = "No such volume or instance in the project (also for a project the token has no role in)"),
        (status = 409, description = "Another instance holds the volume, the volume is on another host or not available, or the instance is being deleted")))]
pub async fn attach(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<AttachVolume>,
) -> ApiResult<Json<Instance>> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let _one_at_a_time = ATTACH_CHANGES.lock().await;
    let _exists: Volume = state.repo.get(Some(&project), &name).await?;
    let volumes = state
        .repo
        .list_every::<Volume>(Some(&project), MAX_PAGE)
        .await?;
    let instances = state
        .repo
        .list_every::<Instance>(Some(&project), MAX_PAGE)
        .await?;
    let mount = VolumeMount {
        volume: name,
        path: req.path.clone().unwrap_or_default(),
        read_only: req.read_only,
    };
    let saved = state
        .repo
        .modify::<Instance, _>(Some(&project), &req.instance, |i| {
            i.spec.volumes = attachments::attach(&project, i, mount.clone(), &volumes, &instances)?;
            Ok(())
        })
        .await?;
    Ok(super::instances::shown(saved))
}

#[utoipa::path(post, path = "/v1/projects/{project}/volumes/{name}/detach", operation_id = "detach_volume", params(VolumePath), tag = "volumes", request_body = DetachVolume,
    responses((status = 200, body = Instance, description = "The instance no longer names the volume: a running VM's disk is unplugged, a running container's mount is removed after a sync (see `status.volumes`; a mount still busy is detached lazily and reported so)"),
        (status = 404, description = "No such volume or instance in the project (also for a project the token has no role in)"),
        (status = 409, description = "The volume is not attached to the instance, or the instance is being deleted")))]
pub async fn detach(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<DetachVolume>,
) -> ApiResult<Json<Instance>> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let _one_at_a_time = ATTACH_CHANGES.lock().await;
    let _exists: Volume = state.repo.get(Some(&project), &name).await?;
    let saved = state
        .repo
        .modify::<Instance, _>(Some(&project), &req.instance, |i| {
            i.spec.volumes = attachments::detach(i, &name)?;
            Ok(())
        })
        .await?;
    Ok(super::instances::shown(saved))
}
