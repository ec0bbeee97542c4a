//! Backend-independent checks that every [`Store`] must pass.
//!
//! Each check is a `pub async fn check(store: Arc<dyn Store>)` that needs a fresh, empty
//! store and panics with a message saying what the backend got wrong. A backend runs
//! them all with [`run_all`], or, better, gets one `#[tokio::test]` per check with
//! [`store_conformance_tests!`](crate::store_conformance_tests):
//!
//! ```ignore
//! async fn fresh_store() -> std::sync::Arc<dyn nimbus_store::Store> { /* ... */ }
//! nimbus_store::store_conformance_tests!(fresh_store);
//! ```
//!
//! A backend that needs something the machine may lack (an etcd binary) passes
//! `skip_if: f`, where `f()` returns `Some(reason)` to skip each check with a
//! `SKIPPED` line instead of running it:
//!
//! ```ignore
//! nimbus_store::store_conformance_tests!(fresh_store, skip_if: || None::<String>);
//! ```
//!
//! The generated tests use `#[tokio::test]`, so the calling crate needs `tokio` (with
//! the `macros` and `rt-multi-thread` features) among its dev-dependencies.

mod kv;
mod watch;

pub use kv::*;
pub use watch::*;

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::{Event, EventKind, Result, Revision, Store, WatchStream};

/// Builds a fresh, empty store for one check.
pub type StoreFactory =
    dyn Fn() -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send>> + Send + Sync;

/// Runs every check, each on a fresh store from `factory`; panics on the first failure.
pub async fn run_all(factory: &StoreFactory) {
    crate::store_conformance_tests!(@for_each_check run (factory));
}

/// Generates one `#[tokio::test]` per conformance check. `$factory` is anything callable
/// with no arguments that returns a future of `Arc<dyn Store>` (an `async fn` works),
/// and must give a fresh, empty store on every call.
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr, skip_if: $skip:expr) => {
        $crate::store_conformance_tests!(@for_each_check skippable_tests ($factory, $skip));
    };
    ($factory:expr) => {
        $crate::store_conformance_tests!(@for_each_check tests ($factory));
    };
    // The one list of checks, shared by the generated tests and `run_all`.
    (@for_each_check $mode:ident $factory:tt) => {
        $crate::store_conformance_tests!(@$mode $factory
            empty_store_starts_at_revision_zero,
            create_get_and_already_exists,
            update_compare_and_swap,
            delete_with_and_without_revision,
            recreate_gets_new_create_revision,
            revisions_increase_by_one_per_write,
            list_by_prefix_in_key_order,
            list_pagination,
            list_reverse_pagination,
            txn_applies_success_ops_when_compares_hold,
            txn_is_all_or_nothing,
            txn_ops_share_one_revision,
            watch_replays_history_then_live,
            list_then_watch_from_list_revision,
            watch_filters_by_prefix,
            watch_delete_carries_prior_value,
            watch_sees_concurrent_writes_exactly_once,
            watch_after_compaction_is_compacted,
            slow_watcher_ends_with_compacted_not_gap,
        );
    };
    (@tests ($factory:expr) $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let store: ::std::sync::Arc<dyn $crate::Store> = ($factory)().await;
                $crate::conformance::$check(store).await;
            }
        )+
    };
    (@skippable_tests ($factory:expr, $skip:expr) $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                if let Some(reason) = ($skip)() {
                    eprintln!("SKIPPED {}: {reason}", stringify!($check));
                    return;
                }
                let store: ::std::sync::Arc<dyn $crate::Store> = ($factory)().await;
                $crate::conformance::$check(store).await;
            }
        )+
    };
    (@run ($factory:expr) $($check:ident),+ $(,)?) => {
        $(
            $crate::conformance::$check(($factory)().await).await;
        )+
    };
}

/// How long a check waits for an expected watch event before failing.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);

/// Unwraps a store result, failing the check with what was being done.
#[track_caller]
fn ok<T>(result: Result<T>, what: impl Display) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("store conformance: {what} failed: {err}"),
    }
}

/// The next item of a watch stream: None if it ended; fails the check on timeout.
async fn next_item(stream: &mut WatchStream, what: &str) -> Option<Result<Event>> {
    match tokio::time::timeout(EVENT_DEADLINE, stream.recv()).await {
        Ok(item) => item,
        Err(_) => panic!("store conformance: {what}: no watch event within {EVENT_DEADLINE:?}"),
    }
}

async fn next_event(stream: &mut WatchStream, what: &str) -> Event {
    match next_item(stream, what).await {
        Some(Ok(event)) => event,
        Some(Err(err)) => panic!("store conformance: {what}: watch failed: {err}"),
        None => panic!("store conformance: {what}: watch stream ended early"),
    }
}

/// The next `count` events as (kind, key, revision).
async fn next_events(
    stream: &mut WatchStream,
    count: usize,
    what: &str,
) -> Vec<(EventKind, String, Revision)> {
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        events.push(summary(&next_event(stream, what).await));
    }
    events
}

fn summary(event: &Event) -> (EventKind, String, Revision) {
    (event.kind.clone(), event.kv.key.clone(), event.revision())
}

fn put(key: &str, revision: Revision) -> (EventKind, String, Revision) {
    (EventKind::Put, key.to_string(), revision)
}

fn delete(key: &str, revision: Revision) -> (EventKind, String, Revision) {
    (EventKind::Delete, key.to_string(), revision)
}
