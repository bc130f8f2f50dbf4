//! Typed access to automerge maps, shared by the readers and by [`validate`](super::validate()).
//!
//! One decoding path serves both: a [`Walk`] in *reader* mode looks only at the
//! value automerge shows at each key (its deterministic winner), a walk in
//! *validator* mode also decodes every concurrent value (`get_all`) so a bad value
//! cannot hide behind a good one and surface later when the winner changes.
//! Either way every problem is recorded as a [`ValidationError`] with its path,
//! and decoding goes on, so validation reports all problems at once.

use std::collections::{BTreeMap, BTreeSet};

use std::borrow::Cow;

use automerge::{ObjId, ObjType, ReadDoc, ScalarValue, Value};

use super::ValidationError;
use super::format::{self, MAX_ID_LEN, MAX_MAP_ENTRIES};

/// Whether a field must be present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Required,
    Optional,
}

/// `parent/key`, or `key` at the root.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}/{key}")
    }
}

/// A short name of a value's type, for error messages.
pub(crate) fn describe(v: &Value<'_>) -> &'static str {
    match v {
        Value::Object(ObjType::Map) | Value::Object(ObjType::Table) => "a map",
        Value::Object(ObjType::List) => "a list",
        Value::Object(ObjType::Text) => "a text object",
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Bytes(_) => "bytes",
            ScalarValue::Str(_) => "a string",
            ScalarValue::Int(_) => "an integer",
            ScalarValue::Uint(_) => "an unsigned integer",
            ScalarValue::F64(_) => "a float",
            ScalarValue::Counter(_) => "a counter",
            ScalarValue::Timestamp(_) => "a timestamp",
            ScalarValue::Boolean(_) => "a boolean",
            ScalarValue::Unknown { .. } => "a value of an unknown type",
            ScalarValue::Null => "null",
        },
    }
}

/// The string inside a scalar string value.
/// The string held at a key, whether it is a scalar string or a `Text`
/// object. Automerge 3 (JavaScript) writes every assigned string as `Text`
/// unless told otherwise, so every string field of the schema accepts both.
pub fn string_at(doc: &impl ReadDoc, v: &Value<'_>, id: &ObjId) -> Option<String> {
    match v {
        Value::Object(ObjType::Text) => doc.text(id).ok(),
        other => as_str(other).map(str::to_owned),
    }
}

pub(crate) fn as_str<'v>(v: &'v Value<'_>) -> Option<&'v str> {
    match v {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.as_str()),
            _ => None,
        },
        Value::Object(_) => None,
    }
}

/// A value at a key, with the id of the operation (or object) that holds it.
type Entry<'a> = (Value<'a>, ObjId);

/// A cursor over one document that decodes fields and collects errors.
pub(crate) struct Walk<'a, D: ReadDoc> {
    doc: &'a D,
    all: bool,
    errors: Vec<ValidationError>,
}

impl<'a, D: ReadDoc> Walk<'a, D> {
    /// Looks only at the winning value of each key.
    pub(crate) fn reader(doc: &'a D) -> Self {
        Walk {
            doc,
            all: false,
            errors: Vec::new(),
        }
    }

    /// Decodes every concurrent value of each key.
    pub(crate) fn validator(doc: &'a D) -> Self {
        Walk {
            doc,
            all: true,
            errors: Vec::new(),
        }
    }

    pub(crate) fn doc(&self) -> &'a D {
        self.doc
    }

    pub(crate) fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ValidationError {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    pub(crate) fn into_errors(self) -> Vec<ValidationError> {
        self.errors
    }

    /// The winner at `obj[key]` and, in validator mode, the other concurrent values.
    pub(crate) fn values(
        &mut self,
        obj: &ObjId,
        key: &str,
        path: &str,
    ) -> (Option<Entry<'a>>, Vec<Entry<'a>>) {
        let doc = self.doc;
        let winner = match doc.get(obj, key) {
            Ok(Some(w)) => self.text_as_string(w),
            Ok(None) => return (None, Vec::new()),
            Err(e) => {
                self.error(path, format!("cannot be read: {e}"));
                return (None, Vec::new());
            }
        };
        if !self.all {
            return (Some(winner), Vec::new());
        }
        let others = match doc.get_all(obj, key) {
            Ok(all) => all
                .into_iter()
                .filter(|(_, id)| *id != winner.1)
                .map(|e| self.text_as_string(e))
                .collect(),
            Err(e) => {
                self.error(path, format!("cannot be read: {e}"));
                Vec::new()
            }
        };
        (Some(winner), others)
    }

    /// A `Text` object stands for its string (see [`string_at`]); decoders
    /// that want collaborative text accept the string form too.
    fn text_as_string(&self, (v, id): Entry<'a>) -> Entry<'a> {
        match v {
            Value::Object(ObjType::Text) => match self.doc.text(&id) {
                Ok(s) => (Value::Scalar(Cow::Owned(ScalarValue::Str(s.into()))), id),
                Err(_) => (v, id),
            },
            other => (other, id),
        }
    }

    /// Decodes `obj[key]` (and, validating, every concurrent value there).
    /// Returns the winner's decoded value; `None` if it is missing or invalid.
    pub(crate) fn field<T>(
        &mut self,
        obj: &ObjId,
        key: &str,
        parent: &str,
        need: Need,
        mut decode: impl FnMut(&mut Self, Value<'a>, ObjId, &str) -> Option<T>,
    ) -> Option<T> {
        let path = join(parent, key);
        let (winner, others) = self.values(obj, key, &path);
        for (v, id) in others {
            // Only the errors matter for values readers never show.
            let _ = decode(self, v, id, &path);
        }
        match winner {
            Some((v, id)) => decode(self, v, id, &path),
            None => {
                if need == Need::Required {
                    self.error(&path, "is missing");
                }
                None
            }
        }
    }

    /// The keys of a map, refusing maps with more than `max` entries and keys
    /// longer than an id (every map in the schema is keyed by some id).
    pub(crate) fn keys(&mut self, obj: &ObjId, path: &str, max: usize) -> Vec<String> {
        let keys: Vec<String> = self.doc.keys(obj).collect();
        if keys.len() > max {
            self.error(
                path,
                format!(
                    "holds {} entries; at most {max} are allowed: split the work into several documents",
                    keys.len()
                ),
            );
            return Vec::new();
        }
        keys
    }

    /// Records an error for every key of `obj` not in `allowed`.
    pub(crate) fn only_keys(&mut self, obj: &ObjId, path: &str, allowed: &[&str]) {
        let unknown: Vec<String> = self
            .doc
            .keys(obj)
            .filter(|k| !allowed.contains(&k.as_str()))
            .take(20)
            .collect();
        for k in unknown {
            self.error(
                &join(path, &k),
                format!(
                    "is not a known field here (known: {}); remove it",
                    allowed.join(", ")
                ),
            );
        }
    }

    // ----- decoders of one value -----

    pub(crate) fn map(&mut self, v: &Value<'a>, id: ObjId, path: &str) -> Option<ObjId> {
        match v {
            Value::Object(ObjType::Map) => Some(id),
            other => {
                self.error(path, format!("must be a map, found {}", describe(other)));
                None
            }
        }
    }

    /// An automerge `Text` object, returned as a string.
    pub(crate) fn text(
        &mut self,
        v: &Value<'a>,
        id: ObjId,
        path: &str,
        max_chars: usize,
    ) -> Option<String> {
        match v {
            Value::Object(ObjType::Text) => match self.doc.text(&id) {
                Ok(s) => self.check_len(s, path, max_chars),
                Err(e) => {
                    self.error(path, format!("cannot be read: {e}"));
                    None
                }
            },
            // Text objects reach decoders as strings (see `text_as_string`).
            Value::Scalar(s) if matches!(s.as_ref(), ScalarValue::Str(_)) => {
                let s = as_str(v).unwrap_or_default().to_owned();
                self.check_len(s, path, max_chars)
            }
            other => {
                self.error(
                    path,
                    format!("must be a text object, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn check_len(&mut self, s: String, path: &str, max_chars: usize) -> Option<String> {
        let n = s.chars().count();
        if n > max_chars {
            self.error(
                path,
                format!("is {n} characters long; at most {max_chars} are allowed"),
            );
            None
        } else {
            Some(s)
        }
    }

    pub(crate) fn string(&mut self, v: &Value<'a>, path: &str, max_chars: usize) -> Option<String> {
        match as_str(v) {
            Some(s) => {
                let s = s.to_owned();
                self.check_len(s, path, max_chars)
            }
            None => {
                self.error(path, format!("must be a string, found {}", describe(v)));
                None
            }
        }
    }

    /// A non-empty string of at most `max_chars` characters.
    pub(crate) fn nonempty(
        &mut self,
        v: &Value<'a>,
        path: &str,
        max_chars: usize,
    ) -> Option<String> {
        let s = self.string(v, path, max_chars)?;
        if s.trim().is_empty() {
            self.error(path, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub(crate) fn id(&mut self, v: &Value<'a>, path: &str) -> Option<String> {
        let s = self.string(v, path, MAX_ID_LEN)?;
        if !format::is_id(&s) {
            self.error(
                path,
                format!(
                    "{s:?} is not an id (1 to {MAX_ID_LEN} characters from A-Z a-z 0-9 - _ . : @)"
                ),
            );
            return None;
        }
        Some(s)
    }

    pub(crate) fn sha256(&mut self, v: &Value<'a>, path: &str) -> Option<String> {
        let s = self.string(v, path, 64)?;
        if !format::is_sha256(&s) {
            self.error(
                path,
                "must be a sha256: 64 lowercase hexadecimal characters",
            );
            return None;
        }
        Some(s)
    }

    pub(crate) fn date(&mut self, v: &Value<'a>, path: &str) -> Option<String> {
        let s = self.string(v, path, 10)?;
        if !format::is_date(&s) {
            self.error(path, format!("{s:?} is not a real date written YYYY-MM-DD"));
            return None;
        }
        Some(s)
    }

    /// An unsigned integer. A non-negative `int` is accepted too: JavaScript
    /// writers store every whole number as `int` unless told otherwise.
    pub(crate) fn uint(&mut self, v: &Value<'a>, path: &str) -> Option<u64> {
        if let Value::Scalar(s) = v {
            match s.as_ref() {
                ScalarValue::Uint(n) => return Some(*n),
                ScalarValue::Int(n) if *n >= 0 => return u64::try_from(*n).ok(),
                ScalarValue::Int(_) => {
                    self.error(path, "must not be negative");
                    return None;
                }
                _ => {}
            }
        }
        self.error(
            path,
            format!("must be an unsigned integer, found {}", describe(v)),
        );
        None
    }

    /// A `u32`, as template versions are.
    pub(crate) fn uint32(&mut self, v: &Value<'a>, path: &str) -> Option<u32> {
        let n = self.uint(v, path)?;
        match u32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(path, format!("{n} is too large (at most {})", u32::MAX));
                None
            }
        }
    }

    /// A signed integer (an unsigned one that fits is accepted too).
    pub(crate) fn int(&mut self, v: &Value<'a>, path: &str) -> Option<i64> {
        if let Value::Scalar(s) = v {
            match s.as_ref() {
                ScalarValue::Int(n) => return Some(*n),
                ScalarValue::Uint(n) => {
                    if let Ok(n) = i64::try_from(*n) {
                        return Some(n);
                    }
                    self.error(path, format!("{n} is too large for an integer"));
                    return None;
                }
                _ => {}
            }
        }
        self.error(path, format!("must be an integer, found {}", describe(v)));
        None
    }

    /// UTC milliseconds since the epoch, stored as an automerge timestamp.
    pub(crate) fn timestamp(&mut self, v: &Value<'a>, path: &str) -> Option<i64> {
        if let Value::Scalar(s) = v
            && let ScalarValue::Timestamp(t) = s.as_ref()
        {
            return Some(*t);
        }
        self.error(path, format!("must be a timestamp, found {}", describe(v)));
        None
    }

    pub(crate) fn boolean(&mut self, v: &Value<'a>, path: &str) -> Option<bool> {
        if let Value::Scalar(s) = v
            && let ScalarValue::Boolean(b) = s.as_ref()
        {
            return Some(*b);
        }
        self.error(path, format!("must be a boolean, found {}", describe(v)));
        None
    }

    /// One of a fixed set of strings.
    pub(crate) fn one_of<T>(
        &mut self,
        v: &Value<'a>,
        path: &str,
        parse: fn(&str) -> Option<T>,
        allowed: &[&str],
    ) -> Option<T> {
        let s = self.string(v, path, 100)?;
        match parse(&s) {
            Some(t) => Some(t),
            None => {
                self.error(path, format!("{s:?} is not one of: {}", allowed.join(", ")));
                None
            }
        }
    }

    // ----- whole fields -----

    pub(crate) fn str_field(
        &mut self,
        obj: &ObjId,
        key: &str,
        parent: &str,
        need: Need,
        max_chars: usize,
    ) -> Option<String> {
        self.field(obj, key, parent, need, |w, v, _, p| {
            w.string(&v, p, max_chars)
        })
    }

    pub(crate) fn nonempty_field(
        &mut self,
        obj: &ObjId,
        key: &str,
        parent: &str,
        need: Need,
        max_chars: usize,
    ) -> Option<String> {
        self.field(obj, key, parent, need, |w, v, _, p| {
            w.nonempty(&v, p, max_chars)
        })
    }

    pub(crate) fn id_field(
        &mut self,
        obj: &ObjId,
        key: &str,
        parent: &str,
        need: Need,
    ) -> Option<String> {
        self.field(obj, key, parent, need, |w, v, _, p| w.id(&v, p))
    }

    pub(crate) fn date_field(
        &mut self,
        obj: &ObjId,
        key: &str,
        parent: &str,
        need: Need,
    ) -> Option<String> {
        self.field(obj, key, parent, need, |w, v, _, p| w.date(&v, p))
    }

    pub(crate) fn uint_field(
        &mut self,
        obj: &ObjId,
        key: &str,
        parent: &str,
        need: Need,
    ) -> Option<u64> {
        self.field(obj, key, parent, need, |w, v, _, p| w.uint(&v, p))
    }

    pub(crate) fn ts_field(
        &mut self,
        obj: &ObjId,
        key: &str,
        parent: &str,
        need: Need,
    ) -> Option<i64> {
        self.field(obj, key, parent, need, |w, v, _, p| w.timestamp(&v, p))
    }

    pub(crate) fn bool_field(
        &mut self,
        obj: &ObjId,
        key: &str,
        parent: &str,
        need: Need,
    ) -> Option<bool> {
        self.field(obj, key, parent, need, |w, v, _, p| w.boolean(&v, p))
    }

    /// A map field, returned as its object id.
    pub(crate) fn map_field(
        &mut self,
        obj: &ObjId,
        key: &str,
        parent: &str,
        need: Need,
    ) -> Option<ObjId> {
        self.field(obj, key, parent, need, |w, v, id, p| w.map(&v, id, p))
    }

    /// A section: a map created once, by `init_*`. When validating, several
    /// concurrent maps at the key are an error, because everything written
    /// into a losing map is invisible to every reader.
    pub(crate) fn section(&mut self, obj: &ObjId, key: &str, parent: &str) -> Option<ObjId> {
        if self.all
            && let Ok(all) = self.doc.get_all(obj, key)
            && all.len() > 1
        {
            let n = all.len();
            self.error(
                &join(parent, key),
                format!(
                    "holds {n} concurrent values; a section is created once when the document \
                     is created and never replaced"
                ),
            );
        }
        self.map_field(obj, key, parent, Need::Required)
    }

    /// A set stored as a map `sha256 → bool` (evidence, finding photos):
    /// `true` is a member, `false` one that was removed (keys are never
    /// deleted). Missing means empty.
    pub(crate) fn sha_set(&mut self, obj: &ObjId, key: &str, parent: &str) -> BTreeSet<String> {
        self.field(obj, key, parent, Need::Optional, |w, v, id, p| {
            let set_obj = w.map(&v, id, p)?;
            let mut set = BTreeSet::new();
            for k in w.keys(&set_obj, p, MAX_MAP_ENTRIES) {
                let kp = join(p, &k);
                if !format::is_sha256(&k) {
                    w.error(
                        &kp,
                        "key must be a sha256: 64 lowercase hexadecimal characters",
                    );
                    continue;
                }
                let flag = w.field(&set_obj, &k, p, Need::Required, |w, v, _, p| {
                    w.boolean(&v, p)
                });
                if flag == Some(true) {
                    set.insert(k);
                }
            }
            Some(set)
        })
        .unwrap_or_default()
    }

    /// A map `key → string` whose keys are ids. Missing means empty.
    pub(crate) fn str_map(
        &mut self,
        v: &Value<'a>,
        id: ObjId,
        path: &str,
        max_chars: usize,
    ) -> Option<BTreeMap<String, String>> {
        let obj = self.map(v, id, path)?;
        let mut out = BTreeMap::new();
        for k in self.keys(&obj, path, MAX_MAP_ENTRIES) {
            if !format::is_id(&k) {
                self.error(&join(path, &k), "key is not an id");
                continue;
            }
            if let Some(s) = self.str_field(&obj, &k, path, Need::Required, max_chars) {
                out.insert(k, s);
            }
        }
        Some(out)
    }
}
