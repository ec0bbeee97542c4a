//! Starting the server: store, bootstrap credentials, listeners and
//! controllers.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use nimbus_api::{Metadata, Token, User, UserSpec, UserStatus};
use nimbus_image::{ImageStore, Limits};
use nimbus_store::{SqliteOptions, SqliteStore, Store};

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
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o711))?;
    let lock = lock_data_dir(&config.data_dir).await?;
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&config.store_path(), SqliteOptions::default())
            .with_context(|| format!("opening the store {}", config.store_path().display()))?,
    );
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
    let state = Arc::new(AppState {
        config,
        repo: Repo::new(store),
        tokens: Default::default(),
        images,
        host_io: RwLock::new(None),
        host_port_claims: Default::default(),
        schedule_now: tokio::sync::Notify::new(),
        image_lock: tokio::sync::RwLock::new(()),
        list_cache: Default::default(),
        _data_dir_lock: lock,
    });
    bootstrap_admin(&state).await?;
    Ok(state)
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
        state
            .repo
            .create(User {
                metadata: Metadata::new(ADMIN_USER, None),
                spec: UserSpec {
                    system_admin: true,
                    description: "created at first start".into(),
                },
                status: UserStatus::default(),
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating the admin user: {e}"))?;
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

/// Serve the API on the Unix socket and (if configured) TLS, and run the
/// controllers, until `shutdown` resolves.
pub async fn serve(
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = crate::api::router(state.clone());
    let sock = state.config.socket_path.clone();
    if let Some(parent) = sock.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(&sock);
    let unix = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("binding the API socket {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660))?;
    tracing::info!(socket = %sock.display(), "API listening");

    let handle = axum_server::Handle::new();
    if let Some(addr) = state.config.listen {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (cert, key) = crate::tls::ensure_certificate(
            &state.config.tls_dir(),
            state.config.tls_cert.as_deref(),
            state.config.tls_key.as_deref(),
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
        tokio::spawn(async move {
            // TCP_NODELAY: without it the last segment of a large response
            // waits for the client's delayed ACK (40 ms tail latencies).
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
                .acceptor(axum_server::accept::NoDelayAcceptor::new());
            let server = axum_server::from_tcp(listener)
                .acceptor(acceptor)
                .handle(handle);
            if let Err(e) = server.serve(app.into_make_service()).await {
                tracing::error!(error = %e, "TLS listener stopped");
            }
        });
    }
    tokio::spawn(crate::scheduler::run(state.clone()));
    tokio::spawn(crate::controllers::hosts::run(state.clone()));
    // Watch streams never end by themselves, so graceful shutdown gets a
    // deadline: in-flight calls have two seconds to finish.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut graceful_rx = stop_rx.clone();
    let serving = axum::serve(unix, app).with_graceful_shutdown(async move {
        let _ = graceful_rx.wait_for(|s| *s).await;
    });
    let deadline = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    };
    tokio::select! {
        r = serving => r.context("serving the API")?,
        _ = deadline => tracing::info!("closing long-lived API streams"),
    }
    handle.shutdown();
    Ok(())
}
