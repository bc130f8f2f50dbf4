//! The actor registry: which user and device each automerge actor belongs
//! to (table `actors`, migration 0007).
//!
//! The sync service loads every row into its [`DocumentRules`] at start and
//! records the actors of each change it stores from a connection, in the
//! same transaction as the change itself, so the binding survives restarts
//! exactly when the change does.
//!
//! [`DocumentRules`]: sync_core::access::DocumentRules

use automerge::ActorId;
use rusqlite::{Connection, Transaction, params};
use sync_core::access::ActorOwner;

/// Every recorded actor with its owner. A row whose `actor` is not valid
/// hex (written by hand) is skipped with a warning rather than stopping
/// the server.
pub fn load_all(conn: &Connection) -> rusqlite::Result<Vec<(ActorId, ActorOwner)>> {
    let mut stmt = conn.prepare("SELECT actor, user_id, device_id FROM actors ORDER BY actor")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (hex, user_id, device_id) = row?;
        match ActorId::try_from(hex.as_str()) {
            Ok(actor) => out.push((actor, ActorOwner { user_id, device_id })),
            Err(e) => tracing::warn!(actor = %hex, error = %e, "skipping an unreadable actor row"),
        }
    }
    Ok(out)
}

/// Records `actor` as `owner`'s unless it is already recorded (the first
/// writer keeps it). Returns whether a row was added.
pub fn record(
    tx: &Transaction<'_>,
    actor: &ActorId,
    owner: &ActorOwner,
    first_seen: &str,
) -> rusqlite::Result<bool> {
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO actors (actor, user_id, device_id, first_seen)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            actor.to_hex_string(),
            owner.user_id,
            owner.device_id,
            first_seen
        ])?;
    Ok(n > 0)
}

/// The owner recorded for `actor`, if any.
pub fn owner_of(conn: &Connection, actor: &ActorId) -> rusqlite::Result<Option<ActorOwner>> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        "SELECT user_id, device_id FROM actors WHERE actor = ?1",
        [actor.to_hex_string()],
        |r| {
            Ok(ActorOwner {
                user_id: r.get(0)?,
                device_id: r.get(1)?,
            })
        },
    )
    .optional()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::db::migrations::migrations()
            .to_latest(&mut conn)
            .unwrap();
        conn
    }

    fn owner(user: &str, device: &str) -> ActorOwner {
        ActorOwner {
            user_id: user.into(),
            device_id: device.into(),
        }
    }

    #[test]
    fn the_first_writer_keeps_the_actor() {
        let mut conn = db();
        let a = ActorId::from([0xab; 16]);
        let b = ActorId::from([0x01; 16]);
        let tx = conn.transaction().unwrap();
        assert!(record(&tx, &a, &owner("u-1", "tab-1"), "2025-01-01T00:00:00Z").unwrap());
        assert!(!record(&tx, &a, &owner("u-2", "tab-2"), "2025-01-02T00:00:00Z").unwrap());
        assert!(record(&tx, &b, &owner("u-2", "tab-2"), "2025-01-02T00:00:00Z").unwrap());
        tx.commit().unwrap();
        assert_eq!(
            owner_of(&conn, &a).unwrap(),
            Some(owner("u-1", "tab-1")),
            "INSERT OR IGNORE keeps the first owner"
        );
        let hex: String = conn
            .query_row("SELECT actor FROM actors WHERE user_id = 'u-1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(hex, "ab".repeat(16));
        let all = load_all(&conn).unwrap();
        assert_eq!(
            all,
            vec![(b, owner("u-2", "tab-2")), (a, owner("u-1", "tab-1"))]
        );
    }

    #[test]
    fn a_row_that_is_not_hex_is_skipped() {
        let conn = db();
        conn.execute_batch(
            "INSERT INTO actors VALUES ('not hex', 'u-1', 'd', '2025-01-01T00:00:00Z');
             INSERT INTO actors VALUES ('0102', 'u-2', 'd2', '2025-01-01T00:00:00Z');",
        )
        .unwrap();
        let all = load_all(&conn).unwrap();
        assert_eq!(all, vec![(ActorId::from([1u8, 2]), owner("u-2", "d2"))]);
    }
}
