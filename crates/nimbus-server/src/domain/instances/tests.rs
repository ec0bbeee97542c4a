//! Unit tests of the instance rules: no router, no store. Every rule is
//! shown accepting a good spec and refusing a bad one with its message.

use std::collections::{BTreeMap, BTreeSet};

use chrono::TimeZone;
use nimbus_api::{
    DiskImage, ImageDefaults, ImageSpec, ImageStatus, InstanceAddress, KernelImage, PortForward,
    RestartPolicy, VmSpec,
};

use super::*;

const PROJECT: &str = "ops";

/// The images and security groups the store of project `ops` holds.
struct Store {
    images: BTreeMap<String, Image>,
    secgroups: BTreeSet<String>,
}

fn image(name: &str, status: ImageStatus) -> Image {
    let mut metadata = Metadata::new(name, Some(PROJECT));
    metadata.id = format!("id-{name}");
    Image {
        metadata,
        spec: ImageSpec::default(),
        status,
    }
}

fn store() -> Store {
    let oci = ImageStatus {
        format: "oci".into(),
        defaults: ImageDefaults {
            cmd: vec!["sh".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let bare = ImageStatus {
        format: "rootfs".into(),
        ..Default::default()
    };
    let disk = ImageStatus {
        format: "disk".into(),
        disk: Some(DiskImage {
            digest: "sha256:d".into(),
            format: "qcow2".into(),
            virtual_size_bytes: 1 << 30,
        }),
        ..Default::default()
    };
    let kernel = ImageStatus {
        format: "kernel".into(),
        kernel: Some(KernelImage {
            digest: "sha256:k".into(),
            initrd: None,
            entry: "pvh".into(),
        }),
        ..Default::default()
    };
    let images = [
        image("web", oci),
        image("bare", bare),
        image("debian", disk),
        image("vmlinux", kernel),
    ]
    .into_iter()
    .map(|i| (i.metadata.name.clone(), i))
    .collect();
    Store {
        images,
        secgroups: ["web-sg".to_string()].into(),
    }
}

/// Validate as the create handler does: with what the spec names looked up.
fn validate(spec: &InstanceSpec) -> Result<String, SpecError> {
    let store = store();
    let kernel = spec.vm.as_ref().and_then(|v| v.kernel_image.as_ref());
    let named = Named {
        image: store.images.get(&spec.image),
        kernel_image: kernel.and_then(|k| store.images.get(k)),
        secgroups: Some(&store.secgroups),
    };
    validate_spec(PROJECT, spec, named)
}

/// The message a spec is refused with.
fn refused(spec: &InstanceSpec) -> String {
    match validate(spec) {
        Ok(id) => panic!("spec accepted (image {id}), expected a refusal: {spec:?}"),
        Err(e) => e.to_string(),
    }
}

fn container() -> InstanceSpec {
    InstanceSpec {
        image: "web".into(),
        ..Default::default()
    }
}

fn vm() -> InstanceSpec {
    InstanceSpec {
        kind: InstanceKind::Vm,
        image: "debian".into(),
        vm: Some(VmSpec::default()),
        ..Default::default()
    }
}

fn unikernel() -> InstanceSpec {
    InstanceSpec {
        kind: InstanceKind::Unikernel,
        image: "vmlinux".into(),
        ..Default::default()
    }
}

fn with_vm(mut spec: InstanceSpec, change: impl FnOnce(&mut VmSpec)) -> InstanceSpec {
    change(spec.vm.get_or_insert_with(VmSpec::default));
    spec
}

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

// ---------------------------------------------------------------- actions

fn instance(spec: InstanceSpec, phase: InstancePhase) -> Instance {
    Instance {
        metadata: Metadata::new("web", Some(PROJECT)),
        spec,
        status: InstanceStatus {
            phase,
            ..Default::default()
        },
    }
}

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
