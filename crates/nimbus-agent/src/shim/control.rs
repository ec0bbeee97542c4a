//! The control protocol on `<dir>/shim.sock` and the agent's client for it.
//!
//! One connection carries one request: a JSON line tagged by `"op"`, answered by JSON
//! response lines. `subscribe` keeps answering (one line per state change); `exec`
//! turns the connection into a framed byte stream after its first response line:
//! `[kind u8][len u32 BE][payload]`, kinds in [`frame`].

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::state::ShimState;
use super::ShimError;

/// File name of the control socket inside an instance directory.
pub const SOCKET_FILE: &str = "shim.sock";

/// Longest request or response line either side accepts.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Exec stream frame kinds: the protocol of `nimbus_api::exec`, which the
/// server relays unchanged between the CLI and the shim.
pub mod frame {
    pub use nimbus_api::exec::{EXIT, RESIZE, STDERR, STDIN, STDIN_EOF, STDOUT};
    /// Largest payload either side sends or accepts.
    pub const MAX_PAYLOAD: usize = nimbus_api::exec::MAX_FRAME as usize;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ShimRequest {
    Status,
    Subscribe,
    /// SIGTERM, then SIGKILL after `grace_ms` (the spec's `stop_grace_ms` if absent).
    Stop {
        #[serde(default)]
        grace_ms: Option<u64>,
    },
    Exec(ExecRequest),
    /// Virtual machines: stop the vCPUs (QMP `stop`).
    Pause,
    /// Virtual machines: continue the vCPUs (QMP `cont`).
    Resume,
    /// Virtual machines: attach to the serial console; frames follow as for exec.
    Console,
}

/// What to run: the API's exec request, passed through unchanged.
pub use nimbus_api::exec::ExecRequest;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShimResponse {
    State {
        state: ShimState,
    },
    /// The exec'd process runs (host pid); frames follow.
    ExecStarted {
        pid: i32,
    },
    /// The console is attached; frames follow (STDIN in, STDOUT out).
    ConsoleAttached,
    Error {
        message: String,
    },
}

/// Encodes one exec frame.
pub fn encode_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads one exec frame; `Ok(None)` at a clean end of stream.
pub fn read_frame(reader: &mut impl Read) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = frame_len(&header)?;
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload)?;
    Ok(Some((header[0], payload)))
}

/// Async [`read_frame`].
pub async fn read_frame_async(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = frame_len(&header)?;
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    Ok(Some((header[0], payload)))
}

fn frame_len(header: &[u8; 5]) -> std::io::Result<usize> {
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > frame::MAX_PAYLOAD {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("exec frame of {len} bytes exceeds {}", frame::MAX_PAYLOAD),
        ));
    }
    Ok(len)
}

fn decode_response(line: &str, socket: &Path) -> Result<ShimResponse, ShimError> {
    serde_json::from_str(line.trim_end()).map_err(|err| {
        ShimError::Protocol(format!(
            "bad response {:?} from {}: {err}",
            line.trim_end(),
            socket.display()
        ))
    })
}

fn expect_state(resp: ShimResponse) -> Result<ShimState, ShimError> {
    match resp {
        ShimResponse::State { state } => Ok(state),
        ShimResponse::Error { message } => Err(ShimError::Refused(message)),
        other => Err(ShimError::Protocol(format!(
            "expected a state, got {other:?}"
        ))),
    }
}

/// Client of one shim. Each call opens its own connection, so a client is cheap to
/// keep and survives shim restarts of the socket.
#[derive(Debug, Clone)]
pub struct ShimClient {
    socket: PathBuf,
}

impl ShimClient {
    /// Checks that a shim listens at `<instance_dir>/shim.sock`.
    pub fn connect(instance_dir: &Path) -> Result<ShimClient, ShimError> {
        let client = ShimClient {
            socket: instance_dir.join(SOCKET_FILE),
        };
        client.open()?;
        Ok(client)
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    fn open(&self) -> Result<UnixStream, ShimError> {
        UnixStream::connect(&self.socket).map_err(|source| ShimError::Io {
            what: format!("connect to shim at {}", self.socket.display()),
            source,
        })
    }

    /// Sends `req` and reads the first response line without reading past it (an
    /// exec stream's frames follow the line directly).
    fn request(
        &self,
        req: &ShimRequest,
        timeout: Option<Duration>,
    ) -> Result<(UnixStream, ShimResponse), ShimError> {
        let mut stream = self.open()?;
        let io = |what: &str| {
            let what = format!("{what} {}", self.socket.display());
            move |source| ShimError::Io { what, source }
        };
        stream
            .set_read_timeout(timeout)
            .map_err(io("set timeout on"))?;
        let mut line = serde_json::to_vec(req)
            .map_err(|e| ShimError::Protocol(format!("cannot encode {req:?}: {e}")))?;
        line.push(b'\n');
        stream.write_all(&line).map_err(io("send request to"))?;
        let mut resp = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        loop {
            let n = match stream.read(&mut byte) {
                Ok(n) => n,
                // A signal in the calling process (a child exiting) is not
                // an answer: read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io("read response from")(e)),
            };
            match n {
                0 => {
                    return Err(ShimError::Protocol(format!(
                        "shim at {} closed the connection without answering",
                        self.socket.display()
                    )))
                }
                _ if byte[0] == b'\n' => break,
                _ if resp.len() >= MAX_LINE_BYTES => {
                    return Err(ShimError::Protocol(format!(
                        "response from {} exceeds {MAX_LINE_BYTES} bytes",
                        self.socket.display()
                    )))
                }
                _ => resp.push(byte[0]),
            }
        }
        let resp = decode_response(&String::from_utf8_lossy(&resp), &self.socket)?;
        Ok((stream, resp))
    }

    pub fn status(&self) -> Result<ShimState, ShimError> {
        let (_, resp) = self.request(&ShimRequest::Status, Some(Duration::from_secs(10)))?;
        expect_state(resp)
    }

    /// Stops the instance (no restart) and returns its final state once the shim
    /// has torn everything down.
    pub fn stop(&self, grace_ms: u64) -> Result<ShimState, ShimError> {
        let timeout = Duration::from_millis(grace_ms) + Duration::from_secs(60);
        let req = ShimRequest::Stop {
            grace_ms: Some(grace_ms),
        };
        let (_, resp) = self.request(&req, Some(timeout))?;
        expect_state(resp)
    }

    /// The current state, then one state per change until the shim exits.
    pub fn subscribe(&self) -> Result<StateStream, ShimError> {
        let (stream, resp) = self.request(&ShimRequest::Subscribe, None)?;
        let first = expect_state(resp)?;
        Ok(StateStream {
            reader: BufReader::new(stream),
            first: Some(first),
            socket: self.socket.clone(),
        })
    }

    /// Starts a process in the running container. The returned stream carries
    /// [`frame`]s; see [`read_frame`] and [`encode_frame`].
    pub fn exec(&self, req: &ExecRequest) -> Result<(i32, UnixStream), ShimError> {
        let (stream, resp) = self.request(
            &ShimRequest::Exec(req.clone()),
            Some(Duration::from_secs(30)),
        )?;
        match resp {
            ShimResponse::ExecStarted { pid } => {
                let _ = stream.set_read_timeout(None);
                Ok((pid, stream))
            }
            ShimResponse::Error { message } => Err(ShimError::Refused(message)),
            other => Err(ShimError::Protocol(format!(
                "expected exec_started, got {other:?}"
            ))),
        }
    }

    async fn request_async(
        &self,
        req: &ShimRequest,
    ) -> Result<(tokio::net::UnixStream, ShimResponse), ShimError> {
        let io = |what: &str| {
            let what = format!("{what} {}", self.socket.display());
            move |source| ShimError::Io { what, source }
        };
        let mut stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(io("connect to shim at"))?;
        let mut line = serde_json::to_vec(req)
            .map_err(|e| ShimError::Protocol(format!("cannot encode {req:?}: {e}")))?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .await
            .map_err(io("send request to"))?;
        let mut resp = Vec::with_capacity(256);
        loop {
            let byte = match stream.read_u8().await {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(ShimError::Protocol(format!(
                        "shim at {} closed the connection without answering",
                        self.socket.display()
                    )))
                }
                Err(e) => return Err(io("read response from")(e)),
            };
            if byte == b'\n' {
                break;
            }
            if resp.len() >= MAX_LINE_BYTES {
                return Err(ShimError::Protocol(format!(
                    "response from {} exceeds {MAX_LINE_BYTES} bytes",
                    self.socket.display()
                )));
            }
            resp.push(byte);
        }
        let resp = decode_response(&String::from_utf8_lossy(&resp), &self.socket)?;
        Ok((stream, resp))
    }

    pub async fn status_async(&self) -> Result<ShimState, ShimError> {
        expect_state(self.request_async(&ShimRequest::Status).await?.1)
    }

    pub async fn stop_async(&self, grace_ms: u64) -> Result<ShimState, ShimError> {
        let req = ShimRequest::Stop {
            grace_ms: Some(grace_ms),
        };
        expect_state(self.request_async(&req).await?.1)
    }

    pub async fn subscribe_async(&self) -> Result<AsyncStateStream, ShimError> {
        let (stream, resp) = self.request_async(&ShimRequest::Subscribe).await?;
        let first = expect_state(resp)?;
        Ok(AsyncStateStream {
            reader: tokio::io::BufReader::new(stream),
            first: Some(first),
            socket: self.socket.clone(),
        })
    }

    pub async fn pause_async(&self, paused: bool) -> Result<ShimState, ShimError> {
        let req = if paused {
            ShimRequest::Pause
        } else {
            ShimRequest::Resume
        };
        expect_state(self.request_async(&req).await?.1)
    }

    /// Attaches to a virtual machine's serial console.
    pub async fn console_async(&self) -> Result<tokio::net::UnixStream, ShimError> {
        let (stream, resp) = self.request_async(&ShimRequest::Console).await?;
        match resp {
            ShimResponse::ConsoleAttached => Ok(stream),
            ShimResponse::Error { message } => Err(ShimError::Refused(message)),
            other => Err(ShimError::Protocol(format!(
                "expected console_attached, got {other:?}"
            ))),
        }
    }

    pub async fn exec_async(
        &self,
        req: &ExecRequest,
    ) -> Result<(i32, tokio::net::UnixStream), ShimError> {
        let (stream, resp) = self.request_async(&ShimRequest::Exec(req.clone())).await?;
        match resp {
            ShimResponse::ExecStarted { pid } => Ok((pid, stream)),
            ShimResponse::Error { message } => Err(ShimError::Refused(message)),
            other => Err(ShimError::Protocol(format!(
                "expected exec_started, got {other:?}"
            ))),
        }
    }
}

async fn read_line_async(
    reader: &mut tokio::io::BufReader<tokio::net::UnixStream>,
    socket: &Path,
) -> Result<Option<ShimResponse>, ShimError> {
    let mut line = String::new();
    let n = reader
        .take(MAX_LINE_BYTES as u64)
        .read_line(&mut line)
        .await
        .map_err(|source| ShimError::Io {
            what: format!("read from shim at {}", socket.display()),
            source,
        })?;
    if n == 0 {
        return Ok(None);
    }
    decode_response(&line, socket).map(Some)
}

/// Blocking state subscription; ends when the shim closes the connection.
pub struct StateStream {
    reader: BufReader<UnixStream>,
    first: Option<ShimState>,
    socket: PathBuf,
}

impl Iterator for StateStream {
    type Item = Result<ShimState, ShimError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        let mut line = String::new();
        match self
            .reader
            .by_ref()
            .take(MAX_LINE_BYTES as u64)
            .read_line(&mut line)
        {
            Ok(0) => None,
            Ok(_) => Some(decode_response(&line, &self.socket).and_then(expect_state)),
            Err(source) => Some(Err(ShimError::Io {
                what: format!("read subscription from {}", self.socket.display()),
                source,
            })),
        }
    }
}

/// Async state subscription for the agent's tokio runtime.
pub struct AsyncStateStream {
    reader: tokio::io::BufReader<tokio::net::UnixStream>,
    first: Option<ShimState>,
    socket: PathBuf,
}

impl AsyncStateStream {
    /// The next state; `None` once the shim has closed the subscription.
    pub async fn next(&mut self) -> Option<Result<ShimState, ShimError>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        match read_line_async(&mut self.reader, &self.socket).await {
            Ok(None) => None,
            Ok(Some(resp)) => Some(expect_state(resp)),
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_by_op() {
        let json = serde_json::to_string(&ShimRequest::Stop { grace_ms: Some(5) }).expect("encode");
        assert_eq!(json, r#"{"op":"stop","grace_ms":5}"#);
        let exec: ShimRequest =
            serde_json::from_str(r#"{"op":"exec","args":["ps"],"tty":true,"rows":24}"#)
                .expect("decode");
        match exec {
            ShimRequest::Exec(e) => {
                assert_eq!(e.args, vec!["ps"]);
                assert!(e.tty);
                assert_eq!(e.rows, Some(24));
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut bytes = encode_frame(frame::STDOUT, b"hello");
        bytes.extend(encode_frame(frame::EXIT, &7i32.to_be_bytes()));
        let mut cursor = std::io::Cursor::new(bytes);
        assert_eq!(
            read_frame(&mut cursor).expect("frame"),
            Some((frame::STDOUT, b"hello".to_vec()))
        );
        assert_eq!(
            read_frame(&mut cursor).expect("frame"),
            Some((frame::EXIT, 7i32.to_be_bytes().to_vec()))
        );
        assert_eq!(read_frame(&mut cursor).expect("eof"), None);
    }
}
