//! Clients of a test cloud's OCI registry (`/v2/` on its TLS port): users
//! with a token, an OCI archive to push, skopeo, podman and curl with the
//! server's certificate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::Cloud;

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// An OCI image as `skopeo copy ... oci-archive:` writes it: one gzip
/// layer, a config with `cmd`. Returns the archive and its blobs by digest
/// (layer, config, manifest).
pub struct Archive {
    pub tar: Vec<u8>,
    pub manifest_digest: String,
    pub blobs: Vec<(String, Vec<u8>)>,
}

pub fn oci_archive(layer_tar: &[u8], cmd: &[&str]) -> Archive {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(layer_tar).unwrap();
    let layer = gz.finish().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(layer_tar))]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", sha256_hex(&config)), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": format!("sha256:{}", sha256_hex(&layer)), "size": layer.len()}]
    }))
    .unwrap();
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest.len()}]
    }))
    .unwrap();
    let blobs: Vec<(String, Vec<u8>)> = [layer, config, manifest]
        .into_iter()
        .map(|b| (sha256_hex(&b), b))
        .collect();
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        builder.append_data(&mut h, path, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for (hex, data) in &blobs {
        add(&format!("blobs/sha256/{hex}"), data);
    }
    Archive {
        tar: builder.into_inner().unwrap(),
        manifest_digest,
        blobs,
    }
}

/// A user with `role` in `project` (created if needed) and a token of theirs.
pub fn member(cloud: &Cloud, user: &str, role: &str, project: &str) -> String {
    let _ = cloud.nimbus(&["project", "create", project]);
    cloud.ok(&["user", "create", user]);
    cloud.ok(&["role", "grant", user, role, "--project", project]);
    let v = cloud
        .json(&["token", "create", "--user", user])
        .expect("token create");
    v["secret"].as_str().expect("secret").to_string()
}

/// The server's self-signed certificate as a skopeo certificate directory.
pub fn cert_dir(cloud: &Cloud) -> PathBuf {
    let dir = cloud.data_dir().join("registry-certs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(cloud.data_dir().join("tls/cert.pem"), dir.join("ca.crt")).unwrap();
    dir
}

pub fn skopeo(args: &[&str]) -> std::process::Output {
    Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo (Debian package `skopeo`, installed by scripts/deps)")
}

pub fn skopeo_ok(args: &[&str]) -> String {
    let out = skopeo(args);
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A call with curl over TLS: (status, headers, body).
pub struct Reply {
    /// `METHOD path`, for messages.
    pub request: String,
    pub status: u16,
    pub headers: String,
    pub body: String,
    pub stderr: String,
}

impl Reply {
    pub fn code(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("no registry error in {:?} ({})", self.body, self.stderr))
    }

    /// Requires the registry's refusal `code` with HTTP `status`.
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code().as_str()),
            (status, code),
            "{}: {}",
            self.request,
            self.body
        );
    }
}

pub fn curl(cloud: &Cloud, token: Option<&str>, method: &str, path: &str, extra: &[&str]) -> Reply {
    let work = tempfile::tempdir().unwrap();
    let (head, body) = (work.path().join("h"), work.path().join("b"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--path-as-is", "--max-time", "30", "-X", method])
        .arg("--cacert")
        .arg(cloud.data_dir().join("tls/cert.pem"))
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-u", &format!("anyone:{t}")]);
    }
    let out = cmd
        .args(extra)
        .arg(format!("https://127.0.0.1:{}{path}", cloud.port))
        .output()
        .expect("run curl");
    Reply {
        request: format!("{method} {path}"),
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: std::fs::read_to_string(&head).unwrap_or_default(),
        body: std::fs::read_to_string(&body).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// The `Location` an upload session answered with.
pub fn location_of(reply: &Reply) -> String {
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply
        .headers
        .lines()
        .find_map(|l| {
            l.to_lowercase()
                .strip_prefix("location: ")
                .map(|v| v.trim().to_string())
        })
        .expect("Location header")
}

pub fn image_names(cloud: &Cloud, project: &str) -> Vec<String> {
    let v = cloud
        .json(&["image", "list", "--project", project])
        .expect("image list");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// What the image store holds, by file name.
pub fn store_listing(images: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["blobs/sha256", "layers", "tmp"] {
        if let Ok(entries) = std::fs::read_dir(images.join(sub)) {
            for e in entries.flatten() {
                out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    out
}

/// podman with storage of its own under `dir` (vfs: no mounts to clean up).
pub fn podman(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
        .args(args)
        .output()
        .expect("run podman (Debian package `podman`, installed by scripts/deps)")
}

pub fn podman_ok(dir: &Path, args: &[&str]) -> String {
    let out = podman(dir, args);
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Pushes `data` as a blob of `repo` in one request; returns its digest.
pub fn push_blob(cloud: &Cloud, token: &str, repo: &str, data: &[u8]) -> String {
    let digest = format!("sha256:{}", sha256_hex(data));
    let file = cloud.data_dir().join(format!("blob-{}", &digest[7..19]));
    std::fs::write(&file, data).unwrap();
    let path = format!("/v2/{repo}/blobs/uploads/?digest={digest}");
    let r = curl(
        cloud,
        Some(token),
        "POST",
        &path,
        &["--data-binary", &format!("@{}", file.display())],
    );
    assert_eq!(r.status, 201, "pushing a blob: {}", r.body);
    digest
}

/// PUTs a manifest; returns the reply.
pub fn put_manifest(
    cloud: &Cloud,
    token: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> Reply {
    let file = cloud
        .data_dir()
        .join(format!("manifest-{}", sha256_hex(body)));
    std::fs::write(&file, body).unwrap();
    curl(
        cloud,
        Some(token),
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
            &format!("@{}", file.display()),
        ],
    )
}
