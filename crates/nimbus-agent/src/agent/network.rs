//! The agent's network driver: makes the networks of this host's instances
//! real with `nimbus-net` and keeps their rules in step with the store.
//!
//! What it made is recorded under `<data>/net/` (`routers/<network id>`,
//! `ports/<instance id>`), so a restarted agent adopts running instances'
//! ports without touching them and removes what no instance needs any more.
//! One sync pass (serialised by the `routers` lock) renders every router's
//! table and the host table and applies those that changed, each as one
//! nftables transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use nimbus_api::client::ClientError;
use nimbus_api::resources::Object;
use nimbus_api::{
    Instance, InstanceAddress, Network, NetworkPeer, Protocol, PublishedPort, PublishedPortStatus,
    ResourceList, SecurityGroup, WatchEvent, WatchEventType,
};
use nimbus_net::host::{self, Dataplane};
use nimbus_net::listeners::{self, Transport};
use nimbus_net::rules::{self, AllowRule, Forward, HostForward, Ingress, PortRules, RouterRules};
use nimbus_net::vxlan::Underlay;
use nimbus_net::{dns, flows, names, router, HostSide, NetError, PortSpec, RouterSpec};
use serde::{Deserialize, Serialize};

use super::{tunnel, Agent};

/// What giving an instance its network can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network {network:?} of project {project:?} could not be read from the server: {source}; check it exists (`nimbus network ls`) and the agent can reach the server")]
    Lookup {
        project: String,
        network: String,
        #[source]
        source: ClientError,
    },
    #[error("setting up the router of network {network:?}: {source}")]
    Router {
        network: String,
        #[source]
        source: NetError,
    },
    #[error("attaching to network {network:?}: {source}")]
    Attach {
        network: String,
        #[source]
        source: NetError,
    },
    #[error("the rules of network {network:?} could not be applied (see the agent log; is the nftables package installed?)")]
    RulesNotApplied { network: String },
    #[error("recording {what} in {}: {source}; check the agent's data directory is writable", path.display())]
    Record {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing resolver files in {}: {source}", dir.display())]
    ResolverFiles {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching {path} on the server: {source}")]
    Watch {
        path: String,
        #[source]
        source: ClientError,
    },
}

/// The instance drivers report errors as text.
/// What a container needs from its network: its namespace and the files
/// that point its resolver at the network's DNS.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub netns: PathBuf,
    pub resolv_conf: PathBuf,
    pub hosts_file: PathBuf,
}

/// A VM's network: where its tap is (for the VM shim to open) and its
/// address settings.
#[derive(Debug)]
pub struct VmAttachment {
    pub router_netns: PathBuf,
    pub tap_name: String,
    pub config: nimbus_net::tap::VmNetConfig,
}

type HostState = (Vec<String>, Vec<HostForward>);

/// A port this agent made, as recorded in `<data>/net/ports/<instance id>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PortRecord {
    network_id: String,
    project: String,
    link: String,
    ip: Ipv4Addr,
    mac: String,
    vm: bool,
}

struct RouterState {
    project: String,
    network: String,
    host: HostSide,
    subnet: String,
    gateway: Ipv4Addr,
    names: dns::Names,
    _dns: Option<dns::DnsServer>,
    /// DHCP for VM ports, started with the first one.
    leases: nimbus_net::dhcp::Leases,
    dhcp: Option<nimbus_net::dhcp::DhcpServer>,
    /// The rules last applied by this process (`None`: unknown).
    applied: Option<RouterRules>,
    /// What its VXLAN device was given last (`None`: unknown; `Some(None)`:
    /// no device).
    tunnel: Option<Option<tunnel::Applied>>,
}

#[derive(Default)]
struct Known {
    networks: HashMap<String, Network>,
    secgroups: HashMap<String, SecurityGroup>,
    published: HashMap<String, PublishedPort>,
    instances: HashMap<String, Instance>,
    /// Instances of this host's networks on other hosts (see `tunnel`).
    peers: Vec<NetworkPeer>,
}

fn pkey(project: &Option<String>, name: &str) -> String {
    format!("{}/{name}", project.as_deref().unwrap_or_default())
}

pub struct NetDriver {
    dir: PathBuf,
    /// Links, nftables and conntrack: the kernel's, or a test double.
    host: Dataplane,
    /// The agent's own table in the host namespace.
    pub host_table: String,
    known: std::sync::Mutex<Known>,
    routers: tokio::sync::Mutex<HashMap<String, RouterState>>,
    ports: std::sync::Mutex<HashMap<String, PortRecord>>,
    /// `None`: unknown; `Some(None)`: no table; else what was applied.
    host_applied: std::sync::Mutex<Option<Option<HostState>>>,
    /// Host TCP ports Nimbus's own listeners use here: never forwarded.
    reserved_tcp_ports: Vec<u16>,
    /// Published ports left out of the host table, and why (logged once).
    skipped_forwards: std::sync::Mutex<BTreeMap<HostForward, String>>,
    /// What was last reported of each published port (by its id): whether
    /// it is forwarded and why not. The watch echoes a report a moment
    /// later; this keeps a sync in between from sending it again.
    reported_forwards: std::sync::Mutex<HashMap<String, (bool, Option<String>)>>,
    wake: tokio::sync::Notify,
    /// Where this host meets the others (`None`: networks stay here).
    underlay: Option<Underlay>,
}

/// A published port's forwarding, to report to the server.
struct ForwardingReport {
    project: String,
    name: String,
    id: String,
    status: PublishedPortStatus,
}

fn fnv(text: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    h
}

/// Host network work, on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> nimbus_net::Result<T> + Send + 'static,
) -> nimbus_net::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        NetError::Invalid(format!("host network work stopped before it finished: {e}"))
    })?
}

impl NetDriver {
    /// `reserved_tcp_ports`: host ports Nimbus itself listens on.
    pub fn new(data_dir: &Path, reserved_tcp_ports: Vec<u16>) -> NetDriver {
        NetDriver::with_dataplane(data_dir, reserved_tcp_ports, Dataplane::kernel())
    }

    /// A driver whose host effects go to `host`.
    pub fn with_dataplane(
        data_dir: &Path,
        reserved_tcp_ports: Vec<u16>,
        host: Dataplane,
    ) -> NetDriver {
        NetDriver {
            dir: data_dir.join("net"),
            host,
            host_table: format!("nimbus_{:08x}", fnv(&data_dir.to_string_lossy())),
            known: Default::default(),
            routers: Default::default(),
            ports: Default::default(),
            host_applied: Default::default(),
            reserved_tcp_ports,
            skipped_forwards: Default::default(),
            reported_forwards: Default::default(),
            wake: tokio::sync::Notify::new(),
            underlay: None,
        }
    }

    /// A driver whose networks may span hosts over `underlay`.
    pub fn with_tunnel(mut self, underlay: Option<Underlay>) -> NetDriver {
        self.underlay = underlay;
        self
    }

    /// The instances of this host's networks on other hosts, as the
    /// server last said; a change wakes the sync.
    pub fn set_peers(&self, mut peers: Vec<NetworkPeer>) {
        peers.sort_by(|a, b| (&a.network_id, a.ip).cmp(&(&b.network_id, b.ip)));
        if let Ok(mut k) = self.known.lock() {
            if k.peers == peers {
                return;
            }
            k.peers = peers;
        }
        self.wake.notify_one();
    }

    fn port_record_path(&self, instance_id: &str) -> PathBuf {
        self.dir.join("ports").join(instance_id)
    }

    fn router_record_path(&self, network_id: &str) -> PathBuf {
        self.dir.join("routers").join(network_id)
    }

    /// Ids of instances with a recorded port on this host.
    pub fn recorded_ports(&self) -> Vec<String> {
        self.ports
            .lock()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn observe_instance(&self, instance: &Instance) {
        if let Ok(mut k) = self.known.lock() {
            k.instances
                .insert(instance.metadata.id.clone(), instance.clone());
        }
        self.wake.notify_one();
    }

    pub fn forget_instance(&self, id: &str) {
        if let Ok(mut k) = self.known.lock() {
            k.instances.remove(id);
        }
        self.wake.notify_one();
    }

    /// Adopt what an earlier agent made: re-open routers that still have
    /// ports (restarting their DNS), remove the others, re-apply rules.
    pub async fn rebuild(&self) {
        let _ = std::fs::create_dir_all(self.dir.join("ports"));
        let _ = std::fs::create_dir_all(self.dir.join("routers"));
        let mut records = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("ports")) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().to_string();
                match std::fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<PortRecord>(&b).ok())
                {
                    Some(r) => {
                        records.insert(id, r);
                    }
                    None => {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        if let Ok(mut p) = self.ports.lock() {
            *p = records.clone();
        }
        let mut stale = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("routers")) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().to_string();
                if !records.values().any(|r| r.network_id == id) {
                    stale.push(id);
                }
            }
        }
        for id in stale {
            tracing::info!(network_id = %id, "removing a router no instance uses");
            let owned = id.clone();
            let netns = self.host.netns.clone();
            if let Err(e) = blocking(move || router::remove_router(&*netns, &owned)).await {
                tracing::warn!(network_id = %id, error = %e, "removing router failed");
            }
            let _ = std::fs::remove_file(self.router_record_path(&id));
        }
        self.wake.notify_one();
    }

    /// Find a network by project and name: from the watch, else the API.
    async fn network(
        &self,
        agent: &Agent,
        project: &str,
        name: &str,
    ) -> Result<Network, NetworkError> {
        let cached = self
            .known
            .lock()
            .ok()
            .and_then(|k| k.networks.get(&format!("{project}/{name}")).cloned());
        if let Some(n) = cached {
            return Ok(n);
        }
        let n: Network = agent
            .client
            .get(&format!("/v1/projects/{project}/networks/{name}"))
            .await
            .map_err(|source| NetworkError::Lookup {
                project: project.to_string(),
                network: name.to_string(),
                source,
            })?;
        if let Ok(mut k) = self.known.lock() {
            k.networks.insert(format!("{project}/{name}"), n.clone());
        }
        Ok(n)
    }

    async fn ensure_router(
        &self,
        routers: &mut HashMap<String, RouterState>,
        project: &str,
        net: &Network,
        addr: &InstanceAddress,
    ) -> Result<(), NetworkError> {
        let id = net.metadata.id.clone();
        if routers.contains_key(&id) {
            return Ok(());
        }
        let spec = RouterSpec {
            network_id: id.clone(),
            gateway: addr.gateway,
            prefix_len: addr.prefix_len,
        };
        let _ = std::fs::create_dir_all(self.dir.join("routers"));
        let record = self.router_record_path(&id);
        std::fs::write(&record, project).map_err(|source| NetworkError::Record {
            what: format!("the router of network {:?}", net.metadata.name),
            path: record,
            source,
        })?;
        let netns = self.host.netns.clone();
        let host = blocking(move || router::ensure_router(&*netns, &spec))
            .await
            .map_err(|source| NetworkError::Router {
                network: net.metadata.name.clone(),
                source,
            })?;
        let names: dns::Names = Default::default();
        let server = dns::start(
            &host.netns,
            addr.gateway,
            net.metadata.name.clone(),
            names.clone(),
            dns::host_upstream(),
        );
        let server = match server {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(network = %net.metadata.name, error = %e, "no DNS for the network");
                None
            }
        };
        routers.insert(
            id,
            RouterState {
                project: project.to_string(),
                network: net.metadata.name.clone(),
                host,
                subnet: net.spec.subnet.clone(),
                gateway: addr.gateway,
                names,
                _dns: server,
                leases: Default::default(),
                dhcp: None,
                applied: None,
                tunnel: None,
            },
        );
        Ok(())
    }

    /// What both kinds of attachment start with: the instance's address
    /// and network, its router (made if needed, and locked), the port to
    /// make, and its record (saved, so a crash from here on is cleaned up).
    /// `None` for an instance on no network.
    async fn open_port(
        &self,
        agent: &Agent,
        instance: &Instance,
        vm: bool,
    ) -> Result<Option<Opened<'_>>, NetworkError> {
        let Some(addr) = instance.status.addresses.first().cloned() else {
            return Ok(None);
        };
        let project = instance.metadata.project.clone().unwrap_or_default();
        let net = self.network(agent, &project, &addr.network).await?;
        let mut routers = self.routers.lock().await;
        self.ensure_router(&mut routers, &project, &net, &addr)
            .await?;
        let id = &instance.metadata.id;
        let port = PortSpec {
            instance_id: id.clone(),
            ip: addr.ip,
            prefix_len: addr.prefix_len,
            gateway: addr.gateway,
            mac: addr.mac.clone(),
            mtu: tunnel::port_mtu(self.underlay),
        };
        let record = PortRecord {
            network_id: net.metadata.id.clone(),
            project,
            link: if vm {
                names::tap_link(id)
            } else {
                names::port_link(id)
            },
            ip: addr.ip,
            mac: addr.mac.clone(),
            vm,
        };
        self.save_port(id, &record)?;
        Ok(Some(Opened {
            router_ns: names::router_netns(&net.metadata.id),
            addr,
            net,
            routers,
            port,
            record,
        }))
    }

    /// Give a container its network: router, port, namespace, rules and
    /// resolver files. `Ok(None)` for an instance on no network.
    pub async fn attach_container(
        &self,
        agent: &Agent,
        instance: &Instance,
        dir: &Path,
    ) -> Result<Option<Attachment>, NetworkError> {
        let Some(Opened {
            addr,
            net,
            mut routers,
            router_ns,
            port,
            record,
        }) = self.open_port(agent, instance, false).await?
        else {
            return Ok(None);
        };
        let t0 = std::time::Instant::now();
        if let Ok(mut k) = self.known.lock() {
            k.instances
                .insert(instance.metadata.id.clone(), instance.clone());
        }
        // Rules name ports by interface name, so they can be applied while
        // the links are made; both are done before the workload starts.
        let netns = self.host.netns.clone();
        let links = blocking(move || router::attach_container(&*netns, &router_ns, &port));
        let (netns, ()) = tokio::join!(links, self.sync_locked(&mut routers));
        let netns = match netns {
            Ok(n) => n,
            Err(e) => {
                drop(routers);
                self.detach(&instance.metadata.id).await;
                return Err(NetworkError::Attach {
                    network: addr.network.clone(),
                    source: e,
                });
            }
        };
        tracing::debug!(
            instance = %instance.metadata.name,
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "network attached"
        );
        let guarded = rules_cover(&routers, &net.metadata.id, &record.link);
        drop(routers);
        if !guarded {
            // Never run a workload whose port has no anti-spoofing rules.
            self.detach(&instance.metadata.id).await;
            return Err(NetworkError::RulesNotApplied {
                network: addr.network.clone(),
            });
        }
        let dns = resolvers(&net, &addr);
        let mut resolv: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        if let Some(s) = &net.spec.dns_search {
            resolv.push_str(&format!("search {s}\n"));
        }
        let hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost\n{}\t{}\n",
            addr.ip, instance.metadata.name
        );
        let resolv_conf = dir.join("resolv.conf");
        let hosts_file = dir.join("hosts");
        std::fs::write(&resolv_conf, resolv)
            .and_then(|()| std::fs::write(&hosts_file, hosts))
            .map_err(|source| NetworkError::ResolverFiles {
                dir: dir.to_path_buf(),
                source,
            })?;
        Ok(Some(Attachment {
            netns,
            resolv_conf,
            hosts_file,
        }))
    }

    /// The seam for the VM driver: create the instance's tap on its
    /// network's router (same anti-spoofing and security groups as a
    /// container's veth; DHCP requests from the VM's MAC are answered by
    /// the router) and return where it is, for the VM shim to open, with
    /// the settings for a NoCloud `network-config` (v2).
    /// `Ok(None)` for an instance on no network. Call [`NetDriver::detach`]
    /// when the VM is deleted.
    pub async fn attach_vm(
        &self,
        agent: &Agent,
        instance: &Instance,
    ) -> Result<Option<VmAttachment>, NetworkError> {
        let Some(Opened {
            addr,
            net,
            mut routers,
            router_ns,
            port,
            ..
        }) = self.open_port(agent, instance, true).await?
        else {
            return Ok(None);
        };
        if let Some(r) = routers.get_mut(&net.metadata.id) {
            if r.dhcp.is_none() {
                match nimbus_net::dhcp::start(&r.host.netns, addr.gateway, r.leases.clone()) {
                    Ok(d) => r.dhcp = Some(d),
                    Err(e) => {
                        tracing::warn!(network = %net.metadata.name, error = %e, "no DHCP for the network")
                    }
                }
            }
        }
        let tap_ns = router_ns.clone();
        let netns = self.host.netns.clone();
        if let Err(e) = blocking(move || router::attach_tap(&*netns, &router_ns, &port)).await {
            // Nothing half-made stays: the tap, its route and the port record.
            drop(routers);
            self.detach(&instance.metadata.id).await;
            return Err(NetworkError::Attach {
                network: addr.network.clone(),
                source: e,
            });
        }
        if let Ok(mut k) = self.known.lock() {
            k.instances
                .insert(instance.metadata.id.clone(), instance.clone());
        }
        self.sync_locked(&mut routers).await;
        let link = names::tap_link(&instance.metadata.id);
        if !rules_cover(&routers, &net.metadata.id, &link) {
            drop(routers);
            self.detach(&instance.metadata.id).await;
            return Err(NetworkError::RulesNotApplied {
                network: addr.network.clone(),
            });
        }
        Ok(Some(VmAttachment {
            router_netns: tap_ns,
            tap_name: link,
            config: nimbus_net::tap::VmNetConfig {
                mac: addr.mac.clone(),
                ip: addr.ip,
                prefix_len: addr.prefix_len,
                gateway: addr.gateway,
                dns: resolvers(&net, &addr),
                search: net.spec.dns_search.iter().cloned().collect(),
                mtu: tunnel::port_mtu(self.underlay),
            },
        }))
    }

    fn save_port(&self, instance_id: &str, record: &PortRecord) -> Result<(), NetworkError> {
        let _ = std::fs::create_dir_all(self.dir.join("ports"));
        let path = self.port_record_path(instance_id);
        serde_json::to_vec(record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&path, bytes))
            .map_err(|source| NetworkError::Record {
                what: format!("the port of instance {instance_id}"),
                path,
                source,
            })?;
        if let Ok(mut p) = self.ports.lock() {
            p.insert(instance_id.to_string(), record.clone());
        }
        Ok(())
    }

    /// Remove an instance's port and namespace, and its router once unused.
    pub async fn detach(&self, instance_id: &str) {
        let record = self
            .ports
            .lock()
            .ok()
            .and_then(|mut p| p.remove(instance_id));
        let mut routers = self.routers.lock().await;
        let router_ns = record.as_ref().map(|r| names::router_netns(&r.network_id));
        let id = instance_id.to_string();
        let vm = record.as_ref().is_some_and(|r| r.vm);
        let netns = self.host.netns.clone();
        let result = blocking(move || match (vm, &router_ns) {
            (true, Some(r)) => router::detach_tap(&*netns, r, &id),
            _ => router::detach_container(&*netns, router_ns.as_deref(), &id),
        })
        .await;
        if let Err(e) = result {
            tracing::warn!(instance_id, error = %e, "removing the instance's port failed");
        }
        let _ = std::fs::remove_file(self.port_record_path(instance_id));
        self.sync_locked(&mut routers).await;
    }

    /// Re-render and apply every rule set that changed, and drop routers
    /// no port uses any more.
    async fn sync_locked(&self, routers: &mut HashMap<String, RouterState>) {
        let ports: Vec<(String, PortRecord)> = self
            .ports
            .lock()
            .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        // Routers without ports go (unless a port is recorded for one we
        // have not re-opened yet: then open it).
        let unused: Vec<String> = routers
            .keys()
            .filter(|id| !ports.iter().any(|(_, p)| &p.network_id == *id))
            .cloned()
            .collect();
        for id in unused {
            routers.remove(&id);
            let owned = id.clone();
            let netns = self.host.netns.clone();
            if let Err(e) = blocking(move || router::remove_router(&*netns, &owned)).await {
                tracing::warn!(network_id = %id, error = %e, "removing router failed");
            }
            let _ = std::fs::remove_file(self.router_record_path(&id));
        }
        let missing: Vec<(String, PortRecord)> = ports
            .iter()
            .filter(|(_, p)| !routers.contains_key(&p.network_id))
            .cloned()
            .collect();
        for (iid, p) in missing {
            let (net, inst) = {
                let Ok(k) = self.known.lock() else { return };
                let inst = k.instances.get(&iid).cloned();
                let net = inst.as_ref().and_then(|i| {
                    let a = i.status.addresses.first()?;
                    k.networks
                        .get(&format!("{}/{}", p.project, a.network))
                        .cloned()
                });
                (net, inst)
            };
            if let (Some(net), Some(inst)) = (net, inst) {
                if let Some(addr) = inst.status.addresses.first() {
                    if let Err(e) = self.ensure_router(routers, &p.project, &net, addr).await {
                        tracing::warn!(network = %net.metadata.name, error = %e, "re-opening router failed");
                    }
                }
            }
        }
        let (router_rules, host_forwards) = {
            let Ok(k) = self.known.lock() else { return };
            render(&k, routers, &ports)
        };
        for (id, (rr, names_map)) in router_rules {
            let Some(r) = routers.get_mut(&id) else {
                continue;
            };
            if let Ok(mut n) = r.names.write() {
                *n = names_map;
            }
            // DHCP answers exactly the VM ports of this router.
            let prefix_len = r
                .subnet
                .split_once('/')
                .and_then(|(_, l)| l.parse().ok())
                .unwrap_or(24);
            let leases: HashMap<[u8; 6], nimbus_net::dhcp::Lease> = rr
                .ports
                .iter()
                .filter(|p| p.dhcp)
                .filter_map(|p| {
                    let mac = nimbus_net::netlink::parse_mac(&p.mac).ok()?;
                    Some((
                        mac,
                        nimbus_net::dhcp::Lease {
                            ip: p.ip,
                            prefix_len,
                            gateway: r.gateway,
                            dns: vec![r.gateway],
                            mtu: tunnel::port_mtu(self.underlay) as u16,
                        },
                    ))
                })
                .collect();
            let any_vm = !leases.is_empty();
            if let Ok(mut l) = r.leases.write() {
                *l = leases;
            }
            // A router reopened after a restart serves its VMs' leases again.
            if any_vm && r.dhcp.is_none() {
                match nimbus_net::dhcp::start(&r.host.netns, r.gateway, r.leases.clone()) {
                    Ok(d) => r.dhcp = Some(d),
                    Err(e) => {
                        tracing::warn!(network = %r.network, error = %e, "no DHCP for the network")
                    }
                }
            }
            if r.applied.as_ref() == Some(&rr) {
                continue;
            }
            let ns = r.host.netns.clone();
            let script = rules::router_script(&rr, r.applied.as_ref());
            let stale = r
                .applied
                .as_ref()
                .map(|old| flows::stale_router_flows(old, &rr, r.host.router_ip));
            let firewall = self.host.firewall.clone();
            match blocking(move || firewall.apply(Some(&ns), &script)).await {
                Ok(()) => {
                    r.applied = Some(rr);
                    // Tracked flows of a removed port (its address may go to
                    // a new instance), of a changed port forward, or into a
                    // port whose filter no longer admits them would bypass
                    // the new rules: drop them.
                    if let Some(stale) = stale.filter(|s| !s.is_empty()) {
                        let ns = r.host.netns.clone();
                        let conntrack = self.host.conntrack.clone();
                        let flushed = blocking(move || {
                            conntrack.remove_flows(Some(&ns), &|f| stale.matches(f))
                        })
                        .await;
                        if let Err(e) = flushed {
                            tracing::warn!(network = %r.network, error = %e, "removing stale tracked flows failed");
                        }
                    }
                }
                Err(e) => {
                    // Start over from a whole replacement next time.
                    r.applied = None;
                    tracing::warn!(network = %r.network, error = %e, "applying network rules failed");
                }
            }
        }
        self.sync_tunnels(routers).await;
        let mut uplinks: Vec<String> = routers.values().map(|r| r.host.host_link.clone()).collect();
        uplinks.sort();
        let previous = self.host_applied.lock().ok().and_then(|h| h.clone());
        let installed: BTreeSet<HostForward> = previous
            .iter()
            .flatten()
            .flat_map(|(_, f)| f.iter().cloned())
            .collect();
        let host_forwards = self.installable(host_forwards, installed).await;
        let desired = (!routers.is_empty()).then_some((uplinks, host_forwards));
        // Ports whose router is not re-opened yet (just after a restart,
        // before the watches filled in): keep the host table as it is, so
        // published ports of running instances keep answering.
        let waiting = routers.is_empty() && !ports.is_empty();
        if previous.as_ref() != Some(&desired) && !waiting {
            let table = self.host_table.clone();
            let fresh = !matches!(previous, Some(Some(_)));
            let script = desired
                .as_ref()
                .map(|(u, f)| rules::host_script(&self.host_table, u, f, fresh));
            let firewall = self.host.firewall.clone();
            let result = match script {
                None => blocking(move || firewall.delete_table("inet", &table)).await,
                Some(s) => blocking(move || firewall.apply(None, &s)).await,
            };
            match result {
                Ok(()) => {
                    // Flows already tracked to a port that was just published
                    // or unpublished would keep their old fate: drop them,
                    // and only them (never the host's own connections).
                    let before: BTreeSet<HostForward> = previous
                        .iter()
                        .flatten()
                        .flat_map(|(_, f)| f.iter().cloned())
                        .collect();
                    let after: BTreeSet<HostForward> = desired
                        .iter()
                        .flat_map(|(_, f)| f.iter().cloned())
                        .collect();
                    let gone: Vec<HostForward> = before.difference(&after).cloned().collect();
                    let new: Vec<HostForward> = after.difference(&before).cloned().collect();
                    if let Ok(mut h) = self.host_applied.lock() {
                        *h = Some(desired);
                    }
                    if !gone.is_empty() || !new.is_empty() {
                        let dataplane = self.host.clone();
                        let flushed =
                            blocking(move || flush_host_flows(&dataplane, &gone, &new)).await;
                        if let Err(e) = flushed {
                            tracing::warn!(error = %e, "removing tracked flows of changed published ports failed");
                        }
                    }
                }
                Err(e) => {
                    if let Ok(mut h) = self.host_applied.lock() {
                        *h = None;
                    }
                    tracing::warn!(error = %e, "applying host network rules failed");
                }
            }
        }
    }

    /// The published ports the host table may forward: see
    /// [`forward_refusal`]. Each one left out is logged once.
    async fn installable(
        &self,
        forwards: Vec<HostForward>,
        installed: BTreeSet<HostForward>,
    ) -> Vec<HostForward> {
        let reserved = self.reserved_tcp_ports.clone();
        let fallback: Vec<HostForward> = forwards
            .iter()
            .filter(|f| installed.contains(f))
            .cloned()
            .collect();
        // On a blocking-pool thread: those stay in the host's namespace,
        // whose sockets are the ones a host forward would take over.
        let judged = tokio::task::spawn_blocking(move || {
            forwards
                .into_iter()
                .map(|f| {
                    let why = forward_refusal(&f, &installed, &reserved, |f| {
                        let transport = if f.udp {
                            Transport::Udp
                        } else {
                            Transport::Tcp
                        };
                        listeners::accepting_on(transport, f.port)
                    });
                    (f, why)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let judged = match judged {
            Ok(j) => j,
            Err(e) => {
                // Nothing new without a check; what is installed stays.
                tracing::warn!(error = %e, "checking host ports for listeners failed");
                return fallback;
            }
        };
        let mut keep = Vec::new();
        let mut skipped = BTreeMap::new();
        for (f, why) in judged {
            match why {
                None => keep.push(f),
                Some(why) => {
                    skipped.insert(f, why);
                }
            }
        }
        if let Ok(mut before) = self.skipped_forwards.lock() {
            for (f, why) in &skipped {
                if before.get(f) != Some(why) {
                    tracing::warn!(
                        port = f.port,
                        protocol = if f.udp { "udp" } else { "tcp" },
                        reason = %why,
                        "not forwarding a published host port: the host's service keeps it; remove the published port (`nimbus address rm`), or stop that service and the port is forwarded at the next rule change"
                    );
                }
            }
            *before = skipped;
        }
        keep
    }

    /// Keep the store's networks, security groups and published ports in
    /// memory, and re-sync whenever anything changes.
    pub fn start(self: &Arc<Self>, agent: Arc<Agent>) {
        let me = self.clone();
        let reporter = agent.clone();
        tokio::spawn(async move {
            me.rebuild().await;
            loop {
                me.wake.notified().await;
                let reports = {
                    let mut routers = me.routers.lock().await;
                    me.sync_locked(&mut routers).await;
                    me.forwarding_changes(&routers)
                };
                me.report_forwarding(&reporter, reports).await;
            }
        });
        spawn_watch::<Network>(agent.clone(), self.clone(), "/v1/networks", |k| {
            &mut k.networks
        });
        spawn_watch::<SecurityGroup>(agent.clone(), self.clone(), "/v1/secgroups", |k| {
            &mut k.secgroups
        });
        if self.underlay.is_some() {
            tunnel::spawn_peer_poll(agent.clone(), self.clone());
        }
        spawn_watch::<PublishedPort>(agent, self.clone(), "/v1/addresses", |k| &mut k.published);
    }

    /// Bring every router's VXLAN device to its network's peers (after
    /// the rules, so the device's frames are guarded from the first).
    async fn sync_tunnels(&self, routers: &mut HashMap<String, RouterState>) {
        let Some(underlay) = self.underlay else {
            return;
        };
        let peers = match self.known.lock() {
            Ok(k) => k.peers.clone(),
            Err(_) => return,
        };
        for (id, r) in routers.iter_mut() {
            let result = tunnel::sync_router(
                &self.host,
                underlay,
                r.host.netns.clone(),
                id,
                &peers,
                &mut r.tunnel,
            )
            .await;
            if let Err(e) = result {
                r.tunnel = None;
                tracing::warn!(network = %r.network, error = %e, "programming the network's VXLAN device failed; retrying at the next change");
            }
        }
    }
}

fn spawn_watch<T: Object>(
    agent: Arc<Agent>,
    net: Arc<NetDriver>,
    path: &'static str,
    map: fn(&mut Known) -> &mut HashMap<String, T>,
) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = watch_once::<T>(&agent, &net, path, map).await {
                tracing::debug!(error = %e, path, "network watch ended; re-listing");
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    });
}

async fn watch_once<T: Object>(
    agent: &Agent,
    net: &NetDriver,
    path: &str,
    map: fn(&mut Known) -> &mut HashMap<String, T>,
) -> Result<(), NetworkError> {
    let failed = |source| NetworkError::Watch {
        path: path.to_string(),
        source,
    };
    let list: ResourceList<T> = agent.client.list_all(path).await.map_err(failed)?;
    if let Ok(mut k) = net.known.lock() {
        let m = map(&mut k);
        m.clear();
        for o in list.items {
            m.insert(pkey(&o.metadata().project, &o.metadata().name), o);
        }
    }
    net.wake.notify_one();
    let mut events = Box::pin(
        agent
            .client
            .watch_lines::<WatchEvent<T>>(&format!("{path}?watch=true&revision={}", list.revision))
            .await
            .map_err(failed)?,
    );
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(failed)?;
        let Some(o) = ev.object else {
            if ev.event_type == WatchEventType::Error {
                return Ok(());
            }
            continue;
        };
        if let Ok(mut k) = net.known.lock() {
            let key = pkey(&o.metadata().project, &o.metadata().name);
            match ev.event_type {
                WatchEventType::Added | WatchEventType::Modified => {
                    map(&mut k).insert(key, o);
                }
                WatchEventType::Deleted => {
                    map(&mut k).remove(&key);
                }
                WatchEventType::Error => return Ok(()),
            }
        }
        net.wake.notify_one();
    }
    Ok(())
}

impl NetDriver {
    /// Published ports of this host's instances whose forwarding changed
    /// since the server last heard: a port is forwarded once both its
    /// router's rules and the host table carry it.
    fn forwarding_changes(&self, routers: &HashMap<String, RouterState>) -> Vec<ForwardingReport> {
        let ports = self.ports.lock().map(|p| p.clone()).unwrap_or_default();
        let installed: BTreeSet<HostForward> = self
            .host_applied
            .lock()
            .ok()
            .and_then(|h| h.clone())
            .flatten()
            .map(|(_, f)| f.into_iter().collect())
            .unwrap_or_default();
        let skipped = self
            .skipped_forwards
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let Ok(k) = self.known.lock() else {
            return Vec::new();
        };
        let Ok(mut reported) = self.reported_forwards.lock() else {
            return Vec::new();
        };
        reported.retain(|id, _| k.published.values().any(|p| &p.metadata.id == id));
        let mut changes = Vec::new();
        for pp in k.published.values() {
            let Some(instance) = k.instances.values().find(|i| {
                i.metadata.project == pp.metadata.project
                    && i.metadata.name == pp.spec.instance
                    && i.metadata.deletion_requested_at.is_none()
            }) else {
                continue;
            };
            // Only the host with the instance's port speaks for it.
            let Some(record) = ports.get(&instance.metadata.id) else {
                continue;
            };
            let Some(router) = routers.get(&record.network_id) else {
                continue;
            };
            let udp = pp.spec.protocol == Protocol::Udp;
            let in_router = router.applied.as_ref().is_some_and(|rr| {
                rr.forwards.contains(&Forward {
                    udp,
                    port: pp.spec.host_port,
                    ip: record.ip,
                    to_port: pp.spec.instance_port,
                })
            });
            let host_forward = HostForward {
                udp,
                port: pp.spec.host_port,
                router_ip: router.host.router_ip,
            };
            let applied = in_router && installed.contains(&host_forward);
            let reason = if applied {
                None
            } else {
                skipped.get(&host_forward).cloned()
            };
            let now = (applied, reason.clone());
            let stored = (pp.status.applied, pp.status.reason.clone());
            if now == stored || reported.get(&pp.metadata.id) == Some(&now) {
                continue;
            }
            reported.insert(pp.metadata.id.clone(), now);
            changes.push(ForwardingReport {
                project: pp.metadata.project.clone().unwrap_or_default(),
                name: pp.metadata.name.clone(),
                id: pp.metadata.id.clone(),
                status: PublishedPortStatus {
                    applied,
                    host: None,
                    reason,
                },
            });
        }
        changes
    }

    /// Tell the server which published ports are forwarded now, so
    /// `nimbus address publish` returns once the port answers.
    async fn report_forwarding(&self, agent: &Agent, reports: Vec<ForwardingReport>) {
        for r in reports {
            let path = format!("/v1/projects/{}/addresses/{}/status", r.project, r.name);
            let sent = agent
                .client
                .post::<_, PublishedPort>(&path, &r.status)
                .await;
            if let Err(e) = sent {
                // Forget it, so the next sync reports again (unless the port is gone).
                if let Ok(mut reported) = self.reported_forwards.lock() {
                    reported.remove(&r.id);
                }
                tracing::debug!(published_port = %r.name, error = %e, "reporting a published port's forwarding failed");
            }
        }
    }
}

/// Whether the rules applied on a router guard the port `link`.
fn rules_cover(routers: &HashMap<String, RouterState>, network_id: &str, link: &str) -> bool {
    routers
        .get(network_id)
        .and_then(|r| r.applied.as_ref())
        .is_some_and(|rr| rr.ports.iter().any(|p| p.link == link))
}

/// In the host namespace: drop the tracked flows that published ports
/// `gone` and `new` make stale (see [`flows::host_flow_is_stale`]).
fn flush_host_flows(
    host: &Dataplane,
    gone: &[HostForward],
    new: &[HostForward],
) -> nimbus_net::Result<usize> {
    let local: Vec<Ipv4Addr> = host::in_netns(&*host.netns, None, |links| links.addresses())?
        .into_iter()
        .map(|(_, ip, _)| ip)
        .collect();
    host.conntrack
        .remove_flows(None, &|f| flows::host_flow_is_stale(f, gone, new, &local))
}

/// Why the host must not forward `f` (`None`: it may). Never a port
/// Nimbus itself listens on; a forward not installed yet only while no
/// host service accepts flows on its port (one may have started after the
/// server checked, or while the agent was down): its DNAT would take that
/// service's new connections. Installed forwards stay: the port was
/// claimed first. If the sockets cannot be read, nothing new is forwarded.
fn forward_refusal(
    f: &HostForward,
    installed: &BTreeSet<HostForward>,
    reserved_tcp_ports: &[u16],
    listening: impl Fn(&HostForward) -> nimbus_net::Result<Vec<SocketAddr>>,
) -> Option<String> {
    if !f.udp && reserved_tcp_ports.contains(&f.port) {
        return Some(format!("Nimbus's own API listens on port {}", f.port));
    }
    if installed.contains(f) {
        return None;
    }
    match listening(f) {
        Ok(found) if found.is_empty() => None,
        Ok(found) => {
            let addrs: Vec<String> = found.iter().map(|a| a.to_string()).collect();
            Some(format!("a host service listens on {}", addrs.join(", ")))
        }
        Err(e) => Some(format!(
            "cannot tell whether a host service listens on it: {e}"
        )),
    }
}

type RouterOutput = (RouterRules, HashMap<String, Ipv4Addr>);

/// The resolvers an instance is given: the network's, else its gateway's.
fn resolvers(net: &Network, addr: &InstanceAddress) -> Vec<Ipv4Addr> {
    if net.spec.dns.is_empty() {
        vec![addr.gateway]
    } else {
        net.spec.dns.clone()
    }
}

/// See [`NetDriver::open_port`].
struct Opened<'a> {
    addr: InstanceAddress,
    net: Network,
    routers: tokio::sync::MutexGuard<'a, HashMap<String, RouterState>>,
    router_ns: PathBuf,
    port: PortSpec,
    record: PortRecord,
}

/// Every router's script and DNS names, and the host's port forwards.
fn render(
    k: &Known,
    routers: &HashMap<String, RouterState>,
    ports: &[(String, PortRecord)],
) -> (HashMap<String, RouterOutput>, Vec<HostForward>) {
    let mut out = HashMap::new();
    let mut host_forwards = Vec::new();
    for (net_id, r) in routers {
        // Instances of this network known to the agent, with their address.
        let members: Vec<(&Instance, &InstanceAddress)> = k
            .instances
            .values()
            .filter(|i| i.metadata.project.as_deref() == Some(r.project.as_str()))
            .filter(|i| i.metadata.deletion_requested_at.is_none())
            .filter_map(|i| {
                let a = i
                    .status
                    .addresses
                    .iter()
                    .find(|a| &a.network_id == net_id)?;
                Some((i, a))
            })
            .collect();
        let names: HashMap<String, Ipv4Addr> = tunnel::remote_names(&k.peers, net_id)
            .into_iter()
            .chain(
                members
                    .iter()
                    .map(|(i, a)| (i.metadata.name.to_ascii_lowercase(), a.ip)),
            )
            .collect();
        let mut groups: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        let mut port_rules = Vec::new();
        let mut forwards = Vec::new();
        let mut on_router: Vec<&(String, PortRecord)> = ports
            .iter()
            .filter(|(_, p)| &p.network_id == net_id)
            .collect();
        on_router.sort_by(|a, b| a.1.link.cmp(&b.1.link));
        for (iid, p) in on_router {
            let inst = k.instances.get(iid);
            let secgroups = inst.map(|i| i.spec.secgroups.clone()).unwrap_or_default();
            let ingress = if inst.is_none() {
                // Not seen yet (e.g. just after a restart): its groups are
                // unknown, so its port is closed until it is, never open.
                Some(Ingress {
                    own_groups: Vec::new(),
                    rules: Vec::new(),
                })
            } else if secgroups.is_empty() {
                None
            } else {
                let mut ing = Ingress {
                    own_groups: secgroups.clone(),
                    rules: Vec::new(),
                };
                for g in &secgroups {
                    groups.entry(g.clone()).or_default();
                    let Some(sg) = k.secgroups.get(&format!("{}/{g}", r.project)) else {
                        continue;
                    };
                    for rule in &sg.spec.rules {
                        if let Some(src) = &rule.group {
                            groups.entry(src.clone()).or_default();
                        }
                        ing.rules.push(AllowRule {
                            proto: match rule.protocol {
                                Protocol::Tcp => rules::Proto::Tcp,
                                Protocol::Udp => rules::Proto::Udp,
                                Protocol::Icmp => rules::Proto::Icmp,
                                Protocol::Any => rules::Proto::Any,
                            },
                            ports: rule.port_from.map(|f| (f, rule.port_to.unwrap_or(f))),
                            cidr: rule.cidr.clone(),
                            group: rule.group.clone(),
                        });
                    }
                }
                Some(ing)
            };
            port_rules.push(PortRules {
                link: if p.vm {
                    names::tap_link(iid)
                } else {
                    p.link.clone()
                },
                ip: p.ip,
                mac: p.mac.clone(),
                dhcp: p.vm,
                ingress,
            });
            if let Some(i) = inst {
                for pp in k.published.values() {
                    if pp.metadata.project == i.metadata.project
                        && pp.spec.instance == i.metadata.name
                    {
                        let udp = pp.spec.protocol == Protocol::Udp;
                        forwards.push(Forward {
                            udp,
                            port: pp.spec.host_port,
                            ip: p.ip,
                            to_port: pp.spec.instance_port,
                        });
                        host_forwards.push(HostForward {
                            udp,
                            port: pp.spec.host_port,
                            router_ip: r.host.router_ip,
                        });
                    }
                }
            }
        }
        tunnel::add_remote_members(&mut groups, &k.peers, net_id);
        for (g, list) in groups.iter_mut() {
            for (i, a) in &members {
                if i.spec.secgroups.contains(g) {
                    list.push(a.ip);
                }
            }
            list.sort();
            list.dedup();
        }
        port_rules.extend(tunnel::remote_port_rules(&k.peers, net_id));
        forwards.sort();
        let rr = RouterRules {
            gateway: r.gateway,
            subnet: r.subnet.clone(),
            ports: port_rules,
            forwards,
            groups,
        };
        out.insert(net_id.clone(), (rr, names));
    }
    host_forwards.sort();
    (out, host_forwards)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(udp: bool, port: u16) -> HostForward {
        HostForward {
            udp,
            port,
            router_ip: Ipv4Addr::new(100, 64, 0, 2),
        }
    }

    #[test]
    fn a_new_forward_yields_to_a_host_listener_and_an_installed_one_stays() {
        let listener = |f: &HostForward| -> nimbus_net::Result<Vec<SocketAddr>> {
            Ok(if f.port == 8080 {
                vec!["[::]:8080".parse().unwrap()]
            } else {
                Vec::new()
            })
        };
        let none = BTreeSet::new();
        let why = forward_refusal(&fwd(false, 8080), &none, &[], listener).unwrap();
        assert!(why.contains("[::]:8080"), "{why}");
        assert_eq!(
            forward_refusal(&fwd(false, 8081), &none, &[], listener),
            None
        );
        let installed: BTreeSet<HostForward> = [fwd(false, 8080)].into();
        assert_eq!(
            forward_refusal(&fwd(false, 8080), &installed, &[], listener),
            None,
            "a host process that bound the port later does not undo the forward"
        );
    }

    #[test]
    fn nimbus_own_port_is_never_forwarded_and_unreadable_sockets_refuse() {
        let nothing = |_: &HostForward| -> nimbus_net::Result<Vec<SocketAddr>> { Ok(Vec::new()) };
        let installed: BTreeSet<HostForward> = [fwd(false, 7443)].into();
        assert!(forward_refusal(&fwd(false, 7443), &installed, &[7443], nothing).is_some());
        assert_eq!(
            forward_refusal(&fwd(true, 7443), &BTreeSet::new(), &[7443], nothing),
            None,
            "the API listens on TCP only"
        );
        let broken = |_: &HostForward| -> nimbus_net::Result<Vec<SocketAddr>> {
            Err(nimbus_net::NetError::Invalid("no /proc".into()))
        };
        assert!(forward_refusal(&fwd(false, 9000), &BTreeSet::new(), &[], broken).is_some());
    }
}

#[cfg(test)]
#[path = "network_tests.rs"]
mod driver_tests;

#[cfg(test)]
#[path = "network_tunnel_tests.rs"]
mod tunnel_tests;
