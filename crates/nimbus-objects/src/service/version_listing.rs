//! ListObjectVersions: every version and delete marker of a bucket, in
//! key order and each key's newest first, with prefix, delimiter and
//! key/version-id markers. A bucket that never had versioning lists each
//! object as its `null` version.

use s3s::dto::*;
use s3s::S3Result;

use super::versioning::invalid_version_id;
use super::{common_prefixes, timestamp, NimbusS3};
use crate::keys;
use crate::listing::{resume_after, Page};
use crate::records::ObjectRecord;
use crate::versioning::{parse_version_id, LatestTracker, VersionRef, NULL_VERSION};

impl NimbusS3 {
    pub(super) async fn list_versions(
        &self,
        input: ListObjectVersionsInput,
    ) -> S3Result<ListObjectVersionsOutput> {
        let bucket = self.existing_bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000);
        let delimiter = input.delimiter.as_deref();
        let key_marker = input.key_marker.as_deref().filter(|k| !k.is_empty());
        let version_marker = input.version_id_marker.as_deref().filter(|v| !v.is_empty());
        let (page, resumed_in_key) = match bucket.versioning {
            // Every object is its own `null` version.
            None => (
                self.list_page(
                    &bucket.name,
                    &prefix,
                    delimiter,
                    max_keys as usize,
                    key_marker,
                )
                .await?,
                None,
            ),
            Some(_) => {
                let after = match key_marker {
                    Some(k) => Some(
                        self.resume_point(&bucket.name, k, version_marker, &prefix, delimiter)
                            .await?,
                    ),
                    None => None,
                };
                let page = self
                    .version_page(&bucket.name, &prefix, delimiter, max_keys as usize, after)
                    .await?;
                (page, key_marker.filter(|_| version_marker.is_some()))
            }
        };
        let next_version_id_marker = page
            .next_marker
            .as_ref()
            .filter(|m| page.common_prefixes.last() != Some(*m))
            .and_then(|_| page.objects.last())
            .map(|(_, r)| r.version_id().unwrap_or_else(|| NULL_VERSION.to_string()));
        let mut latest = LatestTracker::new(resumed_in_key);
        let mut versions = Vec::new();
        let mut markers = Vec::new();
        for (key, record) in page.objects {
            let is_latest = Some(latest.is_latest(&key));
            let version_id = Some(
                record
                    .version_id()
                    .unwrap_or_else(|| NULL_VERSION.to_string()),
            );
            if record.is_delete_marker() {
                markers.push(DeleteMarkerEntry {
                    is_latest,
                    key: Some(key),
                    last_modified: Some(timestamp(record.last_modified)),
                    version_id,
                    ..Default::default()
                });
            } else {
                versions.push(ObjectVersion {
                    e_tag: Some(ETag::Strong(record.etag)),
                    is_latest,
                    key: Some(key),
                    last_modified: Some(timestamp(record.last_modified)),
                    size: Some(record.size as i64),
                    storage_class: Some(ObjectVersionStorageClass::from_static(
                        ObjectVersionStorageClass::STANDARD,
                    )),
                    version_id,
                    ..Default::default()
                });
            }
        }
        Ok(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: Some(prefix),
            delimiter: input.delimiter,
            max_keys: Some(max_keys),
            key_marker: input.key_marker,
            version_id_marker: input.version_id_marker,
            is_truncated: Some(page.next_marker.is_some()),
            next_key_marker: page.next_marker,
            next_version_id_marker,
            common_prefixes: common_prefixes(&page.common_prefixes),
            versions: Some(versions),
            delete_markers: (!markers.is_empty()).then_some(markers),
            encoding_type: input.encoding_type,
            ..Default::default()
        })
    }

    /// The store key (under the bucket's versions) a listing resumes after:
    /// just after the marker version, or after every version of the key
    /// (or of the common prefix) named.
    async fn resume_point(
        &self,
        bucket: &str,
        key_marker: &str,
        version_marker: Option<&str>,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> S3Result<String> {
        match version_marker.map(|id| (id, parse_version_id(id))) {
            // The id names its place, even once that version is deleted.
            Some((_, Some(VersionRef::Token(token)))) => {
                return Ok(keys::version(bucket, key_marker, token))
            }
            Some((id, Some(VersionRef::Null))) => {
                if let Some(found) = self.find_version(bucket, key_marker, id).await? {
                    return Ok(found.key);
                }
            }
            Some((id, None)) => return Err(invalid_version_id(id)),
            None => {}
        }
        let base = keys::versions_of(bucket);
        Ok(match resume_after(key_marker, prefix, delimiter) {
            k if k == key_marker => format!("{}{}", keys::versions_of_key(bucket, &k), char::MAX),
            past => format!("{base}{past}"),
        })
    }

    /// Up to `max_keys` versions, markers and common prefixes, in key
    /// order and each key's newest first, after the store key `after`.
    async fn version_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        max_keys: usize,
        after: Option<String>,
    ) -> S3Result<Page<ObjectRecord>> {
        let base = keys::versions_of(bucket);
        let key_of =
            |rest: &str, _: &ObjectRecord| keys::split_version(rest).map(|(k, _)| k.into());
        self.walk_listing(&base, prefix, delimiter, max_keys, after, key_of)
            .await
    }
}
