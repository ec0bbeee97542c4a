//! TLS material for the TCP endpoint: the operator's certificate, or a
//! self-signed one made at first start.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Paths of the certificate and key to serve, generating them if needed.
pub fn ensure_certificate(
    dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    if let (Some(c), Some(k)) = (cert, key) {
        return Ok((c.to_path_buf(), k.to_path_buf()));
    }
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = nix_hostname() {
        names.push(h);
    }
    let certified = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed TLS certificate")?;
    write_private(&key_path, certified.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, certified.cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok((cert_path, key_path))
}

fn nix_hostname() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string())
}

/// Write a file readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The TLS settings of the API port. The server picks the cipher suite:
/// AES-128-GCM before AES-256-GCM (both AEADs are safe; 128-bit keys take
/// 10 AES rounds instead of 14, which matters when a list response is
/// half a megabyte), then ChaCha20-Poly1305; HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .with_context(|| format!("reading the TLS certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the TLS key {}", key.display()))?;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        let name = format!("{:?}", s.suite());
        (
            !name.starts_with("TLS13"),
            !name.contains("AES_128_GCM"),
            !name.contains("AES_256_GCM"),
        )
    });
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| format!("the TLS key does not fit {}", cert.display()))?;
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_server_prefers_aes_128_gcm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = super::ensure_certificate(dir.path(), None, None).expect("certificate");
        let config = super::server_config(&cert, &key).expect("config");
        assert!(config.ignore_client_order);
        let first = format!("{:?}", config.crypto_provider().cipher_suites[0].suite());
        assert_eq!(first, "TLS13_AES_128_GCM_SHA256");
    }
}
