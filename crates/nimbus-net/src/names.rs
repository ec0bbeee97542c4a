//! Names of the links and namespaces Nimbus makes. Interface names have at
//! most 15 bytes; ids are UUIDs, and 10 hex digits of one name it uniquely
//! enough on one host.

use std::path::PathBuf;

/// Where network namespaces are bind-mounted.
pub const NETNS_DIR: &str = "/run/nimbus/netns";
/// Prefix of every host-side link Nimbus creates.
pub const HOST_LINK_PREFIX: &str = "nb";
/// The bridge inside a router namespace; instance ports are its ports.
pub const BRIDGE: &str = "br0";
/// Name of the router's link towards the host, inside its namespace.
pub const UPLINK: &str = "uplink";
/// The router's VXLAN device (a port of `br0`) on networks spanning hosts.
pub const VXLAN: &str = "vx0";

fn short(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(10)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// The router namespace of a network.
pub fn router_netns(network_id: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(format!("nr-{network_id}"))
}

/// The network namespace of an instance.
pub fn instance_netns(instance_id: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(format!("ni-{instance_id}"))
}

/// Host side of a router's uplink veth.
pub fn host_link(network_id: &str) -> String {
    format!("{HOST_LINK_PREFIX}{}", short(network_id))
}

/// An instance's port inside its router namespace (veth).
pub fn port_link(instance_id: &str) -> String {
    format!("p{}", short(instance_id))
}

/// A VM's tap inside its router namespace.
pub fn tap_link(instance_id: &str) -> String {
    format!("t{}", short(instance_id))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_fit_in_ifnamsiz() {
        let id = "0f9e2c1a-77aa-4bcd-9e00-123456789abc";
        for n in [
            super::host_link(id),
            super::port_link(id),
            super::tap_link(id),
        ] {
            assert!(n.len() <= 15, "{n}");
        }
        assert_eq!(super::host_link(id), "nb0f9e2c1a77");
    }
}
