//! Project events through the router in process (a temp-dir SQLite store,
//! no listener, no agent, no root): the events an instance's transitions
//! record, newest first, paged with `continue`, streamed with `watch=true`,
//! visible to the project's readers only, and pruned by age and count.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::*;
use tower::ServiceExt;

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let resp = nimbus_server::api::router(self.state.clone())
            .oneshot(Self::request(method, path, token, body))
            .await
            .expect("the router answers");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let (s, b) = self.call(method, path, Some(token), body).await;
        assert!(s.is_success(), "{method} {path}: {s} {b}");
        b
    }

    /// Image `web` in `project` and instance `name` of it, not yet bound.
    async fn instance(&self, project: &str, name: &str, token: &str) {
        let (s, _) = self
            .call(
                "GET",
                &format!("/v1/projects/{project}/images/web"),
                Some(token),
                None,
            )
            .await;
        if s == StatusCode::NOT_FOUND {
            let resp = nimbus_server::api::router(self.state.clone())
                .oneshot(
                    Request::builder()
                        .method("POST")
                        .uri(format!("/v1/projects/{project}/images?name=web"))
                        .header("authorization", format!("Bearer {token}"))
                        .header("content-type", "application/octet-stream")
                        .body(Body::from(rootfs_tar()))
                        .expect("request"),
                )
                .await
                .expect("the router answers");
            assert_eq!(resp.status(), StatusCode::CREATED);
        }
        self.ok(
            "POST",
            &format!("/v1/projects/{project}/instances"),
            token,
            Some(json!({"name": name, "spec": {"image": "web", "args": ["/bin/true"]}})),
        )
        .await;
    }

    /// Bind `name` to `host` the way the scheduler does.
    async fn bind(&self, project: &str, name: &str, host: &str) {
        nimbus_server::events::modify_instance(&self.state.repo, Some(project), name, |i| {
            i.status.host = Some(host.into());
            i.status.phase = nimbus_api::InstancePhase::Scheduled;
            Ok(())
        })
        .await
        .expect("bind");
    }

    async fn report(&self, project: &str, name: &str, agent: &str, status: Value) {
        self.ok(
            "POST",
            &format!("/v1/projects/{project}/instances/{name}/status"),
            agent,
            Some(json!({"status": status})),
        )
        .await;
    }

    /// Every event of `project`, newest first, following `continue`
    /// `limit` at a time; and how many pages that took.
    async fn events(&self, project: &str, token: &str, limit: usize) -> (Vec<Value>, usize) {
        let mut all = Vec::new();
        let mut pages = 0;
        let mut next: Option<String> = None;
        loop {
            let mut path = format!("/v1/projects/{project}/events?limit={limit}");
            if let Some(c) = &next {
                path.push_str(&format!("&continue={c}"));
            }
            let b = self.ok("GET", &path, token, None).await;
            pages += 1;
            all.extend(b["items"].as_array().expect("items").iter().cloned());
            match b["continue"].as_str() {
                Some(c) => next = Some(c.to_string()),
                None => return (all, pages),
            }
        }
    }
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["type"].as_str().unwrap_or("?"),
                e["object"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

#[tokio::test]
async fn transitions_are_listed_newest_first_paged_and_only_to_the_projects_readers() {
    let api = Api::open_with(|_| {}).await;
    for p in ["red", "blue"] {
        api.project(p).await;
    }
    let member = api.member("rita", "red", "member").await;
    let reader = api.member("rex", "red", "reader").await;
    let blue = api.member("bob", "blue", "admin").await;
    let node1 = api.host_token("node1").await;

    api.instance("red", "web", &member).await;
    api.bind("red", "web", "node1").await;
    api.report(
        "red",
        "web",
        &node1,
        json!({"phase": "running", "pid": 7, "observed_generation": 1}),
    )
    .await;
    // A repeated report of the same phase records nothing more.
    api.report(
        "red",
        "web",
        &node1,
        json!({"phase": "running", "pid": 7, "observed_generation": 1}),
    )
    .await;
    api.report(
        "red",
        "web",
        &node1,
        json!({"phase": "exited", "exit_code": 3, "observed_generation": 1}),
    )
    .await;
    // Never bound, so deleted at once.
    api.instance("red", "tmp", &member).await;
    api.ok("DELETE", "/v1/projects/red/instances/tmp", &member, None)
        .await;

    let (all, pages) = api.events("red", &reader, 500).await;
    assert_eq!(pages, 1);
    assert_eq!(
        kinds(&all),
        ["deleted:tmp", "exited:web", "started:web", "scheduled:web"],
        "{all:#?}"
    );
    assert_eq!(all[1]["exit_code"], 3, "{}", all[1]);
    assert!(
        all[1]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("exited with code 3"),
        "{}",
        all[1]
    );
    assert_eq!(all[3]["host"], "node1");
    assert_eq!(all[3]["metadata"]["project"], "red");

    // Paging one at a time visits every event once, in the same order.
    let (paged, pages) = api.events("red", &member, 1).await;
    assert_eq!(kinds(&paged), kinds(&all));
    assert_eq!(pages, 4);
    let (paged, pages) = api.events("red", &member, 3).await;
    assert_eq!(kinds(&paged), kinds(&all));
    assert_eq!(pages, 2);

    // Another project's token learns nothing: 404, as for its instances.
    let (s, b) = api
        .call("GET", "/v1/projects/red/events", Some(&blue), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (s, b) = api
        .call(
            "GET",
            "/v1/projects/red/events?watch=true",
            Some(&blue),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (s, _) = api.call("GET", "/v1/projects/red/events", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // And blue has events of its own only.
    let (blue_events, _) = api.events("blue", &blue, 10).await;
    assert!(blue_events.is_empty(), "{blue_events:#?}");
    // A continue token that this list did not give is refused.
    let (s, b) = api
        .call(
            "GET",
            "/v1/projects/red/events?continue=..%2Fblue%2Fx",
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
}

#[tokio::test]
async fn a_watch_streams_new_events_as_they_are_recorded() {
    let api = Api::open_with(|_| {}).await;
    api.project("red").await;
    let member = api.member("rita", "red", "member").await;
    let reader = api.member("rex", "red", "reader").await;
    let node1 = api.host_token("node1").await;
    api.instance("red", "web", &member).await;
    api.bind("red", "web", "node1").await;
    api.report(
        "red",
        "web",
        &node1,
        json!({"phase": "running", "observed_generation": 1}),
    )
    .await;
    let list = api
        .ok("GET", "/v1/projects/red/events", &reader, None)
        .await;
    let revision = list["revision"].as_i64().expect("revision");

    let resp = nimbus_server::api::router(api.state.clone())
        .oneshot(Api::request(
            "GET",
            &format!("/v1/projects/red/events?watch=true&revision={revision}"),
            Some(&reader),
            None,
        ))
        .await
        .expect("the router answers");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();

    // The restart policy ran it again, with the exit merged in one report.
    api.report(
        "red",
        "web",
        &node1,
        json!({"phase": "running", "exit_code": 1, "restart_count": 1, "observed_generation": 1}),
    )
    .await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.lines().count() < 3 {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("watch events within 10 s")
            .expect("the stream goes on")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    let lines: Vec<Value> = seen
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let types: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["type"].as_str().unwrap_or("?"),
                l["object"]["type"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        types,
        [
            ("ADDED", "exited"),
            ("ADDED", "restarted"),
            ("ADDED", "started")
        ],
        "{seen}"
    );
    assert_eq!(lines[1]["object"]["restart_count"], 1);
}

#[tokio::test]
async fn an_unreachable_host_is_an_event_in_the_projects_of_its_instances() {
    let api = Api::open_with(|c| c.host_timeout_ms = 300).await;
    for p in ["red", "blue"] {
        api.project(p).await;
    }
    let red = api.member("rita", "red", "member").await;
    let blue = api.member("bob", "blue", "member").await;
    api.instance("red", "web", &red).await;
    api.instance("blue", "db", &blue).await;
    api.bind("red", "web", "node1").await;
    api.bind("blue", "db", "node1").await;
    let mut host = nimbus_api::Host {
        metadata: nimbus_api::Metadata::new("node1", None),
        spec: Default::default(),
        status: Default::default(),
    };
    host.status.phase = nimbus_api::HostPhase::Ready;
    host.status.last_heartbeat = Some(chrono::Utc::now() - chrono::Duration::seconds(60));
    api.state.repo.create(host).await.expect("host");
    let controller = tokio::spawn(nimbus_server::controllers::hosts::run(api.state.clone()));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for (project, token, instance) in [("red", &red, "web"), ("blue", &blue, "db")] {
        loop {
            let (events, _) = api.events(project, token, 100).await;
            let k = kinds(&events);
            if k.len() >= 3 {
                assert_eq!(
                    k,
                    [
                        format!("failed:{instance}"),
                        "host_unreachable:node1".to_string(),
                        format!("scheduled:{instance}")
                    ],
                    "{events:#?}"
                );
                let msg = events[1]["message"].as_str().unwrap_or("");
                assert!(
                    msg.contains(instance)
                        && !msg.contains(if instance == "web" { "db" } else { "web" }),
                    "{msg}"
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no events in {project}: {k:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    controller.abort();
}

#[tokio::test]
async fn events_past_the_maximum_count_or_age_are_pruned() {
    let api = Api::open_with(|c| c.events_max_records = 2).await;
    api.project("red").await;
    let member = api.member("rita", "red", "member").await;
    let node1 = api.host_token("node1").await;
    api.instance("red", "web", &member).await;
    api.bind("red", "web", "node1").await;
    api.report(
        "red",
        "web",
        &node1,
        json!({"phase": "running", "observed_generation": 1}),
    )
    .await;
    api.report(
        "red",
        "web",
        &node1,
        json!({"phase": "exited", "exit_code": 0, "observed_generation": 1}),
    )
    .await;
    let deleted = nimbus_server::events::retention::prune(&api.state)
        .await
        .expect("prune");
    assert_eq!(deleted, 1);
    let (left, _) = api.events("red", &member, 100).await;
    assert_eq!(kinds(&left), ["exited:web", "started:web"]);

    let api = Api::open_with(|c| c.events_max_age = Duration::from_secs(1)).await;
    api.project("red").await;
    let member = api.member("rita", "red", "member").await;
    api.instance("red", "web", &member).await;
    api.bind("red", "web", "node1").await;
    let (fresh, _) = api.events("red", &member, 100).await;
    assert_eq!(kinds(&fresh), ["scheduled:web"]);
    assert_eq!(
        nimbus_server::events::retention::prune(&api.state)
            .await
            .expect("prune"),
        0
    );
    // Wait out the maximum age itself, then the event is gone.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        nimbus_server::events::retention::prune(&api.state)
            .await
            .expect("prune"),
        1
    );
    let (left, _) = api.events("red", &member, 100).await;
    assert!(left.is_empty(), "{left:#?}");
}
