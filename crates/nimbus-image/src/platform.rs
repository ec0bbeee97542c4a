//! Platforms of multi-architecture images: which ones an image has, and the image as a
//! given host runs it (that platform's manifest, layers and config).

use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use crate::{ImageConfig, ImportedImage};

/// One platform of an image with a manifest (OCI names: `linux`, `arm64`, `v8`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImagePlatform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// `sha256:...` of this platform's manifest.
    pub manifest_digest: String,
    /// Layer blob digests, lowest first.
    pub layers: Vec<String>,
    pub config: ImageConfig,
}

impl ImagePlatform {
    /// `linux/arm64` or `linux/arm64/v8`.
    pub fn name(&self) -> String {
        platform_name(&self.os, &self.architecture, self.variant.as_deref())
    }
}

fn platform_name(os: &str, architecture: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("{os}/{architecture}/{v}"),
        None => format!("{os}/{architecture}"),
    }
}

/// This machine's architecture in OCI names (`uname -m` x86_64 is `amd64`).
pub fn host_platform() -> &'static str {
    oci_architecture(std::env::consts::ARCH)
}

/// Maps a `uname -m` style name to its OCI name; OCI names map to themselves.
pub fn oci_architecture(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" | "ppc64le" => "ppc64le",
        "i686" | "i386" => "386",
        other => other,
    }
}

impl ImportedImage {
    /// Whether a host of `architecture` (OCI or `uname -m` name) can run the image.
    /// Images without platforms (root filesystems, disks, kernels) run anywhere.
    pub fn runs_on(&self, architecture: &str) -> bool {
        let wanted = oci_architecture(architecture);
        self.platforms.is_empty()
            || self
                .platforms
                .iter()
                .any(|p| p.os == "linux" && p.architecture == wanted)
    }

    /// The platforms the image has, as `linux/amd64, linux/arm64`.
    pub fn platform_names(&self) -> String {
        self.platforms
            .iter()
            .map(ImagePlatform::name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The image as a host of `architecture` runs it: that platform's manifest, layers
    /// and config in the top-level fields. An image without platforms is unchanged.
    pub fn for_architecture(&self, architecture: &str) -> Result<ImportedImage, ImageError> {
        if self.platforms.is_empty() {
            return Ok(self.clone());
        }
        let wanted = oci_architecture(architecture);
        let platform = self
            .platforms
            .iter()
            .find(|p| p.os == "linux" && p.architecture == wanted)
            .ok_or_else(|| ImageError::NoPlatformForHost {
                available: self.platform_names(),
                host: platform_name("linux", wanted, None),
            })?;
        Ok(ImportedImage {
            manifest_digest: platform.manifest_digest.clone(),
            layers: platform.layers.clone(),
            config: platform.config.clone(),
            architecture: platform.architecture.clone(),
            ..self.clone()
        })
    }

    /// The platform a host of `architecture` runs, as `linux/amd64`; `None` for
    /// images without platforms.
    pub fn platform_for(&self, architecture: &str) -> Option<String> {
        let wanted = oci_architecture(architecture);
        self.platforms
            .iter()
            .find(|p| p.os == "linux" && p.architecture == wanted)
            .map(ImagePlatform::name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageFormat;

    fn platform(architecture: &str, layer: &str) -> ImagePlatform {
        ImagePlatform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
            manifest_digest: format!("sha256:m-{architecture}"),
            layers: vec![layer.into()],
            config: ImageConfig::default(),
        }
    }

    fn image(platforms: Vec<ImagePlatform>) -> ImportedImage {
        ImportedImage {
            format: ImageFormat::Oci,
            manifest_digest: "sha256:m-amd64".into(),
            layers: vec!["sha256:amd".into()],
            config: ImageConfig::default(),
            size_bytes: 1,
            architecture: "amd64".into(),
            platforms,
            disk: None,
            kernel: None,
        }
    }

    #[test]
    fn a_host_gets_its_platforms_layers() {
        let img = image(vec![
            platform("amd64", "sha256:amd"),
            platform("arm64", "sha256:arm"),
        ]);
        let arm = img.for_architecture("aarch64").unwrap();
        assert_eq!(arm.layers, ["sha256:arm"]);
        assert_eq!(arm.manifest_digest, "sha256:m-arm64");
        assert!(img.runs_on("x86_64") && img.runs_on("arm64"));
        assert_eq!(img.platform_for("x86_64").as_deref(), Some("linux/amd64"));
    }

    #[test]
    fn a_missing_platform_is_refused_listing_the_others() {
        let img = image(vec![platform("arm64", "sha256:arm")]);
        assert!(!img.runs_on("x86_64"));
        let err = img.for_architecture("x86_64").unwrap_err().to_string();
        assert!(
            err.contains("has linux/arm64; this host is linux/amd64"),
            "{err}"
        );
        let anywhere = image(Vec::new());
        assert!(anywhere.runs_on("riscv64"));
        assert_eq!(anywhere.for_architecture("riscv64").unwrap(), anywhere);
    }
}
