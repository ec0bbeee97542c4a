//! `nimbus usage`: a project's usage over a window, per hour, per day or
//! in total, as a table for people or JSON or CSV for scripts. The server
//! answers per hour (`GET /v1/projects/{p}/usage`); days and the total are
//! summed here.

use std::collections::BTreeMap;

use clap::{Args, ValueEnum};
use nimbus_api::client::query_escape;
use nimbus_api::{InstanceHours, UsageReport, UsageTotals};
use serde::Serialize;

use nimbus_api::units::format_size;

use crate::ctx::{Globals, OutputFormat};
use crate::output::table;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum By {
    #[default]
    Hour,
    Day,
    Total,
}

#[derive(Args, Debug)]
pub struct UsageArgs {
    /// Start of the window: YYYY-MM-DD (midnight UTC) or an RFC 3339 time.
    /// Default: midnight UTC today.
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window (excluded), as --from. Default: a day after --from.
    #[arg(long)]
    pub to: Option<String>,
    /// One row per hour, per day (UTC), or one for the whole window.
    #[arg(long, value_enum, default_value_t = By::Hour)]
    pub by: By,
}

/// One row: a period and its usage.
#[derive(Clone, Debug, Serialize)]
struct Row {
    period: String,
    #[serde(flatten)]
    usage: UsageTotals,
}

fn add(into: &mut UsageTotals, u: &UsageTotals) {
    into.instance_hours.container += u.instance_hours.container;
    into.instance_hours.vm += u.instance_hours.vm;
    into.instance_hours.unikernel += u.instance_hours.unikernel;
    into.vcpu_hours += u.vcpu_hours;
    into.memory_gib_hours += u.memory_gib_hours;
    into.image_gib_hours += u.image_gib_hours;
    into.object_gib_hours += u.object_gib_hours;
    into.volume_gib_hours += u.volume_gib_hours;
}

fn hour_totals(h: &nimbus_api::UsageHour) -> UsageTotals {
    UsageTotals {
        instance_hours: h.instance_hours,
        vcpu_hours: h.vcpu_hours,
        memory_gib_hours: h.memory_gib_hours,
        image_gib_hours: h.image_gib_hours,
        object_gib_hours: h.object_gib_hours,
        volume_gib_hours: h.volume_gib_hours,
    }
}

/// The rows of `report` grouped `by`; the total is the server's.
fn rows(report: &UsageReport, by: By) -> Vec<Row> {
    match by {
        By::Hour => report
            .hours
            .iter()
            .map(|h| Row {
                period: h.hour.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                usage: hour_totals(h),
            })
            .collect(),
        By::Day => {
            let mut days: BTreeMap<String, UsageTotals> = BTreeMap::new();
            for h in &report.hours {
                add(
                    days.entry(h.hour.format("%Y-%m-%d").to_string())
                        .or_default(),
                    &hour_totals(h),
                );
            }
            days.into_iter()
                .map(|(period, usage)| Row { period, usage })
                .collect()
        }
        By::Total => vec![],
    }
}

const HEADERS: [&str; 9] = [
    "period",
    "container_hours",
    "vm_hours",
    "unikernel_hours",
    "vcpu_hours",
    "memory_gib_hours",
    "image_gib_hours",
    "object_gib_hours",
    "volume_gib_hours",
];

fn figures(u: &UsageTotals) -> [f64; 8] {
    let InstanceHours {
        container,
        vm,
        unikernel,
    } = u.instance_hours;
    [
        container,
        vm,
        unikernel,
        u.vcpu_hours,
        u.memory_gib_hours,
        u.image_gib_hours,
        u.object_gib_hours,
        u.volume_gib_hours,
    ]
}

fn table_row(period: &str, u: &UsageTotals) -> Vec<String> {
    std::iter::once(period.to_string())
        .chain(figures(u).iter().map(|f| format!("{f:.4}")))
        .collect()
}

/// CSV for scripts: full precision, one line per row, the total last.
fn csv(rows: &[Row], totals: &UsageTotals) -> String {
    let mut out = HEADERS.join(",");
    out.push('\n');
    let total = Row {
        period: "total".into(),
        usage: *totals,
    };
    for r in rows.iter().chain(std::iter::once(&total)) {
        out.push_str(&r.period);
        for f in figures(&r.usage) {
            out.push_str(&format!(",{f}"));
        }
        out.push('\n');
    }
    out
}

/// JSON of what was asked: the server's answer per hour; per day the same
/// with `days`; in total without the periods.
fn json(report: &UsageReport, by: By, rows: &[Row]) -> serde_json::Result<String> {
    let value = match by {
        By::Hour => serde_json::to_value(report)?,
        By::Day => serde_json::json!({
            "project": report.project,
            "from": report.from,
            "to": report.to,
            "days": rows.iter().map(|r| {
                let mut v = serde_json::to_value(r.usage).unwrap_or_default();
                v["day"] = serde_json::Value::String(r.period.clone());
                v
            }).collect::<Vec<_>>(),
            "totals": report.totals,
            "image_bytes": report.image_bytes,
        }),
        By::Total => serde_json::json!({
            "project": report.project,
            "from": report.from,
            "to": report.to,
            "totals": report.totals,
            "image_bytes": report.image_bytes,
        }),
    };
    serde_json::to_string_pretty(&value)
}

pub async fn run(g: &Globals, args: UsageArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let mut q = Vec::new();
    if let Some(from) = &args.from {
        q.push(format!("from={}", query_escape(from)));
    }
    if let Some(to) = &args.to {
        q.push(format!("to={}", query_escape(to)));
    }
    let path = format!(
        "/v1/projects/{}/usage{}{}",
        query_escape(&g.project),
        if q.is_empty() { "" } else { "?" },
        q.join("&")
    );
    let report: UsageReport = client.get(&path).await?;
    let rows = rows(&report, args.by);
    match g.output {
        OutputFormat::Json => crate::outln!("{}", json(&report, args.by, &rows)?)?,
        OutputFormat::Csv => crate::out!("{}", csv(&rows, &report.totals))?,
        OutputFormat::Table => {
            let mut lines: Vec<Vec<String>> = rows
                .iter()
                .map(|r| table_row(&r.period, &r.usage))
                .collect();
            lines.push(table_row("total", &report.totals));
            let headers = [
                "period",
                "container-h",
                "vm-h",
                "unikernel-h",
                "vcpu-h",
                "memory-gib-h",
                "image-gib-h",
                "object-gib-h",
            ];
            crate::outln!(
                "usage of project {} from {} to {}",
                report.project,
                report.from.to_rfc3339(),
                report.to.to_rfc3339()
            )?;
            crate::outln!("{}", table(&headers, lines))?;
            crate::outln!(
                "images held now: {} ({} bytes; `nimbus quota get` shows the limit)",
                format_size(report.image_bytes),
                report.image_bytes
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn report() -> UsageReport {
        let t = |s: &str| s.parse::<DateTime<Utc>>().expect("time");
        let usage = |c: f64| UsageTotals {
            instance_hours: InstanceHours {
                container: c,
                vm: 0.0,
                unikernel: 0.0,
            },
            vcpu_hours: c,
            memory_gib_hours: c / 2.0,
            image_gib_hours: 0.0,
            object_gib_hours: c / 4.0,
            volume_gib_hours: c * 2.0,
        };
        let hour = |h: &str, c: f64| nimbus_api::UsageHour {
            hour: t(h),
            instance_hours: usage(c).instance_hours,
            vcpu_hours: c,
            memory_gib_hours: c / 2.0,
            image_gib_hours: 0.0,
            object_gib_hours: c / 4.0,
            volume_gib_hours: c * 2.0,
        };
        UsageReport {
            project: "ops".into(),
            from: t("2026-12-01T23:00:00Z"),
            to: t("2026-12-02T02:00:00Z"),
            hours: vec![
                hour("2026-12-01T23:00:00Z", 0.5),
                hour("2026-12-02T00:00:00Z", 1.0),
                hour("2026-12-02T01:00:00Z", 0.25),
            ],
            totals: usage(1.75),
            image_bytes: 3 << 20,
        }
    }

    #[test]
    fn days_sum_their_hours_in_utc() {
        let days = rows(&report(), By::Day);
        let periods: Vec<&str> = days.iter().map(|r| r.period.as_str()).collect();
        assert_eq!(periods, ["2026-12-01", "2026-12-02"]);
        assert_eq!(days[1].usage.instance_hours.container, 1.25);
        assert!(rows(&report(), By::Total).is_empty());
    }

    #[test]
    fn csv_has_a_header_a_line_per_hour_and_the_total() {
        let r = report();
        let text = csv(&rows(&r, By::Hour), &r.totals);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], HEADERS.join(","));
        assert_eq!(lines[1], "2026-12-01T23:00:00Z,0.5,0,0,0.5,0.25,0,0.125,1");
        assert_eq!(lines[4], "total,1.75,0,0,1.75,0.875,0,0.4375,3.5");
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn json_by_day_and_total_keep_the_totals() {
        let r = report();
        let day: serde_json::Value =
            serde_json::from_str(&json(&r, By::Day, &rows(&r, By::Day)).expect("json"))
                .expect("parse");
        assert_eq!(day["days"][0]["day"], "2026-12-01");
        assert_eq!(day["days"][1]["instance_hours"]["container"], 1.25);
        assert_eq!(day["totals"]["vcpu_hours"], 1.75);
        let total: serde_json::Value =
            serde_json::from_str(&json(&r, By::Total, &[]).expect("json")).expect("parse");
        assert!(total.get("hours").is_none());
        assert_eq!(total["totals"]["memory_gib_hours"], 0.875);
        assert_eq!(total["image_bytes"], 3 << 20);
        assert_eq!(day["image_bytes"], 3 << 20);
    }
}
