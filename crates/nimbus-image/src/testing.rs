//! Inputs for tests of this crate and its users (not used in production).

/// A root-filesystem tarball of one file, `data.txt` holding `content`,
/// so that each content makes a layer of its own.
pub fn one_file_rootfs_tar(content: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder
        .append_data(&mut header, "data.txt", content.as_bytes())
        .expect("tar entry");
    builder.into_inner().expect("tar")
}
