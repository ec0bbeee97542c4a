//! The audit log: every mutating call, who made it, and how it ended.

use axum::http::Method;
use axum::response::Response;
use chrono::Utc;
use nimbus_api::{AuditRecord, ErrorCode};

use super::Caller;
use crate::state::AppState;

pub const PREFIX: &str = "/audit/";

/// What the audit log needs of a response (a `Response` is not `Sync`).
pub fn outcome(resp: &Response) -> (u16, Option<ErrorCode>) {
    (
        resp.status().as_u16(),
        resp.extensions().get::<ErrorCode>().copied(),
    )
}

pub async fn record(
    state: &AppState,
    caller: Option<&Caller>,
    method: &Method,
    path: &str,
    (status, code): (u16, Option<ErrorCode>),
) {
    let result = match code {
        Some(code) => serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "error".into()),
        None if status < 400 => "ok".into(),
        None => format!("http_{status}"),
    };
    let project = path
        .strip_prefix("/v1/projects/")
        .and_then(|rest| rest.split('/').next())
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    let now = Utc::now();
    let record = AuditRecord {
        id: nimbus_api::meta::new_id(),
        time: now,
        actor: caller.map(|c| c.user.clone()).unwrap_or_else(|| "-".into()),
        token_id: caller.map(|c| c.token_id.clone()),
        method: method.to_string(),
        path: path.to_string(),
        project,
        status,
        result,
    };
    // Keys sort by time so the log lists in order.
    let key = format!(
        "{PREFIX}{:020}-{}",
        now.timestamp_nanos_opt().unwrap_or_default(),
        record.id
    );
    match serde_json::to_vec(&record) {
        Ok(value) => {
            if let Err(e) = state.repo.store.create(&key, value).await {
                tracing::error!(error = %e, path, "could not write audit record");
            }
        }
        Err(e) => tracing::error!(error = %e, "could not encode audit record"),
    }
}
