//! The web console's server side in process: its page and headers,
//! sign-in with a token, the session cookie standing for that token on the
//! `/v1` API, CSRF on changes, revocation and sign-out.

mod support;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};
use support::{code, Api};

/// One request through the router: status, headers and body.
async fn call(api: &Api, req: Request<Body>) -> (StatusCode, header::HeaderMap, Vec<u8>) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let resp = nimbus_server::api::router(api.state.clone())
        .oneshot(req)
        .await
        .expect("the router answers");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, body.to_vec())
}

/// Sign in with `token` through the form; the session cookie it set.
async fn sign_in(api: &Api, token: &str) -> Option<String> {
    let req = Request::post("/ui/session")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "127.0.0.1:7443")
        .header("origin", "https://127.0.0.1:7443")
        .body(Body::from(format!("token={token}")))
        .expect("request");
    let (status, headers, _) = call(api, req).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "sign-in answers a redirect");
    let cookie = headers.get(header::SET_COOKIE)?.to_str().ok()?.to_string();
    for part in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(
            cookie.contains(part),
            "session cookie {cookie} lacks {part}"
        );
    }
    Some(cookie.split(';').next()?.to_string())
}

/// A request carrying the session cookie (and optionally a CSRF header).
fn with_cookie(
    method: &str,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("cookie", cookie);
    if let Some(c) = csrf {
        req = req.header("x-csrf-token", c);
    }
    match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&b).expect("json"))),
        None => req.body(Body::empty()),
    }
    .expect("request")
}

async fn json_of(api: &Api, req: Request<Body>) -> (StatusCode, Value) {
    let (s, _, b) = call(api, req).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// The page's view of its session: the CSRF secret.
async fn csrf_of(api: &Api, cookie: &str) -> String {
    let (s, v) = json_of(api, with_cookie("GET", "/ui/session", cookie, None, None)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["csrf"].as_str().expect("csrf").to_string()
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy_and_no_token() {
    let api = Api::open().await;
    let (s, h, body) = call(&api, Request::get("/ui/").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains(r#"<script src="/ui/app.js""#), "{html}");
    assert!(!html.contains("<script>"), "no inline script: {html}");
    assert!(
        html.contains(r#"method="post" action="/ui/session""#),
        "sign-in is a form POST"
    );
    let (s, h, js) = call(
        &api,
        Request::get("/ui/app.js").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let js = String::from_utf8(js).unwrap();
    assert!(
        !js.contains(".innerHTML") && !js.contains("eval("),
        "the script builds the page with textContent only"
    );
    let (s, _, _) = call(
        &api,
        Request::get("/ui/nope.js").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_session_cookie_acts_as_its_token_and_changes_need_the_csrf_token() {
    let api = Api::open().await;
    let cookie = sign_in(&api, &api.admin).await.expect("a session cookie");
    let (s, v) = json_of(&api, with_cookie("GET", "/v1/whoami", &cookie, None, None)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user"], "admin");

    let body = json!({"name": "web", "spec": {}});
    let (s, v) = json_of(
        &api,
        with_cookie("POST", "/v1/projects", &cookie, None, Some(body.clone())),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no CSRF header: {v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-csrf-token"));
    let (s, _) = json_of(
        &api,
        with_cookie(
            "POST",
            "/v1/projects",
            &cookie,
            Some(&"0".repeat(64)),
            Some(body.clone()),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a wrong CSRF token");
    let (s, _) = json_of(
        &api,
        Api::request("GET", "/v1/projects/web", Some(&api.admin), None),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing was made without CSRF");

    let csrf = csrf_of(&api, &cookie).await;
    let (s, v) = json_of(
        &api,
        with_cookie("POST", "/v1/projects", &cookie, Some(&csrf), Some(body)),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // Bearer calls are unchanged: no CSRF needed.
    let (s, _) = api
        .send_json(
            "POST",
            "/v1/projects",
            &api.admin,
            json!({"name": "ops", "spec": {}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    // The change is audited under the token's user.
    let (_, v) = json_of(
        &api,
        Api::request(
            "GET",
            "/v1/audit?path_prefix=/v1/projects",
            Some(&api.admin),
            None,
        ),
    )
    .await;
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["actor"] == "admin" && r["method"] == "POST" && r["status"] == 201),
        "{v}"
    );
}

#[tokio::test]
async fn bad_tokens_and_other_sites_get_no_session() {
    let api = Api::open().await;
    assert!(
        sign_in(&api, "nmb_0000000000000000_nope").await.is_none(),
        "malformed token"
    );
    let wrong = format!("nmb_{}_{}", "0".repeat(16), "1".repeat(64));
    assert!(sign_in(&api, &wrong).await.is_none(), "unknown token");
    let req = Request::post("/ui/session")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "127.0.0.1:7443")
        .header("origin", "https://evil.example")
        .body(Body::from(format!("token={}", api.admin)))
        .unwrap();
    let (s, h, _) = call(&api, req).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "sign-in posted from another site");
    assert!(h.get(header::SET_COOKIE).is_none());
    let (s, v) = json_of(
        &api,
        with_cookie("GET", "/v1/whoami", "nimbus_session=forged", None, None),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(code(&v), "unauthenticated");
}

#[tokio::test]
async fn a_session_ends_with_its_token_and_at_sign_out() {
    let api = Api::open().await;
    api.project("web").await;
    let token = api.member("alice", "web", "member").await;
    let cookie = sign_in(&api, &token).await.expect("cookie");
    let (s, _) = json_of(
        &api,
        with_cookie("GET", "/v1/projects/web/instances", &cookie, None, None),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let token_id = token.split('_').nth(1).unwrap();
    let (s, _) = json_of(
        &api,
        Api::request(
            "DELETE",
            &format!("/v1/tokens/{token_id}"),
            Some(&api.admin),
            None,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = json_of(
        &api,
        with_cookie("GET", "/v1/projects/web/instances", &cookie, None, None),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the token was revoked");

    let cookie = sign_in(&api, &api.admin).await.expect("cookie");
    let csrf = csrf_of(&api, &cookie).await;
    let (s, h, _) = call(
        &api,
        with_cookie("POST", "/ui/signout", &cookie, Some(&csrf), None),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(h[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let (s, _) = json_of(&api, with_cookie("GET", "/v1/whoami", &cookie, None, None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "signed out");
}

#[tokio::test]
async fn a_readers_session_is_refused_changes_as_its_token_is() {
    let api = Api::open().await;
    api.project("web").await;
    let token = api.member("rita", "web", "reader").await;
    let cookie = sign_in(&api, &token).await.expect("cookie");
    let csrf = csrf_of(&api, &cookie).await;
    let (s, v) = json_of(
        &api,
        with_cookie(
            "POST",
            "/v1/projects/web/networks",
            &cookie,
            Some(&csrf),
            Some(json!({"name": "n1", "spec": {"subnet": "10.9.0.0/24"}})),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("reader"));
    let (s, _) = json_of(
        &api,
        with_cookie("GET", "/v1/projects/other/instances", &cookie, None, None),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "other projects stay sealed");
}
