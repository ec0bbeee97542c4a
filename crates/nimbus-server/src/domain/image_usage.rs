//! The bytes of image content a project holds, as `--image-bytes` bounds
//! them: each distinct blob its images name or its registry repositories
//! link counted once, plus the bytes its open registry upload sessions
//! have received. A blob two projects hold counts in both.
//!
//! Pure: the caller reads the records, the blob sizes and the sessions
//! (`crate::image_quota`); here they are summed and checked.

use std::collections::BTreeMap;

use nimbus_api::units::format_size;

/// What a project holds in the image store now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageUsage {
    /// Distinct stored blobs its images and repositories name.
    pub stored_bytes: u64,
    /// Bytes its open upload sessions hold.
    pub uploading_bytes: u64,
}

impl ImageUsage {
    pub fn total(&self) -> u64 {
        self.stored_bytes.saturating_add(self.uploading_bytes)
    }
}

/// Image content the project's quota does not admit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("project {project:?} may hold {} ({limit} bytes) of images (quota --image-bytes); it holds {} ({used} bytes) and this needs {} more; nothing was kept. Delete images it no longer needs (`nimbus image rm <name>`, or registry tags and manifests) or ask an administrator to raise it (`nimbus quota set --image-bytes SIZE`)", format_size(*limit), format_size(*used), format_size(*more))]
pub struct ImageQuotaError {
    pub project: String,
    pub limit: u64,
    pub used: u64,
    pub more: u64,
}

/// The size of each distinct blob, from every list that names one
/// (digest → size), summed once per digest.
pub fn distinct_blob_bytes<'a>(lists: impl IntoIterator<Item = &'a BTreeMap<String, u64>>) -> u64 {
    let mut all: BTreeMap<&str, u64> = BTreeMap::new();
    for list in lists {
        for (digest, size) in list {
            all.insert(digest, *size);
        }
    }
    all.values().fold(0u64, |sum, s| sum.saturating_add(*s))
}

/// The project an upload session's owner label (`<project>/<repository>`)
/// belongs to.
pub fn upload_project(owner: &str) -> &str {
    owner.split_once('/').map_or(owner, |(project, _)| project)
}

/// The bytes of a project's open upload sessions over the life of one
/// request: a session seen once keeps counting with its last size after
/// it leaves the upload directory, because it has most likely become a
/// stored blob that the request's earlier reading of the records missed.
#[derive(Debug, Default)]
pub struct UploadTally {
    seen: BTreeMap<String, u64>,
}

impl UploadTally {
    /// Records the sessions open now (`(id, owner, bytes)`) and returns
    /// the bytes counted for `project`.
    pub fn observe<'a>(
        &mut self,
        project: &str,
        open: impl IntoIterator<Item = (&'a str, &'a str, u64)>,
    ) -> u64 {
        for (id, owner, bytes) in open {
            if upload_project(owner) == project {
                self.seen.insert(id.to_string(), bytes);
            }
        }
        self.seen
            .values()
            .fold(0u64, |sum, b| sum.saturating_add(*b))
    }
}

/// Refuses `more` bytes when the project, holding `used`, may hold
/// `limit` (none: unlimited).
pub fn check(
    project: &str,
    limit: Option<u64>,
    used: u64,
    more: u64,
) -> Result<(), ImageQuotaError> {
    match limit {
        Some(limit) if used.saturating_add(more) > limit => Err(ImageQuotaError {
            project: project.to_string(),
            limit,
            used,
            more,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
        entries.iter().map(|(d, s)| (d.to_string(), *s)).collect()
    }

    #[test]
    fn a_blob_named_by_several_images_and_repositories_counts_once() {
        let image_a = list(&[("sha256:aa", 100), ("sha256:cc", 5)]);
        let image_b = list(&[("sha256:aa", 100), ("sha256:bb", 20)]);
        let repository = list(&[("sha256:bb", 20), ("sha256:dd", 1)]);
        assert_eq!(distinct_blob_bytes([&image_a, &image_b, &repository]), 126);
        assert_eq!(distinct_blob_bytes(std::iter::empty()), 0);
    }

    #[test]
    fn sessions_count_for_their_project_only_and_keep_counting_once_closed() {
        let mut tally = UploadTally::default();
        let first = [
            ("s1", "ops/app", 10),
            ("s2", "ops/team/web", 5),
            ("s3", "dev/app", 1000),
        ];
        assert_eq!(tally.observe("ops", first), 15);
        // s1 grew, s2 closed (its bytes are a blob now), a new one opened.
        let later = [("s1", "ops/app", 30), ("s4", "ops/app", 2)];
        assert_eq!(tally.observe("ops", later), 37);
        assert_eq!(upload_project("ops/team/web"), "ops");
    }

    #[test]
    fn the_check_names_limit_use_and_what_to_do() {
        assert_eq!(check("ops", None, u64::MAX, 1), Ok(()));
        assert_eq!(check("ops", Some(100), 60, 40), Ok(()));
        let e = check("ops", Some(100), 60, 41).expect_err("over");
        assert_eq!((e.limit, e.used, e.more), (100, 60, 41));
        let text = e.to_string();
        for part in [
            "\"ops\"",
            "100 bytes",
            "60 bytes",
            "nimbus image rm",
            "--image-bytes",
        ] {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
    }
}
