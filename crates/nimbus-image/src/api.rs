//! Conversion between an imported image and the API's image status.

use nimbus_api::{DiskImage, ImageDefaults, ImagePlatformStatus, ImageStatus, KernelImage};

use crate::{
    DiskFormat, DiskInfo, ImageConfig, ImageFormat, ImagePlatform, ImportedImage, KernelEntry,
    KernelInfo,
};

fn defaults_of(config: &ImageConfig) -> ImageDefaults {
    ImageDefaults {
        env: config.env.clone(),
        entrypoint: config.entrypoint.clone(),
        cmd: config.cmd.clone(),
        working_dir: config.working_dir.clone(),
        user: config.user.clone(),
    }
}

fn config_of(defaults: &ImageDefaults) -> ImageConfig {
    ImageConfig {
        env: defaults.env.clone(),
        entrypoint: defaults.entrypoint.clone(),
        cmd: defaults.cmd.clone(),
        working_dir: defaults.working_dir.clone(),
        user: defaults.user.clone(),
    }
}

impl ImportedImage {
    /// The image as the API reports it.
    pub fn to_api(&self) -> ImageStatus {
        ImageStatus {
            format: match self.format {
                ImageFormat::Oci => "oci".into(),
                ImageFormat::DockerArchive => "docker-archive".into(),
                ImageFormat::Rootfs => "rootfs".into(),
                ImageFormat::Disk => "disk".into(),
                ImageFormat::Kernel => "kernel".into(),
            },
            digest: self.manifest_digest.clone(),
            layers: self.layers.clone(),
            size_bytes: self.size_bytes,
            architecture: self.architecture.clone(),
            defaults: defaults_of(&self.config),
            platforms: self
                .platforms
                .iter()
                .map(|p| ImagePlatformStatus {
                    os: p.os.clone(),
                    architecture: p.architecture.clone(),
                    variant: p.variant.clone(),
                    digest: p.manifest_digest.clone(),
                    layers: p.layers.clone(),
                    defaults: defaults_of(&p.config),
                })
                .collect(),
            disk: self.disk.as_ref().map(|d| DiskImage {
                digest: d.digest.clone(),
                format: d.format.as_str().into(),
                virtual_size_bytes: d.virtual_size_bytes,
            }),
            kernel: self.kernel.as_ref().map(|k| KernelImage {
                digest: k.digest.clone(),
                initrd: k.initrd.clone(),
                entry: k.entry.as_str().into(),
            }),
            // Joined from the stored scan when the server reads one image.
            vulnerabilities: None,
        }
    }

    /// Back from the API's status, e.g. for an agent to find the layers.
    pub fn from_api(status: &ImageStatus) -> ImportedImage {
        ImportedImage {
            format: match status.format.as_str() {
                "oci" => ImageFormat::Oci,
                "docker-archive" => ImageFormat::DockerArchive,
                "disk" => ImageFormat::Disk,
                "kernel" => ImageFormat::Kernel,
                _ => ImageFormat::Rootfs,
            },
            manifest_digest: status.digest.clone(),
            layers: status.layers.clone(),
            config: config_of(&status.defaults),
            size_bytes: status.size_bytes,
            architecture: status.architecture.clone(),
            platforms: status
                .platforms
                .iter()
                .map(|p| ImagePlatform {
                    os: p.os.clone(),
                    architecture: p.architecture.clone(),
                    variant: p.variant.clone(),
                    manifest_digest: p.digest.clone(),
                    layers: p.layers.clone(),
                    config: config_of(&p.defaults),
                })
                .collect(),
            disk: status.disk.as_ref().map(|d| DiskInfo {
                digest: d.digest.clone(),
                format: if d.format == "raw" {
                    DiskFormat::Raw
                } else {
                    DiskFormat::Qcow2
                },
                virtual_size_bytes: d.virtual_size_bytes,
            }),
            kernel: status.kernel.as_ref().map(|k| KernelInfo {
                digest: k.digest.clone(),
                initrd: k.initrd.clone(),
                entry: if k.entry == "multiboot" {
                    KernelEntry::Multiboot
                } else {
                    KernelEntry::Pvh
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_api_status() {
        let img = ImportedImage {
            format: ImageFormat::Oci,
            manifest_digest: "sha256:ab".into(),
            layers: vec!["sha256:cd".into()],
            config: ImageConfig {
                env: vec!["A=1".into()],
                entrypoint: vec!["/bin/sh".into()],
                cmd: vec!["-c".into(), "true".into()],
                working_dir: Some("/w".into()),
                user: Some("1000".into()),
            },
            size_bytes: 42,
            architecture: "amd64".into(),
            platforms: vec![ImagePlatform {
                os: "linux".into(),
                architecture: "arm64".into(),
                variant: Some("v8".into()),
                manifest_digest: "sha256:ef".into(),
                layers: vec!["sha256:01".into()],
                config: ImageConfig::default(),
            }],
            disk: None,
            kernel: None,
        };
        assert_eq!(ImportedImage::from_api(&img.to_api()), img);
        let disk = ImportedImage {
            format: ImageFormat::Kernel,
            manifest_digest: "sha256:ab".into(),
            layers: vec![],
            config: ImageConfig::default(),
            size_bytes: 7,
            architecture: "amd64".into(),
            platforms: Vec::new(),
            disk: None,
            kernel: Some(KernelInfo {
                digest: "sha256:ab".into(),
                initrd: Some("sha256:cd".into()),
                entry: KernelEntry::Multiboot,
            }),
        };
        assert_eq!(ImportedImage::from_api(&disk.to_api()), disk);
        assert_eq!(ImportedImage::from_api(&img.to_api()), img);
    }
}
