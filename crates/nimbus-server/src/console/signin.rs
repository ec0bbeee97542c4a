//! Sign-in (a form POST of a token), the page's session (its user and CSRF
//! secret) and sign-out.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use nimbus_api::ApiError;
use serde::Deserialize;

use crate::auth::{self, audit, cookie, token};
use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

/// `POST /ui/session` (form `token=...`): verify the token as the API
/// would, start a session and send its cookie; back to the console either
/// way, with `?signin=failed` when the token was refused.
pub async fn sign_in(
    State(state): State<Arc<AppState>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    if !super::same_origin(&headers, uri.authority().map(|a| a.as_str())) {
        return ServerError(ApiError::forbidden(
            "console sign-in from another site's page is refused; open /ui/ on this server and sign in there",
        ))
        .into_response();
    }
    let verified = match token::parse(form.token.trim()) {
        Some((id, secret)) => auth::verify(&state, id, token::hash_secret(secret))
            .await
            .map(|caller| (caller, token::hash_secret(secret))),
        None => Err(ServerError(ApiError::unauthenticated(
            "malformed token: expected nmb_<id>_<secret>",
        ))),
    };
    let method = Method::POST;
    match verified {
        Ok((caller, hash)) if !caller.is_host_agent() => {
            let id = state.browser_sessions.create(&caller.token_id, hash);
            let resp = (
                [(header::SET_COOKIE, cookie::set_cookie(&id))],
                Redirect::to("/ui/"),
            )
                .into_response();
            audit::record(&state, &caller, &method, "/ui/session", (303, None)).await;
            resp
        }
        _ => {
            let source = connect
                .map(|c| c.0 .0.ip().to_string())
                .unwrap_or_else(|| "local socket".into());
            audit::record_unauthenticated(
                &state,
                &source,
                &method,
                "/ui/session",
                (401, Some(nimbus_api::ErrorCode::Unauthenticated)),
            )
            .await;
            Redirect::to("/ui/?signin=failed").into_response()
        }
    }
}

/// `GET /ui/session`: who the page's session is, and the CSRF secret its
/// script sends back on changes. Readable only by this origin's pages
/// (SameSite=Strict cookie, no CORS).
pub async fn current(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let id = cookie::session_id(&headers)
        .ok_or_else(|| ApiError::unauthenticated("not signed in: sign in with a token at /ui/"))?;
    let caller = auth::authenticate_cookie(&state, &headers, &id, false).await?;
    let session = state
        .browser_sessions
        .get(&id)
        .ok_or_else(|| ApiError::unauthenticated("console session ended; sign in again at /ui/"))?;
    Ok(Json(serde_json::json!({
        "user": caller.user,
        "system_admin": caller.system_admin,
        "csrf": session.csrf,
    })))
}

/// `POST /ui/signout` (with the CSRF header): end the session and delete
/// its cookie.
pub async fn sign_out(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(id) = cookie::session_id(&headers) else {
        return (
            StatusCode::NO_CONTENT,
            [(header::SET_COOKIE, cookie::clear_cookie())],
        )
            .into_response();
    };
    let caller = match auth::authenticate_cookie(&state, &headers, &id, true).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    state.browser_sessions.remove(&id);
    audit::record(&state, &caller, &Method::POST, "/ui/signout", (204, None)).await;
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, cookie::clear_cookie())],
    )
        .into_response()
}
