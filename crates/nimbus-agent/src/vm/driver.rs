//! The VM and unikernel [`Driver`]: overlay, seed and `vm.json` from the
//! instance and its image, a tap from the agent, then the shim runs QEMU.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use nimbus_api::{HostStatus, InstanceKind};

use super::probe::{probe, ProbeResult};
use super::spec::{Accelerator, RunAs, TapRef, VmShimSpec, VmVolume, VM_SPEC_FILE};
use crate::agent::error::{blocking, AgentError};
use crate::agent::translate;
use crate::driver::{Driver, DriverContext, Launch};

pub struct VmDriver {
    /// Where the accelerator probe writes its firmware image.
    data_dir: PathBuf,
    /// The accelerator VMs use here, probed once (see [`probe`]).
    accelerator: tokio::sync::OnceCell<ProbeResult>,
}

impl VmDriver {
    pub fn new(data_dir: &Path) -> Self {
        VmDriver {
            data_dir: data_dir.to_path_buf(),
            accelerator: tokio::sync::OnceCell::new(),
        }
    }

    /// Which accelerator VMs use here, and why; probed on first use.
    pub async fn accelerator(&self) -> ProbeResult {
        self.accelerator
            .get_or_init(|| async {
                let dir = self.data_dir.clone();
                let result = tokio::task::spawn_blocking(move || probe(&dir))
                    .await
                    .unwrap_or_else(|e| ProbeResult {
                        accelerator: Accelerator::Tcg,
                        reason: format!("the accelerator probe crashed ({e}); using TCG"),
                    });
                tracing::info!(accelerator = result.accelerator.as_str(), reason = %result.reason, "VM accelerator chosen");
                result
            })
            .await
            .clone()
    }
}

#[async_trait]
impl Driver for VmDriver {
    fn name(&self) -> &'static str {
        "vm"
    }

    fn runs_an_emulator(&self) -> bool {
        true
    }

    fn serves(&self, kind: InstanceKind) -> bool {
        matches!(kind, InstanceKind::Vm | InstanceKind::Unikernel)
    }

    fn owns_dir(&self, dir: &Path) -> bool {
        dir.join(VM_SPEC_FILE).exists()
    }

    /// Root's alone: QEMU opens its files before dropping its ids.
    fn secure_dir(&self, dir: &Path) -> Result<(), AgentError> {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| AgentError::io(format!("restricting {}", dir.display()), e))
    }

    async fn describe_host(&self, status: &mut HostStatus) {
        let accel = self.accelerator().await;
        status.accelerator = accel.accelerator.as_str().to_string();
        status.accelerator_reason = accel.reason;
    }

    /// Overlay, seed and `vm.json`.
    async fn prepare(&self, cx: &dyn DriverContext, launch: Launch<'_>) -> Result<(), AgentError> {
        let Launch {
            instance,
            image,
            dir,
            ..
        } = launch;
        let accel = self.accelerator().await;
        let kernel_image = match instance
            .spec
            .vm
            .as_ref()
            .and_then(|v| v.kernel_image.clone())
        {
            Some(name) => {
                let project = instance.metadata.project.clone().unwrap_or_default();
                Some(cx.fetch_image(&project, &name).await?)
            }
            None => None,
        };
        for needed in std::iter::once(image).chain(kernel_image.as_ref()) {
            cx.ensure_blobs(needed).await?;
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| AgentError::io(format!("creating {}", dir.display()), e))?;
        // QEMU drops to the first id of the instance's own range: the range
        // is recorded in vm.json, so it stays across restarts and is
        // released with the instance.
        let ids = cx.allocate_ids(dir).await?;
        let run_as = RunAs::Ids {
            uid: ids.host_id,
            gid: ids.host_id,
        };
        let volumes = volumes_of(cx, instance).await?;
        let images = cx.images();
        let (instance, image, dir) = (instance.clone(), image.clone(), dir.to_path_buf());
        blocking("preparing the VM", move || {
            super::prepare_instance(
                &dir,
                run_as,
                &instance,
                &image,
                kernel_image.as_ref(),
                &images,
                &accel,
                volumes,
                instance
                    .spec
                    .stop_grace_ms
                    .unwrap_or(translate::DEFAULT_STOP_GRACE_MS),
                translate::log_rotation(&instance),
            )
            .map(drop)
        })
        .await
    }

    async fn sync_volumes(
        &self,
        cx: &dyn DriverContext,
        instance: &nimbus_api::Instance,
        dir: &Path,
    ) -> Option<Vec<nimbus_api::AttachedVolume>> {
        let recorded = VmShimSpec::load(dir).ok()?.volumes;
        let mut wanted = Vec::new();
        let mut unknown = Vec::new();
        for m in &instance.spec.volumes {
            match volume_of(cx, instance, m).await {
                Ok(v) => wanted.push(v),
                // Attached already: kept, whatever the lookup says now.
                Err(_) if recorded.iter().any(|r| r.name == m.volume) => {
                    wanted.extend(recorded.iter().find(|r| r.name == m.volume).cloned())
                }
                Err(e) => unknown.push(nimbus_api::AttachedVolume {
                    volume: m.volume.clone(),
                    state: "failed".into(),
                    message: Some(e.to_string()),
                }),
            }
        }
        let mut states = super::hotplug::sync(dir, wanted).await?;
        states.extend(unknown);
        Some(states)
    }

    async fn attach_networks(
        &self,
        cx: &dyn DriverContext,
        launch: Launch<'_>,
    ) -> Result<(), AgentError> {
        let Launch { instance, dir, .. } = launch;
        let Some(a) = cx.attach_vm_network(instance).await? else {
            return Ok(());
        };
        if instance.spec.kind == InstanceKind::Vm {
            // A stock cloud image takes its address from the seed's
            // network-config; other guests ask the router's DHCP.
            let (d, i, config) = (
                dir.to_path_buf(),
                instance.clone(),
                a.config.network_config_v2(),
            );
            blocking("writing the VM's seed", move || {
                super::write_seed(&d, &i, Some(config))
            })
            .await?;
        }
        let mut spec = VmShimSpec::load(dir)?;
        spec.tap = Some(TapRef {
            netns: a.router_netns,
            name: a.tap_name,
            mac: a.config.mac.clone(),
        });
        spec.save(dir)?;
        Ok(())
    }
}

/// A volume the instance names, as a disk QEMU opens.
async fn volume_of(
    cx: &dyn DriverContext,
    instance: &nimbus_api::Instance,
    m: &nimbus_api::VolumeMount,
) -> Result<VmVolume, AgentError> {
    let project = instance.metadata.project.clone().unwrap_or_default();
    let (volume_id, info) = cx.volume_attach_info(&project, &m.volume).await?;
    Ok(VmVolume {
        volume_id,
        name: m.volume.clone(),
        blockdev: info.blockdev,
        file: info.path,
        read_only: m.read_only,
    })
}

/// Every volume the instance names; the first that is not ready here
/// fails the start with its reason.
async fn volumes_of(
    cx: &dyn DriverContext,
    instance: &nimbus_api::Instance,
) -> Result<Vec<VmVolume>, AgentError> {
    let mut volumes = Vec::new();
    for m in &instance.spec.volumes {
        volumes.push(volume_of(cx, instance, m).await?);
    }
    Ok(volumes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_driver_serves_vms_and_unikernels_known_by_vm_json() {
        let data = tempfile::tempdir().expect("tempdir");
        let driver = VmDriver::new(data.path());
        assert!(driver.serves(InstanceKind::Vm));
        assert!(driver.serves(InstanceKind::Unikernel));
        assert!(!driver.serves(InstanceKind::Container));
        let dir = data.path().join("i1");
        std::fs::create_dir_all(&dir).expect("mkdir");
        assert!(!driver.owns_dir(&dir));
        std::fs::write(dir.join(VM_SPEC_FILE), b"{}").expect("write vm.json");
        assert!(driver.owns_dir(&dir));
    }
}
