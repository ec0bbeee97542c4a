//! Hosts joining the cloud: one-time join tokens (system administrators)
//! and the join call a new host's agent makes with one, which trades the
//! token for the host's own credential.

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::{Extension, Json};
use chrono::{Duration, Utc};
use nimbus_api::join::{JoinTokenParts, JOIN_TOKEN_DEFAULT_TTL_SECS, JOIN_TOKEN_MAX_TTL_SECS};
use nimbus_api::{
    validate_name, ApiError, CreateJoinToken, Host, HostPhase, JoinRequest, JoinResponse,
    JoinToken, JoinTokenCreated, JoinTokenSpec, JoinTokenStatus, ListOptions, Metadata,
    ResourceList, Token, WatchEvent,
};
use nimbus_store::{Compare, Op, Txn};

use super::body::JsonBody;
use super::params::JoinTokenPath;
use super::St;
use crate::auth::{self, audit, token, Caller};
use crate::error::{ApiResult, ServerError};
use crate::repo;
use crate::state::AppState;

#[utoipa::path(post, path = "/v1/hosts/join-tokens", operation_id = "create_join_token", tag = "hosts", request_body = CreateJoinToken,
    responses((status = 201, body = JoinTokenCreated, description = "Created; the token (secret and the server CA's SHA-256) is shown only here (system administrators)")))]
pub async fn create(
    State(state): St,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<CreateJoinToken>,
) -> ApiResult<(StatusCode, Json<JoinTokenCreated>)> {
    auth::require_system_admin(&caller)?;
    let ttl = req.ttl_secs.unwrap_or(JOIN_TOKEN_DEFAULT_TTL_SECS);
    if !(1..=JOIN_TOKEN_MAX_TTL_SECS).contains(&ttl) {
        return Err(ServerError(ApiError::invalid(format!(
            "ttl_secs {ttl} is out of range: give 1 to {JOIN_TOKEN_MAX_TTL_SECS} seconds (24h)"
        ))));
    }
    if let Some(host) = &req.host {
        validate_name("host", host).map_err(ApiError::invalid)?;
    }
    let ca_sha256 = served_ca_sha256(&state)?;
    prune_expired(&state).await?;
    let (id, secret) = token::generate();
    let expires_at = Utc::now() + Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX));
    let mut stored = state
        .repo
        .create(JoinToken {
            metadata: Metadata::new(&id, None),
            spec: JoinTokenSpec {
                expires_at,
                host: req.host,
                ca_sha256: ca_sha256.clone(),
            },
            status: JoinTokenStatus {
                secret_sha256: token::hash_hex(&secret),
            },
        })
        .await?;
    nimbus_api::resources::Object::redact(&mut stored);
    let token = JoinTokenParts {
        id,
        secret,
        ca_sha256,
    }
    .format();
    Ok((
        StatusCode::CREATED,
        Json(JoinTokenCreated {
            join_token: stored,
            token,
        }),
    ))
}

/// Expired tokens can never be used: they go when a new one is made.
async fn prune_expired(state: &AppState) -> ApiResult<()> {
    let now = Utc::now();
    let expired =
        super::users::list_all_matching::<JoinToken>(&state.repo, |t| t.spec.expires_at < now)
            .await?;
    for t in expired {
        super::users::delete_if_present::<JoinToken>(&state.repo, None, &t.metadata.name).await?;
    }
    Ok(())
}

/// The SHA-256 of the CA certificate this server's TLS port presents.
fn served_ca_sha256(state: &AppState) -> ApiResult<String> {
    if state.config.listen.is_none() {
        return Err(ServerError(ApiError::conflict(
            "this server serves no TLS port (--no-tls), so no agent can join it; restart it with --listen ADDRESS:PORT",
        )));
    }
    let internal = |e: anyhow::Error| {
        ServerError(ApiError::internal(format!(
            "reading the server's TLS certificate: {e:#}"
        )))
    };
    let (cert, _) = crate::tls::ensure_certificate(
        &state.config.tls_dir(),
        state.config.tls_cert.as_deref(),
        state.config.tls_key.as_deref(),
        state.config.listen.map(|a| a.ip()),
    )
    .map_err(internal)?;
    crate::tls::ca_sha256(&cert).map_err(internal)
}

#[utoipa::path(get, path = "/v1/hosts/join-tokens", operation_id = "list_join_tokens", tag = "hosts", params(ListOptions),
    responses((status = 200, description = "Unused join tokens, without their secrets (system administrators); with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<JoinToken> = "application/json"), (WatchEvent<JoinToken> = "application/x-ndjson")))))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Query(opts): Query<ListOptions>,
) -> ApiResult<axum::response::Response> {
    auth::require_system_admin(&caller)?;
    super::watch::list_or_watch::<JoinToken>(
        &state,
        None,
        &opts,
        |_| true,
        super::watch::Guard::new(caller, super::watch::Need::SystemAdmin),
    )
    .await
}

#[utoipa::path(delete, path = "/v1/hosts/join-tokens/{token}", operation_id = "delete_join_token", tag = "hosts", params(JoinTokenPath),
    responses((status = 204, description = "Revoked: no agent can join with it any more (system administrators)")))]
pub async fn delete(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth::require_system_admin(&caller)?;
    match state.repo.delete::<JoinToken>(None, &id, None).await {
        Err(e) if e.0.code == nimbus_api::ErrorCode::NotFound => {
            Err(ServerError(ApiError::not_found(format!(
                "join token {id:?} not found (used, revoked or never made); list them with `nimbus host join-token list`"
            ))))
        }
        other => other.map(|_| StatusCode::NO_CONTENT),
    }
}

#[utoipa::path(post, path = "/v1/hosts/join", operation_id = "join_host", tag = "hosts", security(()), request_body = JoinRequest,
    responses((status = 200, body = JoinResponse, description = "Joined: the join token is used up and the host's credential is shown only here"),
        (status = 401, description = "The join token is malformed, unknown, used, revoked or expired: nothing changed"),
        (status = 403, description = "The join token is bound to another host name"),
        (status = 409, description = "A host of that name is ready (its agent heartbeats)")))]
pub async fn join(
    State(state): St,
    extensions: axum::http::Extensions,
    JsonBody(req): JsonBody<JoinRequest>,
) -> ApiResult<Json<JoinResponse>> {
    let result = consume_join_token(&state, &req).await;
    match &result {
        Ok(joined) => {
            let caller = host_caller(&joined.host);
            audit::record(&state, &caller, &Method::POST, auth::JOIN_PATH, (200, None)).await;
            tracing::info!(host = %joined.host, "host joined");
        }
        Err(e) => {
            let source = auth::request_source(&extensions);
            let outcome = (e.0.status(), Some(e.0.code));
            audit::record_unauthenticated(&state, &source, &Method::POST, auth::JOIN_PATH, outcome)
                .await;
        }
    }
    result.map(Json)
}

fn host_caller(host: &str) -> Caller {
    Caller {
        user: format!("host:{host}"),
        system_admin: false,
        token_id: String::new(),
        host: Some(host.to_string()),
        metrics_reader: false,
    }
}

fn refused(why: &str) -> ServerError {
    ServerError(ApiError::unauthenticated(format!(
        "{why}; create a new one with `nimbus host join-token create` and start the agent with `nimbus agent --join <token>`"
    )))
}

/// Check the join token, then in one store write delete it and store the
/// host's new token: of two agents racing with one token, one wins.
async fn consume_join_token(state: &AppState, req: &JoinRequest) -> ApiResult<JoinResponse> {
    let parts = JoinTokenParts::parse(&req.token).ok_or_else(|| {
        refused("malformed join token: expected nmbjoin_<id>_<secret>_<ca-sha256> as printed when it was created")
    })?;
    let gone = "this join token is unknown: already used, revoked or never made";
    let stored: JoinToken = state
        .repo
        .try_get(None, &parts.id)
        .await?
        .ok_or_else(|| refused(gone))?;
    let matches = token::decode_hash(&stored.status.secret_sha256)
        .is_some_and(|h| token::hashes_equal(&h, &token::hash_secret(&parts.secret)));
    if !matches {
        return Err(refused(gone));
    }
    if stored.spec.expires_at < Utc::now() {
        return Err(refused(&format!(
            "this join token expired at {}",
            stored.spec.expires_at.to_rfc3339()
        )));
    }
    validate_name("host", &req.host).map_err(ApiError::invalid)?;
    if let Some(bound) = stored.spec.host.as_deref().filter(|b| *b != req.host) {
        return Err(ServerError(ApiError::forbidden(format!(
            "this join token is for host {bound:?}, not {:?}; start the agent with --host-name {bound}",
            req.host
        ))));
    }
    refuse_live_host(state, &req.host).await?;
    let (record, credential) = super::users::new_token(
        &format!("host:{}", req.host),
        "host agent (joined with a join token)",
        Some(&req.host),
        None,
    );
    let join_key = repo::key::<JoinToken>(None, &parts.id);
    let token_key = repo::key::<Token>(None, &record.metadata.name);
    let written = state
        .repo
        .store
        .txn(Txn {
            compares: vec![
                Compare::ModRevision(join_key.clone(), stored.metadata.revision),
                Compare::Absent(token_key.clone()),
            ],
            success: vec![
                Op::Delete { key: join_key },
                Op::Put {
                    key: token_key,
                    value: repo::encode(&record)?,
                },
            ],
            failure: vec![],
        })
        .await?;
    if !written.succeeded {
        return Err(refused("this join token was just used by another agent"));
    }
    revoke_older_host_tokens(state, &req.host, &record.metadata.name).await?;
    Ok(JoinResponse {
        host: req.host.clone(),
        credential,
    })
}

/// A name held by a host whose agent heartbeats cannot be taken over.
async fn refuse_live_host(state: &AppState, host: &str) -> ApiResult<()> {
    let existing: Option<Host> = state.repo.try_get(None, host).await?;
    if existing.is_some_and(|h| h.status.phase == HostPhase::Ready) {
        return Err(ServerError(ApiError::conflict(format!(
            "host {host:?} is ready: its agent heartbeats; join with another --host-name, or stop that agent and wait until `nimbus host list` shows it unreachable"
        ))));
    }
    Ok(())
}

/// A host that joins again (reinstalled, data dir lost) gets a new
/// credential: the old ones stop working.
async fn revoke_older_host_tokens(state: &AppState, host: &str, keep: &str) -> ApiResult<()> {
    let older = super::users::list_all_matching::<Token>(&state.repo, |t| {
        t.spec.host.as_deref() == Some(host) && t.metadata.name != keep
    })
    .await?;
    for t in &older {
        super::users::delete_if_present::<Token>(&state.repo, None, &t.metadata.name).await?;
    }
    if !older.is_empty() {
        state.tokens.invalidate_all();
        tracing::info!(host = %host, revoked = older.len(), "revoked the older credentials of a host that joined again");
    }
    Ok(())
}
