//! The `catalog` document: one per deployment, written by the server only.
//!
//! It carries what every tablet needs offline to make sense of inspections:
//! the units, the published checklist templates (immutable per version, so an
//! answer's meaning never shifts under it) and people's display names.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use sha2::{Digest, Sha256};

use super::format::{self, MAX_MAP_ENTRIES, MAX_TEMPLATE_JSON_BYTES, MAX_TITLE_CHARS};
use super::read::{Need, Walk, join};
use super::write::{check_id, check_sha256, get_map, put_kind, put_opt_str, section};
use super::{DocKind, ModelError, expect_empty, expect_kind, finish};
use crate::template::{Template, TemplateError, TemplateRegistry};

/// Top-level keys of a catalog.
pub const ROOT_KEYS: &[&str] = &["kind", "schema", "units", "templates", "people"];

const UNIT_KEYS: &[&str] = &["name", "full_name", "type", "parent_code"];
const TEMPLATE_KEYS: &[&str] = &["template_id", "version", "title", "sha256", "json"];
const PERSON_KEYS: &[&str] = &["display_name"];

/// `units.<code>`: a ward, commune or department.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogUnit {
    pub name: String,
    pub full_name: String,
    /// As in `hanoi_units.csv` / `hanoi_departments.csv` (`ward`, `commune`, `so`, …).
    pub unit_type: String,
    pub parent_code: Option<String>,
}

/// `templates.<template_id>@<version>`: a published template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogTemplate {
    pub template_id: String,
    pub version: u32,
    pub title: String,
    /// Hex sha256 of `json`.
    pub sha256: String,
    /// The template's canonical JSON.
    pub json: String,
}

impl CatalogTemplate {
    /// The catalog entry for a parsed template.
    pub fn from_template(t: &Template) -> Self {
        let json = t.canonical_json().to_owned();
        CatalogTemplate {
            template_id: t.template_id.clone(),
            version: t.version,
            title: t.title_vi.clone(),
            sha256: sha256_hex(&json),
            json,
        }
    }

    /// `"<template_id>@<version>"`, the key in `templates`.
    pub fn key(&self) -> String {
        format!("{}@{}", self.template_id, self.version)
    }
}

/// `people.<user_id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub display_name: String,
}

/// A whole catalog as its readers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub units: BTreeMap<String, CatalogUnit>,
    /// `"<template_id>@<version>"` → template.
    pub templates: BTreeMap<String, CatalogTemplate>,
    pub people: BTreeMap<String, Person>,
}

impl Catalog {
    /// A registry holding every template of the catalog, for reading and
    /// validating inspections offline.
    pub fn registry(&self) -> Result<TemplateRegistry, TemplateError> {
        let mut reg = TemplateRegistry::default();
        for t in self.templates.values() {
            reg.publish(Template::from_json(&t.json)?)?;
        }
        Ok(reg)
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

// ----------------------------------------------------------------- writers

/// Creates an empty catalog (server).
pub fn init_catalog(tx: &mut impl Transactable) -> Result<(), ModelError> {
    expect_empty(&*tx)?;
    put_kind(tx, DocKind::Catalog)?;
    for key in ["units", "templates", "people"] {
        tx.put_object(ROOT, key, ObjType::Map)?;
    }
    Ok(())
}

/// Adds or replaces a unit.
pub fn put_unit(
    tx: &mut impl Transactable,
    code: &str,
    unit: &CatalogUnit,
) -> Result<(), ModelError> {
    check_id("unit code", code)?;
    check_id("unit type", &unit.unit_type)?;
    if let Some(parent) = &unit.parent_code {
        check_id("parent unit code", parent)?;
    }
    let units = section(&*tx, "units")?;
    let u = tx.put_object(&units, code, ObjType::Map)?;
    tx.put(&u, "name", unit.name.as_str())?;
    tx.put(&u, "full_name", unit.full_name.as_str())?;
    tx.put(&u, "type", unit.unit_type.as_str())?;
    put_opt_str(tx, &u, "parent_code", unit.parent_code.as_deref())?;
    Ok(())
}

/// Publishes a template version. Publishing the same content again does
/// nothing; different content under a published key is refused.
pub fn put_template(
    tx: &mut impl Transactable,
    template: &CatalogTemplate,
) -> Result<(), ModelError> {
    check_id("template id", &template.template_id)?;
    check_sha256("template sha256", &template.sha256)?;
    let actual = sha256_hex(&template.json);
    if actual != template.sha256 {
        return Err(ModelError::InvalidArgument(format!(
            "template sha256 {} does not match its JSON (sha256 {actual})",
            template.sha256
        )));
    }
    let key = template.key();
    let templates = section(&*tx, "templates")?;
    if let Ok(existing) = get_map(&*tx, &templates, &key, &join("templates", &key)) {
        let existing_sha = match tx.get(&existing, "sha256")? {
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Str(s) => s.to_string(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        if existing_sha == template.sha256 {
            return Ok(());
        }
        return Err(ModelError::TemplateImmutable {
            key,
            existing: existing_sha,
        });
    }
    let t = tx.put_object(&templates, key.as_str(), ObjType::Map)?;
    tx.put(&t, "template_id", template.template_id.as_str())?;
    tx.put(
        &t,
        "version",
        ScalarValue::Uint(u64::from(template.version)),
    )?;
    tx.put(&t, "title", template.title.as_str())?;
    tx.put(&t, "sha256", template.sha256.as_str())?;
    tx.put(&t, "json", template.json.as_str())?;
    Ok(())
}

/// Adds or renames a person.
pub fn put_person(
    tx: &mut impl Transactable,
    user_id: &str,
    person: &Person,
) -> Result<(), ModelError> {
    check_id("user id", user_id)?;
    let people = section(&*tx, "people")?;
    let p = tx.put_object(&people, user_id, ObjType::Map)?;
    tx.put(&p, "display_name", person.display_name.as_str())?;
    Ok(())
}

// ----------------------------------------------------------------- reader

/// Reads a catalog.
pub fn read_catalog(doc: &impl ReadDoc) -> Result<Catalog, ModelError> {
    expect_kind(doc, DocKind::Catalog)?;
    let mut w = Walk::reader(doc);
    let value = walk(&mut w);
    finish(value, w.into_errors())
}

/// Decodes a whole catalog; used by the reader and by `validate`.
pub(crate) fn walk<D: ReadDoc>(w: &mut Walk<'_, D>) -> Option<Catalog> {
    w.only_keys(&ROOT, "", ROOT_KEYS);
    let units = walk_section(w, "units", walk_unit);
    let templates = walk_section(w, "templates", walk_template);
    let people = walk_section(w, "people", walk_person);
    Some(Catalog {
        units,
        templates,
        people,
    })
}

type Decode<'a, D, T> = fn(&mut Walk<'a, D>, Value<'a>, ObjId, &str) -> Option<T>;

fn walk_section<'a, D: ReadDoc, T>(
    w: &mut Walk<'a, D>,
    key: &str,
    decode: Decode<'a, D, T>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    if let Some(obj) = w.section(&ROOT, key, "") {
        for k in w.keys(&obj, key, MAX_MAP_ENTRIES) {
            if !format::is_id(&k) {
                w.error(&join(key, &k), "key is not an id");
                continue;
            }
            if let Some(v) = w.field(&obj, &k, key, Need::Required, decode) {
                out.insert(k, v);
            }
        }
    }
    out
}

fn walk_unit<'a, D: ReadDoc>(
    w: &mut Walk<'a, D>,
    v: Value<'a>,
    id: ObjId,
    p: &str,
) -> Option<CatalogUnit> {
    let o = w.map(&v, id, p)?;
    w.only_keys(&o, p, UNIT_KEYS);
    let name = w.nonempty_field(&o, "name", p, Need::Required, MAX_TITLE_CHARS);
    let full_name = w.nonempty_field(&o, "full_name", p, Need::Required, MAX_TITLE_CHARS);
    let unit_type = w.id_field(&o, "type", p, Need::Required);
    let parent_code = w.id_field(&o, "parent_code", p, Need::Optional);
    Some(CatalogUnit {
        name: name?,
        full_name: full_name?,
        unit_type: unit_type?,
        parent_code,
    })
}

fn walk_template<'a, D: ReadDoc>(
    w: &mut Walk<'a, D>,
    v: Value<'a>,
    id: ObjId,
    p: &str,
) -> Option<CatalogTemplate> {
    let o = w.map(&v, id, p)?;
    w.only_keys(&o, p, TEMPLATE_KEYS);
    let template_id = w.id_field(&o, "template_id", p, Need::Required);
    let version = w.field(&o, "version", p, Need::Required, |w, v, _, p| {
        w.uint32(&v, p)
    });
    let title = w.nonempty_field(&o, "title", p, Need::Required, MAX_TITLE_CHARS);
    let sha256 = w.field(&o, "sha256", p, Need::Required, |w, v, _, p| {
        w.sha256(&v, p)
    });
    let json = w.field(&o, "json", p, Need::Required, |w, v, _, p| {
        let s = w.string(&v, p, MAX_TEMPLATE_JSON_BYTES)?;
        if s.len() > MAX_TEMPLATE_JSON_BYTES {
            w.error(
                p,
                format!(
                    "is {} bytes; at most {MAX_TEMPLATE_JSON_BYTES} are allowed",
                    s.len()
                ),
            );
            return None;
        }
        Some(s)
    });
    let t = CatalogTemplate {
        template_id: template_id?,
        version: version?,
        title: title?,
        sha256: sha256?,
        json: json?,
    };
    // The key, the hash and the content must agree, or a tablet would read
    // inspections against a template other than the one the key promises.
    if p.rsplit('/').next() != Some(t.key().as_str()) {
        w.error(p, format!("key must be {} (template_id@version)", t.key()));
    }
    let actual = sha256_hex(&t.json);
    if actual != t.sha256 {
        w.error(
            &join(p, "sha256"),
            format!("does not match the JSON (its sha256 is {actual})"),
        );
    }
    match Template::from_json(&t.json) {
        Ok(parsed) if parsed.template_id == t.template_id && parsed.version == t.version => {}
        Ok(parsed) => w.error(
            &join(p, "json"),
            format!(
                "holds template {} but the entry says {}",
                parsed.key(),
                t.key()
            ),
        ),
        Err(e) => w.error(&join(p, "json"), format!("is not a valid template: {e}")),
    }
    Some(t)
}

fn walk_person<'a, D: ReadDoc>(
    w: &mut Walk<'a, D>,
    v: Value<'a>,
    id: ObjId,
    p: &str,
) -> Option<Person> {
    let o = w.map(&v, id, p)?;
    w.only_keys(&o, p, PERSON_KEYS);
    let display_name = w.nonempty_field(&o, "display_name", p, Need::Required, MAX_TITLE_CHARS);
    Some(Person {
        display_name: display_name?,
    })
}
