//! Demo mode: `kiemtra serve --demo` on an empty data folder seeds Hanoi's
//! real units and departments (embedded copies of `shared/data`), publishes
//! the sample Đề án 06 checklist, and creates demo accounts, all with the
//! password [`DEMO_PASSWORD`].
//!
//! A database remembers whether it is a demo (`settings.mode`), and the
//! server refuses to start a demo database without `--demo` — weak demo
//! passwords must never end up in production — or a real one with `--demo`.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::audit::{self, AuditEntry};
use crate::auth::password::{PasswordError, Passwords};
use crate::db::{Db, DbError};
use crate::reference::{self, ImportContext, ImportError};
use crate::users::{self, NewUser, Role, UserError};

/// Password of every demo account.
pub const DEMO_PASSWORD: &str = "demo";

/// Units that get a `unit-<code>` account and, later, the demo plan's
/// scheduled inspections: Phường Ba Đình, Phường Hoàn Kiếm, Phường Hà Đông,
/// Xã Sóc Sơn, Xã Ba Vì (wards and communes, central and outlying).
pub const DEMO_INSPECTION_UNITS: [&str; 5] = ["00004", "00070", "09556", "00376", "09700"];

/// The two demo inspection teams.
pub const DEMO_TEAM_A: &str = "Đoàn A";
pub const DEMO_TEAM_B: &str = "Đoàn B";

/// Embedded `hanoi_units.csv`.
pub const UNITS_CSV: &str = include_str!("../demo-data/hanoi_units.csv");
/// Embedded `hanoi_departments.csv`.
pub const DEPARTMENTS_CSV: &str = include_str!("../demo-data/hanoi_departments.csv");
/// Embedded sample Đề án 06 checklist (the template the demo plan uses).
pub const CHECKLIST_JSON: &str = include_str!("../demo-data/checklist_de_an_06.json");

/// `settings.key` holding the database's mode.
const MODE_KEY: &str = "mode";

/// Whether a database holds demo data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Demo,
    Standard,
}

/// Why demo mode could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "this data folder holds a DEMO database (accounts with password `demo`); start it with --demo, or use another --data folder for real use"
    )]
    DemoWithoutFlag,
    #[error(
        "--demo needs an empty data folder, but this database already holds real data; choose another --data folder"
    )]
    NotEmpty,
    #[error("the embedded demo data is invalid: {0}")]
    Data(#[from] ImportError),
    #[error("the embedded demo checklist cannot be published: {0}")]
    Template(String),
    #[error("cannot create demo accounts: {0}")]
    User(#[from] UserError),
    #[error("cannot hash demo passwords: {0}")]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for DemoError {
    fn from(e: rusqlite::Error) -> Self {
        DemoError::Db(DbError::Sqlite(e))
    }
}

/// One demo login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoAccount {
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub team: Option<&'static str>,
    pub unit_code: Option<String>,
}

/// Every demo account, in the order they are printed.
pub fn demo_accounts() -> Result<Vec<DemoAccount>, DemoError> {
    let fixed = |username: &str, display: &str, role, team| DemoAccount {
        username: username.to_owned(),
        display_name: display.to_owned(),
        role,
        team,
        unit_code: None,
    };
    let mut accounts = vec![
        fixed("admin", "Quản trị hệ thống", Role::Admin, None),
        fixed(
            "secretariat",
            "Thư ký Ban Chỉ đạo Đề án 06",
            Role::Secretariat,
            None,
        ),
        fixed("leader", "Lãnh đạo Công an Thành phố", Role::Leader, None),
        fixed(
            "inspector1",
            "Kiểm tra viên 1",
            Role::Inspector,
            Some(DEMO_TEAM_A),
        ),
        fixed(
            "inspector2",
            "Kiểm tra viên 2",
            Role::Inspector,
            Some(DEMO_TEAM_A),
        ),
        fixed(
            "inspector3",
            "Kiểm tra viên 3",
            Role::Inspector,
            Some(DEMO_TEAM_B),
        ),
        fixed(
            "inspector4",
            "Kiểm tra viên 4",
            Role::Inspector,
            Some(DEMO_TEAM_B),
        ),
    ];
    let units = reference::parse_units(UNITS_CSV)?;
    for code in DEMO_INSPECTION_UNITS {
        let display_name = units
            .iter()
            .find(|u| u.structure == reference::CURRENT_STRUCTURE && u.code == code)
            .map(|u| u.full_name.clone())
            .unwrap_or_else(|| format!("Đơn vị {code}"));
        accounts.push(DemoAccount {
            username: format!("unit-{code}"),
            display_name,
            role: Role::Unit,
            team: None,
            unit_code: Some(code.to_owned()),
        });
    }
    Ok(accounts)
}

/// The database's mode, if it has been started before.
pub fn read_mode(conn: &Connection) -> rusqlite::Result<Option<Mode>> {
    let value: Option<String> = conn
        .query_row(
            "SELECT value FROM settings WHERE key = ?1",
            [MODE_KEY],
            |r| r.get(0),
        )
        .optional()?;
    Ok(value.map(|v| {
        if v == "demo" {
            Mode::Demo
        } else {
            Mode::Standard
        }
    }))
}

fn is_empty(conn: &Connection) -> rusqlite::Result<bool> {
    let n: i64 = conn.query_row(
        "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM units)
              + (SELECT count(*) FROM departments) + (SELECT count(*) FROM audit_log)",
        [],
        |r| r.get(0),
    )?;
    Ok(n == 0)
}

fn set_mode(tx: &Transaction<'_>, mode: Mode) -> rusqlite::Result<()> {
    let value = match mode {
        Mode::Demo => "demo",
        Mode::Standard => "standard",
    };
    tx.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![MODE_KEY, value],
    )?;
    Ok(())
}

/// What [`prepare`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Not a demo.
    Standard,
    /// Demo data was seeded now.
    Seeded(Vec<DemoAccount>),
    /// A demo database seeded earlier.
    AlreadySeeded(Vec<DemoAccount>),
}

/// Checks the database's mode against `--demo` and seeds an empty database
/// in demo mode. `now` is RFC 3339 UTC.
pub async fn prepare(
    db: &Db,
    passwords: &Passwords,
    demo: bool,
    now: String,
) -> Result<Prepared, DemoError> {
    let (mode, empty) = db
        .read(|c| Ok::<_, DemoError>((read_mode(c)?, is_empty(c)?)))
        .await?;
    match (mode, demo) {
        (Some(Mode::Demo), true) => return Ok(Prepared::AlreadySeeded(demo_accounts()?)),
        (Some(Mode::Demo), false) => return Err(DemoError::DemoWithoutFlag),
        (Some(Mode::Standard), true) => return Err(DemoError::NotEmpty),
        (Some(Mode::Standard), false) => return Ok(Prepared::Standard),
        (None, true) if !empty => return Err(DemoError::NotEmpty),
        (None, false) => {
            db.write(|tx| {
                // Another process may have decided meanwhile; keep its answer.
                if read_mode(tx)?.is_none() {
                    set_mode(tx, Mode::Standard)?;
                }
                Ok::<_, DemoError>(())
            })
            .await?;
            return Ok(Prepared::Standard);
        }
        (None, true) => {}
    }

    let units = reference::parse_units(UNITS_CSV)?;
    let departments = reference::parse_departments(DEPARTMENTS_CSV)?;
    let accounts = demo_accounts()?;
    let mut hashed = Vec::with_capacity(accounts.len());
    for account in &accounts {
        let hash = passwords.hash(DEMO_PASSWORD.to_owned()).await?;
        hashed.push((account.clone(), uuid::Uuid::now_v7().to_string(), hash));
    }
    let seeded = accounts.clone();
    db.write(move |tx| {
        if read_mode(tx)?.is_some() || !is_empty(tx)? {
            return Err(DemoError::NotEmpty);
        }
        set_mode(tx, Mode::Demo)?;
        let ctx = |source: &str, text: &str| ImportContext {
            actor: "system".into(),
            source: source.into(),
            sha256: reference::file_sha256(text),
            now: now.clone(),
        };
        reference::import_units(tx, &units, &ctx("demo:hanoi_units.csv", UNITS_CSV))?;
        reference::import_departments(
            tx,
            &departments,
            &ctx("demo:hanoi_departments.csv", DEPARTMENTS_CSV),
        )?;
        let checklist = sync_core::template::Template::from_json(CHECKLIST_JSON)
            .map_err(|e| DemoError::Template(e.to_string()))?;
        crate::templates::publish(tx, &checklist, "system", &now)
            .map_err(|e| DemoError::Template(e.to_string()))?;
        for (account, id, hash) in &hashed {
            users::insert(
                tx,
                &NewUser {
                    username: account.username.clone(),
                    display_name: Some(account.display_name.clone()),
                    role: account.role,
                    team: account.team.map(str::to_owned),
                    unit_code: account.unit_code.clone(),
                },
                id,
                hash,
                &now,
            )?;
        }
        audit::append(
            tx,
            &now,
            &AuditEntry {
                actor: Some("system"),
                action: "demo.seed",
                subject: "demo",
                detail: serde_json::json!({
                    "accounts": hashed.iter().map(|(a, _, _)| a.username.clone()).collect::<Vec<_>>(),
                }),
            },
        )?;
        Ok(())
    })
    .await?;
    Ok(Prepared::Seeded(seeded))
}

/// The lines printed at start in demo mode.
pub fn login_summary(accounts: &[DemoAccount]) -> String {
    let mut out = format!("Demo accounts (password `{DEMO_PASSWORD}`):\n");
    for a in accounts {
        let role = match (&a.team, &a.unit_code) {
            (Some(team), _) => format!("{}, {team}", a.role),
            (_, Some(unit)) => format!("{} {unit}", a.role),
            _ => a.role.to_string(),
        };
        out.push_str(&format!(
            "  {:<12} {} ({role})\n",
            a.username, a.display_name
        ));
    }
    out
}

/// Schedules the demo's inspections, once (when a demo database has none):
/// one per unit of [`DEMO_INSPECTION_UNITS`], alternating teams A and B,
/// a week apart in the autumn of 2025.
pub async fn schedule_inspections(state: &crate::AppState) -> Result<(), crate::error::ApiError> {
    let existing: i64 = state
        .db
        .read(|c| {
            c.query_row("SELECT COUNT(*) FROM inspections", [], |r| r.get(0))
                .map_err(crate::error::ApiError::internal)
        })
        .await?;
    if existing > 0 {
        return Ok(());
    }
    for (i, unit) in DEMO_INSPECTION_UNITS.iter().enumerate() {
        let team = if i % 2 == 0 { DEMO_TEAM_A } else { DEMO_TEAM_B };
        // Mondays a week apart from 06/10/2025.
        let date = jiff::civil::date(2025, 10, 6)
            .checked_add(jiff::Span::new().days(7 * i64::try_from(i).unwrap_or(0)))
            .map_err(crate::error::ApiError::internal)?;
        let req = crate::inspections::ScheduleRequest {
            unit_code: (*unit).to_owned(),
            template_id: "DA06-HN-2025-v1".to_owned(),
            template_version: 1,
            team: team.to_owned(),
            date: date.to_string(),
            lead: None,
        };
        crate::inspections::schedule(state, req, None).await?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn embedded_data_is_valid_and_complete() {
        let units = reference::parse_units(UNITS_CSV).unwrap();
        let current: Vec<_> = units
            .iter()
            .filter(|u| u.structure == "post_2025" && u.unit_type != "city")
            .collect();
        assert_eq!(current.len(), 126);
        assert_eq!(current.iter().filter(|u| u.unit_type == "ward").count(), 51);
        let departments = reference::parse_departments(DEPARTMENTS_CSV).unwrap();
        assert_eq!(departments.len(), 18);
        let checklist = sync_core::template::Template::from_json(CHECKLIST_JSON).unwrap();
        assert_eq!(checklist.items().count(), 30);
    }

    #[test]
    fn demo_accounts_cover_every_role_and_unit() {
        let accounts = demo_accounts().unwrap();
        assert_eq!(accounts.len(), 7 + DEMO_INSPECTION_UNITS.len());
        let ba_dinh = accounts
            .iter()
            .find(|a| a.username == "unit-00004")
            .unwrap();
        assert_eq!(ba_dinh.display_name, "Phường Ba Đình");
        for role in Role::ALL {
            assert!(accounts.iter().any(|a| a.role == role), "{role}");
        }
        let summary = login_summary(&accounts);
        assert!(summary.contains("inspector3"), "{summary}");
        assert!(
            summary.contains("unit-00004   Phường Ba Đình (unit 00004)"),
            "{summary}"
        );
    }
}
