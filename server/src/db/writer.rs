//! The single writer thread and its group commit.
//!
//! Every write in the process is a closure sent to one dedicated thread that
//! owns the only writing connection. The thread takes whatever closures are
//! queued (up to a batch limit), runs them inside ONE `BEGIN IMMEDIATE`
//! transaction — each inside its own `SAVEPOINT`, so a closure that fails is
//! rolled back alone — and COMMITs once. Callers hear back only after that
//! COMMIT, so "ok" always means "durable" (with `synchronous=FULL`), while one
//! fsync is shared by the whole batch.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::DbError;

/// A queued write, type-erased so closures of any result type share a queue.
pub(super) trait WriteJob: Send {
    /// Runs the closure inside the open batch transaction; returns what to do
    /// once the batch's COMMIT has succeeded or failed.
    fn run(self: Box<Self>, tx: &Transaction<'_>) -> Box<dyn Completion>;
    /// The batch could not even start: tell the caller.
    fn fail(self: Box<Self>, err: DbError);
}

/// Delivers a job's result after the batch's COMMIT.
pub(super) trait Completion: Send {
    fn complete(self: Box<Self>, commit: Result<(), DbError>);
}

/// A closure plus the channel its caller waits on.
pub(super) struct TypedJob<F, T, E> {
    pub(super) f: F,
    pub(super) reply: oneshot::Sender<Result<T, E>>,
}

struct TypedCompletion<T, E> {
    result: Result<T, E>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> WriteJob for TypedJob<F, T, E>
where
    F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send,
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
{
    fn run(self: Box<Self>, tx: &Transaction<'_>) -> Box<dyn Completion> {
        let TypedJob { f, reply } = *self;
        let result = run_in_savepoint(tx, f);
        Box::new(TypedCompletion { result, reply })
    }

    fn fail(self: Box<Self>, err: DbError) {
        // The caller may have stopped waiting; nothing to do then.
        let _ = self.reply.send(Err(E::from(err)));
    }
}

impl<T, E> Completion for TypedCompletion<T, E>
where
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
{
    fn complete(self: Box<Self>, commit: Result<(), DbError>) {
        let result = match (commit, self.result) {
            (Ok(()), result) => result,
            // The closure's own error says more than the failed COMMIT.
            (Err(_), Err(own)) => Err(own),
            (Err(commit_err), Ok(_)) => Err(E::from(commit_err)),
        };
        let _ = self.reply.send(result);
    }
}

/// Runs `f` between `SAVEPOINT` and `RELEASE`; on error or panic rolls back
/// to the savepoint so the rest of the batch is unaffected.
fn run_in_savepoint<F, T, E>(tx: &Transaction<'_>, f: F) -> Result<T, E>
where
    F: FnOnce(&Transaction<'_>) -> Result<T, E>,
    E: From<DbError>,
{
    tx.execute_batch("SAVEPOINT write_job")
        .map_err(|e| E::from(DbError::Sqlite(e)))?;
    let outcome = catch_unwind(AssertUnwindSafe(|| f(tx)));
    let keep = matches!(outcome, Ok(Ok(_)));
    let end = if keep {
        tx.execute_batch("RELEASE write_job")
    } else {
        tx.execute_batch("ROLLBACK TO write_job; RELEASE write_job")
    };
    match (outcome, end) {
        (Ok(result), Ok(())) => result,
        (Ok(Err(own)), Err(_)) => Err(own),
        (Ok(Ok(_)), Err(e)) => Err(E::from(DbError::Sqlite(e))),
        (Err(_panic), _) => {
            tracing::error!("a database write closure panicked; it was rolled back");
            Err(E::from(DbError::WritePanicked))
        }
    }
}

/// What the writer thread receives.
pub(super) enum Message {
    Job(Box<dyn WriteJob>),
    /// Finish everything queued before this, close the connection, answer.
    Shutdown(oneshot::Sender<Result<(), DbError>>),
}

/// State shared between the handle and the thread.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Writes queued or running, not yet answered.
    pub(super) pending: AtomicUsize,
}

/// The writer thread's main loop.
pub(super) fn run(
    mut conn: Connection,
    rx: mpsc::Receiver<Message>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    loop {
        let mut batch: Vec<Box<dyn WriteJob>> = Vec::new();
        let mut shutdown = None;
        match rx.recv() {
            Ok(Message::Job(job)) => batch.push(job),
            Ok(Message::Shutdown(ack)) => shutdown = Some(ack),
            // Every handle is gone: close quietly.
            Err(_) => {
                if let Err(e) = close(conn) {
                    tracing::warn!(error = %e, "closing the database writer");
                }
                return;
            }
        }
        // Group commit: take whatever else is already waiting.
        while shutdown.is_none() && batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Message::Job(job)) => batch.push(job),
                Ok(Message::Shutdown(ack)) => shutdown = Some(ack),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let n = batch.len();
            run_batch(&mut conn, batch);
            counters.pending.fetch_sub(n, Ordering::SeqCst);
        }
        if let Some(ack) = shutdown {
            let result = close(conn);
            let _ = ack.send(result);
            // Jobs sent after the shutdown are dropped with the receiver;
            // their callers get `DbError::WriterStopped`.
            return;
        }
    }
}

fn run_batch(conn: &mut Connection, batch: Vec<Box<dyn WriteJob>>) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let message = e.to_string();
            tracing::error!(error = %message, "cannot begin a write transaction");
            for job in batch {
                job.fail(DbError::Commit(message.clone()));
            }
            return;
        }
    };
    let completions: Vec<Box<dyn Completion>> = batch.into_iter().map(|job| job.run(&tx)).collect();
    let commit: Result<(), String> = tx.commit().map_err(|e| {
        let message = e.to_string();
        tracing::error!(error = %message, batch = completions.len(), "COMMIT failed");
        message
    });
    for completion in completions {
        completion.complete(commit.clone().map_err(DbError::Commit));
    }
}

/// Closes the writer connection, checkpointing the WAL so the main file is
/// complete on its own.
fn close(conn: Connection) -> Result<(), DbError> {
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "WAL checkpoint at shutdown failed; SQLite will recover it");
    }
    conn.close().map_err(|(_, e)| DbError::Sqlite(e))
}
