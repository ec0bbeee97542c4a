//! Unit tests of the instance rules: no router, no store. Every rule is
//! shown accepting a good spec and refusing a bad one with its message
//! (`spec.rs`); every action and status merge case in `lifecycle.rs`.
//! Here: the fixtures, a project `ops` with a few images.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{TimeZone, Utc};
use nimbus_api::{
    DesiredState, DiskImage, Image, ImageDefaults, ImageSpec, ImageStatus, Instance,
    InstanceAddress, InstanceDefaults, InstanceKind, InstancePhase, InstanceSpec, InstanceStatus,
    KernelImage, Metadata, PortForward, Protocol, Resources, RestartMode, RestartPolicy, VmSpec,
    SECRET_REDACTED,
};

use crate::hostports::Claim;

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

mod lifecycle;
mod spec;
