//! Project usage through the router in process (a temp-dir SQLite store,
//! no listener, no agent, no root): the hours an instance's reported runs
//! give, a repeated report counted once, images metered while stored, and
//! the usage of a project shown to its readers only.

mod support;

use axum::http::StatusCode;
use serde_json::{json, Value};
use support::*;

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (s, b) = self
            .send(Self::request(method, path, Some(token), body))
            .await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    async fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let (s, b) = self.call(method, path, token, body).await;
        assert!(s.is_success(), "{method} {path}: {s} {b}");
        b
    }

    async fn image(&self, project: &str, name: &str, token: &str) -> Value {
        let (s, b) = self
            .send(Self::request_bytes(
                "POST",
                &format!("/v1/projects/{project}/images?name={name}"),
                Some(token),
                Some(("application/octet-stream", rootfs_tar())),
            ))
            .await;
        assert_eq!(s, StatusCode::CREATED);
        serde_json::from_slice(&b).expect("image")
    }

    async fn report(&self, name: &str, agent: &str, status: Value) {
        self.ok(
            "POST",
            &format!("/v1/projects/red/instances/{name}/status"),
            agent,
            Some(json!({"status": status})),
        )
        .await;
    }

    /// The keys of every usage record of `project`.
    async fn usage_keys(&self, project: &str) -> Vec<String> {
        let page = self
            .state
            .repo
            .store
            .list(&format!("/usage/{project}/"), None, 100)
            .await
            .expect("list");
        page.kvs.into_iter().map(|kv| kv.key).collect()
    }
}

#[tokio::test]
async fn reported_runs_become_hours_once_each_for_the_projects_readers_only() {
    let api = Api::open().await;
    for p in ["red", "blue"] {
        api.project(p).await;
    }
    let member = api.member("rita", "red", "member").await;
    let reader = api.member("rex", "red", "reader").await;
    let blue = api.member("bob", "blue", "admin").await;
    let node1 = api.host_token("node1").await;

    api.image("red", "web", &member).await;
    api.ok(
        "POST",
        "/v1/projects/red/instances",
        &member,
        Some(
            json!({"name": "web", "spec": {"image": "web", "args": ["/bin/true"],
            "resources": {"memory_bytes": 536870912u64, "cpu_millis": 500}}}),
        ),
    )
    .await;
    nimbus_server::events::modify_instance(&api.state.repo, Some("red"), "web", |i| {
        i.status.host = Some("node1".into());
        i.status.phase = nimbus_api::InstancePhase::Scheduled;
        Ok(())
    })
    .await
    .expect("bind");

    // Two runs on 2026-11-30: 09:30 to 10:15, then 11:00 to 11:45.
    let run1 = json!({"phase": "running", "pid": 7, "observed_generation": 1,
        "started_at": "2026-11-30T09:30:00Z"});
    api.report("web", &node1, run1.clone()).await;
    // Reported again (an agent retrying, or after a restart): counted once.
    api.report("web", &node1, run1).await;
    api.report(
        "web",
        &node1,
        json!({"phase": "stopped", "observed_generation": 1,
            "started_at": "2026-11-30T09:30:00Z", "finished_at": "2026-11-30T10:15:00Z"}),
    )
    .await;
    api.report(
        "web",
        &node1,
        json!({"phase": "running", "pid": 8, "observed_generation": 2,
            "started_at": "2026-11-30T11:00:00Z"}),
    )
    .await;
    api.report(
        "web",
        &node1,
        json!({"phase": "exited", "exit_code": 0, "observed_generation": 2,
            "started_at": "2026-11-30T11:00:00Z", "finished_at": "2026-11-30T11:45:00Z"}),
    )
    .await;

    let usage = api
        .ok(
            "GET",
            "/v1/projects/red/usage?from=2026-11-30&to=2026-12-01",
            &reader,
            None,
        )
        .await;
    assert_eq!(usage["project"], "red");
    assert_eq!(usage["from"], "2026-11-30T00:00:00Z");
    let hours = usage["hours"].as_array().expect("hours");
    assert_eq!(hours.len(), 24, "{usage}");
    assert_eq!(hours[9]["hour"], "2026-11-30T09:00:00Z");
    let container = |h: &Value| h["instance_hours"]["container"].as_f64().expect("number");
    assert_eq!(container(&hours[9]), 0.5, "{usage}");
    assert_eq!(container(&hours[10]), 0.25, "{usage}");
    assert_eq!(container(&hours[11]), 0.75, "{usage}");
    assert_eq!(container(&hours[12]), 0.0, "{usage}");
    let totals = &usage["totals"];
    assert_eq!(totals["instance_hours"]["container"], 1.5, "{usage}");
    assert_eq!(totals["instance_hours"]["vm"], 0.0, "{usage}");
    // Half a CPU and half a GiB for an hour and a half.
    assert_eq!(totals["vcpu_hours"], 0.75, "{usage}");
    assert_eq!(totals["memory_gib_hours"], 0.75, "{usage}");
    // The image was imported today, not in that window.
    assert_eq!(totals["image_gib_hours"], 0.0, "{usage}");
    // Two runs and one image: two instance records, whatever was repeated.
    assert_eq!(api.usage_keys("red").await.len(), 3);

    // An image stored counts up to now; a deleted one no longer grows.
    let spare = api.image("red", "spare", &member).await;
    assert!(spare["status"]["size_bytes"].as_u64().expect("size") > 0);
    api.ok("DELETE", "/v1/projects/red/images/spare", &member, None)
        .await;
    let keys = api.usage_keys("red").await;
    assert_eq!(keys.len(), 4, "{keys:?}");
    let spare_id = spare["metadata"]["id"].as_str().expect("id");
    let spare_key = keys
        .iter()
        .find(|k| k.ends_with(spare_id))
        .expect("spare's record");
    let stored = api
        .state
        .repo
        .store
        .get(spare_key)
        .await
        .expect("get")
        .expect("record");
    let record: Value = serde_json::from_slice(&stored.value).expect("json");
    assert!(record["end"].is_string(), "{record}");
    let today = api.ok("GET", "/v1/projects/red/usage", &reader, None).await;
    assert!(
        today["totals"]["image_gib_hours"].as_f64().expect("number") > 0.0,
        "{today}"
    );

    // Another project's token learns nothing: 404, as for its instances.
    let (s, b) = api.call("GET", "/v1/projects/red/usage", &blue, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let blue_usage = api
        .ok(
            "GET",
            "/v1/projects/blue/usage?from=2026-11-30&to=2026-12-01",
            &blue,
            None,
        )
        .await;
    assert_eq!(blue_usage["totals"]["instance_hours"]["container"], 0.0);
    // A window that is not one is refused with what to give.
    let (s, b) = api
        .call(
            "GET",
            "/v1/projects/red/usage?from=2026-12-02&to=2026-12-01",
            &reader,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(message(&b).contains("later --to"), "{b}");
    let (s, b) = api
        .call(
            "GET",
            "/v1/projects/red/usage?from=yesterday",
            &reader,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(message(&b).contains("YYYY-MM-DD"), "{b}");
}

#[tokio::test]
async fn records_closed_longer_ago_than_the_maximum_age_are_pruned_and_open_ones_kept() {
    let api = Api::open_with(|c| c.usage_max_age = std::time::Duration::from_secs(3600)).await;
    api.project("red").await;
    let member = api.member("rita", "red", "member").await;
    let node1 = api.host_token("node1").await;
    api.image("red", "web", &member).await;
    api.ok(
        "POST",
        "/v1/projects/red/instances",
        &member,
        Some(json!({"name": "web", "spec": {"image": "web", "args": ["/bin/true"]}})),
    )
    .await;
    nimbus_server::events::modify_instance(&api.state.repo, Some("red"), "web", |i| {
        i.status.host = Some("node1".into());
        Ok(())
    })
    .await
    .expect("bind");
    // A run that ended long ago, and one that still runs.
    api.report(
        "web",
        &node1,
        json!({"phase": "exited", "exit_code": 0, "observed_generation": 1,
            "started_at": "2020-01-01T00:00:00Z", "finished_at": "2020-01-01T01:00:00Z"}),
    )
    .await;
    api.report(
        "web",
        &node1,
        json!({"phase": "running", "observed_generation": 2,
            "started_at": "2020-01-02T00:00:00Z"}),
    )
    .await;
    assert_eq!(api.usage_keys("red").await.len(), 3);
    let deleted = nimbus_server::usage::retention::prune(&api.state)
        .await
        .expect("prune");
    assert_eq!(deleted, 1);
    let left = api.usage_keys("red").await;
    assert_eq!(
        left.len(),
        2,
        "the open run and the stored image stay: {left:?}"
    );
    let usage = api
        .ok(
            "GET",
            "/v1/projects/red/usage?from=2020-01-01&to=2020-01-03",
            &api.admin,
            None,
        )
        .await;
    // The pruned run is gone; the open one counts its whole day.
    assert_eq!(
        usage["totals"]["instance_hours"]["container"], 24.0,
        "{usage}"
    );
}
