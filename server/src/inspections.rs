//! Scheduling inspections and the documents that go with them: the
//! deployment's `catalog` document and each user's `index` document.
//!
//! Every document write goes through the [`SyncService`] (the hub thread),
//! so tablets that have a document open receive the change, and nothing is
//! confirmed before it is committed.

use std::collections::BTreeMap;

use automerge::Automerge;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sync_core::ids::DocumentId;
use sync_core::model::{
    self, CatalogTemplate, CatalogUnit, DocKind, IndexEntry, InspectionHeader, MemberRole, Person,
};
use sync_core::template::{Template, TemplateRegistry};

use crate::AppState;
use crate::auth::AuthUser;
use crate::clock;
use crate::db::{Db, DbError};
use crate::error::{ApiError, ApiJson};
use crate::sync::{SyncError, SyncService};
use crate::users::Role;

/// Settings row holding the catalog document's id.
const CATALOG_KEY: &str = "catalog_doc";

/// A new random document id (UUIDv7: time-ordered).
pub fn new_document_id() -> DocumentId {
    DocumentId::from_bytes(*uuid::Uuid::now_v7().as_bytes())
}

impl From<model::ModelError> for ApiError {
    fn from(e: model::ModelError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<SyncError> for ApiError {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::NotFound(id) => ApiError::NotFound(format!("document {id} does not exist")),
            SyncError::Edit(e) => ApiError::BadRequest(e.to_string()),
            SyncError::AlreadyExists(id) => {
                ApiError::BadRequest(format!("document {id} already exists"))
            }
            other => ApiError::internal(other),
        }
    }
}

fn db_err(e: rusqlite::Error) -> ApiError {
    ApiError::internal(e)
}

/// Loads every published template from the database.
pub fn load_templates(conn: &Connection) -> Result<TemplateRegistry, DbError> {
    let mut stmt = conn
        .prepare("SELECT template_id, version, json FROM templates ORDER BY template_id, version")
        .map_err(|e| DbError::Commit(e.to_string()))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(2))
        .map_err(|e| DbError::Commit(e.to_string()))?;
    let mut reg = TemplateRegistry::default();
    for json in rows {
        let json = json.map_err(|e| DbError::Commit(e.to_string()))?;
        match Template::from_json(&json) {
            Ok(t) => {
                if let Err(e) = reg.publish(t) {
                    tracing::error!(error = %e, "a stored template could not be registered");
                }
            }
            Err(e) => tracing::error!(error = %e, "a stored template does not load"),
        }
    }
    Ok(reg)
}

fn setting(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
        r.get(0)
    })
    .optional()
}

/// Makes sure the catalog document exists and holds every unit (current
/// structure), department, published template and person; returns its id.
pub async fn ensure_catalog(db: &Db, sync: &SyncService) -> Result<DocumentId, ApiError> {
    let (existing, units, templates, people) = db
        .read(|c| {
            let existing = setting(c, CATALOG_KEY).map_err(db_err)?;
            let mut units = BTreeMap::new();
            let mut stmt = c
                .prepare(
                    "SELECT code, name, full_name, type, parent_code FROM units
                     WHERE structure = 'post_2025' ORDER BY code",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        CatalogUnit {
                            name: r.get(1)?,
                            full_name: r.get(2)?,
                            unit_type: r.get(3)?,
                            parent_code: r.get(4)?,
                        },
                    ))
                })
                .map_err(db_err)?;
            for row in rows {
                let (code, u) = row.map_err(db_err)?;
                units.insert(code, u);
            }
            let mut stmt = c
                .prepare("SELECT code, name FROM departments ORDER BY code")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(db_err)?;
            for row in rows {
                let (code, name) = row.map_err(db_err)?;
                units.insert(
                    code,
                    CatalogUnit {
                        full_name: name.clone(),
                        name,
                        unit_type: "so".into(),
                        parent_code: Some("01".into()),
                    },
                );
            }
            let templates = load_templates(c).map_err(ApiError::internal)?;
            let mut people = BTreeMap::new();
            let mut stmt = c
                .prepare("SELECT id, display_name FROM users ORDER BY id")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(db_err)?;
            for row in rows {
                let (id, name) = row.map_err(db_err)?;
                people.insert(id, name);
            }
            Ok::<_, ApiError>((existing, units, templates, people))
        })
        .await?;
    let templates: Vec<CatalogTemplate> = templates
        .iter()
        .map(CatalogTemplate::from_template)
        .collect();

    let id = match existing.as_deref().map(DocumentId::parse) {
        Some(Ok(id)) => id,
        Some(Err(e)) => return Err(ApiError::internal(format!("stored catalog id: {e}"))),
        None => {
            let id = new_document_id();
            let mut doc = server_doc();
            in_tx(&mut doc, |tx| model::init_catalog(tx))?;
            sync.create(id, doc).await?;
            let value = id.to_string();
            db.write(move |tx| {
                tx.execute(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2)",
                    params![CATALOG_KEY, value],
                )
                .map_err(db_err)?;
                Ok::<_, ApiError>(())
            })
            .await?;
            id
        }
    };
    // Bring it up to date: only what differs is written.
    let current = sync
        .read(id)
        .await?
        .ok_or_else(|| ApiError::internal("the catalog document vanished"))?;
    let current = Automerge::load(&current).map_err(ApiError::internal)?;
    let have = model::read_catalog(&current).map_err(ApiError::internal)?;
    let units: Vec<_> = units
        .into_iter()
        .filter(|(code, u)| have.units.get(code) != Some(u))
        .collect();
    let templates: Vec<_> = templates
        .into_iter()
        .filter(|t| !have.templates.contains_key(&t.key()))
        .collect();
    let people: Vec<_> = people
        .into_iter()
        .filter(|(id, name)| have.people.get(id).map(|p| &p.display_name) != Some(name))
        .collect();
    if !(units.is_empty() && templates.is_empty() && people.is_empty()) {
        sync.edit(
            id,
            Box::new(move |doc| {
                in_tx(doc, |tx| {
                    for (code, u) in &units {
                        model::put_unit(tx, code, u)?;
                    }
                    for t in &templates {
                        model::put_template(tx, t)?;
                    }
                    for (id, name) in &people {
                        model::put_person(
                            tx,
                            id,
                            &Person {
                                display_name: name.clone(),
                            },
                        )?;
                    }
                    Ok(())
                })
            }),
        )
        .await?;
    }
    Ok(id)
}

fn server_doc() -> Automerge {
    Automerge::new().with_actor(crate::sync::server_actor())
}

/// Runs model writes as one automerge change.
pub fn in_tx(
    doc: &mut Automerge,
    f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), model::ModelError>,
) -> Result<(), model::ModelError> {
    doc.transact(f).map(|_| ()).map_err(|failure| failure.error)
}

/// The user's index document, created (with the catalog in it) if missing.
pub async fn ensure_index(
    db: &Db,
    sync: &SyncService,
    user_id: &str,
) -> Result<DocumentId, ApiError> {
    let uid = user_id.to_owned();
    let (existing, catalog) = db
        .read(move |c| {
            let existing: Option<String> = c
                .query_row(
                    "SELECT doc_id FROM user_index_docs WHERE user_id = ?1",
                    [&uid],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            Ok::<_, ApiError>((existing, setting(c, CATALOG_KEY).map_err(db_err)?))
        })
        .await?;
    if let Some(id) = existing {
        return DocumentId::parse(&id).map_err(ApiError::internal);
    }
    let id = new_document_id();
    let mut doc = server_doc();
    let catalog = catalog.and_then(|c| DocumentId::parse(&c).ok());
    let now = clock::now_millis();
    let user = user_id.to_owned();
    in_tx(&mut doc, |tx| {
        model::init_index(tx, &user)?;
        if let Some(catalog) = &catalog {
            model::index_add(
                tx,
                catalog,
                &IndexEntry {
                    kind: DocKind::Catalog,
                    title: Some("Danh mục".into()),
                    added_at: now,
                },
            )?;
        }
        Ok(())
    })?;
    sync.create(id, doc).await?;
    let value = id.to_string();
    let uid = user_id.to_owned();
    db.write(move |tx| {
        tx.execute(
            "INSERT INTO user_index_docs (user_id, doc_id) VALUES (?1, ?2)",
            params![uid, value],
        )
        .map_err(db_err)?;
        Ok::<_, ApiError>(())
    })
    .await?;
    Ok(id)
}

/// Body of `POST /api/v1/inspections`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// GSO code of a ward/commune, or `SO-xx` of a department.
    pub unit_code: String,
    pub template_id: String,
    pub template_version: u32,
    /// Team id or team name.
    pub team: String,
    /// `YYYY-MM-DD` or `dd/mm/yyyy`.
    pub date: String,
    /// Username of the team lead; defaults to the first member by username.
    #[serde(default)]
    pub lead: Option<String>,
}

/// One inspection as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InspectionView {
    pub id: String,
    pub doc_url: String,
    pub unit_code: String,
    pub unit_name: String,
    pub team_id: String,
    pub template_id: String,
    pub template_version: i64,
    pub scheduled_date: String,
    pub status: String,
    pub answers: i64,
    pub findings: i64,
    pub photos: i64,
    pub conflicts: i64,
}

fn parse_date(s: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "date `{s}` is not a real date; use YYYY-MM-DD or dd/mm/yyyy"
        ))
    };
    let date = match sync_core::template::parse_dd_mm_yyyy(s) {
        Ok((y, m, d)) => jiff::civil::Date::new(
            i16::try_from(y).map_err(|_| bad())?,
            i8::try_from(m).map_err(|_| bad())?,
            i8::try_from(d).map_err(|_| bad())?,
        )
        .map_err(|_| bad())?,
        Err(_) => s.parse::<jiff::civil::Date>().map_err(|_| bad())?,
    };
    Ok(date.to_string())
}

/// Schedules one inspection: creates its document, then adds it to every
/// member's index (and the scheduler's). Used by the API and the demo.
pub async fn schedule(
    state: &AppState,
    req: ScheduleRequest,
    scheduled_by: Option<&str>,
) -> Result<InspectionView, ApiError> {
    let date = parse_date(&req.date)?;
    let r = req.clone();
    let (unit_name, team_id, members) = state
        .db
        .read(move |c| {
            let unit_name: Option<String> = c
                .query_row(
                    "SELECT full_name FROM units WHERE structure = 'post_2025' AND code = ?1
                     UNION ALL SELECT name FROM departments WHERE code = ?1",
                    [&r.unit_code],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let unit_name = unit_name.ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "unit `{}` is not a current ward, commune or department; see GET /api/v1/units",
                    r.unit_code
                ))
            })?;
            let known: bool = c
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM templates WHERE template_id = ?1 AND version = ?2)",
                    params![r.template_id, r.template_version],
                    |row| row.get(0),
                )
                .map_err(db_err)?;
            if !known {
                return Err(ApiError::BadRequest(format!(
                    "template {}@{} is not published; see GET /api/v1/templates",
                    r.template_id, r.template_version
                )));
            }
            let team_id: Option<String> = c
                .query_row(
                    "SELECT id FROM teams WHERE id = ?1 OR name = ?1",
                    [&r.team],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let team_id = team_id
                .ok_or_else(|| ApiError::BadRequest(format!("team `{}` does not exist", r.team)))?;
            let mut stmt = c
                .prepare(
                    "SELECT id, username FROM users WHERE team_id = ?1 AND role = 'inspector'
                     AND disabled = 0 ORDER BY username",
                )
                .map_err(db_err)?;
            let members: Vec<(String, String)> = stmt
                .query_map([&team_id], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(db_err)?
                .collect::<Result<_, _>>()
                .map_err(db_err)?;
            if members.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "team `{}` has no active inspectors",
                    r.team
                )));
            }
            Ok((unit_name, team_id, members))
        })
        .await?;
    let lead = match &req.lead {
        Some(l) => members
            .iter()
            .find(|(id, name)| id == l || name == l)
            .map(|(id, _)| id.clone())
            .ok_or_else(|| {
                ApiError::BadRequest(format!("lead `{l}` is not an inspector of the team"))
            })?,
        None => members[0].0.clone(),
    };
    let header = InspectionHeader {
        unit_code: req.unit_code.clone(),
        unit_name: unit_name.clone(),
        template_id: req.template_id.clone(),
        template_version: req.template_version,
        team_id: team_id.clone(),
        members: members
            .iter()
            .map(|(id, _)| {
                let role = if *id == lead {
                    MemberRole::Lead
                } else {
                    MemberRole::Member
                };
                (id.clone(), role)
            })
            .collect(),
        scheduled_date: date.clone(),
        created_at: clock::now_millis(),
    };
    let id = new_document_id();
    let mut doc = server_doc();
    in_tx(&mut doc, |tx| model::init_inspection(tx, &header))?;
    state.sync.create(id, doc).await?;

    let title = format!("{unit_name} — {date}");
    let mut readers: Vec<String> = members.iter().map(|(id, _)| id.clone()).collect();
    if let Some(by) = scheduled_by {
        readers.push(by.to_owned());
    }
    readers.sort();
    readers.dedup();
    for user in readers {
        let index = ensure_index(&state.db, &state.sync, &user).await?;
        let entry = IndexEntry {
            kind: DocKind::Inspection,
            title: Some(title.clone()),
            added_at: clock::now_millis(),
        };
        state
            .sync
            .edit(
                index,
                Box::new(move |doc| in_tx(doc, |tx| model::index_add(tx, &id, &entry))),
            )
            .await?;
    }
    get_view(&state.db, id.to_string())
        .await?
        .ok_or_else(|| ApiError::internal("the new inspection was not projected"))
}

async fn get_view(db: &Db, id: String) -> Result<Option<InspectionView>, ApiError> {
    db.read(move |c| {
        c.query_row(&format!("{SELECT_VIEW} WHERE i.id = ?1"), [&id], view_row)
            .optional()
            .map_err(db_err)
    })
    .await
}

const SELECT_VIEW: &str = "SELECT i.id, i.unit_code, i.unit_name, i.team_id, i.template_id,
    i.template_version, i.scheduled_date, i.status, i.answers, i.findings, i.photos, i.conflicts
    FROM inspections i";

fn view_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InspectionView> {
    let id: String = r.get(0)?;
    Ok(InspectionView {
        doc_url: format!("{}{id}", sync_core::ids::URL_PREFIX),
        id,
        unit_code: r.get(1)?,
        unit_name: r.get(2)?,
        team_id: r.get(3)?,
        template_id: r.get(4)?,
        template_version: r.get(5)?,
        scheduled_date: r.get(6)?,
        status: r.get(7)?,
        answers: r.get(8)?,
        findings: r.get(9)?,
        photos: r.get(10)?,
        conflicts: r.get(11)?,
    })
}

/// The SQL condition (on alias `i`) for the inspections `user` may read —
/// the same rule as `sync_core::access::DocumentRules::can_read`.
fn readable_clause(user: &AuthUser) -> (String, Vec<String>) {
    match user.role {
        Role::Admin | Role::Secretariat | Role::Leader => ("1 = 1".into(), vec![]),
        Role::Inspector => (
            "(i.team_id = ?1 OR EXISTS (SELECT 1 FROM inspection_members m
               WHERE m.inspection_id = i.id AND m.user_id = ?2))"
                .into(),
            vec![
                user.team_id.clone().unwrap_or_default(),
                user.user_id.clone(),
            ],
        ),
        Role::Unit => (
            "(i.unit_code = ?1 AND i.status = 'accepted')".into(),
            vec![user.unit_code.clone().unwrap_or_default()],
        ),
    }
}

/// `POST /api/v1/inspections` (secretariat, admin).
pub async fn create(
    user: AuthUser,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ScheduleRequest>,
) -> Result<(StatusCode, Json<InspectionView>), ApiError> {
    if !matches!(user.role, Role::Secretariat | Role::Admin) {
        return Err(ApiError::Forbidden);
    }
    let view = schedule(&state, req, Some(&user.user_id)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `GET /api/v1/inspections`: the inspections the caller may read.
pub async fn list(
    user: AuthUser,
    State(state): State<AppState>,
) -> Result<Json<Vec<InspectionView>>, ApiError> {
    let (clause, args) = readable_clause(&user);
    let rows = state
        .db
        .read(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "{SELECT_VIEW} WHERE {clause} ORDER BY i.scheduled_date, i.id"
                ))
                .map_err(db_err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), view_row)
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            Ok::<_, ApiError>(rows)
        })
        .await?;
    Ok(Json(rows))
}

/// `GET /api/v1/inspections/{id}`: one inspection, if the caller may read it
/// (otherwise 404, the same as for one that does not exist).
pub async fn get(
    user: AuthUser,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<InspectionView>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no inspection {id} that you may read"));
    let doc_id = DocumentId::parse_any(&id).map_err(|_| not_found())?;
    let (clause, mut args) = readable_clause(&user);
    let n = args.len() + 1;
    args.push(doc_id.to_string());
    let row = state
        .db
        .read(move |c| {
            c.query_row(
                &format!("{SELECT_VIEW} WHERE {clause} AND i.id = ?{n}"),
                rusqlite::params_from_iter(args.iter()),
                view_row,
            )
            .optional()
            .map_err(db_err)
        })
        .await?;
    row.map(Json).ok_or_else(not_found)
}

/// The documents a device starts from.
#[derive(Debug, Clone, Serialize)]
pub struct MyDocuments {
    pub index_doc_url: String,
    pub catalog_doc_url: Option<String>,
}

/// `GET /api/v1/me/documents`: the caller's `index` document (created on
/// first use) and the `catalog` document.
pub async fn my_documents(
    user: AuthUser,
    State(state): State<AppState>,
) -> Result<Json<MyDocuments>, ApiError> {
    let index = ensure_index(&state.db, &state.sync, &user.user_id).await?;
    let catalog = state
        .db
        .read(|c| setting(c, CATALOG_KEY).map_err(db_err))
        .await?
        .and_then(|c| DocumentId::parse(&c).ok());
    Ok(Json(MyDocuments {
        index_doc_url: index.url(),
        catalog_doc_url: catalog.map(|c| c.url()),
    }))
}
