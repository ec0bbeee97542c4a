//! A small typed QMP client: line-delimited JSON over QEMU's Unix socket.
//!
//! The `qapi` crates trail QEMU releases, and Nimbus needs a handful of
//! commands, so this is written by hand. After the greeting the client
//! negotiates capabilities; each command carries an `id` and its reply is
//! matched on it; asynchronous events that arrive meanwhile are queued and
//! handed out by [`Qmp::next_event`].

use std::collections::VecDeque;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Longest line accepted from QEMU (replies here are small).
const MAX_LINE_BYTES: usize = 1 << 20;

/// How long a command (or the greeting) may take before QEMU counts as hung.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP socket {0} closed: QEMU has exited")]
    Closed(String),
    #[error("QMP protocol: {0}")]
    Protocol(String),
    #[error("QEMU did not answer {0} within {1:?}: it is hung; stop the instance (it is killed after its grace period)")]
    Timeout(String, Duration),
    /// QEMU refused the command (`{"error": {"class", "desc"}}`).
    #[error("QEMU refused {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// Asynchronous events Nimbus acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpEvent {
    /// The guest or QEMU is shutting down; `guest` is true when the guest
    /// asked (power-off), `reason` is QEMU's word for it.
    Shutdown {
        guest: bool,
        reason: String,
    },
    /// The ACPI power button was pressed for the guest.
    Powerdown,
    /// A reset (reboot) happened.
    Reset {
        guest: bool,
    },
    /// The vCPUs stopped (pause).
    Stop,
    /// The vCPUs run again.
    Resume,
    /// A device is gone (the guest released a hot-unplugged disk); `device`
    /// is its id.
    DeviceDeleted {
        device: Option<String>,
    },
    Other(String),
}

/// `query-status`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct StatusInfo {
    pub running: bool,
    pub status: String,
}

pub struct Qmp {
    path: String,
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    events: VecDeque<QmpEvent>,
    next_id: u64,
}

impl Qmp {
    /// Speaks QMP over a socket already connected to QEMU (the shim's end
    /// of a socket pair): reads the greeting and leaves negotiation mode.
    pub async fn over(stream: UnixStream, name: &str, timeout: Duration) -> Result<Qmp, QmpError> {
        Qmp::handshake(
            stream,
            name.to_string(),
            tokio::time::Instant::now() + timeout,
        )
        .await
    }

    async fn handshake(
        stream: UnixStream,
        shown: String,
        deadline: tokio::time::Instant,
    ) -> Result<Qmp, QmpError> {
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            path: shown,
            lines: BufReader::new(read).lines(),
            writer,
            events: VecDeque::new(),
            next_id: 1,
        };
        let greeting = tokio::time::timeout_at(
            deadline.max(tokio::time::Instant::now() + COMMAND_TIMEOUT),
            qmp.read_message(),
        )
        .await
        .map_err(|_| QmpError::Timeout("the QMP greeting".into(), COMMAND_TIMEOUT))??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "expected the QMP greeting, got {greeting}"
            )));
        }
        qmp.execute::<Value>("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let line = self
            .lines
            .next_line()
            .await
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?
            .ok_or_else(|| QmpError::Closed(self.path.clone()))?;
        if line.len() > MAX_LINE_BYTES {
            return Err(QmpError::Protocol(format!(
                "a {}-byte message exceeds {MAX_LINE_BYTES}",
                line.len()
            )));
        }
        serde_json::from_str(&line)
            .map_err(|e| QmpError::Protocol(format!("not JSON: {e}: {line:.200}")))
    }

    /// Runs `command` and decodes its `return` value; a QEMU that does not
    /// answer within [`COMMAND_TIMEOUT`] is an error, never a hang.
    pub async fn execute<R: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<R, QmpError> {
        tokio::time::timeout(COMMAND_TIMEOUT, self.execute_untimed(command, arguments))
            .await
            .map_err(|_| QmpError::Timeout(command.to_string(), COMMAND_TIMEOUT))?
    }

    async fn execute_untimed<R: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<R, QmpError> {
        let (id, line) = self.encode(command, arguments)?;
        self.writer
            .write_all(&line)
            .await
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.reply(command, id).await
    }

    fn encode(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<(u64, Vec<u8>), QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = serde_json::to_vec(&msg)
            .map_err(|e| QmpError::Protocol(format!("cannot encode {command}: {e}")))?;
        line.push(b'\n');
        Ok((id, line))
    }

    /// The reply to command `id`; events met meanwhile are queued.
    async fn reply<R: DeserializeOwned>(&mut self, command: &str, id: u64) -> Result<R, QmpError> {
        loop {
            let reply = self.read_message().await?;
            if reply.get("event").is_some() {
                self.events.push_back(parse_event(&reply));
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(err) = reply.get("error") {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: err["class"].as_str().unwrap_or("").to_string(),
                    desc: err["desc"].as_str().unwrap_or("").to_string(),
                });
            }
            let ret = reply.get("return").cloned().unwrap_or(Value::Null);
            return serde_json::from_value(ret)
                .map_err(|e| QmpError::Protocol(format!("unexpected reply to {command}: {e}")));
        }
    }

    /// `add-fd`: hands QEMU an open file (SCM_RIGHTS with the command), for
    /// a QEMU that can no longer open it itself; returns its fd set, which
    /// `/dev/fdset/<id>` names in a `filename`.
    pub async fn add_fd(&mut self, file: std::os::fd::BorrowedFd<'_>) -> Result<u64, QmpError> {
        use std::os::fd::AsRawFd;
        let (id, line) = self.encode("add-fd", None)?;
        let io = |path: &str, source: std::io::Error| QmpError::Io {
            path: path.to_string(),
            source,
        };
        let socket: &UnixStream = self.writer.as_ref();
        let fds = [file.as_raw_fd()];
        loop {
            socket.writable().await.map_err(|e| io(&self.path, e))?;
            let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
                let iov = [std::io::IoSlice::new(&line)];
                let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
                nix::sys::socket::sendmsg::<()>(
                    socket.as_raw_fd(),
                    &iov,
                    &cmsg,
                    nix::sys::socket::MsgFlags::empty(),
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match sent {
                Ok(n) if n == line.len() => break,
                Ok(n) => {
                    return Err(QmpError::Protocol(format!(
                        "add-fd: sent {n} of {} bytes",
                        line.len()
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io(&self.path, e)),
            }
        }
        #[derive(Deserialize)]
        struct Added {
            #[serde(rename = "fdset-id")]
            fdset_id: u64,
        }
        let added: Added = tokio::time::timeout(COMMAND_TIMEOUT, self.reply("add-fd", id))
            .await
            .map_err(|_| QmpError::Timeout("add-fd".into(), COMMAND_TIMEOUT))??;
        Ok(added.fdset_id)
    }

    /// Connects to a QMP socket QEMU serves (the block monitor).
    pub async fn connect(path: &std::path::Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Qmp::over(stream, &path.display().to_string(), COMMAND_TIMEOUT).await
    }

    /// The next asynchronous event. Cancel-safe: a line half read stays
    /// buffered for the next call.
    pub async fn next_event(&mut self) -> Result<QmpEvent, QmpError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        loop {
            let msg = self.read_message().await?;
            if msg.get("event").is_some() {
                return Ok(parse_event(&msg));
            }
        }
    }

    pub async fn query_status(&mut self) -> Result<StatusInfo, QmpError> {
        self.execute("query-status", None).await
    }

    /// Presses the ACPI power button.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute::<Value>("system_powerdown", None)
            .await
            .map(drop)
    }

    pub async fn stop(&mut self) -> Result<(), QmpError> {
        self.execute::<Value>("stop", None).await.map(drop)
    }

    pub async fn cont(&mut self) -> Result<(), QmpError> {
        self.execute::<Value>("cont", None).await.map(drop)
    }

    pub async fn system_reset(&mut self) -> Result<(), QmpError> {
        self.execute::<Value>("system_reset", None).await.map(drop)
    }

    /// Asks QEMU to exit now; the connection closes as it goes.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute::<Value>("quit", None).await {
            Ok(_) | Err(QmpError::Closed(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn parse_event(msg: &Value) -> QmpEvent {
    let name = msg["event"].as_str().unwrap_or("");
    let data = &msg["data"];
    match name {
        "SHUTDOWN" => QmpEvent::Shutdown {
            guest: data["guest"].as_bool().unwrap_or(false),
            reason: data["reason"].as_str().unwrap_or("").to_string(),
        },
        "POWERDOWN" => QmpEvent::Powerdown,
        "RESET" => QmpEvent::Reset {
            guest: data["guest"].as_bool().unwrap_or(false),
        },
        "STOP" => QmpEvent::Stop,
        "RESUME" => QmpEvent::Resume,
        "DEVICE_DELETED" => QmpEvent::DeviceDeleted {
            device: data["device"].as_str().map(str::to_string),
        },
        other => QmpEvent::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A fake QEMU on a socket pair, next to the real-QEMU tests in `tests/vms.rs`.
    #[tokio::test]
    async fn negotiates_matches_replies_and_queues_events() {
        let (ours, mut s) = UnixStream::pair().expect("socket pair");
        let server = tokio::spawn(async move {
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .expect("greet");
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.expect("read caps");
            assert!(String::from_utf8_lossy(&buf[..n]).contains("qmp_capabilities"));
            s.write_all(b"{\"return\": {}, \"id\": 1}\n")
                .await
                .expect("caps");
            let n = s.read(&mut buf).await.expect("read status");
            assert!(String::from_utf8_lossy(&buf[..n]).contains("query-status"));
            s.write_all(
                b"{\"event\": \"STOP\", \"data\": {}, \"timestamp\": {}}\n{\"return\": {\"running\": false, \"status\": \"paused\"}, \"id\": 2}\n",
            )
            .await
            .expect("status");
            let n = s.read(&mut buf).await.expect("read cont");
            assert!(String::from_utf8_lossy(&buf[..n]).contains("\"cont\""));
            s.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}, \"id\": 3}\n{\"event\": \"SHUTDOWN\", \"data\": {\"guest\": true, \"reason\": \"guest-shutdown\"}}\n")
                .await
                .expect("error");
        });
        let mut qmp = Qmp::over(ours, "test", Duration::from_secs(5))
            .await
            .expect("handshake");
        let st = qmp.query_status().await.expect("status");
        assert_eq!(st.status, "paused");
        let err = qmp.cont().await.expect_err("refused");
        assert!(err.to_string().contains("GenericError: nope"), "{err}");
        assert_eq!(qmp.next_event().await.expect("event"), QmpEvent::Stop);
        assert_eq!(
            qmp.next_event().await.expect("event"),
            QmpEvent::Shutdown {
                guest: true,
                reason: "guest-shutdown".into()
            }
        );
        server.await.expect("server");
        assert!(matches!(qmp.next_event().await, Err(QmpError::Closed(_))));
    }
}
