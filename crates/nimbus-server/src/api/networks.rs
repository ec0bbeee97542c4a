//! Networks: private IPv4 networks of a project. The server validates and
//! stores them and hands out addresses (`ipam.rs`); each host's agent
//! builds the network's router namespace when an instance needs it.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use nimbus_api::{
    ApiError, CreateRequest, Instance, ListOptions, Metadata, Network, NetworkSpec, NetworkStatus,
    ResourceList, Role, WatchEvent,
};

use super::params::{NetworkPath, ProjectPath};
use super::St;
use crate::auth::{self, Caller};
use crate::domain::networks as domain;
use crate::error::{ApiResult, ServerError};
use crate::repo::Repo;
use crate::{ipam, vni};

/// The network made on demand when an instance asks for `default`.
pub const DEFAULT_NETWORK: &str = "default";
pub const DEFAULT_SUBNET: &str = "10.0.0.0/24";

#[utoipa::path(get, path = "/v1/projects/{project}/networks", operation_id = "list_networks", params(ProjectPath, ListOptions),
    responses((status = 200, description = "A page of the project's networks; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<Network> = "application/json"), (WatchEvent<Network> = "application/x-ndjson")))))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    Query(opts): Query<ListOptions>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    if opts.watch == Some(true) {
        return super::watch::list_in_project::<Network>(&state, caller, project, &opts, &headers)
            .await;
    }
    // A network's status (gateway, addresses in use) is computed, not
    // stored, so a list is filled like a get. Projects have few networks.
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    let mut page = state
        .repo
        .list::<Network>(Some(&project), &opts, |_| true)
        .await?;
    for net in page.items.iter_mut() {
        fill_status(&state.repo, &project, net).await?;
    }
    Ok(Json(page).into_response())
}

/// Networks of every project: for system administrators and host agents.
#[utoipa::path(get, path = "/v1/networks", operation_id = "list_all_networks", params(ListOptions),
    responses((status = 200, description = "A page of networks of every project; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<Network> = "application/json"), (WatchEvent<Network> = "application/x-ndjson")))))]
pub async fn list_all(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Query(opts): Query<ListOptions>,
) -> ApiResult<Response> {
    list_every_project::<Network>(&state, &caller, &opts).await
}

/// A collection across every project, for host agents (what they enforce)
/// and system administrators: a list, or with `watch=true` a stream.
pub async fn list_every_project<T: nimbus_api::resources::Object>(
    state: &std::sync::Arc<crate::state::AppState>,
    caller: &Caller,
    opts: &ListOptions,
) -> ApiResult<Response> {
    require_agent_or_admin(caller, T::COLLECTION)?;
    super::watch::list_or_watch::<T>(
        state,
        None,
        opts,
        |_| true,
        super::watch::Guard::admin_or_host(caller.clone()),
    )
    .await
}

pub fn require_agent_or_admin(caller: &Caller, what: &str) -> ApiResult<()> {
    if caller.system_admin || caller.is_host_agent() {
        Ok(())
    } else {
        Err(ServerError(ApiError::forbidden(format!(
            "listing {what} of every project needs a system administrator; use /v1/projects/{{project}}/{what}"
        ))))
    }
}

#[utoipa::path(get, path = "/v1/projects/{project}/networks/{name}", operation_id = "get_network", params(NetworkPath),
    responses((status = 200, body = Network, description = "The network")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Network>> {
    auth::require_host_or_role(&state.repo, &caller, &project, Role::Reader).await?;
    let mut net: Network = state.repo.get(Some(&project), &name).await?;
    fill_status(&state.repo, &project, &mut net).await?;
    Ok(Json(net))
}

async fn fill_status(repo: &Repo, project: &str, net: &mut Network) -> ApiResult<()> {
    let (subnet, gateway) = ipam::subnet_and_gateway(net)?;
    let used = ipam::used_addresses(repo, project, &net.metadata.name).await?;
    net.status = NetworkStatus {
        gateway: Some(gateway),
        allocated: used.len() as u32,
        capacity: subnet.host_count().saturating_sub(1),
        // Stored, unlike the rest: given once, at creation or first launch.
        vni: net.status.vni,
    };
    Ok(())
}

#[utoipa::path(post, path = "/v1/projects/{project}/networks", operation_id = "create_network", params(ProjectPath), request_body = CreateRequest<NetworkSpec>,
    responses((status = 201, body = Network, description = "Created"),
        (status = 409, description = "A network of that name already exists, or its subnet overlaps another"),
        (status = 422, description = "The spec is invalid")))]
pub async fn create(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    super::body::JsonBody(req): super::body::JsonBody<CreateRequest<NetworkSpec>>,
) -> ApiResult<(StatusCode, Json<Network>)> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    domain::validate_network_name(&req.name)?;
    domain::validate_spec(&req.spec)?;
    let mut metadata = Metadata::new(&req.name, Some(&project));
    metadata.labels = req.labels;
    let mut net = store_new(
        &state.repo,
        Network {
            metadata,
            spec: req.spec,
            status: NetworkStatus::default(),
        },
    )
    .await?;
    fill_status(&state.repo, &project, &mut net).await?;
    Ok((StatusCode::CREATED, Json(net)))
}

/// The project's `default` network, created if it does not exist yet.
pub async fn default_network(repo: &Repo, project: &str) -> ApiResult<Network> {
    if let Some(n) = repo.try_get(Some(project), DEFAULT_NETWORK).await? {
        return vni::ensure(repo, n).await;
    }
    let net = Network {
        metadata: Metadata::new(DEFAULT_NETWORK, Some(project)),
        spec: NetworkSpec {
            subnet: DEFAULT_SUBNET.into(),
            gateway: None,
            dns: vec![],
            dns_search: None,
        },
        status: NetworkStatus::default(),
    };
    match store_new(repo, net).await {
        Ok(n) => Ok(n),
        // Created by a concurrent launch.
        Err(ServerError(e)) if e.code == nimbus_api::ErrorCode::AlreadyExists => {
            vni::ensure(repo, repo.get(Some(project), DEFAULT_NETWORK).await?).await
        }
        Err(e) => Err(e),
    }
}

/// Store a new network with a VNI of its own (claimed first, freed again
/// if the network cannot be stored).
async fn store_new(repo: &Repo, mut net: Network) -> ApiResult<Network> {
    let project = net.metadata.project.clone().unwrap_or_default();
    let vni = vni::claim(repo, &project, &net.metadata.id).await?;
    net.status.vni = Some(vni);
    match repo.create(net).await {
        Ok(n) => Ok(n),
        Err(e) => {
            vni::unclaim(repo, vni).await;
            Err(e)
        }
    }
}

/// Deleting a network some instance uses is refused.
#[utoipa::path(delete, path = "/v1/projects/{project}/networks/{name}", operation_id = "delete_network", params(NetworkPath),
    responses((status = 204, description = "Deleted"), (status = 409, description = "An instance still uses the network")))]
pub async fn delete(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let mut net: Network = state.repo.get(Some(&project), &name).await?;
    // Mark it first (which also moves its revision): a launch that read it
    // before fails its address transaction and, re-reading, sees the mark;
    // a launch after the mark refuses; one that committed before shows up
    // in the list below.
    net.metadata.deletion_requested_at = Some(chrono::Utc::now());
    let mut net = state.repo.update(net).await?;
    let users = state
        .repo
        .list::<Instance>(Some(&project), &Default::default(), |i| {
            i.spec.networks.contains(&name)
        })
        .await?;
    if !users.items.is_empty() {
        net.metadata.deletion_requested_at = None;
        if let Err(e) = state.repo.update(net).await {
            tracing::warn!(network = %name, error = %e.0, "clearing the deletion mark of a network in use");
        }
        let names: Vec<&str> = users
            .items
            .iter()
            .take(5)
            .map(|i| i.metadata.name.as_str())
            .collect();
        return Err(ServerError(ApiError::conflict(format!(
            "network {name:?} is in use by {} instance(s) ({}); delete them first with `nimbus instance rm <name>`",
            users.items.len(),
            names.join(", ")
        ))));
    }
    state
        .repo
        .delete_with::<Network>(
            Some(&project),
            &name,
            net.metadata.revision,
            vni::release(&net),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
