//! The conformance suite on EtcdStore, each check on its own fresh 3-member etcd
//! cluster (the checks assert exact revisions, which a shared cluster cannot give).

mod etcd_cluster;

use std::sync::Arc;

use etcd_cluster::{cluster_permit, skip_reason, EtcdCluster};
use nimbus_store::{
    EtcdStore, KeyValue, ListResult, Result, Revision, Store, Txn, TxnResult, WatchStream,
};

/// An EtcdStore that owns its cluster: dropping it stops the members.
struct TempEtcdStore {
    store: EtcdStore,
    _cluster: EtcdCluster,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

#[async_trait::async_trait]
impl Store for TempEtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.store.get(key).await
    }
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ListResult> {
        self.store.list(prefix, after, limit).await
    }
    async fn list_reverse(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        self.store.list_reverse(prefix, before, limit).await
    }
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        self.store.create(key, value).await
    }
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue> {
        self.store.update(key, value, expected).await
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        self.store.delete(key, expected).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        self.store.txn(txn).await
    }
    async fn current_revision(&self) -> Result<Revision> {
        self.store.current_revision().await
    }
    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream> {
        self.store.watch(prefix, after_revision).await
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        self.store.compact(revision).await
    }
}

async fn fresh_etcd_store() -> Arc<dyn Store> {
    let permit = cluster_permit().await;
    let cluster = EtcdCluster::start(3).await;
    let store = EtcdStore::connect(&cluster.config())
        .await
        .expect("connect to the test etcd cluster");
    Arc::new(TempEtcdStore {
        store,
        _cluster: cluster,
        _permit: permit,
    })
}

nimbus_store::store_conformance_tests!(fresh_etcd_store, skip_if: skip_reason);
