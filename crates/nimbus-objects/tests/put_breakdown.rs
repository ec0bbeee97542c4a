//! Where the time of a 4 KiB PUT goes, step by step, on the disk under
//! /var/tmp (where the end-to-end tests and benchmark keep their data).
//! A profiling aid, not a check: it asserts nothing about speed.
//!
//! Run: `cargo test --release -p nimbus-objects --test put_breakdown -- --ignored --nocapture`

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_objects::data::DataStore;
use nimbus_store::{Compare, Op, SqliteOptions, SqliteStore, Store, Txn};

const OPS: usize = 1000;

fn body() -> futures::stream::Iter<std::vec::IntoIter<Result<bytes::Bytes, String>>> {
    futures::stream::iter(vec![Ok(bytes::Bytes::from(vec![42u8; 4096]))])
}

/// Run `step` OPS times from `clients` concurrent tasks; the mean wall time per op.
async fn per_op<F, Fut>(clients: usize, step: F) -> Duration
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let step = step.clone();
            tokio::spawn(async move {
                for i in (c..OPS).step_by(clients) {
                    step(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed() / OPS as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a profiling aid: run it by name with --ignored --nocapture"]
async fn print_the_cost_of_each_step_of_a_small_put() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let data = Arc::new(DataStore::open(&dir.path().join("objects")).unwrap());
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&dir.path().join("store.db"), SqliteOptions::default()).unwrap(),
    );
    store.create("/s3/buckets/b", b"{}".to_vec()).await.unwrap();
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&raw_dir).unwrap();

    println!(
        "{:<52} {:>10} {:>10}",
        "step (mean wall time per op)", "1 client", "32 clients"
    );
    for (label, clients_run) in [
        ("raw: create + write 4 KiB + fsync", 0),
        ("data: write 4 KiB file (fsync, shared dir fsync)", 1),
        ("store: get (blocking-pool hop + SQLite read)", 2),
        ("store: commit txn (compare + put, WAL append)", 3),
    ] {
        let mut cols = Vec::new();
        for clients in [1, 32] {
            let d = match clients_run {
                0 => {
                    let raw = raw_dir.clone();
                    per_op(clients, move |i| {
                        let path = raw.join(format!("{clients}-{i}"));
                        async move {
                            tokio::task::spawn_blocking(move || {
                                use std::io::Write;
                                let mut f = std::fs::File::create(path).unwrap();
                                f.write_all(&[42u8; 4096]).unwrap();
                                f.sync_all().unwrap();
                            })
                            .await
                            .unwrap()
                        }
                    })
                    .await
                }
                1 => {
                    let data = data.clone();
                    per_op(clients, move |_| {
                        let data = data.clone();
                        async move {
                            data.write(body(), 1 << 20).await.unwrap();
                        }
                    })
                    .await
                }
                2 => {
                    let store = store.clone();
                    per_op(clients, move |_| {
                        let store = store.clone();
                        async move {
                            store.get("/s3/buckets/b").await.unwrap();
                        }
                    })
                    .await
                }
                _ => {
                    let store = store.clone();
                    per_op(clients, move |i| {
                        let store = store.clone();
                        async move {
                            let key = format!("/s3/objects/b/{clients}-{i}");
                            store
                                .txn(Txn {
                                    compares: vec![
                                        Compare::Exists("/s3/buckets/b".into()),
                                        Compare::ModRevision(key.clone(), 0),
                                    ],
                                    success: vec![Op::Put {
                                        key,
                                        value: vec![b'x'; 200],
                                    }],
                                    failure: vec![],
                                })
                                .await
                                .unwrap();
                        }
                    })
                    .await
                }
            };
            cols.push(format!("{:.3} ms", d.as_secs_f64() * 1000.0));
        }
        println!("{label:<52} {:>10} {:>10}", cols[0], cols[1]);
    }
}
