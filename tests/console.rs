//! The web console in a real browser (headless Chromium over WebDriver):
//! sign in with a token, launch a container through the form, see it run
//! without a reload, read its logs, use its terminal, delete it; a reader
//! sees no delete button and the API refuses the reader's delete; names
//! and labels holding markup are shown as text and run nothing.
//!
//! Screenshots of each page go to `$CARGO_TARGET_TMPDIR/console/`
//! (`docs/console/` keeps copies).

mod browser;
mod common;

use std::time::Duration;

use browser::Browser;
use common::{http, wait_until, Cloud};
use serde_json::json;

const T: Duration = Duration::from_secs(60);
const XSS: &str = "<img src=x onerror=alert(1)>";

fn post(cloud: &Cloud, token: &str, path: &str, body: serde_json::Value) -> (u16, String) {
    http(
        cloud,
        "POST",
        path,
        Some(token),
        body.to_string().as_bytes(),
    )
}

fn created(cloud: &Cloud, token: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let (s, b) = post(cloud, token, path, body);
    assert_eq!(s, 201, "POST {path}: {b}");
    serde_json::from_str(&b).expect("json")
}

/// Selector-safe: the instance names used here are plain.
fn row(name: &str) -> String {
    format!("#instances tr[data-instance='{name}']")
}

async fn sign_in(b: &Browser, base: &str, token: &str) {
    b.client
        .goto(&format!("{base}/ui/"))
        .await
        .expect("open /ui/");
    b.wait_js(
        "the sign-in form",
        T,
        "return !document.getElementById('signin-page').hidden",
    )
    .await;
    b.fill("#token", token).await;
    b.click("#signin button[type=submit]").await;
    b.wait_js(
        "the console after sign-in",
        T,
        "return document.body.dataset.ready",
    )
    .await;
    let url = b.client.current_url().await.expect("url").to_string();
    assert!(
        !url.contains("nmb_"),
        "the token must never be in a URL: {url}"
    );
}

async fn goto_hash(b: &Browser, hash: &str, ready: &str) {
    b.js(&format!(
        "delete document.body.dataset.ready; location.hash = {};",
        json!(hash)
    ))
    .await;
    b.wait_js(
        &format!("page {hash}"),
        T,
        &format!("return document.body.dataset.ready === {}", json!(ready)),
    )
    .await;
}

async fn assert_no_dialog(b: &Browser, when: &str) {
    if let Some(text) = b.dialog_open().await {
        panic!("a script ran from data ({when}): dialog {text:?} opened");
    }
    let imgs = b
        .js("return document.querySelectorAll('main img').length")
        .await;
    assert_eq!(
        imgs,
        json!(0),
        "markup from data became an element ({when})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    let cloud = Cloud::start();
    let admin = cloud.admin_token();
    let base = format!("https://127.0.0.1:{}", cloud.port);
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");

    // Markup wherever the API accepts free text; names that must be plain
    // are refused by the API itself.
    let (s, _) = post(
        &cloud,
        &admin,
        "/v1/projects",
        json!({"name": XSS, "spec": {}}),
    );
    assert_eq!(s, 422, "a project named with markup is refused by the API");
    created(
        &cloud,
        &admin,
        "/v1/projects",
        json!({"name": "web", "labels": {"team": XSS}, "spec": {"description": XSS}}),
    );
    created(
        &cloud,
        &admin,
        "/v1/projects/default/secgroups",
        json!({"name": "ssh", "spec": {"description": XSS, "rules": [{"protocol": "tcp", "port_from": 22, "port_to": 22, "cidr": "10.0.0.0/8"}]}}),
    );
    created(
        &cloud,
        &admin,
        "/v1/projects/default/networks",
        json!({"name": "backend", "spec": {"subnet": "10.77.0.0/24"}}),
    );
    created(
        &cloud,
        &admin,
        "/v1/users",
        json!({"name": "rita", "spec": {}}),
    );
    created(
        &cloud,
        &admin,
        "/v1/projects/default/rolebindings",
        json!({"user": "rita", "role": "reader"}),
    );
    let reader = created(&cloud, &admin, "/v1/tokens", json!({"user": "rita"}))["secret"]
        .as_str()
        .expect("reader token")
        .to_string();

    let b = Browser::start().await;
    sign_in(&b, &base, &admin).await;
    // Set once; still set at the end means the page never reloaded.
    b.js("window.nimbusNoReload = 42").await;

    // Launch through the form.
    goto_hash(&b, "#/p/default/instances/new", "new-instance").await;
    b.fill("#instance-form input[name=name]", "web1").await;
    b.css("#instance-form select[name=image]")
        .await
        .select_by_value("busybox")
        .await
        .expect("choose the image");
    b.fill("#instance-form input[name=cpus]", "0.5").await;
    b.fill("#instance-form input[name=memory]", "64").await;
    b.fill(
        "#instance-form input[name=args]",
        r#"["sh","-c","echo hello-from-console; sleep 1000"]"#,
    )
    .await;
    b.fill(
        "#instance-form textarea[name=labels]",
        &format!("xss={XSS}"),
    )
    .await;
    b.screenshot_to(&shots, "launch").await;
    b.click("#instance-form button[type=submit]").await;
    b.wait_js(
        "web1 to show as running in the live list",
        T,
        &format!(
            "return document.body.dataset.ready === 'instances' && document.querySelector(\"{} td.phase[data-phase=running]\")",
            row("web1")
        ),
    )
    .await;
    assert_eq!(
        b.js("return window.nimbusNoReload").await,
        json!(42),
        "running was shown without a reload"
    );
    let labels = b
        .js(&format!(
            "return document.querySelector(\"{} .chip\").textContent",
            row("web1")
        ))
        .await;
    assert_eq!(
        labels,
        json!(format!("xss={XSS}")),
        "the label is shown literally"
    );
    assert_no_dialog(&b, "instance list").await;
    b.screenshot_to(&shots, "instances").await;

    // Logs and terminal on the instance's page.
    goto_hash(&b, "#/p/default/instances/web1", "instance").await;
    b.wait_js(
        "the instance's logs",
        T,
        "const l = document.getElementById('logs'); if (!l.textContent.includes('hello-from-console')) { document.getElementById('refresh-logs').click(); return false; } return true;",
    )
    .await;
    b.click("#open-terminal").await;
    b.wait_js(
        "the terminal to open",
        T,
        "return document.getElementById('terminal-screen') && document.getElementById('terminal-screen').textContent.length > 0",
    )
    .await;
    b.css("#terminal-screen")
        .await
        .send_keys("echo term-$((6*7))\n")
        .await
        .expect("type in the terminal");
    b.wait_js(
        "the shell's answer in the terminal",
        T,
        "return document.getElementById('terminal-screen').textContent.includes('term-42')",
    )
    .await;
    b.screenshot_to(&shots, "instance").await;

    // The other pages, each checked for literal markup and screenshotted.
    for (hash, ready, shot) in [
        ("#/projects", "projects", "projects"),
        ("#/p/default/images", "images", "images"),
        ("#/p/default/networks", "networks", "networks"),
        ("#/p/default/secgroups", "secgroups", "secgroups"),
        ("#/p/default/ports", "ports", "ports"),
        ("#/p/default/usage", "usage", "usage"),
        ("#/hosts", "hosts", "hosts"),
        ("#/audit", "audit", "audit"),
    ] {
        goto_hash(&b, hash, ready).await;
        assert_no_dialog(&b, hash).await;
        b.screenshot_to(&shots, shot).await;
    }
    goto_hash(&b, "#/projects", "projects").await;
    let text = b
        .js("return document.querySelector(\"#projects tr[data-project='web']\").textContent")
        .await;
    assert!(
        text.as_str().unwrap_or_default().contains(XSS),
        "the project's description and label are shown literally: {text}"
    );
    goto_hash(&b, "#/p/default/secgroups", "secgroups").await;
    let text = b
        .js("return document.querySelector(\"#secgroups tr[data-secgroup='ssh']\").textContent")
        .await;
    assert!(text.as_str().unwrap_or_default().contains(XSS), "{text}");
    goto_hash(&b, "#/p/default/usage", "usage").await;
    b.wait_js(
        "the usage page: a chart or `not available`",
        T,
        "return document.querySelector('#usage svg.chart') || document.getElementById('usage-unavailable')",
    )
    .await;

    // Delete from the instance's page (the button asks once more).
    goto_hash(&b, "#/p/default/instances/web1", "instance").await;
    b.click("button[data-action=delete]").await;
    b.click("button[data-action=delete]").await;
    b.wait_js(
        "web1 to leave the live list",
        T,
        &format!(
            "return document.body.dataset.ready === 'instances' && !document.querySelector(\"{}\")",
            row("web1")
        ),
    )
    .await;
    wait_until(T, "web1 to be deleted", || {
        cloud.json(&["instance", "get", "web1"]).err()
    });
    assert_eq!(b.js("return window.nimbusNoReload").await, json!(42));

    // A reader sees no mutating buttons, and the API refuses anyway.
    created(
        &cloud,
        &admin,
        "/v1/projects/default/instances",
        json!({"name": "keep", "spec": {"image": "busybox", "args": ["sleep", "1000"]}}),
    );
    b.click("#signout").await;
    b.wait_js(
        "the sign-in page",
        T,
        "return !document.getElementById('signin-page').hidden",
    )
    .await;
    sign_in(&b, &base, &reader).await;
    goto_hash(&b, "#/p/default/instances", "instances").await;
    b.wait_js(
        "keep in the reader's list",
        T,
        &format!("return document.querySelector(\"{}\")", row("keep")),
    )
    .await;
    let buttons = b
        .js("return document.querySelectorAll('#instances button, #launch').length")
        .await;
    assert_eq!(buttons, json!(0), "a reader sees no mutating buttons");
    b.screenshot_to(&shots, "reader").await;
    let status = b
        .js("return fetch('/ui/session').then(r => r.json()).then(s => fetch('/v1/projects/default/instances/keep', {method: 'DELETE', headers: {'X-CSRF-Token': s.csrf}})).then(r => r.status)")
        .await;
    assert_eq!(
        status,
        json!(403),
        "the API refuses the reader's delete from the console"
    );
    let (s, b403) = http(
        &cloud,
        "DELETE",
        "/v1/projects/default/instances/keep",
        Some(&reader),
        b"",
    );
    assert_eq!(s, 403, "and with the reader's token: {b403}");
    cloud.instance("keep");
    b.quit().await;
    cloud.ok(&["instance", "rm", "--force", "keep"]);
}
