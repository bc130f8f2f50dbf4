//! The `inspection` document: one per visit of a team to a unit.
//!
//! The secretariat writes the `header` and the `review`; the team writes
//! `answers`, `findings`, `photos` and `submissions`. Every collection is a map
//! keyed by id, so concurrent additions never collide, and an answer is a fresh
//! map per edit, so two inspectors answering the same item concurrently leave
//! two values side by side (see [`conflicts`](super::conflicts())).

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};

use super::causal::{self, CausalDoc, Seen};
use super::format::{MAX_FINDINGS, MAX_MAP_ENTRIES, MAX_PHOTOS, MAX_TEXT_CHARS, MAX_TITLE_CHARS};
use super::read::{Need, Walk, as_str, join};
use super::write::{
    check_date, check_id, check_sha256, expect_absent, get_map, put_kind, put_opt_str, put_set,
    put_ts, section,
};
use super::{DocKind, ModelError, expect_empty, expect_kind, finish};
use crate::template::{AnswerType, AnswerValue, Template, TemplateRegistry, Tri};

/// Top-level keys of an inspection.
pub const ROOT_KEYS: &[&str] = &[
    "kind",
    "schema",
    "header",
    "answers",
    "findings",
    "photos",
    "submissions",
    "review",
];

const HEADER_KEYS: &[&str] = &[
    "unit_code",
    "unit_name",
    "template_id",
    "template_version",
    "team_id",
    "members",
    "scheduled_date",
    "created_at",
];
const ANSWER_KEYS: &[&str] = &["value", "fields", "evidence", "note", "by", "at", "cleared"];
/// The keys of a cleared answer (see [`clear_answer`]).
const CLEARED_ANSWER_KEYS: &[&str] = &["cleared", "by", "at"];
const FINDING_KEYS: &[&str] = &[
    "item_id", "title", "note", "severity", "photos", "by", "at", "deleted",
];
const PHOTO_KEYS: &[&str] = &[
    "mime",
    "bytes",
    "width",
    "height",
    "taken_at",
    "item_id",
    "finding_id",
    "caption",
    "by",
    "at",
    "deleted",
];
const SUBMISSION_KEYS: &[&str] = &["by", "at", "note"];
const REVIEW_KEYS: &[&str] = &["decisions", "comments"];
const DECISION_KEYS: &[&str] = &["state", "by", "at", "note"];
const COMMENT_KEYS: &[&str] = &["target", "text", "by", "at", "deleted"];

/// The stored string meaning "not applicable", valid for every item.
pub const NOT_APPLICABLE: &str = "n/a";

/// The value `header.members.<user id>` holds once that user was removed
/// from the team: entries are tombstoned, never deleted.
pub const MEMBER_REMOVED: &str = "removed";

/// A team member's role in one inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberRole {
    Lead,
    Member,
}

impl MemberRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Lead => "lead",
            MemberRole::Member => "member",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "lead" => Some(MemberRole::Lead),
            "member" => Some(MemberRole::Member),
            _ => None,
        }
    }
}

/// `header`: what is inspected, against which template, by whom, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectionHeader {
    /// GSO code of a ward/commune or `SO-xx` of a department.
    pub unit_code: String,
    pub unit_name: String,
    pub template_id: String,
    pub template_version: u32,
    pub team_id: String,
    /// user id → role in this inspection.
    pub members: BTreeMap<String, MemberRole>,
    /// `YYYY-MM-DD`.
    pub scheduled_date: String,
    /// UTC milliseconds.
    pub created_at: i64,
}

/// `answers.<item_id>`: one answer, replaced as a whole on each edit.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub value: AnswerValue,
    /// Extra fields the item declares (e.g. `so_ky_hieu`).
    pub fields: BTreeMap<String, String>,
    /// sha256 of the photos/documents supporting the answer.
    pub evidence: BTreeSet<String>,
    pub note: Option<String>,
    pub by: String,
    pub at: i64,
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub const NAMES: &'static [&'static str] = &["low", "medium", "high"];
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            _ => None,
        }
    }
}

/// `findings.<finding_id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The checklist item this finding is about, if any.
    pub item_id: Option<String>,
    pub title: String,
    /// Stored as automerge `Text` so several people can edit it at once.
    pub note: String,
    pub severity: Severity,
    /// sha256 of the photos attached to the finding.
    pub photos: BTreeSet<String>,
    pub by: String,
    /// Creation time, UTC milliseconds.
    pub at: i64,
    /// Tombstone: a deleted finding stays in the document so a concurrent edit
    /// of it is not lost, and can be restored.
    pub deleted: bool,
}

/// Image formats a photo may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PhotoMime {
    Jpeg,
    Png,
    Webp,
}

impl PhotoMime {
    pub const NAMES: &'static [&'static str] = &["image/jpeg", "image/png", "image/webp"];
    pub fn as_str(self) -> &'static str {
        match self {
            PhotoMime::Jpeg => "image/jpeg",
            PhotoMime::Png => "image/png",
            PhotoMime::Webp => "image/webp",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "image/jpeg" => Some(PhotoMime::Jpeg),
            "image/png" => Some(PhotoMime::Png),
            "image/webp" => Some(PhotoMime::Webp),
            _ => None,
        }
    }
}

/// `photos.<sha256>`: metadata of a photo whose bytes live in the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhotoRef {
    /// The key of the entry.
    pub sha256: String,
    pub mime: PhotoMime,
    pub bytes: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub taken_at: Option<i64>,
    pub item_id: Option<String>,
    pub finding_id: Option<String>,
    pub caption: Option<String>,
    pub by: String,
    pub at: i64,
    /// Tombstone: a deleted photo stays in the document (a concurrent edit of
    /// it is not lost) and can be restored.
    pub deleted: bool,
}

/// `submissions.<submission_id>`: the team hands the inspection in.
/// Append-only: never changed, never tombstoned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub by: String,
    pub at: i64,
    pub note: Option<String>,
}

/// What the secretariat decided about a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReviewState {
    Accepted,
    Returned,
}

impl ReviewState {
    pub const NAMES: &'static [&'static str] = &["accepted", "returned"];
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewState::Accepted => "accepted",
            ReviewState::Returned => "returned",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "accepted" => Some(ReviewState::Accepted),
            "returned" => Some(ReviewState::Returned),
            _ => None,
        }
    }
}

/// `review.decisions.<decision_id>`. Append-only: never changed, never
/// tombstoned. It decides the submissions its change had seen (see
/// [`Inspection::seen`]); `at` is for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewDecision {
    pub state: ReviewState,
    pub by: String,
    pub at: i64,
    pub note: Option<String>,
}

/// What a review comment is about. Stored as `"item:<id>"`, `"finding:<id>"` or `"general"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommentTarget {
    Item(String),
    Finding(String),
    General,
}

impl CommentTarget {
    /// The stored spelling.
    pub fn encode(&self) -> String {
        match self {
            CommentTarget::Item(id) => format!("item:{id}"),
            CommentTarget::Finding(id) => format!("finding:{id}"),
            CommentTarget::General => "general".to_owned(),
        }
    }

    /// Parses the stored spelling; the id must be an id.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "general" {
            return Some(CommentTarget::General);
        }
        let (tag, id) = s.split_once(':')?;
        if !super::format::is_id(id) {
            return None;
        }
        match tag {
            "item" => Some(CommentTarget::Item(id.to_owned())),
            "finding" => Some(CommentTarget::Finding(id.to_owned())),
            _ => None,
        }
    }
}

/// `review.comments.<comment_id>`: reaches the tablets when an inspection is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewComment {
    pub target: CommentTarget,
    pub text: String,
    pub by: String,
    pub at: i64,
    /// Tombstone: a deleted comment stays in the document.
    pub deleted: bool,
}

/// Where an inspection stands. Derived, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InspectionStatus {
    /// Nothing answered, found or photographed yet.
    Scheduled,
    /// Work recorded, not submitted.
    InProgress,
    /// Some submission has not been seen by any decision.
    Submitted,
    /// Every submission is decided and the causally latest decision (any of
    /// them, if several were made concurrently) returned it for more work.
    Returned,
    /// Every submission is decided and the causally latest decision(s)
    /// accepted it.
    Accepted,
}

impl InspectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InspectionStatus::Scheduled => "scheduled",
            InspectionStatus::InProgress => "in_progress",
            InspectionStatus::Submitted => "submitted",
            InspectionStatus::Returned => "returned",
            InspectionStatus::Accepted => "accepted",
        }
    }
}

/// A whole inspection as its readers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    pub header: InspectionHeader,
    /// item id → answer (the winner where answers conflict). Cleared answers
    /// are not here: a cleared answer is no answer.
    pub answers: BTreeMap<String, Answer>,
    /// finding id → finding, tombstoned ones included.
    pub findings: BTreeMap<String, Finding>,
    /// sha256 → photo, tombstoned ones included.
    pub photos: BTreeMap<String, PhotoRef>,
    pub submissions: BTreeMap<String, Submission>,
    pub decisions: BTreeMap<String, ReviewDecision>,
    /// comment id → comment, tombstoned ones included.
    pub comments: BTreeMap<String, ReviewComment>,
    /// What each decision had seen when it was made: `seen.claims[d]` are
    /// the submissions decision `d` decides, `seen.verdicts[d]` the
    /// decisions it supersedes. Read from the document's history.
    pub seen: Seen,
}

impl Inspection {
    /// Findings that are not deleted.
    pub fn live_findings(&self) -> impl Iterator<Item = (&String, &Finding)> {
        self.findings.iter().filter(|(_, f)| !f.deleted)
    }

    /// Photos that are not deleted.
    pub fn live_photos(&self) -> impl Iterator<Item = (&String, &PhotoRef)> {
        self.photos.iter().filter(|(_, p)| !p.deleted)
    }

    /// Review comments that are not deleted.
    pub fn live_comments(&self) -> impl Iterator<Item = (&String, &ReviewComment)> {
        self.comments.iter().filter(|(_, c)| !c.deleted)
    }

    /// Submissions no decision has seen yet: what awaits review.
    pub fn pending_submissions(&self) -> impl Iterator<Item = (&String, &Submission)> {
        self.submissions
            .iter()
            .filter(|(id, _)| !self.seen.is_seen(id))
    }

    /// The causally latest decision: among the decisions no other decision
    /// has seen, a `returned` one before an `accepted` one (the rule of
    /// [`status`](Self::status)), then the later `at`, then the greater id.
    /// `at` only orders decisions made concurrently, for display.
    pub fn latest_decision(&self) -> Option<(&String, &ReviewDecision)> {
        let latest = self.seen.latest();
        self.decisions
            .iter()
            .filter(|(id, _)| latest.contains(id.as_str()))
            .max_by(|(ia, a), (ib, b)| {
                (a.state == ReviewState::Returned, a.at, ia).cmp(&(
                    b.state == ReviewState::Returned,
                    b.at,
                    ib,
                ))
            })
    }

    /// The derived status, from the document's history alone (`at` plays no
    /// part): `submitted` while some submission is seen by no decision;
    /// otherwise, if there are decisions, the state of the causally latest
    /// one, where concurrent decisions that disagree leave it `returned` (a
    /// reviewer's objection is never silently overruled); otherwise
    /// `scheduled` or `in_progress`.
    pub fn status(&self) -> InspectionStatus {
        if self.pending_submissions().next().is_some() {
            return InspectionStatus::Submitted;
        }
        match self.latest_decision() {
            Some((_, d)) => match d.state {
                ReviewState::Accepted => InspectionStatus::Accepted,
                ReviewState::Returned => InspectionStatus::Returned,
            },
            None => {
                if self.answers.is_empty()
                    && self.live_findings().next().is_none()
                    && self.live_photos().next().is_none()
                {
                    InspectionStatus::Scheduled
                } else {
                    InspectionStatus::InProgress
                }
            }
        }
    }
}

// ----------------------------------------------------------------- writers

/// Creates an inspection in an empty document: `kind`, `schema`, the header
/// and every (empty) section, so later writers never have to create one.
pub fn init_inspection(
    tx: &mut impl Transactable,
    header: &InspectionHeader,
) -> Result<(), ModelError> {
    expect_empty(&*tx)?;
    check_id("unit code", &header.unit_code)?;
    check_id("template id", &header.template_id)?;
    check_id("team id", &header.team_id)?;
    check_date("scheduled date", &header.scheduled_date)?;
    for user in header.members.keys() {
        check_id("member user id", user)?;
    }
    put_kind(tx, DocKind::Inspection)?;
    let h = tx.put_object(ROOT, "header", ObjType::Map)?;
    tx.put(&h, "unit_code", header.unit_code.as_str())?;
    tx.put(&h, "unit_name", header.unit_name.as_str())?;
    tx.put(&h, "template_id", header.template_id.as_str())?;
    tx.put(
        &h,
        "template_version",
        ScalarValue::Uint(u64::from(header.template_version)),
    )?;
    tx.put(&h, "team_id", header.team_id.as_str())?;
    let m = tx.put_object(&h, "members", ObjType::Map)?;
    for (user, role) in &header.members {
        tx.put(&m, user.as_str(), role.as_str())?;
    }
    tx.put(&h, "scheduled_date", header.scheduled_date.as_str())?;
    put_ts(tx, &h, "created_at", header.created_at)?;
    for key in ["answers", "findings", "photos", "submissions"] {
        tx.put_object(ROOT, key, ObjType::Map)?;
    }
    let r = tx.put_object(ROOT, "review", ObjType::Map)?;
    tx.put_object(&r, "decisions", ObjType::Map)?;
    tx.put_object(&r, "comments", ObjType::Map)?;
    Ok(())
}

/// Moves the visit to another day (secretariat).
pub fn set_scheduled_date(tx: &mut impl Transactable, date: &str) -> Result<(), ModelError> {
    check_date("scheduled date", date)?;
    let h = section(&*tx, "header")?;
    tx.put(&h, "scheduled_date", date)?;
    Ok(())
}

/// Adds, changes (`Some`) or removes (`None`) a team member (secretariat).
/// Removing writes [`MEMBER_REMOVED`]: entries are tombstoned, never deleted.
pub fn set_member(
    tx: &mut impl Transactable,
    user_id: &str,
    role: Option<MemberRole>,
) -> Result<(), ModelError> {
    check_id("member user id", user_id)?;
    let h = section(&*tx, "header")?;
    let m = get_map(&*tx, &h, "members", "header/members")?;
    match role {
        Some(role) => tx.put(&m, user_id, role.as_str())?,
        None => tx.put(&m, user_id, MEMBER_REMOVED)?,
    }
    Ok(())
}

fn put_answer_value(
    tx: &mut impl Transactable,
    obj: &ObjId,
    value: &AnswerValue,
) -> Result<(), ModelError> {
    match value {
        AnswerValue::YesNo(b) => tx.put(obj, "value", if *b { "yes" } else { "no" })?,
        AnswerValue::YesNoPartial(t) => tx.put(obj, "value", tri_str(*t))?,
        AnswerValue::Percentage {
            numerator,
            denominator,
        } => {
            let m = tx.put_object(obj, "value", ObjType::Map)?;
            tx.put(&m, "numerator", ScalarValue::Uint(*numerator))?;
            tx.put(&m, "denominator", ScalarValue::Uint(*denominator))?;
        }
        AnswerValue::Number(n) => tx.put(obj, "value", ScalarValue::Int(*n))?,
        AnswerValue::Text(s) | AnswerValue::Select(s) => {
            // "n/a" is reserved for NotApplicable; storing it as text would
            // read back as "not applicable".
            if s == NOT_APPLICABLE {
                return Err(ModelError::InvalidArgument(
                    "an answer text or choice cannot be exactly \"n/a\"; use AnswerValue::NotApplicable".into(),
                ));
            }
            tx.put(obj, "value", s.as_str())?;
        }
        AnswerValue::ActionList(entries) => {
            let m = tx.put_object(obj, "value", ObjType::Map)?;
            for (entry_id, fields) in entries {
                check_id("action list entry id", entry_id)?;
                let e = tx.put_object(&m, entry_id.as_str(), ObjType::Map)?;
                for (k, v) in fields {
                    check_id("action list field key", k)?;
                    tx.put(&e, k.as_str(), v.as_str())?;
                }
            }
        }
        AnswerValue::NotApplicable => tx.put(obj, "value", NOT_APPLICABLE)?,
    }
    Ok(())
}

fn tri_str(t: Tri) -> &'static str {
    match t {
        Tri::Yes => "yes",
        Tri::Partial => "partial",
        Tri::No => "no",
    }
}

/// Answers an item: writes a fresh map at `answers.<item_id>`.
///
/// A fresh map per edit (rather than editing fields in place) is what makes a
/// concurrent answer a visible conflict instead of a silent field-by-field mix
/// of two people's answers. Writing over every value present also settles a
/// conflict (see [`settle_answer`](super::settle_answer)).
pub fn set_answer(
    tx: &mut impl Transactable,
    item_id: &str,
    answer: &Answer,
) -> Result<(), ModelError> {
    check_id("item id", item_id)?;
    check_id("user id", &answer.by)?;
    for k in answer.fields.keys() {
        check_id("answer field key", k)?;
    }
    let answers = section(&*tx, "answers")?;
    let a = tx.put_object(&answers, item_id, ObjType::Map)?;
    put_answer_value(tx, &a, &answer.value)?;
    if !answer.fields.is_empty() {
        let f = tx.put_object(&a, "fields", ObjType::Map)?;
        for (k, v) in &answer.fields {
            tx.put(&f, k.as_str(), v.as_str())?;
        }
    }
    if !answer.evidence.is_empty() {
        put_set(tx, &a, "evidence", &answer.evidence)?;
    }
    put_opt_str(tx, &a, "note", answer.note.as_deref())?;
    tx.put(&a, "by", answer.by.as_str())?;
    put_ts(tx, &a, "at", answer.at)?;
    Ok(())
}

/// Clears the answer to an item: writes a fresh map `{cleared: true, by,
/// at}` at `answers.<item_id>`, superseding every value this replica holds
/// there. Readers treat a cleared answer as no answer; the key is never
/// deleted, so a concurrent answer shows up as a conflict instead of being
/// silently dropped or silently kept.
pub fn clear_answer(
    tx: &mut impl Transactable,
    item_id: &str,
    by: &str,
    at: i64,
) -> Result<(), ModelError> {
    check_id("item id", item_id)?;
    check_id("user id", by)?;
    let answers = section(&*tx, "answers")?;
    let a = tx.put_object(&answers, item_id, ObjType::Map)?;
    tx.put(&a, "cleared", true)?;
    tx.put(&a, "by", by)?;
    put_ts(tx, &a, "at", at)?;
    Ok(())
}

/// Adds a finding under a fresh id.
pub fn add_finding(
    tx: &mut impl Transactable,
    finding_id: &str,
    finding: &Finding,
) -> Result<(), ModelError> {
    check_id("finding id", finding_id)?;
    check_id("user id", &finding.by)?;
    if let Some(item) = &finding.item_id {
        check_id("item id", item)?;
    }
    let findings = section(&*tx, "findings")?;
    expect_absent(&*tx, &findings, finding_id, &join("findings", finding_id))?;
    let f = tx.put_object(&findings, finding_id, ObjType::Map)?;
    put_opt_str(tx, &f, "item_id", finding.item_id.as_deref())?;
    tx.put(&f, "title", finding.title.as_str())?;
    let note = tx.put_object(&f, "note", ObjType::Text)?;
    if !finding.note.is_empty() {
        tx.splice_text(&note, 0, 0, &finding.note)?;
    }
    tx.put(&f, "severity", finding.severity.as_str())?;
    put_set(tx, &f, "photos", &finding.photos)?;
    tx.put(&f, "by", finding.by.as_str())?;
    put_ts(tx, &f, "at", finding.at)?;
    if finding.deleted {
        tx.put(&f, "deleted", true)?;
    }
    Ok(())
}

fn finding_obj(tx: &impl ReadDoc, finding_id: &str) -> Result<ObjId, ModelError> {
    let findings = section(tx, "findings")?;
    get_map(tx, &findings, finding_id, &join("findings", finding_id))
}

/// Retitles a finding.
pub fn update_finding_title(
    tx: &mut impl Transactable,
    finding_id: &str,
    title: &str,
) -> Result<(), ModelError> {
    let f = finding_obj(&*tx, finding_id)?;
    tx.put(&f, "title", title)?;
    Ok(())
}

/// Changes a finding's severity.
pub fn update_finding_severity(
    tx: &mut impl Transactable,
    finding_id: &str,
    severity: Severity,
) -> Result<(), ModelError> {
    let f = finding_obj(&*tx, finding_id)?;
    tx.put(&f, "severity", severity.as_str())?;
    Ok(())
}

/// Links a finding to a checklist item (`Some`) or unlinks it (`None`,
/// stored as `null`: keys are never deleted).
pub fn update_finding_item(
    tx: &mut impl Transactable,
    finding_id: &str,
    item_id: Option<&str>,
) -> Result<(), ModelError> {
    let f = finding_obj(&*tx, finding_id)?;
    match item_id {
        Some(item) => {
            check_id("item id", item)?;
            tx.put(&f, "item_id", item)?;
        }
        None => tx.put(&f, "item_id", ScalarValue::Null)?,
    }
    Ok(())
}

/// Edits a finding's note in place: deletes `del` characters at `pos` and
/// inserts `text` there. Positions count in the document's text encoding
/// (Unicode code points for documents made by this crate). Concurrent splices
/// by several people merge character by character.
pub fn splice_finding_note(
    tx: &mut impl Transactable,
    finding_id: &str,
    pos: usize,
    del: usize,
    text: &str,
) -> Result<(), ModelError> {
    let f = finding_obj(&*tx, finding_id)?;
    let note = match tx.get(&f, "note")? {
        Some((Value::Object(ObjType::Text), id)) => id,
        _ => {
            return Err(ModelError::NotFound {
                path: format!("findings/{finding_id}/note"),
            });
        }
    };
    let len = tx.length(&note);
    if pos > len || del > len - pos {
        return Err(ModelError::InvalidArgument(format!(
            "splice at {pos} deleting {del} does not fit a note of length {len}"
        )));
    }
    let del = isize::try_from(del)
        .map_err(|_| ModelError::InvalidArgument(format!("cannot delete {del} characters")))?;
    tx.splice_text(&note, pos, del, text)?;
    Ok(())
}

/// Attaches a photo to a finding.
pub fn add_finding_photo(
    tx: &mut impl Transactable,
    finding_id: &str,
    sha256: &str,
) -> Result<(), ModelError> {
    check_sha256("photo", sha256)?;
    let f = finding_obj(&*tx, finding_id)?;
    let photos = get_map(&*tx, &f, "photos", &format!("findings/{finding_id}/photos"))?;
    tx.put(&photos, sha256, true)?;
    Ok(())
}

/// Detaches a photo from a finding: writes `false` at its key (keys are
/// never deleted; `false` means "not attached").
pub fn remove_finding_photo(
    tx: &mut impl Transactable,
    finding_id: &str,
    sha256: &str,
) -> Result<(), ModelError> {
    check_sha256("photo", sha256)?;
    let f = finding_obj(&*tx, finding_id)?;
    let photos = get_map(&*tx, &f, "photos", &format!("findings/{finding_id}/photos"))?;
    tx.put(&photos, sha256, false)?;
    Ok(())
}

/// Tombstones a finding (it stays, marked `deleted`).
pub fn delete_finding(tx: &mut impl Transactable, finding_id: &str) -> Result<(), ModelError> {
    let f = finding_obj(&*tx, finding_id)?;
    tx.put(&f, "deleted", true)?;
    Ok(())
}

/// Brings a tombstoned finding back (writes `deleted: false`).
pub fn restore_finding(tx: &mut impl Transactable, finding_id: &str) -> Result<(), ModelError> {
    let f = finding_obj(&*tx, finding_id)?;
    tx.put(&f, "deleted", false)?;
    Ok(())
}

/// Records a photo's metadata at `photos.<sha256>` (a fresh map).
///
/// A photo is identified by its content, so adding a sha256 that is already
/// recorded never replaces the existing entry (that would drop whatever was
/// written into it concurrently): if the entry is live this is a no-op, if
/// it is tombstoned it is restored; either way the first metadata stays and
/// `Ok` is returned. (A key holding something other than a map, which
/// validation refuses, fails with `AlreadyExists`.)
pub fn add_photo(tx: &mut impl Transactable, photo: &PhotoRef) -> Result<(), ModelError> {
    check_sha256("photo", &photo.sha256)?;
    check_id("user id", &photo.by)?;
    let photos = section(&*tx, "photos")?;
    if let Some((value, existing)) = tx.get(&photos, photo.sha256.as_str())? {
        if matches!(value, Value::Object(ObjType::Map)) {
            if let Some((Value::Scalar(s), _)) = tx.get(&existing, "deleted")?
                && matches!(s.as_ref(), ScalarValue::Boolean(true))
            {
                tx.put(&existing, "deleted", false)?;
            }
            return Ok(());
        }
        return Err(ModelError::AlreadyExists {
            path: join("photos", &photo.sha256),
        });
    }
    let p = tx.put_object(&photos, photo.sha256.as_str(), ObjType::Map)?;
    tx.put(&p, "mime", photo.mime.as_str())?;
    tx.put(&p, "bytes", ScalarValue::Uint(photo.bytes))?;
    if let Some(w) = photo.width {
        tx.put(&p, "width", ScalarValue::Uint(u64::from(w)))?;
    }
    if let Some(h) = photo.height {
        tx.put(&p, "height", ScalarValue::Uint(u64::from(h)))?;
    }
    if let Some(t) = photo.taken_at {
        put_ts(tx, &p, "taken_at", t)?;
    }
    put_opt_str(tx, &p, "item_id", photo.item_id.as_deref())?;
    put_opt_str(tx, &p, "finding_id", photo.finding_id.as_deref())?;
    put_opt_str(tx, &p, "caption", photo.caption.as_deref())?;
    tx.put(&p, "by", photo.by.as_str())?;
    put_ts(tx, &p, "at", photo.at)?;
    if photo.deleted {
        tx.put(&p, "deleted", true)?;
    }
    Ok(())
}

fn photo_obj(tx: &impl ReadDoc, sha256: &str) -> Result<ObjId, ModelError> {
    let photos = section(tx, "photos")?;
    get_map(tx, &photos, sha256, &join("photos", sha256))
}

/// Tombstones a photo (it stays, marked `deleted`).
pub fn delete_photo(tx: &mut impl Transactable, sha256: &str) -> Result<(), ModelError> {
    let p = photo_obj(&*tx, sha256)?;
    tx.put(&p, "deleted", true)?;
    Ok(())
}

/// Brings a tombstoned photo back (writes `deleted: false`).
pub fn restore_photo(tx: &mut impl Transactable, sha256: &str) -> Result<(), ModelError> {
    let p = photo_obj(&*tx, sha256)?;
    tx.put(&p, "deleted", false)?;
    Ok(())
}

/// Hands the inspection in (team).
pub fn submit(
    tx: &mut impl Transactable,
    submission_id: &str,
    by: &str,
    at: i64,
    note: Option<&str>,
) -> Result<(), ModelError> {
    check_id("submission id", submission_id)?;
    check_id("user id", by)?;
    let subs = section(&*tx, "submissions")?;
    expect_absent(
        &*tx,
        &subs,
        submission_id,
        &join("submissions", submission_id),
    )?;
    let s = tx.put_object(&subs, submission_id, ObjType::Map)?;
    tx.put(&s, "by", by)?;
    put_ts(tx, &s, "at", at)?;
    put_opt_str(tx, &s, "note", note)?;
    Ok(())
}

fn review_map(tx: &impl ReadDoc, key: &str) -> Result<ObjId, ModelError> {
    let r = section(tx, "review")?;
    get_map(tx, &r, key, &join("review", key))
}

/// Accepts or returns the inspection (secretariat).
pub fn review_decide(
    tx: &mut impl Transactable,
    decision_id: &str,
    state: ReviewState,
    by: &str,
    at: i64,
    note: Option<&str>,
) -> Result<(), ModelError> {
    check_id("decision id", decision_id)?;
    check_id("user id", by)?;
    let decisions = review_map(&*tx, "decisions")?;
    expect_absent(
        &*tx,
        &decisions,
        decision_id,
        &format!("review/decisions/{decision_id}"),
    )?;
    let d = tx.put_object(&decisions, decision_id, ObjType::Map)?;
    tx.put(&d, "state", state.as_str())?;
    tx.put(&d, "by", by)?;
    put_ts(tx, &d, "at", at)?;
    put_opt_str(tx, &d, "note", note)?;
    Ok(())
}

/// Comments on an item, a finding or the whole inspection (secretariat).
pub fn review_comment(
    tx: &mut impl Transactable,
    comment_id: &str,
    target: &CommentTarget,
    text: &str,
    by: &str,
    at: i64,
) -> Result<(), ModelError> {
    check_id("comment id", comment_id)?;
    check_id("user id", by)?;
    if let CommentTarget::Item(id) | CommentTarget::Finding(id) = target {
        check_id("comment target id", id)?;
    }
    let comments = review_map(&*tx, "comments")?;
    expect_absent(
        &*tx,
        &comments,
        comment_id,
        &format!("review/comments/{comment_id}"),
    )?;
    let c = tx.put_object(&comments, comment_id, ObjType::Map)?;
    tx.put(&c, "target", target.encode())?;
    tx.put(&c, "text", text)?;
    tx.put(&c, "by", by)?;
    put_ts(tx, &c, "at", at)?;
    Ok(())
}

fn comment_obj(tx: &impl ReadDoc, comment_id: &str) -> Result<ObjId, ModelError> {
    let comments = review_map(tx, "comments")?;
    get_map(
        tx,
        &comments,
        comment_id,
        &format!("review/comments/{comment_id}"),
    )
}

/// Tombstones a review comment (it stays, marked `deleted`; secretariat).
pub fn delete_comment(tx: &mut impl Transactable, comment_id: &str) -> Result<(), ModelError> {
    let c = comment_obj(&*tx, comment_id)?;
    tx.put(&c, "deleted", true)?;
    Ok(())
}

/// Brings a tombstoned review comment back (writes `deleted: false`).
pub fn restore_comment(tx: &mut impl Transactable, comment_id: &str) -> Result<(), ModelError> {
    let c = comment_obj(&*tx, comment_id)?;
    tx.put(&c, "deleted", false)?;
    Ok(())
}

// ----------------------------------------------------------------- reader

/// Reads an inspection. `templates` must hold the template the header names:
/// the meaning of a stored answer (`"yes"` of a yes/no item or of a choice?)
/// depends on its item's type. The document must be able to trace its
/// operations to their changes ([`CausalDoc`]: an `Automerge`, an
/// `AutoCommit` or a transaction), because the status follows its history.
pub fn read_inspection(
    doc: &impl CausalDoc,
    templates: &TemplateRegistry,
) -> Result<Inspection, ModelError> {
    expect_kind(doc, DocKind::Inspection)?;
    // Look the template up first so a missing one is reported as such, not as
    // a pile of undecodable answers.
    if let Some((template_id, version)) = template_ref(doc)
        && templates.get(&template_id, version).is_none()
    {
        return Err(ModelError::UnknownTemplate {
            template_id,
            version,
        });
    }
    let mut w = Walk::reader(doc);
    let value = walk(&mut w, templates);
    let mut inspection = finish(value, w.into_errors())?;
    inspection.seen = review_seen(doc, &inspection);
    Ok(inspection)
}

/// What each decision had seen (see [`Inspection::seen`]).
fn review_seen(doc: &impl CausalDoc, i: &Inspection) -> Seen {
    let submissions = section(doc, "submissions").ok();
    let decisions = section(doc, "review")
        .ok()
        .and_then(|r| get_map(doc, &r, "decisions", "review/decisions").ok());
    causal::seen(
        doc,
        submissions.as_ref(),
        i.submissions.keys(),
        decisions.as_ref(),
        i.decisions.keys(),
    )
}

/// Decodes a whole inspection; used by the reader and by `validate`. The
/// causal facts ([`Inspection::seen`]) are left empty: only the reader
/// derives them.
pub(crate) fn walk<D: ReadDoc>(
    w: &mut Walk<'_, D>,
    templates: &TemplateRegistry,
) -> Option<Inspection> {
    w.only_keys(&ROOT, "", ROOT_KEYS);
    let header = w.field(&ROOT, "header", "", Need::Required, walk_header);
    // The template is looked up from its two header fields alone, so that a
    // mistake elsewhere in the header does not stop the answers being checked.
    let template = match template_ref(w.doc()) {
        Some((id, version)) => {
            let t = templates.get(&id, version);
            if t.is_none() {
                w.error(
                    "header/template_id",
                    format!(
                        "template {id}@{version} is not published: publish it in the catalog first"
                    ),
                );
            }
            t
        }
        None => None,
    };

    let mut answers = BTreeMap::new();
    if let Some(obj) = w.section(&ROOT, "answers", "") {
        for item_id in w.keys(&obj, "answers", MAX_MAP_ENTRIES) {
            let path = join("answers", &item_id);
            if let Some(t) = template
                && t.item(&item_id).is_none()
            {
                w.error(
                    &path,
                    format!(
                        "item {item_id} is not in template {}; check the item id",
                        t.key()
                    ),
                );
                continue;
            }
            let a = w.field(&obj, &item_id, "answers", Need::Required, |w, v, id, p| {
                walk_answer(w, &v, id, p, &item_id, template)
            });
            if let Some(Some(a)) = a {
                answers.insert(item_id, a);
            }
        }
    }

    let mut findings = BTreeMap::new();
    if let Some(obj) = w.section(&ROOT, "findings", "") {
        for fid in w.keys(&obj, "findings", MAX_FINDINGS) {
            if !super::format::is_id(&fid) {
                w.error(&join("findings", &fid), "key is not an id");
                continue;
            }
            let f = w.field(&obj, &fid, "findings", Need::Required, |w, v, id, p| {
                walk_finding(w, &v, id, p, template)
            });
            if let Some(f) = f {
                findings.insert(fid, f);
            }
        }
    }
    let finding_ids: BTreeSet<&str> = findings.keys().map(String::as_str).collect();

    let mut photos = BTreeMap::new();
    if let Some(obj) = w.section(&ROOT, "photos", "") {
        for sha in w.keys(&obj, "photos", MAX_PHOTOS) {
            if !super::format::is_sha256(&sha) {
                w.error(
                    &join("photos", &sha),
                    "key must be a sha256: 64 lowercase hexadecimal characters",
                );
                continue;
            }
            let p = w.field(&obj, &sha, "photos", Need::Required, |w, v, id, p| {
                walk_photo(w, &v, id, p, &sha, template, &finding_ids)
            });
            if let Some(p) = p {
                photos.insert(sha, p);
            }
        }
    }

    let mut submissions = BTreeMap::new();
    if let Some(obj) = w.section(&ROOT, "submissions", "") {
        for sid in w.keys(&obj, "submissions", MAX_MAP_ENTRIES) {
            if !super::format::is_id(&sid) {
                w.error(&join("submissions", &sid), "key is not an id");
                continue;
            }
            let s = w.field(&obj, &sid, "submissions", Need::Required, |w, v, id, p| {
                let o = w.map(&v, id, p)?;
                w.only_keys(&o, p, SUBMISSION_KEYS);
                let by = w.id_field(&o, "by", p, Need::Required);
                let at = w.ts_field(&o, "at", p, Need::Required);
                let note = w.str_field(&o, "note", p, Need::Optional, MAX_TEXT_CHARS);
                Some(Submission {
                    by: by?,
                    at: at?,
                    note,
                })
            });
            if let Some(s) = s {
                submissions.insert(sid, s);
            }
        }
    }

    let mut decisions = BTreeMap::new();
    let mut comments = BTreeMap::new();
    if let Some(review) = w.section(&ROOT, "review", "") {
        w.only_keys(&review, "review", REVIEW_KEYS);
        if let Some(obj) = w.section(&review, "decisions", "review") {
            for did in w.keys(&obj, "review/decisions", MAX_MAP_ENTRIES) {
                if !super::format::is_id(&did) {
                    w.error(&format!("review/decisions/{did}"), "key is not an id");
                    continue;
                }
                let d = w.field(
                    &obj,
                    &did,
                    "review/decisions",
                    Need::Required,
                    walk_decision,
                );
                if let Some(d) = d {
                    decisions.insert(did, d);
                }
            }
        }
        if let Some(obj) = w.section(&review, "comments", "review") {
            for cid in w.keys(&obj, "review/comments", MAX_MAP_ENTRIES) {
                if !super::format::is_id(&cid) {
                    w.error(&format!("review/comments/{cid}"), "key is not an id");
                    continue;
                }
                let c = w.field(
                    &obj,
                    &cid,
                    "review/comments",
                    Need::Required,
                    |w, v, id, p| walk_comment(w, &v, id, p, template, &finding_ids),
                );
                if let Some(c) = c {
                    comments.insert(cid, c);
                }
            }
        }
    }

    Some(Inspection {
        header: header?,
        answers,
        findings,
        photos,
        submissions,
        decisions,
        comments,
        seen: Seen::default(),
    })
}

/// `(template_id, template_version)` from the header, if both are well formed.
fn template_ref(doc: &impl ReadDoc) -> Option<(String, u32)> {
    let mut w = Walk::reader(doc);
    let h = w.map_field(&ROOT, "header", "", Need::Required)?;
    let id = w.id_field(&h, "template_id", "header", Need::Required)?;
    let version = w.field(
        &h,
        "template_version",
        "header",
        Need::Required,
        |w, v, _, p| w.uint32(&v, p),
    )?;
    Some((id, version))
}

fn walk_header<'a, D: ReadDoc>(
    w: &mut Walk<'a, D>,
    v: Value<'a>,
    id: ObjId,
    p: &str,
) -> Option<InspectionHeader> {
    let h = w.map(&v, id, p)?;
    w.only_keys(&h, p, HEADER_KEYS);
    let unit_code = w.id_field(&h, "unit_code", p, Need::Required);
    let unit_name = w.nonempty_field(&h, "unit_name", p, Need::Required, MAX_TITLE_CHARS);
    let template_id = w.id_field(&h, "template_id", p, Need::Required);
    let template_version = w.field(&h, "template_version", p, Need::Required, |w, v, _, p| {
        w.uint32(&v, p)
    });
    let team_id = w.id_field(&h, "team_id", p, Need::Required);
    let members = w.field(&h, "members", p, Need::Required, |w, v, id, p| {
        let m = w.map(&v, id, p)?;
        let mut out = BTreeMap::new();
        for user in w.keys(&m, p, MAX_MAP_ENTRIES) {
            if !super::format::is_id(&user) {
                w.error(&join(p, &user), "key is not a user id");
                continue;
            }
            // `Some(None)`: a removed member (tombstone).
            let role = w.field(&m, &user, p, Need::Required, |w, v, _, p| {
                w.one_of(
                    &v,
                    p,
                    |s| match s {
                        MEMBER_REMOVED => Some(None),
                        other => MemberRole::parse(other).map(Some),
                    },
                    &["lead", "member", MEMBER_REMOVED],
                )
            });
            if let Some(Some(role)) = role {
                out.insert(user, role);
            }
        }
        Some(out)
    });
    let scheduled_date = w.date_field(&h, "scheduled_date", p, Need::Required);
    let created_at = w.ts_field(&h, "created_at", p, Need::Required);
    Some(InspectionHeader {
        unit_code: unit_code?,
        unit_name: unit_name?,
        template_id: template_id?,
        template_version: template_version?,
        team_id: team_id?,
        members: members?,
        scheduled_date: scheduled_date?,
        created_at: created_at?,
    })
}

/// An answer: `Some(None)` for a cleared one (`{cleared: true, by, at}`),
/// which readers treat as no answer.
fn walk_answer<'a, D: ReadDoc>(
    w: &mut Walk<'a, D>,
    v: &Value<'a>,
    id: ObjId,
    p: &str,
    item_id: &str,
    template: Option<&Template>,
) -> Option<Option<Answer>> {
    let a = w.map(v, id, p)?;
    let cleared = w
        .bool_field(&a, "cleared", p, Need::Optional)
        .unwrap_or(false);
    if cleared {
        w.only_keys(&a, p, CLEARED_ANSWER_KEYS);
        let by = w.id_field(&a, "by", p, Need::Required);
        let at = w.ts_field(&a, "at", p, Need::Required);
        return (by.is_some() && at.is_some()).then_some(None);
    }
    w.only_keys(&a, p, ANSWER_KEYS);
    let answer_type = template
        .and_then(|t| t.item(item_id))
        .map(|i| i.answer_type);
    let value = match answer_type {
        Some(ty) => w.field(&a, "value", p, Need::Required, |w, v, id, p| {
            walk_answer_value(w, &v, id, p, ty)
        }),
        // Without the template the value cannot be interpreted; the missing
        // template is reported at the header.
        None => None,
    };
    let fields = w
        .field(&a, "fields", p, Need::Optional, |w, v, id, p| {
            w.str_map(&v, id, p, MAX_TEXT_CHARS)
        })
        .unwrap_or_default();
    let evidence = w.sha_set(&a, "evidence", p);
    let note = w.str_field(&a, "note", p, Need::Optional, MAX_TEXT_CHARS);
    let by = w.id_field(&a, "by", p, Need::Required);
    let at = w.ts_field(&a, "at", p, Need::Required);
    if let (Some(t), Some(value)) = (template, &value)
        && let Err(e) = t.check_answer(item_id, value, &fields)
    {
        w.error(&join(p, "value"), e.to_string());
        return None;
    }
    Some(Some(Answer {
        value: value?,
        fields,
        evidence,
        note,
        by: by?,
        at: at?,
    }))
}

fn walk_answer_value<'a, D: ReadDoc>(
    w: &mut Walk<'a, D>,
    v: &Value<'a>,
    id: ObjId,
    p: &str,
    ty: AnswerType,
) -> Option<AnswerValue> {
    if as_str(v) == Some(NOT_APPLICABLE) {
        return Some(AnswerValue::NotApplicable);
    }
    match ty {
        AnswerType::YesNo => w.one_of(
            v,
            p,
            |s| match s {
                "yes" => Some(AnswerValue::YesNo(true)),
                "no" => Some(AnswerValue::YesNo(false)),
                _ => None,
            },
            &["yes", "no", NOT_APPLICABLE],
        ),
        AnswerType::YesNoPartial => w.one_of(
            v,
            p,
            |s| match s {
                "yes" => Some(AnswerValue::YesNoPartial(Tri::Yes)),
                "partial" => Some(AnswerValue::YesNoPartial(Tri::Partial)),
                "no" => Some(AnswerValue::YesNoPartial(Tri::No)),
                _ => None,
            },
            &["yes", "partial", "no", NOT_APPLICABLE],
        ),
        AnswerType::Percentage => {
            let m = w.map(v, id, p)?;
            w.only_keys(&m, p, &["numerator", "denominator"]);
            let numerator = w.uint_field(&m, "numerator", p, Need::Required);
            let denominator = w.uint_field(&m, "denominator", p, Need::Required);
            Some(AnswerValue::Percentage {
                numerator: numerator?,
                denominator: denominator?,
            })
        }
        AnswerType::Number => w.int(v, p).map(AnswerValue::Number),
        AnswerType::Text => w.string(v, p, MAX_TEXT_CHARS).map(AnswerValue::Text),
        AnswerType::Select => w.string(v, p, MAX_TITLE_CHARS).map(AnswerValue::Select),
        AnswerType::ActionList => {
            let m = w.map(v, id, p)?;
            let mut out = BTreeMap::new();
            for entry in w.keys(&m, p, MAX_MAP_ENTRIES) {
                if !super::format::is_id(&entry) {
                    w.error(&join(p, &entry), "key is not an id");
                    continue;
                }
                let e = w.field(&m, &entry, p, Need::Required, |w, v, id, p| {
                    w.str_map(&v, id, p, MAX_TEXT_CHARS)
                });
                if let Some(e) = e {
                    out.insert(entry, e);
                }
            }
            Some(AnswerValue::ActionList(out))
        }
    }
}

fn is_null(v: &Value<'_>) -> bool {
    matches!(v, Value::Scalar(s) if matches!(s.as_ref(), ScalarValue::Null))
}

fn check_item_ref<D: ReadDoc>(
    w: &mut Walk<'_, D>,
    item: &Option<String>,
    template: Option<&Template>,
    path: &str,
) {
    if let (Some(item), Some(t)) = (item, template)
        && t.item(item).is_none()
    {
        w.error(
            path,
            format!(
                "item {item} is not in template {}; check the item id",
                t.key()
            ),
        );
    }
}

fn walk_finding<'a, D: ReadDoc>(
    w: &mut Walk<'a, D>,
    v: &Value<'a>,
    id: ObjId,
    p: &str,
    template: Option<&Template>,
) -> Option<Finding> {
    let f = w.map(v, id, p)?;
    w.only_keys(&f, p, FINDING_KEYS);
    // `null` is an unlinked finding (keys are never deleted).
    let item_id = w
        .field(&f, "item_id", p, Need::Optional, |w, v, _, p| {
            if is_null(&v) {
                Some(None)
            } else {
                w.id(&v, p).map(Some)
            }
        })
        .flatten();
    check_item_ref(w, &item_id, template, &join(p, "item_id"));
    let title = w.nonempty_field(&f, "title", p, Need::Required, MAX_TITLE_CHARS);
    let note = w.field(&f, "note", p, Need::Required, |w, v, id, p| {
        w.text(&v, id, p, MAX_TEXT_CHARS)
    });
    let severity = w.field(&f, "severity", p, Need::Required, |w, v, _, p| {
        w.one_of(&v, p, Severity::parse, Severity::NAMES)
    });
    let photos = w.sha_set(&f, "photos", p);
    let by = w.id_field(&f, "by", p, Need::Required);
    let at = w.ts_field(&f, "at", p, Need::Required);
    let deleted = w
        .bool_field(&f, "deleted", p, Need::Optional)
        .unwrap_or(false);
    Some(Finding {
        item_id,
        title: title?,
        note: note?,
        severity: severity?,
        photos,
        by: by?,
        at: at?,
        deleted,
    })
}

fn walk_photo<'a, D: ReadDoc>(
    w: &mut Walk<'a, D>,
    v: &Value<'a>,
    id: ObjId,
    p: &str,
    sha: &str,
    template: Option<&Template>,
    finding_ids: &BTreeSet<&str>,
) -> Option<PhotoRef> {
    let o = w.map(v, id, p)?;
    w.only_keys(&o, p, PHOTO_KEYS);
    let mime = w.field(&o, "mime", p, Need::Required, |w, v, _, p| {
        w.one_of(&v, p, PhotoMime::parse, PhotoMime::NAMES)
    });
    let bytes = w.uint_field(&o, "bytes", p, Need::Required);
    let width = w.field(&o, "width", p, Need::Optional, |w, v, _, p| w.uint32(&v, p));
    let height = w.field(&o, "height", p, Need::Optional, |w, v, _, p| {
        w.uint32(&v, p)
    });
    let taken_at = w.ts_field(&o, "taken_at", p, Need::Optional);
    let item_id = w.id_field(&o, "item_id", p, Need::Optional);
    check_item_ref(w, &item_id, template, &join(p, "item_id"));
    let finding_id = w.id_field(&o, "finding_id", p, Need::Optional);
    if let Some(fid) = &finding_id
        && !finding_ids.contains(fid.as_str())
    {
        w.error(
            &join(p, "finding_id"),
            format!("finding {fid} is not in this inspection"),
        );
    }
    let caption = w.str_field(&o, "caption", p, Need::Optional, MAX_TITLE_CHARS);
    let by = w.id_field(&o, "by", p, Need::Required);
    let at = w.ts_field(&o, "at", p, Need::Required);
    let deleted = w
        .bool_field(&o, "deleted", p, Need::Optional)
        .unwrap_or(false);
    Some(PhotoRef {
        sha256: sha.to_owned(),
        mime: mime?,
        bytes: bytes?,
        width,
        height,
        taken_at,
        item_id,
        finding_id,
        caption,
        by: by?,
        at: at?,
        deleted,
    })
}

fn walk_decision<'a, D: ReadDoc>(
    w: &mut Walk<'a, D>,
    v: Value<'a>,
    id: ObjId,
    p: &str,
) -> Option<ReviewDecision> {
    let o = w.map(&v, id, p)?;
    w.only_keys(&o, p, DECISION_KEYS);
    let state = w.field(&o, "state", p, Need::Required, |w, v, _, p| {
        w.one_of(&v, p, ReviewState::parse, ReviewState::NAMES)
    });
    let by = w.id_field(&o, "by", p, Need::Required);
    let at = w.ts_field(&o, "at", p, Need::Required);
    let note = w.str_field(&o, "note", p, Need::Optional, MAX_TEXT_CHARS);
    Some(ReviewDecision {
        state: state?,
        by: by?,
        at: at?,
        note,
    })
}

fn walk_comment<'a, D: ReadDoc>(
    w: &mut Walk<'a, D>,
    v: &Value<'a>,
    id: ObjId,
    p: &str,
    template: Option<&Template>,
    finding_ids: &BTreeSet<&str>,
) -> Option<ReviewComment> {
    let o = w.map(v, id, p)?;
    w.only_keys(&o, p, COMMENT_KEYS);
    let target = w.field(&o, "target", p, Need::Required, |w, v, _, p| {
        w.one_of(
            &v,
            p,
            CommentTarget::parse,
            &["general", "item:<item id>", "finding:<finding id>"],
        )
    });
    match &target {
        Some(CommentTarget::Item(item)) => {
            check_item_ref(w, &Some(item.clone()), template, &join(p, "target"));
        }
        Some(CommentTarget::Finding(fid)) if !finding_ids.contains(fid.as_str()) => {
            w.error(
                &join(p, "target"),
                format!("finding {fid} is not in this inspection"),
            );
        }
        _ => {}
    }
    let text = w.nonempty_field(&o, "text", p, Need::Required, MAX_TEXT_CHARS);
    let by = w.id_field(&o, "by", p, Need::Required);
    let at = w.ts_field(&o, "at", p, Need::Required);
    let deleted = w
        .bool_field(&o, "deleted", p, Need::Optional)
        .unwrap_or(false);
    Some(ReviewComment {
        target: target?,
        text: text?,
        by: by?,
        at: at?,
        deleted,
    })
}
