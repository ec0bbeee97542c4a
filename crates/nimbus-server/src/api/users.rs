//! Users, their API tokens, and role bindings in projects.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use nimbus_api::{
    validate_name, ApiError, CreateRequest, CreateToken, ListOptions, Metadata, ProjectStatus,
    ResourceList, Role, RoleBinding, RoleBindingSpec, Token, TokenCreated, TokenSpec, TokenStatus,
    User, UserSpec, UserStatus, WatchEvent,
};

use super::body::JsonBody;
use super::params::{BindingPath, ProjectPath, TokenPath, UserPath};
use super::St;
use crate::auth::{self, token, Caller};
use crate::error::{ApiResult, ServerError};
use crate::repo::Repo;

#[utoipa::path(get, path = "/v1/users", operation_id = "list_users", params(ListOptions),
    responses((status = 200, description = "A page of users; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<User> = "application/json"), (WatchEvent<User> = "application/x-ndjson")))))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Query(opts): Query<ListOptions>,
    headers: axum::http::HeaderMap,
) -> ApiResult<axum::response::Response> {
    auth::require_system_admin(&caller)?;
    super::watch::list_or_watch_all::<User>(
        &state,
        None,
        &opts,
        super::watch::accepts_gzip(&headers),
        super::watch::Guard::new(caller, super::watch::Need::SystemAdmin),
    )
    .await
}

#[utoipa::path(post, path = "/v1/users", operation_id = "create_user", request_body = CreateRequest<UserSpec>,
    responses((status = 201, body = User, description = "Created"), (status = 409, description = "A user of that name already exists")))]
pub async fn create(
    State(state): St,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<CreateRequest<UserSpec>>,
) -> ApiResult<(StatusCode, Json<User>)> {
    auth::require_system_admin(&caller)?;
    validate_name("user", &req.name).map_err(ApiError::invalid)?;
    let mut metadata = Metadata::new(&req.name, None);
    metadata.labels = req.labels;
    let user = state
        .repo
        .create(User {
            metadata,
            spec: req.spec,
            status: UserStatus::default(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[utoipa::path(get, path = "/v1/users/{user}", operation_id = "get_user", params(UserPath),
    responses((status = 200, body = User, description = "The user (any caller may read their own)")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> ApiResult<Json<User>> {
    if caller.user != user {
        auth::require_system_admin(&caller)?;
    }
    Ok(Json(state.repo.get(None, &user).await?))
}

#[utoipa::path(delete, path = "/v1/users/{user}", operation_id = "delete_user", params(UserPath),
    responses((status = 204, description = "Deleted, with its tokens and role bindings"), (status = 409, description = "The caller tried to delete the user they act as")))]
pub async fn delete(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> ApiResult<StatusCode> {
    auth::require_system_admin(&caller)?;
    if user == caller.user {
        return Err(ServerError(ApiError::conflict(
            "you cannot delete the user you are acting as; use another administrator",
        )));
    }
    state.repo.delete::<User>(None, &user, None).await?;
    // Its tokens and bindings go with it, every page of them: a token left
    // behind would come back to life with a new user of the same name.
    let tokens: Vec<String> = list_all_matching::<Token>(&state.repo, |t| t.spec.user == user)
        .await?
        .into_iter()
        .map(|t| t.metadata.name)
        .collect();
    for id in &tokens {
        delete_if_present::<Token>(&state.repo, None, id).await?;
    }
    let bindings = list_all_matching::<RoleBinding>(&state.repo, |b| b.spec.user == user).await?;
    for b in &bindings {
        delete_if_present::<RoleBinding>(
            &state.repo,
            b.metadata.project.as_deref(),
            &b.metadata.name,
        )
        .await?;
    }
    state.tokens.invalidate_all();
    Ok(StatusCode::NO_CONTENT)
}

/// Every object of a collection (all projects) that `keep` accepts,
/// across all pages.
pub(crate) async fn list_all_matching<T: nimbus_api::resources::Object>(
    repo: &Repo,
    keep: impl Fn(&T) -> bool + Copy,
) -> ApiResult<Vec<T>> {
    let mut all = Vec::new();
    let mut opts = ListOptions {
        limit: Some(crate::repo::MAX_PAGE),
        ..ListOptions::default()
    };
    loop {
        let page = repo.list::<T>(None, &opts, keep).await?;
        all.extend(page.items);
        match page.continue_token {
            Some(next) => opts.continue_token = Some(next),
            None => return Ok(all),
        }
    }
}

/// Delete, treating "already gone" as done (another call may race us).
pub(crate) async fn delete_if_present<T: nimbus_api::resources::Object>(
    repo: &Repo,
    project: Option<&str>,
    name: &str,
) -> ApiResult<()> {
    match repo.delete::<T>(project, name, None).await {
        Err(e) if e.0.code == nimbus_api::ErrorCode::NotFound => Ok(()),
        other => other,
    }
}

fn redact(mut t: Token) -> Token {
    nimbus_api::resources::Object::redact(&mut t);
    t
}

/// A new token record, not yet stored, and its secret (`nmb_<id>_<secret>`).
pub fn new_token(
    user: &str,
    description: &str,
    host: Option<&str>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> (Token, String) {
    let (id, secret) = token::generate();
    let record = Token {
        metadata: Metadata::new(&id, None),
        spec: TokenSpec {
            user: user.to_string(),
            description: description.to_string(),
            expires_at,
            host: host.map(str::to_string),
        },
        status: TokenStatus {
            secret_sha256: token::hash_hex(&secret),
            last_used_at: None,
        },
    };
    (record, token::format(&id, &secret))
}

/// Create a token record and return it with its secret.
pub async fn issue_token(
    repo: &Repo,
    user: &str,
    description: &str,
    host: Option<&str>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> ApiResult<TokenCreated> {
    let (record, secret) = new_token(user, description, host, expires_at);
    let t = repo.create(record).await?;
    Ok(TokenCreated {
        token: redact(t),
        secret,
    })
}

#[utoipa::path(post, path = "/v1/tokens", operation_id = "create_token", request_body = CreateToken,
    responses((status = 201, body = TokenCreated, description = "Created; the secret is shown only here")))]
pub async fn create_token(
    State(state): St,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<CreateToken>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    if caller.is_host_agent() {
        return Err(ServerError(ApiError::forbidden(
            "host tokens cannot create tokens",
        )));
    }
    let user = req.user.unwrap_or_else(|| caller.user.clone());
    if user != caller.user {
        auth::require_system_admin(&caller)?;
    }
    let _: User = state.repo.get(None, &user).await?;
    let expires_at = capped_expiry(&state, &caller, req.expires_at).await?;
    let created = issue_token(&state.repo, &user, &req.description, None, expires_at).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// A token may not outlive the token that creates it (else a short-lived
/// token could mint itself a permanent one); system administrators may
/// issue any expiry. Without an asked expiry, the new token gets the
/// creating token's.
async fn capped_expiry(
    state: &crate::AppState,
    caller: &Caller,
    asked: Option<chrono::DateTime<chrono::Utc>>,
) -> ApiResult<Option<chrono::DateTime<chrono::Utc>>> {
    if caller.system_admin {
        return Ok(asked);
    }
    let creator: Option<Token> = state.repo.try_get(None, &caller.token_id).await?;
    let Some(limit) = creator.and_then(|t| t.spec.expires_at) else {
        return Ok(asked);
    };
    match asked {
        None => Ok(Some(limit)),
        Some(at) if at <= limit => Ok(Some(at)),
        Some(at) => Err(ServerError(ApiError::invalid(format!(
            "a token expiring at {at} would outlive the token creating it, which expires at {limit}; ask for an expiry no later than that, or ask a system administrator"
        )))),
    }
}

#[utoipa::path(get, path = "/v1/tokens", operation_id = "list_tokens", params(ListOptions),
    responses((status = 200, description = "The caller's tokens (all for system administrators), secrets never shown; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<Token> = "application/json"), (WatchEvent<Token> = "application/x-ndjson")))))]
pub async fn list_tokens(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Query(opts): Query<ListOptions>,
) -> ApiResult<axum::response::Response> {
    let guard = super::watch::Guard::admin_or_self(caller.clone());
    super::watch::list_or_watch::<Token>(
        &state,
        None,
        &opts,
        move |t| caller.system_admin || t.spec.user == caller.user,
        guard,
    )
    .await
}

async fn own_token(state: &crate::AppState, caller: &Caller, id: &str) -> ApiResult<Token> {
    let t: Option<Token> = state.repo.try_get(None, id).await?;
    match t {
        Some(t) if caller.system_admin || t.spec.user == caller.user => Ok(t),
        _ => Err(ServerError(ApiError::not_found(format!(
            "token {id:?} not found; list yours with `nimbus token list`"
        )))),
    }
}

#[utoipa::path(get, path = "/v1/tokens/{token}", operation_id = "get_token", params(TokenPath),
    responses((status = 200, body = Token, description = "The token, without its secret")))]
pub async fn get_token(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Token>> {
    Ok(Json(redact(own_token(&state, &caller, &id).await?)))
}

#[utoipa::path(delete, path = "/v1/tokens/{token}", operation_id = "delete_token", params(TokenPath),
    responses((status = 204, description = "Deleted; the token stops working at once")))]
pub async fn delete_token(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    own_token(&state, &caller, &id).await?;
    state.repo.delete::<Token>(None, &id, None).await?;
    state.tokens.invalidate_all();
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/projects/{project}/rolebindings", operation_id = "list_role_bindings", params(ProjectPath, ListOptions),
    responses((status = 200, description = "A page of the project's role bindings; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<RoleBinding> = "application/json"), (WatchEvent<RoleBinding> = "application/x-ndjson")))))]
pub async fn list_bindings(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    Query(opts): Query<ListOptions>,
    headers: axum::http::HeaderMap,
) -> ApiResult<axum::response::Response> {
    super::watch::list_in_project::<RoleBinding>(&state, caller, project, &opts, &headers).await
}

#[utoipa::path(get, path = "/v1/projects/{project}/rolebindings/{user}", operation_id = "get_role_binding", params(BindingPath),
    responses((status = 200, body = RoleBinding, description = "The user's role in the project")))]
pub async fn get_binding(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, user)): Path<(String, String)>,
) -> ApiResult<Json<RoleBinding>> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    Ok(Json(state.repo.get(Some(&project), &user).await?))
}

#[utoipa::path(post, path = "/v1/projects/{project}/rolebindings", operation_id = "create_role_binding", params(ProjectPath), request_body = RoleBindingSpec,
    responses((status = 201, body = RoleBinding, description = "Granted (granting again replaces the role)")))]
pub async fn create_binding(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    JsonBody(spec): JsonBody<RoleBindingSpec>,
) -> ApiResult<(StatusCode, Json<RoleBinding>)> {
    auth::require_role(&state.repo, &caller, &project, Role::Admin).await?;
    let _: User = state.repo.get(None, &spec.user).await?;
    let binding = RoleBinding {
        metadata: Metadata::new(&spec.user, Some(&project)),
        spec,
        status: ProjectStatus::default(),
    };
    // Granting again replaces the role.
    let existing: Option<RoleBinding> = state
        .repo
        .try_get(Some(&project), &binding.spec.user)
        .await?;
    let saved = match existing {
        Some(mut old) => {
            old.spec.role = binding.spec.role;
            state.repo.update(old).await?
        }
        None => state.repo.create(binding).await?,
    };
    state.tokens.invalidate_all();
    Ok((StatusCode::CREATED, Json(saved)))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/rolebindings/{user}", operation_id = "delete_role_binding", params(BindingPath),
    responses((status = 204, description = "Revoked")))]
pub async fn delete_binding(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth::require_role(&state.repo, &caller, &project, Role::Admin).await?;
    state
        .repo
        .delete::<RoleBinding>(Some(&project), &user, None)
        .await?;
    state.tokens.invalidate_all();
    Ok(StatusCode::NO_CONTENT)
}

/// Role names accepted by the CLI.
pub fn parse_role(s: &str) -> Result<Role, ApiError> {
    s.parse().map_err(ApiError::invalid)
}
