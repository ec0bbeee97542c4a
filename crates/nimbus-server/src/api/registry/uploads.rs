//! Blob uploads: monolithic (`POST ?digest=`), cross-repository mounts
//! within a project (`POST ?mount=&from=`), and sessions (POST, PATCH
//! chunks, PUT `?digest=` to close, GET status, DELETE to cancel). Session
//! data stages under the image store's `tmp/`; a blob reaches `blobs/` only
//! once its bytes hash to the digest the client named.
//!
//! A project with an `image_bytes` quota has every piece of an upload
//! checked before it is written (`crate::image_quota`): past the limit the
//! session is removed and the client gets `DENIED`. A mount within the
//! project costs nothing (the project holds the blob already).

use std::collections::HashMap;
use std::io::Read;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use futures::StreamExt;

use super::endpoint::{check_digest, parse, Endpoint, RepoName};
use super::error::{Code, RegResult, RegistryError};
use super::{blocking, records, Ctx};
use crate::api::images::{drain_rest, ChannelReader, REFUSED_UPLOAD_DRAIN_BYTES};
use crate::image_quota::{self, UploadGuard};

type Query = HashMap<String, String>;

/// Refuses at once a body the client declares larger than the store takes.
fn check_declared_length(ctx: &Ctx, headers: &HeaderMap, already: u64) -> RegResult<()> {
    let limit = ctx.state.images.limits().max_archive_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len.saturating_add(already) > limit => Err(RegistryError::new(
            Code::SizeInvalid,
            format!(
                "the blob would be {} bytes, more than the server's limit of {limit} bytes \
                 (--max-image-bytes); nothing was stored",
                len.saturating_add(already)
            ),
        )),
        _ => Ok(()),
    }
}

/// Streams `body` into `work`, which runs on the blocking pool.
async fn feed<R, F>(body: Body, work: F) -> RegResult<R>
where
    R: Send + 'static,
    F: FnOnce(&mut dyn Read) -> R + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::task::spawn_blocking(move || work(&mut ChannelReader::new(rx)));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let item = chunk.map_err(|e| format!("upload interrupted: {e}"));
        let failed = item.is_err();
        if failed {
            let _ = tx.send(item).await;
            break;
        }
        if tx.send(item).await.is_err() {
            // Refused midway (a quota, a limit): read a little more of
            // what the client still sends so that it gets the answer
            // instead of a reset connection.
            drain_rest(&mut stream, REFUSED_UPLOAD_DRAIN_BYTES).await;
            break;
        }
    }
    drop(tx);
    task.await
        .map_err(|e| RegistryError::new(Code::Internal, format!("upload task failed: {e}")))
}

fn upload_location(name: &RepoName, id: &str) -> String {
    format!("/v2/{}/blobs/uploads/{id}", name.full())
}

/// 201 for a blob now in the repository.
fn created(name: &RepoName, digest: &str) -> RegResult<Response> {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(
            header::LOCATION,
            format!("/v2/{}/blobs/{digest}", name.full()),
        )
        .header("docker-content-digest", digest)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .map_err(|e| RegistryError::new(Code::Internal, format!("building the response: {e}")))
}

/// 202/204 with where the session stands.
fn progress(status: StatusCode, name: &RepoName, id: &str, size: u64) -> RegResult<Response> {
    let mut b = Response::builder()
        .status(status)
        .header(header::LOCATION, upload_location(name, id))
        .header("docker-upload-uuid", id)
        .header(header::CONTENT_LENGTH, 0);
    // `Range: 0-<last byte>`; before the first byte the spec's clients expect `0-0`.
    b = b.header(header::RANGE, format!("0-{}", size.saturating_sub(1)));
    b.body(Body::empty())
        .map_err(|e| RegistryError::new(Code::Internal, format!("building the response: {e}")))
}

/// Links a stored blob into the repository.
async fn link(ctx: &Ctx, name: &RepoName, digest: &str, size: u64) -> RegResult<()> {
    records::change(&ctx.state, name, |status| {
        status.blobs.insert(digest.to_string(), size);
        Ok(())
    })
    .await
    .map(drop)
}

pub async fn start(
    ctx: &Ctx,
    name: &RepoName,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> RegResult<Response> {
    if let (Some(digest), Some(from)) = (query.get("mount"), query.get("from")) {
        if let Some(response) = mount(ctx, name, digest, from).await? {
            return Ok(response);
        }
    }
    check_declared_length(ctx, headers, 0)?;
    let id = uuid::Uuid::new_v4().to_string();
    if let Some(digest) = query.get("digest") {
        check_digest(digest)?;
        let mut guard = quota_guard(ctx, name).await?;
        let images = ctx.state.images.clone();
        let _pushing = ctx.state.image_lock.read().await;
        let (owned_digest, owner) = (digest.clone(), name.full());
        let size = feed(body, move |r| {
            let mut budget = image_quota::budget(&mut guard);
            images.push_blob(&id, &owner, &owned_digest, r, &mut budget)
        })
        .await??;
        link(ctx, name, digest, size).await?;
        return created(name, digest);
    }
    let images = ctx.state.images.clone();
    let (owned_id, owner) = (id.clone(), name.full());
    blocking(move || images.upload_start(&owned_id, &owner)).await?;
    progress(StatusCode::ACCEPTED, name, &id, 0)
}

/// The image quota check of an upload to `name`'s project.
async fn quota_guard(ctx: &Ctx, name: &RepoName) -> RegResult<Option<UploadGuard>> {
    Ok(image_quota::upload_guard(&ctx.state, &name.project).await?)
}

/// Mounts `digest` from repository `from` of the same project; `None` when
/// it cannot be mounted (the client then uploads it).
async fn mount(
    ctx: &Ctx,
    name: &RepoName,
    digest: &str,
    from: &str,
) -> RegResult<Option<Response>> {
    check_digest(digest)?;
    let Ok(Endpoint::Tags(source)) = parse(&format!("{from}/tags/list")) else {
        return Ok(None);
    };
    if source.project != name.project {
        return Ok(None);
    }
    let size = records::load(&ctx.state, &source)
        .await?
        .and_then(|r| r.status.blobs.get(digest).copied());
    let Some(size) = size else {
        return Ok(None);
    };
    link(ctx, name, digest, size).await?;
    created(name, digest).map(Some)
}

/// The session `id` of this repository.
async fn owned_session(ctx: &Ctx, name: &RepoName, id: &str) -> RegResult<u64> {
    let images = ctx.state.images.clone();
    let owned = id.to_string();
    let (owner, size) = blocking(move || {
        Ok::<_, nimbus_image::PushError>((
            images.upload_owner(&owned)?,
            images.upload_size(&owned)?,
        ))
    })
    .await?;
    if owner != name.full() {
        return Err(nimbus_image::PushError::UploadUnknown { id: id.to_string() }.into());
    }
    Ok(size)
}

/// The first byte of `Content-Range: <start>-<end>`, if sent.
fn content_range_start(headers: &HeaderMap) -> RegResult<Option<u64>> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    let start = text
        .trim_start_matches("bytes ")
        .split_once('-')
        .and_then(|(s, _)| s.trim().parse::<u64>().ok());
    start.map(Some).ok_or_else(|| {
        RegistryError::new(
            Code::RangeInvalid,
            format!("Content-Range {text:?} is not `<start>-<end>`"),
        )
    })
}

async fn append(
    ctx: &Ctx,
    name: &RepoName,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> RegResult<u64> {
    let have = owned_session(ctx, name, id).await?;
    if let Err(e) = check_declared_length(ctx, headers, have) {
        let images = ctx.state.images.clone();
        let owned = id.to_string();
        let _ = blocking(move || images.upload_cancel(&owned)).await;
        return Err(e);
    }
    let start = content_range_start(headers)?;
    let mut guard = quota_guard(ctx, name).await?;
    let images = ctx.state.images.clone();
    let owned = id.to_string();
    Ok(feed(body, move |r| {
        let mut budget = image_quota::budget(&mut guard);
        images.upload_append(&owned, start, r, &mut budget)
    })
    .await??)
}

pub async fn patch(
    ctx: &Ctx,
    name: &RepoName,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> RegResult<Response> {
    let size = append(ctx, name, id, headers, body).await?;
    progress(StatusCode::ACCEPTED, name, id, size)
}

pub async fn close(
    ctx: &Ctx,
    name: &RepoName,
    id: &str,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> RegResult<Response> {
    let digest = query.get("digest").ok_or_else(|| {
        RegistryError::new(
            Code::DigestInvalid,
            "closing an upload needs ?digest=sha256:<hex> of the whole blob",
        )
    })?;
    check_digest(digest)?;
    append(ctx, name, id, headers, body).await?;
    let _pushing = ctx.state.image_lock.read().await;
    let images = ctx.state.images.clone();
    let (owned_id, owned_digest) = (id.to_string(), digest.clone());
    let size = blocking(move || images.upload_finish(&owned_id, &owned_digest)).await?;
    link(ctx, name, digest, size).await?;
    created(name, digest)
}

pub async fn status(ctx: &Ctx, name: &RepoName, id: &str) -> RegResult<Response> {
    let size = owned_session(ctx, name, id).await?;
    progress(StatusCode::NO_CONTENT, name, id, size)
}

pub async fn cancel(ctx: &Ctx, name: &RepoName, id: &str) -> RegResult<Response> {
    owned_session(ctx, name, id).await?;
    let images = ctx.state.images.clone();
    let owned = id.to_string();
    blocking(move || images.upload_cancel(&owned)).await?;
    super::empty(StatusCode::NO_CONTENT)
}
