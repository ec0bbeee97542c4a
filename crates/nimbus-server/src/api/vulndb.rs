//! The cluster's vulnerability database: an OSV export uploaded by a system
//! administrator, validated and indexed by the server that receives it.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use futures::StreamExt;
use nimbus_api::{ApiError, Metadata, VulnDb, VulnDbInfo, VulnDbStatus, VULNDB_NAME};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::St;
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};
use crate::state::AppState;
use crate::vulnscan::vulndb_dir;

/// Largest OSV export accepted (Debian's all.zip is ~100 MiB).
pub const MAX_VULNDB_UPLOAD_BYTES: usize = 1 << 30;

/// One import at a time per server: each builds a whole index file.
static IMPORTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[utoipa::path(get, path = "/v1/vulndb", operation_id = "get_vulndb", tag = "vulnerabilities",
    responses((status = 200, body = VulnDbInfo, description = "The loaded database (absent if none) and the digest of this server's index")))]
pub async fn get(State(state): St) -> ApiResult<Json<VulnDbInfo>> {
    let stored: Option<VulnDb> = state.repo.try_get(None, VULNDB_NAME).await?;
    let dir = vulndb_dir(&state);
    let here = tokio::task::spawn_blocking(move || nimbus_vuln::VulnIndex::open(&dir))
        .await
        .map_err(|e| ApiError::internal(format!("vulnerability index task failed: {e}")))?
        .ok()
        .flatten()
        .map(|i| i.digest().to_string())
        .unwrap_or_default();
    Ok(Json(VulnDbInfo {
        database: stored.map(|d| d.status),
        this_server_digest: here,
    }))
}

#[utoipa::path(post, path = "/v1/vulndb", operation_id = "import_vulndb", tag = "vulnerabilities",
    request_body(content = Vec<u8>, content_type = "application/zip",
        description = "An OSV export: a zip of OSV JSON records (as `<ecosystem>/all.zip`). Every record is validated; on any error nothing changes"),
    responses((status = 201, body = VulnDbStatus, description = "Imported: replaces the previous database"),
        (status = 422, description = "Not a zip, or an entry is not a valid OSV record (named in the message)")))]
pub async fn import(
    State(state): St,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult<(StatusCode, Json<VulnDbStatus>)> {
    auth::require_system_admin(&caller)?;
    let _one_at_a_time = IMPORTING.lock().await;
    let dir = vulndb_dir(&state);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::internal(format!("could not create {}: {e}", dir.display())))?;
    let upload = dir.join(format!("upload-{}.zip", uuid::Uuid::new_v4()));
    let result = receive_and_import(&state, body, &upload).await;
    let _ = tokio::fs::remove_file(&upload).await;
    let summary = result?;
    let status = VulnDbStatus {
        digest: summary.digest,
        records: summary.records,
        ecosystems: summary.ecosystems.into_iter().collect(),
        skipped_records: summary.skipped_records,
        imported_at: Some(chrono::Utc::now()),
        imported_on: state.config.server_name.clone(),
    };
    store_record(&state, status.clone()).await?;
    Ok((StatusCode::CREATED, Json(status)))
}

async fn receive_and_import(
    state: &AppState,
    body: Body,
    upload: &std::path::Path,
) -> ApiResult<nimbus_vuln::ImportSummary> {
    let digest = receive(body, upload).await?;
    let dir = vulndb_dir(state);
    let upload = upload.to_path_buf();
    tokio::task::spawn_blocking(move || nimbus_vuln::import_zip(&dir, &upload, &digest))
        .await
        .map_err(|e| ApiError::internal(format!("vulnerability import task failed: {e}")))?
        .map_err(|e| match e {
            nimbus_vuln::ImportError::Io { .. } => ServerError(ApiError::internal(format!(
                "the vulnerability database was not imported: {e}"
            ))),
            other => ServerError(ApiError::invalid(format!(
                "the vulnerability database was not imported, nothing changed: {other}"
            ))),
        })
}

/// Writes the body to `upload`; returns its `sha256:` digest.
async fn receive(body: Body, upload: &std::path::Path) -> ApiResult<String> {
    let io = |e: std::io::Error| {
        ApiError::internal(format!("could not write {}: {e}", upload.display()))
    };
    let mut file = tokio::fs::File::create(upload).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            let msg = e.to_string();
            if msg.contains("length limit") {
                ApiError::new(
                    nimbus_api::ErrorCode::PayloadTooLarge,
                    format!("the OSV export is larger than the limit of {MAX_VULNDB_UPLOAD_BYTES} bytes; import one ecosystem's all.zip at a time"),
                )
            } else {
                ApiError::bad_request(format!("upload interrupted: {msg}"))
            }
        })?;
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

async fn store_record(state: &AppState, status: VulnDbStatus) -> ApiResult<()> {
    match state.repo.try_get::<VulnDb>(None, VULNDB_NAME).await? {
        Some(mut existing) => {
            existing.status = status;
            state.repo.update(existing).await?;
        }
        None => {
            state
                .repo
                .create(VulnDb {
                    metadata: Metadata::new(VULNDB_NAME, None),
                    status,
                })
                .await?;
        }
    }
    Ok(())
}
