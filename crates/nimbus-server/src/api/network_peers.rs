//! What a host agent needs to carry its networks to other hosts over
//! VXLAN: every instance, on another host, of a network that has an
//! instance on this one, with the network's VNI and that host's underlay
//! address. Only the host's own agent (or a system administrator) may ask,
//! and it learns nothing of networks it does not serve.
//!
//! An agent asks with the `version` of the list it has and a `wait`: the
//! answer comes when the list differs, or when the wait ends. Meanwhile the
//! request watches the store for changes that can alter a list (an
//! instance's host, addresses or groups, a host's tunnel, a network's VNI;
//! not heartbeats), and the servers read the collections once per change
//! for every agent waiting on them ([`Snapshots`]). An idle cluster then
//! costs no reads, and a change reaches the agents at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use nimbus_api::{Host, Instance, Network, NetworkPeer, NetworkPeers};
use nimbus_store::{Event, EventKind, Revision, Store};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::Receiver;

use super::hosts::require_own_host;
use super::params::HostPath;
use super::St;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::repo::{prefix, Repo};

/// Page size for reading the collections.
const PAGE: usize = 1000;
/// The longest `wait` a request may ask for.
pub const MAX_WAIT_SECONDS: u64 = 60;
/// After a change, the time allowed for the changes that come with it (an
/// instance's create, address and placement) before the list is read again.
const SETTLE: Duration = Duration::from_millis(50);

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeersQuery {
    /// The `version` of the list the caller has: with `wait`, the answer
    /// comes when the list differs from it.
    pub after: Option<String>,
    /// Seconds to wait for a change (at most 60; default 0: answer now).
    pub wait: Option<u64>,
}

#[utoipa::path(get, path = "/v1/hosts/{host}/network-peers", operation_id = "list_network_peers", params(HostPath, PeersQuery),
    responses((status = 200, body = NetworkPeers, description = "Instances on other hosts of the networks this host serves, with their hosts' tunnel addresses")))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(host): Path<String>,
    Query(q): Query<PeersQuery>,
) -> ApiResult<Json<NetworkPeers>> {
    require_own_host(&caller, &host)?;
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECONDS));
    let deadline = tokio::time::Instant::now() + wait;
    let store = &state.repo.store;
    // Watching from before the read: a change between the two is seen
    // twice (a needless read), never missed.
    let from = store.current_revision().await?;
    let mut changes = match (&q.after, wait.is_zero()) {
        (Some(_), false) => Some(Changes::open(store.as_ref(), from).await?),
        _ => None,
    };
    let mut at_least = from;
    loop {
        let snapshot = state.peer_snapshots.at_least(&state.repo, at_least).await?;
        let now = snapshot.peers(&host);
        let Some(waiting) = changes
            .as_mut()
            .filter(|_| q.after.as_ref() == Some(&now.version))
        else {
            return Ok(Json(now));
        };
        match tokio::time::timeout_at(deadline, waiting.next_relevant()).await {
            Err(_) => return Ok(Json(now)),
            // The watch ended (the store closed it): answer with what is known.
            Ok(None) => return Ok(Json(now)),
            Ok(Some(revision)) => {
                tokio::time::sleep(SETTLE).await;
                at_least = revision;
            }
        }
    }
}

/// The collections a peer list is made of, read at one time.
pub struct Snapshot {
    /// The store's revision before the reads began: every change up to it
    /// is in the lists.
    revision: Revision,
    instances: Vec<Instance>,
    hosts: Vec<Host>,
    networks: Vec<Network>,
}

impl Snapshot {
    fn peers(&self, host: &str) -> NetworkPeers {
        peers(host, &self.instances, &self.hosts, &self.networks)
    }
}

/// The latest [`Snapshot`], shared by every request: agents woken by the
/// same change read the collections once between them.
#[derive(Default)]
pub struct Snapshots {
    latest: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
}

impl Snapshots {
    /// A snapshot holding every change up to `revision`.
    async fn at_least(&self, repo: &Repo, revision: Revision) -> ApiResult<Arc<Snapshot>> {
        let mut latest = self.latest.lock().await;
        if let Some(s) = latest.as_ref().filter(|s| s.revision >= revision) {
            return Ok(s.clone());
        }
        let revision = repo.store.current_revision().await?;
        let fresh = Arc::new(Snapshot {
            revision,
            instances: repo.list_every::<Instance>(None, PAGE).await?,
            hosts: repo.list_every::<Host>(None, PAGE).await?,
            networks: repo.list_every::<Network>(None, PAGE).await?,
        });
        *latest = Some(fresh.clone());
        Ok(fresh)
    }
}

/// Watches of the three collections, after one revision.
struct Changes {
    watches: Vec<Receiver<nimbus_store::Result<Event>>>,
}

impl Changes {
    async fn open(store: &dyn Store, after: Revision) -> ApiResult<Changes> {
        let mut watches = Vec::new();
        for p in [
            prefix::<Instance>(None),
            prefix::<Host>(None),
            prefix::<Network>(None),
        ] {
            watches.push(store.watch(&p, after).await?);
        }
        Ok(Changes { watches })
    }

    /// The revision of the next change that can alter a peer list; `None`
    /// when a watch ends or fails.
    async fn next_relevant(&mut self) -> Option<Revision> {
        loop {
            let pending = self.watches.iter_mut().map(|w| Box::pin(w.recv()));
            let (event, _, _) = futures::future::select_all(pending).await;
            let event = event?.ok()?;
            if alters_peers(&event) {
                return Some(event.kv.mod_revision);
            }
        }
    }
}

/// Whether a change to an instance, host or network can change what
/// [`peers`] gives: creations and deletions, and the fields it reads. A
/// heartbeat (a host's status, its tunnel unchanged) cannot.
fn alters_peers(event: &Event) -> bool {
    let (Some(prev), EventKind::Put) = (&event.prev, &event.kind) else {
        return true;
    };
    let (before, after) = (&prev.value, &event.kv.value);
    let key = event.kv.key.as_str();
    if key.starts_with(&prefix::<Instance>(None)) {
        fields::<Instance, _>(before, after, |i| {
            (
                i.status.host.clone(),
                i.status.addresses.clone(),
                i.spec.secgroups.clone(),
            )
        })
    } else if key.starts_with(&prefix::<Host>(None)) {
        fields::<Host, _>(before, after, |h| {
            (h.status.tunnel_address, h.status.tunnel_port)
        })
    } else {
        fields::<Network, _>(before, after, |n| n.status.vni)
    }
}

/// Whether `pick` differs between two stored values (true when either
/// does not decode: better a needless read than a missed change).
fn fields<T: serde::de::DeserializeOwned, F: PartialEq>(
    before: &[u8],
    after: &[u8],
    pick: impl Fn(&T) -> F,
) -> bool {
    match (
        serde_json::from_slice::<T>(before),
        serde_json::from_slice::<T>(after),
    ) {
        (Ok(b), Ok(a)) => pick(&b) != pick(&a),
        _ => true,
    }
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
    let version = version_of(&items);
    NetworkPeers { items, version }
}

/// A digest of the list, so equal lists have equal versions on every
/// server.
fn version_of(items: &[NetworkPeer]) -> String {
    let bytes = serde_json::to_vec(items).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
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

    fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    fn put(key: &str, before: Option<Vec<u8>>, after: Vec<u8>) -> Event {
        let kv = |value: Vec<u8>| nimbus_store::KeyValue {
            key: key.to_string(),
            value,
            create_revision: 1,
            mod_revision: 2,
        };
        Event {
            kind: EventKind::Put,
            kv: kv(after),
            prev: before.map(kv),
        }
    }

    #[test]
    fn heartbeats_and_state_changes_wake_no_agent_but_what_peers_read_does() {
        let h = host("h2", Some([192, 168, 0, 2]));
        let mut beat = h.clone();
        beat.status.last_heartbeat = Some(chrono::Utc::now());
        beat.status.disk_available_bytes = 77;
        assert!(!alters_peers(&put(
            "/hosts/h2",
            Some(json(&h)),
            json(&beat)
        )));
        let mut moved = h.clone();
        moved.status.tunnel_address = Some(std::net::Ipv4Addr::new(192, 168, 0, 9));
        assert!(alters_peers(&put(
            "/hosts/h2",
            Some(json(&h)),
            json(&moved)
        )));
        // A new host, and anything that does not decode, count as changes.
        assert!(alters_peers(&put("/hosts/h2", None, json(&h))));
        assert!(alters_peers(&put(
            "/hosts/h2",
            Some(b"{".to_vec()),
            json(&h)
        )));

        let i = instance("a", "db", "h2", "blue", 6);
        let mut running = i.clone();
        running.status.pid = Some(42);
        assert!(!alters_peers(&put(
            "/instances/a/db",
            Some(json(&i)),
            json(&running)
        )));
        let mut elsewhere = i.clone();
        elsewhere.status.host = Some("h3".into());
        assert!(alters_peers(&put(
            "/instances/a/db",
            Some(json(&i)),
            json(&elsewhere)
        )));
        let mut grouped = i.clone();
        grouped.spec.secgroups = vec!["web".into()];
        assert!(alters_peers(&put(
            "/instances/a/db",
            Some(json(&i)),
            json(&grouped)
        )));

        let n = network("a", "blue", None);
        let mut spanning = n.clone();
        spanning.status.vni = Some(5000);
        assert!(alters_peers(&put(
            "/networks/a/net",
            Some(json(&n)),
            json(&spanning)
        )));
        let mut deleted = put("/networks/a/net", Some(json(&n)), json(&n));
        deleted.kind = EventKind::Delete;
        assert!(alters_peers(&deleted));
    }

    #[test]
    fn equal_lists_have_equal_versions_and_any_change_shows() {
        let hosts = [
            host("h1", Some([192, 168, 0, 1])),
            host("h2", Some([192, 168, 0, 2])),
        ];
        let networks = [network("a", "blue", Some(5000))];
        let mut instances = vec![
            instance("a", "web", "h1", "blue", 5),
            instance("a", "db", "h2", "blue", 6),
        ];
        let first = peers("h1", &instances, &hosts, &networks);
        assert_eq!(
            first.version,
            peers("h1", &instances, &hosts, &networks).version
        );
        assert_eq!(first.version.len(), 24);
        instances[1].spec.secgroups = vec!["db".into()];
        assert_ne!(
            first.version,
            peers("h1", &instances, &hosts, &networks).version
        );
    }
}
