//! The processes of `tests/rolling_upgrade.rs`: daemons run from their
//! own installed executable (replaced in place by an upgrade), and the CLI
//! as a user elsewhere runs it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{force_cleanup, tail, wait_until, NIMBUS};

pub const SHIM: &str = env!("CARGO_BIN_EXE_nimbus-shim");

pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .expect("temp dir")
}

/// Copies `from` to `dir/name` through a new file renamed over the old
/// one: the running process keeps its (now unlinked) file, the next start
/// runs the new one.
pub fn install(from: &str, dir: &Path, name: &str) {
    let staged = dir.join(format!(".{name}.new"));
    std::fs::copy(from, &staged).expect("copy the new build");
    std::fs::rename(&staged, dir.join(name)).expect("rename the new build into place");
}

/// One daemon (server or agent) run from its own installed executable.
pub struct Daemon {
    pub name: String,
    pub bin_dir: PathBuf,
    data: tempfile::TempDir,
    pub args: Vec<String>,
    child: Option<Child>,
    /// An agent: what its instances left is removed after it is killed.
    pub runs_instances: bool,
}

impl Daemon {
    pub fn new(name: &str, args: Vec<String>) -> Daemon {
        let data = tempdir(&format!("nimbus-upgrade-{name}-"));
        let bin_dir = data.path().join("bin");
        std::fs::create_dir_all(&bin_dir).expect("bin dir");
        install(NIMBUS, &bin_dir, "nimbus");
        install(SHIM, &bin_dir, "nimbus-shim");
        Daemon {
            name: name.to_string(),
            bin_dir,
            data,
            args,
            child: None,
            runs_instances: false,
        }
    }

    pub fn dir(&self) -> &Path {
        self.data.path()
    }

    pub fn exe(&self) -> PathBuf {
        self.bin_dir.join("nimbus")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("daemon.log")).unwrap_or_default()
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join("daemon.log"))
            .expect("log");
        let child = Command::new(self.exe())
            .args(&self.args)
            .env("NIMBUS_DATA_DIR", self.dir())
            .env("NIMBUS_LOG", "info")
            .env_remove("NIMBUS_JOIN_TOKEN")
            .env_remove("NIMBUS_SERVER")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
    }

    /// The exit status after [`Daemon::sigterm`] (within `timeout`, or a
    /// failure).
    pub fn exit_status(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        wait_until(
            timeout,
            &format!("{} to exit on SIGTERM", self.name),
            || child.try_wait().ok().flatten(),
        )
    }

    /// SIGTERM; it must exit 0. How long it took.
    pub fn stop(&mut self) -> Duration {
        let asked = Instant::now();
        self.sigterm();
        let status = self.exit_status(Duration::from_secs(15));
        assert!(
            status.success(),
            "{} exited {status} on SIGTERM:\n{}",
            self.name,
            tail(&self.log(), 20)
        );
        asked.elapsed()
    }

    /// Runs it in the foreground where it must refuse to start: what it
    /// logged.
    pub fn refused(&self) -> String {
        let out = Command::new(self.exe())
            .args(&self.args)
            .env("NIMBUS_DATA_DIR", self.dir())
            .stdin(Stdio::null())
            .output()
            .expect("run nimbus");
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{} started: {said}", self.name);
        said
    }

    /// The installed file is the one the process runs (not an older,
    /// unlinked one).
    pub fn runs_installed_file(&self) -> bool {
        let exe = PathBuf::from(format!("/proc/{}/exe", self.pid()));
        match (std::fs::metadata(&exe), std::fs::metadata(self.exe())) {
            (Ok(running), Ok(installed)) => {
                running.ino() == installed.ino() && running.dev() == installed.dev()
            }
            _ => false,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.runs_instances {
            remove_leftover_instances(self.dir());
        }
    }
}

/// After a failure: the shims, containers, mounts and cgroups of the
/// agent's instances, and their network namespaces.
fn remove_leftover_instances(agent_dir: &Path) {
    force_cleanup(agent_dir);
    let Ok(entries) = std::fs::read_dir(agent_dir.join("instances")) else {
        return;
    };
    for e in entries.flatten() {
        let netns =
            Path::new("/run/nimbus/netns").join(format!("ni-{}", e.file_name().to_string_lossy()));
        if netns.exists() {
            let _ = Command::new("umount").arg(&netns).status();
            let _ = std::fs::remove_file(&netns);
        }
    }
}

/// The CLI as a user elsewhere runs it: both servers, the shared
/// certificate, the administrator's token.
#[derive(Clone)]
pub struct Cli {
    pub endpoints: String,
    pub ca: PathBuf,
    pub token: String,
    pub home: PathBuf,
}

impl Cli {
    pub fn nimbus(&self, args: &[&str]) -> Output {
        Command::new(NIMBUS)
            .args(args)
            .env("NIMBUS_ENDPOINT", &self.endpoints)
            .env("NIMBUS_CA_CERT", &self.ca)
            .env("NIMBUS_TOKEN", &self.token)
            .env("NIMBUS_DATA_DIR", &self.home)
            .env_remove("NIMBUS_PROJECT")
            .stdin(Stdio::null())
            .output()
            .expect("run nimbus")
    }

    pub fn json(&self, args: &[&str]) -> Result<Value, String> {
        let out = self.nimbus(&[args, &["-o", "json"]].concat());
        crate::common::json_output(out)
    }

    /// Runs a command that prints no JSON; it must succeed.
    pub fn succeeds(&self, args: &[&str]) {
        let out = self.nimbus(args);
        assert!(
            out.status.success(),
            "nimbus {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn ok(&self, args: &[&str]) -> Value {
        self.json(args)
            .unwrap_or_else(|e| panic!("nimbus {args:?}: {e}"))
    }
}
