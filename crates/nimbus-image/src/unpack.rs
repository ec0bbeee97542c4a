//! Unpacking one layer tarball into a fresh directory, treating every entry as hostile.
//!
//! Each entry is written by hand (never `tar`'s own `unpack`): its path is split into
//! components, `..` and absolute paths are refused, parent directories are opened one by
//! one without following symlinks (see `safe_fs`), and only then is the entry created
//! by name inside its parent. OCI whiteouts become overlayfs whiteouts on the way.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use tar::EntryType;

use crate::error::ImageError;
use crate::safe_fs::{self, Kind, WalkError};
use crate::stream::{self, GuardedReader, StreamGuard, Tripped, MAX_HEADER_BYTES_PER_ENTRY};
use crate::Limits;

/// Longest entry path accepted (PATH_MAX less the terminating NUL).
const MAX_PATH_BYTES: usize = 4095;
/// Deepest entry accepted; keeps later walks and removals within descriptor limits.
const MAX_PATH_DEPTH: usize = 256;
/// Room for tar headers and padding per entry when capping the decompressed stream.
const HEADER_ALLOWANCE_PER_ENTRY: u64 = 4096;
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
const COPY_BUFFER_BYTES: usize = 128 * 1024;

/// Bytes written so far against `Limits::max_unpacked_bytes`, shared by all layers of
/// one import.
pub(crate) struct UnpackBudget {
    pub(crate) limit: u64,
    pub(crate) written: u64,
}

impl UnpackBudget {
    pub(crate) fn new(limit: u64) -> Self {
        UnpackBudget { limit, written: 0 }
    }
}

/// Result of a successful unpack.
pub(crate) struct UnpackedLayer {
    /// sha256 hex of the uncompressed tar stream (the OCI DiffID).
    pub(crate) diff_id_hex: String,
}

/// Unpacks the (possibly gzip/zstd compressed) layer tar read from `source` into `dest`,
/// which must not exist yet. `layer` names the layer in errors.
pub(crate) fn unpack_layer(
    source: impl Read,
    dest: &Path,
    layer: &str,
    limits: &Limits,
    budget: &mut UnpackBudget,
) -> Result<UnpackedLayer, ImageError> {
    std::fs::create_dir(dest).map_err(|e| ImageError::io("create layer directory", dest, e))?;
    let root =
        safe_fs::open_root(dest).map_err(|e| ImageError::io("open layer directory", dest, e))?;
    safe_fs::set_fd_metadata(&root, 0, 0, 0o755, None)
        .map_err(|e| ImageError::io("set mode of layer directory", dest, e))?;

    let decompressed = stream::decompress(source).map_err(|e| malformed(layer, &e))?;
    let stream_cap = budget
        .limit
        .saturating_sub(budget.written)
        .saturating_add(
            limits
                .max_entries
                .saturating_mul(HEADER_ALLOWANCE_PER_ENTRY),
        )
        .saturating_add(MAX_HEADER_BYTES_PER_ENTRY);
    let (reader, guard) = GuardedReader::new(decompressed, stream_cap, true);
    let mut archive = tar::Archive::new(reader);
    let mut unpacker = Unpacker {
        root,
        layer,
        limits,
        budget,
        guard: guard.clone(),
        dir_mtimes: Vec::new(),
    };
    {
        let mut entries = archive.entries().map_err(|e| unpacker.tar_error(&e))?;
        let mut count: u64 = 0;
        loop {
            guard.enter_headers();
            let next = entries.next();
            guard.enter_content();
            let mut entry = match next {
                None => break,
                Some(Err(e)) => return Err(unpacker.tar_error(&e)),
                Some(Ok(entry)) => entry,
            };
            count += 1;
            if count > limits.max_entries {
                return Err(ImageError::TooManyEntries {
                    what: format!("layer {layer}"),
                    limit: limits.max_entries,
                });
            }
            unpacker.unpack_entry(&mut entry)?;
            unpacker.drain(&mut entry)?;
        }
    }
    unpacker.apply_dir_mtimes()?;
    // The DiffID covers the whole stream, including the end-of-archive blocks.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| unpacker.tar_error(&e))?;
    let diff_id_hex = guard.digest_hex().unwrap_or_default();
    safe_fs::sync_filesystem(&unpacker.root)
        .map_err(|e| ImageError::io("sync layer directory", dest, e))?;
    Ok(UnpackedLayer { diff_id_hex })
}

fn malformed(layer: &str, err: &io::Error) -> ImageError {
    ImageError::MalformedTar {
        what: format!("layer {layer}"),
        reason: err.to_string(),
    }
}

/// Owner, permission bits and mtime of an entry, with PAX overrides applied.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
}

struct Unpacker<'a> {
    root: OwnedFd,
    layer: &'a str,
    limits: &'a Limits,
    budget: &'a mut UnpackBudget,
    guard: StreamGuard,
    /// Directory mtimes are set last: creating entries inside would change them again.
    dir_mtimes: Vec<(Vec<OsString>, i64)>,
}

impl Unpacker<'_> {
    fn tar_error(&self, err: &io::Error) -> ImageError {
        match self.guard.tripped() {
            Some(Tripped::StreamCap) => self.too_large(),
            Some(Tripped::HeaderCap) => ImageError::MalformedTar {
                what: format!("layer {}", self.layer),
                reason: format!(
                    "the headers of one entry exceed {MAX_HEADER_BYTES_PER_ENTRY} bytes \
                     (oversized PAX or GNU long-name record)"
                ),
            },
            None => malformed(self.layer, err),
        }
    }

    fn too_large(&self) -> ImageError {
        ImageError::UnpackedTooLarge {
            layer: self.layer.to_string(),
            limit: self.budget.limit,
        }
    }

    fn charge(&mut self, bytes: usize) -> Result<(), ImageError> {
        self.budget.written = self.budget.written.saturating_add(bytes as u64);
        if self.budget.written > self.budget.limit {
            return Err(self.too_large());
        }
        Ok(())
    }

    fn unsafe_path(&self, entry: &str, reason: impl Into<String>) -> ImageError {
        ImageError::UnsafePath {
            layer: self.layer.to_string(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    fn extract_error(&self, entry: &str, action: &'static str, source: io::Error) -> ImageError {
        ImageError::Extract {
            layer: self.layer.to_string(),
            entry: entry.to_string(),
            action,
            source,
        }
    }

    fn conflict(&self, entry: &str, reason: &str) -> ImageError {
        ImageError::EntryConflict {
            layer: self.layer.to_string(),
            entry: entry.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Reads whatever the entry still holds so the next header can be found; the bytes
    /// count against the budget like written ones.
    fn drain<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let mut buf = [0u8; 8192];
        loop {
            let n = entry.read(&mut buf).map_err(|e| self.tar_error(&e))?;
            if n == 0 {
                return Ok(());
            }
            self.charge(n)?;
        }
    }

    fn unpack_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let path_bytes = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&path_bytes).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let components =
            split_path(&path_bytes).map_err(|reason| self.unsafe_path(&name, reason))?;
        let meta = self.meta(entry, &name)?;

        let Some((file_name, parent_components)) = components.split_last() else {
            if kind == EntryType::Directory {
                safe_fs::set_fd_metadata(&self.root, meta.uid, meta.gid, meta.mode, None)
                    .map_err(|e| self.extract_error(&name, "set metadata of", e))?;
                self.dir_mtimes.push((Vec::new(), meta.mtime));
                return Ok(());
            }
            return Err(self.unsafe_path(&name, "the path is empty"));
        };
        let parent = match safe_fs::walk_dirs(&self.root, parent_components, true) {
            Ok(fd) => fd,
            Err(WalkError::Symlink { prefix }) => {
                return Err(ImageError::EscapingSymlink {
                    layer: self.layer.to_string(),
                    entry: name,
                    symlink: prefix.display().to_string(),
                })
            }
            Err(WalkError::NotDir { prefix }) | Err(WalkError::Missing { prefix }) => {
                let reason = format!("`{}` is not a directory", prefix.display());
                return Err(self.conflict(&name, &reason));
            }
            Err(e @ WalkError::Io { .. }) => {
                let source = io::Error::other(e.to_string());
                return Err(self.extract_error(&name, "open parent directory of", source));
            }
        };

        if file_name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&parent, file_name, &name, &meta);
        }
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular_file(entry, &parent, file_name, &name, &meta)
            }
            EntryType::Directory => self.directory(&parent, file_name, &components, &name, &meta),
            EntryType::Symlink => self.symlink(entry, &parent, file_name, &name, &meta),
            EntryType::Link => self.hard_link(entry, &parent, file_name, &components, &name),
            EntryType::Fifo => {
                self.clear_slot(&parent, file_name, &name)?;
                safe_fs::make_fifo(&parent, file_name)
                    .and_then(|()| safe_fs::set_mode_at(&parent, file_name, meta.mode & 0o1777))
                    .and_then(|()| {
                        safe_fs::set_link_metadata(
                            &parent, file_name, meta.uid, meta.gid, meta.mtime,
                        )
                    })
                    .map_err(|e| self.extract_error(&name, "create FIFO", e))
            }
            EntryType::Char | EntryType::Block => Err(ImageError::DeviceNode {
                layer: self.layer.to_string(),
                entry: name,
                kind: if kind == EntryType::Char {
                    "character"
                } else {
                    "block"
                },
            }),
            other => Err(ImageError::UnsupportedEntryType {
                layer: self.layer.to_string(),
                entry: name,
                kind: format!("{other:?} ('{}')", other.as_byte() as char),
            }),
        }
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta, ImageError> {
        let bad = |field: &str, e: &dyn std::fmt::Display| ImageError::MalformedTar {
            what: format!("layer {} entry `{name}`", self.layer),
            reason: format!("invalid {field}: {e}"),
        };
        let header = entry.header();
        let mut uid = header.uid().map_err(|e| bad("uid", &e))?;
        let mut gid = header.gid().map_err(|e| bad("gid", &e))?;
        let mode = header.mode().map_err(|e| bad("mode", &e))? & 0o7777;
        let mut mtime = header.mtime().map_err(|e| bad("mtime", &e))?;
        if let Some(extensions) = entry.pax_extensions().map_err(|e| bad("PAX header", &e))? {
            for extension in extensions {
                let extension = extension.map_err(|e| bad("PAX header", &e))?;
                let (Ok(key), Ok(value)) = (extension.key(), extension.value()) else {
                    continue;
                };
                let whole = value.split('.').next().unwrap_or(value);
                let parsed = || whole.parse::<u64>().map_err(|e| bad(key, &e));
                match key {
                    "uid" => uid = parsed()?,
                    "gid" => gid = parsed()?,
                    "mtime" => mtime = parsed().unwrap_or(mtime),
                    _ => {}
                }
            }
        }
        Ok(Meta {
            uid: u32::try_from(uid).map_err(|e| bad("uid", &e))?,
            gid: u32::try_from(gid).map_err(|e| bad("gid", &e))?,
            mode,
            mtime: i64::try_from(mtime).unwrap_or(i64::MAX),
        })
    }

    /// Makes room for a new non-directory entry: removes an earlier non-directory of the
    /// same name (later tar entries win), refuses to replace a directory.
    fn clear_slot(
        &self,
        parent: &OwnedFd,
        file_name: &OsStr,
        name: &str,
    ) -> Result<(), ImageError> {
        let existing = safe_fs::lstat_at(parent, file_name)
            .map_err(|e| self.extract_error(name, "inspect", e))?;
        match existing.map(|stat| safe_fs::kind_of(&stat)) {
            None => Ok(()),
            Some(Kind::Dir) => Err(self.conflict(name, "a directory of that name already exists")),
            Some(_) => safe_fs::unlink(parent, file_name)
                .map_err(|e| self.extract_error(name, "replace", e)),
        }
    }

    fn regular_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &OwnedFd,
        file_name: &OsStr,
        name: &str,
        meta: &Meta,
    ) -> Result<(), ImageError> {
        if !self.limits.allow_setuid && meta.mode & 0o6000 != 0 {
            return Err(ImageError::SetuidNotAllowed {
                layer: self.layer.to_string(),
                entry: name.to_string(),
                mode: meta.mode,
            });
        }
        self.clear_slot(parent, file_name, name)?;
        let mut file = safe_fs::create_file(parent, file_name)
            .map_err(|e| self.extract_error(name, "create file", e))?;
        let mut buf = vec![0u8; COPY_BUFFER_BYTES];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.tar_error(&e)),
            };
            // Count what is actually written, whatever the header claimed.
            self.charge(n)?;
            file.write_all(&buf[..n])
                .map_err(|e| self.extract_error(name, "write file", e))?;
        }
        safe_fs::set_fd_metadata(&file, meta.uid, meta.gid, meta.mode, Some(meta.mtime))
            .map_err(|e| self.extract_error(name, "set metadata of", e))
    }

    fn directory(
        &mut self,
        parent: &OwnedFd,
        file_name: &OsStr,
        components: &[OsString],
        name: &str,
        meta: &Meta,
    ) -> Result<(), ImageError> {
        let existing = safe_fs::lstat_at(parent, file_name)
            .map_err(|e| self.extract_error(name, "inspect", e))?;
        match existing.map(|stat| safe_fs::kind_of(&stat)) {
            Some(Kind::Dir) => {}
            Some(_) => {
                safe_fs::unlink(parent, file_name)
                    .and_then(|()| safe_fs::make_dir(parent, file_name))
                    .map_err(|e| self.extract_error(name, "replace with directory", e))?;
            }
            None => safe_fs::make_dir(parent, file_name)
                .map_err(|e| self.extract_error(name, "create directory", e))?,
        }
        let dir = safe_fs::open_subdir(parent, file_name)
            .map_err(|e| self.extract_error(name, "open directory", e.into()))?;
        safe_fs::set_fd_metadata(&dir, meta.uid, meta.gid, meta.mode, None)
            .map_err(|e| self.extract_error(name, "set metadata of", e))?;
        self.dir_mtimes.push((components.to_vec(), meta.mtime));
        Ok(())
    }

    /// Any target is stored as is (absolute targets are normal in a rootfs); safety comes
    /// from never following a symlink while extracting.
    fn symlink<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        parent: &OwnedFd,
        file_name: &OsStr,
        name: &str,
        meta: &Meta,
    ) -> Result<(), ImageError> {
        let target = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        if target.is_empty() || target.contains(&0) {
            return Err(self.unsafe_path(name, "symlink target is empty or contains NUL"));
        }
        self.clear_slot(parent, file_name, name)?;
        safe_fs::make_symlink(OsStr::from_bytes(&target), parent, file_name)
            .and_then(|()| {
                safe_fs::set_link_metadata(parent, file_name, meta.uid, meta.gid, meta.mtime)
            })
            .map_err(|e| self.extract_error(name, "create symlink", e))
    }

    fn hard_link<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        parent: &OwnedFd,
        file_name: &OsStr,
        components: &[OsString],
        name: &str,
    ) -> Result<(), ImageError> {
        let target_bytes = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let target = String::from_utf8_lossy(&target_bytes).into_owned();
        let refuse = |reason: String| ImageError::BadHardLink {
            layer: self.layer.to_string(),
            entry: name.to_string(),
            target: target.clone(),
            reason,
        };
        let target_components = split_path(&target_bytes).map_err(&refuse)?;
        let Some((target_name, target_parent)) = target_components.split_last() else {
            return Err(refuse("the target is empty or the layer root".to_string()));
        };
        let target_dir = safe_fs::walk_dirs(&self.root, target_parent, false).map_err(|e| {
            refuse(match e {
                WalkError::Symlink { prefix } => {
                    format!(
                        "the target path passes through the symlink `{}`",
                        prefix.display()
                    )
                }
                WalkError::NotDir { .. } | WalkError::Missing { .. } => {
                    "the target does not exist earlier in the layer".to_string()
                }
                WalkError::Io { source, .. } => format!("cannot open the target: {source}"),
            })
        })?;
        let stat = safe_fs::lstat_at(&target_dir, target_name)
            .map_err(|e| refuse(format!("cannot inspect the target: {e}")))?;
        match stat.map(|s| safe_fs::kind_of(&s)) {
            Some(Kind::Regular) => {}
            None => {
                return Err(refuse(
                    "the target does not exist earlier in the layer".into(),
                ))
            }
            Some(kind) => {
                return Err(refuse(format!(
                    "the target is a {kind:?}, not a regular file"
                )))
            }
        }
        if target_components == components {
            return Ok(());
        }
        self.clear_slot(parent, file_name, name)?;
        safe_fs::make_hard_link(&target_dir, target_name, parent, file_name)
            .map_err(|e| self.extract_error(name, "create hard link", e))
    }

    /// `.wh..wh..opq` marks the parent opaque; `.wh.<name>` becomes a 0:0 character
    /// device `<name>`. A whiteout only hides lower layers, so an entry of the same name
    /// from this layer wins.
    fn whiteout(
        &self,
        parent: &OwnedFd,
        file_name: &OsStr,
        name: &str,
        meta: &Meta,
    ) -> Result<(), ImageError> {
        let bytes = file_name.as_bytes();
        if bytes == OPAQUE_WHITEOUT.as_bytes() {
            return safe_fs::set_opaque(parent)
                .map_err(|e| self.extract_error(name, "mark opaque the directory of", e));
        }
        if bytes.starts_with(b".wh..wh.") {
            tracing::debug!(
                layer = self.layer,
                entry = name,
                "skipping aufs metadata entry"
            );
            return Ok(());
        }
        let hidden = OsStr::from_bytes(&bytes[WHITEOUT_PREFIX.len()..]);
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(self.unsafe_path(name, "the whiteout names no file"));
        }
        let existing = safe_fs::lstat_at(parent, hidden)
            .map_err(|e| self.extract_error(name, "inspect", e))?;
        if existing.is_some() {
            tracing::debug!(
                layer = self.layer,
                entry = name,
                "whiteout of a file in its own layer ignored"
            );
            return Ok(());
        }
        safe_fs::make_whiteout(parent, hidden)
            .and_then(|()| {
                safe_fs::set_link_metadata(parent, hidden, meta.uid, meta.gid, meta.mtime)
            })
            .map_err(|e| self.extract_error(name, "create whiteout for", e))
    }

    fn apply_dir_mtimes(&self) -> Result<(), ImageError> {
        for (components, mtime) in self.dir_mtimes.iter().rev() {
            let path = components.iter().collect::<std::path::PathBuf>();
            let shown = path.display().to_string();
            let dir = safe_fs::walk_dirs(&self.root, components, false).map_err(|e| {
                self.extract_error(&shown, "reopen directory", io::Error::other(e.to_string()))
            })?;
            safe_fs::set_fd_mtime(dir.as_raw_fd(), *mtime)
                .map_err(|e| self.extract_error(&shown, "set mtime of", e))?;
        }
        Ok(())
    }
}

/// Splits a tar path into plain components: `.` and empty parts are dropped; `..`,
/// absolute paths, NUL bytes, and over-long or over-deep paths are refused.
pub(crate) fn split_path(bytes: &[u8]) -> Result<Vec<OsString>, String> {
    if bytes.contains(&0) {
        return Err("the path contains a NUL byte".to_string());
    }
    if bytes.len() > MAX_PATH_BYTES {
        return Err(format!("the path is longer than {MAX_PATH_BYTES} bytes"));
    }
    let mut components = Vec::new();
    for component in Path::new(OsStr::from_bytes(bytes)).components() {
        match component {
            Component::Normal(part) => components.push(part.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err("it contains a `..` component".to_string()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("it is an absolute path".to_string())
            }
        }
    }
    if components.len() > MAX_PATH_DEPTH {
        return Err(format!(
            "the path is more than {MAX_PATH_DEPTH} levels deep"
        ));
    }
    Ok(components)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_path_normalises_and_refuses_escapes() {
        let ok = |p: &str| split_path(p.as_bytes()).unwrap();
        assert_eq!(ok("./a//b/./c/"), ["a", "b", "c"]);
        assert!(ok("./").is_empty());
        assert!(split_path(b"../etc/x").is_err());
        assert!(split_path(b"a/../../b").is_err());
        assert!(split_path(b"/abs").is_err());
        assert!(split_path(b"a\0b").is_err());
        assert!(split_path("a/".repeat(300).as_bytes()).is_err());
    }
}
