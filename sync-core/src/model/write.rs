//! Small helpers shared by the writers.
//!
//! Writers never create a section on demand: two replicas doing so
//! concurrently would each make their own map at the same key and one map (and
//! everything written into it) would lose. Sections are created once, by the
//! `init_*` writer, and every later writer looks them up or fails.

use std::collections::BTreeSet;

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};

use super::ModelError;
use super::format::{self, MAX_ID_LEN};

/// The map at `parent[key]`, or `NotFound` naming `path`.
pub(crate) fn get_map(
    doc: &impl ReadDoc,
    parent: &ObjId,
    key: &str,
    path: &str,
) -> Result<ObjId, ModelError> {
    match doc.get(parent, key)? {
        Some((Value::Object(ObjType::Map), id)) => Ok(id),
        _ => Err(ModelError::NotFound {
            path: path.to_owned(),
        }),
    }
}

/// The root section `key`.
pub(crate) fn section(doc: &impl ReadDoc, key: &str) -> Result<ObjId, ModelError> {
    get_map(doc, &ROOT, key, key)
}

/// Refuses ids that [`format::is_id`] would reject.
pub(crate) fn check_id(what: &str, s: &str) -> Result<(), ModelError> {
    if format::is_id(s) {
        Ok(())
    } else {
        Err(ModelError::InvalidArgument(format!(
            "{what} {s:?} is not an id (1 to {MAX_ID_LEN} characters from A-Z a-z 0-9 - _ . : @)"
        )))
    }
}

/// Refuses strings [`format::is_sha256`] would reject.
pub(crate) fn check_sha256(what: &str, s: &str) -> Result<(), ModelError> {
    if format::is_sha256(s) {
        Ok(())
    } else {
        Err(ModelError::InvalidArgument(format!(
            "{what} {s:?} is not a sha256 (64 lowercase hexadecimal characters)"
        )))
    }
}

/// Refuses strings [`format::is_date`] would reject.
pub(crate) fn check_date(what: &str, s: &str) -> Result<(), ModelError> {
    if format::is_date(s) {
        Ok(())
    } else {
        Err(ModelError::InvalidArgument(format!(
            "{what} {s:?} is not a real date written YYYY-MM-DD"
        )))
    }
}

pub(crate) fn put_ts(
    tx: &mut impl Transactable,
    obj: &ObjId,
    key: &str,
    t: i64,
) -> Result<(), ModelError> {
    tx.put(obj, key, ScalarValue::Timestamp(t))?;
    Ok(())
}

pub(crate) fn put_opt_str(
    tx: &mut impl Transactable,
    obj: &ObjId,
    key: &str,
    s: Option<&str>,
) -> Result<(), ModelError> {
    if let Some(s) = s {
        tx.put(obj, key, s)?;
    }
    Ok(())
}

/// Writes a set as a map `member → true` under `obj[key]` (a fresh map).
pub(crate) fn put_set(
    tx: &mut impl Transactable,
    obj: &ObjId,
    key: &str,
    set: &BTreeSet<String>,
) -> Result<(), ModelError> {
    for s in set {
        check_sha256(key, s)?;
    }
    let m = tx.put_object(obj, key, ObjType::Map)?;
    for s in set {
        tx.put(&m, s.as_str(), true)?;
    }
    Ok(())
}

/// Fails with `AlreadyExists` if `parent[key]` holds anything.
pub(crate) fn expect_absent(
    doc: &impl ReadDoc,
    parent: &ObjId,
    key: &str,
    path: &str,
) -> Result<(), ModelError> {
    if doc.get(parent, key)?.is_some() {
        Err(ModelError::AlreadyExists {
            path: path.to_owned(),
        })
    } else {
        Ok(())
    }
}

/// Writes `kind` and `schema` at the root.
pub(crate) fn put_kind(tx: &mut impl Transactable, kind: super::DocKind) -> Result<(), ModelError> {
    tx.put(ROOT, "kind", kind.as_str())?;
    tx.put(ROOT, "schema", ScalarValue::Uint(super::SCHEMA_VERSION))?;
    Ok(())
}
