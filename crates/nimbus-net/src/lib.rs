//! Host networking for Nimbus instances, on one host.
//!
//! Every Nimbus network gets a *router namespace* on the host
//! (`/run/nimbus/netns/nr-<network id>`): it holds the network's Linux
//! bridge with the gateway address, one bridge port per instance (a veth
//! whose other end is the instance's `eth0`, or a tap for a VM), the
//! nftables tables that enforce anti-spoofing, security groups, egress
//! masquerade and port forwards, and the DNS and DHCP responders' sockets.
//! A veth pair (`nb<id>` on the host, `uplink` inside) joins it to the
//! host, whose own Nimbus table masquerades egress and forwards published
//! host ports.
//!
//! All links and addresses are made through netlink; nftables rules go to
//! `nft -f -` as one script (one atomic transaction) per change.
//!
//! This crate must never touch a link, namespace or nftables table it did
//! not name: host links start with `nb`, namespaces live under
//! `/run/nimbus/netns/`, the host table is `inet nimbus_<tag>`.

pub mod conntrack;
pub mod dhcp;
pub mod dns;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod router;
pub mod rules;
pub mod tap;

pub use router::{HostSide, PortSpec, RouterSpec};

/// Everything the dataplane can fail with; messages name the object.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink: {what}: {message}")]
    Netlink { what: String, message: String },
    #[error("nft: {0}")]
    Nft(String),
    #[error("{0}")]
    Invalid(String),
}

impl NetError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        NetError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, NetError>;
