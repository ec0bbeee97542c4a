//! Version skew, data side: what a server or agent one release newer
//! sends or stores may carry fields this build does not know. Every type
//! that travels between servers and agents (API bodies, watch lines,
//! stored resources) must read such a document as if the fields were not
//! there, at every level of nesting, rather than refuse it.

use nimbus_api::{
    BuildVersion, Host, HostStatus, Image, ImageSpec, ImageStatus, Instance, InstanceAddress,
    InstanceKind, InstancePhase, Metadata, RegisterHost, ResourceList, ServerInfo, ServerList,
    ServerRecord, ServerVersion, WatchEvent, WatchEventType,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// Fields whose value is a map of the user's keys, not a struct: a key
/// added there is data, not an unknown field.
const USER_MAPS: &[&str] = &["labels", "env", "secret_env", "annotations"];

/// Adds a field no release knows to every JSON object of `v`, except the
/// user's maps; returns how many were added.
fn add_future_fields(v: &mut Value) -> usize {
    match v {
        Value::Object(map) => {
            let mut added = 0;
            for (key, child) in map.iter_mut() {
                if !USER_MAPS.contains(&key.as_str()) {
                    added += add_future_fields(child);
                }
            }
            map.insert(
                "field_from_a_newer_release".into(),
                json!({"nested": [1, "two", {"three": 3}], "flag": true}),
            );
            added + 1
        }
        Value::Array(items) => items.iter_mut().map(add_future_fields).sum(),
        _ => 0,
    }
}

/// `value` with unknown fields added everywhere reads back as `value`.
fn reads_past_unknown_fields<T: Serialize + DeserializeOwned>(what: &str, value: &T) {
    let plain = serde_json::to_value(value).expect("serialize");
    let mut newer = plain.clone();
    let added = add_future_fields(&mut newer);
    assert!(added > 0, "{what}: nothing to add to");
    let read: T = serde_json::from_value(newer)
        .unwrap_or_else(|e| panic!("{what} with {added} unknown fields was refused: {e}"));
    assert_eq!(
        serde_json::to_value(&read).expect("serialize"),
        plain,
        "{what}: the unknown fields changed what was read"
    );
}

fn instance() -> Instance {
    let mut metadata = Metadata::new("web", Some("ops"));
    metadata.labels.insert("tier".into(), "front".into());
    let mut i = Instance {
        metadata,
        spec: Default::default(),
        status: Default::default(),
    };
    i.spec.kind = InstanceKind::Container;
    i.spec.image = "busybox".into();
    i.spec.args = vec!["sleep".into(), "600".into()];
    i.spec.env.insert("A".into(), "1".into());
    i.spec.resources.memory_bytes = Some(64 << 20);
    i.spec.networks = vec!["backend".into()];
    i.status.phase = InstancePhase::Running;
    i.status.host = Some("node7".into());
    i.status.pid = Some(42);
    i.status.addresses = vec![InstanceAddress {
        network: "backend".into(),
        network_id: "n1".into(),
        ip: "10.20.0.2".parse().expect("ip"),
        prefix_len: 24,
        gateway: "10.20.0.1".parse().expect("ip"),
        mac: "02:00:00:00:00:01".into(),
    }];
    i
}

fn host_status() -> HostStatus {
    HostStatus {
        cpus: 4,
        memory_bytes: 8 << 30,
        architecture: "amd64".into(),
        agent_version: "0.1.0".into(),
        agent_protocol: 1,
        fence_after_ms: Some(8000),
        last_heartbeat: Some(chrono::Utc::now()),
        ..Default::default()
    }
}

#[test]
fn instances_hosts_and_their_watch_lines_read_past_fields_of_a_newer_release() {
    let i = instance();
    reads_past_unknown_fields("an instance", &i);
    reads_past_unknown_fields(
        "an instance watch line",
        &WatchEvent {
            event_type: WatchEventType::Modified,
            revision: 7,
            object: Some(i.clone()),
            error: None,
        },
    );
    reads_past_unknown_fields(
        "a page of instances",
        &ResourceList {
            items: vec![i],
            revision: 7,
            continue_token: None,
        },
    );
    let host = Host {
        metadata: Metadata::new("node7", None),
        spec: Default::default(),
        status: host_status(),
    };
    reads_past_unknown_fields("a host", &host);
    reads_past_unknown_fields("a heartbeat", &host_status());
    reads_past_unknown_fields(
        "a registration",
        &RegisterHost {
            name: "node7".into(),
            labels: [("site".to_string(), "bj".to_string())].into(),
            spec: Default::default(),
            status: host_status(),
        },
    );
    let image = Image {
        metadata: Metadata::new("busybox", Some("ops")),
        spec: ImageSpec {
            source: "rootfs.tar".into(),
        },
        status: ImageStatus {
            layers: vec!["sha256:00".into()],
            ..Default::default()
        },
    };
    reads_past_unknown_fields("an image", &image);
}

#[test]
fn server_records_and_versions_read_past_fields_of_a_newer_release() {
    let record = ServerRecord {
        name: "s1".into(),
        endpoint: "https://127.0.0.1:7443".into(),
        version: "0.1.0".into(),
        protocol: 1,
        started_at: chrono::Utc::now(),
    };
    reads_past_unknown_fields("a server record", &record);
    reads_past_unknown_fields(
        "the server list",
        &ServerList {
            items: vec![ServerInfo {
                record,
                leader: true,
            }],
            leader: Some("s1".into()),
            answered_by: "s1".into(),
        },
    );
    reads_past_unknown_fields("a server version", &ServerVersion::current("s1"));
}

#[test]
fn records_of_builds_before_protocol_levels_read_as_level_zero() {
    let old_record: ServerRecord = serde_json::from_value(json!({
        "name": "s0", "endpoint": "", "version": "0.0.9",
        "started_at": "2026-11-01T00:00:00Z"
    }))
    .expect("a record without a protocol level");
    assert_eq!(old_record.protocol, 0);
    let old_status: HostStatus = serde_json::from_value(json!({
        "phase": "ready", "cpus": 1, "memory_bytes": 1, "disk_bytes": 1,
        "architecture": "amd64", "kernel": "6.1", "agent_version": "0.0.9"
    }))
    .expect("a heartbeat without a protocol level");
    assert_eq!(old_status.agent_protocol, 0);
    let current = BuildVersion::current();
    let old = BuildVersion {
        release: old_status.agent_version,
        protocol: old_status.agent_protocol,
    };
    assert_eq!(
        nimbus_api::version::check_agent_skew("h", &old, &current),
        Ok(()),
        "level 0 is within one of level {}",
        current.protocol
    );
}
