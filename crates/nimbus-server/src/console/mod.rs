//! The web console at `/ui/`: embedded page assets, sign-in and sign-out.
//!
//! The console is a static page plus script (`ui/` in this crate, embedded
//! with `include_str!`, so the binary serves it with no other step). Its
//! script calls the public `/v1` API with the session cookie that sign-in
//! sets (see `auth::cookie`); nothing here bypasses the API's own checks.
//! Every console response carries a strict Content Security Policy (no
//! inline script, no eval, no framing).

mod assets;
mod signin;
mod terminal;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

/// The policy every console response carries: scripts, styles and calls
/// only from this origin, no inline script or eval, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's routes, merged beside the API's (outside its token check:
/// the page itself is public; what it shows comes from the API).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(assets::index))
        .route("/ui/session", get(signin::current).post(signin::sign_in))
        .route("/ui/signout", post(signin::sign_out))
        .route("/ui/terminal/{project}/{name}", get(terminal::open))
        .route("/ui/{file}", get(assets::file))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// Whether a request comes from this server's own page: a form or a
/// WebSocket on another site must not act with a browser's session.
/// Browsers say so in `Sec-Fetch-Site`; without it, a sent `Origin` must
/// name this server (`Host`, or the HTTP/2 authority in `host`). Requests
/// with neither come from tools, not from another site's page.
pub(crate) fn same_origin(headers: &HeaderMap, host: Option<&str>) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or(host)
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_from_another_origin_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:7443".parse().unwrap());
        assert!(same_origin(&h, None), "no Origin: a plain form or a tool");
        h.insert(header::ORIGIN, "https://127.0.0.1:7443".parse().unwrap());
        assert!(same_origin(&h, None));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!same_origin(&h, None));
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!same_origin(&h, None));
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(!same_origin(&h, None));
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(same_origin(&h, None), "the browser's own word");
    }
}
