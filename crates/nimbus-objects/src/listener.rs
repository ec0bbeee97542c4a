//! The S3 endpoint's TLS port: the object layer wired into s3s, served
//! with the server's certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use nimbus_store::Store;
use s3s::service::{S3Service, S3ServiceBuilder};

use crate::auth::{NimbusAccess, NimbusAuth, Sealer};
use crate::credential_cache::CredentialCache;
use crate::credentials::Admin;
use crate::data::DataStore;
use crate::error::ObjectsError;
use crate::metering::RetiredObjects;
use crate::service::NimbusS3;

/// What the embedding server hands the endpoint.
pub struct EndpointConfig {
    pub listen: SocketAddr,
    /// `<data>/objects`.
    pub data_dir: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub store: Arc<dyn Store>,
    pub sealer: Arc<dyn Sealer>,
    pub max_object_bytes: u64,
    /// Told of every object version overwritten or deleted (metering).
    pub retired: Option<Arc<dyn RetiredObjects>>,
}

/// The s3s service over the object layer (also used by tests without TLS).
pub async fn build_service(
    store: Arc<dyn Store>,
    sealer: Arc<dyn Sealer>,
    data_dir: &Path,
    max_object_bytes: u64,
    retired: Option<Arc<dyn RetiredObjects>>,
) -> Result<S3Service, ObjectsError> {
    let data = Arc::new(DataStore::open(data_dir)?);
    let admin = Admin {
        store: store.clone(),
        sealer: sealer.clone(),
    };
    let credentials = Arc::new(CredentialCache::new(store.clone(), sealer));
    let s3 = NimbusS3::new(store.clone(), data, admin, credentials.clone())
        .with_max_object_bytes(max_object_bytes)
        .with_retired(retired);
    let orphans = s3.collect_orphans().await?;
    if orphans > 0 {
        tracing::info!(files = orphans, dir = %data_dir.display(), "removed object data no object names (uploads interrupted before their commit)");
    }
    let mut builder = S3ServiceBuilder::new(s3);
    builder.set_auth(NimbusAuth {
        credentials: credentials.clone(),
    });
    builder.set_access(NimbusAccess { store, credentials });
    Ok(builder.build())
}

pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ObjectsError> {
    let read =
        |path: &Path| std::fs::read(path).map_err(ObjectsError::io("reading the TLS file", path));
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(ObjectsError::io("parsing the certificate", cert))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(ObjectsError::io("parsing the private key", key))?
        .ok_or_else(|| ObjectsError::Tls(format!("{} holds no private key", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ObjectsError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ObjectsError::Tls(format!("{}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Bind the port and serve it in the background. Returns once bound, so
/// a taken port fails the daemon's start.
pub async fn start(config: EndpointConfig) -> Result<SocketAddr, ObjectsError> {
    let tls = tls_config(&config.tls_cert, &config.tls_key)?;
    let service = build_service(
        config.store,
        config.sealer,
        &config.data_dir,
        config.max_object_bytes,
        config.retired,
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ObjectsError::Io {
            what: "binding the S3 port (pass --s3-listen to choose another, or --no-s3)",
            path: PathBuf::from(config.listen.to_string()),
            source,
        })?;
    let addr = listener.local_addr().map_err(ObjectsError::io(
        "reading the S3 port's address",
        config.listen.to_string(),
    ))?;
    tracing::info!(%addr, "S3 endpoint listening with TLS");
    tokio::spawn(accept_loop(listener, tls, service));
    Ok(addr)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: S3Service,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting an S3 connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "S3 TLS handshake failed");
                    return;
                }
            };
            let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "S3 connection ended with an error");
            }
        });
    }
}
