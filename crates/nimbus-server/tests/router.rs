//! The API router in process: a temp-dir SQLite store, no listener, no
//! agent and no root. Validation, authentication, tenancy and error codes
//! as a client sees them (status and the `error.code` of the body).

mod support;

use axum::http::StatusCode;
use serde_json::{json, Value};
use support::{code, message, rootfs_tar, Api};

impl Api {
    /// One request through the router: status and JSON body (Null if none).
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> (StatusCode, Value) {
        let (status, bytes) = self
            .send(Api::request_bytes(method, path, token, body))
            .await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
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

impl Api {
    /// Image `web` in `project`, imported through the API as a user would.
    async fn import_web_image(&self, project: &str, token: &str) {
        let (s, b) = self
            .call(
                "POST",
                &format!("/v1/projects/{project}/images?name=web"),
                Some(token),
                Some(("application/octet-stream", rootfs_tar())),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }

    /// The names of the instances `project` holds.
    async fn instance_names(&self, project: &str) -> Vec<String> {
        let (s, b) = self
            .call(
                "GET",
                &format!("/v1/projects/{project}/instances"),
                Some(&self.admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

/// A create body: instance `name` of image `web` running `true`, with
/// `spec` merged over that.
fn create_body(name: &str, spec: Value) -> Value {
    let mut full = json!({"image": "web", "args": ["/bin/true"]});
    for (k, v) in spec.as_object().expect("spec object") {
        full[k] = v.clone();
    }
    json!({"name": name, "spec": full})
}

#[tokio::test]
async fn invalid_instance_specs_are_refused_naming_the_field_and_nothing_is_stored() {
    let api = Api::open().await;
    api.project("red").await;
    let member = api.member("rita", "red", "member").await;
    api.import_web_image("red", &member).await;
    let path = "/v1/projects/red/instances";

    // (body, status, words the message must contain)
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            create_body("Web Server", json!({})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "instance name \"Web Server\" is invalid",
        ),
        (
            create_body("web", json!({"image": "nope"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "image \"nope\" not found in project \"red\"; import it with `nimbus image import <file> --name nope`",
        ),
        (
            create_body("web", json!({"args": []})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "image \"web\" has no default command",
        ),
        (
            create_body("web", json!({"resources": {"memory_bytes": 1024}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "memory limit of 1024 bytes is below the 4 MiB minimum",
        ),
        (
            create_body("web", json!({"resources": {"cpu_millis": 0}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "cpu of 0 would never run",
        ),
        (
            create_body("web", json!({"resources": {"pids_max": 0}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "pids limit 0 is below 1",
        ),
        (
            create_body(
                "web",
                json!({"restart_policy": {"mode": "always", "max_retries": 3}}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "max_retries applies to the on_failure restart policy only",
        ),
        (
            create_body("web", json!({"restart_policy": {"mode": "sometimes"}})),
            StatusCode::BAD_REQUEST,
            "at `spec.restart_policy.mode`: unknown variant `sometimes`",
        ),
        (
            create_body("web", json!({"env": {"A=B": "c"}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "environment variable name \"A=B\" is invalid",
        ),
        (
            create_body(
                "web",
                json!({"env": {"TOKEN": "a"}, "secret_env": {"TOKEN": "b"}}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "environment variable \"TOKEN\" is given both as --env and --secret-env",
        ),
        (
            create_body("web", json!({"user": "root"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "user \"root\" is invalid; give a numeric uid or uid:gid below 65536",
        ),
        (
            create_body("web", json!({"networks": ["a", "b"]})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "an instance can join one network for now",
        ),
        (
            create_body("web", json!({"networks": ["backend"]})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "network \"backend\" not found in project \"red\"",
        ),
        (
            create_body("web", json!({"networks": ["default"], "secgroups": ["web-sg"]})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "security group \"web-sg\" not found in project \"red\"",
        ),
        (
            create_body(
                "web",
                json!({"vm": {"port_forwards": [{"host_port": 8080, "guest_port": 80}]}}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "vm settings (vcpus, disk, ssh keys, user-data) apply to kind vm or unikernel only",
        ),
        (
            create_body("web", json!({"kind": "vm"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "image \"web\" is a rootfs image for containers",
        ),
        // Wrong JSON types: 400, naming the field.
        (
            create_body("web", json!({"resources": {"memory_bytes": "lots"}})),
            StatusCode::BAD_REQUEST,
            "at `spec.resources.memory_bytes`: invalid type: string \"lots\"",
        ),
        (
            create_body(
                "web",
                json!({"vm": {"port_forwards": [{"host_port": 70000, "guest_port": 80}]}}),
            ),
            StatusCode::BAD_REQUEST,
            "at `spec.vm.port_forwards[0].host_port`",
        ),
        (
            create_body("web", json!({"args": "/bin/true"})),
            StatusCode::BAD_REQUEST,
            "at `spec.args`: invalid type: string",
        ),
        (
            create_body("web", json!({"env": {"A": 1}})),
            StatusCode::BAD_REQUEST,
            "at `spec.env.A`: invalid type: integer `1`",
        ),
        (
            json!({"name": "web", "spec": {"args": ["x"]}}),
            StatusCode::BAD_REQUEST,
            "at `spec`: missing field `image`",
        ),
    ];
    for (body, status, words) in cases {
        let (s, b) = api.json("POST", path, &member, body.clone()).await;
        assert_eq!(s, status, "{body}: {b}");
        assert!(message(&b).contains(words), "{body}: {b}");
        let expected_code = if status == StatusCode::BAD_REQUEST {
            "bad_request"
        } else {
            "invalid"
        };
        assert_eq!(code(&b), expected_code, "{b}");
    }
    // An environment larger than the body limit (1 MiB) is refused whole.
    let huge = create_body("web", json!({"env": {"BLOB": "x".repeat(2 << 20)}}));
    let (s, b) = api.json("POST", path, &member, huge).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");

    // None of the refused calls stored an instance, nor made the network
    // the refused spec named.
    assert_eq!(api.instance_names("red").await, Vec::<String>::new());
    let (s, b) = api
        .call("GET", "/v1/projects/red/networks", Some(&member), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["items"], json!([]), "{b}");

    // The same spec, valid, is stored: with the project's default limits
    // recorded, pending, at generation 1.
    let (s, b) = api
        .json("POST", path, &member, create_body("web", json!({})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["status"]["phase"], "pending", "{b}");
    assert_eq!(b["spec"]["restart_generation"], 1, "{b}");
    assert_eq!(b["spec"]["resources"]["memory_bytes"], 1u64 << 30, "{b}");
    assert_eq!(api.instance_names("red").await, vec!["web".to_string()]);
}

#[tokio::test]
async fn a_replace_keeps_what_cannot_change() {
    let api = Api::open().await;
    api.project("red").await;
    let member = api.member("rita", "red", "member").await;
    api.import_web_image("red", &member).await;
    let (s, created) = api
        .json(
            "POST",
            "/v1/projects/red/instances",
            &member,
            create_body("web", json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let path = "/v1/projects/red/instances/web";

    let mut renamed = created.clone();
    renamed["metadata"]["name"] = json!("api");
    let (s, b) = api.json("PUT", path, &member, renamed).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(message(&b).contains("instances cannot be renamed"), "{b}");

    let mut moved = created.clone();
    moved["spec"]["networks"] = json!(["default"]);
    let (s, b) = api.json("PUT", path, &member, moved).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        message(&b).contains("the networks of instance \"web\" cannot change"),
        "{b}"
    );

    let mut bad_user = created.clone();
    bad_user["spec"]["user"] = json!("nobody");
    let (s, b) = api.json("PUT", path, &member, bad_user).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(message(&b).contains("user \"nobody\" is invalid"), "{b}");

    // Nothing of the refused replaces was stored.
    let (s, now) = api.call("GET", path, Some(&member), None).await;
    assert_eq!(s, StatusCode::OK, "{now}");
    assert_eq!(now["metadata"]["revision"], created["metadata"]["revision"]);
    assert_eq!(now["spec"], created["spec"]);

    // A valid change is.
    let mut changed = created.clone();
    changed["spec"]["env"] = json!({"GREETING": "hi"});
    let (s, b) = api.json("PUT", path, &member, changed).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["spec"]["env"]["GREETING"], "hi", "{b}");
}

#[tokio::test]
async fn another_projects_instances_cannot_be_changed() {
    let api = Api::open().await;
    for p in ["blue", "red"] {
        api.project(p).await;
    }
    let blue_member = api.member("bob", "blue", "member").await;
    let red_member = api.member("rita", "red", "member").await;
    api.import_web_image("blue", &blue_member).await;
    let (s, created) = api
        .json(
            "POST",
            "/v1/projects/blue/instances",
            &blue_member,
            create_body("web", json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");

    let path = "/v1/projects/blue/instances/web";
    let mut replaced = created.clone();
    replaced["spec"]["env"] = json!({"OWNED": "yes"});
    let (s, b) = api.json("PUT", path, &red_member, replaced).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert_eq!(code(&b), "not_found", "{b}");
    for action in ["start", "stop", "restart", "pause", "resume"] {
        let (s, b) = api
            .json("POST", &format!("{path}/{action}"), &red_member, json!({}))
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{action}: {b}");
    }
    let (s, b) = api.call("DELETE", path, Some(&red_member), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    // Creating in blue with red's token is refused the same way.
    let (s, b) = api
        .json(
            "POST",
            "/v1/projects/blue/instances",
            &red_member,
            create_body("intruder", json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");

    // Blue's instance is as it was.
    let (s, now) = api.call("GET", path, Some(&blue_member), None).await;
    assert_eq!(s, StatusCode::OK, "{now}");
    assert_eq!(now["metadata"]["revision"], created["metadata"]["revision"]);
    assert_eq!(now["spec"], created["spec"]);
    assert_eq!(api.instance_names("blue").await, vec!["web".to_string()]);
}

#[tokio::test]
async fn status_reports_come_only_from_the_agent_of_the_instances_host() {
    let api = Api::open().await;
    for p in ["blue", "red"] {
        api.project(p).await;
    }
    let red_member = api.member("rita", "red", "member").await;
    let red_admin = api.member("ada", "red", "admin").await;
    let red_reader = api.member("rex", "red", "reader").await;
    let blue_member = api.member("bob", "blue", "member").await;
    api.import_web_image("red", &red_member).await;
    let (s, b) = api
        .json(
            "POST",
            "/v1/projects/red/instances",
            &red_member,
            create_body("web", json!({"networks": ["default"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let image_id = b["status"]["image_id"].clone();
    let address = b["status"]["addresses"][0]["ip"].clone();
    assert!(address.is_string(), "an address was allocated: {b}");
    // The scheduler binds it to node1 (done here as the scheduler would).
    api.state
        .repo
        .modify::<nimbus_api::Instance, _>(Some("red"), "web", |i| {
            i.status.host = Some("node1".into());
            i.status.phase = nimbus_api::InstancePhase::Scheduled;
            Ok(())
        })
        .await
        .expect("bind to node1");

    let status = "/v1/projects/red/instances/web/status";
    let report = json!({"status": {"phase": "running", "pid": 42, "observed_generation": 1,
        "host": "elsewhere", "image_id": "forged"}});
    // Users of the project, whatever their role, are refused: 403 naming
    // who may report.
    for token in [&red_member, &red_admin, &red_reader] {
        let (s, b) = api.json("POST", status, token, report.clone()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        assert_eq!(
            message(&b),
            "only the agent of the host running instance \"web\" may report its status",
            "{b}"
        );
    }
    // Another project's member learns nothing: 404.
    let (s, b) = api.json("POST", status, &blue_member, report.clone()).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    // The agent of another host is refused too.
    let node2 = api.host_token("node2").await;
    let (s, b) = api.json("POST", status, &node2, report.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, b) = api
        .call(
            "GET",
            "/v1/projects/red/instances/web",
            Some(&red_member),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["status"]["phase"], "scheduled",
        "no refused report was stored: {b}"
    );

    // node1's agent is heard; what the server decided stays.
    let node1 = api.host_token("node1").await;
    let (s, b) = api.json("POST", status, &node1, report.clone()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"]["phase"], "running", "{b}");
    assert_eq!(b["status"]["pid"], 42, "{b}");
    assert_eq!(b["status"]["host"], "node1", "{b}");
    assert_eq!(b["status"]["image_id"], image_id, "{b}");
    assert_eq!(b["status"]["addresses"][0]["ip"], address, "{b}");

    // `finalized` for an instance not being deleted is a conflict.
    let (s, b) = api
        .json(
            "POST",
            status,
            &node1,
            json!({"status": {"phase": "stopped"}, "finalized": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(message(&b).contains("was not being deleted"), "{b}");

    // Published ports: validated at creation, and their status is the
    // agent's to report as well.
    let ports = "/v1/projects/red/addresses";
    let (s, b) = api
        .json(
            "POST",
            ports,
            &red_member,
            json!({"name": "", "spec": {"instance": "web", "host_port": 80, "instance_port": 80}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(message(&b).contains("host ports below 1024"), "{b}");
    let (s, b) = api
        .json(
            "POST",
            ports,
            &red_member,
            json!({"name": "", "spec": {"instance": "web", "protocol": "icmp", "host_port": 8080, "instance_port": 80}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(message(&b).contains("only tcp and udp"), "{b}");
    let (s, b) = api
        .json(
            "POST",
            ports,
            &red_member,
            json!({"name": "", "spec": {"instance": "web", "host_port": 18080, "instance_port": 80}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["metadata"]["name"], "web-tcp-18080", "{b}");
    let port_status = "/v1/projects/red/addresses/web-tcp-18080/status";
    let applied = json!({"applied": true, "host": "elsewhere"});
    for token in [&red_member, &red_admin, &node2] {
        let (s, b) = api.json("POST", port_status, token, applied.clone()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    }
    let (s, b) = api.json("POST", port_status, &node1, applied).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"]["applied"], true, "{b}");
    assert_eq!(
        b["status"]["host"], "node1",
        "the reporting agent's host: {b}"
    );
}

#[tokio::test]
async fn network_and_security_group_rules_are_checked_before_anything_is_stored() {
    let api = Api::open().await;
    api.project("red").await;
    let member = api.member("rita", "red", "member").await;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "networks",
            json!({"name": "none", "spec": {"subnet": "10.20.0.0/24"}}),
            "\"none\" is reserved",
        ),
        (
            "networks",
            json!({"name": "wide", "spec": {"subnet": "10.0.0.0/8"}}),
            "subnet 10.0.0.0/8 must have a prefix length from /16 to /29",
        ),
        (
            "networks",
            json!({"name": "lan", "spec": {"subnet": "10.20.0.0/24", "gateway": "10.30.0.1"}}),
            "gateway 10.30.0.1 is not a usable address of subnet 10.20.0.0/24",
        ),
        (
            "secgroups",
            json!({"name": "web", "spec": {"rules": [{"protocol": "tcp", "port_from": 90, "port_to": 80}]}}),
            "rule 1 (tcp:90-80): port range 90-80 is empty",
        ),
        (
            "secgroups",
            json!({"name": "web", "spec": {"rules": [{"protocol": "tcp", "group": "db"}]}}),
            "security group \"db\" not found in project \"red\"",
        ),
    ];
    for (collection, body, words) in cases {
        let path = format!("/v1/projects/red/{collection}");
        let (s, b) = api.json("POST", &path, &member, body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {b}");
        assert!(message(&b).contains(words), "{body}: {b}");
        let (s, list) = api.call("GET", &path, Some(&member), None).await;
        assert_eq!(s, StatusCode::OK, "{list}");
        assert_eq!(list["items"], json!([]), "{collection} after {body}");
    }
}
