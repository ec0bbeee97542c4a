//! A real Nimbus for end-to-end tests: `nimbus up` on its own data
//! directory and port, driven through the real CLI and API, torn down and
//! checked for leaks (mounts, cgroups, processes) when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const NIMBUS: &str = env!("CARGO_BIN_EXE_nimbus");

/// When set, the daemon runs from this executable instead of [`NIMBUS`]
/// (the launch benchmark runs an installed copy).
pub const DAEMON_EXE_ENV: &str = "NIMBUS_DAEMON_EXE";

pub struct Cloud {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub daemon: Option<Child>,
    pub host: String,
    pub extra: Vec<String>,
}

/// Set by `scripts/test`, which runs as root after `scripts/deps`: there a
/// test that would skip fails instead, so a suite that ran nothing cannot
/// pass.
pub const NO_SKIP_ENV: &str = "NIMBUS_TESTS_REQUIRE_ROOT";

/// Reports that the current test did not run. Under `scripts/test`
/// ([`NO_SKIP_ENV`]) that is a failure. Otherwise a SKIPPED line goes
/// straight to the stderr handle: the harness captures only `print!` and
/// `eprint!` of passing tests, so this line shows in `cargo test`'s output.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    if std::env::var_os(NO_SKIP_ENV).is_some() {
        panic!("{test} would be skipped ({why}), but {NO_SKIP_ENV} is set: under scripts/test every test must run");
    }
    report_skip(why);
}

/// The visible SKIPPED line of [`skip`], for a skip the user asked for by
/// name (such as `NIMBUS_SKIP_DEBIAN_GUEST`), which stays allowed everywhere.
pub fn report_skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    let _ = writeln!(std::io::stderr(), "\n!!!!!!!! SKIPPED {test}: {why}\n");
}

/// True when running as root; otherwise [`skip`]s the test ("needs root
/// for `what`").
pub fn is_root(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(&format!("needs root ({what})"));
    false
}

/// A port free on loopback for both TCP and UDP, never handed out before
/// in this test binary. The tests of one file run side by side: a port
/// one of them only holds now and then (a daemon restarting on its port, a
/// published port that is a rule with no socket, a port picked well before
/// use) must not be given to another.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("no free port on loopback");
        let port = tcp.local_addr().expect("bound address").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        if GIVEN.lock().map(|mut g| g.insert(port)).unwrap_or(true) {
            return port;
        }
    }
}

/// Wait until `f` returns Some, or panic with `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_until_or(timeout, what, f, String::new)
}

/// [`wait_until`], whose panic also shows what `context` says then (logs).
pub fn wait_until_or<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

impl Cloud {
    pub fn start() -> Cloud {
        Cloud::start_with(&[])
    }

    /// Start with extra `nimbus up` arguments.
    pub fn start_with(extra: &[&str]) -> Cloud {
        let dir = tempfile::Builder::new()
            .prefix("nimbus-e2e-")
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        let port = free_port();
        let host = "e2e-host".to_string();
        let mut cloud = Cloud {
            dir,
            port,
            daemon: None,
            host,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        cloud.spawn_daemon();
        cloud.wait_ready();
        cloud
    }

    /// Import the tiny test guest (kernel + initramfs) as image `tiny`.
    pub fn import_tiny(&self) {
        let args = import_tiny_args();
        self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// Import an empty 16 MiB qcow2 as disk image `blank`: SeaBIOS finds
    /// nothing to boot and waits, so a VM of it has an overlay and a seed
    /// and costs little.
    pub fn import_blank_disk(&self) {
        let work = tempfile::tempdir().expect("tempdir");
        let base = work.path().join("blank.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("16M")
            .status()
            .expect("qemu-img");
        assert!(st.success(), "qemu-img create failed");
        self.ok(&[
            "image",
            "import-disk",
            &base.to_string_lossy(),
            "--name",
            "blank",
        ]);
    }

    /// The unpacked starter image (a plain busybox root filesystem).
    pub fn starter_rootfs(&self) -> PathBuf {
        let v = self
            .json(&["image", "get", "busybox"])
            .expect("starter image");
        let layer = v["status"]["layers"][0]
            .as_str()
            .expect("layer")
            .trim_start_matches("sha256:")
            .to_string();
        self.data_dir().join("images/layers").join(layer)
    }

    /// The starter image's root filesystem as a tar file (made once), for
    /// importing in other projects.
    pub fn starter_tar(&self) -> String {
        let out = self.data_dir().join("starter.tar");
        if !out.exists() {
            tar_of(&self.starter_rootfs(), &out);
        }
        out.to_string_lossy().to_string()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn spawn_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir().join("daemon.log"))
            .expect("daemon log");
        let exe = std::env::var_os(DAEMON_EXE_ENV).unwrap_or_else(|| NIMBUS.into());
        // Clouds side by side each need their own S3 port, unless a test picks one.
        let s3_listen = if self.extra.iter().any(|a| a.contains("s3")) {
            vec![]
        } else {
            vec![
                "--s3-listen".to_string(),
                format!("127.0.0.1:{}", free_port()),
            ]
        };
        let child = Command::new(exe)
            .args([
                "up",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--host-name",
                &self.host,
            ])
            .args(&self.extra)
            .args(&s3_listen)
            .env("NIMBUS_DATA_DIR", self.data_dir())
            .env("NIMBUS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn nimbus up");
        self.daemon = Some(child);
    }

    /// Wait for the API, the host and the starter image.
    pub fn wait_ready(&self) {
        wait_until(Duration::from_secs(60), "the busybox starter image", || {
            let out = self.nimbus(&["image", "get", "busybox", "-o", "json"]);
            out.status.success().then_some(())
        });
        wait_until(Duration::from_secs(30), "the host to be ready", || {
            let v = self.json(&["host", "get", &self.host]).ok()?;
            (v["status"]["phase"] == "ready").then_some(())
        });
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("daemon.log")).unwrap_or_default()
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin.token"))
            .expect("admin token")
            .trim()
            .to_string()
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(NIMBUS);
        c.env("NIMBUS_DATA_DIR", self.data_dir())
            .env_remove("NIMBUS_TOKEN")
            .env_remove("NIMBUS_PROJECT")
            .env_remove("NIMBUS_ENDPOINT")
            .stdin(Stdio::null());
        c
    }

    pub fn nimbus(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run nimbus")
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.nimbus(args);
        assert!(
            out.status.success(),
            "nimbus {args:?} failed: {}\n{}\n--- daemon log tail ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            tail(&self.daemon_log(), 40)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.nimbus(&all);
        json_output(out)
    }

    pub fn instance(&self, name: &str) -> serde_json::Value {
        self.json(&["instance", "get", name])
            .unwrap_or_else(|e| panic!("instance {name}: {e}"))
    }

    pub fn wait_phase(&self, name: &str, phases: &[&str], timeout: Duration) -> serde_json::Value {
        wait_until(
            timeout,
            &format!("instance {name} to reach {phases:?}"),
            || {
                let v = self.json(&["instance", "get", name]).ok()?;
                let phase = v["status"]["phase"].as_str()?.to_string();
                phases.contains(&phase.as_str()).then_some(v)
            },
        )
    }

    /// Both streams of the instance's output, without timestamps.
    pub fn logs(&self, name: &str) -> String {
        self.ok(&["instance", "logs", name, "--timestamps"])
            .lines()
            .map(|l| l.splitn(3, ' ').nth(2).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kill the daemon abruptly, as a crash would.
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn instance_ids(&self) -> Vec<String> {
        std::fs::read_dir(self.data_dir().join("instances"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Remove every instance of every project, then check nothing leaked.
    pub fn remove_everything(&self) {
        let ids_before = self.instance_ids();
        if let Ok(list) = self.json(&["instance", "list", "--project", "default"]) {
            for i in list["items"].as_array().cloned().unwrap_or_default() {
                let name = i["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let project = i["metadata"]["project"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string();
                let _ = self.nimbus(&["instance", "rm", &name, "--project", &project]);
            }
        }
        assert_no_leaks(self.data_dir(), &ids_before);
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            // Remove instances through the API so the real cleanup path runs.
            let projects = self
                .json(&["project", "list"])
                .ok()
                .and_then(|v| v["items"].as_array().cloned())
                .unwrap_or_default();
            for p in projects {
                let project = p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if let Ok(list) = self.json(&["instance", "list", "--project", &project]) {
                    for i in list["items"].as_array().cloned().unwrap_or_default() {
                        let name = i["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        let _ = self.nimbus(&["instance", "rm", &name, "--project", &project]);
                    }
                }
            }
        }
        if let Some(mut c) = self.daemon.take() {
            // SAFETY: sending SIGTERM to our own child process.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Last resort, so a failed test does not leave workloads behind.
        force_cleanup(self.data_dir());
    }
}

/// Bytes of an instance's log files (`console.log` and its rotations) on
/// the host's disk, in instance directory `dir`.
pub fn log_bytes_on_disk(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("console.log"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Mount points at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// cgroup directories of instance `id`, on every mounted hierarchy (v1,
/// hybrid or unified), wherever below the hierarchy's root they are: the
/// id is unique, so a directory of that name is the instance's.
pub fn cgroups_of(id: &str) -> Vec<PathBuf> {
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

/// Processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid == std::process::id() as i32 {
                continue;
            }
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                if String::from_utf8_lossy(&cmd).contains(needle) {
                    pids.push(pid);
                }
            }
        }
    }
    pids
}

pub fn assert_no_leaks(data_dir: &Path, ids: &[String]) {
    wait_until(Duration::from_secs(20), "instance cleanup", || {
        let mounts = mounts_under(data_dir);
        let cgroups: Vec<PathBuf> = ids.iter().flat_map(|id| cgroups_of(id)).collect();
        let shims = processes_mentioning(&data_dir.join("instances").to_string_lossy());
        let dirs: Vec<String> = ids
            .iter()
            .filter(|id| data_dir.join("instances").join(id).exists())
            .cloned()
            .collect();
        (mounts.is_empty() && cgroups.is_empty() && shims.is_empty() && dirs.is_empty())
            .then_some(())
    });
}

/// Kill shims and containers of this data dir and unmount what is left.
pub fn force_cleanup(data_dir: &Path) {
    let instances = data_dir.join("instances");
    for pid in processes_mentioning(&instances.to_string_lossy()) {
        // SAFETY: killing a leftover shim of this test's own data dir.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    if let Ok(entries) = std::fs::read_dir(&instances) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            for cg in cgroups_of(&id) {
                if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        // SAFETY: killing a leftover container process of this test.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut mounts = mounts_under(data_dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    if let Ok(entries) = std::fs::read_dir(&instances) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            for cg in cgroups_of(&id) {
                let _ = std::fs::remove_dir(&cg);
            }
        }
    }
}

/// A raw HTTP/1.1 call on the API socket: (status, body).
pub fn http(
    cloud: &Cloud,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    http_raw(cloud, method, path, token, body, "application/json")
}

pub fn http_raw(
    cloud: &Cloud,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    content_type: &str,
) -> (u16, String) {
    http_at(cloud.data_dir(), method, path, token, body, content_type)
}

/// A raw HTTP/1.1 call on the API socket of the cloud in `data_dir`.
pub fn http_at(
    data_dir: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    content_type: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(data_dir.join("api.sock"))
        .expect("connect api.sock");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    // The server may answer (413) before reading a large body: ignore write errors.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, dechunk(&body))
}

/// Undo chunked transfer encoding if present (best effort, for asserts).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size_line, after)) = rest.split_once("\r\n") else {
            return if out.is_empty() {
                body.to_string()
            } else {
                out
            };
        };
        let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else {
            return body.to_string();
        };
        if size == 0 || after.len() < size {
            return out;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
}

/// Build (or find cached) a test guest with `scripts/build-guests`: its directory.
pub fn build_guest(target: &str) -> Result<PathBuf, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(repo.join("scripts/build-guests"))
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run scripts/build-guests: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/build-guests {target} failed ({}):\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        ));
    }
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(PathBuf::from(dir))
}

/// [`build_guest`], or a panic saying which guest is needed.
pub fn guest(target: &str) -> PathBuf {
    build_guest(target).unwrap_or_else(|e| panic!("the {target} test guest is needed: {e}"))
}

/// `nimbus instance console NAME` driven through pipes.
pub struct Console {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: String,
}

impl Console {
    pub fn attach(cloud: &Cloud, name: &str) -> Console {
        let mut cmd = cloud.command();
        cmd.args(["instance", "console", name]);
        Console::spawn(cmd)
    }

    /// `cmd` (a `nimbus instance console` of some cloud) driven through pipes.
    pub fn spawn(mut cmd: Command) -> Console {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nimbus instance console");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take().expect("stdin");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if tx.send(std::mem::take(&mut line)).is_err() {
                    return;
                }
            }
        });
        Console {
            child,
            stdin,
            lines,
            seen: String::new(),
        }
    }

    pub fn type_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("type on the console");
    }

    /// Whether `expect` shows up within `timeout`.
    pub fn shows(&mut self, expect: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while !self.seen.contains(expect) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            if let Ok(line) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                self.seen.push_str(&line);
            }
        }
        true
    }

    /// Types `input` until the guest's shell prints `expect` (it may still
    /// be starting), then detaches by ending the client; the VM stays.
    pub fn roundtrip(mut self, input: &str, expect: &str) {
        for _ in 0..10 {
            self.type_line(input);
            if self.shows(expect, Duration::from_secs(3)) {
                return;
            }
        }
        panic!(
            "the console never showed {expect:?}; it showed:\n{}",
            self.seen
        );
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub mod cluster;
pub mod etcd;
pub mod guest;
mod host_files;
pub mod registry;
pub mod s3;
pub use host_files::*;

/// Instance `id`'s cgroup directory in the hierarchy that holds
/// `controller` (v1, hybrid or unified hosts). Panics when there is none.
pub fn instance_cgroup_dir(id: &str, controller: &str) -> PathBuf {
    let mount = cgroup_mount_for(controller);
    let all = cgroups_of(id);
    all.iter()
        .find(|d| d.starts_with(&mount.mount_point))
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "instance {id} has no {controller} cgroup under {} (its cgroups: {all:?})",
                mount.mount_point.display()
            )
        })
}

/// The trimmed contents of `file` in instance `id`'s `controller` cgroup
/// ([`instance_cgroup_dir`]); a missing file is a failure.
pub fn instance_cgroup_file(id: &str, controller: &str, file: &str) -> String {
    read_cgroup_file(&instance_cgroup_dir(id, controller).join(file))
}

/// `nimbus image import-kernel` of the tiny test guest as image `tiny`.
pub fn import_tiny_args() -> Vec<String> {
    let dir = guest("tiny");
    vec![
        "image".into(),
        "import-kernel".into(),
        dir.join("vmlinux").to_string_lossy().into_owned(),
        "--initrd".into(),
        dir.join("tiny-initrd.img").to_string_lossy().into_owned(),
        "--name".into(),
        "tiny".into(),
    ]
}

/// A CLI run's JSON output, or its error text when it failed.
pub fn json_output(out: Output) -> Result<serde_json::Value, String> {
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// A one-file root filesystem archive, enough for an image record.
pub fn tiny_rootfs_tar(dir: &Path) -> String {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("etc")).expect("rootfs dir");
    std::fs::write(root.join("etc/hostname"), "tiny\n").expect("rootfs file");
    let tar = dir.join("rootfs.tar");
    tar_of(&root, &tar);
    tar.to_string_lossy().to_string()
}

/// `tar -C root -cf tar .`, which must succeed.
pub fn tar_of(root: &Path, tar: &Path) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success(), "tar of {}", root.display());
}

/// A busybox root filesystem (Debian's busybox-static: `/bin/busybox`,
/// `/bin/sh`, an empty `/tmp`) archived in `dir`; the archive's path.
pub fn busybox_rootfs_tar(dir: &Path) -> String {
    busybox_rootfs_tar_with(dir, &[], &[])
}

/// [`busybox_rootfs_tar`] plus the host's files `host_files` (symlinks
/// followed) at the same paths, and the empty directories `dirs` (mode 0755).
pub fn busybox_rootfs_tar_with(dir: &Path, host_files: &[&str], dirs: &[&str]) -> String {
    let root = dir.join("busybox-rootfs");
    for sub in ["bin", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox is missing: install busybox-static (scripts/deps does)");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("sh link");
    for file in host_files {
        let to = root.join(file.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().expect("parent")).expect("rootfs dir");
        std::fs::copy(file, &to).unwrap_or_else(|e| panic!("copying {file} into the image: {e}"));
    }
    for d in dirs {
        std::fs::create_dir_all(root.join(d.trim_start_matches('/'))).expect("rootfs dir");
    }
    let tar = dir.join("busybox.tar");
    tar_of(&root, &tar);
    tar.to_string_lossy().to_string()
}

/// The reason the scheduler gave for leaving instance `name` unplaced, as
/// `get` reads the instance; its being placed is a failure.
pub fn wait_unschedulable(name: &str, get: impl Fn() -> Option<serde_json::Value>) -> String {
    wait_until(
        Duration::from_secs(40),
        &format!("{name} to be judged unschedulable"),
        || {
            let i = get()?;
            assert!(i["status"]["host"].is_null(), "{name} was placed: {i}");
            i["status"]["reason"]
                .as_str()
                .filter(|r| r.starts_with("unschedulable:"))
                .map(str::to_string)
        },
    )
}
