//! The device store: one SQLite file (`device.sqlite3`) and one blob folder
//! (`blobs/`) inside the store directory.
//!
//! The database holds `sync-core`'s document store tables (the automerge
//! documents, through [`sync_core::storage`]) and the tablet's own tables
//! (`migrations/`): the device identity and settings, the session and its
//! tokens, the automerge actors this store has written with, the photo
//! upload queue, per-document sync marks, fetched templates, and the work
//! the server refused. With the `sqlcipher` feature the whole file is
//! encrypted with the passphrase given at open.
//!
//! # Actors
//!
//! The device id is stable for the life of the store, but the automerge
//! actor is not: the engine writes with a fresh random actor each time the
//! store is opened (and after each login), recorded in `device_actors` on
//! its first edit. Automerge numbers each actor's changes 1, 2, 3, …; a
//! store restored from a backup that kept writing with the actor of the
//! backup would reuse numbers the server already holds for different
//! changes, and the server would refuse everything after them. A fresh
//! actor per opening makes that impossible without tracking anything. The
//! cost is a few more actors per document, which automerge stores once each.
//!
//! Nothing here ever deletes a change: a session that expires only clears
//! its tokens, and a document rebuilt after the server refused some of its
//! changes keeps those changes, byte for byte, in `refused_changes`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use automerge::{ActorId, Automerge, Change, ChangeHash};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use rusqlite_migration::{M, Migrations};
use sync_core::DocumentId;
use sync_core::storage::{self, CompactionPolicy, StorageLimits};

use crate::error::{FieldError, Result};

/// File name of the database inside the store directory.
pub const DB_FILE: &str = "device.sqlite3";
/// Folder of photo bytes inside the store directory.
pub const BLOB_DIR: &str = "blobs";

const MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("../migrations/0001_device.sql")),
    M::up(include_str!("../migrations/0002_refusals.sql")),
];

/// The device's migrations (tracked in `user_version`; sync-core's document
/// tables keep their own version table, so the two never interfere).
pub fn migrations() -> Migrations<'static> {
    Migrations::from_slice(MIGRATIONS)
}

const KEY_DEVICE_ID: &str = "device_id";

/// Who this device is: stable for the life of the store. (The automerge
/// actor is not part of it: see the module docs.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// Sent at login (`device_id`) and as the automerge-repo peer id.
    pub device_id: String,
}

/// The signed-in user and their tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub server_url: String,
    pub username: String,
    pub user_id: String,
    pub role: String,
    pub team_id: Option<String>,
    /// Unit accounts: the unit they speak for.
    pub unit_code: Option<String>,
    pub access_token: Option<String>,
    pub access_expires_at_ms: Option<i64>,
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for Session {
    // Tokens are secrets: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("server_url", &self.server_url)
            .field("username", &self.username)
            .field("user_id", &self.user_id)
            .field("role", &self.role)
            .field("team_id", &self.team_id)
            .field("unit_code", &self.unit_code)
            .field("has_access_token", &self.access_token.is_some())
            .field("access_expires_at_ms", &self.access_expires_at_ms)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .finish()
    }
}

/// One photo of the upload queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhotoRow {
    pub sha256: String,
    pub inspection_id: String,
    pub mime: String,
    pub bytes: u64,
    pub added_at_ms: i64,
    /// The tus upload resource, once created.
    pub upload_url: Option<String>,
    /// Bytes the server confirmed.
    pub uploaded_offset: u64,
    pub uploaded_at_ms: Option<i64>,
    pub last_error: Option<String>,
}

impl PhotoRow {
    pub fn is_uploaded(&self) -> bool {
        self.uploaded_at_ms.is_some()
    }
}

/// The store directory: database connection and blob folder.
#[derive(Debug)]
pub struct DeviceStore {
    conn: Connection,
    dir: PathBuf,
    limits: StorageLimits,
    compaction: CompactionPolicy,
    identity: DeviceIdentity,
}

impl DeviceStore {
    /// Opens (creating if needed) the store in `dir`. `passphrase` encrypts
    /// the database (builds with the `sqlcipher` feature only).
    pub fn open(dir: &Path, passphrase: Option<&str>) -> Result<Self> {
        std::fs::create_dir_all(dir.join(BLOB_DIR)).map_err(|e| {
            FieldError::Storage(format!(
                "cannot create the store folder {}: {e}; choose a writable folder",
                dir.display()
            ))
        })?;
        let mut conn = Connection::open(dir.join(DB_FILE))?;
        apply_key(&conn, passphrase)?;
        storage::configure_connection(&conn)?;
        storage::migrate(&conn)?;
        migrations().to_latest(&mut conn).map_err(|e| {
            FieldError::Storage(format!(
                "cannot bring the device tables up to date: {e}; a newer app may have written this store"
            ))
        })?;
        let identity = ensure_identity(&conn)?;
        Ok(Self {
            conn,
            dir: dir.to_path_buf(),
            limits: StorageLimits::default(),
            compaction: CompactionPolicy::default(),
            identity,
        })
    }

    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    // ----- settings ----------------------------------------------------------

    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM device_settings WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO device_settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    // ----- session -----------------------------------------------------------

    pub fn session(&self) -> Result<Option<Session>> {
        Ok(self
            .conn
            .query_row(
                "SELECT server_url, username, user_id, role, team_id, access_token,
                        access_expires_at_ms, refresh_token, unit_code
                 FROM device_session WHERE id = 1",
                [],
                |r| {
                    Ok(Session {
                        server_url: r.get(0)?,
                        username: r.get(1)?,
                        user_id: r.get(2)?,
                        role: r.get(3)?,
                        team_id: r.get(4)?,
                        access_token: r.get(5)?,
                        access_expires_at_ms: r.get(6)?,
                        refresh_token: r.get(7)?,
                        unit_code: r.get(8)?,
                    })
                },
            )
            .optional()?)
    }

    /// Writes the session (a new login, or rotated tokens).
    pub fn save_session(&self, s: &Session, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO device_session (id, server_url, username, user_id, role, team_id,
                 access_token, access_expires_at_ms, refresh_token, updated_at_ms, unit_code)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (id) DO UPDATE SET
                 server_url = excluded.server_url, username = excluded.username,
                 user_id = excluded.user_id, role = excluded.role, team_id = excluded.team_id,
                 unit_code = excluded.unit_code, access_token = excluded.access_token,
                 access_expires_at_ms = excluded.access_expires_at_ms,
                 refresh_token = excluded.refresh_token, updated_at_ms = excluded.updated_at_ms",
            params![
                s.server_url,
                s.username,
                s.user_id,
                s.role,
                s.team_id,
                s.access_token,
                s.access_expires_at_ms,
                s.refresh_token,
                now_ms,
                s.unit_code
            ],
        )?;
        Ok(())
    }

    /// Forgets the tokens (expired or revoked) but keeps who the user is.
    pub fn clear_tokens(&self, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE device_session SET access_token = NULL, access_expires_at_ms = NULL,
                 refresh_token = NULL, updated_at_ms = ?1 WHERE id = 1",
            [now_ms],
        )?;
        Ok(())
    }

    // ----- documents -----------------------------------------------------------

    /// Every stored document with its kind.
    pub fn documents(&self) -> Result<Vec<(DocumentId, String)>> {
        Ok(storage::list(&self.conn)?)
    }

    pub fn load(&self, id: DocumentId) -> Result<Option<Automerge>> {
        Ok(storage::load_with_limits(&self.conn, id, &self.limits)?)
    }

    pub fn kind(&self, id: DocumentId) -> Result<Option<String>> {
        Ok(storage::kind(&self.conn, id)?)
    }

    /// Makes `changes` durable (committed with `synchronous=FULL`), then
    /// compacts the document if it has grown many incremental rows.
    pub fn append_changes(
        &mut self,
        id: DocumentId,
        kind: &str,
        changes: &[Change],
        now_ms: i64,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        storage::append_changes(&tx, id, kind, changes, now_ms)?;
        tx.commit()?;
        if storage::needs_compaction(&self.conn, id, &self.compaction)? {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            storage::compact(&tx, id, &self.limits)?;
            tx.commit()?;
        }
        Ok(())
    }

    // ----- sync marks ------------------------------------------------------------

    /// The heads the server was known to hold for `id` at the last finished sync.
    pub fn sync_mark(&self, id: DocumentId) -> Result<Option<Vec<ChangeHash>>> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT heads FROM device_sync_marks WHERE doc_id = ?1",
                [id.encode()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(text.map(|t| parse_heads(&t)))
    }

    /// When a sync last finished with the server holding `id`.
    pub fn sync_mark_time(&self, id: DocumentId) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT synced_at_ms FROM device_sync_marks WHERE doc_id = ?1",
                [id.encode()],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_sync_mark(&self, id: DocumentId, heads: &[ChangeHash], now_ms: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO device_sync_marks (doc_id, heads, synced_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (doc_id) DO UPDATE SET heads = excluded.heads,
                 synced_at_ms = excluded.synced_at_ms",
            params![id.encode(), format_heads(heads), now_ms],
        )?;
        Ok(())
    }

    // ----- photos -------------------------------------------------------------

    /// Where the bytes of a photo live.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(BLOB_DIR).join(sha256)
    }

    /// Adds a photo to the upload queue (a photo already queued is kept as is).
    pub fn queue_photo(&self, row: &PhotoRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO device_photos (sha256, inspection_id, mime, bytes, added_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (sha256) DO NOTHING",
            params![
                row.sha256,
                row.inspection_id,
                row.mime,
                i64::try_from(row.bytes).unwrap_or(i64::MAX),
                row.added_at_ms
            ],
        )?;
        Ok(())
    }

    /// Every photo, oldest first.
    pub fn photos(&self) -> Result<Vec<PhotoRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT sha256, inspection_id, mime, bytes, added_at_ms, upload_url,
                    uploaded_offset, uploaded_at_ms, last_error
             FROM device_photos ORDER BY added_at_ms, sha256",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PhotoRow {
                sha256: r.get(0)?,
                inspection_id: r.get(1)?,
                mime: r.get(2)?,
                bytes: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                added_at_ms: r.get(4)?,
                upload_url: r.get(5)?,
                uploaded_offset: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                uploaded_at_ms: r.get(7)?,
                last_error: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn photo(&self, sha256: &str) -> Result<Option<PhotoRow>> {
        Ok(self.photos()?.into_iter().find(|p| p.sha256 == sha256))
    }

    pub fn set_upload_url(&self, sha256: &str, url: Option<&str>) -> Result<()> {
        self.conn.execute(
            "UPDATE device_photos SET upload_url = ?2, uploaded_offset = 0 WHERE sha256 = ?1",
            params![sha256, url],
        )?;
        Ok(())
    }

    pub fn set_uploaded_offset(&self, sha256: &str, offset: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE device_photos SET uploaded_offset = ?2 WHERE sha256 = ?1",
            params![sha256, i64::try_from(offset).unwrap_or(i64::MAX)],
        )?;
        Ok(())
    }

    pub fn set_photo_error(&self, sha256: &str, error: Option<&str>) -> Result<()> {
        self.conn.execute(
            "UPDATE device_photos SET last_error = ?2 WHERE sha256 = ?1",
            params![sha256, error],
        )?;
        Ok(())
    }

    pub fn mark_uploaded(&self, sha256: &str, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE device_photos SET uploaded_at_ms = ?2, uploaded_offset = bytes,
                 last_error = NULL WHERE sha256 = ?1",
            params![sha256, now_ms],
        )?;
        Ok(())
    }

    /// The server reports it lacks this photo: upload it again from the start.
    pub fn mark_not_uploaded(&self, sha256: &str) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE device_photos SET uploaded_at_ms = NULL, upload_url = NULL,
                 uploaded_offset = 0 WHERE sha256 = ?1",
            [sha256],
        )?;
        Ok(n > 0)
    }

    // ----- templates ------------------------------------------------------------

    /// Template JSON fetched over HTTP, by `template_id@version`.
    pub fn cached_templates(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT json FROM device_templates ORDER BY key")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    }

    pub fn cache_template(&self, key: &str, json: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO device_templates (key, json) VALUES (?1, ?2)
             ON CONFLICT (key) DO NOTHING",
            params![key, json],
        )?;
        Ok(())
    }

    // ----- actors ---------------------------------------------------------------

    /// Records that this store writes with `actor` (from its first edit on).
    pub fn record_actor(&self, actor: &ActorId, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO device_actors (actor, first_used_at_ms) VALUES (?1, ?2)
             ON CONFLICT (actor) DO NOTHING",
            params![actor.to_hex_string(), now_ms],
        )?;
        Ok(())
    }

    /// Every actor this store has written with.
    pub fn actors(&self) -> Result<Vec<ActorId>> {
        let mut stmt = self
            .conn
            .prepare("SELECT actor FROM device_actors ORDER BY first_used_at_ms, actor")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for hex_text in rows {
            let hex_text = hex_text?;
            match hex::decode(&hex_text) {
                Ok(bytes) => out.push(ActorId::from(bytes)),
                Err(_) => tracing::warn!(actor = %hex_text, "a recorded actor is not hex"),
            }
        }
        Ok(out)
    }

    // ----- refused work ------------------------------------------------------------

    /// In one transaction: records a refusal of `id`'s changes, keeps every
    /// change in `refused` (raw bytes, with the server's rule, path and
    /// reason where it named the change), replaces the stored document by
    /// `rebuilt` (the same document without those changes), marks it as
    /// held by the server at `server_heads`, and adds a `pending` piece of
    /// work for the refusal. Returns the refusal's id. Nothing is lost: the
    /// rebuilt document and the kept changes together hold every change.
    pub fn record_refusal(&mut self, r: &NewRefusal<'_>, now_ms: i64) -> Result<i64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO refusals (doc_id, server_heads, message, refused_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                r.doc_id.encode(),
                format_heads(r.server_heads),
                r.message,
                now_ms
            ],
        )?;
        let refusal_id = tx.last_insert_rowid();
        {
            let mut insert = tx.prepare(
                "INSERT INTO refused_changes (doc_id, hash, refusal_id, data, rule, path,
                     reason, refused_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (doc_id, hash) DO NOTHING",
            )?;
            for c in r.changes {
                insert.execute(params![
                    r.doc_id.encode(),
                    c.hash.to_string(),
                    refusal_id,
                    c.data,
                    c.rule,
                    c.path,
                    c.reason,
                    now_ms
                ])?;
            }
        }
        storage::delete(&tx, r.doc_id)?;
        storage::save_snapshot(&tx, r.doc_id, r.kind, r.rebuilt, now_ms)?;
        tx.execute(
            "INSERT INTO device_sync_marks (doc_id, heads, synced_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (doc_id) DO UPDATE SET heads = excluded.heads,
                 synced_at_ms = excluded.synced_at_ms",
            params![r.doc_id.encode(), format_heads(r.server_heads), now_ms],
        )?;
        tx.execute(
            "INSERT INTO refused_work (refusal_id, piece, doc_id, kind, label, state, rule,
                 path, reason, updated_at_ms)
             VALUES (?1, ?2, ?3, 'pending', ?4, 'pending', NULL, NULL, ?5, ?6)",
            params![
                refusal_id,
                PENDING_PIECE,
                r.doc_id.encode(),
                format!(
                    "{} refused change(s), not written again yet",
                    r.changes.len()
                ),
                r.message,
                now_ms
            ],
        )?;
        tx.commit()?;
        Ok(refusal_id)
    }

    /// The refusals of `id`, oldest first.
    pub fn refusals(&self, id: DocumentId) -> Result<Vec<RefusalRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, server_heads, message, refused_at_ms FROM refusals
             WHERE doc_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([id.encode()], |r| {
            Ok(RefusalRow {
                id: r.get(0)?,
                doc_id: id,
                server_heads: parse_heads(&r.get::<_, String>(1)?),
                message: r.get(2)?,
                refused_at_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The changes kept by one refusal, in the order they were stored.
    pub fn refused_changes(&self, refusal_id: i64) -> Result<Vec<RefusedChange>> {
        let mut stmt = self.conn.prepare(
            "SELECT hash, data, rule, path, reason FROM refused_changes
             WHERE refusal_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([refusal_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                RefusedChange {
                    hash: ChangeHash([0; 32]),
                    data: r.get(1)?,
                    rule: r.get(2)?,
                    path: r.get(3)?,
                    reason: r.get(4)?,
                },
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (hash, mut c) = row?;
            c.hash = hash.parse().map_err(|_| {
                FieldError::Storage(format!("a refused change has a bad hash {hash:?}"))
            })?;
            out.push(c);
        }
        Ok(out)
    }

    /// Writes (or updates) one piece of refused work; a piece recorded for
    /// the same refusal under the same key is replaced.
    pub fn set_work(&self, w: &WorkRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO refused_work (refusal_id, piece, doc_id, kind, label, state, rule,
                 path, reason, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (refusal_id, piece) DO UPDATE SET kind = excluded.kind,
                 label = excluded.label, state = excluded.state, rule = excluded.rule,
                 path = excluded.path, reason = excluded.reason,
                 updated_at_ms = excluded.updated_at_ms",
            params![
                w.refusal_id,
                w.piece,
                w.doc_id.encode(),
                w.kind,
                w.label,
                w.state.as_str(),
                w.rule,
                w.path,
                w.reason,
                w.updated_at_ms
            ],
        )?;
        Ok(())
    }

    /// Removes the `pending` placeholder of a refusal once its pieces are known.
    pub fn clear_pending(&self, refusal_id: i64) -> Result<()> {
        self.conn.execute(
            "DELETE FROM refused_work WHERE refusal_id = ?1 AND piece = ?2",
            params![refusal_id, PENDING_PIECE],
        )?;
        Ok(())
    }

    /// Pieces of refused work, of one document or of all, oldest refusal
    /// first; `rebased` ones only when `with_rebased`.
    pub fn work(&self, doc: Option<DocumentId>, with_rebased: bool) -> Result<Vec<WorkRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT w.refusal_id, w.piece, w.doc_id, w.kind, w.label, w.state, w.rule, w.path,
                    w.reason, w.updated_at_ms, r.refused_at_ms
             FROM refused_work w JOIN refusals r ON r.id = w.refusal_id
             WHERE (?1 IS NULL OR w.doc_id = ?1) AND (?2 OR w.state <> 'rebased')
             ORDER BY w.refusal_id, w.rowid",
        )?;
        let rows = stmt.query_map(params![doc.map(|d| d.encode()), with_rebased], |r| {
            Ok((
                r.get::<_, String>(2)?,
                r.get::<_, String>(5)?,
                WorkRow {
                    refusal_id: r.get(0)?,
                    piece: r.get(1)?,
                    doc_id: DocumentId::from_bytes([0; 16]),
                    kind: r.get(3)?,
                    label: r.get(4)?,
                    state: WorkState::Pending,
                    rule: r.get(6)?,
                    path: r.get(7)?,
                    reason: r.get(8)?,
                    updated_at_ms: r.get(9)?,
                    refused_at_ms: r.get(10)?,
                },
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (doc_id, state, mut w) = row?;
            w.doc_id = DocumentId::parse(&doc_id).map_err(|e| {
                FieldError::Storage(format!("refused work names a bad document {doc_id:?}: {e}"))
            })?;
            w.state = WorkState::parse(&state).ok_or_else(|| {
                FieldError::Storage(format!("refused work has an unknown state {state:?}"))
            })?;
            out.push(w);
        }
        Ok(out)
    }
}

/// The key of the placeholder piece a refusal starts with.
pub const PENDING_PIECE: &str = "*";

/// What [`DeviceStore::record_refusal`] writes.
#[derive(Debug)]
pub struct NewRefusal<'a> {
    pub doc_id: DocumentId,
    /// The document's kind, as stored.
    pub kind: &'a str,
    pub server_heads: &'a [ChangeHash],
    /// The server's summary.
    pub message: &'a str,
    pub changes: &'a [RefusedChange],
    /// The document without `changes`.
    pub rebuilt: &'a Automerge,
}

/// One refused change, as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedChange {
    pub hash: ChangeHash,
    /// The change's bytes (`Change::raw_bytes`).
    pub data: Vec<u8>,
    pub rule: Option<String>,
    pub path: Option<String>,
    pub reason: Option<String>,
}

/// One refusal of a document's changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalRow {
    pub id: i64,
    pub doc_id: DocumentId,
    pub server_heads: Vec<ChangeHash>,
    pub message: String,
    pub refused_at_ms: i64,
}

/// What became of a piece of refused work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkState {
    /// Not worked out yet; retried after each sync.
    Pending,
    /// Needs a person (the reason says why); `rebase` tries again.
    Open,
    /// Written again on top of the server's state.
    Rebased,
}

impl WorkState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkState::Pending => "pending",
            WorkState::Open => "open",
            WorkState::Rebased => "rebased",
        }
    }

    pub fn parse(s: &str) -> Option<WorkState> {
        [WorkState::Pending, WorkState::Open, WorkState::Rebased]
            .into_iter()
            .find(|w| w.as_str() == s)
    }
}

/// One piece of refused work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkRow {
    pub refusal_id: i64,
    /// Where the work lives (`answers/A4`, `findings/<id>`, `photos/<sha>`,
    /// `submissions/<id>`, `changes/<hash>`), or [`PENDING_PIECE`].
    pub piece: String,
    pub doc_id: DocumentId,
    /// `answer`, `finding`, `photo`, `submission`, `change` or `pending`.
    pub kind: String,
    pub label: String,
    pub state: WorkState,
    pub rule: Option<String>,
    pub path: Option<String>,
    pub reason: String,
    pub updated_at_ms: i64,
    /// When the refusal happened (read only).
    pub refused_at_ms: i64,
}

/// Heads as stored: comma-separated hex.
pub fn format_heads(heads: &[ChangeHash]) -> String {
    heads
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The inverse of [`format_heads`]; unreadable entries are skipped (a mark
/// is a hint for status reports, never a reason to fail).
pub fn parse_heads(text: &str) -> Vec<ChangeHash> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[cfg(feature = "sqlcipher")]
fn apply_key(conn: &Connection, passphrase: Option<&str>) -> Result<()> {
    if let Some(key) = passphrase {
        if key.is_empty() {
            return Err(FieldError::InvalidInput(
                "the store passphrase is empty; give a non-empty passphrase or none".into(),
            ));
        }
        conn.pragma_update(None, "key", key)?;
        // The key is only checked on first read: fail here, clearly, if it is wrong.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(|_| {
            FieldError::NotAllowed(
                "the store passphrase is wrong (or the store is not encrypted)".into(),
            )
        })?;
    }
    Ok(())
}

#[cfg(not(feature = "sqlcipher"))]
fn apply_key(_conn: &Connection, passphrase: Option<&str>) -> Result<()> {
    if passphrase.is_some() {
        return Err(FieldError::InvalidInput(
            "this build has no encryption at rest; build mobile-bridge with the `sqlcipher` feature, or open the store without a passphrase".into(),
        ));
    }
    Ok(())
}

fn ensure_identity(conn: &Connection) -> Result<DeviceIdentity> {
    let get = |key: &str| -> Result<Option<String>> {
        Ok(conn
            .query_row(
                "SELECT value FROM device_settings WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?)
    };
    let device_id = match get(KEY_DEVICE_ID)? {
        Some(id) => id,
        None => {
            let id = format!("tablet-{}", uuid::Uuid::new_v4().simple());
            conn.execute(
                "INSERT INTO device_settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                params![KEY_DEVICE_ID, id],
            )?;
            // Another process may have won the insert; theirs is the id.
            get(KEY_DEVICE_ID)?.unwrap_or(id)
        }
    };
    Ok(DeviceIdentity { device_id })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = DeviceStore::open(dir.path(), None)
            .unwrap()
            .identity()
            .clone();
        let again = DeviceStore::open(dir.path(), None)
            .unwrap()
            .identity()
            .clone();
        assert_eq!(first, again);
        assert!(first.device_id.starts_with("tablet-"));
        let other = tempfile::tempdir().unwrap();
        let other = DeviceStore::open(other.path(), None).unwrap();
        assert_ne!(other.identity().device_id, first.device_id);
    }

    #[test]
    fn tokens_persist_and_clearing_keeps_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let s = Session {
            server_url: "http://127.0.0.1:1".into(),
            username: "inspector1".into(),
            user_id: "u-1".into(),
            role: "inspector".into(),
            team_id: Some("t-a".into()),
            unit_code: None,
            access_token: Some("access".into()),
            access_expires_at_ms: Some(1_000),
            refresh_token: Some("refresh".into()),
        };
        {
            let store = DeviceStore::open(dir.path(), None).unwrap();
            store.save_session(&s, 5).unwrap();
        }
        let store = DeviceStore::open(dir.path(), None).unwrap();
        assert_eq!(store.session().unwrap(), Some(s.clone()));
        store.clear_tokens(6).unwrap();
        let cleared = store.session().unwrap().unwrap();
        assert_eq!(cleared.user_id, "u-1");
        assert_eq!(cleared.access_token, None);
        assert_eq!(cleared.refresh_token, None);
        assert!(!format!("{s:?}").contains("refresh\""));
    }

    #[test]
    fn changes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let id = DocumentId::from_bytes([7; 16]);
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "kind", "inspection").unwrap();
        tx.commit();
        {
            let mut store = DeviceStore::open(dir.path(), None).unwrap();
            store
                .append_changes(id, "inspection", &doc.get_changes(&[]), 1)
                .unwrap();
            store.set_sync_mark(id, &doc.get_heads(), 2).unwrap();
        }
        let store = DeviceStore::open(dir.path(), None).unwrap();
        assert_eq!(
            store.documents().unwrap(),
            vec![(id, "inspection".to_owned())]
        );
        assert_eq!(
            store.load(id).unwrap().unwrap().get_heads(),
            doc.get_heads()
        );
        assert_eq!(store.sync_mark(id).unwrap(), Some(doc.get_heads()));
    }

    #[test]
    fn photo_queue_tracks_offsets_and_resets_on_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeviceStore::open(dir.path(), None).unwrap();
        let sha = "a".repeat(64);
        store
            .queue_photo(&PhotoRow {
                sha256: sha.clone(),
                inspection_id: "x".into(),
                mime: "image/jpeg".into(),
                bytes: 100,
                added_at_ms: 1,
                upload_url: None,
                uploaded_offset: 0,
                uploaded_at_ms: None,
                last_error: None,
            })
            .unwrap();
        store.set_upload_url(&sha, Some("http://u/1")).unwrap();
        store.set_uploaded_offset(&sha, 40).unwrap();
        let p = store.photo(&sha).unwrap().unwrap();
        assert_eq!(
            (p.uploaded_offset, p.upload_url.as_deref()),
            (40, Some("http://u/1"))
        );
        store.mark_uploaded(&sha, 9).unwrap();
        let p = store.photo(&sha).unwrap().unwrap();
        assert!(p.is_uploaded());
        assert_eq!(p.uploaded_offset, 100);
        assert!(store.mark_not_uploaded(&sha).unwrap());
        let p = store.photo(&sha).unwrap().unwrap();
        assert_eq!(
            (p.is_uploaded(), p.uploaded_offset, p.upload_url),
            (false, 0, None)
        );
    }

    #[cfg(not(feature = "sqlcipher"))]
    #[test]
    fn a_passphrase_without_sqlcipher_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = DeviceStore::open(dir.path(), Some("secret")).unwrap_err();
        assert!(matches!(err, FieldError::InvalidInput(_)), "{err}");
        assert!(err.to_string().contains("sqlcipher"));
    }

    #[cfg(feature = "sqlcipher")]
    #[test]
    fn an_encrypted_store_needs_its_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        DeviceStore::open(dir.path(), Some("secret")).unwrap();
        let raw = std::fs::read(dir.path().join(DB_FILE)).unwrap();
        assert!(!raw.starts_with(b"SQLite format 3"));
        let err = DeviceStore::open(dir.path(), Some("wrong")).unwrap_err();
        assert!(matches!(err, FieldError::NotAllowed(_)), "{err}");
        DeviceStore::open(dir.path(), Some("secret")).unwrap();
    }
}
