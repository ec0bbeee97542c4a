//! Several servers on one store: each announces itself, every one serves
//! the API, and the elected leader alone runs the controllers and the
//! scheduler ([`leader`]).
//!
//! What else a server keeps for itself, and why that is safe with others
//! beside it (see `docs/architecture.md`, "Several servers"):
//! - API writes are compare-and-swaps on the store; addresses and host
//!   ports are claimed by store transactions (`ipam`).
//! - The token cache lives two seconds, so a token revoked through one
//!   server stops working on the others within that.
//! - Whole-list responses are cached per store revision, which every
//!   server reads alike.
//! - Secret values are sealed with `<data>/secrets.key`: every server needs
//!   the same key, which [`check_secrets_key`] verifies at start.

pub mod leader;
pub mod servers;

use chrono::Utc;
use nimbus_api::ServerRecord;
use nimbus_store::StoreError;

use crate::state::AppState;

/// A value sealed with the secrets key, which every server must open.
const SECRETS_CHECK_KEY: &str = "/cluster/secrets-check";
const SECRETS_CHECK_CONTEXT: &str = "cluster:secrets-check";
const SECRETS_CHECK_VALUE: &str = "nimbus";

/// Records this server in the store for as long as it runs. Fails when
/// another live server uses the same `--server-name`.
pub async fn announce(state: &AppState) -> anyhow::Result<()> {
    let build = nimbus_api::BuildVersion::current();
    let record = ServerRecord {
        name: state.config.server_name.clone(),
        endpoint: state
            .config
            .listen
            .map(|addr| format!("https://{addr}"))
            .unwrap_or_default(),
        version: build.release,
        protocol: build.protocol,
        started_at: Utc::now(),
    };
    let value = serde_json::to_vec(&record)?;
    state
        .election
        .announce(value)
        .await
        .map_err(|e| anyhow::anyhow!("announcing server {:?}: {e}", record.name))
}

/// Refuses to join servers on the store whose protocol level is more than
/// one away from this build's, before anything is written. This server's
/// own record (a previous life under its name) does not count, and a
/// SQLite store has no other server: its records are earlier lives of this
/// one (without a lease, they stay until it announces itself).
pub async fn check_server_versions(state: &AppState) -> anyhow::Result<()> {
    if matches!(state.config.store, crate::config::StoreBackend::Sqlite) {
        return Ok(());
    }
    let listed = state
        .repo
        .store
        .list(nimbus_store::SERVERS_PREFIX, None, 0)
        .await?;
    let running: Vec<(String, nimbus_api::BuildVersion)> = listed
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<ServerRecord>(&kv.value).ok())
        .filter(|r| r.name != state.config.server_name)
        .map(|r| {
            let version = nimbus_api::BuildVersion {
                release: r.version,
                protocol: r.protocol,
            };
            (r.name, version)
        })
        .collect();
    nimbus_api::version::check_server_skew(&nimbus_api::BuildVersion::current(), &running)
        .map_err(anyhow::Error::msg)
}

/// Refuses to start with a secrets key other than the one the servers
/// already on the store seal with: the values they sealed would not open
/// here.
pub async fn check_secrets_key(state: &AppState) -> anyhow::Result<()> {
    let store = &state.repo.store;
    let existing = match store.get(SECRETS_CHECK_KEY).await? {
        Some(kv) => kv,
        None => {
            let sealed = state
                .secrets
                .seal(SECRETS_CHECK_CONTEXT, SECRETS_CHECK_VALUE)?;
            match store.create(SECRETS_CHECK_KEY, sealed.into_bytes()).await {
                Ok(_) => return Ok(()),
                // Another server wrote it meanwhile: check against its key.
                Err(StoreError::AlreadyExists(_)) => store
                    .get(SECRETS_CHECK_KEY)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("{SECRETS_CHECK_KEY} vanished while read"))?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let sealed = String::from_utf8_lossy(&existing.value);
    match state.secrets.unseal(SECRETS_CHECK_CONTEXT, &sealed) {
        Ok(value) if value == SECRETS_CHECK_VALUE => Ok(()),
        _ => anyhow::bail!(
            "this server's secrets key {} is not the one the other servers on this store use; copy secrets.key from a running server's data directory (mode 0600) and start again",
            state.config.secrets_key_path().display()
        ),
    }
}
