//! A project's events (`crate::events`): a list newest first, paged with
//! `continue`, or with `watch=true` a stream of new events as JSON lines,
//! through the same watch as every list. Readers of the project and above
//! see them; a caller with no role in the project gets 404.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use nimbus_api::{ApiError, Event, ListOptions, ResourceList, Role, WatchEvent};

use super::params::ProjectPath;
use super::St;
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};
use crate::repo::{self, DEFAULT_PAGE, MAX_PAGE};

/// A page of the project's events, newest first; `continue` on the page
/// fetches the next (older) one and is absent when none are left.
#[utoipa::path(get, tag = "events", path = "/v1/projects/{project}/events", operation_id = "list_events", params(ProjectPath, ListOptions),
    responses((status = 200, description = "A page of the project's events, newest first (pass its `continue` for older ones); with `watch=true` a stream of new events, one `WatchEvent` per line",
        content((ResourceList<Event> = "application/json"), (WatchEvent<Event> = "application/x-ndjson")))))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    Query(opts): Query<ListOptions>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    if opts.watch == Some(true) {
        return super::watch::list_in_project::<Event>(&state, caller, project, &opts, &headers)
            .await;
    }
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    let limit = opts.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let prefix = repo::prefix::<Event>(Some(&project));
    let end_before = match &opts.continue_token {
        Some(token) if token.is_empty() || token.contains('/') => {
            return Err(ServerError(ApiError::bad_request(format!(
                "continue token {token:?} is not one this list gave; pass the `continue` of the previous page"
            ))))
        }
        Some(token) => Some(format!("{prefix}{token}")),
        None => None,
    };
    let page = state
        .repo
        .store
        .list_reverse(&prefix, end_before.as_deref(), limit)
        .await?;
    let items = page
        .kvs
        .iter()
        .map(repo::decode::<Event>)
        .collect::<ApiResult<Vec<_>>>()?;
    let continue_token = match page.kvs.last() {
        Some(kv) if page.more => Some(kv.key[prefix.len()..].to_string()),
        _ => None,
    };
    Ok(Json(ResourceList {
        items,
        revision: page.revision,
        continue_token,
    })
    .into_response())
}
