//! Published ports: the name a request gets, which ports may be published,
//! and how an agent's report becomes the stored status.

use nimbus_api::{validate_name, Protocol, PublishedPortSpec, PublishedPortStatus};

use crate::hostports::FIRST_CLAIMABLE_PORT;

/// A publish request the API refuses as invalid (422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Name(String),
    #[error("only tcp and udp ports can be published; use --port 8080:80 or --port 53:53/udp")]
    Protocol,
    #[error("host ports below 1024 belong to the host's own services (DNS, SSH, ...); publish on 1024-65535, e.g. --port 8080:80")]
    Port,
    #[error(
        "instance {0:?} is on no network, so nothing can reach it; run it with --network <name>"
    )]
    NoNetwork(String),
}

/// The name a published port gets when the request leaves it empty.
pub fn default_name(spec: &PublishedPortSpec) -> String {
    format!(
        "{}-{}-{}",
        spec.instance,
        spec.protocol.as_str(),
        spec.host_port
    )
}

/// The name to store a publish request under (given, or the default), once
/// the request's name, protocol and ports are valid.
pub fn validate_publish(name: &str, spec: &PublishedPortSpec) -> Result<String, PublishError> {
    let name = if name.is_empty() {
        default_name(spec)
    } else {
        name.to_string()
    };
    validate_name("published port", &name).map_err(PublishError::Name)?;
    if !matches!(spec.protocol, Protocol::Tcp | Protocol::Udp) {
        return Err(PublishError::Protocol);
    }
    if spec.host_port < FIRST_CLAIMABLE_PORT || spec.instance_port == 0 {
        return Err(PublishError::Port);
    }
    Ok(name)
}

/// The target instance must be reachable: it has an address on a network.
pub fn check_target_on_network(instance: &nimbus_api::Instance) -> Result<(), PublishError> {
    if instance.status.addresses.is_empty() {
        return Err(PublishError::NoNetwork(instance.metadata.name.clone()));
    }
    Ok(())
}

/// The status as stored: what the agent reports, with the reporting host
/// as the caller's own host (an agent cannot speak for another host). A
/// report by a system administrator keeps the host it gives.
pub fn reported_status(
    mut reported: PublishedPortStatus,
    caller_host: Option<&str>,
) -> PublishedPortStatus {
    if let Some(host) = caller_host {
        reported.host = Some(host.to_string());
    }
    reported
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(protocol: Protocol, host_port: u16, instance_port: u16) -> PublishedPortSpec {
        PublishedPortSpec {
            instance: "web".into(),
            protocol,
            host_port,
            instance_port,
        }
    }

    #[test]
    fn an_empty_name_becomes_instance_protocol_port() {
        assert_eq!(
            validate_publish("", &spec(Protocol::Tcp, 8080, 80)),
            Ok("web-tcp-8080".to_string())
        );
        assert_eq!(
            validate_publish("front", &spec(Protocol::Udp, 5353, 53)),
            Ok("front".to_string())
        );
        let e = validate_publish("Front Door", &spec(Protocol::Tcp, 8080, 80)).expect_err("name");
        assert!(
            e.to_string().contains("published port name \"Front Door\""),
            "{e}"
        );
    }

    #[test]
    fn only_tcp_and_udp_from_1024_to_a_real_instance_port() {
        assert_eq!(
            validate_publish("", &spec(Protocol::Icmp, 8080, 80)),
            Err(PublishError::Protocol)
        );
        let e = validate_publish("", &spec(Protocol::Tcp, 80, 80)).expect_err("low port");
        assert!(e.to_string().contains("below 1024"), "{e}");
        assert_eq!(
            validate_publish("", &spec(Protocol::Tcp, 8080, 0)),
            Err(PublishError::Port)
        );
        assert!(validate_publish("", &spec(Protocol::Tcp, 1024, 1)).is_ok());
        assert!(validate_publish("", &spec(Protocol::Udp, 65535, 65535)).is_ok());
    }

    #[test]
    fn an_agent_reports_for_its_own_host_only() {
        let claimed = PublishedPortStatus {
            applied: true,
            host: Some("other".into()),
            reason: None,
        };
        let stored = reported_status(claimed.clone(), Some("node1"));
        assert_eq!(stored.host.as_deref(), Some("node1"));
        assert!(stored.applied);
        // An administrator's report keeps what it says.
        assert_eq!(reported_status(claimed.clone(), None), claimed);
    }
}
