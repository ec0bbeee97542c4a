//! Bucket versioning: the bucket setting, writes and deletes in a bucket
//! whose versioning was ever set, reads of one version, and
//! ListObjectVersions. The layout and the pure rules are in
//! [`crate::versioning`]; a bucket that never had versioning never comes
//! here.
//!
//! Every change to a key compares the revision of its head record
//! (`/s3/objects/<bucket>/<key>`, a copy of the newest version), so
//! writers of one key are serialised exactly as unversioned writes are,
//! and the head and the version records change in one transaction: no
//! reader sees a version without its head or the reverse.

use hyper::header::HeaderValue;
use nimbus_store::{Compare, Op, Revision, Txn};
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3Result};

use super::{internal, BucketState, NimbusS3, LIST_BATCH};
use crate::data::DataId;
use crate::keys;
use crate::records::{decode, encode, BucketRecord, ObjectRecord, Versioning};
use crate::versioning::{self as v, VersionRef, NULL_VERSION};

/// One stored version: its store key, record and revision.
pub(super) struct StoredVersion {
    pub key: String,
    pub record: ObjectRecord,
    pub revision: Revision,
}

/// What a DELETE did.
pub(super) struct Deleted {
    /// The marker made, or the version removed (none in a bucket that
    /// never had versioning).
    pub version_id: Option<String>,
    /// A marker was made, or the version removed was one.
    pub delete_marker: bool,
}

impl Deleted {
    /// Its DeleteObjects entry, for a request naming `asked` (if any).
    pub(super) fn entry(self, key: String, asked: Option<String>) -> DeletedObject {
        DeletedObject {
            key: Some(key),
            delete_marker: self.delete_marker.then_some(true),
            delete_marker_version_id: self.version_id.filter(|_| self.delete_marker),
            version_id: asked,
        }
    }
}

/// `e` with the headers S3 adds when a delete marker answered: clients
/// tell "deleted" from "never existed" by them.
pub(super) fn marker_error(mut e: S3Error, marker: &ObjectRecord) -> S3Error {
    let mut headers = hyper::HeaderMap::new();
    headers.insert("x-amz-delete-marker", HeaderValue::from_static("true"));
    if let Some(id) = marker
        .version_id()
        .and_then(|id| HeaderValue::from_str(&id).ok())
    {
        headers.insert("x-amz-version-id", id);
    }
    e.set_headers(headers);
    e
}

fn status(mode: Versioning) -> BucketVersioningStatus {
    BucketVersioningStatus::from_static(match mode {
        Versioning::Enabled => BucketVersioningStatus::ENABLED,
        Versioning::Suspended => BucketVersioningStatus::SUSPENDED,
    })
}

fn parse_status(s: Option<&BucketVersioningStatus>) -> S3Result<Versioning> {
    match s.map(BucketVersioningStatus::as_str) {
        Some(BucketVersioningStatus::ENABLED) => Ok(Versioning::Enabled),
        Some(BucketVersioningStatus::SUSPENDED) => Ok(Versioning::Suspended),
        other => Err(s3_error!(
            MalformedXML,
            "versioning Status must be Enabled or Suspended, not {other:?}"
        )),
    }
}

pub(super) fn invalid_version_id(id: &str) -> S3Error {
    s3_error!(
        InvalidArgument,
        "version id {id:?} is not one this server gives; list them with `aws s3api list-object-versions`"
    )
}

impl NimbusS3 {
    pub(super) async fn get_versioning(
        &self,
        input: GetBucketVersioningInput,
    ) -> S3Result<GetBucketVersioningOutput> {
        let bucket = self.existing_bucket(&input.bucket).await?;
        Ok(GetBucketVersioningOutput {
            status: bucket.versioning.map(status),
            ..Default::default()
        })
    }

    /// Set the bucket's versioning, then make every object stored before
    /// into its `null` version. Writes that raced the change are redone
    /// under it (their commit compares the bucket's revision); a crash
    /// before every object is adopted leaves the rest to their next write
    /// or to setting the status again.
    pub(super) async fn put_versioning(
        &self,
        input: PutBucketVersioningInput,
    ) -> S3Result<PutBucketVersioningOutput> {
        let mode = parse_status(input.versioning_configuration.status.as_ref())?;
        loop {
            let bucket = self.bucket_state(&input.bucket).await?;
            let key = keys::bucket(&input.bucket);
            let record = BucketRecord {
                versioning: Some(mode),
                ..bucket.record
            };
            let done = self
                .store
                .txn(Txn {
                    compares: vec![Compare::ModRevision(key.clone(), bucket.revision)],
                    success: vec![Op::Put {
                        key,
                        value: encode(&record),
                    }],
                    failure: vec![],
                })
                .await
                .map_err(|e| internal("setting bucket versioning", e))?;
            if done.succeeded {
                break;
            }
        }
        self.adopt_unversioned(&input.bucket).await?;
        Ok(PutBucketVersioningOutput::default())
    }

    async fn adopt_unversioned(&self, bucket: &str) -> S3Result<()> {
        let base = keys::objects_of(bucket);
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list(&base, after.as_deref(), LIST_BATCH)
                .await
                .map_err(|e| internal("listing objects to version", e))?;
            for kv in &page.kvs {
                let record: ObjectRecord = decode("object", &kv.key, &kv.value)
                    .map_err(|e| internal("listing objects to version", e))?;
                if record.version.is_none() {
                    self.adopt(bucket, &kv.key[base.len()..], record, kv.mod_revision)
                        .await?;
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => after = Some(last.key.clone()),
                _ => return Ok(()),
            }
        }
    }

    /// Make `record`, stored before versioning was set, the key's `null`
    /// version. A concurrent writer of the key winning is fine: its own
    /// write adopts the record first.
    async fn adopt(
        &self,
        bucket: &str,
        key: &str,
        record: ObjectRecord,
        revision: Revision,
    ) -> S3Result<()> {
        let head = keys::object(bucket, key);
        let record = v::adopt_as_null(record);
        let seq = record.version.as_ref().map_or(0, |i| i.seq);
        let value = encode(&record);
        self.store
            .txn(Txn {
                compares: vec![Compare::ModRevision(head.clone(), revision)],
                success: vec![
                    Op::Put {
                        key: keys::version(bucket, key, &v::sort_token(seq)),
                        value: value.clone(),
                    },
                    Op::Put { key: head, value },
                ],
                failure: vec![],
            })
            .await
            .map_err(|e| internal("versioning an object", e))?;
        Ok(())
    }

    /// One attempt to add `record` as the newest version of `key`; `None`
    /// when a concurrent change won. Suspended: it is the `null` version,
    /// and an earlier `null` version goes (with its data).
    pub(super) async fn try_commit_version(
        &self,
        bucket: &BucketState,
        mode: Versioning,
        key: &str,
        record: ObjectRecord,
        also: &[Op],
    ) -> S3Result<Option<Option<String>>> {
        if key.contains(keys::VERSION_SEPARATOR) {
            // It would end a key's versions early (S3's XML cannot carry it
            // anyway).
            return Err(s3_error!(
                InvalidArgument,
                "object keys in a versioned bucket may not hold a NUL character; rename the key"
            ));
        }
        let name = &bucket.record.name;
        let head_key = keys::object(name, key);
        let head = self.object(name, key).await?;
        if let Some((old, rev)) = &head {
            if old.version.is_none() {
                self.adopt(name, key, old.clone(), *rev).await?;
                return Ok(None);
            }
        }
        let newest = head.as_ref().and_then(|(r, _)| r.version.as_ref());
        let seq = v::next_seq(v::micros(chrono::Utc::now()), newest.map(|i| i.seq));
        let id = v::new_version_id(mode, seq);
        let record = v::as_version(record, id.clone(), seq);
        let value = encode(&record);
        let mut compares = vec![
            Compare::ModRevision(keys::bucket(name), bucket.revision),
            Compare::ModRevision(head_key.clone(), head.as_ref().map_or(0, |(_, r)| *r)),
        ];
        let mut success = vec![
            Op::Put {
                key: keys::version(name, key, &v::sort_token(seq)),
                value: value.clone(),
            },
            Op::Put {
                key: head_key,
                value,
            },
        ];
        let replaced = match mode {
            Versioning::Enabled => None,
            Versioning::Suspended => self.find_version(name, key, NULL_VERSION).await?,
        };
        if let Some(old) = &replaced {
            compares.push(Compare::ModRevision(old.key.clone(), old.revision));
            success.push(Op::Delete {
                key: old.key.clone(),
            });
            success.extend(self.retired_ops(
                &bucket.record,
                key,
                Some(&old.record),
                record.last_modified,
            ));
        }
        success.extend(also.iter().cloned());
        let done = self
            .store
            .txn(Txn {
                compares,
                success,
                failure: vec![],
            })
            .await
            .map_err(|e| internal("committing an object version", e))?;
        if !done.succeeded {
            return Ok(None);
        }
        if let Some(old) = replaced {
            self.remove_data(&old.record).await;
        }
        Ok(Some(Some(id)))
    }

    async fn remove_data(&self, record: &ObjectRecord) {
        if let Some(id) = DataId::parse(&record.data_id) {
            self.data.remove(&id).await;
        }
    }

    /// The version of `key` that `version_id` names, if stored.
    pub(super) async fn find_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
    ) -> S3Result<Option<StoredVersion>> {
        let reading = |e| internal("reading an object version", e);
        let candidates = match v::parse_version_id(version_id) {
            None => return Err(invalid_version_id(version_id)),
            Some(VersionRef::Token(token)) => {
                let skey = keys::version(bucket, key, token);
                self.store
                    .get(&skey)
                    .await
                    .map_err(reading)?
                    .into_iter()
                    .collect()
            }
            // Few keys hold many versions, and only one can be `null`.
            Some(VersionRef::Null) => {
                let prefix = keys::versions_of_key(bucket, key);
                let page = self.store.list(&prefix, None, 0).await.map_err(reading)?;
                page.kvs
            }
        };
        for kv in candidates {
            let record: ObjectRecord = decode("object version", &kv.key, &kv.value)
                .map_err(|e| internal("reading an object version", e))?;
            if record.version.as_ref().is_some_and(|i| i.id == version_id) {
                return Ok(Some(StoredVersion {
                    key: kv.key,
                    record,
                    revision: kv.mod_revision,
                }));
            }
        }
        Ok(None)
    }

    /// The version `version_id` of `key`, to read: NoSuchVersion when not
    /// stored, MethodNotAllowed for a delete marker (as S3 answers).
    pub(super) async fn existing_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
    ) -> S3Result<ObjectRecord> {
        let record = match self.find_version(bucket, key, version_id).await? {
            Some(found) => found.record,
            None => self.unadopted_null(bucket, key, version_id).await?,
        };
        if record.is_delete_marker() {
            return Err(marker_error(
                s3_error!(MethodNotAllowed, "that version is a delete marker"),
                &record,
            ));
        }
        Ok(record)
    }

    /// `versionId=null` of an object with no version records: stored
    /// before versioning was set (or in a bucket that never had it).
    async fn unadopted_null(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
    ) -> S3Result<ObjectRecord> {
        if version_id == NULL_VERSION {
            if let Some((record, _)) = self.object(bucket, key).await? {
                if record.version.is_none() {
                    return Ok(record);
                }
            }
        }
        self.existing_bucket(bucket).await?;
        Err(s3_error!(
            NoSuchVersion,
            "no version {version_id:?} of that key; list them with `aws s3api list-object-versions`"
        ))
    }

    /// DELETE of `key`: in a bucket that never had versioning the object
    /// goes; else without `version_id` a delete marker becomes the newest
    /// version, and with one that version goes for good.
    pub(super) async fn delete_one(
        &self,
        state: &BucketState,
        key: &str,
        version_id: Option<&str>,
    ) -> S3Result<Deleted> {
        let bucket = &state.record;
        match (bucket.versioning, version_id) {
            (None, Some(id)) if id != NULL_VERSION => {
                // Nothing in such a bucket has that id; DELETE is idempotent.
                v::parse_version_id(id).ok_or_else(|| invalid_version_id(id))?;
            }
            (None, _) => self.remove_object(bucket, key).await?,
            (Some(_), None) => {
                let id = self.commit(state.clone(), key, v::delete_marker()).await?;
                return Ok(Deleted {
                    version_id: id,
                    delete_marker: true,
                });
            }
            (Some(_), Some(id)) => return self.delete_version(bucket, key, id).await,
        }
        Ok(Deleted {
            version_id: None,
            delete_marker: false,
        })
    }

    /// Remove one version for good (its data too). Removing the newest
    /// makes the next one the head (removing a marker un-deletes).
    async fn delete_version(
        &self,
        bucket: &BucketRecord,
        key: &str,
        version_id: &str,
    ) -> S3Result<Deleted> {
        let head_key = keys::object(&bucket.name, key);
        loop {
            let head = self.object(&bucket.name, key).await?;
            if let Some((old, rev)) = &head {
                if old.version.is_none() {
                    self.adopt(&bucket.name, key, old.clone(), *rev).await?;
                    continue;
                }
            }
            let Some(target) = self.find_version(&bucket.name, key, version_id).await? else {
                return Ok(Deleted {
                    version_id: Some(version_id.to_string()),
                    delete_marker: false,
                });
            };
            let mut success = vec![Op::Delete {
                key: target.key.clone(),
            }];
            let is_head = head
                .as_ref()
                .and_then(|(r, _)| r.version.as_ref())
                .is_some_and(|i| i.id == version_id);
            if is_head {
                success.push(match self.second_newest(&bucket.name, key).await? {
                    Some(next) => Op::Put {
                        key: head_key.clone(),
                        value: encode(&next),
                    },
                    None => Op::Delete {
                        key: head_key.clone(),
                    },
                });
            }
            success.extend(self.retired_ops(bucket, key, Some(&target.record), chrono::Utc::now()));
            let done = self
                .store
                .txn(Txn {
                    compares: vec![
                        Compare::ModRevision(head_key.clone(), head.as_ref().map_or(0, |h| h.1)),
                        Compare::ModRevision(target.key.clone(), target.revision),
                    ],
                    success,
                    failure: vec![],
                })
                .await
                .map_err(|e| internal("deleting an object version", e))?;
            if done.succeeded {
                self.remove_data(&target.record).await;
                return Ok(Deleted {
                    version_id: Some(version_id.to_string()),
                    delete_marker: target.record.is_delete_marker(),
                });
            }
        }
    }

    /// The version that follows the newest one of `key`, if any.
    async fn second_newest(&self, bucket: &str, key: &str) -> S3Result<Option<ObjectRecord>> {
        let prefix = keys::versions_of_key(bucket, key);
        let page = self
            .store
            .list(&prefix, None, 2)
            .await
            .map_err(|e| internal("reading object versions", e))?;
        page.kvs
            .get(1)
            .map(|kv| decode("object version", &kv.key, &kv.value))
            .transpose()
            .map_err(|e| internal("reading object versions", e))
    }
}
