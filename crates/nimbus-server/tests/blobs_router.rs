//! `GET /v1/projects/{project}/images/{name}/blobs/{digest}` through the
//! real router: the bytes a host needs, to the callers that may have them.

mod support;

use axum::http::StatusCode;
use nimbus_api::{Instance, InstanceSpec, Metadata};
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{code, message, rootfs_tar, Api};
use tower::ServiceExt;

struct Fixture {
    api: Api,
    /// The digest of image `web`'s one layer in project `red`.
    layer: String,
    red_reader: String,
    blue_member: String,
    /// The agent of host `h1`, which runs an instance of `web`.
    h1: String,
    /// The agent of host `h2`, which runs nothing.
    h2: String,
}

impl Fixture {
    async fn new() -> Fixture {
        let api = Api::open().await;
        api.project("red").await;
        api.project("blue").await;
        let red_member = api.member("rita", "red", "member").await;
        let red_reader = api.member("ray", "red", "reader").await;
        let blue_member = api.member("bo", "blue", "member").await;
        let (s, b) = api
            .send(Api::request_bytes(
                "POST",
                "/v1/projects/red/images?name=web",
                Some(&red_member),
                Some(("application/octet-stream", rootfs_tar())),
            ))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
        let image: Value = serde_json::from_slice(&b).expect("image JSON");
        let layer = image["status"]["layers"][0]
            .as_str()
            .expect("a layer")
            .to_string();
        let mut instance = Instance {
            metadata: Metadata::new("site", Some("red")),
            spec: InstanceSpec {
                image: "web".into(),
                ..Default::default()
            },
            status: Default::default(),
        };
        instance.status.host = Some("h1".into());
        api.state
            .repo
            .create(instance)
            .await
            .expect("an instance bound to h1");
        let h1 = api.host_token("h1").await;
        let h2 = api.host_token("h2").await;
        Fixture {
            api,
            layer,
            red_reader,
            blue_member,
            h1,
            h2,
        }
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, axum::body::Bytes) {
        self.api
            .send(Api::request("GET", path, Some(token), None))
            .await
    }
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

#[tokio::test]
async fn the_host_running_the_image_and_project_readers_get_the_blob_bytes() {
    let f = Fixture::new().await;
    let path = format!("/v1/projects/red/images/web/blobs/{}", f.layer);
    for token in [&f.h1, &f.red_reader, &f.api.admin] {
        let resp = nimbus_server::api::router(f.api.state.clone())
            .oneshot(Api::request("GET", &path, Some(token), None))
            .await
            .expect("answer");
        assert_eq!(resp.status(), StatusCode::OK);
        let headers = resp.headers().clone();
        assert_eq!(headers["x-nimbus-digest"], f.layer.as_str());
        assert_eq!(headers["content-type"], "application/octet-stream");
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body.as_ref(), rootfs_tar().as_slice());
        assert_eq!(headers["content-length"], body.len().to_string().as_str());
        assert_eq!(
            format!("sha256:{}", hex::encode(Sha256::digest(&body))),
            f.layer
        );
    }
}

#[tokio::test]
async fn other_projects_and_other_hosts_see_not_found() {
    let f = Fixture::new().await;
    let path = format!("/v1/projects/red/images/web/blobs/{}", f.layer);
    for (who, token) in [("blue's member", &f.blue_member), ("host h2", &f.h2)] {
        let (s, b) = f.get(&path, token).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{who}: {}", json(&b));
        assert!(
            !message(&json(&b)).contains("sha256"),
            "{who} learns of the blob: {}",
            json(&b)
        );
    }
    // h1 runs nothing in blue, and image web is not blue's.
    let (s, _) = f
        .get(
            &format!("/v1/projects/blue/images/web/blobs/{}", f.layer),
            &f.h1,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_digest_the_image_does_not_list_is_not_found() {
    let f = Fixture::new().await;
    let other = format!("sha256:{}", "0".repeat(64));
    let (s, b) = f
        .get(
            &format!("/v1/projects/red/images/web/blobs/{other}"),
            &f.red_reader,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{}", json(&b));
    assert!(message(&json(&b)).contains("has no blob"), "{}", json(&b));
}

#[tokio::test]
async fn bad_digests_are_refused_before_anything_is_looked_up() {
    let f = Fixture::new().await;
    for bad in [
        "sha256:..%2F..%2F..%2Fetc%2Fpasswd".to_string(),
        format!("sha256:{}", "A".repeat(64)),
        format!("sha512:{}", "a".repeat(64)),
        "a".repeat(64),
        format!("sha256:{}", "a".repeat(63)),
    ] {
        // Even for a project the caller cannot see: the digest comes first
        // and says nothing about the project.
        for token in [&f.red_reader, &f.blue_member] {
            let (s, b) = f
                .get(&format!("/v1/projects/red/images/web/blobs/{bad}"), token)
                .await;
            let body = json(&b);
            assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
            assert_eq!(code(&body), "bad_request", "{body}");
            assert!(message(&body).contains("sha256:<64"), "{body}");
        }
    }
}
