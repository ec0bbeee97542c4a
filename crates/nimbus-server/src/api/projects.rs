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
    super::watch::list_or_watch::<Project>(
        &state,
        None,
        &opts,
        move |p| {
            visible
                .as_ref()
                .is_none_or(|v| v.contains(&p.metadata.name))
        },
        None,
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
