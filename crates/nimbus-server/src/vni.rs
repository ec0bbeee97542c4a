//! VXLAN network identifiers: one per network, unique in the cluster, so
//! hosts carry each network's frames to each other under its own id and
//! two projects with the same subnet never see each other's.
//!
//! Key: `/vni/{vni}` (value: `{project}/{network id}`), claimed with a
//! create (which fails if the key exists) before the network stores the
//! VNI in its status; deleted with the network. A network stored before
//! VNIs existed gets one at its next launch ([`ensure`]): no migration.

use nimbus_api::{ApiError, Network};
use nimbus_store::{Op, StoreError};
use rand::Rng;

use crate::error::{ApiResult, ServerError};
use crate::repo::Repo;

/// Below this, VNIs are left to the operator's other overlays.
const FIRST: u32 = 4096;
/// VNIs are 24 bits.
const LAST: u32 = (1 << 24) - 1;
const MAX_ATTEMPTS: usize = 50;

pub fn key(vni: u32) -> String {
    format!("/vni/{vni}")
}

/// The store write that frees a network's VNI (none: nothing).
pub fn release(net: &Network) -> Vec<Op> {
    net.status
        .vni
        .map(|v| vec![Op::Delete { key: key(v) }])
        .unwrap_or_default()
}

/// Claim a free VNI for the network `project/network_id`.
pub async fn claim(repo: &Repo, project: &str, network_id: &str) -> ApiResult<u32> {
    for _ in 0..MAX_ATTEMPTS {
        let vni = rand::thread_rng().gen_range(FIRST..=LAST);
        match repo
            .store
            .create(&key(vni), format!("{project}/{network_id}").into_bytes())
            .await
        {
            Ok(_) => return Ok(vni),
            Err(StoreError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ServerError(ApiError::unavailable(
        "could not claim a free VXLAN network identifier; retry",
    )))
}

/// Free a VNI claimed for a network that was not stored after all.
pub async fn unclaim(repo: &Repo, vni: u32) {
    if let Err(e) = repo.store.delete(&key(vni), None).await {
        tracing::warn!(vni, error = %e, "freeing an unused VXLAN network identifier failed");
    }
}

/// The network with a VNI: as it is if it has one, else with one claimed
/// and stored (a network made before VNIs existed).
pub async fn ensure(repo: &Repo, mut net: Network) -> ApiResult<Network> {
    loop {
        if net.status.vni.is_some() {
            return Ok(net);
        }
        let project = net.metadata.project.clone().unwrap_or_default();
        let vni = claim(repo, &project, &net.metadata.id).await?;
        let mut with = net.clone();
        with.status.vni = Some(vni);
        match repo.update(with).await {
            Ok(stored) => return Ok(stored),
            Err(e) => {
                unclaim(repo, vni).await;
                // Changed meanwhile (a concurrent launch gave it one, or a
                // deletion mark): read it again.
                match repo
                    .try_get::<Network>(Some(&project), &net.metadata.name)
                    .await?
                {
                    Some(current) if current.metadata.revision != net.metadata.revision => {
                        net = current
                    }
                    _ => return Err(e),
                }
            }
        }
    }
}
