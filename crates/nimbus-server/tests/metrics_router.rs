//! Request counting through the router in process (a temp-dir SQLite
//! store, no listener, no agent, no root): requests are counted by route
//! template, never by concrete path, with their status and latency; paths
//! no route matches share one series; `--metrics=false` counts nothing and
//! serves no `/metrics`.

mod support;

use axum::http::StatusCode;
use support::*;

impl Api {
    async fn get(&self, path: &str) -> StatusCode {
        self.send(Self::request("GET", path, Some(&self.admin), None))
            .await
            .0
    }

    async fn scrape(&self) -> (StatusCode, String) {
        let (status, body) = self
            .send(Self::request("GET", "/metrics", Some(&self.admin), None))
            .await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

#[tokio::test]
async fn requests_are_counted_by_route_template_with_status_and_latency() {
    let api = Api::open().await;
    api.project("ops").await;
    let missing = api.get("/v1/projects/ops/instances/web-1").await;
    assert_eq!(missing, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get("/v1/projects/ops/instances/web-2").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.get("/v1/projects/ops/instances").await, StatusCode::OK);
    assert_eq!(api.get("/no/such/route/a").await, StatusCode::NOT_FOUND);
    assert_eq!(api.get("/no/such/route/b").await, StatusCode::NOT_FOUND);

    let (status, out) = api.scrape().await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let one = "route=\"/v1/projects/{project}/instances/{name}\",method=\"GET\"";
    assert!(
        out.contains(&format!(
            "nimbus_api_requests_total{{{one},status=\"404\"}} 2"
        )),
        "both instances count under one template:\n{out}"
    );
    assert!(
        out.contains(&format!(
            "nimbus_api_request_duration_seconds_count{{{one}}} 2"
        )),
        "{out}"
    );
    assert!(
        out.contains("nimbus_api_requests_total{route=\"/v1/projects/{project}/instances\",method=\"GET\",status=\"200\"} 1"),
        "{out}"
    );
    assert!(
        out.contains(
            "nimbus_api_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 2"
        ),
        "unknown paths share one series:\n{out}"
    );
    assert!(
        !out.contains("web-1") && !out.contains("/no/such"),
        "a concrete path became a label:\n{out}"
    );
}

#[tokio::test]
async fn metrics_off_count_nothing_and_serve_no_metrics() {
    let api = Api::open_with(|c| c.metrics = false).await;
    assert_eq!(api.get("/v1/projects").await, StatusCode::OK);
    let (status, out) = api.scrape().await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{out}");
    assert!(out.contains("--metrics=false"), "{out}");
    assert!(!api.state.metrics.enabled);
}
