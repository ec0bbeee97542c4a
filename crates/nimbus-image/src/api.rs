//! Conversion between an imported image and the API's image status.

use nimbus_api::{DiskImage, ImageDefaults, ImageStatus, KernelImage};

use crate::{
    DiskFormat, DiskInfo, ImageConfig, ImageFormat, ImportedImage, KernelEntry, KernelInfo,
};

impl ImportedImage {
    /// The image as the API reports it.
    pub fn to_api(&self) -> ImageStatus {
        ImageStatus {
            format: match self.format {
                ImageFormat::Oci => "oci".into(),
                ImageFormat::Rootfs => "rootfs".into(),
                ImageFormat::Disk => "disk".into(),
                ImageFormat::Kernel => "kernel".into(),
            },
            digest: self.manifest_digest.clone(),
            layers: self.layers.clone(),
            size_bytes: self.size_bytes,
            architecture: self.architecture.clone(),
            defaults: ImageDefaults {
                env: self.config.env.clone(),
                entrypoint: self.config.entrypoint.clone(),
                cmd: self.config.cmd.clone(),
                working_dir: self.config.working_dir.clone(),
                user: self.config.user.clone(),
            },
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
        }
    }

    /// Back from the API's status, e.g. for an agent to find the layers.
    pub fn from_api(status: &ImageStatus) -> ImportedImage {
        ImportedImage {
            format: match status.format.as_str() {
                "oci" => ImageFormat::Oci,
                "disk" => ImageFormat::Disk,
                "kernel" => ImageFormat::Kernel,
                _ => ImageFormat::Rootfs,
            },
            manifest_digest: status.digest.clone(),
            layers: status.layers.clone(),
            config: ImageConfig {
                env: status.defaults.env.clone(),
                entrypoint: status.defaults.entrypoint.clone(),
                cmd: status.defaults.cmd.clone(),
                working_dir: status.defaults.working_dir.clone(),
                user: status.defaults.user.clone(),
            },
            size_bytes: status.size_bytes,
            architecture: status.architecture.clone(),
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
