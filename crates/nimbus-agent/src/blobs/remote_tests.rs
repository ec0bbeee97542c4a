//! The fetcher against a tiny fake server on a Unix socket, which can send
//! bytes other than those asked for: what a real server never does.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nimbus_api::client::{Client, Endpoint};
use nimbus_api::{Image, ImageSpec, Metadata};
use nimbus_image::{ImageStore, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{BlobSource, RemoteBlobs};
use crate::agent::error::AgentError;

use nimbus_image::testing::one_file_rootfs_tar as rootfs_tar;

/// Answers every request with `body`, after `delay`; counts the requests.
fn serve(sock: &Path, body: Vec<u8>, delay: Duration) -> Arc<AtomicUsize> {
    let listener = tokio::net::UnixListener::bind(sock).expect("bind");
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                tokio::time::sleep(delay).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.write_all(&body).await;
            });
        }
    });
    served
}

/// An image record of `data` imported into a throwaway store.
fn image_of(data: &[u8]) -> Image {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path(), Limits::default()).expect("store");
    let imported = store.import(data, &mut |_| {}).expect("import");
    Image {
        metadata: Metadata::new("web", Some("ops")),
        spec: ImageSpec::default(),
        status: imported.to_api(),
    }
}

fn fetcher(dir: &Path, sock: &Path) -> RemoteBlobs {
    let store = ImageStore::open(&dir.join("images"), Limits::default()).expect("store");
    let client = Client::new(Endpoint::Unix(sock.to_path_buf()), Some("t".into())).expect("client");
    RemoteBlobs::new(Arc::new(store), client, Duration::ZERO)
}

fn entries(root: &Path) -> Vec<String> {
    ["blobs/sha256", "layers", "tmp"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(root.join(sub)).expect("list").flatten())
        .map(|e| e.path().display().to_string())
        .collect()
}

#[tokio::test]
async fn a_corrupted_transfer_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("api.sock");
    let image = image_of(&rootfs_tar("the real layer"));
    serve(&sock, rootfs_tar("something else"), Duration::ZERO);
    let blobs = fetcher(dir.path(), &sock);
    let err = blobs.layer_dirs(&image).await.expect_err("a wrong blob");
    assert!(matches!(err, AgentError::BlobRefused { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&image.status.layers[0]), "{text}");
    assert!(text.contains("nothing was kept"), "{text}");
    assert_eq!(entries(&dir.path().join("images")), Vec::<String>::new());
    assert_eq!(blobs.fetched_count(), 0);
}

#[tokio::test]
async fn concurrent_starts_fetch_a_shared_blob_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("api.sock");
    let data = rootfs_tar("shared layer");
    let image = image_of(&data);
    let served = serve(&sock, data, Duration::from_millis(200));
    let blobs = fetcher(dir.path(), &sock);
    let (a, b, c) = tokio::join!(
        blobs.layer_dirs(&image),
        blobs.layer_dirs(&image),
        blobs.layer_dirs(&image)
    );
    let dirs = a.expect("first start");
    assert_eq!(dirs, b.expect("second start"));
    assert_eq!(dirs, c.expect("third start"));
    assert_eq!(
        served.load(Ordering::SeqCst),
        1,
        "the blob was fetched more than once"
    );
    assert_eq!(blobs.fetched_count(), 1);
    assert_eq!(
        std::fs::read_to_string(dirs[0].join("data.txt")).expect("layer file"),
        "shared layer"
    );
    // Stored now: a later start asks the servers nothing.
    blobs.layer_dirs(&image).await.expect("a later start");
    assert_eq!(served.load(Ordering::SeqCst), 1);
}
