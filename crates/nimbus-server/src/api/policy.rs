//! A project's launch policy (`nimbus policy get|set`).

use axum::extract::{Path, State};
use axum::{Extension, Json};
use nimbus_api::{Metadata, Policy, PolicySpec, Role, POLICY_NAME};

use super::body::JsonBody;
use super::params::ProjectPath;
use super::St;
use crate::auth::{self, Caller};
use crate::error::ApiResult;
use crate::vulnscan::policy::project_policy;

#[utoipa::path(get, path = "/v1/projects/{project}/policy", operation_id = "get_policy", tag = "vulnerabilities", params(ProjectPath),
    responses((status = 200, body = PolicySpec, description = "The project's launch policy; empty when none is set")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<Json<PolicySpec>> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    Ok(Json(project_policy(&state, &project).await?))
}

#[utoipa::path(put, path = "/v1/projects/{project}/policy", operation_id = "set_policy", tag = "vulnerabilities", params(ProjectPath), request_body = PolicySpec,
    responses((status = 200, body = PolicySpec, description = "The policy as stored; it applies to instances created from now on")))]
pub async fn set(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    JsonBody(spec): JsonBody<PolicySpec>,
) -> ApiResult<Json<PolicySpec>> {
    auth::require_role(&state.repo, &caller, &project, Role::Admin).await?;
    let stored = match state
        .repo
        .try_get::<Policy>(Some(&project), POLICY_NAME)
        .await?
    {
        Some(mut existing) => {
            existing.spec = spec;
            state.repo.update(existing).await?
        }
        None => {
            state
                .repo
                .create(Policy {
                    metadata: Metadata::new(POLICY_NAME, Some(&project)),
                    spec,
                })
                .await?
        }
    };
    Ok(Json(stored.spec))
}
