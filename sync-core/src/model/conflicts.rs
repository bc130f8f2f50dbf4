//! Concurrent values that a person has to settle.
//!
//! When two people write the same key without seeing each other's write,
//! automerge keeps both values; readers show one (the deterministic winner)
//! and [`conflicts`] lists all of them so the team lead or the secretariat can
//! choose. Settling is an ordinary write that has seen every value: it
//! supersedes them all, and the history keeps each of them.

use automerge::transaction::Transactable;
use automerge::{ActorId, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use serde_json::json;

use super::inspection::{Answer, set_answer};
use super::{DocKind, ModelError, kind_of};

/// Nesting depth beyond which a value is rendered as `null`; schema values
/// are at most four levels deep, so this only stops hostile documents.
const MAX_RENDER_DEPTH: usize = 16;

/// One of the values held concurrently at a key.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConflictValue {
    /// The value rendered as JSON (maps as objects, text as a string,
    /// timestamps as milliseconds).
    pub value: serde_json::Value,
    /// Who wrote the value: the registered user of the operation's actor
    /// when [`conflicts_with`] was given a resolver that knows it, else the
    /// `by` inside the value (a map that has one).
    pub author: Option<String>,
    /// The `by` inside the value, when the value is a map that has one: what
    /// the writer claimed, shown next to `author` when they differ.
    pub by: Option<String>,
    /// The `at` inside the value, when the value is a map that has one.
    pub at: Option<i64>,
    /// Hex actor id of the operation that wrote the value.
    pub actor: String,
}

/// A key that holds more than one concurrent value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Conflict {
    /// e.g. `answers/A3` or `findings/<id>/title`.
    pub path: String,
    pub item_id: Option<String>,
    pub finding_id: Option<String>,
    /// In operation order (counter, then actor): the last one is the value
    /// readers currently show.
    pub values: Vec<ConflictValue>,
}

/// Every conflict in a document, ordered by path.
///
/// Inspections: answers (`answers/<item>`), findings as a whole
/// (`findings/<id>`), each field of a finding (`findings/<id>/title`,
/// `…/severity`, `…/note` when the note was replaced rather than edited, …)
/// and header fields. Actions: assignment fields. Catalogs and indexes are
/// written by the server alone and have none worth showing.
///
/// Each value's `author` is the `by` inside it; [`conflicts_with`] names
/// the user behind each operation's actor instead.
pub fn conflicts(doc: &impl ReadDoc) -> Vec<Conflict> {
    conflicts_with(doc, &|_| None)
}

/// [`conflicts`], with `resolve` mapping the automerge actor of each value's
/// operation to the registered user who wrote it (e.g. from the server's
/// device registrations). That user becomes the value's `author`; where
/// `resolve` returns `None`, the `by` inside the value is used, as in
/// [`conflicts`]. Scalar values (a finding's title, …) have no `by`, so the
/// resolver is the only way to name their author.
pub fn conflicts_with(
    doc: &impl ReadDoc,
    resolve: &dyn Fn(&ActorId) -> Option<String>,
) -> Vec<Conflict> {
    let mut out = Vec::new();
    let mut push = |obj: &ObjId, key: &str, path: String, tag: &dyn Fn(&mut Conflict)| {
        if let Some(mut c) = conflict_at(doc, obj, key, path, resolve) {
            tag(&mut c);
            out.push(c);
        }
    };
    match kind_of(doc) {
        Ok(DocKind::Inspection) => {
            if let Some(answers) = map_at(doc, &ROOT, "answers") {
                for item in doc.keys(&answers).collect::<Vec<_>>() {
                    push(&answers, &item, format!("answers/{item}"), &|c| {
                        c.item_id = Some(item.clone());
                    });
                }
            }
            if let Some(findings) = map_at(doc, &ROOT, "findings") {
                for fid in doc.keys(&findings).collect::<Vec<_>>() {
                    let tag = |c: &mut Conflict| c.finding_id = Some(fid.clone());
                    push(&findings, &fid, format!("findings/{fid}"), &tag);
                    if let Some(f) = map_at(doc, &findings, &fid) {
                        for field in doc.keys(&f).collect::<Vec<_>>() {
                            push(&f, &field, format!("findings/{fid}/{field}"), &tag);
                        }
                    }
                }
            }
            fields_of(doc, &mut push, "header");
        }
        Ok(DocKind::Action) => fields_of(doc, &mut push, "assignment"),
        _ => {}
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Settles a conflicted answer by writing `answer` as the new value.
///
/// This is exactly [`set_answer`]: a fresh map put at `answers.<item_id>` by a
/// writer whose document holds every concurrent value supersedes all of them
/// at once. The superseded values stay in the history (readable at the old
/// heads), so nothing an inspector entered is lost.
pub fn settle_answer(
    tx: &mut impl Transactable,
    item_id: &str,
    answer: &Answer,
) -> Result<(), ModelError> {
    set_answer(tx, item_id, answer)
}

fn map_at(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get(obj, key) {
        Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
        _ => None,
    }
}

fn fields_of(
    doc: &impl ReadDoc,
    push: &mut impl FnMut(&ObjId, &str, String, &dyn Fn(&mut Conflict)),
    section: &str,
) {
    if let Some(obj) = map_at(doc, &ROOT, section) {
        for field in doc.keys(&obj).collect::<Vec<_>>() {
            push(&obj, &field, format!("{section}/{field}"), &|_| {});
        }
    }
}

/// The conflict at `obj[key]`, if it holds more than one value.
fn conflict_at(
    doc: &impl ReadDoc,
    obj: &ObjId,
    key: &str,
    path: String,
    resolve: &dyn Fn(&ActorId) -> Option<String>,
) -> Option<Conflict> {
    let all = doc.get_all(obj, key).ok()?;
    if all.len() < 2 {
        return None;
    }
    let mut values: Vec<(u64, String, ConflictValue)> = all
        .iter()
        .map(|(v, id)| {
            let (counter, actor, user) = match id {
                ObjId::Id(counter, actor, _) => (*counter, actor.to_hex_string(), resolve(actor)),
                ObjId::Root => (0, String::new(), None),
            };
            let (by, at) = match v {
                Value::Object(ObjType::Map) => (by_of(doc, id), at_of(doc, id)),
                _ => (None, None),
            };
            let value = render(doc, v, id, 0);
            (
                counter,
                actor.clone(),
                ConflictValue {
                    value,
                    author: user.or_else(|| by.clone()),
                    by,
                    at,
                    actor,
                },
            )
        })
        .collect();
    values.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Some(Conflict {
        path,
        item_id: None,
        finding_id: None,
        values: values.into_iter().map(|(_, _, v)| v).collect(),
    })
}

fn by_of(doc: &impl ReadDoc, obj: &ObjId) -> Option<String> {
    match doc.get(obj, "by") {
        Ok(Some((v, id))) => super::read::string_at(doc, &v, &id),
        _ => None,
    }
}

fn at_of(doc: &impl ReadDoc, obj: &ObjId) -> Option<i64> {
    match doc.get(obj, "at") {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Timestamp(t) | ScalarValue::Int(t) => Some(*t),
            _ => None,
        },
        _ => None,
    }
}

/// A JSON rendering of a value, for showing the alternatives side by side.
fn render(doc: &impl ReadDoc, v: &Value<'_>, id: &ObjId, depth: usize) -> serde_json::Value {
    if depth > MAX_RENDER_DEPTH {
        return serde_json::Value::Null;
    }
    match v {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => json!(s.as_str()),
            ScalarValue::Int(n) | ScalarValue::Timestamp(n) => json!(n),
            ScalarValue::Uint(n) => json!(n),
            ScalarValue::F64(f) => json!(f),
            ScalarValue::Counter(c) => json!(i64::from(c)),
            ScalarValue::Boolean(b) => json!(b),
            ScalarValue::Bytes(b) => json!(hex::encode(b)),
            ScalarValue::Null | ScalarValue::Unknown { .. } => serde_json::Value::Null,
        },
        Value::Object(ObjType::Text) => doc.text(id).map(|s| json!(s)).unwrap_or_default(),
        Value::Object(ObjType::Map) | Value::Object(ObjType::Table) => {
            let mut m = serde_json::Map::new();
            for k in doc.keys(id).collect::<Vec<_>>() {
                if let Ok(Some((cv, cid))) = doc.get(id, k.as_str()) {
                    m.insert(k, render(doc, &cv, &cid, depth + 1));
                }
            }
            serde_json::Value::Object(m)
        }
        Value::Object(ObjType::List) => {
            let mut items = Vec::new();
            for i in 0..doc.length(id) {
                if let Ok(Some((cv, cid))) = doc.get(id, i) {
                    items.push(render(doc, &cv, &cid, depth + 1));
                }
            }
            serde_json::Value::Array(items)
        }
    }
}
