//! Conversion between an imported image and the API's image status.

use nimbus_api::{ImageDefaults, ImageStatus};

use crate::{ImageConfig, ImageFormat, ImportedImage};

impl ImportedImage {
    /// The image as the API reports it.
    pub fn to_api(&self) -> ImageStatus {
        ImageStatus {
            format: match self.format {
                ImageFormat::Oci => "oci".into(),
                ImageFormat::Rootfs => "rootfs".into(),
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
        }
    }

    /// Back from the API's status, e.g. for an agent to find the layers.
    pub fn from_api(status: &ImageStatus) -> ImportedImage {
        ImportedImage {
            format: if status.format == "oci" {
                ImageFormat::Oci
            } else {
                ImageFormat::Rootfs
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
        };
        assert_eq!(ImportedImage::from_api(&img.to_api()), img);
    }
}
