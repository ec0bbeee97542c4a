//! Leader election over a real 3-member etcd: one leader at a time, a dead
//! leader replaced within its lease, its fenced writes refused afterwards, a
//! resignation handed over at once, a lost etcd ending the leadership, and a
//! server name used twice refused.

mod etcd_cluster;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use etcd_cluster::{cluster_permit, skip, EtcdCluster};
use nimbus_store::{
    Election, EtcdElection, EtcdStore, Leadership, Op, Store, Txn, LEADER_KEY, SERVERS_PREFIX,
};

const LEASE: Duration = Duration::from_secs(2);
/// Generous bound for anything that should take about a lease.
const DEADLINE: Duration = Duration::from_secs(20);

/// A cluster of its own for `test` and a store on it, or None when the
/// test is skipped.
async fn fresh(test: &str) -> Option<(OwnedSemaphorePermit, EtcdCluster, EtcdStore)> {
    if skip(test) {
        return None;
    }
    let permit = cluster_permit().await;
    let cluster = EtcdCluster::start(3).await;
    let store = store(&cluster).await;
    Some((permit, cluster, store))
}

async fn store(cluster: &EtcdCluster) -> EtcdStore {
    EtcdStore::connect(&cluster.config())
        .await
        .expect("connect to the test etcd cluster")
}

async fn campaign(election: &EtcdElection) -> Leadership {
    tokio::time::timeout(DEADLINE, election.campaign())
        .await
        .expect("campaign within the deadline")
        .expect("campaign")
}

/// A write fenced by `leadership`: applied only while it holds.
async fn fenced_write(store: &EtcdStore, leadership: &Leadership, value: &str) -> bool {
    let fence = leadership.fence().expect("an etcd leadership has a fence");
    store
        .txn(Txn {
            compares: vec![fence.clone()],
            success: vec![Op::Put {
                key: "/fenced".into(),
                value: value.as_bytes().to_vec(),
            }],
            failure: vec![],
        })
        .await
        .expect("fenced txn")
        .succeeded
}

async fn servers(store: &EtcdStore) -> Vec<String> {
    let listed = store.list(SERVERS_PREFIX, None, 0).await.expect("list");
    listed.kvs.into_iter().map(|kv| kv.key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_leader_is_replaced_within_its_lease_and_its_fenced_writes_refused() {
    let Some((_permit, cluster, store_a)) =
        fresh("a_dead_leader_is_replaced_within_its_lease_and_its_fenced_writes_refused").await
    else {
        return;
    };
    let store_b = store(&cluster).await;
    let a = EtcdElection::new(&store_a, "a", LEASE);
    let b = Arc::new(EtcdElection::new(&store_b, "b", LEASE));
    a.announce(b"a".to_vec()).await.expect("announce a");
    b.announce(b"b".to_vec()).await.expect("announce b");
    assert_eq!(
        servers(&store_a).await,
        ["/cluster/servers/a", "/cluster/servers/b"]
    );

    let held_by_a = campaign(&a).await;
    assert_eq!(b.leader().await.unwrap().as_deref(), Some("a"));
    let contender = b.clone();
    let waiting = tokio::spawn(async move { contender.campaign().await });
    assert!(fenced_write(&store_a, &held_by_a, "from a").await);
    assert!(!waiting.is_finished(), "b must not lead while a does");

    // a dies: nothing renews its lease any more.
    drop(a);
    let died = Instant::now();
    let held_by_b = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("b leads within the deadline")
        .expect("campaign task")
        .expect("campaign");
    let takeover = died.elapsed();
    eprintln!("takeover after the leader died: {takeover:?} (lease {LEASE:?})");
    assert!(held_by_b.is_held());
    assert_eq!(store_b.get(LEADER_KEY).await.unwrap().unwrap().value, b"b");
    assert_eq!(
        servers(&store_b).await,
        ["/cluster/servers/b"],
        "a's record went with its lease"
    );
    assert!(
        !fenced_write(&store_a, &held_by_a, "late write from a").await,
        "a write fenced by the old leadership must be refused"
    );
    assert!(fenced_write(&store_b, &held_by_b, "from b").await);
    assert_eq!(
        store_b.get("/fenced").await.unwrap().unwrap().value,
        b"from b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resignation_hands_over_at_once_and_a_removed_leader_key_ends_leadership() {
    let Some((_permit, _cluster, store_a)) =
        fresh("resignation_hands_over_at_once_and_a_removed_leader_key_ends_leadership").await
    else {
        return;
    };
    let a = EtcdElection::new(&store_a, "a", Duration::from_secs(30));
    let b = Arc::new(EtcdElection::new(&store_a, "b", Duration::from_secs(30)));
    let mut held_by_a = campaign(&a).await;
    let contender = b.clone();
    let waiting = tokio::spawn(async move { contender.campaign().await });

    let resigned = Instant::now();
    a.resign().await;
    tokio::time::timeout(DEADLINE, held_by_a.lost())
        .await
        .expect("a sees its leadership end");
    let mut held_by_b = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("b leads")
        .unwrap()
        .unwrap();
    let handover = resigned.elapsed();
    eprintln!("handover after a resignation: {handover:?} (lease 30s)");
    assert!(
        handover < Duration::from_secs(10),
        "a resignation must not wait for the 30s lease: {handover:?}"
    );

    store_a
        .delete(LEADER_KEY, None)
        .await
        .expect("delete the leader key");
    tokio::time::timeout(DEADLINE, held_by_b.lost())
        .await
        .expect("b sees its leadership end when the key is removed");
    assert!(!held_by_b.is_held());
    let again = campaign(&b).await;
    assert!(again.is_held());
    assert_eq!(b.leader().await.unwrap().as_deref(), Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_etcd_ends_the_leadership_before_the_lease_runs_out() {
    let Some((_permit, mut cluster, store_a)) =
        fresh("losing_etcd_ends_the_leadership_before_the_lease_runs_out").await
    else {
        return;
    };
    let a = EtcdElection::new(&store_a, "a", LEASE);
    let mut held = campaign(&a).await;
    for member in 0..3 {
        cluster.kill(member);
    }
    let cut_off = Instant::now();
    tokio::time::timeout(DEADLINE, held.lost())
        .await
        .expect("the leadership ends without etcd");
    let after = cut_off.elapsed();
    eprintln!("leadership given up {after:?} after etcd went away (lease {LEASE:?})");
    assert!(
        after < LEASE,
        "the leader must stop before its lease can expire: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_name_in_use_is_refused() {
    let Some((_permit, _cluster, store_a)) = fresh("a_server_name_in_use_is_refused").await else {
        return;
    };
    let first = EtcdElection::new(&store_a, "same", LEASE);
    first.announce(b"first".to_vec()).await.unwrap();
    let second = EtcdElection::new(&store_a, "same", LEASE);
    let err = second
        .announce(b"second".to_vec())
        .await
        .expect_err("a second live server with the same name is refused");
    assert!(err.to_string().contains("--server-name"), "{err}");
    let kv = store_a.get("/cluster/servers/same").await.unwrap().unwrap();
    assert_eq!(kv.value, b"first", "the first server's record is untouched");
}
