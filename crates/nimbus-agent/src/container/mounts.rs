//! Finding and removing the mounts an instance left under its directory.

use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use super::ShimError;

/// Mount points at or below `dir` in this mount namespace, in mount order.
pub fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>, ShimError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| ShimError::Io {
        what: "read /proc/self/mountinfo".to_string(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything at or below `dir`, newest first. A busy mount is detached
/// lazily so teardown never leaves it attached to the host tree.
pub fn unmount_all_under(dir: &Path) -> Result<(), ShimError> {
    // Stacked mounts show up once per layer; loop until none is left.
    for _ in 0..16 {
        let points = mount_points_under(dir)?;
        if points.is_empty() {
            return Ok(());
        }
        for point in points.iter().rev() {
            match umount2(point.as_path(), MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(_) => {
                    let _ = umount2(
                        point.as_path(),
                        MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
                    );
                }
            }
        }
    }
    let left = mount_points_under(dir)?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(ShimError::Rootfs(format!(
            "could not unmount {} mount(s) under {}: {}",
            left.len(),
            dir.display(),
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
    }
}
