//! Freezing a VM's filesystems through the QEMU guest agent (`qemu-ga`),
//! for a filesystem-consistent snapshot of a VM's volume.
//!
//! The agent speaks JSON lines over a virtio-serial channel that QEMU
//! exposes on the host as a Unix socket. It has no greeting, and a reply
//! may be stale from an earlier client, so the exchange starts with
//! `guest-sync` and a fresh id. The agent must answer within
//! [`ANSWER_TIMEOUT`]: a guest without one (the tiny test guest) costs a
//! short wait, then the snapshot is crash-consistent.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// How long the guest agent may take to answer `guest-sync`.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a freeze may take (the guest flushes its filesystems).
const FREEZE_TIMEOUT: Duration = Duration::from_secs(20);

/// The guest's filesystems, frozen; thawed when dropped.
pub struct Frozen {
    reader: BufReader<UnixStream>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = command(&mut self.reader, "guest-fsfreeze-thaw", FREEZE_TIMEOUT) {
            tracing::error!(error = %e, "the guest agent did not thaw the guest's filesystems; run `guest-fsfreeze-thaw` through it");
        }
    }
}

/// Sync with the agent on `socket`, then freeze the guest's filesystems.
pub fn freeze(socket: &Path) -> Result<Frozen, String> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| format!("guest agent socket {}: {e}", socket.display()))?;
    let mut reader = BufReader::new(stream);
    let id = u64::from(std::process::id()) << 20 | u64::from(rand_u16());
    send(
        &mut reader,
        &json!({"execute": "guest-sync", "arguments": {"id": id}}),
    )?;
    // Skip what an earlier client left unread until our id comes back.
    loop {
        let reply = read(&mut reader, ANSWER_TIMEOUT)?;
        if reply["return"].as_u64() == Some(id) {
            break;
        }
    }
    command(&mut reader, "guest-fsfreeze-freeze", FREEZE_TIMEOUT)?;
    Ok(Frozen { reader })
}

fn rand_u16() -> u16 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u16)
        .unwrap_or(7)
}

fn command(
    reader: &mut BufReader<UnixStream>,
    name: &str,
    timeout: Duration,
) -> Result<Value, String> {
    send(reader, &json!({ "execute": name }))?;
    let reply = read(reader, timeout)?;
    match reply.get("error") {
        Some(e) => Err(format!("the guest agent refused {name}: {e}")),
        None => Ok(reply["return"].clone()),
    }
}

fn send(reader: &mut BufReader<UnixStream>, message: &Value) -> Result<(), String> {
    let mut line = message.to_string().into_bytes();
    line.push(b'\n');
    reader
        .get_mut()
        .write_all(&line)
        .map_err(|e| format!("writing to the guest agent: {e}"))
}

fn read(reader: &mut BufReader<UnixStream>, timeout: Duration) -> Result<Value, String> {
    reader
        .get_ref()
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("setting a timeout on the guest agent socket: {e}"))?;
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err("the guest agent closed its socket".into()),
        Ok(_) => serde_json::from_str(line.trim_start_matches('\u{ff}'))
            .map_err(|e| format!("the guest agent sent no JSON ({e}): {line:.200}")),
        Err(e) => Err(format!(
            "no answer from the guest agent within {timeout:?}: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};

    /// A guest agent that answers every command and records them.
    fn fake_agent(socket: &Path, answers: bool) -> Arc<Mutex<Vec<String>>> {
        let listener = UnixListener::bind(socket).expect("bind");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let v: Value = serde_json::from_str(&line).expect("json");
                let name = v["execute"].as_str().unwrap_or_default().to_string();
                log.lock().expect("log").push(name.clone());
                // A stale reply (an earlier client's) comes before the sync's.
                let out = match name.as_str() {
                    "guest-sync" => format!(
                        "{}\n{}\n",
                        json!({"return": 99}),
                        json!({"return": v["arguments"]["id"]})
                    ),
                    _ => format!("{}\n", json!({"return": 1})),
                };
                if answers {
                    let _ = reader.get_mut().write_all(out.as_bytes());
                }
                line.clear();
            }
        });
        seen
    }

    #[test]
    fn freezes_after_a_sync_and_thaws_on_drop() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let socket = tmp.path().join("qga.sock");
        let seen = fake_agent(&socket, true);
        let frozen = freeze(&socket).expect("frozen");
        drop(frozen);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen.lock().expect("log").len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            *seen.lock().expect("log"),
            ["guest-sync", "guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]
        );
    }

    #[test]
    fn a_silent_or_missing_agent_is_an_error_soon() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let socket = tmp.path().join("qga.sock");
        let e = freeze(&socket).err().expect("no socket");
        assert!(e.contains("qga.sock"), "{e}");
        let _seen = fake_agent(&socket, false);
        let started = std::time::Instant::now();
        let e = freeze(&socket).err().expect("silent");
        assert!(e.contains("no answer"), "{e}");
        assert!(started.elapsed() < ANSWER_TIMEOUT * 2);
    }
}
