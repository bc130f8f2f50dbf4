//! The `action` document: one per corrective action.
//!
//! The secretariat writes the `assignment` (what, for whom, by when); the
//! inspected unit adds `responses`; the secretariat or an inspector adds
//! `verification` entries that close or reopen it. Responses and
//! verifications are append-only records. The status is derived from the
//! document's history (which responses each verification had seen), never
//! from the writers' timestamps, and never stored.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, ROOT, ReadDoc, Value};

use super::causal::{self, CausalDoc, Seen};
use super::format::{self, MAX_MAP_ENTRIES, MAX_TEXT_CHARS, MAX_TITLE_CHARS};
use super::read::{Need, Walk, join};
use super::write::{
    check_date, check_id, expect_absent, put_kind, put_opt_str, put_set, put_ts, section,
};
use super::{DocKind, ModelError, expect_empty, expect_kind, finish};
use crate::ids::DocumentId;

/// Top-level keys of an action.
pub const ROOT_KEYS: &[&str] = &["kind", "schema", "assignment", "responses", "verification"];

const ASSIGNMENT_KEYS: &[&str] = &[
    "inspection_id",
    "finding_id",
    "unit_code",
    "team_id",
    "title",
    "due_date",
    "priority",
    "created_by",
    "created_at",
];
const RESPONSE_KEYS: &[&str] = &["text", "evidence", "done", "by", "at"];
const VERIFICATION_KEYS: &[&str] = &["decision", "note", "by", "at"];

/// How urgent an action is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    Low,
    Normal,
    High,
    Urgent,
}

impl Priority {
    pub const NAMES: &'static [&'static str] = &["low", "normal", "high", "urgent"];
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            "urgent" => Some(Priority::Urgent),
            _ => None,
        }
    }
}

/// `assignment`: what must be corrected, by whom, by when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionAssignment {
    /// The inspection whose finding this action corrects.
    pub inspection_id: DocumentId,
    pub finding_id: String,
    pub unit_code: String,
    pub team_id: Option<String>,
    pub title: String,
    /// `YYYY-MM-DD`.
    pub due_date: String,
    pub priority: Priority,
    pub created_by: String,
    pub created_at: i64,
}

/// `responses.<response_id>`: the unit reports what it did. Append-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionResponse {
    pub text: String,
    pub evidence: BTreeSet<String>,
    /// The unit claims the action is done.
    pub done: bool,
    pub by: String,
    pub at: i64,
}

/// What a verifier decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VerificationDecision {
    Closed,
    Reopened,
}

impl VerificationDecision {
    pub const NAMES: &'static [&'static str] = &["closed", "reopened"];
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationDecision::Closed => "closed",
            VerificationDecision::Reopened => "reopened",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "closed" => Some(VerificationDecision::Closed),
            "reopened" => Some(VerificationDecision::Reopened),
            _ => None,
        }
    }
}

/// `verification.<verification_id>`. Append-only. It covers the responses
/// its change had seen (see [`Action::seen`]); `at` is for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub decision: VerificationDecision,
    pub note: Option<String>,
    pub by: String,
    pub at: i64,
}

/// Where an action stands. Derived, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionStatus {
    /// No verification and no response claiming done.
    Open,
    /// Some response claiming done has not been seen by any verification.
    Responded,
    /// Every done-response is covered and the causally latest
    /// verification(s) closed it.
    Closed,
    /// Every done-response is covered and the causally latest verification
    /// (any of them, if several were made concurrently) reopened it.
    Reopened,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Open => "open",
            ActionStatus::Responded => "responded",
            ActionStatus::Closed => "closed",
            ActionStatus::Reopened => "reopened",
        }
    }
}

/// A whole action as its readers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub assignment: ActionAssignment,
    pub responses: BTreeMap<String, ActionResponse>,
    pub verifications: BTreeMap<String, Verification>,
    /// What each verification had seen when it was made: `seen.claims[v]`
    /// are the responses verification `v` covers, `seen.verdicts[v]` the
    /// verifications it supersedes. Read from the document's history.
    pub seen: Seen,
}

impl Action {
    /// Responses claiming done that no verification has seen yet: what
    /// awaits verification.
    pub fn uncovered_responses(&self) -> impl Iterator<Item = (&String, &ActionResponse)> {
        self.responses
            .iter()
            .filter(|(id, r)| r.done && !self.seen.is_seen(id))
    }

    /// The causally latest verification: among the verifications no other
    /// verification has seen, a `reopened` one before a `closed` one (the
    /// rule of [`status`](Self::status)), then the later `at`, then the
    /// greater id. `at` only orders concurrent verifications, for display.
    pub fn latest_verification(&self) -> Option<(&String, &Verification)> {
        let latest = self.seen.latest();
        self.verifications
            .iter()
            .filter(|(id, _)| latest.contains(id.as_str()))
            .max_by(|(ia, a), (ib, b)| {
                (a.decision == VerificationDecision::Reopened, a.at, ia).cmp(&(
                    b.decision == VerificationDecision::Reopened,
                    b.at,
                    ib,
                ))
            })
    }

    /// The derived status, from the document's history alone (`at` plays no
    /// part): `responded` while some response claiming done is seen by no
    /// verification; otherwise the decision of the causally latest
    /// verification, where concurrent verifications that disagree leave it
    /// `reopened`; otherwise `open`. A response with `done: false` is a
    /// progress note and changes nothing.
    pub fn status(&self) -> ActionStatus {
        if self.uncovered_responses().next().is_some() {
            return ActionStatus::Responded;
        }
        match self.latest_verification().map(|(_, v)| v.decision) {
            Some(VerificationDecision::Closed) => ActionStatus::Closed,
            Some(VerificationDecision::Reopened) => ActionStatus::Reopened,
            None => ActionStatus::Open,
        }
    }

    /// Not closed and `today` (`YYYY-MM-DD`, the caller's local date) is after
    /// the due date. An unreadable `today` is never "overdue": better no alarm
    /// than a false one from a caller's bug.
    pub fn is_overdue(&self, today: &str) -> bool {
        if self.status() == ActionStatus::Closed {
            return false;
        }
        match (
            format::parse_date(today),
            format::parse_date(&self.assignment.due_date),
        ) {
            (Some(t), Some(d)) => t > d,
            _ => false,
        }
    }
}

// ----------------------------------------------------------------- writers

/// Creates an action in an empty document (secretariat or server).
pub fn init_action(
    tx: &mut impl Transactable,
    assignment: &ActionAssignment,
) -> Result<(), ModelError> {
    expect_empty(&*tx)?;
    check_id("finding id", &assignment.finding_id)?;
    check_id("unit code", &assignment.unit_code)?;
    if let Some(team) = &assignment.team_id {
        check_id("team id", team)?;
    }
    check_date("due date", &assignment.due_date)?;
    check_id("user id", &assignment.created_by)?;
    put_kind(tx, DocKind::Action)?;
    let a = tx.put_object(ROOT, "assignment", ObjType::Map)?;
    tx.put(&a, "inspection_id", assignment.inspection_id.encode())?;
    tx.put(&a, "finding_id", assignment.finding_id.as_str())?;
    tx.put(&a, "unit_code", assignment.unit_code.as_str())?;
    put_opt_str(tx, &a, "team_id", assignment.team_id.as_deref())?;
    tx.put(&a, "title", assignment.title.as_str())?;
    tx.put(&a, "due_date", assignment.due_date.as_str())?;
    tx.put(&a, "priority", assignment.priority.as_str())?;
    tx.put(&a, "created_by", assignment.created_by.as_str())?;
    put_ts(tx, &a, "created_at", assignment.created_at)?;
    tx.put_object(ROOT, "responses", ObjType::Map)?;
    tx.put_object(ROOT, "verification", ObjType::Map)?;
    Ok(())
}

/// Moves the due date (secretariat).
pub fn update_due_date(tx: &mut impl Transactable, due_date: &str) -> Result<(), ModelError> {
    check_date("due date", due_date)?;
    let a = section(&*tx, "assignment")?;
    tx.put(&a, "due_date", due_date)?;
    Ok(())
}

/// Changes the priority (secretariat).
pub fn update_priority(tx: &mut impl Transactable, priority: Priority) -> Result<(), ModelError> {
    let a = section(&*tx, "assignment")?;
    tx.put(&a, "priority", priority.as_str())?;
    Ok(())
}

/// Adds the unit's response under a fresh id.
pub fn respond_action(
    tx: &mut impl Transactable,
    response_id: &str,
    response: &ActionResponse,
) -> Result<(), ModelError> {
    check_id("response id", response_id)?;
    check_id("user id", &response.by)?;
    let responses = section(&*tx, "responses")?;
    expect_absent(
        &*tx,
        &responses,
        response_id,
        &join("responses", response_id),
    )?;
    let r = tx.put_object(&responses, response_id, ObjType::Map)?;
    tx.put(&r, "text", response.text.as_str())?;
    put_set(tx, &r, "evidence", &response.evidence)?;
    tx.put(&r, "done", response.done)?;
    tx.put(&r, "by", response.by.as_str())?;
    put_ts(tx, &r, "at", response.at)?;
    Ok(())
}

/// Closes or reopens the action under a fresh id (secretariat or inspector).
pub fn verify_action(
    tx: &mut impl Transactable,
    verification_id: &str,
    verification: &Verification,
) -> Result<(), ModelError> {
    check_id("verification id", verification_id)?;
    check_id("user id", &verification.by)?;
    let ver = section(&*tx, "verification")?;
    expect_absent(
        &*tx,
        &ver,
        verification_id,
        &join("verification", verification_id),
    )?;
    let v = tx.put_object(&ver, verification_id, ObjType::Map)?;
    tx.put(&v, "decision", verification.decision.as_str())?;
    put_opt_str(tx, &v, "note", verification.note.as_deref())?;
    tx.put(&v, "by", verification.by.as_str())?;
    put_ts(tx, &v, "at", verification.at)?;
    Ok(())
}

// ----------------------------------------------------------------- reader

/// Reads an action. The document must be able to trace its operations to
/// their changes ([`CausalDoc`]: an `Automerge`, an `AutoCommit` or a
/// transaction), because the status follows its history.
pub fn read_action(doc: &impl CausalDoc) -> Result<Action, ModelError> {
    expect_kind(doc, DocKind::Action)?;
    let mut w = Walk::reader(doc);
    let value = walk(&mut w);
    let mut action = finish(value, w.into_errors())?;
    let responses = section(doc, "responses").ok();
    let verifications = section(doc, "verification").ok();
    action.seen = causal::seen(
        doc,
        responses.as_ref(),
        action.responses.keys(),
        verifications.as_ref(),
        action.verifications.keys(),
    );
    Ok(action)
}

/// Decodes a whole action; used by the reader and by `validate`. The causal
/// facts ([`Action::seen`]) are left empty: only the reader derives them.
pub(crate) fn walk<D: ReadDoc>(w: &mut Walk<'_, D>) -> Option<Action> {
    w.only_keys(&ROOT, "", ROOT_KEYS);
    let assignment = w.field(&ROOT, "assignment", "", Need::Required, walk_assignment);

    let mut responses = BTreeMap::new();
    if let Some(obj) = w.section(&ROOT, "responses", "") {
        for rid in w.keys(&obj, "responses", MAX_MAP_ENTRIES) {
            if !format::is_id(&rid) {
                w.error(&join("responses", &rid), "key is not an id");
                continue;
            }
            if let Some(r) = w.field(&obj, &rid, "responses", Need::Required, walk_response) {
                responses.insert(rid, r);
            }
        }
    }

    let mut verifications = BTreeMap::new();
    if let Some(obj) = w.section(&ROOT, "verification", "") {
        for vid in w.keys(&obj, "verification", MAX_MAP_ENTRIES) {
            if !format::is_id(&vid) {
                w.error(&join("verification", &vid), "key is not an id");
                continue;
            }
            if let Some(v) = w.field(
                &obj,
                &vid,
                "verification",
                Need::Required,
                walk_verification,
            ) {
                verifications.insert(vid, v);
            }
        }
    }

    Some(Action {
        assignment: assignment?,
        responses,
        verifications,
        seen: Seen::default(),
    })
}

fn walk_assignment<'a, D: ReadDoc>(
    w: &mut Walk<'a, D>,
    v: Value<'a>,
    id: ObjId,
    p: &str,
) -> Option<ActionAssignment> {
    let a = w.map(&v, id, p)?;
    w.only_keys(&a, p, ASSIGNMENT_KEYS);
    let inspection_id = w.field(&a, "inspection_id", p, Need::Required, |w, v, _, p| {
        let s = w.string(&v, p, 100)?;
        match DocumentId::parse(&s) {
            Ok(id) => Some(id),
            Err(e) => {
                w.error(p, format!("is not a document id: {e}"));
                None
            }
        }
    });
    let finding_id = w.id_field(&a, "finding_id", p, Need::Required);
    let unit_code = w.id_field(&a, "unit_code", p, Need::Required);
    let team_id = w.id_field(&a, "team_id", p, Need::Optional);
    let title = w.nonempty_field(&a, "title", p, Need::Required, MAX_TITLE_CHARS);
    let due_date = w.date_field(&a, "due_date", p, Need::Required);
    let priority = w.field(&a, "priority", p, Need::Required, |w, v, _, p| {
        w.one_of(&v, p, Priority::parse, Priority::NAMES)
    });
    let created_by = w.id_field(&a, "created_by", p, Need::Required);
    let created_at = w.ts_field(&a, "created_at", p, Need::Required);
    Some(ActionAssignment {
        inspection_id: inspection_id?,
        finding_id: finding_id?,
        unit_code: unit_code?,
        team_id,
        title: title?,
        due_date: due_date?,
        priority: priority?,
        created_by: created_by?,
        created_at: created_at?,
    })
}

fn walk_response<'a, D: ReadDoc>(
    w: &mut Walk<'a, D>,
    v: Value<'a>,
    id: ObjId,
    p: &str,
) -> Option<ActionResponse> {
    let o = w.map(&v, id, p)?;
    w.only_keys(&o, p, RESPONSE_KEYS);
    let text = w.str_field(&o, "text", p, Need::Required, MAX_TEXT_CHARS);
    let evidence = w.sha_set(&o, "evidence", p);
    let done = w.bool_field(&o, "done", p, Need::Required);
    let by = w.id_field(&o, "by", p, Need::Required);
    let at = w.ts_field(&o, "at", p, Need::Required);
    Some(ActionResponse {
        text: text?,
        evidence,
        done: done?,
        by: by?,
        at: at?,
    })
}

fn walk_verification<'a, D: ReadDoc>(
    w: &mut Walk<'a, D>,
    v: Value<'a>,
    id: ObjId,
    p: &str,
) -> Option<Verification> {
    let o = w.map(&v, id, p)?;
    w.only_keys(&o, p, VERIFICATION_KEYS);
    let decision = w.field(&o, "decision", p, Need::Required, |w, v, _, p| {
        w.one_of(
            &v,
            p,
            VerificationDecision::parse,
            VerificationDecision::NAMES,
        )
    });
    let note = w.str_field(&o, "note", p, Need::Optional, MAX_TEXT_CHARS);
    let by = w.id_field(&o, "by", p, Need::Required);
    let at = w.ts_field(&o, "at", p, Need::Required);
    Some(Verification {
        decision: decision?,
        note,
        by: by?,
        at: at?,
    })
}
