//! Blobs: HEAD/GET (with a single byte range) and DELETE. A repository
//! serves only the blobs pushed or mounted into it, so a digest guessed from
//! another project's image is BLOB_UNKNOWN.

use std::io::SeekFrom;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::endpoint::RepoName;
use super::error::{Code, RegResult, RegistryError};
use super::{records, Ctx};

pub fn blob_unknown(name: &RepoName, digest: &str) -> RegistryError {
    RegistryError::new(
        Code::BlobUnknown,
        format!(
            "blob {digest} is not in repository {}; push it first (or mount it from another \
             repository of the project)",
            name.full()
        ),
    )
}

/// `start-end` (inclusive) of a `Range: bytes=start-end` header within `size`.
fn parse_range(headers: &HeaderMap, size: u64) -> RegResult<Option<(u64, u64)>> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let bad = || {
        RegistryError::new(
            Code::RangeInvalid,
            format!("Range {value:?} is not one satisfiable `bytes=<start>-[<end>]` range of a {size}-byte blob"),
        )
    };
    let spec = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("bytes="))
        .ok_or_else(bad)?;
    let (start, end) = spec.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.parse().map_err(|_| bad())?;
    let end: u64 = match end {
        "" => size.saturating_sub(1),
        e => e
            .parse::<u64>()
            .map_err(|_| bad())?
            .min(size.saturating_sub(1)),
    };
    if start > end || start >= size {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

pub async fn get(
    ctx: &Ctx,
    name: &RepoName,
    digest: &str,
    headers: &HeaderMap,
) -> RegResult<Response> {
    let repo = records::load_existing(&ctx.state, name).await?;
    if !repo.status.blobs.contains_key(digest) {
        return Err(blob_unknown(name, digest));
    }
    let path = ctx.state.images.blob_path(digest).map_err(|e| {
        RegistryError::new(
            Code::BlobUnknown,
            format!(
                "blob {digest} is listed in {} but gone from the image store ({e}); push it again",
                name.full()
            ),
        )
    })?;
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| RegistryError::new(Code::Internal, format!("opening blob {digest}: {e}")))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| RegistryError::new(Code::Internal, format!("reading blob {digest}: {e}")))?
        .len();
    let range = parse_range(headers, size)?;
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", digest)
        .header(header::ACCEPT_RANGES, "bytes");
    let (status, length) = match range {
        None => (StatusCode::OK, size),
        Some((start, end)) => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            file.seek(SeekFrom::Start(start)).await.map_err(|e| {
                RegistryError::new(Code::Internal, format!("seeking in blob {digest}: {e}"))
            })?;
            (StatusCode::PARTIAL_CONTENT, end - start + 1)
        }
    };
    let body = if ctx.method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            file.take(length),
            256 << 10,
        ))
    };
    builder
        .status(status)
        .header(header::CONTENT_LENGTH, length)
        .body(body)
        .map_err(|e| RegistryError::new(Code::Internal, format!("building the response: {e}")))
}

/// Unlinks a blob from the repository; the image store drops it once no
/// repository or image keeps it.
pub async fn delete(ctx: &Ctx, name: &RepoName, digest: &str) -> RegResult<Response> {
    records::load_existing(&ctx.state, name).await?;
    records::change(&ctx.state, name, |status| {
        if status.blobs.remove(digest).is_none() {
            return Err(blob_unknown(name, digest));
        }
        if let Some((manifest, _)) = status
            .manifests
            .iter()
            .find(|(_, m)| m.references.iter().any(|r| r == digest))
        {
            return Err(RegistryError::new(
                Code::Denied,
                format!("blob {digest} is used by manifest {manifest} of {}; delete that manifest first", name.full()),
            ));
        }
        Ok(())
    })
    .await?;
    super::collect_garbage(ctx).await;
    super::empty(StatusCode::ACCEPTED)
}
