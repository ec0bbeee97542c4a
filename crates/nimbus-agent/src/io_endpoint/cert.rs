//! The endpoint's key and self-signed certificate, made once and kept in
//! the data directory (owner-only files); the servers pin the
//! certificate's SHA-256, which the agent reports in its host status.

use std::path::Path;

use crate::shim::state::write_atomically;

use super::EndpointError;

pub const CERT_FILE: &str = "io-endpoint-cert.pem";
pub const KEY_FILE: &str = "io-endpoint-key.pem";

pub struct Identity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Hex SHA-256 of the certificate's DER bytes.
    pub sha256: String,
}

/// The kept identity, or a new one written to `data_dir`.
pub fn load_or_create(data_dir: &Path) -> Result<Identity, EndpointError> {
    let cert_path = data_dir.join(CERT_FILE);
    let key_path = data_dir.join(KEY_FILE);
    let io = |path: &Path, e: &dyn std::fmt::Display| EndpointError::Identity {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    if !cert_path.exists() || !key_path.exists() {
        let made = rcgen::generate_simple_self_signed(vec!["nimbus-host-io".to_string()]).map_err(
            |e| EndpointError::Identity {
                path: cert_path.display().to_string(),
                detail: e.to_string(),
            },
        )?;
        // Owner-only (0600), each file replaced whole.
        write_atomically(&key_path, made.key_pair.serialize_pem().as_bytes())
            .map_err(|e| io(&key_path, &e))?;
        write_atomically(&cert_path, made.cert.pem().as_bytes()).map_err(|e| io(&cert_path, &e))?;
    }
    let cert_pem = std::fs::read(&cert_path).map_err(|e| io(&cert_path, &e))?;
    let key_pem = std::fs::read(&key_path).map_err(|e| io(&key_path, &e))?;
    let der = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| EndpointError::Identity {
            path: cert_path.display().to_string(),
            detail: "holds no PEM certificate; remove it and its key to make new ones".into(),
        })?;
    Ok(Identity {
        sha256: nimbus_api::join::certificate_sha256(der.as_ref()),
        cert_pem,
        key_pem,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_identity_is_made_once_owner_only_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = super::load_or_create(dir.path()).expect("made");
        let again = super::load_or_create(dir.path()).expect("kept");
        assert_eq!(
            first.sha256, again.sha256,
            "a restart must keep the pinned hash"
        );
        assert_eq!(first.sha256.len(), 64);
        for f in [super::CERT_FILE, super::KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(f))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
}
