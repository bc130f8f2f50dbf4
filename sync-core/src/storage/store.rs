//! [`DocStore`]: the document store on a connection of its own, for the
//! tablet, tools and tests. The server composes the free functions of
//! [`crate::storage`] in its own transactions instead.

use std::path::Path;
use std::time::Duration;

use automerge::{Automerge, Change};
use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::{
    AppendOutcome, CompactionPolicy, DocStats, RawDocument, SnapshotOutcome, StorageError,
    StorageLimits,
};
use crate::ids::DocumentId;

/// How long a connection waits for another writer's lock before failing
/// with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets the PRAGMAs a standalone document database needs: WAL (readers do
/// not block the writer), `synchronous=FULL` (a committed write survives
/// power loss, which a tablet's battery makes likely), foreign keys on, and
/// a busy timeout. The server's own connection setup should match.
pub fn configure_connection(conn: &Connection) -> Result<(), StorageError> {
    // journal_mode answers with the mode in force; an in-memory database
    // stays "memory", which is fine.
    let _mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(())
}

/// A document store owning its connection. Opening configures the
/// connection ([`configure_connection`]) and runs [`super::migrate`]. Every
/// write method runs in a transaction of its own and commits before
/// returning; use [`DocStore::transaction`] to group several writes.
#[derive(Debug)]
pub struct DocStore {
    conn: Connection,
    limits: StorageLimits,
}

impl DocStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::setup(Connection::open(path)?)
    }

    /// A store in memory, gone when dropped.
    pub fn open_in_memory() -> Result<Self, StorageError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(conn: Connection) -> Result<Self, StorageError> {
        configure_connection(&conn)?;
        super::migrate(&conn)?;
        Ok(Self {
            conn,
            limits: StorageLimits::default(),
        })
    }

    /// Replaces the load limits.
    pub fn with_limits(mut self, limits: StorageLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &StorageLimits {
        &self.limits
    }

    /// The underlying connection, for reads and for the free functions.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE`, so it never fails later
    /// on upgrading a read lock). Pass `&tx` to the free functions; nothing
    /// is stored until `tx.commit()`.
    pub fn transaction(&mut self) -> Result<Transaction<'_>, StorageError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// See [`super::load_with_limits`]; uses this store's limits.
    pub fn load(&self, doc_id: DocumentId) -> Result<Option<Automerge>, StorageError> {
        super::load_with_limits(&self.conn, doc_id, &self.limits)
    }

    /// See [`super::load_raw`]; uses this store's limits.
    pub fn load_raw(&self, doc_id: DocumentId) -> Result<Option<RawDocument>, StorageError> {
        super::load_raw(&self.conn, doc_id, &self.limits)
    }

    pub fn exists(&self, doc_id: DocumentId) -> Result<bool, StorageError> {
        super::exists(&self.conn, doc_id)
    }

    pub fn kind(&self, doc_id: DocumentId) -> Result<Option<String>, StorageError> {
        super::kind(&self.conn, doc_id)
    }

    pub fn list(&self) -> Result<Vec<(DocumentId, String)>, StorageError> {
        super::list(&self.conn)
    }

    pub fn list_by_kind(&self, kind: &str) -> Result<Vec<DocumentId>, StorageError> {
        super::list_by_kind(&self.conn, kind)
    }

    pub fn stats(&self, doc_id: DocumentId) -> Result<Option<DocStats>, StorageError> {
        super::stats(&self.conn, doc_id)
    }

    pub fn needs_compaction(
        &self,
        doc_id: DocumentId,
        policy: &CompactionPolicy,
    ) -> Result<bool, StorageError> {
        super::needs_compaction(&self.conn, doc_id, policy)
    }

    /// See [`super::append_changes`]; commits before returning.
    pub fn append_changes(
        &mut self,
        doc_id: DocumentId,
        kind: &str,
        changes: &[Change],
        now_ms: i64,
    ) -> Result<AppendOutcome, StorageError> {
        let tx = self.transaction()?;
        let outcome = super::append_changes(&tx, doc_id, kind, changes, now_ms)?;
        tx.commit()?;
        Ok(outcome)
    }

    /// See [`super::save_snapshot`]; commits before returning.
    pub fn save_snapshot(
        &mut self,
        doc_id: DocumentId,
        kind: &str,
        doc: &Automerge,
        now_ms: i64,
    ) -> Result<SnapshotOutcome, StorageError> {
        let tx = self.transaction()?;
        let outcome = super::save_snapshot(&tx, doc_id, kind, doc, now_ms)?;
        tx.commit()?;
        Ok(outcome)
    }

    /// See [`super::compact`]; commits before returning.
    pub fn compact(&mut self, doc_id: DocumentId) -> Result<Option<SnapshotOutcome>, StorageError> {
        let limits = self.limits;
        let tx = self.transaction()?;
        let outcome = super::compact(&tx, doc_id, &limits)?;
        tx.commit()?;
        Ok(outcome)
    }

    /// Compacts when `policy` asks for it; `None` when nothing was done.
    pub fn compact_if_needed(
        &mut self,
        doc_id: DocumentId,
        policy: &CompactionPolicy,
    ) -> Result<Option<SnapshotOutcome>, StorageError> {
        if self.needs_compaction(doc_id, policy)? {
            self.compact(doc_id)
        } else {
            Ok(None)
        }
    }

    /// See [`super::delete`]; commits before returning.
    pub fn delete(&mut self, doc_id: DocumentId) -> Result<bool, StorageError> {
        let tx = self.transaction()?;
        let existed = super::delete(&tx, doc_id)?;
        tx.commit()?;
        Ok(existed)
    }
}
