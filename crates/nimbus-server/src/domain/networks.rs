//! Networks: the name a network may take and what its spec must satisfy.

use nimbus_api::cidr::Subnet;
use nimbus_api::{validate_name, NetworkSpec};

/// The name `--network none` spells "loopback only".
pub const RESERVED_NAME: &str = "none";

/// A network request the API refuses as invalid (422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Name(String),
    #[error(
        "\"none\" is reserved (`--network none` means loopback only); choose another network name"
    )]
    ReservedName,
    #[error("{0}")]
    Subnet(String),
    #[error("subnet {0} must have a prefix length from /16 to /29 (e.g. 10.20.0.0/24)")]
    PrefixLength(String),
    #[error("gateway {gateway} is not a usable address of subnet {subnet}; leave it out to use {first_host}")]
    Gateway {
        gateway: std::net::Ipv4Addr,
        subnet: String,
        first_host: std::net::Ipv4Addr,
    },
    #[error("{0}")]
    DnsSearch(String),
}

/// A new network's name: a resource name, and not the reserved `none`.
pub fn validate_network_name(name: &str) -> Result<(), NetworkError> {
    validate_name("network", name).map_err(NetworkError::Name)?;
    if name == RESERVED_NAME {
        return Err(NetworkError::ReservedName);
    }
    Ok(())
}

/// A /16 to /29 IPv4 subnet, a gateway inside it, a valid search domain.
pub fn validate_spec(spec: &NetworkSpec) -> Result<(), NetworkError> {
    let subnet = Subnet::parse(&spec.subnet).map_err(NetworkError::Subnet)?;
    if !(16..=29).contains(&subnet.prefix_len) {
        return Err(NetworkError::PrefixLength(spec.subnet.clone()));
    }
    if let Some(gw) = spec.gateway {
        if !subnet.contains(gw) || gw == subnet.network || gw == subnet.broadcast() {
            return Err(NetworkError::Gateway {
                gateway: gw,
                subnet: subnet.to_string(),
                first_host: subnet.first_host(),
            });
        }
    }
    if let Some(d) = &spec.dns_search {
        validate_name("dns search domain", d).map_err(NetworkError::DnsSearch)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(subnet: &str) -> NetworkSpec {
        NetworkSpec {
            subnet: subnet.into(),
            gateway: None,
            dns: vec![],
            dns_search: None,
        }
    }

    #[test]
    fn names_are_resource_names_and_none_is_reserved() {
        assert_eq!(validate_network_name("backend"), Ok(()));
        let e = validate_network_name("Back End").expect_err("spaces");
        assert!(
            e.to_string()
                .contains("network name \"Back End\" is invalid"),
            "{e}"
        );
        let e = validate_network_name("none").expect_err("reserved");
        assert!(e.to_string().contains("loopback only"), "{e}");
    }

    #[test]
    fn subnets_from_16_to_29_with_a_usable_gateway() {
        assert_eq!(validate_spec(&spec("10.20.0.0/24")), Ok(()));
        assert_eq!(validate_spec(&spec("10.20.0.0/16")), Ok(()));
        assert_eq!(validate_spec(&spec("10.20.0.0/29")), Ok(()));
        let e = validate_spec(&spec("10.0.0.0/8")).expect_err("/8");
        assert_eq!(
            e.to_string(),
            "subnet 10.0.0.0/8 must have a prefix length from /16 to /29 (e.g. 10.20.0.0/24)"
        );
        assert!(matches!(
            validate_spec(&spec("10.0.0.0/30")),
            Err(NetworkError::PrefixLength(_))
        ));
        assert!(matches!(
            validate_spec(&spec("not-a-subnet")),
            Err(NetworkError::Subnet(_))
        ));
        let mut s = spec("10.20.0.0/24");
        s.gateway = Some("10.21.0.1".parse().expect("ip"));
        let e = validate_spec(&s).expect_err("gateway outside");
        assert!(
            e.to_string()
                .contains("gateway 10.21.0.1 is not a usable address"),
            "{e}"
        );
        assert!(
            e.to_string().contains("leave it out to use 10.20.0.1"),
            "{e}"
        );
        s.gateway = Some("10.20.0.255".parse().expect("ip"));
        assert!(matches!(
            validate_spec(&s),
            Err(NetworkError::Gateway { .. })
        ));
        s.gateway = Some("10.20.0.0".parse().expect("ip"));
        assert!(matches!(
            validate_spec(&s),
            Err(NetworkError::Gateway { .. })
        ));
        s.gateway = Some("10.20.0.254".parse().expect("ip"));
        assert_eq!(validate_spec(&s), Ok(()));
        s.dns_search = Some("Bad Domain".into());
        let e = validate_spec(&s).expect_err("search domain");
        assert!(e.to_string().contains("dns search domain"), "{e}");
    }
}
