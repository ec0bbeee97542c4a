//! EtcdStore across etcd failures on a real 3-member cluster: a watch keeps every
//! revision exactly once when the leader is killed, and the store keeps serving with
//! one member stopped.

mod etcd_cluster;

use std::time::{Duration, Instant};

use etcd_cluster::{skip, EtcdCluster};
use nimbus_store::{EtcdStore, Op, Revision, Store, StoreError, Txn, WatchStream};

/// How long a write may keep failing while the cluster elects a new leader.
const ELECTION_DEADLINE: Duration = Duration::from_secs(30);

/// Creates `key`, retrying while the cluster has no leader. A create that reached
/// etcd before its answer was lost shows up as AlreadyExists on the retry.
async fn create_retrying(store: &EtcdStore, key: &str) {
    let started = Instant::now();
    loop {
        match store.create(key, key.as_bytes().to_vec()).await {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => return,
            Err(err) if started.elapsed() < ELECTION_DEADLINE => {
                eprintln!("create {key} failed, retrying: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("create {key} kept failing for {ELECTION_DEADLINE:?}: {err}"),
        }
    }
}

/// Reads `stream` until it has delivered revision `last`, asserting that the
/// revisions run `from..=last` with none missing or repeated.
async fn expect_revisions(stream: &mut WatchStream, from: Revision, last: Revision, who: &str) {
    let mut expected = from;
    while expected <= last {
        let item = tokio::time::timeout(ELECTION_DEADLINE, stream.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("{who}: no event for revision {expected} within {ELECTION_DEADLINE:?}")
            });
        let event = match item {
            Some(Ok(event)) => event,
            Some(Err(err)) => panic!("{who}: watch failed at revision {expected}: {err}"),
            None => panic!("{who}: watch ended before revision {expected}"),
        };
        assert_eq!(
            event.revision(),
            expected,
            "{who}: watch must deliver every revision once, in order"
        );
        assert_eq!(
            event.kv.value,
            event.kv.key.as_bytes(),
            "{who}: value of {}",
            event.kv.key
        );
        expected += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_resumes_after_the_leader_is_killed() {
    if skip("watch_resumes_after_the_leader_is_killed") {
        return;
    }
    let mut cluster = EtcdCluster::start(3).await;
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    let writer = EtcdStore::connect(&cluster.config())
        .await
        .expect("connect writer");
    // This watcher talks to the leader only: killing it certainly breaks its stream,
    // and it resumes when that member comes back.
    let on_leader = EtcdStore::connect(&cluster.config_of(&[leader]))
        .await
        .expect("connect to the leader");
    // These fail over to the surviving members while the leader is down.
    let mut on_all = Vec::new();
    for _ in 0..3 {
        on_all.push(
            EtcdStore::connect(&cluster.config())
                .await
                .expect("connect"),
        );
    }
    let mut leader_watch = on_leader
        .watch("/w/", 0)
        .await
        .expect("watch on the leader");
    let mut watches = Vec::new();
    for store in &on_all {
        watches.push(store.watch("/w/", 0).await.expect("watch over all members"));
    }

    for i in 0..20 {
        create_retrying(&writer, &format!("/w/{i:03}")).await;
    }
    cluster.kill(leader);
    for i in 20..60 {
        create_retrying(&writer, &format!("/w/{i:03}")).await;
    }
    let during_outage = writer.current_revision().await.expect("revision");
    assert_eq!(during_outage, 60, "60 creates are revisions 1..=60");
    let new_leader = cluster.leader().await;
    assert!(followers.contains(&new_leader), "a follower took over");
    for (n, watch) in watches.iter_mut().enumerate() {
        expect_revisions(
            watch,
            1,
            during_outage,
            &format!("watcher {n} over all members"),
        )
        .await;
    }

    cluster.restart(leader);
    for i in 60..70 {
        create_retrying(&writer, &format!("/w/{i:03}")).await;
    }
    let last = writer.current_revision().await.expect("revision");
    expect_revisions(&mut leader_watch, 1, last, "watcher on the killed leader").await;
    for (n, watch) in watches.iter_mut().enumerate() {
        expect_revisions(
            watch,
            during_outage + 1,
            last,
            &format!("watcher {n} over all members"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_keeps_working_with_one_member_stopped() {
    if skip("store_keeps_working_with_one_member_stopped") {
        return;
    }
    let mut cluster = EtcdCluster::start(3).await;
    let store = EtcdStore::connect(&cluster.config())
        .await
        .expect("connect");
    let kv = store
        .create("/k/before", b"v".to_vec())
        .await
        .expect("create");
    let mut watch = store.watch("/k/", 0).await.expect("watch");

    let leader = cluster.leader().await;
    let stopped = (0..3).find(|&i| i != leader).expect("a follower");
    cluster.kill(stopped);

    // Every operation succeeds on the first try: the client routes around the
    // stopped member.
    let updated = store
        .update("/k/before", b"v2".to_vec(), kv.mod_revision)
        .await
        .expect("update with a member stopped");
    for i in 0..20 {
        let key = format!("/k/{i:02}");
        store
            .create(&key, vec![i])
            .await
            .unwrap_or_else(|err| panic!("create {key} with a member stopped: {err}"));
        let got = store
            .get(&key)
            .await
            .expect("get")
            .expect("key just created");
        assert_eq!(got.value, [i]);
    }
    let txn = Txn {
        success: vec![Op::Delete {
            key: "/k/00".into(),
        }],
        ..Txn::default()
    };
    assert!(
        store
            .txn(txn)
            .await
            .expect("txn with a member stopped")
            .succeeded
    );
    let listed = store
        .list("/k/", None, 0)
        .await
        .expect("list with a member stopped");
    assert_eq!(listed.kvs.len(), 20, "/k/before and /k/01..19");
    assert_eq!(listed.revision, 23);
    let page = store
        .list_reverse("/k/", None, 2)
        .await
        .expect("list_reverse");
    assert_eq!(page.kvs.len(), 2);
    assert!(page.more);

    let mut revisions = Vec::new();
    while revisions.len() < 23 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.recv())
            .await
            .expect("watch event within 10s")
            .expect("watch open")
            .expect("watch event");
        revisions.push(event.revision());
    }
    assert_eq!(revisions, (1..=23).collect::<Vec<_>>());
    assert_eq!(updated.mod_revision, 2);

    // A store opened while the member is down still connects.
    let late = EtcdStore::connect(&cluster.config())
        .await
        .expect("connect with a member stopped");
    assert_eq!(late.current_revision().await.expect("revision"), 23);
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_names_the_endpoints_when_etcd_is_down() {
    // Ports that nothing listens on: bound, then closed, and never given
    // to a member of the other tests' clusters.
    let ports = etcd_cluster::free_ports(2);
    let config = nimbus_store::EtcdConfig {
        endpoints: ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
        prefix: "/nimbus/".into(),
    };
    let err = match EtcdStore::connect(&config).await {
        Ok(_) => panic!("connecting to closed ports must fail"),
        Err(err) => err.to_string(),
    };
    for endpoint in &config.endpoints {
        assert!(err.contains(endpoint), "error names {endpoint}: {err}");
    }
    assert!(
        err.contains("endpoint health"),
        "error says what to check: {err}"
    );
}
