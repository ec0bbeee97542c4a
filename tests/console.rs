//! The web console in a real browser (headless Chromium over WebDriver):
//! sign in with a token, launch a container through the form, see it run
//! without a reload, read its logs, use its terminal, delete it; a reader
//! sees no delete button and the API refuses the reader's delete; names
//! and labels holding markup are shown as text and run nothing. Buckets
//! are made, refused deletion while they hold an object (the API's
//! message shown) and deleted through the console, with an S3 key made
//! there (its secret shown once) and used by boto3. The usage page's
//! chart and totals carry exactly what `nimbus usage -o json` reports
//! for the same window.
//!
//! Screenshots of each page go to `$CARGO_TARGET_TMPDIR/console/`
//! (`docs/console/` keeps copies).

mod browser;
mod common;

use std::time::Duration;

use browser::Browser;
use common::{free_port, http, wait_until, Cloud};
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

/// Run a boto3 script with `s3` bound to a client of `endpoint` using
/// `key`; its standard output.
fn boto3(cloud: &Cloud, endpoint: &str, key: &(String, String), script: &str) -> String {
    let prelude = format!("import boto3\ns3 = boto3.client('s3', endpoint_url={endpoint:?})\n");
    let out = std::process::Command::new("python3")
        .env("AWS_ACCESS_KEY_ID", &key.0)
        .env("AWS_SECRET_ACCESS_KEY", &key.1)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env(
            "AWS_CA_BUNDLE",
            cloud.data_dir().join("tls").join("cert.pem"),
        )
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .args(["-c", &format!("{prelude}{script}")])
        .output()
        .expect("run python3 with boto3 (scripts/deps installs it)");
    assert!(
        out.status.success(),
        "boto3 script failed: {}{}\n{script}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn volume_row(name: &str) -> String {
    format!("#volumes tr[data-volume='{name}']")
}

/// The text of `name`'s row once the volumes page shows it and `check`
/// (JS on the row `r`) holds, going back to the page until it does.
async fn volume_row_when(b: &Browser, name: &str, what: &str, check: &str) -> String {
    let js = format!(
        "const r = document.querySelector(\"{}\"); return document.body.dataset.ready === 'volumes' && r && ({check}) && r.textContent",
        volume_row(name)
    );
    for _ in 0..60 {
        let v = b.js(&js).await;
        if let Some(text) = v.as_str() {
            return text.to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        goto_hash(b, "#/p/default/images", "images").await;
        goto_hash(b, "#/p/default/volumes", "volumes").await;
    }
    panic!("{what}: the volumes page never showed it")
}

/// Volumes page: create, snapshot, grow, clone from the snapshot, a
/// refusal shown as the API's text, and delete; each checked in the API.
async fn volumes_in_the_console(b: &Browser, cloud: &Cloud, shots: &std::path::Path) {
    let vol = |name: &str| cloud.json(&["volume", "get", name]);
    goto_hash(b, "#/p/default/volumes", "volumes").await;
    b.fill("#volume-form input[name=name]", "console-data")
        .await;
    b.fill("#volume-form input[name=size]", "32").await;
    b.click("#volume-form button[type=submit]").await;
    let text = volume_row_when(
        b,
        "console-data",
        "console-data made by its host",
        "r.querySelector('.phase-available')",
    )
    .await;
    assert!(text.contains("32 MiB"), "its size: {text}");
    let v = vol("console-data").expect("the API has console-data");
    assert_eq!(v["spec"]["size_bytes"], json!(32u64 << 20), "{v}");

    b.fill("#volume-snapshot-form input[name=name]", "s1").await;
    b.click("#volume-snapshot-form button[type=submit]").await;
    volume_row_when(
        b,
        "console-data",
        "snapshot s1 listed",
        "r.querySelector('[data-snapshot=s1]')",
    )
    .await;
    let v = vol("console-data").expect("console-data");
    assert_eq!(v["spec"]["snapshots"][0]["name"], "s1", "{v}");

    // Shrinking is refused; the API's reason shows in the form.
    b.fill("#volume-resize-form input[name=size]", "16").await;
    b.click("#volume-resize-form button[type=submit]").await;
    let refusal = b
        .wait_js(
            "the refusal to shrink",
            T,
            "const e = document.querySelector('#volume-resize-form .error'); return !e.hidden && e.textContent",
        )
        .await;
    assert!(
        refusal.as_str().unwrap_or_default().contains("only grow"),
        "the API's message: {refusal}"
    );
    b.fill("#volume-resize-form input[name=size]", "64").await;
    b.click("#volume-resize-form button[type=submit]").await;
    volume_row_when(
        b,
        "console-data",
        "grown to 64 MiB",
        "r.children[1].textContent === '64 MiB'",
    )
    .await;
    assert_eq!(
        vol("console-data").expect("console-data")["spec"]["size_bytes"],
        json!(64u64 << 20)
    );

    b.fill("#volume-form input[name=name]", "console-clone")
        .await;
    b.js("const s = document.querySelector('#volume-form select[name=from_snapshot]'); s.value = 'console-data@s1'; return s.value")
        .await;
    b.click("#volume-form button[type=submit]").await;
    let text = volume_row_when(
        b,
        "console-clone",
        "the clone made by its host",
        "r.querySelector('.phase-available')",
    )
    .await;
    assert!(text.contains("32 MiB"), "the snapshot's size: {text}");
    assert_eq!(
        vol("console-clone").expect("console-clone")["spec"]["from_snapshot"],
        "console-data@s1"
    );
    b.screenshot_to(shots, "volumes").await;

    click_twice(
        b,
        &format!("{} button[data-action=delete]", volume_row("console-clone")),
    )
    .await;
    // The page shows it deleting, or (its host was quick) gone.
    let gone_or_deleting = format!(
        "const r = document.querySelector(\"{}\"); return document.body.dataset.ready === 'volumes' && (!r || !!r.querySelector('.phase-deleting'))",
        volume_row("console-clone")
    );
    b.wait_js("console-clone deleting or gone", T, &gone_or_deleting)
        .await;
    wait_until(T, "console-clone to be deleted", || {
        vol("console-clone").err()
    });
}

fn bucket_row(name: &str) -> String {
    format!("#buckets tr[data-bucket='{name}']")
}

/// Click a confirm-twice button (`confirmButton` in app.js).
async fn click_twice(b: &Browser, selector: &str) {
    b.click(selector).await;
    b.click(selector).await;
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
    let s3_listen = format!("127.0.0.1:{}", free_port());
    let s3_endpoint = format!("https://{s3_listen}");
    let cloud = Cloud::start_with(&["--s3-listen", &s3_listen]);
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

    // Buckets: a name holding markup is refused by the API, and its
    // message is shown as text.
    goto_hash(&b, "#/p/default/buckets", "buckets").await;
    b.fill("#bucket-form input[name=name]", XSS).await;
    b.click("#bucket-form button[type=submit]").await;
    let refusal = b
        .wait_js(
            "the refusal of a bucket named with markup",
            T,
            "const e = document.querySelector('#bucket-form .error'); return !e.hidden && e.textContent",
        )
        .await;
    let refusal = refusal.as_str().unwrap_or_default().to_string();
    assert!(
        refusal.contains(XSS) && refusal.contains("invalid"),
        "the API's message, literally: {refusal}"
    );
    assert_no_dialog(&b, "bucket form").await;
    b.fill("#bucket-form input[name=name]", "console-photos")
        .await;
    b.click("#bucket-form input[name=public_read]").await;
    b.click("#bucket-form button[type=submit]").await;
    let listed = b
        .wait_js(
            "console-photos in the bucket list",
            T,
            &format!(
                "const r = document.querySelector(\"{}\"); return document.body.dataset.ready === 'buckets' && r && r.textContent",
                bucket_row("console-photos")
            ),
        )
        .await;
    assert!(
        listed.as_str().unwrap_or_default().contains("public read"),
        "made with public read: {listed}"
    );
    let (s, body) = http(
        &cloud,
        "GET",
        "/v1/projects/default/buckets",
        Some(&admin),
        b"",
    );
    assert_eq!(s, 200, "{body}");
    let buckets: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        buckets
            .as_array()
            .expect("list")
            .iter()
            .any(|b| b["name"] == "console-photos" && b["public_read"] == true),
        "the API has the console's bucket, public: {buckets}"
    );

    // An S3 key made in the console: its secret shown once, and working.
    goto_hash(&b, "#/p/default/s3credentials", "s3credentials").await;
    b.click("#create-s3credential").await;
    let shown = b
        .wait_js(
            "the new key's secret",
            T,
            "const s = document.getElementById('new-secret-access-key'); return s && [document.getElementById('new-access-key-id').textContent, s.textContent]",
        )
        .await;
    let key = (
        shown[0].as_str().expect("access key id").to_string(),
        shown[1].as_str().expect("secret").to_string(),
    );
    assert!(key.1.len() >= 20, "a secret: {shown}");
    boto3(
        &cloud,
        &s3_endpoint,
        &key,
        "s3.put_object(Bucket='console-photos', Key='cat.jpg', Body=b'meow' * 1000)\n",
    );
    goto_hash(&b, "#/p/default/instances", "instances").await;
    goto_hash(&b, "#/p/default/s3credentials", "s3credentials").await;
    b.wait_js(
        "the key listed",
        T,
        &format!(
            "return document.querySelector(\"#s3credentials tr[data-access-key='{}']\")",
            key.0
        ),
    )
    .await;
    let page_text = b.js("return document.body.textContent").await;
    assert!(
        !page_text.as_str().unwrap_or_default().contains(&key.1),
        "the secret is shown once only"
    );
    b.screenshot_to(&shots, "s3credentials").await;

    // A bucket holding an object is not deleted; the API's reason shows.
    goto_hash(&b, "#/p/default/buckets", "buckets").await;
    b.screenshot_to(&shots, "buckets").await;
    click_twice(
        &b,
        &format!(
            "{} button[data-action=delete]",
            bucket_row("console-photos")
        ),
    )
    .await;
    let toast = b
        .wait_js(
            "the refusal to delete a bucket that holds an object",
            T,
            "const t = document.getElementById('toast'); return !t.hidden && t.classList.contains('bad') && t.textContent",
        )
        .await;
    assert!(
        toast
            .as_str()
            .unwrap_or_default()
            .contains("bucket \"console-photos\" is not empty; delete its objects first"),
        "the API's message: {toast}"
    );
    assert!(cloud.ok(&["bucket", "list"]).contains("console-photos"));
    // Objects are metered in whole seconds of Last-Modified: a delete in
    // the second of the PUT would leave no object-hours for the usage
    // check below. Wait past that second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    boto3(
        &cloud,
        &s3_endpoint,
        &key,
        "s3.delete_object(Bucket='console-photos', Key='cat.jpg')\n",
    );
    goto_hash(&b, "#/p/default/instances", "instances").await;
    goto_hash(&b, "#/p/default/buckets", "buckets").await;
    click_twice(
        &b,
        &format!(
            "{} button[data-action=delete]",
            bucket_row("console-photos")
        ),
    )
    .await;
    b.wait_js(
        "console-photos to leave the list",
        T,
        &format!(
            "return document.body.dataset.ready === 'buckets' && document.querySelector('#buckets') && !document.querySelector(\"{}\")",
            bucket_row("console-photos")
        ),
    )
    .await;
    assert!(!cloud.ok(&["bucket", "list"]).contains("console-photos"));

    // The key deleted in the console is gone.
    goto_hash(&b, "#/p/default/s3credentials", "s3credentials").await;
    click_twice(
        &b,
        &format!(
            "#s3credentials tr[data-access-key='{}'] button[data-action=delete]",
            key.0
        ),
    )
    .await;
    b.wait_js(
        "the key to leave the list",
        T,
        &format!(
            "return document.body.dataset.ready === 's3credentials' && document.querySelector('#s3credentials') && !document.querySelector(\"#s3credentials tr[data-access-key='{}']\")",
            key.0
        ),
    )
    .await;
    assert!(!cloud.ok(&["s3", "credentials", "list"]).contains(&key.0));

    volumes_in_the_console(&b, &cloud, &shots).await;

    // The usage page shows what `nimbus usage -o json` reports for the
    // same window: a window that has ended, so nothing in it still grows.
    let to_t = chrono::Utc::now() + chrono::Duration::seconds(1);
    let to_s = to_t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let from_s = (to_t - chrono::Duration::hours(3))
        .format("%Y-%m-%dT%H:00:00Z")
        .to_string();
    wait_until(T, "the usage window to end", || {
        (chrono::Utc::now() > to_t + chrono::Duration::seconds(1)).then_some(())
    });
    let report = cloud
        .json(&["usage", "--from", &from_s, "--to", &to_s])
        .expect("usage -o json");
    goto_hash(&b, "#/p/default/usage", "usage").await;
    b.fill("#usage-form input[name=from]", &from_s).await;
    b.fill("#usage-form input[name=to]", &to_s).await;
    b.click("#usage-form button[type=submit]").await;
    b.wait_js(
        "the usage of the window asked for",
        T,
        &format!(
            "const u = document.getElementById('usage'); return u.dataset.from === {} && u.dataset.to === {}",
            json!(from_s),
            json!(to_s)
        ),
    )
    .await;
    let chart = b
        .js("const pick = (id, names) => Array.from(document.querySelectorAll('#' + id + ' g.hour')).map((g) => [g.getAttribute('data-hour'), ...names.map((n) => g.getAttribute('data-' + n))]); return { instances: pick('usage-instances', ['container', 'vm', 'unikernel']), storage: pick('usage-storage', ['image', 'object', 'volume']), totals: Array.from(document.querySelectorAll('#usage-totals td')).map((td) => td.getAttribute('data-value')), shown: Array.from(document.querySelectorAll('#usage-totals td')).map((td) => td.textContent) }")
        .await;
    let hours = report["hours"].as_array().expect("hours");
    let drawn = |chart_id: &str| chart[chart_id].as_array().cloned().unwrap_or_default();
    assert_eq!(
        drawn("instances").len(),
        hours.len(),
        "a group per hour: {chart}"
    );
    assert_eq!(
        drawn("storage").len(),
        hours.len(),
        "a group per hour: {chart}"
    );
    let figure = |v: &serde_json::Value| -> f64 {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{v} is not a figure"))
    };
    for (i, h) in hours.iter().enumerate() {
        let inst = &drawn("instances")[i];
        let storage = &drawn("storage")[i];
        assert_eq!(inst[0], h["hour"], "hour {i}: {chart}");
        assert_eq!(storage[0], h["hour"], "hour {i}: {chart}");
        let want = [
            (&inst[1], &h["instance_hours"]["container"]),
            (&inst[2], &h["instance_hours"]["vm"]),
            (&inst[3], &h["instance_hours"]["unikernel"]),
            (&storage[1], &h["image_gib_hours"]),
            (&storage[2], &h["object_gib_hours"]),
            (&storage[3], &h["volume_gib_hours"]),
        ];
        for (k, (shown, api)) in want.into_iter().enumerate() {
            assert_eq!(
                figure(shown),
                api.as_f64().expect("number"),
                "hour {} series {k}: chart {shown} vs `nimbus usage` {api}",
                h["hour"]
            );
        }
    }
    let t = &report["totals"];
    assert!(
        t["instance_hours"]["container"].as_f64().unwrap_or(0.0) > 0.0
            && t["image_gib_hours"].as_f64().unwrap_or(0.0) > 0.0
            && t["object_gib_hours"].as_f64().unwrap_or(0.0) > 0.0,
        "the window holds web1's run, the image and the object: {report}"
    );
    let totals = [
        &t["instance_hours"]["container"],
        &t["instance_hours"]["vm"],
        &t["instance_hours"]["unikernel"],
        &t["vcpu_hours"],
        &t["memory_gib_hours"],
        &t["image_gib_hours"],
        &t["object_gib_hours"],
        &t["volume_gib_hours"],
    ];
    let cells = chart["totals"].as_array().cloned().unwrap_or_default();
    assert_eq!(cells.len(), totals.len(), "a cell per figure: {chart}");
    for (cell, api) in cells.iter().zip(totals) {
        assert_eq!(
            figure(cell),
            api.as_f64().expect("number"),
            "totals row: {chart} vs {report}"
        );
    }
    // What people read: no figure that is not zero shows as zero.
    for (shown, api) in chart["shown"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .zip(totals)
    {
        let shown = shown.as_str().unwrap_or_default();
        let api = api.as_f64().unwrap_or(0.0);
        assert_eq!(
            shown.parse::<f64>().map(|v| v == 0.0).ok(),
            Some(api == 0.0),
            "{shown:?} shown for {api}"
        );
    }
    b.screenshot_to(&shots, "usage").await;

    // A reader sees no mutating buttons, and the API refuses anyway.
    created(
        &cloud,
        &admin,
        "/v1/projects/default/instances",
        json!({"name": "keep", "spec": {"image": "busybox", "args": ["sleep", "1000"]}}),
    );
    created(
        &cloud,
        &admin,
        "/v1/projects/default/buckets",
        json!({"name": "reader-sees"}),
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
    goto_hash(&b, "#/p/default/buckets", "buckets").await;
    b.wait_js(
        "reader-sees in the reader's bucket list",
        T,
        &format!(
            "return document.querySelector(\"{}\")",
            bucket_row("reader-sees")
        ),
    )
    .await;
    let buttons = b
        .js("return document.querySelectorAll('#buckets button, #bucket-form').length")
        .await;
    assert_eq!(buttons, json!(0), "a reader sees no bucket buttons");
    goto_hash(&b, "#/p/default/volumes", "volumes").await;
    b.wait_js(
        "console-data in the reader's volume list",
        T,
        &format!(
            "return document.querySelector(\"{}\")",
            volume_row("console-data")
        ),
    )
    .await;
    let buttons = b
        .js("return document.querySelectorAll('main button, main form').length")
        .await;
    assert_eq!(
        buttons,
        json!(0),
        "a reader sees no volume buttons or forms"
    );
    let status = b
        .js("return fetch('/ui/session').then(r => r.json()).then(s => fetch('/v1/projects/default/buckets/reader-sees', {method: 'DELETE', headers: {'X-CSRF-Token': s.csrf}})).then(r => r.status)")
        .await;
    assert_eq!(
        status,
        json!(403),
        "the API refuses the reader's bucket delete"
    );
    goto_hash(&b, "#/p/default/s3credentials", "s3credentials").await;
    b.css("#s3credentials-denied").await;
    assert_eq!(
        b.js("return document.querySelectorAll('main button').length")
            .await,
        json!(0),
        "a reader gets no key buttons"
    );
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
