//! The `kiemtra` command line: its arguments (clap derive) and every command
//! except `serve`, whose loop `main` drives with [`crate::start`] and
//! [`crate::serve`].
//!
//! ```text
//! kiemtra serve [--data DIR] [--addr HOST:PORT] [--config FILE] [--demo]
//! kiemtra user add USERNAME --role ROLE [--team T] [--unit CODE] [--display-name N] [--password-stdin]
//! kiemtra user passwd USERNAME [--password-stdin]
//! kiemtra user disable USERNAME
//! kiemtra user list [--json]
//! kiemtra import units FILE.csv
//! kiemtra import departments FILE.csv
//! kiemtra import template FILE.json
//! kiemtra audit verify
//! ```
//!
//! Passwords never come from arguments (they would show in `ps` and shell
//! history): `--password-stdin` reads one line, else `KIEMTRA_PASSWORD`.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::audit::{self, AuditEntry, AuditError};
use crate::auth::password::{self, PasswordError, Passwords};
use crate::clock;
use crate::db::{Db, DbError};
use crate::reference::{self, ImportContext, ImportError, ImportSummary};
use crate::settings::{Overrides, Settings, SettingsError};
use crate::templates::{self, Published, TemplateImportError};
use crate::users::{self, NewUser, Role, UserError};
use crate::{ServeError, StartError};

/// Environment variable read for passwords when `--password-stdin` is absent.
pub const PASSWORD_ENV: &str = "KIEMTRA_PASSWORD";

/// kiemtra: offline-first inspections and follow-up for Đề án 06.
#[derive(Debug, Parser)]
#[command(name = "kiemtra", version, about)]
pub struct Cli {
    /// Data folder (database, keys); default ./data.
    #[arg(long, global = true, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// TOML settings file.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The settings given as flags.
    pub fn overrides(&self) -> Overrides {
        let (addr, demo) = match &self.command {
            Command::Serve { addr, demo } => (addr.clone(), *demo),
            _ => (None, false),
        };
        Overrides {
            data_dir: self.data.clone(),
            addr,
            demo,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve {
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long, value_name = "HOST:PORT")]
        addr: Option<String>,
        /// Demo mode: seed Hanoi's units and demo accounts into an empty data folder.
        #[arg(long)]
        demo: bool,
    },
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Import reference data.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account.
    Add {
        username: String,
        /// admin, secretariat, inspector, unit or leader.
        #[arg(long)]
        role: Role,
        /// Team name (inspectors); created if new.
        #[arg(long, value_name = "T")]
        team: Option<String>,
        /// Unit or department code (role unit).
        #[arg(long, value_name = "CODE")]
        unit: Option<String>,
        /// Name shown to people.
        #[arg(long, value_name = "N")]
        display_name: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a new password (signs the user out everywhere).
    Passwd {
        username: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable an account (signs the user out everywhere).
    Disable { username: String },
    /// List accounts.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Import hanoi_units.csv (code,name,type,parent_code,structure,full_name,name_en).
    Units { file: PathBuf },
    /// Import hanoi_departments.csv (code,name,name_en,kind,note,source).
    Departments { file: PathBuf },
    /// Publish a checklist template (JSON); a published version never changes.
    Template { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the audit log's hash chain.
    Verify,
}

/// Why a command failed; [`CliError::exit_code`] maps it to the process exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Import { path: PathBuf, source: ImportError },
    #[error("{path}: {source}")]
    Template {
        path: PathBuf,
        // Boxed: template errors are large and this enum travels often.
        source: Box<TemplateImportError>,
    },
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("no password given: pipe it in with --password-stdin or set {PASSWORD_ENV}")]
    NoPassword,
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for CliError {
    fn from(e: rusqlite::Error) -> Self {
        CliError::Db(DbError::Sqlite(e))
    }
}

impl CliError {
    /// 2: fix the invocation or settings; 3: the audit chain is broken;
    /// 1: anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Settings(_) | CliError::NoPassword => 2,
            CliError::Audit(AuditError::Broken { .. }) => 3,
            _ => 1,
        }
    }
}

/// Runs every command but `serve`, against the database of `settings`.
pub async fn run(command: Command, settings: Settings) -> Result<(), CliError> {
    let db = crate::open_db(&settings).await?;
    let result = match command {
        Command::Serve { .. } => Ok(()),
        Command::User(cmd) => run_user(&db, &settings, cmd).await,
        Command::Import(ImportCommand::Units { file }) => {
            import_units_file(&db, &file, "cli").await.map(|_| ())
        }
        Command::Import(ImportCommand::Departments { file }) => {
            import_departments_file(&db, &file, "cli").await.map(|_| ())
        }
        Command::Import(ImportCommand::Template { file }) => {
            import_template_file(&db, &file, "cli").await.map(|_| ())
        }
        Command::Audit(AuditCommand::Verify) => verify_audit(&db).await,
    };
    let closed = db.close().await;
    result?;
    closed?;
    Ok(())
}

async fn run_user(db: &Db, settings: &Settings, cmd: UserCommand) -> Result<(), CliError> {
    let passwords = Passwords::new(
        1,
        settings.auth.password_pepper.as_ref().map(|p| p.expose()),
    );
    let now_ts = clock::now();
    let now = clock::rfc3339(now_ts);
    match cmd {
        UserCommand::Add {
            username,
            role,
            team,
            unit,
            display_name,
            password_stdin,
        } => {
            let new = NewUser {
                username: users::normalize_username(&username)?,
                display_name,
                role,
                team,
                unit_code: unit,
            };
            let password = read_password(password_stdin)?;
            password::check_policy(&password)?;
            let hash = passwords.hash(password).await?;
            let id = uuid::Uuid::now_v7().to_string();
            let user = db
                .write(move |tx| {
                    let user = users::insert(tx, &new, &id, &hash, &now)?;
                    audit::append(
                        tx,
                        &now,
                        &AuditEntry {
                            actor: Some("cli"),
                            action: "user.create",
                            subject: &user.username,
                            detail: json!({ "role": user.role, "team": user.team_name, "unit": user.unit_code }),
                        },
                    )?;
                    Ok::<_, UserError>(user)
                })
                .await?;
            println!(
                "created user {} ({}, id {})",
                user.username, user.role, user.id
            );
        }
        UserCommand::Passwd {
            username,
            password_stdin,
        } => {
            let username = users::normalize_username(&username)?;
            let password = read_password(password_stdin)?;
            password::check_policy(&password)?;
            let hash = passwords.hash(password).await?;
            let user = db
                .write(move |tx| {
                    let user = users::set_password(tx, &username, &hash, now_ts.as_second())?;
                    audit::append(
                        tx,
                        &now,
                        &AuditEntry {
                            actor: Some("cli"),
                            action: "user.passwd",
                            subject: &user.username,
                            detail: json!({}),
                        },
                    )?;
                    Ok::<_, UserError>(user)
                })
                .await?;
            println!(
                "password of {} changed; their sessions were revoked",
                user.username
            );
        }
        UserCommand::Disable { username } => {
            let username = users::normalize_username(&username)?;
            let user = db
                .write(move |tx| {
                    let user = users::disable(tx, &username, now_ts.as_second())?;
                    audit::append(
                        tx,
                        &now,
                        &AuditEntry {
                            actor: Some("cli"),
                            action: "user.disable",
                            subject: &user.username,
                            detail: json!({}),
                        },
                    )?;
                    Ok::<_, UserError>(user)
                })
                .await?;
            println!(
                "user {} disabled; their sessions were revoked",
                user.username
            );
        }
        UserCommand::List { json } => {
            let list = db.read(users::list).await?;
            if json {
                let text = serde_json::to_string_pretty(&list)
                    .map_err(|e| CliError::Db(DbError::Commit(e.to_string())))?;
                println!("{text}");
            } else {
                print!("{}", user_table(&list));
            }
        }
    }
    Ok(())
}

/// A plain-text table of accounts.
pub fn user_table(list: &[users::User]) -> String {
    let mut out = format!(
        "{:<20} {:<12} {:<12} {:<8} {:<9} {}\n",
        "USERNAME", "ROLE", "TEAM", "UNIT", "STATUS", "DISPLAY NAME"
    );
    for u in list {
        out.push_str(&format!(
            "{:<20} {:<12} {:<12} {:<8} {:<9} {}\n",
            u.username,
            u.role.as_str(),
            u.team_name.as_deref().unwrap_or("-"),
            u.unit_code.as_deref().unwrap_or("-"),
            if u.disabled { "disabled" } else { "active" },
            u.display_name
        ));
    }
    out
}

/// The password from standard input or the environment.
fn read_password(from_stdin: bool) -> Result<String, CliError> {
    let raw = if from_stdin {
        let mut text = String::new();
        std::io::stdin()
            .take(password::MAX_PASSWORD_BYTES as u64 + 2)
            .read_to_string(&mut text)
            .map_err(|source| CliError::Read {
                path: PathBuf::from("<stdin>"),
                source,
            })?;
        text.lines().next().unwrap_or("").to_owned()
    } else {
        std::env::var(PASSWORD_ENV).map_err(|_| CliError::NoPassword)?
    };
    if raw.is_empty() {
        return Err(CliError::NoPassword);
    }
    Ok(raw)
}

fn read_file(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })
}

fn print_summary(kind: &str, s: &ImportSummary) {
    println!(
        "imported {} {kind}: {} new, {} updated, {} unchanged",
        s.rows, s.inserted, s.updated, s.unchanged
    );
}

/// `kiemtra import units FILE`: check every row, then upsert all in one
/// transaction.
pub async fn import_units_file(
    db: &Db,
    path: &Path,
    actor: &str,
) -> Result<ImportSummary, CliError> {
    println!("reading {}", path.display());
    let text = read_file(path)?;
    let import_err = |source| CliError::Import {
        path: path.to_owned(),
        source,
    };
    let rows = reference::parse_units(&text).map_err(import_err)?;
    println!("checked {} rows; writing", rows.len());
    let ctx = ImportContext {
        actor: actor.to_owned(),
        source: path.display().to_string(),
        sha256: reference::file_sha256(&text),
        now: clock::rfc3339(clock::now()),
    };
    let summary = db
        .write(move |tx| reference::import_units(tx, &rows, &ctx))
        .await
        .map_err(import_err)?;
    print_summary("units", &summary);
    Ok(summary)
}

/// `kiemtra import departments FILE`.
pub async fn import_departments_file(
    db: &Db,
    path: &Path,
    actor: &str,
) -> Result<ImportSummary, CliError> {
    println!("reading {}", path.display());
    let text = read_file(path)?;
    let import_err = |source| CliError::Import {
        path: path.to_owned(),
        source,
    };
    let rows = reference::parse_departments(&text).map_err(import_err)?;
    println!("checked {} rows; writing", rows.len());
    let ctx = ImportContext {
        actor: actor.to_owned(),
        source: path.display().to_string(),
        sha256: reference::file_sha256(&text),
        now: clock::rfc3339(clock::now()),
    };
    let summary = db
        .write(move |tx| reference::import_departments(tx, &rows, &ctx))
        .await
        .map_err(import_err)?;
    print_summary("departments", &summary);
    Ok(summary)
}

/// `kiemtra import template FILE.json`: validate, then publish unless the
/// same version exists (identical content: nothing to do; different: refused).
pub async fn import_template_file(
    db: &Db,
    path: &Path,
    actor: &str,
) -> Result<Published, CliError> {
    let text = read_file(path)?;
    let template_err = |source| CliError::Template {
        path: path.to_owned(),
        source: Box::new(source),
    };
    let template = sync_core::template::Template::from_json(&text)
        .map_err(|e| template_err(TemplateImportError::Invalid(e)))?;
    println!(
        "checked template {} ({} items)",
        template.key(),
        template.items().count()
    );
    let actor = actor.to_owned();
    let now = clock::rfc3339(clock::now());
    let published = db
        .write(move |tx| templates::publish(tx, &template, &actor, &now))
        .await
        .map_err(template_err)?;
    match &published {
        Published::New { key, sha256 } => println!("published {key} (sha256 {sha256})"),
        Published::Unchanged { key, .. } => {
            println!("{key} is already published with the same content; nothing to do")
        }
    }
    Ok(published)
}

async fn verify_audit(db: &Db) -> Result<(), CliError> {
    let report = db
        .read(|c| audit::verify(c).map_err(VerifyError::from))
        .await
        .map_err(|e| match e {
            VerifyError::Audit(a) => CliError::Audit(a),
            VerifyError::Db(d) => CliError::Db(d),
        })?;
    println!(
        "audit log OK: {} entries; head {} (record it elsewhere to detect truncation)",
        report.entries, report.head
    );
    Ok(())
}

/// `audit::verify` inside `Db::read`, which needs `From<DbError>`.
#[derive(Debug)]
enum VerifyError {
    Audit(AuditError),
    Db(DbError),
}

impl From<AuditError> for VerifyError {
    fn from(e: AuditError) -> Self {
        VerifyError::Audit(e)
    }
}

impl From<DbError> for VerifyError {
    fn from(e: DbError) -> Self {
        VerifyError::Db(e)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_anywhere() {
        let cli = Cli::try_parse_from([
            "kiemtra",
            "serve",
            "--data",
            "/tmp/x",
            "--addr",
            "127.0.0.1:0",
            "--demo",
        ])
        .unwrap();
        let o = cli.overrides();
        assert_eq!(o.data_dir.unwrap(), PathBuf::from("/tmp/x"));
        assert_eq!(o.addr.as_deref(), Some("127.0.0.1:0"));
        assert!(o.demo);
        let cli = Cli::try_parse_from([
            "kiemtra",
            "--data",
            "d",
            "user",
            "add",
            "inspector9",
            "--role",
            "inspector",
            "--team",
            "Đoàn C",
            "--password-stdin",
        ])
        .unwrap();
        match cli.command {
            Command::User(UserCommand::Add {
                role,
                team,
                password_stdin,
                ..
            }) => {
                assert_eq!(role, Role::Inspector);
                assert_eq!(team.as_deref(), Some("Đoàn C"));
                assert!(password_stdin);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["kiemtra", "user", "add", "x", "--role", "root"]).is_err());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(CliError::NoPassword.exit_code(), 2);
        assert_eq!(
            CliError::Audit(AuditError::Broken {
                seq: 1,
                reason: "x".into()
            })
            .exit_code(),
            3
        );
        assert_eq!(CliError::Db(DbError::Closed).exit_code(), 1);
    }
}
