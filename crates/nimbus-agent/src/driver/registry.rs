//! The drivers built into this agent.

use std::path::Path;
use std::sync::Arc;

use nimbus_api::InstanceKind;

use super::Driver;
use crate::agent::error::AgentError;
use crate::shim::daemon::PrepareSupervisor;

/// Whether an instance directory holds a driver's spec.
pub type OwnsInstanceDir = fn(&Path) -> bool;

/// The shim side of each driver, for `nimbus shim <dir>`: its test for its
/// own instance directory and its supervisor, in the order asked (the last
/// one also takes directories no driver claims). Plain functions, so the
/// small `nimbus-shim` executable links no agent code.
pub const SHIM_SUPERVISORS: [(OwnsInstanceDir, PrepareSupervisor); 2] = [
    (crate::vm::owns_instance_dir, crate::vm::prepare_supervisor),
    (
        crate::container::owns_instance_dir,
        crate::container::prepare_supervisor,
    ),
];

/// The drivers of this agent; the reconcile worker finds an instance's or
/// a directory's driver here.
#[derive(Clone)]
pub struct Drivers {
    drivers: Vec<Arc<dyn Driver>>,
}

impl Drivers {
    pub fn new(drivers: Vec<Arc<dyn Driver>>) -> Self {
        Drivers { drivers }
    }

    /// Every driver built into this agent. `data_dir`: the agent's data
    /// directory (scratch space for probes).
    pub fn builtin(data_dir: &Path) -> Self {
        Drivers::new(vec![
            Arc::new(crate::container::driver::ContainerDriver),
            Arc::new(crate::vm::driver::VmDriver::new(data_dir)),
        ])
    }

    /// The driver that runs instances of `kind`.
    pub fn for_kind(&self, kind: InstanceKind) -> Result<&Arc<dyn Driver>, AgentError> {
        self.drivers
            .iter()
            .find(|d| d.serves(kind))
            .ok_or_else(|| AgentError::NoDriver {
                kind: format!("{kind:?}").to_lowercase(),
            })
    }

    /// The driver whose instance directory `dir` is, if any.
    pub fn for_dir(&self, dir: &Path) -> Option<&Arc<dyn Driver>> {
        self.drivers.iter().find(|d| d.owns_dir(dir))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Driver>> {
        self.drivers.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_builtin_driver_and_directories_find_theirs() {
        let data = tempfile::tempdir().expect("tempdir");
        let drivers = Drivers::builtin(data.path());
        let name = |kind| drivers.for_kind(kind).map(|d| d.name()).ok();
        assert_eq!(name(InstanceKind::Container), Some("container"));
        assert_eq!(name(InstanceKind::Vm), Some("vm"));
        assert_eq!(name(InstanceKind::Unikernel), Some("vm"));

        let dir = |name: &str, file: &str| {
            let d = data.path().join(name);
            std::fs::create_dir_all(&d).expect("mkdir");
            if !file.is_empty() {
                std::fs::write(d.join(file), b"{}").expect("write");
            }
            d
        };
        let found = |d: &Path| drivers.for_dir(d).map(|d| d.name());
        assert_eq!(found(&dir("c", "spec.json")), Some("container"));
        assert_eq!(found(&dir("v", "vm.json")), Some("vm"));
        assert_eq!(found(&dir("half-made", "")), None);
        assert!(
            Drivers::new(Vec::new())
                .for_kind(InstanceKind::Vm)
                .is_err_and(|e| e.to_string().contains("no driver for vm instances")),
            "an agent without a VM driver says so"
        );
    }
}
