//! The cloud-init NoCloud seed: a small FAT disk labelled `cidata` holding
//! `meta-data`, `user-data` and (later, from the network driver)
//! `network-config`, which the real `cloud-init` finds by its label.
//!
//! Written in-process with the `fatfs` crate, no `mkfs`/`mtools` needed.
//! SSH keys go into meta-data `public-keys` (NoCloud applies them to the
//! default user whatever the user-data is); when the user gave no
//! user-data, a `#cloud-config` with `ssh_authorized_keys` carries them too.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::shim::ShimError;

/// File name of the seed image inside an instance directory.
pub const SEED_FILE: &str = "seed.img";

/// Big enough for the largest user-data the API accepts (256 KiB).
const SEED_BYTES: u64 = 2 << 20;

/// What goes into one instance's seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub instance_id: String,
    pub hostname: String,
    pub ssh_authorized_keys: Vec<String>,
    pub user_data: Option<String>,
    pub network_config: Option<String>,
}

/// A serial number per instance (FNV-1a of its id) instead of a constant.
fn volume_id(instance_id: &str) -> u32 {
    instance_id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl Seed {
    pub fn meta_data(&self) -> String {
        let mut out = format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            quoted(&self.instance_id),
            quoted(&self.hostname)
        );
        if !self.ssh_authorized_keys.is_empty() {
            out.push_str("public-keys:\n");
            for key in &self.ssh_authorized_keys {
                out.push_str(&format!("  - {}\n", quoted(key.trim())));
            }
        }
        out
    }

    pub fn user_data(&self) -> String {
        match &self.user_data {
            Some(ud) => ud.clone(),
            None => {
                let mut out = String::from("#cloud-config\n");
                if !self.ssh_authorized_keys.is_empty() {
                    out.push_str("ssh_authorized_keys:\n");
                    for key in &self.ssh_authorized_keys {
                        out.push_str(&format!("  - {}\n", quoted(key.trim())));
                    }
                }
                out
            }
        }
    }

    /// Writes the seed image to `path` (replacing an older one).
    pub fn write(&self, path: &Path) -> Result<(), ShimError> {
        let io = |what: &str| {
            let what = format!("{what} NoCloud seed {}", path.display());
            move |source| ShimError::Io { what, source }
        };
        let _ = std::fs::remove_file(path);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io("create"))?;
        file.set_len(SEED_BYTES).map_err(io("size"))?;
        fatfs::format_volume(
            &mut file,
            fatfs::FormatVolumeOptions::new()
                .volume_label(*b"cidata     ")
                .volume_id(volume_id(&self.instance_id))
                .fat_type(fatfs::FatType::Fat12),
        )
        .map_err(io("format"))?;
        {
            let fs =
                fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).map_err(io("open"))?;
            let root = fs.root_dir();
            let mut files = vec![
                ("meta-data", self.meta_data()),
                ("user-data", self.user_data()),
            ];
            if let Some(net) = &self.network_config {
                files.push(("network-config", net.clone()));
            }
            for (name, content) in files {
                let mut f = root.create_file(name).map_err(io("write"))?;
                f.truncate().map_err(io("write"))?;
                f.write_all(content.as_bytes()).map_err(io("write"))?;
            }
            drop(root);
            fs.unmount().map_err(io("finish"))?;
        }
        file.sync_all().map_err(io("sync"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn seed(user_data: Option<&str>) -> Seed {
        Seed {
            instance_id: "i-123".into(),
            hostname: "db".into(),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3Nza me@host".into()],
            user_data: user_data.map(str::to_string),
            network_config: None,
        }
    }

    #[test]
    fn keys_without_user_data_become_cloud_config() {
        let s = seed(None);
        assert_eq!(
            s.meta_data(),
            "instance-id: \"i-123\"\nlocal-hostname: \"db\"\npublic-keys:\n  - \"ssh-ed25519 AAAAC3Nza me@host\"\n"
        );
        assert!(s
            .user_data()
            .starts_with("#cloud-config\nssh_authorized_keys:\n  - \"ssh-ed25519"));
        let with = seed(Some("#!/bin/sh\necho hi\n"));
        assert_eq!(with.user_data(), "#!/bin/sh\necho hi\n");
    }

    #[test]
    fn image_is_a_fat_volume_labelled_cidata_with_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SEED_FILE);
        seed(Some("#cloud-config\nruncmd: [echo hi]\n"))
            .write(&path)
            .expect("write seed");
        let mut file = std::fs::File::open(&path).expect("open");
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).expect("fat");
        assert_eq!(fs.volume_label().trim_end(), "cidata");
        let mut text = String::new();
        fs.root_dir()
            .open_file("user-data")
            .expect("user-data")
            .read_to_string(&mut text)
            .expect("read");
        assert_eq!(text, "#cloud-config\nruncmd: [echo hi]\n");
        let mut meta = String::new();
        fs.root_dir()
            .open_file("meta-data")
            .expect("meta-data")
            .read_to_string(&mut meta)
            .expect("read");
        assert!(meta.contains("local-hostname: \"db\""));
    }
}
