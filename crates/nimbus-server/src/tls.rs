//! TLS material for the TCP endpoint: the operator's certificate, or a
//! self-signed one made at first start.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Paths of the certificate and key to serve, generating them if needed.
/// A generated certificate names loopback, the hostname and `listen_ip`
/// (the address of `--listen`, unless it is a wildcard), so agents that
/// reach the server at that address can verify it; one made earlier is kept
/// as it is, since joined agents pin it.
pub fn ensure_certificate(
    dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    listen_ip: Option<std::net::IpAddr>,
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
    names.extend(
        listen_ip
            .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
            .map(|ip| ip.to_string()),
    );
    let certified = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed TLS certificate")?;
    // Each whole or not at all: a start killed half-way makes both again.
    write_private(&key_path, certified.key_pair.serialize_pem().as_bytes())?;
    write_file(&cert_path, certified.cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

fn nix_hostname() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string())
}

/// Write a file readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    write_file(path, data, 0o600)
}

/// Write `path` whole (a temporary file, synced, renamed over it) with
/// `mode`.
fn write_file(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Hex SHA-256 of the CA certificate clients pin: the last certificate of
/// the served PEM file (the self-signed certificate itself, or the top of
/// an operator's chain).
pub fn ca_sha256(cert: &Path) -> anyhow::Result<String> {
    let pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let last = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .last()
        .with_context(|| format!("no certificate found in {}", cert.display()))?;
    Ok(nimbus_api::join::certificate_sha256(last.as_ref()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    use super::*;

    /// Whether a client trusting `cert` (as agents do) accepts it from a
    /// server it reaches as `name`.
    fn verifies_as(cert: &Path, name: &str) -> bool {
        let pem = std::fs::read(cert).expect("cert");
        let der = rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .expect("a certificate")
            .expect("PEM");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der.clone()).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
        let name = ServerName::try_from(name.to_string()).expect("server name");
        verifier
            .verify_server_cert(&der, &[], &name, &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn a_generated_certificate_names_the_listen_address_but_not_a_wildcard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) =
            ensure_certificate(dir.path(), None, None, Some("10.77.0.1".parse().unwrap()))
                .expect("certificate");
        assert!(verifies_as(&cert, "10.77.0.1"));
        assert!(verifies_as(&cert, "127.0.0.1"));
        assert!(!verifies_as(&cert, "10.77.0.2"));

        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) =
            ensure_certificate(dir.path(), None, None, Some("0.0.0.0".parse().unwrap()))
                .expect("certificate");
        assert!(!verifies_as(&cert, "0.0.0.0"));
        assert!(verifies_as(&cert, "localhost"));
    }
}
