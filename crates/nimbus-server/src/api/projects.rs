//! Projects: the unit of tenancy.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use nimbus_api::{
    validate_name, ApiError, CreateRequest, Image, Instance, ListOptions, Metadata, Project,
    ProjectSpec, ProjectStatus, ResourceList, Role, RoleBinding,
};

use super::St;
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};

#[utoipa::path(get, path = "/v1/projects", params(ListOptions),
    responses((status = 200, body = ResourceList<Project>)))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Query(opts): Query<ListOptions>,
) -> ApiResult<axum::response::Response> {
    let visible: Option<std::collections::HashSet<String>> = if caller.system_admin {
        None
    } else {
        let bindings = state
            .repo
            .list::<RoleBinding>(None, &ListOptions::default(), |b| {
                b.spec.user == caller.user
            })
            .await?;
        Some(
            bindings
                .items
                .into_iter()
                .filter_map(|b| b.metadata.project)
                .collect(),
        )
    };
    let guard = super::watch::Guard::admin_or_self(caller.clone());
    super::watch::list_or_watch::<Project>(
        &state,
        None,
        &opts,
        move |p| {
            visible
                .as_ref()
                .is_none_or(|v| v.contains(&p.metadata.name))
        },
        guard,
    )
    .await
}

#[utoipa::path(post, path = "/v1/projects", request_body = CreateRequest<ProjectSpec>,
    responses((status = 201, body = Project), (status = 409, description = "already exists")))]
pub async fn create(
    State(state): St,
    Extension(caller): Extension<Caller>,
    super::body::JsonBody(req): super::body::JsonBody<CreateRequest<ProjectSpec>>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    auth::require_system_admin(&caller)?;
    validate_name("project", &req.name).map_err(ApiError::invalid)?;
    validate_project_spec(&req.spec).map_err(ApiError::invalid)?;
    let mut metadata = Metadata::new(&req.name, None);
    metadata.labels = req.labels;
    let project = state
        .repo
        .create(Project {
            metadata,
            spec: req.spec,
            status: ProjectStatus::default(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

#[utoipa::path(get, path = "/v1/projects/{project}",
    responses((status = 200, body = Project), (status = 404, description = "not found or not yours")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<Json<Project>> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    Ok(Json(state.repo.get(None, &project).await?))
}

/// Replace a project's settings: description, instance defaults and host
/// port policy (system administrators).
#[utoipa::path(put, path = "/v1/projects/{project}", request_body = ProjectSpec,
    responses((status = 200, body = Project), (status = 404, description = "not found or not yours")))]
pub async fn update(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    super::body::JsonBody(spec): super::body::JsonBody<ProjectSpec>,
) -> ApiResult<Json<Project>> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    auth::require_system_admin(&caller)?;
    validate_project_spec(&spec).map_err(ApiError::invalid)?;
    let saved = state
        .repo
        .modify::<Project, _>(None, &project, |p| {
            p.spec = spec.clone();
            Ok(())
        })
        .await?;
    Ok(Json(saved))
}

/// What a project's settings must satisfy.
pub fn validate_project_spec(spec: &ProjectSpec) -> Result<(), String> {
    let ports = &spec.host_ports;
    if ports.min < 1024 {
        return Err(format!(
            "host port range starts at {}: ports below 1024 belong to the host; use 1024 or more",
            ports.min
        ));
    }
    if ports.min > ports.max {
        return Err(format!(
            "host port range {}-{} is empty: give the lower port first",
            ports.min, ports.max
        ));
    }
    let d = &spec.instance_defaults;
    if d.memory_bytes.is_some_and(|m| m < 4 << 20) {
        return Err("default memory must be at least 4 MiB".into());
    }
    if d.cpu_millis == Some(0) {
        return Err("default CPU must be more than 0".into());
    }
    if d.pids_max.is_some_and(|p| p < 1) {
        return Err("default pids limit must be at least 1".into());
    }
    Ok(())
}

#[utoipa::path(delete, path = "/v1/projects/{project}",
    responses((status = 204), (status = 409, description = "still has resources")))]
pub async fn delete(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<StatusCode> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    auth::require_system_admin(&caller)?;
    let opts = ListOptions {
        limit: Some(1),
        ..Default::default()
    };
    let instances = state
        .repo
        .list::<Instance>(Some(&project), &opts, |_| true)
        .await?;
    let images = state
        .repo
        .list::<Image>(Some(&project), &opts, |_| true)
        .await?;
    if !instances.items.is_empty() || !images.items.is_empty() {
        return Err(ServerError(ApiError::conflict(format!(
            "project {project:?} still has instances or images; remove them first (`nimbus instance list --project {project}`)"
        ))));
    }
    // Every binding goes, page by page: a later project of the same name
    // must not inherit roles.
    loop {
        let bindings = state
            .repo
            .list::<RoleBinding>(Some(&project), &ListOptions::default(), |_| true)
            .await?;
        if bindings.items.is_empty() {
            break;
        }
        for b in bindings.items {
            state
                .repo
                .delete::<RoleBinding>(Some(&project), &b.metadata.name, None)
                .await?;
        }
    }
    state.repo.delete::<Project>(None, &project, None).await?;
    state.tokens.invalidate_all();
    Ok(StatusCode::NO_CONTENT)
}
