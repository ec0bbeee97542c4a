//! The starter image: a root filesystem made on this machine from
//! Debian's busybox-static, so a fresh cloud can run something at once.

use std::path::Path;

use anyhow::Context;
use nimbus_api::Image;

pub const STARTER_IMAGE: &str = "busybox";
const BUSYBOX: &str = "/bin/busybox";

/// A header owned by root with a fixed time, so the image is reproducible.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// A tar of a minimal busybox root filesystem.
pub fn busybox_rootfs_tar(busybox: &Path) -> anyhow::Result<Vec<u8>> {
    let applets = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .with_context(|| {
            format!(
                "running {} --list-full; install busybox-static",
                busybox.display()
            )
        })?;
    let binary =
        std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let mut tar = tar::Builder::new(Vec::new());
    let dir = |path: &str, mode: u32, tar: &mut tar::Builder<Vec<u8>>| -> std::io::Result<()> {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, path, std::io::empty())
    };
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root", "var",
        "run",
    ] {
        dir(d, 0o755, &mut tar)?;
    }
    dir("tmp", 0o1777, &mut tar)?;
    let file = |path: &str,
                mode: u32,
                data: &[u8],
                tar: &mut tar::Builder<Vec<u8>>|
     -> std::io::Result<()> {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        tar.append_data(&mut h, path, data)
    };
    file("bin/busybox", 0o755, &binary, &mut tar)?;
    file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        &mut tar,
    )?;
    file(
        "etc/group",
        0o644,
        b"root:x:0:\nnobody:x:65534:\n",
        &mut tar,
    )?;
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        let path = applet.trim().trim_start_matches('/');
        if path.is_empty() || path == "bin/busybox" {
            continue;
        }
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, path, "/bin/busybox")?;
    }
    Ok(tar.into_inner()?)
}

/// Import the starter image into the `default` project unless it is there.
pub async fn ensure_starter_image(g: &crate::ctx::Globals) -> anyhow::Result<bool> {
    let client = g.client()?;
    // The API comes up concurrently: wait for it.
    let mut tries = 0;
    loop {
        match client.get::<serde_json::Value>("/v1/health").await {
            Ok(_) => break,
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let path = format!("/v1/projects/default/images/{STARTER_IMAGE}");
    if client.get::<Image>(&path).await.is_ok() {
        return Ok(false);
    }
    let tar = tokio::task::spawn_blocking(|| busybox_rootfs_tar(Path::new(BUSYBOX))).await??;
    let body =
        futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(tar)) });
    let _: Image = client
        .upload(
            &format!("/v1/projects/default/images?name={STARTER_IMAGE}&source=busybox-static"),
            body,
        )
        .await?;
    Ok(true)
}
