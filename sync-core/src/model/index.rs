//! The `index` document: one per user, written by the server only.
//!
//! It lists the documents that user's device should hold offline. A tablet
//! syncs its index first and then every document the index names, so the
//! server decides what reaches a device by editing one map.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, ROOT, ReadDoc, Value};

use super::format::{MAX_MAP_ENTRIES, MAX_TITLE_CHARS};
use super::read::{Need, Walk, join};
use super::write::{check_id, put_kind, put_opt_str, put_ts, section};
use super::{DocKind, ModelError, expect_empty, expect_kind, finish};
use crate::ids::DocumentId;

/// Top-level keys of an index.
pub const ROOT_KEYS: &[&str] = &["kind", "schema", "user_id", "documents"];

const ENTRY_KEYS: &[&str] = &["kind", "title", "added_at"];

/// `documents.<document id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub kind: DocKind,
    /// What to show in a list before the document itself is loaded.
    pub title: Option<String>,
    pub added_at: i64,
}

/// A whole index as its readers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub user_id: String,
    pub documents: BTreeMap<DocumentId, IndexEntry>,
}

/// Creates an empty index for a user (server).
pub fn init_index(tx: &mut impl Transactable, user_id: &str) -> Result<(), ModelError> {
    expect_empty(&*tx)?;
    check_id("user id", user_id)?;
    put_kind(tx, DocKind::Index)?;
    tx.put(ROOT, "user_id", user_id)?;
    tx.put_object(ROOT, "documents", ObjType::Map)?;
    Ok(())
}

/// Adds (or updates) a document in the index.
pub fn index_add(
    tx: &mut impl Transactable,
    document: &DocumentId,
    entry: &IndexEntry,
) -> Result<(), ModelError> {
    let docs = section(&*tx, "documents")?;
    let e = tx.put_object(&docs, document.encode(), ObjType::Map)?;
    tx.put(&e, "kind", entry.kind.as_str())?;
    put_opt_str(tx, &e, "title", entry.title.as_deref())?;
    put_ts(tx, &e, "added_at", entry.added_at)?;
    Ok(())
}

/// Removes a document from the index.
pub fn index_remove(tx: &mut impl Transactable, document: &DocumentId) -> Result<(), ModelError> {
    let docs = section(&*tx, "documents")?;
    tx.delete(&docs, document.encode())?;
    Ok(())
}

/// Reads an index.
pub fn read_index(doc: &impl ReadDoc) -> Result<Index, ModelError> {
    expect_kind(doc, DocKind::Index)?;
    let mut w = Walk::reader(doc);
    let value = walk(&mut w);
    finish(value, w.into_errors())
}

/// Decodes a whole index; used by the reader and by `validate`.
pub(crate) fn walk<D: ReadDoc>(w: &mut Walk<'_, D>) -> Option<Index> {
    w.only_keys(&ROOT, "", ROOT_KEYS);
    let user_id = w.id_field(&ROOT, "user_id", "", Need::Required);
    let mut documents = BTreeMap::new();
    if let Some(obj) = w.section(&ROOT, "documents", "") {
        for key in w.keys(&obj, "documents", MAX_MAP_ENTRIES) {
            let path = join("documents", &key);
            let doc_id = match DocumentId::parse(&key) {
                Ok(id) => id,
                Err(e) => {
                    w.error(&path, format!("key is not a document id: {e}"));
                    continue;
                }
            };
            if let Some(e) = w.field(&obj, &key, "documents", Need::Required, walk_entry) {
                documents.insert(doc_id, e);
            }
        }
    }
    Some(Index {
        user_id: user_id?,
        documents,
    })
}

fn walk_entry<'a, D: ReadDoc>(
    w: &mut Walk<'a, D>,
    v: Value<'a>,
    id: ObjId,
    p: &str,
) -> Option<IndexEntry> {
    let o = w.map(&v, id, p)?;
    w.only_keys(&o, p, ENTRY_KEYS);
    let kind = w.field(&o, "kind", p, Need::Required, |w, v, _, p| {
        w.one_of(
            &v,
            p,
            DocKind::parse,
            &["inspection", "action", "catalog", "index"],
        )
    });
    let title = w.str_field(&o, "title", p, Need::Optional, MAX_TITLE_CHARS);
    let added_at = w.ts_field(&o, "added_at", p, Need::Required);
    Some(IndexEntry {
        kind: kind?,
        title,
        added_at: added_at?,
    })
}
