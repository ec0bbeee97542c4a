//! Project quotas on instances (`nimbus quota set --instances --vcpus
//! --memory --disk`): checked when an instance is created, so a project over its
//! quota is refused at once rather than left pending.

use nimbus_api::units::format_size;
use nimbus_api::{Instance, InstanceSpec, ProjectQuota};

/// An instance the project's quota does not admit (409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceQuotaError {
    #[error("project {project:?} may hold {limit} instance(s) and holds {used}; remove one with `nimbus instance rm <name>` or ask an administrator to raise it (`nimbus quota set --instances N`)")]
    Instances {
        project: String,
        limit: u32,
        used: usize,
    },
    #[error("project {project:?} may use {limit} vCPU(s); its instances use {used} and this one needs {more}; give fewer (--vcpus/--cpus) or ask an administrator to raise it (`nimbus quota set --vcpus N`)")]
    Vcpus {
        project: String,
        limit: u32,
        used: u64,
        more: u64,
    },
    #[error("project {project:?} may use {} of memory; its instances use {} and this one needs {}; give less (--memory) or ask an administrator to raise it (`nimbus quota set --memory SIZE`)", format_size(*limit), format_size(*used), format_size(*more))]
    Memory {
        project: String,
        limit: u64,
        used: u64,
        more: u64,
    },
    #[error("project {project:?} may use {} of host disk; its instances take {} (writable layers and log caps) and this one needs {}; give a smaller --disk or ask an administrator to raise it (`nimbus quota set --disk SIZE`)", format_size(*limit), format_size(*used), format_size(*more))]
    Disk {
        project: String,
        limit: u64,
        used: u64,
        more: u64,
    },
}

/// vCPUs an instance counts against the quota ([`InstanceSpec::quota_vcpus`]).
pub fn vcpus_of(spec: &InstanceSpec) -> u64 {
    spec.quota_vcpus()
}

/// Whether `project`, holding `existing` instances, may add one with `spec`.
pub fn check_instance_quota(
    project: &str,
    quota: &ProjectQuota,
    existing: &[Instance],
    spec: &InstanceSpec,
) -> Result<(), InstanceQuotaError> {
    if let Some(limit) = quota.instances {
        if existing.len() >= limit as usize {
            return Err(InstanceQuotaError::Instances {
                project: project.into(),
                limit,
                used: existing.len(),
            });
        }
    }
    if let Some(limit) = quota.vcpus {
        let used: u64 = existing.iter().map(|i| vcpus_of(&i.spec)).sum();
        let more = vcpus_of(spec);
        if used + more > u64::from(limit) {
            return Err(InstanceQuotaError::Vcpus {
                project: project.into(),
                limit,
                used,
                more,
            });
        }
    }
    if let Some(limit) = quota.memory_bytes {
        let used: u64 = existing
            .iter()
            .map(|i| i.spec.resources.memory_bytes.unwrap_or(0))
            .sum();
        let more = spec.resources.memory_bytes.unwrap_or(0);
        if used + more > limit {
            return Err(InstanceQuotaError::Memory {
                project: project.into(),
                limit,
                used,
                more,
            });
        }
    }
    if let Some(limit) = quota.disk_bytes {
        let used: u64 = existing.iter().map(|i| i.spec.disk_demand_bytes()).sum();
        let more = spec.disk_demand_bytes();
        if used.saturating_add(more) > limit {
            return Err(InstanceQuotaError::Disk {
                project: project.into(),
                limit,
                used,
                more,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::{InstanceKind, Metadata, Resources, VmSpec};

    fn spec(memory: u64, cpu_millis: Option<u64>) -> InstanceSpec {
        InstanceSpec {
            image: "x".into(),
            resources: Resources {
                memory_bytes: Some(memory),
                cpu_millis,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn existing(n: usize) -> Vec<Instance> {
        (0..n)
            .map(|k| Instance {
                metadata: Metadata::new(&format!("i{k}"), Some("p")),
                spec: spec(256 << 20, Some(1500)),
                status: Default::default(),
            })
            .collect()
    }

    #[test]
    fn unlimited_admits_anything() {
        assert!(check_instance_quota(
            "p",
            &ProjectQuota::default(),
            &existing(50),
            &spec(1 << 40, None)
        )
        .is_ok());
    }

    #[test]
    fn instance_count() {
        let q = ProjectQuota {
            instances: Some(2),
            ..Default::default()
        };
        assert!(check_instance_quota("p", &q, &existing(1), &spec(0, None)).is_ok());
        let err = check_instance_quota("p", &q, &existing(2), &spec(0, None)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("project \"p\" may hold 2 instance(s) and holds 2;"),
            "{err}"
        );
    }

    #[test]
    fn vcpus_count_vms_and_rounded_container_limits() {
        assert_eq!(vcpus_of(&spec(0, None)), 1);
        assert_eq!(vcpus_of(&spec(0, Some(1500))), 2);
        let mut vm = spec(0, None);
        vm.kind = InstanceKind::Vm;
        vm.vm = Some(VmSpec {
            vcpus: Some(4),
            ..Default::default()
        });
        assert_eq!(vcpus_of(&vm), 4);
        let q = ProjectQuota {
            vcpus: Some(8),
            ..Default::default()
        };
        // Two existing containers of 1.5 CPUs count 2 each: 4 + 4 fits, 4 + 5 does not.
        assert!(check_instance_quota("p", &q, &existing(2), &vm).is_ok());
        vm.vm = Some(VmSpec {
            vcpus: Some(5),
            ..Default::default()
        });
        let err = check_instance_quota("p", &q, &existing(2), &vm).unwrap_err();
        assert_eq!(
            err,
            InstanceQuotaError::Vcpus {
                project: "p".into(),
                limit: 8,
                used: 4,
                more: 5
            }
        );
    }

    #[test]
    fn memory_sums_limits() {
        let q = ProjectQuota {
            memory_bytes: Some(1 << 30),
            ..Default::default()
        };
        assert!(check_instance_quota("p", &q, &existing(2), &spec(512 << 20, None)).is_ok());
        let err = check_instance_quota("p", &q, &existing(2), &spec(513 << 20, None)).unwrap_err();
        assert!(
            err.to_string().contains(
                "may use 1GiB of memory; its instances use 512MiB and this one needs 513MiB"
            ),
            "{err}"
        );
    }
}

#[cfg(test)]
mod disk_tests {
    use super::*;
    use nimbus_api::{InstanceKind, Metadata, Resources, VmSpec};

    fn container(disk: u64, log: u64) -> InstanceSpec {
        InstanceSpec {
            image: "x".into(),
            resources: Resources {
                disk_bytes: Some(disk),
                ..Default::default()
            },
            log_max_bytes: Some(log),
            ..Default::default()
        }
    }

    #[test]
    fn disk_sums_writable_layers_vm_disks_and_log_caps() {
        let mut vm = InstanceSpec {
            kind: InstanceKind::Vm,
            vm: Some(VmSpec {
                disk_bytes: Some(2 << 30),
                ..Default::default()
            }),
            log_max_bytes: Some(16 << 20),
            ..Default::default()
        };
        let existing = vec![Instance {
            metadata: Metadata::new("a", Some("p")),
            spec: vm.clone(),
            status: Default::default(),
        }];
        let q = ProjectQuota {
            disk_bytes: Some(3 << 30),
            ..Default::default()
        };
        // 2GiB + 16MiB held; 1GiB - 32MiB + 16MiB more fits exactly.
        let fits = container((1 << 30) - (32 << 20), 16 << 20);
        assert!(check_instance_quota("p", &q, &existing, &fits).is_ok());
        let err = check_instance_quota("p", &q, &existing, &container(1 << 30, 16 << 20))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("project \"p\" may use 3GiB of host disk; its instances take 2.0GiB"),
            "{err}"
        );
        assert!(err.contains("`nimbus quota set --disk SIZE`"), "{err}");
        vm.vm = None;
        assert_eq!(
            vm.disk_demand_bytes(),
            16 << 20,
            "no disk: its log cap only"
        );
    }
}
