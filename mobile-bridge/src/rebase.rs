//! Refused work: kept, shown, and written again.
//!
//! When the server refuses changes of a document (its rules, a template or
//! the team changed while the tablet was offline), it keeps the others,
//! tells us its heads, and ignores that document for the rest of the
//! connection. After the session:
//!
//! 1. [`Engine::quarantine`] keeps every local change the server's history
//!    lacks (raw, in `refused_changes`) and rebuilds the document from the
//!    rest — nothing is deleted from the device;
//! 2. [`rebase_document`] works out what the user did in those changes, by
//!    reading the document as the user saw it (the refused changes and what
//!    they were made on) against what they were made on, and writes each
//!    piece of that work again on top of the server's state as a new change,
//!    checked as every local edit is: answers (value, fields, evidence,
//!    note), findings (title, severity, item, note, photos, tombstone),
//!    photos (metadata, tombstone) and submissions;
//! 3. what cannot be written again (still refused, or a person has to
//!    choose, e.g. the item no longer exists in the template) stays listed
//!    as refused with the reason ([`crate::Tablet::refused`]); `rebase`
//!    tries those again on request.
//!
//! The work is compared with the model readers of `sync_core::model`;
//! writing goes through its writers. Only the user's own changes are
//! replayed: a value a teammate changed meanwhile on the server and this
//! tablet never touched stays as it is.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, Change, ChangeHash, ObjType, ROOT, ReadDoc, Value};
use sync_core::DocumentId;
use sync_core::access::PeerInfo;
use sync_core::model::{self, Answer, DocKind, Finding, Inspection, ModelError, PhotoRef};
use sync_core::protocol::message::ErrorDetail;
use sync_core::template::TemplateRegistry;

use crate::answer;
use crate::engine::{EditError, Engine, Quarantined, main_violation};
use crate::error::Result;
use crate::store::{PENDING_PIECE, RefusalRow, WorkRow, WorkState};
use crate::tablet::minimal_splice;

/// A refusal seen during a sync session.
#[derive(Debug, Clone)]
pub struct SessionRefusal {
    pub document_id: DocumentId,
    /// The server's heads right after it stored what it kept (None if it
    /// never said).
    pub server_heads: Option<Vec<ChangeHash>>,
    /// The server's summary.
    pub message: String,
    pub detail: ErrorDetail,
}

/// What handling a session's refusals did.
#[derive(Debug, Default)]
pub struct Settled {
    /// Documents rebuilt from the server's history.
    pub documents: u32,
    /// Pieces of work written again (to upload).
    pub rebased: u32,
    pub warnings: Vec<String>,
}

/// What [`rebase_document`] wrote again.
#[derive(Debug, Default)]
pub struct Rebased {
    /// Labels of the pieces written again (or found already there).
    pub reapplied: Vec<String>,
    /// How many new changes that made.
    pub written: u32,
}

/// After a sync session: keeps and rebuilds each refused document, then
/// writes again, for every document, the refused work that needs no
/// choice (pieces still `pending`). Without a signed-in user nothing can be
/// written: the work stays pending for the next sync.
pub fn settle(
    engine: &mut Engine,
    who: Option<&PeerInfo>,
    refusals: &[SessionRefusal],
    now_ms: i64,
) -> Result<Settled> {
    let mut out = Settled::default();
    for r in refusals {
        let id = r.document_id;
        let Some(heads) = &r.server_heads else {
            out.warnings.push(format!(
                "the server refused changes of document {id} without saying what it holds; \
                 they are sent again on the next sync"
            ));
            continue;
        };
        match engine.quarantine(id, heads, &r.message, &r.detail, now_ms)? {
            Quarantined::Kept(_) => out.documents += 1,
            Quarantined::Nothing => {}
            Quarantined::NotYet => out.warnings.push(format!(
                "the server refused changes of document {id} but some of its own changes \
                 have not arrived yet; sync again"
            )),
        }
    }
    let pending: BTreeSet<DocumentId> = engine
        .store()
        .work(None, false)?
        .into_iter()
        .filter(|w| w.state == WorkState::Pending)
        .map(|w| w.doc_id)
        .collect();
    if pending.is_empty() {
        return Ok(out);
    }
    let Some(who) = who else {
        out.warnings.push(
            "refused work waits to be written again until someone logs in on this device".into(),
        );
        return Ok(out);
    };
    for id in pending {
        let done = rebase_document(engine, who, id, false, now_ms)?;
        out.rebased = out.rebased.saturating_add(done.written);
    }
    Ok(out)
}

/// Writes the refused work of document `id` again: the pieces still
/// `pending`, and with `retry_open` also those that needed a person.
pub fn rebase_document(
    engine: &mut Engine,
    who: &PeerInfo,
    id: DocumentId,
    retry_open: bool,
    now_ms: i64,
) -> Result<Rebased> {
    let mut out = Rebased::default();
    let refusals = engine.store().refusals(id)?;
    let work = engine.store().work(Some(id), true)?;
    for refusal in refusals {
        let rows: HashMap<String, WorkRow> = work
            .iter()
            .filter(|w| w.refusal_id == refusal.id)
            .map(|w| (w.piece.clone(), w.clone()))
            .collect();
        let first_time = rows.contains_key(PENDING_PIECE);
        let wanted: HashSet<String> = rows
            .values()
            .filter(|w| w.state == WorkState::Pending || (retry_open && w.state == WorkState::Open))
            .map(|w| w.piece.clone())
            .collect();
        if !first_time && wanted.is_empty() {
            continue;
        }
        let pieces = match plan(engine, who, &refusal, now_ms) {
            Ok(p) => p,
            Err(reason) => {
                // Cannot be worked out now (a template is missing, …):
                // stays pending, retried after the next sync.
                if let Some(row) = rows.get(PENDING_PIECE) {
                    engine.store().set_work(&WorkRow {
                        reason,
                        updated_at_ms: now_ms,
                        ..row.clone()
                    })?;
                }
                continue;
            }
        };
        for piece in pieces {
            if !first_time && !wanted.contains(&piece.key) {
                continue;
            }
            let mut row = WorkRow {
                refusal_id: refusal.id,
                piece: piece.key.clone(),
                doc_id: id,
                kind: piece.kind.to_owned(),
                label: piece.label.clone(),
                state: WorkState::Rebased,
                rule: None,
                path: None,
                reason: String::new(),
                updated_at_ms: now_ms,
                refused_at_ms: refusal.refused_at_ms,
            };
            match piece.step {
                Step::There => {
                    row.reason = "already on the server".into();
                    out.reapplied.push(piece.label);
                }
                Step::Stuck { rule, path, reason } => {
                    row.state = WorkState::Open;
                    row.rule = rule;
                    row.path = Some(path);
                    row.reason = reason;
                }
                Step::Write(write) => match engine.edit_checked(id, who, now_ms, write) {
                    Ok(()) => {
                        row.reason = "written again on top of the server's state".into();
                        out.written = out.written.saturating_add(1);
                        out.reapplied.push(piece.label);
                    }
                    Err(EditError::Refused(violations)) => {
                        row.state = WorkState::Open;
                        if let Some(v) = main_violation(&violations) {
                            row.rule = Some(v.rule.as_str().to_owned());
                            row.path = Some(v.path.clone());
                            row.reason = v.reason.clone();
                        }
                    }
                    Err(EditError::Failed(e)) => {
                        row.state = WorkState::Open;
                        row.reason = e.to_string();
                    }
                },
            }
            engine.store().set_work(&row)?;
        }
        if first_time {
            engine.store().clear_pending(refusal.id)?;
        }
    }
    Ok(out)
}

// ----- planning -------------------------------------------------------------------------

type Write = Box<dyn FnOnce(&mut Transaction<'_>) -> std::result::Result<(), ModelError>>;

/// What to do about one piece of work.
enum Step {
    /// Write it again (one change).
    Write(Write),
    /// The server already holds it.
    There,
    /// It cannot be written again without a person.
    Stuck {
        rule: Option<String>,
        path: String,
        reason: String,
    },
}

/// One piece of the user's refused work.
struct Piece {
    key: String,
    kind: &'static str,
    label: String,
    step: Step,
}

fn stuck(path: &str, rule: Option<&str>, reason: impl Into<String>) -> Step {
    Step::Stuck {
        rule: rule.map(str::to_owned),
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The documents a refusal's work is read from: `intent` as the user saw it
/// with the refused changes, `base` what those changes were made on.
struct Views {
    intent: Automerge,
    base: Option<Automerge>,
    current: Automerge,
}

fn views(engine: &Engine, refusal: &RefusalRow) -> std::result::Result<Views, String> {
    let id = refusal.doc_id;
    let current = engine
        .document(&id)
        .cloned()
        .ok_or_else(|| format!("document {id} is not on this device"))?;
    let rows = engine
        .store()
        .refused_changes(refusal.id)
        .map_err(|e| e.to_string())?;
    let mut changes = Vec::new();
    for row in rows {
        let change = Change::try_from(row.data.as_slice())
            .map_err(|e| format!("a kept change ({}) does not read: {e}", row.hash))?;
        changes.push(change);
    }
    let hashes: Vec<ChangeHash> = changes.iter().map(Change::hash).collect();
    let mut all = current.clone();
    all.apply_changes(changes.iter().cloned())
        .map_err(|e| format!("the refused changes do not apply here: {e}"))?;
    if hashes.iter().any(|h| all.get_change_by_hash(h).is_none()) {
        return Err(
            "some refused changes depend on changes this device does not hold; sync again".into(),
        );
    }
    let own: HashSet<ChangeHash> = hashes.iter().copied().collect();
    let below: Vec<ChangeHash> = changes
        .iter()
        .flat_map(|c| c.deps().iter().copied())
        .filter(|d| !own.contains(d))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let intent = all
        .fork_at(&hashes)
        .map_err(|e| format!("cannot read the refused work: {e}"))?;
    let base = if below.is_empty() {
        None
    } else {
        Some(
            all.fork_at(&below)
                .map_err(|e| format!("cannot read what the refused work was made on: {e}"))?,
        )
    };
    Ok(Views {
        intent,
        base,
        current,
    })
}

fn plan(
    engine: &mut Engine,
    who: &PeerInfo,
    refusal: &RefusalRow,
    now_ms: i64,
) -> std::result::Result<Vec<Piece>, String> {
    let registry = engine.registry().map_err(|e| e.to_string())?.clone();
    let v = views(engine, refusal)?;
    match model::kind_of(&v.intent) {
        Ok(DocKind::Inspection) => plan_inspection(&v, &registry, who, now_ms),
        _ => Ok(plan_changes(engine, refusal)),
    }
}

/// Documents other than inspections: each refused change is listed as it is.
fn plan_changes(engine: &Engine, refusal: &RefusalRow) -> Vec<Piece> {
    let rows = engine
        .store()
        .refused_changes(refusal.id)
        .unwrap_or_default();
    rows.into_iter()
        .map(|row| {
            let path = row.path.clone().unwrap_or_default();
            Piece {
                key: format!("changes/{}", row.hash),
                kind: "change",
                label: format!(
                    "change {} of document {}",
                    short(&row.hash.to_string()),
                    refusal.doc_id
                ),
                step: stuck(
                    &path,
                    row.rule.as_deref(),
                    row.reason
                        .clone()
                        .unwrap_or_else(|| "refused with a change it depends on".into()),
                ),
            }
        })
        .collect()
}

fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

/// An inspection, read leniently: entries that do not read (an item no
/// longer in the template, …) are left out and returned with the reason.
fn read_inspection(
    doc: &Automerge,
    registry: &TemplateRegistry,
) -> std::result::Result<(Inspection, BTreeMap<String, String>), String> {
    let mut dropped = BTreeMap::new();
    let mut scratch: Option<Automerge> = None;
    for _ in 0..16 {
        let d = scratch.as_ref().unwrap_or(doc);
        match model::read_inspection(d, registry) {
            Ok(i) => return Ok((i, dropped)),
            Err(ModelError::Invalid(errors)) => {
                // A scratch copy, never stored or sent: the entries that do
                // not read are taken out so that the rest can be read.
                let mut copy = scratch.take().unwrap_or_else(|| doc.clone());
                let mut removed = false;
                {
                    let mut tx = copy.transaction();
                    for e in &errors {
                        let mut parts = e.path.split('/');
                        let (Some(section), Some(key)) = (parts.next(), parts.next()) else {
                            continue;
                        };
                        if !["answers", "findings", "photos", "submissions"].contains(&section) {
                            continue;
                        }
                        let Ok(Some((Value::Object(ObjType::Map), obj))) = tx.get(ROOT, section)
                        else {
                            continue;
                        };
                        if tx.get(&obj, key).ok().flatten().is_some()
                            && tx.delete(&obj, key).is_ok()
                        {
                            removed = true;
                            dropped
                                .entry(format!("{section}/{key}"))
                                .or_insert_with(|| e.message.clone());
                        }
                    }
                    tx.commit();
                }
                if !removed {
                    return Err(ModelError::Invalid(errors).to_string());
                }
                scratch = Some(copy);
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the inspection does not read".into())
}

fn same_answer(a: &Answer, b: &Answer) -> bool {
    a.value == b.value && a.fields == b.fields && a.evidence == b.evidence && a.note == b.note
}

fn plan_inspection(
    v: &Views,
    registry: &TemplateRegistry,
    who: &PeerInfo,
    now_ms: i64,
) -> std::result::Result<Vec<Piece>, String> {
    let (mine, mine_dropped) = read_inspection(&v.intent, registry)?;
    let (base, base_dropped) = match &v.base {
        Some(b) => read_inspection(b, registry)?,
        None => (empty_like(&mine), BTreeMap::new()),
    };
    let (current, _) = read_inspection(&v.current, registry)?;
    let mut pieces = Vec::new();

    // Work that does not even read as the user saw it.
    for (path, reason) in &mine_dropped {
        if base_dropped.contains_key(path) {
            continue;
        }
        let kind = match path.split('/').next() {
            Some("answers") => "answer",
            Some("findings") => "finding",
            Some("photos") => "photo",
            _ => "submission",
        };
        let name = path.split('/').nth(1).unwrap_or_default();
        pieces.push(Piece {
            key: path.clone(),
            kind,
            label: format!("{kind} {}", short(name)),
            step: stuck(path, Some("invalid"), reason.clone()),
        });
    }

    // Findings first: photos and answers may refer to them.
    for (fid, f) in &mine.findings {
        let key = format!("findings/{fid}");
        let was = base.findings.get(fid);
        if was == Some(f) {
            continue;
        }
        let label = format!("finding \"{}\"", f.title);
        match (was, current.findings.get(fid)) {
            (None, None) => {
                let (fid, f) = (fid.clone(), f.clone());
                pieces.push(Piece {
                    key,
                    kind: "finding",
                    label,
                    step: Step::Write(Box::new(move |tx| model::add_finding(tx, &fid, &f))),
                });
            }
            (was, Some(now)) => {
                let was = was.unwrap_or(now);
                finding_edits(&mut pieces, fid, was, f, now, &key, &label);
            }
            (Some(_), None) => pieces.push(Piece {
                key,
                kind: "finding",
                label,
                step: stuck(
                    &format!("findings/{fid}"),
                    None,
                    "the finding is no longer in the inspection",
                ),
            }),
        }
    }

    for (sha, p) in &mine.photos {
        let key = format!("photos/{sha}");
        let was = base.photos.get(sha);
        if was == Some(p) {
            continue;
        }
        let label = match &p.caption {
            Some(c) => format!("photo {} \"{c}\"", short(sha)),
            None => format!("photo {}", short(sha)),
        };
        let step = match (was, current.photos.get(sha)) {
            (None, None) => {
                let p: PhotoRef = p.clone();
                Step::Write(Box::new(move |tx| model::add_photo(tx, &p)))
            }
            (was, Some(now)) => {
                let was_deleted = was.map_or(now.deleted, |w| w.deleted);
                if p.deleted != was_deleted && now.deleted != p.deleted {
                    let (sha, deleted) = (sha.clone(), p.deleted);
                    Step::Write(Box::new(move |tx| {
                        if deleted {
                            model::delete_photo(tx, &sha)
                        } else {
                            model::restore_photo(tx, &sha)
                        }
                    }))
                } else {
                    Step::There
                }
            }
            (Some(_), None) => stuck(&key, None, "the photo is no longer in the inspection"),
        };
        pieces.push(Piece {
            key,
            kind: "photo",
            label,
            step,
        });
    }

    let items: BTreeSet<&String> = mine.answers.keys().chain(base.answers.keys()).collect();
    for item in items {
        let key = format!("answers/{item}");
        if mine_dropped.contains_key(&key) {
            continue;
        }
        let (now_a, was) = (mine.answers.get(item), base.answers.get(item));
        if now_a == was {
            continue;
        }
        let there = current.answers.get(item);
        let (label, step) = match now_a {
            Some(a) => {
                let label = format!("answer {item} = {}", answer::format_value(&a.value));
                let step = if there.is_some_and(|t| same_answer(t, a)) {
                    Step::There
                } else if let Some(t) = there.filter(|t| t.at > a.at) {
                    // Answered again since (by a teammate, or here): the
                    // older refused answer does not silently replace it.
                    stuck(
                        &key,
                        None,
                        format!(
                            "{} answered {item} later ({}); answer it again to change it",
                            t.by,
                            answer::format_value(&t.value)
                        ),
                    )
                } else {
                    let (item, a) = (item.clone(), a.clone());
                    Step::Write(Box::new(move |tx| model::set_answer(tx, &item, &a)))
                };
                (label, step)
            }
            None => {
                let label = format!("answer {item} cleared");
                let step = if there.is_none() {
                    Step::There
                } else {
                    let (item, by) = (item.clone(), who.user_id.clone());
                    Step::Write(Box::new(move |tx| {
                        model::clear_answer(tx, &item, &by, now_ms)
                    }))
                };
                (label, step)
            }
        };
        pieces.push(Piece {
            key,
            kind: "answer",
            label,
            step,
        });
    }

    for (sid, s) in &mine.submissions {
        if base.submissions.contains_key(sid) {
            continue;
        }
        let key = format!("submissions/{sid}");
        let step = if current.submissions.contains_key(sid) {
            Step::There
        } else {
            let (sid, s) = (sid.clone(), s.clone());
            Step::Write(Box::new(move |tx| {
                model::submit(tx, &sid, &s.by, s.at, s.note.as_deref())
            }))
        };
        pieces.push(Piece {
            key,
            kind: "submission",
            label: format!("submission {}", short(sid)),
            step,
        });
    }
    Ok(pieces)
}

/// An inspection with the same header and nothing else (the base of work
/// made on a document the server created in the same refused batch).
fn empty_like(i: &Inspection) -> Inspection {
    Inspection {
        header: i.header.clone(),
        answers: BTreeMap::new(),
        findings: BTreeMap::new(),
        photos: BTreeMap::new(),
        submissions: BTreeMap::new(),
        decisions: BTreeMap::new(),
        comments: BTreeMap::new(),
        seen: Default::default(),
    }
}

/// The user's edits of an existing finding (`was` → `mine`), replayed on
/// `now`: one piece for the fields, photos and tombstone, one for the note.
fn finding_edits(
    pieces: &mut Vec<Piece>,
    fid: &str,
    was: &Finding,
    mine: &Finding,
    now: &Finding,
    key: &str,
    label: &str,
) {
    let title = (mine.title != was.title && now.title != mine.title).then(|| mine.title.clone());
    let severity =
        (mine.severity != was.severity && now.severity != mine.severity).then_some(mine.severity);
    let item =
        (mine.item_id != was.item_id && now.item_id != mine.item_id).then(|| mine.item_id.clone());
    let attach: Vec<String> = mine
        .photos
        .difference(&was.photos)
        .filter(|s| !now.photos.contains(*s))
        .cloned()
        .collect();
    let detach: Vec<String> = was
        .photos
        .difference(&mine.photos)
        .filter(|s| now.photos.contains(*s))
        .cloned()
        .collect();
    let deleted =
        (mine.deleted != was.deleted && now.deleted != mine.deleted).then_some(mine.deleted);
    let fields_changed = mine.title != was.title
        || mine.severity != was.severity
        || mine.item_id != was.item_id
        || mine.photos != was.photos
        || mine.deleted != was.deleted;
    if fields_changed {
        let nothing = title.is_none()
            && severity.is_none()
            && item.is_none()
            && attach.is_empty()
            && detach.is_empty()
            && deleted.is_none();
        let step = if nothing {
            Step::There
        } else {
            let fid = fid.to_owned();
            Step::Write(Box::new(move |tx| {
                if let Some(t) = &title {
                    model::update_finding_title(tx, &fid, t)?;
                }
                if let Some(s) = severity {
                    model::update_finding_severity(tx, &fid, s)?;
                }
                if let Some(i) = &item {
                    model::update_finding_item(tx, &fid, i.as_deref())?;
                }
                for sha in &attach {
                    model::add_finding_photo(tx, &fid, sha)?;
                }
                for sha in &detach {
                    model::remove_finding_photo(tx, &fid, sha)?;
                }
                match deleted {
                    Some(true) => model::delete_finding(tx, &fid)?,
                    Some(false) => model::restore_finding(tx, &fid)?,
                    None => {}
                }
                Ok(())
            }))
        };
        pieces.push(Piece {
            key: key.to_owned(),
            kind: "finding",
            label: format!("changes to {label}"),
            step,
        });
    }
    if mine.note != was.note {
        let note_key = format!("{key}/note");
        let step = if now.note == mine.note {
            Step::There
        } else {
            match rebase_text(&was.note, &mine.note, &now.note) {
                Some((pos, del, ins)) => {
                    let fid = fid.to_owned();
                    Step::Write(Box::new(move |tx| {
                        model::splice_finding_note(tx, &fid, pos, del, &ins)
                    }))
                }
                None => stuck(
                    &note_key,
                    None,
                    "the note was changed on the server where you changed it; edit it again",
                ),
            }
        };
        pieces.push(Piece {
            key: note_key,
            kind: "finding",
            label: format!("note of {label}"),
            step,
        });
    }
}

/// The user's splice of a text (`was` → `mine`) placed in `now`, a later
/// version of `was`: at the same place if the text before it is unchanged,
/// counted from the end if the text after it is; `None` when the spot
/// itself changed.
fn rebase_text(was: &str, mine: &str, now: &str) -> Option<(usize, usize, String)> {
    let (pos, del, ins) = minimal_splice(was, mine);
    let w: Vec<char> = was.chars().collect();
    let n: Vec<char> = now.chars().collect();
    let removed = &w[pos..pos + del];
    let before = &w[..pos];
    let after = &w[pos + del..];
    if n.len() >= pos + del && &n[..pos] == before && &n[pos..pos + del] == removed {
        return Some((pos, del, ins));
    }
    if n.len() >= after.len() + del {
        let start = n.len() - after.len() - del;
        if &n[start + del..] == after && &n[start..start + del] == removed {
            return Some((start, del, ins));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_splice_lands_where_the_text_around_it_is_unchanged() {
        // Appended, while a teammate edited the start.
        assert_eq!(
            rebase_text("abc", "abc def", "Xabc"),
            Some((4, 0, " def".into()))
        );
        // Edited at the start, while a teammate appended.
        assert_eq!(
            rebase_text("abc def", "xbc def", "abc def ghi"),
            Some((0, 1, "x".into()))
        );
        // The same spot changed on both sides.
        assert_eq!(rebase_text("abc", "aXc", "aYc"), None);
    }
}
