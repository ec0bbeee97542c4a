//! Streaming an instance's log files: the tail of what is there, then,
//! with follow, new lines until the reader drops the stream (the server
//! ends a followed log when the instance stops).

use std::collections::VecDeque;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const POLL: Duration = Duration::from_millis(100);

async fn read_lines(path: &PathBuf) -> Vec<String> {
    match tokio::fs::read(path).await {
        Ok(data) => String::from_utf8_lossy(&data)
            .lines()
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    }
}

pub fn stream(
    files: Vec<PathBuf>,
    tail: Option<usize>,
    follow: bool,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    async_stream(move |tx| async move {
        let mut lines: VecDeque<String> = VecDeque::new();
        for f in &files {
            lines.extend(read_lines(f).await);
            if let Some(t) = tail {
                while lines.len() > t {
                    lines.pop_front();
                }
            }
        }
        let mut out = String::new();
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
            return;
        }
        if !follow {
            return;
        }
        let Some(current) = files.last().cloned() else {
            return;
        };
        let mut offset = tokio::fs::metadata(&current)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        loop {
            tokio::time::sleep(POLL).await;
            let len = tokio::fs::metadata(&current)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            if len < offset {
                // Rotated: the current file started again.
                offset = 0;
            }
            if len > offset {
                if let Ok(mut f) = tokio::fs::File::open(&current).await {
                    if f.seek(SeekFrom::Start(offset)).await.is_ok() {
                        let mut buf = Vec::with_capacity((len - offset) as usize);
                        if let Ok(n) = (&mut f).take(len - offset).read_to_end(&mut buf).await {
                            offset += n as u64;
                            if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    })
}

/// Log streams whose producing task is still alive (tests and metrics).
static LIVE_PRODUCERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many log streams still have a producing task.
pub fn live_producers() -> usize {
    LIVE_PRODUCERS.load(std::sync::atomic::Ordering::Relaxed)
}

struct LiveProducer;

impl LiveProducer {
    fn new() -> LiveProducer {
        LIVE_PRODUCERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        LiveProducer
    }
}

impl Drop for LiveProducer {
    fn drop(&mut self) {
        LIVE_PRODUCERS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A tiny generator: run `f` with a sender, yield what it sends. The task
/// running `f` ends as soon as the stream is dropped, even if `f` is
/// waiting for something else (a quiet log never sends, so it would never
/// notice the client had gone).
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = std::io::Result<Bytes>> + Send
where
    F: FnOnce(tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let gone = tx.clone();
    let producer = f(tx);
    let live = LiveProducer::new();
    tokio::spawn(async move {
        let _live = live;
        tokio::select! {
            _ = producer => {}
            _ = gone.closed() => {}
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// A follower of a quiet log (its producer never sends) must end when
    /// the client drops the stream.
    #[tokio::test]
    async fn a_dropped_stream_ends_its_quiet_producer() {
        let ended = std::sync::Arc::new(tokio::sync::Notify::new());
        let (tx_flag, flag) = (ended.clone(), ended);
        struct SetOnDrop(std::sync::Arc<tokio::sync::Notify>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.notify_one();
            }
        }
        // Moved into the producer, so dropped exactly when it is.
        let ended_guard = SetOnDrop(tx_flag);
        let stream = super::async_stream(move |_tx| async move {
            let _ended = ended_guard;
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        drop(stream);
        tokio::time::timeout(Duration::from_secs(10), flag.notified())
            .await
            .expect("the producer must end once its stream is dropped");
    }
}
