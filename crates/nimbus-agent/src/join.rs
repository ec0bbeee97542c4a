//! A standalone agent joining the cloud: it learns the server's CA without
//! trusting it, checks it against the hash its join token carries, trades
//! the token for its host credential, and keeps both in its data directory
//! for later starts.

use std::path::{Path, PathBuf};

use nimbus_api::client::{Client, ClientError, Endpoint};
use nimbus_api::join::{certificate_pem, certificate_sha256, JoinTokenParts};
use nimbus_api::{JoinRequest, JoinResponse};
use serde::{Deserialize, Serialize};

/// The server CA the agent trusts, once checked (PEM).
pub const CA_FILE: &str = "server-ca.pem";
/// The host name and its credential (JSON).
pub const CREDENTIAL_FILE: &str = "agent-credential.json";

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("--server {0:?} names no server: give https://HOST:PORT[,https://HOST:PORT...]")]
    NoServer(String),
    #[error("--server {0:?} is not understood: give https://HOST:PORT")]
    BadServer(String),
    #[error("the join token is malformed: expected nmbjoin_<id>_<secret>_<ca-sha256> as `nimbus host join-token create` printed it")]
    MalformedToken,
    #[error("could not fetch the certificate of any server ({0}); check --server and that the servers listen there")]
    Unreachable(String),
    #[error("refusing to join {server}: its certificates hash to {presented}, but the join token expects the CA sha256:{expected}; the token was made for another cloud, or someone is in the way. Check --server, or make a new token there with `nimbus host join-token create`")]
    CaMismatch {
        server: String,
        expected: String,
        presented: String,
    },
    /// The server's answer is the message: not a `source`, so it is not
    /// printed twice.
    #[error("joining failed: {0}")]
    Refused(ClientError),
    #[error("this host has not joined yet: {} is missing or unreadable ({detail}); start it once with --join <token> from `nimbus host join-token create`", .path.display())]
    NotJoined { path: PathBuf, detail: String },
    #[error("keeping the credential in {}: {detail}", .path.display())]
    Save { path: PathBuf, detail: String },
}

/// One server of the cloud: `host:port`, and the name its certificate is
/// checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddr {
    pub addr: String,
    pub server_name: String,
}

/// `https://10.0.0.1:7443[,https://10.0.0.2:7443...]`.
pub fn parse_servers(list: &str) -> Result<Vec<ServerAddr>, JoinError> {
    let servers = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let addr = s
                .strip_prefix("https://")
                .map(|a| a.trim_end_matches('/'))
                .filter(|a| {
                    a.rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                })
                .ok_or_else(|| JoinError::BadServer(s.to_string()))?;
            let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
            Ok(ServerAddr {
                addr: addr.to_string(),
                server_name: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err(JoinError::NoServer(list.to_string()));
    }
    Ok(servers)
}

/// What the agent keeps: the host it joined as and its token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Credential {
    pub host: String,
    pub token: String,
}

/// The first server that answers presents a certificate whose hash the
/// token names: that certificate, as PEM.
pub async fn fetch_checked_ca(
    servers: &[ServerAddr],
    parts: &JoinTokenParts,
) -> Result<Vec<u8>, JoinError> {
    let mut errors = Vec::new();
    for server in servers {
        let chain =
            match nimbus_api::join::fetch_server_certificates(&server.addr, &server.server_name)
                .await
            {
                Ok(chain) => chain,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
        return match chain
            .iter()
            .find(|der| certificate_sha256(der) == parts.ca_sha256)
        {
            Some(der) => Ok(certificate_pem(der)),
            None => Err(JoinError::CaMismatch {
                server: server.addr.clone(),
                expected: parts.ca_sha256.clone(),
                presented: chain
                    .iter()
                    .map(|der| format!("sha256:{}", certificate_sha256(der)))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        };
    }
    Err(JoinError::Unreachable(errors.join("; ")))
}

/// A client of `servers` trusting `ca_pem`, with `token` (none to join).
pub fn client(
    servers: &[ServerAddr],
    ca_pem: &[u8],
    token: Option<String>,
) -> Result<Client, ClientError> {
    let endpoints = servers
        .iter()
        .map(|s| Endpoint::Https {
            addr: s.addr.clone(),
            server_name: s.server_name.clone(),
            ca_pem: ca_pem.to_vec(),
        })
        .collect();
    Client::with_endpoints(endpoints, token)
}

/// Join as `host` with `join_token`, keep the CA and the credential in
/// `data_dir` (0600), and return them.
pub async fn join(
    servers: &[ServerAddr],
    join_token: &str,
    host: &str,
    data_dir: &Path,
) -> Result<(Vec<u8>, Credential), JoinError> {
    let parts = JoinTokenParts::parse(join_token).ok_or(JoinError::MalformedToken)?;
    let ca_pem = fetch_checked_ca(servers, &parts).await?;
    let joining = client(servers, &ca_pem, None).map_err(JoinError::Refused)?;
    let joined: JoinResponse = joining
        .post(
            "/v1/hosts/join",
            &JoinRequest {
                token: join_token.trim().to_string(),
                host: host.to_string(),
            },
        )
        .await
        .map_err(JoinError::Refused)?;
    let credential = Credential {
        host: joined.host,
        token: joined.credential,
    };
    save(data_dir, &ca_pem, &credential)?;
    Ok((ca_pem, credential))
}

fn save(data_dir: &Path, ca_pem: &[u8], credential: &Credential) -> Result<(), JoinError> {
    let write = |name: &str, bytes: &[u8]| {
        let path = data_dir.join(name);
        std::fs::create_dir_all(data_dir)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                crate::shim::state::write_atomically(&path, bytes).map_err(|e| e.to_string())
            })
            .map_err(|detail| JoinError::Save { path, detail })
    };
    let json = serde_json::to_vec_pretty(credential).map_err(|e| JoinError::Save {
        path: data_dir.join(CREDENTIAL_FILE),
        detail: e.to_string(),
    })?;
    write(CA_FILE, ca_pem)?;
    write(CREDENTIAL_FILE, &json)
}

/// The CA and credential a previous join kept in `data_dir`.
pub fn load(data_dir: &Path) -> Result<(Vec<u8>, Credential), JoinError> {
    let read = |name: &str| {
        let path = data_dir.join(name);
        std::fs::read(&path).map_err(|e| JoinError::NotJoined {
            path,
            detail: e.to_string(),
        })
    };
    let ca_pem = read(CA_FILE)?;
    let credential =
        serde_json::from_slice(&read(CREDENTIAL_FILE)?).map_err(|e| JoinError::NotJoined {
            path: data_dir.join(CREDENTIAL_FILE),
            detail: e.to_string(),
        })?;
    Ok((ca_pem, credential))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_in_order_and_bad_ones_are_named() {
        let s = parse_servers("https://10.0.0.1:7443, https://[::1]:7444/").unwrap();
        assert_eq!(
            s,
            vec![
                ServerAddr {
                    addr: "10.0.0.1:7443".into(),
                    server_name: "10.0.0.1".into()
                },
                ServerAddr {
                    addr: "[::1]:7444".into(),
                    server_name: "::1".into()
                },
            ]
        );
        assert!(matches!(parse_servers(" , "), Err(JoinError::NoServer(_))));
        for bad in ["http://a:1", "https://a", "https://:7443", "https://a:port"] {
            assert!(
                matches!(parse_servers(bad), Err(JoinError::BadServer(ref s)) if s == bad),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_saved_credential_loads_back_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path()), Err(JoinError::NotJoined { .. })));
        let cred = Credential {
            host: "h1".into(),
            token: "nmb_x".into(),
        };
        save(dir.path(), b"PEM", &cred).unwrap();
        let (ca, back) = load(dir.path()).unwrap();
        assert_eq!(
            (ca.as_slice(), back.host.as_str(), back.token.as_str()),
            (&b"PEM"[..], "h1", "nmb_x")
        );
        for f in [CA_FILE, CREDENTIAL_FILE] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
}
