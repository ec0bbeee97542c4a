//! Security groups: stateful ingress filters. Changing a group's rules
//! changes the filter of its running members; the agents apply it.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use nimbus_api::{
    ApiError, CreateRequest, Instance, ListOptions, Metadata, ResourceList, Role, SecurityGroup,
    SecurityGroupSpec, WatchEvent,
};

use super::body::JsonBody;
use super::params::{ProjectPath, SecgroupPath};
use super::St;
use crate::auth::{self, Caller};
use crate::domain::secgroups as domain;
use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

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

/// Look up the groups the rules name, then check the rules.
async fn validate_spec(
    state: &AppState,
    project: &str,
    name: &str,
    spec: &SecurityGroupSpec,
) -> ApiResult<()> {
    let mut existing = BTreeSet::new();
    for g in domain::referenced_groups(name, spec) {
        if state
            .repo
            .try_get::<SecurityGroup>(Some(project), &g)
            .await?
            .is_some()
        {
            existing.insert(g);
        }
    }
    domain::validate_spec(project, name, spec, &existing)?;
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
    domain::validate_group_name(&req.name)?;
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
    domain::check_same_name(&name, &body.metadata.name)?;
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
