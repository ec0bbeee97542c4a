//! A host with its own image store gets an image's blobs from a real server
//! (in process, on a temporary socket): the server streams them by digest,
//! the agent's fetcher verifies, keeps and unpacks them, and collects them
//! once no instance of the host uses them. Nobody else gets them.
//!
//! The first test needs no root: nothing there mounts or starts a
//! workload. The second runs a whole agent in process, with a data dir and
//! image store of its own, beside the server, and starts a container from
//! the layers it fetched (root).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nimbus_agent::blobs::{BlobSource, RemoteBlobs};
use nimbus_api::client::{Client, Endpoint};
use nimbus_api::{ErrorCode, Image, Instance};
use nimbus_image::{ImageStore, ImportedImage, Limits};
use nimbus_server::config::ServerConfig;
use nimbus_server::state::AppState;
use serde_json::json;
use sha2::{Digest, Sha256};

/// A busybox root filesystem (Debian's busybox-static) as a tar.
fn busybox_tar() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox is missing: install busybox-static (scripts/deps does)");
    let mut tar = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    for dir in ["bin", "etc", "tmp"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, dir, std::io::empty()).expect("dir");
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    tar.append_data(&mut h, "bin/busybox", &busybox[..])
        .expect("busybox");
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
    let mut h = header(tar::EntryType::Regular, 0o644, passwd.len() as u64);
    tar.append_data(&mut h, "etc/passwd", &passwd[..])
        .expect("passwd");
    for applet in ["sh", "ls", "cat"] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("link");
    }
    tar.into_inner().expect("tar")
}

struct Server {
    dir: tempfile::TempDir,
    state: Arc<AppState>,
    sock: PathBuf,
    admin: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ServerConfig::with_data_dir(dir.path().join("server"));
        config.socket_path = dir.path().join("api.sock");
        config.listen = None;
        let sock = config.socket_path.clone();
        let admin_path = config.admin_token_path();
        let state = nimbus_server::server::open_state(config)
            .await
            .expect("open the server state");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(nimbus_server::server::serve(state.clone(), async move {
            let _ = stopped.await;
        }));
        let token = std::fs::read_to_string(admin_path).expect("admin token");
        let admin = Client::new(Endpoint::Unix(sock.clone()), Some(token.trim().to_string()))
            .expect("client");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while admin.get::<serde_json::Value>("/v1/health").await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Server {
            dir,
            state,
            sock,
            admin,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn project(&self, name: &str) {
        let _: serde_json::Value = self
            .admin
            .post("/v1/projects", &json!({"name": name, "spec": {}}))
            .await
            .expect("project");
    }

    fn client(&self, token: &str) -> Client {
        Client::new(Endpoint::Unix(self.sock.clone()), Some(token.to_string())).expect("client")
    }

    async fn host_token(&self, host: &str) -> String {
        nimbus_server::server::ensure_host_token(
            &self.state,
            host,
            &self.dir.path().join(format!("{host}.token")),
        )
        .await
        .expect("host token")
    }

    /// A fetcher with an empty store of its own, speaking with `token`.
    fn fetcher(&self, name: &str, token: &str) -> RemoteBlobs {
        let store = ImageStore::open(&self.dir.path().join(name), Limits::default())
            .expect("agent image store");
        RemoteBlobs::new(Arc::new(store), self.client(token), Duration::ZERO)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// Every entry under `root`: its kind, mode and content (file bytes'
/// digest, link target), by relative path.
fn tree(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.file_type().is_symlink() {
                format!(
                    "link -> {}",
                    std::fs::read_link(&path).expect("link").display()
                )
            } else if meta.is_dir() {
                pending.push(path.clone());
                format!("dir {mode:o}")
            } else {
                let bytes = std::fs::read(&path).expect("read");
                format!("file {mode:o} {}", hex::encode(Sha256::digest(bytes)))
            };
            out.insert(rel, what);
        }
    }
    out
}

/// The names under `blobs/sha256`, `layers` and `tmp` of a store.
fn store_entries(store: &ImageStore) -> Vec<String> {
    let mut names: Vec<String> = ["blobs/sha256", "layers", "tmp"]
        .iter()
        .flat_map(|sub| {
            std::fs::read_dir(store.root().join(sub))
                .expect("list")
                .flatten()
                .map(move |e| format!("{sub}/{}", e.file_name().to_string_lossy()))
        })
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_fetches_verifies_unpacks_and_collects_its_instances_image_blobs() {
    let server = Server::start().await;
    server.project("ops").await;
    server.project("dev").await;
    let tar = bytes::Bytes::from(busybox_tar());
    let image: Image = server
        .admin
        .upload(
            "/v1/projects/ops/images?name=busybox",
            futures::stream::iter([Ok::<_, std::io::Error>(tar)]),
        )
        .await
        .expect("import busybox");
    let _: Instance = server
        .admin
        .post(
            "/v1/projects/ops/instances",
            &json!({"name": "site", "spec": {"image": "busybox", "args": ["/bin/sh"]}}),
        )
        .await
        .expect("instance");
    // What the scheduler does once host h1 has registered.
    server
        .state
        .repo
        .modify::<Instance, _>(Some("ops"), "site", |i| {
            i.status.host = Some("h1".into());
            Ok(())
        })
        .await
        .expect("bind the instance to h1");

    // Host h1 runs an instance of busybox: it gets the layers, identical
    // to the server's own.
    let h1 = server.host_token("h1").await;
    let fetcher = server.fetcher("h1-images", &h1);
    let dirs = fetcher.layer_dirs(&image).await.expect("fetch busybox");
    assert_eq!(fetcher.fetched_count(), 1);
    let imported = ImportedImage::from_api(&image.status);
    let server_dirs = server
        .state
        .images
        .layer_dirs(&imported)
        .expect("server layers");
    assert_eq!(dirs.len(), server_dirs.len());
    for (mine, theirs) in dirs.iter().zip(&server_dirs) {
        let (mine, theirs) = (tree(mine), tree(theirs));
        assert!(mine.contains_key("bin/busybox"), "{mine:?}");
        assert_eq!(mine, theirs, "the fetched layer differs from the server's");
    }
    // A second start asks nothing more.
    fetcher.layer_dirs(&image).await.expect("second start");
    assert_eq!(fetcher.fetched_count(), 1);

    // A host without an instance of it, and a member of another project,
    // get "not found", and nothing lands in their stores.
    let h2 = server.host_token("h2").await;
    let dev_member = {
        let _: serde_json::Value = server
            .admin
            .post("/v1/users", &json!({"name": "dana", "spec": {}}))
            .await
            .expect("user");
        let _: serde_json::Value = server
            .admin
            .post(
                "/v1/projects/dev/rolebindings",
                &json!({"user": "dana", "role": "member"}),
            )
            .await
            .expect("binding");
        let token: serde_json::Value = server
            .admin
            .post("/v1/tokens", &json!({"user": "dana"}))
            .await
            .expect("token");
        token["secret"].as_str().expect("secret").to_string()
    };
    for (who, token) in [("host h2", &h2), ("dev's member", &dev_member)] {
        let outsider = server.fetcher(&format!("{}-images", who.replace(' ', "-")), token);
        let err = outsider
            .layer_dirs(&image)
            .await
            .expect_err("an outsider fetched the blob");
        match &err {
            nimbus_agent::agent::error::AgentError::BlobFetch { source, .. } => {
                assert_eq!(source.code(), Some(ErrorCode::NotFound), "{who}: {err}")
            }
            other => panic!("{who}: {other}"),
        }
        assert_eq!(
            store_entries(&outsider.store()),
            Vec::<String>::new(),
            "{who}"
        );
    }

    // Collection: kept while the instance is bound here, gone after it.
    let report = fetcher
        .collect("h1")
        .await
        .expect("collect")
        .expect("a report");
    assert!(report.removed_blobs.is_empty(), "{report:?}");
    assert!(!store_entries(&fetcher.store()).is_empty());
    server
        .state
        .repo
        .delete::<Instance>(Some("ops"), "site", None)
        .await
        .expect("the instance is finalized");
    let report = fetcher
        .collect("h1")
        .await
        .expect("collect")
        .expect("a report");
    assert_eq!(report.removed_blobs, image.status.layers, "{report:?}");
    assert_eq!(report.removed_layers, image.status.layers, "{report:?}");
    assert_eq!(store_entries(&fetcher.store()), Vec::<String>::new());
    // The server's store is not the agent's to collect.
    assert!(server_dirs.iter().all(|d| d.is_dir()));
    server.stop().await;
}

/// A kernel image's kernel and initrd reach a host running an instance of
/// it byte for byte, as the VM driver asks for them (`ensure_blobs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_fetches_the_kernel_and_initrd_of_its_vm() {
    let guest = common::guest("tiny");
    let kernel = std::fs::read(guest.join("vmlinux")).expect("tiny kernel");
    let initrd = std::fs::read(guest.join("tiny-initrd.img")).expect("tiny initrd");
    let server = Server::start().await;
    server.project("ops").await;
    let body = bytes::Bytes::from([kernel.clone(), initrd].concat());
    let image: Image = server
        .admin
        .upload(
            &format!(
                "/v1/projects/ops/images?name=tiny&kind=kernel&kernel_bytes={}",
                kernel.len()
            ),
            futures::stream::iter([Ok::<_, std::io::Error>(body)]),
        )
        .await
        .expect("import the tiny kernel");
    let mut vm = Instance {
        metadata: nimbus_api::Metadata::new("vm1", Some("ops")),
        spec: nimbus_api::InstanceSpec {
            image: "tiny".into(),
            ..Default::default()
        },
        status: Default::default(),
    };
    vm.status.host = Some("h1".into());
    server
        .state
        .repo
        .create(vm)
        .await
        .expect("a VM bound to h1");

    let fetcher = server.fetcher("h1-images", &server.host_token("h1").await);
    fetcher
        .ensure(&image)
        .await
        .expect("fetch kernel and initrd");
    let k = image.status.kernel.as_ref().expect("a kernel image");
    let wanted = std::iter::once(&k.digest).chain(k.initrd.as_ref());
    assert_eq!(fetcher.fetched_count(), 2);
    for digest in wanted {
        let mine = fetcher.store().blob_path(digest).expect("fetched blob");
        let theirs = server.state.images.blob_path(digest).expect("server blob");
        assert_eq!(
            std::fs::read(&mine).expect("read"),
            std::fs::read(&theirs).expect("read"),
            "{digest}"
        );
    }
    assert_eq!(
        std::fs::read(fetcher.store().blob_path(&k.digest).expect("kernel")).expect("read"),
        kernel
    );
    server.stop().await;
}

/// The status phase of instance `name` of `ops`, `None` once it is gone.
async fn phase(admin: &Client, name: &str) -> Option<String> {
    match admin
        .get::<Instance>(&format!("/v1/projects/ops/instances/{name}"))
        .await
    {
        Ok(i) => Some(i.status.phase.as_str().to_string()),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => None,
        Err(e) => panic!("instance {name}: {e}"),
    }
}

async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills and unmounts what a failed test left under its data dir.
struct CleanupOnPanic(PathBuf);

impl Drop for CleanupOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            common::force_cleanup(&self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_starts_from_layers_its_host_fetched_and_they_go_with_it() {
    if !common::is_root("containers") {
        return;
    }
    let server = Server::start().await;
    server.project("ops").await;
    let image: Image = server
        .admin
        .upload(
            "/v1/projects/ops/images?name=busybox",
            futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(busybox_tar()))]),
        )
        .await
        .expect("import busybox");

    // A host with a data dir and image store of its own, as one that
    // joined a remote server has: it shares nothing with the server.
    let host_dir = tempfile::Builder::new()
        .prefix("nimbus-e2e-")
        .tempdir_in("/var/tmp")
        .expect("host data dir");
    let data_dir = host_dir.path().to_path_buf();
    // Searchable, as a real data dir is: the containers' user namespaces
    // pass through it to their rootfs.
    std::fs::set_permissions(
        &data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .expect("chmod the data dir");
    let _cleanup = CleanupOnPanic(data_dir.clone());
    let mut config = nimbus_agent::AgentConfig::new(
        "h1".into(),
        data_dir.clone(),
        nimbus_agent::shim::shim_executable(Path::new(env!("CARGO_BIN_EXE_nimbus"))),
    );
    config.stats_ms = 0;
    config.blob_min_age_ms = 0;
    // Logs are read from the host's files, as under `nimbus up`.
    *server.state.host_io.write().expect("host I/O lock") =
        Some(nimbus_server::hostio::LocalHost {
            host: "h1".into(),
            io: Arc::new(nimbus_agent::agent::hostio::LocalHostIo {
                instances_dir: data_dir.join("instances"),
            }),
        });
    let token = server.host_token("h1").await;
    let agent = nimbus_agent::Agent::new(config, server.client(&token), None).expect("agent");
    let agent_task = tokio::spawn(agent.clone().run());

    let created: Instance = server
        .admin
        .post(
            "/v1/projects/ops/instances",
            &json!({"name": "hello", "spec": {"image": "busybox",
                "args": ["/bin/sh", "-c", "cat /etc/passwd; echo fetched-ok"]}}),
        )
        .await
        .expect("instance");
    let ended = wait_for("the instance to end", Duration::from_secs(120), || async {
        phase(&server.admin, "hello")
            .await
            .filter(|p| p == "exited" || p == "failed")
    })
    .await;
    let instance: Instance = server
        .admin
        .get("/v1/projects/ops/instances/hello")
        .await
        .expect("instance");
    assert_eq!(ended, "exited", "{:?}", instance.status.reason);
    assert_eq!(instance.status.exit_code, Some(0));
    let logs = server
        .admin
        .request_bytes(
            nimbus_api::client::Method::GET,
            "/v1/projects/ops/instances/hello/logs",
            None,
        )
        .await
        .expect("logs");
    let logs = String::from_utf8_lossy(&logs);
    assert!(logs.contains("fetched-ok"), "{logs}");
    assert!(logs.contains("root:x:0:0"), "{logs}");

    // The layer came into the host's own store.
    let layer_hex = image.status.layers[0].trim_start_matches("sha256:");
    let own = data_dir.join("images");
    assert!(own.join("blobs/sha256").join(layer_hex).is_file());
    assert!(own.join("layers").join(layer_hex).is_dir());
    assert_ne!(
        own.canonicalize().expect("own store"),
        server.state.images.root()
    );

    // Removed: the agent cleans up and, on its own, collects the blobs.
    let _: serde_json::Value = server
        .admin
        .delete("/v1/projects/ops/instances/hello")
        .await
        .unwrap_or(serde_json::Value::Null);
    wait_for("the instance to go", Duration::from_secs(60), || async {
        phase(&server.admin, "hello").await.is_none().then_some(())
    })
    .await;
    let entries = |sub: &str| {
        std::fs::read_dir(own.join(sub))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    wait_for(
        "the host to collect the unused blobs",
        Duration::from_secs(30),
        || async { (entries("blobs/sha256") == 0 && entries("layers") == 0).then_some(()) },
    )
    .await;
    common::assert_no_leaks(&data_dir, std::slice::from_ref(&created.metadata.id));
    agent_task.abort();
    server.stop().await;
}
