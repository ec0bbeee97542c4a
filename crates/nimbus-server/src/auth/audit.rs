//! The audit log: every mutating call, who made it, and how it ended.
//!
//! The log is bounded three ways, so that callers (authenticated or not)
//! cannot fill the store through it: stored paths are cut to
//! [`MAX_PATH_BYTES`]; unauthenticated failures are written once per
//! source and [`FAILED_AUTH_WINDOW`], the rest of the window counted in one
//! aggregate record; and past `audit_max_records` the oldest records are
//! pruned.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::Method;
use axum::response::Response;
use chrono::Utc;
use nimbus_api::{AuditRecord, ErrorCode};
use nimbus_store::{Op, Txn};

use super::Caller;
use crate::state::AppState;

pub const PREFIX: &str = "/audit/";

/// Longest request path stored in a record; longer ones are cut and marked.
pub const MAX_PATH_BYTES: usize = 512;

/// Unauthenticated failures from one source are written once per window.
pub const FAILED_AUTH_WINDOW: Duration = Duration::from_secs(60);

/// Sources tracked at once; past this, new sources share one window.
const MAX_SOURCES: usize = 4096;

/// Records deleted per store transaction when pruning.
const PRUNE_BATCH: usize = 500;

/// The source name when the sources table is full.
const OTHER_SOURCES: &str = "(other sources)";

/// Set by a handler on a response to have a host agent's call audited
/// (agents' routine status reports are not; their finalizing is).
#[derive(Clone, Copy, Debug)]
pub struct AuditAgentCall;

/// Audit bookkeeping kept in memory.
#[derive(Default)]
pub struct AuditLog {
    failed: Mutex<HashMap<String, FailedWindow>>,
    /// Records in the store, counted once then kept up to date; `None`
    /// until the first write.
    stored: tokio::sync::Mutex<Option<usize>>,
}

struct FailedWindow {
    started: Instant,
    /// Failures seen in the window after the one written.
    suppressed: u64,
    method: String,
    path: String,
    status: u16,
    code: Option<ErrorCode>,
}

/// What the audit log needs of a response (a `Response` is not `Sync`).
pub fn outcome(resp: &Response) -> (u16, Option<ErrorCode>) {
    (
        resp.status().as_u16(),
        resp.extensions().get::<ErrorCode>().copied(),
    )
}

fn result_of(status: u16, code: Option<ErrorCode>) -> String {
    match code {
        Some(code) => serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "error".into()),
        None if status < 400 => "ok".into(),
        None => format!("http_{status}"),
    }
}

/// `path`, cut to [`MAX_PATH_BYTES`] on a character boundary.
pub fn capped_path(path: &str) -> String {
    if path.len() <= MAX_PATH_BYTES {
        return path.to_string();
    }
    let mut end = MAX_PATH_BYTES;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...[{} bytes in all]", &path[..end], path.len())
}

/// Record an authenticated call.
pub async fn record(
    state: &AppState,
    caller: Option<&Caller>,
    method: &Method,
    path: &str,
    (status, code): (u16, Option<ErrorCode>),
) {
    // Decoded as the router decodes it, so `vic%74im` is logged as `victim`.
    let project = path
        .strip_prefix("/v1/projects/")
        .and_then(|rest| rest.split('/').next())
        .filter(|p| !p.is_empty())
        .map(|p| capped_path(&percent_decode(p)));
    let record = AuditRecord {
        id: nimbus_api::meta::new_id(),
        time: Utc::now(),
        actor: caller.map(|c| c.user.clone()).unwrap_or_else(|| "-".into()),
        token_id: caller.map(|c| c.token_id.clone()),
        method: method.to_string(),
        path: capped_path(path),
        project,
        status,
        result: result_of(status, code),
        source: None,
        count: None,
    };
    write(state, record).await;
}

/// Record a call that could not be authenticated: the first from `source`
/// in a window is written; the rest are counted and written as one
/// aggregate record when the window closes.
pub async fn record_unauthenticated(
    state: &AppState,
    source: &str,
    method: &Method,
    path: &str,
    (status, code): (u16, Option<ErrorCode>),
) {
    let now = Instant::now();
    let (write_this, closed) = {
        let Ok(mut failed) = state.audit.failed.lock() else {
            return;
        };
        let source = if failed.contains_key(source) || failed.len() < MAX_SOURCES {
            source
        } else {
            OTHER_SOURCES
        };
        match failed.get_mut(source) {
            Some(w) if now.duration_since(w.started) < FAILED_AUTH_WINDOW => {
                w.suppressed += 1;
                (false, None)
            }
            _ => {
                let closed = failed.insert(
                    source.to_string(),
                    FailedWindow {
                        started: now,
                        suppressed: 0,
                        method: method.to_string(),
                        path: capped_path(path),
                        status,
                        code,
                    },
                );
                (true, closed.map(|w| (source.to_string(), w)))
            }
        }
    };
    if let Some((source, w)) = closed {
        write_aggregate(state, &source, w).await;
    }
    if write_this {
        let record = AuditRecord {
            id: nimbus_api::meta::new_id(),
            time: Utc::now(),
            actor: "-".into(),
            token_id: None,
            method: method.to_string(),
            path: capped_path(path),
            project: None,
            status,
            result: result_of(status, code),
            source: Some(source.to_string()),
            count: Some(1),
        };
        write(state, record).await;
    }
}

/// Write the aggregate records of windows that have closed; run
/// periodically so a burst's count is recorded even if nothing follows it.
pub async fn flush_closed_windows(state: &AppState) {
    let now = Instant::now();
    let closed: Vec<(String, FailedWindow)> = {
        let Ok(mut failed) = state.audit.failed.lock() else {
            return;
        };
        let done: Vec<String> = failed
            .iter()
            .filter(|(_, w)| now.duration_since(w.started) >= FAILED_AUTH_WINDOW)
            .map(|(s, _)| s.clone())
            .collect();
        done.into_iter()
            .filter_map(|s| failed.remove(&s).map(|w| (s, w)))
            .collect()
    };
    for (source, w) in closed {
        write_aggregate(state, &source, w).await;
    }
}

async fn write_aggregate(state: &AppState, source: &str, w: FailedWindow) {
    if w.suppressed == 0 {
        return;
    }
    let record = AuditRecord {
        id: nimbus_api::meta::new_id(),
        time: Utc::now(),
        actor: "-".into(),
        token_id: None,
        method: w.method,
        path: w.path,
        project: None,
        status: w.status,
        result: result_of(w.status, w.code),
        source: Some(source.to_string()),
        count: Some(w.suppressed),
    };
    write(state, record).await;
}

/// Periodically flush closed failed-authentication windows.
pub async fn run_flusher(state: std::sync::Arc<AppState>) {
    let mut tick = tokio::time::interval(FAILED_AUTH_WINDOW / 4);
    loop {
        tick.tick().await;
        flush_closed_windows(&state).await;
    }
}

async fn write(state: &AppState, record: AuditRecord) {
    // Keys sort by time so the log lists in order.
    let key = format!(
        "{PREFIX}{:020}-{}",
        record.time.timestamp_nanos_opt().unwrap_or_default(),
        record.id
    );
    let value = match serde_json::to_vec(&record) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "could not encode audit record");
            return;
        }
    };
    if let Err(e) = state.repo.store.create(&key, value).await {
        tracing::error!(error = %e, path = %record.path, "could not write audit record");
        return;
    }
    if let Err(e) = keep_bounded(state).await {
        tracing::error!(error = %e, "could not prune the audit log");
    }
}

/// Slack past the maximum before pruning, so pruning runs in batches.
fn prune_slack(max: usize) -> usize {
    (max / 100).clamp(1, PRUNE_BATCH)
}

/// Count the new record, and prune the oldest ones past the maximum.
async fn keep_bounded(state: &AppState) -> Result<(), nimbus_store::StoreError> {
    let max = state.config.audit_max_records.max(1);
    let mut stored = state.audit.stored.lock().await;
    let count = match *stored {
        Some(n) => n + 1,
        None => count_records(state).await?,
    };
    *stored = Some(count);
    if count < max + prune_slack(max) {
        return Ok(());
    }
    let mut excess = count - max;
    while excess > 0 {
        let page = state
            .repo
            .store
            .list(PREFIX, None, excess.min(PRUNE_BATCH))
            .await?;
        if page.kvs.is_empty() {
            break;
        }
        let n = page.kvs.len();
        let success = page
            .kvs
            .into_iter()
            .map(|kv| Op::Delete { key: kv.key })
            .collect();
        state
            .repo
            .store
            .txn(Txn {
                success,
                ..Txn::default()
            })
            .await?;
        excess -= n;
        *stored = Some(stored.unwrap_or(n).saturating_sub(n));
    }
    Ok(())
}

async fn count_records(state: &AppState) -> Result<usize, nimbus_store::StoreError> {
    let mut count = 0;
    let mut start_after: Option<String> = None;
    loop {
        let page = state
            .repo
            .store
            .list(PREFIX, start_after.as_deref(), 1000)
            .await?;
        count += page.kvs.len();
        match page.kvs.last() {
            Some(kv) if page.more => start_after = Some(kv.key.clone()),
            _ => return Ok(count),
        }
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

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        let short = "/v1/projects/a";
        assert_eq!(super::capped_path(short), short);
        let long = format!("/v1/{}", "é".repeat(40_000));
        let cut = super::capped_path(&long);
        assert!(cut.len() < super::MAX_PATH_BYTES + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!("[{} bytes in all]", long.len())));
    }
}
