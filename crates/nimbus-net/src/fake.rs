//! In-memory doubles of [`crate::host`]'s traits, for tests without root:
//! [`FakeHost`] keeps a model of namespaces, links, addresses, routes and
//! sysctls, of the nftables scripts applied and of tracked flows, and
//! records every call. It behaves like the kernel where the dataplane's
//! logic depends on it: a veth's two ends go together, a namespace's links
//! go with it, a per-link sysctl needs the link, a name is taken once.
//!
//! Failures are injected by [`FakeState::fail_on`]: a call whose record
//! contains one of those texts fails as the kernel would.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::conntrack::Flow;
use crate::host::{Conntrack, Dataplane, Firewall, Links, LinksWork, Netns};
use crate::netlink::{format_mac, VxlanLink};
use crate::{NetError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Loopback,
    Veth,
    Bridge,
    Tap,
    Vxlan,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeLink {
    pub index: u32,
    pub kind: LinkKind,
    pub up: bool,
    pub master: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// The other end of a veth: (namespace, name).
    pub peer: Option<(Option<PathBuf>, String)>,
    /// A VXLAN device's settings, and the namespace holding its socket.
    pub vxlan: Option<(VxlanLink, Option<PathBuf>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeRoute {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub link: Option<String>,
}

/// One network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeNamespace {
    pub links: BTreeMap<String, FakeLink>,
    /// (link, address, prefix length).
    pub addresses: Vec<(String, Ipv4Addr, u8)>,
    pub routes: Vec<FakeRoute>,
    pub sysctls: BTreeMap<String, String>,
    /// Permanent neighbours: (link, address) → MAC.
    pub neighbours: BTreeMap<(String, Ipv4Addr), [u8; 6]>,
    /// VXLAN forwarding entries: (link, MAC) → remote host.
    pub fdb: BTreeMap<(String, [u8; 6]), Ipv4Addr>,
}

impl Default for FakeNamespace {
    fn default() -> Self {
        let mut links = BTreeMap::new();
        links.insert(
            "lo".to_string(),
            FakeLink {
                index: 1,
                kind: LinkKind::Loopback,
                up: false,
                master: None,
                mac: None,
                mtu: None,
                peer: None,
                vxlan: None,
            },
        );
        FakeNamespace {
            links,
            addresses: Vec::new(),
            routes: Vec::new(),
            sysctls: BTreeMap::new(),
            neighbours: BTreeMap::new(),
            fdb: BTreeMap::new(),
        }
    }
}

impl FakeNamespace {
    pub fn link(&self, name: &str) -> Option<&FakeLink> {
        self.links.get(name)
    }

    /// Addresses of `link`, as `ip/prefix`.
    pub fn addresses_of(&self, link: &str) -> Vec<String> {
        self.addresses
            .iter()
            .filter(|(l, _, _)| l == link)
            .map(|(_, ip, p)| format!("{ip}/{p}"))
            .collect()
    }
}

/// An nftables script applied, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub netns: Option<PathBuf>,
    pub script: String,
}

#[derive(Clone, Debug, Default)]
pub struct FakeState {
    /// The host's namespace.
    pub host: FakeNamespace,
    /// Named namespaces, by path.
    pub namespaces: BTreeMap<PathBuf, FakeNamespace>,
    /// Every call, in order (`<namespace> <operation> <arguments>`).
    pub calls: Vec<String>,
    /// Scripts applied, in order.
    pub applied: Vec<Applied>,
    /// Tables deleted: (family, table).
    pub deleted_tables: Vec<(String, String)>,
    /// Tracked flows by namespace (`None`: the host's).
    pub flows: BTreeMap<Option<PathBuf>, Vec<Flow>>,
    /// Flows removed, with their namespace.
    pub removed_flows: Vec<(Option<PathBuf>, Flow)>,
    /// A call whose record contains one of these texts fails.
    pub fail_on: Vec<String>,
    next_index: u32,
}

fn ns_label(ns: Option<&Path>) -> String {
    ns.map(|p| p.display().to_string())
        .unwrap_or_else(|| "host".into())
}

impl FakeState {
    fn record(&mut self, ns: Option<&Path>, call: String) -> Result<()> {
        let line = format!("{} {call}", ns_label(ns));
        let fails = self.fail_on.iter().any(|f| line.contains(f.as_str()));
        self.calls.push(line.clone());
        if fails {
            return Err(NetError::Netlink {
                what: line,
                message: "injected failure".into(),
            });
        }
        Ok(())
    }

    pub fn namespace(&self, ns: Option<&Path>) -> Option<&FakeNamespace> {
        match ns {
            None => Some(&self.host),
            Some(p) => self.namespaces.get(p),
        }
    }

    fn namespace_mut(&mut self, ns: Option<&Path>) -> Result<&mut FakeNamespace> {
        match ns {
            None => Ok(&mut self.host),
            Some(p) => self.namespaces.get_mut(p).ok_or_else(|| {
                NetError::io(
                    format!("open netns {}", p.display()),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            }),
        }
    }

    /// Calls whose record contains `text`.
    pub fn calls_with(&self, text: &str) -> Vec<&String> {
        self.calls.iter().filter(|c| c.contains(text)).collect()
    }

    fn add_link(&mut self, ns: Option<&Path>, name: &str, link: FakeLink) -> Result<()> {
        let space = self.namespace_mut(ns)?;
        if space.links.contains_key(name) {
            return Err(NetError::Netlink {
                what: format!("create link {name}"),
                message: "File exists (os error 17)".into(),
            });
        }
        space.links.insert(name.to_string(), link);
        Ok(())
    }

    /// Remove a link, its addresses and routes, and a veth's other end.
    fn drop_link(&mut self, ns: Option<&Path>, name: &str) {
        let Ok(space) = self.namespace_mut(ns) else {
            return;
        };
        let Some(link) = space.links.remove(name) else {
            return;
        };
        space.addresses.retain(|(l, _, _)| l != name);
        space.routes.retain(|r| r.link.as_deref() != Some(name));
        space.neighbours.retain(|(l, _), _| l != name);
        space.fdb.retain(|(l, _), _| l != name);
        for other in space.links.values_mut() {
            if other.master.as_deref() == Some(name) {
                other.master = None;
            }
        }
        if let Some((peer_ns, peer)) = link.peer {
            self.drop_link(peer_ns.as_deref(), &peer);
        }
    }

    fn new_link(&mut self, kind: LinkKind, mac: Option<[u8; 6]>, mtu: Option<u32>) -> FakeLink {
        self.next_index += 1;
        FakeLink {
            index: self.next_index + 1,
            kind,
            up: false,
            master: None,
            mac,
            mtu,
            peer: None,
            vxlan: None,
        }
    }
}

/// The doubles of [`Netns`], [`Links`], [`Firewall`] and [`Conntrack`],
/// sharing one [`FakeState`].
#[derive(Debug, Default)]
pub struct FakeHost {
    state: Mutex<FakeState>,
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost::default()
    }

    /// A [`Dataplane`] whose three parts are `host`.
    pub fn dataplane(host: &Arc<FakeHost>) -> Dataplane {
        Dataplane {
            netns: host.clone(),
            firewall: host.clone(),
            conntrack: host.clone(),
        }
    }

    /// The model, to inspect or change.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Scripts applied in the namespace at `ns` (`None`: the host's).
    pub fn scripts(&self, ns: Option<&Path>) -> Vec<String> {
        self.state()
            .applied
            .iter()
            .filter(|a| a.netns.as_deref() == ns)
            .map(|a| a.script.clone())
            .collect()
    }
}

struct FakeLinks<'a> {
    state: &'a mut FakeState,
    ns: Option<PathBuf>,
}

impl FakeLinks<'_> {
    fn record(&mut self, call: String) -> Result<()> {
        let ns = self.ns.clone();
        self.state.record(ns.as_deref(), call)
    }

    fn space(&mut self) -> Result<&mut FakeNamespace> {
        let ns = self.ns.clone();
        self.state.namespace_mut(ns.as_deref())
    }

    fn require(&mut self, name: &str) -> Result<&mut FakeLink> {
        self.space()?
            .links
            .get_mut(name)
            .ok_or_else(|| NetError::Netlink {
                what: format!("find link {name}"),
                message: "no such link".into(),
            })
    }
}

impl Links for FakeLinks<'_> {
    fn links(&mut self) -> Result<Vec<(u32, String)>> {
        Ok(self
            .space()?
            .links
            .iter()
            .map(|(n, l)| (l.index, n.clone()))
            .collect())
    }

    fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        Ok(self.space()?.links.get(name).map(|l| l.index))
    }

    fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: Option<&Path>,
        peer_mac: Option<[u8; 6]>,
        mtu: Option<u32>,
    ) -> Result<()> {
        let target = peer_netns
            .map(Path::to_path_buf)
            .or_else(|| self.ns.clone());
        self.record(format!(
            "add_veth {name} {peer} in {}",
            ns_label(target.as_deref())
        ))?;
        // Both ends or neither, as one netlink request.
        self.state.namespace_mut(target.as_deref())?;
        if target == self.ns && name == peer {
            return Err(NetError::Netlink {
                what: format!("create veth {name}/{peer}"),
                message: "File exists (os error 17)".into(),
            });
        }
        if self
            .state
            .namespace(target.as_deref())
            .is_some_and(|t| t.links.contains_key(peer))
        {
            return Err(NetError::Netlink {
                what: format!("create veth {name}/{peer}"),
                message: "File exists (os error 17)".into(),
            });
        }
        let mut here = self.state.new_link(LinkKind::Veth, None, mtu);
        here.peer = Some((target.clone(), peer.to_string()));
        let ns = self.ns.clone();
        self.state.add_link(ns.as_deref(), name, here)?;
        let mut there = self.state.new_link(LinkKind::Veth, peer_mac, mtu);
        there.peer = Some((self.ns.clone(), name.to_string()));
        self.state.add_link(target.as_deref(), peer, there)
    }

    fn add_bridge(&mut self, name: &str, mac: [u8; 6]) -> Result<()> {
        if self.link_index(name)?.is_some() {
            return Ok(());
        }
        self.record(format!("add_bridge {name}"))?;
        let link = self.state.new_link(LinkKind::Bridge, Some(mac), None);
        let ns = self.ns.clone();
        self.state.add_link(ns.as_deref(), name, link)
    }

    fn add_tap(&mut self, name: &str) -> Result<()> {
        self.record(format!("add_tap {name}"))?;
        if name.is_empty() || name.len() >= 16 {
            return Err(NetError::Invalid(format!(
                "tap name {name:?} must be 1-15 bytes"
            )));
        }
        let link = self.state.new_link(LinkKind::Tap, None, None);
        let ns = self.ns.clone();
        self.state.add_link(ns.as_deref(), name, link)
    }

    fn set_master(&mut self, link: &str, bridge: &str) -> Result<()> {
        self.record(format!("set_master {link} {bridge}"))?;
        if self.require(bridge)?.kind != LinkKind::Bridge {
            return Err(NetError::Netlink {
                what: format!("attach {link} to bridge {bridge}"),
                message: "Operation not supported (os error 95)".into(),
            });
        }
        self.require(link)?.master = Some(bridge.to_string());
        Ok(())
    }

    fn set_up(&mut self, name: &str) -> Result<()> {
        self.record(format!("set_up {name}"))?;
        self.require(name)?.up = true;
        Ok(())
    }

    fn delete_link(&mut self, name: &str) -> Result<()> {
        if self.link_index(name)?.is_none() {
            return Ok(());
        }
        self.record(format!("delete_link {name}"))?;
        let ns = self.ns.clone();
        self.state.drop_link(ns.as_deref(), name);
        Ok(())
    }

    fn add_address(&mut self, link: &str, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        self.record(format!("add_address {link} {ip}/{prefix_len}"))?;
        self.require(link)?;
        let space = self.space()?;
        space.addresses.retain(|(l, a, _)| !(l == link && *a == ip));
        space.addresses.push((link.to_string(), ip, prefix_len));
        Ok(())
    }

    fn addresses(&mut self) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let space = self.space()?;
        Ok(space
            .addresses
            .iter()
            .filter_map(|(l, ip, p)| Some((space.links.get(l)?.index, *ip, *p)))
            .collect())
    }

    fn add_route(
        &mut self,
        dst: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
        link: Option<&str>,
    ) -> Result<()> {
        self.record(format!("add_route {dst}/{prefix_len} via {gateway:?}"))?;
        if let Some(l) = link {
            self.require(l)?;
        }
        let space = self.space()?;
        space
            .routes
            .retain(|r| !(r.dst == dst && r.prefix_len == prefix_len));
        space.routes.push(FakeRoute {
            dst,
            prefix_len,
            gateway,
            link: link.map(str::to_string),
        });
        Ok(())
    }

    fn sysctl(&mut self, key: &str, value: &str) -> Result<()> {
        self.record(format!("sysctl {key}={value}"))?;
        // Per-link keys exist only while the link does.
        for prefix in ["net.ipv4.conf.", "net.ipv6.conf."] {
            if let Some(rest) = key.strip_prefix(prefix) {
                if let Some((link, _)) = rest.split_once('.') {
                    if !matches!(link, "all" | "default") && self.link_index(link)?.is_none() {
                        return Err(NetError::io(
                            format!("write /proc/sys/{}", key.replace('.', "/")),
                            std::io::Error::from(std::io::ErrorKind::NotFound),
                        ));
                    }
                }
            }
        }
        self.space()?
            .sysctls
            .insert(key.to_string(), value.to_string());
        Ok(())
    }

    fn add_vxlan(&mut self, name: &str, tunnel: &VxlanLink, netns: Option<&Path>) -> Result<()> {
        let target = netns.map(Path::to_path_buf).or_else(|| self.ns.clone());
        self.record(format!(
            "add_vxlan {name} vni {} local {} in {}",
            tunnel.vni,
            tunnel.local,
            ns_label(target.as_deref())
        ))?;
        let mut link = self.state.new_link(LinkKind::Vxlan, None, Some(tunnel.mtu));
        link.vxlan = Some((tunnel.clone(), self.ns.clone()));
        self.state.add_link(target.as_deref(), name, link)
    }

    fn neighbours(&mut self, link: &str) -> Result<Vec<(Ipv4Addr, [u8; 6])>> {
        self.require(link)?;
        Ok(self
            .space()?
            .neighbours
            .iter()
            .filter(|((l, _), _)| l == link)
            .map(|((_, ip), mac)| (*ip, *mac))
            .collect())
    }

    fn set_neighbour(&mut self, link: &str, ip: Ipv4Addr, mac: Option<[u8; 6]>) -> Result<()> {
        self.record(format!(
            "set_neighbour {link} {ip} {}",
            mac.map(format_mac).unwrap_or_else(|| "none".into())
        ))?;
        self.require(link)?;
        let key = (link.to_string(), ip);
        let space = self.space()?;
        match mac {
            Some(m) => space.neighbours.insert(key, m),
            None => space.neighbours.remove(&key),
        };
        Ok(())
    }

    fn fdb_remotes(&mut self, link: &str) -> Result<Vec<([u8; 6], Ipv4Addr)>> {
        self.require(link)?;
        Ok(self
            .space()?
            .fdb
            .iter()
            .filter(|((l, _), _)| l == link)
            .map(|((_, mac), ip)| (*mac, *ip))
            .collect())
    }

    fn set_fdb(&mut self, link: &str, mac: [u8; 6], remote: Option<Ipv4Addr>) -> Result<()> {
        self.record(format!("set_fdb {link} {} {remote:?}", format_mac(mac)))?;
        if self.require(link)?.kind != LinkKind::Vxlan {
            return Err(NetError::Netlink {
                what: format!("forwarding entry on {link}"),
                message: "Operation not supported (os error 95)".into(),
            });
        }
        let key = (link.to_string(), mac);
        let space = self.space()?;
        match remote {
            Some(ip) => space.fdb.insert(key, ip),
            None => space.fdb.remove(&key),
        };
        Ok(())
    }
}

impl Netns for FakeHost {
    fn create(&self, path: &Path) -> Result<bool> {
        let mut s = self.state();
        s.record(None, format!("create_netns {}", path.display()))?;
        if s.namespaces.contains_key(path) {
            return Ok(false);
        }
        s.namespaces
            .insert(path.to_path_buf(), FakeNamespace::default());
        Ok(true)
    }

    fn remove(&self, path: &Path) -> Result<()> {
        let mut s = self.state();
        s.record(None, format!("remove_netns {}", path.display()))?;
        let Some(space) = s.namespaces.remove(path) else {
            return Ok(());
        };
        // Its veths' other ends go with it.
        for link in space.links.into_values() {
            if let Some((peer_ns, peer)) = link.peer {
                s.drop_link(peer_ns.as_deref(), &peer);
            }
        }
        s.flows.remove(&Some(path.to_path_buf()));
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        self.state().namespaces.contains_key(path)
    }

    fn with_links(&self, path: Option<&Path>, work: &mut LinksWork<'_>) -> Result<()> {
        let mut s = self.state();
        s.namespace_mut(path)?;
        let mut links = FakeLinks {
            state: &mut s,
            ns: path.map(Path::to_path_buf),
        };
        work(&mut links)
    }
}

impl Firewall for FakeHost {
    fn apply(&self, netns: Option<&Path>, script: &str) -> Result<()> {
        let mut s = self.state();
        let first = script.lines().next().unwrap_or_default().to_string();
        if let Err(e) = s.record(netns, format!("nft apply {first}")) {
            return Err(NetError::Nft(format!("the ruleset was rejected: {e}")));
        }
        s.namespace_mut(netns)?;
        s.applied.push(Applied {
            netns: netns.map(Path::to_path_buf),
            script: script.to_string(),
        });
        Ok(())
    }

    fn delete_table(&self, family: &str, table: &str) -> Result<()> {
        let mut s = self.state();
        s.record(None, format!("nft delete table {family} {table}"))?;
        s.deleted_tables
            .push((family.to_string(), table.to_string()));
        Ok(())
    }
}

impl Conntrack for FakeHost {
    fn flows(&self, netns: Option<&Path>) -> Result<Vec<Flow>> {
        let mut s = self.state();
        s.record(netns, "conntrack list".into())?;
        s.namespace_mut(netns)?;
        Ok(s.flows
            .get(&netns.map(Path::to_path_buf))
            .cloned()
            .unwrap_or_default())
    }

    fn remove_flows(
        &self,
        netns: Option<&Path>,
        matches: &(dyn Fn(&Flow) -> bool + Sync),
    ) -> Result<usize> {
        let mut s = self.state();
        s.record(netns, "conntrack remove".into())?;
        s.namespace_mut(netns)?;
        let key = netns.map(Path::to_path_buf);
        let flows = s.flows.remove(&key).unwrap_or_default();
        let (gone, kept): (Vec<Flow>, Vec<Flow>) = flows.into_iter().partition(|f| matches(f));
        s.flows.insert(key.clone(), kept);
        let n = gone.len();
        s.removed_flows
            .extend(gone.into_iter().map(|f| (key.clone(), f)));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::in_netns;

    #[test]
    fn a_veth_end_goes_with_its_namespace_and_its_peer() {
        let host = FakeHost::new();
        let ns = PathBuf::from("/run/test/a");
        host.create(&ns).unwrap();
        in_netns(&host, None, |l| {
            l.add_veth("nbx", "uplink", Some(&ns), None, None)
        })
        .unwrap();
        assert!(host.state().host.link("nbx").is_some());
        assert!(host.state().namespaces[&ns].link("uplink").is_some());
        let again = in_netns(&host, None, |l| {
            l.add_veth("nbx", "uplink", Some(&ns), None, None)
        });
        assert!(again.is_err(), "a taken name is refused");
        host.remove(&ns).unwrap();
        assert!(host.state().host.link("nbx").is_none());
        assert!(in_netns(&host, Some(&ns), |l| l.links()).is_err());
    }

    #[test]
    fn per_link_sysctls_need_the_link_and_failures_are_injected() {
        let host = FakeHost::new();
        let err = in_netns(&host, None, |l| {
            l.sysctl("net.ipv4.conf.nbmissing.forwarding", "1")
        });
        assert!(err.is_err());
        host.state().fail_on.push("set_up lo".into());
        assert!(in_netns(&host, None, |l| l.set_up("lo")).is_err());
        assert_eq!(host.state().calls_with("set_up lo").len(), 1);
    }
}
