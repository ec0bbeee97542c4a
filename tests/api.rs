//! The API end to end: authentication, the authorisation matrix across two
//! projects, bad input, optimistic concurrency, audit, lists and watches.

mod common;

use common::{http, http_raw, Cloud};
use serde_json::{json, Value};

fn token_for(cloud: &Cloud, user: &str) -> String {
    let v = cloud
        .json(&["token", "create", "--user", user])
        .expect("token create");
    v["secret"].as_str().expect("secret").to_string()
}

/// Open a streaming GET as `token` and check it answers 200; the thread
/// returns true when the server ends the stream within 20 s.
fn open_stream(cloud: &Cloud, token: &str, path: &str) -> std::thread::JoinHandle<bool> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(cloud.data_dir().join("api.sock")).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(
        line.contains(" 200 "),
        "{path} opens while the role is held: {line}"
    );
    // A stream that keeps sending (a chatty log) must still end in time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    std::thread::spawn(move || loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return true,
            Ok(_) if std::time::Instant::now() < deadline => continue,
            _ => return false,
        }
    })
}

fn create_instance_body(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "name": name,
        "spec": {"image": "busybox", "args": ["sleep", "600"], "desired_state": "stopped"}
    }))
    .unwrap()
}

#[test]
fn api_authorisation_matrix_and_bad_input() {
    let cloud = Cloud::start();
    let admin = cloud.admin_token();

    // Token file is root-only.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(cloud.data_dir().join("admin.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        mode & 0o077,
        0,
        "admin.token must be readable by its owner only"
    );

    cloud.ok(&["project", "create", "alpha"]);
    cloud.ok(&["project", "create", "beta"]);
    cloud.ok(&["user", "create", "alice"]);
    cloud.ok(&["user", "create", "bob"]);
    cloud.ok(&["role", "grant", "alice", "member", "--project", "alpha"]);
    cloud.ok(&["role", "grant", "bob", "reader", "--project", "beta"]);
    let alice = token_for(&cloud, "alice");
    let bob = token_for(&cloud, "bob");

    // Image in each project, imported by admin through the API.
    for p in ["alpha", "beta"] {
        let (s, body) = http(
            &cloud,
            "POST",
            &format!("/v1/projects/{p}/instances"),
            Some(&admin),
            &create_instance_body("x"),
        );
        // No image yet in these projects: a clear 422 that names the fix.
        assert_eq!(s, 422, "{body}");
        assert!(body.contains("nimbus image import"), "{body}");
    }

    // No token, malformed token, wrong token: 401.
    assert_eq!(http(&cloud, "GET", "/v1/projects", None, b"").0, 401);
    assert_eq!(
        http(&cloud, "GET", "/v1/projects", Some("garbage"), b"").0,
        401
    );
    let wrong = format!("nmb_{}_{}", "0".repeat(16), "1".repeat(64));
    let (s, body) = http(&cloud, "GET", "/v1/projects", Some(&wrong), b"");
    assert_eq!(s, 401);
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "unauthenticated");

    // alice sees alpha only; beta is 404 to her, not 403.
    let (s, body) = http(&cloud, "GET", "/v1/projects", Some(&alice), b"");
    assert_eq!(s, 200);
    let names: Vec<String> = serde_json::from_str::<Value>(&body).unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["alpha"]);
    for path in [
        "/v1/projects/beta",
        "/v1/projects/beta/instances",
        "/v1/projects/beta/images",
        "/v1/projects/beta/instances/x",
    ] {
        let (s, body) = http(&cloud, "GET", path, Some(&alice), b"");
        assert_eq!(s, 404, "{path}: {body}");
    }
    let (s, _) = http(
        &cloud,
        "POST",
        "/v1/projects/beta/instances",
        Some(&alice),
        &create_instance_body("y"),
    );
    assert_eq!(
        s, 404,
        "creating in another project must look like it does not exist"
    );
    // Same for a project that really does not exist.
    assert_eq!(
        http(
            &cloud,
            "GET",
            "/v1/projects/nope/instances",
            Some(&alice),
            b""
        )
        .0,
        404
    );

    // bob reads beta but may not change it: 403 there; alpha is 404.
    assert_eq!(
        http(
            &cloud,
            "GET",
            "/v1/projects/beta/instances",
            Some(&bob),
            b""
        )
        .0,
        200
    );
    assert_eq!(
        http(
            &cloud,
            "POST",
            "/v1/projects/beta/instances",
            Some(&bob),
            &create_instance_body("z")
        )
        .0,
        403
    );
    assert_eq!(
        http(
            &cloud,
            "GET",
            "/v1/projects/alpha/instances",
            Some(&bob),
            b""
        )
        .0,
        404
    );

    // Reporting status into another project reveals nothing either.
    let (s, _) = http(
        &cloud,
        "POST",
        "/v1/projects/beta/instances/x/status",
        Some(&alice),
        br#"{"status":{}}"#,
    );
    assert_eq!(s, 404);
    // The host agent's token reads images and instances, not role bindings
    // or other projects' records.
    let agent = std::fs::read_to_string(cloud.data_dir().join("agent.token")).unwrap();
    let agent = agent.trim();
    assert_eq!(
        http(
            &cloud,
            "GET",
            "/v1/projects/default/images/busybox",
            Some(agent),
            b""
        )
        .0,
        200
    );
    assert_eq!(
        http(
            &cloud,
            "GET",
            "/v1/projects/default/rolebindings",
            Some(agent),
            b""
        )
        .0,
        404
    );
    assert_eq!(
        http(&cloud, "GET", "/v1/projects/alpha", Some(agent), b"").0,
        404
    );
    assert_eq!(
        http(
            &cloud,
            "POST",
            "/v1/projects/alpha/instances",
            Some(agent),
            &create_instance_body("h")
        )
        .0,
        404
    );

    // Tenants cannot create projects, users or read hosts and the audit log.
    assert_eq!(
        http(
            &cloud,
            "POST",
            "/v1/projects",
            Some(&alice),
            br#"{"name":"mine","spec":{}}"#
        )
        .0,
        403
    );
    assert_eq!(
        http(
            &cloud,
            "POST",
            "/v1/users",
            Some(&alice),
            br#"{"name":"eve","spec":{}}"#
        )
        .0,
        403
    );
    assert_eq!(http(&cloud, "GET", "/v1/hosts", Some(&alice), b"").0, 403);
    assert_eq!(http(&cloud, "GET", "/v1/audit", Some(&alice), b"").0, 403);

    // Bad bodies: malformed JSON 400, wrong shape 400, oversized 413, wrong type 415.
    let (s, body) = http(&cloud, "POST", "/v1/projects", Some(&admin), b"{not json");
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("\"code\":\"bad_request\""), "{body}");
    assert_eq!(
        http(
            &cloud,
            "POST",
            "/v1/projects",
            Some(&admin),
            br#"{"nom":"x"}"#
        )
        .0,
        400
    );
    let big = vec![b'a'; 2 << 20];
    assert_eq!(
        http(&cloud, "POST", "/v1/projects", Some(&admin), &big).0,
        413
    );
    assert_eq!(
        http_raw(
            &cloud,
            "POST",
            "/v1/projects",
            Some(&admin),
            b"name=x",
            "text/plain"
        )
        .0,
        415
    );
    let (s, body) = http(
        &cloud,
        "POST",
        "/v1/projects",
        Some(&admin),
        br#"{"name":"Bad Name!","spec":{}}"#,
    );
    assert_eq!(s, 422, "{body}");
    // Nothing was created by the bad calls.
    let all = cloud.json(&["project", "list"]).unwrap();
    let count = all["items"].as_array().unwrap().len();
    assert_eq!(count, 3, "default, alpha, beta only: {all}");

    // Audit: the mutating calls are there with who and the result.
    let audit = cloud.json(&["audit", "list", "--limit", "1000"]).unwrap();
    let records = audit["items"].as_array().unwrap();
    assert!(records
        .iter()
        .any(|r| r["actor"] == "admin" && r["path"] == "/v1/projects" && r["result"] == "ok"));
    assert!(records
        .iter()
        .any(|r| r["actor"] == "alice" && r["status"] == 404));
    // The create attempt with no token was audited as anonymous.
    let (s, _) = http(
        &cloud,
        "POST",
        "/v1/projects",
        None,
        br#"{"name":"anon","spec":{}}"#,
    );
    assert_eq!(s, 401);
    let audit = cloud.json(&["audit", "list", "--limit", "1000"]).unwrap();
    let records = audit["items"].as_array().unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["actor"] == "-" && r["status"] == 401),
        "{audit}"
    );
    assert!(records
        .iter()
        .any(|r| r["actor"] == "bob" && r["result"] == "forbidden"));

    // Revoked tokens stop working (within the cache's 2 s).
    let v = cloud.json(&["token", "list"]).unwrap();
    let bob_id = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["spec"]["user"] == "bob")
        .unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    cloud.ok(&["token", "rm", &bob_id]);
    common::wait_until(std::time::Duration::from_secs(5), "revocation", || {
        (http(
            &cloud,
            "GET",
            "/v1/projects/beta/instances",
            Some(&bob),
            b"",
        )
        .0 == 401)
            .then_some(())
    });
    // An open watch and a followed log end once their caller loses the
    // role in the project.
    cloud.ok(&[
        "image",
        "import",
        "--project",
        "alpha",
        "--name",
        "busybox",
        &cloud.starter_tar(),
    ]);
    cloud.ok(&[
        "instance",
        "run",
        "chatty",
        "--project",
        "alpha",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        "while true; do echo tick; sleep 1; done",
    ]);
    common::wait_until(std::time::Duration::from_secs(30), "chatty running", || {
        let v = cloud
            .json(&["instance", "get", "chatty", "--project", "alpha"])
            .ok()?;
        (v["status"]["phase"] == "running").then_some(())
    });
    let watch = open_stream(&cloud, &alice, "/v1/projects/alpha/instances?watch=true");
    let logs = open_stream(
        &cloud,
        &alice,
        "/v1/projects/alpha/instances/chatty/logs?follow=true",
    );
    cloud.ok(&["role", "revoke", "alice", "--project", "alpha"]);
    assert!(
        watch.join().unwrap(),
        "the watch must end after the role is revoked"
    );
    assert!(
        logs.join().unwrap(),
        "the followed log must end after the role is revoked"
    );
    cloud.ok(&["instance", "rm", "chatty", "--project", "alpha"]);
    assert_eq!(
        http(
            &cloud,
            "GET",
            "/v1/projects/alpha/instances",
            Some(&alice),
            b""
        )
        .0,
        404
    );

    // Token secrets never appear in responses.
    let (_, body) = http(&cloud, "GET", "/v1/tokens", Some(&admin), b"");
    assert!(!body.contains("secret_sha256"), "{body}");
}

#[test]
fn api_revisions_lists_watch_and_openapi() {
    let cloud = Cloud::start();
    let admin = cloud.admin_token();

    // OpenAPI is served without a token and lists the instance routes.
    let (s, body) = http(&cloud, "GET", "/v1/openapi.json", None, b"");
    assert_eq!(s, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(doc["paths"]["/v1/projects/{project}/instances/{name}"].is_object());

    // The TLS endpoint serves the same API with the self-signed certificate
    // made at first start; the CLI trusts it with --ca-cert.
    let endpoint = format!("https://127.0.0.1:{}", cloud.port);
    let cert = cloud.data_dir().join("tls/cert.pem");
    let out = cloud
        .command()
        .args([
            "--endpoint",
            &endpoint,
            "--ca-cert",
            cert.to_str().unwrap(),
            "--token",
            &admin,
            "whoami",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let who: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(who["user"], "admin");
    assert_eq!(who["system_admin"], true);
    // Without the right certificate the client refuses the connection.
    let other = cloud.data_dir().join("other.pem");
    std::fs::write(&other, include_str!("data/unrelated-cert.pem")).unwrap();
    let out = cloud
        .command()
        .args([
            "--endpoint",
            &endpoint,
            "--ca-cert",
            other.to_str().unwrap(),
            "--token",
            &admin,
            "whoami",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a server whose certificate is not trusted must be refused"
    );

    // Create stopped instances with labels.
    for i in 0..7 {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        let body = serde_json::to_vec(&json!({
            "name": format!("i{i}"), "labels": {"tier": tier},
            "spec": {"image": "busybox", "args": ["true"], "desired_state": "stopped"}
        }))
        .unwrap();
        let (s, b) = http(
            &cloud,
            "POST",
            "/v1/projects/default/instances",
            Some(&admin),
            &body,
        );
        assert_eq!(s, 201, "{b}");
    }
    // Duplicate name: 409 already_exists.
    let (s, b) = http(
        &cloud,
        "POST",
        "/v1/projects/default/instances",
        Some(&admin),
        &create_instance_body("i0"),
    );
    assert_eq!(s, 409, "{b}");
    assert!(b.contains("already_exists"));

    // Label selector and pagination.
    let (_, b) = http(
        &cloud,
        "GET",
        "/v1/projects/default/instances?selector=tier%3Dweb",
        Some(&admin),
        b"",
    );
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 4);
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let url = match &next {
            Some(c) => format!("/v1/projects/default/instances?limit=3&continue={c}"),
            None => "/v1/projects/default/instances?limit=3".to_string(),
        };
        let (_, b) = http(&cloud, "GET", &url, Some(&admin), b"");
        let v: Value = serde_json::from_str(&b).unwrap();
        for i in v["items"].as_array().unwrap() {
            seen.push(i["metadata"]["name"].as_str().unwrap().to_string());
        }
        match v["continue"].as_str() {
            Some(c) => next = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("i{i}")).collect::<Vec<_>>());

    // The same list gzip-compressed for a client that asks, and a change is
    // seen at once (lists are cached only while the store is unchanged).
    let gz_list = |cloud: &Cloud| -> Value {
        use std::io::{Read, Write};
        let mut s =
            std::os::unix::net::UnixStream::connect(cloud.data_dir().join("api.sock")).unwrap();
        write!(
            s,
            "GET /v1/projects/default/instances HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept-Encoding: gzip\r\nAuthorization: Bearer {}\r\n\r\n",
            cloud.admin_token()
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
        assert!(head.contains("content-encoding: gzip"), "{head}");
        let mut body = raw[split + 4..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            let mut out = Vec::new();
            let mut rest = &body[..];
            loop {
                let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
                let size =
                    usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
                        .unwrap();
                if size == 0 {
                    break;
                }
                out.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
                rest = &rest[nl + 2 + size + 2..];
            }
            body = out;
        }
        let mut text = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .unwrap();
        let _ = std::io::stdout().flush();
        serde_json::from_str(&text).unwrap()
    };
    let first = gz_list(&cloud);
    assert_eq!(first["items"].as_array().unwrap().len(), 7);
    let body = serde_json::to_vec(&json!({
        "name": "i7", "spec": {"image": "busybox", "args": ["true"], "desired_state": "stopped"}
    }))
    .unwrap();
    assert_eq!(
        http(
            &cloud,
            "POST",
            "/v1/projects/default/instances",
            Some(&admin),
            &body
        )
        .0,
        201
    );
    let second = gz_list(&cloud);
    assert_eq!(
        second["items"].as_array().unwrap().len(),
        8,
        "the new instance is listed"
    );

    // Stale revision: 409 and the stored instance is unchanged.
    let (_, b) = http(
        &cloud,
        "GET",
        "/v1/projects/default/instances/i1",
        Some(&admin),
        b"",
    );
    let mut inst: Value = serde_json::from_str(&b).unwrap();
    let rev = inst["metadata"]["revision"].as_i64().unwrap();
    inst["metadata"]["labels"]["tier"] = json!("cache");
    let (s, b) = http(
        &cloud,
        "PUT",
        "/v1/projects/default/instances/i1",
        Some(&admin),
        &serde_json::to_vec(&inst).unwrap(),
    );
    assert_eq!(s, 200, "{b}");
    inst["metadata"]["revision"] = json!(rev);
    inst["metadata"]["labels"]["tier"] = json!("stale");
    let (s, b) = http(
        &cloud,
        "PUT",
        "/v1/projects/default/instances/i1",
        Some(&admin),
        &serde_json::to_vec(&inst).unwrap(),
    );
    assert_eq!(s, 409, "{b}");
    let now = cloud.instance("i1");
    assert_eq!(now["metadata"]["labels"]["tier"], "cache");

    // Watch from the list's revision sees a later change.
    let (_, b) = http(
        &cloud,
        "GET",
        "/v1/projects/default/instances",
        Some(&admin),
        b"",
    );
    let list_rev = serde_json::from_str::<Value>(&b).unwrap()["revision"]
        .as_i64()
        .unwrap();
    let (s, _) = http(
        &cloud,
        "DELETE",
        "/v1/projects/default/instances/i6",
        Some(&admin),
        b"",
    );
    assert!(s == 202 || s == 204);
    let token = admin.clone();
    let sock = cloud.data_dir().join("api.sock");
    let got = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /v1/projects/default/instances?watch=true&revision={list_rev} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains("\"DELETED\"") || line.contains("\"MODIFIED\"") {
                return line;
            }
            line.clear();
        }
        line
    })
    .join()
    .unwrap();
    assert!(got.contains("i6"), "watch line: {got}");

    // A project deleted and made again under the same name: watching its
    // instances from revision 1 shows nothing of the earlier project.
    cloud.ok(&["project", "create", "gamma"]);
    cloud.ok(&[
        "image",
        "import",
        "--project",
        "gamma",
        "--name",
        "busybox",
        &cloud.starter_tar(),
    ]);
    let old = serde_json::to_vec(&json!({"name": "old-tenant", "spec": {"image": "busybox", "args": ["true"], "desired_state": "stopped"}})).unwrap();
    assert_eq!(
        http(
            &cloud,
            "POST",
            "/v1/projects/gamma/instances",
            Some(&admin),
            &old
        )
        .0,
        201
    );
    cloud.ok(&["instance", "rm", "old-tenant", "--project", "gamma"]);
    cloud.ok(&["image", "rm", "busybox", "--project", "gamma"]);
    cloud.ok(&["project", "rm", "gamma"]);
    cloud.ok(&["project", "create", "gamma"]);
    cloud.ok(&[
        "image",
        "import",
        "--project",
        "gamma",
        "--name",
        "busybox",
        &cloud.starter_tar(),
    ]);
    let new = serde_json::to_vec(&json!({"name": "new-tenant", "spec": {"image": "busybox", "args": ["true"], "desired_state": "stopped"}})).unwrap();
    assert_eq!(
        http(
            &cloud,
            "POST",
            "/v1/projects/gamma/instances",
            Some(&admin),
            &new
        )
        .0,
        201
    );
    let token = admin.clone();
    let sock = cloud.data_dir().join("api.sock");
    let first = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /v1/projects/gamma/instances?watch=true&revision=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if line.starts_with('{') {
                return line;
            }
            line.clear();
        }
        line
    })
    .join()
    .unwrap();
    assert!(first.contains("new-tenant"), "first event: {first}");
    assert!(!first.contains("old-tenant"), "{first}");
}

#[test]
fn token_expiry_is_exact_even_while_cached() {
    let cloud = Cloud::start();
    cloud.ok(&["user", "create", "carol"]);
    let bad = cloud.nimbus(&["token", "create", "--user", "carol", "--expires-in", "3w"]);
    assert!(!bad.status.success(), "an unknown unit is refused");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("use s, m, h or d"),
        "the error says which units work: {}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let v = cloud
        .json(&["token", "create", "--user", "carol", "--expires-in", "3s"])
        .expect("token create");
    let secret = v["secret"].as_str().unwrap().to_string();
    let expires: chrono::DateTime<chrono::Utc> = v["token"]["spec"]["expires_at"]
        .as_str()
        .expect("expires_at is set")
        .parse()
        .unwrap();
    // Keep the token hot in the server's cache until it is refused.
    let refused_at = loop {
        let status = http(&cloud, "GET", "/v1/whoami", Some(&secret), b"").0;
        let now = chrono::Utc::now();
        if status == 401 {
            break now;
        }
        assert_eq!(status, 200, "the token works until it expires");
        assert!(
            now < expires + chrono::Duration::seconds(5),
            "the token still works 5 s after expiring"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(refused_at >= expires, "refused before its expiry");
    assert!(
        refused_at < expires + chrono::Duration::milliseconds(500),
        "refused {} ms after expiry; a cached token must stop at its expiry",
        (refused_at - expires).num_milliseconds()
    );
    let list = cloud.nimbus(&["token", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("EXPIRES"));
}
