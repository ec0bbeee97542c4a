//! Tables for people, JSON for scripts, and the one way the client writes
//! to standard output.
//!
//! SIGPIPE stays ignored in the client (Rust's default): a client still
//! sending a request on a connection the server closed must live to read
//! and show the server's answer. So a reader of our output that goes away
//! (`nimbus instance list | head -1`) shows up as EPIPE on a write here,
//! which becomes [`StdoutClosed`]; `main` ends the process quietly on it.

use chrono::{DateTime, Utc};
use comfy_table::{presets::NOTHING, Table};
use serde::Serialize;

use crate::ctx::Globals;

pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(headers.iter().map(|h| h.to_uppercase()));
    for r in rows {
        t.add_row(r);
    }
    // comfy-table pads the left edge with a space in this preset: trim it.
    t.to_string()
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Standard output (or, for `instance logs`, standard error) was closed by
/// its reader, such as `head`: nothing more can be shown, and this is not
/// an error worth a message.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the reader of standard output went away (broken pipe)")
    }
}

impl std::error::Error for StdoutClosed {}

/// The exit status after [`StdoutClosed`]: 141 (128 + SIGPIPE), what the
/// shell reported when SIGPIPE ended the client, so `set -o pipefail`
/// scripts see the same status as before and still tell a cut-off output
/// from a complete one.
pub const STDOUT_CLOSED_EXIT_STATUS: u8 = 141;

/// True when `e` (or what it wraps) is [`StdoutClosed`].
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<StdoutClosed>())
}

fn write_to(mut w: impl std::io::Write, what: &str, bytes: &[u8]) -> anyhow::Result<()> {
    match w.write_all(bytes).and_then(|()| w.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::anyhow!("cannot write to {what}: {e}")),
    }
}

/// Writes `bytes` to standard output and flushes them.
pub fn stdout_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    write_to(std::io::stdout().lock(), "standard output", bytes)
}

/// Writes `bytes` to standard error and flushes them (an instance's own
/// stderr stream, which a pipe may read like stdout).
pub fn stderr_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    write_to(std::io::stderr().lock(), "standard error", bytes)
}

/// `println!` that returns [`StdoutClosed`] instead of panicking when the
/// reader went away.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::stdout_bytes(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}

/// `print!` that returns [`StdoutClosed`] instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::stdout_bytes(format!($($arg)*).as_bytes())
    };
}

/// Print `value` as JSON, or the table that `rows` renders.
pub fn print<T: Serialize>(
    g: &Globals,
    value: &T,
    render: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if g.json() {
        crate::outln!("{}", serde_json::to_string_pretty(value)?)?;
    } else {
        let text = render();
        if !text.is_empty() {
            crate::outln!("{text}")?;
        }
    }
    Ok(())
}

/// `3s`, `5m`, `2h`, `4d` ago.
pub fn age(t: Option<DateTime<Utc>>) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    let secs = (Utc::now() - t).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

pub fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}
