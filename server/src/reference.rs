//! Reference data: Hanoi's administrative units and departments.
//!
//! Imports read the CSV formats of `shared/data` (`hanoi_units.csv`,
//! `hanoi_departments.csv`), check every row first (errors name the line),
//! and then upsert all rows in ONE transaction: a file with a bad row changes
//! nothing, and importing the same file twice changes nothing the second time.

use std::collections::{HashMap, HashSet};
use std::fmt;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::audit::{self, AuditEntry};
use crate::db::DbError;

/// Unit structures: before and after the 01/07/2025 reorganisation.
pub const STRUCTURES: [&str; 2] = ["pre_2025", "post_2025"];
/// The structure in force today, and the API's default.
pub const CURRENT_STRUCTURE: &str = "post_2025";
/// Unit types in `hanoi_units.csv`.
pub const UNIT_TYPES: [&str; 7] = [
    "city",
    "urban_district",
    "rural_district",
    "town",
    "ward",
    "commune",
    "township",
];
/// Department kinds in `hanoi_departments.csv`.
pub const DEPARTMENT_KINDS: [&str; 4] = [
    "so",
    "co_quan_ngang_so",
    "to_chuc_hanh_chinh_khac",
    "nganh_doc",
];
/// The `type` under which departments appear in the units list.
pub const DEPARTMENT_UNIT_TYPE: &str = "so";
/// The city row's code, parent of the departments in the units list.
pub const CITY_CODE: &str = "01";

const UNIT_COLUMNS: [&str; 7] = [
    "code",
    "name",
    "type",
    "parent_code",
    "structure",
    "full_name",
    "name_en",
];
const DEPARTMENT_COLUMNS: [&str; 6] = ["code", "name", "name_en", "kind", "note", "source"];
/// Row errors listed in one message before "… and N more".
const MAX_LISTED_ERRORS: usize = 20;

/// One problem in one line of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub message: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Why an import failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the file is not valid CSV: {0}")]
    Csv(String),
    #[error("wrong columns: expected `{expected}`, found `{found}`")]
    Header { expected: String, found: String },
    #[error("the file has no data rows")]
    Empty,
    #[error("{} invalid row(s), nothing imported:\n{}", .0.len(), list_errors(.0))]
    InvalidRows(Vec<RowError>),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for ImportError {
    fn from(e: rusqlite::Error) -> Self {
        ImportError::Db(DbError::Sqlite(e))
    }
}

fn list_errors(errors: &[RowError]) -> String {
    let mut out: Vec<String> = errors
        .iter()
        .take(MAX_LISTED_ERRORS)
        .map(|e| format!("  {e}"))
        .collect();
    if errors.len() > MAX_LISTED_ERRORS {
        out.push(format!("  … and {} more", errors.len() - MAX_LISTED_ERRORS));
    }
    out.join("\n")
}

/// One administrative unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitRow {
    pub line: u64,
    pub code: String,
    pub name: String,
    pub unit_type: String,
    pub parent_code: Option<String>,
    pub structure: String,
    pub full_name: String,
    pub name_en: String,
}

/// One department.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepartmentRow {
    pub line: u64,
    pub code: String,
    pub name: String,
    pub name_en: String,
    pub kind: String,
    pub note: String,
    pub source: String,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    pub rows: usize,
    pub inserted: usize,
    pub updated: usize,
    pub unchanged: usize,
}

/// A parsed file: its rows by line, and the indexes of the named columns.
struct Table {
    records: Vec<(u64, csv::StringRecord)>,
    index: HashMap<&'static str, usize>,
}

impl Table {
    fn parse(text: &str, columns: &[&'static str]) -> Result<Table, ImportError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(text.as_bytes());
        let header = reader
            .headers()
            .map_err(|e| ImportError::Csv(e.to_string()))?
            .clone();
        let found: Vec<&str> = header.iter().map(str::trim).collect();
        let mut index = HashMap::new();
        for col in columns {
            match found.iter().position(|h| h == col) {
                Some(i) => {
                    index.insert(*col, i);
                }
                None => {
                    return Err(ImportError::Header {
                        expected: columns.join(","),
                        found: found.join(","),
                    });
                }
            }
        }
        if found.len() != columns.len() {
            return Err(ImportError::Header {
                expected: columns.join(","),
                found: found.join(","),
            });
        }
        let mut records = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| ImportError::Csv(e.to_string()))?;
            let line = record.position().map_or(0, |p| p.line());
            records.push((line, record));
        }
        if records.is_empty() {
            return Err(ImportError::Empty);
        }
        Ok(Table { records, index })
    }

    fn width(&self) -> usize {
        self.index.len()
    }

    fn get<'r>(&self, record: &'r csv::StringRecord, column: &str) -> &'r str {
        self.index
            .get(column)
            .and_then(|i| record.get(*i))
            .map_or("", str::trim)
    }
}

/// Checks text fields common to both files.
fn check_text(errors: &mut Vec<String>, column: &str, value: &str, required: bool, max: usize) {
    if required && value.is_empty() {
        errors.push(format!("`{column}` is empty"));
    } else if value.chars().count() > max {
        errors.push(format!("`{column}` is longer than {max} characters"));
    } else if value.chars().any(char::is_control) {
        errors.push(format!("`{column}` contains control characters"));
    }
}

/// Parses and checks `hanoi_units.csv`.
pub fn parse_units(text: &str) -> Result<Vec<UnitRow>, ImportError> {
    let table = Table::parse(text, &UNIT_COLUMNS)?;
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    for (line, record) in &table.records {
        let line = *line;
        if record.len() != table.width() {
            errors.push(RowError {
                line,
                message: format!("has {} fields, expected {}", record.len(), table.width()),
            });
            continue;
        }
        let mut problems = Vec::new();
        let code = table.get(record, "code");
        let unit_type = table.get(record, "type");
        let parent = table.get(record, "parent_code");
        let structure = table.get(record, "structure");
        if !((2..=5).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit())) {
            problems.push(format!("code `{code}` is not a 2–5 digit GSO code"));
        }
        for (column, max) in [("name", 200), ("full_name", 250), ("name_en", 250)] {
            check_text(&mut problems, column, table.get(record, column), true, max);
        }
        if !UNIT_TYPES.contains(&unit_type) {
            problems.push(format!(
                "type `{unit_type}` is not one of {}",
                UNIT_TYPES.join(", ")
            ));
        }
        if !STRUCTURES.contains(&structure) {
            problems.push(format!(
                "structure `{structure}` is not pre_2025 or post_2025"
            ));
        }
        match (unit_type, parent.is_empty()) {
            ("city", false) => problems.push("a city has no parent_code".into()),
            ("city", true) => {}
            (_, true) => problems.push("parent_code is empty".into()),
            (_, false) if !parent.bytes().all(|b| b.is_ascii_digit()) => {
                problems.push(format!("parent_code `{parent}` is not a GSO code"));
            }
            _ => {}
        }
        if let Some(first) = seen.insert((structure.to_owned(), code.to_owned()), line) {
            problems.push(format!(
                "unit {code} ({structure}) is already on line {first}"
            ));
        }
        if problems.is_empty() {
            rows.push(UnitRow {
                line,
                code: code.to_owned(),
                name: table.get(record, "name").to_owned(),
                unit_type: unit_type.to_owned(),
                parent_code: (!parent.is_empty()).then(|| parent.to_owned()),
                structure: structure.to_owned(),
                full_name: table.get(record, "full_name").to_owned(),
                name_en: table.get(record, "name_en").to_owned(),
            });
        } else {
            errors.extend(
                problems
                    .into_iter()
                    .map(|message| RowError { line, message }),
            );
        }
    }
    // Parents must be units of the same structure in the file (checked
    // against the database at import time for partial files).
    if errors.is_empty() {
        return Ok(rows);
    }
    Err(ImportError::InvalidRows(errors))
}

/// Parses and checks `hanoi_departments.csv`.
pub fn parse_departments(text: &str) -> Result<Vec<DepartmentRow>, ImportError> {
    let table = Table::parse(text, &DEPARTMENT_COLUMNS)?;
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for (line, record) in &table.records {
        let line = *line;
        if record.len() != table.width() {
            errors.push(RowError {
                line,
                message: format!("has {} fields, expected {}", record.len(), table.width()),
            });
            continue;
        }
        let mut problems = Vec::new();
        let code = table.get(record, "code");
        let kind = table.get(record, "kind");
        if !((2..=32).contains(&code.len())
            && code
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-'))
        {
            problems.push(format!(
                "code `{code}` must be 2–32 characters of A–Z, 0–9 and '-'"
            ));
        }
        check_text(&mut problems, "name", table.get(record, "name"), true, 250);
        check_text(
            &mut problems,
            "name_en",
            table.get(record, "name_en"),
            true,
            250,
        );
        check_text(
            &mut problems,
            "note",
            table.get(record, "note"),
            false,
            2000,
        );
        check_text(
            &mut problems,
            "source",
            table.get(record, "source"),
            false,
            2000,
        );
        if !DEPARTMENT_KINDS.contains(&kind) {
            problems.push(format!(
                "kind `{kind}` is not one of {}",
                DEPARTMENT_KINDS.join(", ")
            ));
        }
        if let Some(first) = seen.insert(code.to_owned(), line) {
            problems.push(format!("department {code} is already on line {first}"));
        }
        if problems.is_empty() {
            rows.push(DepartmentRow {
                line,
                code: code.to_owned(),
                name: table.get(record, "name").to_owned(),
                name_en: table.get(record, "name_en").to_owned(),
                kind: kind.to_owned(),
                note: table.get(record, "note").to_owned(),
                source: table.get(record, "source").to_owned(),
            });
        } else {
            errors.extend(
                problems
                    .into_iter()
                    .map(|message| RowError { line, message }),
            );
        }
    }
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(ImportError::InvalidRows(errors))
    }
}

/// sha256 of an imported file, recorded in the audit log.
pub fn file_sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Who imported what, for the audit row.
#[derive(Debug, Clone)]
pub struct ImportContext {
    pub actor: String,
    pub source: String,
    pub sha256: String,
    pub now: String,
}

/// Upserts `rows` inside `tx`; fails (changing nothing, as the caller's
/// savepoint is rolled back) if a parent unit is missing.
pub fn import_units(
    tx: &Transaction<'_>,
    rows: &[UnitRow],
    ctx: &ImportContext,
) -> Result<ImportSummary, ImportError> {
    let in_file: HashSet<(&str, &str)> = rows
        .iter()
        .map(|r| (r.structure.as_str(), r.code.as_str()))
        .collect();
    let mut errors = Vec::new();
    for row in rows {
        if let Some(parent) = &row.parent_code
            && !in_file.contains(&(row.structure.as_str(), parent.as_str()))
        {
            let known = tx
                .query_row(
                    "SELECT 1 FROM units WHERE structure = ?1 AND code = ?2",
                    params![row.structure, parent],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !known {
                errors.push(RowError {
                    line: row.line,
                    message: format!(
                        "parent_code `{parent}` is not a unit of structure {}",
                        row.structure
                    ),
                });
            }
        }
    }
    if !errors.is_empty() {
        return Err(ImportError::InvalidRows(errors));
    }
    let mut summary = ImportSummary {
        rows: rows.len(),
        inserted: 0,
        updated: 0,
        unchanged: 0,
    };
    let mut select = tx.prepare(
        "SELECT name, full_name, type, parent_code, name_en FROM units
         WHERE structure = ?1 AND code = ?2",
    )?;
    let mut upsert = tx.prepare(
        "INSERT INTO units (structure, code, name, full_name, type, parent_code, name_en)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (structure, code) DO UPDATE SET
            name = excluded.name, full_name = excluded.full_name, type = excluded.type,
            parent_code = excluded.parent_code, name_en = excluded.name_en",
    )?;
    for row in rows {
        type Existing = (String, String, String, Option<String>, String);
        let existing: Option<Existing> = select
            .query_row(params![row.structure, row.code], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let wanted = (
            row.name.clone(),
            row.full_name.clone(),
            row.unit_type.clone(),
            row.parent_code.clone(),
            row.name_en.clone(),
        );
        match existing {
            Some(e) if e == wanted => {
                summary.unchanged += 1;
                continue;
            }
            Some(_) => summary.updated += 1,
            None => summary.inserted += 1,
        }
        upsert.execute(params![
            row.structure,
            row.code,
            row.name,
            row.full_name,
            row.unit_type,
            row.parent_code,
            row.name_en
        ])?;
    }
    record(tx, "import.units", ctx, &summary)?;
    Ok(summary)
}

/// Upserts departments inside `tx`.
pub fn import_departments(
    tx: &Transaction<'_>,
    rows: &[DepartmentRow],
    ctx: &ImportContext,
) -> Result<ImportSummary, ImportError> {
    let mut summary = ImportSummary {
        rows: rows.len(),
        inserted: 0,
        updated: 0,
        unchanged: 0,
    };
    let mut select =
        tx.prepare("SELECT name, name_en, kind, note, source FROM departments WHERE code = ?1")?;
    let mut upsert = tx.prepare(
        "INSERT INTO departments (code, name, name_en, kind, note, source)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (code) DO UPDATE SET
            name = excluded.name, name_en = excluded.name_en, kind = excluded.kind,
            note = excluded.note, source = excluded.source",
    )?;
    for row in rows {
        type Existing = (String, String, String, String, String);
        let existing: Option<Existing> = select
            .query_row([&row.code], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let wanted = (
            row.name.clone(),
            row.name_en.clone(),
            row.kind.clone(),
            row.note.clone(),
            row.source.clone(),
        );
        match existing {
            Some(e) if e == wanted => {
                summary.unchanged += 1;
                continue;
            }
            Some(_) => summary.updated += 1,
            None => summary.inserted += 1,
        }
        upsert.execute(params![
            row.code,
            row.name,
            row.name_en,
            row.kind,
            row.note,
            row.source
        ])?;
    }
    record(tx, "import.departments", ctx, &summary)?;
    Ok(summary)
}

fn record(
    tx: &Transaction<'_>,
    action: &str,
    ctx: &ImportContext,
    summary: &ImportSummary,
) -> Result<(), ImportError> {
    audit::append(
        tx,
        &ctx.now,
        &AuditEntry {
            actor: Some(&ctx.actor),
            action,
            subject: &ctx.source,
            detail: serde_json::json!({
                "sha256": ctx.sha256,
                "rows": summary.rows,
                "inserted": summary.inserted,
                "updated": summary.updated,
                "unchanged": summary.unchanged,
            }),
        },
    )?;
    Ok(())
}

/// A unit as the API shows it; departments appear with `type = "so"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitView {
    pub code: String,
    pub name: String,
    pub full_name: String,
    #[serde(rename = "type")]
    pub unit_type: String,
    pub parent_code: Option<String>,
    pub structure: String,
    pub name_en: String,
    /// For departments: so, co_quan_ngang_so, to_chuc_hanh_chinh_khac, nganh_doc.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// Units of `structure` (optionally of one `unit_type`), then — for the
/// current structure — the departments as units of type `so`.
pub fn list_units(
    conn: &Connection,
    structure: &str,
    unit_type: Option<&str>,
) -> rusqlite::Result<Vec<UnitView>> {
    let mut out = Vec::new();
    if unit_type != Some(DEPARTMENT_UNIT_TYPE) {
        let mut stmt = conn.prepare(
            "SELECT code, name, full_name, type, parent_code, structure, name_en FROM units
             WHERE structure = ?1 AND (?2 IS NULL OR type = ?2)
             ORDER BY code",
        )?;
        let rows = stmt.query_map(params![structure, unit_type], |r| {
            Ok(UnitView {
                code: r.get(0)?,
                name: r.get(1)?,
                full_name: r.get(2)?,
                unit_type: r.get(3)?,
                parent_code: r.get(4)?,
                structure: r.get(5)?,
                name_en: r.get(6)?,
                kind: None,
            })
        })?;
        for row in rows {
            out.push(row?);
        }
    }
    // The department list is the one after the March 2025 merger, so it is
    // listed with the current structure only.
    if structure == CURRENT_STRUCTURE && unit_type.is_none_or(|t| t == DEPARTMENT_UNIT_TYPE) {
        let mut stmt =
            conn.prepare("SELECT code, name, name_en, kind FROM departments ORDER BY code")?;
        let rows = stmt.query_map([], |r| {
            let name: String = r.get(1)?;
            Ok(UnitView {
                code: r.get(0)?,
                full_name: name.clone(),
                name,
                unit_type: DEPARTMENT_UNIT_TYPE.to_owned(),
                parent_code: Some(CITY_CODE.to_owned()),
                structure: CURRENT_STRUCTURE.to_owned(),
                name_en: r.get(2)?,
                kind: Some(r.get(3)?),
            })
        })?;
        for row in rows {
            out.push(row?);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEADER: &str = "code,name,type,parent_code,structure,full_name,name_en\n";

    #[test]
    fn good_rows_parse() {
        let text = format!(
            "{HEADER}01,Hà Nội,city,,post_2025,Thành phố Hà Nội,Ha Noi City\n\
             00004,Ba Đình,ward,01,post_2025,Phường Ba Đình,Ba Dinh Ward\n"
        );
        let rows = parse_units(&text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].line, 3);
        assert_eq!(rows[1].full_name, "Phường Ba Đình");
        assert_eq!(rows[1].parent_code.as_deref(), Some("01"));
    }

    #[test]
    fn bad_rows_name_their_lines() {
        let text = format!(
            "{HEADER}01,Hà Nội,city,,post_2025,Thành phố Hà Nội,Ha Noi City\n\
             00004,Ba Đình,ward,01,post_2025,Phường Ba Đình,Ba Dinh Ward\n\
             0000X,Bad,ward,01,post_2025,Phường Bad,Bad Ward\n\
             00008,Ngọc Hà,village,01,post_2025,Phường Ngọc Hà,Ngoc Ha Ward\n\
             00004,Ba Đình,ward,01,post_2025,Phường Ba Đình,Ba Dinh Ward\n\
             00011,short,ward\n"
        );
        let err = parse_units(&text).unwrap_err();
        let ImportError::InvalidRows(errors) = &err else {
            panic!("{err}")
        };
        let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [4, 5, 6, 7]);
        let text = err.to_string();
        assert!(text.contains("line 4: code `0000X`"), "{text}");
        assert!(text.contains("already on line 3"), "{text}");
    }

    #[test]
    fn wrong_header_is_reported() {
        let err = parse_units("code,name\n1,x\n").unwrap_err();
        assert!(matches!(err, ImportError::Header { .. }), "{err}");
        assert!(matches!(parse_units(HEADER), Err(ImportError::Empty)));
    }

    #[test]
    fn departments_parse_with_quoted_fields() {
        let text = "code,name,name_en,kind,note,source\n\
                    VP-UBND,Văn phòng UBND Thành phố,Office,co_quan_ngang_so,\"a, b\",x\n\
                    bad code,X,Y,so,,\n";
        let err = parse_departments(text).unwrap_err();
        assert!(err.to_string().contains("line 3: code `bad code`"), "{err}");
        let rows = parse_departments(&text.lines().take(2).collect::<Vec<_>>().join("\n")).unwrap();
        assert_eq!(rows[0].note, "a, b");
    }
}
