//! The etcd v3 backend: [`EtcdStore`] maps the [`Store`] trait onto an etcd cluster.
//!
//! - Store revisions are etcd revisions (shifted by one, see [`keys`]); `create_revision`
//!   and `mod_revision` come straight from etcd.
//! - Create, update and delete are one etcd `Txn` each, comparing `create_revision`
//!   and `mod_revision`, whose failure branch reads the key to say why it failed.
//! - [`Txn`] maps to an etcd `Txn` (see [`txn_ops`] for the one difference).
//! - Lists are single range reads, so every page is read at one revision.
//! - Watches are etcd watches from a start revision, resumed after a disconnect or a
//!   leader change from the last delivered revision + 1 ([`watch`]).
//! - Every key lives under a prefix ([`EtcdConfig::prefix`]) so an etcd can be shared.

mod config;
mod keys;
mod watch;

use std::collections::HashSet;
use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, GetOptions,
    PutOptions, SortOrder, SortTarget, TxnOp, TxnOpResponse,
};

pub use config::{EtcdConfig, EtcdUrlError, DEFAULT_ETCD_PREFIX};
pub(crate) use keys::store_revision;
use keys::{before_range_end, etcd_revision, Namespace};

use crate::{
    Compare, KeyValue, ListResult, Op, Result, Revision, Store, StoreError, Txn, TxnResult,
    WatchStream,
};

/// How long connecting and the first request may take before [`EtcdStore::connect`]
/// gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take; a request to a dead member fails over within it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests are tried this many times when members are unreachable.
const ATTEMPTS: usize = 5;

/// A [`Store`] kept in an etcd v3 cluster. Clones share the connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    ns: Namespace,
    /// For messages: `host:port,host:port`.
    endpoints: String,
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers (a read through its leader).
    pub async fn connect(config: &EtcdConfig) -> Result<Self> {
        let endpoints = config.endpoint_list();
        let urls: Vec<String> = config
            .endpoints
            .iter()
            .map(|endpoint| format!("http://{endpoint}"))
            .collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let client = tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(&urls, Some(options)))
            .await
            .map_err(|_| unreachable_error(&endpoints, "connecting timed out"))?
            .map_err(|err| unreachable_error(&endpoints, &err.to_string()))?;
        let store = EtcdStore {
            client,
            ns: Namespace::new(&config.prefix),
            endpoints,
        };
        let probe = tokio::time::timeout(CONNECT_TIMEOUT * 2, store.header_revision()).await;
        match probe {
            Ok(Ok(_)) => Ok(store),
            // Already names the endpoints and what to check.
            Ok(Err(err)) => Err(err),
            Err(_) => Err(unreachable_error(
                &store.endpoints,
                "no answer within 10s (no member reachable, or no leader elected)",
            )),
        }
    }

    /// The key prefix this store keeps its keys under.
    pub fn prefix(&self) -> &str {
        self.ns.as_str()
    }

    /// The connection, for what the [`Store`] trait does not cover (leases).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The etcd key of a store key.
    pub(crate) fn etcd_key(&self, key: &str) -> Vec<u8> {
        self.ns.etcd_key(key)
    }

    pub(crate) fn error(&self, what: &str, err: etcd_client::Error) -> StoreError {
        let message = err.to_string();
        if message.contains("too many operations in txn request") {
            // Nimbus writes up to 500 keys in one txn (retention pruning); etcd's
            // default limit is 128.
            return StoreError::Backend(format!(
                "etcd at {} refused a transaction as too large ({message}); start every etcd member with --max-txn-ops 1000",
                self.endpoints
            ));
        }
        StoreError::Backend(format!(
            "etcd at {} failed to {what}: {err}; check that etcd is running there (`etcdctl --endpoints={} endpoint health`)",
            self.endpoints, self.endpoints
        ))
    }

    /// Runs `request`, again on another member while `retry_on` says the failure
    /// was an unreachable member's.
    async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        retry_on: fn(&etcd_client::Error) -> bool,
        request: F,
    ) -> Result<T>
    where
        F: Fn(etcd_client::KvClient) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut attempt = 0;
        loop {
            match request(self.client.kv_client()).await {
                Ok(response) => return Ok(response),
                Err(err) if attempt + 1 < ATTEMPTS && retry_on(&err) => {
                    attempt += 1;
                    tracing::debug!(endpoints = %self.endpoints, %err, attempt, "etcd {what} failed on one member; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
                }
                Err(err) => return Err(self.error(what, err)),
            }
        }
    }

    /// A read, retried on another member while members are unreachable.
    async fn get_raw(&self, key: Vec<u8>, options: GetOptions) -> Result<etcd_client::GetResponse> {
        self.retrying("read", is_unavailable, |mut kv| {
            let (key, options) = (key.clone(), options.clone());
            async move { kv.get(key, Some(options)).await }
        })
        .await
    }

    /// The cluster's current etcd revision.
    async fn header_revision(&self) -> Result<i64> {
        let key = self.ns.etcd_key("");
        let response = self
            .get_raw(key, GetOptions::new().with_count_only())
            .await?;
        Ok(response.header().map(|h| h.revision()).unwrap_or(0))
    }

    pub(crate) async fn run_txn(&self, txn: etcd_client::Txn) -> Result<etcd_client::TxnResponse> {
        // A write is retried only when it certainly was not applied: one that reached
        // etcd before the connection broke may have been, and only the caller knows
        // whether to re-check.
        self.retrying("write", never_reached_a_leader, |mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// Runs a write guarded by a compare that its own success makes false (a create
    /// or an update at a revision), so that sending it twice applies it at most
    /// once. Unlike [`run_txn`](Self::run_txn) it is retried also when the
    /// connection broke with the request on it; the flag then says that an earlier
    /// attempt may have landed, and a failed compare may be that attempt's own
    /// write, which the caller checks by the value now stored.
    async fn run_guarded_txn(
        &self,
        txn: etcd_client::Txn,
    ) -> Result<(etcd_client::TxnResponse, bool)> {
        let mut uncertain = false;
        for attempt in 1.. {
            let err = match self.client.kv_client().txn(txn.clone()).await {
                Ok(response) => return Ok((response, uncertain)),
                Err(err) => err,
            };
            let lost_in_flight = outcome_unknown(&err);
            if attempt >= ATTEMPTS || !(lost_in_flight || never_reached_a_leader(&err)) {
                return Err(self.error("write", err));
            }
            uncertain |= lost_in_flight;
            tracing::debug!(endpoints = %self.endpoints, %err, attempt, "etcd write failed on one member; retrying its guarded txn");
            tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
        }
        unreachable!("the loop returns by its last attempt")
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        KeyValue {
            key: self.ns.store_key(kv.key()),
            value: kv.value().to_vec(),
            create_revision: store_revision(kv.create_revision()),
            mod_revision: store_revision(kv.mod_revision()),
        }
    }

    /// The key read by a failure branch's get, if present.
    fn failure_read(&self, response: &etcd_client::TxnResponse) -> Option<KeyValue> {
        response.op_responses().iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| self.kv(kv)),
            _ => None,
        })
    }
}

fn unreachable_error(endpoints: &str, detail: &str) -> StoreError {
    StoreError::Backend(format!(
        "cannot reach etcd at {endpoints}: {detail}; check that etcd is running and has a leader (`etcdctl --endpoints={endpoints} endpoint health`)"
    ))
}

/// A put of `txn` that a compare of `txn` forbids once the put is applied (the
/// key must be absent, or at a revision the put moves), so the transaction
/// applies at most once however often it is sent; only for transactions whose
/// failure branch writes nothing, since a resent one may take that branch.
fn self_guarding_put(txn: &Txn) -> Option<(&str, &[u8])> {
    if txn
        .failure
        .iter()
        .any(|op| matches!(op, Op::Put { .. } | Op::Delete { .. }))
    {
        return None;
    }
    txn.success.iter().find_map(|op| match op {
        Op::Put { key, value }
            if txn.compares.iter().any(
                |c| matches!(c, Compare::Absent(k) | Compare::ModRevision(k, _) if k == key),
            ) =>
        {
            Some((key.as_str(), value.as_slice()))
        }
        _ => None,
    })
}

/// True for errors of an unreachable member, which another member may not have.
fn is_unavailable(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ) && !status.message().contains("compacted")
        }
        _ => false,
    }
}

/// True for errors of a request that no leader received, so that it was certainly
/// not applied: the member could not be connected to, or had no leader to propose to.
fn never_reached_a_leader(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            status.code() == tonic::Code::Unavailable
                && (message.contains("tcp connect error")
                    || message.contains("Connection refused")
                    || message.contains("etcdserver: no leader"))
        }
        _ => false,
    }
}

/// True for errors after which a write may or may not have been applied: the
/// connection broke while the request was on it, or the member lost its leader
/// after proposing it.
fn outcome_unknown(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            matches!(status.code(), tonic::Code::Cancelled | tonic::Code::Unknown)
                || (status.code() == tonic::Code::Unavailable && !never_reached_a_leader(err))
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

pub(crate) fn header_of(response: &etcd_client::TxnResponse) -> i64 {
    response.header().map(|h| h.revision()).unwrap_or(0)
}

/// The etcd ops of a store [`Txn`] branch.
///
/// etcd refuses a txn that writes one key twice ("duplicate key given in txn
/// request"), while the trait applies ops in order. Only the last op on each key
/// changes the outcome, so earlier ops on a key that is written again are dropped;
/// the txn then yields one event per key rather than one per op.
fn txn_ops(ns: &Namespace, ops: &[Op]) -> Vec<TxnOp> {
    let mut seen = HashSet::new();
    let mut kept: Vec<&Op> = ops
        .iter()
        .rev()
        .filter(|op| {
            let key = match op {
                Op::Put { key, .. } | Op::Delete { key } => key,
            };
            seen.insert(key.as_str())
        })
        .collect();
    kept.reverse();
    kept.into_iter()
        .map(|op| match op {
            Op::Put { key, value } => TxnOp::put(ns.etcd_key(key), value.clone(), None),
            Op::Delete { key } => TxnOp::delete(ns.etcd_key(key), None),
        })
        .collect()
}

fn etcd_compare(ns: &Namespace, compare: &Compare) -> EtcdCompare {
    match compare {
        Compare::Exists(key) => {
            EtcdCompare::create_revision(ns.etcd_key(key), CompareOp::Greater, 0)
        }
        Compare::Absent(key) => EtcdCompare::create_revision(ns.etcd_key(key), CompareOp::Equal, 0),
        Compare::ModRevision(key, revision) => {
            EtcdCompare::mod_revision(ns.etcd_key(key), CompareOp::Equal, etcd_revision(*revision))
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let response = self
            .get_raw(self.ns.etcd_key(key), GetOptions::new())
            .await?;
        Ok(response.kvs().first().map(|kv| self.kv(kv)))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        let (mut start, end) = self.ns.prefix_range(prefix);
        if let Some(after) = start_after {
            let mut after = self.ns.etcd_key(after);
            after.push(0);
            start = start.max(after);
        }
        if !before_range_end(&start, &end) {
            let revision = store_revision(self.header_revision().await?);
            return Ok(ListResult {
                kvs: Vec::new(),
                revision,
                more: false,
            });
        }
        let options = GetOptions::new().with_range(end).with_limit(limit as i64);
        let response = self.get_raw(start, options).await?;
        Ok(ListResult {
            kvs: response.kvs().iter().map(|kv| self.kv(kv)).collect(),
            revision: store_revision(response.header().map(|h| h.revision()).unwrap_or(0)),
            more: response.more(),
        })
    }

    async fn list_reverse(
        &self,
        prefix: &str,
        end_before: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        let (start, mut end) = self.ns.prefix_range(prefix);
        if let Some(before) = end_before {
            let before = self.ns.etcd_key(before);
            if before_range_end(&before, &end) {
                end = before;
            }
        }
        if start >= end && end != [0] {
            let revision = store_revision(self.header_revision().await?);
            return Ok(ListResult {
                kvs: Vec::new(),
                revision,
                more: false,
            });
        }
        let options = GetOptions::new()
            .with_range(end)
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit as i64);
        let response = self.get_raw(start, options).await?;
        Ok(ListResult {
            kvs: response.kvs().iter().map(|kv| self.kv(kv)).collect(),
            revision: store_revision(response.header().map(|h| h.revision()).unwrap_or(0)),
            more: response.more(),
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let etcd_key = self.ns.etcd_key(key);
        let txn = etcd_client::Txn::new()
            .when([EtcdCompare::create_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(etcd_key.clone(), value.clone(), None)])
            .or_else([TxnOp::get(etcd_key, None)]);
        let (response, uncertain) = self.run_guarded_txn(txn).await?;
        if !response.succeeded() {
            return match self.failure_read(&response) {
                // An attempt whose answer was lost created it.
                Some(current)
                    if uncertain
                        && current.value == value
                        && current.create_revision == current.mod_revision =>
                {
                    Ok(current)
                }
                _ => Err(StoreError::AlreadyExists(key.to_string())),
            };
        }
        let revision = store_revision(header_of(&response));
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Revision,
    ) -> Result<KeyValue> {
        let etcd_key = self.ns.etcd_key(key);
        let txn = etcd_client::Txn::new()
            .when([
                EtcdCompare::create_revision(etcd_key.clone(), CompareOp::Greater, 0),
                EtcdCompare::mod_revision(
                    etcd_key.clone(),
                    CompareOp::Equal,
                    etcd_revision(expected_mod_revision),
                ),
            ])
            .and_then([TxnOp::put(
                etcd_key.clone(),
                value.clone(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(etcd_key, None)]);
        let (response, uncertain) = self.run_guarded_txn(txn).await?;
        if !response.succeeded() {
            return Err(match self.failure_read(&response) {
                None => StoreError::NotFound(key.to_string()),
                // An attempt whose answer was lost wrote it.
                Some(current) if uncertain && current.value == value => return Ok(current),
                Some(current) => StoreError::Conflict {
                    key: key.to_string(),
                    expected: expected_mod_revision,
                    current: current.mod_revision,
                },
            });
        }
        let prev = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Put(put) => put.prev_key().map(|kv| self.kv(kv)),
            _ => None,
        });
        let revision = store_revision(header_of(&response));
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision: prev.map(|kv| kv.create_revision).unwrap_or(revision),
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<KeyValue> {
        let etcd_key = self.ns.etcd_key(key);
        let mut compares = vec![EtcdCompare::create_revision(
            etcd_key.clone(),
            CompareOp::Greater,
            0,
        )];
        if let Some(expected) = expected_mod_revision {
            compares.push(EtcdCompare::mod_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                etcd_revision(expected),
            ));
        }
        let txn = etcd_client::Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                etcd_key.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(etcd_key, None)]);
        let response = self.run_txn(txn).await?;
        if !response.succeeded() {
            return Err(
                match (self.failure_read(&response), expected_mod_revision) {
                    (Some(current), Some(expected)) => StoreError::Conflict {
                        key: key.to_string(),
                        expected,
                        current: current.mod_revision,
                    },
                    _ => StoreError::NotFound(key.to_string()),
                },
            );
        }
        response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Delete(deleted) => deleted.prev_kvs().first().map(|kv| self.kv(kv)),
                _ => None,
            })
            .ok_or_else(|| StoreError::NotFound(key.to_string()))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|compare| etcd_compare(&self.ns, compare))
            .collect();
        let etcd_txn = etcd_client::Txn::new()
            .when(compares)
            .and_then(txn_ops(&self.ns, &txn.success))
            .or_else(txn_ops(&self.ns, &txn.failure));
        let Some((key, value)) = self_guarding_put(&txn) else {
            let response = self.run_txn(etcd_txn).await?;
            return Ok(TxnResult {
                succeeded: response.succeeded(),
                revision: store_revision(header_of(&response)),
            });
        };
        // Applying it makes its own compare false, so it may be sent again when a
        // member dies with it in flight (a create claiming addresses, say): a
        // failed compare after such a loss is the earlier attempt's own write
        // when the key holds exactly the value this transaction puts.
        let (response, uncertain) = self.run_guarded_txn(etcd_txn).await?;
        if !response.succeeded() && uncertain {
            let stored = self
                .get_raw(self.ns.etcd_key(key), GetOptions::new())
                .await?;
            if let Some(kv) = stored.kvs().first().filter(|kv| kv.value() == value) {
                return Ok(TxnResult {
                    succeeded: true,
                    revision: store_revision(kv.mod_revision()),
                });
            }
        }
        Ok(TxnResult {
            succeeded: response.succeeded(),
            revision: store_revision(header_of(&response)),
        })
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(store_revision(self.header_revision().await?))
    }

    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream> {
        watch::start(self, prefix, after_revision).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        // Keeping etcd revision `revision + 1` (store `revision`) readable and dropping
        // everything before it; a watch after `revision` still starts inside history.
        let current = self.header_revision().await?;
        let target = etcd_revision(revision).min(current);
        if target <= 1 {
            return Ok(());
        }
        let mut kv = self.client.kv_client();
        match kv.compact(target, None).await {
            Ok(_) => Ok(()),
            // Compacting at or below the compacted revision is a no-op, as in the trait.
            Err(etcd_client::Error::GRpcStatus(status))
                if status.message().contains("compacted") =>
            {
                Ok(())
            }
            Err(err) => Err(self.error(&format!("compact to revision {revision}"), err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transactions_their_own_put_forbids_are_sent_again() {
        let put = |key: &str| Op::Put {
            key: key.into(),
            value: b"v".to_vec(),
        };
        let create = Txn {
            compares: vec![Compare::Absent("/instances/a".into())],
            success: vec![put("/ipam/x"), put("/instances/a")],
            failure: vec![],
        };
        assert_eq!(
            self_guarding_put(&create).map(|(k, _)| k),
            Some("/instances/a")
        );
        let at_revision = Txn {
            compares: vec![Compare::ModRevision("/k".into(), 7)],
            success: vec![put("/k")],
            failure: vec![],
        };
        assert!(self_guarding_put(&at_revision).is_some());
        // A compare on a key it does not write: sending it twice could apply it twice.
        let unguarded = Txn {
            compares: vec![Compare::Exists("/projects/p".into())],
            success: vec![put("/instances/a")],
            failure: vec![],
        };
        assert!(self_guarding_put(&unguarded).is_none());
        // A delete only: nothing to recognise the earlier attempt by.
        let delete = Txn {
            compares: vec![Compare::ModRevision("/k".into(), 7)],
            success: vec![Op::Delete { key: "/k".into() }],
            failure: vec![],
        };
        assert!(self_guarding_put(&delete).is_none());
        // A failure branch that writes: a resent one may take it.
        let writes_on_failure = Txn {
            failure: vec![put("/audit")],
            ..create
        };
        assert!(self_guarding_put(&writes_on_failure).is_none());
    }

    fn status(code: tonic::Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn a_write_lost_with_its_connection_is_uncertain_and_a_refused_one_is_not() {
        let cancelled = status(tonic::Code::Cancelled, "operation was canceled");
        assert!(outcome_unknown(&cancelled));
        assert!(!never_reached_a_leader(&cancelled));

        let refused = status(
            tonic::Code::Unavailable,
            "tcp connect error: Connection refused",
        );
        assert!(never_reached_a_leader(&refused));
        assert!(!outcome_unknown(&refused));

        let no_leader = status(tonic::Code::Unavailable, "etcdserver: no leader");
        assert!(!outcome_unknown(&no_leader));

        let conflict = status(tonic::Code::FailedPrecondition, "etcdserver: duplicate key");
        assert!(!outcome_unknown(&conflict) && !never_reached_a_leader(&conflict));
    }
}
