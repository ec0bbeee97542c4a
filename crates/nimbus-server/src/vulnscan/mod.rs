//! Vulnerability scanning in the control plane: the cluster's OSV database
//! (its record in the store, its index in this server's data dir), scans of
//! image digests stored per project, and the launch policy that reads them.

pub mod policy;

use std::path::PathBuf;

use chrono::Utc;
use nimbus_api::{
    ApiError, Finding, Image, ImageScan, ImageScanStatus, Metadata, Severity, VulnDb, VULNDB_NAME,
};
use nimbus_image::ImportedImage;

use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

/// Where this server keeps its vulnerability index.
pub fn vulndb_dir(state: &AppState) -> PathBuf {
    state.config.data_dir.join("vulndb")
}

/// The cluster's database record, or the error telling an admin to import one.
pub async fn cluster_vulndb(state: &AppState) -> ApiResult<VulnDb> {
    state
        .repo
        .try_get::<VulnDb>(None, VULNDB_NAME)
        .await?
        .ok_or_else(|| {
            ServerError(ApiError::unavailable(
                "no vulnerability database is loaded; a system administrator imports an OSV export with `nimbus vulndb import FILE.zip`",
            ))
        })
}

/// The stored scan of `image`'s digest in `project`, if any.
pub async fn stored_scan(
    state: &AppState,
    project: &str,
    image: &Image,
) -> ApiResult<Option<ImageScan>> {
    let name = ImageScan::name_for(&image.status.digest);
    state.repo.try_get(Some(project), &name).await
}

/// Scans `image` now against the cluster's database and stores the result
/// under its digest in `project` (replacing an earlier scan).
pub async fn scan_and_store(
    state: &AppState,
    project: &str,
    image: &Image,
) -> ApiResult<ImageScan> {
    if image.status.disk.is_some() || image.status.kernel.is_some() {
        return Err(ServerError(ApiError::invalid(format!(
            "image {:?} is a {} image: only container images (OCI or root filesystem) have package databases to scan",
            image.metadata.name, image.status.format
        ))));
    }
    let db = cluster_vulndb(state).await?;
    let report = {
        // Shared: garbage collection must not remove layers being read.
        let _reading = state.image_lock.read().await;
        let images = state.images.clone();
        let dir = vulndb_dir(state);
        let imported = ImportedImage::from_api(&image.status);
        let wanted = db.status.digest.clone();
        let name = image.metadata.name.clone();
        tokio::task::spawn_blocking(move || scan_blocking(&images, &dir, &imported, &wanted, &name))
            .await
            .map_err(|e| ApiError::internal(format!("scan task failed: {e}")))??
    };
    let status = scan_status(image, &db.status.digest, report);
    store_scan(state, project, &image.status.digest, status).await
}

fn scan_blocking(
    images: &nimbus_image::ImageStore,
    dir: &std::path::Path,
    imported: &ImportedImage,
    wanted_digest: &str,
    image_name: &str,
) -> ApiResult<nimbus_vuln::ScanReport> {
    let index = nimbus_vuln::VulnIndex::open(dir)
        .map_err(|e| ServerError(ApiError::internal(e.to_string())))?;
    let index = match index {
        Some(index) if index.digest() == wanted_digest => index,
        other => {
            let here = other
                .map(|i| i.digest().to_string())
                .unwrap_or_else(|| "none".into());
            return Err(ServerError(ApiError::unavailable(format!(
                "this server's vulnerability index ({here}) is not the cluster's ({wanted_digest}); import the same OSV export on this server with `nimbus vulndb import FILE.zip` (NIMBUS_URL pointing at it), or scan through another server"
            ))));
        }
    };
    let view = images.merged_view(imported).map_err(|e| {
        ServerError(ApiError::unavailable(format!(
            "the layers of image {image_name:?} are not readable on this server: {e}"
        )))
    })?;
    nimbus_vuln::scan_image(&view, &index).map_err(|e| {
        ServerError(ApiError::invalid(format!(
            "image {image_name:?} could not be scanned: {e}"
        )))
    })
}

fn scan_status(image: &Image, db_digest: &str, report: nimbus_vuln::ScanReport) -> ImageScanStatus {
    let mut counts = std::collections::BTreeMap::new();
    for f in &report.findings {
        *counts.entry(f.severity.to_string()).or_insert(0u64) += 1;
    }
    ImageScanStatus {
        image_digest: image.status.digest.clone(),
        ecosystem: report.inventory.ecosystem,
        package_databases: report.inventory.databases,
        packages: report.inventory.packages.len() as u64,
        worst: report.findings.iter().map(|f| f.severity).max(),
        findings: report.findings,
        counts,
        vulndb_digest: db_digest.to_string(),
        scanned_at: Some(Utc::now()),
    }
}

async fn store_scan(
    state: &AppState,
    project: &str,
    digest: &str,
    status: ImageScanStatus,
) -> ApiResult<ImageScan> {
    let name = ImageScan::name_for(digest);
    for _ in 0..8 {
        match state
            .repo
            .try_get::<ImageScan>(Some(project), &name)
            .await?
        {
            Some(mut existing) => {
                existing.status = status.clone();
                match state.repo.update(existing).await {
                    Err(ServerError(e)) if e.code == nimbus_api::ErrorCode::Conflict => continue,
                    other => return other,
                }
            }
            None => {
                let scan = ImageScan {
                    metadata: Metadata::new(&name, Some(project)),
                    status: status.clone(),
                };
                match state.repo.create(scan).await {
                    Err(ServerError(e)) if e.code == nimbus_api::ErrorCode::AlreadyExists => {
                        continue
                    }
                    other => return other,
                }
            }
        }
    }
    Err(ServerError(ApiError::unavailable(format!(
        "the scan of {digest} in project {project:?} is being stored concurrently; retry"
    ))))
}

/// Store key prefixes of what this module keeps per project (scans, the
/// policy), swept when the project is deleted.
pub fn project_key_prefixes(project: &str) -> [String; 2] {
    [
        crate::repo::prefix::<ImageScan>(Some(project)),
        crate::repo::prefix::<nimbus_api::Policy>(Some(project)),
    ]
}

/// Removes the scan of `digest` in `project` once no image there has it.
pub async fn forget_scan_if_unused(state: &AppState, project: &str, digest: &str) -> ApiResult<()> {
    let still_used = state
        .repo
        .list_every::<Image>(Some(project), crate::repo::MAX_PAGE)
        .await?
        .iter()
        .any(|i| i.status.digest == digest);
    if !still_used {
        let name = ImageScan::name_for(digest);
        match state
            .repo
            .delete::<ImageScan>(Some(project), &name, None)
            .await
        {
            Err(ServerError(e)) if e.code == nimbus_api::ErrorCode::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

/// The findings of `scan` strictly above `max`, worst first.
pub fn findings_above(scan: &ImageScanStatus, max: Severity) -> Vec<&Finding> {
    scan.findings.iter().filter(|f| f.severity > max).collect()
}
