//! Inputs for tests of this crate and its users (not used in production).

/// A root-filesystem tarball of one file, `data.txt` holding `content`,
/// so that each content makes a layer of its own.
pub fn one_file_rootfs_tar(content: &str) -> Vec<u8> {
    one_file_rootfs_tar_of(content.as_bytes())
}

/// [`one_file_rootfs_tar`] of any bytes (for layers of a chosen size).
pub fn one_file_rootfs_tar_of(data: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder
        .append_data(&mut header, "data.txt", data)
        .expect("tar entry");
    builder.into_inner().expect("tar")
}

/// A store in a temporary directory whose uploads may hold `limit` bytes.
#[cfg(test)]
pub(crate) fn store_with_limit(limit: u64) -> (tempfile::TempDir, crate::ImageStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let limits = crate::Limits {
        max_archive_bytes: limit,
        ..crate::Limits::default()
    };
    let store = crate::ImageStore::open(dir.path(), limits).expect("image store");
    (dir, store)
}

/// How many entries the store's `sub` directory holds.
#[cfg(test)]
pub(crate) fn entry_count(store: &crate::ImageStore, sub: &str) -> usize {
    std::fs::read_dir(store.root().join(sub))
        .expect("store directory")
        .count()
}
