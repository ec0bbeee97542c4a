//! Usage records into hours: each interval is clipped to the window
//! `[from, to)` and split at hour boundaries; an open interval counts up to
//! `now` (or `to`, when that is earlier). Sums are kept exact, in integer
//! nanoseconds times units (thousandths of a vCPU, bytes), and turned into
//! decimal hours once per figure shown, so a total is the exact sum of its
//! intervals whatever the order they were read in.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use nimbus_api::{InstanceHours, UsageHour, UsageReport, UsageTotals};

use super::{unix_nanos, Metered, UsageRecord};

pub const NANOS_PER_HOUR: i64 = 3_600_000_000_000;
const GIB: u128 = 1 << 30;
/// The longest window a report covers (two years of hours).
pub const MAX_WINDOW_HOURS: i64 = 2 * 366 * 24;

/// Why a usage window was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WindowError {
    #[error("{field} {value:?} is not a date (YYYY-MM-DD, UTC midnight) or an RFC 3339 time (2026-12-01T10:00:00Z)")]
    BadTime { field: &'static str, value: String },
    #[error("the window is empty: to ({to}) is not after from ({from}); give a later --to")]
    Empty { from: String, to: String },
    #[error("the window from {from} to {to} is longer than {MAX_WINDOW_HOURS} hours; ask for a shorter one")]
    TooLong { from: String, to: String },
}

/// `YYYY-MM-DD` (midnight UTC) or an RFC 3339 time.
pub fn parse_time(field: &'static str, value: &str) -> Result<DateTime<Utc>, WindowError> {
    if let Ok(day) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        if let Some(midnight) = day.and_hms_opt(0, 0, 0) {
            return Ok(midnight.and_utc());
        }
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| WindowError::BadTime {
            field,
            value: value.to_string(),
        })
}

/// The window a request asks for: `from` defaults to midnight UTC of
/// `now`'s day, `to` to a day after `from`.
pub fn window(
    from: Option<&str>,
    to: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), WindowError> {
    let from = match from {
        Some(f) => parse_time("from", f)?,
        None => now
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc(),
    };
    let to = match to {
        Some(t) => parse_time("to", t)?,
        None => from + Duration::days(1),
    };
    let (f, t) = (from.to_rfc3339(), to.to_rfc3339());
    if to <= from {
        return Err(WindowError::Empty { from: f, to: t });
    }
    if (unix_nanos(to) - unix_nanos(from)) / NANOS_PER_HOUR >= MAX_WINDOW_HOURS {
        return Err(WindowError::TooLong { from: f, to: t });
    }
    Ok((from, to))
}

/// Exact sums of one period: nanoseconds running per instance kind, and
/// nanoseconds times thousandths of a vCPU, times bytes of memory, times
/// bytes of image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sums {
    pub instance_nanos: [u128; 3],
    pub vcpu_milli_nanos: u128,
    pub memory_byte_nanos: u128,
    pub image_byte_nanos: u128,
    pub object_byte_nanos: u128,
    pub volume_byte_nanos: u128,
}

impl Sums {
    fn add_record(&mut self, r: &UsageRecord, nanos: u128) {
        match r.metered {
            Metered::Image => self.image_byte_nanos += nanos * u128::from(r.storage_bytes),
            Metered::Object => self.object_byte_nanos += nanos * u128::from(r.storage_bytes),
            Metered::Volume => self.volume_byte_nanos += nanos * u128::from(r.storage_bytes),
            kind => {
                let k = match kind {
                    Metered::Vm => 1,
                    Metered::Unikernel => 2,
                    _ => 0,
                };
                self.instance_nanos[k] += nanos;
                self.vcpu_milli_nanos += nanos * u128::from(r.vcpu_millis);
                self.memory_byte_nanos += nanos * u128::from(r.memory_bytes);
            }
        }
    }

    fn add(&mut self, o: &Sums) {
        for k in 0..3 {
            self.instance_nanos[k] += o.instance_nanos[k];
        }
        self.vcpu_milli_nanos += o.vcpu_milli_nanos;
        self.memory_byte_nanos += o.memory_byte_nanos;
        self.image_byte_nanos += o.image_byte_nanos;
        self.object_byte_nanos += o.object_byte_nanos;
        self.volume_byte_nanos += o.volume_byte_nanos;
    }

    /// In hours, each figure divided once (f64 division rounds correctly).
    pub fn totals(&self) -> UsageTotals {
        let hour = NANOS_PER_HOUR as f64;
        let hours = |n: u128| n as f64 / hour;
        UsageTotals {
            instance_hours: InstanceHours {
                container: hours(self.instance_nanos[0]),
                vm: hours(self.instance_nanos[1]),
                unikernel: hours(self.instance_nanos[2]),
            },
            vcpu_hours: self.vcpu_milli_nanos as f64 / (hour * 1000.0),
            memory_gib_hours: self.memory_byte_nanos as f64 / (hour * GIB as f64),
            image_gib_hours: self.image_byte_nanos as f64 / (hour * GIB as f64),
            object_gib_hours: self.object_byte_nanos as f64 / (hour * GIB as f64),
            volume_gib_hours: self.volume_byte_nanos as f64 / (hour * GIB as f64),
        }
    }
}

fn floor_hour(nanos: i64) -> i64 {
    nanos.div_euclid(NANOS_PER_HOUR) * NANOS_PER_HOUR
}

/// The sums of each hour from the hour of `from` until `to`, and of the
/// whole window: `records` clipped to `[from, to)`, open ones counted up
/// to `now`.
pub fn hourly_sums(
    records: &[UsageRecord],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Vec<(DateTime<Utc>, Sums)>, Sums) {
    let (from_ns, to_ns, now_ns) = (unix_nanos(from), unix_nanos(to), unix_nanos(now));
    let first = floor_hour(from_ns);
    let count = if to_ns > from_ns {
        ((to_ns - first + NANOS_PER_HOUR - 1) / NANOS_PER_HOUR) as usize
    } else {
        0
    };
    let mut buckets = vec![Sums::default(); count];
    for r in records {
        let start = unix_nanos(r.start).max(from_ns);
        let end = r.end.map(unix_nanos).unwrap_or(now_ns).min(to_ns);
        let mut at = start;
        while at < end {
            let hour = floor_hour(at);
            let until = (hour + NANOS_PER_HOUR).min(end);
            let index = ((hour - first) / NANOS_PER_HOUR) as usize;
            if let Some(b) = buckets.get_mut(index) {
                b.add_record(r, (until - at) as u128);
            }
            at = until;
        }
    }
    let mut total = Sums::default();
    let hours = buckets
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            total.add(&b);
            let start = first + i as i64 * NANOS_PER_HOUR;
            (DateTime::from_timestamp_nanos(start), b)
        })
        .collect();
    (hours, total)
}

/// The usage report of `project` for `[from, to)` at `now`.
pub fn report(
    project: &str,
    records: &[UsageRecord],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> UsageReport {
    let (hours, total) = hourly_sums(records, from, to, now);
    UsageReport {
        // What images hold now is read from the image store by the handler.
        image_bytes: 0,
        project: project.to_string(),
        from,
        to,
        hours: hours
            .into_iter()
            .map(|(hour, s)| {
                let t = s.totals();
                UsageHour {
                    hour,
                    instance_hours: t.instance_hours,
                    vcpu_hours: t.vcpu_hours,
                    memory_gib_hours: t.memory_gib_hours,
                    image_gib_hours: t.image_gib_hours,
                    object_gib_hours: t.object_gib_hours,
                    volume_gib_hours: t.volume_gib_hours,
                }
            })
            .collect(),
        totals: total.totals(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T00:00:00Z plus `secs`.
    fn at(secs: i64) -> DateTime<Utc> {
        parse_time("from", "2026-12-01").expect("date") + Duration::seconds(secs)
    }

    fn container(start: i64, end: Option<i64>) -> UsageRecord {
        UsageRecord {
            project: "ops".into(),
            metered: Metered::Container,
            name: "web".into(),
            id: "id".into(),
            start: at(start),
            end: end.map(at),
            vcpu_millis: 500,
            memory_bytes: 512 << 20,
            storage_bytes: 0,
        }
    }

    #[test]
    fn an_interval_across_an_hour_boundary_is_split_at_it() {
        // 09:30 to 11:15: half of 9h, all of 10h, a quarter of 11h.
        let r = report(
            "ops",
            &[container(9 * 3600 + 1800, Some(11 * 3600 + 900))],
            at(0),
            at(86_400),
            at(86_400),
        );
        assert_eq!(r.hours.len(), 24);
        assert_eq!(r.hours[9].hour, at(9 * 3600));
        assert_eq!(r.hours[9].instance_hours.container, 0.5);
        assert_eq!(r.hours[10].instance_hours.container, 1.0);
        assert_eq!(r.hours[11].instance_hours.container, 0.25);
        assert_eq!(r.hours[8].instance_hours.container, 0.0);
        assert_eq!(r.totals.instance_hours.container, 1.75);
        assert_eq!(r.totals.vcpu_hours, 0.875);
        assert_eq!(r.totals.memory_gib_hours, 0.875);
        assert_eq!(r.totals.instance_hours.vm, 0.0);
        assert_eq!(
            serde_json::to_value(r.hours[10]).expect("json")["hour"],
            "2026-12-01T10:00:00Z"
        );
    }

    #[test]
    fn an_open_interval_counts_up_to_now_or_to() {
        let open = [container(3600, None)];
        // Now is 02:30: one and a half hours, nothing after now.
        let r = report("ops", &open, at(0), at(86_400), at(9000));
        assert_eq!(r.totals.instance_hours.container, 1.5);
        assert_eq!(r.hours[2].instance_hours.container, 0.5);
        assert_eq!(r.hours[3].instance_hours.container, 0.0);
        // The window ends at 02:00, before now: up to `to`.
        let r = report("ops", &open, at(0), at(7200), at(86_400));
        assert_eq!(r.hours.len(), 2);
        assert_eq!(r.totals.instance_hours.container, 1.0);
    }

    #[test]
    fn the_window_clips_intervals_and_partial_hours() {
        // Window 10:20 to 12:00 over a run 10:00 to 13:00.
        let r = report(
            "ops",
            &[container(10 * 3600, Some(13 * 3600))],
            at(10 * 3600 + 1200),
            at(12 * 3600),
            at(86_400),
        );
        assert_eq!(r.hours.len(), 2);
        assert_eq!(r.hours[0].hour, at(10 * 3600));
        let third = 1.0 - 1200.0 / 3600.0;
        assert_eq!(r.hours[0].instance_hours.container, 2400.0 / 3600.0);
        assert!((r.hours[0].instance_hours.container - third).abs() < 1e-12);
        assert_eq!(r.hours[1].instance_hours.container, 1.0);
        // Entirely before or after the window: nothing.
        let r = report(
            "ops",
            &[container(0, Some(3600)), container(20 * 3600, None)],
            at(3600),
            at(7200),
            at(86_400),
        );
        assert_eq!(r.totals, UsageTotals::default());
    }

    #[test]
    fn two_runs_of_one_instance_add_up_exactly_and_images_count_bytes() {
        let mut image = container(0, None);
        image.metered = Metered::Image;
        image.storage_bytes = 3 << 29; // 1.5 GiB
        let runs = [
            container(100, Some(1900)),
            container(2000, Some(5600)),
            image,
        ];
        let r = report("ops", &runs, at(0), at(7200), at(86_400));
        assert_eq!(r.totals.instance_hours.container, 5400.0 / 3600.0);
        assert_eq!(r.hours[0].instance_hours.container, 3400.0 / 3600.0);
        assert_eq!(r.hours[1].instance_hours.container, 2000.0 / 3600.0);
        assert_eq!(r.totals.image_gib_hours, 3.0);
        assert_eq!(r.hours[1].image_gib_hours, 1.5);
    }

    #[test]
    fn object_versions_count_their_bytes_apart_from_images() {
        use crate::domain::usage::object_record;
        // 1 GiB stored 00:30-01:30 then replaced by 2 GiB, still stored.
        let first = object_record("ops", "b", "k", "d1", 1 << 30, at(1800), Some(at(5400)));
        let second = object_record("ops", "b", "k", "d2", 2 << 30, at(5400), None);
        let r = report("ops", &[first, second], at(0), at(7200), at(7200));
        assert_eq!(r.hours[0].object_gib_hours, 0.5);
        assert_eq!(r.hours[1].object_gib_hours, 0.5 + 1.0);
        assert_eq!(r.totals.object_gib_hours, 2.0);
        assert_eq!(r.totals.image_gib_hours, 0.0);
        assert_eq!(r.totals.instance_hours.container, 0.0);
    }

    #[test]
    fn windows_parse_dates_and_times_and_refuse_empty_ones() {
        let now = at(5 * 3600);
        assert_eq!(window(None, None, now), Ok((at(0), at(86_400))));
        assert_eq!(
            window(Some("2026-12-01T10:00:00+01:00"), Some("2026-12-02"), now),
            Ok((at(9 * 3600), at(86_400)))
        );
        assert!(matches!(
            window(Some("yesterday"), None, now),
            Err(WindowError::BadTime { field: "from", .. })
        ));
        assert!(matches!(
            window(Some("2026-12-02"), Some("2026-12-01"), now),
            Err(WindowError::Empty { .. })
        ));
        assert!(matches!(
            window(Some("2020-01-01"), Some("2026-01-01"), now),
            Err(WindowError::TooLong { .. })
        ));
    }
}
