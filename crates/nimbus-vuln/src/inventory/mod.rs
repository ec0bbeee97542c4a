//! What is installed in an image: its distribution (from `/etc/os-release`) and the
//! packages its package databases (dpkg, apk, rpm's SQLite) list, read through [`ImageFiles`] (the image's merged
//! layers in production, a map in unit tests).

mod apk;
mod dpkg;
mod os_release;
mod rpm;

use crate::error::ScanError;

pub use os_release::ecosystem_of;

/// Largest package database file read (a big Debian image's status is ~2 MiB).
pub const MAX_DATABASE_BYTES: u64 = 64 << 20;
/// Largest file in `status.d/` and largest `os-release`.
pub const MAX_SMALL_FILE_BYTES: u64 = 1 << 20;
/// Most files read from `status.d/`.
pub const MAX_STATUS_D_FILES: usize = 10_000;
/// Most packages one image may list.
pub const MAX_PACKAGES: usize = 200_000;

/// Read access to an image's files, symlinks resolved inside the image.
pub trait ImageFiles {
    /// The regular file at `path`, `None` if absent; an error past `max_bytes`.
    fn read_file(&self, path: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, String>;
    /// File names in the directory at `path`, sorted; empty if absent.
    fn list_dir(&self, path: &str, max_entries: usize) -> Result<Vec<String>, String>;
}

impl ImageFiles for nimbus_image::MergedView {
    fn read_file(&self, path: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, String> {
        nimbus_image::MergedView::read_file(self, path, max_bytes).map_err(|e| e.to_string())
    }
    fn list_dir(&self, path: &str, max_entries: usize) -> Result<Vec<String>, String> {
        nimbus_image::MergedView::list_dir(self, path, max_entries).map_err(|e| e.to_string())
    }
}

/// One installed package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// The source package (Debian `Source:`, apk origin) when it differs.
    pub source: Option<String>,
    /// The source package's version when it differs (a Debian binNMU).
    pub source_version: Option<String>,
}

/// An image's distribution and packages.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    /// OSV ecosystem (`Debian:12`), empty if the distribution is not one Nimbus knows.
    pub ecosystem: String,
    /// Package databases found and read (`dpkg`, `apk`).
    pub databases: Vec<String>,
    pub packages: Vec<Package>,
}

/// Reads the image's distribution and package databases.
pub fn read_inventory(files: &dyn ImageFiles) -> Result<Inventory, ScanError> {
    let os_release = read(files, "/etc/os-release", MAX_SMALL_FILE_BYTES)?;
    let ecosystem = os_release
        .as_deref()
        .map(|t| ecosystem_of(&String::from_utf8_lossy(t)))
        .unwrap_or_default();
    let mut inventory = Inventory {
        ecosystem,
        ..Inventory::default()
    };
    if let Some(packages) = dpkg::read(files)? {
        inventory.databases.push("dpkg".into());
        inventory.packages.extend(packages);
    }
    if let Some(status) = read(files, apk::INSTALLED, MAX_DATABASE_BYTES)? {
        inventory.databases.push("apk".into());
        inventory
            .packages
            .extend(apk::parse(&String::from_utf8_lossy(&status)));
    }
    if let Some(packages) = rpm::read(files)? {
        inventory.databases.push("rpm".into());
        inventory.packages.extend(packages);
    }
    if inventory.packages.len() > MAX_PACKAGES {
        return Err(ScanError::Image(format!(
            "the image lists {} packages, more than the limit of {MAX_PACKAGES}",
            inventory.packages.len()
        )));
    }
    Ok(inventory)
}

fn read(files: &dyn ImageFiles, path: &str, max: u64) -> Result<Option<Vec<u8>>, ScanError> {
    files.read_file(path, max).map_err(ScanError::Image)
}

/// An [`ImageFiles`] over a map of paths, for tests and benchmarks.
#[derive(Default)]
pub struct MapFiles(pub std::collections::BTreeMap<String, Vec<u8>>);

impl ImageFiles for MapFiles {
    fn read_file(&self, path: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, String> {
        match self.0.get(path) {
            Some(c) if c.len() as u64 > max_bytes => Err(format!("{path} is too large")),
            other => Ok(other.cloned()),
        }
    }
    fn list_dir(&self, path: &str, max_entries: usize) -> Result<Vec<String>, String> {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        Ok(self
            .0
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_string)
            .take(max_entries)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debian_image_lists_its_dpkg_packages_and_release() {
        let mut files = MapFiles::default();
        files.0.insert(
            "/etc/os-release".into(),
            b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n"
                .to_vec(),
        );
        files.0.insert(
            "/var/lib/dpkg/status".into(),
            b"Package: libssl3\nStatus: install ok installed\nVersion: 3.0.11-1~deb12u1\nSource: openssl\nDescription: x\n continued\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n".to_vec(),
        );
        files.0.insert(
            "/var/lib/dpkg/status.d/base".into(),
            b"Package: base-files\nVersion: 12.4+deb12u5\n".to_vec(),
        );
        let inv = read_inventory(&files).expect("inventory");
        assert_eq!(inv.ecosystem, "Debian:12");
        assert_eq!(inv.databases, vec!["dpkg".to_string()]);
        let names: Vec<_> = inv.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["libssl3", "base-files"],
            "config-files only is not installed"
        );
        assert_eq!(inv.packages[0].source.as_deref(), Some("openssl"));
    }

    #[test]
    fn an_alpine_image_lists_its_apk_packages_and_release() {
        let mut files = MapFiles::default();
        files.0.insert(
            "/etc/os-release".into(),
            b"NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.19.1\n".to_vec(),
        );
        files.0.insert(
            "/lib/apk/db/installed".into(),
            b"C:Q1abc=\nP:busybox-binsh\nV:1.36.1-r15\no:busybox\n\nP:musl\nV:1.2.4_git20230717-r4\no:musl\n".to_vec(),
        );
        let inv = read_inventory(&files).expect("inventory");
        assert_eq!(inv.ecosystem, "Alpine:v3.19");
        assert_eq!(inv.packages.len(), 2);
        assert_eq!(inv.packages[0].source.as_deref(), Some("busybox"));
        assert_eq!(inv.packages[1].source, None, "origin equal to the name");
    }

    #[test]
    fn an_almalinux_image_lists_its_rpm_packages_and_release() {
        use rpm::tests::{header, rpmdb};
        let mut files = MapFiles::default();
        files.0.insert(
            "/etc/os-release".into(),
            b"NAME=\"AlmaLinux\"\nID=\"almalinux\"\nVERSION_ID=\"9.3\"\n".to_vec(),
        );
        let blob = header(
            &[
                (1000, "openssl-libs"),
                (1001, "3.0.7"),
                (1002, "24.el9"),
                (1044, "openssl-3.0.7-24.el9.src.rpm"),
            ],
            Some(1),
        );
        files
            .0
            .insert("/usr/lib/sysimage/rpm/rpmdb.sqlite".into(), rpmdb(&[blob]));
        let inv = read_inventory(&files).expect("inventory");
        assert_eq!(inv.ecosystem, "AlmaLinux:9");
        assert_eq!(inv.databases, vec!["rpm".to_string()]);
        assert_eq!(inv.packages[0].version, "1:3.0.7-24.el9");
        assert_eq!(inv.packages[0].source.as_deref(), Some("openssl"));
    }
}
