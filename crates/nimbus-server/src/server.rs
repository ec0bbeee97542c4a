//! Starting the server: store, bootstrap credentials, listeners and
//! controllers.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use nimbus_api::{Metadata, Token, User, UserSpec, UserStatus};
use nimbus_image::{ImageStore, Limits};
use nimbus_store::{
    Election, EtcdElection, EtcdStore, LocalElection, SqliteOptions, SqliteStore, Store,
};

use crate::api::users::issue_token;
use crate::auth::token;
use crate::config::ServerConfig;
use crate::repo::Repo;
use crate::state::AppState;

pub const ADMIN_USER: &str = "admin";

/// Holds the data directory's lock for the life of the process: two
/// servers on one data directory would corrupt each other's state.
pub struct DataDirLock(#[allow(dead_code)] std::fs::File);

/// Lock `<data>/nimbus.lock`, waiting up to 10 s for a previous server
/// that is still shutting down.
pub async fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<DataDirLock> {
    use std::os::fd::AsRawFd;
    let path = data_dir.join("nimbus.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(DataDirLock(file));
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "another nimbus is running on the data directory {}; stop it first, or pass another --data-dir",
                data_dir.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Open the store and image store and make sure the admin credentials exist.
pub async fn open_state(config: ServerConfig) -> anyhow::Result<Arc<AppState>> {
    // Before anything is created: what the daemon makes is root's alone.
    crate::datadir::restrict_umask();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    std::fs::set_permissions(
        &config.data_dir,
        std::fs::Permissions::from_mode(crate::datadir::SEARCH_ONLY_MODE),
    )?;
    let lock = lock_data_dir(&config.data_dir).await?;
    // Older versions left the store, specs and logs readable by everyone.
    let data_dir = config.data_dir.clone();
    let tightened = tokio::task::spawn_blocking(move || crate::datadir::secure_existing(&data_dir))
        .await
        .context("checking the data directory's permissions")??;
    if tightened > 0 {
        tracing::warn!(
            entries = tightened,
            data_dir = %config.data_dir.display(),
            "removed access of other users to files in the data directory (left open by an older version)"
        );
    }
    let secrets = crate::secrets::SecretBox::open_or_create(&config.secrets_key_path())?;
    let (store, election) = open_store(&config).await?;
    let metrics = Arc::new(crate::metrics::Metrics::new(config.metrics));
    let store: Arc<dyn Store> = if config.metrics {
        Arc::new(crate::metrics::store::MeteredStore::new(
            store,
            metrics.clone(),
        ))
    } else {
        store
    };
    let election = election.unwrap_or_else(|| {
        Arc::new(LocalElection::new(&config.server_name, store.clone())) as Arc<dyn Election>
    });
    let limits = Limits {
        max_archive_bytes: config.max_image_bytes,
        max_unpacked_bytes: config.max_unpacked_bytes,
        ..Limits::default()
    };
    let images = Arc::new(
        ImageStore::open(&config.images_dir(), limits).with_context(|| {
            format!("opening the image store {}", config.images_dir().display())
        })?,
    );
    let repo = Repo::new(store);
    let signatures = Arc::new(crate::signatures::registry::RegistrySignatures {
        repo: repo.clone(),
        images: images.clone(),
    });
    let state = Arc::new(AppState {
        config,
        repo,
        tokens: Default::default(),
        images,
        signatures,
        secrets,
        host_io: RwLock::new(None),
        host_port_claims: Default::default(),
        schedule_now: tokio::sync::Notify::new(),
        image_lock: tokio::sync::RwLock::new(()),
        image_imports: Default::default(),
        list_cache: Default::default(),
        peer_snapshots: Default::default(),
        streams: Default::default(),
        audit: Default::default(),
        metrics,
        browser_sessions: Default::default(),
        election,
        leader_fence: RwLock::new(None),
        _data_dir_lock: lock,
    });
    // Before anything is written: a refused server leaves no trace.
    crate::cluster::check_server_versions(&state).await?;
    crate::cluster::check_secrets_key(&state).await?;
    bootstrap_admin(&state).await?;
    Ok(state)
}

/// The store, and for etcd the election among the servers sharing it (a
/// SQLite store has one server, always the leader: made by the caller).
async fn open_store(
    config: &ServerConfig,
) -> anyhow::Result<(Arc<dyn Store>, Option<Arc<dyn Election>>)> {
    match &config.store {
        crate::config::StoreBackend::Sqlite => {
            let store = SqliteStore::open(&config.store_path(), SqliteOptions::default())
                .with_context(|| format!("opening the store {}", config.store_path().display()))?;
            Ok((Arc::new(store), None))
        }
        crate::config::StoreBackend::Etcd(etcd) => {
            let store = EtcdStore::connect(etcd)
                .await
                .with_context(|| format!("opening the etcd store (keys under {})", etcd.prefix))?;
            let election = EtcdElection::new(&store, &config.server_name, config.leader_lease);
            Ok((Arc::new(store), Some(Arc::new(election))))
        }
    }
}

async fn token_file_valid(state: &AppState, path: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Some((id, secret)) = token::parse(text.trim()) else {
        return false;
    };
    match state.repo.try_get::<Token>(None, id).await {
        Ok(Some(t)) => token::decode_hash(&t.status.secret_sha256)
            .is_some_and(|h| token::hashes_equal(&h, &token::hash_secret(secret))),
        _ => false,
    }
}

/// Create the `admin` user and write its token to `admin.token` (mode
/// 0600) when there is no valid one.
async fn bootstrap_admin(state: &AppState) -> anyhow::Result<()> {
    if state
        .repo
        .try_get::<User>(None, ADMIN_USER)
        .await?
        .is_none()
    {
        let created = state
            .repo
            .create(User {
                metadata: Metadata::new(ADMIN_USER, None),
                spec: UserSpec {
                    system_admin: true,
                    metrics_reader: false,
                    description: "created at first start".into(),
                },
                status: UserStatus::default(),
            })
            .await;
        // Another server starting on the same store may have made it first.
        if let Err(e) = created {
            if e.0.code != nimbus_api::ErrorCode::AlreadyExists {
                anyhow::bail!("creating the admin user: {e}");
            }
        }
    }
    let path = state.config.admin_token_path();
    if !token_file_valid(state, &path).await {
        let created = issue_token(
            &state.repo,
            ADMIN_USER,
            "admin token written at start",
            None,
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating the admin token: {e}"))?;
        crate::tls::write_private(&path, format!("{}\n", created.secret).as_bytes())?;
        tracing::info!(path = %path.display(), "wrote the admin token");
    }
    Ok(())
}

/// A token for the agent of `host`, kept in `path` (mode 0600).
pub async fn ensure_host_token(
    state: &AppState,
    host: &str,
    path: &std::path::Path,
) -> anyhow::Result<String> {
    if token_file_valid(state, path).await {
        return Ok(std::fs::read_to_string(path)?.trim().to_string());
    }
    let created = issue_token(
        &state.repo,
        &format!("host:{host}"),
        "host agent",
        Some(host),
        None,
    )
    .await
    .map_err(|e| anyhow::anyhow!("creating the host token: {e}"))?;
    crate::tls::write_private(path, format!("{}\n", created.secret).as_bytes())?;
    Ok(created.secret)
}

/// The default group whose members may use the API socket (`scripts/up`
/// makes it).
pub const SOCKET_GROUP: &str = "nimbus";

/// Give the API socket to `group_name` (0660) if that group exists, else
/// to root alone (0600). Callers still need a token; the group only decides
/// which local users may connect at all. Returns the group's name.
fn restrict_socket(sock: &std::path::Path, group_name: &str) -> anyhow::Result<Option<String>> {
    let group = nix::unistd::Group::from_name(group_name)
        .with_context(|| format!("looking up the group {group_name:?}"))?;
    let mode = match &group {
        Some(g) => {
            nix::unistd::chown(sock, None, Some(g.gid)).with_context(|| {
                format!(
                    "giving the API socket {} to group {SOCKET_GROUP:?}",
                    sock.display()
                )
            })?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("restricting the API socket {}", sock.display()))?;
    Ok(group.map(|g| g.name))
}

/// When many streams have closed, hand the freed heap back to the system:
/// glibc keeps freed memory in its per-thread arenas, so without this a
/// burst of thousands of watches leaves the server's RSS at its peak.
async fn return_memory_after_streams_close(state: Arc<AppState>) {
    const CLOSED_BEFORE_TRIM: usize = 256;
    let mut peak = 0usize;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        let open = state.streams.total();
        peak = peak.max(open);
        if peak - open >= CLOSED_BEFORE_TRIM {
            peak = open;
            let _ = tokio::task::spawn_blocking(|| {
                // SAFETY: malloc_trim only walks and releases glibc's own free
                // lists; it touches no memory we hold.
                unsafe { libc::malloc_trim(0) };
            })
            .await;
        }
    }
}

/// Serve the API on the Unix socket and (if configured) TLS, and run the
/// controllers, until `shutdown` resolves.
pub async fn serve(
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::cluster::announce(&state).await?;
    let app = crate::api::router(state.clone());
    let sock = state.config.socket_path.clone();
    if let Some(parent) = sock.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(&sock);
    let unix = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("binding the API socket {}", sock.display()))?;
    let group = restrict_socket(&sock, &state.config.socket_group)?;
    let open_files = crate::connlimit::open_file_limit();
    let caps = crate::connlimit::caps_for(open_files, state.config.max_connections);
    tracing::info!(socket = %sock.display(), group = group.as_deref().unwrap_or("root only"), open_files, tls_connections = caps.tls, local_connections = caps.local, "API listening");
    let unix = crate::connlimit::LimitedUnixListener {
        inner: unix,
        permits: Arc::new(tokio::sync::Semaphore::new(caps.local)),
    };

    let handle = axum_server::Handle::new();
    let mut tls_serving = None;
    if let Some(addr) = state.config.listen {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (cert, key) = crate::tls::ensure_certificate(
            &state.config.tls_dir(),
            state.config.tls_cert.as_deref(),
            state.config.tls_key.as_deref(),
            state.config.listen.map(|a| a.ip()),
        )?;
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
            .await
            .with_context(|| format!("loading TLS certificate {}", cert.display()))?;
        let app = app.clone();
        let handle = handle.clone();
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the API port {addr}; is another nimbus running? pass --listen to choose another"))?;
        listener.set_nonblocking(true)?;
        tracing::info!(%addr, cert = %cert.display(), "API listening with TLS");
        tls_serving = Some(tokio::spawn(async move {
            // TCP_NODELAY: without it the last segment of a large response
            // waits for the client's delayed ACK (40 ms tail latencies).
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls).acceptor(
                crate::connlimit::LimitedAcceptor {
                    inner: axum_server::accept::NoDelayAcceptor::new(),
                    permits: Arc::new(tokio::sync::Semaphore::new(caps.tls)),
                },
            );
            let server = axum_server::from_tcp(listener)
                .acceptor(acceptor)
                .handle(handle);
            // The peer address names the source of unauthenticated calls
            // in the audit log.
            let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            if let Err(e) = server.serve(service).await {
                tracing::error!(error = %e, "TLS listener stopped");
            }
        }));
    }
    if let Some(addr) = state.config.metrics_listen.filter(|_| state.config.metrics) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics port {addr} (--metrics-listen)"))?;
        tracing::info!(%addr, "metrics listening (plain HTTP, no token)");
        let app = crate::api::metrics::open_router(state.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics listener stopped");
            }
        });
    }
    // The scheduler and the controllers run on the elected leader only.
    let leading = tokio::spawn(crate::cluster::leader::run(state.clone()));
    tokio::spawn(crate::auth::audit::run_flusher(state.clone()));
    tokio::spawn(return_memory_after_streams_close(state.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let resigning = tokio::spawn(stop_listening_and_resign(
        state.clone(),
        handle,
        leading,
        stop_rx.clone(),
    ));
    let mut graceful_rx = stop_rx.clone();
    let serving = axum::serve(unix, app).with_graceful_shutdown(async move {
        let _ = graceful_rx.wait_for(|s| *s).await;
    });
    let mut deadline_rx = stop_rx;
    let deadline = async move {
        let _ = deadline_rx.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = serving => r.context("serving the API")?,
        _ = deadline => tracing::info!("closing long-lived API streams"),
    }
    let _ = resigning.await;
    if let Some(tls) = tls_serving {
        // It stops by itself within the grace period; a margin, not a hang.
        let margin = std::time::Duration::from_secs(1);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE + margin, tls).await;
    }
    Ok(())
}

/// How long calls in flight at shutdown may take to finish. Watch streams
/// never end by themselves, so they are cut after it (clients re-watch
/// from their last revision on another server).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// On shutdown: stop accepting TLS connections (calls in flight have
/// [`SHUTDOWN_GRACE`] to finish), stop the leader's tasks and revoke the
/// lease at once, so another server leads now rather than after the
/// lease and this server's record leaves `GET /v1/servers`.
async fn stop_listening_and_resign(
    state: Arc<AppState>,
    tls: axum_server::Handle,
    leading: tokio::task::JoinHandle<()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let _ = stop.wait_for(|s| *s).await;
    tls.graceful_shutdown(Some(SHUTDOWN_GRACE));
    // Dropping the leader loop drops its task set, which aborts every task.
    leading.abort();
    let _ = leading.await;
    state.election.resign().await;
    tracing::info!(server = %state.config.server_name, "stopped accepting calls and gave up leadership; finishing calls in flight");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_socket_goes_to_its_group_or_to_root_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        // A group every system has stands in for `nimbus`.
        let (gid, name) = match nix::unistd::Group::from_gid(nix::unistd::getegid()) {
            Ok(Some(g)) => (g.gid.as_raw(), g.name),
            _ => return,
        };
        assert_eq!(restrict_socket(&sock, &name).unwrap(), Some(name));
        let m = std::fs::metadata(&sock).unwrap();
        assert_eq!((m.mode() & 0o777, m.gid()), (0o660, gid));
        let missing = "nimbus-no-such-group-for-tests";
        assert_eq!(restrict_socket(&sock, missing).unwrap(), None);
        assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
    }
}
