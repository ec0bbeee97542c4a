//! Leader election among the servers that share one store, and the registry of
//! those servers.
//!
//! Every server serves the API (API writes are compare-and-swaps on the store, safe
//! from anywhere), but the controllers and the scheduler run on one server at a time:
//! the one holding the [`Leadership`]. An [`Election`] is one server's ticket:
//! [`Election::campaign`] waits until it leads, [`Leadership::lost`] says when it no
//! longer does, [`Election::resign`] hands leadership over at shutdown.
//!
//! - [`LocalElection`]: one process alone on its store (SQLite, whose data directory
//!   is locked): always the leader, at once.
//! - [`EtcdElection`]: an etcd lease kept alive by the server; the leader key and the
//!   server's registry record are bound to it, so both vanish when the server dies or
//!   loses touch with etcd for longer than the lease.
//!
//! Keys (store keys, under the store's prefix): [`LEADER_KEY`] holds the leader's
//! member name; [`SERVERS_PREFIX`]`{member}` holds each server's announcement.

mod etcd;
mod local;

pub use etcd::EtcdElection;
pub use local::LocalElection;

use tokio::sync::watch;

use crate::{Compare, Result, Revision};

/// The key holding the current leader's member name.
pub const LEADER_KEY: &str = "/cluster/leader";
/// Each server's announcement lives at this prefix + its member name.
pub const SERVERS_PREFIX: &str = "/cluster/servers/";

/// The store key of `member`'s announcement.
pub fn server_key(member: &str) -> String {
    format!("{SERVERS_PREFIX}{member}")
}

/// Held while this server leads. Work done as leader watches [`Leadership::lost`]
/// and stops when it resolves.
#[derive(Debug)]
pub struct Leadership {
    lost: watch::Receiver<bool>,
    /// The revision at which this server became leader.
    pub since_revision: Revision,
    fence: Option<Compare>,
}

impl Leadership {
    /// A leadership that ends when `lost` turns true (or its sender is dropped).
    pub fn new(
        lost: watch::Receiver<bool>,
        since_revision: Revision,
        fence: Option<Compare>,
    ) -> Self {
        Leadership {
            lost,
            since_revision,
            fence,
        }
    }

    /// Resolves when this server is no longer the leader: its lease could not be
    /// renewed in time, or the leader key was removed or taken over.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// True while the leadership holds as far as this server knows.
    pub fn is_held(&self) -> bool {
        !*self.lost.borrow() && self.lost.has_changed().is_ok()
    }

    /// A compare that holds exactly while this leadership does (the leader key
    /// still at the revision this server wrote): a leader-only write that adds it
    /// to its transaction cannot land after leadership passed to another server.
    /// `None` when there is no one to race with ([`LocalElection`]).
    pub fn fence(&self) -> Option<&Compare> {
        self.fence.as_ref()
    }
}

/// One server's part in the election among the servers sharing a store.
#[async_trait::async_trait]
pub trait Election: Send + Sync + 'static {
    /// This server's member name, unique among the servers sharing the store.
    fn member(&self) -> &str;

    /// Records `value` (opaque bytes: the server's description) under
    /// [`server_key`]`(member)` for as long as this server lives. Fails when another
    /// live server already uses this member name.
    async fn announce(&self, value: Vec<u8>) -> Result<()>;

    /// Waits until this server is the leader.
    async fn campaign(&self) -> Result<Leadership>;

    /// The member name of the current leader, if any.
    async fn leader(&self) -> Result<Option<String>>;

    /// Gives up leadership and the announcement at once (graceful shutdown), so
    /// another server takes over without waiting for a lease to expire.
    async fn resign(&self);
}
