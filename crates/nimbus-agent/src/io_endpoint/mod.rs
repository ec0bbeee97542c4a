//! The agent's I/O endpoint (`nimbus agent --io-listen`): HTTPS on which
//! the servers reach this host's instances (logs, exec, consoles, pause)
//! and ask about its listening sockets. A call is served only with a
//! one-time ticket that the servers wrote for it and that this agent
//! consumes through the API with its own host credential
//! (`nimbus_api::hostio::ticket`): user tokens and host credentials open
//! nothing here.

mod cert;
mod routes;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use nimbus_api::client::Client;
use nimbus_api::hostio::HostIo;

pub use cert::{CERT_FILE, KEY_FILE};

/// The default port of the endpoint.
pub const DEFAULT_PORT: u16 = 7444;

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("the I/O endpoint's key or certificate {path}: {detail}")]
    Identity { path: String, detail: String },
    #[error(
        "cannot listen on {addr} for the I/O endpoint: {detail}; give another --io-listen IP:PORT"
    )]
    Listen { addr: SocketAddr, detail: String },
}

/// What the agent reports in its host status once the endpoint listens.
#[derive(Clone, Debug)]
pub struct Advertised {
    /// `IP:PORT` the servers connect to.
    pub endpoint: String,
    pub certificate_sha256: String,
}

/// Listen on `listen` and serve `io` for host `host`, consuming tickets
/// through `client`; the endpoint to advertise (`listen`, or `advertise_ip`
/// in place of an unspecified address).
pub async fn start(
    listen: SocketAddr,
    advertise_ip: std::net::IpAddr,
    data_dir: &Path,
    host: String,
    client: Client,
    io: Arc<dyn HostIo>,
) -> Result<Advertised, EndpointError> {
    let identity = cert::load_or_create(data_dir)?;
    let listen_err = |e: &dyn std::fmt::Display| EndpointError::Listen {
        addr: listen,
        detail: e.to_string(),
    };
    let listener = std::net::TcpListener::bind(listen).map_err(|e| listen_err(&e))?;
    listener.set_nonblocking(true).map_err(|e| listen_err(&e))?;
    let bound = listener.local_addr().map_err(|e| listen_err(&e))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        identity.cert_pem.clone(),
        identity.key_pem.clone(),
    )
    .await
    .map_err(|e| listen_err(&e))?;
    let app = routes::router(routes::EndpointState { host, client, io });
    let server = axum_server::from_tcp_rustls(listener, tls);
    tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::error!(error = %e, "the I/O endpoint stopped");
        }
    });
    let ip = if bound.ip().is_unspecified() {
        advertise_ip
    } else {
        bound.ip()
    };
    Ok(Advertised {
        endpoint: SocketAddr::new(ip, bound.port()).to_string(),
        certificate_sha256: identity.sha256,
    })
}
