//! Local users and tenants' data: nothing under the data directory reveals
//! a tenant's environment, secrets, user-data, logs or root filesystem to an
//! unprivileged local account; secret environment values never leave the
//! API and are not in the store in plain text; an existing data directory
//! left open by an older version is corrected at start.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{wait_until, Cloud};

/// Run `args` as the unprivileged `nobody` (uid/gid 65534, no groups).
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .output()
        .expect("run setpriv")
}

/// A marker unique to this run, so nothing else on the machine matches it.
fn marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{what}-{}-{nanos:x}", std::process::id())
}

/// What `nobody` can find of `needles` anywhere under `dir` by `grep -r`
/// (permission errors are expected and ignored), and the paths `find` lists.
fn nobody_search(dir: &Path, needles: &[&str]) -> (String, String) {
    let mut grep = vec!["grep", "-r", "-a", "-l", "-F"];
    for n in needles {
        grep.extend(["-e", n]);
    }
    let dir_s = dir.to_string_lossy().to_string();
    grep.push(&dir_s);
    let found = as_nobody(&grep);
    let listed = as_nobody(&["find", &dir_s]);
    (
        String::from_utf8_lossy(&found.stdout).to_string(),
        String::from_utf8_lossy(&listed.stdout).to_string(),
    )
}

fn wait_log(cloud: &Cloud, name: &str, needle: &str, timeout: Duration) -> String {
    wait_until(timeout, &format!("{needle:?} in the log of {name}"), || {
        let logs = cloud.logs(name);
        logs.contains(needle).then_some(logs)
    })
}

fn instance_dir(cloud: &Cloud, name: &str) -> PathBuf {
    let id = cloud.instance(name)["metadata"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!id.is_empty(), "instance {name} has an id");
    cloud.data_dir().join("instances").join(id)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Whether any file directly in `dir` or below holds `needle` (read as root).
fn root_finds(dir: &Path, needle: &str) -> bool {
    Command::new("grep")
        .args(["-r", "-a", "-q", "-F", "-e", needle])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn nobody_finds_no_tenant_secret_in_the_data_dir() {
    let cloud = Cloud::start();
    cloud.import_tiny();
    let plain = marker("PLAINPW");
    let secret = marker("SECRETPW");
    let vm_secret = marker("VMSECRET");

    // The container prints both values, so its log holds them too.
    cloud.ok(&[
        "instance",
        "run",
        "app",
        "--image",
        "busybox",
        "-e",
        &format!("DB_PASSWORD={plain}"),
        "--secret-env",
        &format!("API_KEY={secret}"),
        "--",
        "sh",
        "-c",
        "echo \"db=$DB_PASSWORD api=$API_KEY\"; sleep 3600",
    ]);
    cloud.wait_phase("app", &["running"], Duration::from_secs(60));
    wait_log(&cloud, "app", &secret, Duration::from_secs(30));

    let work = tempfile::tempdir().expect("tempdir");
    let user_data = work.path().join("user-data");
    std::fs::write(&user_data, format!("#!/bin/sh\necho \"{vm_secret}\"\n")).expect("user-data");
    cloud.ok(&[
        "instance",
        "run",
        "vm1",
        "--kind",
        "vm",
        "--image",
        "tiny",
        "--memory",
        "128MiB",
        "--user-data",
        &user_data.to_string_lossy(),
    ]);
    wait_log(&cloud, "vm1", &vm_secret, Duration::from_secs(180));

    let data = cloud.data_dir();
    let app = instance_dir(&cloud, "app");
    let vm = instance_dir(&cloud, "vm1");
    // The markers are really on disk (for root), so the search below means something.
    assert!(
        root_finds(&app, &plain),
        "spec.json or the log holds the plain value"
    );
    assert!(
        root_finds(&app, &secret),
        "the container's files hold the secret"
    );
    assert!(
        root_finds(&vm, &vm_secret),
        "seed.img and the console log hold the user-data"
    );

    // The data directory itself is not listable, so the search also starts
    // from every directory whose path nobody could learn or guess.
    let needles = [plain.as_str(), secret.as_str(), vm_secret.as_str()];
    let (found, listed) = nobody_search(data, &needles);
    assert!(
        found.trim().is_empty(),
        "nobody found tenants' secrets in:\n{found}"
    );
    for start in [
        data.join("instances"),
        app.clone(),
        app.join("bundle"),
        app.join("runtime"),
        vm.clone(),
        data.join("net"),
        data.join("images"),
        data.join("tmp"),
    ] {
        let (found, _) = nobody_search(&start, &needles);
        assert!(
            found.trim().is_empty(),
            "nobody found tenants' secrets under {}:\n{found}",
            start.display()
        );
    }
    let rootfs = app.join("rootfs");
    assert!(
        !listed.contains(&*rootfs.to_string_lossy()) && !listed.contains("/instances/"),
        "nobody must not list instances or their root filesystems:\n{listed}"
    );

    // Direct opens of the known paths fail for nobody.
    let known = [
        data.join("store.db"),
        data.join("store.db-wal"),
        data.join("store.db-shm"),
        data.join("secrets.key"),
        data.join("admin.token"),
        data.join("agent.token"),
        app.join("spec.json"),
        app.join("bundle/config.json"),
        app.join("console.log"),
        app.join("rootfs/etc/passwd"),
        vm.join("vm.json"),
        vm.join("seed.img"),
        vm.join("console.log"),
    ];
    for path in &known {
        if !path.exists() {
            continue;
        }
        let out = as_nobody(&["cat", &path.to_string_lossy()]);
        assert!(
            !out.status.success(),
            "nobody read {} (mode {:o})",
            path.display(),
            mode(path)
        );
    }
    for dir in [
        data.join("instances"),
        rootfs,
        app.clone(),
        vm.clone(),
        data.join("images/layers"),
        data.join("net"),
    ] {
        let out = as_nobody(&["ls", &dir.to_string_lossy()]);
        assert!(!out.status.success(), "nobody listed {}", dir.display());
    }
    // The data directory and instances/ only let others pass; a container's
    // directory lets its own root's group through, a VM's nobody.
    assert_eq!(mode(data), 0o711);
    assert_eq!(mode(&data.join("instances")), 0o711);
    assert_eq!(mode(&app), 0o710);
    assert_ne!(std::fs::metadata(&app).map(|m| m.gid()).unwrap_or(0), 0);
    assert_eq!(mode(&vm) & 0o077, 0);
    // The API socket: the nimbus group's if it exists, else root's alone.
    let sock = std::fs::metadata(data.join("api.sock")).expect("api.sock");
    let group_exists = Command::new("getent")
        .args(["group", "nimbus"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let sock_mode = sock.permissions().mode() & 0o777;
    if group_exists {
        assert_eq!(sock_mode, 0o660);
    } else {
        assert_eq!(
            sock_mode, 0o600,
            "without a nimbus group the socket is root's"
        );
    }
    let out = as_nobody(&[
        common::NIMBUS,
        "--data-dir",
        &data.to_string_lossy(),
        "whoami",
    ]);
    assert!(!out.status.success(), "nobody reached the API");

    // Containers still work as usual inside: a file made there gets the
    // usual umask, the resolver files and `/` are readable by every user.
    let made = cloud.ok(&[
        "instance",
        "exec",
        "app",
        "--",
        "sh",
        "-c",
        "touch /tmp/f; stat -c %a /tmp/f /etc/resolv.conf /",
    ]);
    assert_eq!(
        made.split_whitespace().collect::<Vec<_>>(),
        ["644", "644", "755"],
        "{made}"
    );
    cloud.remove_everything();
}

/// Read a watch stream of the default project's instances from revision 0
/// until `until` appears in it or `timeout` passes; returns what came.
fn watch_instances(cloud: &Cloud, until: &str, timeout: Duration) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(cloud.data_dir().join("api.sock"))
        .expect("connect api.sock");
    let req = format!(
        "GET /v1/projects/default/instances?watch=true&revision=0 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
        cloud.admin_token()
    );
    s.write_all(req.as_bytes()).expect("write");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline && !String::from_utf8_lossy(&got).contains(until) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
    }
    String::from_utf8_lossy(&got).to_string()
}

#[test]
fn secret_env_is_redacted_everywhere_sealed_in_the_store_and_set_in_the_container() {
    let cloud = Cloud::start();
    let secret = marker("S3CRET");
    let plain = marker("PLAIN");
    cloud.ok(&[
        "instance",
        "run",
        "web",
        "--image",
        "busybox",
        "-e",
        &format!("MODE={plain}"),
        "--secret-env",
        &format!("TOKEN={secret}"),
        "--",
        "sleep",
        "3600",
    ]);
    let v = cloud.wait_phase("web", &["running"], Duration::from_secs(60));
    assert_eq!(v["spec"]["secret_env"]["TOKEN"], "<secret>", "{v}");
    assert_eq!(
        v["spec"]["env"]["MODE"],
        plain.as_str(),
        "plain env stays readable"
    );
    let get = cloud.ok(&["instance", "get", "web", "-o", "json"]);
    let list = cloud.ok(&["instance", "list", "-o", "json"]);
    let (status, raw_list) = common::http(
        &cloud,
        "GET",
        "/v1/instances",
        Some(&cloud.admin_token()),
        b"",
    );
    assert_eq!(status, 200);
    let watched = watch_instances(&cloud, "\"running\"", Duration::from_secs(10));
    assert!(
        watched.contains("TOKEN"),
        "the watch shows the secret's name: {watched}"
    );
    for (what, text) in [
        ("get", &get),
        ("list", &list),
        ("list of all projects", &raw_list),
        ("watch", &watched),
    ] {
        assert!(
            !text.contains(&secret),
            "the {what} response shows the secret: {text}"
        );
    }

    // Nobody gets the values from the API, the system administrator included.
    let (status, body) = common::http(
        &cloud,
        "GET",
        "/v1/projects/default/instances/web/secret-env",
        Some(&cloud.admin_token()),
        b"",
    );
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains(&secret));

    // The container has it as an ordinary variable.
    let env = cloud.ok(&["instance", "exec", "web", "--", "env"]);
    assert!(env.contains(&format!("TOKEN={secret}")), "{env}");
    assert!(env.contains(&format!("MODE={plain}")), "{env}");

    // The store holds it sealed: not in store.db, its WAL or shared memory.
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let bytes = std::fs::read(cloud.data_dir().join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{f} holds the secret in plain text"
        );
    }
    let store = std::fs::read(cloud.data_dir().join("store.db")).unwrap_or_default();
    let wal = std::fs::read(cloud.data_dir().join("store.db-wal")).unwrap_or_default();
    let has_plain = |b: &[u8]| b.windows(plain.len()).any(|w| w == plain.as_bytes());
    assert!(
        has_plain(&store) || has_plain(&wal),
        "the plain env is in the store, so the search above means something"
    );

    // A replace that sends the instance back as it was read keeps the
    // secret; the response does not show it; a restart still gets it.
    let mut body: serde_json::Value = serde_json::from_str(&get).expect("instance json");
    body["metadata"]["labels"]["tier"] = serde_json::json!("web");
    let (status, put) = common::http(
        &cloud,
        "PUT",
        "/v1/projects/default/instances/web",
        Some(&cloud.admin_token()),
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{put}");
    assert!(!put.contains(&secret), "{put}");
    assert!(put.contains("<secret>"), "{put}");
    cloud.ok(&["instance", "restart", "web"]);
    wait_until(
        Duration::from_secs(60),
        "web to run again with its secret",
        || {
            let env = cloud.nimbus(&["instance", "exec", "web", "--", "env"]);
            String::from_utf8_lossy(&env.stdout)
                .contains(&format!("TOKEN={secret}"))
                .then_some(())
        },
    );

    // The placeholder cannot create a value out of nothing.
    body["spec"]["secret_env"]["OTHER"] = serde_json::json!("<secret>");
    body["metadata"]["revision"] = cloud.instance("web")["metadata"]["revision"].clone();
    let (status, err) = common::http(
        &cloud,
        "PUT",
        "/v1/projects/default/instances/web",
        Some(&cloud.admin_token()),
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 422, "{err}");
    assert!(err.contains("OTHER"), "{err}");
    cloud.remove_everything();
}

#[test]
fn an_open_data_dir_from_an_older_version_is_corrected_at_start() {
    let mut cloud = Cloud::start();
    cloud.ok(&[
        "instance", "run", "old", "--image", "busybox", "--", "sleep", "3600",
    ]);
    cloud.wait_phase("old", &["running"], Duration::from_secs(60));
    let data = cloud.data_dir().to_path_buf();
    let dir = instance_dir(&cloud, "old");
    cloud.kill_daemon();

    // What older versions left: everything readable by everyone.
    let open = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()))
    };
    open(&data, 0o755);
    open(&data.join("instances"), 0o755);
    open(&dir, 0o755);
    nix_chown_root(&dir);
    open(&dir.join("bundle"), 0o755);
    let files = [
        data.join("store.db"),
        data.join("store.db-wal"),
        dir.join("spec.json"),
        dir.join("bundle/config.json"),
        dir.join("console.log"),
    ];
    for f in files.iter().filter(|f| f.exists()) {
        open(f, 0o644);
    }
    assert!(
        as_nobody(&["cat", &dir.join("spec.json").to_string_lossy()])
            .status
            .success(),
        "the simulated old data dir is open"
    );

    cloud.spawn_daemon();
    cloud.wait_ready();
    for f in files.iter().filter(|f| f.exists()) {
        assert_eq!(
            mode(f) & 0o077,
            0,
            "{} still open after the start",
            f.display()
        );
        assert!(
            !as_nobody(&["cat", &f.to_string_lossy()]).status.success(),
            "nobody read {}",
            f.display()
        );
    }
    assert_eq!(mode(&data), 0o711);
    assert_eq!(mode(&data.join("instances")), 0o711);
    assert_eq!(mode(&dir.join("bundle")), 0o700);
    assert_eq!(
        mode(&dir),
        0o710,
        "the instance dir lets only its container's root through"
    );
    assert!(!as_nobody(&["ls", &dir.join("rootfs").to_string_lossy()])
        .status
        .success());
    assert!(daemon_log_mentions(&cloud, "removed access of other users"));

    // The adopted container keeps running, and restarts through the
    // corrected directory.
    cloud.wait_phase("old", &["running"], Duration::from_secs(30));
    cloud.ok(&["instance", "restart", "old"]);
    wait_until(Duration::from_secs(60), "old to run again", || {
        let out = cloud.nimbus(&["instance", "exec", "old", "--", "true"]);
        out.status.success().then_some(())
    });
    cloud.remove_everything();
}

fn daemon_log_mentions(cloud: &Cloud, text: &str) -> bool {
    cloud.daemon_log().contains(text)
}

/// Give `path` back to root:root, as older versions made instance dirs.
fn nix_chown_root(path: &Path) {
    let st = Command::new("chown")
        .arg("0:0")
        .arg(path)
        .status()
        .expect("chown");
    assert!(st.success(), "chown {}", path.display());
}

#[test]
fn members_of_the_socket_group_reach_the_api_with_their_token() {
    // `nogroup` (65534) stands in for `nimbus`, which this machine may lack:
    // nobody's own group, so nobody is a member and no system change is needed.
    let cloud = Cloud::start_with(&["--socket-group", "nogroup"]);
    let sock = std::fs::metadata(cloud.data_dir().join("api.sock")).expect("api.sock");
    assert_eq!(sock.permissions().mode() & 0o777, 0o660);
    assert_eq!(sock.gid(), 65534);
    cloud.ok(&["user", "create", "carol"]);
    let token = cloud
        .json(&["token", "create", "--user", "carol"])
        .expect("token create")["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let data = cloud.data_dir().to_string_lossy().to_string();
    let whoami = |groups: &str| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", groups, "--"])
            .args([common::NIMBUS, "--data-dir", &data, "whoami"])
            .env("NIMBUS_TOKEN", &token)
            .output()
            .expect("setpriv")
    };
    let out = whoami("--clear-groups");
    assert!(
        out.status.success(),
        "a member of the socket group reaches the API: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("carol"));
    // The token still decides: without one (admin.token is root's), nothing.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args([common::NIMBUS, "--data-dir", &data, "instance", "list"])
        .env_remove("NIMBUS_TOKEN")
        .output()
        .expect("setpriv");
    assert!(!out.status.success());
    // Someone outside the group cannot connect at all.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65533", "--clear-groups", "--"])
        .args([common::NIMBUS, "--data-dir", &data, "whoami"])
        .env("NIMBUS_TOKEN", &token)
        .output()
        .expect("setpriv");
    assert!(!out.status.success(), "outside the group: no connection");
}
