//! The look-alike rule: a tarball whose top level holds an image archive's markers
//! (`manifest.json`, `index.json`, `oci-layout`) and no root filesystem is not imported
//! as a root filesystem. A root filesystem is a top level holding at least one of
//! [`FILESYSTEM_DIRS`]. Without the rule, such a tarball imports as a "rootfs" holding
//! JSON files and layer tars, and fails only at launch with "no default command".

use std::collections::BTreeSet;
use std::path::Path;

use crate::error::ImageError;

/// Top-level directories that make a tarball a root filesystem (FHS).
pub(crate) const FILESYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "home", "lib", "lib64", "opt", "root", "sbin", "srv", "usr", "var",
];

/// Files at the root of an image archive.
const MARKERS: &[&str] = &["manifest.json", "index.json", "oci-layout"];

pub(crate) fn has_root_filesystem(top_level: &BTreeSet<String>) -> bool {
    FILESYSTEM_DIRS.iter().any(|d| top_level.contains(*d))
}

/// Refuses a would-be root filesystem that is an image archive in disguise, naming the
/// format it looks like and what to do.
pub(crate) fn refuse_lookalike(
    top_level: &BTreeSet<String>,
    compressed: bool,
) -> Result<(), ImageError> {
    let markers: Vec<&str> = MARKERS
        .iter()
        .copied()
        .filter(|m| top_level.contains(*m))
        .collect();
    if markers.is_empty() || has_root_filesystem(top_level) {
        return Ok(());
    }
    let has = |name: &str| top_level.contains(name);
    let looks_like = if has("oci-layout") || (has("index.json") && !has("manifest.json")) {
        "an OCI image layout"
    } else {
        "a docker-archive"
    };
    let detail = if compressed {
        format!(
            "this looks like a compressed {} tar; decompress it first (`gunzip` or `zstd -d`) \
             and import the .tar",
            looks_like
                .trim_start_matches("an ")
                .trim_start_matches("a ")
        )
    } else if looks_like == "an OCI image layout" {
        let missing = match (has("oci-layout"), has("blobs")) {
            (false, false) => "its `oci-layout` file and its blobs",
            (false, true) => "its `oci-layout` file",
            _ => "its blobs",
        };
        format!(
            "this looks like an OCI image layout tar that is missing {missing}; re-create it \
             with `skopeo copy ... oci-archive:image.tar` or `podman save --format oci-archive`"
        )
    } else {
        "this looks like a docker-archive; re-create it with `podman save` or `docker save`"
            .to_string()
    };
    Err(ImageError::LooksLikeImageArchive {
        markers: markers.join(", "),
        detail,
    })
}

/// The names at the top level of an unpacked directory.
pub(crate) fn top_level_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_root_filesystem_with_a_manifest_json_is_still_a_rootfs() {
        assert!(refuse_lookalike(&names(&["manifest.json", "bin", "app"]), false).is_ok());
        assert!(refuse_lookalike(&names(&["hello.txt"]), false).is_ok());
    }

    #[test]
    fn an_oci_layout_without_its_blobs_is_named() {
        let err = refuse_lookalike(&names(&["index.json", "oci-layout"]), false).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("OCI image layout tar that is missing its blobs"),
            "{text}"
        );
        assert!(text.contains("none of"), "the rule is stated: {text}");
        let err = refuse_lookalike(&names(&["index.json"]), false).unwrap_err();
        assert!(err
            .to_string()
            .contains("missing its `oci-layout` file and its blobs"));
    }

    #[test]
    fn compressed_archives_are_told_to_decompress() {
        let err = refuse_lookalike(&names(&["manifest.json", "abc.tar"]), true).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("compressed docker-archive"), "{text}");
        assert!(text.contains("gunzip"), "{text}");
        let err =
            refuse_lookalike(&names(&["oci-layout", "index.json", "blobs"]), true).unwrap_err();
        assert!(err.to_string().contains("compressed OCI image layout"));
    }
}
