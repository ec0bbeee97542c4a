use super::*;

// ---------------------------------------------------------------- actions

#[test]
fn start_restart_and_stop_change_the_desired_state() {
    let mut spec = container();
    spec.restart_generation = 3;
    request_stop(&mut spec);
    assert_eq!(spec.desired_state, DesiredState::Stopped);
    assert_eq!(spec.restart_generation, 3, "stop keeps the generation");
    request_restart(&mut spec);
    assert_eq!(spec.desired_state, DesiredState::Running);
    assert_eq!(spec.restart_generation, 4);

    // `start` is a no-op only for an instance that wants to run and has
    // not ended.
    assert!(already_running(&instance(
        container(),
        InstancePhase::Running
    )));
    assert!(already_running(&instance(
        container(),
        InstancePhase::Backoff
    )));
    assert!(!already_running(&instance(
        container(),
        InstancePhase::Exited
    )));
    let mut stopped = container();
    request_stop(&mut stopped);
    assert!(!already_running(&instance(stopped, InstancePhase::Running)));
}

#[test]
fn deletion_is_requested_once_and_blocks_spec_changes() {
    let mut i = instance(container(), InstancePhase::Running);
    assert_eq!(check_not_deleting(&i), Ok(()));
    assert_eq!(
        check_finalize(&i),
        Err(StateError::NotBeingDeleted("web".into()))
    );
    let first = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let later = Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap();
    request_deletion(&mut i, false, first);
    assert_eq!(i.metadata.deletion_requested_at, Some(first));
    assert_eq!(i.status.phase, InstancePhase::Deleting);
    assert_eq!(
        i.spec.stop_grace_ms, None,
        "a graceful delete keeps the grace"
    );
    request_deletion(&mut i, true, later);
    assert_eq!(
        i.metadata.deletion_requested_at,
        Some(first),
        "the first request's time stays"
    );
    assert_eq!(i.spec.stop_grace_ms, Some(0), "force kills at once");
    assert_eq!(
        check_not_deleting(&i).expect_err("deleting").to_string(),
        "instance \"web\" is being deleted"
    );
    assert_eq!(check_finalize(&i), Ok(()));
}

#[test]
fn pause_resume_console_and_exec_need_the_right_kind_and_phase() {
    let c = instance(container(), InstancePhase::Running);
    assert_eq!(
        check_is_vm(&c, "pause").expect_err("container").to_string(),
        "pause works on virtual machines and unikernels; instance \"web\" is a container (use `nimbus instance exec` or stop it)"
    );
    let running = instance(vm(), InstancePhase::Running);
    let paused = instance(vm(), InstancePhase::Paused);
    let stopped = instance(vm(), InstancePhase::Stopped);
    assert_eq!(check_is_vm(&running, "pause"), Ok(()));
    assert_eq!(check_pause_phase(&running, true), Ok(()));
    assert_eq!(check_pause_phase(&paused, false), Ok(()));
    assert_eq!(
        check_pause_phase(&paused, true)
            .expect_err("paused")
            .to_string(),
        "instance \"web\" is paused; only a running instance can be paused"
    );
    assert_eq!(
        check_pause_phase(&running, false)
            .expect_err("running")
            .to_string(),
        "instance \"web\" is running; only a paused instance can be resumed"
    );
    assert_eq!(check_console_phase(&running), Ok(()));
    assert_eq!(check_console_phase(&paused), Ok(()));
    assert_eq!(
        check_console_phase(&stopped)
            .expect_err("stopped")
            .to_string(),
        "instance \"web\" is stopped, not running; start it with `nimbus instance start web`"
    );
    assert_eq!(check_exec_phase(&c), Ok(()));
    assert!(check_exec_phase(&paused).is_err(), "exec needs running");
    assert_eq!(check_exec_command(&["ps".into()]), Ok(()));
    assert_eq!(check_exec_command(&[]), Err(SpecError::NoExecCommand));
}

// ---------------------------------------------------------------- status merging

fn bound(spec: InstanceSpec) -> Instance {
    let mut i = instance(spec, InstancePhase::Scheduled);
    i.spec.restart_generation = 2;
    i.status.host = Some("node1".into());
    i.status.image_id = Some("id-web".into());
    i.status.addresses = vec![InstanceAddress {
        network: "default".into(),
        network_id: "n1".into(),
        ip: "10.0.0.5".parse().unwrap(),
        prefix_len: 24,
        gateway: "10.0.0.1".parse().unwrap(),
        mac: "02:00:00:00:00:05".into(),
    }];
    i
}

fn report(phase: InstancePhase, observed_generation: u64) -> InstanceStatus {
    InstanceStatus {
        phase,
        observed_generation,
        pid: Some(4242),
        host_uid: Some(100_000),
        restart_count: 1,
        exit_code: None,
        // What an agent cannot decide: ignored.
        host: Some("elsewhere".into()),
        image_id: Some("id-other".into()),
        ..Default::default()
    }
}

#[test]
fn a_report_keeps_the_servers_fields_and_takes_the_agents() {
    let mut i = bound(container());
    let before = i.clone();
    merge_reported_status(&mut i, report(InstancePhase::Running, 2), Utc::now());
    assert_eq!(i.status.phase, InstancePhase::Running);
    assert_eq!(i.status.pid, Some(4242));
    assert_eq!(i.status.host_uid, Some(100_000));
    assert_eq!(i.status.restart_count, 1);
    assert_eq!(i.status.observed_generation, 2);
    // Decided by the server, not the agent.
    assert_eq!(i.status.host.as_deref(), Some("node1"));
    assert_eq!(i.status.image_id.as_deref(), Some("id-web"));
    assert_eq!(i.status.addresses, before.status.addresses);
    assert_eq!(i.spec, before.spec, "a report never changes the spec");
    assert_eq!(i.metadata.deletion_requested_at, None);
}

#[test]
fn a_report_without_volume_states_keeps_the_last_ones() {
    let mut i = bound(container());
    let attached = vec![nimbus_api::AttachedVolume {
        volume: "data".into(),
        state: "attached".into(),
        message: None,
    }];
    let mut with = report(InstancePhase::Running, 2);
    with.volumes = Some(attached.clone());
    merge_reported_status(&mut i, with, Utc::now());
    merge_reported_status(&mut i, report(InstancePhase::Paused, 2), Utc::now());
    assert_eq!(i.status.volumes, Some(attached));
    let mut none = report(InstancePhase::Running, 2);
    none.volumes = Some(vec![]);
    merge_reported_status(&mut i, none, Utc::now());
    assert_eq!(
        i.status.volumes,
        Some(vec![]),
        "an explicit empty list replaces"
    );
}

#[test]
fn an_instance_being_deleted_stays_deleting() {
    let mut i = bound(container());
    let asked = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    request_deletion(&mut i, false, asked);
    merge_reported_status(&mut i, report(InstancePhase::Running, 2), Utc::now());
    assert_eq!(i.status.phase, InstancePhase::Deleting);
    assert_eq!(
        i.status.pid,
        Some(4242),
        "what the agent saw is still shown"
    );
    assert_eq!(i.metadata.deletion_requested_at, Some(asked));
}

#[test]
fn auto_remove_deletes_on_a_terminal_phase_of_the_current_generation_only() {
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
    let mut spec = container();
    spec.auto_remove = true;
    for phase in [
        InstancePhase::Exited,
        InstancePhase::Failed,
        InstancePhase::Stopped,
    ] {
        let mut i = bound(spec.clone());
        merge_reported_status(&mut i, report(phase, 2), now);
        assert_eq!(i.metadata.deletion_requested_at, Some(now), "{phase:?}");
        // The ending phase is kept in this revision: a watcher sees how
        // the workload ended before it goes.
        assert_eq!(i.status.phase, phase);
    }
    // A report about the workload before a restart (an older generation)
    // is stale: the restarted instance is not removed.
    let mut i = bound(spec.clone());
    merge_reported_status(&mut i, report(InstancePhase::Exited, 1), now);
    assert_eq!(i.metadata.deletion_requested_at, None);
    assert_eq!(i.status.phase, InstancePhase::Exited);
    // A restart policy that restarts it keeps it in backoff, not removed.
    let mut i = bound(spec);
    merge_reported_status(&mut i, report(InstancePhase::Backoff, 2), now);
    assert_eq!(i.metadata.deletion_requested_at, None);
    // Without auto_remove an ended instance stays.
    let mut i = bound(container());
    merge_reported_status(&mut i, report(InstancePhase::Exited, 2), now);
    assert_eq!(i.metadata.deletion_requested_at, None);
    assert_eq!(i.status.phase, InstancePhase::Exited);
}

#[test]
fn removing_a_host_finalizes_what_is_deleted_and_releases_the_rest() {
    let mut running = instance(container(), InstancePhase::Running);
    running.status.host = Some("h1".into());
    running.status.pid = Some(42);
    running.status.image_id = Some("sha256:abc".into());
    assert_eq!(
        release_from_removed_host(&mut running, "h1"),
        HostRemoval::Release
    );
    assert_eq!(running.status.host, None);
    assert_eq!(running.status.phase, InstancePhase::Pending);
    assert_eq!(running.status.pid, None, "the old host's pid is forgotten");
    assert_eq!(running.status.image_id.as_deref(), Some("sha256:abc"));
    assert_eq!(
        running.status.reason.as_deref(),
        Some("host \"h1\" was removed; waiting to be placed again")
    );

    let mut deleting = instance(container(), InstancePhase::Running);
    deleting.status.host = Some("h1".into());
    request_deletion(&mut deleting, false, Utc::now());
    assert_eq!(
        release_from_removed_host(&mut deleting, "h1"),
        HostRemoval::Finalize
    );
}
