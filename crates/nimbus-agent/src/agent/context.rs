//! The agent's side of [`DriverContext`]: what drivers may ask of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use nimbus_api::{Image, Instance};
use nimbus_image::ImageStore;

use super::error::AgentError;
use super::network::{Attachment, VmAttachment};
use super::Agent;
use crate::container::IdMap;
use crate::driver::DriverContext;

#[async_trait]
impl DriverContext for Agent {
    fn images(&self) -> Arc<ImageStore> {
        self.blobs.store()
    }

    async fn ensure_blobs(&self, image: &Image) -> Result<(), AgentError> {
        self.blobs.ensure(image).await
    }

    fn shim_exe(&self) -> PathBuf {
        self.config.exe.clone()
    }

    fn default_container_disk_bytes(&self) -> u64 {
        self.config.container_disk_bytes
    }

    async fn volume_file(&self, project: &str, name: &str) -> Result<PathBuf, AgentError> {
        self.local_volume(project, name).await.map(|(_, file)| file)
    }

    async fn volume_attach_info(
        &self,
        project: &str,
        name: &str,
    ) -> Result<(String, crate::volume::AttachInfo), AgentError> {
        let (v, _) = self.local_volume(project, name).await?;
        let backend = self
            .volume_backend
            .get()
            .ok_or_else(|| AgentError::VolumeNotReady {
                name: name.to_string(),
                detail: "this host's volume backend did not open (see the agent's log)".into(),
            })?;
        Ok((v.metadata.id.clone(), backend.attach_info(&v.metadata.id)))
    }

    async fn fetch_image(&self, project: &str, name: &str) -> Result<Image, AgentError> {
        self.client
            .get::<Image>(&format!("/v1/projects/{project}/images/{name}"))
            .await
            .map_err(|source| AgentError::ImageLookup {
                name: name.to_string(),
                source,
            })
    }

    /// The watch shows only the names; the values come from the server for
    /// this host's token alone.
    async fn secret_env(
        &self,
        instance: &Instance,
    ) -> Result<BTreeMap<String, String>, AgentError> {
        if instance.spec.secret_env.is_empty() {
            return Ok(Default::default());
        }
        let project = instance.metadata.project.clone().unwrap_or_default();
        let name = &instance.metadata.name;
        self.client
            .get::<nimbus_api::SecretEnv>(&format!(
                "/v1/projects/{project}/instances/{name}/secret-env"
            ))
            .await
            .map(|s| s.values)
            .map_err(|source| AgentError::SecretEnv {
                name: name.clone(),
                source,
            })
    }

    async fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, AgentError> {
        self.blobs.layer_dirs(image).await
    }

    async fn allocate_ids(&self, dir: &Path) -> Result<IdMap, AgentError> {
        self.ids.allocate(&self.config.instances_dir(), dir).await
    }

    async fn attach_container_network(
        &self,
        instance: &Instance,
        dir: &Path,
    ) -> Result<Option<Attachment>, AgentError> {
        Ok(self.net.attach_container(self, instance, dir).await?)
    }

    async fn attach_vm_network(
        &self,
        instance: &Instance,
    ) -> Result<Option<VmAttachment>, AgentError> {
        Ok(self.net.attach_vm(self, instance).await?)
    }
}

impl Agent {
    /// Volume `name` of `project` and its file, checked to be available
    /// on this host.
    async fn local_volume(
        &self,
        project: &str,
        name: &str,
    ) -> Result<(nimbus_api::Volume, PathBuf), AgentError> {
        let v: nimbus_api::Volume = self
            .client
            .get(&format!("/v1/projects/{project}/volumes/{name}"))
            .await
            .map_err(|source| AgentError::VolumeLookup {
                name: name.to_string(),
                source,
            })?;
        let file =
            crate::volume::attach::local_file(&v, &self.config.host_name).map_err(|detail| {
                AgentError::VolumeNotReady {
                    name: name.to_string(),
                    detail,
                }
            })?;
        Ok((v, file))
    }
}
