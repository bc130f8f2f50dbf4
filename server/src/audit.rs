//! The audit log: append-only and hash-chained.
//!
//! Each row stores `prev_hash` (the previous row's `hash`, or 64 zeros for the
//! first row) and `hash = sha256(prev_hash || content)`, where the content is
//! the row's sequence number, time, actor, action, subject and detail, each
//! length-prefixed so no two different rows encode alike. Editing, deleting
//! or reordering a row breaks the chain from there on, which [`verify`]
//! reports. Removing rows from the END cannot be seen from inside the file:
//! `kiemtra audit verify` prints the head hash so operators can record it
//! elsewhere.
//!
//! Rows are appended inside the same transaction as the change they record
//! ([`append`] takes the writer's transaction), so an audited change and its
//! audit row commit or vanish together. The single writer thread makes
//! "read last hash, insert next row" race-free.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One event to record.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    /// User id, `cli` for the command line, `system` for the server itself.
    pub actor: Option<&'a str>,
    /// Dotted event name, e.g. `auth.login`, `user.create`, `import.units`.
    pub action: &'a str,
    /// What the event is about (a username, a file name, a unit code).
    pub subject: &'a str,
    /// Extra facts as JSON; never passwords or tokens.
    pub detail: Value,
}

/// Why the chain does not verify, or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log broken at entry {seq}: {reason}")]
    Broken { seq: i64, reason: String },
    #[error("cannot read the audit log: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Rows checked.
    pub entries: u64,
    /// `hash` of the last row (the genesis hash when empty).
    pub head: String,
}

/// Appends one entry inside `tx` at time `at` (RFC 3339, UTC); returns its hash.
pub fn append(tx: &Transaction<'_>, at: &str, entry: &AuditEntry<'_>) -> rusqlite::Result<String> {
    let (last_seq, prev_hash): (i64, String) = tx
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, GENESIS_HASH.to_owned()));
    let seq = last_seq + 1;
    let detail = entry.detail.to_string();
    let hash = entry_hash(
        &prev_hash,
        seq,
        at,
        entry.actor,
        entry.action,
        entry.subject,
        &detail,
    );
    tx.execute(
        "INSERT INTO audit_log (seq, at, actor, action, subject, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            seq,
            at,
            entry.actor,
            entry.action,
            entry.subject,
            detail,
            prev_hash,
            hash
        ],
    )?;
    Ok(hash)
}

/// Recomputes the whole chain.
pub fn verify(conn: &Connection) -> Result<AuditReport, AuditError> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, subject, detail, prev_hash, hash
         FROM audit_log ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut expected_prev = GENESIS_HASH.to_owned();
    let mut expected_seq = 1_i64;
    let mut entries = 0_u64;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let at: String = row.get(1)?;
        let actor: Option<String> = row.get(2)?;
        let action: String = row.get(3)?;
        let subject: String = row.get(4)?;
        let detail: String = row.get(5)?;
        let prev_hash: String = row.get(6)?;
        let hash: String = row.get(7)?;
        if seq != expected_seq {
            return Err(AuditError::Broken {
                seq,
                reason: format!("expected entry {expected_seq} here: entries were removed"),
            });
        }
        if prev_hash != expected_prev {
            return Err(AuditError::Broken {
                seq,
                reason: "its prev_hash does not match the previous entry's hash".into(),
            });
        }
        let computed = entry_hash(
            &prev_hash,
            seq,
            &at,
            actor.as_deref(),
            &action,
            &subject,
            &detail,
        );
        if computed != hash {
            return Err(AuditError::Broken {
                seq,
                reason: "its content does not match its hash (the entry was altered)".into(),
            });
        }
        expected_prev = hash;
        expected_seq += 1;
        entries += 1;
    }
    Ok(AuditReport {
        entries,
        head: expected_prev,
    })
}

/// `sha256(prev_hash || len-prefixed fields)`, lowercase hex.
fn entry_hash(
    prev_hash: &str,
    seq: i64,
    at: &str,
    actor: Option<&str>,
    action: &str,
    subject: &str,
    detail: &str,
) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(prev_hash.as_bytes());
    field(&seq.to_be_bytes());
    field(at.as_bytes());
    // Tell "no actor" apart from an empty actor.
    match actor {
        None => field(b"\x00"),
        Some(a) => field(&[b"\x01", a.as_bytes()].concat()),
    }
    field(action.as_bytes());
    field(subject.as_bytes());
    field(detail.as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::db::migrations::migrations()
            .to_latest(&mut conn)
            .unwrap();
        conn
    }

    fn add(conn: &mut Connection, n: usize) {
        let tx = conn.transaction().unwrap();
        for i in 0..n {
            append(
                &tx,
                "2025-07-01T00:00:00Z",
                &AuditEntry {
                    actor: Some("cli"),
                    action: "test.event",
                    subject: &format!("s{i}"),
                    detail: json!({"i": i}),
                },
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn empty_and_intact_chains_verify() {
        let mut conn = db();
        let r = verify(&conn).unwrap();
        assert_eq!(r.entries, 0);
        assert_eq!(r.head, GENESIS_HASH);
        add(&mut conn, 3);
        let r = verify(&conn).unwrap();
        assert_eq!(r.entries, 3);
        assert_ne!(r.head, GENESIS_HASH);
    }

    #[test]
    fn updates_and_deletes_are_refused_by_triggers() {
        let mut conn = db();
        add(&mut conn, 1);
        assert!(
            conn.execute("UPDATE audit_log SET subject = 'x'", [])
                .is_err()
        );
        assert!(conn.execute("DELETE FROM audit_log", []).is_err());
    }

    #[test]
    fn tampering_is_detected() {
        let mut conn = db();
        add(&mut conn, 4);
        conn.execute_batch(
            "DROP TRIGGER audit_log_no_update;
             UPDATE audit_log SET subject = 'forged' WHERE seq = 2;",
        )
        .unwrap();
        match verify(&conn) {
            Err(AuditError::Broken { seq, .. }) => assert_eq!(seq, 2),
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn removed_rows_are_detected() {
        let mut conn = db();
        add(&mut conn, 4);
        conn.execute_batch(
            "DROP TRIGGER audit_log_no_delete;
             DELETE FROM audit_log WHERE seq = 3;",
        )
        .unwrap();
        match verify(&conn) {
            Err(AuditError::Broken { seq, .. }) => assert_eq!(seq, 4),
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn actor_none_and_empty_differ() {
        let a = entry_hash(GENESIS_HASH, 1, "t", None, "a", "s", "{}");
        let b = entry_hash(GENESIS_HASH, 1, "t", Some(""), "a", "s", "{}");
        assert_ne!(a, b);
    }
}
