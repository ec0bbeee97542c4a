//! Networks that span hosts: this host's side of the VXLAN overlay.
//!
//! An agent with an underlay address (`--tunnel-address`, or the address
//! its route to the servers leaves from) asks the server, every second,
//! for the *peers* of its networks: instances on other hosts of the
//! networks it has instances of, with the network's VNI and their host's
//! underlay address (`GET /v1/hosts/{host}/network-peers`). Each router
//! then gets a VXLAN device with exactly those forwarding and neighbour
//! entries (`nimbus_net::vxlan`), its rules treat the device as the port of
//! exactly those instances, its DNS answers their names and its security
//! groups count them as members. A router with no peer has no device, so
//! one host alone (`nimbus up`, no underlay) never makes one.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use nimbus_api::NetworkPeer;
use nimbus_net::host::Dataplane;
use nimbus_net::netlink::parse_mac;
use nimbus_net::rules::PortRules;
use nimbus_net::vxlan::{self, RemotePort, Underlay};
use nimbus_net::{names, router};

use super::network::{blocking, NetDriver};
use super::Agent;

/// The pause before asking again after a failure, or after an answer from
/// a server that cannot wait for changes.
const POLL_MS: u64 = 1000;
/// How long one request waits for the peers to change.
const WAIT_SECONDS: u64 = 25;

/// What a router's VXLAN device was last given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Applied {
    vni: u32,
    remotes: Vec<RemotePort>,
}

/// The MTU of instance ports: the underlay's 1500 bytes minus VXLAN's
/// overhead when the host has an underlay (its networks may span hosts),
/// else the full 1500.
pub(super) fn port_mtu(underlay: Option<Underlay>) -> u32 {
    match underlay {
        Some(_) => router::DEFAULT_MTU - vxlan::OVERHEAD,
        None => router::DEFAULT_MTU,
    }
}

fn of_network<'a>(
    peers: &'a [NetworkPeer],
    network_id: &'a str,
) -> impl Iterator<Item = &'a NetworkPeer> + 'a {
    peers.iter().filter(move |p| p.network_id == network_id)
}

/// The remote ports of a network, for its device's entries. A peer whose
/// MAC cannot be read is left out (with a log line): it stays unreachable.
pub(super) fn remote_ports(peers: &[NetworkPeer], network_id: &str) -> Vec<RemotePort> {
    let mut out: Vec<RemotePort> = of_network(peers, network_id)
        .filter_map(|p| match parse_mac(&p.mac) {
            Ok(mac) => Some(RemotePort {
                ip: p.ip,
                mac,
                host: p.tunnel_address,
            }),
            Err(e) => {
                tracing::warn!(instance = %p.instance, host = %p.host, error = %e, "a remote instance's MAC is unreadable; it stays unreachable");
                None
            }
        })
        .collect();
    out.sort();
    out
}

/// The device as the port of the network's remote instances: their MACs
/// and addresses are its own in the bridge rules; their ingress is
/// filtered by their own host.
pub(super) fn remote_port_rules(peers: &[NetworkPeer], network_id: &str) -> Vec<PortRules> {
    of_network(peers, network_id)
        .map(|p| PortRules {
            link: names::VXLAN.to_string(),
            ip: p.ip,
            mac: p.mac.clone(),
            dhcp: false,
            ingress: None,
        })
        .collect()
}

/// Names of a network's remote instances, for its DNS.
pub(super) fn remote_names(peers: &[NetworkPeer], network_id: &str) -> Vec<(String, Ipv4Addr)> {
    of_network(peers, network_id)
        .map(|p| (p.instance.to_ascii_lowercase(), p.ip))
        .collect()
}

/// Add the network's remote instances to the member sets of the groups
/// they belong to.
pub(super) fn add_remote_members(
    groups: &mut BTreeMap<String, Vec<Ipv4Addr>>,
    peers: &[NetworkPeer],
    network_id: &str,
) {
    for p in of_network(peers, network_id) {
        for g in &p.secgroups {
            if let Some(list) = groups.get_mut(g) {
                list.push(p.ip);
            }
        }
    }
}

/// Bring one router's VXLAN device to the peers: made (and its entries
/// set) when the network has instances on other hosts, removed when it
/// has none. `applied`: what it was given last (`None`: unknown, after a
/// restart; the kernel's entries are then read and corrected).
pub(super) async fn sync_router(
    dataplane: &Dataplane,
    underlay: Underlay,
    router_ns: std::path::PathBuf,
    network_id: &str,
    peers: &[NetworkPeer],
    applied: &mut Option<Option<Applied>>,
) -> nimbus_net::Result<()> {
    let remotes = remote_ports(peers, network_id);
    let want = of_network(peers, network_id).next().map(|p| Applied {
        vni: p.vni,
        remotes: remotes.clone(),
    });
    if applied.as_ref() == Some(&want) {
        return Ok(());
    }
    let netns = dataplane.netns.clone();
    let to_make = want.clone();
    blocking(move || match to_make {
        None => vxlan::remove_tunnel(&*netns, &router_ns),
        Some(a) => {
            let link = underlay.link(a.vni, port_mtu(Some(underlay)));
            vxlan::ensure_tunnel(&*netns, &router_ns, &link)?;
            vxlan::sync_remotes(&*netns, &router_ns, &a.remotes).map(|_| ())
        }
    })
    .await?;
    *applied = Some(want);
    Ok(())
}

/// Keep the peers of this host's networks in the driver: each request
/// names the list the agent has and waits on the server until it changes
/// (see the server's `api::network_peers`); a change wakes the sync.
pub(super) fn spawn_peer_poll(agent: Arc<Agent>, net: Arc<NetDriver>) {
    let base = format!("/v1/hosts/{}/network-peers", agent.config.host_name);
    tokio::spawn(async move {
        let mut version = String::new();
        loop {
            let path = match version.as_str() {
                "" => base.clone(),
                v => format!("{base}?after={v}&wait={WAIT_SECONDS}"),
            };
            match agent.client.get::<nimbus_api::NetworkPeers>(&path).await {
                Ok(p) => {
                    let waited = !p.version.is_empty();
                    version = p.version;
                    net.set_peers(p.items);
                    if waited {
                        continue;
                    }
                }
                Err(e) => {
                    version.clear();
                    tracing::debug!(error = %e, "reading the peers of this host's networks failed; retrying")
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(POLL_MS)).await;
        }
    });
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An instance of network `net` on host `h2` (192.168.1.2), VNI 7000.
    pub(in crate::agent) fn peer(net: &str, name: &str, last: u8, groups: &[&str]) -> NetworkPeer {
        NetworkPeer {
            project: "p".into(),
            network: "n".into(),
            network_id: net.into(),
            vni: 7000,
            instance: name.into(),
            secgroups: groups.iter().map(|g| g.to_string()).collect(),
            ip: Ipv4Addr::new(10, 20, 0, last),
            mac: format!("02:00:00:00:00:{last:02x}"),
            host: "h2".into(),
            tunnel_address: Ipv4Addr::new(192, 168, 1, 2),
            tunnel_port: vxlan::DEFAULT_PORT,
        }
    }

    #[test]
    fn peers_become_ports_names_and_members_of_their_own_network_only() {
        let peers = [
            peer("blue", "Db", 6, &["data"]),
            peer("green", "other", 7, &["data"]),
        ];
        let rules = remote_port_rules(&peers, "blue");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].link, names::VXLAN);
        assert_eq!(rules[0].ingress, None, "filtered by its own host");
        assert_eq!(
            remote_names(&peers, "blue"),
            vec![("db".to_string(), Ipv4Addr::new(10, 20, 0, 6))]
        );
        let mut groups = BTreeMap::from([("data".to_string(), vec![])]);
        add_remote_members(&mut groups, &peers, "blue");
        assert_eq!(groups["data"], vec![Ipv4Addr::new(10, 20, 0, 6)]);
        let ports = remote_ports(&peers, "blue");
        assert_eq!(ports[0].host, Ipv4Addr::new(192, 168, 1, 2));
        assert!(remote_ports(&peers, "red").is_empty());
    }

    #[test]
    fn the_mtu_leaves_room_for_vxlan_only_with_an_underlay() {
        assert_eq!(port_mtu(None), 1500);
        let u = Underlay {
            address: Ipv4Addr::new(192, 168, 1, 1),
            port: vxlan::DEFAULT_PORT,
        };
        assert_eq!(port_mtu(Some(u)), 1450);
    }
}
