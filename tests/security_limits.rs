//! Security tests: limits by default and a protected control plane, image
//! deletion that keeps other projects' blobs, project deletion that leaves
//! nothing behind.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{http, wait_until, Cloud};

const T: Duration = Duration::from_secs(60);
const GIB: u64 = 1 << 30;

/// Time of one authenticated API read, measured the way a client sees it.
fn api_latency(cloud: &Cloud, token: &str) -> Duration {
    let t0 = Instant::now();
    let (status, body) = http(
        cloud,
        "GET",
        "/v1/projects/default/instances",
        Some(token),
        b"",
    );
    let took = t0.elapsed();
    assert_eq!(status, 200, "{body}");
    took
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn read_trim(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn oom_score_adj(pid: i64) -> String {
    read_trim(format!("/proc/{pid}/oom_score_adj"))
}

/// Whether this machine lets root lower OOM scores (`CAP_SYS_RESOURCE`);
/// sandboxes often withhold it, and Nimbus then raises workloads instead.
fn can_lower_oom_scores() -> bool {
    /// capability(7) number of CAP_SYS_RESOURCE.
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

fn score(pid: i64) -> i32 {
    oom_score_adj(pid)
        .parse()
        .unwrap_or_else(|_| panic!("no OOM score for pid {pid}"))
}

fn alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !read_trim(format!("/proc/{pid}/stat")).contains(") Z ")
}

/// The pid of the shim supervising `name`, from its state file.
fn shim_pid(cloud: &Cloud, name: &str) -> i64 {
    let id = cloud.instance(name)["metadata"]["id"]
        .as_str()
        .expect("instance id")
        .to_string();
    let state = std::fs::read_to_string(
        cloud
            .data_dir()
            .join("instances")
            .join(id)
            .join("state.json"),
    )
    .expect("shim state file");
    let v: serde_json::Value = serde_json::from_str(&state).expect("state json");
    v["shim_pid"].as_i64().expect("shim_pid in state.json")
}

fn instance_id(cloud: &Cloud, name: &str) -> String {
    cloud.instance(name)["metadata"]["id"]
        .as_str()
        .expect("instance id")
        .to_string()
}

/// A file of instance `id`'s cgroup; missing is a failure, not "".
fn cgroup_file(controller: &str, id: &str, file: &str) -> String {
    common::instance_cgroup_file(id, controller, file)
}

fn mem_total_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("MemTotal")
        * 1024
}

#[test]
fn fork_bomb_and_memory_hog_without_flags_leave_the_control_plane_answering() {
    let cloud = Cloud::start();
    let token = cloud.admin_token();
    let daemon = cloud.daemon.as_ref().expect("daemon").id() as i64;

    // The control plane is protected, and instances together keep a
    // reserve of the host's memory.
    let protected = can_lower_oom_scores();
    if protected {
        assert_eq!(score(daemon), -900, "nimbus up's OOM score");
    }
    let cpu_cgroup = common::cgroup_dir_of(daemon, "cpu");
    assert!(
        cpu_cgroup.ends_with("nimbus-system"),
        "nimbus up runs in the nimbus-system cpu cgroup: {cpu_cgroup:?}"
    );
    assert_eq!(common::cgroup_file(daemon, "cpu", "cpu.shares"), "4096");
    let instances_limit: u64 =
        common::cgroup_path_file("memory", "/nimbus", "memory.limit_in_bytes")
            .parse()
            .expect("memory limit of /nimbus");
    assert!(
        instances_limit <= mem_total_bytes() - GIB,
        "all instances together may use at most the host's memory minus the reserve: {instances_limit}"
    );

    let host = cloud.json(&["host", "get", &cloud.host]).expect("host get");
    assert_eq!(
        host["status"]["memory_bytes"], instances_limit,
        "the scheduler offers instances what their cgroup allows: {host}"
    );

    // Baseline: the API at rest.
    let baseline = median((0..15).map(|_| api_latency(&cloud, &token)).collect());

    // A quiet container started without limit flags: effective limits are
    // recorded and shown, and enforced in its cgroups; its processes run at
    // OOM score 0 while its shim is protected.
    cloud.ok(&[
        "instance", "run", "calm", "--image", "busybox", "--", "sleep", "3600",
    ]);
    let calm = cloud.wait_phase("calm", &["running"], T);
    assert_eq!(calm["spec"]["resources"]["memory_bytes"], GIB, "{calm}");
    assert_eq!(calm["spec"]["resources"]["cpu_millis"], 1000, "{calm}");
    assert_eq!(calm["spec"]["resources"]["pids_max"], 1024, "{calm}");
    let shown = cloud.ok(&["instance", "get", "calm"]);
    assert!(
        shown.contains("memory 1GiB, cpus 1, pids 1024"),
        "instance get shows the effective limits: {shown}"
    );
    let calm_id = instance_id(&cloud, "calm");
    assert_eq!(cgroup_file("pids", &calm_id, "pids.max"), "1024");
    assert_eq!(
        cgroup_file("memory", &calm_id, "memory.limit_in_bytes"),
        GIB.to_string()
    );
    assert_eq!(cgroup_file("cpu", &calm_id, "cpu.cfs_quota_us"), "100000");
    let init = calm["status"]["pid"].as_i64().expect("init pid");
    let calm_shim = shim_pid(&cloud, "calm");
    let exec = cloud.ok(&[
        "instance",
        "exec",
        "calm",
        "--",
        "cat",
        "/proc/self/oom_score_adj",
    ]);
    let exec_score: i32 = exec.trim().parse().expect("exec'd process's OOM score");
    let (init_score, shim_score, daemon_score) = (score(init), score(calm_shim), score(daemon));
    let scores =
        format!("daemon {daemon_score}, shim {shim_score}, init {init_score}, exec {exec_score}");
    if protected {
        assert_eq!(
            shim_score, -1000,
            "the shim is never the OOM killer's choice: {scores}"
        );
        assert_eq!(
            init_score, 0,
            "the init must not inherit the shim's protection: {scores}"
        );
        assert_eq!(exec_score, 0, "nor an exec'd process: {scores}");
    } else {
        // The control plane could not lower its scores: workloads are
        // raised above it instead.
        assert_eq!(init_score, 500, "{scores}");
        assert_eq!(exec_score, 500, "{scores}");
    }
    for workload in [init_score, exec_score] {
        assert!(
            workload >= 0 && workload > shim_score && workload > daemon_score,
            "the workload must rank above the control plane for the OOM killer: {scores}"
        );
    }

    // A fork bomb of spinning processes, without flags.
    let bomb = "bomb() { bomb | bomb & while :; do :; done; }; (sleep 0.3; bomb) & exec sleep 3600";
    cloud.ok(&[
        "instance", "run", "bomb", "--image", "busybox", "--", "sh", "-c", bomb,
    ]);
    cloud.wait_phase("bomb", &["running"], T);
    let bomb_id = instance_id(&cloud, "bomb");
    let bomb_shim = shim_pid(&cloud, "bomb");
    wait_until(T, "the fork bomb to hit the default pids limit", || {
        let events = cgroup_file("pids", &bomb_id, "pids.events");
        events
            .lines()
            .any(|l| l.starts_with("max ") && l != "max 0")
            .then_some(())
    });
    let pids_current: u64 = cgroup_file("pids", &bomb_id, "pids.current")
        .parse()
        .expect("pids.current is a number");
    assert!(pids_current <= 1024, "pids.current {pids_current}");

    // A memory hog, without flags, beside it.
    cloud.ok(&[
        "instance",
        "run",
        "hog",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        "x=$(head -c 3221225472 /dev/zero | tr '\\000' a); echo survived ${#x}",
    ]);

    // The API keeps answering while both run.
    let mut loaded = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until || loaded.len() < 15 {
        loaded.push(api_latency(&cloud, &token));
    }
    let worst = *loaded.iter().max().expect("samples");
    let under_load = median(loaded);
    let allowed = (baseline * 20).max(Duration::from_millis(500));
    eprintln!(
        "API latency: baseline median {baseline:?}, under load median {under_load:?}, slowest {worst:?}"
    );
    assert!(
        under_load <= allowed,
        "API median latency {under_load:?} under a fork bomb and a memory hog, baseline {baseline:?}, allowed {allowed:?}"
    );
    assert!(
        worst <= Duration::from_secs(5),
        "slowest API call {worst:?}"
    );

    // The hog is OOM-killed inside its own cgroup at the default 1 GiB.
    let hog = cloud.wait_phase("hog", &["exited", "failed"], Duration::from_secs(120));
    assert_eq!(hog["status"]["oom_killed"], true, "{hog}");
    assert_eq!(hog["spec"]["resources"]["memory_bytes"], GIB, "{hog}");
    assert!(!cloud.logs("hog").contains("survived"));

    // Nothing of the control plane was killed.
    assert!(alive(daemon), "nimbus up was killed");
    assert!(alive(bomb_shim), "the bomb's shim was killed");
    assert!(alive(calm_shim), "the calm container's shim was killed");
    assert_eq!(shim_pid(&cloud, "bomb"), bomb_shim);
    assert_eq!(shim_pid(&cloud, "calm"), calm_shim);
    assert_eq!(cloud.instance("bomb")["status"]["phase"], "running");
    assert_eq!(cloud.instance("calm")["status"]["phase"], "running");
    cloud.remove_everything();
}

#[test]
fn project_defaults_apply_and_explicit_values_win() {
    let cloud = Cloud::start();
    let token = cloud.admin_token();
    cloud.ok(&["project", "create", "lim"]);
    cloud.ok(&[
        "image",
        "import",
        "--project",
        "lim",
        "--name",
        "busybox",
        &cloud.starter_tar(),
    ]);
    cloud.ok(&[
        "project",
        "set",
        "lim",
        "--default-memory",
        "64MiB",
        "--default-cpus",
        "0.5",
        "--default-pids",
        "100",
    ]);
    let run = |name: &str, flags: &[&str]| {
        let mut args = vec![
            "instance",
            "run",
            name,
            "--project",
            "lim",
            "--image",
            "busybox",
        ];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "sleep", "3600"]);
        cloud.ok(&args);
        cloud.wait_phase_in("lim", name)
    };
    let d = run("dflt", &[]);
    assert_eq!(d["spec"]["resources"]["memory_bytes"], 64 << 20, "{d}");
    assert_eq!(d["spec"]["resources"]["cpu_millis"], 500, "{d}");
    assert_eq!(d["spec"]["resources"]["pids_max"], 100, "{d}");
    let id = d["metadata"]["id"].as_str().expect("id").to_string();
    assert_eq!(cgroup_file("pids", &id, "pids.max"), "100");
    assert_eq!(
        cgroup_file("memory", &id, "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(cgroup_file("cpu", &id, "cpu.cfs_quota_us"), "50000");

    let e = run("explicit", &["--memory", "32MiB", "--pids", "50"]);
    assert_eq!(e["spec"]["resources"]["memory_bytes"], 32 << 20, "{e}");
    assert_eq!(e["spec"]["resources"]["pids_max"], 50, "{e}");
    assert_eq!(
        e["spec"]["resources"]["cpu_millis"], 500,
        "the unset one comes from the project: {e}"
    );

    // A replace keeps explicit values and fills what a client left out.
    let mut body = e.clone();
    body["spec"]["resources"] = serde_json::json!({"memory_bytes": 48u64 << 20});
    let (status, resp) = http(
        &cloud,
        "PUT",
        "/v1/projects/lim/instances/explicit",
        Some(&token),
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{resp}");
    let replaced: serde_json::Value = serde_json::from_str(&resp).expect("json");
    assert_eq!(
        replaced["spec"]["resources"],
        serde_json::json!({"memory_bytes": 48u64 << 20, "cpu_millis": 500, "pids_max": 100}),
        "{replaced}"
    );
    for name in ["dflt", "explicit"] {
        cloud.ok(&["instance", "rm", name, "--project", "lim"]);
    }
    cloud.remove_everything();
}

/// Helpers for instances in projects other than `default`.
trait InProject {
    fn wait_phase_in(&self, project: &str, name: &str) -> serde_json::Value;
}

impl InProject for Cloud {
    fn wait_phase_in(&self, project: &str, name: &str) -> serde_json::Value {
        wait_until(T, &format!("instance {name} in {project} to run"), || {
            let v = self
                .json(&["instance", "get", name, "--project", project])
                .ok()?;
            (v["status"]["phase"] == "running").then_some(v)
        })
    }
}

/// Names in a project's collection, through the CLI.
fn names_in(cloud: &Cloud, project: &str, what: &str) -> Vec<String> {
    let v = cloud
        .json(&[what, "list", "--project", project])
        .unwrap_or_else(|e| panic!("{what} list in {project}: {e}"));
    v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn project_rm_refuses_while_it_holds_resources_and_force_leaves_nothing() {
    let cloud = Cloud::start();
    let host_port = common::free_port().to_string();
    let p = ["--project", "gone"];
    let in_gone = |args: &[&str]| {
        // Before any `--`: what follows it is the workload's command.
        let mut all = args.to_vec();
        all.splice(2..2, p);
        cloud.ok(&all)
    };
    cloud.ok(&["project", "create", "gone"]);
    in_gone(&["image", "import", "--name", "busybox", &cloud.starter_tar()]);
    in_gone(&["network", "create", "net1", "--subnet", "10.20.0.0/24"]);
    in_gone(&["secgroup", "create", "web", "--allow", "tcp:80"]);
    in_gone(&[
        "instance",
        "run",
        "app",
        "--image",
        "busybox",
        "--network",
        "net1",
        "--secgroup",
        "web",
        "--",
        "sleep",
        "3600",
    ]);
    cloud.wait_phase_in("gone", "app");
    in_gone(&[
        "address",
        "publish",
        "app",
        "--port",
        &format!("{host_port}:80"),
        "--name",
        "app-http",
    ]);
    let app_id = instance_id_in(&cloud, "gone", "app");

    // Refused, naming what is left and how to remove it.
    let out = cloud.nimbus(&["project", "rm", "gone"]);
    assert!(!out.status.success(), "project rm must refuse");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    for needle in [
        "app-http",
        "instances (app)",
        "security groups (web)",
        "networks (net1)",
        "images (busybox)",
        "nimbus project rm gone --force",
        "nimbus address rm",
        "nimbus instance rm",
    ] {
        assert!(
            err.contains(needle),
            "the refusal must mention {needle:?}: {err}"
        );
    }

    // --force removes everything, then the project.
    cloud.ok(&["project", "rm", "gone", "--force"]);
    common::assert_no_leaks(cloud.data_dir(), &[app_id]);
    let projects = cloud.ok(&["project", "list"]);
    assert!(!projects.contains("gone"), "{projects}");

    // A new project of the same name inherits none of it.
    cloud.ok(&["project", "create", "gone"]);
    for what in ["instance", "network", "secgroup", "address", "image"] {
        let left = names_in(&cloud, "gone", what);
        assert!(
            left.is_empty(),
            "the new project inherited {what}s {left:?}"
        );
    }
    in_gone(&["image", "import", "--name", "busybox", &cloud.starter_tar()]);
    in_gone(&["network", "create", "net1", "--subnet", "10.20.0.0/24"]);
    let net = cloud
        .json(&["network", "get", "net1", "--project", "gone"])
        .expect("network get");
    assert_eq!(
        net["status"]["allocated"], 0,
        "no address of the old project's instance is still allocated: {net}"
    );
    // The host port is free again, for any project.
    cloud.ok(&[
        "instance", "run", "other", "--image", "busybox", "--", "sleep", "3600",
    ]);
    cloud.wait_phase("other", &["running"], T);
    cloud.ok(&[
        "address",
        "publish",
        "other",
        "--port",
        &format!("{host_port}:80"),
    ]);
    cloud.ok(&["project", "rm", "gone", "--force"]);
    cloud.remove_everything();
}

fn instance_id_in(cloud: &Cloud, project: &str, name: &str) -> String {
    cloud
        .json(&["instance", "get", name, "--project", project])
        .expect("instance get")["metadata"]["id"]
        .as_str()
        .expect("id")
        .to_string()
}

// VMs: guest RAM is their memory (with its own default), vCPUs their CPU;
// QEMU is a workload: it runs under the instance's cgroups (never in the
// control plane's) and at the workload's OOM score.
#[test]
fn qemu_runs_under_its_instance_cgroups_at_the_workload_oom_score() {
    let cloud = Cloud::start();
    cloud.import_tiny();
    cloud.ok(&[
        "instance",
        "run",
        "vm1",
        "--kind",
        "vm",
        "--image",
        "tiny",
        "--network",
        "none",
    ]);
    let vm = cloud.wait_phase("vm1", &["running"], Duration::from_secs(120));
    assert_eq!(
        vm["spec"]["resources"]["memory_bytes"],
        512u64 << 20,
        "{vm}"
    );
    let shown = cloud.ok(&["instance", "get", "vm1"]);
    assert!(
        shown.contains("memory 512MiB, cpus see vcpus, pids 4096 (QEMU)"),
        "{shown}"
    );
    let qemu = vm["status"]["qemu_pid"].as_i64().expect("qemu pid");
    let id = vm["metadata"]["id"].as_str().expect("id");
    for controller in ["pids", "cpu", "memory"] {
        let dir = common::cgroup_dir_of(qemu, controller);
        assert!(
            dir == common::instance_cgroup_dir(id, controller)
                && dir.ends_with(format!("nimbus/{id}")),
            "QEMU must be in its instance's {controller} cgroup: {dir:?}"
        );
    }
    // The tracking cgroup's pids limit was really written.
    assert_eq!(cgroup_file("pids", id, "pids.max"), "4096");
    let shim = shim_pid(&cloud, "vm1");
    let (qemu_score, shim_score) = (score(qemu), score(shim));
    assert!(
        qemu_score >= 0 && qemu_score > shim_score,
        "QEMU {qemu_score} must rank above its shim {shim_score} for the OOM killer"
    );
    if can_lower_oom_scores() {
        assert_eq!((qemu_score, shim_score), (0, -1000));
    }
    cloud.remove_everything();
}

/// The cgroup helper the limit tests read through finds this process's own
/// cgroups on this host's layout, and a missing file or instance is a
/// failure, never an empty value or 0.
#[test]
fn cgroup_reads_fail_loudly_when_the_file_is_missing() {
    let me = i64::from(std::process::id());
    let pids = common::cgroup_dir_of(me, "pids");
    assert!(
        pids.join("cgroup.procs").exists(),
        "the pids cgroup of this test is a cgroup directory: {pids:?}"
    );
    assert!(
        common::cgroup_file(me, "pids", "cgroup.procs")
            .lines()
            .any(|l| l == me.to_string()),
        "this test is listed in its own pids cgroup"
    );
    let missing_file = std::panic::catch_unwind(|| common::cgroup_file(me, "pids", "no-such-file"));
    assert!(
        missing_file.is_err(),
        "reading a missing file must fail: {missing_file:?}"
    );
    let no_instance = std::panic::catch_unwind(|| {
        common::instance_cgroup_file("no-such-instance", "pids", "pids.max")
    });
    assert!(
        no_instance.is_err(),
        "an instance without a cgroup must fail: {no_instance:?}"
    );
    let no_process = std::panic::catch_unwind(|| {
        common::cgroup_number(i64::from(i32::MAX), "pids", "pids.current")
    });
    assert!(
        no_process.is_err(),
        "a process that is gone must fail: {no_process:?}"
    );
}
