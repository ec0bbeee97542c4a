//! The store as the server uses it, timed: a wrapper around any `Store`
//! that measures writes and counts open watches, so the `Store` trait and
//! its backends know nothing of metrics. Used only when metrics are on.

use std::sync::Arc;
use std::time::Instant;

use nimbus_store::{KeyValue, ListResult, Result, Revision, Store, Txn, TxnResult, WatchStream};

use super::Metrics;

/// Events a watch's relay holds before it waits for its watcher; the
/// backend's own buffer (and its `Compacted` signal) stays behind it.
const RELAY_BUFFER: usize = 64;

pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> MeteredStore {
        MeteredStore { inner, metrics }
    }

    fn timed<T>(&self, op: &'static str, started: Instant, result: Result<T>) -> Result<T> {
        self.metrics.observe_store_write(op, started.elapsed());
        result
    }
}

/// Decrements the watch count when the relay ends, however it ends.
struct OpenWatch(Arc<Metrics>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.add_store_watches(-1);
    }
}

#[async_trait::async_trait]
impl Store for MeteredStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner.get(key).await
    }
    async fn release_reserve(&self) -> bool {
        self.inner.release_reserve().await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        self.inner.list(prefix, start_after, limit).await
    }
    async fn list_reverse(
        &self,
        prefix: &str,
        end_before: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        self.inner.list_reverse(prefix, end_before, limit).await
    }
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let started = Instant::now();
        let r = self.inner.create(key, value).await;
        self.timed("create", started, r)
    }
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Revision,
    ) -> Result<KeyValue> {
        let started = Instant::now();
        let r = self.inner.update(key, value, expected_mod_revision).await;
        self.timed("update", started, r)
    }
    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<KeyValue> {
        let started = Instant::now();
        let r = self.inner.delete(key, expected_mod_revision).await;
        self.timed("delete", started, r)
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let started = Instant::now();
        let r = self.inner.txn(txn).await;
        self.timed("txn", started, r)
    }
    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }
    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream> {
        let mut events = self.inner.watch(prefix, after_revision).await?;
        let (relay, watcher) = tokio::sync::mpsc::channel(RELAY_BUFFER);
        self.metrics.add_store_watches(1);
        let open = OpenWatch(self.metrics.clone());
        tokio::spawn(async move {
            let _open = open;
            loop {
                tokio::select! {
                    _ = relay.closed() => return,
                    event = events.recv() => match event {
                        Some(event) => {
                            if relay.send(event).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                }
            }
        });
        Ok(watcher)
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_are_timed_and_watches_counted_while_open() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = nimbus_store::SqliteStore::open(
            &dir.path().join("s.db"),
            nimbus_store::SqliteOptions::default(),
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new(true));
        let store = MeteredStore::new(Arc::new(sqlite), metrics.clone());
        let mut watch = store.watch("/a/", 0).await.unwrap();
        assert_eq!(metrics.store_watches.get(), 1);
        store.create("/a/x", b"1".to_vec()).await.unwrap();
        let event = watch.recv().await.unwrap().unwrap();
        assert_eq!(event.kv.key, "/a/x");
        let out = metrics.encode(Default::default()).unwrap();
        assert!(
            out.contains("nimbus_store_write_duration_seconds_count{op=\"create\"} 1"),
            "{out}"
        );
        drop(watch);
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while metrics.store_watches.get() != 0 && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            metrics.store_watches.get(),
            0,
            "the closed watch is no longer counted"
        );
    }
}
