//! The offline vulnerability database: an OSV export (a zip of OSV JSON records)
//! validated whole, then indexed into one SQLite file that replaces the previous one
//! by rename. Lookups are by (ecosystem, package name).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::error::{ImportError, ScanError};
use crate::osv::{self, AffectedPackage};

/// The index file inside the database directory.
const INDEX_FILE: &str = "osv.sqlite";
/// Largest OSV record accepted (real ones are a few KiB; the biggest ~1 MiB).
pub const MAX_RECORD_BYTES: u64 = 8 << 20;
/// Most entries in one archive (OSV's largest ecosystem export has ~200,000).
pub const MAX_ENTRIES: usize = 2_000_000;

/// What an import indexed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImportSummary {
    pub digest: String,
    pub records: u64,
    pub skipped_records: u64,
    /// Indexed package entries per ecosystem.
    pub ecosystems: BTreeMap<String, u64>,
}

/// Validates every record of the zip at `zip_path` and installs the new index in
/// `dir`; the old index stays untouched on any error. `digest` names the upload.
pub fn import_zip(dir: &Path, zip_path: &Path, digest: &str) -> Result<ImportSummary, ImportError> {
    std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, &e))?;
    let staging = dir.join(format!("{INDEX_FILE}.importing-{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let result = build_index(&staging, zip_path, digest);
    match result {
        Ok(summary) => {
            let live = dir.join(INDEX_FILE);
            std::fs::rename(&staging, &live).map_err(|e| io_error("install", &live, &e))?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            Err(e)
        }
    }
}

fn io_error(action: &'static str, path: &Path, e: &dyn std::fmt::Display) -> ImportError {
    ImportError::Io {
        action,
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn build_index(
    staging: &Path,
    zip_path: &Path,
    digest: &str,
) -> Result<ImportSummary, ImportError> {
    let file = std::fs::File::open(zip_path).map_err(|e| io_error("open", zip_path, &e))?;
    let mut archive =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| ImportError::NotZip {
            reason: e.to_string(),
        })?;
    if archive.len() > MAX_ENTRIES {
        return Err(ImportError::TooManyEntries { limit: MAX_ENTRIES });
    }
    let db_error = |e: rusqlite::Error| io_error("write", staging, &e);
    let mut conn = Connection::open(staging).map_err(db_error)?;
    conn.execute_batch(
        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
         CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE affected (ecosystem TEXT NOT NULL, package TEXT NOT NULL, data TEXT NOT NULL);",
    )
    .map_err(db_error)?;
    let mut summary = ImportSummary {
        digest: digest.to_string(),
        ..ImportSummary::default()
    };
    let tx = conn.transaction().map_err(db_error)?;
    {
        let mut insert = tx
            .prepare("INSERT INTO affected (ecosystem, package, data) VALUES (?1, ?2, ?3)")
            .map_err(db_error)?;
        let mut buffer = Vec::new();
        for i in 0..archive.len() {
            let Some(entry) = read_entry(&mut archive, i, &mut buffer)? else {
                continue;
            };
            let parsed = osv::parse_record(&buffer).map_err(|reason| ImportError::BadRecord {
                entry: entry.clone(),
                reason,
            })?;
            summary.records += 1;
            if parsed.packages.is_empty() {
                summary.skipped_records += 1;
            }
            for package in &parsed.packages {
                let data =
                    serde_json::to_string(package).map_err(|e| io_error("encode", staging, &e))?;
                insert
                    .execute(params![package.ecosystem, package.package, data])
                    .map_err(db_error)?;
                *summary
                    .ecosystems
                    .entry(package.ecosystem.clone())
                    .or_default() += 1;
            }
        }
    }
    if summary.records == 0 {
        return Err(ImportError::Empty);
    }
    tx.execute_batch("CREATE INDEX affected_by_package ON affected (ecosystem, package);")
        .map_err(db_error)?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('digest', ?1)",
        params![digest],
    )
    .map_err(db_error)?;
    tx.commit().map_err(db_error)?;
    conn.execute_batch("PRAGMA synchronous=FULL; VACUUM;")
        .map_err(db_error)?;
    drop(conn);
    let file = std::fs::File::open(staging).map_err(|e| io_error("open", staging, &e))?;
    file.sync_all().map_err(|e| io_error("sync", staging, &e))?;
    Ok(summary)
}

/// Reads zip entry `i` into `buffer`; `None` for directories and non-JSON files.
fn read_entry<R: std::io::Read + std::io::Seek>(
    archive: &mut zip::ZipArchive<R>,
    i: usize,
    buffer: &mut Vec<u8>,
) -> Result<Option<String>, ImportError> {
    let entry = archive.by_index(i).map_err(|e| ImportError::NotZip {
        reason: format!("entry {i}: {e}"),
    })?;
    let name = entry
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| format!("#{i}"));
    if entry.is_dir() || !name.ends_with(".json") {
        return Ok(None);
    }
    if entry.size() > MAX_RECORD_BYTES {
        return Err(ImportError::EntryTooLarge {
            entry: name,
            limit: MAX_RECORD_BYTES,
        });
    }
    buffer.clear();
    // The declared size may lie: cap what is decompressed as well.
    entry
        .take(MAX_RECORD_BYTES + 1)
        .read_to_end(buffer)
        .map_err(|e| ImportError::BadRecord {
            entry: name.clone(),
            reason: format!("cannot be decompressed: {e}"),
        })?;
    if buffer.len() as u64 > MAX_RECORD_BYTES {
        return Err(ImportError::EntryTooLarge {
            entry: name,
            limit: MAX_RECORD_BYTES,
        });
    }
    Ok(Some(name))
}

/// An installed index, opened read-only.
pub struct VulnIndex {
    conn: Connection,
    path: PathBuf,
    digest: String,
}

impl VulnIndex {
    /// The index in `dir`, or `None` if nothing was imported on this server.
    pub fn open(dir: &Path) -> Result<Option<VulnIndex>, ScanError> {
        let path = dir.join(INDEX_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let err = |e: rusqlite::Error| ScanError::Database {
            path: path.clone(),
            reason: e.to_string(),
        };
        let conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
        let digest: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'digest'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        Ok(Some(VulnIndex {
            conn,
            digest: digest.unwrap_or_default(),
            path,
        }))
    }

    /// `sha256:` of the zip this index was built from.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The advisories naming `package` in `ecosystem`.
    pub fn advisories(
        &self,
        ecosystem: &str,
        package: &str,
    ) -> Result<Vec<AffectedPackage>, ScanError> {
        let err = |e: &dyn std::fmt::Display| ScanError::Database {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let mut query = self
            .conn
            .prepare_cached("SELECT data FROM affected WHERE ecosystem = ?1 AND package = ?2")
            .map_err(|e| err(&e))?;
        let rows = query
            .query_map(params![ecosystem, package], |r| r.get::<_, String>(0))
            .map_err(|e| err(&e))?;
        let mut found = Vec::new();
        for row in rows {
            let data = row.map_err(|e| err(&e))?;
            found.push(serde_json::from_str(&data).map_err(|e| err(&e))?);
        }
        Ok(found)
    }
}
