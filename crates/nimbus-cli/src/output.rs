//! Tables for people, JSON for scripts.

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

/// Print `value` as JSON, or the table that `rows` renders.
pub fn print<T: Serialize>(
    g: &Globals,
    value: &T,
    render: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if g.json() {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        let text = render();
        if !text.is_empty() {
            println!("{text}");
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
