//! Security groups: stateful ingress filters. Changing a group's rules
//! changes the filter of its running members; the agents apply it.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use nimbus_api::{
    validate_name, ApiError, CreateRequest, Instance, ListOptions, Metadata, Protocol,
    ResourceList, Role, SecurityGroup, SecurityGroupSpec, WatchEvent,
};

use super::body::JsonBody;
use super::params::{ProjectPath, SecgroupPath};
use super::St;
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

/// Rules per group at most: one nftables transaction applies them all.
pub const MAX_RULES: usize = 5000;

#[utoipa::path(get, path = "/v1/projects/{project}/secgroups", operation_id = "list_security_groups", params(ProjectPath, ListOptions),
    responses((status = 200, description = "A page of the project's security groups; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<SecurityGroup> = "application/json"), (WatchEvent<SecurityGroup> = "application/x-ndjson")))))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    Query(opts): Query<ListOptions>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    super::watch::list_in_project::<SecurityGroup>(&state, caller, project, &opts, &headers).await
}

/// Security groups of every project: for system administrators and host agents.
#[utoipa::path(get, path = "/v1/secgroups", operation_id = "list_all_security_groups", params(ListOptions),
    responses((status = 200, description = "A page of security groups of every project; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<SecurityGroup> = "application/json"), (WatchEvent<SecurityGroup> = "application/x-ndjson")))))]
pub async fn list_all(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Query(opts): Query<ListOptions>,
) -> ApiResult<Response> {
    super::networks::list_every_project::<SecurityGroup>(&state, &caller, &opts).await
}

#[utoipa::path(get, path = "/v1/projects/{project}/secgroups/{name}", operation_id = "get_security_group", params(SecgroupPath),
    responses((status = 200, body = SecurityGroup, description = "The security group")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<SecurityGroup>> {
    auth::require_host_or_role(&state.repo, &caller, &project, Role::Reader).await?;
    Ok(Json(state.repo.get(Some(&project), &name).await?))
}

async fn validate_spec(
    state: &AppState,
    project: &str,
    name: &str,
    spec: &SecurityGroupSpec,
) -> ApiResult<()> {
    if spec.rules.len() > MAX_RULES {
        return Err(ServerError(ApiError::invalid(format!(
            "security group {name:?} has {} rules; at most {MAX_RULES} are allowed",
            spec.rules.len()
        ))));
    }
    for (n, r) in spec.rules.iter().enumerate() {
        let which = format!("rule {} ({})", n + 1, r.describe());
        let ports = r.port_from.is_some() || r.port_to.is_some();
        if ports && !matches!(r.protocol, Protocol::Tcp | Protocol::Udp) {
            return Err(ServerError(ApiError::invalid(format!(
                "{which}: ports apply to tcp and udp only; drop the port or use tcp/udp"
            ))));
        }
        if let (Some(f), Some(t)) = (r.port_from, r.port_to) {
            if f > t || f == 0 {
                return Err(ServerError(ApiError::invalid(format!(
                    "{which}: port range {f}-{t} is empty; write the lower port first (1-65535)"
                ))));
            }
        }
        if r.port_to.is_some() && r.port_from.is_none() {
            return Err(ServerError(ApiError::invalid(format!(
                "{which}: a last port needs a first port"
            ))));
        }
        if r.port_from == Some(0) {
            return Err(ServerError(ApiError::invalid(format!(
                "{which}: port 0 is not a port; use 1-65535"
            ))));
        }
        if r.cidr.is_some() && r.group.is_some() {
            return Err(ServerError(ApiError::invalid(format!(
                "{which}: give a source CIDR or a source group, not both; split it into two rules"
            ))));
        }
        if let Some(c) = &r.cidr {
            nimbus_api::cidr::parse_source(c)
                .map_err(|e| ApiError::invalid(format!("{which}: {e}")))?;
        }
        if let Some(g) = &r.group {
            if g != name
                && state
                    .repo
                    .try_get::<SecurityGroup>(Some(project), g)
                    .await?
                    .is_none()
            {
                return Err(ServerError(ApiError::invalid(format!(
                    "{which}: security group {g:?} not found in project {project:?}; create it first"
                ))));
            }
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/projects/{project}/secgroups", operation_id = "create_security_group", params(ProjectPath), request_body = CreateRequest<SecurityGroupSpec>,
    responses((status = 201, body = SecurityGroup, description = "Created"),
        (status = 409, description = "A security group of that name already exists"),
        (status = 422, description = "The rules are invalid")))]
pub async fn create(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    JsonBody(req): JsonBody<CreateRequest<SecurityGroupSpec>>,
) -> ApiResult<(StatusCode, Json<SecurityGroup>)> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    validate_name("security group", &req.name).map_err(ApiError::invalid)?;
    validate_spec(&state, &project, &req.name, &req.spec).await?;
    let mut metadata = Metadata::new(&req.name, Some(&project));
    metadata.labels = req.labels;
    let created = state
        .repo
        .create(SecurityGroup {
            metadata,
            spec: req.spec,
            status: Default::default(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Replace the rules; running members get the new filter without restart.
#[utoipa::path(put, path = "/v1/projects/{project}/secgroups/{name}", operation_id = "replace_security_group", params(SecgroupPath), request_body = SecurityGroup,
    responses((status = 200, body = SecurityGroup, description = "The security group as stored; instances using it get the new rules"),
        (status = 409, description = "`metadata.revision` is not the current one: read it again and retry")))]
pub async fn replace(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<SecurityGroup>,
) -> ApiResult<Json<SecurityGroup>> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    if body.metadata.name != name {
        return Err(ServerError(ApiError::invalid(format!(
            "the body names security group {:?} but the path names {name:?}; groups cannot be renamed",
            body.metadata.name
        ))));
    }
    validate_spec(&state, &project, &name, &body.spec).await?;
    let mut current: SecurityGroup = state.repo.get(Some(&project), &name).await?;
    current.metadata.labels = body.metadata.labels;
    current.metadata.revision = body.metadata.revision;
    current.spec = body.spec;
    Ok(Json(state.repo.update(current).await?))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/secgroups/{name}", operation_id = "delete_security_group", params(SecgroupPath),
    responses((status = 204, description = "Deleted"), (status = 409, description = "An instance still uses the security group")))]
pub async fn delete(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let _: SecurityGroup = state.repo.get(Some(&project), &name).await?;
    let users = state
        .repo
        .list::<Instance>(Some(&project), &Default::default(), |i| {
            i.spec.secgroups.contains(&name)
        })
        .await?;
    if let Some(first) = users.items.first() {
        return Err(ServerError(ApiError::conflict(format!(
            "security group {name:?} is used by {} instance(s) (e.g. {:?}); delete them first",
            users.items.len(),
            first.metadata.name
        ))));
    }
    let referrers = state
        .repo
        .list::<SecurityGroup>(Some(&project), &Default::default(), |g| {
            g.metadata.name != name
                && g.spec
                    .rules
                    .iter()
                    .any(|r| r.group.as_deref() == Some(&name))
        })
        .await?;
    if let Some(first) = referrers.items.first() {
        return Err(ServerError(ApiError::conflict(format!(
            "security group {name:?} is named in the rules of group {:?}; remove those rules first",
            first.metadata.name
        ))));
    }
    state
        .repo
        .delete::<SecurityGroup>(Some(&project), &name, None)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
