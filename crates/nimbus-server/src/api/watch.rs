//! Watch streams: changes to a collection after a revision, one JSON
//! object per line, ended by an ERROR event if the history is gone.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use futures::StreamExt;
use nimbus_api::resources::Object;
use nimbus_api::{ApiError, ErrorCode, WatchEvent, WatchEventType};
use nimbus_store::{EventKind, StoreError};

use crate::error::{ApiResult, ServerError};
use crate::repo::decode;
use crate::state::AppState;

pub use crate::auth::session::{Guard, Need};

/// Stream events under `prefix` after `after_revision` (default: now),
/// keeping those `filter` accepts, until the guard's caller is no longer
/// allowed (token deleted or expired, role or admin flag gone). The stream
/// counts against the caller's stream limits while it is open.
pub async fn stream<T: Object>(
    state: &Arc<AppState>,
    prefix: String,
    after_revision: Option<i64>,
    filter: impl Fn(&T) -> bool + Send + Sync + 'static,
    guard: Guard,
) -> ApiResult<Response> {
    // Counted before any work, so refused streams cost next to nothing.
    let session = guard.open(state)?;
    let after = match after_revision {
        Some(r) => r,
        None => state.repo.store.current_revision().await?,
    };
    let rx = match state.repo.store.watch(&prefix, after).await {
        Ok(rx) => rx,
        Err(e @ StoreError::Compacted { .. }) => {
            return Err(ServerError(ApiError::new(
                ErrorCode::Compacted,
                e.to_string(),
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).filter_map(move |item| {
        let line = match item {
            Ok(ev) => {
                let revision = ev.kv.mod_revision;
                let (event_type, kv) = match ev.kind {
                    EventKind::Put if ev.prev.is_none() => (WatchEventType::Added, &ev.kv),
                    EventKind::Put => (WatchEventType::Modified, &ev.kv),
                    EventKind::Delete => (WatchEventType::Deleted, &ev.kv),
                };
                match decode::<T>(kv) {
                    Ok(mut obj) => {
                        if !filter(&obj) {
                            None
                        } else {
                            obj.metadata_mut().revision = revision;
                            obj.redact();
                            Some(WatchEvent {
                                event_type,
                                revision,
                                object: Some(obj),
                                error: None,
                            })
                        }
                    }
                    Err(_) => None,
                }
            }
            Err(e) => {
                let code = match e {
                    StoreError::Compacted { .. } => ErrorCode::Compacted,
                    _ => ErrorCode::Internal,
                };
                let err = ApiError::new(code, format!("{e}; re-list and watch again"));
                Some(WatchEvent::<T> {
                    event_type: WatchEventType::Error,
                    revision: 0,
                    object: None,
                    error: Some(err.body().error),
                })
            }
        };
        let bytes = line.and_then(|ev| {
            let mut v = serde_json::to_vec(&ev).ok()?;
            v.push(b'\n');
            Some(Ok::<_, std::io::Error>(bytes::Bytes::from(v)))
        });
        futures::future::ready(bytes)
    });
    let events = events.take_until(session.revoked(state.clone()));
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(events))
        .map_err(|e| ServerError(ApiError::internal(e.to_string())))
}

/// A list call that streams changes instead when `watch=true`.
pub async fn list_or_watch<T: Object>(
    state: &Arc<AppState>,
    project: Option<&str>,
    opts: &nimbus_api::ListOptions,
    filter: impl Fn(&T) -> bool + Send + Sync + 'static,
    guard: Guard,
) -> ApiResult<Response> {
    use axum::response::IntoResponse;
    if opts.watch == Some(true) {
        let terms = match &opts.selector {
            Some(s) => nimbus_api::meta::parse_selector(s).map_err(ApiError::bad_request)?,
            None => Vec::new(),
        };
        // History from before this project was created belongs to an
        // earlier project of the same name, perhaps another tenant's.
        let mut after = opts.revision;
        if let (Some(p), Some(requested)) = (project.filter(|_| T::PROJECT_SCOPED), after) {
            if let Some(kv) = state.repo.store.get(&format!("/projects/{p}")).await? {
                after = Some(requested.max(kv.create_revision));
            }
        }
        return stream::<T>(
            state,
            crate::repo::prefix::<T>(project),
            after,
            move |o| nimbus_api::meta::selector_matches(&terms, &o.metadata().labels) && filter(o),
            guard,
        )
        .await;
    }
    let mut page = state.repo.list::<T>(project, opts, filter).await?;
    page.items.iter_mut().for_each(Object::redact);
    Ok(axum::Json(page).into_response())
}

/// Whether the client accepts a gzip-compressed response.
pub fn accepts_gzip(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all("accept-encoding")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.trim().split(';').next() == Some("gzip"))
}

/// Whole list responses by request, valid while the store revision is
/// unchanged (any write anywhere moves it), with their gzip form made once.
#[derive(Default)]
pub struct ListResponseCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, CachedList>>,
}

struct CachedList {
    revision: i64,
    json: bytes::Bytes,
    gzip: Option<bytes::Bytes>,
}

/// Requests remembered at most; past this the cache starts over.
const LIST_CACHE_MAX: usize = 1024;

fn gzip(data: &[u8]) -> std::io::Result<bytes::Bytes> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 8),
        flate2::Compression::fast(),
    );
    enc.write_all(data)?;
    Ok(bytes::Bytes::from(enc.finish()?))
}

/// `list_or_watch` without a filter: plain lists are answered from the
/// encoded-object cache, and whole responses are reused (gzipped when the
/// client accepts it) while nothing in the store has changed.
pub async fn list_or_watch_all<T: Object>(
    state: &Arc<AppState>,
    project: Option<&str>,
    opts: &nimbus_api::ListOptions,
    gzip_ok: bool,
    guard: Guard,
) -> ApiResult<Response> {
    if opts.watch == Some(true) || opts.selector.is_some() {
        return list_or_watch::<T>(state, project, opts, |_| true, guard).await;
    }
    let key = format!(
        "{}|{:?}|{:?}",
        crate::repo::prefix::<T>(project),
        opts.limit,
        opts.continue_token
    );
    let now = state.repo.store.current_revision().await?;
    let cached = state.list_cache.entries.lock().ok().and_then(|c| {
        c.get(&key)
            .filter(|e| e.revision == now)
            .map(|e| (e.json.clone(), e.gzip.clone()))
    });
    let (json, mut gz, revision) = match cached {
        Some((json, gz)) => (json, gz, now),
        None => {
            let (revision, body) = state.repo.list_json::<T>(project, opts).await?;
            let json = bytes::Bytes::from(body);
            if let Ok(mut c) = state.list_cache.entries.lock() {
                if c.len() >= LIST_CACHE_MAX {
                    c.clear();
                }
                c.insert(
                    key.clone(),
                    CachedList {
                        revision,
                        json: json.clone(),
                        gzip: None,
                    },
                );
            }
            (json, None, revision)
        }
    };
    let builder = Response::builder()
        .header("content-type", "application/json")
        .header("vary", "accept-encoding");
    let response = if gzip_ok && json.len() > 1024 {
        let body = match gz.take() {
            Some(b) => b,
            None => {
                let compressed = {
                    let json = json.clone();
                    tokio::task::spawn_blocking(move || gzip(&json))
                        .await
                        .map_err(|e| ServerError(ApiError::internal(e.to_string())))?
                        .map_err(|e| ServerError(ApiError::internal(e.to_string())))?
                };
                if let Ok(mut c) = state.list_cache.entries.lock() {
                    // Only onto the entry it was made from: a newer list
                    // may have replaced it meanwhile.
                    if let Some(e) = c.get_mut(&key) {
                        if e.revision == revision && e.json.as_ptr() == json.as_ptr() {
                            e.gzip = Some(compressed.clone());
                        }
                    }
                }
                compressed
            }
        };
        builder
            .header("content-encoding", "gzip")
            .body(Body::from(body))
    } else {
        builder.body(Body::from(json))
    };
    response.map_err(|e| ServerError(ApiError::internal(e.to_string())))
}

/// A project collection for a reader of that project: checks the role,
/// then lists (cached, gzip when accepted) or watches until the role goes.
pub async fn list_in_project<T: Object>(
    state: &Arc<AppState>,
    caller: crate::auth::Caller,
    project: String,
    opts: &nimbus_api::ListOptions,
    headers: &axum::http::HeaderMap,
) -> ApiResult<Response> {
    crate::auth::require_role(&state.repo, &caller, &project, nimbus_api::Role::Reader).await?;
    let gzip_ok = accepts_gzip(headers);
    let guard = Guard::role(caller, &project, nimbus_api::Role::Reader);
    list_or_watch_all::<T>(state, Some(&project), opts, gzip_ok, guard).await
}
