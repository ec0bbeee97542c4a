//! Sealing of instances' secret environment values in the store.
//!
//! Values are encrypted with ChaCha20-Poly1305 (ring's AEAD, already
//! linked for TLS) under a 256-bit server key kept in `<data>/secrets.key`
//! (0600, made at first start). Each value is bound to its instance id and
//! variable name as associated data, so a sealed value moved to another key
//! or instance in the store does not open. Whoever can read the key file
//! (root) can open the values: this protects the store's bytes (backups,
//! copies, WAL) and API responses, not the host from its root.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// What a sealed value starts with in the store.
const SEALED_PREFIX: &str = "nimbus-sealed:v1:";
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{what} the secrets key {}: {source}", path.display())]
    KeyFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the secrets key {} holds {len} bytes, not {KEY_LEN}; restore it from a backup (without it sealed secret values cannot be opened)", path.display())]
    KeyLength { path: PathBuf, len: usize },
    #[error("the system random generator failed")]
    Random,
    #[error(
        "the sealed value of {context} does not open with this server's secrets key; set it again"
    )]
    Corrupt { context: String },
}

/// The server's sealing key.
pub struct SecretBox {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl SecretBox {
    /// Read the key at `path`, or make one there (0600) if there is none.
    pub fn open_or_create(path: &Path) -> Result<SecretBox, SecretError> {
        let rng = SystemRandom::new();
        let key_file = |what, source| SecretError::KeyFile {
            what,
            path: path.to_path_buf(),
            source,
        };
        let bytes = match std::fs::File::open(path) {
            Ok(mut f) => {
                let mut bytes = Vec::with_capacity(KEY_LEN);
                f.read_to_end(&mut bytes)
                    .map_err(|e| key_file("reading", e))?;
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = vec![0u8; KEY_LEN];
                rng.fill(&mut bytes).map_err(|_| SecretError::Random)?;
                // create_new: never replace a key that sealed values need.
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| key_file("creating", e))?;
                f.write_all(&bytes)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| key_file("writing", e))?;
                tracing::info!(path = %path.display(), "made the secrets key");
                bytes
            }
            Err(e) => return Err(key_file("opening", e)),
        };
        if bytes.len() != KEY_LEN {
            return Err(SecretError::KeyLength {
                path: path.to_path_buf(),
                len: bytes.len(),
            });
        }
        let key =
            UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| SecretError::KeyLength {
                path: path.to_path_buf(),
                len: bytes.len(),
            })?;
        Ok(SecretBox {
            key: LessSafeKey::new(key),
            rng,
        })
    }

    /// Seal `plaintext`, bound to `context` (e.g. instance id and name).
    pub fn seal(&self, context: &str, plaintext: &str) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SecretError::Random)?;
        let mut in_out = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| SecretError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&in_out);
        Ok(format!("{SEALED_PREFIX}{}", hex::encode(out)))
    }

    /// Open a value made by [`SecretBox::seal`] with the same `context`.
    pub fn unseal(&self, context: &str, sealed: &str) -> Result<String, SecretError> {
        let corrupt = || SecretError::Corrupt {
            context: context.to_string(),
        };
        let raw = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(corrupt)?;
        if raw.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt())?;
        let mut in_out = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| corrupt())?;
        String::from_utf8(plain.to_vec()).map_err(|_| corrupt())
    }
}

/// Whether a stored value is sealed (what the server stores for every
/// secret value).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// The associated data of an instance's secret variable.
pub fn env_context(instance_id: &str, key: &str) -> String {
    format!("instance {instance_id} secret_env {key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_roundtrip_binds_context_and_key_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let b = SecretBox::open_or_create(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let sealed = b.seal("ctx-a", "hunter2").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("hunter2"));
        assert_ne!(sealed, b.seal("ctx-a", "hunter2").unwrap(), "fresh nonce");
        assert_eq!(b.unseal("ctx-a", &sealed).unwrap(), "hunter2");
        assert!(b.unseal("ctx-b", &sealed).is_err(), "bound to its context");
        assert!(b.unseal("ctx-a", "hunter2").is_err());
        // The key survives a restart; a second one would not open old values.
        let again = SecretBox::open_or_create(&path).unwrap();
        assert_eq!(again.unseal("ctx-a", &sealed).unwrap(), "hunter2");
        let other = SecretBox::open_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.unseal("ctx-a", &sealed).is_err());
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            SecretBox::open_or_create(&path),
            Err(SecretError::KeyLength { .. })
        ));
    }
}
