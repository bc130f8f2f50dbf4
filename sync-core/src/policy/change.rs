//! The write check of one change, op by op.
//!
//! [`check_change`] judges a change against the document it applies to
//! (the change's dependencies are in `doc`; the change itself is not yet).
//! Each operation is located (the path of the object it writes into, from
//! the document for existing objects and from the change itself for the
//! objects it makes) and held against the rules of `docs/DOCUMENTS.md`:
//!
//! - a role writes only the sections it owns ([`writable_paths`]);
//! - the root is laid out by the server when it creates the document:
//!   sections are never replaced or deleted, `kind` and `schema` never change;
//! - map entries are never deleted (entries are tombstoned with `deleted`);
//! - an entry is not replaced by another, except an answer (each edit is a
//!   fresh answer map) — and an answer that supersedes concurrent values
//!   (settles a conflict) only by the team lead;
//! - records (answers, photos, submissions, decisions, comments, responses,
//!   verifications) are written once, by the change that creates them
//!   (tombstones aside); findings stay editable by the team, except their
//!   `by` and `at`;
//! - `by` is the user who wrote the change.
//!
//! The cost is proportional to the change: one location per object it
//! touches, not a walk of the document.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::legacy::{ElementId, Key, ObjectId, OpId, OpType};
use automerge::{ActorId, Automerge, Change, ChangeHash, ObjId, ObjType, Prop, ROOT, ReadDoc};
use automerge::{ScalarValue, Value};

use super::{Role, Rule, Violation, owner_reason, writable_paths};
use crate::model::DocKind;

/// Who wrote a change, as the server knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Author<'a> {
    pub user_id: &'a str,
    pub role: Role,
    /// Whether the author leads this inspection's team (settles conflicts).
    pub lead: bool,
}

/// What an accepted change touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeCheck {
    /// Every path the change wrote at (`/`-separated, deduplicated): a
    /// validation error at or under one of them is this change's doing.
    pub touched: BTreeSet<String>,
}

impl ChangeCheck {
    /// Whether a problem reported at `path` concerns what this change wrote.
    pub fn concerns(&self, path: &str) -> bool {
        if path.is_empty() {
            return true;
        }
        self.touched
            .iter()
            .any(|t| is_within(path, t) || is_within(t, path))
    }
}

/// `inner` is `outer` or lies under it.
fn is_within(inner: &str, outer: &str) -> bool {
    inner == outer
        || (inner.len() > outer.len()
            && inner.starts_with(outer)
            && inner.as_bytes().get(outer.len()) == Some(&b'/'))
}

/// How a section is shaped, for the rules above.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Named fields (`header`, `assignment`).
    Fields,
    /// A map of entries keyed by id.
    Entries(EntryRules),
    /// A map of named maps of entries (`review.decisions`, `review.comments`).
    Nested(&'static [(&'static str, EntryRules)]),
    /// Written by the server only.
    Server,
}

#[derive(Debug, Clone, Copy)]
struct EntryRules {
    /// Fields other than `by`/`at` may change after creation.
    mutable: bool,
    /// `deleted` may be written after creation.
    tombstone: bool,
    /// A new entry may take the place of an existing one (answers).
    replace: bool,
}

const ANSWER: EntryRules = EntryRules {
    mutable: false,
    tombstone: false,
    replace: true,
};
const FINDING: EntryRules = EntryRules {
    mutable: true,
    tombstone: true,
    replace: false,
};
const PHOTO: EntryRules = EntryRules {
    mutable: false,
    tombstone: true,
    replace: false,
};
const RECORD: EntryRules = EntryRules {
    mutable: false,
    tombstone: false,
    replace: false,
};
const COMMENT: EntryRules = EntryRules {
    mutable: false,
    tombstone: true,
    replace: false,
};
const REVIEW: &[(&str, EntryRules)] = &[("decisions", RECORD), ("comments", COMMENT)];

/// Fields written only when their entry is created.
const FIXED_FIELDS: &[&str] = &["by", "at"];

fn shape(kind: DocKind, section: &str) -> Shape {
    match (kind, section) {
        (DocKind::Inspection, "header") | (DocKind::Action, "assignment") => Shape::Fields,
        (DocKind::Inspection, "answers") => Shape::Entries(ANSWER),
        (DocKind::Inspection, "findings") => Shape::Entries(FINDING),
        (DocKind::Inspection, "photos") => Shape::Entries(PHOTO),
        (DocKind::Inspection, "submissions")
        | (DocKind::Action, "responses")
        | (DocKind::Action, "verification") => Shape::Entries(RECORD),
        (DocKind::Inspection, "review") => Shape::Nested(REVIEW),
        _ => Shape::Server,
    }
}

/// An object: `None` for the root, else its id (counter, actor).
type ObjKey = Option<(u64, ActorId)>;

/// Where an object sits: the keys from the root to it, and the object at
/// each of those keys (the last one is the object itself).
#[derive(Debug, Clone, Default)]
struct Location {
    keys: Vec<String>,
    objs: Vec<ObjKey>,
}

/// Locates objects, from the change's own `make` ops first, then the document.
struct Locator<'a> {
    doc: &'a Automerge,
    /// Objects the change makes: id → (parent, key in the parent).
    made: HashMap<(u64, ActorId), (ObjKey, String)>,
    known: HashMap<ObjKey, Option<Location>>,
}

impl Locator<'_> {
    fn locate(&mut self, obj: &ObjKey, depth: usize) -> Option<Location> {
        if let Some(found) = self.known.get(obj) {
            return found.clone();
        }
        let found = match obj {
            None => Some(Location::default()),
            Some((counter, actor)) => {
                if let Some((parent, key)) = self.made.get(&(*counter, actor.clone())).cloned() {
                    // A chain of objects made by one change is bounded by
                    // the change's length; the depth guard is belt and braces.
                    if depth > 64 {
                        None
                    } else {
                        self.locate(&parent, depth + 1).map(|mut loc| {
                            loc.keys.push(key);
                            loc.objs.push(obj.clone());
                            loc
                        })
                    }
                } else {
                    let id = ObjId::Id(*counter, actor.clone(), 0);
                    match self.doc.parents(&id) {
                        Ok(parents) => {
                            let path = parents.path();
                            let mut loc = Location::default();
                            for (i, (_, prop)) in path.iter().enumerate() {
                                loc.keys.push(prop_str(prop));
                                let child = match path.get(i + 1) {
                                    Some((next, _)) => obj_key(next),
                                    None => obj.clone(),
                                };
                                loc.objs.push(child);
                            }
                            Some(loc)
                        }
                        Err(_) => None,
                    }
                }
            }
        };
        self.known.insert(obj.clone(), found.clone());
        found
    }
}

fn obj_key(id: &ObjId) -> ObjKey {
    match id {
        ObjId::Root => None,
        ObjId::Id(counter, actor, _) => Some((*counter, actor.clone())),
    }
}

fn legacy_key(obj: &ObjectId) -> ObjKey {
    match obj {
        ObjectId::Root => None,
        ObjectId::Id(OpId(counter, actor)) => Some((*counter, actor.clone())),
    }
}

fn prop_str(p: &Prop) -> String {
    match p {
        Prop::Map(k) => k.clone(),
        Prop::Seq(i) => i.to_string(),
    }
}

/// A `by` written as a text object: its characters must be inserted in order.
#[derive(Debug)]
struct ByText {
    path: String,
    /// The element the next insert must follow (None: the head).
    after: Option<(u64, ActorId)>,
    text: String,
    in_order: bool,
}

/// The kind of a document, read from its root.
fn doc_kind(doc: &Automerge) -> Option<DocKind> {
    match doc.get(ROOT, "kind") {
        Ok(Some((v, _))) => crate::model::read::as_str(&v).and_then(DocKind::parse),
        _ => None,
    }
}

/// Judges one change (see the module docs). `doc` holds the change's
/// dependencies and not the change. Returns what the change touched, or
/// every rule it breaks.
pub fn check_change(
    doc: &Automerge,
    change: &Change,
    author: &Author<'_>,
) -> Result<ChangeCheck, Vec<Violation>> {
    let hash = change.hash();
    let role = author.role;
    let mut out = Outcome {
        hash,
        role,
        violations: BTreeMap::new(),
        touched: BTreeSet::new(),
    };
    let Some(kind) = doc_kind(doc) else {
        out.refuse(
            Rule::Create,
            "kind".to_owned(),
            "documents are created by the server; this document has no kind".to_owned(),
        );
        return out.finish();
    };
    let expanded = change.decode();
    let actor = change.actor_id().clone();
    let start = change.start_op().get();
    let mine = |key: &ObjKey| {
        key.as_ref()
            .is_some_and(|(counter, a)| *a == actor && *counter >= start)
    };
    let mut locator = Locator {
        doc,
        made: HashMap::new(),
        known: HashMap::new(),
    };
    for (i, op) in expanded.operations.iter().enumerate() {
        if let OpType::Make(_) = op.action {
            let key = match &op.key {
                Key::Map(k) => k.to_string(),
                Key::Seq(_) => "-".to_owned(),
            };
            locator.made.insert(
                (start + i as u64, actor.clone()),
                (legacy_key(&op.obj), key),
            );
        }
    }
    let owned = writable_paths(kind, role);
    let mut by_texts: HashMap<(u64, ActorId), ByText> = HashMap::new();

    for (i, op) in expanded.operations.iter().enumerate() {
        let op_id = (start + i as u64, actor.clone());
        let obj = legacy_key(&op.obj);
        let map_key = match &op.key {
            Key::Map(k) => Some(k.to_string()),
            Key::Seq(_) => None,
        };
        let Some(loc) = locator.locate(&obj, 0) else {
            out.refuse(
                Rule::Object,
                map_key.clone().unwrap_or_default(),
                "writes into an object this document does not have".to_owned(),
            );
            continue;
        };
        let mut path = loc.keys.clone();
        if let Some(k) = &map_key {
            path.push(k.clone());
        }
        let path_text = path.join("/");
        out.touched.insert(path_text.clone());

        // Characters of a `by` written as text in this change.
        if let Some(obj_id) = &obj
            && let Some(by) = by_texts.get_mut(obj_id)
        {
            let follows = match &op.key {
                Key::Seq(ElementId::Head) => by.after.is_none(),
                Key::Seq(ElementId::Id(OpId(c, a))) => by.after.as_ref() == Some(&(*c, a.clone())),
                Key::Map(_) => false,
            };
            match (&op.action, op.insert && follows) {
                (OpType::Put(ScalarValue::Str(s)), true) => {
                    by.text.push_str(s);
                    by.after = Some(op_id.clone());
                }
                _ => by.in_order = false,
            }
        }

        if role == Role::Server {
            if loc.keys.is_empty() && matches!(map_key.as_deref(), Some("kind" | "schema")) {
                out.refuse(
                    Rule::Fixed,
                    path_text,
                    "kind and schema are fixed when the document is created and never change"
                        .to_owned(),
                );
            }
            continue;
        }

        // The root: laid out by the server only.
        let Some(section) = loc.keys.first().cloned() else {
            let key = map_key.clone().unwrap_or_default();
            let (rule, reason) = if key == "kind" || key == "schema" {
                (
                    Rule::Fixed,
                    format!("{key} is fixed when the document is created and never changes"),
                )
            } else if writable_paths(kind, Role::Server).contains(&key.as_str()) {
                (
                    Rule::Section,
                    format!(
                        "{key} is laid out by the server when the document is created; \
                         sections are never replaced or deleted"
                    ),
                )
            } else {
                (Rule::Owner, owner_reason(role, kind, owned))
            };
            out.refuse(rule, path_text, reason);
            continue;
        };
        if !owned.contains(&section.as_str()) {
            out.refuse(Rule::Owner, path_text, owner_reason(role, kind, owned));
            continue;
        }
        let is_map_delete = matches!(op.action, OpType::Delete) && map_key.is_some();
        let (rules, depth) = match shape(kind, &section) {
            Shape::Server => {
                out.refuse(Rule::Owner, path_text, owner_reason(role, kind, &[]));
                continue;
            }
            Shape::Fields => {
                if is_map_delete {
                    out.refuse(
                        Rule::Delete,
                        path_text,
                        "fields are never deleted; write a new value".to_owned(),
                    );
                }
                continue;
            }
            Shape::Entries(rules) => (rules, 1),
            Shape::Nested(inner) => {
                let found = loc
                    .keys
                    .get(1)
                    .and_then(|k| inner.iter().find(|(name, _)| name == k));
                match found {
                    Some((_, rules)) => (*rules, 2),
                    None => {
                        out.refuse(
                            Rule::Section,
                            path_text,
                            format!(
                                "{section} is laid out by the server; write entries inside {}",
                                inner
                                    .iter()
                                    .map(|(n, _)| format!("{section}/{n}"))
                                    .collect::<Vec<_>>()
                                    .join(" or ")
                            ),
                        );
                        continue;
                    }
                }
            }
        };
        let container = path_text
            .split('/')
            .take(depth)
            .collect::<Vec<_>>()
            .join("/");
        if loc.keys.len() == depth {
            // The op writes an entry key of the container.
            if map_key.is_none() {
                out.refuse(
                    Rule::Section,
                    path_text,
                    format!("{container} is a map of entries keyed by id"),
                );
            } else if matches!(op.action, OpType::Delete) {
                out.refuse(
                    Rule::Delete,
                    path_text,
                    format!(
                        "entries of {container} are never deleted{}",
                        if rules.tombstone {
                            "; tombstone them with deleted: true"
                        } else {
                            "; they are a record of what happened"
                        }
                    ),
                );
            } else if !op.pred.is_empty() {
                if !rules.replace {
                    out.refuse(
                        Rule::Replace,
                        path_text,
                        format!(
                            "an entry of {container} exists under this key; it is never \
                             replaced (edit its fields, or add a new entry)"
                        ),
                    );
                } else if op.pred.len() > 1 && !author.lead {
                    out.refuse(
                        Rule::Settle,
                        path_text,
                        "this answer has concurrent values (a conflict); only the team lead \
                         settles it"
                            .to_owned(),
                    );
                }
            }
            continue;
        }
        // Inside an entry.
        let entry = loc.objs.get(depth).cloned().flatten().map(Some);
        let created_here = entry.as_ref().is_some_and(&mine);
        let in_entry = loc.keys.len() - depth - 1;
        let field = if in_entry == 0 {
            map_key.clone().unwrap_or_default()
        } else {
            loc.keys.get(depth + 1).cloned().unwrap_or_default()
        };
        if is_map_delete {
            out.refuse(
                Rule::Delete,
                path_text,
                "fields of an entry are never deleted; write a new value".to_owned(),
            );
            continue;
        }
        if !created_here {
            let tombstone = rules.tombstone && in_entry == 0 && field == "deleted";
            if FIXED_FIELDS.contains(&field.as_str()) {
                out.refuse(
                    Rule::Immutable,
                    path_text,
                    format!("{field} is written when the entry is created and never changes"),
                );
                continue;
            }
            if !rules.mutable && !tombstone {
                out.refuse(
                    Rule::Immutable,
                    path_text,
                    format!(
                        "entries of {container} are written once, by the change that creates \
                         them{}",
                        if rules.tombstone {
                            " (only deleted may be set later)"
                        } else {
                            ""
                        }
                    ),
                );
                continue;
            }
        }
        if field == "by" && in_entry == 0 {
            match &op.action {
                OpType::Put(ScalarValue::Str(s)) if s.as_str() != author.user_id => {
                    out.refuse(
                        Rule::Author,
                        path_text,
                        format!(
                            "by must be the user who writes the change ({}), not {s:?}",
                            author.user_id
                        ),
                    );
                }
                OpType::Make(ObjType::Text) => {
                    by_texts.insert(
                        op_id,
                        ByText {
                            path: path_text,
                            after: None,
                            text: String::new(),
                            in_order: true,
                        },
                    );
                }
                _ => {}
            }
        }
    }
    for by in by_texts.into_values() {
        if !by.in_order || by.text != author.user_id {
            out.refuse(
                Rule::Author,
                by.path,
                format!(
                    "by must be the user who writes the change ({}), written as one piece",
                    author.user_id
                ),
            );
        }
    }
    out.finish()
}

struct Outcome {
    hash: ChangeHash,
    role: Role,
    /// One violation per (path, rule).
    violations: BTreeMap<(String, Rule), String>,
    touched: BTreeSet<String>,
}

impl Outcome {
    fn refuse(&mut self, rule: Rule, path: String, reason: String) {
        self.violations.entry((path, rule)).or_insert(reason);
    }

    fn finish(self) -> Result<ChangeCheck, Vec<Violation>> {
        if self.violations.is_empty() {
            return Ok(ChangeCheck {
                touched: self.touched,
            });
        }
        // A write inside a part already reported under the same rule adds
        // nothing: report the outermost.
        let keys: Vec<(String, Rule)> = self.violations.keys().cloned().collect();
        let covered = |path: &str, rule: Rule| {
            keys.iter()
                .any(|(p, r)| *r == rule && p != path && is_within(path, p))
        };
        let kept: Vec<((String, Rule), String)> = self
            .violations
            .into_iter()
            .filter(|((path, rule), _)| !covered(path, *rule))
            .collect();
        Err(kept
            .into_iter()
            .map(|((path, rule), reason)| Violation {
                path,
                role: self.role,
                change: self.hash,
                rule,
                reason,
            })
            .collect())
    }
}

/// Whether `user_id` leads the team of the inspection `doc`
/// (`header.members.<user_id>` is `"lead"`).
pub fn is_lead(doc: &Automerge, user_id: &str) -> bool {
    let Some((Value::Object(ObjType::Map), header)) = doc.get(ROOT, "header").ok().flatten() else {
        return false;
    };
    let Some((Value::Object(ObjType::Map), members)) = doc.get(&header, "members").ok().flatten()
    else {
        return false;
    };
    doc.get(&members, user_id)
        .ok()
        .flatten()
        .and_then(|(v, id)| crate::model::string_at(doc, &v, &id))
        .is_some_and(|role| role == "lead")
}
