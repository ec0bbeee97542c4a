//! A large OCI image layout written for the registry benchmark: a busybox
//! layer plus layers of random bytes, so no two images share a blob and no
//! copy can skip one as already present.
//!
//! The layers are gzip with stored (level 0) deflate blocks: random bytes do
//! not compress, so every side of the comparison moves the same bytes and
//! none pays for compression, while the layers keep the media type
//! (`tar+gzip`) that skopeo pushes to a registry as is (an uncompressed
//! layer would be gzipped on the way to `docker://` but not to `oci:`).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// A writer that hashes what passes through it.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hash.finalize()), self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `len` pseudo-random bytes (xorshift64*): incompressible for gzip and far
/// cheaper to make than reading `/dev/urandom`.
struct RandomBytes {
    state: u64,
    left: u64,
}

impl Read for RandomBytes {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.left as usize) / 8 * 8;
        let n = if n == 0 {
            buf.len().min(self.left as usize)
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A layer's descriptor facts: digest of the blob, its size, and the
/// digest of the uncompressed tar (the config's `diff_id`).
struct Layer {
    digest_hex: String,
    size: u64,
    diff_id_hex: String,
}

/// Writes the tar that `fill` writes, gzipped at level 0, into `blobs/`.
fn write_layer(
    blobs: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<Layer> {
    let tmp = blobs.join("layer.tmp");
    let gz = flate2::write::GzEncoder::new(
        Hashing::new(BufWriter::with_capacity(1 << 20, File::create(&tmp)?)),
        flate2::Compression::none(),
    );
    let mut tar_hash = Hashing::new(gz);
    fill(&mut tar_hash)?;
    let (gz, diff_id_hex, _) = tar_hash.finish();
    let (file, digest_hex, size) = gz.finish()?.finish();
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, blobs.join(&digest_hex))?;
    Ok(Layer {
        digest_hex,
        size,
        diff_id_hex,
    })
}

fn random_layer(blobs: &Path, seed: u64, bytes: u64) -> io::Result<Layer> {
    write_layer(blobs, |out| {
        let mut builder = tar::Builder::new(out);
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let data = RandomBytes {
            state: seed | 1,
            left: bytes,
        };
        builder.append_data(&mut h, format!("data/random-{seed:x}.bin"), data)?;
        builder.finish()
    })
}

fn write_blob(blobs: &Path, data: &[u8]) -> io::Result<String> {
    let hex = hex::encode(Sha256::digest(data));
    std::fs::write(blobs.join(&hex), data)?;
    Ok(hex)
}

/// What was written: the manifest's digest, every blob's digest and size.
pub struct Written {
    pub manifest_digest: String,
    pub blobs: Vec<(String, u64)>,
}

impl Written {
    pub fn bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, size)| size).sum()
    }
}

/// Writes an OCI layout at `dir`: the busybox root filesystem `base_tar`
/// as the first layer, then `layers` layers of `layer_bytes` random bytes
/// each (seeded by `seed`), a config running `/bin/sh`.
pub fn write_layout(
    dir: &Path,
    base_tar: &Path,
    layers: u32,
    layer_bytes: u64,
    seed: u64,
) -> io::Result<Written> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let base = write_layer(&blobs, |out| {
        io::copy(&mut File::open(base_tar)?, out).map(drop)
    })?;
    let mut all = vec![base];
    for i in 0..layers {
        let layer_seed = seed.wrapping_mul(1_000_003).wrapping_add(u64::from(i) + 1);
        all.push(random_layer(&blobs, layer_seed, layer_bytes)?);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers",
                   "diff_ids": all.iter().map(|l| format!("sha256:{}", l.diff_id_hex)).collect::<Vec<_>>()}
    }))?;
    let config_hex = write_blob(&blobs, &config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_hex}"), "size": config.len()},
        "layers": all.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{}", l.digest_hex), "size": l.size})).collect::<Vec<_>>()
    }))?;
    let manifest_hex = write_blob(&blobs, &manifest)?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{manifest_hex}"), "size": manifest.len()}]
    }))?;
    std::fs::write(dir.join("index.json"), index)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut blobs_written: Vec<(String, u64)> =
        all.into_iter().map(|l| (l.digest_hex, l.size)).collect();
    blobs_written.push((config_hex, config.len() as u64));
    blobs_written.push((manifest_hex.clone(), manifest.len() as u64));
    Ok(Written {
        manifest_digest: format!("sha256:{manifest_hex}"),
        blobs: blobs_written,
    })
}
