//! The server's SQLite store: one writer thread with group commit, a small
//! pool of reader connections, and the schema migrations.
//!
//! No rusqlite call ever runs on an async worker thread: writes go to the
//! dedicated writer thread ([`writer`]), reads run on tokio's blocking pool.
//! Connection setup holds every PRAGMA: WAL, `synchronous=FULL` (a write is
//! durable when the caller hears "ok"), `foreign_keys`, `busy_timeout`.
//!
//! ```no_run
//! # async fn demo(db: server::db::Db) -> Result<(), server::db::DbError> {
//! let n: i64 = db
//!     .write(|tx| {
//!         tx.execute("INSERT INTO settings (key, value) VALUES ('k', 'v')", [])?;
//!         Ok::<_, server::db::DbError>(1)
//!     })
//!     .await?; // returns only after COMMIT
//! let count: i64 = db
//!     .read(|conn| Ok::<_, server::db::DbError>(conn.query_row("SELECT count(*) FROM settings", [], |r| r.get(0))?))
//!     .await?;
//! # let _ = (n, count); Ok(()) }
//! ```

pub mod actors;
pub mod migrations;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, Transaction};
use rusqlite_migration::SchemaVersion;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::settings::DbSettings;
use writer::{Counters, Message, TypedJob};

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create the folder {path} for the database: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "database {path} stays in journal mode `{mode}` instead of WAL; is it on a network or read-only file system?"
    )]
    NotWal { path: PathBuf, mode: String },
    #[error("database migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error(
        "the database schema version {found} is newer than this kiemtra supports ({supported}); run the newer kiemtra that wrote it"
    )]
    SchemaTooNew { found: usize, supported: usize },
    #[error("the document store's migration failed: {0}")]
    DocumentStore(String),
    #[error("COMMIT failed: {0}")]
    Commit(String),
    #[error("the database writer has stopped (the server is shutting down)")]
    WriterStopped,
    #[error("a database write closure panicked; its changes were rolled back")]
    WritePanicked,
    #[error("a database read closure panicked")]
    ReadPanicked,
    #[error("the database is closed")]
    Closed,
}

/// Handle to the store; cheap to clone, shared by every request.
#[derive(Clone, Debug)]
pub struct Db {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    schema_version: usize,
    document_store_version: i64,
    sender: mpsc::Sender<Message>,
    thread: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
    closed: AtomicBool,
    readers: ReaderPool,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Job(_) => f.write_str("Job"),
            Message::Shutdown(_) => f.write_str("Shutdown"),
        }
    }
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `path`, then
    /// starts the writer thread. Blocking: call it from `spawn_blocking` or
    /// before the runtime serves requests.
    pub fn open(path: &Path, settings: &DbSettings) -> Result<Db, DbError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| DbError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
        }
        let busy = Duration::from_millis(settings.busy_timeout_ms);
        let mut conn = Connection::open(path)?;
        configure_writer(&conn, path, busy)?;
        migrate(&mut conn)?;
        migrate_document_store(&conn)?;
        let schema_version: usize = migrations::migrations().current_version(&conn)?.into();
        let document_store_version = sync_core::storage::schema_version(&conn)
            .map_err(|e| DbError::DocumentStore(e.to_string()))?;

        let mut readers = Vec::with_capacity(settings.readers);
        for _ in 0..settings.readers {
            let reader = Connection::open(path)?;
            configure_reader(&reader, busy)?;
            readers.push(reader);
        }

        let (sender, receiver) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let max_batch = settings.max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("kiemtra-db-writer".into())
            .spawn(move || writer::run(conn, receiver, max_batch, thread_counters))
            .map_err(|e| DbError::Commit(format!("cannot start the writer thread: {e}")))?;

        Ok(Db {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                schema_version,
                document_store_version,
                sender,
                thread: Mutex::new(Some(thread)),
                counters,
                closed: AtomicBool::new(false),
                readers: ReaderPool::new(readers),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The server schema version (SQLite `user_version`) after migration.
    pub fn schema_version(&self) -> usize {
        self.inner.schema_version
    }

    /// The document store's schema version (`sync_core::storage`).
    pub fn document_store_version(&self) -> i64 {
        self.inner.document_store_version
    }

    /// Writes queued or running that have not been answered yet.
    pub fn pending_writes(&self) -> usize {
        self.inner.counters.pending.load(Ordering::SeqCst)
    }

    /// Runs `f` in the writer thread, inside the current group-commit
    /// transaction and its own savepoint, and returns its result after
    /// COMMIT. If `f` returns `Err` (or panics) only its own changes are
    /// rolled back. Changes made by an `Ok` closure are durable when this
    /// returns `Ok`.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let rx = self.enqueue(f)?;
        rx.await.map_err(|_| E::from(DbError::WriterStopped))?
    }

    /// [`Db::write`] for synchronous callers (never from an async task).
    pub fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let rx = self.enqueue(f)?;
        rx.blocking_recv()
            .map_err(|_| E::from(DbError::WriterStopped))?
    }

    fn enqueue<T, E, F>(&self, f: F) -> Result<oneshot::Receiver<Result<T, E>>, E>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(TypedJob { f, reply });
        self.inner.counters.pending.fetch_add(1, Ordering::SeqCst);
        if self.inner.sender.send(Message::Job(job)).is_err() {
            self.inner.counters.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(E::from(DbError::WriterStopped));
        }
        Ok(rx)
    }

    /// Runs `f` with a read-only connection from the pool, on tokio's
    /// blocking thread pool. Sees every write whose `write` call returned.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let permit = Arc::clone(&self.inner.readers.permits)
            .acquire_owned()
            .await
            .map_err(|_| E::from(DbError::Closed))?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let lease = inner
                .readers
                .lease(permit)
                .ok_or_else(|| E::from(DbError::Closed))?;
            f(lease.conn())
        })
        .await
        .map_err(|_| E::from(DbError::ReadPanicked))?
    }

    /// Finishes every write queued before this call, checkpoints and closes
    /// the writer connection, joins its thread and closes the readers.
    /// Later writes fail with [`DbError::WriterStopped`]. Idempotent.
    pub async fn close(&self) -> Result<(), DbError> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        let result = match self.inner.sender.send(Message::Shutdown(ack)) {
            Ok(()) => done.await.unwrap_or(Err(DbError::WriterStopped)),
            Err(_) => Err(DbError::WriterStopped),
        };
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(thread) = thread
            && tokio::task::spawn_blocking(move || thread.join())
                .await
                .is_err()
        {
            tracing::error!("the database writer thread panicked");
        }
        self.inner.readers.close();
        result
    }
}

/// The PRAGMAs of the writing connection.
fn configure_writer(conn: &Connection, path: &Path, busy: Duration) -> Result<(), DbError> {
    conn.busy_timeout(busy)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DbError::NotWal {
            path: path.to_owned(),
            mode,
        });
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;",
    )?;
    Ok(())
}

/// The PRAGMAs of a reading connection: it may not write by accident.
fn configure_reader(conn: &Connection, busy: Duration) -> Result<(), DbError> {
    conn.busy_timeout(busy)?;
    conn.execute_batch(
        "PRAGMA foreign_keys = ON;
         PRAGMA query_only = ON;",
    )?;
    Ok(())
}

/// Brings the server schema to the latest version, refusing a database
/// written by a newer binary.
fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let migrations = migrations::migrations();
    if let SchemaVersion::Outside(found) = migrations.current_version(conn)? {
        return Err(DbError::SchemaTooNew {
            found: found.get(),
            supported: migrations::latest_version(),
        });
    }
    migrations.to_latest(conn)?;
    Ok(())
}

/// The document store of `sync-core` (automerge documents) lives in the same
/// file and keeps its own version table (`doc_store_meta`), so its schema
/// evolves independently of ours. This is its single migration call site.
fn migrate_document_store(conn: &Connection) -> Result<(), DbError> {
    sync_core::storage::migrate(conn).map_err(|e| DbError::DocumentStore(e.to_string()))
}

/// Reader connections plus a semaphore so async callers wait without
/// blocking a thread.
#[derive(Debug)]
struct ReaderPool {
    conns: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

/// A connection taken from the pool; goes back on drop, even on panic.
struct Lease<'a> {
    pool: &'a ReaderPool,
    conn: Option<Connection>,
    _permit: OwnedSemaphorePermit,
}

impl ReaderPool {
    fn new(conns: Vec<Connection>) -> Self {
        let permits = Arc::new(Semaphore::new(conns.len()));
        Self {
            conns: Mutex::new(conns),
            permits,
        }
    }

    fn lease(&self, permit: OwnedSemaphorePermit) -> Option<Lease<'_>> {
        let conn = self
            .conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()?;
        Some(Lease {
            pool: self,
            conn: Some(conn),
            _permit: permit,
        })
    }

    fn close(&self) {
        self.permits.close();
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }
}

impl Lease<'_> {
    #[allow(clippy::expect_used)]
    fn conn(&self) -> &Connection {
        // Invariant: `conn` is Some until drop.
        self.conn
            .as_ref()
            .expect("lease holds a connection until drop")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && !self.pool.permits.is_closed()
        {
            self.pool
                .conns
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(conn);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn open_temp() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite3"), &DbSettings::default()).unwrap();
        (dir, db)
    }

    async fn count_settings(db: &Db) -> i64 {
        db.read(|c| {
            c.query_row("SELECT count(*) FROM settings", [], |r| r.get(0))
                .map_err(DbError::from)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn write_then_read() {
        let (_dir, db) = open_temp();
        let n = db
            .write(|tx| {
                tx.execute("INSERT INTO settings (key, value) VALUES ('a', '1')", [])
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(count_settings(&db).await, 1);
        assert_eq!(db.pending_writes(), 0);
        db.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_failing_closure_rolls_back_alone() {
        let (_dir, db) = open_temp();
        // Hold the writer so the next three land in one batch.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let blocker = tokio::spawn({
            let db = db.clone();
            async move {
                db.write(move |_tx| {
                    wait.recv().ok();
                    Ok::<_, DbError>(())
                })
                .await
            }
        });
        while db.pending_writes() < 1 {
            tokio::task::yield_now().await;
        }
        let ok1 = tokio::spawn({
            let db = db.clone();
            async move {
                db.write(|tx| {
                    tx.execute("INSERT INTO settings (key, value) VALUES ('x', '1')", [])
                        .map_err(DbError::from)
                })
                .await
            }
        });
        let bad = tokio::spawn({
            let db = db.clone();
            async move {
                db.write(|tx| {
                    tx.execute("INSERT INTO settings (key, value) VALUES ('y', '1')", [])?;
                    // Violates the primary key: this closure fails after a
                    // successful insert, which must be undone.
                    tx.execute("INSERT INTO settings (key, value) VALUES ('x', '2')", [])
                        .map_err(DbError::from)
                })
                .await
            }
        });
        let ok2 = tokio::spawn({
            let db = db.clone();
            async move {
                db.write(|tx| {
                    tx.execute("INSERT INTO settings (key, value) VALUES ('z', '1')", [])
                        .map_err(DbError::from)
                })
                .await
            }
        });
        while db.pending_writes() < 4 {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        assert_eq!(ok1.await.unwrap().unwrap(), 1);
        assert!(bad.await.unwrap().is_err());
        assert_eq!(ok2.await.unwrap().unwrap(), 1);
        let keys: Vec<String> = db
            .read(|c| {
                let mut st = c.prepare("SELECT key FROM settings ORDER BY key")?;
                let rows = st.query_map([], |r| r.get(0))?;
                rows.collect::<Result<Vec<String>, _>>()
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(keys, ["x", "z"]);
        db.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_panicking_closure_is_contained() {
        let (_dir, db) = open_temp();
        let r: Result<(), DbError> = db
            .write(|tx| {
                tx.execute("INSERT INTO settings (key, value) VALUES ('p', '1')", [])?;
                panic!("boom");
            })
            .await;
        assert!(matches!(r, Err(DbError::WritePanicked)));
        assert_eq!(count_settings(&db).await, 0);
        // The writer still works.
        db.write(|tx| {
            tx.execute("INSERT INTO settings (key, value) VALUES ('q', '1')", [])
                .map_err(DbError::from)
        })
        .await
        .unwrap();
        assert_eq!(count_settings(&db).await, 1);
        db.close().await.unwrap();
    }

    #[tokio::test]
    async fn readers_cannot_write() {
        let (_dir, db) = open_temp();
        let r = db
            .read(|c| {
                c.execute("INSERT INTO settings (key, value) VALUES ('r', '1')", [])
                    .map_err(DbError::from)
            })
            .await;
        assert!(r.is_err());
        db.close().await.unwrap();
    }

    #[tokio::test]
    async fn writes_after_close_are_refused() {
        let (_dir, db) = open_temp();
        db.close().await.unwrap();
        let r = db
            .write(|tx| {
                tx.execute("INSERT INTO settings (key, value) VALUES ('w', '1')", [])
                    .map_err(DbError::from)
            })
            .await;
        assert!(matches!(r, Err(DbError::WriterStopped)), "{r:?}");
        // Closing twice is fine.
        db.close().await.unwrap();
    }

    #[test]
    fn pragmas_are_set() {
        let (dir, db) = open_temp();
        let conn = Connection::open(dir.path().join("t.sqlite3")).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(db.schema_version(), migrations::latest_version());
        // The document store shares the file, with its own version table.
        assert_eq!(
            db.document_store_version(),
            sync_core::storage::SCHEMA_VERSION
        );
        let user_version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(user_version as usize, migrations::latest_version());
    }
}
