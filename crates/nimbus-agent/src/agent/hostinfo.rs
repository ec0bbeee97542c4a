//! What the agent tells the server about its host.

use nimbus_api::{HostPhase, HostStatus};

use super::AgentConfig;

pub fn collect(config: &AgentConfig) -> HostStatus {
    let build = nimbus_api::BuildVersion::current();
    HostStatus {
        phase: HostPhase::Ready,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: config
            .instances_memory_bytes
            .or_else(mem_total_bytes)
            .unwrap_or(0),
        disk_bytes: disk_bytes(&config.data_dir).unwrap_or(0),
        disk_available_bytes: disk_available_bytes(&config.data_dir).unwrap_or(0),
        architecture: architecture().to_string(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        cgroup: cgroup_layout().to_string(),
        cgroup_delegated: crate::host::layout::current()
            .ok()
            .and_then(|l| l.delegated.as_ref())
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        last_heartbeat: None,
        agent_version: build.release,
        agent_protocol: build.protocol,
        instances: 0,
        // Filled in by the agent from its probe.
        accelerator: String::new(),
        accelerator_reason: String::new(),
        // With none, the agent does not stop its instances when cut off
        // from the servers, so none may be moved off its host.
        fence_after_ms: config.fence_after_ms,
        tunnel_address: config.tunnel.map(|t| t.address),
        tunnel_port: config.tunnel.map(|t| t.port),
        io_endpoint: config
            .io_endpoint
            .as_ref()
            .map(|e| e.endpoint.clone())
            .unwrap_or_default(),
        io_certificate_sha256: config
            .io_endpoint
            .as_ref()
            .map(|e| e.certificate_sha256.clone())
            .unwrap_or_default(),
    }
}

/// OCI architecture names.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn mem_total_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn disk_bytes(path: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some(st.blocks() as u64 * st.fragment_size() as u64)
}

/// Free to unprivileged writers (what ext4 keeps for root stays out).
fn disk_available_bytes(path: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// `v2` (unified only), `hybrid` (v1 controllers plus a v2 mount) or `v1`.
pub fn cgroup_layout() -> String {
    crate::host::layout::detect_mode_on(&crate::host::cgroupfs::HostCgroupFs).to_string()
}
