//! The S3 operations behind s3s: buckets, objects and listings over the
//! store (metadata) and the [`DataStore`] (bytes).
//!
//! A PUT streams into a data file, which is fsync'd with its directory
//! before the metadata record is committed; the record is what makes the
//! object visible, so a crash at any point leaves either the old object or
//! the new one, plus at worst an orphaned file collected at the next start.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use nimbus_store::{Compare, Op, Revision, Store, Txn};
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::auth;
use crate::credential_cache::CredentialCache;
use crate::credentials::Admin;
use crate::data::{DataId, DataStore, WriteError};
use crate::error::ObjectsError;
use crate::etag;
use crate::keys;
use crate::listing::{resume_after, skip_past, Lister, Page, Step};
use crate::metering::RetiredObjects;
use crate::records::{decode, encode, BucketRecord, ObjectRecord};

mod multipart;
mod version_listing;
mod versioning;

/// A bucket as read for a write: the commit compares its revision, so a
/// write that raced a change of the bucket's versioning is redone under
/// the new setting.
#[derive(Clone)]
pub(crate) struct BucketState {
    pub record: BucketRecord,
    pub revision: Revision,
}

#[derive(serde::Deserialize)]
struct DataRef {
    data_id: String,
}

/// Largest object one PUT may store (S3's own single-PUT limit is 5 GiB).
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 5 << 30;
/// Store keys read per listing round trip.
const LIST_BATCH: usize = 1000;

pub struct NimbusS3 {
    store: Arc<dyn Store>,
    data: Arc<DataStore>,
    admin: Admin,
    credentials: Arc<CredentialCache>,
    max_object_bytes: u64,
    retired: Option<Arc<dyn RetiredObjects>>,
}

fn internal(what: &str, e: impl std::fmt::Display) -> S3Error {
    tracing::error!(error = %e, "{what}");
    s3_error!(InternalError, "{what}")
}

fn from_objects_error(e: ObjectsError) -> S3Error {
    match e {
        ObjectsError::NoSuchBucket(_) => s3_error!(NoSuchBucket),
        ObjectsError::BucketExists(_) => s3_error!(BucketAlreadyExists),
        ObjectsError::BucketNotEmpty(_) => s3_error!(BucketNotEmpty),
        ObjectsError::InvalidBucketName { reason, .. } => {
            S3Error::with_message(S3ErrorCode::InvalidBucketName, reason)
        }
        other => internal("object storage", other),
    }
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp::from(SystemTime::from(t))
}

/// Seconds since the epoch: HTTP dates carry whole seconds.
fn unix_secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

/// If-Match / If-None-Match / If-Modified-Since / If-Unmodified-Since, in
/// the order RFC 9110 §13.2.2 evaluates them.
pub fn check_conditions(
    record: &ObjectRecord,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == record.etag,
    };
    let modified = record.last_modified.timestamp();
    match if_match {
        Some(c) if !matches(c) => return Err(s3_error!(PreconditionFailed)),
        None if if_unmodified_since.is_some_and(|t| modified > unix_secs(t)) => {
            return Err(s3_error!(PreconditionFailed))
        }
        _ => {}
    }
    match if_none_match {
        Some(c) if matches(c) => Err(s3_error!(NotModified)),
        None if if_modified_since.is_some_and(|t| modified <= unix_secs(t)) => {
            Err(s3_error!(NotModified))
        }
        _ => Ok(()),
    }
}

fn encode_token(marker: &str) -> String {
    hex::encode(marker)
}

fn decode_token(token: &str) -> S3Result<String> {
    hex::decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "the continuation token is not one this server gave"
            )
        })
}

impl NimbusS3 {
    pub fn new(
        store: Arc<dyn Store>,
        data: Arc<DataStore>,
        admin: Admin,
        credentials: Arc<CredentialCache>,
    ) -> NimbusS3 {
        NimbusS3 {
            store,
            data,
            admin,
            credentials,
            max_object_bytes: DEFAULT_MAX_OBJECT_BYTES,
            retired: None,
        }
    }

    /// Tell `retired` of every object version overwritten or deleted, in
    /// the transaction that does it (usage metering).
    pub fn with_retired(mut self, retired: Option<Arc<dyn RetiredObjects>>) -> NimbusS3 {
        self.retired = retired;
        self
    }

    /// The embedder's writes for `old` (stored in `bucket`) ending at
    /// `until`: none without a listener, an old version or its data (a
    /// delete marker stores nothing).
    fn retired_ops(
        &self,
        bucket: &BucketRecord,
        key: &str,
        old: Option<&ObjectRecord>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Vec<Op> {
        match (&self.retired, old) {
            (Some(listener), Some(old)) if !old.is_delete_marker() => {
                listener.retired(&bucket.project, &bucket.name, key, old, until)
            }
            _ => Vec::new(),
        }
    }

    pub fn with_max_object_bytes(mut self, max: u64) -> NimbusS3 {
        self.max_object_bytes = max;
        self
    }

    /// Remove data files no object record names (uploads killed between
    /// their rename and their commit). Run before serving.
    pub async fn collect_orphans(&self) -> Result<usize, ObjectsError> {
        let mut live = HashSet::new();
        for prefix in [keys::OBJECTS, keys::PARTS, keys::VERSIONS] {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .store
                    .list(prefix, after.as_deref(), LIST_BATCH)
                    .await?;
                for kv in &page.kvs {
                    // Object, version and part records all name their file
                    // `data_id` (empty for a delete marker).
                    let record: DataRef = decode("object or part", &kv.key, &kv.value)?;
                    if let Some(id) = DataId::parse(&record.data_id) {
                        live.insert(id);
                    }
                }
                after = page.kvs.last().map(|kv| kv.key.clone());
                if !page.more || after.is_none() {
                    break;
                }
            }
        }
        let data = self.data.clone();
        tokio::task::spawn_blocking(move || data.collect_orphans(&live))
            .await
            .map_err(|e| ObjectsError::Tls(format!("collecting orphans: {e}")))?
    }

    async fn caller_project<T>(&self, req: &S3Request<T>) -> S3Result<String> {
        let Some(c) = &req.credentials else {
            return Err(s3_error!(
                AccessDenied,
                "sign the request with an access key"
            ));
        };
        match self.credentials.get(&c.access_key).await? {
            Some(key) => Ok(key.project.clone()),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }

    async fn existing_bucket(&self, name: &str) -> S3Result<BucketRecord> {
        auth::bucket(&*self.store, name)
            .await?
            .ok_or_else(|| s3_error!(NoSuchBucket))
    }

    async fn bucket_state(&self, name: &str) -> S3Result<BucketState> {
        auth::bucket_with_revision(&*self.store, name)
            .await?
            .map(|(record, revision)| BucketState { record, revision })
            .ok_or_else(|| s3_error!(NoSuchBucket))
    }

    async fn object(&self, bucket: &str, key: &str) -> S3Result<Option<(ObjectRecord, Revision)>> {
        let skey = keys::object(bucket, key);
        match self.store.get(&skey).await {
            Ok(Some(kv)) => decode("object", &skey, &kv.value)
                .map(|r| Some((r, kv.mod_revision)))
                .map_err(|e| internal("reading an object", e)),
            Ok(None) => Ok(None),
            Err(e) => Err(internal("reading an object", e)),
        }
    }

    /// The current version of `bucket/key`: NoSuchKey when there is none
    /// or it is a delete marker (then saying so, as S3 does).
    async fn existing_object(&self, bucket: &str, key: &str) -> S3Result<ObjectRecord> {
        match self.object(bucket, key).await? {
            Some((r, _)) if r.is_delete_marker() => {
                Err(versioning::marker_error(s3_error!(NoSuchKey), &r))
            }
            Some((r, _)) => Ok(r),
            None => {
                self.existing_bucket(bucket).await?;
                Err(s3_error!(NoSuchKey))
            }
        }
    }

    /// Make `record` the object `bucket/key`: in a bucket that never had
    /// versioning it replaces any older one (whose data file then goes);
    /// else it becomes the key's newest version. Returns the version id.
    /// On failure the new data file goes.
    async fn commit(
        &self,
        bucket: BucketState,
        key: &str,
        record: ObjectRecord,
    ) -> S3Result<Option<String>> {
        self.commit_with(bucket, key, record, Vec::new()).await
    }

    /// [`Self::commit`], applying `also` in the same transaction.
    async fn commit_with(
        &self,
        bucket: BucketState,
        key: &str,
        record: ObjectRecord,
        also: Vec<Op>,
    ) -> S3Result<Option<String>> {
        let data_id = record.data_id.clone();
        let result = self.commit_inner(bucket, key, record, also).await;
        if result.is_err() {
            if let Some(id) = DataId::parse(&data_id) {
                self.data.remove(&id).await;
            }
        }
        result
    }

    async fn commit_inner(
        &self,
        mut bucket: BucketState,
        key: &str,
        record: ObjectRecord,
        also: Vec<Op>,
    ) -> S3Result<Option<String>> {
        loop {
            let committed = match bucket.record.versioning {
                None => self
                    .try_commit_unversioned(&bucket, key, &record, &also)
                    .await?
                    .map(|()| None),
                Some(mode) => {
                    self.try_commit_version(&bucket, mode, key, record.clone(), &also)
                        .await?
                }
            };
            if let Some(version_id) = committed {
                return Ok(version_id);
            }
            // Lost a race with another writer, or the bucket changed or went.
            bucket = self.bucket_state(&bucket.record.name).await?;
        }
    }

    /// One attempt to replace `bucket/key` with `record`; `None` when a
    /// concurrent change won.
    async fn try_commit_unversioned(
        &self,
        bucket: &BucketState,
        key: &str,
        record: &ObjectRecord,
        also: &[Op],
    ) -> S3Result<Option<()>> {
        let name = &bucket.record.name;
        let skey = keys::object(name, key);
        let old = self.object(name, key).await?;
        let rev = old.as_ref().map_or(0, |(_, r)| *r);
        let retired = self.retired_ops(
            &bucket.record,
            key,
            old.as_ref().map(|(r, _)| r),
            record.last_modified,
        );
        let done = self
            .store
            .txn(Txn {
                compares: vec![
                    Compare::ModRevision(keys::bucket(name), bucket.revision),
                    Compare::ModRevision(skey.clone(), rev),
                ],
                success: std::iter::once(Op::Put {
                    key: skey,
                    value: encode(record),
                })
                .chain(also.iter().cloned())
                .chain(retired)
                .collect(),
                failure: vec![],
            })
            .await
            .map_err(|e| internal("committing an object", e))?;
        if !done.succeeded {
            return Ok(None);
        }
        if let Some(id) = old.and_then(|(r, _)| DataId::parse(&r.data_id)) {
            self.data.remove(&id).await;
        }
        Ok(Some(()))
    }

    /// Delete `bucket/key` (never versioned) if present.
    async fn remove_object(&self, bucket: &BucketRecord, key: &str) -> S3Result<()> {
        let skey = keys::object(&bucket.name, key);
        loop {
            let Some((old, rev)) = self.object(&bucket.name, key).await? else {
                return Ok(());
            };
            let retired = self.retired_ops(bucket, key, Some(&old), chrono::Utc::now());
            let done = self
                .store
                .txn(Txn {
                    compares: vec![Compare::ModRevision(skey.clone(), rev)],
                    success: std::iter::once(Op::Delete { key: skey.clone() })
                        .chain(retired)
                        .collect(),
                    failure: vec![],
                })
                .await
                .map_err(|e| internal("deleting an object", e))?;
            if done.succeeded {
                if let Some(id) = DataId::parse(&old.data_id) {
                    self.data.remove(&id).await;
                }
                return Ok(());
            }
        }
    }

    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        max_keys: usize,
        marker: Option<&str>,
    ) -> S3Result<Page<ObjectRecord>> {
        self.existing_bucket(bucket).await?;
        let base = keys::objects_of(bucket);
        let after = marker.map(|m| format!("{base}{}", resume_after(m, prefix, delimiter)));
        // A key whose newest version is a delete marker is not listed.
        let current = |rest: &str, r: &ObjectRecord| (!r.is_delete_marker()).then(|| rest.into());
        self.walk_listing(&base, prefix, delimiter, max_keys, after, current)
            .await
    }

    /// Feed the records under `base` + `prefix`, after the store key
    /// `after`, through a [`Lister`]. `object_key` names the object key of
    /// a record from its store key less `base`, or `None` to leave it out.
    async fn walk_listing(
        &self,
        base: &str,
        prefix: &str,
        delimiter: Option<&str>,
        max_keys: usize,
        mut after: Option<String>,
        object_key: impl Fn(&str, &ObjectRecord) -> Option<String>,
    ) -> S3Result<Page<ObjectRecord>> {
        let store_prefix = format!("{base}{prefix}");
        let mut lister = Lister::new(prefix, delimiter, max_keys);
        'pages: loop {
            let page = self
                .store
                .list(&store_prefix, after.as_deref(), LIST_BATCH)
                .await
                .map_err(|e| internal("listing objects", e))?;
            for kv in &page.kvs {
                let record: ObjectRecord = decode("object", &kv.key, &kv.value)
                    .map_err(|e| internal("listing objects", e))?;
                let Some(key) = object_key(&kv.key[base.len()..], &record) else {
                    continue;
                };
                match lister.push(key, record) {
                    Step::Next => {}
                    Step::SkipPast(cp) => {
                        after = Some(format!("{base}{}", skip_past(&cp)));
                        continue 'pages;
                    }
                    Step::Done => break 'pages,
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => after = Some(last.key.clone()),
                _ => break,
            }
        }
        Ok(lister.finish())
    }

    /// Open an object's data, re-reading the record when a concurrent
    /// overwrite removed the file between the read and the open.
    async fn open_object(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> S3Result<(ObjectRecord, tokio::fs::File)> {
        for _ in 0..3 {
            let record = self.object_or_version(bucket, key, version_id).await?;
            let id = DataId::parse(&record.data_id).ok_or_else(|| {
                internal("an object record names no valid data file", &record.data_id)
            })?;
            match self.data.open_file(&id).await {
                Ok(f) => return Ok((record, f)),
                Err(ObjectsError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue
                }
                Err(e) => return Err(internal("opening object data", e)),
            }
        }
        Err(internal("opening object data", "it kept being replaced"))
    }

    /// The current version, or the one `version_id` names.
    async fn object_or_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> S3Result<ObjectRecord> {
        match version_id {
            None => self.existing_object(bucket, key).await,
            Some(id) => self.existing_version(bucket, key, id).await,
        }
    }
}

fn list_entry(key: String, r: ObjectRecord) -> Object {
    Object {
        key: Some(key),
        size: Some(r.size as i64),
        e_tag: Some(ETag::Strong(r.etag)),
        last_modified: Some(timestamp(r.last_modified)),
        storage_class: Some(ObjectStorageClass::from_static(
            ObjectStorageClass::STANDARD,
        )),
        ..Default::default()
    }
}

fn common_prefixes(page: &[String]) -> Option<Vec<CommonPrefix>> {
    (!page.is_empty()).then(|| {
        page.iter()
            .map(|p| CommonPrefix {
                prefix: Some(p.clone()),
            })
            .collect()
    })
}

fn user_metadata(m: Option<Metadata>) -> BTreeMap<String, String> {
    m.map(|m| m.into_iter().collect()).unwrap_or_default()
}

fn metadata_out(m: &BTreeMap<String, String>) -> Option<Metadata> {
    (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

#[async_trait::async_trait]
impl S3 for NimbusS3 {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let project = self.caller_project(&req).await?;
        let buckets = self
            .admin
            .list_buckets(Some(&project))
            .await
            .map_err(from_objects_error)?
            .into_iter()
            .map(|b| Bucket {
                name: Some(b.name),
                creation_date: Some(timestamp(b.created)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let project = self.caller_project(&req).await?;
        match self
            .admin
            .create_bucket(&project, &req.input.bucket, false)
            .await
        {
            Ok(_) => Ok(S3Response::new(CreateBucketOutput::default())),
            Err(ObjectsError::BucketExists(_)) => {
                let owner = self.existing_bucket(&req.input.bucket).await?.project;
                Err(if owner == project {
                    s3_error!(BucketAlreadyOwnedByYou)
                } else {
                    s3_error!(BucketAlreadyExists)
                })
            }
            Err(e) => Err(from_objects_error(e)),
        }
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let project = self.caller_project(&req).await?;
        crate::credentials::delete_bucket(&*self.store, &project, &req.input.bucket)
            .await
            .map_err(from_objects_error)?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.existing_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let content_md5 = req
            .headers
            .get("content-md5")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let input = req.input;
        let bucket = self.bucket_state(&input.bucket).await?;
        if input
            .content_length
            .is_some_and(|n| n as u64 > self.max_object_bytes)
        {
            return Err(s3_error!(EntityTooLarge));
        }
        if matches!(input.if_none_match, Some(ETagCondition::Any))
            && self
                .object(&input.bucket, &input.key)
                .await?
                .is_some_and(|(r, _)| !r.is_delete_marker())
        {
            return Err(s3_error!(PreconditionFailed));
        }
        let body = match input.body {
            Some(b) => b,
            None => StreamingBlob::wrap(futures::stream::empty::<
                Result<bytes::Bytes, std::io::Error>,
            >()),
        };
        let written = match self.data.write(body, self.max_object_bytes).await {
            Ok(w) => w,
            Err(WriteError::TooLarge { .. }) => return Err(s3_error!(EntityTooLarge)),
            Err(WriteError::Body(e)) => return Err(s3_error!(IncompleteBody, "{e}")),
            Err(WriteError::Io(e)) => return Err(internal("writing object data", e)),
        };
        if content_md5.is_some_and(|h| !etag::content_md5_matches(&h, &written.md5_hex)) {
            self.data.remove(&written.id).await;
            return Err(s3_error!(BadDigest));
        }
        let record = ObjectRecord {
            data_id: written.id.as_str().to_string(),
            size: written.size,
            etag: written.md5_hex.clone(),
            content_type: input.content_type,
            user_metadata: user_metadata(input.metadata),
            last_modified: chrono::Utc::now(),
            version: None,
        };
        let version_id = self.commit(bucket, &input.key, record).await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(written.md5_hex)),
            size: Some(written.size as i64),
            version_id,
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let (record, mut file) = self
            .open_object(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        check_conditions(
            &record,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let (range, content_range) = match &input.range {
            Some(r) => {
                let range = r.check(record.size).map_err(|_| s3_error!(InvalidRange))?;
                let content_range = format!(
                    "bytes {}-{}/{}",
                    range.start,
                    range.end.saturating_sub(1),
                    record.size
                );
                (range, Some(content_range))
            }
            None => (0..record.size, None),
        };
        if range.start > 0 {
            file.seek(std::io::SeekFrom::Start(range.start))
                .await
                .map_err(|e| internal("seeking in object data", e))?;
        }
        let len = range.end - range.start;
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 << 10);
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(stream)),
            content_length: Some(len as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            content_type: record.content_type.clone(),
            e_tag: Some(ETag::Strong(record.etag.clone())),
            last_modified: Some(timestamp(record.last_modified)),
            metadata: metadata_out(&record.user_metadata),
            version_id: record.version_id(),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let record = self
            .object_or_version(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        check_conditions(
            &record,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(record.size as i64),
            accept_ranges: Some("bytes".into()),
            content_type: record.content_type.clone(),
            e_tag: Some(ETag::Strong(record.etag.clone())),
            last_modified: Some(timestamp(record.last_modified)),
            metadata: metadata_out(&record.user_metadata),
            version_id: record.version_id(),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        let bucket = self.bucket_state(&input.bucket).await?;
        // S3 answers 204 whether or not the key existed.
        let deleted = self
            .delete_one(&bucket, &input.key, input.version_id.as_deref())
            .await?;
        Ok(S3Response::new(DeleteObjectOutput {
            delete_marker: deleted.delete_marker.then_some(true),
            version_id: deleted.version_id,
            ..Default::default()
        }))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        let bucket = self.bucket_state(&input.bucket).await?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for id in input.delete.objects {
            match self
                .delete_one(&bucket, &id.key, id.version_id.as_deref())
                .await
            {
                Ok(d) => {
                    if !quiet {
                        deleted.push(d.entry(id.key, id.version_id))
                    }
                }
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(id.key),
                    message: e.message().map(str::to_string),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let project = self.caller_project(&req).await?;
        let input = req.input;
        let CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            version_id: src_version,
        } = &input.copy_source
        else {
            return Err(s3_error!(NotImplemented, "copy from an access point"));
        };
        // The access check saw only the destination: the source must be
        // this project's too, or public.
        let source_bucket = self.existing_bucket(src_bucket).await?;
        if source_bucket.project != project && !source_bucket.public_read {
            return Err(s3_error!(
                AccessDenied,
                "the source bucket belongs to another project"
            ));
        }
        let bucket = self.bucket_state(&input.bucket).await?;
        let src = self
            .object_or_version(src_bucket, src_key, src_version.as_deref())
            .await?;
        let src_id = DataId::parse(&src.data_id)
            .ok_or_else(|| internal("an object record names no valid data file", &src.data_id))?;
        let new_id = self
            .data
            .copy(&src_id)
            .await
            .map_err(|e| internal("copying object data", e))?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let record = ObjectRecord {
            data_id: new_id.as_str().to_string(),
            size: src.size,
            etag: src.etag.clone(),
            content_type: if replace {
                input.content_type
            } else {
                src.content_type.clone()
            },
            user_metadata: if replace {
                user_metadata(input.metadata)
            } else {
                src.user_metadata.clone()
            },
            last_modified: chrono::Utc::now(),
            version: None,
        };
        let last_modified = timestamp(record.last_modified);
        let version_id = self.commit(bucket, &input.key, record).await?;
        Ok(S3Response::new(CopyObjectOutput {
            version_id,
            copy_source_version_id: src.version_id(),
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(src.etag)),
                last_modified: Some(last_modified),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.mp_create(req.input).await.map(S3Response::new)
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.mp_upload_part(req.input).await.map(S3Response::new)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.mp_complete(req.input).await.map(S3Response::new)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.mp_abort(req.input).await.map(S3Response::new)
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.mp_list_parts(req.input).await.map(S3Response::new)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.mp_list_uploads(req.input).await.map(S3Response::new)
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        self.get_versioning(req.input).await.map(S3Response::new)
    }

    async fn put_bucket_versioning(
        &self,
        req: S3Request<PutBucketVersioningInput>,
    ) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        self.put_versioning(req.input).await.map(S3Response::new)
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        self.list_versions(req.input).await.map(S3Response::new)
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000);
        let marker = match &input.continuation_token {
            Some(t) => Some(decode_token(t)?),
            None => input.start_after.clone(),
        };
        let page = self
            .list_page(
                &input.bucket,
                &prefix,
                input.delimiter.as_deref(),
                max_keys as usize,
                marker.as_deref(),
            )
            .await?;
        let key_count = (page.objects.len() + page.common_prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(prefix),
            delimiter: input.delimiter,
            max_keys: Some(max_keys),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            is_truncated: Some(page.next_marker.is_some()),
            next_continuation_token: page.next_marker.as_deref().map(encode_token),
            common_prefixes: common_prefixes(&page.common_prefixes),
            contents: Some(
                page.objects
                    .into_iter()
                    .map(|(k, r)| list_entry(k, r))
                    .collect(),
            ),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000);
        let page = self
            .list_page(
                &input.bucket,
                &prefix,
                input.delimiter.as_deref(),
                max_keys as usize,
                input.marker.as_deref(),
            )
            .await?;
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(prefix),
            marker: input.marker,
            max_keys: Some(max_keys),
            is_truncated: Some(page.next_marker.is_some()),
            // v1 gives NextMarker only with a delimiter; clients use the
            // last key otherwise, which is the same marker.
            next_marker: page.next_marker,
            common_prefixes: common_prefixes(&page.common_prefixes),
            contents: Some(
                page.objects
                    .into_iter()
                    .map(|(k, r)| list_entry(k, r))
                    .collect(),
            ),
            delimiter: input.delimiter,
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ObjectRecord {
        ObjectRecord {
            data_id: "0".repeat(32),
            size: 10,
            etag: "5d41402abc4b2a76b9719d911017c592".into(),
            content_type: None,
            user_metadata: Default::default(),
            last_modified: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            version: None,
        }
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    }

    fn code(r: S3Result<()>) -> Option<S3ErrorCode> {
        r.err().map(|e| e.code().clone())
    }

    #[test]
    fn conditional_requests_answer_as_s3_does() {
        let r = record();
        let same = ETagCondition::ETag(ETag::Strong(r.etag.clone()));
        let other = ETagCondition::ETag(ETag::Strong("0".repeat(32)));
        assert_eq!(
            code(check_conditions(&r, Some(&same), None, None, None)),
            None
        );
        assert_eq!(
            code(check_conditions(&r, Some(&other), None, None, None)),
            Some(S3ErrorCode::PreconditionFailed)
        );
        assert_eq!(
            code(check_conditions(&r, None, Some(&same), None, None)),
            Some(S3ErrorCode::NotModified)
        );
        assert_eq!(
            code(check_conditions(
                &r,
                None,
                Some(&ETagCondition::Any),
                None,
                None
            )),
            Some(S3ErrorCode::NotModified)
        );
        assert_eq!(
            code(check_conditions(&r, None, Some(&other), None, None)),
            None
        );
        // Modified since a second before: served; since then: 304.
        assert_eq!(
            code(check_conditions(
                &r,
                None,
                None,
                Some(&at(1_699_999_999)),
                None
            )),
            None
        );
        assert_eq!(
            code(check_conditions(
                &r,
                None,
                None,
                Some(&at(1_700_000_000)),
                None
            )),
            Some(S3ErrorCode::NotModified)
        );
        // If-None-Match wins over If-Modified-Since (RFC 9110).
        assert_eq!(
            code(check_conditions(
                &r,
                None,
                Some(&other),
                Some(&at(1_800_000_000)),
                None
            )),
            None
        );
        assert_eq!(
            code(check_conditions(
                &r,
                None,
                None,
                None,
                Some(&at(1_600_000_000))
            )),
            Some(S3ErrorCode::PreconditionFailed)
        );
    }

    #[test]
    fn ranges_past_the_end_are_invalid_and_suffixes_clamp() {
        let full = 10;
        let r = Range::parse("bytes=6-").unwrap();
        assert_eq!(r.check(full).unwrap(), 6..10);
        let r = Range::parse("bytes=-4").unwrap();
        assert_eq!(r.check(full).unwrap(), 6..10);
        assert!(Range::parse("bytes=100-200").unwrap().check(full).is_err());
    }

    #[test]
    fn continuation_tokens_round_trip_any_key() {
        for marker in ["a/b", "../x", "ünï ᚠ"] {
            assert_eq!(decode_token(&encode_token(marker)).unwrap(), marker);
        }
        assert!(decode_token("zz").is_err());
    }
}
