//! Caps on concurrent API connections, below the process's open-file
//! limit: a flood of connections on the TLS port must not take the file
//! descriptors the local socket (the agent, the CLI), the store and the
//! shims need. A connection past its listener's cap is closed at once.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many connections each listener may hold at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub tls: usize,
    pub local: usize,
}

/// Split the open-file limit: a reserve for the store, image files, shim
/// sockets and logs, a quarter of the rest for the local socket, the
/// remainder for TLS (or `tls_override` when configured, never above it).
pub fn caps_for(open_file_limit: u64, tls_override: Option<usize>) -> ConnectionCaps {
    let limit = usize::try_from(open_file_limit).unwrap_or(usize::MAX);
    let reserve = (limit / 10).max(256);
    let usable = limit.saturating_sub(reserve).max(64);
    let local = (usable / 4).max(16);
    let tls_default = usable.saturating_sub(local).max(16);
    ConnectionCaps {
        tls: tls_override.map_or(tls_default, |n| n.clamp(1, tls_default)),
        local,
    }
}

/// The soft open-file limit of this process.
pub fn open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; nothing else is touched.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc == 0 {
        lim.rlim_cur
    } else {
        // The common default; caps derived from it are conservative.
        1024
    }
}

/// A connection holding its place under a cap until it is dropped.
pub struct Limited<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
}

/// Take a place for `io`, or `None` when the cap is reached.
pub fn admit<T>(permits: &Arc<Semaphore>, io: T, listener: &'static str) -> Option<Limited<T>> {
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    match Arc::clone(permits).try_acquire_owned() {
        Ok(permit) => Some(Limited {
            io,
            _permit: permit,
        }),
        Err(_) => {
            // One line per thousand refusals: a flood must not flood the log.
            let n = REFUSED.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                tracing::warn!(
                    listener,
                    refused = n + 1,
                    "connection refused: the listener is at its connection cap"
                );
            }
            None
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The local socket's listener, capped.
pub struct LimitedUnixListener {
    pub inner: tokio::net::UnixListener,
    pub permits: Arc<Semaphore>,
}

impl axum::serve::Listener for LimitedUnixListener {
    type Io = Limited<tokio::net::UnixStream>;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            // Accepting and closing (rather than not accepting) keeps the
            // kernel's backlog from filling with connections we won't serve.
            if let Some(limited) = admit(&self.permits, io, "local socket") {
                return (limited, addr);
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An `axum_server` acceptor that caps TLS connections; it runs on the TCP
/// stream before the TLS handshake, so refused connections cost no crypto.
#[derive(Clone)]
pub struct LimitedAcceptor<A> {
    pub inner: A,
    pub permits: Arc<Semaphore>,
}

impl<A, S> axum_server::accept::Accept<tokio::net::TcpStream, S> for LimitedAcceptor<A>
where
    A: axum_server::accept::Accept<tokio::net::TcpStream, S> + Clone + Send + 'static,
    A::Future: Send,
    A::Stream: Send,
    A::Service: Send,
    S: Send + 'static,
{
    type Stream = Limited<A::Stream>;
    type Service = A::Service;
    type Future = Pin<
        Box<dyn std::future::Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>,
    >;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let Some(placed) = admit(&self.permits, (), "tls") else {
            return Box::pin(std::future::ready(Err(io::Error::other(
                "the TLS listener is at its connection cap",
            ))));
        };
        let inner = self.inner.clone();
        Box::pin(async move {
            let (io, service) = inner.accept(stream, service).await?;
            Ok((
                Limited {
                    io,
                    _permit: placed._permit,
                },
                service,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_room_below_the_open_file_limit() {
        let caps = caps_for(20_000, None);
        assert!(caps.tls + caps.local < 20_000 - 1000, "{caps:?}");
        assert!(caps.tls > 10_000 && caps.local > 1000, "{caps:?}");
        assert_eq!(caps_for(20_000, Some(500)).tls, 500);
        assert_eq!(caps_for(20_000, Some(1_000_000)).tls, caps.tls);
        let small = caps_for(1024, None);
        assert!(small.tls + small.local < 1024, "{small:?}");
    }

    #[test]
    fn a_full_cap_refuses_until_a_connection_ends() {
        let permits = Arc::new(Semaphore::new(1));
        let first = admit(&permits, 1u8, "test").expect("a place");
        assert!(admit(&permits, 2u8, "test").is_none());
        drop(first);
        assert!(admit(&permits, 3u8, "test").is_some());
    }
}
