//! From an API instance and its image to the shim's spec.

use std::path::PathBuf;

use nimbus_api::{Image, Instance};

use crate::container::spec::{self as shim, IdMap, ShimSpec, UserSpec};

pub const DEFAULT_STOP_GRACE_MS: u64 = 10_000;
/// Files an instance's log rotates through, the live one included.
pub const LOG_FILES: u32 = 3;
/// The log cap of an instance whose spec carries none (made by a server
/// from before caps were written into specs): three files of 10 MiB.
pub const DEFAULT_LOG_CAP_BYTES: u64 = 30 << 20;

/// How big each of an instance's log files may grow, and how many are
/// kept: together they stay within the spec's `log_max_bytes`.
pub fn log_rotation(instance: &Instance) -> (u64, u32) {
    let cap = instance.spec.log_max_bytes.unwrap_or(DEFAULT_LOG_CAP_BYTES);
    (cap / u64::from(LOG_FILES), LOG_FILES)
}
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn parse_user(user: Option<&str>) -> UserSpec {
    let Some(u) = user else {
        return UserSpec::default();
    };
    let mut parts = u.split(':');
    let uid = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let gid = parts.next().and_then(|p| p.parse().ok()).unwrap_or(uid);
    UserSpec { uid, gid }
}

pub fn shim_spec(
    instance: &Instance,
    image: &Image,
    layers: Vec<PathBuf>,
    id_map: IdMap,
    secret_env: &std::collections::BTreeMap<String, String>,
) -> ShimSpec {
    let defaults = &image.status.defaults;
    let args = if instance.spec.args.is_empty() {
        defaults
            .entrypoint
            .iter()
            .chain(defaults.cmd.iter())
            .cloned()
            .collect()
    } else if !defaults.entrypoint.is_empty()
        && instance.spec.args.first() != defaults.entrypoint.first()
    {
        // Like `docker run image args`: args replace cmd, the entrypoint stays,
        // unless the user spelled out the entrypoint themselves.
        defaults
            .entrypoint
            .iter()
            .chain(instance.spec.args.iter())
            .cloned()
            .collect()
    } else {
        instance.spec.args.clone()
    };
    let mut env: Vec<String> = Vec::new();
    let mut set = |kv: String| {
        let key = kv.split('=').next().unwrap_or_default().to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(kv);
    };
    set(DEFAULT_PATH.to_string());
    set(format!("HOSTNAME={}", instance.metadata.name));
    for e in &defaults.env {
        set(e.clone());
    }
    for (k, v) in instance.spec.env.iter().chain(secret_env) {
        set(format!("{k}={v}"));
    }
    let user = instance.spec.user.as_deref().or(defaults
        .user
        .as_deref()
        .filter(|u| u.split(':').all(|p| p.parse::<u32>().is_ok())));
    ShimSpec {
        instance_id: instance.metadata.id.clone(),
        name: instance.metadata.name.clone(),
        hostname: instance.metadata.name.clone(),
        layers,
        args,
        env,
        working_dir: instance
            .spec
            .working_dir
            .clone()
            .or_else(|| defaults.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        user: parse_user(user),
        resources: {
            // The server fills in the project's defaults at create; an
            // instance stored by an older server may have none, and must
            // still not run unlimited.
            let limits = nimbus_api::InstanceDefaults::effective(
                &instance.spec.resources,
                &Default::default(),
            );
            shim::Resources {
                memory_bytes: limits.memory_bytes,
                cpu_millis: limits.cpu_millis,
                pids_max: limits.pids_max,
            }
        },
        restart: shim::RestartPolicy {
            policy: instance.spec.restart_policy.mode,
            max_retries: instance.spec.restart_policy.max_retries,
        },
        id_map,
        stop_grace_ms: instance.spec.stop_grace_ms.unwrap_or(DEFAULT_STOP_GRACE_MS),
        log_max_bytes: log_rotation(instance).0,
        log_files: log_rotation(instance).1,
        netns: None,
        resolv_conf: None,
        hosts_file: None,
        restarts_before: 0,
        // The driver fills in the host's default when this is unset.
        disk_bytes: instance.spec.resources.disk_bytes,
        volumes: Vec::new(),
    }
}
