//! SQLite storage of automerge documents, shared by the server and the tablet.
//!
//! # Layout
//!
//! Each document is stored as one **snapshot** (the output of
//! [`Automerge::save`], compressed and columnar) plus the **incremental
//! changes** that arrived since, one row per change:
//!
//! | table | holds |
//! |---|---|
//! | `doc_store_documents` | per document: kind, snapshot, the snapshot's heads, count and size of the incremental rows, `updated_at` (milliseconds, supplied by the caller) |
//! | `doc_store_changes` | per incremental change: arrival order, hash, actor and actor sequence number, raw bytes |
//! | `doc_store_snapshot_clock` | per document and actor: the highest sequence number inside the snapshot |
//! | `doc_store_meta` | the store's own schema version (see [`migrate`]) |
//!
//! The tables carry a `doc_store_` prefix because they live in a database
//! shared with other components (the server's projections).
//!
//! # Why snapshot plus changes
//!
//! Saving a whole document on every edit costs O(document) per change; a log
//! of changes alone makes loading slow and the database large. Appending a
//! change is one small insert, and loading is one snapshot load plus applying
//! the few changes since. When the incremental rows pass a
//! [`CompactionPolicy`] (by default more than 256 changes or 1 MiB), the
//! caller runs [`compact`]: load, write a fresh snapshot, drop the rows the
//! snapshot now contains. Rows it does not contain (a change whose
//! dependencies have not arrived yet) are kept, so compaction never loses a
//! change. Appending a change that is already stored, as a row or inside the
//! snapshot, is a no-op.
//!
//! # Transactions and crash safety
//!
//! Every write function takes a `&Connection` that must be inside an open
//! transaction (a [`rusqlite::Transaction`] derefs to one); it refuses to run
//! in autocommit mode ([`StorageError::NoTransaction`]). This is how the
//! server writes a document's bytes and its projection rows in one
//! transaction, and batches many documents into one commit (group commit).
//! Each call also runs inside its own savepoint, so a call that fails half-way
//! leaves nothing behind even if the caller goes on to commit the rest of its
//! batch. A crash before commit loses the whole transaction and nothing else;
//! with `synchronous=FULL` (set by [`DocStore`] and expected of the server), a
//! committed write survives power loss. The snapshot and the deletion of the
//! rows it absorbed are committed together, so no crash can leave a change
//! in neither place.
//!
//! # Hostile or damaged data
//!
//! Reads distinguish "not found" (`Ok(None)`) from "broken"
//! ([`StorageError::Corrupt`] for one document's bad bytes,
//! [`StorageError::Sqlite`] for the database itself). Loading checks the
//! stored size against [`StorageLimits`] before reading any bytes, checks
//! every change's hash and the snapshot's heads, and runs automerge inside
//! [`std::panic::catch_unwind`], since automerge has panicked on malformed
//! input before.
//!
//! Writes trust that changes were already applied to the in-memory document
//! (the server validates every change before storing it). They still refuse
//! a change that claims an actor sequence number already taken by a
//! different change, because automerge would refuse to load the document.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use automerge::{Automerge, ReadDoc, transaction::Transactable};
//! use sync_core::{DocumentId, storage::DocStore};
//!
//! let mut doc = Automerge::new();
//! let mut tx = doc.transaction();
//! tx.put(automerge::ROOT, "kind", "inspection")?;
//! tx.commit();
//!
//! let mut store = DocStore::open_in_memory()?;
//! let id = DocumentId::from_bytes([1; 16]);
//! let changes = doc.get_changes(&[]);
//! store.append_changes(id, "inspection", &changes, 1_700_000_000_000)?;
//!
//! let loaded = store.load(id)?.ok_or("document missing")?;
//! assert_eq!(loaded.get_heads(), doc.get_heads());
//! # Ok(())
//! # }
//! ```

mod schema;
mod store;

use std::any::Any;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::{Automerge, Change, ChangeHash};
use rusqlite::{Connection, OptionalExtension, params};

use crate::ids::DocumentId;

pub use schema::{SCHEMA_VERSION, migrate, schema_version};
pub use store::{DocStore, configure_connection};

/// Default for [`StorageLimits::max_document_bytes`]: 256 MiB.
pub const DEFAULT_MAX_DOCUMENT_BYTES: u64 = 256 * 1024 * 1024;

/// Longest accepted document kind, in bytes. Kinds are short names such as
/// `inspection`; anything longer is a caller bug.
pub const MAX_KIND_LEN: usize = 64;

/// Name of the savepoint every store call runs in. Savepoints nest, so the
/// same name is safe when calls are composed.
const SAVEPOINT: &str = "doc_store";

/// What went wrong in the document store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database itself failed (I/O, locking, disk full, bad SQL).
    #[error(
        "document database error: {0}; check that the database file is reachable, writable and the disk is not full"
    )]
    Sqlite(#[from] rusqlite::Error),

    /// One document's stored bytes cannot be loaded.
    #[error(
        "stored document {doc_id} is corrupt: {detail}; restore it from a backup or fetch it again from a peer that has it"
    )]
    Corrupt { doc_id: DocumentId, detail: String },

    /// The database was written by a newer version of this program.
    #[error(
        "the document store schema is version {found}, but this program knows only up to version {supported}; run a newer program (never downgrade a database)"
    )]
    NewerSchema { found: i64, supported: i64 },

    /// The store's version record holds something other than a version.
    #[error(
        "the document store's schema version record is unreadable ({0}); the doc_store_meta table was modified by hand, restore it from a backup"
    )]
    BadSchemaVersion(String),

    /// A stored document is larger than the configured limit.
    #[error(
        "stored document {doc_id} takes {size} bytes, over the limit of {limit}; if the document is legitimate, raise the maximum document size"
    )]
    TooLarge {
        doc_id: DocumentId,
        size: u64,
        limit: u64,
    },

    /// The document exists with another kind; kinds never change.
    #[error(
        "document {doc_id} is stored as kind {stored:?}, not {given:?}; a document's kind never changes, so check which document is being written"
    )]
    KindMismatch {
        doc_id: DocumentId,
        stored: String,
        given: String,
    },

    /// The kind is empty or too long.
    #[error("document kind {0:?} is invalid; use a non-empty name of at most 64 bytes")]
    InvalidKind(String),

    /// A second, different change claims an actor sequence number.
    #[error(
        "document {doc_id} already holds a different change numbered {seq} from actor {actor}; the sending device reused an actor id, so refuse its change and have it start a new actor"
    )]
    ConflictingChange {
        doc_id: DocumentId,
        actor: String,
        seq: u64,
    },

    /// The snapshot to save lacks changes that the stored snapshot has.
    #[error(
        "the snapshot offered for document {doc_id} lacks changes the stored snapshot already has; load the stored document, merge into it, then save"
    )]
    StaleSnapshot { doc_id: DocumentId },

    /// A write was attempted outside a transaction.
    #[error(
        "document store writes must run inside an open transaction; call them with a rusqlite Transaction so a failure can be rolled back"
    )]
    NoTransaction,
}

/// Bounds applied when loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageLimits {
    /// Largest document (snapshot plus incremental bytes) that will be read
    /// into memory. Loading a larger one fails with
    /// [`StorageError::TooLarge`] before any bytes are read.
    pub max_document_bytes: u64,
}

impl Default for StorageLimits {
    fn default() -> Self {
        Self {
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
        }
    }
}

/// When a document's incremental rows should be folded into its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Compact when there are more incremental changes than this.
    pub max_changes: usize,
    /// Compact when the incremental changes take more bytes than this.
    pub max_incremental_bytes: u64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self {
            max_changes: 256,
            max_incremental_bytes: 1024 * 1024,
        }
    }
}

impl CompactionPolicy {
    fn exceeded(&self, change_count: u64, bytes_incremental: u64) -> bool {
        change_count > u64::try_from(self.max_changes).unwrap_or(u64::MAX)
            || bytes_incremental > self.max_incremental_bytes
    }
}

/// Size and bookkeeping of one stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocStats {
    pub kind: String,
    /// Bytes of the snapshot (0 before the first compaction).
    pub snapshot_bytes: u64,
    /// Incremental changes not yet in the snapshot.
    pub change_count: u64,
    /// Bytes of those incremental changes.
    pub bytes_incremental: u64,
    /// The `now_ms` of the last write that added content.
    pub updated_at_ms: i64,
}

impl DocStats {
    /// Whether `policy` asks for this document to be compacted.
    pub fn needs_compaction(&self, policy: &CompactionPolicy) -> bool {
        policy.exceeded(self.change_count, self.bytes_incremental)
    }
}

/// Result of [`append_changes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Changes stored by this call.
    pub new_changes: usize,
    /// Changes skipped because they were already stored.
    pub duplicates: usize,
    /// Incremental changes of the document after the call.
    pub change_count: u64,
    /// Bytes of those incremental changes after the call.
    pub bytes_incremental: u64,
}

impl AppendOutcome {
    /// Whether `policy` asks for the document to be compacted now.
    pub fn needs_compaction(&self, policy: &CompactionPolicy) -> bool {
        policy.exceeded(self.change_count, self.bytes_incremental)
    }
}

/// Result of [`save_snapshot`] and [`compact`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotOutcome {
    /// Bytes of the new snapshot.
    pub snapshot_bytes: u64,
    /// Incremental rows dropped because the snapshot contains them.
    pub removed_changes: u64,
    /// Incremental rows kept because the snapshot lacks them (their
    /// dependencies have not arrived yet).
    pub kept_changes: u64,
}

/// A document's stored bytes, unparsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDocument {
    pub kind: String,
    /// [`Automerge::save`] output, if a snapshot was written.
    pub snapshot: Option<Vec<u8>>,
    /// Heads recorded with the snapshot (sorted).
    pub snapshot_heads: Vec<ChangeHash>,
    /// Incremental changes in arrival order.
    pub changes: Vec<RawChange>,
}

/// One stored incremental change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChange {
    pub hash: ChangeHash,
    pub data: Vec<u8>,
}

impl RawDocument {
    /// Builds the automerge document: the snapshot, then every incremental
    /// change. Any parse failure, hash mismatch or automerge panic becomes
    /// [`StorageError::Corrupt`] naming `doc_id`.
    pub fn materialize(&self, doc_id: DocumentId) -> Result<Automerge, StorageError> {
        // Automerge has panicked on malformed input before; a panic here must
        // become an error for this one document, not take the process down.
        let result = catch_unwind(AssertUnwindSafe(|| self.materialize_inner()));
        match result {
            Ok(Ok(doc)) => Ok(doc),
            Ok(Err(detail)) => Err(StorageError::Corrupt { doc_id, detail }),
            Err(payload) => Err(StorageError::Corrupt {
                doc_id,
                detail: format!(
                    "automerge panicked while loading: {}",
                    panic_text(&*payload)
                ),
            }),
        }
    }

    fn materialize_inner(&self) -> Result<Automerge, String> {
        let mut doc = match &self.snapshot {
            Some(bytes) => {
                let doc = Automerge::load(bytes)
                    .map_err(|e| format!("the snapshot does not load ({e})"))?;
                let mut expected = self.snapshot_heads.clone();
                expected.sort_unstable();
                // Catches a snapshot that was swapped, truncated into another
                // valid document, or written for a different document.
                if doc.get_heads() != expected {
                    return Err(
                        "the snapshot's heads differ from the heads recorded with it".into(),
                    );
                }
                doc
            }
            None if self.snapshot_heads.is_empty() => Automerge::new(),
            None => return Err("heads are recorded but the snapshot is missing".into()),
        };
        let mut changes = Vec::with_capacity(self.changes.len());
        for (index, raw) in self.changes.iter().enumerate() {
            let change = Change::try_from(raw.data.as_slice())
                .map_err(|e| format!("incremental change #{index} does not parse ({e})"))?;
            if change.hash() != raw.hash {
                return Err(format!(
                    "incremental change #{index} hashes to {} but is stored as {}",
                    change.hash(),
                    raw.hash
                ));
            }
            changes.push(change);
        }
        // One batch: automerge orders the changes by their dependencies, so
        // arrival order does not matter; changes whose dependencies are absent
        // stay queued inside the document.
        doc.apply_changes(changes)
            .map_err(|e| format!("the incremental changes do not apply ({e})"))?;
        Ok(doc)
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic".to_owned()
    }
}

/// Runs `f` inside a savepoint: released on success, rolled back on error, so
/// a failing call leaves no partial writes even inside a longer transaction.
/// In autocommit mode the savepoint is a transaction of its own, which also
/// gives reads a consistent view across several statements.
fn with_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce() -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    conn.execute_batch(&format!("SAVEPOINT {SAVEPOINT}"))?;
    match f() {
        Ok(value) => {
            conn.execute_batch(&format!("RELEASE {SAVEPOINT}"))?;
            Ok(value)
        }
        Err(e) => {
            // Report the original failure. If the rollback fails as well,
            // SQLite has already rolled back the whole transaction (it does
            // for some I/O errors), which leaves nothing half-written either.
            let _ = conn.execute_batch(&format!("ROLLBACK TO {SAVEPOINT}; RELEASE {SAVEPOINT}"));
            Err(e)
        }
    }
}

fn require_transaction(conn: &Connection) -> Result<(), StorageError> {
    if conn.is_autocommit() {
        Err(StorageError::NoTransaction)
    } else {
        Ok(())
    }
}

fn check_kind(kind: &str) -> Result<(), StorageError> {
    if kind.is_empty() || kind.len() > MAX_KIND_LEN {
        Err(StorageError::InvalidKind(
            kind.chars().take(MAX_KIND_LEN).collect(),
        ))
    } else {
        Ok(())
    }
}

/// SQLite integers are signed; the counts and sizes stored are never
/// negative (CHECK constraints), so clamp rather than fail.
fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn to_i64<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

fn encode_heads(heads: &[ChangeHash]) -> Vec<u8> {
    heads.iter().flat_map(|h| h.0).collect()
}

fn decode_heads(doc_id: DocumentId, bytes: &[u8]) -> Result<Vec<ChangeHash>, StorageError> {
    let chunks = bytes.chunks_exact(32);
    if !chunks.remainder().is_empty() {
        return Err(StorageError::Corrupt {
            doc_id,
            detail: format!(
                "recorded snapshot heads are {} bytes, not a multiple of 32",
                bytes.len()
            ),
        });
    }
    Ok(chunks
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            ChangeHash(h)
        })
        .collect())
}

fn decode_hash(doc_id: DocumentId, bytes: &[u8]) -> Result<ChangeHash, StorageError> {
    <[u8; 32]>::try_from(bytes)
        .map(ChangeHash)
        .map_err(|_| StorageError::Corrupt {
            doc_id,
            detail: format!("a stored change hash is {} bytes, not 32", bytes.len()),
        })
}

// ---------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------

/// Loads a document with the default [`StorageLimits`]. `Ok(None)` when it
/// is not stored.
pub fn load(conn: &Connection, doc_id: DocumentId) -> Result<Option<Automerge>, StorageError> {
    load_with_limits(conn, doc_id, &StorageLimits::default())
}

/// Loads a document: its snapshot with every incremental change applied.
pub fn load_with_limits(
    conn: &Connection,
    doc_id: DocumentId,
    limits: &StorageLimits,
) -> Result<Option<Automerge>, StorageError> {
    match load_raw(conn, doc_id, limits)? {
        None => Ok(None),
        Some(raw) => raw.materialize(doc_id).map(Some),
    }
}

/// Reads a document's stored bytes without parsing them (for export,
/// diagnostics, or parsing on another thread with
/// [`RawDocument::materialize`]). Refuses documents over `limits` before
/// reading their bytes.
pub fn load_raw(
    conn: &Connection,
    doc_id: DocumentId,
    limits: &StorageLimits,
) -> Result<Option<RawDocument>, StorageError> {
    // One savepoint so snapshot and changes come from the same committed
    // state: a compaction committed in between could otherwise remove rows
    // after we read the old snapshot.
    with_savepoint(conn, || {
        let id = doc_id.as_bytes();
        let head: Option<(String, Option<i64>, Vec<u8>)> = conn
            .prepare_cached(
                "SELECT kind, length(snapshot), snapshot_heads
                 FROM doc_store_documents WHERE doc_id = ?1",
            )?
            .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .optional()?;
        let Some((kind, snapshot_len, heads)) = head else {
            return Ok(None);
        };
        // length() of a blob reads only the record header, so the check costs
        // nothing even for a huge row.
        let incremental: i64 = conn
            .prepare_cached(
                "SELECT coalesce(sum(length(data)), 0) FROM doc_store_changes WHERE doc_id = ?1",
            )?
            .query_row([id], |row| row.get(0))?;
        let size = to_u64(snapshot_len.unwrap_or(0)).saturating_add(to_u64(incremental));
        if size > limits.max_document_bytes {
            return Err(StorageError::TooLarge {
                doc_id,
                size,
                limit: limits.max_document_bytes,
            });
        }
        let snapshot_heads = decode_heads(doc_id, &heads)?;
        let snapshot: Option<Vec<u8>> = match snapshot_len {
            None => None,
            Some(_) => conn
                .prepare_cached("SELECT snapshot FROM doc_store_documents WHERE doc_id = ?1")?
                .query_row([id], |row| row.get(0))?,
        };
        let mut stmt = conn.prepare_cached(
            "SELECT hash, data FROM doc_store_changes WHERE doc_id = ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([id])?;
        let mut changes = Vec::new();
        while let Some(row) = rows.next()? {
            let hash: Vec<u8> = row.get(0)?;
            changes.push(RawChange {
                hash: decode_hash(doc_id, &hash)?,
                data: row.get(1)?,
            });
        }
        Ok(Some(RawDocument {
            kind,
            snapshot,
            snapshot_heads,
            changes,
        }))
    })
}

/// Whether the document is stored.
pub fn exists(conn: &Connection, doc_id: DocumentId) -> Result<bool, StorageError> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM doc_store_documents WHERE doc_id = ?1)")?
        .query_row([doc_id.as_bytes()], |row| row.get(0))?)
}

/// The stored kind of a document, or `None` when it is not stored.
pub fn kind(conn: &Connection, doc_id: DocumentId) -> Result<Option<String>, StorageError> {
    Ok(conn
        .prepare_cached("SELECT kind FROM doc_store_documents WHERE doc_id = ?1")?
        .query_row([doc_id.as_bytes()], |row| row.get(0))
        .optional()?)
}

/// Every stored document with its kind, ordered by id.
pub fn list(conn: &Connection) -> Result<Vec<(DocumentId, String)>, StorageError> {
    let mut stmt =
        conn.prepare_cached("SELECT doc_id, kind FROM doc_store_documents ORDER BY doc_id")?;
    let rows = stmt.query_map([], |row| {
        Ok((DocumentId::from_bytes(row.get(0)?), row.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The ids of every stored document of `kind`, ordered by id.
pub fn list_by_kind(conn: &Connection, kind: &str) -> Result<Vec<DocumentId>, StorageError> {
    let mut stmt = conn
        .prepare_cached("SELECT doc_id FROM doc_store_documents WHERE kind = ?1 ORDER BY doc_id")?;
    let rows = stmt.query_map([kind], |row| Ok(DocumentId::from_bytes(row.get(0)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Size and bookkeeping of a document, or `None` when it is not stored.
pub fn stats(conn: &Connection, doc_id: DocumentId) -> Result<Option<DocStats>, StorageError> {
    Ok(conn
        .prepare_cached(
            "SELECT kind, coalesce(length(snapshot), 0), change_count, bytes_incremental, updated_at
             FROM doc_store_documents WHERE doc_id = ?1",
        )?
        .query_row([doc_id.as_bytes()], |row| {
            Ok(DocStats {
                kind: row.get(0)?,
                snapshot_bytes: to_u64(row.get(1)?),
                change_count: to_u64(row.get(2)?),
                bytes_incremental: to_u64(row.get(3)?),
                updated_at_ms: row.get(4)?,
            })
        })
        .optional()?)
}

/// Whether `policy` asks for the document to be compacted (`false` when it
/// is not stored).
pub fn needs_compaction(
    conn: &Connection,
    doc_id: DocumentId,
    policy: &CompactionPolicy,
) -> Result<bool, StorageError> {
    Ok(stats(conn, doc_id)?.is_some_and(|s| s.needs_compaction(policy)))
}

// ---------------------------------------------------------------------------
// Writes (inside the caller's transaction)
// ---------------------------------------------------------------------------

/// Stores `changes` of a document as incremental rows, creating the document
/// (with `kind`) if it is new. Changes already stored, as rows or inside the
/// snapshot, are skipped. `now_ms` (Unix milliseconds) becomes `updated_at`
/// when anything new is stored.
///
/// Must run inside a transaction; the caller commits.
pub fn append_changes(
    conn: &Connection,
    doc_id: DocumentId,
    kind: &str,
    changes: &[Change],
    now_ms: i64,
) -> Result<AppendOutcome, StorageError> {
    require_transaction(conn)?;
    check_kind(kind)?;
    with_savepoint(conn, || {
        ensure_document(conn, doc_id, kind, now_ms)?;
        let id = doc_id.as_bytes();
        let mut next_seq: i64 = conn
            .prepare_cached(
                "SELECT coalesce(max(seq), 0) + 1 FROM doc_store_changes WHERE doc_id = ?1",
            )?
            .query_row([id], |row| row.get(0))?;
        let mut in_snapshot = conn.prepare_cached(
            "SELECT max_seq FROM doc_store_snapshot_clock WHERE doc_id = ?1 AND actor = ?2",
        )?;
        let mut stored = conn.prepare_cached(
            "SELECT hash FROM doc_store_changes WHERE doc_id = ?1 AND actor = ?2 AND actor_seq = ?3",
        )?;
        let mut insert = conn.prepare_cached(
            "INSERT INTO doc_store_changes (doc_id, seq, hash, actor, actor_seq, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut new_changes = 0usize;
        let mut new_bytes = 0u64;
        for change in changes {
            let hash = change.hash();
            let actor = change.actor_id().to_bytes();
            let actor_seq = to_i64(change.seq());
            // An actor's changes are numbered 1, 2, 3, ... and a document
            // holding change n of an actor holds all its earlier ones, so the
            // snapshot clock answers "already in the snapshot?" exactly.
            let snapshot_max: Option<i64> = in_snapshot
                .query_row(params![id, actor], |row| row.get(0))
                .optional()?;
            if snapshot_max.is_some_and(|max| actor_seq <= max) {
                continue;
            }
            let existing: Option<Vec<u8>> = stored
                .query_row(params![id, actor, actor_seq], |row| row.get(0))
                .optional()?;
            match existing {
                Some(h) if h.as_slice() == hash.0.as_slice() => continue,
                Some(_) => {
                    return Err(StorageError::ConflictingChange {
                        doc_id,
                        actor: change.actor_id().to_hex_string(),
                        seq: change.seq(),
                    });
                }
                None => {}
            }
            let data = change.raw_bytes();
            insert.execute(params![
                id,
                next_seq,
                hash.0.as_slice(),
                actor,
                actor_seq,
                data
            ])?;
            next_seq += 1;
            new_changes += 1;
            new_bytes = new_bytes.saturating_add(len_u64(data.len()));
        }
        if new_changes > 0 {
            conn.prepare_cached(
                "UPDATE doc_store_documents
                 SET change_count = change_count + ?2,
                     bytes_incremental = bytes_incremental + ?3,
                     updated_at = ?4
                 WHERE doc_id = ?1",
            )?
            .execute(params![id, to_i64(new_changes), to_i64(new_bytes), now_ms])?;
        }
        let (change_count, bytes_incremental): (i64, i64) = conn
            .prepare_cached(
                "SELECT change_count, bytes_incremental FROM doc_store_documents WHERE doc_id = ?1",
            )?
            .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(AppendOutcome {
            new_changes,
            duplicates: changes.len() - new_changes,
            change_count: to_u64(change_count),
            bytes_incremental: to_u64(bytes_incremental),
        })
    })
}

/// Writes `doc` as the document's snapshot, creating the document (with
/// `kind`) if it is new, and drops every incremental row the snapshot
/// contains. Refuses ([`StorageError::StaleSnapshot`]) a `doc` that lacks
/// changes of the snapshot already stored, so a snapshot never goes back in
/// time. `now_ms` becomes `updated_at`.
///
/// Must run inside a transaction; the caller commits.
pub fn save_snapshot(
    conn: &Connection,
    doc_id: DocumentId,
    kind: &str,
    doc: &Automerge,
    now_ms: i64,
) -> Result<SnapshotOutcome, StorageError> {
    require_transaction(conn)?;
    check_kind(kind)?;
    with_savepoint(conn, || {
        ensure_document(conn, doc_id, kind, now_ms)?;
        write_snapshot(conn, doc_id, doc, Some(now_ms))
    })
}

/// Folds a document's incremental changes into a fresh snapshot. Returns
/// `None` when the document is not stored. Leaves `updated_at` alone: the
/// content does not change.
///
/// Must run inside a transaction; the caller commits.
pub fn compact(
    conn: &Connection,
    doc_id: DocumentId,
    limits: &StorageLimits,
) -> Result<Option<SnapshotOutcome>, StorageError> {
    require_transaction(conn)?;
    with_savepoint(conn, || {
        let Some(raw) = load_raw(conn, doc_id, limits)? else {
            return Ok(None);
        };
        let doc = raw.materialize(doc_id)?;
        write_snapshot(conn, doc_id, &doc, None).map(Some)
    })
}

/// Removes a document and everything stored for it. Returns whether it
/// existed.
///
/// Must run inside a transaction; the caller commits.
pub fn delete(conn: &Connection, doc_id: DocumentId) -> Result<bool, StorageError> {
    require_transaction(conn)?;
    with_savepoint(conn, || {
        let id = doc_id.as_bytes();
        // Explicit deletes: the caller's connection may not enable foreign
        // keys, so ON DELETE CASCADE cannot be relied on.
        conn.execute("DELETE FROM doc_store_changes WHERE doc_id = ?1", [id])?;
        conn.execute(
            "DELETE FROM doc_store_snapshot_clock WHERE doc_id = ?1",
            [id],
        )?;
        let removed = conn.execute("DELETE FROM doc_store_documents WHERE doc_id = ?1", [id])?;
        Ok(removed > 0)
    })
}

/// Creates the document row if missing; checks the kind if present.
fn ensure_document(
    conn: &Connection,
    doc_id: DocumentId,
    kind: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    let id = doc_id.as_bytes();
    let stored: Option<String> = conn
        .prepare_cached("SELECT kind FROM doc_store_documents WHERE doc_id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    match stored {
        Some(stored) if stored == kind => Ok(()),
        Some(stored) => Err(StorageError::KindMismatch {
            doc_id,
            stored,
            given: kind.to_owned(),
        }),
        None => {
            conn.prepare_cached(
                "INSERT INTO doc_store_documents (doc_id, kind, updated_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id, kind, now_ms])?;
            Ok(())
        }
    }
}

/// What a snapshot write needs from the document, computed under
/// `catch_unwind`.
struct SnapshotParts {
    bytes: Vec<u8>,
    heads: Vec<ChangeHash>,
    clock: BTreeMap<Vec<u8>, u64>,
}

fn snapshot_parts(doc: &Automerge) -> SnapshotParts {
    let mut clock: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for meta in doc.get_changes_meta(&[]) {
        let max = clock.entry(meta.actor.to_bytes().to_vec()).or_insert(0);
        *max = (*max).max(meta.seq);
    }
    SnapshotParts {
        bytes: doc.save(),
        heads: doc.get_heads(),
        clock,
    }
}

fn write_snapshot(
    conn: &Connection,
    doc_id: DocumentId,
    doc: &Automerge,
    updated_at: Option<i64>,
) -> Result<SnapshotOutcome, StorageError> {
    let id = doc_id.as_bytes();
    let old_heads: Vec<u8> = conn
        .prepare_cached("SELECT snapshot_heads FROM doc_store_documents WHERE doc_id = ?1")?
        .query_row([id], |row| row.get(0))?;
    for head in decode_heads(doc_id, &old_heads)? {
        if doc.get_change_meta_by_hash(&head).is_none() {
            return Err(StorageError::StaleSnapshot { doc_id });
        }
    }
    let parts = catch_unwind(AssertUnwindSafe(|| snapshot_parts(doc))).map_err(|payload| {
        StorageError::Corrupt {
            doc_id,
            detail: format!("automerge panicked while saving: {}", panic_text(&*payload)),
        }
    })?;

    conn.prepare_cached(
        "UPDATE doc_store_documents
         SET snapshot = ?2, snapshot_heads = ?3, updated_at = coalesce(?4, updated_at)
         WHERE doc_id = ?1",
    )?
    .execute(params![
        id,
        parts.bytes,
        encode_heads(&parts.heads),
        updated_at
    ])?;

    conn.execute(
        "DELETE FROM doc_store_snapshot_clock WHERE doc_id = ?1",
        [id],
    )?;
    let mut insert_clock = conn.prepare_cached(
        "INSERT INTO doc_store_snapshot_clock (doc_id, actor, max_seq) VALUES (?1, ?2, ?3)",
    )?;
    for (actor, max_seq) in &parts.clock {
        insert_clock.execute(params![id, actor, to_i64(*max_seq)])?;
    }

    // Drop exactly the rows the snapshot contains; rows waiting for missing
    // dependencies stay, so nothing is lost.
    let contained: Vec<i64> = {
        let mut stmt =
            conn.prepare_cached("SELECT seq, hash FROM doc_store_changes WHERE doc_id = ?1")?;
        let mut rows = stmt.query([id])?;
        let mut seqs = Vec::new();
        while let Some(row) = rows.next()? {
            let hash: Vec<u8> = row.get(1)?;
            let hash = decode_hash(doc_id, &hash)?;
            if doc.get_change_meta_by_hash(&hash).is_some() {
                seqs.push(row.get(0)?);
            }
        }
        seqs
    };
    let mut delete_row =
        conn.prepare_cached("DELETE FROM doc_store_changes WHERE doc_id = ?1 AND seq = ?2")?;
    for seq in &contained {
        delete_row.execute(params![id, seq])?;
    }
    // Recount rather than adjust, so the bookkeeping heals if it ever drifted.
    let (kept, kept_bytes): (i64, i64) = conn
        .prepare_cached(
            "SELECT count(*), coalesce(sum(length(data)), 0) FROM doc_store_changes WHERE doc_id = ?1",
        )?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))?;
    conn.prepare_cached(
        "UPDATE doc_store_documents SET change_count = ?2, bytes_incremental = ?3 WHERE doc_id = ?1",
    )?
    .execute(params![id, kept, kept_bytes])?;

    Ok(SnapshotOutcome {
        snapshot_bytes: len_u64(parts.bytes.len()),
        removed_changes: len_u64(contained.len()),
        kept_changes: to_u64(kept),
    })
}
