//! Shared fixtures for the container driver's end-to-end tests: a busybox image
//! layer, an instance directory with a spec, and a guard that stops and cleans up
//! whatever a test started, even when the test fails.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nimbus_agent::container::{
    cleanup_instance_dir, IdMap, Resources, RestartPolicy, ShimSpec, UserSpec,
};
use nimbus_agent::shim::{read_state, spawn_shim, Phase, ShimClient, ShimState};

pub const SHIM_EXE: &str = env!("CARGO_BIN_EXE_nimbus-shim-test");

/// Set by `scripts/test`, which runs as root: there a test that would skip
/// fails instead, so a suite that ran nothing cannot pass.
pub const NO_SKIP_ENV: &str = "NIMBUS_TESTS_REQUIRE_ROOT";

/// True when the test may touch mounts, cgroups and namespaces. Otherwise
/// the test is skipped: a failure under `scripts/test` ([`NO_SKIP_ENV`]),
/// elsewhere a SKIPPED line written straight to the stderr handle, which the
/// harness does not capture (it captures `print!`/`eprint!` only), so the
/// line shows in `cargo test`'s output.
pub fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    if std::env::var_os(NO_SKIP_ENV).is_some() {
        panic!("{test} needs root (mounts, cgroups, namespaces), and {NO_SKIP_ENV} is set: under scripts/test every test must run");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED {test}: the container tests need root; run them as root to test containers\n"
    );
    false
}

/// Builds a root-owned busybox layer at `dir`.
pub fn busybox_layer(dir: &Path) {
    for sub in ["bin", "proc", "dev", "sys", "tmp", "etc", "mnt", "root"] {
        std::fs::create_dir_all(dir.join(sub)).expect("create layer dir");
    }
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod tmp");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed");
    std::fs::copy(busybox, dir.join("bin/busybox")).expect("copy busybox");
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') {
            let _ = symlink("busybox", dir.join("bin").join(applet));
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(dir.join("etc/group"), "root:x:0:\ntty:x:5:\n").expect("group");
}

/// A spec for a busybox container running `script` with `sh -c`.
pub fn sh_spec(id: &str, layer: &Path, script: &str) -> ShimSpec {
    ShimSpec {
        instance_id: id.to_string(),
        name: id.to_string(),
        hostname: format!("{id}-host"),
        layers: vec![layer.to_path_buf()],
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        working_dir: "/".into(),
        user: UserSpec { uid: 0, gid: 0 },
        resources: Resources::default(),
        restart: RestartPolicy::default(),
        id_map: IdMap {
            host_id: host_id_for(id),
            size: 65536,
        },
        stop_grace_ms: 2000,
        log_max_bytes: 1 << 20,
        log_files: 3,
        netns: None,
        resolv_conf: None,
        hosts_file: None,
        restarts_before: 0,
        disk_bytes: None,
        volumes: Vec::new(),
    }
}

/// A distinct, stable id range per instance id.
pub fn host_id_for(id: &str) -> u32 {
    let hash = id
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    1_000_000 + (hash % 2000) * 65536
}

/// One test instance; dropping it stops the shim and removes every trace.
pub struct Instance {
    pub base: PathBuf,
    pub dir: PathBuf,
    pub layer: PathBuf,
    pub id: String,
}

impl Instance {
    /// Prepares `<base>/layer` and `<base>/instance/spec.json` (the spec is made by
    /// `make_spec(id, layer)`), without starting anything.
    pub fn new(name: &str, make_spec: impl FnOnce(&str, &Path) -> ShimSpec) -> Instance {
        let id = format!("t-{name}-{}", std::process::id());
        let base = PathBuf::from("/var/tmp").join(format!("nimbus-ct-{id}"));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("instance");
        let layer = base.join("layer");
        std::fs::create_dir_all(&dir).expect("create instance dir");
        for d in [&base, &dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        }
        busybox_layer(&layer);
        let spec = make_spec(&id, &layer);
        spec.save(&dir).expect("write spec");
        Instance {
            base,
            dir,
            layer,
            id,
        }
    }

    pub fn spec(&self) -> ShimSpec {
        ShimSpec::load(&self.dir).expect("load spec")
    }

    pub fn spawn(&self) -> ShimState {
        spawn_shim(Path::new(SHIM_EXE), &self.dir).expect("spawn shim")
    }

    pub fn client(&self) -> ShimClient {
        ShimClient::connect(&self.dir).expect("connect to shim")
    }

    /// A client if the shim still listens (it may already have exited).
    pub fn client_if_alive(&self) -> Option<ShimClient> {
        ShimClient::connect(&self.dir).ok()
    }

    pub fn state(&self) -> Option<ShimState> {
        read_state(&self.dir)
    }

    /// Waits until the state satisfies `done`, failing after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&ShimState) -> bool,
    ) -> ShimState {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(state) = self.state() {
                if done(&state) {
                    return state;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "timed out waiting for {what}; state is {state:?}\nconsole:\n{}",
                        self.console()
                    );
                }
            } else if Instant::now() >= deadline {
                panic!("timed out waiting for {what}; no state");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the shim to finish (phase exited or failed).
    pub fn wait_final(&self, timeout: Duration) -> ShimState {
        self.wait_for("a final phase", timeout, |s| s.phase.is_final())
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// The text of console lines from `stream`, timestamps removed.
    pub fn console_lines(&self, stream: &str) -> Vec<String> {
        self.console()
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ' ');
                let _ts = parts.next()?;
                (parts.next()? == stream).then(|| parts.next().unwrap_or("").to_string())
            })
            .collect()
    }

    /// Asserts nothing of the instance is left on the host.
    pub fn assert_torn_down(&self, last: &ShimState) {
        assert_eq!(
            mounts_under(&self.dir),
            Vec::<String>::new(),
            "mounts left under the instance dir"
        );
        assert_eq!(cgroup_dirs(&self.id), Vec::<PathBuf>::new(), "cgroups left");
        if let Some(pid) = last.pid {
            assert!(
                !is_in_instance(pid, &self.id),
                "container init {pid} still alive"
            );
        }
        // The shim answers `stop` after teardown and exits right after.
        assert!(
            wait_until(Duration::from_secs(5), || !is_shim_of(
                last.shim_pid,
                &self.dir
            )),
            "shim {} still alive",
            last.shim_pid
        );
        assert!(!self.dir.join("shim.sock").exists(), "socket left");
        assert!(!self.dir.join("runtime").exists(), "runtime dir left");
        assert!(self.dir.join("state.json").exists());
        assert!(self.dir.join("spec.json").exists());
        assert!(
            self.dir.join("upper").exists(),
            "the writable layer must persist"
        );
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Ok(client) = ShimClient::connect(&self.dir) {
            let _ = client.stop(0);
        }
        // Pids are reused quickly (pid_max is 32768 here): only a process that is
        // really this instance's shim may be killed.
        if let Some(state) = read_state(&self.dir) {
            if is_shim_of(state.shim_pid, &self.dir) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(state.shim_pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                wait_until(Duration::from_secs(5), || {
                    !is_shim_of(state.shim_pid, &self.dir)
                });
            }
        }
        let _ = cleanup_instance_dir(&self.dir);
        if mounts_under(&self.base).is_empty() {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

/// True if `pid` is alive and is a shim supervising `dir`.
pub fn is_shim_of(pid: i32, dir: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    pid_alive(pid) && args.contains(&dir.as_os_str().as_encoded_bytes())
}

/// True if `pid` is alive and in the instance's cgroup.
pub fn is_in_instance(pid: i32, id: &str) -> bool {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    // Any hierarchy, wherever the instance's cgroup sits in it (v1 or v2).
    let in_id = |path: &str| path.split('/').any(|part| part == id);
    pid_alive(pid)
        && cgroups
            .lines()
            .any(|l| l.splitn(3, ':').nth(2).is_some_and(in_id))
}

pub fn wait_until(timeout: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Mount points at or below `dir` in the test's mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect()
}

/// cgroup directories of instance `id`, on every mounted hierarchy (v1,
/// hybrid or unified), wherever below the hierarchy's root they are: the
/// id is unique, so a directory of that name is the instance's.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    fn find(dir: &Path, id: &str, depth: u32, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name() == id {
                found.push(e.path());
            } else if depth > 0 {
                find(&e.path(), id, depth - 1, found);
            }
        }
    }
    let mut found = Vec::new();
    for m in cgroup_mounts() {
        find(&m.mount_point, id, 4, &mut found);
    }
    found
}

/// Alive and not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// `Uid:` line of /proc/<pid>/status: real, effective, saved, fs.
pub fn host_uids(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line")
        .split_whitespace()
        .map(|v| v.parse().expect("uid"))
        .collect()
}

pub fn final_phase_is(state: &ShimState, phase: Phase) {
    assert_eq!(state.phase, phase, "state: {state:?}");
}

#[path = "../../../../tests/common/host_files.rs"]
mod host_files;
pub use host_files::*;
