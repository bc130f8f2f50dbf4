//! The server's schema: numbered, append-only SQL files compiled into the
//! binary and applied with `rusqlite_migration` (which tracks them in SQLite's
//! `user_version`).
//!
//! Never edit or reorder a released file; add the next number instead. The
//! document store of `sync-core` shares the database file but keeps its own
//! version table, so the two schemas evolve independently.

use rusqlite_migration::{M, Migrations};

/// Every migration, in order. Index + 1 is the schema version it leads to.
const MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("../../migrations/0001_accounts.sql")),
    M::up(include_str!("../../migrations/0002_reference_data.sql")),
    M::up(include_str!("../../migrations/0003_audit_log.sql")),
    M::up(include_str!("../../migrations/0004_templates.sql")),
    M::up(include_str!("../../migrations/0005_documents.sql")),
    M::up(include_str!("../../migrations/0006_blobs.sql")),
    M::up(include_str!("../../migrations/0007_actors.sql")),
];

/// The server's migrations.
pub fn migrations() -> Migrations<'static> {
    Migrations::from_slice(MIGRATIONS)
}

/// The schema version this binary brings a database to.
pub fn latest_version() -> usize {
    MIGRATIONS.len()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    #[test]
    fn latest_version_matches_the_files() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        migrations().to_latest(&mut conn).unwrap();
        let v: usize = migrations().current_version(&conn).unwrap().into();
        assert_eq!(v, latest_version());
    }
}
