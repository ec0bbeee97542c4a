//! rpm's SQLite database (`rpmdb.sqlite`, rpm ≥ 4.16: RHEL/AlmaLinux/Rocky 9,
//! Fedora ≥ 33): one header blob per package in table `Packages`. The file is copied
//! out of the image (size-capped) and opened read-only; each header is parsed by
//! hand with every offset bounds-checked.

use rusqlite::{Connection, OpenFlags};

use super::{ImageFiles, Package, MAX_PACKAGES};
use crate::error::ScanError;

/// Where rpm keeps it: the classic path, and the one Fedora moved it to.
const RPMDB_PATHS: [&str; 2] = [
    "/var/lib/rpm/rpmdb.sqlite",
    "/usr/lib/sysimage/rpm/rpmdb.sqlite",
];
/// Largest rpm database read (a full RHEL server's is ~100 MiB).
const MAX_RPMDB_BYTES: u64 = 512 << 20;
/// Most index entries in one header (real ones have a few hundred).
const MAX_HEADER_ENTRIES: usize = 65_536;

const TAG_NAME: i32 = 1000;
const TAG_VERSION: i32 = 1001;
const TAG_RELEASE: i32 = 1002;
const TAG_EPOCH: i32 = 1003;
const TAG_SOURCERPM: i32 = 1044;
const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;

/// The installed packages, or `None` when the image has no rpm SQLite database.
pub(super) fn read(files: &dyn ImageFiles) -> Result<Option<Vec<Package>>, ScanError> {
    for path in RPMDB_PATHS {
        if let Some(bytes) = super::read(files, path, MAX_RPMDB_BYTES)? {
            return packages_of(&bytes).map(Some).map_err(|e| {
                ScanError::Image(format!("the rpm database {path} is not readable: {e}"))
            });
        }
    }
    Ok(None)
}

fn packages_of(db: &[u8]) -> Result<Vec<Package>, String> {
    // A directory of its own: SQLite may add `-wal`/`-shm` files beside the copy,
    // and they go with it.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let copy = dir.path().join("rpmdb.sqlite");
    std::fs::write(&copy, db).map_err(|e| e.to_string())?;
    let conn = Connection::open_with_flags(
        &copy,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    // The file is the image's: never let its schema run anything.
    conn.execute_batch("PRAGMA trusted_schema = OFF;")
        .map_err(|e| e.to_string())?;
    let mut query = conn
        .prepare("SELECT blob FROM Packages")
        .map_err(|e| e.to_string())?;
    let rows = query
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .map_err(|e| e.to_string())?;
    let mut packages = Vec::new();
    for row in rows {
        let blob = row.map_err(|e| e.to_string())?;
        if let Some(p) = parse_header(&blob) {
            packages.push(p);
        }
        if packages.len() > MAX_PACKAGES {
            return Err(format!("more than {MAX_PACKAGES} packages"));
        }
    }
    Ok(packages)
}

/// A package from one header blob: `il`, `dl`, `il` 16-byte index entries, data.
pub(super) fn parse_header(blob: &[u8]) -> Option<Package> {
    let be32 = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(blob.get(at..at + 4)?.try_into().ok()?))
    };
    let entries = be32(0)? as usize;
    let data_len = be32(4)? as usize;
    if entries > MAX_HEADER_ENTRIES {
        return None;
    }
    let data_start = 8 + entries * 16;
    let data = blob.get(data_start..data_start.checked_add(data_len)?)?;
    let mut fields = Fields::default();
    for i in 0..entries {
        let at = 8 + i * 16;
        let tag = be32(at)? as i32;
        let kind = be32(at + 4)?;
        let offset = be32(at + 8)? as usize;
        match (tag, kind) {
            (TAG_EPOCH, TYPE_INT32) => {
                let bytes = data.get(offset..offset + 4)?;
                fields.epoch = Some(u32::from_be_bytes(bytes.try_into().ok()?));
            }
            (TAG_NAME | TAG_VERSION | TAG_RELEASE | TAG_SOURCERPM, TYPE_STRING) => {
                let text = string_at(data, offset)?;
                match tag {
                    TAG_NAME => fields.name = Some(text),
                    TAG_VERSION => fields.version = Some(text),
                    TAG_RELEASE => fields.release = Some(text),
                    _ => fields.source_rpm = Some(text),
                }
            }
            _ => {}
        }
    }
    fields.into_package()
}

fn string_at(data: &[u8], offset: usize) -> Option<String> {
    let rest = data.get(offset..)?;
    let end = rest.iter().position(|b| *b == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

#[derive(Default)]
struct Fields {
    name: Option<String>,
    version: Option<String>,
    release: Option<String>,
    epoch: Option<u32>,
    source_rpm: Option<String>,
}

impl Fields {
    fn into_package(self) -> Option<Package> {
        let name = self.name?;
        // The keys rpm imported are stored as packages too.
        if name == "gpg-pubkey" {
            return None;
        }
        let mut version = format!("{}-{}", self.version?, self.release?);
        if let Some(epoch) = self.epoch {
            version = format!("{epoch}:{version}");
        }
        // `openssl-3.0.7-25.el9_3.src.rpm` → `openssl`.
        let source = self
            .source_rpm
            .as_deref()
            .and_then(|s| s.strip_suffix(".src.rpm"))
            .and_then(|s| s.rsplitn(3, '-').nth(2))
            .map(str::to_string)
            .filter(|s| *s != name);
        Some(Package {
            name,
            version,
            source,
            source_version: None,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header blob as rpm writes it, for tests: string tags and an epoch.
    pub(crate) fn header(strings: &[(i32, &str)], epoch: Option<u32>) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (tag, text) in strings {
            index.push((*tag, TYPE_STRING, data.len() as u32));
            data.extend_from_slice(text.as_bytes());
            data.push(0);
        }
        if let Some(e) = epoch {
            while data.len() % 4 != 0 {
                data.push(0);
            }
            index.push((TAG_EPOCH, TYPE_INT32, data.len() as u32));
            data.extend_from_slice(&e.to_be_bytes());
        }
        let mut blob = Vec::new();
        blob.extend_from_slice(&(index.len() as u32).to_be_bytes());
        blob.extend_from_slice(&(data.len() as u32).to_be_bytes());
        for (tag, kind, offset) in index {
            blob.extend_from_slice(&tag.to_be_bytes());
            blob.extend_from_slice(&kind.to_be_bytes());
            blob.extend_from_slice(&offset.to_be_bytes());
            blob.extend_from_slice(&1u32.to_be_bytes());
        }
        blob.extend_from_slice(&data);
        blob
    }

    /// An rpmdb.sqlite holding `blobs`, as bytes.
    pub(crate) fn rpmdb(blobs: &[Vec<u8>]) -> Vec<u8> {
        let file = tempfile::NamedTempFile::new().expect("tmp");
        let conn = Connection::open(file.path()).expect("db");
        conn.execute_batch(
            "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL);",
        )
        .expect("schema");
        for b in blobs {
            conn.execute("INSERT INTO Packages (blob) VALUES (?1)", [b])
                .expect("insert");
        }
        drop(conn);
        std::fs::read(file.path()).expect("read")
    }

    #[test]
    fn headers_give_name_epoch_version_release_and_source() {
        let blob = header(
            &[
                (TAG_NAME, "openssl-libs"),
                (TAG_VERSION, "3.0.7"),
                (TAG_RELEASE, "24.el9"),
                (TAG_SOURCERPM, "openssl-3.0.7-24.el9.src.rpm"),
            ],
            Some(1),
        );
        let p = parse_header(&blob).expect("package");
        assert_eq!(p.name, "openssl-libs");
        assert_eq!(p.version, "1:3.0.7-24.el9");
        assert_eq!(p.source.as_deref(), Some("openssl"));
    }

    #[test]
    fn hostile_headers_are_skipped_not_trusted() {
        let mut blob = header(
            &[(TAG_NAME, "x"), (TAG_VERSION, "1"), (TAG_RELEASE, "1")],
            None,
        );
        assert!(parse_header(&blob).is_some());
        blob[8 + 8..8 + 12].copy_from_slice(&u32::MAX.to_be_bytes()); // an offset far out
        assert!(parse_header(&blob).is_none());
        assert!(parse_header(&[0xff; 8]).is_none(), "absurd entry count");
        assert!(parse_header(&[0, 0]).is_none(), "truncated");
    }

    #[test]
    fn a_sqlite_database_lists_its_packages_without_the_keys() {
        let db = rpmdb(&[
            header(
                &[
                    (TAG_NAME, "bash"),
                    (TAG_VERSION, "5.1.8"),
                    (TAG_RELEASE, "6.el9"),
                ],
                None,
            ),
            header(
                &[
                    (TAG_NAME, "gpg-pubkey"),
                    (TAG_VERSION, "fd431d51"),
                    (TAG_RELEASE, "4ae0493b"),
                ],
                None,
            ),
        ]);
        let packages = packages_of(&db).expect("packages");
        assert_eq!(packages.len(), 1);
        assert_eq!(packages[0].version, "5.1.8-6.el9");
        assert!(packages_of(b"not a database").is_err());
    }
}
