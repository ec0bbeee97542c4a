//! Instances over HTTP, one file per concern: `crud.rs` (list and watch,
//! get, create, replace, delete, the secret environment for agents),
//! `actions.rs` (start, stop, restart, pause, resume, agents' status
//! reports) and `streams.rs` (followed logs, exec, console). The rules
//! (validation, defaults, status merging) live in `domain::instances`; the
//! handlers parse, fetch, ask the domain, write and answer.

pub mod actions;
pub mod crud;
pub mod streams;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Json, Router};
use nimbus_api::{Instance, Role};

use crate::auth::{self, Caller};
use crate::domain::instances as domain;
use crate::error::ApiResult;
use crate::state::AppState;

/// The instance routes, merged into the API router (`api::router`).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/instances", get(crud::list_all))
        .route(
            "/v1/projects/{project}/instances",
            get(crud::list).post(crud::create),
        )
        .route(
            "/v1/projects/{project}/instances/{name}",
            get(crud::get).put(crud::replace).delete(crud::delete),
        )
        .route(
            "/v1/projects/{project}/instances/{name}/start",
            post(actions::start),
        )
        .route(
            "/v1/projects/{project}/instances/{name}/stop",
            post(actions::stop),
        )
        .route(
            "/v1/projects/{project}/instances/{name}/restart",
            post(actions::restart),
        )
        .route(
            "/v1/projects/{project}/instances/{name}/pause",
            post(actions::pause),
        )
        .route(
            "/v1/projects/{project}/instances/{name}/resume",
            post(actions::resume),
        )
        .route(
            "/v1/projects/{project}/instances/{name}/console",
            post(streams::console),
        )
        .route(
            "/v1/projects/{project}/instances/{name}/status",
            post(actions::report_status),
        )
        .route(
            "/v1/projects/{project}/instances/{name}/secret-env",
            get(crud::secret_env),
        )
        .route(
            "/v1/projects/{project}/instances/{name}/logs",
            get(streams::logs),
        )
        .route(
            "/v1/projects/{project}/instances/{name}/exec",
            post(streams::exec),
        )
}

/// An instance as responses show it: secret values replaced by
/// `<secret>`. Every handler answers with this, never the stored object.
pub(crate) fn shown(mut instance: Instance) -> Json<Instance> {
    use nimbus_api::resources::Object;
    instance.redact();
    Json(instance)
}

/// The instance for a VM-only action (pause, resume, console), with the
/// caller's member role checked.
async fn running_vm(
    state: &Arc<AppState>,
    caller: &Caller,
    project: &str,
    name: &str,
    action: &'static str,
) -> ApiResult<Instance> {
    auth::require_role(&state.repo, caller, project, Role::Member).await?;
    let instance: Instance = state.repo.get(Some(project), name).await?;
    domain::check_is_vm(&instance, action)?;
    Ok(instance)
}
