//! Refresh tokens: opaque, random, rotating, stored hashed, revocable.
//!
//! A token is 32 random bytes in base64url (43 characters); the database
//! keeps only its sha256. A login starts a *family*; each refresh marks the
//! presented token used and issues the next one in the same family. A used
//! token presented again means it was copied: the whole family is revoked, so
//! both the thief and the victim must log in again.
//!
//! Functions here run inside the writer's transaction and get the new token
//! and `now` as arguments, so they are deterministic.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rusqlite::{OptionalExtension, Transaction, params};
use sha2::{Digest, Sha256};

use crate::users::{self, User, UserError};

/// A fresh token and its hash.
#[derive(Clone)]
pub struct NewRefreshToken {
    /// Given to the client once; never stored.
    pub token: String,
    /// sha256 of `token`, stored.
    pub hash: Vec<u8>,
}

impl std::fmt::Debug for NewRefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewRefreshToken(***)")
    }
}

impl NewRefreshToken {
    /// 32 bytes from the operating system's random source.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)?;
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let hash = hash_token(&token);
        Ok(Self { token, hash })
    }
}

/// sha256 of a presented token.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Whether a presented string can be one of our tokens at all.
pub fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Stores the first token of a new family (at login).
pub fn start_family(
    tx: &Transaction<'_>,
    new: &NewRefreshToken,
    user_id: &str,
    device_id: &str,
    now_unix: i64,
    ttl_secs: i64,
) -> rusqlite::Result<String> {
    let family = uuid::Uuid::now_v7().to_string();
    tx.execute(
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, device_id, issued_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![new.hash, family, user_id, device_id, now_unix, now_unix + ttl_secs],
    )?;
    Ok(family)
}

/// What presenting a refresh token led to.
#[derive(Debug)]
pub enum Rotation {
    /// Valid: `next` replaces it.
    Rotated { user: User, device_id: String },
    /// Already used: the family is now revoked.
    Reused { user_id: String, family_id: String },
    /// Unknown, expired, revoked, or the account is disabled.
    Refused,
}

/// A `refresh_tokens` row.
struct StoredToken {
    family_id: String,
    user_id: String,
    device_id: String,
    expires_at: i64,
    used_at: Option<i64>,
    revoked_at: Option<i64>,
}

/// Checks `presented_hash` and, if valid, marks it used and stores `next`.
pub fn rotate(
    tx: &Transaction<'_>,
    presented_hash: &[u8],
    next: &NewRefreshToken,
    now_unix: i64,
    ttl_secs: i64,
) -> Result<Rotation, UserError> {
    let row = tx
        .query_row(
            "SELECT family_id, user_id, device_id, expires_at, used_at, revoked_at
             FROM refresh_tokens WHERE token_hash = ?1",
            [presented_hash],
            |r| {
                Ok(StoredToken {
                    family_id: r.get(0)?,
                    user_id: r.get(1)?,
                    device_id: r.get(2)?,
                    expires_at: r.get(3)?,
                    used_at: r.get(4)?,
                    revoked_at: r.get(5)?,
                })
            },
        )
        .optional()?;
    let Some(StoredToken {
        family_id,
        user_id,
        device_id,
        expires_at,
        used_at,
        revoked_at,
    }) = row
    else {
        return Ok(Rotation::Refused);
    };
    if revoked_at.is_some() {
        return Ok(Rotation::Refused);
    }
    if used_at.is_some() {
        revoke_family(tx, &family_id, now_unix)?;
        return Ok(Rotation::Reused { user_id, family_id });
    }
    if expires_at <= now_unix {
        return Ok(Rotation::Refused);
    }
    let user = match users::find_by_id(tx, &user_id)? {
        Some(user) if !user.disabled => user,
        _ => {
            revoke_family(tx, &family_id, now_unix)?;
            return Ok(Rotation::Refused);
        }
    };
    tx.execute(
        "UPDATE refresh_tokens SET used_at = ?1 WHERE token_hash = ?2",
        params![now_unix, presented_hash],
    )?;
    tx.execute(
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, device_id, issued_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![next.hash, family_id, user_id, device_id, now_unix, now_unix + ttl_secs],
    )?;
    Ok(Rotation::Rotated { user, device_id })
}

/// Revokes the family of `presented_hash` (logout). Returns the user id when
/// the token was known.
pub fn revoke(
    tx: &Transaction<'_>,
    presented_hash: &[u8],
    now_unix: i64,
) -> rusqlite::Result<Option<String>> {
    let row: Option<(String, String)> = tx
        .query_row(
            "SELECT family_id, user_id FROM refresh_tokens WHERE token_hash = ?1",
            [presented_hash],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match row {
        Some((family, user_id)) => {
            revoke_family(tx, &family, now_unix)?;
            Ok(Some(user_id))
        }
        None => Ok(None),
    }
}

fn revoke_family(tx: &Transaction<'_>, family_id: &str, now_unix: i64) -> rusqlite::Result<usize> {
    tx.execute(
        "UPDATE refresh_tokens SET revoked_at = ?1 WHERE family_id = ?2 AND revoked_at IS NULL",
        params![now_unix, family_id],
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::users::{NewUser, Role};
    use rusqlite::Connection;

    fn db() -> (Connection, String) {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::db::migrations::migrations()
            .to_latest(&mut conn)
            .unwrap();
        let tx = conn.transaction().unwrap();
        let u = users::insert(
            &tx,
            &NewUser {
                username: "admin".into(),
                display_name: None,
                role: Role::Admin,
                team: None,
                unit_code: None,
            },
            "u1",
            "h",
            "t",
        )
        .unwrap();
        tx.commit().unwrap();
        (conn, u.id)
    }

    #[test]
    fn tokens_look_right() {
        let t = NewRefreshToken::generate().unwrap();
        assert!(well_formed(&t.token), "{}", t.token);
        assert_eq!(t.hash, hash_token(&t.token));
        assert!(!well_formed("short"));
        assert!(!format!("{t:?}").contains(&t.token));
    }

    #[test]
    fn rotation_then_reuse_revokes_the_family() {
        let (mut conn, uid) = db();
        let tx = conn.transaction().unwrap();
        let first = NewRefreshToken::generate().unwrap();
        start_family(&tx, &first, &uid, "dev", 100, 1000).unwrap();
        let second = NewRefreshToken::generate().unwrap();
        assert!(matches!(
            rotate(&tx, &first.hash, &second, 110, 1000).unwrap(),
            Rotation::Rotated { .. }
        ));
        // Reusing the first revokes everything, including the second.
        let third = NewRefreshToken::generate().unwrap();
        assert!(matches!(
            rotate(&tx, &first.hash, &third, 120, 1000).unwrap(),
            Rotation::Reused { .. }
        ));
        assert!(matches!(
            rotate(&tx, &second.hash, &third, 130, 1000).unwrap(),
            Rotation::Refused
        ));
    }

    #[test]
    fn expired_and_unknown_tokens_are_refused() {
        let (mut conn, uid) = db();
        let tx = conn.transaction().unwrap();
        let first = NewRefreshToken::generate().unwrap();
        start_family(&tx, &first, &uid, "dev", 100, 10).unwrap();
        let next = NewRefreshToken::generate().unwrap();
        assert!(matches!(
            rotate(&tx, &first.hash, &next, 110, 10).unwrap(),
            Rotation::Refused
        ));
        assert!(matches!(
            rotate(&tx, &hash_token("nope"), &next, 100, 10).unwrap(),
            Rotation::Refused
        ));
    }

    #[test]
    fn logout_revokes() {
        let (mut conn, uid) = db();
        let tx = conn.transaction().unwrap();
        let first = NewRefreshToken::generate().unwrap();
        start_family(&tx, &first, &uid, "dev", 100, 1000).unwrap();
        assert_eq!(revoke(&tx, &first.hash, 101).unwrap(), Some(uid));
        let next = NewRefreshToken::generate().unwrap();
        assert!(matches!(
            rotate(&tx, &first.hash, &next, 102, 1000).unwrap(),
            Rotation::Refused
        ));
    }
}
