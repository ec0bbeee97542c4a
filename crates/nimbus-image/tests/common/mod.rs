//! Builders for test archives: tarballs (including hostile ones the `tar` crate's safe
//! API would refuse to write), compressed variants and OCI image layouts.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use nimbus_image::{ImageStore, ImportedImage, Limits};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

pub const MTIME: u64 = 1_600_000_000;

/// One tar entry; paths and link targets are written verbatim, whatever they contain.
#[derive(Clone, Debug)]
pub enum Entry {
    Dir(&'static str),
    File(&'static str, Vec<u8>),
    FileMode(&'static str, Vec<u8>, u32),
    FileOwned(&'static str, Vec<u8>, u32, u32),
    Symlink(&'static str, &'static str),
    HardLink(&'static str, &'static str),
    Char(&'static str),
    Block(&'static str),
    Fifo(&'static str),
}

pub fn raw_header(path: &str, kind: EntryType, size: u64, mode: u32, link: Option<&str>) -> Header {
    let mut header = Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
    }
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_cksum();
    header
}

pub fn append(builder: &mut tar::Builder<Vec<u8>>, entry: &Entry) {
    let (mut header, data): (Header, &[u8]) = match entry {
        Entry::Dir(p) => (raw_header(p, EntryType::Directory, 0, 0o755, None), &[]),
        Entry::File(p, d) => (
            raw_header(p, EntryType::Regular, d.len() as u64, 0o644, None),
            d,
        ),
        Entry::FileMode(p, d, m) => (
            raw_header(p, EntryType::Regular, d.len() as u64, *m, None),
            d,
        ),
        Entry::FileOwned(p, d, uid, gid) => {
            let mut h = raw_header(p, EntryType::Regular, d.len() as u64, 0o640, None);
            h.set_uid((*uid).into());
            h.set_gid((*gid).into());
            (h, d)
        }
        Entry::Symlink(p, t) => (raw_header(p, EntryType::Symlink, 0, 0o777, Some(t)), &[]),
        Entry::HardLink(p, t) => (raw_header(p, EntryType::Link, 0, 0o644, Some(t)), &[]),
        Entry::Char(p) => (raw_header(p, EntryType::Char, 0, 0o666, None), &[]),
        Entry::Block(p) => (raw_header(p, EntryType::Block, 0, 0o660, None), &[]),
        Entry::Fifo(p) => (raw_header(p, EntryType::Fifo, 0, 0o600, None), &[]),
    };
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

pub fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        append(&mut builder, entry);
    }
    builder.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

/// An OCI image layout as a list of files, so tests can corrupt any part before
/// `to_tar`.
pub struct OciLayout {
    pub files: Vec<(String, Vec<u8>)>,
    pub manifest_digest: String,
    pub layer_digests: Vec<String>,
    pub config_digest: String,
}

pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": sha256(data), "size": data.len()})
}

pub fn config_json(diff_ids: &[String], architecture: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin:/bin", "GREETING=hello"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "WorkingDir": "/srv",
            "User": "1000:1000"
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

/// Blobs of one image: layers and config (`blobs`), the manifest, and digests.
pub struct ManifestBlobs {
    pub blobs: Vec<(String, Vec<u8>)>,
    pub manifest: Vec<u8>,
    pub layer_digests: Vec<String>,
    pub config_digest: String,
}

/// Manifest + config blobs for `layer_tars` (uncompressed tars, gzipped here).
pub fn manifest_blobs(layer_tars: &[Vec<u8>], architecture: &str) -> ManifestBlobs {
    let mut blobs = Vec::new();
    let mut layer_descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    for layer in layer_tars {
        let compressed = gzip(layer);
        diff_ids.push(sha256(layer));
        layer_descriptors.push(descriptor(LAYER_GZIP, &compressed));
        layer_digests.push(sha256(&compressed));
        blobs.push((sha256(&compressed), compressed));
    }
    let config = config_json(&diff_ids, architecture);
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": layer_descriptors,
    }))
    .unwrap();
    blobs.push((config_digest.clone(), config));
    ManifestBlobs {
        blobs,
        manifest,
        layer_digests,
        config_digest,
    }
}

impl OciLayout {
    pub fn new(layer_tars: &[Vec<u8>]) -> OciLayout {
        let ManifestBlobs {
            blobs,
            manifest,
            layer_digests,
            config_digest,
        } = manifest_blobs(layer_tars, "amd64");
        let manifest_digest = sha256(&manifest);
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [descriptor("application/vnd.oci.image.manifest.v1+json", &manifest)],
        }))
        .unwrap();
        let mut layout = OciLayout {
            files: Vec::new(),
            manifest_digest,
            layer_digests,
            config_digest,
        };
        layout.files.push((
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ));
        layout.files.push(("index.json".into(), index));
        layout.add_blob(manifest);
        for (_, data) in blobs {
            layout.add_blob(data);
        }
        layout
    }

    pub fn add_blob(&mut self, data: Vec<u8>) {
        let name = format!("blobs/sha256/{}", hex_of(&sha256(&data)));
        if !self.files.iter().any(|(n, _)| *n == name) {
            self.files.push((name, data));
        }
    }

    pub fn set(&mut self, name: &str, data: Vec<u8>) {
        let slot = self.files.iter_mut().find(|(n, _)| n == name).unwrap();
        slot.1 = data;
    }

    pub fn remove(&mut self, name: &str) {
        self.files.retain(|(n, _)| n != name);
    }

    pub fn blob_name(digest: &str) -> String {
        format!("blobs/sha256/{}", hex_of(digest))
    }

    pub fn to_tar(&self) -> Vec<u8> {
        self.to_tar_with(&[])
    }

    /// The layout plus raw (possibly hostile) entries at the end.
    pub fn to_tar_with(&self, extra: &[Entry]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for dir in ["blobs/", "blobs/sha256/"] {
            append(&mut builder, &Entry::Dir(dir));
        }
        for (name, data) in &self.files {
            let mut header = Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(MTIME);
            header.set_uid(0);
            header.set_gid(0);
            header.set_entry_type(EntryType::Regular);
            builder.append_data(&mut header, name, &data[..]).unwrap();
        }
        for entry in extra {
            append(&mut builder, entry);
        }
        builder.into_inner().unwrap()
    }
}

pub fn store(limits: Limits) -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store"), limits).unwrap();
    (dir, store)
}

pub fn import(
    store: &ImageStore,
    archive: &[u8],
) -> Result<ImportedImage, nimbus_image::ImageError> {
    store.import(archive, &mut |_| {})
}

/// Every path under blobs/, layers/ and tmp/ (layers listed to their top two levels).
pub fn snapshot(store: &ImageStore) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for sub in ["blobs/sha256", "layers", "tmp"] {
        let dir = store.root().join(sub);
        walk(&dir, &dir, 2, &mut out);
    }
    out
}

fn walk(base: &Path, dir: &Path, depth: usize, out: &mut BTreeSet<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.insert(
            path.strip_prefix(base.parent().unwrap())
                .unwrap()
                .to_path_buf(),
        );
        if depth > 1 && path.symlink_metadata().unwrap().is_dir() {
            walk(base, &path, depth - 1, out);
        }
    }
}

pub fn lstat(path: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let c_name = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and a live buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}
