//! The OpenAPI document a running server serves: valid for a standard
//! validator (`openapi-spec-validator`, installed by scripts/deps), and
//! every operation in it reaches a handler of the real router.

mod common;

use std::process::Command;

use common::{http, Cloud};
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

fn fetch_document(cloud: &Cloud) -> (String, Value) {
    // Served without a token: generators fetch it anonymously.
    let (status, body) = http(cloud, "GET", "/v1/openapi.json", None, b"");
    assert_eq!(status, 200, "GET /v1/openapi.json: {body}");
    let doc: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/v1/openapi.json is not JSON ({e}): {body}"));
    (body, doc)
}

#[test]
fn openapi_document_passes_a_standard_validator() {
    let cloud = Cloud::start();
    let (body, doc) = fetch_document(&cloud);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "not an OpenAPI 3 document: {}",
        doc["openapi"]
    );
    let file = tempfile::Builder::new()
        .prefix("nimbus-openapi-")
        .suffix(".json")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), &body).expect("write the document");
    // A missing validator is a failure, not a skip: scripts/deps installs it.
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}); run scripts/deps to install python3 and openapi-spec-validator")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named openapi_spec_validator"),
        "openapi-spec-validator is not installed; run scripts/deps: {stderr}"
    );
    assert!(
        out.status.success(),
        "openapi-spec-validator rejects /v1/openapi.json ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("OK"), "validator said: {stdout}{stderr}");
}

#[test]
fn every_documented_operation_reaches_a_handler() {
    let cloud = Cloud::start();
    let admin = cloud.admin_token();
    let (_, doc) = fetch_document(&cloud);
    // The router answers 405 for a known path without the method, and its
    // fallback's 404 names no API route: check both look as expected, so
    // the probe below can tell a served operation from an unserved one.
    let not_served = |status: u16, body: &str| status == 405 || body.contains("no API route");
    let (status, body) = http(&cloud, "GET", "/v1/no-such-route", Some(&admin), b"");
    assert!(not_served(status, &body), "fallback: {status} {body}");
    let (status, body) = http(&cloud, "PATCH", "/v1/whoami", Some(&admin), b"");
    assert!(not_served(status, &body), "wrong method: {status} {body}");
    let mut unrouted = Vec::new();
    let mut count = 0;
    for (template, item) in doc["paths"].as_object().expect("paths") {
        // Names that exist nowhere: every call fails in its handler (404)
        // or its body or query extractor (400) and changes nothing.
        let mut path = template.clone();
        for p in [
            "project", "name", "user", "host", "token", "snapshot", "digest", "ticket", "tag",
        ] {
            path = path.replace(&format!("{{{p}}}"), "openapi-probe");
        }
        assert!(!path.contains('{'), "unknown path parameter in {template}");
        for m in METHODS {
            if item.get(m).is_none() {
                continue;
            }
            count += 1;
            let method = m.to_uppercase();
            let (status, body) = http(&cloud, &method, &path, Some(&admin), b"");
            if not_served(status, &body) {
                unrouted.push(format!("{method} {path}: {status} {body}"));
            }
        }
    }
    assert!(count > 50, "only {count} operations documented");
    assert!(
        unrouted.is_empty(),
        "documented but not served:\n{}",
        unrouted.join("\n")
    );
}
