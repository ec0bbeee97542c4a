//! The API router in process for the router tests: a temp-dir SQLite store,
//! no listener, no agent, no root. Each test file adds its own request
//! helpers in an `impl Api` of its own.
#![allow(dead_code)]

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nimbus_server::config::ServerConfig;
use nimbus_server::state::AppState;
use serde_json::{json, Value};
use tower::ServiceExt;

pub struct Api {
    pub state: Arc<AppState>,
    /// The administrator's token, as `nimbus up` writes it at first start.
    pub admin: String,
    _dir: tempfile::TempDir,
}

impl Api {
    pub async fn open() -> Api {
        Self::open_with(|_| {}).await
    }

    pub async fn open_with(configure: impl FnOnce(&mut ServerConfig)) -> Api {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ServerConfig::with_data_dir(dir.path().join("data"));
        configure(&mut config);
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

    /// A request with an optional bearer token and a body of a given type.
    pub fn request_bytes(
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Request<Body> {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        match body {
            Some((content_type, bytes)) => req
                .header("content-type", content_type)
                .body(Body::from(bytes)),
            None => req.body(Body::empty()),
        }
        .expect("request")
    }

    /// A request with an optional bearer token and JSON body.
    pub fn request(
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Request<Body> {
        let body = body.map(|v| ("application/json", serde_json::to_vec(&v).expect("encode")));
        Self::request_bytes(method, path, token, body)
    }

    /// One request through the router: its status and whole body.
    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Bytes) {
        let resp = nimbus_server::api::router(self.state.clone())
            .oneshot(req)
            .await
            .expect("the router answers");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, bytes)
    }

    /// One request with a JSON body; the status and the JSON answer (Null
    /// if the answer is not JSON).
    pub async fn send_json(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let (s, b) = self
            .send(Self::request(method, path, Some(token), Some(body)))
            .await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    /// Project `name`, made by the administrator.
    pub async fn project(&self, name: &str) {
        let (s, b) = self
            .send_json(
                "POST",
                "/v1/projects",
                &self.admin,
                json!({"name": name, "spec": {}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }

    /// A user with `role` in `project` (created if missing), and its token.
    pub async fn member(&self, user: &str, project: &str, role: &str) -> String {
        let (s, _) = self
            .send_json(
                "POST",
                "/v1/users",
                &self.admin,
                json!({"name": user, "spec": {}}),
            )
            .await;
        assert!(s == StatusCode::CREATED || s == StatusCode::CONFLICT, "{s}");
        let (s, b) = self
            .send_json(
                "POST",
                &format!("/v1/projects/{project}/rolebindings"),
                &self.admin,
                json!({"user": user, "role": role}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let (s, b) = self
            .send_json("POST", "/v1/tokens", &self.admin, json!({"user": user}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b["secret"].as_str().expect("secret").to_string()
    }

    /// A token of the agent of `host`, as `nimbus up` issues it.
    pub async fn host_token(&self, host: &str) -> String {
        nimbus_server::api::users::issue_token(
            &self.state.repo,
            &format!("host:{host}"),
            "host agent",
            Some(host),
            None,
        )
        .await
        .expect("host token")
        .secret
    }
}

/// The stable `error.code` of an error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// The `error.message` of an error body.
pub fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("<no message>")
}

/// A root-filesystem tarball with one file: an image without a default
/// command, so instances of it give their own.
pub fn rootfs_tar() -> Vec<u8> {
    let content = b"hello\n";
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder
        .append_data(&mut header, "etc/motd", &content[..])
        .expect("tar entry");
    builder.into_inner().expect("tar")
}
