//! Instance actions: start, stop, restart, pause and resume asked by
//! users, and the status reports of the agents. What each does to the
//! stored instance is decided in `domain::instances`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use nimbus_api::{ApiError, Instance, InstancePhase, InstanceSpec, Role, StatusUpdate};

use super::{running_vm, shown};
use crate::api::body::JsonBody;
use crate::api::params::InstancePath;
use crate::api::St;
use crate::auth::{self, Caller};
use crate::domain::instances as domain;
use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

async fn change_spec(
    state: &Arc<AppState>,
    caller: &Caller,
    project: &str,
    name: &str,
    change: impl Fn(&mut InstanceSpec),
) -> ApiResult<Json<Instance>> {
    auth::require_role(&state.repo, caller, project, Role::Member).await?;
    let saved = state
        .repo
        .modify::<Instance, _>(Some(project), name, |i| {
            domain::check_not_deleting(i)?;
            change(&mut i.spec);
            Ok(())
        })
        .await?;
    Ok(shown(saved))
}

#[utoipa::path(post, tag = "instances", path = "/v1/projects/{project}/instances/{name}/start", operation_id = "start_instance", params(InstancePath),
    responses((status = 200, body = Instance, description = "Started (or already running): the restart generation moves on")))]
pub async fn start(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Instance>> {
    let current: Instance = {
        auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
        state.repo.get(Some(&project), &name).await?
    };
    if domain::already_running(&current) {
        return Ok(shown(current));
    }
    change_spec(&state, &caller, &project, &name, domain::request_restart).await
}

#[utoipa::path(post, tag = "instances", path = "/v1/projects/{project}/instances/{name}/stop", operation_id = "stop_instance", params(InstancePath),
    responses((status = 200, body = Instance, description = "Asked to stop")))]
pub async fn stop(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Instance>> {
    change_spec(&state, &caller, &project, &name, domain::request_stop).await
}

#[utoipa::path(post, tag = "instances", path = "/v1/projects/{project}/instances/{name}/restart", operation_id = "restart_instance", params(InstancePath),
    responses((status = 200, body = Instance, description = "Asked to restart: the restart generation moves on")))]
pub async fn restart(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Instance>> {
    change_spec(&state, &caller, &project, &name, domain::request_restart).await
}

async fn set_paused(
    state: Arc<AppState>,
    caller: Caller,
    project: String,
    name: String,
    paused: bool,
) -> ApiResult<Json<Instance>> {
    let action = if paused { "pause" } else { "resume" };
    let instance = running_vm(&state, &caller, &project, &name, action).await?;
    domain::check_pause_phase(&instance, paused)?;
    let io = state.host_io_for(&instance, action)?;
    io.set_paused(&instance, paused).await?;
    // The agent reports the new phase; wait briefly so the answer shows it.
    let want = if paused {
        InstancePhase::Paused
    } else {
        InstancePhase::Running
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now: Instance = state.repo.get(Some(&project), &name).await?;
        if now.status.phase == want || tokio::time::Instant::now() > deadline {
            return Ok(shown(now));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[utoipa::path(post, tag = "instances", path = "/v1/projects/{project}/instances/{name}/pause", operation_id = "pause_instance", params(InstancePath),
    responses((status = 200, body = Instance, description = "Paused (a running VM or unikernel)"), (status = 409, description = "The instance is not in the phase this needs"),
        (status = 422, description = "The instance is a container")))]
pub async fn pause(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Instance>> {
    set_paused(state, caller, project, name, true).await
}

#[utoipa::path(post, tag = "instances", path = "/v1/projects/{project}/instances/{name}/resume", operation_id = "resume_instance", params(InstancePath),
    responses((status = 200, body = Instance, description = "Resumed (a paused VM or unikernel)"), (status = 409, description = "The instance is not in the phase this needs"),
        (status = 422, description = "The instance is a container")))]
pub async fn resume(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Instance>> {
    set_paused(state, caller, project, name, false).await
}

/// An agent reports the observed status of an instance on its host.
#[utoipa::path(post, tag = "instances", path = "/v1/projects/{project}/instances/{name}/status", operation_id = "report_instance_status", params(InstancePath), request_body = StatusUpdate,
    responses((status = 200, body = Instance, description = "The instance with the reported status"),
        (status = 204, description = "Finalized and removed"),
        (status = 409, description = "`finalized` was reported for an instance not being deleted")))]
pub async fn report_status(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    JsonBody(update): JsonBody<StatusUpdate>,
) -> ApiResult<Response> {
    // Users without a role in the project must not learn what exists there.
    if !caller.is_host_agent() {
        auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    }
    let current: Instance = state.repo.get(Some(&project), &name).await?;
    let host = current.status.host.as_deref();
    if !(caller.system_admin || (caller.host.is_some() && caller.host.as_deref() == host)) {
        return Err(ServerError(ApiError::forbidden(format!(
            "only the agent of the host running instance {name:?} may report its status"
        ))));
    }
    if update.finalized {
        domain::check_finalize(&current)?;
        finalize(&state.repo, &current).await?;
        // Finalizing removes the instance: audited even from an agent.
        let mut resp = StatusCode::NO_CONTENT.into_response();
        resp.extensions_mut()
            .insert(crate::auth::audit::AuditAgentCall);
        return Ok(resp);
    }
    let saved = crate::events::modify_instance(&state.repo, Some(&project), &name, |i| {
        domain::merge_reported_status(i, update.status.clone(), Utc::now());
        Ok(())
    })
    .await?;
    Ok(shown(saved).into_response())
}

/// Remove an instance whose deletion is done (or can no longer be done by
/// its host), with its addresses, its deletion event and its usage record.
pub async fn finalize(repo: &crate::repo::Repo, instance: &Instance) -> ApiResult<()> {
    let mut deleted = crate::events::instance_deleted(instance)?;
    deleted.extend(crate::usage::instance_deleted(instance)?);
    crate::ipam::delete_with_addresses(repo, instance, None, deleted).await
}
