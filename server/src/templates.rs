//! Published checklist templates, stored immutably by `template_id@version`.
//!
//! Parsing and validation are `sync_core::template`'s; this module stores
//! the canonical JSON and its sha256, and refuses to publish different
//! content under a version that already exists (publishing the identical
//! content again is a no-op, so imports are idempotent).

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use sync_core::template::{Template, TemplateError};

use crate::audit::{self, AuditEntry};
use crate::db::DbError;

/// Why a template could not be published.
#[derive(Debug, thiserror::Error)]
pub enum TemplateImportError {
    #[error("invalid template: {0}")]
    Invalid(#[from] TemplateError),
    #[error(
        "template {key} is already published with different content (sha256 {existing}, this file {new}); published versions never change: raise \"version\" in the file"
    )]
    Conflict {
        key: String,
        existing: String,
        new: String,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for TemplateImportError {
    fn from(e: rusqlite::Error) -> Self {
        TemplateImportError::Db(DbError::Sqlite(e))
    }
}

/// What publishing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// A new version was stored.
    New { key: String, sha256: String },
    /// The same content was already published under this version.
    Unchanged { key: String, sha256: String },
}

/// A published template, without its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateSummary {
    pub template_id: String,
    pub version: u32,
    /// `template_id@version`, what inspections record.
    pub key: String,
    pub sha256: String,
    pub title: String,
    pub published_at: String,
}

/// Stores `template` inside `tx` (with an audit entry) unless this version
/// exists; refuses different content under an existing version.
pub fn publish(
    tx: &Transaction<'_>,
    template: &Template,
    actor: &str,
    now: &str,
) -> Result<Published, TemplateImportError> {
    let key = template.key();
    let sha256 = template.content_sha256();
    let existing: Option<String> = tx
        .query_row(
            "SELECT sha256 FROM templates WHERE template_id = ?1 AND version = ?2",
            params![template.template_id, template.version],
            |r| r.get(0),
        )
        .optional()?;
    match existing {
        Some(existing) if existing == sha256 => return Ok(Published::Unchanged { key, sha256 }),
        Some(existing) => {
            return Err(TemplateImportError::Conflict {
                key,
                existing,
                new: sha256,
            });
        }
        None => {}
    }
    tx.execute(
        "INSERT INTO templates (template_id, version, sha256, json, title, published_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            template.template_id,
            template.version,
            sha256,
            template.canonical_json(),
            template.title_vi,
            now
        ],
    )?;
    audit::append(
        tx,
        now,
        &AuditEntry {
            actor: Some(actor),
            action: "template.publish",
            subject: &key,
            detail: serde_json::json!({ "sha256": sha256 }),
        },
    )?;
    Ok(Published::New { key, sha256 })
}

/// Every published template, by id then version.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<TemplateSummary>> {
    let mut stmt = conn.prepare(
        "SELECT template_id, version, sha256, title, published_at FROM templates
         ORDER BY template_id, version",
    )?;
    let rows = stmt.query_map([], |r| {
        let template_id: String = r.get(0)?;
        let version: u32 = r.get(1)?;
        Ok(TemplateSummary {
            key: format!("{template_id}@{version}"),
            template_id,
            version,
            sha256: r.get(2)?,
            title: r.get(3)?,
            published_at: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// The canonical JSON of one published version.
pub fn get_json(
    conn: &Connection,
    template_id: &str,
    version: u32,
) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT json FROM templates WHERE template_id = ?1 AND version = ?2",
        params![template_id, version],
        |r| r.get(0),
    )
    .optional()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T1: &str = r#"{"template_id": "t", "title_vi": "Phiếu", "sections": [
        {"id": "A", "title_vi": "Mục A", "items": [
            {"id": "A1", "text_vi": "Có kế hoạch?", "type": "yes_no"}]}]}"#;

    #[test]
    fn publish_is_idempotent_and_versions_are_immutable() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::db::migrations::migrations()
            .to_latest(&mut conn)
            .unwrap();
        let tx = conn.transaction().unwrap();
        let t = Template::from_json(T1).unwrap();
        let first = publish(&tx, &t, "cli", "2025-07-01T00:00:00Z").unwrap();
        assert!(matches!(first, Published::New { ref key, .. } if key == "t@1"));
        let again = publish(&tx, &t, "cli", "2025-07-02T00:00:00Z").unwrap();
        assert!(matches!(again, Published::Unchanged { .. }));
        let changed = Template::from_json(&T1.replace("Có kế hoạch?", "Có kế hoạch năm?")).unwrap();
        let err = publish(&tx, &changed, "cli", "2025-07-03T00:00:00Z").unwrap_err();
        assert!(matches!(err, TemplateImportError::Conflict { .. }), "{err}");
        let v2 = Template::from_json(&T1.replace("\"t\",", "\"t\", \"version\": 2,")).unwrap();
        publish(&tx, &v2, "cli", "2025-07-03T00:00:00Z").unwrap();
        let list = list(&tx).unwrap();
        assert_eq!(
            list.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(),
            ["t@1", "t@2"]
        );
        assert_eq!(get_json(&tx, "t", 1).unwrap().unwrap(), t.canonical_json());
        assert!(tx.execute("UPDATE templates SET title = 'x'", []).is_err());
    }
}
