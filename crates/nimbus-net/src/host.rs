//! The host side effects of the dataplane, behind narrow traits, so the
//! code that decides what to create, apply and flush is tested without
//! root against the in-memory doubles in [`crate::fake`].
//!
//! - [`Netns`]: network namespaces, and the [`Links`] inside one of them
//!   (netlink links, addresses, routes, taps, sysctls).
//! - [`Firewall`]: applying an nftables script as one transaction.
//! - [`Conntrack`]: listing and removing tracked flows.
//!
//! The kernel implementations are [`KernelNetns`] (over [`Netlink`]),
//! [`Nft`] and [`KernelConntrack`].

use std::net::Ipv4Addr;
use std::path::Path;

use crate::conntrack::Flow;
use crate::netlink::{Netlink, VxlanLink};
use crate::{conntrack, netns, nft, tap, NetError, Result};

/// Link, address and route operations inside one network namespace.
pub trait Links {
    /// Every link: (index, name).
    fn links(&mut self) -> Result<Vec<(u32, String)>>;
    fn link_index(&mut self, name: &str) -> Result<Option<u32>>;
    /// A veth pair `name` (here) and `peer` (here, or in the namespace
    /// bind-mounted at `peer_netns`), with optional MAC and MTU on the peer.
    fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: Option<&Path>,
        peer_mac: Option<[u8; 6]>,
        mtu: Option<u32>,
    ) -> Result<()>;
    /// A bridge with a fixed MAC; an existing link of that name is kept.
    fn add_bridge(&mut self, name: &str, mac: [u8; 6]) -> Result<()>;
    /// A persistent tap (it outlives this call until its link is deleted).
    fn add_tap(&mut self, name: &str) -> Result<()>;
    /// Make `link` a port of the bridge `bridge`.
    fn set_master(&mut self, link: &str, bridge: &str) -> Result<()>;
    fn set_up(&mut self, name: &str) -> Result<()>;
    /// Delete a link; a missing link is fine.
    fn delete_link(&mut self, name: &str) -> Result<()>;
    /// Add (or keep) an IPv4 address on a link.
    fn add_address(&mut self, link: &str, ip: Ipv4Addr, prefix_len: u8) -> Result<()>;
    /// IPv4 addresses of every link here: (link index, address, prefix).
    fn addresses(&mut self) -> Result<Vec<(u32, Ipv4Addr, u8)>>;
    /// A route to `dst/prefix_len` via `gateway`, or directly on `link`.
    fn add_route(
        &mut self,
        dst: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
        link: Option<&str>,
    ) -> Result<()>;
    /// Write a sysctl (`net.ipv4.ip_forward`) of this namespace.
    fn sysctl(&mut self, key: &str, value: &str) -> Result<()>;
    /// A VXLAN device made here (its UDP socket lives here), placed in the
    /// namespace bind-mounted at `netns` when given.
    fn add_vxlan(&mut self, name: &str, tunnel: &VxlanLink, netns: Option<&Path>) -> Result<()>;
    /// Permanent IPv4 neighbours of `link`: (address, MAC).
    fn neighbours(&mut self, link: &str) -> Result<Vec<(Ipv4Addr, [u8; 6])>>;
    /// Set (`Some`) or remove (`None`) the permanent neighbour `ip` of `link`.
    fn set_neighbour(&mut self, link: &str, ip: Ipv4Addr, mac: Option<[u8; 6]>) -> Result<()>;
    /// Forwarding entries of a VXLAN device: (MAC, remote host address).
    fn fdb_remotes(&mut self, link: &str) -> Result<Vec<([u8; 6], Ipv4Addr)>>;
    /// Set (`Some`) or remove (`None`) the forwarding entry of `mac`.
    fn set_fdb(&mut self, link: &str, mac: [u8; 6], remote: Option<Ipv4Addr>) -> Result<()>;
}

/// Work handed to [`Netns::with_links`].
pub type LinksWork<'a> = dyn FnMut(&mut dyn Links) -> Result<()> + Send + 'a;

/// Named network namespaces (bind-mounted files) and the links in them.
pub trait Netns: Send + Sync {
    /// Create the namespace at `path` unless it exists; whether it was made.
    fn create(&self, path: &Path) -> Result<bool>;
    /// Remove the namespace at `path`; a missing one is fine.
    fn remove(&self, path: &Path) -> Result<()>;
    /// Whether a namespace file is at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// Run `work` once with the links of the namespace at `path` (`None`:
    /// the host's).
    fn with_links(&self, path: Option<&Path>, work: &mut LinksWork<'_>) -> Result<()>;
}

/// Run `f` with the links of the namespace at `path` and return its value.
pub fn in_netns<T: Send>(
    host: &dyn Netns,
    path: Option<&Path>,
    f: impl FnOnce(&mut dyn Links) -> Result<T> + Send,
) -> Result<T> {
    let mut f = Some(f);
    let mut out = None;
    host.with_links(path, &mut |links| {
        let f = f
            .take()
            .ok_or_else(|| NetError::Invalid("namespace work ran twice".into()))?;
        out = Some(f(links)?);
        Ok(())
    })?;
    out.ok_or_else(|| NetError::Invalid("namespace work did not run".into()))
}

/// Applying nftables scripts.
pub trait Firewall: Send + Sync {
    /// Apply `script` as one transaction in the namespace at `netns`
    /// (`None`: the host's).
    fn apply(&self, netns: Option<&Path>, script: &str) -> Result<()>;
    /// Delete a table of the host namespace if it exists.
    fn delete_table(&self, family: &str, table: &str) -> Result<()>;
}

/// Connection tracking of a namespace.
pub trait Conntrack: Send + Sync {
    /// The tracked IPv4 TCP and UDP flows.
    fn flows(&self, netns: Option<&Path>) -> Result<Vec<Flow>>;
    /// Remove the flows `matches` picks; how many went.
    fn remove_flows(
        &self,
        netns: Option<&Path>,
        matches: &(dyn Fn(&Flow) -> bool + Sync),
    ) -> Result<usize>;
}

/// The kernel's namespaces, with a netlink socket per piece of work.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelNetns;

impl Netns for KernelNetns {
    fn create(&self, path: &Path) -> Result<bool> {
        netns::create(path)
    }

    fn remove(&self, path: &Path) -> Result<()> {
        netns::remove(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn with_links(&self, path: Option<&Path>, work: &mut LinksWork<'_>) -> Result<()> {
        netns::run_in(path, move || work(&mut Netlink::new()?))
    }
}

impl Links for Netlink {
    fn links(&mut self) -> Result<Vec<(u32, String)>> {
        Netlink::links(self)
    }

    fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        Netlink::link_index(self, name)
    }

    fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: Option<&Path>,
        peer_mac: Option<[u8; 6]>,
        mtu: Option<u32>,
    ) -> Result<()> {
        // The namespace file stays open until the kernel has the request.
        let target = peer_netns.map(netns::open).transpose()?;
        Netlink::add_veth(
            self,
            name,
            peer,
            target.as_ref().map(netns::raw),
            peer_mac,
            mtu,
        )
    }

    fn add_bridge(&mut self, name: &str, mac: [u8; 6]) -> Result<()> {
        Netlink::add_bridge(self, name, mac)
    }

    fn add_tap(&mut self, name: &str) -> Result<()> {
        let fd = tap::create_tap(name, false)?;
        tap::set_persistent(&fd)
    }

    fn set_master(&mut self, link: &str, bridge: &str) -> Result<()> {
        Netlink::set_master(self, link, bridge)
    }

    fn set_up(&mut self, name: &str) -> Result<()> {
        Netlink::set_up(self, name)
    }

    fn delete_link(&mut self, name: &str) -> Result<()> {
        Netlink::delete_link(self, name)
    }

    fn add_address(&mut self, link: &str, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        Netlink::add_address(self, link, ip, prefix_len)
    }

    fn addresses(&mut self) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        Netlink::addresses(self)
    }

    fn add_route(
        &mut self,
        dst: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
        link: Option<&str>,
    ) -> Result<()> {
        Netlink::add_route(self, dst, prefix_len, gateway, link)
    }

    fn sysctl(&mut self, key: &str, value: &str) -> Result<()> {
        // The socket's thread is in the namespace, and so is its /proc/sys/net.
        netns::sysctl(key, value)
    }

    fn add_vxlan(&mut self, name: &str, tunnel: &VxlanLink, netns: Option<&Path>) -> Result<()> {
        // The namespace file stays open until the kernel has the request.
        let target = netns.map(netns::open).transpose()?;
        Netlink::add_vxlan(self, name, tunnel, target.as_ref().map(netns::raw))
    }

    fn neighbours(&mut self, link: &str) -> Result<Vec<(Ipv4Addr, [u8; 6])>> {
        Netlink::neighbours(self, link)
    }

    fn set_neighbour(&mut self, link: &str, ip: Ipv4Addr, mac: Option<[u8; 6]>) -> Result<()> {
        Netlink::set_neighbour(self, link, ip, mac)
    }

    fn fdb_remotes(&mut self, link: &str) -> Result<Vec<([u8; 6], Ipv4Addr)>> {
        Netlink::fdb_remotes(self, link)
    }

    fn set_fdb(&mut self, link: &str, mac: [u8; 6], remote: Option<Ipv4Addr>) -> Result<()> {
        Netlink::set_fdb(self, link, mac, remote)
    }
}

/// `nft -f -`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Nft;

impl Firewall for Nft {
    fn apply(&self, netns: Option<&Path>, script: &str) -> Result<()> {
        nft::apply(netns, script)
    }

    fn delete_table(&self, family: &str, table: &str) -> Result<()> {
        nft::delete_table(family, table)
    }
}

/// ctnetlink, from a thread in the namespace.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelConntrack;

impl Conntrack for KernelConntrack {
    fn flows(&self, netns: Option<&Path>) -> Result<Vec<Flow>> {
        netns::run_in(netns, conntrack::list_flows)
    }

    fn remove_flows(
        &self,
        netns: Option<&Path>,
        matches: &(dyn Fn(&Flow) -> bool + Sync),
    ) -> Result<usize> {
        netns::run_in(netns, move || conntrack::remove_flows(matches))
    }
}

/// The three host effects the agent's network driver needs, shared.
#[derive(Clone)]
pub struct Dataplane {
    pub netns: std::sync::Arc<dyn Netns>,
    pub firewall: std::sync::Arc<dyn Firewall>,
    pub conntrack: std::sync::Arc<dyn Conntrack>,
}

impl Dataplane {
    /// The kernel's: netlink, `nft`, ctnetlink.
    pub fn kernel() -> Dataplane {
        Dataplane {
            netns: std::sync::Arc::new(KernelNetns),
            firewall: std::sync::Arc::new(Nft),
            conntrack: std::sync::Arc::new(KernelConntrack),
        }
    }
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dataplane")
    }
}
