//! Hot-plug of volumes into a running VM, over its block monitor
//! (`VmPaths::block_qmp`): `blockdev-add` (the file opened by the agent
//! and passed with `add-fd`, QEMU being unprivileged by then) and
//! `device_add` on a free PCIe root port; `device_del`, the guest's
//! release (`DEVICE_DELETED`) within [`UNPLUG_TIMEOUT`], then
//! `blockdev-del`. Level-triggered: each pass reads what QEMU has
//! (`qom-list` of its devices, `query-named-block-nodes`) and changes only
//! the difference, so an agent restart neither loses nor doubles a disk.

use std::path::Path;
use std::time::Duration;

use nimbus_api::AttachedVolume;
use serde::Deserialize;
use serde_json::{json, Value};

use super::disks::{self, disk_id, is_disk_id};
use super::qmp::{Qmp, QmpError, QmpEvent};
use super::spec::{VmPaths, VmShimSpec, VmVolume};

/// How long the guest may take to release an unplugged disk (Linux waits
/// 5 s after the attention button before it powers the slot off).
pub const UNPLUG_TIMEOUT: Duration = Duration::from_secs(30);

/// Bring the disks of the VM running in `dir` to `wanted`. `None` when no
/// QEMU of this instance serves a block monitor (not running). Blocking
/// file work is small (opening a volume file).
pub async fn sync(dir: &Path, wanted: Vec<VmVolume>) -> Option<Vec<AttachedVolume>> {
    let mut spec = VmShimSpec::load(dir).ok()?;
    if spec.hotplug_ports == 0 {
        return Some(without_hotplug(&spec, &wanted));
    }
    let mut qmp = Qmp::connect(&VmPaths::new(dir).block_qmp).await.ok()?;
    let (present, nodes, ports) = match observe(&mut qmp).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "reading a VM's disks");
            return None;
        }
    };
    let ids = |v: &[VmVolume]| v.iter().map(|v| disk_id(&v.volume_id)).collect::<Vec<_>>();
    let plan = disks::plan(&ids(&wanted), &present, &nodes);
    let mut states = Vec::new();
    let mut kept = Vec::new();
    for v in &wanted {
        let id = disk_id(&v.volume_id);
        let result = if plan.plug.contains(&id) {
            plug(&mut qmp, v, nodes.contains(&id), &ports).await
        } else {
            Ok(())
        };
        states.push(state(&v.name, result.as_ref().err().cloned(), "failed"));
        if result.is_ok() {
            kept.push(v.clone());
        }
    }
    for id in &plan.unplug {
        let recorded = spec.volumes.iter().find(|v| &disk_id(&v.volume_id) == id);
        let name = recorded.map_or_else(|| id.clone(), |v| v.name.clone());
        if let Err(message) = unplug(&mut qmp, id).await {
            states.push(state(&name, Some(message), "detaching"));
            kept.extend(recorded.cloned());
        }
    }
    for id in &plan.drop_nodes {
        drop_node(&mut qmp, id).await;
    }
    if spec.volumes != kept {
        spec.volumes = kept;
        if let Err(e) = spec.save(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "recording a VM's disks");
        }
    }
    Some(states)
}

fn state(name: &str, error: Option<String>, failed: &str) -> AttachedVolume {
    AttachedVolume {
        volume: name.to_string(),
        state: if error.is_some() { failed } else { "attached" }.to_string(),
        message: error,
    }
}

/// A VM started without hot-plug ports: its disks are what it booted with.
fn without_hotplug(spec: &VmShimSpec, wanted: &[VmVolume]) -> Vec<AttachedVolume> {
    let restart = format!(
        "this VM was started without hot-plug; restart it (`nimbus instance restart {}`) to apply the change",
        spec.name
    );
    let mut states: Vec<AttachedVolume> = wanted
        .iter()
        .map(|v| {
            let booted = spec.volumes.iter().any(|b| b.volume_id == v.volume_id);
            let e = (!booted).then(|| restart.clone());
            state(&v.name, e, "attaching")
        })
        .collect();
    for b in &spec.volumes {
        if !wanted.iter().any(|v| v.volume_id == b.volume_id) {
            states.push(state(&b.name, Some(restart.clone()), "detaching"));
        }
    }
    states
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_port_holding_a_disk_is_told_from_other_refusals() {
        let taken = "PCI: slot 0 function 0 already occupied by virtio-blk-pci, new func virtio-blk-pci cannot be exposed to guest.";
        assert!(super::port_taken(taken));
        assert!(!super::port_taken(
            "Could not open '/dev/fdset/1': Permission denied"
        ));
    }
}

#[derive(Deserialize)]
struct QomEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct BlockNode {
    #[serde(rename = "node-name")]
    node_name: String,
}

/// The disk ids of the volume devices, of the volume block nodes, and the
/// root ports, in order.
async fn observe(qmp: &mut Qmp) -> Result<(Vec<String>, Vec<String>, Vec<String>), QmpError> {
    let devices: Vec<QomEntry> = qmp
        .execute("qom-list", Some(json!({"path": "/machine/peripheral"})))
        .await?;
    let present = devices
        .iter()
        .filter(|d| is_disk_id(&d.name))
        .map(|d| d.name.clone())
        .collect();
    let mut ports: Vec<String> = devices
        .iter()
        .filter(|d| d.kind == "child<pcie-root-port>")
        .map(|d| d.name.clone())
        .collect();
    ports.sort_by_key(|p| {
        p.trim_start_matches("hp")
            .parse::<u32>()
            .unwrap_or(u32::MAX)
    });
    let nodes: Vec<BlockNode> = qmp
        .execute("query-named-block-nodes", Some(json!({"flat": true})))
        .await?;
    let mut nodes: Vec<String> = nodes
        .iter()
        .filter(|n| is_disk_id(&n.node_name))
        .map(|n| n.node_name.clone())
        .collect();
    nodes.dedup();
    Ok((present, nodes, ports))
}

/// Open the volume's node (unless a crashed pass left it) and put its
/// disk on the first free root port.
async fn plug(
    qmp: &mut Qmp,
    v: &VmVolume,
    have_node: bool,
    ports: &[String],
) -> Result<(), String> {
    if !have_node {
        add_node(qmp, v).await?;
    }
    for port in ports {
        match qmp
            .execute::<Value>("device_add", Some(disks::device(v, port)))
            .await
        {
            Ok(_) => {
                tracing::info!(volume = %v.name, volume_id = %v.volume_id, %port, "disk hot-plugged");
                return Ok(());
            }
            // Taken by another disk: try the next port.
            Err(QmpError::Command { desc, .. }) if port_taken(&desc) => {}
            Err(e) => {
                drop_node(qmp, &disk_id(&v.volume_id)).await;
                return Err(format!("QEMU refused the disk: {e}"));
            }
        }
    }
    drop_node(qmp, &disk_id(&v.volume_id)).await;
    Err(format!(
        "all {} PCIe ports of this VM hold disks; detach a volume, or stop and start the VM (it then gets more)",
        ports.len()
    ))
}

/// Whether QEMU refused a `device_add` because the port holds a device.
fn port_taken(desc: &str) -> bool {
    ["occupied", "in use", "not available"]
        .iter()
        .any(|w| desc.contains(w))
}

async fn add_node(qmp: &mut Qmp, v: &VmVolume) -> Result<(), String> {
    let Some(path) = &v.file else {
        return qmp
            .execute::<Value>("blockdev-add", Some(disks::blockdev(v, None)))
            .await
            .map(drop)
            .map_err(|e| format!("QEMU could not open the volume: {e}"));
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!v.read_only)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let set = qmp
        .add_fd(std::os::fd::AsFd::as_fd(&file))
        .await
        .map_err(|e| format!("passing the volume's file to QEMU: {e}"))?;
    let added = qmp
        .execute::<Value>(
            "blockdev-add",
            Some(disks::blockdev(v, Some(&format!("/dev/fdset/{set}")))),
        )
        .await;
    // QEMU keeps its own duplicate while the node is open; the set's copy
    // goes now so nothing is left behind when the node closes.
    let _ = qmp
        .execute::<Value>("remove-fd", Some(json!({"fdset-id": set})))
        .await;
    added
        .map(drop)
        .map_err(|e| format!("QEMU could not open the volume: {e}"))
}

async fn drop_node(qmp: &mut Qmp, id: &str) {
    if let Err(e) = qmp
        .execute::<Value>("blockdev-del", Some(json!({"node-name": id})))
        .await
    {
        tracing::warn!(node = id, error = %e, "closing a volume's block node");
    }
}

/// Ask the guest to release disk `id`, wait for it, then close the node.
async fn unplug(qmp: &mut Qmp, id: &str) -> Result<(), String> {
    match qmp
        .execute::<Value>("device_del", Some(json!({"id": id})))
        .await
    {
        Ok(_) => {}
        // Asked by an earlier pass: keep waiting for the guest.
        Err(QmpError::Command { desc, .. }) if desc.contains("in progress") => {}
        Err(e) => return Err(format!("QEMU refused to unplug the disk: {e}")),
    }
    let released = tokio::time::timeout(UNPLUG_TIMEOUT, async {
        loop {
            match qmp.next_event().await {
                Ok(QmpEvent::DeviceDeleted { device: Some(d) }) if d == id => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match released {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("QEMU's block monitor failed: {e}")),
        Err(_) => {
            return Err(format!(
                "the guest has not released the disk within {} s (is it mounted or in use there? unmount it in the guest); the agent asks again at its next pass, or stop the VM to detach it",
                UNPLUG_TIMEOUT.as_secs()
            ))
        }
    }
    drop_node(qmp, id).await;
    tracing::info!(disk = id, "disk unplugged");
    Ok(())
}
