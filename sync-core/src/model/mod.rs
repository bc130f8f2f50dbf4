//! The typed document model: what lives in each automerge document, how to
//! write it, how to read it back, how to check it, and where it conflicts.
//!
//! The schema is `docs/DOCUMENTS.md`; this module is its one implementation.
//! Four kinds of document exist ([`DocKind`]): an [`inspection`] per visit, an
//! [`action`] per corrective action, one [`catalog`] per deployment and an
//! [`index`] per user.
//!
//! - Writers take `&mut impl Transactable`, so they work on an `AutoCommit` or
//!   inside an explicit transaction; a caller groups several writes into one
//!   change by using one transaction.
//! - Readers (`read_*`) return typed values; where a key holds concurrent values
//!   they show automerge's deterministic winner (what `get` returns). The
//!   concurrent values themselves are listed by [`conflicts()`].
//! - Statuses follow the document's history, never a writer-chosen time: a
//!   review decision decides the submissions its change had seen, a
//!   verification covers the responses its change had seen ([`causal`]). The
//!   readers that derive them ([`read_inspection`], [`read_action`]) therefore
//!   take a [`CausalDoc`] (`Automerge`, `AutoCommit` or a transaction).
//! - Nothing is deleted from a map: entries are tombstoned (`deleted`,
//!   `cleared`, `false` in a set, a removed member), so a concurrent edit is
//!   never lost. Only the server-owned catalog and index delete keys.
//! - [`validate()`] checks a whole document, every concurrent value included.
//!   It is the gate the server applies before accepting changes.
//!
//! Statuses ("submitted", "overdue", …) are derived by the readers and never
//! stored, and nothing here reads a clock: "today" is an argument.

pub mod action;
pub mod catalog;
pub mod causal;
pub mod conflicts;
pub mod format;
pub mod index;
pub mod inspection;
pub(crate) mod read;
pub mod validate;
pub(crate) mod write;

use std::fmt;

use automerge::{AutomergeError, ROOT, ReadDoc, ScalarValue, Value};

pub use action::{
    Action, ActionAssignment, ActionResponse, ActionStatus, Priority, Verification,
    VerificationDecision, init_action, read_action, respond_action, update_due_date,
    update_priority, verify_action,
};
pub use catalog::{
    Catalog, CatalogTemplate, CatalogUnit, Person, init_catalog, put_person, put_template,
    put_unit, read_catalog,
};
pub use causal::{CausalDoc, Seen};
pub use conflicts::{Conflict, ConflictValue, conflicts, conflicts_with, settle_answer};
pub use index::{Index, IndexEntry, index_add, index_remove, init_index, read_index};
pub use inspection::{
    Answer, CommentTarget, Finding, Inspection, InspectionHeader, InspectionStatus, MEMBER_REMOVED,
    MemberRole, PhotoMime, PhotoRef, ReviewComment, ReviewDecision, ReviewState, Severity,
    Submission, add_finding, add_finding_photo, add_photo, clear_answer, delete_comment,
    delete_finding, delete_photo, init_inspection, read_inspection, remove_finding_photo,
    restore_comment, restore_finding, restore_photo, review_comment, review_decide, set_answer,
    set_member, set_scheduled_date, splice_finding_note, submit, update_finding_item,
    update_finding_severity, update_finding_title,
};
pub use read::string_at;
pub use validate::{ValidationError, validate};

/// The schema version this code writes and the newest it reads.
pub const SCHEMA_VERSION: u64 = 1;

/// The kind of a document, stored at its root as `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocKind {
    Inspection,
    Action,
    Catalog,
    Index,
}

impl DocKind {
    /// Every kind, in a fixed order.
    pub const ALL: [DocKind; 4] = [
        DocKind::Inspection,
        DocKind::Action,
        DocKind::Catalog,
        DocKind::Index,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Inspection => "inspection",
            DocKind::Action => "action",
            DocKind::Catalog => "catalog",
            DocKind::Index => "index",
        }
    }

    /// The kind with this stored spelling.
    pub fn parse(s: &str) -> Option<DocKind> {
        DocKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for DocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a document could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("document has no `kind` at its root: it was not created by kiemtra or is still empty")]
    NoKind,
    #[error("document kind {0:?} is unknown (known: inspection, action, catalog, index)")]
    UnknownKind(String),
    #[error("document is a {found}, not a {expected}: open it with the {found} reader")]
    WrongKind { expected: DocKind, found: DocKind },
    #[error("document has no valid `schema` version at its root")]
    NoSchema,
    #[error("document schema {found} is newer than this software supports ({supported}): update")]
    SchemaTooNew { found: u64, supported: u64 },
    #[error("document schema {0} is not a schema version that ever existed (versions start at 1)")]
    SchemaUnknown(u64),
    #[error(
        "template {template_id}@{version} is not in the template registry: sync the catalog \
         (or publish the template) before reading this inspection"
    )]
    UnknownTemplate { template_id: String, version: u32 },
    #[error("{}", summarize(.0))]
    Invalid(Vec<ValidationError>),
    #[error("{path} does not exist: create it first (init_* writes every section)")]
    NotFound { path: String },
    #[error("{path} already exists; pick a fresh id")]
    AlreadyExists { path: String },
    #[error("document is already initialised as {kind:?}; init_* only runs on an empty document")]
    AlreadyInitialized { kind: String },
    #[error(
        "template {key} is already in the catalog with sha256 {existing}; published templates \
         never change: publish a new version"
    )]
    TemplateImmutable { key: String, existing: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("automerge: {0}")]
    Automerge(#[from] AutomergeError),
}

fn summarize(errors: &[ValidationError]) -> String {
    match errors {
        [] => "document is not valid".to_owned(),
        [one] => format!("document is not valid: {one}"),
        [first, rest @ ..] => format!(
            "document is not valid: {first} (and {} more problem{})",
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        ),
    }
}

/// The kind of a document (the winning value of its root `kind`).
pub fn kind_of(doc: &impl ReadDoc) -> Result<DocKind, ModelError> {
    match doc.get(ROOT, "kind")? {
        None => Err(ModelError::NoKind),
        Some((v, id)) => match read::string_at(doc, &v, &id) {
            Some(s) => DocKind::parse(&s).ok_or(ModelError::UnknownKind(s)),
            None => Err(ModelError::UnknownKind(format!("<{}>", read::describe(&v)))),
        },
    }
}

/// The schema version of a document (the winning value of its root `schema`).
pub fn schema_of(doc: &impl ReadDoc) -> Result<u64, ModelError> {
    match doc.get(ROOT, "schema")? {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Uint(n) => Ok(*n),
            ScalarValue::Int(n) => u64::try_from(*n).map_err(|_| ModelError::NoSchema),
            _ => Err(ModelError::NoSchema),
        },
        _ => Err(ModelError::NoSchema),
    }
}

/// Checks that a schema version is one this code understands.
pub fn check_schema(found: u64) -> Result<(), ModelError> {
    if found == 0 {
        Err(ModelError::SchemaUnknown(found))
    } else if found > SCHEMA_VERSION {
        Err(ModelError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        })
    } else {
        Ok(())
    }
}

/// Checks the kind and schema before a typed read.
pub(crate) fn expect_kind(doc: &impl ReadDoc, expected: DocKind) -> Result<(), ModelError> {
    let found = kind_of(doc)?;
    if found != expected {
        return Err(ModelError::WrongKind { expected, found });
    }
    check_schema(schema_of(doc)?)
}

/// Refuses to initialise a document that already has a kind.
pub(crate) fn expect_empty(doc: &impl ReadDoc) -> Result<(), ModelError> {
    match doc.get(ROOT, "kind")? {
        None => Ok(()),
        Some((v, _)) => Err(ModelError::AlreadyInitialized {
            kind: read::as_str(&v).unwrap_or("?").to_owned(),
        }),
    }
}

/// Turns the errors a reader walk collected into a result.
pub(crate) fn finish<T>(value: Option<T>, errors: Vec<ValidationError>) -> Result<T, ModelError> {
    if !errors.is_empty() {
        return Err(ModelError::Invalid(errors));
    }
    // A walk returns `None` only after recording why; this is a safety net.
    value.ok_or_else(|| {
        ModelError::Invalid(vec![ValidationError {
            path: String::new(),
            message: "could not be read".to_owned(),
        }])
    })
}
