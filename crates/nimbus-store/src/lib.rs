//! The Nimbus store: an etcd-shaped, revisioned key-value store that holds all
//! cluster state (instances, hosts, images, ...) as bytes under string keys such as
//! `/instances/ops/web`.
//!
//! The crate defines the [`Store`] trait, its SQLite backend ([`SqliteStore`], the
//! one-machine default), its etcd v3 backend ([`EtcdStore`], for a cluster) and a
//! backend-independent [`conformance`] suite that every backend must pass. Next to it,
//! [`Election`] elects one leader among the servers sharing a store ([`LocalElection`]
//! for a store only one process opens, [`EtcdElection`] over an etcd lease).
//!
//! Semantics follow etcd: one global revision counter increases by one per write
//! transaction; every key carries the revision that created it and the revision that
//! last modified it; updates are compare-and-swap on the modification revision; watches
//! replay history from a revision and then stream live changes.
//!
//! What this crate must never do:
//! - interpret values: they are opaque bytes (JSON written by the server);
//! - expose a partially applied write: a write is committed entirely (value, event and
//!   revision) or not at all;
//! - give a watcher a silent gap: a watcher that cannot be served every event ends
//!   with [`StoreError::Compacted`] instead;
//! - block the async runtime: blocking database work runs on the blocking thread pool.

pub mod conformance;
mod election;
mod etcd;
mod hub;
mod sqlite;

pub use election::{
    server_key, Election, EtcdElection, Leadership, LocalElection, LEADER_KEY, SERVERS_PREFIX,
};
pub use etcd::{EtcdConfig, EtcdStore, EtcdUrlError, DEFAULT_ETCD_PREFIX};
pub use sqlite::{SqliteOptions, SqliteStore};

/// A store revision. 0 for an empty store; the first write is revision 1.
pub type Revision = i64;

/// Capacity of each watcher's channel. A watcher that falls more than about this many
/// events behind (a backend may buffer up to twice as many) receives
/// [`StoreError::Compacted`] as its last item, and re-lists. It bounds what one stalled
/// watcher (a client that stopped reading) can make the server hold: at 4096 that was
/// up to 8192 copies of whole events per watch, tens of MiB for large objects.
pub const WATCH_CHANNEL_CAPACITY: usize = 1024;

/// A key with its value and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the write that created the key (a delete and re-create gives a
    /// new one).
    pub create_revision: Revision,
    /// The revision of the write that last modified the key.
    pub mod_revision: Revision,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key, as delivered by [`Store::watch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For Put: the new value. For Delete: the key with the value it had before deletion,
    /// and mod_revision set to the revision of the delete.
    pub kv: KeyValue,
    /// The value before this event, if any.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision of the write that produced this event.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A condition checked at the start of a [`Txn`].
#[derive(Clone, Debug)]
pub enum Compare {
    /// The key exists.
    Exists(String),
    /// The key does not exist.
    Absent(String),
    /// The key's mod_revision equals the given revision. As in etcd, an absent key has
    /// mod_revision 0, so `ModRevision(key, 0)` holds exactly when the key is absent.
    ModRevision(String, Revision),
}

impl Compare {
    /// The key this compare looks at.
    pub fn key(&self) -> &str {
        match self {
            Compare::Exists(key) | Compare::Absent(key) | Compare::ModRevision(key, _) => key,
        }
    }
}

/// A write applied by a [`Txn`]. Ops apply in order; deleting an absent key is a no-op.
#[derive(Clone, Debug)]
pub enum Op {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// An atomic transaction: if every compare holds, `success` ops are applied, otherwise
/// `failure` ops, all at one new revision.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Clone, Debug)]
pub struct TxnResult {
    /// Whether every compare held (and so `success` ops were applied).
    pub succeeded: bool,
    /// The store revision after the transaction: the new revision if the applied ops
    /// changed anything, otherwise the unchanged current revision.
    pub revision: Revision,
}

#[derive(Clone, Debug)]
pub struct ListResult {
    pub kvs: Vec<KeyValue>,
    /// store revision at which the list was read
    pub revision: Revision,
    /// true when more keys match beyond `limit`
    pub more: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0:?} not found")]
    NotFound(String),
    #[error("key {0:?} already exists")]
    AlreadyExists(String),
    #[error("key {key:?} was modified: expected revision {expected}, current {current}")]
    Conflict {
        key: String,
        expected: Revision,
        current: Revision,
    },
    /// `requested` is the revision the caller asked to watch after; `compacted` is the
    /// revision history has been compacted to, i.e. the smallest `after_revision` that
    /// can still be watched. For a watcher dropped for falling behind, `requested` is
    /// the last revision it fully received and `compacted` the store revision when it
    /// was dropped.
    #[error("revision {requested} has been compacted (oldest available is {compacted}); re-list and watch from the list's revision")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The filesystem holding the store has no room for a write; nothing was written.
    /// `path` is the store's file (empty until the backend fills it in).
    #[error("no space left on the filesystem holding the store {path} ({detail}); free space there and retry")]
    StorageFull { path: String, detail: String },
    #[error("store backend error: {0}")]
    Backend(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A stream of watch events; ends with Err(Compacted) if the watcher falls too far behind.
pub type WatchStream = tokio::sync::mpsc::Receiver<Result<Event>>;

/// A revisioned key-value store with etcd semantics: every write transaction that changes
/// something gets the next revision (starting at 1), keys carry the revisions that
/// created and last modified them, and watches replay history from a revision.
///
/// Every backend must pass the [`conformance`] suite.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Keys with `prefix`, in key order, strictly after `start_after` if given, at most `limit` (0 = no limit).
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult>;
    /// Keys with `prefix`, in reverse key order (last key first), strictly before
    /// `end_before` if given, at most `limit` (0 = no limit). `more` is true when
    /// earlier keys match beyond `limit`.
    async fn list_reverse(
        &self,
        prefix: &str,
        end_before: Option<&str>,
        limit: usize,
    ) -> Result<ListResult>;
    /// Fails with AlreadyExists if the key exists.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue>;
    /// Compare-and-swap on mod_revision: NotFound if absent, Conflict if the revision differs.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Revision,
    ) -> Result<KeyValue>;
    /// Delete; with Some(rev) only if mod_revision matches (Conflict otherwise). Returns the deleted kv. NotFound if absent.
    ///
    /// The returned kv is the key as it was just before the delete.
    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<KeyValue>;
    /// All compares true → apply `success` ops atomically at one new revision, else `failure` ops.
    async fn txn(&self, txn: Txn) -> Result<TxnResult>;
    async fn current_revision(&self) -> Result<Revision>;
    /// Events for keys under `prefix` with revision > `after_revision` (so watching from a list's
    /// revision gives exactly the later changes), replaying history from the store, then live.
    /// Err(Compacted) immediately if history after `after_revision` is no longer available.
    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream>;
    /// Drop history at or below `revision`.
    async fn compact(&self, revision: Revision) -> Result<()>;
    /// Frees the disk space the backend keeps back for when its filesystem
    /// is full, so a call that frees space (a deletion) can still be
    /// recorded; true when there was such a reserve. The caller retries
    /// the write that failed with [`StoreError::StorageFull`].
    async fn release_reserve(&self) -> bool {
        false
    }
}
