//! Checks of watch replay, live delivery, filtering, compaction and back-pressure.

use std::collections::HashSet;
use std::sync::Arc;

use super::{delete, next_event, next_events, next_item, ok, put, summary};
use crate::{EventKind, KeyValue, Op, Store, StoreError, Txn, WatchStream};
use crate::{Revision, WATCH_CHANNEL_CAPACITY};

/// Writes `key` and asserts it is the very next event: proves nothing extra (such as a
/// duplicate) was queued before it.
async fn assert_next_is_sentinel(store: &Arc<dyn Store>, stream: &mut WatchStream, key: &str) {
    let kv = ok(
        store.create(key, vec![]).await,
        format!("create sentinel {key}"),
    );
    let event = next_event(stream, "sentinel").await;
    assert_eq!(
        summary(&event),
        put(key, kv.mod_revision),
        "expected the sentinel write next, got another event first"
    );
}

fn kv(key: &str, value: &[u8], create_revision: Revision, mod_revision: Revision) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: value.to_vec(),
        create_revision,
        mod_revision,
    }
}

pub async fn watch_replays_history_then_live(store: Arc<dyn Store>) {
    ok(store.create("/w/a", b"a1".to_vec()).await, "create /w/a");
    ok(store.create("/w/b", b"b1".to_vec()).await, "create /w/b");
    ok(store.update("/w/a", b"a2".to_vec(), 1).await, "update /w/a");

    let mut stream = ok(store.watch("/w/", 1).await, "watch /w/ after 1");
    let replayed = next_event(&mut stream, "first replayed event").await;
    assert_eq!(
        summary(&replayed),
        put("/w/b", 2),
        "replay starts after revision 1"
    );
    let replayed = next_event(&mut stream, "second replayed event").await;
    assert_eq!(replayed.kv, kv("/w/a", b"a2", 1, 3));
    assert_eq!(replayed.prev, Some(kv("/w/a", b"a1", 1, 1)));

    ok(store.delete("/w/b", None).await, "delete /w/b");
    ok(store.create("/w/c", b"c1".to_vec()).await, "create /w/c");
    let live = next_events(&mut stream, 2, "live events").await;
    assert_eq!(live, [delete("/w/b", 4), put("/w/c", 5)]);
    assert_next_is_sentinel(&store, &mut stream, "/w/z").await;

    let mut from_start = ok(store.watch("/w/", 0).await, "watch /w/ from the start");
    let all = next_events(&mut from_start, 6, "full replay").await;
    let expected = [
        put("/w/a", 1),
        put("/w/b", 2),
        put("/w/a", 3),
        delete("/w/b", 4),
        put("/w/c", 5),
        put("/w/z", 6),
    ];
    assert_eq!(all, expected);
    assert_next_is_sentinel(&store, &mut from_start, "/w/zz").await;
}

pub async fn list_then_watch_from_list_revision(store: Arc<dyn Store>) {
    ok(store.create("/l/1", vec![1]).await, "create /l/1");
    ok(store.create("/l/2", vec![2]).await, "create /l/2");
    let listed = ok(store.list("/l/", None, 0).await, "list /l/");
    assert_eq!(listed.revision, 2);
    ok(store.update("/l/1", vec![11], 1).await, "update /l/1");
    ok(store.create("/l/3", vec![3]).await, "create /l/3");

    let mut stream = ok(store.watch("/l/", listed.revision).await, "watch from list");
    let events = next_events(&mut stream, 2, "changes after the list").await;
    assert_eq!(events, [put("/l/1", 3), put("/l/3", 4)]);
    assert_next_is_sentinel(&store, &mut stream, "/l/4").await;
}

pub async fn watch_filters_by_prefix(store: Arc<dyn Store>) {
    ok(store.create("/f/a/old", vec![]).await, "create /f/a/old");
    ok(store.create("/f/ab/old", vec![]).await, "create /f/ab/old");
    let mut stream = ok(store.watch("/f/a/", 0).await, "watch /f/a/");
    for key in ["/f/ab/1", "/f/b/1", "/f/a/1", "/f/a"] {
        ok(store.create(key, vec![]).await, format!("create {key}"));
    }
    ok(store.delete("/f/ab/old", None).await, "delete /f/ab/old");
    ok(store.create("/f/a/2", vec![]).await, "create /f/a/2");
    let events = next_events(&mut stream, 3, "events under /f/a/").await;
    assert_eq!(
        events,
        [put("/f/a/old", 1), put("/f/a/1", 5), put("/f/a/2", 8)],
        "only keys under /f/a/, not /f/ab/, /f/b/ or /f/a itself"
    );
}

pub async fn watch_delete_carries_prior_value(store: Arc<dyn Store>) {
    ok(store.create("/x/k", b"v1".to_vec()).await, "create /x/k");
    ok(store.update("/x/k", b"v2".to_vec(), 1).await, "update /x/k");
    let mut live = ok(store.watch("/x/", 2).await, "watch /x/ after 2");
    ok(store.delete("/x/k", Some(2)).await, "delete /x/k");
    let event = next_event(&mut live, "live delete").await;
    let expected = crate::Event {
        kind: EventKind::Delete,
        kv: kv("/x/k", b"v2", 1, 3),
        prev: Some(kv("/x/k", b"v2", 1, 2)),
    };
    assert_eq!(event, expected, "a delete carries the deleted value");

    let mut replay = ok(store.watch("/x/", 2).await, "watch /x/ after 2 again");
    let replayed = next_event(&mut replay, "replayed delete").await;
    assert_eq!(replayed, expected, "replayed delete matches the live one");

    ok(store.create("/x/t", b"t".to_vec()).await, "create /x/t");
    let txn = Txn {
        success: vec![Op::Delete { key: "/x/t".into() }],
        ..Txn::default()
    };
    ok(store.txn(txn).await, "txn deleting /x/t");
    let events = next_events(&mut live, 2, "create and txn delete").await;
    assert_eq!(events, [put("/x/t", 4), delete("/x/t", 5)]);
    let deleted = next_events(&mut replay, 2, "replayed create and txn delete").await;
    assert_eq!(deleted, events);
}

pub async fn watch_sees_concurrent_writes_exactly_once(store: Arc<dyn Store>) {
    const WRITERS: usize = 4;
    const KEYS_PER_WRITER: usize = 200;
    let (midway_tx, midway_rx) = tokio::sync::oneshot::channel::<()>();
    let mut midway_tx = Some(midway_tx);
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = Arc::clone(&store);
        let mut midway = if writer == 0 { midway_tx.take() } else { None };
        writers.push(tokio::spawn(async move {
            for i in 0..KEYS_PER_WRITER {
                let key = format!("/cw/{writer}/{i:03}");
                ok(store.create(&key, vec![]).await, format!("create {key}"));
                if i == KEYS_PER_WRITER / 4 {
                    if let Some(midway) = midway.take() {
                        let _ = midway.send(());
                    }
                }
            }
        }));
    }
    // An error here means writer 0 died; joining it below reports why.
    let _ = midway_rx.await;
    let midway = ok(store.current_revision().await, "current_revision");
    // Start a little in the past so the watch replays history while writes go on.
    let after = (midway - 25).max(0);
    let mut stream = ok(store.watch("/cw/", after).await, "watch /cw/ mid-way");
    for writer in writers {
        if let Err(err) = writer.await {
            panic!("store conformance: writer task failed: {err}");
        }
    }
    let last = ok(store.current_revision().await, "current_revision");
    assert_eq!(last, (WRITERS * KEYS_PER_WRITER) as Revision);
    let mut seen = HashSet::new();
    for expected_revision in after + 1..=last {
        let event = next_event(&mut stream, "concurrent write").await;
        assert_eq!(
            event.revision(),
            expected_revision,
            "watch after {after} must deliver every revision once, in order"
        );
        assert!(
            seen.insert(event.kv.key.clone()),
            "duplicate event for {}",
            event.kv.key
        );
    }
    assert_next_is_sentinel(&store, &mut stream, "/cw/sentinel").await;
}

pub async fn watch_after_compaction_is_compacted(store: Arc<dyn Store>) {
    for i in 1..=5 {
        ok(
            store.create(&format!("/c/{i}"), vec![]).await,
            "create /c/i",
        );
    }
    ok(store.compact(3).await, "compact to 3");
    for after in [0, 2] {
        let outcome = match store.watch("/c/", after).await {
            Err(err) => Err(err),
            Ok(mut stream) => match next_item(&mut stream, "watch of compacted history").await {
                Some(Err(err)) => Err(err),
                other => Ok(other),
            },
        };
        match outcome {
            Err(StoreError::Compacted {
                requested,
                compacted,
            }) => assert_eq!((requested, compacted), (after, 3)),
            other => panic!("watch after {after} of history compacted to 3 must fail with Compacted, got {other:?}"),
        }
    }
    let mut stream = ok(
        store.watch("/c/", 3).await,
        "watch after the compacted revision",
    );
    let events = next_events(&mut stream, 2, "history after compaction").await;
    assert_eq!(events, [put("/c/4", 4), put("/c/5", 5)]);

    let listed = ok(store.list("/c/", None, 0).await, "list after compaction");
    assert_eq!(
        listed.kvs.len(),
        5,
        "compaction drops history, not current keys"
    );
    ok(
        store.compact(2).await,
        "compacting below the compacted revision is a no-op",
    );
    ok(store.compact(3).await, "compacting again is a no-op");
    assert_next_is_sentinel(&store, &mut stream, "/c/6").await;
}

pub async fn slow_watcher_ends_with_compacted_not_gap(store: Arc<dyn Store>) {
    const OPS_PER_TXN: usize = 128;
    let total = 4 * WATCH_CHANNEL_CAPACITY;
    let mut stream = ok(store.watch("/slow/", 0).await, "watch /slow/");
    let keys: Vec<String> = (0..total).map(|i| format!("/slow/{i:06}")).collect();
    for chunk in keys.chunks(OPS_PER_TXN) {
        let success = chunk
            .iter()
            .map(|key| Op::Put {
                key: key.clone(),
                value: vec![0; 16],
            })
            .collect();
        let txn = Txn {
            success,
            ..Txn::default()
        };
        ok(store.txn(txn).await, "txn of puts under /slow/");
    }
    // Only now read: the watcher has fallen far behind.
    let mut received = 0;
    loop {
        match next_item(&mut stream, "slow watcher").await {
            Some(Ok(event)) => {
                assert_eq!(
                    event.kv.key, keys[received],
                    "a slow watcher must get a gap-free prefix of the events"
                );
                received += 1;
                assert!(
                    received < total,
                    "a watcher that never read received all {total} events: its buffer is unbounded"
                );
            }
            Some(Err(StoreError::Compacted { .. })) => break,
            Some(Err(other)) => panic!("slow watcher must end with Compacted, got {other}"),
            None => panic!("slow watcher stream ended after {received} events without Compacted"),
        }
    }
    assert!(
        next_item(&mut stream, "end of slow watcher stream")
            .await
            .is_none(),
        "Compacted must be the last item of the stream"
    );
}
