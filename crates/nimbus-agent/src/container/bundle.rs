//! The OCI bundle (`<dir>/bundle/config.json`) the shim hands to libcontainer.
//!
//! Security defaults follow runc/Docker: a user namespace mapping container root to an
//! unprivileged host range, a conservative capability set, no new privileges, a
//! seccomp deny list, masked and read-only `/proc` paths and a deny-by-default device
//! cgroup.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    get_default_maskedpaths, get_default_readonly_paths, Capability, LinuxBuilder,
    LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder,
    LinuxSyscallBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::spec::ShimSpec;
use crate::shim::ShimError;

/// Capabilities a container process keeps (bounding, effective and permitted sets).
/// `CAP_NET_RAW` stays: the starter image's busybox (1.35) `ping` knows
/// raw sockets only. Processes without it (another user, dropped
/// capabilities) ping through ICMP datagram sockets, which
/// `net.ipv4.ping_group_range` opens to every group of the container.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Syscalls that fail with EPERM inside a container. Everything else is allowed:
/// the user namespace and the capability set already stop most of these, the filter
/// is the second wall (and covers kernels where a namespaced capability suffices).
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "adjtimex",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
    "_sysctl",
];

/// Open-file limit for container processes; must stay below the host hard limit
/// because a user namespace cannot raise it.
pub const NOFILE_SOFT: u64 = 1024;
pub const NOFILE_HARD: u64 = 4096;

pub const CFS_PERIOD_US: u64 = 100_000;

/// Paths of the bundle inside an instance directory.
pub fn bundle_dir(instance_dir: &Path) -> PathBuf {
    instance_dir.join("bundle")
}

/// The cgroup every instance gets, relative to each hierarchy's root:
/// `/nimbus/<id>`, or `<delegated subtree>/instances/<id>` on a unified
/// host under systemd (see [`crate::host::layout`]).
pub fn cgroup_path(instance_id: &str) -> PathBuf {
    crate::host::layout::current_or_legacy().instance_cgroup(instance_id)
}

fn spec_err(what: &str) -> impl Fn(oci_spec::OciSpecError) -> ShimError + '_ {
    move |err| ShimError::InvalidSpec(format!("cannot build OCI {what}: {err}"))
}

/// The umask of container processes (init and exec'd ones).
pub const CONTAINER_UMASK: u32 = 0o022;

/// Writes `<dir>/bundle/config.json` for `spec` with the rootfs at `rootfs`.
pub fn write_bundle(instance_dir: &Path, spec: &ShimSpec, rootfs: &Path) -> Result<(), ShimError> {
    let dir = bundle_dir(instance_dir);
    std::fs::create_dir_all(&dir).map_err(|source| ShimError::Io {
        what: format!("create bundle dir {}", dir.display()),
        source,
    })?;
    let config = build_oci_spec(spec, rootfs)?;
    let path = dir.join("config.json");
    let text = serde_json::to_vec_pretty(&config)
        .map_err(|err| ShimError::InvalidSpec(format!("cannot encode OCI config: {err}")))?;
    crate::shim::state::write_atomically(&path, &text)
}

/// Builds the OCI runtime spec for one instance.
pub fn build_oci_spec(spec: &ShimSpec, rootfs: &Path) -> Result<Spec, ShimError> {
    let root = RootBuilder::default()
        .path(rootfs)
        .readonly(false)
        .build()
        .map_err(spec_err("root"))?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(spec.user.uid)
                .gid(spec.user.gid)
                // The shim runs with the daemon's private umask (077); the
                // workload gets the usual one, as other runtimes give it.
                .umask(CONTAINER_UMASK)
                .build()
                .map_err(spec_err("user"))?,
        )
        .args(spec.args.clone())
        .env(environment(&spec.env))
        .cwd(if spec.working_dir.is_empty() {
            "/".to_string()
        } else {
            spec.working_dir.clone()
        })
        .capabilities(default_capabilities()?)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(NOFILE_SOFT)
            .hard(NOFILE_HARD)
            .build()
            .map_err(spec_err("rlimit"))?])
        .no_new_privileges(true)
        .build()
        .map_err(spec_err("process"))?;

    let id_mapping = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(spec.id_map.host_id)
        .size(spec.id_map.size)
        .build()
        .map_err(spec_err("id mapping"))?;
    // With a prepared network namespace the shim has joined it already and
    // the container inherits it: that namespace belongs to the host's user
    // namespace, so the container's root cannot reconfigure its interface.
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::User,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .filter(|t| spec.netns.is_none() || *t != LinuxNamespaceType::Network)
    .map(|typ| {
        LinuxNamespaceBuilder::default()
            .typ(typ)
            .build()
            .map_err(spec_err("namespace"))
    })
    .collect::<Result<Vec<_>, _>>()?;

    // A network namespace of its own (no Nimbus network) is made by the
    // container's init inside its user namespace, which may set its
    // sysctls. One the agent prepared belongs to the host's user
    // namespace and gets the same settings from the agent.
    let sysctl: std::collections::HashMap<String, String> = if spec.netns.is_none() {
        [(
            "net.ipv4.ping_group_range".to_string(),
            // Group ids as the container sees them (written from inside
            // its user namespace): all of its mapped range.
            format!("0 {}", spec.id_map.size.saturating_sub(1)),
        )]
        .into()
    } else {
        Default::default()
    };
    let linux = LinuxBuilder::default()
        .sysctl(sysctl)
        .uid_mappings(vec![id_mapping])
        .gid_mappings(vec![id_mapping])
        .namespaces(namespaces)
        .cgroups_path(cgroup_path(&spec.instance_id))
        .resources(resources(spec)?)
        .masked_paths(masked_paths())
        .readonly_paths(get_default_readonly_paths())
        .seccomp(default_seccomp()?)
        .build()
        .map_err(spec_err("linux section"))?;

    SpecBuilder::default()
        .version("1.0.2")
        .root(root)
        .hostname(spec.hostname.clone())
        .mounts(mounts_for(spec)?)
        .process(process)
        .linux(linux)
        .build()
        .map_err(spec_err("spec"))
}

/// The spec's environment, with a PATH added when the image did not set one.
pub fn environment(env: &[String]) -> Vec<String> {
    let mut env = env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    env
}

pub fn default_capabilities() -> Result<LinuxCapabilities, ShimError> {
    let set: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    let mut caps = LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .build()
        .map_err(spec_err("capabilities"))?;
    caps.set_inheritable(None);
    caps.set_ambient(None);
    Ok(caps)
}

/// runc's masked paths plus a few newer /proc and /sys files that leak host state.
fn masked_paths() -> Vec<String> {
    let mut paths = get_default_maskedpaths();
    for extra in [
        "/proc/interrupts",
        "/proc/timer_list",
        "/sys/devices/virtual/powercap",
    ] {
        if !paths.iter().any(|p| p == extra) {
            paths.push(extra.to_string());
        }
    }
    paths
}

pub fn default_seccomp() -> Result<LinuxSeccomp, ShimError> {
    let deny = LinuxSyscallBuilder::default()
        .names(
            DENIED_SYSCALLS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::EPERM as u32)
        .build()
        .map_err(spec_err("seccomp rule"))?;
    let builder = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![deny]);
    #[cfg(target_arch = "x86_64")]
    let builder = {
        use oci_spec::runtime::Arch;
        // 32-bit syscall entry points must see the same deny list.
        builder.architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
    };
    builder.build().map_err(spec_err("seccomp"))
}

fn resources(spec: &ShimSpec) -> Result<oci_spec::runtime::LinuxResources, ShimError> {
    let deny_all_devices = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(spec_err("device rule"))?;
    let mut builder = LinuxResourcesBuilder::default().devices(vec![deny_all_devices]);
    if let Some(bytes) = spec.resources.memory_bytes {
        let limit = i64::try_from(bytes).map_err(|_| {
            ShimError::InvalidSpec(format!("memory limit {bytes} bytes is too large"))
        })?;
        // swap = memory: the container cannot swap, so the limit really OOM-kills.
        builder = builder.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()
                .map_err(spec_err("memory limit"))?,
        );
    }
    if let Some(millis) = spec.resources.cpu_millis {
        let quota = i64::try_from(millis.saturating_mul(CFS_PERIOD_US) / 1000).map_err(|_| {
            ShimError::InvalidSpec(format!("cpu limit {millis} millis is too large"))
        })?;
        builder = builder.cpu(
            LinuxCpuBuilder::default()
                .quota(quota.max(1000))
                .period(CFS_PERIOD_US)
                .build()
                .map_err(spec_err("cpu limit"))?,
        );
    }
    if let Some(pids) = spec.resources.pids_max {
        builder = builder.pids(
            LinuxPidsBuilder::default()
                .limit(pids)
                .build()
                .map_err(spec_err("pids limit"))?,
        );
    }
    builder.build().map_err(spec_err("resources"))
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, ShimError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err("mount"))
}

/// sysfs belongs to a network namespace: in one the host prepared (owned by
/// the host's user namespace) the container's root may not mount it, so the
/// host's /sys is bind-mounted read-only instead, as other runtimes do.
fn mounts_for(spec: &ShimSpec) -> Result<Vec<Mount>, ShimError> {
    let mut mounts = default_mounts()?;
    if spec.netns.is_some() {
        for m in mounts.iter_mut() {
            if m.destination() == Path::new("/sys") {
                *m = mount(
                    "/sys",
                    "bind",
                    "/sys",
                    &["rbind", "nosuid", "noexec", "nodev", "ro"],
                )?;
            }
        }
    }
    // Volumes last: over the defaults, never under them.
    for v in &spec.volumes {
        let mut options = vec!["rbind", "nosuid", "nodev"];
        if v.read_only {
            options.push("ro");
        }
        mounts.push(mount(
            &v.destination,
            "bind",
            &v.source.to_string_lossy(),
            &options,
        )?);
    }
    Ok(mounts)
}

fn default_mounts() -> Result<Vec<Mount>, ShimError> {
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::spec::*;

    pub(crate) fn sample_spec() -> ShimSpec {
        ShimSpec {
            instance_id: "i-1".into(),
            name: "web".into(),
            hostname: "web-1".into(),
            layers: vec![PathBuf::from("/layers/a")],
            args: vec!["/bin/sh".into()],
            env: vec![],
            working_dir: String::new(),
            user: UserSpec::default(),
            resources: Resources {
                memory_bytes: Some(64 << 20),
                cpu_millis: Some(500),
                pids_max: Some(20),
            },
            restart: RestartPolicy::default(),
            id_map: IdMap {
                host_id: 200_000,
                size: 65536,
            },
            stop_grace_ms: 1000,
            log_max_bytes: 1 << 20,
            log_files: 2,
            netns: None,
            resolv_conf: None,
            hosts_file: None,
            restarts_before: 0,
            disk_bytes: None,
            volumes: Vec::new(),
        }
    }

    #[test]
    fn spec_maps_limits_and_ids() {
        let oci = build_oci_spec(&sample_spec(), Path::new("/r")).expect("build spec");
        let json = serde_json::to_value(&oci).expect("encode");
        let linux = &json["linux"];
        assert_eq!(linux["uidMappings"][0]["hostID"], 200_000);
        assert_eq!(linux["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(linux["resources"]["memory"]["swap"], 64 << 20);
        assert_eq!(linux["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(linux["resources"]["pids"]["limit"], 20);
        assert_eq!(linux["cgroupsPath"], "/nimbus/i-1");
        assert_eq!(json["hostname"], "web-1");
        assert_eq!(json["process"]["noNewPrivileges"], true);
        let caps = json["process"]["capabilities"]["bounding"]
            .as_array()
            .expect("bounding caps");
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        // No prepared namespace: the container's own gets ping for all its groups.
        assert_eq!(
            linux["sysctl"]["net.ipv4.ping_group_range"],
            format!("0 {}", sample_spec().id_map.size - 1)
        );
    }

    #[test]
    fn volumes_are_bind_mounted_read_only_when_asked() {
        let mut spec = sample_spec();
        spec.volumes = vec![
            VolumeBind {
                source: "/i/volumes/data/mnt".into(),
                destination: "/var/lib/db".into(),
                read_only: false,
            },
            VolumeBind {
                source: "/i/volumes/conf/mnt".into(),
                destination: "/etc/app".into(),
                read_only: true,
            },
        ];
        spec.validate().expect("valid");
        let json = serde_json::to_value(build_oci_spec(&spec, Path::new("/r")).expect("build"))
            .expect("encode");
        let mounts = json["mounts"].as_array().expect("mounts");
        let find = |dest: &str| {
            mounts
                .iter()
                .find(|m| m["destination"] == dest)
                .unwrap_or_else(|| panic!("no mount at {dest}: {mounts:?}"))
        };
        let data = find("/var/lib/db");
        assert_eq!(data["source"], "/i/volumes/data/mnt");
        assert!(!data["options"]
            .as_array()
            .expect("options")
            .contains(&"ro".into()));
        assert!(find("/etc/app")["options"]
            .as_array()
            .expect("options")
            .contains(&"ro".into()));
        spec.volumes[0].destination = "/a/../etc".into();
        assert!(spec.validate().is_err());
    }
}
