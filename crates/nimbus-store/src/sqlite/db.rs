//! The synchronous SQLite side of [`super::SqliteStore`]: schema, reads, and the write
//! path that commits value, event and revision in one SQLite transaction.
//!
//! Everything here blocks; callers run it on the blocking thread pool while holding the
//! store's connection lock, which also serialises writes so revisions are assigned and
//! handed to [`Durability`] in order.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use super::durable::Durability;
use crate::{Event, EventKind, KeyValue, ListResult, Result, Revision, StoreError};

const SCHEMA_VERSION: i64 = 1;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
-- A rowid table: values are often larger than a WITHOUT ROWID row should be, and
-- point reads measured about three times faster this way.
CREATE TABLE IF NOT EXISTS kv (
    key             BLOB PRIMARY KEY NOT NULL,
    value           BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision    INTEGER NOT NULL
);
-- One row per changed key per revision; replayed by watchers.
-- Delete rows keep the deleted value in prev_value only (value is NULL).
CREATE TABLE IF NOT EXISTS event (
    revision             INTEGER NOT NULL,
    seq                  INTEGER NOT NULL,
    kind                 INTEGER NOT NULL,
    key                  BLOB NOT NULL,
    value                BLOB,
    create_revision      INTEGER NOT NULL,
    prev_value           BLOB,
    prev_create_revision INTEGER,
    prev_mod_revision    INTEGER,
    PRIMARY KEY (revision, seq)
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES
    ('schema_version', 1), ('revision', 0), ('compacted_revision', 0);
";

const KIND_PUT: i64 = 0;
const KIND_DELETE: i64 = 1;

/// Attaches what was being done to a SQLite error.
trait SqlContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> SqlContext<T> for rusqlite::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|err| {
            if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
                // The path is filled in by the store, which knows it.
                StoreError::StorageFull {
                    path: String::new(),
                    detail: format!("{}: {err}", what()),
                }
            } else {
                StoreError::Backend(format!("{}: {err}", what()))
            }
        })
    }
}

/// A position in the event log: everything up to and including `(revision, seq)` has
/// been delivered. `seq == i64::MAX` means all of `revision` has been delivered.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cursor {
    pub revision: Revision,
    pub seq: i64,
}

impl Cursor {
    pub fn after_revision(revision: Revision) -> Self {
        Cursor {
            revision,
            seq: i64::MAX,
        }
    }
}

/// The SQLite connection plus the in-memory copy of the metadata it guards.
pub(super) struct Db {
    conn: Connection,
    revision: Revision,
    compacted: Revision,
    event_count: u64,
    history_limit: u64,
    /// The database file (or `:memory:`), named in errors.
    pub name: String,
    /// Acknowledges commits once on disk and publishes their events.
    pub durability: Arc<Durability>,
}

impl Db {
    pub fn open(path: &Path, history_limit: usize) -> Result<Self> {
        let conn = Connection::open(path)
            .context(|| format!("opening SQLite database {}", path.display()))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .context(|| format!("enabling WAL on {}", path.display()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "SQLite database {} refused WAL mode (journal_mode is {mode:?})",
                path.display()
            )));
        }
        let mut db = Self::init(conn, history_limit, &path.display().to_string())?;
        // The schema was written, so the WAL file exists now.
        db.durability = Arc::new(Durability::for_database(path, db.revision)?);
        Ok(db)
    }

    pub fn open_in_memory(history_limit: usize) -> Result<Self> {
        let conn = Connection::open_in_memory().context(|| "opening in-memory SQLite".into())?;
        Self::init(conn, history_limit, ":memory:")
    }

    fn init(conn: Connection, history_limit: usize, name: &str) -> Result<Self> {
        conn.pragma_update(None, "synchronous", "NORMAL")
            .context(|| format!("setting synchronous=NORMAL on {name}"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .context(|| format!("setting busy timeout on {name}"))?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch(SCHEMA)
            .context(|| format!("creating schema in {name}"))?;
        let version = read_meta(&conn, "schema_version")?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "SQLite database {name} has schema version {version}, newer than the \
                 supported version {SCHEMA_VERSION}"
            )));
        }
        let revision = read_meta(&conn, "revision")?;
        let compacted = read_meta(&conn, "compacted_revision")?;
        let event_count: i64 = conn
            .query_row("SELECT COUNT(*) FROM event", [], |row| row.get(0))
            .context(|| format!("counting events in {name}"))?;
        tracing::debug!(database = name, revision, compacted, "opened SQLite store");
        Ok(Db {
            conn,
            revision,
            compacted,
            event_count: u64::try_from(event_count).unwrap_or(0),
            history_limit: u64::try_from(history_limit.max(1)).unwrap_or(u64::MAX),
            name: name.to_string(),
            durability: Arc::new(Durability::in_memory(revision)),
        })
    }

    pub fn revision(&self) -> Revision {
        self.revision
    }

    pub fn compacted(&self) -> Revision {
        self.compacted
    }

    pub fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        read_kv(&self.conn, key)
    }

    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        // Start at the prefix, or strictly after `start_after` when that lies further on.
        let (lower, lower_op) = match start_after {
            Some(after) if after >= prefix => (after.as_bytes(), ">"),
            _ => (prefix.as_bytes(), ">="),
        };
        let upper = prefix_upper_bound(prefix.as_bytes());
        let upper_clause = if upper.is_some() { "AND key < ?3" } else { "" };
        let sql = format!(
            "SELECT key, value, create_revision, mod_revision FROM kv \
             WHERE key {lower_op} ?1 {upper_clause} ORDER BY key LIMIT ?2"
        );
        // Fetch one extra row to learn whether more keys match.
        let fetch = if limit == 0 {
            -1
        } else {
            i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1)
        };
        let context = || format!("listing keys with prefix {prefix:?} after {start_after:?}");
        let mut stmt = self.conn.prepare_cached(&sql).context(context)?;
        let rows = match &upper {
            Some(upper) => stmt.query_map(params![lower, fetch, upper], kv_from_row),
            None => stmt.query_map(params![lower, fetch], kv_from_row),
        }
        .context(context)?;
        let mut kvs = Vec::new();
        for row in rows {
            kvs.push(row.context(context)??);
        }
        let more = limit != 0 && kvs.len() > limit;
        kvs.truncate(if limit == 0 { kvs.len() } else { limit });
        Ok(ListResult {
            kvs,
            revision: self.revision,
            more,
        })
    }

    /// Keys with `prefix` strictly before `end_before` (when that lies inside the
    /// prefix's range), last key first, at most `limit` (0 = no limit).
    pub fn list_reverse(
        &self,
        prefix: &str,
        end_before: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        let upper = prefix_upper_bound(prefix.as_bytes());
        // The upper end: strictly before `end_before`, or the end of the prefix's range.
        let upper = match (end_before, upper) {
            (Some(before), up) if up.as_deref().is_none_or(|up| before.as_bytes() < up) => {
                Some(before.as_bytes().to_vec())
            }
            (_, up) => up,
        };
        let upper_clause = if upper.is_some() { "AND key < ?3" } else { "" };
        let sql = format!(
            "SELECT key, value, create_revision, mod_revision FROM kv \
             WHERE key >= ?1 {upper_clause} ORDER BY key DESC LIMIT ?2"
        );
        let fetch = if limit == 0 {
            -1
        } else {
            i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1)
        };
        let context =
            || format!("listing keys with prefix {prefix:?} backwards before {end_before:?}");
        let mut stmt = self.conn.prepare_cached(&sql).context(context)?;
        let lower = prefix.as_bytes();
        let rows = match &upper {
            Some(upper) => stmt.query_map(params![lower, fetch, upper], kv_from_row),
            None => stmt.query_map(params![lower, fetch], kv_from_row),
        }
        .context(context)?;
        let mut kvs = Vec::new();
        for row in rows {
            kvs.push(row.context(context)??);
        }
        let more = limit != 0 && kvs.len() > limit;
        kvs.truncate(if limit == 0 { kvs.len() } else { limit });
        Ok(ListResult {
            kvs,
            revision: self.revision,
            more,
        })
    }

    /// Runs `apply` in one SQLite transaction at the next revision. If it records no
    /// change, nothing is written and the revision does not move; otherwise the kv
    /// changes, their events, the new revision and any history trimming commit together
    /// and the events go to [`Durability`], which publishes them once the WAL is synced
    /// (the caller waits for that after releasing the connection).
    pub fn write<T>(&mut self, apply: impl FnOnce(&mut WriteBatch<'_>) -> Result<T>) -> Result<T> {
        let revision = self.revision + 1;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context(|| format!("starting write transaction for revision {revision}"))?;
        let mut batch = WriteBatch {
            tx: &tx,
            revision,
            events: Vec::new(),
        };
        let output = apply(&mut batch)?;
        let events = batch.events;
        if events.is_empty() {
            return Ok(output);
        }
        let context = || format!("committing revision {revision}");
        for (seq, event) in events.iter().enumerate() {
            insert_event(&tx, revision, seq, event).context(context)?;
        }
        write_meta(&tx, "revision", revision)?;
        let event_count = self.event_count + events.len() as u64;
        let (event_count, compacted) = if event_count > self.history_limit {
            trim_history(&tx, event_count, self.history_limit, self.compacted)?
        } else {
            (event_count, self.compacted)
        };
        tx.commit().context(context)?;
        self.revision = revision;
        self.event_count = event_count;
        self.compacted = compacted;
        self.durability.committed(revision, events);
        Ok(output)
    }

    /// Drops history at or below `revision`.
    pub fn compact(&mut self, revision: Revision) -> Result<()> {
        if revision > self.revision {
            return Err(StoreError::Backend(format!(
                "cannot compact to revision {revision}: current revision is only {}",
                self.revision
            )));
        }
        if revision <= self.compacted {
            return Ok(());
        }
        let context = || format!("compacting history to revision {revision}");
        let tx = self.conn.transaction().context(context)?;
        let removed = tx
            .execute("DELETE FROM event WHERE revision <= ?1", [revision])
            .context(context)?;
        write_meta(&tx, "compacted_revision", revision)?;
        tx.commit().context(context)?;
        self.event_count = self.event_count.saturating_sub(removed as u64);
        self.compacted = revision;
        tracing::debug!(revision, removed, "compacted store history");
        Ok(())
    }

    /// Up to `page_size` events for keys under `prefix` after `cursor` and at or below
    /// `head`, in revision order; `Compacted` if part of that range has been dropped.
    pub fn history_page(
        &self,
        prefix: &str,
        cursor: Cursor,
        head: Revision,
        page_size: usize,
    ) -> Result<Vec<(Cursor, Event)>> {
        // A partly delivered revision must still be present in full.
        let available = if cursor.seq == i64::MAX {
            self.compacted <= cursor.revision
        } else {
            self.compacted < cursor.revision
        };
        if !available {
            return Err(StoreError::Compacted {
                requested: cursor.revision,
                compacted: self.compacted,
            });
        }
        let upper = prefix_upper_bound(prefix.as_bytes());
        let upper_clause = if upper.is_some() { "AND key < ?6" } else { "" };
        let sql = format!(
            "SELECT revision, seq, kind, key, value, create_revision, prev_value, \
                    prev_create_revision, prev_mod_revision \
             FROM event WHERE (revision, seq) > (?1, ?2) AND revision <= ?3 \
             AND key >= ?4 {upper_clause} ORDER BY revision, seq LIMIT ?5"
        );
        let context = || format!("reading history for prefix {prefix:?} after {cursor:?}");
        let mut stmt = self.conn.prepare_cached(&sql).context(context)?;
        let limit = i64::try_from(page_size).unwrap_or(i64::MAX);
        let (revision, seq, lower) = (cursor.revision, cursor.seq, prefix.as_bytes());
        let rows = match &upper {
            Some(upper) => stmt.query_map(
                params![revision, seq, head, lower, limit, upper],
                event_from_row,
            ),
            None => stmt.query_map(params![revision, seq, head, lower, limit], event_from_row),
        }
        .context(context)?;
        let mut events = Vec::new();
        for row in rows {
            events.push(row.context(context)??);
        }
        Ok(events)
    }
}

/// The changes of one write, all at `revision`.
pub(super) struct WriteBatch<'a> {
    tx: &'a Transaction<'a>,
    revision: Revision,
    events: Vec<Event>,
}

impl WriteBatch<'_> {
    /// The key's value as of this write so far.
    pub fn current(&self, key: &str) -> Result<Option<KeyValue>> {
        read_kv(self.tx, key)
    }

    pub fn put(&mut self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let prev = self.current(key)?;
        let kv = KeyValue {
            key: key.to_string(),
            value,
            create_revision: prev.as_ref().map_or(self.revision, |p| p.create_revision),
            mod_revision: self.revision,
        };
        self.tx
            .prepare_cached(
                "INSERT INTO kv (key, value, create_revision, mod_revision) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key) DO UPDATE SET \
                 value = excluded.value, create_revision = excluded.create_revision, \
                 mod_revision = excluded.mod_revision",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    kv.key.as_bytes(),
                    kv.value,
                    kv.create_revision,
                    kv.mod_revision
                ])
            })
            .context(|| format!("writing key {key:?} at revision {}", self.revision))?;
        self.events.push(Event {
            kind: EventKind::Put,
            kv: kv.clone(),
            prev,
        });
        Ok(kv)
    }

    /// Deletes the key; returns it as it was just before, or None (and records no
    /// change) if it was absent.
    pub fn delete(&mut self, key: &str) -> Result<Option<KeyValue>> {
        let Some(prev) = self.current(key)? else {
            return Ok(None);
        };
        self.tx
            .prepare_cached("DELETE FROM kv WHERE key = ?1")
            .and_then(|mut stmt| stmt.execute([key.as_bytes()]))
            .context(|| format!("deleting key {key:?} at revision {}", self.revision))?;
        self.events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                mod_revision: self.revision,
                ..prev.clone()
            },
            prev: Some(prev.clone()),
        });
        Ok(Some(prev))
    }
}

/// The smallest byte string greater than every string starting with `prefix`, or None
/// when no such bound exists (empty or all-0xFF prefix).
fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut bound = prefix.to_vec();
    while let Some(last) = bound.pop() {
        if last < u8::MAX {
            bound.push(last + 1);
            return Some(bound);
        }
    }
    None
}

fn read_meta(conn: &Connection, name: &str) -> Result<i64> {
    conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |row| {
        row.get(0)
    })
    .context(|| format!("reading store metadata {name:?}"))
}

fn write_meta(conn: &Connection, name: &str, value: i64) -> Result<()> {
    conn.prepare_cached("UPDATE meta SET value = ?2 WHERE name = ?1")
        .and_then(|mut stmt| stmt.execute(params![name, value]))
        .map(|_| ())
        .context(|| format!("writing store metadata {name:?} = {value}"))
}

fn read_kv(conn: &Connection, key: &str) -> Result<Option<KeyValue>> {
    let context = || format!("reading key {key:?}");
    let mut stmt = conn
        .prepare_cached("SELECT key, value, create_revision, mod_revision FROM kv WHERE key = ?1")
        .context(context)?;
    stmt.query_row([key.as_bytes()], kv_from_row)
        .optional()
        .context(context)?
        .transpose()
}

fn decode_key(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|err| {
        StoreError::Backend(format!(
            "stored key {:?} is not valid UTF-8",
            String::from_utf8_lossy(err.as_bytes())
        ))
    })
}

/// Decodes a kv row; the inner Result carries a key that is not UTF-8.
fn kv_from_row(row: &Row<'_>) -> rusqlite::Result<Result<KeyValue>> {
    let key: Vec<u8> = row.get(0)?;
    let (value, create_revision, mod_revision) = (row.get(1)?, row.get(2)?, row.get(3)?);
    Ok(decode_key(key).map(|key| KeyValue {
        key,
        value,
        create_revision,
        mod_revision,
    }))
}

/// Decodes an event row; the inner Result carries malformed stored data.
fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Result<(Cursor, Event)>> {
    let revision: Revision = row.get(0)?;
    let seq: i64 = row.get(1)?;
    let kind: i64 = row.get(2)?;
    let key: Vec<u8> = row.get(3)?;
    let value: Option<Vec<u8>> = row.get(4)?;
    let create_revision: Revision = row.get(5)?;
    let prev_value: Option<Vec<u8>> = row.get(6)?;
    let prev_create_revision: Option<Revision> = row.get(7)?;
    let prev_mod_revision: Option<Revision> = row.get(8)?;
    let cursor = Cursor { revision, seq };
    Ok(decode_key(key).and_then(|key| {
        let prev = match (prev_value, prev_create_revision, prev_mod_revision) {
            (Some(value), Some(create_revision), Some(mod_revision)) => Some(KeyValue {
                key: key.clone(),
                value,
                create_revision,
                mod_revision,
            }),
            _ => None,
        };
        let (kind, value) = match (kind, value, &prev) {
            (KIND_PUT, Some(value), _) => (EventKind::Put, value),
            (KIND_DELETE, None, Some(prev)) => (EventKind::Delete, prev.value.clone()),
            _ => {
                return Err(StoreError::Backend(format!(
                    "malformed event for key {key:?} at revision {revision} (kind {kind})"
                )))
            }
        };
        let kv = KeyValue {
            key,
            value,
            create_revision,
            mod_revision: revision,
        };
        Ok((cursor, Event { kind, kv, prev }))
    }))
}

fn insert_event(
    tx: &Transaction<'_>,
    revision: Revision,
    seq: usize,
    event: &Event,
) -> rusqlite::Result<()> {
    let (kind, value) = match event.kind {
        EventKind::Put => (KIND_PUT, Some(&event.kv.value)),
        EventKind::Delete => (KIND_DELETE, None),
    };
    let prev = event.prev.as_ref();
    let mut stmt = tx.prepare_cached(
        "INSERT INTO event (revision, seq, kind, key, value, create_revision, prev_value, \
                            prev_create_revision, prev_mod_revision) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    stmt.execute(params![
        revision,
        i64::try_from(seq).unwrap_or(i64::MAX),
        kind,
        event.kv.key.as_bytes(),
        value,
        event.kv.create_revision,
        prev.map(|p| &p.value),
        prev.map(|p| p.create_revision),
        prev.map(|p| p.mod_revision),
    ])?;
    Ok(())
}

/// Drops the oldest whole revisions until at most `limit` events remain. Returns the new
/// event count and compacted revision.
fn trim_history(
    tx: &Transaction<'_>,
    event_count: u64,
    limit: u64,
    compacted: Revision,
) -> Result<(u64, Revision)> {
    let excess = event_count - limit;
    let context = || format!("trimming event history to {limit} events");
    let cut: Revision = tx
        .query_row(
            "SELECT revision FROM event ORDER BY revision, seq LIMIT 1 OFFSET ?1",
            [i64::try_from(excess - 1).unwrap_or(i64::MAX)],
            |row| row.get(0),
        )
        .context(context)?;
    let removed = tx
        .execute("DELETE FROM event WHERE revision <= ?1", [cut])
        .context(context)?;
    let compacted = compacted.max(cut);
    write_meta(tx, "compacted_revision", compacted)?;
    tracing::debug!(compacted, removed, "trimmed store history to its limit");
    Ok((event_count.saturating_sub(removed as u64), compacted))
}

#[cfg(test)]
mod tests {
    use super::prefix_upper_bound;

    #[test]
    fn prefix_upper_bound_increments_last_byte_below_max() {
        assert_eq!(prefix_upper_bound(b"/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_upper_bound(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_upper_bound(b"\xff"), None);
        assert_eq!(prefix_upper_bound(b""), None);
    }
}
