//! Authentication (bearer tokens) and authorisation (roles per project).
//!
//! Tenancy rule: a caller without a role in a project gets 404 for
//! everything in it, exactly as if the project did not exist. A caller who
//! can see the project but lacks the role for a change gets 403.

pub mod audit;
pub mod cookie;
pub mod session;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nimbus_api::{ApiError, Role, RoleBinding, Token, User};

use crate::error::{ApiResult, ServerError};
use crate::repo::Repo;
use crate::state::AppState;

/// Who is calling, established from the bearer token.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: String,
    pub system_admin: bool,
    pub token_id: String,
    /// Set for a host agent's token: the host it speaks for.
    pub host: Option<String>,
    /// A metrics reader's token: `/metrics` (and `whoami`) only.
    pub metrics_reader: bool,
}

impl Caller {
    pub fn is_host_agent(&self) -> bool {
        self.host.is_some()
    }
}

const CACHE_TTL: Duration = Duration::from_secs(2);

/// Verifies tokens, caching successful lookups briefly so the API hot path
/// does not read three keys per request. Deletions through this server
/// clear it at once; changes made elsewhere take effect within `CACHE_TTL`.
/// A verified caller, the secret hash it was verified with, when, and
/// when the token expires (checked on every hit, so expiry is exact).
type CacheEntry = (
    Caller,
    [u8; 32],
    Instant,
    Option<chrono::DateTime<chrono::Utc>>,
);

#[derive(Default)]
pub struct TokenCache {
    entries: RwLock<HashMap<String, CacheEntry>>,
}

impl TokenCache {
    pub fn invalidate_all(&self) {
        if let Ok(mut e) = self.entries.write() {
            e.clear();
        }
    }
}

pub async fn authenticate(state: &AppState, header: Option<&str>) -> ApiResult<Caller> {
    let raw = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthenticated(
                "missing bearer token: send `Authorization: Bearer <token>`; the admin token is in <data-dir>/admin.token",
            )
        })?;
    let (token_id, secret) = token::parse(raw).ok_or_else(|| {
        ApiError::unauthenticated(
            "malformed token: expected nmb_<id>_<secret> as printed when it was created",
        )
    })?;
    verify(state, token_id, token::hash_secret(secret)).await
}

/// The caller of token `token_id` whose secret hashes to `presented`
/// (cached for `CACHE_TTL`): the bearer header and a console session
/// (`cookie`) both end here, so both see revocation alike.
pub async fn verify(state: &AppState, token_id: &str, presented: [u8; 32]) -> ApiResult<Caller> {
    if let Ok(cache) = state.tokens.entries.read() {
        if let Some((caller, hash, at, expires)) = cache.get(token_id) {
            let unexpired = expires.is_none_or(|e| e >= chrono::Utc::now());
            if unexpired && at.elapsed() < CACHE_TTL && token::hashes_equal(hash, &presented) {
                return Ok(caller.clone());
            }
        }
    }
    let invalid = || {
        ServerError(ApiError::unauthenticated(
            "invalid or expired token; create a new one with `nimbus token create`",
        ))
    };
    let (caller, stored) = load_token(state, token_id).await?.ok_or_else(invalid)?;
    let stored_hash = token::decode_hash(&stored.status.secret_sha256).ok_or_else(invalid)?;
    if !token::hashes_equal(&stored_hash, &presented) {
        return Err(invalid());
    }
    if let Ok(mut cache) = state.tokens.entries.write() {
        cache.insert(
            token_id.to_string(),
            (
                caller.clone(),
                stored_hash,
                Instant::now(),
                stored.spec.expires_at,
            ),
        );
    }
    Ok(caller)
}

/// The caller of a console session: its token verified as a bearer
/// token would be, and for a mutating call the session's CSRF secret in
/// `X-CSRF-Token`.
pub async fn authenticate_cookie(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    session_id: &str,
    mutating: bool,
) -> ApiResult<Caller> {
    let session = state.browser_sessions.get(session_id).ok_or_else(|| {
        ApiError::unauthenticated(
            "console session expired or signed out: sign in again at /ui/ with a token",
        )
    })?;
    let caller = match verify(state, &session.token_id, session.secret_sha256).await {
        Ok(c) => c,
        Err(e) => {
            // The token is gone: so is every session made from it.
            state.browser_sessions.remove_token(&session.token_id);
            return Err(e);
        }
    };
    if mutating && !cookie::csrf_matches(headers, &session) {
        return Err(ServerError(ApiError::forbidden(format!(
            "a change made with a console session needs the session's CSRF token in the {} header; reload the console at /ui/",
            cookie::CSRF_HEADER
        ))));
    }
    Ok(caller)
}

/// The caller a token acts as, read from the store (never the cache):
/// `None` when the token is gone or expired, or its user is gone. The
/// secret is not checked here.
pub async fn load_caller(state: &AppState, token_id: &str) -> ApiResult<Option<Caller>> {
    Ok(load_token(state, token_id).await?.map(|(caller, _)| caller))
}

async fn load_token(state: &AppState, token_id: &str) -> ApiResult<Option<(Caller, Token)>> {
    let Some(stored) = state.repo.try_get::<Token>(None, token_id).await? else {
        return Ok(None);
    };
    if stored
        .spec
        .expires_at
        .is_some_and(|exp| exp < chrono::Utc::now())
    {
        return Ok(None);
    }
    let caller = if let Some(host) = &stored.spec.host {
        Caller {
            user: format!("host:{host}"),
            system_admin: false,
            token_id: token_id.to_string(),
            host: Some(host.clone()),
            metrics_reader: false,
        }
    } else {
        let Some(user) = state.repo.try_get::<User>(None, &stored.spec.user).await? else {
            return Ok(None);
        };
        Caller {
            user: user.metadata.name.clone(),
            system_admin: user.spec.system_admin,
            token_id: token_id.to_string(),
            host: None,
            metrics_reader: user.spec.metrics_reader,
        }
    };
    Ok(Some((caller, stored)))
}

/// The caller's role in `project`, `None` when it has none.
pub async fn role_in(repo: &Repo, caller: &Caller, project: &str) -> ApiResult<Option<Role>> {
    if caller.system_admin {
        return Ok(Some(Role::Admin));
    }
    if caller.is_host_agent() {
        // Agents read only what they run (see `require_host_or_role`).
        return Ok(None);
    }
    let binding: Option<RoleBinding> = repo.try_get(Some(project), &caller.user).await?;
    Ok(binding.map(|b| b.spec.role))
}

/// The projects the caller has a role in; `None` for a system
/// administrator, who sees every project.
pub async fn visible_projects<C: FromIterator<String>>(
    repo: &Repo,
    caller: &Caller,
) -> ApiResult<Option<C>> {
    if caller.system_admin {
        return Ok(None);
    }
    let bindings = repo
        .list::<RoleBinding>(None, &Default::default(), |b| b.spec.user == caller.user)
        .await?;
    Ok(Some(
        bindings
            .items
            .into_iter()
            .filter_map(|b| b.metadata.project)
            .collect(),
    ))
}

/// Require at least `min` in `project`: 404 when the caller cannot see the
/// project at all, 403 when it can see but not do.
pub async fn require_role(
    repo: &Repo,
    caller: &Caller,
    project: &str,
    min: Role,
) -> ApiResult<Role> {
    let role = role_in(repo, caller, project).await?;
    match role {
        None => Err(project_not_found(project)),
        Some(r) if r < min => Err(ServerError(ApiError::forbidden(format!(
            "your role in project {project:?} is {r}; this needs {min}: ask a project admin for a role binding"
        )))),
        Some(r) => {
            // The project must really exist (a binding can outlive nothing, but an
            // admin may name a project that was never made).
            if repo
                .try_get::<nimbus_api::Project>(None, project)
                .await?
                .is_none()
            {
                return Err(project_not_found(project));
            }
            Ok(r)
        }
    }
}

/// Host agents may read the images their instances need, in any project
/// that exists; everyone else needs `min` in the project.
pub async fn require_host_or_role(
    repo: &Repo,
    caller: &Caller,
    project: &str,
    min: Role,
) -> ApiResult<()> {
    if caller.is_host_agent() {
        if repo
            .try_get::<nimbus_api::Project>(None, project)
            .await?
            .is_none()
        {
            return Err(project_not_found(project));
        }
        return Ok(());
    }
    require_role(repo, caller, project, min).await.map(|_| ())
}

pub fn project_not_found(project: &str) -> ServerError {
    ServerError(ApiError::not_found(format!(
        "project {project:?} not found; list yours with `nimbus project list`"
    )))
}

pub fn require_system_admin(caller: &Caller) -> ApiResult<()> {
    if caller.system_admin {
        Ok(())
    } else {
        Err(ServerError(ApiError::forbidden(
            "this needs a system administrator's token",
        )))
    }
}

/// Paths served without a token (joining hosts authenticate with their
/// join token, in the body).
fn is_public(path: &str) -> bool {
    matches!(path, "/v1/openapi.json" | "/v1/health" | JOIN_PATH)
}

pub const JOIN_PATH: &str = "/v1/hosts/join";

/// Where a call came from, for the audit log: the peer's address, or the
/// local socket.
pub fn request_source(extensions: &axum::http::Extensions) -> String {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "local socket".into())
}

/// Middleware: authenticate, run the handler, audit mutating calls.
pub async fn auth_layer(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mutating = !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS");
    if is_public(&path) {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let result = match (header, cookie::session_id(req.headers())) {
        // A browser session stands in for the token only when no bearer
        // token is sent; bearer calls are unchanged.
        (None, Some(session_id)) => {
            authenticate_cookie(&state, req.headers(), &session_id, mutating).await
        }
        (header, _) => authenticate(&state, header.as_deref()).await,
    };
    let caller = match result {
        Ok(c) => c,
        Err(e) => {
            let resp = e.into_response();
            if mutating {
                audit::record_unauthenticated(
                    &state,
                    &request_source(req.extensions()),
                    &method,
                    &path,
                    audit::outcome(&resp),
                )
                .await;
            }
            return resp;
        }
    };
    if caller.metrics_reader
        && !caller.system_admin
        && !matches!(path.as_str(), "/metrics" | "/v1/whoami")
    {
        return ServerError(ApiError::forbidden(format!(
            "user {:?} is a metrics reader: its tokens read /metrics only",
            caller.user
        )))
        .into_response();
    }
    req.extensions_mut().insert(caller.clone());
    // Agents report status several times a second; auditing each report
    // would drown the log in noise, so of agents' calls only those that
    // change what exists are audited: anything but a status or statistics report, and
    // the report that finalizes a deletion (its handler marks it), which is
    // recorded after it ran. Every other mutating call is recorded before
    // it runs, and refused when its record cannot be written.
    let agent_report =
        caller.is_host_agent() && (path.ends_with("/status") || path.ends_with("/stats"));
    let pending = if mutating && !agent_report {
        match audit::begin(&state, &caller, &method, &path).await {
            Ok(p) => Some(p),
            Err(e) => return e.into_response(),
        }
    } else {
        None
    };
    let resp = next.run(req).await;
    if let Some(pending) = pending {
        audit::finish(&state, pending, audit::outcome(&resp)).await;
    } else if mutating && resp.extensions().get::<audit::AuditAgentCall>().is_some() {
        audit::record(&state, &caller, &method, &path, audit::outcome(&resp)).await;
    }
    resp
}
