//! Accounts and teams in the database.
//!
//! Functions here take a connection or the writer's transaction and the
//! facts they need (ids, hashes, `now`) as arguments; hashing and randomness
//! happen before, outside the writer thread.

use std::fmt;
use std::str::FromStr;

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::db::DbError;

/// What a user may do; decides access everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Secretariat,
    Inspector,
    Unit,
    Leader,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Secretariat,
        Role::Inspector,
        Role::Unit,
        Role::Leader,
    ];

    /// The name stored in the database and in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Secretariat => "secretariat",
            Role::Inspector => "inspector",
            Role::Unit => "unit",
            Role::Leader => "leader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Unknown role name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown role `{0}`; use one of admin, secretariat, inspector, unit, leader")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// An account, without its password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub team_id: Option<String>,
    pub team_name: Option<String>,
    pub unit_code: Option<String>,
    pub disabled: bool,
    pub created_at: String,
}

/// What `user add` asks for.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub display_name: Option<String>,
    pub role: Role,
    /// Team NAME; created if it does not exist yet.
    pub team: Option<String>,
    pub unit_code: Option<String>,
}

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(
        "invalid username `{0}`: use 3–64 characters: lowercase letters, digits, '.', '_' or '-'"
    )]
    InvalidUsername(String),
    #[error("a user named `{0}` already exists")]
    UsernameTaken(String),
    #[error("no user named `{0}`")]
    NotFound(String),
    #[error("role `unit` needs --unit CODE (a ward/commune or department code)")]
    MissingUnit,
    #[error("role `inspector` needs --team NAME")]
    MissingTeam,
    #[error("only role `unit` takes --unit")]
    UnexpectedUnit,
    #[error("unknown unit `{0}`; import units and departments first (`kiemtra import units FILE`)")]
    UnknownUnit(String),
    #[error("invalid team name: use 1–100 characters")]
    InvalidTeam,
    #[error("invalid display name: use at most 200 characters")]
    InvalidDisplayName,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for UserError {
    fn from(e: rusqlite::Error) -> Self {
        UserError::Db(DbError::Sqlite(e))
    }
}

/// Lowercases and checks a username.
pub fn normalize_username(raw: &str) -> Result<String, UserError> {
    let name = raw.trim().to_lowercase();
    let ok = (3..=64).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(name)
    } else {
        Err(UserError::InvalidUsername(raw.to_owned()))
    }
}

const USER_COLUMNS: &str = "u.id, u.username, u.display_name, u.role, u.team_id, t.name, \
                            u.unit_code, u.disabled, u.created_at";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    let role: String = row.get(3)?;
    let role = role.parse::<Role>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(User {
        id: row.get(0)?,
        username: row.get(1)?,
        display_name: row.get(2)?,
        role,
        team_id: row.get(4)?,
        team_name: row.get(5)?,
        unit_code: row.get(6)?,
        disabled: row.get::<_, i64>(7)? != 0,
        created_at: row.get(8)?,
    })
}

/// Creates a user. `id` and `password_hash` are made by the caller.
pub fn insert(
    tx: &Transaction<'_>,
    new: &NewUser,
    id: &str,
    password_hash: &str,
    now: &str,
) -> Result<User, UserError> {
    let username = normalize_username(&new.username)?;
    match (new.role, &new.unit_code) {
        (Role::Unit, None) => return Err(UserError::MissingUnit),
        (Role::Unit, Some(_)) | (_, None) => {}
        (_, Some(_)) => return Err(UserError::UnexpectedUnit),
    }
    if new.role == Role::Inspector && new.team.is_none() {
        return Err(UserError::MissingTeam);
    }
    if let Some(code) = &new.unit_code
        && !unit_exists(tx, code)?
    {
        return Err(UserError::UnknownUnit(code.clone()));
    }
    let display_name = new.display_name.clone().unwrap_or_else(|| username.clone());
    if display_name.chars().count() > 200 {
        return Err(UserError::InvalidDisplayName);
    }
    let team_id = match &new.team {
        Some(team) => Some(ensure_team(tx, team, now)?),
        None => None,
    };
    let taken: bool = tx
        .query_row(
            "SELECT 1 FROM users WHERE username = ?1",
            [&username],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if taken {
        return Err(UserError::UsernameTaken(username));
    }
    tx.execute(
        "INSERT INTO users (id, username, display_name, role, team_id, unit_code, disabled,
                            password_hash, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8)",
        params![
            id,
            username,
            display_name,
            new.role.as_str(),
            team_id,
            new.unit_code,
            password_hash,
            now
        ],
    )?;
    find(tx, &username)?.ok_or(UserError::NotFound(username))
}

/// The id of the team called `name`, creating it if needed.
pub fn ensure_team(tx: &Transaction<'_>, name: &str, now: &str) -> Result<String, UserError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(UserError::InvalidTeam);
    }
    if let Some(id) = tx
        .query_row("SELECT id FROM teams WHERE name = ?1", [name], |r| r.get(0))
        .optional()?
    {
        return Ok(id);
    }
    let id = uuid::Uuid::now_v7().to_string();
    tx.execute(
        "INSERT INTO teams (id, name, created_at) VALUES (?1, ?2, ?3)",
        params![id, name, now],
    )?;
    Ok(id)
}

/// Whether `code` is a current (post-2025) unit or a department.
pub fn unit_exists(conn: &Connection, code: &str) -> Result<bool, UserError> {
    let found = conn
        .query_row(
            "SELECT 1 FROM units WHERE structure = 'post_2025' AND code = ?1
             UNION ALL SELECT 1 FROM departments WHERE code = ?1 LIMIT 1",
            [code],
            |_| Ok(()),
        )
        .optional()?;
    Ok(found.is_some())
}

/// The user called `username` (already normalised), if any.
pub fn find(conn: &Connection, username: &str) -> Result<Option<User>, UserError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {USER_COLUMNS} FROM users u LEFT JOIN teams t ON t.id = u.team_id
                 WHERE u.username = ?1"
            ),
            [username],
            user_from_row,
        )
        .optional()?)
}

/// The user with id `id`, if any.
pub fn find_by_id(conn: &Connection, id: &str) -> Result<Option<User>, UserError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {USER_COLUMNS} FROM users u LEFT JOIN teams t ON t.id = u.team_id
                 WHERE u.id = ?1"
            ),
            [id],
            user_from_row,
        )
        .optional()?)
}

/// The user and their password hash, for login.
pub fn find_with_hash(
    conn: &Connection,
    username: &str,
) -> Result<Option<(User, String)>, UserError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {USER_COLUMNS}, u.password_hash FROM users u
                 LEFT JOIN teams t ON t.id = u.team_id WHERE u.username = ?1"
            ),
            [username],
            |row| Ok((user_from_row(row)?, row.get::<_, String>(9)?)),
        )
        .optional()?)
}

/// Every user, by username.
pub fn list(conn: &Connection) -> Result<Vec<User>, UserError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {USER_COLUMNS} FROM users u LEFT JOIN teams t ON t.id = u.team_id
         ORDER BY u.username"
    ))?;
    let rows = stmt.query_map([], user_from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Replaces a password hash and revokes the user's refresh tokens, so other
/// devices must log in again with the new password.
pub fn set_password(
    tx: &Transaction<'_>,
    username: &str,
    password_hash: &str,
    now_unix: i64,
) -> Result<User, UserError> {
    let user = find(tx, username)?.ok_or_else(|| UserError::NotFound(username.to_owned()))?;
    tx.execute(
        "UPDATE users SET password_hash = ?1 WHERE id = ?2",
        params![password_hash, user.id],
    )?;
    revoke_all_refresh_tokens(tx, &user.id, now_unix)?;
    Ok(user)
}

/// Disables an account and revokes its refresh tokens. Access tokens already
/// issued expire on their own (at most the access-token lifetime).
pub fn disable(tx: &Transaction<'_>, username: &str, now_unix: i64) -> Result<User, UserError> {
    let user = find(tx, username)?.ok_or_else(|| UserError::NotFound(username.to_owned()))?;
    tx.execute("UPDATE users SET disabled = 1 WHERE id = ?1", [&user.id])?;
    revoke_all_refresh_tokens(tx, &user.id, now_unix)?;
    Ok(User {
        disabled: true,
        ..user
    })
}

fn revoke_all_refresh_tokens(
    tx: &Transaction<'_>,
    user_id: &str,
    now_unix: i64,
) -> rusqlite::Result<usize> {
    tx.execute(
        "UPDATE refresh_tokens SET revoked_at = ?1 WHERE user_id = ?2 AND revoked_at IS NULL",
        params![now_unix, user_id],
    )
}

/// Number of accounts.
pub fn count(conn: &Connection) -> Result<i64, UserError> {
    Ok(conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?)
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
        conn.execute(
            "INSERT INTO units VALUES ('post_2025','00004','Ba Đình','Phường Ba Đình','ward','01','Ba Dinh Ward')",
            [],
        )
        .unwrap();
        conn
    }

    fn new(username: &str, role: Role) -> NewUser {
        NewUser {
            username: username.into(),
            display_name: None,
            role,
            team: None,
            unit_code: None,
        }
    }

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn usernames_are_normalised_and_checked() {
        assert_eq!(normalize_username(" Inspector1 ").unwrap(), "inspector1");
        assert!(normalize_username("ab").is_err());
        assert!(normalize_username("a b c").is_err());
        assert!(normalize_username("người").is_err());
    }

    #[test]
    fn insert_checks_role_requirements() {
        let mut conn = db();
        let tx = conn.transaction().unwrap();
        let t = "2025-07-01T00:00:00Z";
        assert!(matches!(
            insert(&tx, &new("unit-x", Role::Unit), "1", "h", t),
            Err(UserError::MissingUnit)
        ));
        assert!(matches!(
            insert(&tx, &new("insp-x", Role::Inspector), "2", "h", t),
            Err(UserError::MissingTeam)
        ));
        let mut bad_unit = new("unit-y", Role::Unit);
        bad_unit.unit_code = Some("99999".into());
        assert!(matches!(
            insert(&tx, &bad_unit, "3", "h", t),
            Err(UserError::UnknownUnit(_))
        ));
        let mut unit = new("unit-00004", Role::Unit);
        unit.unit_code = Some("00004".into());
        let u = insert(&tx, &unit, "4", "h", t).unwrap();
        assert_eq!(u.unit_code.as_deref(), Some("00004"));
        let mut insp = new("inspector1", Role::Inspector);
        insp.team = Some("Đoàn A".into());
        let i = insert(&tx, &insp, "5", "h", t).unwrap();
        assert_eq!(i.team_name.as_deref(), Some("Đoàn A"));
        assert!(matches!(
            insert(&tx, &new("Inspector1", Role::Admin), "6", "h", t),
            Err(UserError::UsernameTaken(_))
        ));
        let d = disable(&tx, "inspector1", 0).unwrap();
        assert!(d.disabled);
        assert_eq!(list(&tx).unwrap().len(), 2);
    }
}
