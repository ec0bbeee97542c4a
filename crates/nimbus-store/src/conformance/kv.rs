//! Checks of reads, writes, lists and transactions.

use std::sync::Arc;

use super::{next_events, ok, put};
use crate::{Compare, Op, Store, StoreError, Txn};

fn keys(kvs: &[crate::KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

pub async fn empty_store_starts_at_revision_zero(store: Arc<dyn Store>) {
    assert_eq!(ok(store.current_revision().await, "current_revision"), 0);
    assert_eq!(ok(store.get("/none").await, "get /none"), None);
    let listed = ok(store.list("", None, 0).await, "list everything");
    assert!(listed.kvs.is_empty(), "empty store listed {:?}", listed.kvs);
    assert_eq!((listed.revision, listed.more), (0, false));
}

pub async fn create_get_and_already_exists(store: Arc<dyn Store>) {
    let created = ok(
        store.create("/a/one", b"v1".to_vec()).await,
        "create /a/one",
    );
    assert_eq!(created.key, "/a/one");
    assert_eq!(created.value, b"v1");
    assert_eq!((created.create_revision, created.mod_revision), (1, 1));
    let got = ok(store.get("/a/one").await, "get /a/one");
    assert_eq!(
        got.as_ref(),
        Some(&created),
        "get returns what create wrote"
    );

    match store.create("/a/one", b"v2".to_vec()).await {
        Err(StoreError::AlreadyExists(key)) => assert_eq!(key, "/a/one"),
        other => panic!("creating an existing key must fail with AlreadyExists, got {other:?}"),
    }
    let got = ok(store.get("/a/one").await, "get /a/one after failed create");
    assert_eq!(
        got,
        Some(created),
        "a failed create must not change the value"
    );
    assert_eq!(ok(store.current_revision().await, "current_revision"), 1);
}

pub async fn update_compare_and_swap(store: Arc<dyn Store>) {
    let created = ok(store.create("/u/k", b"v1".to_vec()).await, "create /u/k");
    let updated = ok(
        store
            .update("/u/k", b"v2".to_vec(), created.mod_revision)
            .await,
        "update /u/k at its current revision",
    );
    assert_eq!(updated.value, b"v2");
    assert_eq!(updated.create_revision, created.create_revision);
    assert_eq!(updated.mod_revision, created.mod_revision + 1);

    match store
        .update("/u/k", b"stale".to_vec(), created.mod_revision)
        .await
    {
        Err(StoreError::Conflict {
            key,
            expected,
            current,
        }) => {
            assert_eq!(key, "/u/k");
            assert_eq!(
                (expected, current),
                (created.mod_revision, updated.mod_revision)
            );
        }
        other => panic!("update at a stale revision must fail with Conflict, got {other:?}"),
    }
    let got = ok(store.get("/u/k").await, "get /u/k after conflict");
    assert_eq!(
        got,
        Some(updated.clone()),
        "a conflicting update must not change the value"
    );

    match store.update("/u/missing", b"v".to_vec(), 1).await {
        Err(StoreError::NotFound(key)) => assert_eq!(key, "/u/missing"),
        other => panic!("updating an absent key must fail with NotFound, got {other:?}"),
    }
    assert_eq!(ok(store.get("/u/missing").await, "get /u/missing"), None);
    assert_eq!(
        ok(store.current_revision().await, "current_revision"),
        updated.mod_revision,
        "failed updates must not advance the revision"
    );
}

pub async fn delete_with_and_without_revision(store: Arc<dyn Store>) {
    let a = ok(store.create("/d/a", b"a".to_vec()).await, "create /d/a");
    let b = ok(store.create("/d/b", b"b".to_vec()).await, "create /d/b");

    match store.delete("/d/a", Some(a.mod_revision + 100)).await {
        Err(StoreError::Conflict {
            key,
            expected,
            current,
        }) => {
            assert_eq!(key, "/d/a");
            assert_eq!((expected, current), (a.mod_revision + 100, a.mod_revision));
        }
        other => panic!("delete at a wrong revision must fail with Conflict, got {other:?}"),
    }
    assert_eq!(ok(store.get("/d/a").await, "get /d/a"), Some(a.clone()));

    let deleted = ok(
        store.delete("/d/a", Some(a.mod_revision)).await,
        "delete /d/a",
    );
    assert_eq!(deleted, a, "delete returns the key as it was");
    assert_eq!(ok(store.get("/d/a").await, "get deleted /d/a"), None);

    let deleted = ok(
        store.delete("/d/b", None).await,
        "delete /d/b without revision",
    );
    assert_eq!(deleted, b);
    assert_eq!(ok(store.get("/d/b").await, "get deleted /d/b"), None);

    let revision = ok(store.current_revision().await, "current_revision");
    assert_eq!(
        revision, 4,
        "two creates and two deletes make four revisions"
    );
    for expected in [None, Some(1)] {
        match store.delete("/d/a", expected).await {
            Err(StoreError::NotFound(key)) => assert_eq!(key, "/d/a"),
            other => panic!("deleting an absent key must fail with NotFound, got {other:?}"),
        }
    }
    assert_eq!(
        ok(store.current_revision().await, "current_revision"),
        revision
    );
}

pub async fn recreate_gets_new_create_revision(store: Arc<dyn Store>) {
    let first = ok(store.create("/r/k", b"1".to_vec()).await, "create /r/k");
    ok(
        store
            .update("/r/k", b"2".to_vec(), first.mod_revision)
            .await,
        "update /r/k",
    );
    ok(store.delete("/r/k", None).await, "delete /r/k");
    let again = ok(store.create("/r/k", b"3".to_vec()).await, "re-create /r/k");
    assert_eq!((again.create_revision, again.mod_revision), (4, 4));
    assert_eq!(ok(store.get("/r/k").await, "get /r/k"), Some(again));
}

pub async fn revisions_increase_by_one_per_write(store: Arc<dyn Store>) {
    let mut expected = 0;
    for i in 0..5 {
        let key = format!("/m/{i}");
        let kv = ok(store.create(&key, vec![i]).await, format!("create {key}"));
        expected += 1;
        assert_eq!((kv.create_revision, kv.mod_revision), (expected, expected));
        let kv = ok(
            store.update(&key, vec![i, i], kv.mod_revision).await,
            "update",
        );
        expected += 1;
        assert_eq!(
            (kv.create_revision, kv.mod_revision),
            (expected - 1, expected)
        );
        assert_eq!(
            ok(store.current_revision().await, "current_revision"),
            expected
        );
        // Failed writes leave the revision alone.
        assert!(store.create(&key, vec![]).await.is_err());
        assert!(store
            .update(&key, vec![], kv.mod_revision - 1)
            .await
            .is_err());
        assert!(store.delete("/m/absent", None).await.is_err());
        assert_eq!(
            ok(store.current_revision().await, "current_revision"),
            expected
        );
    }
}

pub async fn list_by_prefix_in_key_order(store: Arc<dyn Store>) {
    for key in [
        "/a/b/2", "/a/bc/1", "/a/b/0", "/b/x", "/a/b", "/a/c", "/a/b/1", "/a/b/1/x",
    ] {
        ok(
            store.create(key, key.as_bytes().to_vec()).await,
            format!("create {key}"),
        );
    }
    let revision = ok(store.current_revision().await, "current_revision");

    let listed = ok(store.list("/a/b/", None, 0).await, "list /a/b/");
    assert_eq!(
        keys(&listed.kvs),
        ["/a/b/0", "/a/b/1", "/a/b/1/x", "/a/b/2"]
    );
    assert_eq!((listed.revision, listed.more), (revision, false));
    for kv in &listed.kvs {
        assert_eq!(kv.value, kv.key.as_bytes(), "value listed with its key");
    }

    let listed = ok(store.list("/a/bc/", None, 0).await, "list /a/bc/");
    assert_eq!(
        keys(&listed.kvs),
        ["/a/bc/1"],
        "/a/bc/ must not see /a/b/ keys"
    );

    let listed = ok(store.list("/a/", None, 0).await, "list /a/");
    let expected = [
        "/a/b", "/a/b/0", "/a/b/1", "/a/b/1/x", "/a/b/2", "/a/bc/1", "/a/c",
    ];
    assert_eq!(keys(&listed.kvs), expected);

    let listed = ok(store.list("", None, 0).await, "list everything");
    assert_eq!(listed.kvs.len(), 8);
    assert_eq!(listed.kvs.last().map(|kv| kv.key.as_str()), Some("/b/x"));

    let listed = ok(store.list("/z/", None, 0).await, "list /z/");
    assert!(listed.kvs.is_empty());
    assert_eq!(listed.revision, revision);
}

pub async fn list_pagination(store: Arc<dyn Store>) {
    for i in 0..10 {
        let key = format!("/p/{i:02}");
        ok(store.create(&key, vec![i]).await, format!("create {key}"));
    }
    ok(store.create("/q/00", vec![]).await, "create /q/00");
    ok(store.create("/o/99", vec![]).await, "create /o/99");

    let mut pages = Vec::new();
    let mut start_after: Option<String> = None;
    loop {
        let page = ok(
            store.list("/p/", start_after.as_deref(), 3).await,
            format!("list /p/ after {start_after:?}"),
        );
        assert!(
            page.kvs.len() <= 3,
            "limit 3 returned {} keys",
            page.kvs.len()
        );
        assert_eq!(page.revision, 12);
        pages.push((keys(&page.kvs).join(","), page.more));
        start_after = page.kvs.last().map(|kv| kv.key.clone());
        if !page.more {
            break;
        }
    }
    let expected = [
        ("/p/00,/p/01,/p/02", true),
        ("/p/03,/p/04,/p/05", true),
        ("/p/06,/p/07,/p/08", true),
        ("/p/09", false),
    ];
    let expected: Vec<_> = expected.iter().map(|(k, m)| (k.to_string(), *m)).collect();
    assert_eq!(pages, expected);

    let page = ok(
        store.list("/p/", Some("/p/06"), 3).await,
        "list last full page",
    );
    assert_eq!(keys(&page.kvs), ["/p/07", "/p/08", "/p/09"]);
    assert!(
        !page.more,
        "more must be false when exactly `limit` keys remain"
    );

    let page = ok(
        store.list("/p/", Some("/o/99"), 2).await,
        "list after key before prefix",
    );
    assert_eq!((keys(&page.kvs), page.more), (vec!["/p/00", "/p/01"], true));

    let page = ok(
        store.list("/p/", Some("/p/09"), 0).await,
        "list after last key",
    );
    assert_eq!((page.kvs.len(), page.more), (0, false));

    let page = ok(
        store.list("/p/", Some("/p/04x"), 0).await,
        "list after non-key",
    );
    assert_eq!(page.kvs.len(), 5, "start_after need not be an existing key");
}

pub async fn list_reverse_pagination(store: Arc<dyn Store>) {
    for i in 0..7 {
        let key = format!("/p/{i:02}");
        ok(store.create(&key, vec![i]).await, format!("create {key}"));
    }
    ok(store.create("/q/00", vec![]).await, "create /q/00");
    ok(store.create("/o/99", vec![]).await, "create /o/99");

    let mut pages = Vec::new();
    let mut end_before: Option<String> = None;
    loop {
        let page = ok(
            store.list_reverse("/p/", end_before.as_deref(), 3).await,
            format!("list /p/ backwards before {end_before:?}"),
        );
        assert_eq!(page.revision, 9);
        pages.push((keys(&page.kvs).join(","), page.more));
        end_before = page.kvs.last().map(|kv| kv.key.clone());
        if !page.more {
            break;
        }
    }
    let expected = [
        ("/p/06,/p/05,/p/04", true),
        ("/p/03,/p/02,/p/01", true),
        ("/p/00", false),
    ];
    let expected: Vec<_> = expected.iter().map(|(k, m)| (k.to_string(), *m)).collect();
    assert_eq!(pages, expected);

    let page = ok(
        store.list_reverse("/p/", Some("/p/03"), 3).await,
        "list the last full page backwards",
    );
    assert_eq!(keys(&page.kvs), ["/p/02", "/p/01", "/p/00"]);
    assert!(
        !page.more,
        "more must be false when exactly `limit` keys remain"
    );

    let page = ok(
        store.list_reverse("/p/", Some("/q/00"), 1).await,
        "list backwards before a key after the prefix",
    );
    assert_eq!((keys(&page.kvs), page.more), (vec!["/p/06"], true));

    let page = ok(
        store.list_reverse("/p/", Some("/p/03x"), 0).await,
        "list backwards before a non-key",
    );
    assert_eq!(keys(&page.kvs), ["/p/03", "/p/02", "/p/01", "/p/00"]);

    let page = ok(
        store.list_reverse("/p/", Some("/p/00"), 0).await,
        "list backwards before the first key",
    );
    assert_eq!((page.kvs.len(), page.more), (0, false));
}

pub async fn txn_applies_success_ops_when_compares_hold(store: Arc<dyn Store>) {
    let x = ok(store.create("/t/x", b"x".to_vec()).await, "create /t/x");
    let txn = Txn {
        compares: vec![
            Compare::Absent("/t/a".into()),
            Compare::Exists("/t/x".into()),
            Compare::ModRevision("/t/x".into(), x.mod_revision),
            Compare::ModRevision("/t/never".into(), 0),
        ],
        success: vec![
            Op::Put {
                key: "/t/a".into(),
                value: b"a".to_vec(),
            },
            Op::Delete { key: "/t/x".into() },
            Op::Delete {
                key: "/t/absent".into(),
            },
        ],
        failure: vec![Op::Put {
            key: "/t/failure".into(),
            value: vec![],
        }],
    };
    let result = ok(store.txn(txn).await, "txn with holding compares");
    assert!(result.succeeded, "all compares held");
    assert_eq!(result.revision, 2);
    let a = ok(store.get("/t/a").await, "get /t/a").map(|kv| (kv.value, kv.mod_revision));
    assert_eq!(a, Some((b"a".to_vec(), 2)));
    assert_eq!(ok(store.get("/t/x").await, "get /t/x"), None);
    assert_eq!(ok(store.get("/t/failure").await, "get /t/failure"), None);
    assert_eq!(ok(store.current_revision().await, "current_revision"), 2);
}

pub async fn txn_is_all_or_nothing(store: Arc<dyn Store>) {
    let x = ok(store.create("/t/x", b"x".to_vec()).await, "create /t/x");
    ok(
        store.update("/t/x", b"x2".to_vec(), x.mod_revision).await,
        "update /t/x",
    );
    let txn = Txn {
        compares: vec![
            Compare::Exists("/t/x".into()),
            Compare::ModRevision("/t/x".into(), x.mod_revision),
        ],
        success: vec![
            Op::Put {
                key: "/t/a".into(),
                value: b"a".to_vec(),
            },
            Op::Delete { key: "/t/x".into() },
        ],
        failure: vec![
            Op::Put {
                key: "/t/f1".into(),
                value: b"f1".to_vec(),
            },
            Op::Put {
                key: "/t/f2".into(),
                value: b"f2".to_vec(),
            },
        ],
    };
    let result = ok(store.txn(txn).await, "txn with a stale compare");
    assert!(
        !result.succeeded,
        "a stale ModRevision compare must fail the txn"
    );
    assert_eq!(result.revision, 3);
    assert_eq!(
        ok(store.get("/t/a").await, "get /t/a"),
        None,
        "no success op applied"
    );
    let x_now = ok(store.get("/t/x").await, "get /t/x").map(|kv| kv.value);
    assert_eq!(x_now, Some(b"x2".to_vec()), "no success op applied");
    for key in ["/t/f1", "/t/f2"] {
        let kv = ok(store.get(key).await, format!("get {key}"));
        assert_eq!(
            kv.map(|kv| kv.mod_revision),
            Some(3),
            "failure op {key} applied"
        );
    }

    // Compares that fail with no failure ops write nothing.
    let txn = Txn {
        compares: vec![Compare::Absent("/t/x".into())],
        success: vec![Op::Delete { key: "/t/x".into() }],
        failure: vec![],
    };
    let result = ok(store.txn(txn).await, "txn failing with no failure ops");
    assert!(!result.succeeded);
    assert_eq!(
        result.revision, 3,
        "a txn that writes nothing keeps the revision"
    );
    assert_eq!(ok(store.current_revision().await, "current_revision"), 3);
}

pub async fn txn_ops_share_one_revision(store: Arc<dyn Store>) {
    ok(store.create("/s/0", vec![]).await, "create /s/0");
    let mut watch = ok(store.watch("/s/", 1).await, "watch /s/ after 1");
    let success = (1..=5)
        .map(|i| Op::Put {
            key: format!("/s/{i}"),
            value: vec![i],
        })
        .chain([Op::Delete { key: "/s/0".into() }])
        .collect();
    let txn = Txn {
        success,
        ..Txn::default()
    };
    let result = ok(store.txn(txn).await, "txn of six ops");
    assert!(result.succeeded, "a txn without compares succeeds");
    assert_eq!(
        result.revision, 2,
        "all ops of a txn share one new revision"
    );
    let listed = ok(store.list("/s/", None, 0).await, "list /s/");
    assert_eq!(listed.kvs.len(), 5);
    for kv in &listed.kvs {
        assert_eq!((kv.create_revision, kv.mod_revision), (2, 2), "{}", kv.key);
    }
    let events = next_events(&mut watch, 6, "events of the txn").await;
    let mut expected: Vec<_> = (1..=5).map(|i| put(&format!("/s/{i}"), 2)).collect();
    expected.push(super::delete("/s/0", 2));
    assert_eq!(
        events, expected,
        "one event per op, in op order, at one revision"
    );
}
