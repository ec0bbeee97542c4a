//! Virtual-machine images: disks (qcow2 or raw) and directly booted kernels.
//!
//! A disk is validated with `qemu-img info` and, for qcow2, `qemu-img check`
//! before it becomes a blob; a qcow2 that names a backing or external data
//! file is refused, because QEMU would open that host path for the guest. A
//! kernel must be an ELF with a PVH entry note or a multiboot header (what
//! QEMU's `-kernel` boots without firmware); an initrd is stored beside it.
//! Both are staged under `tmp/` and leave nothing behind when rejected.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::blob::{self, digest_from_hex, digest_hex, CopyError};
use crate::{ImageConfig, ImageError, ImageFormat, ImageStore, ImportedImage, Staging};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }

    pub fn parse(text: &str) -> Option<DiskFormat> {
        match text {
            "qcow2" => Some(DiskFormat::Qcow2),
            "raw" | "img" => Some(DiskFormat::Raw),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskInfo {
    /// Blob digest of the base file.
    pub digest: String,
    pub format: DiskFormat,
    pub virtual_size_bytes: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KernelEntry {
    /// An ELF note `Xen`/18 (XEN_ELFNOTE_PHYS32_ENTRY): Linux's and most unikernels'.
    Pvh,
    /// A multiboot (v1) header in the first 8 KiB.
    Multiboot,
}

impl KernelEntry {
    pub fn as_str(self) -> &'static str {
        match self {
            KernelEntry::Pvh => "pvh",
            KernelEntry::Multiboot => "multiboot",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelInfo {
    pub digest: String,
    pub initrd: Option<String>,
    pub entry: KernelEntry,
}

/// Initrds are stored padded to whole pages (see [`ImageStore::import_kernel`]).
const INITRD_ALIGN: u64 = 4096;

/// Appends zeros up to the next page and returns the new digest and size.
fn pad_to_pages(path: &Path, size: u64) -> std::io::Result<(String, u64)> {
    use sha2::Digest as _;
    let padded = size.div_ceil(INITRD_ALIGN) * INITRD_ALIGN;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(padded)?;
    file.sync_all()?;
    let mut hasher = sha2::Sha256::new();
    let mut reader = std::fs::File::open(path)?;
    std::io::copy(&mut reader, &mut hasher)?;
    Ok((hex::encode(hasher.finalize()), padded))
}

/// `qemu-img info --output=json`, the fields we act on.
#[derive(Debug, Deserialize)]
struct QemuImgInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "backing-filename", default)]
    backing_filename: Option<String>,
    #[serde(rename = "format-specific", default)]
    format_specific: Option<serde_json::Value>,
}

impl ImageStore {
    /// Path of a stored blob, for the agent to hand to QEMU (read-only use).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = digest_hex(digest, "VM image blob")?;
        let path = self.blobs.path(hex);
        if !path.is_file() {
            return Err(ImageError::LayerMissing {
                digest: digest.to_string(),
            });
        }
        Ok(path)
    }

    /// Imports a disk image read from `reader`. `expected` is the format the
    /// user announced (e.g. from a `.qcow2` file name): a file that is not of
    /// that format is refused rather than run as something else.
    pub fn import_disk(
        &self,
        reader: impl Read,
        name: &str,
        expected: Option<DiskFormat>,
    ) -> Result<ImportedImage, ImageError> {
        let mut reader = reader;
        let staging = Staging::create(&self.tmp_dir, "disk")?;
        let path = staging.path.join("disk");
        let (hex, size) = self.stage(&mut reader, &path)?;
        let bad = |reason: String| ImageError::BadDisk {
            name: name.to_string(),
            reason,
        };
        if size == 0 {
            return Err(bad("the file is empty".into()));
        }
        let info = qemu_img_info(&path).map_err(bad)?;
        let format = match info.format.as_str() {
            "qcow2" => DiskFormat::Qcow2,
            "raw" => DiskFormat::Raw,
            other => {
                return Err(bad(format!(
                "its format is {other}; convert it with `qemu-img convert -O qcow2 FILE out.qcow2`"
            )))
            }
        };
        if let Some(want) = expected {
            if want != format {
                return Err(bad(format!(
                    "it was announced as {} but qemu-img reads it as {}: the file is corrupt or \
                     truncated (check it with `qemu-img check`), or pass the right --format",
                    want.as_str(),
                    format.as_str()
                )));
            }
        }
        if format == DiskFormat::Qcow2 {
            if let Some(backing) = &info.backing_filename {
                return Err(bad(format!(
                    "it has a backing file {backing:?}; flatten it first with \
                     `qemu-img convert -O qcow2 FILE flat.qcow2`"
                )));
            }
            let data_file = info
                .format_specific
                .as_ref()
                .and_then(|v| v.pointer("/data/data-file"))
                .and_then(|v| v.as_str());
            if let Some(data_file) = data_file {
                return Err(bad(format!(
                    "it stores its data in the external file {data_file:?}; convert it with \
                     `qemu-img convert -O qcow2 FILE flat.qcow2`"
                )));
            }
            qemu_img_check(&path).map_err(bad)?;
        }
        if !self.blobs.contains(&hex) {
            self.blobs.commit(&path, &hex)?;
        }
        let digest = digest_from_hex(&hex);
        Ok(ImportedImage {
            format: ImageFormat::Disk,
            manifest_digest: digest.clone(),
            layers: Vec::new(),
            config: ImageConfig::default(),
            size_bytes: size,
            architecture: "amd64".into(),
            platforms: Vec::new(),
            disk: Some(DiskInfo {
                digest,
                format,
                virtual_size_bytes: info.virtual_size,
            }),
            kernel: None,
        })
    }

    /// Imports a kernel: the first `kernel_bytes` of `reader` are the kernel,
    /// the rest (if any) its initrd.
    pub fn import_kernel(
        &self,
        reader: impl Read,
        name: &str,
        kernel_bytes: u64,
    ) -> Result<ImportedImage, ImageError> {
        let mut reader = reader;
        let staging = Staging::create(&self.tmp_dir, "kernel")?;
        let kernel_path = staging.path.join("kernel");
        let (kernel_hex, got) = self.stage(&mut (&mut reader).take(kernel_bytes), &kernel_path)?;
        let bad = |reason: String| ImageError::BadKernel {
            name: name.to_string(),
            reason,
        };
        if got != kernel_bytes {
            return Err(bad(format!(
                "the upload ended after {got} of the announced {kernel_bytes} kernel bytes"
            )));
        }
        let entry = check_kernel(&kernel_path).map_err(bad)?;
        let initrd_path = staging.path.join("initrd");
        let (mut initrd_hex, mut initrd_size) = self.stage(&mut reader, &initrd_path)?;
        if initrd_size % INITRD_ALIGN != 0 {
            // On microvm QEMU places the initrd so it ends at the top of RAM,
            // where the ACPI tables are; a size that is not whole pages
            // overwrites them. The kernel ignores zeros after the archive.
            (initrd_hex, initrd_size) = pad_to_pages(&initrd_path, initrd_size)
                .map_err(|e| ImageError::io("pad staged initrd", &initrd_path, e))?;
        }
        if !self.blobs.contains(&kernel_hex) {
            self.blobs.commit(&kernel_path, &kernel_hex)?;
        }
        let initrd = if initrd_size > 0 {
            if !self.blobs.contains(&initrd_hex) {
                self.blobs.commit(&initrd_path, &initrd_hex)?;
            }
            Some(digest_from_hex(&initrd_hex))
        } else {
            None
        };
        let digest = digest_from_hex(&kernel_hex);
        Ok(ImportedImage {
            format: ImageFormat::Kernel,
            manifest_digest: digest.clone(),
            layers: Vec::new(),
            config: ImageConfig::default(),
            size_bytes: kernel_bytes + initrd_size,
            architecture: "amd64".into(),
            platforms: Vec::new(),
            disk: None,
            kernel: Some(KernelInfo {
                digest,
                initrd,
                entry,
            }),
        })
    }

    /// Copies `reader` to the new staging file `path`, hashed and capped
    /// at `Limits::max_archive_bytes`: `(hex digest, size)`.
    pub(crate) fn stage(
        &self,
        reader: &mut dyn Read,
        path: &Path,
    ) -> Result<(String, u64), ImageError> {
        blob::copy_hashed_to_new_file(reader, path, self.limits.max_archive_bytes, &mut |_| {})
            .map_err(|e| match e {
                CopyError::Read(source) => ImageError::ReadArchive { source },
                CopyError::Write(e) => ImageError::io("write staged image", path, e),
                CopyError::TooLarge => ImageError::ArchiveTooLarge {
                    limit: self.limits.max_archive_bytes,
                },
            })
    }
}

/// The format by the file's own first bytes: qcow2 by its magic, anything
/// else raw. qemu-img is then told the format instead of probing it, so an
/// uploaded VMDK or other descriptor never makes it open host paths.
fn sniff_format(path: &Path) -> Result<&'static str, String> {
    let mut head = [0u8; 64];
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("cannot read the staged disk: {e}"))?;
    let n = f
        .read(&mut head)
        .map_err(|e| format!("cannot read the staged disk: {e}"))?;
    let head = &head[..n];
    let other = [
        (&b"KDMV"[..], "vmdk"),
        (&b"# Disk DescriptorFile"[..], "vmdk"),
        (&b"vhdxfile"[..], "vhdx"),
        (&b"QED\0"[..], "qed"),
        (&b"conectix"[..], "vpc"),
        (&b"<<< "[..], "vdi"),
    ];
    if let Some((_, name)) = other.iter().find(|(m, _)| head.starts_with(m)) {
        return Err(format!(
            "its format is {name}; convert it with `qemu-img convert -O qcow2 FILE out.qcow2`"
        ));
    }
    Ok(if head.starts_with(b"QFI\xfb") {
        "qcow2"
    } else {
        "raw"
    })
}

/// Run a qemu-img command on untrusted input with bounded memory, CPU time
/// and wall-clock time.
fn run_qemu_img(mut cmd: Command) -> Result<std::process::Output, String> {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let mem = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            let cpu = libc::rlimit {
                rlim_cur: 60,
                rlim_max: 60,
            };
            libc::setrlimit(libc::RLIMIT_AS, &mem);
            libc::setrlimit(libc::RLIMIT_CPU, &cpu);
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run qemu-img (install qemu-utils): {e}"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let reader = std::thread::spawn(move || {
        let mut o = Vec::new();
        if let Some(s) = out.as_mut() {
            let _ = s.read_to_end(&mut o);
        }
        o
    });
    let mut e = Vec::new();
    let err_reader = std::thread::spawn(move || {
        if let Some(s) = err.as_mut() {
            let _ = s.read_to_end(&mut e);
        }
        e
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(
                    "qemu-img did not finish within 120 s; the file is not a usable disk image"
                        .into(),
                );
            }
        }
    };
    Ok(std::process::Output {
        status,
        stdout: reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

fn qemu_img_info(path: &Path) -> Result<QemuImgInfo, String> {
    let format = sniff_format(path)?;
    let mut cmd = Command::new("qemu-img");
    cmd.args(["info", "--output=json", "-f", format]).arg(path);
    let out = run_qemu_img(cmd)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim().replace(&path.display().to_string(), "the file");
        return Err(format!(
            "qemu-img cannot open it ({err}); the file is corrupt, truncated or not a disk image"
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("qemu-img info printed unexpected JSON: {e}"))
}

/// `qemu-img check`: 0 clean, 3 only leaked clusters (harmless), 2 corrupt,
/// 1 the check itself failed.
fn qemu_img_check(path: &Path) -> Result<(), String> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["check", "-f", "qcow2", "--output=json"])
        .arg(path);
    let out = run_qemu_img(cmd)?;
    match out.status.code() {
        Some(0) | Some(3) => Ok(()),
        Some(2) => {
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let corruptions = report["corruptions"].as_u64().unwrap_or(0);
            Err(format!(
                "qemu-img check found {corruptions} corrupt clusters: the file is corrupt or \
                 truncated; copy it again or repair a copy with `qemu-img check -r all`"
            ))
        }
        _ => Err(format!(
            "qemu-img check could not check it ({}); the file is corrupt or truncated",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace(&path.display().to_string(), "the file")
        )),
    }
}

/// Reads the kernel and finds its boot entry.
fn check_kernel(path: &Path) -> Result<KernelEntry, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    classify_kernel(&data)
}

const EXTRACT_HINT: &str = "extract the ELF with `extract-vmlinux` (in the Linux source tree, \
     scripts/extract-vmlinux) or use the build's uncompressed `vmlinux`";

/// What kind of bootable kernel `data` is, or why it is not one.
pub(crate) fn classify_kernel(data: &[u8]) -> Result<KernelEntry, String> {
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        if data.len() > 0x206 && &data[0x202..0x206] == b"HdrS" {
            return Err(format!(
                "it is a compressed Linux bzImage, not an ELF; {EXTRACT_HINT}"
            ));
        }
        return Err(format!(
            "it is not an ELF file (no \\x7fELF magic); {EXTRACT_HINT}"
        ));
    }
    let class = data[4];
    if data[5] != 1 {
        return Err("it is a big-endian ELF; only little-endian x86 kernels boot here".into());
    }
    let machine = u16::from_le_bytes([data[18], data[19]]);
    if machine != 62 && machine != 3 {
        return Err(format!(
            "it is an ELF for machine {machine}, not x86-64 (62) or i386 (3)"
        ));
    }
    // Multiboot v1: magic 0x1BADB002, 4-byte aligned, in the first 8 KiB,
    // with a checksum making magic + flags + checksum zero.
    let window = &data[..data.len().min(8192)];
    for off in (0..window.len().saturating_sub(12)).step_by(4) {
        let word =
            |o: usize| u32::from_le_bytes([window[o], window[o + 1], window[o + 2], window[o + 3]]);
        if word(off) == 0x1BAD_B002
            && word(off)
                .wrapping_add(word(off + 4))
                .wrapping_add(word(off + 8))
                == 0
        {
            return Ok(KernelEntry::Multiboot);
        }
    }
    if has_pvh_note(data, class).unwrap_or(false) {
        return Ok(KernelEntry::Pvh);
    }
    Err(
        "it is an ELF without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) or a multiboot \
         header, so QEMU cannot boot it directly; build the kernel with CONFIG_PVH=y or add a \
         multiboot header"
            .into(),
    )
}

/// Walks PT_NOTE segments looking for the `Xen` note of type 18.
fn has_pvh_note(data: &[u8], class: u8) -> Option<bool> {
    let u16_at = |o: usize| -> Option<u16> {
        Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?))
    };
    let u32_at = |o: usize| -> Option<u32> {
        Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?))
    };
    let u64_at = |o: usize| -> Option<u64> {
        Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?))
    };
    let (phoff, phentsize, phnum) = match class {
        2 => (
            u64_at(32)? as usize,
            u16_at(54)? as usize,
            u16_at(56)? as usize,
        ),
        1 => (
            u32_at(28)? as usize,
            u16_at(42)? as usize,
            u16_at(44)? as usize,
        ),
        _ => return Some(false),
    };
    for i in 0..phnum.min(256) {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != 4 {
            continue; // not PT_NOTE
        }
        let (offset, size) = match class {
            2 => (u64_at(ph + 8)? as usize, u64_at(ph + 32)? as usize),
            _ => (u32_at(ph + 4)? as usize, u32_at(ph + 16)? as usize),
        };
        let end = offset.checked_add(size)?.min(data.len());
        let mut at = offset;
        while at + 12 <= end {
            let namesz = u32_at(at)? as usize;
            let descsz = u32_at(at + 4)? as usize;
            let kind = u32_at(at + 8)?;
            let name = data.get(at + 12..at + 12 + namesz)?;
            if kind == 18 && name.starts_with(b"Xen") {
                return Some(true);
            }
            let align4 = |n: usize| (n + 3) & !3;
            at = at + 12 + align4(namesz) + align4(descsz);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_NOTE holding the given note.
    fn elf_with_note(name: &[u8], kind: u32) -> Vec<u8> {
        let mut d = vec![0u8; 64 + 56];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[18..20].copy_from_slice(&62u16.to_le_bytes());
        d[32..40].copy_from_slice(&64u64.to_le_bytes());
        d[54..56].copy_from_slice(&56u16.to_le_bytes());
        d[56..58].copy_from_slice(&1u16.to_le_bytes());
        let mut note = Vec::new();
        note.extend_from_slice(&(name.len() as u32).to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&kind.to_le_bytes());
        note.extend_from_slice(name);
        while note.len() % 4 != 0 {
            note.push(0);
        }
        note.extend_from_slice(&0x100000u32.to_le_bytes());
        let off = d.len();
        d[64..68].copy_from_slice(&4u32.to_le_bytes());
        d[64 + 8..64 + 16].copy_from_slice(&(off as u64).to_le_bytes());
        d[64 + 32..64 + 40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        d.extend_from_slice(&note);
        d
    }

    #[test]
    fn finds_a_pvh_note() {
        assert_eq!(
            classify_kernel(&elf_with_note(b"Xen\0", 18)),
            Ok(KernelEntry::Pvh)
        );
        let err = classify_kernel(&elf_with_note(b"GNU\0", 3)).unwrap_err();
        assert!(err.contains("PVH"), "{err}");
    }

    #[test]
    fn finds_a_multiboot_header() {
        let mut d = elf_with_note(b"GNU\0", 3);
        d.resize(4096, 0);
        let magic = 0x1BAD_B002u32;
        let flags = 0x0001_0003u32;
        let sum = 0u32.wrapping_sub(magic).wrapping_sub(flags);
        for (i, w) in [magic, flags, sum].iter().enumerate() {
            d[1024 + 4 * i..1024 + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        assert_eq!(classify_kernel(&d), Ok(KernelEntry::Multiboot));
    }

    #[test]
    fn bzimage_and_junk_get_a_way_out() {
        let mut bz = vec![0u8; 4096];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let err = classify_kernel(&bz).unwrap_err();
        assert!(
            err.contains("bzImage") && err.contains("extract-vmlinux"),
            "{err}"
        );
        let err = classify_kernel(b"hello world").unwrap_err();
        assert!(err.contains("not an ELF"), "{err}");
    }
}
