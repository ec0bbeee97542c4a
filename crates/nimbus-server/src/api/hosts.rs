//! Hosts: registered by their agents, which then report heartbeats.

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use chrono::Utc;
use nimbus_api::{
    validate_name, ApiError, BuildVersion, Host, HostPhase, HostStatus, Instance, ListOptions,
    Metadata, RegisterHost, ResourceList, WatchEvent,
};

use super::body::JsonBody;
use super::params::HostPath;
use super::St;
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};

fn require_operator(caller: &Caller) -> ApiResult<()> {
    if caller.system_admin || caller.is_host_agent() {
        Ok(())
    } else {
        Err(ServerError(ApiError::forbidden(
            "hosts are visible to system administrators only",
        )))
    }
}

pub(super) fn require_own_host(caller: &Caller, host: &str) -> ApiResult<()> {
    if caller.system_admin || caller.host.as_deref() == Some(host) {
        Ok(())
    } else {
        Err(ServerError(ApiError::forbidden(format!(
            "this token may not report for host {host:?}"
        ))))
    }
}

/// An agent more than one protocol level away from this server is refused
/// (registration and heartbeats), saying which side to upgrade; nothing
/// is written.
fn check_agent_version(host: &str, status: &HostStatus) -> ApiResult<()> {
    let agent = BuildVersion {
        release: status.agent_version.clone(),
        protocol: status.agent_protocol,
    };
    nimbus_api::version::check_agent_skew(host, &agent, &BuildVersion::current())
        .map_err(|e| ServerError(ApiError::invalid(e.to_string())))
}

#[utoipa::path(get, path = "/v1/hosts", operation_id = "list_hosts", params(ListOptions),
    responses((status = 200, description = "A page of hosts (system administrators and host agents); with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<Host> = "application/json"), (WatchEvent<Host> = "application/x-ndjson")))))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Query(opts): Query<ListOptions>,
    headers: axum::http::HeaderMap,
) -> ApiResult<axum::response::Response> {
    require_operator(&caller)?;
    super::watch::list_or_watch_all::<Host>(
        &state,
        None,
        &opts,
        super::watch::accepts_gzip(&headers),
        super::watch::Guard::admin_or_host(caller),
    )
    .await
}

#[utoipa::path(get, path = "/v1/hosts/{host}", operation_id = "get_host", params(HostPath),
    responses((status = 200, body = Host, description = "The host")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(host): Path<String>,
) -> ApiResult<Json<Host>> {
    require_operator(&caller)?;
    Ok(Json(state.repo.get(None, &host).await?))
}

#[utoipa::path(post, path = "/v1/hosts", operation_id = "register_host", request_body = RegisterHost,
    responses((status = 200, body = Host, description = "Registered (or registered again); the host is ready"),
        (status = 422, description = "The agent's protocol level is more than one away from the server's; the message says which to upgrade first")))]
pub async fn register(
    State(state): St,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<RegisterHost>,
) -> ApiResult<Json<Host>> {
    validate_name("host", &req.name).map_err(ApiError::invalid)?;
    require_own_host(&caller, &req.name)?;
    check_agent_version(&req.name, &req.status)?;
    let mut status = req.status;
    status.phase = HostPhase::Ready;
    status.last_heartbeat = Some(Utc::now());
    let existing: Option<Host> = state.repo.try_get(None, &req.name).await?;
    let host = match existing {
        Some(mut h) => {
            h.metadata.labels = req.labels;
            h.spec.address = req.spec.address;
            h.status = status;
            state.repo.update(h).await?
        }
        None => {
            let mut metadata = Metadata::new(&req.name, None);
            metadata.labels = req.labels;
            state
                .repo
                .create(Host {
                    metadata,
                    spec: req.spec,
                    status,
                })
                .await?
        }
    };
    Ok(Json(host))
}

#[utoipa::path(post, path = "/v1/hosts/{host}/status", operation_id = "report_host_status", params(HostPath), request_body = HostStatus,
    responses((status = 200, body = Host, description = "The host with the reported status and a new heartbeat"),
        (status = 422, description = "The agent's protocol level is more than one away from the server's; the message says which to upgrade first")))]
pub async fn report(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(host): Path<String>,
    JsonBody(mut status): JsonBody<HostStatus>,
) -> ApiResult<Json<Host>> {
    require_own_host(&caller, &host)?;
    check_agent_version(&host, &status)?;
    status.phase = HostPhase::Ready;
    status.last_heartbeat = Some(Utc::now());
    let saved = state
        .repo
        .modify::<Host, _>(None, &host, |h| {
            h.status = status.clone();
            Ok(())
        })
        .await?;
    Ok(Json(saved))
}

/// Cordon or uncordon: a cordoned host keeps what runs there but the
/// scheduler places nothing new on it.
async fn set_cordon(
    state: &crate::state::AppState,
    caller: &Caller,
    host: &str,
    on: bool,
) -> ApiResult<Json<Host>> {
    auth::require_system_admin(caller)?;
    let saved = state
        .repo
        .modify::<Host, _>(None, host, |h| {
            h.spec.unschedulable = on;
            Ok(())
        })
        .await?;
    if !on {
        crate::scheduler::nudge(state);
    }
    Ok(Json(saved))
}

#[utoipa::path(post, path = "/v1/hosts/{host}/cordon", operation_id = "cordon_host", params(HostPath),
    responses((status = 200, body = Host, description = "The host, cordoned: it gets no new instances (system administrators)")))]
pub async fn cordon(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(host): Path<String>,
) -> ApiResult<Json<Host>> {
    set_cordon(&state, &caller, &host, true).await
}

#[utoipa::path(post, path = "/v1/hosts/{host}/uncordon", operation_id = "uncordon_host", params(HostPath),
    responses((status = 200, body = Host, description = "The host, open to new instances again (system administrators)")))]
pub async fn uncordon(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(host): Path<String>,
) -> ApiResult<Json<Host>> {
    set_cordon(&state, &caller, &host, false).await
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveHostQuery {
    /// Remove a host even though its agent still heartbeats.
    #[serde(default)]
    pub force: bool,
}

/// What removing a host did to the instances bound to it (`project/name`).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HostRemoved {
    pub host: String,
    /// Unbound and pending: the scheduler places them again.
    pub released: Vec<String>,
    /// Being deleted: removed, since no agent is left to finish.
    pub finalized: Vec<String>,
}

/// Remove a host (decommissioned, or dead for good): what was being
/// deleted there is finalized, the rest released to be placed again. A
/// host whose agent heartbeats is refused unless `force`.
#[utoipa::path(delete, path = "/v1/hosts/{host}", operation_id = "remove_host", params(HostPath, RemoveHostQuery),
    responses((status = 200, body = HostRemoved, description = "Removed; the instances bound to it released or finalized (system administrators)"),
        (status = 409, description = "The host is ready (its agent heartbeats) and `force` was not given")))]
pub async fn remove(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(host): Path<String>,
    Query(q): Query<RemoveHostQuery>,
) -> ApiResult<Json<HostRemoved>> {
    auth::require_system_admin(&caller)?;
    let current: Host = state.repo.get(None, &host).await?;
    if current.status.phase == HostPhase::Ready && !q.force {
        return Err(ServerError(ApiError::conflict(format!(
            "host {host:?} is ready: its agent still heartbeats and runs what is bound there; stop the agent first, or remove the host anyway with `nimbus host rm {host} --force`"
        ))));
    }
    // The host goes first, so the scheduler cannot bind a released
    // instance to it again.
    state
        .repo
        .delete::<Host>(None, &host, Some(current.metadata.revision))
        .await?;
    let removed = release_bound_instances(&state, &host).await?;
    crate::scheduler::nudge(&state);
    tracing::info!(host = %host, released = removed.released.len(), finalized = removed.finalized.len(), "host removed");
    Ok(Json(removed))
}

async fn release_bound_instances(
    state: &crate::state::AppState,
    host: &str,
) -> ApiResult<HostRemoved> {
    use crate::domain::instances::{release_from_removed_host, HostRemoval};
    let mut removed = HostRemoved {
        host: host.to_string(),
        ..Default::default()
    };
    let bound: Vec<Instance> = state
        .repo
        .list_every::<Instance>(None, 500)
        .await?
        .into_iter()
        .filter(|i| i.status.host.as_deref() == Some(host))
        .collect();
    for instance in bound {
        let project = instance.metadata.project.clone().unwrap_or_default();
        let shown = format!("{project}/{}", instance.metadata.name);
        let mut outcome = HostRemoval::Release;
        let saved = crate::events::modify_instance(
            &state.repo,
            Some(&project),
            &instance.metadata.name,
            |i| {
                outcome = release_from_removed_host(i, host);
                Ok(())
            },
        )
        .await?;
        match outcome {
            HostRemoval::Finalize => {
                crate::api::instances::actions::finalize(&state.repo, &saved).await?;
                removed.finalized.push(shown);
            }
            HostRemoval::Release => removed.released.push(shown),
        }
    }
    Ok(removed)
}

pub use auth::require_system_admin;
