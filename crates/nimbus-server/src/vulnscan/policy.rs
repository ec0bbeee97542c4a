//! The project's launch policy, checked when an instance is created or its
//! spec replaced. Each rule is its own function; later rules (signatures)
//! are added beside `check_max_severity`.

use nimbus_api::{ApiError, Image, ImageScan, Policy, PolicySpec, Severity, POLICY_NAME};

use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

/// The project's policy; an empty one when none was set.
pub async fn project_policy(state: &AppState, project: &str) -> ApiResult<PolicySpec> {
    let stored: Option<Policy> = state.repo.try_get(Some(project), POLICY_NAME).await?;
    Ok(stored.map(|p| p.spec).unwrap_or_default())
}

/// Refuses launching `image` in `project` when the project's policy forbids it.
pub async fn enforce_launch_policy(
    state: &AppState,
    project: &str,
    image: &Image,
) -> ApiResult<()> {
    let policy = project_policy(state, project).await?;
    if let Some(max) = policy.max_severity {
        check_max_severity(state, project, image, max).await?;
    }
    Ok(())
}

/// An image never scanned, or scanned against an older database, is scanned
/// now: the policy is always judged against the loaded database.
async fn check_max_severity(
    state: &AppState,
    project: &str,
    image: &Image,
    max: Severity,
) -> ApiResult<()> {
    // VM disks and kernels carry no package database Nimbus reads.
    if image.status.disk.is_some() || image.status.kernel.is_some() {
        return Ok(());
    }
    let db = super::cluster_vulndb(state)
        .await
        .map_err(|ServerError(e)| {
            ServerError(ApiError::new(
                e.code,
                format!(
                    "project {project:?} refuses images with findings above {max}, but {}",
                    e.message
                ),
            ))
        })?;
    let scan = match super::stored_scan(state, project, image).await? {
        Some(scan) if scan.status.vulndb_digest == db.status.digest => scan,
        _ => super::scan_and_store(state, project, image).await?,
    };
    refuse_findings_above(&image.metadata.name, &scan, max)
}

/// Most findings named in a refusal.
const NAMED_FINDINGS: usize = 3;

fn refuse_findings_above(image: &str, scan: &ImageScan, max: Severity) -> ApiResult<()> {
    let above = super::findings_above(&scan.status, max);
    if above.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = above
        .iter()
        .take(NAMED_FINDINGS)
        .map(|f| {
            let fix = f
                .fixed_version
                .as_deref()
                .map(|v| format!("fixed in {v}"))
                .unwrap_or_else(|| "no fix yet".into());
            format!(
                "{} ({}) in {} {} ({fix})",
                f.advisory, f.severity, f.package, f.installed_version
            )
        })
        .collect();
    let more = above.len().saturating_sub(NAMED_FINDINGS);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Err(ServerError(ApiError::forbidden(format!(
        "image {image:?} has {} finding(s) above the project's maximum severity {max}: {}{more}; update the image's packages to the fixed versions and import it again (see `nimbus image scan {image}`), or change the policy with `nimbus policy set --max-severity <level>`",
        above.len(),
        named.join(", ")
    ))))
}
