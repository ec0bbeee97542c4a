//! The heartbeat loop against a fake API on a Unix socket that never
//! answers its first request, as a connection lost mid-partition would not.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nimbus_api::client::{Client, Endpoint};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Agent, AgentConfig};
use crate::driver::Drivers;

/// Counts the requests' heads it reads; leaves the first unanswered for
/// ever and answers the others with an empty object.
fn serve_first_unanswered(socket: &std::path::Path) -> Arc<AtomicUsize> {
    let listener = tokio::net::UnixListener::bind(socket).expect("bind the fake API");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    line.clear();
                    match stream.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line.trim().is_empty() => {}
                        Ok(_) => continue,
                    }
                    // The end of a head (a heartbeat's small body follows
                    // and is read as lines that are not empty).
                    if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                        std::future::pending::<()>().await;
                    }
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if stream.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    seen
}

#[tokio::test]
async fn an_unanswered_heartbeat_does_not_hold_up_the_next() {
    let root = tempfile::tempdir().expect("tempdir");
    let socket = root.path().join("api.sock");
    let seen = serve_first_unanswered(&socket);
    let client = Client::new(Endpoint::Unix(socket), None).expect("client");
    let mut config = AgentConfig::new(
        "h1".into(),
        root.path().join("data"),
        root.path().join("no-shim"),
    );
    config.fence_after_ms = Some(600);
    let agent = Agent::with_drivers(config, client, None, Drivers::new(vec![])).expect("agent");
    let beating = agent.clone();
    let heart = tokio::spawn(async move { beating.heartbeat_loop().await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::SeqCst) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the loop is stuck on the unanswered heartbeat: {} request(s) seen",
            seen.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    heart.abort();
}
