//! Host port claims: which host ports a project may have forwarded to its
//! instances (published ports and VM `--forward`s). Checked before the
//! claim's `/hostports/{proto}/{port}` key is written (`ipam`), whose
//! transaction alone tells whether someone else holds the port already.
//!
//! A port is refused when
//! - it is below 1024 (the host's own services, 422) or outside the
//!   project's `host_ports` range (403), or the project would hold more than
//!   its `max_count` (409; published ports and forwards counted together);
//! - Nimbus itself listens on it (the API's TLS port, 409);
//! - a service of the host that would forward it already accepts
//!   connections on it (409), as that host reports through [`HostIo`]: a
//!   DNAT there would take the service's new connections.
//!
//! [`HostIo`]: crate::hostio::HostIo

use std::net::SocketAddr;

use nimbus_api::{ApiError, HostPortPolicy, Project, Protocol};

use crate::config::ServerConfig;
use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

/// Lowest host port any project may claim: below it are the host's own
/// services (DNS, SSH, ...).
pub const FIRST_CLAIMABLE_PORT: u16 = 1024;

/// One host port to claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub protocol: Protocol,
    pub port: u16,
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol.as_str())
    }
}

/// Serialises claims on this server, so two concurrent publishes cannot
/// both pass a project's count (one server writes the store: the data
/// directory lock).
pub type ClaimLock = tokio::sync::Mutex<()>;

/// Ports Nimbus's own host listeners use: never claimable.
pub fn reserved_by_nimbus(config: &ServerConfig) -> Vec<Claim> {
    config
        .listen
        .iter()
        .chain(&config.other_listeners)
        .map(|addr| Claim {
            protocol: Protocol::Tcp,
            port: addr.port(),
        })
        .collect()
}

/// The project's policy and the reserved ports, for claims of a project
/// that holds `held` host ports now. Pure.
pub fn check_policy(
    project: &str,
    policy: &HostPortPolicy,
    reserved: &[Claim],
    held: usize,
    claims: &[Claim],
) -> Result<(), ApiError> {
    for c in claims {
        if c.port < FIRST_CLAIMABLE_PORT {
            return Err(ApiError::invalid(format!(
                "host port {c}: ports below {FIRST_CLAIMABLE_PORT} belong to the host's own services (DNS, SSH, ...); use one from {}-{}",
                policy.min.max(FIRST_CLAIMABLE_PORT),
                policy.max
            )));
        }
        if c.port < policy.min || c.port > policy.max {
            return Err(ApiError::forbidden(format!(
                "host port {c} is outside the range {}-{} project {project:?} may use; pick a port in it, or ask a system administrator to change it (`nimbus project set {project} --port-range FROM-TO`)",
                policy.min, policy.max
            )));
        }
        if reserved
            .iter()
            .any(|r| r.port == c.port && r.protocol == c.protocol)
        {
            return Err(ApiError::conflict(format!(
                "host port {c} is where Nimbus's own API (or its S3 or metrics endpoint) listens; pick another host port"
            )));
        }
    }
    let max = usize::try_from(policy.max_count).unwrap_or(usize::MAX);
    if held.saturating_add(claims.len()) > max {
        return Err(ApiError::conflict(format!(
            "project {project:?} holds {held} host port(s) and may hold at most {}; free one first (`nimbus address rm NAME`, or remove a VM that has --forward), or ask a system administrator to raise the count (`nimbus project set {project} --max-ports N`)",
            policy.max_count
        )));
    }
    Ok(())
}

/// How many host ports `project` holds: its published ports and its VMs'
/// forwards (the values of `/hostports/` keys start with `{project}/`).
pub async fn held_by(state: &AppState, project: &str) -> ApiResult<usize> {
    let page = state
        .repo
        .store
        .list(crate::ipam::HOST_PORT_PREFIX, None, 0)
        .await?;
    let owner = format!("{project}/");
    Ok(page
        .kvs
        .iter()
        .filter(|kv| kv.value.starts_with(owner.as_bytes()))
        .count())
}

/// Everything that must hold before `project` claims `claims` on `host`
/// (the instance's host; `None` before it is placed). The caller holds the
/// [`ClaimLock`] across this and the store transaction.
pub async fn check(
    state: &AppState,
    project: &str,
    host: Option<&str>,
    claims: &[Claim],
) -> ApiResult<()> {
    let p: Project = state.repo.get(None, project).await?;
    let held = held_by(state, project).await?;
    check_policy(
        project,
        &p.spec.host_ports,
        &reserved_by_nimbus(&state.config),
        held,
        claims,
    )?;
    // Without a host to ask (`nimbus server` alone, before placement) the
    // agent's own check when it installs the forward protects host services.
    let Some(io) = state.host_io_on(host) else {
        return Ok(());
    };
    for c in claims {
        let listening = match io.host_port_listeners(host, c.protocol, c.port).await {
            // A host that cannot be asked (an agent without an I/O
            // endpoint) still checks when it installs the forward.
            Err(e) if e.code == nimbus_api::ErrorCode::Unavailable => {
                tracing::warn!(host = ?host, error = %e, "cannot ask the host about its listeners");
                return Ok(());
            }
            other => other?,
        };
        if !listening.is_empty() {
            return Err(ServerError(in_use(*c, host, &listening)));
        }
    }
    Ok(())
}

fn in_use(c: Claim, host: Option<&str>, listening: &[SocketAddr]) -> ApiError {
    let addrs: Vec<String> = listening.iter().map(|a| a.to_string()).collect();
    let host = host.map_or_else(|| "the host".to_string(), |h| format!("host {h:?}"));
    ApiError::conflict(format!(
        "host port {c} is in use: a service on {host} listens on {}, and forwarding the port would take its connections; pick another host port",
        addrs.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::ErrorCode;

    fn tcp(port: u16) -> Claim {
        Claim {
            protocol: Protocol::Tcp,
            port,
        }
    }

    #[test]
    fn the_api_port_is_reserved_whatever_it_is() {
        let mut config = ServerConfig::with_data_dir("/d".into());
        config.listen = Some("127.0.0.1:9443".parse().unwrap());
        let reserved = reserved_by_nimbus(&config);
        assert_eq!(reserved, vec![tcp(9443)]);
        let e =
            check_policy("p", &HostPortPolicy::default(), &reserved, 0, &[tcp(9443)]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(e.message.contains("9443/tcp"), "{}", e.message);
        // The same number over UDP is no listener of Nimbus's.
        let udp = Claim {
            protocol: Protocol::Udp,
            port: 9443,
        };
        check_policy("p", &HostPortPolicy::default(), &reserved, 0, &[udp]).unwrap();
        config.listen = None;
        assert!(reserved_by_nimbus(&config).is_empty());
    }

    #[test]
    fn the_other_listeners_are_reserved_too() {
        let mut config = ServerConfig::with_data_dir("/d".into());
        config.listen = Some("127.0.0.1:9443".parse().unwrap());
        config.other_listeners = vec!["127.0.0.1:7480".parse().unwrap()];
        let reserved = reserved_by_nimbus(&config);
        assert_eq!(reserved, vec![tcp(9443), tcp(7480)]);
        let e =
            check_policy("p", &HostPortPolicy::default(), &reserved, 0, &[tcp(7480)]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
    }

    #[test]
    fn range_and_count_are_the_projects() {
        let policy = HostPortPolicy {
            min: 30000,
            max: 30009,
            max_count: 2,
        };
        let e = check_policy("ops", &policy, &[], 0, &[tcp(8080)]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(e.message.contains("30000-30009"), "{}", e.message);
        assert!(e.message.contains("--port-range"), "{}", e.message);
        let e = check_policy("ops", &policy, &[], 0, &[tcp(80)]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        check_policy("ops", &policy, &[], 1, &[tcp(30000)]).unwrap();
        let e = check_policy("ops", &policy, &[], 2, &[tcp(30001)]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(e.message.contains("at most 2"), "{}", e.message);
        assert!(e.message.contains("--max-ports"), "{}", e.message);
        // Two forwards at once count twice.
        let e = check_policy("ops", &policy, &[], 1, &[tcp(30001), tcp(30002)]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
    }

    #[test]
    fn a_host_listener_is_named_in_the_refusal() {
        let e = in_use(tcp(8080), Some("h1"), &["[::]:8080".parse().unwrap()]);
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(e.message.contains("8080/tcp"), "{}", e.message);
        assert!(e.message.contains("[::]:8080"), "{}", e.message);
        assert!(
            e.message.contains("pick another host port"),
            "{}",
            e.message
        );
    }
}
