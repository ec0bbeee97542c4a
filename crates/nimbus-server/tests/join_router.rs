//! Join tokens and the join call through the router in process: racing
//! agents get one success, refused joins change nothing, a rejoining host's
//! old credential stops working.

mod support;

use axum::http::StatusCode;
use serde_json::{json, Value};
use support::{code, message, Api};

impl Api {
    async fn join_token(&self, body: Value) -> (String, String) {
        let (s, b) = self
            .send_json("POST", "/v1/hosts/join-tokens", &self.admin, body)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        assert!(
            b["join_token"]["status"]["secret_sha256"].is_null(),
            "the secret's hash is shown: {b}"
        );
        let token = b["token"].as_str().expect("token").to_string();
        let id = b["join_token"]["metadata"]["name"]
            .as_str()
            .expect("id")
            .to_string();
        (token, id)
    }

    async fn join(&self, token: &str, host: &str) -> (StatusCode, Value) {
        let req = Api::request(
            "POST",
            "/v1/hosts/join",
            None,
            Some(json!({"token": token, "host": host})),
        );
        let (s, b) = self.send(req).await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    async fn join_token_ids(&self) -> Vec<String> {
        let (s, b) = self
            .send(Api::request(
                "GET",
                "/v1/hosts/join-tokens",
                Some(&self.admin),
                None,
            ))
            .await;
        assert_eq!(s, StatusCode::OK);
        let v: Value = serde_json::from_slice(&b).expect("json");
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|t| {
                assert!(t["status"]["secret_sha256"].is_null(), "listed hash: {t}");
                t["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    async fn whoami_status(&self, token: &str) -> StatusCode {
        self.send(Api::request("GET", "/v1/whoami", Some(token), None))
            .await
            .0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_agents_racing_with_one_token_exactly_one_joins() {
    let api = std::sync::Arc::new(Api::open().await);
    let (token, _) = api.join_token(json!({})).await;
    let racers: Vec<_> = (0..8)
        .map(|n| {
            let api = api.clone();
            let token = token.clone();
            tokio::spawn(async move { api.join(&token, &format!("racer-{n}")).await })
        })
        .collect();
    let mut joined = Vec::new();
    for r in racers {
        let (s, b) = r.await.expect("join task");
        match s {
            StatusCode::OK => joined.push(b),
            StatusCode::UNAUTHORIZED => {
                assert!(message(&b).contains("nimbus host join-token create"), "{b}")
            }
            other => panic!("unexpected {other}: {b}"),
        }
    }
    assert_eq!(joined.len(), 1, "joined: {joined:?}");
    let credential = joined[0]["credential"].as_str().expect("credential");
    assert_eq!(api.whoami_status(credential).await, StatusCode::OK);
    assert!(api.join_token_ids().await.is_empty());
}

#[tokio::test]
async fn refused_joins_change_nothing_and_say_what_to_do() {
    let api = Api::open().await;
    let (token, id) = api.join_token(json!({"host": "node7"})).await;
    // Malformed, forged secret, wrong bound name, bad host name: refused,
    // and the token is still there.
    let forged = {
        let mut t = token.clone();
        let at = "nmbjoin_".len() + 17;
        let flipped = if &t[at..at + 1] == "0" { "1" } else { "0" };
        t.replace_range(at..at + 1, flipped);
        t
    };
    for (bad, host, status) in [
        ("nmbjoin_nope", "node7", StatusCode::UNAUTHORIZED),
        (forged.as_str(), "node7", StatusCode::UNAUTHORIZED),
        (token.as_str(), "node8", StatusCode::FORBIDDEN),
        (
            token.as_str(),
            "Not A Name",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (s, b) = api.join(bad, host).await;
        assert_eq!(s, status, "{bad} as {host}: {b}");
    }
    assert_eq!(api.join_token_ids().await, vec![id.clone()]);
    // A name held by a ready host: 409, token kept.
    let live = api.host_token("node7").await;
    let (s, b) = api
        .send_json(
            "POST",
            "/v1/hosts",
            &live,
            json!({"name": "node7", "status": {"phase": "ready", "cpus": 1, "memory_bytes": 1,
                "disk_bytes": 1, "architecture": "amd64", "kernel": "6.1"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = api.join(&token, "node7").await;
    assert_eq!((s, code(&b)), (StatusCode::CONFLICT, "conflict"), "{b}");
    assert!(message(&b).contains("ready"), "{b}");
    assert_eq!(api.join_token_ids().await, vec![id]);
    // Out-of-range lifetimes and non-administrators: refused.
    for ttl in [0, 86_401] {
        let (s, b) = api
            .send_json(
                "POST",
                "/v1/hosts/join-tokens",
                &api.admin,
                json!({"ttl_secs": ttl}),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "ttl {ttl}: {b}");
    }
    let (s, _) = api
        .send_json("POST", "/v1/hosts/join-tokens", &live, json!({}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Revoked: the join is refused.
    let (revocable, revocable_id) = api.join_token(json!({})).await;
    let path = format!("/v1/hosts/join-tokens/{revocable_id}");
    let (s, _) = api
        .send(Api::request("DELETE", &path, Some(&api.admin), None))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = api.join(&revocable, "node9").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
}

#[tokio::test]
async fn a_host_joining_again_revokes_its_older_credential() {
    let api = Api::open().await;
    let (first, _) = api.join_token(json!({})).await;
    let (s, b) = api.join(&first, "node1").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let old = b["credential"].as_str().expect("credential").to_string();
    // Its agent never registered (data dir lost): the name is free again.
    let (second, _) = api.join_token(json!({})).await;
    let (s, b) = api.join(&second, "node1").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let new = b["credential"].as_str().expect("credential");
    assert_eq!(api.whoami_status(new).await, StatusCode::OK);
    assert_eq!(api.whoami_status(&old).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_expired_token_is_refused_and_pruned_when_the_next_is_made() {
    let api = Api::open().await;
    let (short, short_id) = api.join_token(json!({"ttl_secs": 1})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s, b) = api.join(&short, "node1").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert!(message(&b).contains("expired"), "{b}");
    assert_eq!(api.join_token_ids().await, vec![short_id]);
    let (_, next_id) = api.join_token(json!({})).await;
    assert_eq!(api.join_token_ids().await, vec![next_id]);
}
