//! Versioned checklist templates (e.g. the Đề án 06 inspection checklist).
//!
//! A template is loaded from JSON ([`Template::from_json`]), validated once, and then
//! frozen under the key `<template_id>@<version>`. Inspections record that key, so the
//! meaning of every stored answer stays fixed by the version it was written against;
//! [`TemplateRegistry::publish`] refuses to change a version once it is published.
//!
//! The loader reads the keys it understands and keeps every other key in `extra`, so
//! any checklist in this shape loads, and nothing of it is lost.
//! [`Template::check_answer`] validates one answer (the value plus the item's extra
//! fields) and evaluates the item's target.
//!
//! ```
//! use std::collections::BTreeMap;
//! use sync_core::template::{AnswerValue, Template};
//!
//! let t = Template::from_json(r#"{
//!   "template_id": "demo", "title_vi": "Phiếu",
//!   "sections": [{ "id": "A", "title_vi": "Mục A", "items": [
//!     { "id": "A1", "text_vi": "Tỷ lệ", "type": "percentage",
//!       "target": { "op": ">=", "value": 80, "unit": "%" } } ] }]
//! }"#).unwrap();
//! assert_eq!(t.key(), "demo@1");
//! let a = t.check_answer("A1", &AnswerValue::Percentage { numerator: 9, denominator: 10 },
//!                        &BTreeMap::new()).unwrap();
//! assert_eq!((a.target_met, a.percent), (Some(true), Some(90.0)));
//! ```

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Largest template source accepted, in bytes of canonical JSON.
pub const MAX_TEMPLATE_BYTES: usize = 2 * 1024 * 1024;
/// Most items one template may hold.
pub const MAX_ITEMS: usize = 2000;
/// Longest id (template, section, item, field key, action entry).
pub const MAX_ID_LEN: usize = 64;
/// Largest count accepted in a `number` answer or a percentage part: a bigger value is a
/// typing error, not a count of anything a unit does.
pub const MAX_COUNT: u64 = 1_000_000_000_000;
/// Longest text answer or field value, in characters.
pub const MAX_TEXT_CHARS: usize = 20_000;
/// Most entries an `action_list` answer may hold.
pub const MAX_ACTION_ENTRIES: usize = 500;
/// Most photos an item may demand.
pub const MAX_MIN_PHOTOS: u32 = 100;
/// Action-list columns that every entry must fill when the item declares them.
pub const REQUIRED_ACTION_FIELDS: [&str; 2] = ["noi_dung", "thoi_han"];
/// Compiled-size cap for field patterns, so a hostile pattern cannot eat memory.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// Longest user value quoted back in an error message.
const QUOTE_MAX_CHARS: usize = 80;

/// A validated checklist template.
///
/// Deserializing goes through [`Template::from_json`]'s validation. The content hash is
/// over the source JSON, so store [`Template::canonical_json`] (not a re-serialization)
/// wherever the hash must be reproducible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct Template {
    pub template_id: String,
    pub version: u32,
    pub title_vi: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title_en: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    pub sections: Vec<Section>,
    /// Top-level keys this crate does not interpret (status, sources, reporting, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    #[serde(skip)]
    canonical_json: String,
    #[serde(skip)]
    sha256: String,
}

/// A section of the checklist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub id: String,
    pub title_vi: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title_en: Option<String>,
    pub items: Vec<Item>,
    /// Section keys this crate does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One question of the checklist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    pub text_vi: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_en: Option<String>,
    #[serde(rename = "type")]
    pub answer_type: AnswerType,
    pub target: Option<Target>,
    #[serde(default)]
    pub evidence_required: bool,
    #[serde(default)]
    pub evidence_types: Vec<EvidenceType>,
    #[serde(default)]
    pub min_photos: u32,
    #[serde(default)]
    pub applies_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<SelectOption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerator_label_vi: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator_label_vi: Option<String>,
    /// How many records the inspector samples (e.g. B8: 10 records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_size: Option<u32>,
    /// A non-zero `number` answer must come with a note (e.g. F5: describe incidents).
    #[serde(default)]
    pub comment_required_if_nonzero: bool,
    /// Item keys this crate does not interpret, kept so nothing is lost.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The kind of answer an item takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerType {
    YesNo,
    YesNoPartial,
    Percentage,
    Number,
    Text,
    Select,
    ActionList,
}

impl AnswerType {
    /// Every answer type, in the order the template format lists them.
    pub const ALL: [AnswerType; 7] = [
        AnswerType::YesNo,
        AnswerType::YesNoPartial,
        AnswerType::Percentage,
        AnswerType::Number,
        AnswerType::Text,
        AnswerType::Select,
        AnswerType::ActionList,
    ];

    /// The name used in template JSON (`"yes_no"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerType::YesNo => "yes_no",
            AnswerType::YesNoPartial => "yes_no_partial",
            AnswerType::Percentage => "percentage",
            AnswerType::Number => "number",
            AnswerType::Text => "text",
            AnswerType::Select => "select",
            AnswerType::ActionList => "action_list",
        }
    }

    /// Parses the JSON name.
    pub fn parse(s: &str) -> Option<AnswerType> {
        AnswerType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// What a value of this type looks like, for error messages.
    fn expected_value(self) -> &'static str {
        match self {
            AnswerType::YesNo => "yes or no",
            AnswerType::YesNoPartial => "yes, partial or no",
            AnswerType::Percentage => "a numerator and a denominator",
            AnswerType::Number => "a whole count",
            AnswerType::Text => "free text",
            AnswerType::Select => "one of the item's option values",
            AnswerType::ActionList => "a list of corrective actions",
        }
    }
}

impl fmt::Display for AnswerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Three-way answer: yes / partial / no. Ranked no < partial < yes for targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tri {
    Yes,
    Partial,
    No,
}

impl Tri {
    /// `"yes"`, `"partial"` or `"no"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tri::Yes => "yes",
            Tri::Partial => "partial",
            Tri::No => "no",
        }
    }

    /// Parses `"yes"`, `"partial"` or `"no"`.
    pub fn parse(s: &str) -> Option<Tri> {
        match s {
            "yes" => Some(Tri::Yes),
            "partial" => Some(Tri::Partial),
            "no" => Some(Tri::No),
            _ => None,
        }
    }

    fn rank(self) -> u8 {
        match self {
            Tri::No => 0,
            Tri::Partial => 1,
            Tri::Yes => 2,
        }
    }
}

/// Kind of evidence an item asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum EvidenceType {
    Photo,
    Document,
    Screenshot,
    Text,
    /// A kind declared in the template's top-level `evidence_types` map.
    Other(String),
}

impl EvidenceType {
    const BUILT_IN: [&'static str; 4] = ["photo", "document", "screenshot", "text"];
}

impl From<String> for EvidenceType {
    fn from(s: String) -> Self {
        match s.as_str() {
            "photo" => EvidenceType::Photo,
            "document" => EvidenceType::Document,
            "screenshot" => EvidenceType::Screenshot,
            "text" => EvidenceType::Text,
            _ => EvidenceType::Other(s),
        }
    }
}

impl From<EvidenceType> for String {
    fn from(e: EvidenceType) -> Self {
        match e {
            EvidenceType::Photo => "photo".into(),
            EvidenceType::Document => "document".into(),
            EvidenceType::Screenshot => "screenshot".into(),
            EvidenceType::Text => "text".into(),
            EvidenceType::Other(s) => s,
        }
    }
}

/// Comparison operator of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TargetOp {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "<")]
    Lt,
}

impl TargetOp {
    const ALL: [TargetOp; 6] = [
        TargetOp::Eq,
        TargetOp::Ne,
        TargetOp::Ge,
        TargetOp::Le,
        TargetOp::Gt,
        TargetOp::Lt,
    ];

    /// The symbol used in template JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetOp::Eq => "=",
            TargetOp::Ne => "!=",
            TargetOp::Ge => ">=",
            TargetOp::Le => "<=",
            TargetOp::Gt => ">",
            TargetOp::Lt => "<",
        }
    }

    /// Parses the JSON symbol.
    pub fn parse(s: &str) -> Option<TargetOp> {
        TargetOp::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Whether `answer <op> target` holds, given how the answer orders against the target.
    pub fn holds(self, answer_vs_target: Ordering) -> bool {
        match self {
            TargetOp::Eq => answer_vs_target == Ordering::Equal,
            TargetOp::Ne => answer_vs_target != Ordering::Equal,
            TargetOp::Ge => answer_vs_target != Ordering::Less,
            TargetOp::Le => answer_vs_target != Ordering::Greater,
            TargetOp::Gt => answer_vs_target == Ordering::Greater,
            TargetOp::Lt => answer_vs_target == Ordering::Less,
        }
    }
}

/// The value a target compares with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetValue {
    /// A percentage (0–100) or a count.
    Number(f64),
    /// yes / partial / no.
    Choice(Tri),
}

/// What an item's answer should reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub op: TargetOp,
    /// `None` when the target is set per unit rather than in the template (e.g. D2).
    pub value: Option<TargetValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Target keys this crate does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Format constraint on a field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FieldFormat {
    /// A calendar date written `dd/mm/yyyy` with leading zeros (Decree 30/2020/NĐ-CP).
    #[serde(rename = "dd/mm/yyyy")]
    DdMmYyyy,
}

impl FieldFormat {
    const ALL: [FieldFormat; 1] = [FieldFormat::DdMmYyyy];

    /// The name used in template JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldFormat::DdMmYyyy => "dd/mm/yyyy",
        }
    }
}

/// An extra field an item declares (e.g. `so_ky_hieu`, or a column of an action list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldSpec {
    pub key: String,
    pub label_vi: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_en: Option<String>,
    /// A regular expression (Rust `regex` syntax) the value must match; anchor it with
    /// `^…$` to constrain the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FieldFormat>,
    /// When non-empty, the value must be one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Field keys this crate does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One choice of a `select` item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectOption {
    pub value: String,
    pub label_vi: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_en: Option<String>,
    /// Option keys this crate does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An answer value, one variant per [`AnswerType`], plus "not applicable".
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerValue {
    YesNo(bool),
    YesNoPartial(Tri),
    Percentage {
        numerator: u64,
        denominator: u64,
    },
    Number(i64),
    Text(String),
    Select(String),
    /// entry id → field key → value.
    ActionList(BTreeMap<String, BTreeMap<String, String>>),
    /// The item does not apply to this unit; accepted for every item.
    NotApplicable,
}

impl AnswerValue {
    /// The answer type this value is for, or `None` for [`AnswerValue::NotApplicable`].
    pub fn answer_type(&self) -> Option<AnswerType> {
        Some(match self {
            AnswerValue::YesNo(_) => AnswerType::YesNo,
            AnswerValue::YesNoPartial(_) => AnswerType::YesNoPartial,
            AnswerValue::Percentage { .. } => AnswerType::Percentage,
            AnswerValue::Number(_) => AnswerType::Number,
            AnswerValue::Text(_) => AnswerType::Text,
            AnswerValue::Select(_) => AnswerType::Select,
            AnswerValue::ActionList(_) => AnswerType::ActionList,
            AnswerValue::NotApplicable => return None,
        })
    }
}

/// Result of checking an answer against its item's target.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// `None` when the item has no target (or no target value) or the answer is n/a.
    pub target_met: Option<bool>,
    /// The computed percentage (`100 * numerator / denominator`) for `percentage` items.
    pub percent: Option<f64>,
}

impl Assessment {
    const NONE: Assessment = Assessment {
        target_met: None,
        percent: None,
    };
}

/// Why a template could not be loaded or published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template JSON is not valid at line {line}, column {column}: {message}")]
    BadJson {
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "template is {bytes} bytes of JSON; the limit is {limit} bytes: split the checklist \
         into several templates"
    )]
    TooLarge { bytes: usize, limit: usize },
    #[error(
        "template has {count} items; the limit is {limit}: split the checklist into several \
         templates"
    )]
    TooManyItems { count: usize, limit: usize },
    #[error("{at} must be a JSON object")]
    NotAnObject { at: String },
    #[error("{at} is missing `{field}`: add it")]
    MissingField { at: String, field: String },
    #[error("{at}: `{field}` must be {expected}")]
    WrongFieldType {
        at: String,
        field: String,
        expected: &'static str,
    },
    #[error("template `version` must be a whole number from 1 to 4294967295, found {found}")]
    InvalidVersion { found: String },
    #[error("template has no sections: `sections` must list at least one section")]
    NoSections,
    #[error("section {section} has no items: add items or remove the section")]
    EmptySection { section: String },
    #[error("{at} has an empty id: give it a non-empty id")]
    EmptyId { at: String },
    #[error(
        "{at} has id \"{id}\", which {reason}: ids use only A-Z, a-z, 0-9, '_', '.', '-' and \
         are at most 64 characters"
    )]
    InvalidId {
        at: String,
        id: String,
        reason: String,
    },
    #[error("section id {id} is used twice: section ids must be unique")]
    DuplicateSectionId { id: String },
    #[error("item id {id} is used twice: item ids must be unique across the whole template")]
    DuplicateItemId { id: String },
    #[error("item {item}: unknown answer type \"{found}\"; accepted types: {accepted}")]
    UnknownAnswerType {
        item: String,
        found: String,
        accepted: String,
    },
    #[error("item {item} is a select item without options: add at least one option")]
    SelectWithoutOptions { item: String },
    #[error(
        "item {item} ({answer_type}) has `options`, which only select items take: remove them \
         or change the type to select"
    )]
    OptionsNotAllowed {
        item: String,
        answer_type: AnswerType,
    },
    #[error("item {item}: option value \"{value}\" appears twice: option values must be unique")]
    DuplicateOption { item: String, value: String },
    #[error("item {item} is an action list without `fields`: declare its columns")]
    ActionListWithoutFields { item: String },
    #[error("item {item}: field key {key} is declared twice: field keys must be unique")]
    DuplicateFieldKey { item: String, key: String },
    #[error("item {item}: field {field} has an invalid pattern `{pattern}`: {message}")]
    InvalidPattern {
        item: String,
        field: String,
        pattern: String,
        message: String,
    },
    #[error(
        "item {item}: field {field} has unknown format \"{found}\"; accepted formats: {accepted}"
    )]
    UnknownFieldFormat {
        item: String,
        field: String,
        found: String,
        accepted: String,
    },
    #[error("item {item}: field {field} lists option \"{value}\" twice: options must be unique")]
    DuplicateFieldOption {
        item: String,
        field: String,
        value: String,
    },
    #[error("item {item}: unknown target op \"{found}\"; accepted ops: =, !=, >=, <=, >, <")]
    UnknownTargetOp { item: String, found: String },
    #[error("item {item} ({answer_type}): target value {found} is not valid; expected {expected}")]
    TargetValueMismatch {
        item: String,
        answer_type: AnswerType,
        found: String,
        expected: &'static str,
    },
    #[error(
        "item {item} ({answer_type}) has a target, but {answer_type} answers cannot be compared: \
         set `target` to null"
    )]
    TargetNotSupported {
        item: String,
        answer_type: AnswerType,
    },
    #[error(
        "item {item}: unknown evidence type \"{found}\"; accepted: {accepted} (declare new kinds \
         in the top-level `evidence_types` map)"
    )]
    UnknownEvidenceType {
        item: String,
        found: String,
        accepted: String,
    },
    #[error(
        "item {item} asks for {min_photos} photo(s) but `evidence_types` does not include \
         \"photo\": add it or set `min_photos` to 0"
    )]
    MinPhotosWithoutPhotoEvidence { item: String, min_photos: u32 },
    #[error("item {item}: `min_photos` is {min_photos}; the limit is {limit}")]
    TooManyPhotos {
        item: String,
        min_photos: u32,
        limit: u32,
    },
    #[error("template declares item_count {declared} but has {actual} items: fix item_count")]
    ItemCountMismatch { declared: u64, actual: usize },
    #[error(
        "template {template_id}@{version} is already published with different content \
         (published sha256 {published_sha256}, offered {offered_sha256}); a published version \
         never changes: publish the change as version {next}",
        next = u64::from(*version) + 1
    )]
    VersionAlreadyPublished {
        template_id: String,
        version: u32,
        published_sha256: String,
        offered_sha256: String,
    },
}

/// Why an answer does not fit its item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("item {item} is not in this template: check the item id and the template version")]
    UnknownItem { item: String },
    #[error("item {item} ({expected}) expects {}, got a {found} value", expected.expected_value())]
    WrongValueType {
        item: String,
        expected: AnswerType,
        found: AnswerType,
    },
    #[error(
        "item {item} (percentage): denominator is 0; enter how many were due, or answer n/a if \
         none were"
    )]
    ZeroDenominator { item: String },
    #[error(
        "item {item} (percentage): numerator {numerator} is greater than denominator \
         {denominator}"
    )]
    NumeratorExceedsDenominator {
        item: String,
        numerator: u64,
        denominator: u64,
    },
    #[error("item {item} (number): {value} is negative; enter a count (0 or more)")]
    NegativeNumber { item: String, value: i64 },
    #[error("item {item}: {value} is larger than {limit}; check for a typing error")]
    NumberTooLarge {
        item: String,
        value: u64,
        limit: u64,
    },
    #[error("item {item} (text): the answer is empty; write the text or answer n/a")]
    EmptyText { item: String },
    #[error("item {item}: text is {chars} characters long; the limit is {limit}")]
    TextTooLong {
        item: String,
        chars: usize,
        limit: usize,
    },
    #[error("item {item} (select): \"{value}\" is not an option; accepted: {accepted}")]
    UnknownOption {
        item: String,
        value: String,
        accepted: String,
    },
    #[error("item {item} (action_list): {count} entries; the limit is {limit}")]
    TooManyEntries {
        item: String,
        count: usize,
        limit: usize,
    },
    #[error("item {item} (action_list): entry id \"{entry}\" {reason}")]
    InvalidEntryId {
        item: String,
        entry: String,
        reason: String,
    },
    /// A field value (item-level, or in an action-list entry) does not fit its spec.
    /// Boxed so the error stays small for every caller that passes it on.
    #[error(transparent)]
    Field(Box<FieldError>),
}

impl AnswerError {
    /// The field problem, when this is one.
    pub fn field(&self) -> Option<&FieldError> {
        match self {
            AnswerError::Field(f) => Some(f),
            _ => None,
        }
    }
}

/// A field value that does not fit its spec: where it is, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: field {field} {problem}", place(item, entry.as_deref()))]
pub struct FieldError {
    pub item: String,
    /// The action-list entry id, for fields inside an `action_list` answer.
    pub entry: Option<String>,
    pub field: String,
    pub problem: FieldProblem,
}

/// What is wrong with a field value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    #[error("is not declared by the item; declared fields: {accepted}")]
    Unknown { accepted: String },
    #[error("is required and is missing or empty")]
    Missing,
    #[error("is {chars} characters long; the limit is {limit}")]
    TooLong { chars: usize, limit: usize },
    #[error("value \"{value}\" does not match the pattern `{pattern}`")]
    PatternMismatch { value: String, pattern: String },
    /// Only reachable for a template built or edited in code: loading compiles every
    /// pattern. `message` quotes the pattern.
    #[error(
        "has a pattern that cannot be compiled; load the template with Template::from_json \
         to find the fault: {message}"
    )]
    BrokenPattern { message: String },
    #[error("value \"{value}\" is not a date in dd/mm/yyyy: {reason}")]
    InvalidDate { value: String, reason: DateError },
    #[error("value \"{value}\" is not an option; accepted: {accepted}")]
    NotAnOption { value: String, accepted: String },
}

fn field_error(
    item: &Item,
    entry: Option<&str>,
    field: &str,
    problem: FieldProblem,
) -> AnswerError {
    AnswerError::Field(Box::new(FieldError {
        item: item.id.clone(),
        entry: entry.map(str::to_owned),
        field: clip(field),
        problem,
    }))
}

/// "item G2, entry e1" or "item A1", for field error messages.
fn place(item: &str, entry: Option<&str>) -> String {
    match entry {
        Some(e) => format!("item {item}, entry {e}"),
        None => format!("item {item}"),
    }
}

/// Shortens a user-supplied string before quoting it in an error, so a hostile megabyte
/// value does not end up in logs.
fn clip(s: &str) -> String {
    if s.chars().count() <= QUOTE_MAX_CHARS {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(QUOTE_MAX_CHARS).collect();
        out.push('…');
        out
    }
}

fn quoted_list<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    values
        .into_iter()
        .map(|v| format!("\"{}\"", clip(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

impl TryFrom<Value> for Template {
    type Error = TemplateError;

    fn try_from(value: Value) -> Result<Self, Self::Error> {
        let canonical_json = canonical_json(&value);
        if canonical_json.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError::TooLarge {
                bytes: canonical_json.len(),
                limit: MAX_TEMPLATE_BYTES,
            });
        }
        let sha256 = hex::encode(Sha256::digest(canonical_json.as_bytes()));
        let Value::Object(mut top) = value else {
            return Err(TemplateError::NotAnObject {
                at: "the template".into(),
            });
        };
        let at = "template";
        let template_id = take_str(&mut top, at, "template_id")?;
        check_id(&template_id, "template")?;
        let version = match top.remove("version") {
            None | Some(Value::Null) => 1,
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if n >= 1 => n,
                _ => {
                    return Err(TemplateError::InvalidVersion {
                        found: clip(&v.to_string()),
                    });
                }
            },
        };
        let title_vi = take_str(&mut top, at, "title_vi")?;
        let title_en = take_opt_str(&mut top, at, "title_en")?;
        let locale = take_opt_str(&mut top, at, "locale")?;
        let sections = match top.remove("sections") {
            None | Some(Value::Null) => {
                return Err(TemplateError::MissingField {
                    at: at.into(),
                    field: "sections".into(),
                });
            }
            Some(Value::Array(a)) => a,
            Some(_) => return Err(wrong(at, "sections", "an array of sections")),
        };
        if sections.is_empty() {
            return Err(TemplateError::NoSections);
        }
        // Count before building anything, so an oversized template is refused cheaply.
        let count: usize = sections
            .iter()
            .map(|s| s.get("items").and_then(Value::as_array).map_or(0, Vec::len))
            .sum();
        if count > MAX_ITEMS {
            return Err(TemplateError::TooManyItems {
                count,
                limit: MAX_ITEMS,
            });
        }
        // Evidence kinds beyond the built-in four must be declared at the top level.
        let declared_evidence: BTreeSet<String> = top
            .get("evidence_types")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();

        let mut section_ids = BTreeSet::new();
        let mut item_ids = BTreeSet::new();
        let mut built = Vec::with_capacity(sections.len());
        for (n, section) in sections.into_iter().enumerate() {
            let s = load_section(section, n + 1, &declared_evidence)?;
            if !section_ids.insert(s.id.clone()) {
                return Err(TemplateError::DuplicateSectionId { id: s.id });
            }
            for item in &s.items {
                if !item_ids.insert(item.id.clone()) {
                    return Err(TemplateError::DuplicateItemId {
                        id: item.id.clone(),
                    });
                }
            }
            built.push(s);
        }
        if let Some(declared) = top.get("item_count") {
            let declared = declared
                .as_u64()
                .ok_or_else(|| wrong(at, "item_count", "a whole number"))?;
            if usize::try_from(declared).ok() != Some(count) {
                return Err(TemplateError::ItemCountMismatch {
                    declared,
                    actual: count,
                });
            }
        }
        Ok(Template {
            template_id,
            version,
            title_vi,
            title_en,
            locale,
            sections: built,
            extra: top,
            canonical_json,
            sha256,
        })
    }
}

fn wrong(at: &str, field: &str, expected: &'static str) -> TemplateError {
    TemplateError::WrongFieldType {
        at: at.into(),
        field: field.into(),
        expected,
    }
}

fn take_str(m: &mut Map<String, Value>, at: &str, key: &str) -> Result<String, TemplateError> {
    match m.remove(key) {
        None | Some(Value::Null) => Err(TemplateError::MissingField {
            at: at.into(),
            field: key.into(),
        }),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(wrong(at, key, "a string")),
    }
}

fn take_opt_str(
    m: &mut Map<String, Value>,
    at: &str,
    key: &str,
) -> Result<Option<String>, TemplateError> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(wrong(at, key, "a string")),
    }
}

fn take_bool(m: &mut Map<String, Value>, at: &str, key: &str) -> Result<bool, TemplateError> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(_) => Err(wrong(at, key, "true or false")),
    }
}

fn take_opt_u32(
    m: &mut Map<String, Value>,
    at: &str,
    key: &str,
) -> Result<Option<u32>, TemplateError> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| wrong(at, key, "a whole number from 0 to 4294967295")),
    }
}

fn take_array(
    m: &mut Map<String, Value>,
    at: &str,
    key: &str,
    expected: &'static str,
) -> Result<Vec<Value>, TemplateError> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(wrong(at, key, expected)),
    }
}

fn take_str_list(
    m: &mut Map<String, Value>,
    at: &str,
    key: &str,
) -> Result<Vec<String>, TemplateError> {
    take_array(m, at, key, "an array of strings")?
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(s),
            _ => Err(wrong(at, key, "an array of strings")),
        })
        .collect()
}

fn into_object(v: Value, at: impl FnOnce() -> String) -> Result<Map<String, Value>, TemplateError> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(TemplateError::NotAnObject { at: at() }),
    }
}

/// Why `id` is not a valid id, if it is not.
fn id_problem(id: &str) -> Option<String> {
    if id.chars().count() > MAX_ID_LEN {
        return Some(format!("is {} characters long", id.chars().count()));
    }
    id.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        .map(|c| format!("contains {c:?}"))
}

fn check_id(id: &str, at: &str) -> Result<(), TemplateError> {
    if id.is_empty() {
        return Err(TemplateError::EmptyId { at: at.into() });
    }
    match id_problem(id) {
        Some(reason) => Err(TemplateError::InvalidId {
            at: at.into(),
            id: clip(id),
            reason,
        }),
        None => Ok(()),
    }
}

fn load_section(
    v: Value,
    n: usize,
    declared_evidence: &BTreeSet<String>,
) -> Result<Section, TemplateError> {
    let mut m = into_object(v, || format!("section #{n}"))?;
    let at = format!("section #{n}");
    let id = take_str(&mut m, &at, "id")?;
    check_id(&id, &at)?;
    let at = format!("section {id}");
    let title_vi = take_str(&mut m, &at, "title_vi")?;
    let title_en = take_opt_str(&mut m, &at, "title_en")?;
    let items = match m.remove("items") {
        None | Some(Value::Null) => {
            return Err(TemplateError::MissingField {
                at,
                field: "items".into(),
            });
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(wrong(&at, "items", "an array of items")),
    };
    if items.is_empty() {
        return Err(TemplateError::EmptySection { section: id });
    }
    let items = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| load_item(item, &id, i + 1, declared_evidence))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Section {
        id,
        title_vi,
        title_en,
        items,
        extra: m,
    })
}

fn load_item(
    v: Value,
    section: &str,
    n: usize,
    declared_evidence: &BTreeSet<String>,
) -> Result<Item, TemplateError> {
    let at = format!("item #{n} of section {section}");
    let mut m = into_object(v, || at.clone())?;
    let id = take_str(&mut m, &at, "id")?;
    check_id(&id, &at)?;
    let at = format!("item {id}");
    let type_name = take_str(&mut m, &at, "type")?;
    let answer_type =
        AnswerType::parse(&type_name).ok_or_else(|| TemplateError::UnknownAnswerType {
            item: id.clone(),
            found: clip(&type_name),
            accepted: AnswerType::ALL.map(AnswerType::as_str).join(", "),
        })?;
    let text_vi = take_str(&mut m, &at, "text_vi")?;
    let text_en = take_opt_str(&mut m, &at, "text_en")?;
    let target = match m.remove("target") {
        None | Some(Value::Null) => None,
        Some(t) => Some(load_target(t, &id, answer_type)?),
    };
    let evidence_required = take_bool(&mut m, &at, "evidence_required")?;
    let evidence_types = take_str_list(&mut m, &at, "evidence_types")?
        .into_iter()
        .map(|e| {
            if EvidenceType::BUILT_IN.contains(&e.as_str()) || declared_evidence.contains(&e) {
                Ok(EvidenceType::from(e))
            } else {
                Err(TemplateError::UnknownEvidenceType {
                    item: id.clone(),
                    found: clip(&e),
                    accepted: EvidenceType::BUILT_IN
                        .iter()
                        .copied()
                        .chain(declared_evidence.iter().map(String::as_str))
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let min_photos = take_opt_u32(&mut m, &at, "min_photos")?.unwrap_or(0);
    if min_photos > MAX_MIN_PHOTOS {
        return Err(TemplateError::TooManyPhotos {
            item: id,
            min_photos,
            limit: MAX_MIN_PHOTOS,
        });
    }
    if min_photos > 0 && !evidence_types.contains(&EvidenceType::Photo) {
        return Err(TemplateError::MinPhotosWithoutPhotoEvidence {
            item: id,
            min_photos,
        });
    }
    let applies_to = take_str_list(&mut m, &at, "applies_to")?;
    let fields = take_array(&mut m, &at, "fields", "an array of field objects")?
        .into_iter()
        .enumerate()
        .map(|(i, f)| load_field(f, &id, i + 1))
        .collect::<Result<Vec<_>, _>>()?;
    let mut keys = BTreeSet::new();
    for f in &fields {
        if !keys.insert(f.key.as_str()) {
            return Err(TemplateError::DuplicateFieldKey {
                item: id,
                key: f.key.clone(),
            });
        }
    }
    if answer_type == AnswerType::ActionList && fields.is_empty() {
        return Err(TemplateError::ActionListWithoutFields { item: id });
    }
    let options = take_array(&mut m, &at, "options", "an array of option objects")?
        .into_iter()
        .enumerate()
        .map(|(i, o)| load_option(o, &id, i + 1))
        .collect::<Result<Vec<_>, _>>()?;
    match answer_type {
        AnswerType::Select if options.is_empty() => {
            return Err(TemplateError::SelectWithoutOptions { item: id });
        }
        AnswerType::Select => {}
        _ if !options.is_empty() => {
            return Err(TemplateError::OptionsNotAllowed {
                item: id,
                answer_type,
            });
        }
        _ => {}
    }
    let mut values = BTreeSet::new();
    for o in &options {
        if !values.insert(o.value.as_str()) {
            return Err(TemplateError::DuplicateOption {
                item: id,
                value: clip(&o.value),
            });
        }
    }
    let numerator_label_vi = take_opt_str(&mut m, &at, "numerator_label_vi")?;
    let denominator_label_vi = take_opt_str(&mut m, &at, "denominator_label_vi")?;
    let sample_size = take_opt_u32(&mut m, &at, "sample_size")?;
    let comment_required_if_nonzero = take_bool(&mut m, &at, "comment_required_if_nonzero")?;
    Ok(Item {
        id,
        text_vi,
        text_en,
        answer_type,
        target,
        evidence_required,
        evidence_types,
        min_photos,
        applies_to,
        fields,
        options,
        numerator_label_vi,
        denominator_label_vi,
        sample_size,
        comment_required_if_nonzero,
        extra: m,
    })
}

fn load_target(v: Value, item: &str, answer_type: AnswerType) -> Result<Target, TemplateError> {
    let at = format!("target of item {item}");
    let mut m = into_object(v, || at.clone())?;
    if matches!(
        answer_type,
        AnswerType::Text | AnswerType::Select | AnswerType::ActionList
    ) {
        return Err(TemplateError::TargetNotSupported {
            item: item.into(),
            answer_type,
        });
    }
    let op_name = take_str(&mut m, &at, "op")?;
    let op = TargetOp::parse(&op_name).ok_or_else(|| TemplateError::UnknownTargetOp {
        item: item.into(),
        found: clip(&op_name),
    })?;
    let mismatch = |found: &Value, expected: &'static str| TemplateError::TargetValueMismatch {
        item: item.into(),
        answer_type,
        found: clip(&found.to_string()),
        expected,
    };
    let value = match m.remove("value") {
        None | Some(Value::Null) => None,
        Some(v) => Some(match answer_type {
            AnswerType::YesNo => match v.as_str().and_then(Tri::parse) {
                Some(t @ (Tri::Yes | Tri::No)) => TargetValue::Choice(t),
                _ => return Err(mismatch(&v, "\"yes\" or \"no\"")),
            },
            AnswerType::YesNoPartial => match v.as_str().and_then(Tri::parse) {
                Some(t) => TargetValue::Choice(t),
                None => return Err(mismatch(&v, "\"yes\", \"partial\" or \"no\"")),
            },
            AnswerType::Percentage => match v.as_f64() {
                Some(x) if (0.0..=100.0).contains(&x) => TargetValue::Number(x),
                _ => return Err(mismatch(&v, "a number from 0 to 100")),
            },
            // Numbers are counts, so a target below zero can never be meant.
            _ => match v.as_f64() {
                Some(x) if x.is_finite() && x >= 0.0 && x <= MAX_COUNT as f64 => {
                    TargetValue::Number(x)
                }
                _ => return Err(mismatch(&v, "a count from 0 to 1000000000000")),
            },
        }),
    };
    let unit = take_opt_str(&mut m, &at, "unit")?;
    let source = take_opt_str(&mut m, &at, "source")?;
    Ok(Target {
        op,
        value,
        unit,
        source,
        extra: m,
    })
}

fn load_field(v: Value, item: &str, n: usize) -> Result<FieldSpec, TemplateError> {
    let at = format!("field #{n} of item {item}");
    let mut m = into_object(v, || at.clone())?;
    let key = take_str(&mut m, &at, "key")?;
    check_id(&key, &at)?;
    let label_vi = take_str(&mut m, &at, "label_vi")?;
    let label_en = take_opt_str(&mut m, &at, "label_en")?;
    let pattern = take_opt_str(&mut m, &at, "pattern")?;
    if let Some(p) = &pattern {
        compile_pattern(p).map_err(|e| TemplateError::InvalidPattern {
            item: item.into(),
            field: key.clone(),
            pattern: clip(p),
            message: e.to_string(),
        })?;
    }
    let format = match take_opt_str(&mut m, &at, "format")? {
        None => None,
        Some(f) => Some(
            FieldFormat::ALL
                .into_iter()
                .find(|k| k.as_str() == f)
                .ok_or_else(|| TemplateError::UnknownFieldFormat {
                    item: item.into(),
                    field: key.clone(),
                    found: clip(&f),
                    accepted: FieldFormat::ALL.map(FieldFormat::as_str).join(", "),
                })?,
        ),
    };
    let options = take_str_list(&mut m, &at, "options")?;
    let mut seen = BTreeSet::new();
    for o in &options {
        if !seen.insert(o.as_str()) {
            return Err(TemplateError::DuplicateFieldOption {
                item: item.into(),
                field: key,
                value: clip(o),
            });
        }
    }
    Ok(FieldSpec {
        key,
        label_vi,
        label_en,
        pattern,
        format,
        options,
        extra: m,
    })
}

fn load_option(v: Value, item: &str, n: usize) -> Result<SelectOption, TemplateError> {
    let at = format!("option #{n} of item {item}");
    let mut m = into_object(v, || at.clone())?;
    let value = take_str(&mut m, &at, "value")?;
    if value.is_empty() {
        return Err(TemplateError::EmptyId { at });
    }
    let label_vi = take_str(&mut m, &at, "label_vi")?;
    let label_en = take_opt_str(&mut m, &at, "label_en")?;
    Ok(SelectOption {
        value,
        label_vi,
        label_en,
        extra: m,
    })
}

fn compile_pattern(p: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(p)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
}

/// Serializes `v` with object keys sorted by code point and no insignificant whitespace.
/// This is the form the content hash is taken over; it does not depend on how the
/// `serde_json` map happens to be ordered in this build.
fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_json_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(k, out);
                out.push(':');
                write_canonical(x, out);
            }
            out.push('}');
        }
    }
}

/// JSON string escaping as `serde_json` does it: only `"`, `\` and control characters.
fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------

impl Template {
    /// Parses and validates a template. `version` is read from a top-level `"version"`
    /// (a whole number ≥ 1) and defaults to 1.
    pub fn from_json(json: &str) -> Result<Template, TemplateError> {
        // Refuse before parsing: the parsed tree is several times the text's size.
        if json.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError::TooLarge {
                bytes: json.len(),
                limit: MAX_TEMPLATE_BYTES,
            });
        }
        let value: Value = serde_json::from_str(json).map_err(|e| TemplateError::BadJson {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        Template::try_from(value)
    }

    /// `"<template_id>@<version>"`.
    pub fn key(&self) -> String {
        format!("{}@{}", self.template_id, self.version)
    }

    /// The item with this id.
    pub fn item(&self, id: &str) -> Option<&Item> {
        self.items().find(|i| i.id == id)
    }

    /// All items in checklist order.
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.sections.iter().flat_map(|s| s.items.iter())
    }

    /// Hex sha256 of [`Template::canonical_json`].
    pub fn content_sha256(&self) -> String {
        self.sha256.clone()
    }

    /// The JSON the template was loaded from, with object keys sorted and no whitespace.
    pub fn canonical_json(&self) -> &str {
        &self.canonical_json
    }

    /// Checks an answer and its extra fields against the item, and evaluates the target.
    ///
    /// `fields` holds the item-level extra fields (e.g. `so_ky_hieu` for A1); every key
    /// must be declared by the item, and none is required. [`AnswerValue::NotApplicable`]
    /// is accepted for every item and assesses to nothing.
    pub fn check_answer(
        &self,
        item_id: &str,
        value: &AnswerValue,
        fields: &BTreeMap<String, String>,
    ) -> Result<Assessment, AnswerError> {
        let item = self.item(item_id).ok_or_else(|| AnswerError::UnknownItem {
            item: clip(item_id),
        })?;
        let patterns = FieldPatterns::compile(item);
        check_fields(item, None, fields, &patterns)?;
        let id = || item.id.clone();
        let target = item.target.as_ref();
        match (item.answer_type, value) {
            (_, AnswerValue::NotApplicable) => Ok(Assessment::NONE),
            (AnswerType::YesNo, AnswerValue::YesNo(b)) => Ok(Assessment {
                target_met: choice_met(target, if *b { Tri::Yes } else { Tri::No }),
                percent: None,
            }),
            (AnswerType::YesNoPartial, AnswerValue::YesNoPartial(t)) => Ok(Assessment {
                target_met: choice_met(target, *t),
                percent: None,
            }),
            (
                AnswerType::Percentage,
                AnswerValue::Percentage {
                    numerator,
                    denominator,
                },
            ) => {
                let (n, d) = (*numerator, *denominator);
                if d == 0 {
                    return Err(AnswerError::ZeroDenominator { item: id() });
                }
                for part in [n, d] {
                    if part > MAX_COUNT {
                        return Err(AnswerError::NumberTooLarge {
                            item: id(),
                            value: part,
                            limit: MAX_COUNT,
                        });
                    }
                }
                if n > d {
                    return Err(AnswerError::NumeratorExceedsDenominator {
                        item: id(),
                        numerator: n,
                        denominator: d,
                    });
                }
                // Both parts are ≤ 10^12, so 100·n and value·d are exact in f64 for whole
                // targets, and "10/10 ≥ 100" never fails on rounding.
                let (nf, df) = (n as f64, d as f64);
                let target_met = number_target(target)
                    .and_then(|(op, v)| (100.0 * nf).partial_cmp(&(v * df)).map(|o| op.holds(o)));
                Ok(Assessment {
                    target_met,
                    percent: Some(100.0 * nf / df),
                })
            }
            (AnswerType::Number, AnswerValue::Number(x)) => {
                let count = u64::try_from(*x).map_err(|_| AnswerError::NegativeNumber {
                    item: id(),
                    value: *x,
                })?;
                if count > MAX_COUNT {
                    return Err(AnswerError::NumberTooLarge {
                        item: id(),
                        value: count,
                        limit: MAX_COUNT,
                    });
                }
                let target_met = number_target(target)
                    .and_then(|(op, v)| (count as f64).partial_cmp(&v).map(|o| op.holds(o)));
                Ok(Assessment {
                    target_met,
                    percent: None,
                })
            }
            (AnswerType::Text, AnswerValue::Text(s)) => {
                if s.trim().is_empty() {
                    return Err(AnswerError::EmptyText { item: id() });
                }
                let chars = s.chars().count();
                if chars > MAX_TEXT_CHARS {
                    return Err(AnswerError::TextTooLong {
                        item: id(),
                        chars,
                        limit: MAX_TEXT_CHARS,
                    });
                }
                Ok(Assessment::NONE)
            }
            (AnswerType::Select, AnswerValue::Select(v)) => {
                if item.options.iter().any(|o| &o.value == v) {
                    Ok(Assessment::NONE)
                } else {
                    Err(AnswerError::UnknownOption {
                        item: id(),
                        value: clip(v),
                        accepted: quoted_list(item.options.iter().map(|o| o.value.as_str())),
                    })
                }
            }
            (AnswerType::ActionList, AnswerValue::ActionList(entries)) => {
                check_action_list(item, entries, &patterns)?;
                Ok(Assessment::NONE)
            }
            (expected, other) => Err(AnswerError::WrongValueType {
                item: id(),
                expected,
                // NotApplicable matched above, so every remaining value has a type.
                found: other.answer_type().unwrap_or(expected),
            }),
        }
    }
}

/// The target of a yes/no or yes/partial/no item, evaluated on the rank no < partial < yes.
fn choice_met(target: Option<&Target>, answer: Tri) -> Option<bool> {
    let t = target?;
    match t.value {
        Some(TargetValue::Choice(want)) => Some(t.op.holds(answer.rank().cmp(&want.rank()))),
        _ => None,
    }
}

fn number_target(target: Option<&Target>) -> Option<(TargetOp, f64)> {
    let t = target?;
    match t.value {
        Some(TargetValue::Number(v)) => Some((t.op, v)),
        _ => None,
    }
}

/// The item's field patterns, compiled once per check rather than once per value.
struct FieldPatterns(Vec<Option<Result<regex::Regex, String>>>);

impl FieldPatterns {
    fn compile(item: &Item) -> FieldPatterns {
        FieldPatterns(
            item.fields
                .iter()
                .map(|f| {
                    f.pattern
                        .as_deref()
                        .map(|p| compile_pattern(p).map_err(|e| e.to_string()))
                })
                .collect(),
        )
    }
}

fn check_fields(
    item: &Item,
    entry: Option<&str>,
    values: &BTreeMap<String, String>,
    patterns: &FieldPatterns,
) -> Result<(), AnswerError> {
    for (key, value) in values {
        let fail = |problem| field_error(item, entry, key, problem);
        let Some((idx, spec)) = item.fields.iter().enumerate().find(|(_, f)| &f.key == key) else {
            let accepted = if item.fields.is_empty() {
                "none".into()
            } else {
                item.fields
                    .iter()
                    .map(|f| f.key.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(fail(FieldProblem::Unknown { accepted }));
        };
        let chars = value.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(fail(FieldProblem::TooLong {
                chars,
                limit: MAX_TEXT_CHARS,
            }));
        }
        if let (Some(pattern), Some(compiled)) =
            (&spec.pattern, patterns.0.get(idx).and_then(Option::as_ref))
        {
            match compiled {
                Ok(re) if re.is_match(value) => {}
                Ok(_) => {
                    return Err(fail(FieldProblem::PatternMismatch {
                        value: clip(value),
                        pattern: pattern.clone(),
                    }));
                }
                Err(message) => {
                    return Err(fail(FieldProblem::BrokenPattern {
                        message: message.clone(),
                    }));
                }
            }
        }
        if spec.format == Some(FieldFormat::DdMmYyyy) {
            parse_dd_mm_yyyy(value).map_err(|reason| {
                fail(FieldProblem::InvalidDate {
                    value: clip(value),
                    reason,
                })
            })?;
        }
        if !spec.options.is_empty() && !spec.options.iter().any(|o| o == value) {
            return Err(fail(FieldProblem::NotAnOption {
                value: clip(value),
                accepted: quoted_list(spec.options.iter().map(String::as_str)),
            }));
        }
    }
    Ok(())
}

fn check_action_list(
    item: &Item,
    entries: &BTreeMap<String, BTreeMap<String, String>>,
    patterns: &FieldPatterns,
) -> Result<(), AnswerError> {
    if entries.len() > MAX_ACTION_ENTRIES {
        return Err(AnswerError::TooManyEntries {
            item: item.id.clone(),
            count: entries.len(),
            limit: MAX_ACTION_ENTRIES,
        });
    }
    for (entry, values) in entries {
        let problem = if entry.is_empty() {
            Some("is empty".to_owned())
        } else {
            id_problem(entry)
        };
        if let Some(reason) = problem {
            return Err(AnswerError::InvalidEntryId {
                item: item.id.clone(),
                entry: clip(entry),
                reason: format!(
                    "{reason}: entry ids use only A-Z, a-z, 0-9, '_', '.', '-' and are at most \
                     {MAX_ID_LEN} characters"
                ),
            });
        }
        check_fields(item, Some(entry), values, patterns)?;
        for required in REQUIRED_ACTION_FIELDS {
            let declared = item.fields.iter().any(|f| f.key == required);
            let filled = values.get(required).is_some_and(|v| !v.trim().is_empty());
            if declared && !filled {
                return Err(field_error(
                    item,
                    Some(entry),
                    required,
                    FieldProblem::Missing,
                ));
            }
        }
    }
    Ok(())
}

/// Why a string is not a `dd/mm/yyyy` date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("write it as dd/mm/yyyy with leading zeros, e.g. 05/02/2025")]
    Shape,
    #[error("year {0} is outside 1900–2100")]
    YearOutOfRange(u16),
    #[error("month {0} does not exist")]
    NoSuchMonth(u16),
    #[error("day {day} does not exist in {month:02}/{year}, which has {days_in_month} days")]
    NoSuchDay {
        day: u16,
        month: u16,
        year: u16,
        days_in_month: u16,
    },
}

/// Parses a `dd/mm/yyyy` date (leading zeros required, as Decree 30/2020/NĐ-CP writes
/// them; years 1900–2100) into `(year, month, day)`.
pub fn parse_dd_mm_yyyy(s: &str) -> Result<(u16, u8, u8), DateError> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u16> {
        b.get(r)?.iter().try_fold(0u16, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u16::from(c - b'0'))
        })
    };
    if b.len() != 10 || b.get(2) != Some(&b'/') || b.get(5) != Some(&b'/') {
        return Err(DateError::Shape);
    }
    let (Some(day), Some(month), Some(year)) = (digits(0..2), digits(3..5), digits(6..10)) else {
        return Err(DateError::Shape);
    };
    if !(1900..=2100).contains(&year) {
        return Err(DateError::YearOutOfRange(year));
    }
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return Err(DateError::NoSuchMonth(month)),
    };
    if day == 0 || day > days_in_month {
        return Err(DateError::NoSuchDay {
            day,
            month,
            year,
            days_in_month,
        });
    }
    // Both fit in u8: day ≤ 31 and month ≤ 12 were just checked.
    Ok((year, month as u8, day as u8))
}

// ---------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------

/// Published templates, keyed by `(template_id, version)`. A published version never
/// changes: answers stored against it must keep their meaning.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TemplateRegistry {
    templates: BTreeMap<(String, u32), Template>,
}

impl TemplateRegistry {
    /// Publishes a template version. Republishing identical content is a no-op; different
    /// content under a published key is refused.
    pub fn publish(&mut self, t: Template) -> Result<(), TemplateError> {
        let key = (t.template_id.clone(), t.version);
        if let Some(existing) = self.templates.get(&key) {
            if existing.sha256 == t.sha256 {
                return Ok(());
            }
            return Err(TemplateError::VersionAlreadyPublished {
                template_id: t.template_id,
                version: t.version,
                published_sha256: existing.sha256.clone(),
                offered_sha256: t.sha256,
            });
        }
        self.templates.insert(key, t);
        Ok(())
    }

    /// A published version.
    pub fn get(&self, template_id: &str, version: u32) -> Option<&Template> {
        self.templates.get(&(template_id.to_owned(), version))
    }

    /// The highest published version of a template.
    pub fn latest(&self, template_id: &str) -> Option<&Template> {
        self.templates
            .range((template_id.to_owned(), 0)..=(template_id.to_owned(), u32::MAX))
            .next_back()
            .map(|(_, t)| t)
    }

    /// All published versions, ordered by template id then version.
    pub fn iter(&self) -> impl Iterator<Item = &Template> {
        self.templates.values()
    }
}
