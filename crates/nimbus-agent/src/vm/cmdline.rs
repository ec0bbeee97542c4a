//! The QEMU command line of one instance. Everything a guest gets is listed
//! here: no default devices, no display, no user config, the sandbox on.

use std::path::Path;

use super::disks;
use super::spec::{Accelerator, Boot, VmKind, VmPaths, VmShimSpec};

/// The seccomp sandbox. `elevateprivileges` stays `allow`: QEMU installs its
/// filter before `-run-with user=` drops it to the unprivileged user, and
/// both `deny` and `children` kill it at that `setuid` (SIGSYS, seen with
/// QEMU 10). Once running as that user it cannot regain root anyway.
pub const SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny";

/// Kernel parameters every directly booted Linux guest needs here: the serial
/// console, and a fixed TSC frequency (under a busy TCG host the kernel can
/// hang calibrating it), no reboot loop on panic.
pub const LINUX_CMDLINE: &str = "console=ttyS0 tsc_early_khz=2000000 panic=-1";

/// The program and its arguments. The serial console is QEMU's stdio, which
/// the shim connects to a socket pair it holds.
pub fn qemu_command(spec: &VmShimSpec, dir: &Path) -> (String, Vec<String>) {
    let paths = VmPaths::new(dir);
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &format!("guest={},debug-threads=on", spec.name)]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    // The vCPUs start paused; the shim lets them run once it holds QMP. A
    // guest that ends while QEMU still negotiates QMP leaves QEMU 10.0 stuck
    // in its monitor cleanup, with the guest's exit status lost.
    push(&["-S"]);
    push(&["-sandbox", SANDBOX]);
    if let Some(user) = &spec.run_as {
        push(&["-run-with", &format!("user={}", user.qemu_user())]);
    }
    match spec.accelerator {
        Accelerator::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accelerator::Tcg => push(&["-accel", "tcg,thread=multi", "-cpu", "max"]),
    }
    // microvm (virtio-mmio) for kernels without a disk; a PC (virtio-pci,
    // which distribution initramfs images carry drivers for) otherwise,
    // and for VMs that take hot-plugged disks (microvm has no hot-plug).
    let direct_kernel = matches!(spec.boot, Boot::Kernel { disk: None, .. });
    let microvm = spec.kind == VmKind::Unikernel || (direct_kernel && spec.hotplug_ports == 0);
    match (spec.kind, microvm) {
        (VmKind::Unikernel, _) => push(&["-M", "microvm,pit=off,pic=off,rtc=off,acpi=off"]),
        // Direct kernel boot of a Linux VM: microvm with ACPI (power button
        // for graceful stops, virtio-mmio devices described in ACPI) and
        // no 8259 PIC: before Linux programs it, its vector base is 0, so
        // an early PIT tick arrived as vector 0 and the kernel panicked
        // with a "divide error" in about half of all TCG boots.
        (VmKind::Vm, true) => push(&["-M", "microvm,rtc=on,acpi=on,pic=off"]),
        // Firmware boot of a disk, or a VM that takes hot-plugged disks: a
        // PC (SeaBIOS programs the PIC before the kernel runs).
        (VmKind::Vm, false) => push(&["-M", "q35"]),
    }
    let virtio_blk = if microvm {
        "virtio-blk-device"
    } else {
        "virtio-blk-pci"
    };
    push(&["-m", &format!("{}M", spec.memory_mib)]);
    push(&["-smp", &spec.vcpus.to_string()]);
    match &spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
            disk,
        } => {
            if let Some(overlay) = disk {
                push(&[
                    "-drive",
                    &format!(
                        "file={},if=none,id=root,format=qcow2,cache=writeback,discard=unmap",
                        qemu_path(overlay)
                    ),
                    "-device",
                    "virtio-blk-pci,drive=root",
                ]);
            }
            push(&["-kernel", &kernel.display().to_string()]);
            if let Some(initrd) = initrd {
                push(&["-initrd", &initrd.display().to_string()]);
            }
            let line = match spec.kind {
                VmKind::Vm if cmdline.is_empty() => LINUX_CMDLINE.to_string(),
                VmKind::Vm => format!("{LINUX_CMDLINE} {cmdline}"),
                VmKind::Unikernel => cmdline.clone(),
            };
            if !line.is_empty() {
                push(&["-append", &line]);
            }
        }
        Boot::Disk { overlay } => {
            push(&[
                "-drive",
                &format!(
                    "file={},if=none,id=root,format=qcow2,cache=writeback,discard=unmap",
                    qemu_path(overlay)
                ),
                "-device",
                "virtio-blk-pci,drive=root,bootindex=1",
            ]);
        }
    }
    if let Some(seed) = &spec.seed {
        push(&[
            "-drive",
            &format!(
                "file={},if=none,id=seed,format=raw,readonly=on",
                qemu_path(seed)
            ),
            "-device",
            &format!("{virtio_blk},drive=seed"),
        ]);
    }
    let volumes = volume_args(spec, microvm);
    push(&volumes.iter().map(String::as_str).collect::<Vec<_>>());
    let nic = if microvm {
        "virtio-net-device"
    } else {
        "virtio-net-pci"
    };
    if let Some(fd) = spec.tap_fd {
        push(&["-netdev", &format!("tap,id=net0,fd={fd}")]);
        // The router drops frames from any other MAC.
        let mac = spec
            .tap
            .as_ref()
            .map(|t| format!(",mac={}", t.mac))
            .unwrap_or_default();
        push(&["-device", &format!("{nic},netdev=net0{mac}")]);
    } else if !spec.port_forwards.is_empty() {
        let fwd: String = spec
            .port_forwards
            .iter()
            .map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"))
            .collect();
        // `restrict=on`: the guest reaches nothing outside (not the host's
        // loopback, not other networks); only the forwards reach it.
        push(&["-netdev", &format!("user,id=net0,restrict=on{fwd}")]);
        push(&["-device", &format!("{nic},netdev=net0")]);
    }
    if spec.kind == VmKind::Unikernel {
        push(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        push(&["-no-reboot"]);
    }
    if spec.kind == VmKind::Vm {
        let serial = if microvm {
            "virtio-serial-device"
        } else {
            "virtio-serial-pci"
        };
        let args = guest_agent_args(serial, &paths.guest_agent);
        push(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    push(&["-chardev", "stdio,id=console,signal=off"]);
    push(&["-serial", "chardev:console"]);
    if spec.hotplug_ports > 0 {
        // Served by QEMU itself, created before it drops its ids: only
        // root reaches it in the instance directory (0700).
        let block = paths.block_qmp.display().to_string().replace(',', ",,");
        push(&[
            "-chardev",
            &format!("socket,id=qmp-block,path={block},server=on,wait=off"),
            "-mon",
            "chardev=qmp-block,mode=control",
        ]);
    }
    match spec.qmp_fd {
        // Already connected: the shim speaks QMP at once, with no socket
        // file to wait for and nobody else able to connect.
        Some(fd) => push(&[
            "-chardev",
            &format!("socket,id=qmp,fd={fd}"),
            "-mon",
            "chardev=qmp,mode=control",
        ]),
        None => push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", paths.qmp_socket.display()),
        ]),
    }
    push(&["-pidfile", &paths.pidfile.display().to_string()]);
    ("qemu-system-x86_64".to_string(), a)
}

/// The volumes' disks: on a PC each on a PCIe root port of its own (so it
/// can be unplugged), then `hotplug_ports` free ports for later disks.
fn volume_args(spec: &VmShimSpec, microvm: bool) -> Vec<String> {
    let mut a = Vec::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        a.push("-blockdev".into());
        a.push(disks::blockdev(v, None).to_string());
        a.push("-device".into());
        if microvm {
            a.push(format!(
                "virtio-blk-device,drive={id},id={id},serial={}",
                qemu_path(Path::new(&disks::serial(&v.name))),
                id = disks::disk_id(&v.volume_id)
            ));
        } else {
            a.push(format!(
                "pcie-root-port,id={},bus=pcie.0,chassis={}",
                disks::port_name(i),
                i + 1
            ));
            let d = disks::device(v, &disks::port_name(i));
            a.push("-device".into());
            a.push(d.to_string());
        }
    }
    if microvm {
        return a;
    }
    let first_free = spec.volumes.len();
    for i in first_free..first_free + spec.hotplug_ports as usize {
        a.push("-device".into());
        a.push(format!(
            "pcie-root-port,id={},bus=pcie.0,chassis={}",
            disks::port_name(i),
            i + 1
        ));
    }
    a
}

/// The guest agent's channel: a virtio-serial port with the name `qemu-ga`
/// looks for, its host end a socket QEMU serves (created before QEMU drops
/// its ids, in the 0700 instance directory: only root reaches it). With
/// `wait=off` a guest without an agent costs nothing; the agent's
/// snapshots find out by `guest-sync` (`volume/guest_agent.rs`).
fn guest_agent_args(serial_device: &str, socket: &Path) -> Vec<String> {
    [
        "-device",
        &format!("{serial_device},id=vser0"),
        "-chardev",
        &format!(
            "socket,id=qga0,path={},server=on,wait=off",
            qemu_path(socket)
        ),
        "-device",
        "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// QEMU's option syntax splits on commas; doubling them keeps a path whole.
fn qemu_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::super::spec::RunAs;
    use super::*;
    use std::path::PathBuf;

    fn spec(kind: VmKind, boot: Boot) -> VmShimSpec {
        VmShimSpec {
            instance_id: "i1".into(),
            name: "web".into(),
            kind,
            accelerator: Accelerator::Tcg,
            accelerator_reason: "test".into(),
            memory_mib: 128,
            vcpus: 2,
            boot,
            seed: Some(PathBuf::from("/d/seed,1.img")),
            port_forwards: vec![(2222, 22)],
            tap_fd: None,
            qmp_fd: None,
            tap: None,
            run_as: Some(RunAs::Ids {
                uid: 231_072,
                gid: 231_072,
            }),
            stop_grace_ms: 1000,
            log_max_bytes: 1 << 20,
            log_files: 2,
            volumes: Vec::new(),
            hotplug_ports: 0,
        }
    }

    #[test]
    fn a_vm_with_volumes_gets_named_disks_and_free_ports_on_a_pc() {
        let mut s = spec(
            VmKind::Vm,
            Boot::Kernel {
                kernel: "/b/k".into(),
                initrd: Some("/b/i".into()),
                cmdline: String::new(),
                disk: None,
            },
        );
        s.volumes = vec![super::super::spec::VmVolume {
            volume_id: "v1".into(),
            name: "data".into(),
            blockdev: serde_json::json!({"driver": "qcow2", "file": {"driver": "file", "filename": "/v/v1.qcow2"}}),
            file: Some("/v/v1.qcow2".into()),
            read_only: true,
        }];
        s.hotplug_ports = 2;
        let (_, args) = qemu_command(&s, Path::new("/d"));
        let line = args.join(" ");
        assert!(line.contains("-M q35"), "hot-plug needs a PC: {line}");
        let blockdev = args
            .iter()
            .position(|a| a == "-blockdev")
            .map(|i| serde_json::from_str::<serde_json::Value>(&args[i + 1]).expect("json"))
            .expect("a -blockdev");
        assert_eq!(blockdev["node-name"], "vol-v1");
        assert_eq!(blockdev["read-only"], true);
        assert_eq!(blockdev["file"]["filename"], "/v/v1.qcow2");
        assert!(line.contains("\"serial\":\"data\""), "{line}");
        assert!(line.contains("\"bus\":\"hp0\""), "{line}");
        for port in ["hp0", "hp1", "hp2"] {
            assert!(
                line.contains(&format!("pcie-root-port,id={port},")),
                "{line}"
            );
        }
        assert!(!line.contains("id=hp3,"), "{line}");
        assert!(line.contains("virtio-blk-pci,drive=seed"), "{line}");
        assert!(
            line.contains("socket,id=qmp-block,path=/d/qmp-block.sock,server=on,wait=off"),
            "{line}"
        );
        assert!(
            line.contains("-device virtio-serial-pci,id=vser0 -chardev socket,id=qga0,path=/d/qga.sock,server=on,wait=off -device virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"),
            "every Linux VM gets a guest agent channel: {line}"
        );
    }

    #[test]
    fn unikernel_gets_microvm_debug_exit_and_no_disk() {
        let mut s = spec(
            VmKind::Unikernel,
            Boot::Kernel {
                kernel: "/b/k".into(),
                initrd: None,
                cmdline: "exit=3".into(),
                disk: None,
            },
        );
        s.seed = None;
        s.port_forwards.clear();
        s.qmp_fd = Some(7);
        let (_, args) = qemu_command(&s, Path::new("/d"));
        let line = args.join(" ");
        assert!(
            line.contains("-chardev socket,id=qmp,fd=7 -mon chardev=qmp,mode=control"),
            "QMP over the shim's socket pair: {line}"
        );
        assert!(!line.contains("qmp.sock"), "{line}");
        assert!(line.contains("-M microvm,"), "{line}");
        assert!(line.contains("isa-debug-exit,iobase=0xf4"), "{line}");
        assert!(line.contains("-append exit=3"), "{line}");
        assert!(
            !line.contains("qga"),
            "a unikernel runs no guest agent: {line}"
        );
        assert!(
            args.iter().any(|a| a == "-S"),
            "vCPUs wait for the shim to hold QMP: {line}"
        );
        assert!(!line.contains("-drive"), "{line}");
        assert!(!line.contains("-netdev"), "{line}");
        assert!(
            line.contains("-nodefaults") && line.contains("-sandbox on,"),
            "{line}"
        );
        assert!(
            line.contains("-run-with user=231072:231072"),
            "QEMU drops to the instance's own ids: {line}"
        );
    }

    #[test]
    fn disk_vm_boots_overlay_with_seed_and_forwards() {
        let s = spec(
            VmKind::Vm,
            Boot::Disk {
                overlay: "/d/root.qcow2".into(),
            },
        );
        let (_, args) = qemu_command(&s, Path::new("/d"));
        let line = args.join(" ");
        assert!(line.contains("-M q35"), "{line}");
        assert!(
            line.contains("file=/d/root.qcow2,if=none,id=root,format=qcow2"),
            "{line}"
        );
        assert!(line.contains("file=/d/seed,,1.img,"), "{line}");
        assert!(line.contains("hostfwd=tcp:127.0.0.1:2222-:22"), "{line}");
        assert!(
            line.contains("-m 128M") && line.contains("-smp 2"),
            "{line}"
        );
        assert!(!line.contains("isa-debug-exit"), "{line}");
    }

    #[test]
    fn kernel_vm_gets_linux_console_parameters() {
        let s = spec(
            VmKind::Vm,
            Boot::Kernel {
                kernel: "/b/k".into(),
                initrd: Some("/b/i".into()),
                cmdline: "quiet".into(),
                disk: None,
            },
        );
        let (_, args) = qemu_command(&s, Path::new("/d"));
        let append = args
            .iter()
            .position(|a| a == "-append")
            .map(|i| args[i + 1].clone())
            .unwrap_or_default();
        assert_eq!(append, format!("{LINUX_CMDLINE} quiet"));
        assert!(args.iter().any(|a| a == "virtio-blk-device,drive=seed"));
        assert!(
            args.iter().any(|a| a == "virtio-serial-device,id=vser0"),
            "microvm has no PCI: {args:?}"
        );
        // No 8259: its unprogrammed vector base turned the PIT's first tick
        // into vector 0, a "divide error" panic in about half of all boots.
        let machine = args
            .iter()
            .position(|a| a == "-M")
            .map(|i| args[i + 1].clone())
            .unwrap_or_default();
        assert!(machine.split(',').any(|o| o == "pic=off"), "{machine}");
    }

    #[test]
    fn kernel_with_disk_boots_a_pc_with_the_disk_first() {
        let s = spec(
            VmKind::Vm,
            Boot::Kernel {
                kernel: "/b/k".into(),
                initrd: Some("/b/i".into()),
                cmdline: "root=/dev/vda1".into(),
                disk: Some("/d/root.qcow2".into()),
            },
        );
        let (_, args) = qemu_command(&s, Path::new("/d"));
        let line = args.join(" ");
        assert!(line.contains("-M q35"), "{line}");
        let root = line.find("drive=root").expect("root disk");
        let seed = line.find("drive=seed").expect("seed disk");
        assert!(root < seed, "the root disk comes first (vda): {line}");
        assert!(line.contains("root=/dev/vda1"), "{line}");
    }
}
