//! The election of a server alone on its store: it leads from the start and
//! never loses leadership, so `nimbus up` on SQLite starts no slower.

use std::sync::Arc;

use tokio::sync::watch;

use super::{server_key, Election, Leadership, SERVERS_PREFIX};
use crate::{Result, Store, StoreError};

/// Always the leader: for a store only one process may open (SQLite, whose
/// data directory is locked).
pub struct LocalElection {
    member: String,
    store: Arc<dyn Store>,
    /// Never set: kept so that leaderships never see their sender dropped.
    lost: watch::Sender<bool>,
}

impl LocalElection {
    pub fn new(member: &str, store: Arc<dyn Store>) -> Self {
        LocalElection {
            member: member.to_string(),
            store,
            lost: watch::channel(false).0,
        }
    }
}

#[async_trait::async_trait]
impl Election for LocalElection {
    fn member(&self) -> &str {
        &self.member
    }

    /// Writes this server's record and removes those of earlier runs under other
    /// names: no other server can share this store.
    async fn announce(&self, value: Vec<u8>) -> Result<()> {
        let own = server_key(&self.member);
        let listed = self.store.list(SERVERS_PREFIX, None, 0).await?;
        for stale in listed.kvs.iter().filter(|kv| kv.key != own) {
            match self.store.delete(&stale.key, None).await {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        match listed.kvs.iter().find(|kv| kv.key == own) {
            Some(kv) => self.store.update(&own, value, kv.mod_revision).await?,
            None => self.store.create(&own, value).await?,
        };
        Ok(())
    }

    async fn campaign(&self) -> Result<Leadership> {
        Ok(Leadership::new(self.lost.subscribe(), 0, None))
    }

    async fn leader(&self) -> Result<Option<String>> {
        Ok(Some(self.member.clone()))
    }

    async fn resign(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SqliteOptions, SqliteStore};

    #[tokio::test]
    async fn leads_at_once_and_keeps_one_record() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("s.db"), SqliteOptions::default()).unwrap(),
        );
        LocalElection::new("old-name", store.clone())
            .announce(b"old".to_vec())
            .await
            .unwrap();
        let election = LocalElection::new("host-a", store.clone());
        election.announce(b"one".to_vec()).await.unwrap();
        election.announce(b"two".to_vec()).await.unwrap();
        let leadership = election.campaign().await.unwrap();
        assert!(leadership.is_held());
        assert!(leadership.fence().is_none());
        assert_eq!(election.leader().await.unwrap().as_deref(), Some("host-a"));
        let listed = store.list(SERVERS_PREFIX, None, 0).await.unwrap();
        let records: Vec<(&str, &[u8])> = listed
            .kvs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
            .collect();
        assert_eq!(records, [("/cluster/servers/host-a", &b"two"[..])]);
    }
}
