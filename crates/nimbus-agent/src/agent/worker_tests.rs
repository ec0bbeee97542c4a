//! The reconcile worker against an in-memory driver and a fake API server
//! on a Unix socket: no shim, no root, no host changes.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nimbus_api::client::{Client, Endpoint};
use nimbus_api::{Image, ImageSpec, Instance, InstanceKind, Metadata, RestartMode, StatusUpdate};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::error::AgentError;
use super::{reconcile, Agent, AgentConfig};
use crate::driver::{Driver, DriverContext, Drivers, Launch};
use crate::shim::state::write_state;
use crate::shim::{Phase, ShimState};

/// Records each life-cycle call; its "shim" runs a workload that has
/// already exited with code 0 by the time `start` returns.
#[derive(Default)]
struct FakeDriver {
    calls: Mutex<Vec<String>>,
}

impl FakeDriver {
    fn record(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }
}

#[async_trait]
impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn serves(&self, _kind: InstanceKind) -> bool {
        true
    }
    fn owns_dir(&self, dir: &Path) -> bool {
        dir.join("fake.json").exists()
    }
    fn secure_dir(&self, _dir: &Path) -> Result<(), AgentError> {
        Ok(())
    }
    async fn prepare(&self, _cx: &dyn DriverContext, launch: Launch<'_>) -> Result<(), AgentError> {
        std::fs::create_dir_all(launch.dir).map_err(|e| AgentError::io("mkdir", e))?;
        std::fs::write(launch.dir.join("fake.json"), b"{}")
            .map_err(|e| AgentError::io("spec", e))?;
        self.record(format!(
            "prepare restarts_before={}",
            launch.restarts_before
        ));
        Ok(())
    }
    async fn attach_networks(
        &self,
        _cx: &dyn DriverContext,
        _launch: Launch<'_>,
    ) -> Result<(), AgentError> {
        self.record("attach".into());
        Ok(())
    }
    async fn start(&self, _cx: &dyn DriverContext, dir: &Path) -> Result<ShimState, AgentError> {
        self.record("start".into());
        let mut state = ShimState::new(1);
        state.phase = Phase::Exited;
        state.exit_code = Some(0);
        state.started_at = Some(chrono::Utc::now());
        state.finished_at = state.started_at;
        write_state(dir, &state)?;
        Ok(state)
    }
    async fn stop(&self, _dir: &Path, grace_ms: u64) -> Result<Option<ShimState>, AgentError> {
        self.record(format!("stop grace_ms={grace_ms}"));
        Ok(None)
    }
    async fn clean_up(&self, _dir: &Path) -> Result<(), AgentError> {
        self.record("clean_up".into());
        Ok(())
    }
}

/// The API as far as one worker uses it: the list of this host's
/// instances is empty (whatever was here left), any other GET is the image,
/// any POST a status report, which is recorded.
struct FakeApi {
    reports: Arc<Mutex<Vec<StatusUpdate>>>,
}

impl FakeApi {
    fn serve(socket: &Path, image: Image) -> FakeApi {
        let listener = tokio::net::UnixListener::bind(socket).expect("bind the fake API");
        let reports = Arc::new(Mutex::new(Vec::new()));
        let recorded = reports.clone();
        let image = serde_json::to_vec(&image).expect("image JSON");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (recorded, image) = (recorded.clone(), image.clone());
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    while let Some((method, path, body)) = read_request(&mut stream).await {
                        let reply = if method == "POST" {
                            if let Ok(update) = serde_json::from_slice(&body) {
                                recorded.lock().expect("reports").push(update);
                            }
                            b"{}".to_vec()
                        } else if path.starts_with("/v1/instances?") {
                            br#"{"items":[],"revision":1}"#.to_vec()
                        } else {
                            image.clone()
                        };
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            reply.len()
                        );
                        let out = stream.get_mut();
                        if out.write_all(head.as_bytes()).await.is_err()
                            || out.write_all(&reply).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        FakeApi { reports }
    }

    fn phases(&self) -> Vec<(String, u64)> {
        self.reports
            .lock()
            .expect("reports")
            .iter()
            .map(|u| {
                (
                    u.status.phase.as_str().to_string(),
                    u.status.observed_generation,
                )
            })
            .collect()
    }

    async fn wait_for(&self, phase: &str, count: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.phases().iter().filter(|(p, _)| p == phase).count() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {count} {phase:?} reports; got {:?}",
                self.phases()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One HTTP/1.1 request: its method, path and body.
async fn read_request(
    stream: &mut BufReader<tokio::net::UnixStream>,
) -> Option<(String, String, Vec<u8>)> {
    let mut line = String::new();
    stream.read_line(&mut line).await.ok()?;
    let mut request_line = line.split(' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let mut length = 0;
    loop {
        line.clear();
        if stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some((method, path, body))
}

struct Setup {
    _root: tempfile::TempDir,
    agent: Arc<Agent>,
    driver: Arc<FakeDriver>,
    api: FakeApi,
}

fn setup() -> Setup {
    let root = tempfile::tempdir().expect("tempdir");
    let socket = root.path().join("api.sock");
    let image = Image {
        metadata: Metadata::new("alpine", Some("default")),
        spec: ImageSpec::default(),
        status: Default::default(),
    };
    let api = FakeApi::serve(&socket, image);
    let client = Client::new(Endpoint::Unix(socket), None).expect("client");
    let config = AgentConfig::new(
        "h1".into(),
        root.path().join("data"),
        root.path().join("no-shim"),
    );
    let driver = Arc::new(FakeDriver::default());
    let drivers = Drivers::new(vec![driver.clone()]);
    let agent = Agent::with_drivers(config, client, None, drivers).expect("agent");
    Setup {
        _root: root,
        agent,
        driver,
        api,
    }
}

fn instance(generation: u64, observed: u64) -> Instance {
    let mut i: Instance = serde_json::from_value(serde_json::json!({
        "metadata": {
            "id": "0123abcd", "name": "web", "project": "default",
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        },
        "spec": {"image": "alpine", "restart_generation": generation},
    }))
    .expect("instance JSON");
    i.status.observed_generation = observed;
    i
}

#[tokio::test]
async fn a_stale_watch_event_does_not_start_the_workload_twice() {
    let s = setup();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = tokio::spawn(reconcile::worker(s.agent.clone(), rx));
    let created = instance(1, 0);
    tx.send(created.clone()).expect("send");
    s.api.wait_for("exited", 1).await;
    // The same event again, as a watch replays it before our report shows.
    tx.send(created).expect("send");
    s.api.wait_for("exited", 2).await;
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("the worker ends when its channel closes")
        .expect("worker");
    assert_eq!(
        s.driver.calls(),
        ["prepare restarts_before=0", "attach", "start"],
        "prepared, attached and started once, in order"
    );
    let phases = s.api.phases();
    assert_eq!(phases.first(), Some(&("starting".to_string(), 0)));
    assert!(
        phases.iter().skip(1).all(|(_, g)| *g == 1),
        "every later report says generation 1 was acted on: {phases:?}"
    );
}

#[tokio::test]
async fn a_lost_shim_under_restart_always_is_cleaned_up_and_started_counting_a_restart() {
    let s = setup();
    let mut running = instance(1, 1);
    running.spec.restart_policy.mode = RestartMode::Always;
    running.status.phase = nimbus_api::InstancePhase::Running;
    // The shim recorded `running`, then died (no socket answers).
    let dir = s.agent.instance_dir(&running.metadata.id);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut state = ShimState::new(1);
    state.phase = Phase::Running;
    write_state(&dir, &state).expect("state.json");

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = tokio::spawn(reconcile::worker(s.agent.clone(), rx));
    tx.send(running).expect("send");
    s.api.wait_for("exited", 1).await;
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("the worker ends when its channel closes")
        .expect("worker");
    assert_eq!(
        s.driver.calls(),
        ["clean_up", "prepare restarts_before=1", "attach", "start"]
    );
    assert!(
        !s.api.phases().iter().any(|(p, _)| p == "failed"),
        "never shown failed on its way back: {:?}",
        s.api.phases()
    );
}

#[tokio::test]
async fn an_instance_that_left_while_the_host_was_fenced_has_its_stopped_copy_removed() {
    let s = setup();
    let mut running = instance(1, 1);
    running.spec.restart_policy.mode = RestartMode::Always;
    running.status.phase = nimbus_api::InstancePhase::Running;
    running.status.host = Some("h1".into());
    // The fence killed the shim; its directory and the driver's files stay.
    let dir = s.agent.instance_dir(&running.metadata.id);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("fake.json"), b"{}").expect("driver file");
    let mut state = ShimState::new(1);
    state.phase = Phase::Running;
    write_state(&dir, &state).expect("state.json");
    s.agent.fence.fence_now();

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = tokio::spawn(reconcile::worker(s.agent.clone(), rx));
    tx.send(running).expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(dir.exists(), "nothing is touched while fenced");
    assert!(s.driver.calls().is_empty(), "{:?}", s.driver.calls());

    // A heartbeat is accepted again; the servers list nothing here now.
    s.agent.fence.heartbeat_accepted();
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("the worker ends once it finds the instance gone")
        .expect("worker");
    assert_eq!(s.driver.calls(), ["stop grace_ms=0", "clean_up"]);
    assert!(!dir.exists(), "the stopped copy's directory is still there");
    assert!(
        s.api.phases().is_empty(),
        "a copy that left reports nothing: {:?}",
        s.api.phases()
    );
    drop(tx);
}
