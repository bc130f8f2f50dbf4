//! Field ownership: which role may write which part of which document.
//!
//! Every top-level section of a document has owner roles (`docs/DOCUMENTS.md`):
//! the team writes answers, the secretariat the review, the unit its
//! responses, the server the catalog and the indexes. A batch of changes
//! arriving from a peer is checked with [`check_changes`] before it is kept;
//! a change that writes outside its author's sections is refused.
//!
//! `kind` and `schema` are special: they are written by the change(s) that
//! create the document, by a role allowed to create that kind
//! ([`may_create`]), and never again by anyone, the server included.

use std::collections::BTreeMap;
use std::fmt;

use automerge::legacy::{Key, ObjectId, OpId, OpType};
use automerge::{Automerge, ChangeHash, ObjType, Prop, ROOT, ReadDoc, Value};

use crate::model::DocKind;

mod change;

pub use change::{Author, ChangeCheck, check_change, is_lead};

/// Who is writing. A device acts with its user's role; the server acts as
/// [`Role::Server`] for the documents it maintains itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Users, units, templates, keys, backups: through the admin pages and CLI,
    /// never by writing documents.
    Admin,
    Secretariat,
    Inspector,
    Unit,
    /// Read-only dashboards.
    Leader,
    /// The server itself (catalog, indexes, documents it creates).
    Server,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 6] = [
        Role::Admin,
        Role::Secretariat,
        Role::Inspector,
        Role::Unit,
        Role::Leader,
        Role::Server,
    ];

    /// The stored / configured spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Secretariat => "secretariat",
            Role::Inspector => "inspector",
            Role::Unit => "unit",
            Role::Leader => "leader",
            Role::Server => "server",
        }
    }

    /// The role with this spelling.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (known: admin, secretariat, inspector, unit, leader, server)")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::parse(s).ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// Whether `role` may create a document of `kind`.
pub fn may_create(role: Role, kind: DocKind) -> bool {
    match kind {
        // Through the API, which checks units, teams and members; never
        // through sync.
        DocKind::Inspection | DocKind::Action | DocKind::Catalog | DocKind::Index => {
            role == Role::Server
        }
    }
}

const INSPECTION_ALL: &[&str] = &[
    "header",
    "answers",
    "findings",
    "photos",
    "submissions",
    "review",
];
const ACTION_ALL: &[&str] = &["assignment", "responses", "verification"];
const CATALOG_ALL: &[&str] = &["units", "templates", "people"];
const INDEX_ALL: &[&str] = &["user_id", "documents"];

/// The top-level sections `role` may write in a document of `kind`.
/// `kind` and `schema` are never listed: see [`check_changes`].
pub fn writable_paths(kind: DocKind, role: Role) -> &'static [&'static str] {
    match (kind, role) {
        (DocKind::Inspection, Role::Server) => INSPECTION_ALL,
        (DocKind::Inspection, Role::Secretariat) => &["review"],
        (DocKind::Inspection, Role::Inspector) => &["answers", "findings", "photos", "submissions"],
        (DocKind::Action, Role::Server) => ACTION_ALL,
        (DocKind::Action, Role::Secretariat) => &["assignment", "verification"],
        (DocKind::Action, Role::Inspector) => &["verification"],
        (DocKind::Action, Role::Unit) => &["responses"],
        (DocKind::Catalog, Role::Server) => CATALOG_ALL,
        (DocKind::Index, Role::Server) => INDEX_ALL,
        _ => &[],
    }
}

/// Which rule a refused change broke. The spelling ([`Rule::as_str`]) is
/// stable: clients act on it (`docs/SYNC.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// The author's role does not own that part of the document.
    Owner,
    /// `kind` and `schema` never change.
    Fixed,
    /// Documents are created by the server only.
    Create,
    /// Sections are laid out by the server and never replaced or deleted.
    Section,
    /// Entries and fields are never deleted (entries are tombstoned).
    Delete,
    /// An existing entry may not be replaced by a new one.
    Replace,
    /// The entry was written by an earlier change and may not be edited.
    Immutable,
    /// `by` must be the user who wrote the change.
    Author,
    /// The change's automerge actor belongs to another user or device.
    Actor,
    /// Only the team lead settles a conflict.
    Settle,
    /// The author is not on this inspection's team.
    Member,
    /// A published template never changes.
    Published,
    /// The document would not be valid (schema, template) after the change.
    Invalid,
    /// The change depends on a refused change.
    Depends,
    /// The change writes into an object the document does not have, or
    /// could not be applied.
    Object,
}

impl Rule {
    pub const ALL: [Rule; 15] = [
        Rule::Owner,
        Rule::Fixed,
        Rule::Create,
        Rule::Section,
        Rule::Delete,
        Rule::Replace,
        Rule::Immutable,
        Rule::Author,
        Rule::Actor,
        Rule::Settle,
        Rule::Member,
        Rule::Published,
        Rule::Invalid,
        Rule::Depends,
        Rule::Object,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Owner => "owner",
            Rule::Fixed => "fixed",
            Rule::Create => "create",
            Rule::Section => "section",
            Rule::Delete => "delete",
            Rule::Replace => "replace",
            Rule::Immutable => "immutable",
            Rule::Author => "author",
            Rule::Actor => "actor",
            Rule::Settle => "settle",
            Rule::Member => "member",
            Rule::Published => "published",
            Rule::Invalid => "invalid",
            Rule::Depends => "depends",
            Rule::Object => "object",
        }
    }

    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A write the author may not make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// What was written, as precisely as the change shows it (e.g.
    /// `review/decisions/<id>`, or `review` when the whole section was written).
    pub path: String,
    pub role: Role,
    /// The change that made the write.
    pub change: ChangeHash,
    pub rule: Rule,
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "change {} by a {} writes {}: {}",
            self.change, self.role, self.path, self.reason
        )
    }
}

/// Checks that every change in `after` that is not in `before` only writes
/// what `role` owns.
///
/// Each new change is examined on its own: its effect is the diff from the
/// heads it was made on (its dependencies) to the change itself. Diffing the
/// batch as a whole would only say *that* something forbidden happened, and
/// concurrent changes in the batch would blur into each other; per-change
/// diffs attribute each violation to the exact change that made it, which is
/// what the refusal and the audit log name.
///
/// A diff shows only what a change made visible. A crafted change can also
/// hold operations with no visible effect at the time: rewriting a value with
/// itself (which may still win a later conflict), or writing into an object
/// that is no longer reachable. So the operations of each change are also
/// walked and located with `parents`; together the two cover every write,
/// and the diff gives the precise paths for the ordinary ones.
///
/// When the document is created (`before` has no `kind`), a role allowed to
/// create it ([`may_create`]) may also create the *empty* sections it does
/// not own, as `init_*` does; anything inside them still needs ownership.
///
/// A batch with no new changes is `Ok`.
pub fn check_changes(
    before: &Automerge,
    after: &Automerge,
    role: Role,
) -> Result<(), Vec<Violation>> {
    let mut violations = Vec::new();
    // `after` must extend `before`; otherwise "new changes" means nothing.
    for head in before.get_heads() {
        if after.get_change_by_hash(&head).is_none() {
            violations.push(Violation {
                path: String::new(),
                role,
                change: head,
                rule: Rule::Object,
                reason: "the new document state does not contain the old one".to_owned(),
            });
        }
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    let changes = after.get_changes(&before.get_heads());
    let Some(first) = changes.first() else {
        return Ok(());
    };

    let before_kind = root_kind(before);
    let creating = before_kind.is_none();
    let kind = match before_kind.or_else(|| root_kind(after)) {
        Some(Ok(kind)) => kind,
        Some(Err(found)) => {
            return Err(vec![Violation {
                path: "kind".to_owned(),
                role,
                change: first.hash(),
                rule: Rule::Create,
                reason: format!("document kind {found:?} is unknown"),
            }]);
        }
        None => {
            return Err(vec![Violation {
                path: "kind".to_owned(),
                role,
                change: first.hash(),
                rule: Rule::Create,
                reason: "document has no kind: the first change must set kind and schema"
                    .to_owned(),
            }]);
        }
    };
    let owned = writable_paths(kind, role);
    let published = if kind == DocKind::Catalog {
        published_templates(before)
    } else {
        Vec::new()
    };

    let sections = writable_paths(kind, Role::Server);

    for change in &changes {
        let hash = change.hash();
        let mut touched: BTreeMap<String, Touch> = BTreeMap::new();
        for patch in after.diff(change.deps(), &[hash]) {
            let mut path: Vec<String> = patch.path.iter().map(|(_, p)| prop_str(p)).collect();
            if let Some(key) = action_key(&patch.action) {
                path.push(key);
            }
            let makes_map = matches!(
                &patch.action,
                automerge::PatchAction::PutMap {
                    value: (Value::Object(ObjType::Map), _),
                    ..
                }
            );
            record(&mut touched, path, makes_map);
        }
        for op in change.decode().operations {
            let mut path = match &op.obj {
                ObjectId::Root => Vec::new(),
                ObjectId::Id(OpId(counter, actor)) => {
                    let obj = automerge::ObjId::Id(*counter, actor.clone(), 0);
                    match after.parents(&obj) {
                        Ok(parents) => parents.path().iter().map(|(_, p)| prop_str(p)).collect(),
                        // Not an object of this document: the op cannot
                        // change anything anyone reads.
                        Err(_) => continue,
                    }
                }
            };
            if let Key::Map(k) = &op.key {
                path.push(k.to_string());
            }
            let makes_map = matches!(op.action, OpType::Make(ObjType::Map));
            record(&mut touched, path, makes_map);
        }
        // Creating the document writes kind and schema together: one
        // violation on `kind` says it for both.
        if creating && touched.contains_key("kind") {
            touched.remove("schema");
        }
        for (top, touch) in touched {
            let path = touch.path;
            let fixed = top == "kind" || top == "schema";
            let reason = if fixed {
                if !creating {
                    Some((
                        Rule::Fixed,
                        format!("{top} is fixed when the document is created and never changes"),
                    ))
                } else if !may_create(role, kind) {
                    Some((
                        Rule::Create,
                        format!("role {role} may not create {kind} documents"),
                    ))
                } else {
                    None
                }
            } else if creating
                && may_create(role, kind)
                && sections.contains(&top.as_str())
                && !touch.deep
            {
                // The creator lays out an empty section for its owner.
                None
            } else if !owned.contains(&top.as_str()) {
                Some((Rule::Owner, owner_reason(role, kind, owned)))
            } else if top == "templates"
                && !published.is_empty()
                && path.get(1).is_none_or(|key| published.contains(key))
            {
                Some((
                    Rule::Published,
                    format!(
                        "{} holds a published template; published templates never change: \
                         publish a new version",
                        path.join("/")
                    ),
                ))
            } else {
                None
            };
            if let Some((rule, reason)) = reason {
                violations.push(Violation {
                    path: if fixed && creating {
                        "kind".to_owned()
                    } else {
                        path.join("/")
                    },
                    role,
                    change: hash,
                    rule,
                    reason,
                });
            }
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

/// Why `role` may not write outside `owned` in a `kind` document.
pub(crate) fn owner_reason(role: Role, kind: DocKind, owned: &[&str]) -> String {
    if owned.is_empty() {
        format!("role {role} may not write {kind} documents")
    } else {
        format!(
            "role {role} may write only {} in {kind} documents",
            owned.join(", ")
        )
    }
}

/// What one change wrote under one top-level key.
#[derive(Debug, Default)]
struct Touch {
    /// The shortest path written (the outermost write).
    path: Vec<String>,
    /// Whether anything but the creation of an empty map at the key itself was written.
    deep: bool,
}

/// Notes that a change wrote at `path`; `makes_map` if the write created a map there.
fn record(touched: &mut BTreeMap<String, Touch>, path: Vec<String>, makes_map: bool) {
    let Some(top) = path.first().cloned() else {
        return;
    };
    let deep = path.len() > 1 || !makes_map;
    let entry = touched.entry(top).or_default();
    entry.deep |= deep;
    if entry.path.is_empty() || path.len() < entry.path.len() {
        entry.path = path;
    }
}

/// The root `kind`: `None` if absent, `Err(spelling)` if not one we know.
fn root_kind(doc: &Automerge) -> Option<Result<DocKind, String>> {
    match doc.get(ROOT, "kind") {
        Ok(Some((v, _))) => Some(match crate::model::read::as_str(&v) {
            Some(s) => DocKind::parse(s).ok_or_else(|| s.to_owned()),
            None => Err(format!("<{}>", crate::model::read::describe(&v))),
        }),
        _ => None,
    }
}

/// Keys of templates already published in a catalog.
fn published_templates(doc: &Automerge) -> Vec<String> {
    match doc.get(ROOT, "templates") {
        Ok(Some((Value::Object(ObjType::Map), id))) => doc.keys(&id).collect(),
        _ => Vec::new(),
    }
}

fn prop_str(p: &Prop) -> String {
    match p {
        Prop::Map(k) => k.clone(),
        Prop::Seq(i) => i.to_string(),
    }
}

/// The key a patch writes inside its object, when it names one.
fn action_key(action: &automerge::PatchAction) -> Option<String> {
    use automerge::PatchAction as A;
    match action {
        A::PutMap { key, .. } | A::DeleteMap { key } => Some(key.clone()),
        A::Increment { prop, .. } | A::Conflict { prop } => Some(prop_str(prop)),
        // Edits inside a text or list are reported as the object itself
        // (`findings/<id>/note`), not as character positions.
        A::PutSeq { .. }
        | A::Insert { .. }
        | A::SpliceText { .. }
        | A::DeleteSeq { .. }
        | A::Mark { .. } => None,
    }
}
