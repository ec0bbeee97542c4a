//! The audit log: every mutating call, who made it, and how it ended.
//!
//! An authenticated mutating call is recorded before its handler runs
//! ([`begin`], result `in_progress`) and the record completed with the
//! outcome afterwards ([`finish`]): a call whose record cannot be written
//! is refused, so no change goes unaudited (507 when the data directory's
//! disk is full).
//!
//! The log is bounded, so that callers (authenticated or not) cannot fill
//! the store through it: stored paths are cut to [`MAX_PATH_BYTES`];
//! unauthenticated failures are written once per source and
//! [`FAILED_AUTH_WINDOW`], the rest of the window counted in one aggregate
//! record; and [`retention`] prunes the oldest records past
//! `audit_max_records` and those older than `audit_max_age`.
//!
//! Keys sort by time (`/audit/<20-digit unix nanoseconds>-<id>`), so the
//! log lists oldest first forwards and newest first backwards.

pub mod retention;
pub mod syslog;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::Method;
use axum::response::Response;
use chrono::{DateTime, Utc};
use nimbus_api::{ApiError, AuditRecord, ErrorCode};
use nimbus_store::StoreError;

use super::Caller;
use crate::error::ServerError;
use crate::state::AppState;

pub const PREFIX: &str = "/audit/";

/// Longest request path stored in a record; longer ones are cut and marked.
pub const MAX_PATH_BYTES: usize = 512;

/// Unauthenticated failures from one source are written once per window.
pub const FAILED_AUTH_WINDOW: Duration = Duration::from_secs(60);

/// Sources tracked at once; past this, new sources share one window.
const MAX_SOURCES: usize = 4096;

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
    /// Where records are copied with `--audit-syslog`, opened on first use.
    syslog: std::sync::OnceLock<Option<syslog::SyslogTarget>>,
}

/// The result of a record whose call has not finished yet.
pub const IN_PROGRESS: &str = "in_progress";

/// The store key of a record: its time, then its id.
pub fn record_key(record: &AuditRecord) -> String {
    format!("{}-{}", time_key(record.time), record.id)
}

/// The key prefix of records written at `time`: every record written
/// earlier sorts before it, every later one after.
pub fn time_key(time: DateTime<Utc>) -> String {
    let nanos = time.timestamp_nanos_opt().unwrap_or_default().max(0);
    format!("{PREFIX}{nanos:020}")
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

fn project_of(path: &str) -> Option<String> {
    // Decoded as the router decodes it, so `vic%74im` is logged as `victim`.
    path.strip_prefix("/v1/projects/")
        .and_then(|rest| rest.split('/').next())
        .filter(|p| !p.is_empty())
        .map(|p| capped_path(&percent_decode(p)))
}

fn authenticated_record(caller: &Caller, method: &Method, path: &str) -> AuditRecord {
    AuditRecord {
        id: nimbus_api::meta::new_id(),
        time: Utc::now(),
        actor: caller.user.clone(),
        token_id: Some(caller.token_id.clone()),
        method: method.to_string(),
        path: capped_path(path),
        project: project_of(path),
        status: 0,
        result: IN_PROGRESS.into(),
        source: None,
        count: None,
    }
}

/// A record written before its call ran, completed by [`finish`].
pub struct Pending {
    record: AuditRecord,
    key: String,
    mod_revision: nimbus_store::Revision,
}

/// Record that an authenticated call is about to run. When the record
/// cannot be written the call must not run: the error says why (507 when
/// the disk is full).
pub async fn begin(
    state: &AppState,
    caller: &Caller,
    method: &Method,
    path: &str,
) -> Result<Pending, ServerError> {
    let record = authenticated_record(caller, method, path);
    let key = record_key(&record);
    let mut written = store_new(state, &key, &record).await;
    // A deletion frees space: on a full disk it may use the store's reserve.
    if matches!(written, Err(StoreError::StorageFull { .. }))
        && *method == Method::DELETE
        && state.repo.store.release_reserve().await
    {
        written = store_new(state, &key, &record).await;
    }
    match written {
        Ok(mod_revision) => Ok(Pending {
            record,
            key,
            mod_revision,
        }),
        Err(e) => {
            tracing::error!(error = %e, %method, path = %record.path, "could not write the audit record; the call is refused");
            Err(refused(e))
        }
    }
}

/// The answer to a call refused because its audit record could not be written.
fn refused(e: StoreError) -> ServerError {
    let ServerError(inner) = ServerError::from(e);
    let code = match inner.code {
        ErrorCode::InsufficientStorage => ErrorCode::InsufficientStorage,
        _ => ErrorCode::Unavailable,
    };
    ServerError(ApiError::new(
        code,
        format!(
            "the call was not made because its audit record could not be written: {}",
            inner.message
        ),
    ))
}

/// Complete a record with how its call ended.
pub async fn finish(state: &AppState, pending: Pending, (status, code): (u16, Option<ErrorCode>)) {
    let Pending {
        mut record,
        key,
        mod_revision,
    } = pending;
    record.status = status;
    record.result = result_of(status, code);
    match serde_json::to_vec(&record) {
        Ok(value) => {
            match state.repo.store.update(&key, value, mod_revision).await {
                Ok(_) => {}
                // A tiny log (`audit_max_records`) may prune a record
                // while its call runs.
                Err(StoreError::NotFound(_)) => tracing::warn!(
                    path = %record.path,
                    status,
                    "the audit record was pruned before its call finished; raise --audit-max-records"
                ),
                // The record stays `in_progress`: the call is still on file.
                Err(e) => {
                    tracing::error!(error = %e, path = %record.path, status, "could not complete the audit record")
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "could not encode audit record"),
    }
    copy_to_syslog(state, &record);
}

/// Record an authenticated call after it ran (host agents' status reports,
/// which are audited only when they finalize something).
pub async fn record(
    state: &AppState,
    caller: &Caller,
    method: &Method,
    path: &str,
    (status, code): (u16, Option<ErrorCode>),
) {
    let mut record = authenticated_record(caller, method, path);
    record.status = status;
    record.result = result_of(status, code);
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
    if let Err(e) = store_new(state, &record_key(&record), &record).await {
        tracing::error!(error = %e, path = %record.path, "could not write audit record");
        return;
    }
    copy_to_syslog(state, &record);
}

/// Store a new record and keep the log within its size; the record's
/// revision.
async fn store_new(
    state: &AppState,
    key: &str,
    record: &AuditRecord,
) -> Result<nimbus_store::Revision, StoreError> {
    let value = serde_json::to_vec(record)
        .map_err(|e| StoreError::Backend(format!("encoding audit record: {e}")))?;
    let kv = state.repo.store.create(key, value).await?;
    if let Err(e) = retention::keep_bounded(state).await {
        tracing::error!(error = %e, "could not prune the audit log");
    }
    Ok(kv.mod_revision)
}

fn copy_to_syslog(state: &AppState, record: &AuditRecord) {
    let target = state.audit.syslog.get_or_init(|| {
        state
            .config
            .audit_syslog
            .as_deref()
            .map(syslog::SyslogTarget::new)
    });
    if let Some(target) = target {
        target.send(record);
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
