//! The API router in process: a temp-dir SQLite store, no listener, no
//! agent and no root. Validation, authentication, tenancy and error codes
//! as a client sees them (status and the `error.code` of the body).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nimbus_server::config::ServerConfig;
use nimbus_server::state::AppState;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Api {
    state: Arc<AppState>,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn open() -> Api {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ServerConfig::with_data_dir(dir.path().join("data"));
        let admin_path = config.admin_token_path();
        let state = nimbus_server::server::open_state(config)
            .await
            .expect("open the server state");
        let admin = std::fs::read_to_string(admin_path)
            .expect("admin token")
            .trim()
            .to_string();
        Api {
            state,
            admin,
            _dir: dir,
        }
    }

    /// One request through the router: status and JSON body (Null if none).
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some((content_type, bytes)) => req
                .header("content-type", content_type)
                .body(Body::from(bytes)),
            None => req.body(Body::empty()),
        }
        .expect("request");
        let resp = nimbus_server::api::router(self.state.clone())
            .oneshot(req)
            .await
            .expect("the router answers");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn json(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let bytes = serde_json::to_vec(&body).expect("encode");
        self.call(method, path, Some(token), Some(("application/json", bytes)))
            .await
    }

    /// A user with `role` in `project` (created if missing), and its token.
    async fn member(&self, user: &str, project: &str, role: &str) -> String {
        let (s, _) = self
            .json(
                "POST",
                "/v1/users",
                &self.admin,
                json!({"name": user, "spec": {}}),
            )
            .await;
        assert!(s == StatusCode::CREATED || s == StatusCode::CONFLICT, "{s}");
        let (s, b) = self
            .json(
                "POST",
                &format!("/v1/projects/{project}/rolebindings"),
                &self.admin,
                json!({"user": user, "role": role}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let (s, b) = self
            .json("POST", "/v1/tokens", &self.admin, json!({"user": user}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b["secret"].as_str().expect("secret").to_string()
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let api = Api::open().await;
    let (s, b) = api.call("GET", "/v1/projects", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&b), "unauthenticated", "{b}");
    let (s, b) = api
        .call("GET", "/v1/projects", Some("nmb_not_a_token"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    let forged = format!("nmb_{}_{}", "0".repeat(16), "0".repeat(64));
    let (s, _) = api.call("GET", "/v1/projects", Some(&forged), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Served without a token.
    let (s, _) = api.call("GET", "/v1/health", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = api
        .call("GET", "/v1/projects", Some(&api.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

#[tokio::test]
async fn bad_bodies_get_clear_errors_and_change_nothing() {
    let api = Api::open().await;
    let admin = api.admin.clone();
    let (s, b) = api
        .call(
            "POST",
            "/v1/projects",
            Some(&admin),
            Some(("application/json", b"{not json".to_vec())),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = api
        .call(
            "POST",
            "/v1/projects",
            Some(&admin),
            Some(("text/plain", br#"{"name":"ops","spec":{}}"#.to_vec())),
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{b}");
    let huge = format!(
        r#"{{"name":"ops","spec":{{"description":"{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    let (s, b) = api
        .call(
            "POST",
            "/v1/projects",
            Some(&admin),
            Some(("application/json", huge.into_bytes())),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    let (s, b) = api
        .json(
            "POST",
            "/v1/projects",
            &admin,
            json!({"name": "Bad Name!", "spec": {}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("invalid"),
        "{b}"
    );
    let (s, b) = api
        .json(
            "POST",
            "/v1/projects",
            &admin,
            json!({"name": "ports", "spec": {"host_ports": {"min": 80, "max": 90, "max_count": 1}}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    // None of the refused calls made a project.
    for name in ["ops", "ports"] {
        let (s, _) = api
            .call("GET", &format!("/v1/projects/{name}"), Some(&admin), None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "project {name} must not exist");
    }
}

#[tokio::test]
async fn projects_are_sealed_and_roles_are_enforced() {
    let api = Api::open().await;
    let admin = api.admin.clone();
    for p in ["blue", "red"] {
        let (s, b) = api
            .json(
                "POST",
                "/v1/projects",
                &admin,
                json!({"name": p, "spec": {}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let blue_reader = api.member("bob", "blue", "reader").await;
    let red_member = api.member("rita", "red", "member").await;

    // Another project's member sees nothing of blue: 404, as if it did not exist.
    for path in [
        "/v1/projects/blue",
        "/v1/projects/blue/instances",
        "/v1/projects/blue/instances/web",
        "/v1/projects/blue/networks",
    ] {
        let (s, b) = api.call("GET", path, Some(&red_member), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {b}");
        assert_eq!(code(&b), "not_found", "{b}");
    }
    // Secret environment values go to no user: another project's member
    // learns nothing (404), blue's reader and the system administrator are
    // refused (403).
    let secret = "/v1/projects/blue/instances/web/secret-env";
    let (s, b) = api.call("GET", secret, Some(&red_member), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    for token in [&blue_reader, &admin] {
        let (s, b) = api.call("GET", secret, Some(token), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    }
    // A reader sees blue but may not change it: 403, with the role named.
    let (s, b) = api
        .call(
            "GET",
            "/v1/projects/blue/instances",
            Some(&blue_reader),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = api
        .json(
            "POST",
            "/v1/projects/blue/networks",
            &blue_reader,
            json!({"name": "n1", "spec": {"subnet": "10.9.0.0/24"}}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(code(&b), "forbidden", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("reader"),
        "{b}"
    );
    // Only system administrators change a project's settings or make projects.
    let (s, b) = api
        .json(
            "PUT",
            "/v1/projects/red",
            &red_member,
            json!({"host_ports": {"min": 1024, "max": 65535, "max_count": 1000}}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, _) = api
        .json(
            "POST",
            "/v1/projects",
            &red_member,
            json!({"name": "mine", "spec": {}}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A spec naming an unknown image is invalid (422, naming the image and
    // the command to import it), and no instance is stored.
    let (s, b) = api
        .json(
            "POST",
            "/v1/projects/red/instances",
            &red_member,
            json!({"name": "web", "spec": {"image": "nope"}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(code(&b), "invalid", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("nope"),
        "{b}"
    );
    let (s, b) = api
        .call(
            "GET",
            "/v1/projects/red/instances/web",
            Some(&red_member),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
}
