//! GET latency of SqliteStore (async, through the blocking pool and the connection lock)
//! against a plain rusqlite point query on the same file, measured in the same run.
//!
//! Run with `cargo bench -p nimbus-store --bench store_get`.

use std::time::{Duration, Instant};

use nimbus_store::{SqliteOptions, SqliteStore, Store};

const KEYS: usize = 10_000;
const GETS: usize = 20_000;

fn key(i: usize) -> String {
    format!("/instances/ops/web-{i:05}")
}

fn per_op(elapsed: Duration, ops: usize) -> Duration {
    elapsed / u32::try_from(ops).unwrap_or(u32::MAX)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.db");
    let runtime = tokio::runtime::Runtime::new()?;
    let store = SqliteStore::open(&path, SqliteOptions::default())?;
    let value = vec![b'x'; 1024];

    let store_per_get = runtime.block_on(async {
        for i in 0..KEYS {
            store.create(&key(i), value.clone()).await?;
        }
        let start = Instant::now();
        for i in 0..GETS {
            store.get(&key(i * 7 % KEYS)).await?;
        }
        Ok::<_, nimbus_store::StoreError>(per_op(start.elapsed(), GETS))
    })?;

    let conn = rusqlite::Connection::open(&path)?;
    let mut stmt =
        conn.prepare("SELECT value, create_revision, mod_revision FROM kv WHERE key = ?1")?;
    let start = Instant::now();
    for i in 0..GETS {
        let _: Vec<u8> = stmt.query_row([key(i * 7 % KEYS).as_bytes()], |row| row.get(0))?;
    }
    let raw_per_get = per_op(start.elapsed(), GETS);

    println!("SqliteStore::get    {store_per_get:?} per get ({KEYS} keys of 1 KiB)");
    println!("raw rusqlite query  {raw_per_get:?} per get");
    println!(
        "ratio store/raw     {:.1}x",
        store_per_get.as_secs_f64() / raw_per_get.as_secs_f64()
    );
    Ok(())
}
