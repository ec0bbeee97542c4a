//! Leader election over etcd: a lease per server, kept alive by the server, with
//! the leader key and the server's record bound to it.
//!
//! - Campaign: one txn puts [`LEADER_KEY`] with this server's lease if the key is
//!   absent; otherwise the server watches the key until it is deleted (its holder's
//!   lease expired or was revoked) and tries again.
//! - Keep-alive: renewed every quarter of the lease. When no renewal has been
//!   confirmed for three quarters of the lease (counted from when the renewal was
//!   sent, so before etcd can expire it), the server gives the lease up: its
//!   leadership is lost before any other server can win the key.
//! - Leadership also ends when the leader key is deleted or names someone else.

use std::time::{Duration, Instant};

use etcd_client::{Compare as EtcdCompare, CompareOp, PutOptions, TxnOp, TxnOpResponse};
use tokio::sync::watch;

use super::{server_key, Election, Leadership, LEADER_KEY};
use crate::etcd::{header_of, store_revision};
use crate::{Compare, EtcdStore, EventKind, Result, Revision, Store, StoreError};

/// Longest pause before a failed keep-alive stream is opened again.
const REOPEN_DELAY: Duration = Duration::from_millis(100);
/// Pause between checks while another live server holds this server's name.
const NAME_CHECK_DELAY: Duration = Duration::from_millis(250);

/// One server's lease and whether it was lost.
struct Session {
    lease: i64,
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
}

/// An [`Election`] among the servers sharing one etcd (see the module's docs).
pub struct EtcdElection {
    store: EtcdStore,
    member: String,
    ttl: Duration,
    session: tokio::sync::Mutex<Option<Session>>,
    /// Put again under each new lease.
    announcement: std::sync::Mutex<Option<Vec<u8>>>,
}

impl EtcdElection {
    /// `member` must be unique among the servers sharing the store; `ttl` is how
    /// long the lease outlives its last renewal (etcd may round it up to its
    /// minimum), which is how long a dead leader keeps its place.
    pub fn new(store: &EtcdStore, member: &str, ttl: Duration) -> Self {
        EtcdElection {
            store: store.clone(),
            member: member.to_string(),
            ttl: ttl.max(Duration::from_secs(1)),
            session: tokio::sync::Mutex::new(None),
            announcement: std::sync::Mutex::new(None),
        }
    }

    /// The live lease, granting a new one (and putting the announcement under it)
    /// when there is none or the last one was lost.
    async fn session(&self) -> Result<(i64, watch::Receiver<bool>)> {
        let mut session = self.session.lock().await;
        if let Some(live) = session.as_ref().filter(|s| !*s.lost.borrow()) {
            return Ok((live.lease, live.lost.clone()));
        }
        let granted_at = Instant::now();
        let ttl_secs = self.ttl.as_secs().max(1) as i64;
        let lease = self
            .store
            .client()
            .lease_client()
            .grant(ttl_secs, None)
            .await
            .map_err(|err| self.store.error("grant a lease", err))?
            .id();
        let (lost_tx, lost) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(
            self.store.client().clone(),
            lease,
            self.ttl,
            granted_at,
            lost_tx,
        ));
        tracing::info!(member = %self.member, lease, ttl_secs, "holding a new etcd lease");
        *session = Some(Session {
            lease,
            lost: lost.clone(),
            keeper,
        });
        drop(session);
        let announcement = self.announcement.lock().ok().and_then(|a| a.clone());
        if let Some(value) = announcement {
            self.put_record(lease, value).await?;
        }
        Ok((lease, lost))
    }

    /// Puts this server's record under `lease`, waiting for a record left by an
    /// earlier life under the same name to expire; a record that stays held
    /// longer than a lease belongs to another live server.
    async fn put_record(&self, lease: i64, value: Vec<u8>) -> Result<()> {
        let key = self.store.etcd_key(&server_key(&self.member));
        let with_lease = || Some(PutOptions::new().with_lease(lease));
        let deadline = Instant::now() + self.ttl + Duration::from_secs(2);
        loop {
            let txn = etcd_client::Txn::new()
                .when([EtcdCompare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(key.clone(), value.clone(), with_lease())])
                .or_else([TxnOp::get(key.clone(), None)]);
            let response = self.store.run_txn(txn).await?;
            if response.succeeded() {
                return Ok(());
            }
            if held_key(&response).map(|(holder, _)| holder) == Some(lease) {
                let mut kv = self.store.client().kv_client();
                kv.put(key.clone(), value.clone(), with_lease())
                    .await
                    .map_err(|err| self.store.error("announce this server", err))?;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StoreError::Backend(format!(
                    "another server named {:?} is running on this store (its record {} is held by a live lease); give each server its own --server-name",
                    self.member,
                    server_key(&self.member)
                )));
            }
            tokio::time::sleep(NAME_CHECK_DELAY).await;
        }
    }

    /// Waits until the leader key may be free: deleted after `seen`, this
    /// server's session lost, or a lease's time passed (checked again then).
    async fn wait_for_vacancy(&self, seen: Revision, lost: &mut watch::Receiver<bool>) {
        let Ok(mut events) = self.store.watch(LEADER_KEY, seen).await else {
            tokio::time::sleep(REOPEN_DELAY).await;
            return;
        };
        let deleted = async {
            while let Some(Ok(event)) = events.recv().await {
                if event.kind == EventKind::Delete && event.kv.key == LEADER_KEY {
                    return;
                }
            }
        };
        tokio::select! {
            _ = deleted => {}
            _ = lost.wait_for(|l| *l) => {}
            _ = tokio::time::sleep(self.ttl) => {}
        }
    }

    /// The leadership won at `revision`: lost with the session, or when the
    /// leader key is deleted or rewritten by someone else.
    async fn leadership(
        &self,
        revision: Revision,
        mut session_lost: watch::Receiver<bool>,
    ) -> Result<Leadership> {
        let mut events = self.store.watch(LEADER_KEY, revision).await?;
        let (lost_tx, lost) = watch::channel(false);
        let member = self.member.clone();
        tokio::spawn(async move {
            let taken = async {
                while let Some(Ok(event)) = events.recv().await {
                    let ours = event.kind == EventKind::Put && event.kv.value == member.as_bytes();
                    if event.kv.key == LEADER_KEY && !ours {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = taken => {}
                _ = session_lost.wait_for(|l| *l) => {}
                // Nobody holds the leadership any more: stop watching.
                _ = lost_tx.closed() => return,
            }
            let _ = lost_tx.send(true);
        });
        let fence = Compare::ModRevision(LEADER_KEY.to_string(), revision);
        Ok(Leadership::new(lost, revision, Some(fence)))
    }
}

impl Drop for EtcdElection {
    /// Stops renewing the lease: it expires (and its keys with it) within
    /// its time to live, as when the process dies.
    fn drop(&mut self) {
        if let Some(session) = self.session.get_mut().take() {
            session.keeper.abort();
        }
    }
}

/// The lease and mod revision of the key read by a failed txn's get, if any.
fn held_key(response: &etcd_client::TxnResponse) -> Option<(i64, Revision)> {
    response.op_responses().iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get
            .kvs()
            .first()
            .map(|kv| (kv.lease(), store_revision(kv.mod_revision()))),
        _ => None,
    })
}

#[async_trait::async_trait]
impl Election for EtcdElection {
    fn member(&self) -> &str {
        &self.member
    }

    async fn announce(&self, value: Vec<u8>) -> Result<()> {
        if let Ok(mut announcement) = self.announcement.lock() {
            *announcement = Some(value.clone());
        }
        let (lease, _) = self.session().await?;
        self.put_record(lease, value).await
    }

    async fn campaign(&self) -> Result<Leadership> {
        let key = self.store.etcd_key(LEADER_KEY);
        loop {
            let (lease, mut lost) = self.session().await?;
            let txn = etcd_client::Txn::new()
                .when([EtcdCompare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    key.clone(),
                    self.member.as_bytes().to_vec(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            let response = self.store.run_txn(txn).await?;
            let revision = store_revision(header_of(&response));
            if response.succeeded() {
                tracing::info!(member = %self.member, revision, "became the leader");
                return self.leadership(revision, lost).await;
            }
            match held_key(&response) {
                // Already ours (a campaign repeated under the same lease).
                Some((holder, at)) if holder == lease => return self.leadership(at, lost).await,
                _ => self.wait_for_vacancy(revision, &mut lost).await,
            }
        }
    }

    async fn leader(&self) -> Result<Option<String>> {
        Ok(self
            .store
            .get(LEADER_KEY)
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    async fn resign(&self) {
        let Some(session) = self.session.lock().await.take() else {
            return;
        };
        session.keeper.abort();
        revoke(self.store.client(), session.lease).await;
        tracing::info!(member = %self.member, "resigned: lease revoked");
    }
}

/// Revokes `lease` (its keys go with it), giving up after a second: an
/// unreachable etcd expires it anyway.
async fn revoke(client: &etcd_client::Client, lease: i64) {
    let mut leases = client.lease_client();
    let _ = tokio::time::timeout(Duration::from_secs(1), leases.revoke(lease)).await;
}

/// Renews `lease` every quarter of `ttl` until no renewal has been confirmed for
/// three quarters of it (or etcd says it expired); then reports it lost and
/// revokes it.
async fn keep_alive(
    client: etcd_client::Client,
    lease: i64,
    ttl: Duration,
    granted_at: Instant,
    lost: watch::Sender<bool>,
) {
    let interval = ttl / 4;
    let give_up_after = ttl * 3 / 4;
    let mut renewed_at = granted_at;
    'reopen: while renewed_at.elapsed() < give_up_after {
        let sent = Instant::now();
        let mut leases = client.lease_client();
        let (mut keeper, mut stream) =
            match tokio::time::timeout(interval, leases.keep_alive(lease)).await {
                Ok(Ok(pair)) => {
                    renewed_at = sent;
                    pair
                }
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(why))) => {
                    tracing::warn!(lease, %why, "etcd lease is gone");
                    break;
                }
                _ => {
                    tokio::time::sleep(REOPEN_DELAY).await;
                    continue;
                }
            };
        loop {
            tokio::time::sleep(interval).await;
            if renewed_at.elapsed() >= give_up_after {
                break 'reopen;
            }
            let sent = Instant::now();
            if keeper.keep_alive().await.is_err() {
                continue 'reopen;
            }
            match tokio::time::timeout(interval, stream.message()).await {
                Ok(Ok(Some(response))) if response.ttl() > 0 => renewed_at = sent,
                Ok(Ok(Some(_))) => break 'reopen,
                _ => continue 'reopen,
            }
        }
    }
    tracing::warn!(
        lease,
        "could not renew the etcd lease in time; giving up leadership"
    );
    let _ = lost.send(true);
    revoke(&client, lease).await;
}
