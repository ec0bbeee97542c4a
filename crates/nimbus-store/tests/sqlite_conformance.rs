//! The conformance suite on SqliteStore (database files in a temporary directory), plus
//! behaviour only the SQLite backend has: persistence across reopen, the history limit
//! and watcher cleanup.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nimbus_store::{
    conformance, KeyValue, ListResult, Op, Result, Revision, SqliteOptions, SqliteStore, Store,
    StoreError, Txn, TxnResult, WatchStream,
};
use tempfile::TempDir;

/// A SqliteStore that owns the temporary directory holding its files.
struct TempSqliteStore {
    store: SqliteStore,
    _dir: TempDir,
}

#[async_trait::async_trait]
impl Store for TempSqliteStore {
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

async fn fresh_sqlite_store() -> Arc<dyn Store> {
    let dir = tempfile::tempdir().expect("create temp dir");
    let store = SqliteStore::open(&dir.path().join("store.db"), SqliteOptions::default())
        .expect("open SQLite store");
    Arc::new(TempSqliteStore { store, _dir: dir })
}

nimbus_store::store_conformance_tests!(fresh_sqlite_store);

fn open(path: &Path, history_limit: usize) -> SqliteStore {
    SqliteStore::open(path, SqliteOptions { history_limit }).expect("open SQLite store")
}

async fn next_revisions(stream: &mut WatchStream, count: usize) -> Vec<Revision> {
    let mut revisions = Vec::new();
    for _ in 0..count {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.recv())
            .await
            .expect("watch event within 10s");
        let event = item.expect("stream open").expect("watch event");
        revisions.push(event.revision());
    }
    revisions
}

#[tokio::test(flavor = "multi_thread")]
async fn run_all_passes_on_in_memory_stores() {
    let factory =
        || -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn Store>> + Send>> {
            Box::pin(async {
                let store = SqliteStore::open_in_memory().expect("open in-memory store");
                Arc::new(store) as Arc<dyn Store>
            })
        };
    conformance::run_all(&factory).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = dir.path().join("store.db");
    {
        let store = open(&path, 1000);
        let a = store
            .create("/k/a", b"a1".to_vec())
            .await
            .expect("create /k/a");
        store
            .update("/k/a", b"a2".to_vec(), a.mod_revision)
            .await
            .expect("update /k/a");
        store
            .create("/k/b", b"b".to_vec())
            .await
            .expect("create /k/b");
        store.delete("/k/b", None).await.expect("delete /k/b");
        store.compact(1).await.expect("compact to 1");
    }
    let store = open(&path, 1000);
    assert_eq!(store.current_revision().await.expect("revision"), 4);
    assert_eq!(store.compacted_revision().await.expect("compacted"), 1);
    let a = store
        .get("/k/a")
        .await
        .expect("get /k/a")
        .expect("/k/a survives");
    assert_eq!(
        (a.value, a.create_revision, a.mod_revision),
        (b"a2".to_vec(), 1, 2)
    );
    assert_eq!(store.get("/k/b").await.expect("get /k/b"), None);

    let c = store.create("/k/c", vec![]).await.expect("create /k/c");
    assert_eq!(c.mod_revision, 5, "revisions continue after reopen");
    let mut stream = store
        .watch("/k/", 1)
        .await
        .expect("watch persisted history");
    assert_eq!(next_revisions(&mut stream, 4).await, [2, 3, 4, 5]);
    assert!(matches!(
        store.watch("/k/", 0).await,
        Err(StoreError::Compacted {
            requested: 0,
            compacted: 1
        })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn history_limit_compacts_oldest_revisions() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = dir.path().join("store.db");
    {
        let store = open(&path, 10);
        for i in 1..=25 {
            store
                .create(&format!("/h/{i:02}"), vec![])
                .await
                .expect("create");
        }
        assert_eq!(store.compacted_revision().await.expect("compacted"), 15);
        match store.watch("/h/", 10).await {
            Err(StoreError::Compacted {
                requested,
                compacted,
            }) => {
                assert_eq!((requested, compacted), (10, 15));
            }
            other => panic!("watch of trimmed history must be Compacted, got {other:?}"),
        }
        let mut stream = store.watch("/h/", 15).await.expect("watch kept history");
        let expected: Vec<Revision> = (16..=25).collect();
        assert_eq!(next_revisions(&mut stream, 10).await, expected);
        let listed = store.list("/h/", None, 0).await.expect("list");
        assert_eq!(
            listed.kvs.len(),
            25,
            "trimming history keeps every current key"
        );
    }
    // The limit keeps applying after reopen.
    let store = open(&path, 10);
    store.create("/h/26", vec![]).await.expect("create /h/26");
    assert_eq!(store.compacted_revision().await.expect("compacted"), 16);
}

async fn put_keys(store: &SqliteStore, prefix: &str, range: std::ops::Range<usize>) {
    let keys: Vec<usize> = range.collect();
    for chunk in keys.chunks(128) {
        let success = chunk
            .iter()
            .map(|i| Op::Put {
                key: format!("{prefix}{i:06}"),
                value: vec![],
            })
            .collect();
        let txn = Txn {
            success,
            ..Txn::default()
        };
        store.txn(txn).await.expect("txn of puts");
    }
}

/// A watcher still replaying when the history limit trims the log under it must end
/// with Compacted, not skip the trimmed events.
#[tokio::test(flavor = "multi_thread")]
async fn replay_overtaken_by_history_limit_ends_with_compacted() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let store = open(&dir.path().join("store.db"), 5000);
    put_keys(&store, "/r/", 0..5000).await;
    // Replaying 5000 events overflows the stream's buffer, so the replay stalls here.
    let mut stream = store
        .watch("/r/", 0)
        .await
        .expect("watch /r/ from the start");
    put_keys(&store, "/r/", 5000..10_000).await;
    assert!(store.compacted_revision().await.expect("compacted") > 0);
    let mut received = 0;
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.recv())
            .await
            .expect("watch item within 10s");
        match item {
            Some(Ok(event)) => {
                assert_eq!(event.kv.key, format!("/r/{received:06}"), "gap in replay");
                received += 1;
            }
            Some(Err(StoreError::Compacted { .. })) => break,
            other => panic!("expected events then Compacted, got {other:?} after {received}"),
        }
    }
    assert!(received < 5000, "replay stopped before the trimmed events");
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_watchers_are_cleaned_up() {
    let store = SqliteStore::open_in_memory().expect("open in-memory store");
    let kept = store.watch("/a/", 0).await.expect("watch /a/");
    let dropped = store.watch("/b/", 0).await.expect("watch /b/");
    assert_eq!(store.watcher_count().await.expect("count"), 2);
    drop(dropped);
    let cleaned = tokio::time::timeout(Duration::from_secs(10), async {
        while store.watcher_count().await.expect("count") != 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(
        cleaned.is_ok(),
        "dropped watcher still registered after 10s"
    );
    drop(kept);
}

#[test]
fn open_reports_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = dir.path().join("garbage.db");
    std::fs::write(&path, vec![0x42; 8192]).expect("write garbage");
    match SqliteStore::open(&path, SqliteOptions::default()) {
        Err(StoreError::Backend(message)) => {
            assert!(
                message.contains("garbage.db"),
                "message names the file: {message}"
            )
        }
        Err(other) => panic!("expected a Backend error, got {other}"),
        Ok(_) => panic!("opening a garbage file must fail"),
    }
}
