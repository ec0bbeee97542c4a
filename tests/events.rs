//! Project events as a user reads them: `nimbus events -o json` and the
//! table show what happened to real containers (scheduled, started,
//! exited with code 3; restarted by `--restart always`), `nimbus events
//! --follow` prints an event of an instance started after it began, and
//! events older than `--events-max-age` vanish.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{wait_until, Cloud};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// The events of `instance`, oldest first, as `type` strings; and the events.
fn events_of(cloud: &Cloud, instance: &str) -> (Vec<String>, Vec<Value>) {
    let page = cloud
        .json(&["events", "--limit", "500"])
        .expect("events -o json");
    let mut items: Vec<Value> = page["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["object"]["name"] == instance)
        .collect();
    items.reverse();
    let types = items
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect();
    (types, items)
}

/// Whether `want` appears in `seen` in order (other events may come between).
fn in_order(seen: &[String], want: &[&str]) -> bool {
    let mut rest = seen.iter();
    want.iter().all(|w| rest.any(|s| s == w))
}

#[test]
fn an_exit_code_and_a_restart_are_events_in_order() {
    let cloud = Cloud::start();
    cloud.ok(&[
        "instance", "run", "three", "--image", "busybox", "--", "sh", "-c", "exit 3",
    ]);
    cloud.ok(&[
        "instance",
        "run",
        "loop",
        "--image",
        "busybox",
        "--restart",
        "always",
        "--",
        "sh",
        "-c",
        "sleep 0.2; exit 0",
    ]);
    cloud.wait_phase("three", &["exited"], T);
    let (types, items) = wait_until(T, "the exit of three as an event", || {
        let (types, items) = events_of(&cloud, "three");
        types
            .iter()
            .any(|t| t == "exited")
            .then_some((types, items))
    });
    assert!(
        in_order(&types, &["scheduled", "started", "exited"]),
        "{types:?}: {items:#?}"
    );
    let exited = items
        .iter()
        .find(|e| e["type"] == "exited")
        .expect("exited");
    assert_eq!(exited["exit_code"], 3, "{exited}");
    assert_eq!(exited["metadata"]["project"], "default", "{exited}");
    assert!(
        exited["message"]
            .as_str()
            .unwrap_or("")
            .contains("exited with code 3"),
        "{exited}"
    );
    // Once each: a status reported again is not a new event.
    assert_eq!(
        types.iter().filter(|t| *t == "exited").count(),
        1,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| *t == "started").count(),
        1,
        "{types:?}"
    );

    let (types, items) = wait_until(T, "loop's restart as an event", || {
        let (types, items) = events_of(&cloud, "loop");
        types
            .iter()
            .any(|t| t == "restarted")
            .then_some((types, items))
    });
    assert!(
        in_order(&types, &["scheduled", "started", "exited", "restarted"]),
        "{types:?}: {items:#?}"
    );
    let restarted = items
        .iter()
        .find(|e| e["type"] == "restarted")
        .expect("restarted");
    assert_eq!(restarted["restart_count"], 1, "{restarted}");

    // For people: a table, newest first.
    let table = cloud.ok(&["events"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["TIME", "TYPE", "OBJECT", "MESSAGE"], "{table}");
    assert!(
        table.lines().any(|l| l.contains("exited")
            && l.contains("instance/three")
            && l.contains("exited with code 3")),
        "{table}"
    );

    // Removed: a `deleted` event.
    cloud.ok(&["instance", "rm", "three"]);
    wait_until(T, "the deletion of three as an event", || {
        let (types, _) = events_of(&cloud, "three");
        (types.last().map(String::as_str) == Some("deleted")).then_some(())
    });
    cloud.ok(&["instance", "stop", "loop"]);
}

#[test]
fn follow_prints_events_of_an_instance_started_after_it_began() {
    let cloud = Cloud::start();
    cloud.ok(&[
        "instance", "run", "early", "--image", "busybox", "--", "sh", "-c", "exit 0",
    ]);
    wait_until(T, "the exit of early as an event", || {
        let (types, _) = events_of(&cloud, "early");
        types.iter().any(|t| t == "exited").then_some(())
    });
    let mut follower = cloud
        .command()
        .args(["events", "--follow", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nimbus events --follow");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // It prints the latest events first, oldest first: early's exit shows
    // it has read its list, and it watches from that list's revision, so
    // everything about `late` comes through the watch.
    let first = rx
        .recv_timeout(T)
        .expect("--follow prints the earlier events");
    let first: Value = serde_json::from_str(&first).expect("a JSON line");
    assert_eq!(first["object"]["name"], "early", "{first}");
    assert_eq!(first["type"], "scheduled", "oldest first: {first}");
    cloud.ok(&[
        "instance", "run", "late", "--image", "busybox", "--", "sleep", "600",
    ]);
    cloud.wait_phase("late", &["running"], T);
    let deadline = std::time::Instant::now() + T;
    let mut seen = Vec::new();
    let started = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => panic!("no started event of late from --follow; saw {seen:#?}"),
        };
        let event: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("--follow -o json printed {line:?}: {e}"));
        if event["object"]["name"] == "late" && event["type"] == "started" {
            break event;
        }
        seen.push(event);
    };
    assert_eq!(started["metadata"]["project"], "default", "{started}");
    assert!(
        seen.iter()
            .any(|e| e["object"]["name"] == "late" && e["type"] == "scheduled"),
        "scheduled comes first: {seen:#?}"
    );
    let _ = follower.kill();
    let _ = follower.wait();
    let _ = reader.join();
    cloud.ok(&["instance", "rm", "--force", "late"]);
}

#[test]
fn events_older_than_the_maximum_age_vanish() {
    let cloud = Cloud::start_with(&["--events-max-age", "3s"]);
    cloud.ok(&[
        "instance", "run", "brief", "--image", "busybox", "--", "sh", "-c", "exit 0",
    ]);
    cloud.wait_phase("brief", &["exited"], T);
    wait_until(T, "the events of brief", || {
        let (types, _) = events_of(&cloud, "brief");
        types.iter().any(|t| t == "exited").then_some(())
    });
    wait_until(
        Duration::from_secs(30),
        "the old events to be pruned",
        || events_of(&cloud, "brief").0.is_empty().then_some(()),
    );
    // The instance is still there; only its events aged out.
    assert_eq!(cloud.instance("brief")["status"]["phase"], "exited");
}
