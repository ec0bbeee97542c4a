//! A copy of each audit record to the local syslog daemon (`--audit-syslog`):
//! one RFC 5424 message per record, its JSON as the message, sent as a
//! datagram to the syslog socket (`/dev/log`).
//!
//! Written by hand rather than with a crate: it is one datagram in a fixed
//! format, and the syslog crates bring their own logger plumbing and
//! blocking TCP/UDP transports that the server does not need.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nimbus_api::AuditRecord;

/// Facility authpriv (10), severity informational (6).
const PRIORITY: u8 = 10 * 8 + 6;

/// Where records go, and whether a failure was already reported.
pub struct SyslogTarget {
    path: PathBuf,
    socket: Option<UnixDatagram>,
    hostname: String,
    warned: AtomicBool,
}

impl SyslogTarget {
    pub fn new(path: &Path) -> Self {
        let socket = UnixDatagram::unbound()
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|e| tracing::warn!(error = %e, "cannot open a socket for syslog"))
            .ok();
        if !path.exists() {
            tracing::warn!(
                path = %path.display(),
                "--audit-syslog: no syslog socket at this path; audit records are kept in the store only until one appears"
            );
        }
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        SyslogTarget {
            path: path.to_path_buf(),
            socket,
            hostname,
            warned: AtomicBool::new(false),
        }
    }

    /// Send one record; never blocks (a full or absent socket drops the
    /// copy, the store still has the record).
    pub fn send(&self, record: &AuditRecord) {
        let Some(socket) = &self.socket else {
            return;
        };
        let line = format_rfc5424(record, &self.hostname, std::process::id());
        match socket.send_to(line.as_bytes(), &self.path) {
            Ok(_) => {}
            Err(e) if !self.warned.swap(true, Ordering::Relaxed) => tracing::warn!(
                error = %e,
                path = %self.path.display(),
                "could not send an audit record to syslog; later failures are not logged"
            ),
            Err(_) => {}
        }
    }
}

/// `<PRI>1 TIMESTAMP HOSTNAME nimbus PROCID audit - JSON`.
pub fn format_rfc5424(record: &AuditRecord, hostname: &str, pid: u32) -> String {
    // RFC 5424 fields are printable ASCII without spaces; `-` when absent.
    let field = |s: &str| {
        let clean: String = s
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        if clean.is_empty() {
            "-".to_string()
        } else {
            clean
        }
    };
    let json = serde_json::to_string(record).unwrap_or_default();
    format!(
        "<{PRIORITY}>1 {} {} nimbus {pid} audit - {json}",
        record
            .time
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        field(hostname),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AuditRecord {
        AuditRecord {
            id: "00ff".into(),
            time: chrono::DateTime::parse_from_rfc3339("2026-12-02T03:04:05.123456Z")
                .unwrap()
                .into(),
            actor: "alice".into(),
            token_id: Some("t1".into()),
            method: "POST".into(),
            path: "/v1/projects".into(),
            project: None,
            status: 201,
            result: "ok".into(),
            source: None,
            count: None,
        }
    }

    #[test]
    fn a_record_is_one_rfc5424_line_with_its_json() {
        let line = format_rfc5424(&record(), "node 1", 42);
        let head = "<86>1 2026-12-02T03:04:05.123456Z node1 nimbus 42 audit - ";
        assert!(line.starts_with(head), "{line}");
        let json: AuditRecord = serde_json::from_str(&line[head.len()..]).unwrap();
        assert_eq!(json, record());
        assert!(!line.contains('\n'));
        assert!(format_rfc5424(&record(), "", 1).contains(" - nimbus 1 audit - "));
    }

    #[test]
    fn records_reach_a_syslog_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let daemon = UnixDatagram::bind(&path).unwrap();
        let target = SyslogTarget::new(&path);
        target.send(&record());
        let mut buf = vec![0u8; 4096];
        let n = daemon.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(
            got.starts_with("<86>1 2026-12-02T03:04:05.123456Z "),
            "{got}"
        );
        assert!(got.contains("\"actor\":\"alice\""), "{got}");
        // No syslog daemon: sending does not fail the caller.
        SyslogTarget::new(&dir.path().join("absent")).send(&record());
    }
}
