//! Published ports: a host port forwarded to an instance. Host ports are
//! claimed in the store (`/hostports/...`) so two projects never share one,
//! within the project's range and count, and never over Nimbus's own
//! listeners or a host service's port (`hostports`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use nimbus_api::{
    ApiError, CreateRequest, Instance, ListOptions, Metadata, PublishedPort, PublishedPortSpec,
    PublishedPortStatus, ResourceList, Role, WatchEvent,
};
use nimbus_store::{Compare, Op, Txn};

use super::body::JsonBody;
use super::params::{AddressPath, ProjectPath};
use super::St;
use crate::auth::{self, Caller};
use crate::domain::addresses as domain;
use crate::error::{ApiResult, ServerError};
use crate::{hostports, ipam, repo};

#[utoipa::path(get, path = "/v1/projects/{project}/addresses", operation_id = "list_published_ports", params(ProjectPath, ListOptions),
    responses((status = 200, description = "A page of the project's published ports; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<PublishedPort> = "application/json"), (WatchEvent<PublishedPort> = "application/x-ndjson")))))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    Query(opts): Query<ListOptions>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    super::watch::list_in_project::<PublishedPort>(&state, caller, project, &opts, &headers).await
}

/// Published ports of every project: for system administrators and host agents.
#[utoipa::path(get, path = "/v1/addresses", operation_id = "list_all_published_ports", params(ListOptions),
    responses((status = 200, description = "A page of published ports of every project; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<PublishedPort> = "application/json"), (WatchEvent<PublishedPort> = "application/x-ndjson")))))]
pub async fn list_all(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Query(opts): Query<ListOptions>,
) -> ApiResult<Response> {
    super::networks::list_every_project::<PublishedPort>(&state, &caller, &opts).await
}

#[utoipa::path(get, path = "/v1/projects/{project}/addresses/{name}", operation_id = "get_published_port", params(AddressPath),
    responses((status = 200, body = PublishedPort, description = "The published port")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<PublishedPort>> {
    auth::require_host_or_role(&state.repo, &caller, &project, Role::Reader).await?;
    Ok(Json(state.repo.get(Some(&project), &name).await?))
}

#[utoipa::path(post, path = "/v1/projects/{project}/addresses", operation_id = "create_published_port", params(ProjectPath), request_body = CreateRequest<PublishedPortSpec>,
    responses((status = 201, body = PublishedPort, description = "Published"),
        (status = 403, description = "host port outside the project's range"),
        (status = 409, description = "host port taken, reserved, used by a host service, or the project's count reached")))]
pub async fn create(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    JsonBody(req): JsonBody<CreateRequest<PublishedPortSpec>>,
) -> ApiResult<(StatusCode, Json<PublishedPort>)> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let spec = req.spec;
    let name = domain::validate_publish(&req.name, &spec)?;
    let instance: Instance = state.repo.get(Some(&project), &spec.instance).await?;
    domain::check_target_on_network(&instance)?;
    let mut metadata = Metadata::new(&name, Some(&project));
    metadata.labels = req.labels;
    let now = chrono::Utc::now();
    metadata.created_at = now;
    metadata.updated_at = now;
    let mut port = PublishedPort {
        metadata,
        spec,
        status: Default::default(),
    };
    let key = repo::key::<PublishedPort>(Some(&project), &name);
    let hp = ipam::host_port_key(port.spec.protocol.as_str(), port.spec.host_port);
    let ikey = repo::key::<Instance>(Some(&project), &port.spec.instance);
    let _claiming = state.host_port_claims.lock().await;
    hostports::check(
        &state,
        &project,
        instance.status.host.as_deref(),
        &[hostports::Claim {
            protocol: port.spec.protocol,
            port: port.spec.host_port,
        }],
    )
    .await?;
    let result = state
        .repo
        .store
        .txn(Txn {
            compares: vec![
                Compare::Absent(key.clone()),
                Compare::Absent(hp.clone()),
                Compare::ModRevision(ikey, instance.metadata.revision),
            ],
            success: vec![
                Op::Put {
                    key: key.clone(),
                    value: repo::encode(&port)?,
                },
                Op::Put {
                    key: hp.clone(),
                    value: format!("{project}/{name}").into_bytes(),
                },
            ],
            failure: vec![],
        })
        .await?;
    if result.succeeded {
        port.metadata.revision = result.revision;
        return Ok((StatusCode::CREATED, Json(port)));
    }
    if state.repo.store.get(&key).await?.is_some() {
        return Err(ServerError(ApiError::already_exists(format!(
            "published port {name:?} already exists in project {project:?}; remove it with `nimbus address rm {name}`"
        ))));
    }
    if state.repo.store.get(&hp).await?.is_some() {
        return Err(ServerError(ApiError::conflict(format!(
            "host port {}/{} is already published; pick another host port",
            port.spec.host_port,
            port.spec.protocol.as_str()
        ))));
    }
    Err(ServerError(ApiError::conflict(format!(
        "instance {:?} changed meanwhile; retry",
        port.spec.instance
    ))))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/addresses/{name}", operation_id = "delete_published_port", params(AddressPath),
    responses((status = 204, description = "Deleted; the host port is free again")))]
pub async fn delete(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let port: PublishedPort = state.repo.get(Some(&project), &name).await?;
    state
        .repo
        .store
        .txn(Txn {
            compares: vec![],
            success: vec![
                Op::Delete {
                    key: repo::key::<PublishedPort>(Some(&project), &name),
                },
                Op::Delete {
                    key: ipam::host_port_key(port.spec.protocol.as_str(), port.spec.host_port),
                },
            ],
            failure: vec![],
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The agent of the instance's host reports whether it forwards the port.
#[utoipa::path(post, path = "/v1/projects/{project}/addresses/{name}/status", operation_id = "report_published_port_status", params(AddressPath), request_body = PublishedPortStatus,
    responses((status = 200, body = PublishedPort), (status = 403, description = "Not the agent of the instance's host")))]
pub async fn report_status(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    JsonBody(status): JsonBody<PublishedPortStatus>,
) -> ApiResult<Json<PublishedPort>> {
    // Users without a role in the project must not learn what exists there.
    if !caller.is_host_agent() {
        auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    }
    let port: PublishedPort = state.repo.get(Some(&project), &name).await?;
    let instance: Option<Instance> = state
        .repo
        .try_get(Some(&project), &port.spec.instance)
        .await?;
    let host = instance.and_then(|i| i.status.host);
    if !(caller.system_admin || (caller.host.is_some() && caller.host == host)) {
        return Err(ServerError(ApiError::forbidden(format!(
            "only the agent of the host running instance {:?} may report the status of published port {name:?}",
            port.spec.instance
        ))));
    }
    let status = domain::reported_status(status, caller.host.as_deref());
    let saved = state
        .repo
        .modify::<PublishedPort, _>(Some(&project), &name, |p| {
            p.status = status.clone();
            Ok(())
        })
        .await?;
    Ok(Json(saved))
}
