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
    // Decoded as the router decodes it, so `vic%74im` is logged as `victim`.
    let project = path
        .strip_prefix("/v1/projects/")
        .and_then(|rest| rest.split('/').next())
        .filter(|p| !p.is_empty())
        .map(percent_decode);
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

fn percent_decode(segment: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi * 16 + lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn project_segments_are_decoded_like_the_router_does() {
        assert_eq!(super::percent_decode("vic%74im"), "victim");
        assert_eq!(super::percent_decode("plain"), "plain");
        assert_eq!(super::percent_decode("bad%zz"), "bad%zz");
        assert_eq!(super::percent_decode("end%4"), "end%4");
        assert_eq!(super::percent_decode("x%é"), "x%é");
    }
}
