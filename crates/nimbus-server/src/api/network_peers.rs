//! What a host agent needs to carry its networks to other hosts over
//! VXLAN: every instance, on another host, of a network that has an
//! instance on this one, with the network's VNI and that host's underlay
//! address. Only the host's own agent (or a system administrator) may ask,
//! and it learns nothing of networks it does not serve.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use nimbus_api::{Host, Instance, Network, NetworkPeer, NetworkPeers};

use super::hosts::require_own_host;
use super::params::HostPath;
use super::St;
use crate::auth::Caller;
use crate::error::ApiResult;

/// Page size for reading the collections.
const PAGE: usize = 1000;

#[utoipa::path(get, path = "/v1/hosts/{host}/network-peers", operation_id = "list_network_peers", params(HostPath),
    responses((status = 200, body = NetworkPeers, description = "Instances on other hosts of the networks this host serves, with their hosts' tunnel addresses")))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(host): Path<String>,
) -> ApiResult<Json<NetworkPeers>> {
    require_own_host(&caller, &host)?;
    let instances = state.repo.list_every::<Instance>(None, PAGE).await?;
    let hosts = state.repo.list_every::<Host>(None, PAGE).await?;
    let networks = state.repo.list_every::<Network>(None, PAGE).await?;
    Ok(Json(peers(&host, &instances, &hosts, &networks)))
}

/// The peers of `host`: instances elsewhere on networks it has instances
/// of, on hosts that have a tunnel address, on networks that have a VNI.
pub fn peers(
    host: &str,
    instances: &[Instance],
    hosts: &[Host],
    networks: &[Network],
) -> NetworkPeers {
    let served: std::collections::HashSet<&str> = instances
        .iter()
        .filter(|i| i.status.host.as_deref() == Some(host))
        .flat_map(|i| i.status.addresses.iter().map(|a| a.network_id.as_str()))
        .collect();
    let tunnels: HashMap<&str, (std::net::Ipv4Addr, u16)> = hosts
        .iter()
        .filter_map(|h| {
            let addr = h.status.tunnel_address?;
            let port = h.status.tunnel_port.unwrap_or(DEFAULT_TUNNEL_PORT);
            Some((h.metadata.name.as_str(), (addr, port)))
        })
        .collect();
    let vnis: HashMap<&str, u32> = networks
        .iter()
        .filter_map(|n| Some((n.metadata.id.as_str(), n.status.vni?)))
        .collect();
    let mut items = Vec::new();
    for i in instances {
        let Some(on) = i.status.host.as_deref().filter(|h| *h != host) else {
            continue;
        };
        let Some((tunnel_address, tunnel_port)) = tunnels.get(on).copied() else {
            continue;
        };
        for a in &i.status.addresses {
            let Some(vni) = vnis.get(a.network_id.as_str()).copied() else {
                continue;
            };
            if !served.contains(a.network_id.as_str()) {
                continue;
            }
            items.push(NetworkPeer {
                project: i.metadata.project.clone().unwrap_or_default(),
                network: a.network.clone(),
                network_id: a.network_id.clone(),
                vni,
                instance: i.metadata.name.clone(),
                secgroups: i.spec.secgroups.clone(),
                ip: a.ip,
                mac: a.mac.clone(),
                host: on.to_string(),
                tunnel_address,
                tunnel_port,
            });
        }
    }
    items.sort_by(|a, b| (&a.network_id, a.ip).cmp(&(&b.network_id, b.ip)));
    NetworkPeers { items }
}

/// The IANA VXLAN port, for hosts that do not say.
pub const DEFAULT_TUNNEL_PORT: u16 = 4789;

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::{InstanceAddress, Metadata};

    fn host(name: &str, tunnel: Option<[u8; 4]>) -> Host {
        let mut h: Host = serde_json::from_value(serde_json::json!({
            "metadata": Metadata::new(name, None),
            "spec": {},
        }))
        .unwrap();
        h.status.tunnel_address = tunnel.map(std::net::Ipv4Addr::from);
        h
    }

    fn network(project: &str, id: &str, vni: Option<u32>) -> Network {
        let mut n: Network = serde_json::from_value(serde_json::json!({
            "metadata": Metadata::new("net", Some(project)),
            "spec": {"subnet": "10.0.0.0/24"},
        }))
        .unwrap();
        n.metadata.id = id.into();
        n.status.vni = vni;
        n
    }

    fn instance(project: &str, name: &str, on: &str, net: &str, last: u8) -> Instance {
        let mut i: Instance = serde_json::from_value(serde_json::json!({
            "metadata": Metadata::new(name, Some(project)),
            "spec": {"image": "x"},
        }))
        .unwrap();
        i.status.host = Some(on.into());
        i.status.addresses = vec![InstanceAddress {
            network: "net".into(),
            network_id: net.into(),
            ip: std::net::Ipv4Addr::new(10, 0, 0, last),
            prefix_len: 24,
            gateway: std::net::Ipv4Addr::new(10, 0, 0, 1),
            mac: format!("02:00:00:00:00:{last:02x}"),
        }];
        i
    }

    #[test]
    fn a_host_sees_only_remote_instances_of_networks_it_serves() {
        let hosts = [
            host("h1", Some([192, 168, 0, 1])),
            host("h2", Some([192, 168, 0, 2])),
            host("h3", None),
        ];
        let networks = [
            network("a", "blue", Some(5000)),
            network("b", "green", Some(6000)),
            network("a", "old", None),
        ];
        let instances = [
            instance("a", "web", "h1", "blue", 5),
            instance("a", "db", "h2", "blue", 6),
            // h1 serves no green instance: green's are none of its business.
            instance("b", "other", "h2", "green", 6),
            // A host without a tunnel address cannot be reached.
            instance("a", "lonely", "h3", "blue", 7),
            instance("a", "legacy", "h2", "old", 8),
            instance("a", "legacy-here", "h1", "old", 9),
        ];
        let p = peers("h1", &instances, &hosts, &networks);
        assert_eq!(p.items.len(), 1, "{:?}", p.items);
        let db = &p.items[0];
        assert_eq!((db.instance.as_str(), db.vni), ("db", 5000));
        assert_eq!(db.tunnel_address, std::net::Ipv4Addr::new(192, 168, 0, 2));
        assert_eq!(db.tunnel_port, DEFAULT_TUNNEL_PORT);
        let p2 = peers("h2", &instances, &hosts, &networks);
        let names: Vec<&str> = p2.items.iter().map(|p| p.instance.as_str()).collect();
        assert_eq!(names, vec!["web"]);
    }
}
