//! Projections: the tables that lists, dashboards and reports read,
//! derived from the documents and written in the same transaction as the
//! document bytes. They can always be rebuilt from the documents.

use automerge::Automerge;
use rusqlite::{Transaction, params};
use sync_core::ids::DocumentId;
use sync_core::model::{self, DocKind};
use sync_core::template::TemplateRegistry;

/// What one document contributes to the projection tables.
#[derive(Debug, Clone, PartialEq)]
pub enum Rows {
    Inspection(Box<InspectionRow>),
    /// Kinds that have no projection (yet).
    None,
}

/// One row of `inspections`, plus its members.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectionRow {
    pub id: String,
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
    pub members: Vec<(String, String)>,
    /// sha256 of every photo the inspection references (photos, answers'
    /// evidence, findings' photos).
    pub photo_refs: Vec<String>,
}

/// Derives the rows of one document. A document that cannot be read
/// (unknown template, …) projects nothing rather than failing the commit:
/// its bytes are what matter, and a reindex can project it later.
pub fn project(id: DocumentId, doc: &Automerge, templates: &TemplateRegistry) -> Rows {
    match model::kind_of(doc) {
        Ok(DocKind::Inspection) => match model::read_inspection(doc, templates) {
            Ok(i) => Rows::Inspection(Box::new(InspectionRow {
                id: id.to_string(),
                unit_code: i.header.unit_code.clone(),
                unit_name: i.header.unit_name.clone(),
                team_id: i.header.team_id.clone(),
                template_id: i.header.template_id.clone(),
                template_version: i64::from(i.header.template_version),
                scheduled_date: i.header.scheduled_date.clone(),
                status: i.status().as_str().to_owned(),
                answers: count(i.answers.len()),
                findings: count(i.live_findings().count()),
                photos: count(i.live_photos().count()),
                conflicts: count(model::conflicts(doc).len()),
                photo_refs: {
                    let mut refs: std::collections::BTreeSet<String> =
                        i.photos.keys().cloned().collect();
                    for a in i.answers.values() {
                        refs.extend(a.evidence.iter().cloned());
                    }
                    for f in i.findings.values() {
                        refs.extend(f.photos.iter().cloned());
                    }
                    refs.into_iter().collect()
                },
                members: i
                    .header
                    .members
                    .iter()
                    .map(|(u, r)| (u.clone(), r.as_str().to_owned()))
                    .collect(),
            })),
            Err(e) => {
                tracing::warn!(doc = %id, error = %e, "inspection not projected");
                Rows::None
            }
        },
        _ => Rows::None,
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Writes (replaces) the rows of one document.
pub fn write(tx: &Transaction<'_>, rows: &Rows) -> rusqlite::Result<()> {
    match rows {
        Rows::None => Ok(()),
        Rows::Inspection(r) => {
            tx.execute(
                "INSERT INTO inspections (id, unit_code, unit_name, team_id, template_id,
                    template_version, scheduled_date, status, answers, findings, photos, conflicts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (id) DO UPDATE SET unit_code = excluded.unit_code,
                    unit_name = excluded.unit_name, team_id = excluded.team_id,
                    template_id = excluded.template_id, template_version = excluded.template_version,
                    scheduled_date = excluded.scheduled_date, status = excluded.status,
                    answers = excluded.answers, findings = excluded.findings,
                    photos = excluded.photos, conflicts = excluded.conflicts",
                params![
                    r.id,
                    r.unit_code,
                    r.unit_name,
                    r.team_id,
                    r.template_id,
                    r.template_version,
                    r.scheduled_date,
                    r.status,
                    r.answers,
                    r.findings,
                    r.photos,
                    r.conflicts
                ],
            )?;
            tx.execute(
                "DELETE FROM inspection_members WHERE inspection_id = ?1",
                params![r.id],
            )?;
            tx.execute(
                "DELETE FROM inspection_photos WHERE inspection_id = ?1",
                params![r.id],
            )?;
            for sha in &r.photo_refs {
                tx.execute(
                    "INSERT INTO inspection_photos (inspection_id, sha256) VALUES (?1, ?2)",
                    params![r.id, sha],
                )?;
            }
            for (user, role) in &r.members {
                tx.execute(
                    "INSERT INTO inspection_members (inspection_id, user_id, role) VALUES (?1, ?2, ?3)",
                    params![r.id, user, role],
                )?;
            }
            Ok(())
        }
    }
}
