//! Who may read a blob: the one place that decides it.
//!
//! A user may fetch a blob if they uploaded its bytes, or if a document
//! they may read references its hash. Today the referencing documents are
//! inspections (`inspection_photos`); later kinds (corrective actions,
//! their evidence) add a `UNION ALL` arm to [`READABLE_REFERENCES`], and
//! both [`may_read`] and [`missing`] follow.
//!
//! Which inspections a user may read:
//! - `admin`, `secretariat`, `leader`: every inspection;
//! - `inspector`: those of their team, and those they are a member of;
//! - `unit`: those of their own unit, once the inspection is `accepted`.

use rusqlite::{Connection, OptionalExtension, named_params};

use super::Sha256Hex;
use crate::auth::AuthUser;
use crate::users::Role;

/// The caller's scope, bound to the named parameters of
/// [`READABLE_REFERENCES`]. `None` matches nothing (`x = NULL` is never
/// true), so each role turns on only its own arms.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scope<'a> {
    all: bool,
    team: Option<&'a str>,
    member: Option<&'a str>,
    unit: Option<&'a str>,
}

fn scope(user: &AuthUser) -> Scope<'_> {
    let none = Scope {
        all: false,
        team: None,
        member: None,
        unit: None,
    };
    match user.role {
        Role::Admin | Role::Secretariat | Role::Leader => Scope { all: true, ..none },
        Role::Inspector => Scope {
            team: user.team_id.as_deref(),
            member: Some(&user.user_id),
            ..none
        },
        Role::Unit => Scope {
            unit: user.unit_code.as_deref(),
            ..none
        },
    }
}

/// `readable_refs(sha256)`: every hash referenced by a document the caller
/// may read. Parameters: `:all` (0/1), `:team`, `:member`, `:unit`.
const READABLE_REFERENCES: &str = "
    WITH readable_refs(sha256) AS (
        SELECT p.sha256
        FROM inspection_photos p
        JOIN inspections i ON i.id = p.inspection_id
        WHERE :all = 1
           OR i.team_id = :team
           OR EXISTS (SELECT 1 FROM inspection_members m
                      WHERE m.inspection_id = i.id AND m.user_id = :member)
           OR (i.unit_code = :unit AND i.status = 'accepted')
    )";

/// Whether `user` may fetch blob `sha256` (any rendition).
pub fn may_read(conn: &Connection, user: &AuthUser, sha256: &Sha256Hex) -> rusqlite::Result<bool> {
    let uploaded: bool = conn
        .query_row(
            "SELECT 1 FROM blob_uploaders WHERE sha256 = ?1 AND user_id = ?2",
            [sha256.as_str(), user.user_id.as_str()],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if uploaded {
        return Ok(true);
    }
    let s = scope(user);
    let sql =
        format!("{READABLE_REFERENCES} SELECT 1 FROM readable_refs WHERE sha256 = :sha LIMIT 1");
    let referenced = conn
        .prepare_cached(&sql)?
        .query_row(
            named_params! {
                ":all": s.all, ":team": s.team, ":member": s.member, ":unit": s.unit,
                ":sha": sha256.as_str(),
            },
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    Ok(referenced)
}

/// Hashes referenced by documents `user` may read that the server does
/// not hold yet, sorted, at most `limit`.
pub fn missing(conn: &Connection, user: &AuthUser, limit: u32) -> rusqlite::Result<Vec<String>> {
    let s = scope(user);
    let sql = format!(
        "{READABLE_REFERENCES}
         SELECT DISTINCT r.sha256 FROM readable_refs r
         WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.sha256 = r.sha256)
         ORDER BY r.sha256 LIMIT :limit"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        named_params! {
            ":all": s.all, ":team": s.team, ":member": s.member, ":unit": s.unit,
            ":limit": limit,
        },
        |r| r.get(0),
    )?;
    rows.collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn user(role: Role, id: &str, team: Option<&str>, unit: Option<&str>) -> AuthUser {
        AuthUser {
            user_id: id.into(),
            username: id.into(),
            role,
            team_id: team.map(Into::into),
            unit_code: unit.map(Into::into),
            device_id: "d".into(),
        }
    }

    /// Just the tables the rule reads.
    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE inspections (id TEXT PRIMARY KEY, unit_code TEXT, team_id TEXT, status TEXT);
             CREATE TABLE inspection_members (inspection_id TEXT, user_id TEXT, role TEXT);
             CREATE TABLE inspection_photos (inspection_id TEXT, sha256 TEXT);
             CREATE TABLE blobs (sha256 TEXT PRIMARY KEY);
             CREATE TABLE blob_uploaders (sha256 TEXT, user_id TEXT);
             INSERT INTO inspections VALUES ('i1', '00004', 'team-a', 'submitted');
             INSERT INTO inspections VALUES ('i2', '00070', 'team-b', 'accepted');
             INSERT INTO inspection_members VALUES ('i1', 'insp3', 'member');",
        )
        .unwrap();
        c
    }

    fn photo(c: &Connection, inspection: &str, sha: &Sha256Hex) {
        c.execute(
            "INSERT INTO inspection_photos VALUES (?1, ?2)",
            [inspection, sha.as_str()],
        )
        .unwrap();
    }

    #[test]
    fn the_matrix() {
        let c = conn();
        let p1 = Sha256Hex::of(b"photo in i1");
        let p2 = Sha256Hex::of(b"photo in i2");
        let lone = Sha256Hex::of(b"uploaded, unreferenced");
        photo(&c, "i1", &p1);
        photo(&c, "i2", &p2);
        c.execute(
            "INSERT INTO blob_uploaders VALUES (?1, 'insp4')",
            [lone.as_str()],
        )
        .unwrap();

        let cases = [
            (user(Role::Admin, "adm", None, None), [true, true, false]),
            (
                user(Role::Secretariat, "sec", None, None),
                [true, true, false],
            ),
            (user(Role::Leader, "lead", None, None), [true, true, false]),
            (
                user(Role::Inspector, "insp1", Some("team-a"), None),
                [true, false, false],
            ),
            // Team B, but a member of i1.
            (
                user(Role::Inspector, "insp3", Some("team-b"), None),
                [true, true, false],
            ),
            // Team B, uploader of `lone`.
            (
                user(Role::Inspector, "insp4", Some("team-b"), None),
                [false, true, true],
            ),
            (
                user(Role::Inspector, "insp5", Some("team-c"), None),
                [false, false, false],
            ),
            // i1 is only submitted; i2 is accepted.
            (
                user(Role::Unit, "u4", None, Some("00004")),
                [false, false, false],
            ),
            (
                user(Role::Unit, "u70", None, Some("00070")),
                [false, true, false],
            ),
        ];
        for (u, expected) in cases {
            let got = [&p1, &p2, &lone].map(|sha| may_read(&c, &u, sha).unwrap());
            assert_eq!(got, expected, "{} ({})", u.user_id, u.role);
        }
    }

    #[test]
    fn missing_lists_readable_unheld_hashes() {
        let c = conn();
        let held = Sha256Hex::of(b"held");
        let gone1 = Sha256Hex::of(b"missing 1");
        let gone2 = Sha256Hex::of(b"missing 2");
        photo(&c, "i1", &held);
        photo(&c, "i1", &gone1);
        photo(&c, "i2", &gone2);
        photo(&c, "i2", &gone1);
        c.execute("INSERT INTO blobs VALUES (?1)", [held.as_str()])
            .unwrap();
        let mut both = vec![gone1.as_str().to_owned(), gone2.as_str().to_owned()];
        both.sort();
        let sec = user(Role::Secretariat, "sec", None, None);
        assert_eq!(missing(&c, &sec, 100).unwrap(), both);
        assert_eq!(missing(&c, &sec, 1).unwrap(), both[..1]);
        let insp = user(Role::Inspector, "insp1", Some("team-a"), None);
        assert_eq!(missing(&c, &insp, 100).unwrap(), [gone1.as_str()]);
        let unit = user(Role::Unit, "u4", None, Some("00004"));
        assert!(missing(&c, &unit, 100).unwrap().is_empty());
    }
}
