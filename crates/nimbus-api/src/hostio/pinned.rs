//! TLS to a host's I/O endpoint, trusting exactly the certificate whose
//! SHA-256 the host reported in its status (which only its own credential
//! can write): a self-signed certificate needs no CA, and another machine
//! at the same address cannot pass for the host.

use std::sync::Arc;

use rustls::pki_types::ServerName;

/// Open TLS to `addr` (`IP:PORT`), accepting only the certificate whose
/// hex SHA-256 (of its DER bytes) is `sha256`.
pub async fn connect(
    addr: &str,
    sha256: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let other = |e: String| std::io::Error::other(e);
    let pin = sha256.to_ascii_lowercase();
    let config = crate::tls_trust::client_config(Box::new(move |end_entity, _| {
        let seen = crate::join::certificate_sha256(end_entity.as_ref());
        if seen == pin {
            Ok(())
        } else {
            Err(rustls::Error::General(format!(
                "the host presented certificate sha256 {seen}, not the {pin} it reported"
            )))
        }
    }))
    .map_err(|e| other(e.to_string()))?;
    // The name is not checked (the pin is); it only fills the handshake.
    let name = ServerName::try_from("nimbus-host-io")
        .map_err(|e| other(e.to_string()))?
        .to_owned();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}
