//! Whole-document validation: the gate a document passes before the server
//! accepts changes to it.
//!
//! It checks the kind and schema version, the type of every field, enum
//! values, id/sha256/date formats, sizes, references to the template (item
//! ids, answers checked by [`Template::check_answer`](crate::template::Template::check_answer))
//! and that no unknown key appears. Where a key holds concurrent values, each
//! of them is checked, not only the one readers show: the winner can change
//! with the next merge.

use std::fmt;

use automerge::{ROOT, ReadDoc};

use super::read::{Need, Walk};
use super::{DocKind, action, catalog, check_schema, index, inspection};
use crate::template::TemplateRegistry;

/// One problem found in a document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ValidationError {
    /// Where, as `/`-separated keys from the root (e.g. `answers/A3/value`);
    /// empty for the document as a whole.
    pub path: String,
    /// What is wrong, and where it helps, what to do.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ValidationError {}

/// Checks a whole document. `templates` must hold the template an inspection
/// names; an inspection against an unknown template is invalid.
pub fn validate(
    doc: &impl ReadDoc,
    templates: &TemplateRegistry,
) -> Result<(), Vec<ValidationError>> {
    let mut w = Walk::validator(doc);
    let names: Vec<&str> = DocKind::ALL.iter().map(|k| k.as_str()).collect();
    let kind = w.field(&ROOT, "kind", "", Need::Required, |w, v, _, p| {
        w.one_of(&v, p, DocKind::parse, &names)
    });
    single_value(&mut w, "kind");
    w.field(&ROOT, "schema", "", Need::Required, |w, v, _, p| {
        let n = w.uint(&v, p)?;
        match check_schema(n) {
            Ok(()) => Some(n),
            Err(e) => {
                w.error(p, e.to_string());
                None
            }
        }
    });
    single_value(&mut w, "schema");
    // Without a known kind and schema nothing else can be interpreted.
    let kind = match kind {
        Some(kind) if !w.has_errors() => kind,
        _ => return Err(w.into_errors()),
    };
    match kind {
        DocKind::Inspection => {
            inspection::walk(&mut w, templates);
        }
        DocKind::Action => {
            action::walk(&mut w);
        }
        DocKind::Catalog => {
            catalog::walk(&mut w);
        }
        DocKind::Index => {
            index::walk(&mut w);
        }
    }
    let errors = w.into_errors();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// `kind` and `schema` are written once; two concurrent values mean two
/// documents were created under one id.
fn single_value<D: ReadDoc>(w: &mut Walk<'_, D>, key: &str) {
    if let Ok(all) = w.doc().get_all(ROOT, key)
        && all.len() > 1
    {
        w.error(
            key,
            format!(
                "holds {} concurrent values; it is written once, when the document is created",
                all.len()
            ),
        );
    }
}
