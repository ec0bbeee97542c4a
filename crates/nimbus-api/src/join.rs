//! Joining a host to the cloud: the one-time join token, the join call,
//! and how a joining agent learns the server's CA without trusting it yet.
//!
//! A join token reads `nmbjoin_<id>_<secret>_<ca-sha256>`: the id names
//! the stored record, the secret is 32 random bytes whose SHA-256 alone is
//! stored, and the last part is the SHA-256 of the server's CA certificate
//! (DER), which the agent checks the certificate it is shown against
//! before it sends anything (as `kubeadm join --discovery-token-ca-cert-hash`).

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::meta::Metadata;
use crate::resources::Object;

/// Default and longest life of a join token, in seconds.
pub const JOIN_TOKEN_DEFAULT_TTL_SECS: u64 = 3600;
pub const JOIN_TOKEN_MAX_TTL_SECS: u64 = 24 * 3600;

const PREFIX: &str = "nmbjoin_";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JoinTokenSpec {
    /// After this the token is refused.
    pub expires_at: DateTime<Utc>,
    /// The only host name an agent may join with, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Hex SHA-256 of the CA certificate the token carries.
    pub ca_sha256: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JoinTokenStatus {
    /// Hex SHA-256 of the secret; the API blanks it in every response.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_sha256: String,
}

/// A one-time token a new host's agent joins with. Its name is its id;
/// it is deleted when used.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JoinToken {
    pub metadata: Metadata,
    pub spec: JoinTokenSpec,
    #[serde(default)]
    pub status: JoinTokenStatus,
}

impl Object for JoinToken {
    const COLLECTION: &'static str = "jointokens";
    const KIND: &'static str = "join token";
    const PROJECT_SCOPED: bool = false;
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }
    fn redact(&mut self) {
        self.status.secret_sha256.clear();
    }
}

/// `POST /v1/hosts/join-tokens`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateJoinToken {
    /// Seconds the token stays usable: 1 to 86400, default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Bind the token to this host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Returned once by join token creation: `token` cannot be shown again.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenCreated {
    pub join_token: JoinToken,
    /// `nmbjoin_<id>_<secret>_<ca-sha256>`, for `nimbus agent --join`.
    pub token: String,
}

/// `POST /v1/hosts/join`, sent without a bearer token.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JoinRequest {
    /// The whole join token.
    pub token: String,
    /// The name the host joins as.
    pub host: String,
}

/// The joined host's credential: a host token, shown once.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JoinResponse {
    pub host: String,
    /// Bearer token of the host's agent: reads and reports only what
    /// concerns its host.
    pub credential: String,
}

/// The parts of a join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinTokenParts {
    pub id: String,
    pub secret: String,
    pub ca_sha256: String,
}

impl JoinTokenParts {
    pub fn format(&self) -> String {
        format!("{PREFIX}{}_{}_{}", self.id, self.secret, self.ca_sha256)
    }

    /// Split `nmbjoin_<id>_<secret>_<ca-sha256>`; `None` if it is not one.
    pub fn parse(text: &str) -> Option<JoinTokenParts> {
        let mut parts = text.trim().strip_prefix(PREFIX)?.split('_');
        let hex = |s: Option<&str>, n: usize| {
            s.filter(|s| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_ascii_lowercase)
        };
        let parsed = JoinTokenParts {
            id: hex(parts.next(), 16)?,
            secret: hex(parts.next(), 64)?,
            ca_sha256: hex(parts.next(), 64)?,
        };
        parts.next().is_none().then_some(parsed)
    }
}

/// Hex SHA-256 of a certificate's DER bytes: what a join token pins.
pub fn certificate_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A certificate's DER bytes as PEM, as [`crate::client::Endpoint`] takes it.
pub fn certificate_pem(der: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem.into_bytes()
}

/// Why the server's certificates could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {detail}")]
    Tls { addr: String, detail: String },
}

/// The certificate chain `addr` presents, read without trusting it: the
/// caller decides what to trust by comparing hashes. The server must still
/// prove it holds the leaf's key (its handshake signature is checked).
pub async fn fetch_server_certificates(
    addr: &str,
    server_name: &str,
) -> Result<Vec<Vec<u8>>, FetchError> {
    let tls_err = |detail: String| FetchError::Tls {
        addr: addr.to_string(),
        detail,
    };
    // Any chain is accepted and kept; the caller compares hashes.
    let recorded: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let keep = recorded.clone();
    let config = crate::tls_trust::client_config(Box::new(move |end_entity, intermediates| {
        if let Ok(mut chain) = keep.lock() {
            *chain = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.as_ref().to_vec())
                .collect();
        }
        Ok(())
    }))
    .map_err(|e| tls_err(e.to_string()))?;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| tls_err(format!("server name {server_name:?}: {e}")))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| FetchError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| tls_err(e.to_string()))
    };
    let timeout = std::time::Duration::from_secs(10);
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| tls_err(format!("no answer within {}s", timeout.as_secs())))??;
    let chain = recorded.lock().map(|c| c.clone()).unwrap_or_default();
    if chain.is_empty() {
        return Err(tls_err("the server presented no certificate".into()));
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_parse_back_and_reject_anything_else() {
        let parts = JoinTokenParts {
            id: "0123456789abcdef".into(),
            secret: "a".repeat(64),
            ca_sha256: "b".repeat(64),
        };
        let text = parts.format();
        assert_eq!(JoinTokenParts::parse(&text), Some(parts.clone()));
        assert_eq!(
            JoinTokenParts::parse(&format!(
                " {} \n",
                text.to_uppercase().replace("NMBJOIN_", "nmbjoin_")
            )),
            Some(parts)
        );
        for bad in [
            "",
            "nmb_0123456789abcdef_aaaa",
            &text[..text.len() - 1],
            &format!("{text}_extra"),
            &text.replace("nmbjoin_", "nmbjoin_x"),
        ] {
            assert_eq!(JoinTokenParts::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_certificate_becomes_pem_that_rustls_reads_back() {
        let der: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        let pem = certificate_pem(&der);
        let read: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].as_ref(), der.as_slice());
        assert_eq!(certificate_sha256(&der).len(), 64);
    }
}
