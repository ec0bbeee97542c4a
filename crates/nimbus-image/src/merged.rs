//! Read-only access to an image's merged filesystem, as overlayfs would show it, without
//! mounting anything: the topmost layer that has a path wins, a whiteout (0:0 character
//! device) hides the path in lower layers, an opaque directory hides the lower layers'
//! contents of that directory.
//!
//! Every step goes through `safe_fs` (`O_NOFOLLOW`, one component at a time). A symlink
//! stored in the image is resolved by hand against the image's own root (`..` stops at
//! the root), so nothing outside the layer directories is ever read.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::safe_fs::{self, Kind};

/// Most symlinks followed while resolving one path (as the kernel's 40, smaller).
const MAX_SYMLINK_HOPS: usize = 16;
/// Most components a resolved path may have.
const MAX_COMPONENTS: usize = 256;

/// Why a merged-view read failed.
#[derive(Debug, thiserror::Error)]
pub enum MergedError {
    #[error("`{path}` in the image is larger than the limit of {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("`{path}` in the image has too many symlinks or components to resolve")]
    TooDeep { path: String },
    #[error("could not read `{path}` in the image: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The merged view of an image's unpacked layers.
pub struct MergedView {
    /// Layer roots, topmost first.
    layers: Vec<OwnedFd>,
}

/// Where a walk through one layer ended.
enum Step {
    /// The path exists here as `kind`; `parent` is its directory.
    Found { parent: OwnedFd, kind: Kind },
    /// A symlink at component `at` points to `target`.
    Symlink { at: usize, target: OsString },
    /// Not in this layer; lower layers may have it.
    Absent,
    /// Hidden by a whiteout, an opaque directory or a non-directory: stop.
    Hidden,
}

impl MergedView {
    /// Opens the layer directories given lowest first (as [`crate::ImageStore::layer_dirs`]
    /// returns them).
    pub fn open(layer_dirs: &[PathBuf]) -> Result<MergedView, MergedError> {
        let mut layers = Vec::with_capacity(layer_dirs.len());
        for dir in layer_dirs.iter().rev() {
            let fd = safe_fs::open_root(dir).map_err(|source| MergedError::Io {
                path: dir.display().to_string(),
                source,
            })?;
            layers.push(fd);
        }
        Ok(MergedView { layers })
    }

    /// The content of the regular file at `path` (absolute inside the image), following
    /// the image's own symlinks; `None` when it does not exist or is not a regular file.
    pub fn read_file(&self, path: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, MergedError> {
        let Some((parent, name)) = self.resolve_regular(path)? else {
            return Ok(None);
        };
        let io = |source| MergedError::Io {
            path: path.to_string(),
            source,
        };
        let file = safe_fs::open_file_at(&parent, &name).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        if size > max_bytes {
            return Err(MergedError::TooLarge {
                path: path.to_string(),
                limit: max_bytes,
            });
        }
        let mut content = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut content)
            .map_err(io)?;
        if content.len() as u64 > max_bytes {
            return Err(MergedError::TooLarge {
                path: path.to_string(),
                limit: max_bytes,
            });
        }
        Ok(Some(content))
    }

    /// Names in the directory at `path` in the merged view (whiteouts applied), sorted;
    /// empty when it does not exist. At most `max_entries` names.
    pub fn list_dir(&self, path: &str, max_entries: usize) -> Result<Vec<String>, MergedError> {
        let Some(components) = self.resolve_components(path)? else {
            return Ok(Vec::new());
        };
        let io = |source| MergedError::Io {
            path: path.to_string(),
            source,
        };
        let mut seen: std::collections::BTreeMap<OsString, bool> = Default::default();
        for layer in &self.layers {
            let dir = match walk(layer, &components) {
                Step::Found {
                    parent,
                    kind: Kind::Dir,
                } => match components.last() {
                    Some(last) => safe_fs::open_subdir(&parent, last)
                        .map_err(|e| io(std::io::Error::from(e)))?,
                    None => parent,
                },
                Step::Absent => continue,
                _ => break,
            };
            for name in safe_fs::read_dir_names(&dir).map_err(io)? {
                if seen.contains_key(&name) {
                    continue;
                }
                let stat = safe_fs::lstat_at(&dir, &name).map_err(io)?;
                let visible = stat.is_some_and(|s| !safe_fs::is_whiteout(&s));
                seen.insert(name, visible);
                if seen.len() > max_entries.saturating_mul(2) {
                    break;
                }
            }
            if safe_fs::is_opaque(&dir) {
                break;
            }
        }
        let names = seen
            .into_iter()
            .filter(|(_, visible)| *visible)
            .filter_map(|(name, _)| name.to_str().map(str::to_string))
            .take(max_entries)
            .collect();
        Ok(names)
    }

    /// The components of `path` with every symlink on the way resolved (the last one
    /// too), or `None` if a component is hidden or missing.
    fn resolve_components(&self, path: &str) -> Result<Option<Vec<OsString>>, MergedError> {
        let mut components = split(Path::new(path), Vec::new());
        for _ in 0..MAX_SYMLINK_HOPS {
            if components.len() > MAX_COMPONENTS {
                break;
            }
            match self.lookup(&components) {
                Lookup::Found(_, _) | Lookup::Missing => return Ok(Some(components)),
                Lookup::Symlink { at, target } => components = redirect(&components, at, &target),
            }
        }
        Err(MergedError::TooDeep {
            path: path.to_string(),
        })
    }

    /// The directory holding the regular file `path` and its name.
    fn resolve_regular(&self, path: &str) -> Result<Option<(OwnedFd, OsString)>, MergedError> {
        let mut components = split(Path::new(path), Vec::new());
        for _ in 0..MAX_SYMLINK_HOPS {
            if components.len() > MAX_COMPONENTS {
                break;
            }
            match self.lookup(&components) {
                Lookup::Found(parent, kind) => {
                    let name = components.last().cloned().unwrap_or_default();
                    let wanted = kind == Kind::Regular && !name.is_empty();
                    return Ok(wanted.then_some((parent, name)));
                }
                Lookup::Missing => return Ok(None),
                Lookup::Symlink { at, target } => components = redirect(&components, at, &target),
            }
        }
        Err(MergedError::TooDeep {
            path: path.to_string(),
        })
    }

    fn lookup(&self, components: &[OsString]) -> Lookup {
        for layer in &self.layers {
            match walk(layer, components) {
                Step::Found { parent, kind } => return Lookup::Found(parent, kind),
                Step::Symlink { at, target } => return Lookup::Symlink { at, target },
                Step::Absent => continue,
                Step::Hidden => return Lookup::Missing,
            }
        }
        Lookup::Missing
    }
}

enum Lookup {
    Found(OwnedFd, Kind),
    Symlink { at: usize, target: OsString },
    Missing,
}

/// Walks `components` inside one layer.
fn walk(layer: &OwnedFd, components: &[OsString]) -> Step {
    let Ok(mut dir) = layer.try_clone() else {
        return Step::Hidden;
    };
    if components.is_empty() {
        return Step::Found {
            parent: dir,
            kind: Kind::Dir,
        };
    }
    // An opaque directory on the way hides everything below it in lower layers.
    let mut opaque_above = false;
    for (i, name) in components.iter().enumerate() {
        opaque_above = opaque_above || (i > 0 && safe_fs::is_opaque(&dir));
        let stat = match safe_fs::lstat_at(&dir, name) {
            Ok(Some(stat)) => stat,
            Ok(None) if opaque_above => return Step::Hidden,
            Ok(None) | Err(_) => return Step::Absent,
        };
        if safe_fs::is_whiteout(&stat) {
            return Step::Hidden;
        }
        let kind = safe_fs::kind_of(&stat);
        if kind == Kind::Symlink {
            return match safe_fs::read_link_at(&dir, name) {
                Ok(target) => Step::Symlink { at: i, target },
                Err(_) => Step::Hidden,
            };
        }
        if i + 1 == components.len() {
            return Step::Found { parent: dir, kind };
        }
        if kind != Kind::Dir {
            return Step::Hidden;
        }
        dir = match safe_fs::open_subdir(&dir, name) {
            Ok(fd) => fd,
            Err(_) => return Step::Hidden,
        };
    }
    Step::Absent
}

/// Normal components of `path` appended to `base`, `..` popping (never above the root).
fn split(path: &Path, mut base: Vec<OsString>) -> Vec<OsString> {
    for part in path.as_os_str().as_bytes().split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                base.pop();
            }
            other => base.push(OsStr::from_bytes(other).to_os_string()),
        }
    }
    base
}

/// The path after replacing the symlink at `at` by its `target`.
fn redirect(components: &[OsString], at: usize, target: &OsStr) -> Vec<OsString> {
    let base = if target.as_bytes().starts_with(b"/") {
        Vec::new()
    } else {
        components[..at].to_vec()
    };
    let mut resolved = split(Path::new(target), base);
    resolved.extend_from_slice(&components[at + 1..]);
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(root: &Path, name: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("layer dir");
        dir
    }

    fn write(dir: &Path, rel: &str, content: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("parents");
        std::fs::write(path, content).expect("write");
    }

    #[test]
    fn the_topmost_layer_wins_and_symlinks_stay_inside_the_image() {
        let tmp = tempfile::tempdir().expect("tmp");
        let low = layer(tmp.path(), "low");
        let high = layer(tmp.path(), "high");
        write(&low, "var/lib/dpkg/status", "low");
        write(&high, "var/lib/dpkg/status", "high");
        write(&low, "usr/lib/os-release", "ID=debian");
        std::fs::create_dir_all(low.join("etc")).expect("etc");
        std::os::unix::fs::symlink("../usr/lib/os-release", low.join("etc/os-release"))
            .expect("symlink");
        // An absolute symlink pointing at the host's /etc/passwd resolves in the image.
        std::os::unix::fs::symlink("/../../etc/passwd", high.join("escape")).expect("symlink");
        let view = MergedView::open(&[low, high]).expect("open");
        let status = view.read_file("/var/lib/dpkg/status", 100).expect("read");
        assert_eq!(status.as_deref(), Some(&b"high"[..]));
        let os = view.read_file("etc/os-release", 100).expect("read");
        assert_eq!(os.as_deref(), Some(&b"ID=debian"[..]));
        assert_eq!(view.read_file("/escape", 100).expect("read"), None);
        assert!(matches!(
            view.read_file("/var/lib/dpkg/status", 2),
            Err(MergedError::TooLarge { .. })
        ));
    }

    #[test]
    fn symlink_loops_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let low = layer(tmp.path(), "low");
        std::os::unix::fs::symlink("b", low.join("a")).expect("symlink");
        std::os::unix::fs::symlink("a", low.join("b")).expect("symlink");
        let view = MergedView::open(&[low]).expect("open");
        assert!(matches!(
            view.read_file("/a", 100),
            Err(MergedError::TooDeep { .. })
        ));
    }

    // Whiteouts need CAP_MKNOD (root): the e2e image tests run as root too.
    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers() {
        let tmp = tempfile::tempdir().expect("tmp");
        let low = layer(tmp.path(), "low");
        let high = layer(tmp.path(), "high");
        write(&low, "lib/apk/db/installed", "old");
        write(&low, "var/lib/dpkg/status.d/base", "base");
        write(&low, "var/lib/dpkg/status.d/gone", "gone");
        write(&high, "var/lib/dpkg/status.d/extra", "extra");
        std::fs::create_dir_all(high.join("lib/apk/db")).expect("dirs");
        let db_dir = safe_fs::open_root(&high.join("lib/apk/db")).expect("db dir");
        if let Err(e) = safe_fs::make_whiteout(&db_dir, OsStr::new("installed")) {
            assert!(
                std::env::var_os("NIMBUS_TESTS_REQUIRE_ROOT").is_none(),
                "whiteouts need root: {e}"
            );
            eprintln!("SKIPPED: cannot create a whiteout without root: {e}");
            return;
        }
        let status_d = safe_fs::open_root(&high.join("var/lib/dpkg/status.d")).expect("dir");
        safe_fs::make_whiteout(&status_d, OsStr::new("gone")).expect("whiteout");
        let view = MergedView::open(&[low.clone(), high.clone()]).expect("open");
        assert_eq!(
            view.read_file("/lib/apk/db/installed", 100).expect("read"),
            None
        );
        assert_eq!(
            view.list_dir("/var/lib/dpkg/status.d", 10).expect("list"),
            vec!["base".to_string(), "extra".to_string()]
        );
        safe_fs::set_opaque(&status_d).expect("opaque");
        let view = MergedView::open(&[low, high]).expect("open");
        assert_eq!(
            view.list_dir("/var/lib/dpkg/status.d", 10).expect("list"),
            vec!["extra".to_string()]
        );
        assert_eq!(
            view.read_file("/var/lib/dpkg/status.d/base", 100)
                .expect("read"),
            None
        );
    }
}
