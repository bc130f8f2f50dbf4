//! `kiemtra-field`: a command line that plays a tablet, over the same
//! library API the apps use.
//!
//! ```text
//! kiemtra-field --store DIR login --server URL --username U --password P
//! kiemtra-field --store DIR sync
//! kiemtra-field --store DIR assignments [--json]
//! kiemtra-field --store DIR answer INSPECTION ITEM VALUE [--field K=V]… [--note N]
//! kiemtra-field --store DIR finding add INSPECTION --title T [--note N] [--severity S] [--item I]
//! kiemtra-field --store DIR photo add INSPECTION FILE [--item I] [--finding F] [--caption C]
//! kiemtra-field --store DIR conflicts [INSPECTION] [--json]
//! kiemtra-field --store DIR settle INSPECTION ITEM VALUE
//! kiemtra-field --store DIR submit INSPECTION [--note N]
//! kiemtra-field --store DIR status --json
//! kiemtra-field --store DIR refused [--json]
//! kiemtra-field --store DIR rebase INSPECTION
//! ```
//!
//! INSPECTION is a document id, an `automerge:` URL, or the unit code of
//! one assignment. Exit codes: 0 done, 1 failed, 2 bad usage, 3 log in
//! again (local work is kept), 4 the server could not be reached, 5 done,
//! but the server refused some work (kept on this device; see `refused`).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use mobile_bridge::answer::parse_fields;
use mobile_bridge::{
    FieldError, FindingEdit, NewFinding, PhotoTarget, RefusedView, SyncListener, SyncProgress,
    Tablet, TabletConfig,
};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "kiemtra-field",
    version,
    about = "A kiemtra tablet on the command line"
)]
struct Cli {
    /// The tablet's store folder (created if missing).
    #[arg(long, env = "KIEMTRA_FIELD_STORE", global = true)]
    store: Option<PathBuf>,
    /// Passphrase of an encrypted store (builds with `sqlcipher`).
    #[arg(
        long,
        env = "KIEMTRA_FIELD_PASSPHRASE",
        hide_env_values = true,
        global = true
    )]
    passphrase: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Logs in (again); unsynced work on the device is kept.
    Login {
        #[arg(long)]
        server: String,
        #[arg(long)]
        username: String,
        #[arg(long, env = "KIEMTRA_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Forgets the tokens (documents and photos stay).
    Logout,
    /// Who is signed in.
    Whoami {
        #[arg(long)]
        json: bool,
    },
    /// The inspections assigned to the user.
    Assignments {
        #[arg(long)]
        json: bool,
    },
    /// One inspection: items and answers, findings, photos, review.
    Show {
        inspection: String,
        #[arg(long)]
        json: bool,
    },
    /// Answers a checklist item (VALUE: yes/no, partial, N/D, a number, text,
    /// an option, JSON for action lists, or n/a).
    Answer {
        inspection: String,
        item: String,
        value: String,
        /// An extra field of the item, KEY=VALUE (repeatable).
        #[arg(long = "field")]
        fields: Vec<String>,
        #[arg(long)]
        note: Option<String>,
    },
    /// Findings.
    Finding {
        #[command(subcommand)]
        command: FindingCommand,
    },
    /// Photos.
    Photo {
        #[command(subcommand)]
        command: PhotoCommand,
    },
    /// Items (and finding fields) with concurrent values to settle.
    Conflicts {
        inspection: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Settles a conflicted answer with VALUE (team lead).
    Settle {
        inspection: String,
        item: String,
        value: String,
        #[arg(long = "field")]
        fields: Vec<String>,
        #[arg(long)]
        note: Option<String>,
    },
    /// Hands the inspection in.
    Submit {
        inspection: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Review decisions and comments of an inspection.
    Review {
        inspection: String,
        #[arg(long)]
        json: bool,
    },
    /// Corrective actions on this device.
    Actions {
        #[arg(long)]
        json: bool,
    },
    /// Syncs documents, then photos.
    Sync {
        #[arg(long)]
        json: bool,
    },
    /// Every local document with its heads and what is not uploaded yet.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Work the server refused, kept on this device, with the reasons.
    Refused {
        #[arg(long)]
        json: bool,
    },
    /// Tries again to write an inspection's refused work on top of the
    /// server's state (then sync to upload it).
    Rebase {
        inspection: String,
        #[arg(long)]
        json: bool,
    },
}

/// Exit code: done, but some work stays refused.
const EXIT_REFUSED: u8 = 5;

#[derive(Debug, Subcommand)]
enum FindingCommand {
    /// Adds a finding; prints its id.
    Add {
        inspection: String,
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        note: String,
        /// low, medium or high.
        #[arg(long, default_value = "medium")]
        severity: String,
        /// The checklist item the finding is about.
        #[arg(long)]
        item: Option<String>,
    },
    /// Edits a finding.
    Edit {
        inspection: String,
        finding: String,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        severity: Option<String>,
        /// Replaces the note.
        #[arg(long)]
        note: Option<String>,
        /// Appends to the note.
        #[arg(long)]
        append_note: Option<String>,
    },
    /// Marks a finding deleted (it can be restored).
    Delete { inspection: String, finding: String },
    /// Brings a deleted finding back.
    Restore { inspection: String, finding: String },
}

#[derive(Debug, Subcommand)]
enum PhotoCommand {
    /// Adds a photo from an image file; prints its sha256.
    Add {
        inspection: String,
        file: PathBuf,
        #[arg(long)]
        item: Option<String>,
        #[arg(long)]
        finding: Option<String>,
        #[arg(long)]
        caption: Option<String>,
    },
}

/// Prints sync progress on standard error.
#[derive(Debug)]
struct Progress;

impl SyncListener for Progress {
    fn on_progress(&self, p: SyncProgress) {
        eprintln!(
            "sync: {:?} (attempt {}) documents {} photos {}/{} bytes {}",
            p.phase, p.attempt, p.documents, p.photos_done, p.photos_total, p.bytes_uploaded
        );
    }
    fn on_error(&self, message: String) {
        eprintln!("sync: {message}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kiemtra-field: {e}");
            ExitCode::from(match e {
                FieldError::NeedsLogin(_) | FieldError::InvalidCredentials => 3,
                FieldError::Network(_) => 4,
                _ => 1,
            })
        }
    }
}

fn print_json(v: &impl Serialize) -> Result<(), FieldError> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| FieldError::Storage(format!("cannot write JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

fn fields(pairs: &[String]) -> Result<HashMap<String, String>, FieldError> {
    Ok(parse_fields(pairs)?.into_iter().collect())
}

fn print_refused(list: &[RefusedView]) {
    for r in list {
        let rule = match (&r.rule, &r.path) {
            (Some(rule), Some(path)) => format!(" [{rule} at {path}]"),
            (Some(rule), None) => format!(" [{rule}]"),
            _ => String::new(),
        };
        println!(
            "  {} {} ({}){rule}: {}",
            r.document_id, r.label, r.state, r.reason
        );
    }
}

/// Runs the command; the exit code on success (0, or [`EXIT_REFUSED`]).
fn run(cli: Cli) -> Result<u8, FieldError> {
    let store = cli.store.ok_or_else(|| {
        FieldError::InvalidInput("give the tablet's store folder with --store DIR".into())
    })?;
    let config = TabletConfig {
        passphrase: cli.passphrase,
        ..TabletConfig::default()
    };
    let tablet = Tablet::open(&store, config)?;
    match cli.command {
        Command::Login {
            server,
            username,
            password,
        } => {
            let s = tablet.login(&server, &username, &password)?;
            println!(
                "logged in as {} ({}) on {}; device {}",
                s.username.unwrap_or_default(),
                s.role.unwrap_or_default(),
                s.server_url.unwrap_or_default(),
                s.device_id
            );
        }
        Command::Logout => {
            tablet.logout()?;
            println!("logged out; documents and photos stay on this device");
        }
        Command::Whoami { json } => {
            let s = tablet.session()?;
            if json {
                print_json(&s)?;
            } else {
                println!(
                    "{:?}: {} ({}) on {}; device {}",
                    s.state,
                    s.username.unwrap_or_else(|| "-".into()),
                    s.role.unwrap_or_else(|| "-".into()),
                    s.server_url.unwrap_or_else(|| "-".into()),
                    s.device_id
                );
            }
        }
        Command::Assignments { json } => {
            let list = tablet.assignments()?;
            if json {
                print_json(&list)?;
            } else if list.is_empty() {
                println!("no assignments on this device; sync first");
            } else {
                for a in list {
                    println!(
                        "{}  {}  {}  {}  {}  {}/{} answered  {} findings  {} photos  {} conflicts  {} unsynced",
                        a.id,
                        a.unit_code.as_deref().unwrap_or("-"),
                        a.unit_name.as_deref().or(a.title.as_deref()).unwrap_or("-"),
                        a.scheduled_date.as_deref().unwrap_or("-"),
                        a.status.as_deref().unwrap_or("not synced"),
                        a.items_answered,
                        a.items_total,
                        a.findings,
                        a.photos,
                        a.conflicts,
                        a.pending_changes
                    );
                }
            }
        }
        Command::Show { inspection, json } => {
            let d = tablet.inspection(&inspection)?;
            if json {
                print_json(&d)?;
            } else {
                println!(
                    "{} {} ({}) {} — {}",
                    d.unit_code, d.unit_name, d.template_id, d.scheduled_date, d.status
                );
                for i in &d.items {
                    let a = i.answer.as_ref().map_or("-", |a| a.value.as_str());
                    let c = if i.conflicted { "  [conflict]" } else { "" };
                    println!("  {:<4} {a}{c}", i.id);
                }
                for f in d.findings.iter().filter(|f| !f.deleted) {
                    println!(
                        "  finding {} [{}] {}: {}",
                        f.id, f.severity, f.title, f.note
                    );
                }
                for p in &d.photos {
                    println!(
                        "  photo {} {} bytes{}",
                        p.sha256,
                        p.bytes,
                        if p.uploaded { "" } else { " (not uploaded)" }
                    );
                }
            }
        }
        Command::Answer {
            inspection,
            item,
            value,
            fields: f,
            note,
        } => {
            let a = tablet.answer(&inspection, &item, &value, fields(&f)?, note)?;
            println!("{item} = {}", a.value);
        }
        Command::Settle {
            inspection,
            item,
            value,
            fields: f,
            note,
        } => {
            let a = tablet.settle(&inspection, &item, &value, fields(&f)?, note)?;
            println!("{item} settled = {}", a.value);
        }
        Command::Finding { command } => match command {
            FindingCommand::Add {
                inspection,
                title,
                note,
                severity,
                item,
            } => {
                let id = tablet.add_finding(
                    &inspection,
                    NewFinding {
                        title,
                        note,
                        severity,
                        item_id: item,
                    },
                )?;
                println!("{id}");
            }
            FindingCommand::Edit {
                inspection,
                finding,
                title,
                severity,
                note,
                append_note,
            } => {
                tablet.edit_finding(
                    &inspection,
                    &finding,
                    FindingEdit {
                        title,
                        severity,
                        note,
                        append_note,
                        deleted: None,
                    },
                )?;
                println!("finding {finding} updated");
            }
            FindingCommand::Delete {
                inspection,
                finding,
            } => {
                tablet.edit_finding(
                    &inspection,
                    &finding,
                    FindingEdit {
                        deleted: Some(true),
                        ..FindingEdit::default()
                    },
                )?;
                println!("finding {finding} deleted");
            }
            FindingCommand::Restore {
                inspection,
                finding,
            } => {
                tablet.edit_finding(
                    &inspection,
                    &finding,
                    FindingEdit {
                        deleted: Some(false),
                        ..FindingEdit::default()
                    },
                )?;
                println!("finding {finding} restored");
            }
        },
        Command::Photo {
            command:
                PhotoCommand::Add {
                    inspection,
                    file,
                    item,
                    finding,
                    caption,
                },
        } => {
            let p = tablet.add_photo(
                &inspection,
                &file,
                PhotoTarget {
                    item_id: item,
                    finding_id: finding,
                    caption,
                },
            )?;
            println!("{}", p.sha256);
        }
        Command::Conflicts { inspection, json } => {
            let list = tablet.conflicts(inspection.as_deref())?;
            if json {
                print_json(&list)?;
            } else if list.is_empty() {
                println!("no conflicts");
            } else {
                for c in list {
                    let values: Vec<String> = c
                        .values
                        .iter()
                        .map(|v| {
                            format!(
                                "{} (by {})",
                                v.value.clone().unwrap_or_else(|| v.value_json.clone()),
                                v.author.as_deref().unwrap_or("?")
                            )
                        })
                        .collect();
                    println!("{} {}: {}", c.inspection_id, c.path, values.join(" | "));
                }
            }
        }
        Command::Submit { inspection, note } => {
            let id = tablet.submit(&inspection, note)?;
            println!("submitted ({id}); sync to send it");
        }
        Command::Review { inspection, json } => {
            let r = tablet.review(&inspection)?;
            if json {
                print_json(&r)?;
            } else {
                println!("{}: {}", r.inspection_id, r.status);
                for c in r.comments {
                    println!("  {} {}: {}", c.target, c.by, c.text);
                }
            }
        }
        Command::Actions { json } => {
            let list = tablet.actions()?;
            if json {
                print_json(&list)?;
            } else {
                for a in list {
                    println!(
                        "{}  {}  due {}  {}  {}",
                        a.id, a.unit_code, a.due_date, a.status, a.title
                    );
                }
            }
        }
        Command::Sync { json } => {
            let listener: Arc<dyn SyncListener> = Arc::new(Progress);
            let r = tablet.sync_now(Some(listener))?;
            if json {
                print_json(&r)?;
            } else {
                if r.refused.is_empty() {
                    println!(
                        "synced: {} documents ({} changed), {} photos uploaded",
                        r.documents, r.documents_changed, r.photos_uploaded
                    );
                } else {
                    println!(
                        "synced with refusals: {} documents ({} changed), {} photos uploaded; \
                         the server refused {} piece(s) of work, kept on this device \
                         (see `kiemtra-field refused`):",
                        r.documents,
                        r.documents_changed,
                        r.photos_uploaded,
                        r.refused.len()
                    );
                    print_refused(&r.refused);
                }
                if r.rebased > 0 {
                    println!(
                        "{} piece(s) of refused work were written again and uploaded",
                        r.rebased
                    );
                }
                for w in r.warnings {
                    println!("warning: {w}");
                }
            }
            if !r.refused.is_empty() {
                return Ok(EXIT_REFUSED);
            }
        }
        Command::Refused { json } => {
            let list = tablet.refused()?;
            if json {
                print_json(&list)?;
            } else if list.is_empty() {
                println!("no refused work: everything is on the server or waits to be synced");
            } else {
                println!("{} piece(s) of work refused by the server:", list.len());
                print_refused(&list);
            }
        }
        Command::Rebase { inspection, json } => {
            let r = tablet.rebase(&inspection)?;
            if json {
                print_json(&r)?;
            } else {
                for label in &r.reapplied {
                    println!("written again: {label}");
                }
                if !r.reapplied.is_empty() {
                    println!("sync to upload it");
                }
                if r.refused.is_empty() {
                    println!("no refused work left in {}", r.document_id);
                } else {
                    println!("still refused:");
                    print_refused(&r.refused);
                }
            }
            if !r.refused.is_empty() {
                return Ok(EXIT_REFUSED);
            }
        }
        Command::Status { json } => {
            let s = tablet.status()?;
            if json {
                print_json(&s)?;
            } else {
                println!(
                    "{:?}; {} documents, {} changes and {} photos not uploaded",
                    s.session.state,
                    s.documents.len(),
                    s.pending_changes,
                    s.pending_photos
                );
                for d in s.documents {
                    println!(
                        "  {} {:<10} {} unsynced changes, {} photos",
                        d.id,
                        d.kind,
                        d.pending_changes,
                        d.pending_photos.len()
                    );
                }
            }
        }
    }
    Ok(0)
}
