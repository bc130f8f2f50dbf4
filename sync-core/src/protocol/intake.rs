//! Taking in a batch of changes from a peer: each change judged on its own,
//! in causal order; the ones that break a rule are refused together with
//! the changes that depend on them, the others are kept.
//!
//! The same function checks a tablet's own edits before it commits them
//! (with its own identity), so an honest edit is never invalid when made.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::{Automerge, Change, ChangeHash, ReadDoc};

use super::hub::Access;
use crate::ids::DocumentId;
use crate::policy::{ChangeCheck, Rule, Violation};

/// Rounds of "validate, refuse what broke it, validate again".
const VALIDATION_ROUNDS: usize = 3;

/// What became of a batch.
#[derive(Debug)]
pub struct Intake {
    /// The document with every accepted change applied.
    pub doc: Automerge,
    /// Accepted changes, in causal order.
    pub accepted: Vec<Change>,
    /// Refused changes (breaking a rule, or depending on one that does), in
    /// the order they were judged.
    pub refused: Vec<ChangeHash>,
    /// Why: one or more violations per change that broke a rule itself
    /// (changes refused only for depending on a refused change carry one
    /// [`Rule::Depends`] violation).
    pub violations: Vec<Violation>,
    /// Changes whose dependencies are neither in the document nor in the
    /// batch: not judged, not applied.
    pub waiting: Vec<Change>,
}

impl Intake {
    pub fn is_refused(&self) -> bool {
        !self.refused.is_empty()
    }
}

/// Splits the `changes` of a sync message into changes. Each item holds
/// one or more automerge chunks back to back: change chunks (plain or
/// compressed) or a whole document (whose changes are all returned).
pub fn split_changes<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<Change>, String> {
    let mut out = Vec::new();
    for item in items {
        let mut rest = item;
        while !rest.is_empty() {
            let (chunk, tail) = next_chunk(rest)?;
            rest = tail;
            // Chunk type: 0 document, 1 change, 2 compressed change.
            match chunk.get(8) {
                Some(0) => {
                    let doc = catch_unwind(|| Automerge::load(chunk))
                        .map_err(|_| "a document chunk could not be read".to_owned())?
                        .map_err(|e| format!("a document chunk could not be read: {e}"))?;
                    out.extend(doc.get_changes(&[]));
                }
                Some(1 | 2) => {
                    let change = catch_unwind(|| Change::try_from(chunk))
                        .map_err(|_| "a change could not be read".to_owned())?
                        .map_err(|e| format!("a change could not be read: {e}"))?;
                    out.push(change);
                }
                other => return Err(format!("unknown automerge chunk type {other:?}")),
            }
        }
    }
    Ok(out)
}

/// The first chunk of `bytes` (magic, checksum, type, LEB128 length, data).
fn next_chunk(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    if bytes.len() < 10 || bytes[..4] != MAGIC {
        return Err("not an automerge chunk".to_owned());
    }
    let mut len: u64 = 0;
    let mut shift = 0u32;
    let mut pos = 9;
    loop {
        let b = *bytes.get(pos).ok_or("truncated automerge chunk")?;
        pos += 1;
        if shift > 63 {
            return Err("bad automerge chunk length".to_owned());
        }
        len |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| pos.checked_add(l))
        .filter(|end| *end <= bytes.len())
        .ok_or("truncated automerge chunk")?;
    Ok((&bytes[..end], &bytes[end..]))
}

/// Judges `incoming` against `before` (see the module docs).
pub fn intake<A: Access>(
    access: &A,
    who: &A::Identity,
    id: &DocumentId,
    before: &Automerge,
    incoming: Vec<Change>,
) -> Intake {
    // New changes only, each once.
    let mut seen = HashSet::new();
    let candidates: Vec<Change> = incoming
        .into_iter()
        .filter(|c| seen.insert(c.hash()))
        .collect();
    let hashes: Vec<ChangeHash> = candidates.iter().map(Change::hash).collect();
    let missing: HashSet<ChangeHash> = before.get_missing_deps(&hashes).into_iter().collect();
    let mut pending: HashMap<ChangeHash, Change> = candidates
        .into_iter()
        .filter(|c| missing.contains(&c.hash()))
        .map(|c| (c.hash(), c))
        .collect();

    // Kahn's algorithm over the batch: a change is ready once each of its
    // dependencies is in the document or was judged in this batch.
    let mut blocking: HashMap<ChangeHash, usize> = HashMap::new();
    let mut dependents: HashMap<ChangeHash, Vec<ChangeHash>> = HashMap::new();
    let deps_all: Vec<ChangeHash> = pending.values().flat_map(|c| c.deps().to_vec()).collect();
    let absent: HashSet<ChangeHash> = before.get_missing_deps(&deps_all).into_iter().collect();
    let mut waiting_roots = Vec::new();
    for (hash, change) in &pending {
        let mut n = 0;
        for dep in change.deps() {
            if absent.contains(dep) {
                if pending.contains_key(dep) {
                    n += 1;
                    dependents.entry(*dep).or_default().push(*hash);
                } else {
                    waiting_roots.push(*hash);
                }
            }
        }
        blocking.insert(*hash, n);
    }
    // Changes that wait on something absent, and everything after them, wait.
    let mut waiting_set: HashSet<ChangeHash> = HashSet::new();
    let mut stack = waiting_roots;
    while let Some(h) = stack.pop() {
        if waiting_set.insert(h) {
            stack.extend(dependents.get(&h).into_iter().flatten().copied());
        }
    }
    let mut ready: VecDeque<ChangeHash> = {
        let mut r: Vec<ChangeHash> = blocking
            .iter()
            .filter(|(h, n)| **n == 0 && !waiting_set.contains(*h))
            .map(|(h, _)| *h)
            .collect();
        r.sort();
        r.into()
    };

    let mut work = before.clone();
    let mut accepted: Vec<(Change, ChangeCheck)> = Vec::new();
    let mut refused: Vec<ChangeHash> = Vec::new();
    let mut refused_set: HashSet<ChangeHash> = HashSet::new();
    let mut violations = Vec::new();
    while let Some(hash) = ready.pop_front() {
        let Some(change) = pending.remove(&hash) else {
            continue;
        };
        if let Some(dep) = change.deps().iter().find(|d| refused_set.contains(*d)) {
            violations.push(depends(&change, dep, access.role_of(who)));
            refused.push(hash);
            refused_set.insert(hash);
        } else {
            let verdict = catch_unwind(AssertUnwindSafe(|| {
                access.check_change(who, id, &work, &change)
            }))
            .unwrap_or_else(|_| Err(vec![unreadable(&change, access.role_of(who))]));
            match verdict {
                Ok(check) => {
                    let applied =
                        catch_unwind(AssertUnwindSafe(|| work.apply_changes([change.clone()])));
                    match applied {
                        Ok(Ok(())) => accepted.push((change, check)),
                        other => {
                            if other.is_err() {
                                // A panic may leave the copy half-changed.
                                work = rebuild(before, &accepted);
                            }
                            violations.push(unreadable(&change, access.role_of(who)));
                            refused.push(hash);
                            refused_set.insert(hash);
                        }
                    }
                }
                Err(v) => {
                    violations.extend(v);
                    refused.push(hash);
                    refused_set.insert(hash);
                }
            }
        }
        let mut next: Vec<ChangeHash> = Vec::new();
        for d in dependents.get(&hash).into_iter().flatten() {
            if let Some(n) = blocking.get_mut(d) {
                *n = n.saturating_sub(1);
                if *n == 0 && !waiting_set.contains(d) {
                    next.push(*d);
                }
            }
        }
        next.sort();
        ready.extend(next);
    }

    // The document as a whole after the batch: problems the batch caused
    // refuse the changes that caused them (and their dependents).
    for round in 0..=VALIDATION_ROUNDS {
        if accepted.is_empty() {
            break;
        }
        let found = catch_unwind(AssertUnwindSafe(|| {
            access.check_result(who, id, &work, &accepted)
        }))
        .unwrap_or_else(|_| {
            accepted
                .iter()
                .map(|(c, _)| unreadable(c, access.role_of(who)))
                .collect()
        });
        if found.is_empty() {
            break;
        }
        let mut blamed: HashSet<ChangeHash> = found.iter().map(|v| v.change).collect();
        if round == VALIDATION_ROUNDS {
            // Still not valid: refuse the whole batch rather than loop.
            blamed.extend(accepted.iter().map(|(c, _)| c.hash()));
        }
        violations.extend(found);
        let mut kept = Vec::new();
        for (change, check) in accepted {
            let hash = change.hash();
            if blamed.contains(&hash) {
                refused.push(hash);
                refused_set.insert(hash);
            } else if let Some(dep) = change.deps().iter().find(|d| refused_set.contains(*d)) {
                violations.push(depends(&change, dep, access.role_of(who)));
                refused.push(hash);
                refused_set.insert(hash);
            } else {
                kept.push((change, check));
            }
        }
        accepted = kept;
        work = rebuild(before, &accepted);
    }

    // Whatever was not judged waits for its dependencies.
    let mut waiting: Vec<Change> = pending.into_values().collect();
    waiting.sort_by_key(Change::hash);
    Intake {
        doc: work,
        accepted: accepted.into_iter().map(|(c, _)| c).collect(),
        refused,
        violations,
        waiting,
    }
}

fn rebuild(before: &Automerge, accepted: &[(Change, ChangeCheck)]) -> Automerge {
    let mut doc = before.clone();
    // These changes applied one by one a moment ago; applying them again
    // cannot fail in a way that matters here.
    let _ = doc.apply_changes(accepted.iter().map(|(c, _)| c.clone()));
    doc
}

fn depends(change: &Change, dep: &ChangeHash, role: crate::policy::Role) -> Violation {
    Violation {
        path: String::new(),
        role,
        change: change.hash(),
        rule: Rule::Depends,
        reason: format!("depends on change {dep}, which was refused"),
    }
}

fn unreadable(change: &Change, role: crate::policy::Role) -> Violation {
    Violation {
        path: String::new(),
        role,
        change: change.hash(),
        rule: Rule::Object,
        reason: "the change could not be applied to this document".to_owned(),
    }
}
