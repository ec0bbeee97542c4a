//! The audit log through the router, in process (temp-dir SQLite, no root):
//! newest first, each filter, paging with `continue` through every record,
//! the export as JSON lines, who may read it, and retention by age.

mod support;

use std::collections::HashSet;

use axum::http::StatusCode;
use chrono::{Duration, Utc};
use nimbus_api::AuditRecord;
use serde_json::{json, Value};
use support::*;

impl Api {
    async fn raw(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, String) {
        let (status, bytes) = self
            .send(Api::request(method, path, Some(token), body))
            .await;
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (s, b) = self.raw(method, path, token, body).await;
        (s, serde_json::from_str(&b).unwrap_or(Value::Null))
    }

    /// Every record `query` selects, page by page (`limit` per page).
    async fn all_pages(&self, query: &str, limit: usize) -> Vec<AuditRecord> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut tokens = HashSet::new();
        loop {
            let mut url = format!("/v1/audit?limit={limit}&{query}");
            if let Some(t) = &token {
                url.push_str(&format!("&continue={t}"));
            }
            let (s, b) = self.call("GET", &url, &self.admin, None).await;
            assert_eq!(s, StatusCode::OK, "{url}: {b}");
            assert!(b.get("next").is_none(), "the pager key is `continue`: {b}");
            let page: Vec<AuditRecord> =
                serde_json::from_value(b["items"].clone()).expect("records");
            assert!(page.len() <= limit, "{url} gave {} records", page.len());
            out.extend(page);
            match b["continue"].as_str() {
                Some(t) => {
                    assert!(tokens.insert(t.to_string()), "token {t} repeated");
                    token = Some(t.to_string());
                }
                None => return out,
            }
        }
    }

    /// Write a record straight into the store, as if made `ago` earlier.
    async fn old_record(&self, path: &str, ago: Duration) -> AuditRecord {
        let record = AuditRecord {
            id: nimbus_api::meta::new_id(),
            time: Utc::now() - ago,
            actor: "old-timer".into(),
            token_id: None,
            method: "POST".into(),
            path: path.into(),
            project: None,
            status: 201,
            result: "ok".into(),
            source: None,
            count: None,
        };
        let key = nimbus_server::auth::audit::record_key(&record);
        self.state
            .repo
            .store
            .create(&key, serde_json::to_vec(&record).expect("encode"))
            .await
            .expect("write an old record");
        record
    }
}

#[tokio::test]
async fn the_log_lists_newest_first_and_pages_through_every_record_once() {
    let api = Api::open().await;
    for i in 0..23 {
        api.project(&format!("p{i:02}")).await;
    }
    let all = api.all_pages("", 1000).await;
    assert!(all.len() >= 23, "{} records", all.len());
    assert!(
        all.windows(2).all(|w| w[0].time >= w[1].time),
        "records must come newest first"
    );
    assert_eq!(all[0].path, "/v1/projects");
    assert_eq!(all[0].result, "ok", "the newest record is the last create");
    // Every record is complete once its call has returned.
    assert!(all.iter().all(|r| r.result != "in_progress"), "{all:?}");

    // Pages of 5: the same records in the same order, none twice.
    let paged = api.all_pages("", 5).await;
    let ids = |rs: &[AuditRecord]| rs.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&paged), ids(&all));
    // A page size that divides the log exactly leaves no empty last page
    // behind a continue token, nor a missing record.
    let exact = api.all_pages("", all.len()).await;
    assert_eq!(ids(&exact), ids(&all));

    // The old name of the pager key is still read.
    let (s, b) = api.call("GET", "/v1/audit?limit=3", &api.admin, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let token = b["continue"].as_str().expect("a continue token");
    let (_, by_continue) = api
        .call(
            "GET",
            &format!("/v1/audit?limit=3&continue={token}"),
            &api.admin,
            None,
        )
        .await;
    let (_, by_next) = api
        .call(
            "GET",
            &format!("/v1/audit?limit=3&next={token}"),
            &api.admin,
            None,
        )
        .await;
    assert_eq!(by_continue["items"], by_next["items"]);
}

#[tokio::test]
async fn each_filter_selects_exactly_its_records() {
    let api = Api::open().await;
    api.project("ops").await;
    api.project("dev").await;
    let carol = api.member("carol", "ops", "admin").await;
    // carol: a change in ops, a refused one, and a delete.
    let (s, b) = api
        .call(
            "PUT",
            "/v1/projects/ops",
            &carol,
            Some(json!({"name": "ops", "spec": {"description": "x"}})),
        )
        .await;
    assert!(s.is_success() || s.is_client_error(), "{s} {b}");
    let (s, _) = api
        .call(
            "POST",
            "/v1/projects/ops/networks",
            &carol,
            Some(json!({"name": "Bad!", "spec": {"subnet": "10.1.0.0/24"}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = api
        .call("DELETE", "/v1/projects/ops/networks/none", &carol, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .call("DELETE", "/v1/projects/dev", &api.admin, None)
        .await;
    assert!(s.is_success(), "{s}");
    let old = api.old_record("/v1/projects", Duration::hours(3)).await;

    let all = api.all_pages("", 1000).await;
    let check = |query: &str, want: &dyn Fn(&AuditRecord) -> bool| {
        let expected: Vec<String> = all
            .iter()
            .filter(|r| want(r))
            .map(|r| r.id.clone())
            .collect();
        (query.to_string(), expected)
    };
    let cases = [
        check("actor=carol", &|r| r.actor == "carol"),
        check("project=ops", &|r| r.project.as_deref() == Some("ops")),
        check("method=delete", &|r| r.method == "DELETE"),
        check("path_prefix=/v1/projects/ops/networks", &|r| {
            r.path.starts_with("/v1/projects/ops/networks")
        }),
        check("status=4xx", &|r| (400..500).contains(&r.status)),
        check("status=404", &|r| r.status == 404),
        check("since=2h", &|r| r.time > Utc::now() - Duration::hours(2)),
        check("until=2h", &|r| r.time < Utc::now() - Duration::hours(2)),
        check("actor=carol&method=DELETE", &|r| {
            r.actor == "carol" && r.method == "DELETE"
        }),
    ];
    for (query, expected) in cases {
        assert!(
            !expected.is_empty(),
            "{query}: the fixture must have records"
        );
        assert!(
            expected.len() < all.len(),
            "{query}: the fixture must have others"
        );
        for limit in [1000, 2] {
            let got: Vec<String> = api
                .all_pages(&query, limit)
                .await
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(got, expected, "{query} (pages of {limit})");
        }
    }
    // An RFC 3339 range around the old record selects it alone.
    let since = (old.time - Duration::seconds(1)).to_rfc3339();
    let until = (old.time + Duration::seconds(1)).to_rfc3339();
    let q = format!(
        "since={}&until={}",
        since.replace('+', "%2B"),
        until.replace('+', "%2B")
    );
    let got = api.all_pages(&q, 10).await;
    assert_eq!(got, vec![old]);

    for (query, wanted) in [
        ("status=abc", "status \"abc\""),
        ("since=yesterday", "since \"yesterday\""),
        ("since=1h&until=2h", "swap them"),
        ("continue=..%2F..%2Fusers", "continue token"),
    ] {
        let (s, b) = api
            .call("GET", &format!("/v1/audit?{query}"), &api.admin, None)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {b}");
        let message = b["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(wanted), "{query}: {message}");
    }
}

#[tokio::test]
async fn project_admins_see_their_project_only_and_others_are_refused() {
    let api = Api::open().await;
    api.project("ops").await;
    api.project("dev").await;
    let carol = api.member("carol", "ops", "admin").await;
    let mallory = api.member("mallory", "ops", "member").await;
    let rita = api.member("rita", "ops", "reader").await;
    let (s, _) = api
        .call(
            "POST",
            "/v1/projects/dev/networks",
            &api.admin,
            Some(json!({"name": "n1", "spec": {"subnet": "10.9.0.0/24"}})),
        )
        .await;
    assert!(s.is_success() || s.is_client_error());

    let (s, b) = api.call("GET", "/v1/audit?project=ops", &carol, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let items = b["items"].as_array().expect("items");
    assert!(!items.is_empty(), "{b}");
    assert!(items.iter().all(|r| r["project"] == "ops"), "{b}");
    let (s, body) = api
        .raw("GET", "/v1/audit/export?project=ops", &carol, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(
        body.lines().all(|l| l.contains("\"project\":\"ops\"")),
        "{body}"
    );

    for (who, token) in [("carol", &carol), ("mallory", &mallory), ("rita", &rita)] {
        for path in ["/v1/audit", "/v1/audit/export"] {
            let (s, b) = api.call("GET", path, token, None).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{who} {path}: {b}");
            // Another project's records: as if it did not exist.
            let (s, b) = api
                .call("GET", &format!("{path}?project=dev"), token, None)
                .await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{who} {path}?project=dev: {b}");
        }
    }
    for (who, token) in [("mallory", &mallory), ("rita", &rita)] {
        for path in ["/v1/audit", "/v1/audit/export"] {
            let (s, b) = api
                .call("GET", &format!("{path}?project=ops"), token, None)
                .await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{who} {path}?project=ops: {b}");
            assert_eq!(code(&b), "forbidden");
        }
    }
}

#[tokio::test]
async fn the_export_is_every_matching_record_as_json_lines_oldest_first() {
    let api = Api::open().await;
    for i in 0..5 {
        api.project(&format!("e{i}")).await;
    }
    let (s, b) = api
        .call(
            "POST",
            "/v1/projects",
            &api.admin,
            Some(json!({"name": "Bad!", "spec": {}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");

    let (s, body) = api.raw("GET", "/v1/audit/export", &api.admin, None).await;
    assert_eq!(s, StatusCode::OK);
    let exported: Vec<AuditRecord> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let mut listed = api.all_pages("", 1000).await;
    listed.reverse();
    assert_eq!(exported, listed);

    let (_, body) = api
        .raw("GET", "/v1/audit/export?status=422", &api.admin, None)
        .await;
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 1, "{body}");
    assert!(lines[0].contains("\"status\":422"), "{body}");
    let (s, _) = api
        .raw("GET", "/v1/audit/export?status=9", &api.admin, None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn records_older_than_the_maximum_age_are_pruned() {
    let api = Api::open_with(|c| c.audit_max_age = std::time::Duration::from_secs(3600)).await;
    let old = api.old_record("/v1/projects", Duration::hours(2)).await;
    let recent = api.old_record("/v1/projects", Duration::minutes(30)).await;
    api.project("kept").await;
    let deleted = nimbus_server::auth::audit::retention::prune_by_age(&api.state)
        .await
        .expect("prune");
    assert_eq!(deleted, 1);
    let left = api.all_pages("", 1000).await;
    assert!(!left.iter().any(|r| r.id == old.id), "{left:?}");
    assert!(left.iter().any(|r| r.id == recent.id), "{left:?}");
    assert!(left
        .iter()
        .any(|r| r.path == "/v1/projects" && r.actor == "admin"));
}

#[tokio::test]
async fn resource_lists_page_with_the_same_continue_key() {
    let api = Api::open().await;
    for i in 0..3 {
        api.project(&format!("l{i}")).await;
    }
    let mut names = Vec::new();
    let mut url = "/v1/projects?limit=2".to_string();
    loop {
        let (s, b) = api.call("GET", &url, &api.admin, None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert!(b.get("next").is_none(), "{b}");
        names.extend(b["items"].as_array().expect("items").iter().map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }));
        match b["continue"].as_str() {
            Some(t) => url = format!("/v1/projects?limit=2&continue={t}"),
            None => break,
        }
    }
    for i in 0..3 {
        assert!(names.contains(&format!("l{i}")), "{names:?}");
    }
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "{names:?}");
}
