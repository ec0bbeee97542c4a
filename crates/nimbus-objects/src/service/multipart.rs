//! Multipart uploads: parts land as data files of their own (durably, as a
//! PUT does) with a record each under `/s3/parts/<upload>/`; completion
//! joins them into one new data file and, in one transaction, commits the
//! object and drops the upload and its part records.

use nimbus_store::Op;
use s3s::dto::*;
use s3s::{s3_error, S3Result};

use super::{internal, timestamp, user_metadata, NimbusS3};
use crate::data::{DataId, WriteError};
use crate::etag;
use crate::keys;
use crate::records::{decode, encode, ObjectRecord, PartRecord, UploadRecord};

/// S3's smallest part, except for the last one.
pub const MIN_PART_BYTES: u64 = 5 << 20;
/// S3's part numbers.
const PART_NUMBERS: std::ops::RangeInclusive<i32> = 1..=10_000;

impl NimbusS3 {
    async fn upload_record(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> S3Result<UploadRecord> {
        let skey = keys::upload(bucket, upload_id);
        let kv = self
            .store
            .get(&skey)
            .await
            .map_err(|e| internal("reading an upload", e))?;
        let Some(kv) = kv else {
            self.existing_bucket(bucket).await?;
            return Err(s3_error!(NoSuchUpload));
        };
        let record: UploadRecord =
            decode("upload", &skey, &kv.value).map_err(|e| internal("reading an upload", e))?;
        if record.key != key {
            return Err(s3_error!(NoSuchUpload, "the upload is for another key"));
        }
        Ok(record)
    }

    async fn parts(&self, upload_id: &str) -> S3Result<Vec<(i32, PartRecord)>> {
        let prefix = keys::parts_of(upload_id);
        let page = self
            .store
            .list(&prefix, None, 0)
            .await
            .map_err(|e| internal("listing parts", e))?;
        page.kvs
            .iter()
            .map(|kv| {
                let number = kv.key[prefix.len()..].parse::<i32>().unwrap_or(0);
                decode("part", &kv.key, &kv.value)
                    .map(|r| (number, r))
                    .map_err(|e| internal("listing parts", e))
            })
            .collect()
    }

    pub(super) async fn mp_create(
        &self,
        input: CreateMultipartUploadInput,
    ) -> S3Result<CreateMultipartUploadOutput> {
        self.existing_bucket(&input.bucket).await?;
        let upload_id = hex::encode(rand::random::<[u8; 16]>());
        let record = UploadRecord {
            key: input.key.clone(),
            content_type: input.content_type,
            user_metadata: user_metadata(input.metadata),
            initiated: chrono::Utc::now(),
        };
        self.store
            .create(&keys::upload(&input.bucket, &upload_id), encode(&record))
            .await
            .map_err(|e| internal("starting an upload", e))?;
        Ok(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        })
    }

    pub(super) async fn mp_upload_part(
        &self,
        input: UploadPartInput,
    ) -> S3Result<UploadPartOutput> {
        if !PART_NUMBERS.contains(&input.part_number) {
            return Err(s3_error!(
                InvalidArgument,
                "part numbers run from 1 to 10000"
            ));
        }
        self.upload_record(&input.bucket, &input.key, &input.upload_id)
            .await?;
        if input
            .content_length
            .is_some_and(|n| n as u64 > self.max_object_bytes)
        {
            return Err(s3_error!(EntityTooLarge));
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
            Err(WriteError::Io(e)) => return Err(internal("writing part data", e)),
        };
        if input
            .content_md5
            .is_some_and(|h| !etag::content_md5_matches(&h, &written.md5_hex))
        {
            self.data.remove(&written.id).await;
            return Err(s3_error!(BadDigest));
        }
        let record = PartRecord {
            data_id: written.id.as_str().to_string(),
            size: written.size,
            etag: written.md5_hex.clone(),
            last_modified: chrono::Utc::now(),
        };
        let pkey = keys::part(&input.upload_id, input.part_number);
        // A part uploaded again replaces the earlier one.
        let old = self
            .store
            .get(&pkey)
            .await
            .map_err(|e| internal("reading a part", e))?;
        let stored = match &old {
            Some(kv) => {
                self.store
                    .update(&pkey, encode(&record), kv.mod_revision)
                    .await
            }
            None => self.store.create(&pkey, encode(&record)).await,
        };
        if let Err(e) = stored {
            self.data.remove(&written.id).await;
            return Err(internal("recording a part", e));
        }
        if let Some(old) = old.and_then(|kv| decode::<PartRecord>("part", &pkey, &kv.value).ok()) {
            if let Some(id) = DataId::parse(&old.data_id) {
                self.data.remove(&id).await;
            }
        }
        Ok(UploadPartOutput {
            e_tag: Some(ETag::Strong(written.md5_hex)),
            ..Default::default()
        })
    }

    pub(super) async fn mp_complete(
        &self,
        input: CompleteMultipartUploadInput,
    ) -> S3Result<CompleteMultipartUploadOutput> {
        let upload = self
            .upload_record(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let bucket = self.bucket_state(&input.bucket).await?;
        let stored = self.parts(&input.upload_id).await?;
        let wanted = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if wanted.is_empty() {
            return Err(s3_error!(MalformedXML, "name at least one part"));
        }
        let mut chosen: Vec<&PartRecord> = Vec::with_capacity(wanted.len());
        let mut last_number = 0;
        for (i, part) in wanted.iter().enumerate() {
            let number = part.part_number.unwrap_or(0);
            if number <= last_number {
                return Err(s3_error!(InvalidPartOrder));
            }
            last_number = number;
            let Some((_, record)) = stored.iter().find(|(n, _)| *n == number) else {
                return Err(s3_error!(InvalidPart, "part {number} was not uploaded"));
            };
            if part
                .e_tag
                .as_ref()
                .is_some_and(|e| e.value() != record.etag)
            {
                return Err(s3_error!(InvalidPart, "part {number} has another ETag"));
            }
            if i + 1 < wanted.len() && record.size < MIN_PART_BYTES {
                return Err(s3_error!(EntityTooSmall, "part {number} is under 5 MiB"));
            }
            chosen.push(record);
        }
        let etags: Vec<&str> = chosen.iter().map(|p| p.etag.as_str()).collect();
        let etag =
            etag::multipart(&etags).ok_or_else(|| internal("a part's ETag is not MD5", ""))?;
        let ids: Vec<DataId> = chosen
            .iter()
            .map(|p| {
                DataId::parse(&p.data_id)
                    .ok_or_else(|| internal("a part names no valid data file", &p.data_id))
            })
            .collect::<S3Result<_>>()?;
        let (id, size) = self
            .data
            .concat(&ids)
            .await
            .map_err(|e| internal("joining parts", e))?;
        let record = ObjectRecord {
            data_id: id.as_str().to_string(),
            size,
            etag: etag.clone(),
            content_type: upload.content_type,
            user_metadata: upload.user_metadata,
            last_modified: chrono::Utc::now(),
            version: None,
        };
        let mut done = vec![Op::Delete {
            key: keys::upload(&input.bucket, &input.upload_id),
        }];
        done.extend(stored.iter().map(|(n, _)| Op::Delete {
            key: keys::part(&input.upload_id, *n),
        }));
        let version_id = self.commit_with(bucket, &input.key, record, done).await?;
        for (_, part) in &stored {
            if let Some(id) = DataId::parse(&part.data_id) {
                self.data.remove(&id).await;
            }
        }
        Ok(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(ETag::Strong(etag)),
            version_id,
            ..Default::default()
        })
    }

    pub(super) async fn mp_abort(
        &self,
        input: AbortMultipartUploadInput,
    ) -> S3Result<AbortMultipartUploadOutput> {
        self.upload_record(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let stored = self.parts(&input.upload_id).await?;
        let mut ops = vec![Op::Delete {
            key: keys::upload(&input.bucket, &input.upload_id),
        }];
        ops.extend(stored.iter().map(|(n, _)| Op::Delete {
            key: keys::part(&input.upload_id, *n),
        }));
        self.store
            .txn(nimbus_store::Txn {
                compares: vec![],
                success: ops,
                failure: vec![],
            })
            .await
            .map_err(|e| internal("aborting an upload", e))?;
        for (_, part) in &stored {
            if let Some(id) = DataId::parse(&part.data_id) {
                self.data.remove(&id).await;
            }
        }
        Ok(AbortMultipartUploadOutput::default())
    }

    pub(super) async fn mp_list_parts(&self, input: ListPartsInput) -> S3Result<ListPartsOutput> {
        self.upload_record(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let max = input.max_parts.unwrap_or(1000).clamp(1, 1000) as usize;
        let after = input.part_number_marker.unwrap_or(0);
        let all: Vec<(i32, PartRecord)> = self
            .parts(&input.upload_id)
            .await?
            .into_iter()
            .filter(|(n, _)| *n > after)
            .collect();
        let truncated = all.len() > max;
        let page = &all[..all.len().min(max)];
        Ok(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            next_part_number_marker: truncated.then(|| page.last().map(|(n, _)| *n)).flatten(),
            parts: Some(
                page.iter()
                    .map(|(n, p)| Part {
                        part_number: Some(*n),
                        e_tag: Some(ETag::Strong(p.etag.clone())),
                        size: Some(p.size as i64),
                        last_modified: Some(timestamp(p.last_modified)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        })
    }

    pub(super) async fn mp_list_uploads(
        &self,
        input: ListMultipartUploadsInput,
    ) -> S3Result<ListMultipartUploadsOutput> {
        self.existing_bucket(&input.bucket).await?;
        let prefix = keys::uploads_of(&input.bucket);
        let page = self
            .store
            .list(&prefix, None, 0)
            .await
            .map_err(|e| internal("listing uploads", e))?;
        let key_prefix = input.prefix.clone().unwrap_or_default();
        let mut uploads = Vec::new();
        for kv in &page.kvs {
            let record: UploadRecord =
                decode("upload", &kv.key, &kv.value).map_err(|e| internal("listing uploads", e))?;
            if record.key.starts_with(&key_prefix) {
                uploads.push((record, kv.key[prefix.len()..].to_string()));
            }
        }
        uploads.sort_by(|a, b| (&a.0.key, a.0.initiated).cmp(&(&b.0.key, b.0.initiated)));
        Ok(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(false),
            uploads: Some(
                uploads
                    .into_iter()
                    .map(|(r, id)| MultipartUpload {
                        key: Some(r.key),
                        upload_id: Some(id),
                        initiated: Some(timestamp(r.initiated)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        })
    }
}
