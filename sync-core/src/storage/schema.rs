//! The document store's own schema version and its migrations.
//!
//! The store shares its database with other components (the server keeps its
//! projections next to the documents and runs its own migrations through
//! `rusqlite_migration`, which owns `PRAGMA user_version`). So the store keeps
//! its version in its own table, `doc_store_meta`, under the key
//! `schema_version`, and never reads or writes `user_version`.
//!
//! Migrations are numbered SQL files compiled into the binary. They are
//! append-only: a released file never changes; a new version is one more file
//! appended to [`MIGRATIONS`].

use rusqlite::{Connection, OptionalExtension};

use super::{StorageError, with_savepoint};

/// Every migration, in order; entry `i` takes the schema from version `i` to
/// version `i + 1`. Append only.
const MIGRATIONS: &[&str] = &[include_str!("migrations/0001_documents.sql")];

/// The newest document-store schema version this code knows.
// The cast cannot wrap: the list is a handful of compiled-in entries.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const META_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS doc_store_meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value ANY
) STRICT";

const VERSION_KEY: &str = "schema_version";

/// Brings the document store's tables up to [`SCHEMA_VERSION`].
///
/// Idempotent: running it on an up-to-date database changes nothing. Refuses
/// ([`StorageError::NewerSchema`]) a database written by a newer version of
/// this code, since an older program could misread or damage its tables.
///
/// Runs in its own `BEGIN IMMEDIATE` transaction when `conn` is in
/// autocommit mode, or in a savepoint of the caller's open transaction, so a
/// failing migration leaves the database as it was.
pub fn migrate(conn: &Connection) -> Result<(), StorageError> {
    if conn.is_autocommit() {
        // IMMEDIATE takes the write lock up front, so two processes starting
        // at once cannot both read version N and both try to migrate.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        match migrate_inner(conn) {
            Ok(()) => {
                conn.execute_batch("COMMIT")?;
                Ok(())
            }
            Err(e) => {
                // The migration error is the one worth reporting; if the
                // rollback fails too, SQLite has already ended the transaction.
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    } else {
        with_savepoint(conn, || migrate_inner(conn))
    }
}

/// The document store's schema version in `conn`: 0 when the store was never
/// set up there.
pub fn schema_version(conn: &Connection) -> Result<i64, StorageError> {
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'doc_store_meta')",
        [],
        |row| row.get(0),
    )?;
    if !has_meta {
        return Ok(0);
    }
    read_version(conn)
}

fn read_version(conn: &Connection) -> Result<i64, StorageError> {
    let value: Option<rusqlite::types::Value> = conn
        .query_row(
            "SELECT value FROM doc_store_meta WHERE key = ?1",
            [VERSION_KEY],
            |row| row.get(0),
        )
        .optional()?;
    match value {
        None => Ok(0),
        Some(rusqlite::types::Value::Integer(v)) if v >= 0 => Ok(v),
        Some(other) => Err(StorageError::BadSchemaVersion(format!("{other:?}"))),
    }
}

fn migrate_inner(conn: &Connection) -> Result<(), StorageError> {
    conn.execute_batch(META_TABLE_SQL)?;
    let found = read_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StorageError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    // `found` is in 0..=SCHEMA_VERSION here, so it fits a usize.
    let done = usize::try_from(found).unwrap_or(MIGRATIONS.len());
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        conn.execute_batch(sql)?;
        let version = i64::try_from(index + 1).unwrap_or(SCHEMA_VERSION);
        conn.execute(
            "INSERT INTO doc_store_meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            rusqlite::params![VERSION_KEY, version],
        )?;
    }
    Ok(())
}
