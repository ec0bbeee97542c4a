//! Typed access to resources in the store: keys, revisions, lists with
//! label selectors and pagination.

use std::sync::Arc;

use chrono::Utc;
use nimbus_api::meta::{parse_selector, selector_matches};
use nimbus_api::resources::Object;
use nimbus_api::{ApiError, ListOptions, ResourceList};
use nimbus_store::{Compare, KeyValue, Op, Store, StoreError, Txn};

use crate::error::{ApiResult, ServerError};

pub const DEFAULT_PAGE: usize = 500;
pub const MAX_PAGE: usize = 5000;

/// `/instances/ops/web` or `/hosts/node1`.
pub fn key<T: Object>(project: Option<&str>, name: &str) -> String {
    match project {
        Some(p) if T::PROJECT_SCOPED => format!("/{}/{}/{}", T::COLLECTION, p, name),
        _ => format!("/{}/{}", T::COLLECTION, name),
    }
}

/// `/instances/ops/`, `/instances/` (all projects) or `/hosts/`.
pub fn prefix<T: Object>(project: Option<&str>) -> String {
    match project {
        Some(p) if T::PROJECT_SCOPED => format!("/{}/{}/", T::COLLECTION, p),
        _ => format!("/{}/", T::COLLECTION),
    }
}

pub fn describe<T: Object>(project: Option<&str>, name: &str) -> String {
    match project {
        Some(p) if T::PROJECT_SCOPED => format!("{} {name:?} in project {p:?}", T::KIND),
        _ => format!("{} {name:?}", T::KIND),
    }
}

pub fn decode<T: Object>(kv: &KeyValue) -> ApiResult<T> {
    let mut obj: T = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!(
            "stored {} at {} is corrupt ({e}); restore it from a backup or delete the key",
            T::KIND,
            kv.key
        ))
    })?;
    obj.metadata_mut().revision = kv.mod_revision;
    Ok(obj)
}

pub fn encode<T: Object>(obj: &T) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(obj)
        .map_err(|e| ServerError(ApiError::internal(format!("encoding {}: {e}", T::KIND))))
}

/// Objects already encoded for responses, by key and revision: a list of
/// a thousand unchanged instances then costs copies, not a thousand JSON
/// decodes and encodes.
#[derive(Default)]
pub struct EncodedCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (i64, bytes::Bytes)>>,
}

/// Entries kept at most; past this the cache starts over.
const ENCODED_CACHE_MAX: usize = 200_000;

#[derive(Clone)]
pub struct Repo {
    pub store: Arc<dyn Store>,
    pub encoded: Arc<EncodedCache>,
    /// A compare every update through this repo also requires: the leader's
    /// fence ([`nimbus_store::Leadership::fence`]), so that a leader task's
    /// write sent after its server lost the leadership cannot land.
    fence: Option<Compare>,
}

impl Repo {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Repo {
            store,
            encoded: Arc::default(),
            fence: None,
        }
    }

    /// This repo, whose updates hold only while `fence` does. A failed fence
    /// is reported as unavailable (not as a conflict, which callers retry).
    pub fn fenced(&self, fence: Option<&Compare>) -> Repo {
        Repo {
            fence: fence.cloned(),
            ..self.clone()
        }
    }

    /// The response JSON of a stored object (revision set, secrets redacted).
    fn encoded<T: Object>(&self, kv: &KeyValue) -> ApiResult<bytes::Bytes> {
        if let Ok(cache) = self.encoded.entries.lock() {
            if let Some((rev, bytes)) = cache.get(&kv.key) {
                if *rev == kv.mod_revision {
                    return Ok(bytes.clone());
                }
            }
        }
        let mut obj: T = decode(kv)?;
        obj.redact();
        let bytes = bytes::Bytes::from(encode(&obj)?);
        if let Ok(mut cache) = self.encoded.entries.lock() {
            if cache.len() >= ENCODED_CACHE_MAX {
                cache.clear();
            }
            cache.insert(kv.key.clone(), (kv.mod_revision, bytes.clone()));
        }
        Ok(bytes)
    }

    /// A page of every resource under `project`, as response JSON, built
    /// from the encoded cache. For lists without selector or filter.
    pub async fn list_json<T: Object>(
        &self,
        project: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<(i64, Vec<u8>)> {
        let limit = opts.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let prefix = prefix::<T>(project);
        let start_after = opts.continue_token.as_ref().map(|c| format!("{prefix}{c}"));
        let page = self
            .store
            .list(&prefix, start_after.as_deref(), limit + 1)
            .await?;
        let more = page.kvs.len() > limit;
        let kvs = &page.kvs[..page.kvs.len().min(limit)];
        let mut out = Vec::with_capacity(kvs.len() * 1024 + 64);
        out.extend_from_slice(b"{\"items\":[");
        for (i, kv) in kvs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.encoded::<T>(kv)?);
        }
        out.extend_from_slice(format!("],\"revision\":{}", page.revision).as_bytes());
        if more {
            if let Some(last) = kvs.last() {
                let next = serde_json::to_string(&last.key[prefix.len()..])
                    .map_err(|e| ServerError(ApiError::internal(e.to_string())))?;
                out.extend_from_slice(format!(",\"continue\":{next}").as_bytes());
            }
        }
        out.push(b'}');
        Ok((page.revision, out))
    }

    pub async fn try_get<T: Object>(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> ApiResult<Option<T>> {
        match self.store.get(&key::<T>(project, name)).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    pub async fn get<T: Object>(&self, project: Option<&str>, name: &str) -> ApiResult<T> {
        self.try_get(project, name).await?.ok_or_else(|| {
            ServerError(ApiError::not_found(format!(
                "{} not found; list them with `nimbus {} list`",
                describe::<T>(project, name),
                T::KIND.replace(' ', "")
            )))
        })
    }

    pub async fn create<T: Object>(&self, mut obj: T) -> ApiResult<T> {
        let (project, name) = {
            let m = obj.metadata();
            (m.project.clone(), m.name.clone())
        };
        let now = Utc::now();
        obj.metadata_mut().created_at = now;
        obj.metadata_mut().updated_at = now;
        obj.metadata_mut().revision = 0;
        let value = encode(&obj)?;
        match self
            .store
            .create(&key::<T>(project.as_deref(), &name), value)
            .await
        {
            Ok(kv) => {
                obj.metadata_mut().revision = kv.mod_revision;
                Ok(obj)
            }
            Err(StoreError::AlreadyExists(_)) => {
                Err(ServerError(ApiError::already_exists(format!(
                    "{} already exists; pick another name or delete it first",
                    describe::<T>(project.as_deref(), &name)
                ))))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// [`Repo::create`] that also applies the writes `also` makes of the
    /// object as stored (its creation time set) in the same store write:
    /// both are stored or neither.
    pub async fn create_with<T: Object>(
        &self,
        mut obj: T,
        also: impl FnOnce(&T) -> ApiResult<Vec<Op>>,
    ) -> ApiResult<T> {
        let (project, name) = {
            let m = obj.metadata();
            (m.project.clone(), m.name.clone())
        };
        let now = Utc::now();
        obj.metadata_mut().created_at = now;
        obj.metadata_mut().updated_at = now;
        obj.metadata_mut().revision = 0;
        let key = key::<T>(project.as_deref(), &name);
        let mut success = vec![Op::Put {
            key: key.clone(),
            value: encode(&obj)?,
        }];
        success.extend(also(&obj)?);
        let result = self
            .store
            .txn(Txn {
                compares: vec![Compare::Absent(key)],
                success,
                failure: vec![],
            })
            .await?;
        if !result.succeeded {
            return Err(ServerError(ApiError::already_exists(format!(
                "{} already exists; pick another name or delete it first",
                describe::<T>(project.as_deref(), &name)
            ))));
        }
        obj.metadata_mut().revision = result.revision;
        Ok(obj)
    }

    /// [`Repo::delete`] of the object at revision `expected` that also
    /// applies `also` in the same store write: both are stored or neither.
    pub async fn delete_with<T: Object>(
        &self,
        project: Option<&str>,
        name: &str,
        expected: i64,
        also: Vec<Op>,
    ) -> ApiResult<()> {
        let key = key::<T>(project, name);
        let mut success = vec![Op::Delete { key: key.clone() }];
        success.extend(also);
        let result = self
            .store
            .txn(Txn {
                compares: vec![Compare::ModRevision(key.clone(), expected)],
                success,
                failure: vec![],
            })
            .await?;
        if result.succeeded {
            return Ok(());
        }
        match self.store.get(&key).await? {
            Some(kv) => Err(ServerError(ApiError::conflict(format!(
                "{} was changed (current revision {}); get it again and retry",
                describe::<T>(project, name),
                kv.mod_revision
            )))),
            None => Err(ServerError(ApiError::not_found(format!(
                "{} not found",
                describe::<T>(project, name)
            )))),
        }
    }

    /// Compare-and-swap on `obj.metadata.revision`.
    pub async fn update<T: Object>(&self, obj: T) -> ApiResult<T> {
        if self.fence.is_some() {
            return self.update_txn(obj, vec![]).await;
        }
        self.update_cas(obj).await
    }

    async fn update_cas<T: Object>(&self, mut obj: T) -> ApiResult<T> {
        let (project, name, expected) = {
            let m = obj.metadata();
            (m.project.clone(), m.name.clone(), m.revision)
        };
        obj.metadata_mut().updated_at = Utc::now();
        let value = encode(&obj)?;
        match self
            .store
            .update(&key::<T>(project.as_deref(), &name), value, expected)
            .await
        {
            Ok(kv) => {
                obj.metadata_mut().revision = kv.mod_revision;
                Ok(obj)
            }
            Err(StoreError::Conflict { current, .. }) => Err(ServerError(ApiError::conflict(format!(
                "{} was changed by someone else (your revision {expected}, current {current}); get it again and retry",
                describe::<T>(project.as_deref(), &name)
            )))),
            Err(StoreError::NotFound(_)) => Err(ServerError(ApiError::not_found(format!(
                "{} not found",
                describe::<T>(project.as_deref(), &name)
            )))),
            Err(e) => Err(e.into()),
        }
    }

    /// Read-modify-write with retries on conflict.
    pub async fn modify<T, F>(
        &self,
        project: Option<&str>,
        name: &str,
        mut change: F,
    ) -> ApiResult<T>
    where
        T: Object,
        F: FnMut(&mut T) -> ApiResult<()>,
    {
        for _ in 0..16 {
            let mut obj: T = self.get(project, name).await?;
            change(&mut obj)?;
            match self.update(obj).await {
                Err(ServerError(e)) if e.code == nimbus_api::ErrorCode::Conflict => continue,
                other => return other,
            }
        }
        Err(ServerError(ApiError::unavailable(format!(
            "{} is changing too fast to update; retry",
            describe::<T>(project, name)
        ))))
    }

    /// [`Repo::modify`] of an object that may not exist yet: `fresh` makes
    /// it, then `change` applies as to an existing one.
    pub async fn modify_or_create<T, F>(
        &self,
        project: Option<&str>,
        name: &str,
        fresh: impl Fn() -> T,
        mut change: F,
    ) -> ApiResult<T>
    where
        T: Object,
        F: FnMut(&mut T) -> ApiResult<()>,
    {
        for _ in 0..16 {
            let existing: Option<T> = self.try_get(project, name).await?;
            let found = existing.is_some();
            let mut obj = existing.unwrap_or_else(&fresh);
            change(&mut obj)?;
            let written = if found {
                self.update(obj).await
            } else {
                self.create(obj).await
            };
            match written {
                Err(ServerError(e))
                    if matches!(
                        e.code,
                        nimbus_api::ErrorCode::Conflict | nimbus_api::ErrorCode::AlreadyExists
                    ) =>
                {
                    continue
                }
                other => return other,
            }
        }
        Err(ServerError(ApiError::unavailable(format!(
            "{} is changing too fast to update; retry",
            describe::<T>(project, name)
        ))))
    }

    /// [`Repo::update`] that also applies `also` (records about the
    /// change) in the same store write: both are stored or neither.
    pub async fn update_with<T: Object>(&self, obj: T, also: Vec<Op>) -> ApiResult<T> {
        if also.is_empty() && self.fence.is_none() {
            return self.update_cas(obj).await;
        }
        self.update_txn(obj, also).await
    }

    /// The update as a store transaction: the object's revision, and the
    /// fence if any, compared; `also` applied with it.
    async fn update_txn<T: Object>(&self, mut obj: T, also: Vec<Op>) -> ApiResult<T> {
        let (project, name, expected) = {
            let m = obj.metadata();
            (m.project.clone(), m.name.clone(), m.revision)
        };
        obj.metadata_mut().updated_at = Utc::now();
        let key = key::<T>(project.as_deref(), &name);
        let mut success = vec![Op::Put {
            key: key.clone(),
            value: encode(&obj)?,
        }];
        success.extend(also);
        let result = self
            .store
            .txn(Txn {
                compares: std::iter::once(Compare::ModRevision(key.clone(), expected))
                    .chain(self.fence.clone())
                    .collect(),
                success,
                failure: vec![],
            })
            .await?;
        if result.succeeded {
            obj.metadata_mut().revision = result.revision;
            return Ok(obj);
        }
        match self.store.get(&key).await? {
            Some(kv) if self.fence.is_some() && kv.mod_revision == expected => {
                Err(ServerError(ApiError::unavailable(format!(
                    "{} was not changed: this server is no longer the leader, and the new leader takes its work over",
                    describe::<T>(project.as_deref(), &name)
                ))))
            }
            Some(kv) => Err(ServerError(ApiError::conflict(format!(
                "{} was changed by someone else (your revision {expected}, current {}); get it again and retry",
                describe::<T>(project.as_deref(), &name),
                kv.mod_revision
            )))),
            None => Err(ServerError(ApiError::not_found(format!(
                "{} not found",
                describe::<T>(project.as_deref(), &name)
            )))),
        }
    }

    /// [`Repo::modify`] whose change also returns writes to apply in the
    /// same store write (see [`Repo::update_with`]).
    pub async fn modify_with<T, F>(
        &self,
        project: Option<&str>,
        name: &str,
        mut change: F,
    ) -> ApiResult<T>
    where
        T: Object,
        F: FnMut(&mut T) -> ApiResult<Vec<Op>>,
    {
        for _ in 0..16 {
            let mut obj: T = self.get(project, name).await?;
            let also = change(&mut obj)?;
            match self.update_with(obj, also).await {
                Err(ServerError(e)) if e.code == nimbus_api::ErrorCode::Conflict => continue,
                other => return other,
            }
        }
        Err(ServerError(ApiError::unavailable(format!(
            "{} is changing too fast to update; retry",
            describe::<T>(project, name)
        ))))
    }

    pub async fn delete<T: Object>(
        &self,
        project: Option<&str>,
        name: &str,
        expected: Option<i64>,
    ) -> ApiResult<()> {
        match self.store.delete(&key::<T>(project, name), expected).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound(_)) => Err(ServerError(ApiError::not_found(format!(
                "{} not found",
                describe::<T>(project, name)
            )))),
            Err(StoreError::Conflict { current, .. }) => {
                Err(ServerError(ApiError::conflict(format!(
                    "{} was changed (current revision {current}); get it again and retry",
                    describe::<T>(project, name)
                ))))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every resource under `project` (or all, for `None`), read
    /// `page_size` at a time. The pages are read at different revisions:
    /// callers that need a consistent whole hold the lock that keeps its
    /// writers out.
    pub async fn list_every<T: Object>(
        &self,
        project: Option<&str>,
        page_size: usize,
    ) -> ApiResult<Vec<T>> {
        let mut opts = ListOptions {
            limit: Some(page_size),
            ..Default::default()
        };
        let mut all = Vec::new();
        loop {
            let page = self.list::<T>(project, &opts, |_| true).await?;
            all.extend(page.items);
            match page.continue_token {
                Some(next) => opts.continue_token = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// A page of resources under `project` (or all, for `None`), filtered
    /// by the label selector.
    pub async fn list<T: Object>(
        &self,
        project: Option<&str>,
        opts: &ListOptions,
        filter: impl Fn(&T) -> bool,
    ) -> ApiResult<ResourceList<T>> {
        let terms = match &opts.selector {
            Some(s) => parse_selector(s).map_err(ApiError::bad_request)?,
            None => Vec::new(),
        };
        let limit = opts.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let prefix = prefix::<T>(project);
        let mut start_after = opts.continue_token.as_ref().map(|c| format!("{prefix}{c}"));
        let mut items = Vec::new();
        let mut revision = None;
        loop {
            let page = self
                .store
                .list(&prefix, start_after.as_deref(), limit + 1)
                .await?;
            revision.get_or_insert(page.revision);
            let fetched = page.kvs.len();
            for kv in &page.kvs {
                start_after = Some(kv.key.clone());
                let obj: T = decode(kv)?;
                if selector_matches(&terms, &obj.metadata().labels) && filter(&obj) {
                    items.push(obj);
                    if items.len() > limit {
                        break;
                    }
                }
            }
            if items.len() > limit || (fetched <= limit && !page.more) {
                break;
            }
        }
        let next = if items.len() > limit {
            items.truncate(limit);
            items
                .last()
                .map(|o| key::<T>(o.metadata().project.as_deref(), &o.metadata().name))
                .map(|k| k[prefix.len()..].to_string())
        } else {
            None
        };
        Ok(ResourceList {
            items,
            revision: revision.unwrap_or_default(),
            continue_token: next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::{Host, HostPhase, Metadata};

    fn host(name: &str) -> Host {
        Host {
            metadata: Metadata::new(name, None),
            spec: Default::default(),
            status: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_fenced_update_lands_only_while_its_fence_holds() {
        let store: Arc<dyn Store> =
            Arc::new(nimbus_store::SqliteStore::open_in_memory().expect("store"));
        let repo = Repo::new(store.clone());
        repo.create(host("h1")).await.expect("create host");
        let leader = store
            .create("/cluster/leader", b"s1".to_vec())
            .await
            .expect("leader key");
        let fence = Compare::ModRevision("/cluster/leader".into(), leader.mod_revision);
        let leading = repo.fenced(Some(&fence));

        let updated = leading
            .modify::<Host, _>(None, "h1", |h| {
                h.status.phase = HostPhase::Unreachable;
                Ok(())
            })
            .await
            .expect("an update while the fence holds");
        assert_eq!(updated.status.phase, HostPhase::Unreachable);

        // Another server takes the leadership: the old leader's writes stop
        // landing, and are not retried as conflicts.
        store
            .update("/cluster/leader", b"s2".to_vec(), leader.mod_revision)
            .await
            .expect("new leader");
        let err = leading
            .modify::<Host, _>(None, "h1", |h| {
                h.status.phase = HostPhase::Ready;
                Ok(())
            })
            .await
            .expect_err("an update after the fence fell");
        assert_eq!(err.0.code, nimbus_api::ErrorCode::Unavailable, "{err:?}");
        assert!(err.0.message.contains("no longer the leader"), "{err:?}");
        let stored: Host = repo.get(None, "h1").await.expect("host");
        assert_eq!(stored.status.phase, HostPhase::Unreachable);
        assert_eq!(stored.metadata.revision, updated.metadata.revision);

        // An unfenced repo is not held back by it.
        repo.modify::<Host, _>(None, "h1", |h| {
            h.status.phase = HostPhase::Ready;
            Ok(())
        })
        .await
        .expect("an API write");
    }

    /// Version skew: a resource stored by a newer server carries fields
    /// this build does not know. The store keeps the bytes as written;
    /// reading, listing and updating it here work, the known fields intact.
    #[tokio::test]
    async fn a_resource_stored_by_a_newer_server_reads_and_updates_here() {
        let store: Arc<dyn Store> =
            Arc::new(nimbus_store::SqliteStore::open_in_memory().expect("store"));
        let repo = Repo::new(store.clone());
        let mut newer = serde_json::to_value(host("h1")).expect("json");
        newer["from_a_newer_release"] = serde_json::json!({"x": 1});
        newer["status"]["cpus"] = 8.into();
        newer["status"]["gpus"] = serde_json::json!([{"model": "future"}]);
        newer["metadata"]["owner_reference"] = "s9".into();
        let bytes = serde_json::to_vec(&newer).expect("bytes");
        store
            .create(&key::<Host>(None, "h1"), bytes.clone())
            .await
            .expect("stored as a newer server wrote it");

        let read: Host = repo
            .get(None, "h1")
            .await
            .expect("read past unknown fields");
        assert_eq!((read.metadata.name.as_str(), read.status.cpus), ("h1", 8));
        let listed = repo
            .list::<Host>(None, &Default::default(), |_| true)
            .await
            .expect("list past unknown fields");
        assert_eq!(listed.items.len(), 1);
        let kv = store
            .get(&key::<Host>(None, "h1"))
            .await
            .expect("get")
            .expect("kept");
        assert_eq!(
            kv.value, bytes,
            "the store keeps what the newer server wrote"
        );
        let updated = repo
            .modify::<Host, _>(None, "h1", |h| {
                h.status.phase = HostPhase::Ready;
                Ok(())
            })
            .await
            .expect("update past unknown fields");
        assert_eq!(
            (updated.status.phase, updated.status.cpus),
            (HostPhase::Ready, 8)
        );
        // What this build rewrites loses the fields it does not know: why
        // a release only starts writing a new field once every server and
        // agent reads it (docs/operations.md, "Adding to the wire").
        let rewritten = store
            .get(&key::<Host>(None, "h1"))
            .await
            .expect("get")
            .expect("kept");
        let rewritten: serde_json::Value = serde_json::from_slice(&rewritten.value).expect("json");
        assert!(rewritten["status"].get("gpus").is_none(), "{rewritten}");
    }
}
