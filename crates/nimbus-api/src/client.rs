//! The Nimbus API client: JSON over HTTP/1.1, on the local Unix socket or
//! on TCP with TLS. Every call carries a bearer token.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
pub use hyper::Method;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{ApiError, ErrorCode, ErrorResponse};

/// Where the API is served.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// The local socket, e.g. `/run/nimbus/api.sock`.
    Unix(PathBuf),
    /// `host:port` with TLS; `ca_pem` is the certificate to trust (the
    /// server's self-signed one), otherwise the system roots are not used
    /// and the connection fails.
    Https {
        addr: String,
        server_name: String,
        ca_pem: Vec<u8>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("cannot reach the Nimbus API at {endpoint}: {error}; is `nimbus up` running?")]
    Connect {
        endpoint: String,
        error: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("HTTP error talking to {endpoint}: {message}; a change asked for may or may not have been made: look (`get`/`list`) before asking again")]
    Http { endpoint: String, message: String },
    #[error("the server sent a response that is not valid JSON for {what}: {message}")]
    Decode { what: String, message: String },
    #[error("the server at {endpoint} closed the connection while the request was still being sent ({error}) and sent no answer; the server's log says why")]
    SendInterrupted {
        endpoint: String,
        error: std::io::Error,
    },
}

impl ClientError {
    /// The API error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code),
            _ => None,
        }
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How long connecting (TCP and TLS) to one endpoint may take before the
/// next endpoint is tried.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One endpoint and the TLS configuration that trusts its server.
struct Target {
    endpoint: Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A client of one server or of several sharing one store: each call goes
/// to the endpoint that answered last, and moves on to the next one when
/// that cannot be connected to (so the request certainly did not reach
/// it). A GET whose connection breaks before the answer is also sent again
/// to the next endpoint; other calls are not, as they may have been applied.
#[derive(Clone)]
pub struct Client {
    targets: Arc<[Target]>,
    /// Index of the endpoint tried first.
    preferred: Arc<AtomicUsize>,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoints: Vec<&Endpoint> = self.targets.iter().map(|t| &t.endpoint).collect();
        f.debug_struct("Client")
            .field("endpoints", &endpoints)
            .finish()
    }
}

impl Client {
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Result<Client, ClientError> {
        Client::with_endpoints(vec![endpoint], token)
    }

    /// A client that fails over between `endpoints`, tried in order.
    pub fn with_endpoints(
        endpoints: Vec<Endpoint>,
        token: Option<String>,
    ) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Tls(
                "no API endpoint given; pass e.g. --endpoint https://10.0.0.1:7443,https://10.0.0.2:7443".into(),
            ));
        }
        let targets = endpoints
            .into_iter()
            .map(|endpoint| {
                let tls = match &endpoint {
                    Endpoint::Unix(_) => None,
                    Endpoint::Https { ca_pem, .. } => Some(Arc::new(tls_config(ca_pem)?)),
                };
                Ok(Target { endpoint, tls })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Client {
            targets: targets.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            token,
        })
    }

    /// The endpoint calls go to first (the one that answered last).
    pub fn endpoint_label(&self) -> String {
        self.label(self.preferred.load(Ordering::Relaxed))
    }

    fn label(&self, at: usize) -> String {
        match &self.targets[at % self.targets.len()].endpoint {
            Endpoint::Unix(p) => format!("unix:{}", p.display()),
            Endpoint::Https { addr, .. } => format!("https://{addr}"),
        }
    }

    /// Every endpoint, comma-separated, for messages.
    fn all_labels(&self) -> String {
        (0..self.targets.len())
            .map(|at| self.label(at))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A connection to the first endpoint that takes one, starting from the
    /// preferred one, and which endpoint that is.
    async fn connect(&self) -> Result<(Box<dyn Io>, usize), ClientError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let count = self.targets.len();
        let mut last_error = None;
        for at in (first..first + count).map(|n| n % count) {
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, self.connect_to(at)).await;
            let error = match attempt {
                Ok(Ok(io)) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok((io, at));
                }
                Ok(Err(ClientError::Connect { error, .. })) => error,
                Ok(Err(other)) => return Err(other),
                Err(_) => std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
                ),
            };
            last_error = Some(error);
        }
        let error = last_error.unwrap_or_else(|| std::io::Error::other("no endpoint"));
        Err(ClientError::Connect {
            endpoint: if count == 1 {
                self.label(0)
            } else {
                format!("any of {}", self.all_labels())
            },
            error,
        })
    }

    async fn connect_to(&self, at: usize) -> Result<Box<dyn Io>, ClientError> {
        let label = self.label(at);
        let connect_err = |error| ClientError::Connect {
            endpoint: label.clone(),
            error,
        };
        let target = &self.targets[at];
        match &target.endpoint {
            Endpoint::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect_err)?;
                Ok(Box::new(s))
            }
            Endpoint::Https {
                addr, server_name, ..
            } => {
                let tcp = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(connect_err)?;
                let _ = tcp.set_nodelay(true);
                let config = target
                    .tls
                    .clone()
                    .ok_or_else(|| ClientError::Tls("no TLS configuration".into()))?;
                let name = rustls::pki_types::ServerName::try_from(server_name.clone())
                    .map_err(|e| ClientError::Tls(format!("server name {server_name:?}: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(connect_err)?;
                Ok(Box::new(tls))
            }
        }
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: &str,
    ) -> Result<Request<Body>, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type)
            // Large lists come compressed (about a tenth of the bytes).
            .header("accept-encoding", "gzip");
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        req.body(body).map_err(|e| ClientError::Http {
            endpoint: self.endpoint_label(),
            message: e.to_string(),
        })
    }

    /// Send a request and return the raw response (errors already mapped).
    /// A GET whose connection breaks before an answer goes to the next
    /// endpoint, once.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, ClientError> {
        let again = (req.method() == Method::GET && self.targets.len() > 1)
            .then(|| (req.uri().clone(), req.headers().clone()));
        let (io, at) = self.connect().await?;
        let result = self.send_on(io, at, req).await;
        match (result, again) {
            (Err(ClientError::Http { .. }), Some((uri, headers))) => {
                let next = (at + 1) % self.targets.len();
                self.preferred.store(next, Ordering::Relaxed);
                let mut retry = Request::new(full(Vec::new()));
                *retry.uri_mut() = uri;
                *retry.headers_mut() = headers;
                let (io, at) = self.connect().await?;
                self.send_on(io, at, retry).await
            }
            (result, _) => result,
        }
    }

    /// Send a request whose body is long: if the server answers and closes
    /// the connection before the body is all sent (an upload refused
    /// early), the caller gets that answer rather than the write's error.
    async fn send_long_body(&self, req: Request<Body>) -> Result<Response<Incoming>, ClientError> {
        let (io, at) = self.connect().await?;
        let io = HoldWritesAfterPeerClosed::new(io);
        let write_error = io.write_error.clone();
        let result = self.send_on(Box::new(io), at, req).await;
        match (result, take_write_error(&write_error)) {
            (Err(ClientError::Http { .. }), Some(error)) => Err(ClientError::SendInterrupted {
                endpoint: self.label(at),
                error,
            }),
            (result, _) => result,
        }
    }

    /// Send `req` on `io`, a connection to endpoint `at`.
    async fn send_on(
        &self,
        io: Box<dyn Io>,
        at: usize,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, ClientError> {
        let host = match &self.targets[at].endpoint {
            Endpoint::Unix(_) => "localhost".to_string(),
            Endpoint::Https { addr, .. } => addr.clone(),
        };
        let host = hyper::header::HeaderValue::from_str(&host).map_err(|e| ClientError::Http {
            endpoint: self.label(at),
            message: format!("the address {host:?} is not a valid Host header: {e}"),
        })?;
        req.headers_mut().insert(hyper::header::HOST, host);
        let label = self.label(at);
        let http_err = |e: hyper::Error| ClientError::Http {
            endpoint: label.clone(),
            message: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http_err)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let resp = sender.send_request(req).await.map_err(http_err)?;
        if resp.status().is_success() || resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(resp);
        }
        Err(error_from_response(resp).await.into())
    }

    pub async fn request_bytes(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let body = full(body.unwrap_or_default());
        let req = self.build(method, path, body, "application/json")?;
        let resp = self.send(req).await?;
        self.body_bytes(resp).await
    }

    /// The whole body of a response, decompressed if the server gzipped it.
    async fn body_bytes(&self, resp: Response<Incoming>) -> Result<Bytes, ClientError> {
        let gzipped = resp
            .headers()
            .get("content-encoding")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let label = self.endpoint_label();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http {
                endpoint: label.clone(),
                message: e.to_string(),
            })?
            .to_bytes();
        if !gzipped {
            return Ok(bytes);
        }
        let mut out = Vec::with_capacity(bytes.len() * 8);
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
            .map_err(|e| ClientError::Http {
                endpoint: label,
                message: format!("the compressed response is corrupt: {e}"),
            })?;
        Ok(Bytes::from(out))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let bytes = self.request_bytes(Method::GET, path, None).await?;
        decode(path, &bytes)
    }

    /// Every item of a collection, page by page (`path` may carry a query,
    /// but no `limit` or `continue`). The revision is the first page's:
    /// a watch from it may repeat later changes, never miss one.
    pub async fn list_all<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<crate::ResourceList<T>, ClientError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut all: crate::ResourceList<T> = self.get(&format!("{path}{sep}limit=5000")).await?;
        let mut next = all.continue_token.take();
        let mut seen = std::collections::HashSet::new();
        while let Some(token) = next {
            if !seen.insert(token.clone()) {
                return Err(ClientError::Http {
                    endpoint: path.to_string(),
                    message: format!("the server repeated the continue token {token:?}"),
                });
            }
            let page: crate::ResourceList<T> = self
                .get(&format!(
                    "{path}{sep}limit=5000&continue={}",
                    query_escape(&token)
                ))
                .await?;
            all.items.extend(page.items);
            next = page.continue_token;
        }
        Ok(all)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.with_body(Method::POST, path, body).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.with_body(Method::PUT, path, body).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let bytes = self.request_bytes(Method::DELETE, path, None).await?;
        decode(path, &bytes)
    }

    async fn with_body<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            what: path.to_string(),
            message: e.to_string(),
        })?;
        let bytes = self.request_bytes(method, path, Some(json)).await?;
        decode(path, &bytes)
    }

    /// Upload a body from a stream of chunks (image import).
    pub async fn upload<S, T>(&self, path: &str, chunks: S) -> Result<T, ClientError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
        T: DeserializeOwned,
    {
        let body = BoxBody::new(StreamBody::new(chunks.map(|c| c.map(Frame::data))));
        let req = self.build(Method::POST, path, body, "application/octet-stream")?;
        let resp = self.send_long_body(req).await?;
        let bytes = self.body_bytes(resp).await?;
        decode(path, &bytes)
    }

    /// A streaming GET (watch, logs --follow): the body as chunks.
    pub async fn stream(
        &self,
        path: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, ClientError>>, ClientError> {
        let req = self.build(Method::GET, path, full(Vec::new()), "application/json")?;
        let resp = self.send(req).await?;
        let label = self.endpoint_label();
        Ok(resp.into_body().into_data_stream().map(move |r| {
            r.map_err(|e| ClientError::Http {
                endpoint: label.clone(),
                message: e.to_string(),
            })
        }))
    }

    /// A JSON-lines stream decoded item by item.
    pub async fn watch_lines<T: DeserializeOwned + Send + 'static>(
        &self,
        path: &str,
    ) -> Result<impl Stream<Item = Result<T, ClientError>>, ClientError> {
        let chunks = self.stream(path).await?;
        let path = path.to_string();
        Ok(lines(chunks).map(move |line| {
            let line = line?;
            decode::<T>(&path, &line)
        }))
    }

    /// POST that upgrades the connection to a raw byte stream (exec).
    pub async fn upgrade<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            what: path.to_string(),
            message: e.to_string(),
        })?;
        let mut req = self.build(Method::POST, path, full(json), "application/json")?;
        req.headers_mut().insert(
            "connection",
            hyper::header::HeaderValue::from_static("upgrade"),
        );
        req.headers_mut().insert(
            "upgrade",
            hyper::header::HeaderValue::from_static("nimbus-exec"),
        );
        let resp = self.send(req).await?;
        let label = self.endpoint_label();
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| ClientError::Http {
                endpoint: label,
                message: format!("upgrade to an exec stream failed: {e}"),
            })?;
        Ok(TokioIo::new(upgraded))
    }
}

/// The connection's I/O, except that once a write fails because the server
/// closed its end (EPIPE, ECONNRESET), that error is recorded and every
/// later write waits forever instead of failing. hyper gives up a request
/// at its first write error, even when the server's answer is already
/// waiting to be read; with the writes held, hyper keeps reading, so that
/// answer (a 413 or 422 to an upload the server refused part-way) reaches
/// the caller. When no answer comes the read side ends, the request fails,
/// and [`Client::send_long_body`] reports the recorded write error.
struct HoldWritesAfterPeerClosed {
    inner: Box<dyn Io>,
    write_error: Arc<std::sync::Mutex<Option<std::io::Error>>>,
}

impl HoldWritesAfterPeerClosed {
    fn new(inner: Box<dyn Io>) -> Self {
        HoldWritesAfterPeerClosed {
            inner,
            write_error: Arc::default(),
        }
    }

    fn peer_closed(&self) -> bool {
        self.write_error.lock().map(|e| e.is_some()).unwrap_or(true)
    }

    /// Passes `result` on, unless it says the peer closed the connection:
    /// then it is recorded and the write waits (see the type's comment).
    fn hold_if_peer_closed<T>(
        &self,
        result: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        match result {
            std::task::Poll::Ready(Err(e))
                if matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted) =>
            {
                if let Ok(mut slot) = self.write_error.lock() {
                    slot.get_or_insert(e);
                }
                std::task::Poll::Pending
            }
            other => other,
        }
    }
}

fn take_write_error(slot: &std::sync::Mutex<Option<std::io::Error>>) -> Option<std::io::Error> {
    slot.lock().ok().and_then(|mut e| e.take())
}

impl AsyncRead for HoldWritesAfterPeerClosed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for HoldWritesAfterPeerClosed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.peer_closed() {
            return std::task::Poll::Pending;
        }
        let result = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.hold_if_peer_closed(result)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.peer_closed() {
            return std::task::Poll::Pending;
        }
        let result = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.hold_if_peer_closed(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.peer_closed() {
            return std::task::Poll::Pending;
        }
        let result = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.hold_if_peer_closed(result)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.peer_closed() {
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn full(bytes: Vec<u8>) -> Body {
    BoxBody::new(Full::new(Bytes::from(bytes)).map_err(|never| match never {}))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
        what: what.to_string(),
        message: e.to_string(),
    })
}

async fn error_from_response(resp: Response<Incoming>) -> ApiError {
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    match serde_json::from_slice::<ErrorResponse>(&bytes) {
        Ok(body) => body.error.into(),
        Err(_) => ApiError::new(
            ErrorCode::from_http_status(status.as_u16()),
            format!(
                "the server answered {status}: {}",
                String::from_utf8_lossy(&bytes).trim()
            ),
        ),
    }
}

/// Split a chunk stream into lines (without the newline).
pub fn lines<S>(chunks: S) -> impl Stream<Item = Result<Bytes, ClientError>>
where
    S: Stream<Item = Result<Bytes, ClientError>>,
{
    futures::stream::unfold(
        (Box::pin(chunks), Vec::<u8>::new(), false),
        |(mut chunks, mut buf, mut done)| async move {
            loop {
                if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let line = Bytes::from(line[..line.len() - 1].to_vec());
                    if line.is_empty() {
                        continue;
                    }
                    return Some((Ok(line), (chunks, buf, done)));
                }
                if done {
                    if buf.is_empty() {
                        return None;
                    }
                    let rest = Bytes::from(std::mem::take(&mut buf));
                    return Some((Ok(rest), (chunks, buf, done)));
                }
                match chunks.next().await {
                    Some(Ok(c)) => buf.extend_from_slice(&c),
                    Some(Err(e)) => {
                        done = true;
                        return Some((Err(e), (chunks, buf, done)));
                    }
                    None => done = true,
                }
            }
        },
    )
}

fn tls_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut reader = std::io::BufReader::new(ca_pem);
    for cert in rustls_pemfile::certs(&mut reader) {
        let cert =
            cert.map_err(|e| ClientError::Tls(format!("reading the CA certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Tls(format!("adding the CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Tls(
            "no certificate found in the CA file; pass the server's cert.pem".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Percent-encode a query value (everything but unreserved characters).
pub fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A listening socket in a fresh directory under the temp dir.
    fn listener_dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("nimbus-client-test-{}-{name}", std::process::id()))
    }

    fn listener(name: &str) -> (tokio::net::UnixListener, PathBuf) {
        let dir = listener_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("api.sock");
        let l = tokio::net::UnixListener::bind(&path).expect("bind");
        (l, path)
    }

    /// Accepts one connection, reads about `read_first` bytes of the
    /// request, writes `answer` and closes with the rest unread.
    async fn refuse_part_way(l: tokio::net::UnixListener, read_first: usize, answer: &[u8]) {
        let (mut conn, _) = l.accept().await.expect("accept");
        let mut buf = vec![0u8; 64 << 10];
        let mut read = 0;
        while read < read_first {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
        let _ = conn.write_all(answer).await;
        let _ = conn.flush().await;
    }

    /// 256 MiB of zeros: far more than a socket buffers.
    fn long_body() -> impl Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static {
        let chunk = Bytes::from(vec![0u8; 64 << 10]);
        futures::stream::iter(std::iter::repeat_n(chunk, 4096).map(Ok))
    }

    #[tokio::test]
    async fn an_upload_refused_part_way_gets_the_servers_answer() {
        let (l, path) = listener("answer");
        let server = tokio::spawn(async move {
            refuse_part_way(
                l,
                1 << 20,
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 27\r\nconnection: close\r\n\r\nthe archive is far too big\n",
            )
            .await
        });
        let client = Client::new(Endpoint::Unix(path.clone()), None).expect("client");
        let result = client
            .upload::<_, serde_json::Value>("/v1/upload", long_body())
            .await;
        server.await.expect("server");
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        match result {
            Err(ClientError::Api(e)) => {
                assert!(
                    e.message.contains("413") && e.message.contains("far too big"),
                    "not the server's answer: {e}"
                )
            }
            other => panic!("expected the server's 413, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_upload_cut_off_without_an_answer_says_so() {
        let (l, path) = listener("silent");
        let server = tokio::spawn(async move { refuse_part_way(l, 1 << 20, b"").await });
        let client = Client::new(Endpoint::Unix(path.clone()), None).expect("client");
        let result = client
            .upload::<_, serde_json::Value>("/v1/upload", long_body())
            .await;
        server.await.expect("server");
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        match result {
            Err(e @ ClientError::SendInterrupted { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("closed the connection") && text.contains("no answer"),
                    "{text}"
                );
            }
            other => panic!("expected SendInterrupted, got {other:?}"),
        }
    }

    /// Accepts `count` connections on `l`, each answered with `answer` and
    /// closed after its request head arrived.
    async fn answer_each(l: tokio::net::UnixListener, count: usize, answer: &'static [u8]) {
        for _ in 0..count {
            let (mut conn, _) = l.accept().await.expect("accept");
            read_request_head(&mut conn).await;
            let _ = conn.write_all(answer).await;
        }
    }

    /// Reads until the end of a request's head (or the connection's).
    async fn read_request_head(conn: &mut tokio::net::UnixStream) {
        let mut buf = vec![0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[tokio::test]
    async fn calls_move_on_to_the_next_endpoint_when_one_cannot_be_reached() {
        let (l, live) = listener("failover-live");
        let dead = live.with_file_name("nobody-listens.sock");
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}";
        let server = tokio::spawn(answer_each(l, 2, ok));
        let client = Client::with_endpoints(
            vec![Endpoint::Unix(dead.clone()), Endpoint::Unix(live.clone())],
            None,
        )
        .expect("client");
        // A POST too: it never reached the dead endpoint, so it may move on.
        let got: serde_json::Value = client.get("/v1/health").await.expect("get");
        let posted: serde_json::Value = client
            .post("/v1/projects", &serde_json::json!({}))
            .await
            .expect("post");
        server.await.expect("server");
        assert_eq!(
            (got["ok"].as_bool(), posted["ok"].as_bool()),
            (Some(true), Some(true))
        );
        assert_eq!(client.endpoint_label(), format!("unix:{}", live.display()));

        // Nothing reachable: the error names every endpoint.
        let err = client
            .get::<serde_json::Value>("/v1/health")
            .await
            .unwrap_err();
        if let Some(dir) = live.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let text = err.to_string();
        assert!(
            text.contains(&dead.display().to_string())
                && text.contains(&live.display().to_string()),
            "{text}"
        );
    }

    /// Accepts one connection, reads the request head and closes without
    /// answering: a server going away mid-call.
    async fn vanish_mid_call(l: tokio::net::UnixListener) {
        let (mut conn, _) = l.accept().await.expect("accept");
        read_request_head(&mut conn).await;
    }

    /// A client of two servers: `going` first, then `staying`.
    fn client_of(going: &std::path::Path, staying: &std::path::Path) -> Client {
        let endpoints = vec![
            Endpoint::Unix(going.to_path_buf()),
            Endpoint::Unix(staying.to_path_buf()),
        ];
        Client::with_endpoints(endpoints, None).expect("client")
    }

    #[tokio::test]
    async fn a_get_cut_off_by_a_server_going_away_is_sent_to_the_next_one_and_a_post_is_not() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}";
        let (first, going) = listener("midcall-going");
        let (second, staying) = listener("midcall-staying");
        let going_away = tokio::spawn(vanish_mid_call(first));
        let answering = tokio::spawn(answer_each(second, 1, ok));
        let got: serde_json::Value = client_of(&going, &staying)
            .get("/v1/instances")
            .await
            .expect("the GET went to the other server");
        assert_eq!(got["ok"].as_bool(), Some(true));
        going_away.await.expect("first server");
        answering.await.expect("second server");

        // A POST the server may have applied before going away is not
        // sent again (the other server would have answered 200): the
        // caller hears it was cut off.
        let (first, going) = listener("midcall-post-going");
        let (second, staying) = listener("midcall-post-staying");
        let going_away = tokio::spawn(vanish_mid_call(first));
        let answering = tokio::spawn(answer_each(second, 1, ok));
        let err = client_of(&going, &staying)
            .post::<_, serde_json::Value>("/v1/projects", &serde_json::json!({}))
            .await
            .expect_err("a POST cut off mid-call is not resent");
        assert!(matches!(err, ClientError::Http { .. }), "{err:?}");
        going_away.await.expect("first server");
        assert!(
            !answering.is_finished(),
            "the POST reached the other server"
        );
        answering.abort();
        for name in ["going", "staying", "post-going", "post-staying"] {
            let _ = std::fs::remove_dir_all(listener_dir(&format!("midcall-{name}")));
        }
    }
}
