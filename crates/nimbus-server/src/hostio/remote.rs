//! Instances on another host, reached through its agent's I/O endpoint
//! (`nimbus agent --io-listen`): HTTPS to the address the host reports,
//! trusting only the certificate hash it reports, each call carrying a
//! one-time ticket the agent consumes (see `tickets`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nimbus_api::exec::ExecRequest;
use nimbus_api::hostio::ticket::{HostIoAction, TICKET_HEADER};
use nimbus_api::hostio::{pinned, ExecStream, HostIo, LogRequest, LogStream};
use nimbus_api::{ApiError, ErrorCode, Host, Instance, Protocol};

use crate::repo::Repo;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RemoteHostIo {
    repo: Repo,
    host: String,
}

/// The upgrade a call asks for (exec and console) or not.
#[derive(Clone, Copy, PartialEq)]
enum Upgrade {
    No,
    Exec,
}

impl RemoteHostIo {
    pub fn new(repo: Repo, host: &str) -> RemoteHostIo {
        RemoteHostIo {
            repo,
            host: host.to_string(),
        }
    }

    /// The host's endpoint and certificate hash, as its agent reported them.
    async fn endpoint(&self) -> Result<(String, String), ApiError> {
        // A host no longer registered (removed, or not yet joined) cannot
        // be reached: unavailable, not a missing resource of the caller's.
        let Some(host) = self
            .repo
            .try_get::<Host>(None, &self.host)
            .await
            .map_err(|e| e.0)?
        else {
            return Err(ApiError::unavailable(format!(
                "host {:?} is not registered (removed, or its agent never joined), so its instances cannot be reached; see `nimbus host list`",
                self.host
            )));
        };
        if host.status.io_endpoint.is_empty() || host.status.io_certificate_sha256.is_empty() {
            return Err(ApiError::unavailable(format!(
                "host {:?} reports no I/O endpoint, so its instances' logs, exec and consoles cannot be reached: restart its agent (`nimbus agent --io-listen IP:PORT`) and check its log for why it could not listen",
                self.host
            )));
        }
        Ok((host.status.io_endpoint, host.status.io_certificate_sha256))
    }

    /// Send `req` to the host's endpoint with a fresh ticket for `action`.
    async fn call(
        &self,
        action: HostIoAction,
        instance: Option<&Instance>,
        mut req: Request<Full<Bytes>>,
        upgrade: Upgrade,
    ) -> Result<Response<Incoming>, ApiError> {
        let (addr, sha256) = self.endpoint().await?;
        let store = self.repo.store.as_ref();
        let id = super::tickets::issue(store, &self.host, action, instance)
            .await
            .map_err(|e| e.0)?;
        let sent = async {
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, pinned::connect(&addr, &sha256))
                .await
                .map_err(|_| format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))?
                .map_err(|e| e.to_string())?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn.with_upgrades());
            let headers = req.headers_mut();
            headers.insert(TICKET_HEADER, id.parse().map_err(|_| "ticket header")?);
            if upgrade == Upgrade::Exec {
                headers.insert("connection", "upgrade".parse().map_err(|_| "header")?);
                headers.insert("upgrade", "nimbus-exec".parse().map_err(|_| "header")?);
            }
            sender.send_request(req).await.map_err(|e| e.to_string())
        };
        let resp = match sent.await {
            Ok(resp) => resp,
            Err(detail) => {
                super::tickets::revoke(store, &self.host, &id).await;
                return Err(ApiError::unavailable(format!(
                    "cannot reach host {:?} ({detail}): its agent must be reachable from this server at {addr} (`nimbus agent --io-listen`); check that it runs and that the network lets this server through",
                    self.host
                )));
            }
        };
        let ok = resp.status().is_success() || resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if ok {
            Ok(resp)
        } else {
            Err(self.error_of(resp).await)
        }
    }

    /// The agent's error answer as an API error, naming the host.
    async fn error_of(&self, resp: Response<Incoming>) -> ApiError {
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<nimbus_api::error::ErrorResponse>(&body)
            .map(|e| e.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        ApiError::new(
            ErrorCode::from_http_status(status),
            format!("host {:?}: {message}", self.host),
        )
    }

    async fn exec_stream(
        &self,
        action: HostIoAction,
        instance: &Instance,
        body: Vec<u8>,
    ) -> Result<Box<dyn ExecStream>, ApiError> {
        let req = request(
            "POST",
            &format!(
                "/v1/io/instances/{}/{}",
                instance.metadata.id,
                action.as_str()
            ),
            body,
        )?;
        let resp = self
            .call(action, Some(instance), req, Upgrade::Exec)
            .await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(ApiError::internal(format!(
                "host {:?} answered {} instead of switching to the exec stream",
                self.host,
                resp.status()
            )));
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(|e| {
            ApiError::unavailable(format!(
                "host {:?}: the {} stream broke: {e}",
                self.host,
                action.as_str()
            ))
        })?;
        Ok(Box::new(TokioIo::new(upgraded)))
    }
}

fn request(method: &str, path: &str, body: Vec<u8>) -> Result<Request<Full<Bytes>>, ApiError> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "nimbus-host-io")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::internal(e.to_string()))
}

#[async_trait::async_trait]
impl HostIo for RemoteHostIo {
    async fn logs(&self, instance: &Instance, req: LogRequest) -> Result<LogStream, ApiError> {
        let mut query = format!("follow={}", req.follow);
        if let Some(tail) = req.tail {
            query.push_str(&format!("&tail={tail}"));
        }
        let path = format!("/v1/io/instances/{}/logs?{query}", instance.metadata.id);
        let http = request("GET", &path, Vec::new())?;
        let resp = self
            .call(HostIoAction::Logs, Some(instance), http, Upgrade::No)
            .await?;
        let frames = http_body_util::BodyStream::new(resp.into_body());
        Ok(Box::pin(frames.filter_map(|frame| async move {
            match frame {
                Ok(f) => f.into_data().ok().map(Ok),
                Err(e) => Some(Err(std::io::Error::other(e))),
            }
        })))
    }

    async fn exec(
        &self,
        instance: &Instance,
        req: &ExecRequest,
    ) -> Result<Box<dyn ExecStream>, ApiError> {
        self.exec_stream(HostIoAction::Exec, instance, to_json(req)?)
            .await
    }

    async fn console(&self, instance: &Instance) -> Result<Box<dyn ExecStream>, ApiError> {
        self.exec_stream(HostIoAction::Console, instance, b"{}".to_vec())
            .await
    }

    async fn set_paused(&self, instance: &Instance, paused: bool) -> Result<(), ApiError> {
        let action = if paused {
            HostIoAction::Pause
        } else {
            HostIoAction::Resume
        };
        let path = format!(
            "/v1/io/instances/{}/{}",
            instance.metadata.id,
            action.as_str()
        );
        let http = request("POST", &path, b"{}".to_vec())?;
        self.call(action, Some(instance), http, Upgrade::No)
            .await
            .map(drop)
    }

    async fn host_port_listeners(
        &self,
        _host: Option<&str>,
        protocol: Protocol,
        port: u16,
    ) -> Result<Vec<SocketAddr>, ApiError> {
        let path = format!(
            "/v1/io/listeners?protocol={}&port={port}",
            protocol.as_str()
        );
        let http = request("GET", &path, Vec::new())?;
        let resp = self
            .call(HostIoAction::Listeners, None, http, Upgrade::No)
            .await?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::unavailable(format!("host {:?}: {e}", self.host)))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::internal(format!(
                "host {:?} answered listeners that do not parse: {e}",
                self.host
            ))
        })
    }
}
