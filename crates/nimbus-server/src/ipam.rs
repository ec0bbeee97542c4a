//! Address management: instance addresses and host ports are claimed with
//! store transactions, so concurrent launches never get the same address.
//!
//! Keys: `/ipam/{project}/{network}/{ip}` (value: the instance name) and
//! `/hostports/{protocol}/{port}` (value: `{project}/{published port}`).
//! An instance and its address keys are created and deleted in one
//! transaction, so an address is held exactly as long as its instance.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use nimbus_api::cidr::Subnet;
use nimbus_api::resources::Object;
use nimbus_api::{ApiError, Instance, InstanceAddress, Network, PublishedPort};
use nimbus_store::{Compare, Op, Txn};
use rand::Rng;

use crate::error::{ApiResult, ServerError};
use crate::repo::{self, Repo};

/// Tries before giving up on a crowded network.
const MAX_ATTEMPTS: usize = 200;

pub fn ip_key(project: &str, network: &str, ip: Ipv4Addr) -> String {
    format!("/ipam/{project}/{network}/{ip}")
}

pub fn ip_prefix(project: &str, network: &str) -> String {
    format!("/ipam/{project}/{network}/")
}

/// Where host port claims live; `hostports` counts a project's by value.
pub const HOST_PORT_PREFIX: &str = "/hostports/";

pub fn host_port_key(protocol: &str, port: u16) -> String {
    format!("{HOST_PORT_PREFIX}{protocol}/{port}")
}

/// The subnet and gateway of a stored network (validated at creation).
pub fn subnet_and_gateway(net: &Network) -> ApiResult<(Subnet, Ipv4Addr)> {
    let subnet = Subnet::parse(&net.spec.subnet).map_err(ApiError::internal)?;
    let gateway = net.spec.gateway.unwrap_or_else(|| subnet.first_host());
    Ok((subnet, gateway))
}

/// A locally administered MAC derived from the instance id.
pub fn mac_for(instance_id: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in instance_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let b = h.to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4]
    )
}

/// Host ports a VM's user-network forwards bind.
fn forward_ports(instance: &Instance) -> Vec<u16> {
    instance
        .spec
        .vm
        .as_ref()
        .map(|vm| vm.port_forwards.iter().map(|f| f.host_port).collect())
        .unwrap_or_default()
}

/// Addresses in use on a network.
pub async fn used_addresses(
    repo: &Repo,
    project: &str,
    network: &str,
) -> ApiResult<HashSet<Ipv4Addr>> {
    let page = repo
        .store
        .list(&ip_prefix(project, network), None, 0)
        .await?;
    Ok(page
        .kvs
        .iter()
        .filter_map(|kv| kv.key.rsplit('/').next()?.parse().ok())
        .collect())
}

/// Store `instance` together with one address on each of `networks`.
pub async fn create_with_addresses(
    repo: &Repo,
    mut instance: Instance,
    networks: &[Network],
) -> ApiResult<Instance> {
    let project = instance.metadata.project.clone().unwrap_or_default();
    let name = instance.metadata.name.clone();
    let key = repo::key::<Instance>(Some(&project), &name);
    let now = chrono::Utc::now();
    instance.metadata.created_at = now;
    instance.metadata.updated_at = now;
    let mut networks = networks.to_vec();
    // A VM's user-network forwards bind host ports: claimed like published
    // ports, so no project can publish (and so intercept) the same port.
    let forwards = forward_ports(&instance);
    for _ in 0..MAX_ATTEMPTS {
        if let Some(net) = networks
            .iter()
            .find(|n| n.metadata.deletion_requested_at.is_some())
        {
            return Err(ServerError(ApiError::conflict(format!(
                "network {:?} is being deleted; create it again or pick another network",
                net.metadata.name
            ))));
        }
        let mut compares = vec![Compare::Absent(key.clone())];
        let mut ops = Vec::new();
        for port in &forwards {
            let hk = host_port_key("tcp", *port);
            compares.push(Compare::Absent(hk.clone()));
            ops.push(Op::Put {
                key: hk,
                value: format!("{project}/instance/{name}").into_bytes(),
            });
        }
        instance.status.addresses.clear();
        for net in &networks {
            let (subnet, gateway) = subnet_and_gateway(net)?;
            let used = used_addresses(repo, &project, &net.metadata.name).await?;
            let free: Vec<Ipv4Addr> = subnet
                .hosts()
                .filter(|ip| *ip != gateway && !used.contains(ip))
                .collect();
            if free.is_empty() {
                return Err(ServerError(ApiError::conflict(format!(
                    "network {:?} in project {project:?} has no free address left ({} in use); delete instances or create a larger network",
                    net.metadata.name,
                    used.len()
                ))));
            }
            // A random free address: concurrent launches rarely pick the
            // same one, and when they do the transaction tells.
            let ip = free[rand::thread_rng().gen_range(0..free.len())];
            let ipk = ip_key(&project, &net.metadata.name, ip);
            compares.push(Compare::Absent(ipk.clone()));
            compares.push(Compare::ModRevision(
                repo::key::<Network>(Some(&project), &net.metadata.name),
                net.metadata.revision,
            ));
            ops.push(Op::Put {
                key: ipk,
                value: name.clone().into_bytes(),
            });
            instance.status.addresses.push(InstanceAddress {
                network: net.metadata.name.clone(),
                network_id: net.metadata.id.clone(),
                ip,
                prefix_len: subnet.prefix_len,
                gateway,
                mac: mac_for(&instance.metadata.id),
            });
        }
        instance.metadata.revision = 0;
        ops.insert(
            0,
            Op::Put {
                key: key.clone(),
                value: repo::encode(&instance)?,
            },
        );
        let result = repo
            .store
            .txn(Txn {
                compares,
                success: ops,
                failure: vec![],
            })
            .await?;
        if result.succeeded {
            instance.metadata.revision = result.revision;
            return Ok(instance);
        }
        if repo.store.get(&key).await?.is_some() {
            return Err(ServerError(ApiError::already_exists(format!(
                "{} already exists; pick another name or delete it first",
                repo::describe::<Instance>(Some(&project), &name)
            ))));
        }
        for port in &forwards {
            if repo
                .store
                .get(&host_port_key("tcp", *port))
                .await?
                .is_some()
            {
                return Err(ServerError(ApiError::conflict(format!(
                    "host port {port}/tcp is already published or forwarded; pick another --forward port"
                ))));
            }
        }
        for net in networks.iter_mut() {
            let current: Option<Network> = repo.try_get(Some(&project), &net.metadata.name).await?;
            match current {
                // Changed since read (e.g. a refused delete bumped it): use the new revision.
                Some(c) => *net = c,
                None => {
                    return Err(ServerError(ApiError::invalid(format!(
                        "network {:?} was deleted while the instance was being created; create it again",
                        net.metadata.name
                    ))))
                }
            }
        }
        // Another launch took the address: pick again.
    }
    Err(ServerError(ApiError::unavailable(format!(
        "could not claim an address for instance {name:?} (too many concurrent launches); retry"
    ))))
}

/// Delete `instance`, its address keys and its published ports in one
/// transaction, with `also` (records of the deletion). `expected`: the
/// instance's revision, if it must match.
pub async fn delete_with_addresses(
    repo: &Repo,
    instance: &Instance,
    expected: Option<i64>,
    also: Vec<Op>,
) -> ApiResult<()> {
    let project = instance.metadata.project.clone().unwrap_or_default();
    let name = &instance.metadata.name;
    let key = repo::key::<Instance>(Some(&project), name);
    let mut ops = vec![Op::Delete { key: key.clone() }];
    for port in forward_ports(instance) {
        ops.push(Op::Delete {
            key: host_port_key("tcp", port),
        });
    }
    for a in &instance.status.addresses {
        ops.push(Op::Delete {
            key: ip_key(&project, &a.network, a.ip),
        });
    }
    let ports = repo
        .list::<PublishedPort>(Some(&project), &Default::default(), |p| {
            p.spec.instance == *name
        })
        .await?;
    for p in &ports.items {
        ops.push(Op::Delete {
            key: repo::key::<PublishedPort>(Some(&project), &p.metadata.name),
        });
        ops.push(Op::Delete {
            key: host_port_key(p.spec.protocol.as_str(), p.spec.host_port),
        });
    }
    ops.extend(also);
    let compares = match expected {
        Some(rev) => vec![Compare::ModRevision(key, rev)],
        None => vec![Compare::Exists(key)],
    };
    let result = repo
        .store
        .txn(Txn {
            compares,
            success: ops,
            failure: vec![],
        })
        .await?;
    if !result.succeeded {
        return Err(ServerError(ApiError::conflict(format!(
            "{} changed while being deleted; get it again and retry",
            repo::describe::<Instance>(Some(&project), name)
        ))));
    }
    // A port published between the list above and the transaction names
    // an instance that is gone now (later publishes fail on its missing
    // key): sweep ports older than the deletion.
    let late = repo
        .list::<PublishedPort>(Some(&project), &Default::default(), |p| {
            p.spec.instance == *name
        })
        .await?;
    for p in late
        .items
        .iter()
        .filter(|p| p.metadata.revision < result.revision)
    {
        let pkey = repo::key::<PublishedPort>(Some(&project), &p.metadata.name);
        let _ = repo
            .store
            .txn(Txn {
                compares: vec![Compare::ModRevision(pkey.clone(), p.metadata.revision)],
                success: vec![
                    Op::Delete { key: pkey },
                    Op::Delete {
                        key: host_port_key(p.spec.protocol.as_str(), p.spec.host_port),
                    },
                ],
                failure: vec![],
            })
            .await?;
    }
    Ok(())
}

/// Kinds are checked against this so the generic repo helpers stay right.
const _: () = assert!(Instance::PROJECT_SCOPED && Network::PROJECT_SCOPED);
