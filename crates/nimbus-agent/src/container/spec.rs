//! `spec.json`: what the agent asks the shim to run.
//!
//! The agent writes this file before it spawns the shim; the shim only reads it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::shim::ShimError;

/// File name of the spec inside an instance directory.
pub const SPEC_FILE: &str = "spec.json";

/// Smallest writable layer the shim makes (the API's minimum too).
pub const MIN_DISK_BYTES: u64 = 16 << 20;

/// Everything the shim needs to run one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimSpec {
    pub instance_id: String,
    pub name: String,
    pub hostname: String,
    /// Unpacked image layer directories, lowest first. Shared between instances and
    /// never written to.
    pub layers: Vec<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: UserSpec,
    pub resources: Resources,
    pub restart: RestartPolicy,
    pub id_map: IdMap,
    pub stop_grace_ms: u64,
    pub log_max_bytes: u64,
    pub log_files: u32,
    /// A network namespace prepared by the agent (bind-mounted path) for the
    /// container to run in. `None`: a fresh namespace with loopback only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// Files copied over the image's `/etc/resolv.conf` and `/etc/hosts`
    /// (into the instance's upper layer, owned by the container's root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_file: Option<PathBuf>,
    /// Restarts made before this shim started, by an earlier shim that
    /// was lost: counted against `max_retries` and in the reported count.
    #[serde(default)]
    pub restarts_before: u32,
    /// Size of the writable layer: a sparse ext4 image loop-mounted under
    /// the instance dir holds the overlay's upper and work dirs, so a
    /// container that writes past it gets ENOSPC and the host's disk does
    /// not fill. `None` (a spec of an older agent): the upper dir sits on
    /// the host's filesystem, unlimited, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// Volumes the agent mounted on the host, bind-mounted into the
    /// container (`crate::volume::attach`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeBind>,
}

/// A host directory (a mounted volume) bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeBind {
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
    #[serde(default)]
    pub read_only: bool,
}

/// The user the container process runs as, in container ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
}

/// Resource limits, enforced through the instance's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Resources {
    pub memory_bytes: Option<u64>,
    /// 1000 = one CPU, enforced as a CFS quota.
    pub cpu_millis: Option<u64>,
    pub pids_max: Option<i64>,
}

/// The API's restart modes (`never`, `on_failure`, `always`), unchanged.
pub use nimbus_api::RestartMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RestartPolicy {
    pub policy: RestartMode,
    /// How many restarts are allowed; `None` means no limit.
    pub max_retries: Option<u32>,
}

/// Container uid/gid 0 maps to `host_id`, `size` ids in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub host_id: u32,
    pub size: u32,
}

impl ShimSpec {
    /// Reads and validates `<instance_dir>/spec.json`.
    pub fn load(instance_dir: &Path) -> Result<ShimSpec, ShimError> {
        let path = instance_dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ShimError::Io {
            what: format!("read instance spec {}", path.display()),
            source,
        })?;
        let spec: ShimSpec = serde_json::from_str(&text).map_err(|err| {
            ShimError::InvalidSpec(format!("{} is not a valid spec: {err}", path.display()))
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Writes the spec as `<instance_dir>/spec.json` (used by the agent and tests).
    pub fn save(&self, instance_dir: &Path) -> Result<(), ShimError> {
        let path = instance_dir.join(SPEC_FILE);
        let text = serde_json::to_vec_pretty(self)
            .map_err(|err| ShimError::InvalidSpec(format!("cannot encode spec: {err}")))?;
        crate::shim::state::write_atomically(&path, &text)
    }

    /// Rejects specs the shim cannot run safely, naming the offending value.
    pub fn validate(&self) -> Result<(), ShimError> {
        let bad = |msg: String| Err(ShimError::InvalidSpec(msg));
        let id_ok = !self.instance_id.is_empty()
            && self.instance_id.len() <= 128
            && self.instance_id != "."
            && self.instance_id != ".."
            && self
                .instance_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
        if !id_ok {
            return bad(format!(
                "instance id {:?} must be 1-128 characters of [A-Za-z0-9._+-]",
                self.instance_id
            ));
        }
        if self.args.is_empty() {
            return bad(format!("instance {:?} has no command", self.instance_id));
        }
        if self.layers.is_empty() {
            return bad(format!(
                "instance {:?} has no image layers",
                self.instance_id
            ));
        }
        if let Some(layer) = self.layers.iter().find(|l| !l.is_absolute()) {
            return bad(format!("layer path {} is not absolute", layer.display()));
        }
        if self.id_map.host_id == 0 || self.id_map.size == 0 {
            return bad(format!(
                "id map {}+{} must map container root to a non-root host range",
                self.id_map.host_id, self.id_map.size
            ));
        }
        if self.id_map.host_id.checked_add(self.id_map.size).is_none() {
            return bad(format!(
                "id map {}+{} overflows the uid space",
                self.id_map.host_id, self.id_map.size
            ));
        }
        if self.user.uid >= self.id_map.size || self.user.gid >= self.id_map.size {
            return bad(format!(
                "user {}:{} is outside the {} mapped ids",
                self.user.uid, self.user.gid, self.id_map.size
            ));
        }
        if !self.working_dir.is_empty() && !self.working_dir.starts_with('/') {
            return bad(format!(
                "working dir {:?} is not absolute",
                self.working_dir
            ));
        }
        for p in [&self.netns, &self.resolv_conf, &self.hosts_file]
            .into_iter()
            .flatten()
        {
            if !p.is_absolute() {
                return bad(format!("path {} is not absolute", p.display()));
            }
        }
        for v in &self.volumes {
            let dest_ok = v.destination.starts_with('/')
                && v.destination != "/"
                && !v.destination.split('/').any(|c| c == "..");
            if !v.source.is_absolute() || !dest_ok {
                return bad(format!(
                    "volume {} at {:?}: the source must be absolute and the destination an absolute path other than / without `..`",
                    v.source.display(),
                    v.destination
                ));
            }
        }
        if self.hostname.len() > 64 {
            return bad(format!(
                "hostname {:?} is longer than 64 bytes",
                self.hostname
            ));
        }
        if let Some(pids) = self.resources.pids_max {
            if pids < 1 {
                return bad(format!("pids limit {pids} must be at least 1"));
            }
        }
        if let Some(mem) = self.resources.memory_bytes {
            if mem < 4 * 1024 * 1024 {
                return bad(format!("memory limit {mem} bytes is below 4 MiB"));
            }
        }
        if let Some(disk) = self.disk_bytes {
            if disk < MIN_DISK_BYTES {
                return bad(format!(
                    "writable layer of {disk} bytes is below {} MiB",
                    MIN_DISK_BYTES >> 20
                ));
            }
        }
        if self.resources.cpu_millis == Some(0) {
            return bad("cpu limit 0 millis would never run".to_string());
        }
        Ok(())
    }
}
