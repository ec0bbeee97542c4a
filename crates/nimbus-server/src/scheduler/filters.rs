//! Filters: each admits a host or says what it lacks.

use nimbus_api::units::format_size;
use nimbus_image::oci_architecture;

use super::framework::{Filter, Rejection};
use super::snapshot::{Demand, HostView};

/// CPU is overcommitted as OpenStack Nova does by default
/// (`cpu_allocation_ratio` 16): a limit is a ceiling, not a reservation.
pub const CPU_ALLOCATION_RATIO: u64 = 16;

/// Only hosts whose agent heartbeats.
pub struct HostReady;

impl Filter for HostReady {
    fn name(&self) -> &'static str {
        "ready"
    }
    fn admit(&self, _: &Demand, host: &HostView) -> Result<(), Rejection> {
        if host.ready {
            Ok(())
        } else {
            Err(Rejection::is("not ready"))
        }
    }
}

/// Cordoned hosts (`nimbus host cordon`) get nothing new.
pub struct NotCordoned;

impl Filter for NotCordoned {
    fn name(&self) -> &'static str {
        "cordon"
    }
    fn admit(&self, _: &Demand, host: &HostView) -> Result<(), Rejection> {
        if host.cordoned {
            Err(Rejection::is("cordoned"))
        } else {
            Ok(())
        }
    }
}

/// Memory limits of the instances placed on a host fit in its memory.
pub struct FreeMemory;

impl Filter for FreeMemory {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn admit(&self, demand: &Demand, host: &HostView) -> Result<(), Rejection> {
        if demand.memory_bytes == 0 || host.memory_bytes_free() >= demand.memory_bytes {
            Ok(())
        } else {
            Err(Rejection::lacks(format!(
                "{} of free memory",
                format_size(demand.memory_bytes)
            )))
        }
    }
}

/// CPUs asked for fit in the host's CPUs times [`CPU_ALLOCATION_RATIO`].
pub struct FreeCpu;

impl Filter for FreeCpu {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn admit(&self, demand: &Demand, host: &HostView) -> Result<(), Rejection> {
        let capacity = host.cpu_millis_total * CPU_ALLOCATION_RATIO;
        if demand.cpu_millis == 0 || host.used.cpu_millis + demand.cpu_millis <= capacity {
            Ok(())
        } else {
            Err(Rejection::lacks(format!(
                "{} free CPUs",
                demand.cpu_millis.div_ceil(1000)
            )))
        }
    }
}

/// The disks and log caps of the instances placed on a host fit on its
/// disk (no overcommit), and the request fits in what the host last
/// reported free: a sparse `--disk 10TiB` never lands on a host that could
/// not hold it. Hosts that report no disk size are not judged.
pub struct FreeDisk;

impl Filter for FreeDisk {
    fn name(&self) -> &'static str {
        "disk"
    }
    fn admit(&self, demand: &Demand, host: &HostView) -> Result<(), Rejection> {
        match host.disk_bytes_free() {
            Some(free) if demand.disk_bytes > free => Err(Rejection::lacks(format!(
                "{} of free disk",
                format_size(demand.disk_bytes)
            ))),
            _ => Ok(()),
        }
    }
}

/// `placement.architecture`, when given, matches the host's.
pub struct Architecture;

impl Filter for Architecture {
    fn name(&self) -> &'static str {
        "architecture"
    }
    fn admit(&self, demand: &Demand, host: &HostView) -> Result<(), Rejection> {
        match &demand.placement.architecture {
            Some(a) if oci_architecture(a) != oci_architecture(&host.architecture) => {
                Err(Rejection::is(format!("not {a}")))
            }
            _ => Ok(()),
        }
    }
}

/// The instance's image has a platform for the host's architecture (an
/// image index of several platforms runs the one of its host).
pub struct ImagePlatform;

impl Filter for ImagePlatform {
    fn name(&self) -> &'static str {
        "image platform"
    }
    fn admit(&self, demand: &Demand, host: &HostView) -> Result<(), Rejection> {
        let host_arch = oci_architecture(&host.architecture);
        if demand.image_architectures.is_empty()
            || demand.image_architectures.iter().any(|a| a == host_arch)
        {
            return Ok(());
        }
        Err(Rejection::is(format!(
            "not of an architecture the image has ({})",
            demand.image_architectures.join(", ")
        )))
    }
}

/// The host holds the instance's volumes (local volumes are attached
/// where their file is).
pub struct VolumesHost;

impl Filter for VolumesHost {
    fn name(&self) -> &'static str {
        "volumes"
    }
    fn admit(&self, demand: &Demand, host: &HostView) -> Result<(), Rejection> {
        match &demand.volumes_host {
            Some(h) if *h != host.name => Err(Rejection::lacks(format!(
                "the instance's volumes (they are on host {h})"
            ))),
            _ => Ok(()),
        }
    }
}

/// The host carries every label in `placement.require_labels`.
pub struct RequiredLabels;

impl Filter for RequiredLabels {
    fn name(&self) -> &'static str {
        "labels"
    }
    fn admit(&self, demand: &Demand, host: &HostView) -> Result<(), Rejection> {
        for (k, v) in &demand.placement.require_labels {
            if host.labels.get(k) != Some(v) {
                return Err(Rejection::lacks(format!("label {k}={v}")));
            }
        }
        Ok(())
    }
}

/// The host runs no instance of the project carrying a label in
/// `placement.anti_affinity`.
pub struct AntiAffinity;

impl Filter for AntiAffinity {
    fn name(&self) -> &'static str {
        "anti-affinity"
    }
    fn admit(&self, demand: &Demand, host: &HostView) -> Result<(), Rejection> {
        for (key, shown) in &demand.anti_affinity_keys {
            if host.instance_labels.get(key).is_some_and(|n| *n > 0) {
                return Err(Rejection::runs(format!("an instance labelled {shown}")));
            }
        }
        Ok(())
    }
}

/// The host runs an instance of the project carrying each label in
/// `placement.affinity`.
pub struct Affinity;

impl Filter for Affinity {
    fn name(&self) -> &'static str {
        "affinity"
    }
    fn admit(&self, demand: &Demand, host: &HostView) -> Result<(), Rejection> {
        for (key, shown) in &demand.affinity_keys {
            if host.instance_labels.get(key).is_none_or(|n| *n == 0) {
                return Err(Rejection::lacks(format!("an instance labelled {shown}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn host() -> HostView {
        HostView {
            name: "h".into(),
            ready: true,
            architecture: "x86_64".into(),
            cpu_millis_total: 2000,
            memory_bytes_total: 1 << 30,
            disk_bytes_total: 10 << 30,
            ..Default::default()
        }
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ready_and_cordon() {
        let d = Demand::default();
        assert!(HostReady.admit(&d, &host()).is_ok());
        let down = HostView {
            ready: false,
            ..host()
        };
        assert_eq!(
            HostReady.admit(&d, &down).unwrap_err().describe(1),
            "1 host is not ready"
        );
        let cordoned = HostView {
            cordoned: true,
            ..host()
        };
        assert_eq!(
            NotCordoned.admit(&d, &cordoned).unwrap_err().describe(2),
            "2 hosts are cordoned"
        );
        assert!(NotCordoned.admit(&d, &host()).is_ok());
    }

    #[test]
    fn volumes_pin_the_instance_to_their_host() {
        let h = host();
        assert!(VolumesHost.admit(&Demand::default(), &h).is_ok());
        let here = Demand {
            volumes_host: Some(h.name.clone()),
            ..Default::default()
        };
        assert!(VolumesHost.admit(&here, &h).is_ok());
        let elsewhere = Demand {
            volumes_host: Some("other-host".into()),
            ..Default::default()
        };
        let why = VolumesHost.admit(&elsewhere, &h).unwrap_err();
        assert!(
            why.describe(1).contains("on host other-host"),
            "{}",
            why.describe(1)
        );
    }

    #[test]
    fn memory_counts_what_is_placed() {
        let mut h = host();
        let half = Demand {
            memory_bytes: 512 << 20,
            ..Default::default()
        };
        assert!(FreeMemory.admit(&half, &h).is_ok());
        h.add(&half);
        assert!(FreeMemory.admit(&half, &h).is_ok());
        h.add(&half);
        let err = FreeMemory.admit(&half, &h).unwrap_err();
        assert_eq!(err.describe(1), "1 host lacks 512MiB of free memory");
        // Best effort (no limit) always fits.
        assert!(FreeMemory.admit(&Demand::default(), &h).is_ok());
    }

    #[test]
    fn cpu_overcommits_by_the_ratio_and_no_further() {
        let mut h = host();
        let big = Demand {
            cpu_millis: 2000 * CPU_ALLOCATION_RATIO,
            ..Default::default()
        };
        assert!(FreeCpu.admit(&big, &h).is_ok());
        h.add(&big);
        let one = Demand {
            cpu_millis: 1000,
            ..Default::default()
        };
        assert_eq!(
            FreeCpu.admit(&one, &h).unwrap_err().describe(1),
            "1 host lacks 1 free CPUs"
        );
    }

    #[test]
    fn disk_fits_or_not_and_unknown_disk_is_not_judged() {
        let d = Demand {
            disk_bytes: 20 << 30,
            ..Default::default()
        };
        assert!(FreeDisk.admit(&d, &host()).is_err());
        assert!(FreeDisk
            .admit(
                &d,
                &HostView {
                    disk_bytes_total: 0,
                    ..host()
                }
            )
            .is_ok());
        assert!(FreeDisk
            .admit(
                &Demand {
                    disk_bytes: 1 << 30,
                    ..Default::default()
                },
                &host()
            )
            .is_ok());
    }

    #[test]
    fn disk_counts_what_is_placed_and_what_the_host_reports_free() {
        let d = Demand {
            disk_bytes: 4 << 30,
            ..Default::default()
        };
        let mut h = host();
        h.used.disk_bytes = 7 << 30;
        assert!(FreeDisk.admit(&d, &h).is_err(), "3GiB left unpromised");
        h.used.disk_bytes = 0;
        h.disk_bytes_available = 3 << 30;
        assert_eq!(
            FreeDisk.admit(&d, &h).unwrap_err().describe(1),
            "1 host lacks 4GiB of free disk"
        );
        h.disk_bytes_available = 5 << 30;
        assert!(FreeDisk.admit(&d, &h).is_ok());
    }

    #[test]
    fn image_platform_admits_hosts_of_the_images_architectures() {
        let mut d = Demand::default();
        assert!(
            ImagePlatform.admit(&d, &host()).is_ok(),
            "no platforms: any host"
        );
        d.image_architectures = vec!["arm64".into()];
        let err = ImagePlatform.admit(&d, &host()).unwrap_err().describe(1);
        assert!(err.contains("arm64"), "{err}");
        d.image_architectures = vec!["arm64".into(), "amd64".into()];
        assert!(ImagePlatform.admit(&d, &host()).is_ok(), "x86_64 is amd64");
    }

    #[test]
    fn architecture_must_match_when_given() {
        let mut d = Demand::default();
        assert!(Architecture.admit(&d, &host()).is_ok());
        d.placement.architecture = Some("aarch64".into());
        assert_eq!(
            Architecture.admit(&d, &host()).unwrap_err().describe(3),
            "3 hosts are not aarch64"
        );
        d.placement.architecture = Some("x86_64".into());
        assert!(Architecture.admit(&d, &host()).is_ok());
    }

    #[test]
    fn required_labels_all_present() {
        let mut d = Demand::default();
        d.placement.require_labels = labels(&[("site", "bj"), ("disk", "ssd")]);
        let mut h = host();
        h.labels = labels(&[("site", "bj")]);
        assert_eq!(
            RequiredLabels.admit(&d, &h).unwrap_err().describe(1),
            "1 host lacks label disk=ssd"
        );
        h.labels = labels(&[("site", "bj"), ("disk", "ssd"), ("x", "y")]);
        assert!(RequiredLabels.admit(&d, &h).is_ok());
        h.labels = labels(&[("site", "sh"), ("disk", "ssd")]);
        assert!(RequiredLabels.admit(&d, &h).is_err());
    }

    fn placed(project: &str, kv: &[(&str, &str)]) -> Demand {
        Demand {
            own_label_keys: kv
                .iter()
                .map(|(k, v)| super::super::snapshot::label_key(project, k, v))
                .collect(),
            ..Default::default()
        }
    }

    fn wanting(project: &str, kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| {
                (
                    super::super::snapshot::label_key(project, k, v),
                    format!("{k}={v}"),
                )
            })
            .collect()
    }

    #[test]
    fn anti_affinity_refuses_hosts_running_a_labelled_instance_of_the_project() {
        let d = Demand {
            anti_affinity_keys: wanting("p", &[("app", "web")]),
            ..Default::default()
        };
        let mut h = host();
        assert!(AntiAffinity.admit(&d, &h).is_ok());
        h.add(&placed("other", &[("app", "web")]));
        assert!(
            AntiAffinity.admit(&d, &h).is_ok(),
            "another project's labels do not count"
        );
        h.add(&placed("p", &[("app", "web")]));
        assert_eq!(
            AntiAffinity.admit(&d, &h).unwrap_err().describe(2),
            "2 hosts run an instance labelled app=web"
        );
    }

    #[test]
    fn affinity_needs_a_labelled_instance_of_the_project() {
        let d = Demand {
            affinity_keys: wanting("p", &[("app", "db")]),
            ..Default::default()
        };
        let mut h = host();
        assert_eq!(
            Affinity.admit(&d, &h).unwrap_err().describe(1),
            "1 host lacks an instance labelled app=db"
        );
        h.add(&placed("p", &[("app", "db")]));
        assert!(Affinity.admit(&d, &h).is_ok());
    }
}
