//! Host networking for Nimbus instances: on one host, and across hosts
//! over VXLAN ([`vxlan`]).
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
//! `nft -f -` as one script (one atomic transaction) per change. Those
//! effects, and conntrack, sit behind the traits of [`host`], so what
//! decides them (`router`, `rules`, `flows`, the agent's driver) is tested
//! without root against [`fake::FakeHost`].
//!
//! This crate must never touch a link, namespace or nftables table it did
//! not name: host links start with `nb`, namespaces live under
//! `/run/nimbus/netns/`, the host table is `inet nimbus_<tag>`.

pub mod conntrack;
pub mod dhcp;
pub mod dns;
pub mod fake;
pub mod flows;
pub mod host;
pub mod listeners;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod router;
pub mod rules;
pub mod tap;
pub mod vxlan;

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

/// Give the socket `fd` a receive timeout (`SO_RCVTIMEO`).
pub(crate) fn set_recv_timeout(fd: std::os::fd::RawFd, timeout: std::time::Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid timeval of the size passed, on a descriptor the caller owns.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(NetError::io("SO_RCVTIMEO", std::io::Error::last_os_error()));
    }
    Ok(())
}
