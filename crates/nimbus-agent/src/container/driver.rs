//! The container [`Driver`]: `spec.json` from the instance and its image,
//! a network namespace from the agent, then the shim runs the container.

use std::path::Path;

use async_trait::async_trait;
use nimbus_api::InstanceKind;

use super::spec::{ShimSpec, SPEC_FILE};
use crate::agent::error::{blocking, AgentError};
use crate::agent::translate;
use crate::driver::{Driver, DriverContext, Launch};

pub struct ContainerDriver;

#[async_trait]
impl Driver for ContainerDriver {
    fn name(&self) -> &'static str {
        "container"
    }

    fn serves(&self, kind: InstanceKind) -> bool {
        kind == InstanceKind::Container
    }

    fn owns_dir(&self, dir: &Path) -> bool {
        dir.join(SPEC_FILE).exists()
    }

    fn secure_dir(&self, dir: &Path) -> Result<(), AgentError> {
        let spec = ShimSpec::load(dir)?;
        Ok(super::rootfs::secure_instance_dir(dir, spec.id_map)?)
    }

    async fn prepare(&self, cx: &dyn DriverContext, launch: Launch<'_>) -> Result<(), AgentError> {
        let Launch {
            instance,
            image,
            dir,
            restarts_before,
        } = launch;
        let layers = cx.layer_dirs(image).await?;
        std::fs::create_dir_all(dir)
            .map_err(|e| AgentError::io(format!("creating {}", dir.display()), e))?;
        let id_map = cx.allocate_ids(dir).await?;
        let secret_env = cx.secret_env(instance).await?;
        let mut spec = translate::shim_spec(instance, image, layers, id_map, &secret_env);
        spec.restarts_before = restarts_before;
        spec.disk_bytes = spec.disk_bytes.or(Some(cx.default_container_disk_bytes()));
        let project = instance.metadata.project.as_deref().unwrap_or_default();
        let mut wanted = Vec::new();
        for m in &instance.spec.volumes {
            let file = cx.volume_file(project, &m.volume).await?;
            wanted.push((m.clone(), file));
        }
        let owned = dir.to_path_buf();
        // Made by the container's root: its writes land as the mapped root.
        let owner = (id_map.host_id, id_map.host_id);
        spec.volumes = blocking("mounting the instance's volumes", move || {
            crate::volume::attach::attach_all(&owned, &wanted, owner)
        })
        .await?;
        spec.save(dir)?;
        Ok(())
    }

    /// Mount or unmount volumes in the running container
    /// (`live_volumes.rs`).
    async fn sync_volumes(
        &self,
        cx: &dyn DriverContext,
        instance: &nimbus_api::Instance,
        dir: &Path,
    ) -> Option<Vec<nimbus_api::AttachedVolume>> {
        super::live_volumes::sync(cx, instance, dir).await
    }

    /// The shared clean-up, plus the rootfs and layer mounts and the
    /// runtime, bundle and work directories; then the volumes, once no
    /// process of the container holds them.
    async fn clean_up(&self, dir: &Path) -> Result<(), AgentError> {
        let owned = dir.to_path_buf();
        blocking("cleaning up after the container shim", move || {
            super::cleanup_instance_dir(&owned)
        })
        .await?;
        let owned = dir.to_path_buf();
        blocking("unmounting the instance's volumes", move || {
            crate::volume::attach::detach_all(&owned)
        })
        .await
    }

    async fn attach_networks(
        &self,
        cx: &dyn DriverContext,
        launch: Launch<'_>,
    ) -> Result<(), AgentError> {
        let Some(a) = cx
            .attach_container_network(launch.instance, launch.dir)
            .await?
        else {
            return Ok(());
        };
        let mut spec = ShimSpec::load(launch.dir)?;
        spec.netns = Some(a.netns);
        spec.resolv_conf = Some(a.resolv_conf);
        spec.hosts_file = Some(a.hosts_file);
        spec.save(launch.dir)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_directory_is_known_by_its_spec() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!ContainerDriver.owns_dir(dir.path()));
        std::fs::write(dir.path().join(SPEC_FILE), b"{}").expect("write spec.json");
        assert!(ContainerDriver.owns_dir(dir.path()));
        assert!(ContainerDriver.serves(InstanceKind::Container));
        assert!(!ContainerDriver.serves(InstanceKind::Vm));
    }
}
