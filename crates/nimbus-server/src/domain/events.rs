//! Which events a change to an instance makes: the stored instance before
//! and after a write are compared, so every path that changes an instance
//! (an agent's report, the scheduler, the host liveness check) describes
//! its transitions the same way, and an event exists exactly when the
//! transition was stored.

use chrono::{DateTime, Utc};
use nimbus_api::{Event, EventObject, EventType, Instance, InstancePhase, Metadata};

/// An event before it gets its project, time and name.
#[derive(Clone, Debug, PartialEq)]
pub struct EventDraft {
    pub event_type: EventType,
    pub object: EventObject,
    pub message: String,
    pub host: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub restart_count: Option<u32>,
}

impl EventDraft {
    fn about_instance(instance: &Instance, event_type: EventType, message: String) -> Self {
        EventDraft {
            event_type,
            object: EventObject {
                kind: "instance".into(),
                name: instance.metadata.name.clone(),
            },
            message,
            host: instance.status.host.clone(),
            exit_code: None,
            signal: None,
            oom_killed: false,
            restart_count: None,
        }
    }
}

/// The name of an event: `<unix-nanos, 20 digits>-<id>`, so that name
/// order is time order. `seq` keeps the events of one write in order.
pub fn event_name(time: DateTime<Utc>, seq: u32, id: &str) -> String {
    let nanos = time.timestamp_nanos_opt().unwrap_or_default().max(0) as u64;
    format!("{:020}-{:03}{}", nanos, seq, &id[..id.len().min(8)])
}

/// The name prefix of events at or after `time`: names before it are older.
pub fn time_prefix(time: DateTime<Utc>) -> String {
    let nanos = time.timestamp_nanos_opt().unwrap_or_default().max(0) as u64;
    format!("{nanos:020}")
}

/// The events of `drafts`, in order, in `project`, at `now`.
pub fn build(project: &str, drafts: Vec<EventDraft>, now: DateTime<Utc>) -> Vec<Event> {
    drafts
        .into_iter()
        .enumerate()
        .map(|(seq, d)| {
            let mut metadata = Metadata::new("", Some(project));
            metadata.name = event_name(now, seq as u32, &metadata.id);
            metadata.created_at = now;
            metadata.updated_at = now;
            Event {
                metadata,
                event_type: d.event_type,
                object: d.object,
                message: d.message,
                host: d.host,
                exit_code: d.exit_code,
                signal: d.signal,
                oom_killed: d.oom_killed,
                restart_count: d.restart_count,
            }
        })
        .collect()
}

/// How a workload ended, in words: the agent's reason, or what is known.
fn exit_message(i: &Instance) -> String {
    let s = &i.status;
    let what = if s.oom_killed {
        "was killed: out of memory (OOM)".to_string()
    } else if let Some(sig) = s.signal {
        format!("was killed by signal {sig}")
    } else if let Some(code) = s.exit_code {
        format!("exited with code {code}")
    } else {
        "exited".to_string()
    };
    match s.exit_reason.as_ref().or(s.reason.as_ref()) {
        Some(r) if !r.is_empty() => format!("{what} ({r})"),
        _ => what,
    }
}

fn exited(after: &Instance) -> EventDraft {
    let mut d = EventDraft::about_instance(after, EventType::Exited, exit_message(after));
    d.exit_code = after.status.exit_code;
    d.signal = after.status.signal;
    d.oom_killed = after.status.oom_killed;
    d
}

fn started(after: &Instance) -> EventDraft {
    let mut d = EventDraft::about_instance(
        after,
        EventType::Started,
        match &after.status.host {
            Some(h) => format!("running on host {h:?}"),
            None => "running".into(),
        },
    );
    d.restart_count = Some(after.status.restart_count);
    d
}

/// The events of an instance changing from `before` to `after`, in the
/// order they happened.
pub fn instance_transitions(before: &Instance, after: &Instance) -> Vec<EventDraft> {
    use InstancePhase as P;
    let (was, now) = (before.status.phase, after.status.phase);
    let mut out = Vec::new();
    if before.status.host.is_none() {
        if let Some(host) = &after.status.host {
            out.push(EventDraft::about_instance(
                after,
                EventType::Scheduled,
                format!("bound to host {host:?}"),
            ));
        }
    }
    let restarted = after.status.restart_count > before.status.restart_count;
    let ended = |p: P| matches!(p, P::Exited | P::Backoff);
    // A workload that ended before its running was reported still started.
    let running_seen = matches!(was, P::Running | P::Paused) || ended(was);
    if ended(now) && !running_seen && after.status.started_at.is_some() {
        out.push(started(after));
    }
    // A report that already shows the restart may skip the exit before it.
    if (ended(now) && !ended(was)) || (restarted && !ended(was) && was == P::Running) {
        out.push(exited(after));
    }
    if restarted {
        let n = after.status.restart_count;
        let mut d = EventDraft::about_instance(
            after,
            EventType::Restarted,
            format!("restarted by its restart policy (restart {n})"),
        );
        d.restart_count = Some(n);
        out.push(d);
    }
    if now == P::Running && (restarted || !matches!(was, P::Running | P::Paused)) {
        out.push(started(after));
    }
    if now == P::Failed && was != P::Failed {
        let reason = after
            .status
            .reason
            .clone()
            .or_else(|| after.status.exit_reason.clone())
            .unwrap_or_else(|| "no reason given".into());
        let mut d =
            EventDraft::about_instance(after, EventType::Failed, format!("failed: {reason}"));
        d.exit_code = after.status.exit_code;
        d.signal = after.status.signal;
        d.oom_killed = after.status.oom_killed;
        out.push(d);
    }
    if now == P::Stopped && was != P::Stopped {
        out.push(EventDraft::about_instance(
            after,
            EventType::Stopped,
            "stopped on request".into(),
        ));
    }
    out
}

/// The instance was removed from the store.
pub fn instance_deleted(instance: &Instance) -> EventDraft {
    EventDraft::about_instance(instance, EventType::Deleted, "deleted".into())
}

/// `host` stopped sending heartbeats while running `instances` of a
/// project (their names), which are marked failed.
pub fn host_unreachable(host: &str, instances: &[String]) -> EventDraft {
    EventDraft {
        event_type: EventType::HostUnreachable,
        object: EventObject {
            kind: "host".into(),
            name: host.to_string(),
        },
        message: format!(
            "host {host:?} missed its heartbeats; its instances here are marked failed: {}",
            instances.join(", ")
        ),
        host: Some(host.to_string()),
        exit_code: None,
        signal: None,
        oom_killed: false,
        restart_count: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(phase: InstancePhase) -> Instance {
        let mut i = Instance {
            metadata: Metadata::new("web", Some("ops")),
            spec: nimbus_api::InstanceSpec {
                image: "alpine".into(),
                ..Default::default()
            },
            status: Default::default(),
        };
        i.status.phase = phase;
        i
    }

    fn types(d: &[EventDraft]) -> Vec<EventType> {
        d.iter().map(|d| d.event_type).collect()
    }

    #[test]
    fn binding_to_a_host_is_scheduled() {
        let before = instance(InstancePhase::Pending);
        let mut after = before.clone();
        after.status.phase = InstancePhase::Scheduled;
        after.status.host = Some("node1".into());
        let d = instance_transitions(&before, &after);
        assert_eq!(types(&d), [EventType::Scheduled]);
        assert_eq!(d[0].message, "bound to host \"node1\"");
    }

    #[test]
    fn running_then_exit_code_three() {
        let mut before = instance(InstancePhase::Scheduled);
        before.status.host = Some("node1".into());
        let mut running = before.clone();
        running.status.phase = InstancePhase::Running;
        assert_eq!(
            types(&instance_transitions(&before, &running)),
            [EventType::Started]
        );
        // A repeated report of the same phase makes nothing.
        assert!(instance_transitions(&running, &running).is_empty());
        let mut exited = running.clone();
        exited.status.phase = InstancePhase::Exited;
        exited.status.exit_code = Some(3);
        let d = instance_transitions(&running, &exited);
        assert_eq!(types(&d), [EventType::Exited]);
        assert_eq!(d[0].exit_code, Some(3));
        assert!(
            d[0].message.starts_with("exited with code 3"),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn an_exit_reported_before_running_still_started() {
        let mut before = instance(InstancePhase::Starting);
        before.status.host = Some("node1".into());
        let mut exited = before.clone();
        exited.status.phase = InstancePhase::Exited;
        exited.status.exit_code = Some(3);
        exited.status.started_at = Some(Utc::now());
        assert_eq!(
            types(&instance_transitions(&before, &exited)),
            [EventType::Started, EventType::Exited]
        );
        // Never started (no start time): only how it ended.
        exited.status.started_at = None;
        assert_eq!(
            types(&instance_transitions(&before, &exited)),
            [EventType::Exited]
        );
    }

    #[test]
    fn oom_and_signal_are_named() {
        let running = instance(InstancePhase::Running);
        let mut oom = running.clone();
        oom.status.phase = InstancePhase::Exited;
        oom.status.signal = Some(9);
        oom.status.oom_killed = true;
        let d = instance_transitions(&running, &oom);
        assert!(d[0].oom_killed);
        assert!(d[0].message.contains("OOM"), "{}", d[0].message);
        let mut killed = running.clone();
        killed.status.phase = InstancePhase::Exited;
        killed.status.signal = Some(15);
        let d = instance_transitions(&running, &killed);
        assert!(d[0].message.contains("signal 15"), "{}", d[0].message);
    }

    #[test]
    fn a_restart_is_exit_restart_start_even_when_reports_were_merged() {
        let running = instance(InstancePhase::Running);
        let mut backoff = running.clone();
        backoff.status.phase = InstancePhase::Backoff;
        backoff.status.exit_code = Some(1);
        assert_eq!(
            types(&instance_transitions(&running, &backoff)),
            [EventType::Exited]
        );
        let mut again = backoff.clone();
        again.status.phase = InstancePhase::Running;
        again.status.restart_count = 1;
        assert_eq!(
            types(&instance_transitions(&backoff, &again)),
            [EventType::Restarted, EventType::Started]
        );
        // Backoff never seen: the exit is still recorded, first.
        assert_eq!(
            types(&instance_transitions(&running, &again)),
            [EventType::Exited, EventType::Restarted, EventType::Started]
        );
    }

    #[test]
    fn failed_and_stopped_carry_the_reason() {
        let running = instance(InstancePhase::Running);
        let mut failed = running.clone();
        failed.status.phase = InstancePhase::Failed;
        failed.status.reason = Some("host \"n1\" is unreachable".into());
        let d = instance_transitions(&running, &failed);
        assert_eq!(types(&d), [EventType::Failed]);
        assert!(d[0].message.contains("unreachable"));
        let mut stopped = running.clone();
        stopped.status.phase = InstancePhase::Stopped;
        assert_eq!(
            types(&instance_transitions(&running, &stopped)),
            [EventType::Stopped]
        );
    }

    #[test]
    fn names_sort_in_time_then_write_order() {
        let t = DateTime::from_timestamp(1_700_000_000, 5).expect("time");
        let later = DateTime::from_timestamp(1_700_000_001, 0).expect("time");
        let drafts = vec![instance_deleted(&instance(InstancePhase::Running)); 12];
        let events = build("ops", drafts, t);
        let names: Vec<&str> = events.iter().map(|e| e.metadata.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(events[0].metadata.name < time_prefix(later));
        assert!(events[0].metadata.name.as_str() >= time_prefix(t).as_str());
    }
}
