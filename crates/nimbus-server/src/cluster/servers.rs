//! The servers sharing the store, as announced, with the leader marked.

use nimbus_api::{ServerInfo, ServerList, ServerRecord};
use nimbus_store::SERVERS_PREFIX;

use crate::state::AppState;

/// Every live server's record, in name order, and the current leader.
pub async fn list(state: &AppState) -> Result<ServerList, nimbus_store::StoreError> {
    let leader = state.election.leader().await?;
    let listed = state.repo.store.list(SERVERS_PREFIX, None, 0).await?;
    let items = listed
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<ServerRecord>(&kv.value).ok())
        .map(|record| ServerInfo {
            leader: leader.as_deref() == Some(record.name.as_str()),
            record,
        })
        .collect();
    Ok(ServerList {
        items,
        leader,
        answered_by: state.config.server_name.clone(),
    })
}
