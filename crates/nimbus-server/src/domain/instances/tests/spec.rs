use super::*;

// ---------------------------------------------------------------- names, images

#[test]
fn instance_names_are_resource_names() {
    assert_eq!(validate_instance_name("web-1"), Ok(()));
    assert_eq!(validate_instance_name("a.b_c"), Ok(()));
    for bad in ["", "Web", "-web", "web server", &"x".repeat(64)] {
        let e = validate_instance_name(bad).expect_err(bad);
        assert!(
            e.to_string()
                .starts_with(&format!("instance name {bad:?} is invalid")),
            "{e}"
        );
    }
}

#[test]
fn a_valid_spec_is_accepted_and_names_its_image_id() {
    assert_eq!(validate(&container()), Ok("id-web".to_string()));
    assert_eq!(validate(&vm()), Ok("id-debian".to_string()));
    assert_eq!(validate(&unikernel()), Ok("id-vmlinux".to_string()));
    // A VM booted from a kernel image directly.
    let mut direct = vm();
    direct.image = "vmlinux".into();
    assert_eq!(validate(&direct), Ok("id-vmlinux".to_string()));
}

#[test]
fn an_unknown_image_is_refused_with_the_import_command_of_its_kind() {
    let mut spec = container();
    spec.image = "nope".into();
    assert_eq!(
        refused(&spec),
        "image \"nope\" not found in project \"ops\"; import it with `nimbus image import <file> --name nope`"
    );
    let mut spec = vm();
    spec.image = "nope".into();
    assert!(refused(&spec).contains("`nimbus image import-disk <file> --name nope`"));
    let mut spec = unikernel();
    spec.image = "nope".into();
    assert!(refused(&spec).contains("`nimbus image import-kernel <file> --name nope`"));
}

// ---------------------------------------------------------------- containers

#[test]
fn a_container_takes_no_vm_settings_and_no_vm_image() {
    let spec = with_vm(container(), |v| v.vcpus = Some(2));
    assert_eq!(
        refused(&spec),
        "vm settings (vcpus, disk, ssh keys, user-data) apply to kind vm or unikernel only"
    );
    let mut spec = container();
    spec.image = "debian".into();
    assert_eq!(
        refused(&spec),
        "image \"debian\" is a disk image for virtual machines; run it with --kind vm"
    );
    spec.image = "vmlinux".into();
    assert_eq!(
        refused(&spec),
        "image \"vmlinux\" is a kernel image for virtual machines; run it with --kind vm or --kind unikernel"
    );
}

#[test]
fn a_container_needs_a_command_from_its_spec_or_its_image() {
    let mut spec = container();
    spec.image = "bare".into();
    assert_eq!(
        refused(&spec),
        "image \"bare\" has no default command; give one after `--`, e.g. `-- sh -c 'echo hi'`"
    );
    spec.args = vec!["/bin/true".into()];
    assert_eq!(validate(&spec), Ok("id-bare".to_string()));
}

#[test]
fn container_limits_have_floors() {
    let mut spec = container();
    spec.resources.memory_bytes = Some(MIN_CONTAINER_MEMORY_BYTES - 1);
    assert_eq!(
        refused(&spec),
        "memory limit of 4194303 bytes is below the 4 MiB minimum; ask for at least 4MiB"
    );
    spec.resources.memory_bytes = Some(MIN_CONTAINER_MEMORY_BYTES);
    assert!(validate(&spec).is_ok());

    let mut spec = container();
    spec.resources.cpu_millis = Some(0);
    assert!(refused(&spec).starts_with("cpu of 0 would never run"));
    spec.resources.cpu_millis = Some(1);
    assert!(validate(&spec).is_ok());

    let mut spec = container();
    spec.resources.pids_max = Some(0);
    assert_eq!(refused(&spec), "pids limit 0 is below 1; give at least 1");
    spec.resources.pids_max = Some(-5);
    assert_eq!(refused(&spec), "pids limit -5 is below 1; give at least 1");
    spec.resources.pids_max = Some(1);
    assert!(validate(&spec).is_ok());
}

#[test]
fn a_containers_disk_has_a_floor_and_is_not_a_vms() {
    let mut spec = container();
    spec.resources.disk_bytes = Some(MIN_CONTAINER_DISK_BYTES - 1);
    assert_eq!(
        refused(&spec),
        "disk of 16777215 bytes is below the 16 MiB minimum of a container's writable layer; ask for at least --disk 16MiB"
    );
    spec.resources.disk_bytes = Some(64 << 20);
    assert!(validate(&spec).is_ok());
    let mut spec = vm();
    spec.resources.disk_bytes = Some(64 << 20);
    assert_eq!(
        refused(&spec),
        "resources.disk_bytes sizes a container's writable layer; a vm sizes its disk with vm.disk_bytes (`--disk`)"
    );
    let mut bigger = container();
    bigger.resources.disk_bytes = Some(1 << 30);
    assert!(matches!(
        check_replace("web", &container(), &bigger),
        Err(SpecError::FixedField {
            what: "disk size",
            ..
        })
    ));
}

#[test]
fn max_retries_needs_the_on_failure_policy() {
    for mode in [RestartMode::Never, RestartMode::Always] {
        let mut spec = container();
        spec.restart_policy = RestartPolicy {
            mode,
            max_retries: Some(3),
        };
        assert_eq!(
            refused(&spec),
            "max_retries applies to the on_failure restart policy only"
        );
    }
    let mut spec = container();
    spec.restart_policy = RestartPolicy {
        mode: RestartMode::OnFailure,
        max_retries: Some(3),
    };
    assert!(validate(&spec).is_ok());
    spec.restart_policy = RestartPolicy {
        mode: RestartMode::Always,
        max_retries: None,
    };
    assert!(validate(&spec).is_ok());
}

#[test]
fn environment_names_and_secret_values_must_fit_an_environment() {
    for bad in ["", "A=B", "NUL\0"] {
        let mut spec = container();
        spec.env.insert(bad.into(), "v".into());
        assert_eq!(
            refused(&spec),
            format!(
                "environment variable name {bad:?} is invalid; it must be non-empty without '='"
            )
        );
        let mut spec = container();
        spec.secret_env.insert(bad.into(), "v".into());
        assert!(refused(&spec).contains("is invalid"), "secret {bad:?}");
    }
    let mut spec = container();
    spec.env.insert("TOKEN".into(), "a".into());
    spec.secret_env.insert("TOKEN".into(), "b".into());
    assert_eq!(
        refused(&spec),
        "environment variable \"TOKEN\" is given both as --env and --secret-env; give it once"
    );
    let mut spec = container();
    spec.secret_env.insert("KEY".into(), "a\0b".into());
    assert_eq!(
        refused(&spec),
        "the value of secret environment variable \"KEY\" contains a NUL byte, which an environment cannot carry"
    );
    let mut spec = container();
    spec.env.insert("PATH".into(), "/bin".into());
    spec.secret_env.insert("KEY".into(), "s3cr3t".into());
    assert!(validate(&spec).is_ok());
}

#[test]
fn a_user_is_a_numeric_uid_or_uid_gid_below_65536() {
    for good in ["0", "1000", "1000:1000", "65535:0"] {
        let mut spec = container();
        spec.user = Some(good.into());
        assert!(validate(&spec).is_ok(), "{good}");
    }
    for bad in ["root", "65536", "1:2:3", "1:", ":1", "-1", ""] {
        let mut spec = container();
        spec.user = Some(bad.into());
        assert_eq!(
            refused(&spec),
            format!("user {bad:?} is invalid; give a numeric uid or uid:gid below 65536")
        );
    }
}

#[test]
fn networks_and_security_groups() {
    let mut spec = container();
    spec.networks = vec!["a".into(), "b".into()];
    assert_eq!(
        refused(&spec),
        "an instance can join one network for now; give a single --network"
    );
    let mut spec = container();
    spec.networks = vec!["default".into()];
    spec.secgroups = vec!["web-sg".into(), "db-sg".into()];
    assert_eq!(
        refused(&spec),
        "security group \"db-sg\" not found in project \"ops\"; create it with `nimbus secgroup create db-sg --allow tcp:80`"
    );
    let mut spec = container();
    spec.secgroups = vec!["web-sg".into()];
    assert_eq!(
        refused(&spec),
        "security groups filter network traffic, but the instance joins no network; add --network <name>"
    );
    spec.networks = vec!["default".into()];
    assert!(validate(&spec).is_ok());
}

#[test]
fn the_first_broken_rule_is_the_one_reported() {
    // Memory is checked before the user: the same spec always gets the
    // same message.
    let mut spec = container();
    spec.user = Some("root".into());
    spec.resources.memory_bytes = Some(1);
    assert!(refused(&spec).starts_with("memory limit of 1 bytes"));
}

// ---------------------------------------------------------------- vms, unikernels

#[test]
fn networks_and_forwards_of_vms_and_unikernels() {
    let mut spec = unikernel();
    spec.networks = vec!["default".into()];
    assert_eq!(
        refused(&spec),
        "a unikernel cannot join a network; drop --network"
    );
    let mut spec = with_vm(vm(), |v| {
        v.port_forwards = vec![PortForward {
            host_port: 2222,
            guest_port: 22,
        }]
    });
    assert!(validate(&spec).is_ok());
    spec.networks = vec!["default".into()];
    assert!(refused(&spec).starts_with("a VM on a network is reached through it"));
}

#[test]
fn a_vm_boots_a_disk_or_kernel_image_and_a_unikernel_a_kernel() {
    let mut spec = unikernel();
    spec.image = "debian".into();
    assert_eq!(
        refused(&spec),
        "image \"debian\" is not a kernel image; a unikernel boots from one imported with `nimbus image import-kernel`"
    );
    let mut spec = vm();
    spec.image = "web".into();
    assert_eq!(
        refused(&spec),
        "image \"web\" is a oci image for containers; a vm boots from `nimbus image import-disk` or `import-kernel` images"
    );
    for change in [
        (|v: &mut VmSpec| v.disk_bytes = Some(1 << 30)) as fn(&mut VmSpec),
        |v| v.ssh_authorized_keys = vec!["ssh-ed25519 AAAA me".into()],
        |v| v.user_data = Some("#cloud-config\n".into()),
        |v| {
            v.port_forwards = vec![PortForward {
                host_port: 2222,
                guest_port: 22,
            }]
        },
    ] {
        let spec = with_vm(unikernel(), change);
        assert!(refused(&spec).starts_with("a unikernel gets no disk, cloud-init data or network"));
    }
}

#[test]
fn a_kernel_image_boots_a_disk_vm_directly() {
    let spec = with_vm(vm(), |v| v.kernel_image = Some("vmlinux".into()));
    let mut with_cmdline = spec.clone();
    with_cmdline.args = vec!["root=/dev/vda1".into()];
    assert!(validate(&with_cmdline).is_ok());
    // Without a kernel image, a disk image boots through firmware.
    let mut firmware = vm();
    firmware.args = vec!["root=/dev/vda1".into()];
    assert!(refused(&firmware)
        .starts_with("image \"debian\" boots from its disk through firmware, so a kernel command line cannot be given"));
    let mut not_disk = spec.clone();
    not_disk.image = "vmlinux".into();
    assert_eq!(
        refused(&not_disk),
        "--kernel-image boots a disk image's VM directly; image \"vmlinux\" is not a disk image"
    );
    let wrong = with_vm(vm(), |v| v.kernel_image = Some("debian".into()));
    assert_eq!(
        refused(&wrong),
        "image \"debian\" is not a kernel image; import one with `nimbus image import-kernel`"
    );
    let missing = with_vm(vm(), |v| v.kernel_image = Some("bzimage".into()));
    assert_eq!(
        refused(&missing),
        "kernel image \"bzimage\" not found in project \"ops\"; import it with `nimbus image import-kernel <vmlinux> --initrd <initrd> --name bzimage`"
    );
}

#[test]
fn vm_memory_cpus_and_restart_policy() {
    let mut spec = vm();
    spec.resources.memory_bytes = Some(MIN_VM_MEMORY_BYTES - 1);
    assert_eq!(
        refused(&spec),
        "memory of 16777215 bytes is below the 16 MiB a vm needs; ask for at least 16MiB"
    );
    spec.resources.memory_bytes = Some(MIN_VM_MEMORY_BYTES);
    assert!(validate(&spec).is_ok());
    let mut spec = unikernel();
    spec.resources.memory_bytes = Some(1);
    assert!(refused(&spec).contains("the 16 MiB a unikernel needs"));

    let mut spec = vm();
    spec.restart_policy.mode = RestartMode::Always;
    assert!(refused(&spec).starts_with(
        "restart policies apply to containers for now; a vm runs until it powers off"
    ));
    for set in [
        (|r: &mut Resources| r.cpu_millis = Some(500)) as fn(&mut Resources),
        |r| r.pids_max = Some(10),
    ] {
        let mut spec = unikernel();
        set(&mut spec.resources);
        assert_eq!(
            refused(&spec),
            "--cpus and --pids limit containers; a unikernel takes --vcpus"
        );
    }
    for bad in [0, MAX_VCPUS + 1] {
        let spec = with_vm(vm(), |v| v.vcpus = Some(bad));
        assert_eq!(
            refused(&spec),
            format!("vcpus {bad} is not between 1 and 64")
        );
    }
    for good in [1, MAX_VCPUS] {
        assert!(validate(&with_vm(vm(), |v| v.vcpus = Some(good))).is_ok());
    }
}

#[test]
fn a_disk_is_at_least_the_image_and_only_for_disk_images() {
    let small = with_vm(vm(), |v| v.disk_bytes = Some((1 << 30) - 1));
    assert_eq!(
        refused(&small),
        "disk of 1073741823 bytes is smaller than image \"debian\" (1073741824 bytes); ask for at least its size"
    );
    assert!(validate(&with_vm(vm(), |v| v.disk_bytes = Some(2 << 30))).is_ok());
    let mut kernel_vm = with_vm(vm(), |v| v.disk_bytes = Some(2 << 30));
    kernel_vm.image = "vmlinux".into();
    assert_eq!(
        refused(&kernel_vm),
        "image \"vmlinux\" is a kernel image without a disk; --disk applies to disk images"
    );
}

#[test]
fn user_data_and_ssh_keys_are_what_cloud_init_takes() {
    let big = with_vm(vm(), |v| {
        v.user_data = Some(format!(
            "#cloud-config\n{}",
            "x".repeat(MAX_USER_DATA_BYTES)
        ))
    });
    assert!(refused(&big).contains(&format!("more than {MAX_USER_DATA_BYTES}")));
    let script = with_vm(vm(), |v| v.user_data = Some("#!/bin/sh\necho hi\n".into()));
    assert!(validate(&script).is_ok());
    let yaml = with_vm(vm(), |v| v.user_data = Some("users: []\n".into()));
    assert_eq!(
        refused(&yaml),
        "user-data must start with `#cloud-config` or a `#!` script line, as cloud-init expects"
    );
    for good in [
        "ssh-ed25519 AAAAC3 me@host",
        "ecdsa-sha2-nistp256 AAAA",
        "sk-ssh-ed25519@openssh.com AAAA",
    ] {
        let spec = with_vm(vm(), |v| v.ssh_authorized_keys = vec![good.into()]);
        assert!(validate(&spec).is_ok(), "{good}");
    }
    let long = format!("-----BEGIN OPENSSH PRIVATE KEY----- {}", "A".repeat(100));
    for bad in ["ssh-ed25519", "ssh-rsa AAAA\nssh-rsa BBBB", long.as_str()] {
        let spec = with_vm(vm(), |v| v.ssh_authorized_keys = vec![bad.into()]);
        let shown: String = bad.chars().take(40).collect();
        assert_eq!(
            refused(&spec),
            format!("{shown:?} is not an SSH public key line; pass the .pub file, e.g. --ssh-key ~/.ssh/id_ed25519.pub")
        );
    }
}

#[test]
fn port_forwards_are_distinct_and_from_1024_up() {
    let forward = |host_port, guest_port| PortForward {
        host_port,
        guest_port,
    };
    for (forwards, bad) in [
        (vec![forward(1023, 22)], (1023, 22)),
        (vec![forward(2222, 0)], (2222, 0)),
        (vec![forward(2222, 22), forward(2222, 80)], (2222, 80)),
    ] {
        let spec = with_vm(vm(), |v| v.port_forwards = forwards);
        assert_eq!(
            refused(&spec),
            format!(
                "port forward {}:{} is invalid; give distinct HOST:GUEST ports with HOST from 1024 up",
                bad.0, bad.1
            )
        );
    }
    let spec = with_vm(vm(), |v| {
        v.port_forwards = vec![forward(1024, 22), forward(8080, 80)]
    });
    assert!(validate(&spec).is_ok());
    assert_eq!(
        host_port_claims(&spec),
        vec![
            Claim {
                protocol: Protocol::Tcp,
                port: 1024
            },
            Claim {
                protocol: Protocol::Tcp,
                port: 8080
            }
        ]
    );
    assert!(host_port_claims(&container()).is_empty());
}

#[test]
fn container_settings_are_refused_for_vms() {
    for change in [
        (|s: &mut InstanceSpec| {
            s.env.insert("A".into(), "b".into());
        }) as fn(&mut InstanceSpec),
        |s| {
            s.secret_env.insert("A".into(), "b".into());
        },
        |s| s.working_dir = Some("/srv".into()),
        |s| s.user = Some("1000".into()),
    ] {
        let mut spec = vm();
        change(&mut spec);
        assert_eq!(
            refused(&spec),
            "--env, --secret-env, --workdir and --user apply to containers; give a vm its settings through --user-data"
        );
    }
}

// ---------------------------------------------------------------- defaults

#[test]
fn a_container_gets_its_projects_defaults_then_the_built_in_ones() {
    let project = Resources {
        memory_bytes: Some(256 << 20),
        cpu_millis: None,
        pids_max: None,
        disk_bytes: None,
    };
    let mut spec = container();
    spec.resources.pids_max = Some(50);
    apply_default_limits(&mut spec, &project);
    assert_eq!(
        spec.resources,
        Resources {
            memory_bytes: Some(256 << 20),
            cpu_millis: InstanceDefaults::BUILT_IN.cpu_millis,
            pids_max: Some(50),
            disk_bytes: None,
        }
    );
    let mut spec = container();
    apply_default_limits(&mut spec, &Resources::default());
    assert_eq!(spec.resources, InstanceDefaults::BUILT_IN);
}

#[test]
fn a_vm_gets_guest_memory_and_no_container_limits() {
    let project = Resources {
        memory_bytes: Some(256 << 20),
        cpu_millis: Some(100),
        pids_max: Some(10),
        disk_bytes: None,
    };
    let mut spec = vm();
    apply_default_limits(&mut spec, &project);
    assert_eq!(spec.resources.memory_bytes, Some(DEFAULT_VM_MEMORY_BYTES));
    assert_eq!(spec.resources.cpu_millis, None);
    assert_eq!(spec.resources.pids_max, None);
    let mut spec = unikernel();
    apply_default_limits(&mut spec, &project);
    assert_eq!(
        spec.resources.memory_bytes,
        Some(DEFAULT_UNIKERNEL_MEMORY_BYTES)
    );
    let mut spec = vm();
    spec.resources.memory_bytes = Some(2 << 30);
    apply_default_limits(&mut spec, &project);
    assert_eq!(spec.resources.memory_bytes, Some(2 << 30));
}

// ---------------------------------------------------------------- secrets, creation

#[test]
fn the_secret_placeholder_keeps_a_stored_sealed_value_only() {
    let sealed = "nimbus-sealed:v1:abc".to_string();
    let current: BTreeMap<String, String> = [
        ("KEY".to_string(), sealed.clone()),
        ("OLD".to_string(), "plain".to_string()),
    ]
    .into();
    let given: BTreeMap<String, String> = [
        ("KEY".to_string(), SECRET_REDACTED.to_string()),
        ("NEW".to_string(), "value".to_string()),
    ]
    .into();
    assert_eq!(
        secret_env_changes(given, Some(&current)),
        Ok(vec![
            ("KEY".to_string(), SecretValue::Keep(sealed)),
            ("NEW".to_string(), SecretValue::Seal("value".into())),
        ])
    );
    // On create there is nothing to keep.
    let given: BTreeMap<String, String> = [("KEY".to_string(), SECRET_REDACTED.to_string())].into();
    let e = secret_env_changes(given.clone(), None).expect_err("nothing stored");
    assert_eq!(
        e.to_string(),
        "secret environment variable \"KEY\" has the placeholder value \"<secret>\" but no stored value to keep; give its real value"
    );
    // A stored value that is not sealed is never handed back.
    let given: BTreeMap<String, String> = [("OLD".to_string(), SECRET_REDACTED.to_string())].into();
    assert!(secret_env_changes(given, Some(&current)).is_err());
}

#[test]
fn a_new_instance_is_pending_at_generation_one_or_more() {
    let created = pending_instance(
        Metadata::new("web", Some(PROJECT)),
        container(),
        "id-web".into(),
    );
    assert_eq!(created.status.phase, InstancePhase::Pending);
    assert_eq!(created.status.image_id.as_deref(), Some("id-web"));
    assert_eq!(
        created.status.reason.as_deref(),
        Some("waiting for the scheduler to choose a host")
    );
    assert_eq!(created.spec.restart_generation, 1);
    assert_eq!(created.status.host, None);
    let mut spec = container();
    spec.restart_generation = 7;
    let created = pending_instance(Metadata::new("web", Some(PROJECT)), spec, "i".into());
    assert_eq!(created.spec.restart_generation, 7);
}

// ---------------------------------------------------------------- replace

#[test]
fn a_replace_keeps_the_name_networks_kind_and_what_a_vm_was_built_from() {
    assert_eq!(check_same_name("web", "web"), Ok(()));
    assert_eq!(
        check_same_name("web", "api")
            .expect_err("rename")
            .to_string(),
        "the body names instance \"api\" but the path names \"web\"; instances cannot be renamed"
    );
    let old = container();
    let mut new = container();
    new.env.insert("A".into(), "b".into());
    new.image = "bare".into();
    new.args = vec!["x".into()];
    assert_eq!(
        check_replace("web", &old, &new),
        Ok(()),
        "a container may change image, env and command"
    );
    new.networks = vec!["default".into()];
    assert_eq!(
        check_replace("web", &old, &new)
            .expect_err("networks")
            .to_string(),
        "the networks of instance \"web\" cannot change; create a new instance on the other network"
    );
    let fixed = |old: &InstanceSpec, new: &InstanceSpec| match check_replace("vm1", old, new) {
        Err(SpecError::FixedField { what, .. }) => what,
        other => panic!("expected a fixed field, got {other:?}"),
    };
    assert_eq!(fixed(&container(), &vm()), "kind");
    let mut other_image = vm();
    other_image.image = "vmlinux".into();
    assert_eq!(fixed(&vm(), &other_image), "image");
    let kernel = with_vm(vm(), |v| v.kernel_image = Some("vmlinux".into()));
    assert_eq!(fixed(&vm(), &kernel), "kernel image");
    let disk = with_vm(vm(), |v| v.disk_bytes = Some(2 << 30));
    assert_eq!(fixed(&vm(), &disk), "disk size");
    let forwards = with_vm(vm(), |v| {
        v.port_forwards = vec![PortForward {
            host_port: 2222,
            guest_port: 22,
        }]
    });
    assert_eq!(fixed(&vm(), &forwards), "port forwards");
    assert_eq!(
        check_replace("vm1", &vm(), &disk)
            .expect_err("disk")
            .to_string(),
        "the disk size of instance \"vm1\" cannot change; delete it and run a new one"
    );
    let more_cpus = with_vm(vm(), |v| v.vcpus = Some(4));
    assert_eq!(check_replace("vm1", &vm(), &more_cpus), Ok(()));
}

#[test]
fn an_image_without_the_hosts_platform_is_refused_listing_its_platforms() {
    let platform = |arch: &str| nimbus_image::ImagePlatform {
        os: "linux".into(),
        architecture: arch.into(),
        variant: None,
        manifest_digest: format!("sha256:{arch}"),
        layers: vec![],
        config: Default::default(),
    };
    let mut image = nimbus_image::ImportedImage::from_api(&ImageStatus {
        format: "oci".into(),
        ..Default::default()
    });
    image.platforms = vec![platform("arm64"), platform("s390x")];
    let hosts = |archs: &[&str]| archs.iter().map(|a| a.to_string()).collect::<BTreeSet<_>>();
    let err = check_image_platform("app", &image, &hosts(&["amd64"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("image \"app\" has linux/arm64, linux/s390x; this host is linux/amd64"),
        "{err}"
    );
    let err = check_image_platform("app", &image, &hosts(&["amd64", "riscv64"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the hosts are linux/amd64, linux/riscv64"),
        "{err}"
    );
    assert!(check_image_platform("app", &image, &hosts(&["aarch64"])).is_ok());
    assert!(
        check_image_platform("app", &image, &hosts(&[])).is_ok(),
        "no host yet: the instance waits for one"
    );
    image.platforms.clear();
    assert!(check_image_platform("app", &image, &hosts(&["amd64"])).is_ok());
}
