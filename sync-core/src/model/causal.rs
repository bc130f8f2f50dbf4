//! Causal order between the append-only records of a document.
//!
//! A status must not depend on a time a writer chose (`at` is for display):
//! a tablet with its clock in the year 9999 would otherwise win every
//! comparison forever. What a verdict (a review decision, a verification) is
//! about is instead read from the document's history: the records that were
//! in the document when the change holding the verdict was made, i.e. the
//! records visible at heads = [that change's hash].
//!
//! Readers that derive statuses therefore need more than [`ReadDoc`]: they
//! need the change that holds an operation, which automerge exposes on
//! [`Automerge`], [`AutoCommit`] and transactions (`hash_for_opid`) but not on
//! the `ReadDoc` trait. [`CausalDoc`] is that one method.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::{OwnedTransaction, Transaction};
use automerge::{AutoCommit, Automerge, ChangeHash, ObjId, ObjType, ReadDoc, Value};

/// A document that can name the change holding an operation.
///
/// Implemented for [`Automerge`], [`AutoCommit`] and both transaction types,
/// so readers accept any of them.
pub trait CausalDoc: ReadDoc {
    /// The hash of the change that holds the operation `op` (for an object,
    /// the operation that created it). `None` for the root, for an operation
    /// this document does not hold, and for an operation of the transaction
    /// still open on this document.
    fn change_of(&self, op: &ObjId) -> Option<ChangeHash>;
}

impl CausalDoc for Automerge {
    fn change_of(&self, op: &ObjId) -> Option<ChangeHash> {
        self.hash_for_opid(op)
    }
}

impl CausalDoc for AutoCommit {
    fn change_of(&self, op: &ObjId) -> Option<ChangeHash> {
        self.hash_for_opid(op)
    }
}

impl CausalDoc for Transaction<'_> {
    fn change_of(&self, op: &ObjId) -> Option<ChangeHash> {
        self.hash_for_opid(op)
    }
}

impl CausalDoc for OwnedTransaction {
    fn change_of(&self, op: &ObjId) -> Option<ChangeHash> {
        self.hash_for_opid(op)
    }
}

/// What each verdict had seen when it was written: for an inspection, which
/// submissions and earlier decisions each review decision had seen; for an
/// action, which responses and earlier verifications each verification had
/// seen. Read from the document's change graph, never from a stored field.
///
/// "Seen" means: in the history of the change that wrote the verdict (for
/// two records of one change, or of the transaction still open, the one
/// written first). The relation is a strict partial order: records written
/// concurrently have not seen each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// verdict id → ids of the claims (submissions, responses) it had seen.
    /// Every verdict has an entry, possibly empty.
    pub claims: BTreeMap<String, BTreeSet<String>>,
    /// verdict id → ids of the other verdicts it had seen (the ones it
    /// supersedes). Every verdict has an entry, possibly empty.
    pub verdicts: BTreeMap<String, BTreeSet<String>>,
}

impl Seen {
    /// Whether some verdict had seen the claim `claim`.
    pub fn is_seen(&self, claim: &str) -> bool {
        self.claims.values().any(|seen| seen.contains(claim))
    }

    /// The verdicts no other verdict had seen: the causally latest ones
    /// (several when they were written concurrently).
    pub fn latest(&self) -> BTreeSet<&str> {
        let superseded: BTreeSet<&str> = self
            .verdicts
            .values()
            .flat_map(|s| s.iter().map(String::as_str))
            .collect();
        self.verdicts
            .keys()
            .map(String::as_str)
            .filter(|v| !superseded.contains(v))
            .collect()
    }
}

/// The object ids of the values readers show in `map` for each of `ids`
/// (ids whose value is not a map are left out; readers refuse them anyway).
fn winners<'i>(
    doc: &impl ReadDoc,
    map: &ObjId,
    ids: impl Iterator<Item = &'i String>,
) -> Vec<(String, ObjId)> {
    ids.filter_map(|id| match doc.get(map, id.as_str()) {
        Ok(Some((Value::Object(ObjType::Map), oid))) => Some((id.clone(), oid)),
        _ => None,
    })
    .collect()
}

fn counter(op: &ObjId) -> u64 {
    match op {
        ObjId::Id(counter, _, _) => *counter,
        ObjId::Root => 0,
    }
}

/// For each verdict, the records of `records` (entries of the map `map`) it
/// had seen, leaving the verdict itself out.
fn seen_in(
    doc: &impl CausalDoc,
    verdicts: &[(String, ObjId)],
    map: &ObjId,
    records: &[(String, ObjId)],
) -> BTreeMap<String, BTreeSet<String>> {
    // One look at the map per change: verdicts usually have a change each,
    // but a change may hold several.
    let mut at_change: BTreeMap<ChangeHash, BTreeMap<String, ObjId>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (vid, vop) in verdicts {
        let vchange = doc.change_of(vop);
        let mut seen = BTreeSet::new();
        for (rid, rop) in records {
            if rop == vop {
                continue;
            }
            let rchange = doc.change_of(rop);
            let saw = match vchange {
                // The verdict is in the open transaction, or in the same
                // change as the record: everything committed before it and
                // every operation of its own change with a lower counter is
                // in its history (operation counters grow within a change,
                // and the open transaction's exceed every committed one).
                None => counter(rop) < counter(vop),
                Some(h) if rchange == Some(h) => counter(rop) < counter(vop),
                Some(h) => {
                    let visible = at_change.entry(h).or_insert_with(|| {
                        doc.map_range_at(map, .., &[h])
                            .map(|item| {
                                let id = item.id();
                                (item.key.into_owned(), id)
                            })
                            .collect()
                    });
                    match visible.get(rid) {
                        Some(op) if op == rop => true,
                        // Another value shows at that key at `h`; the
                        // record may still be one of several values there.
                        Some(_) => doc
                            .get_all_at(map, rid.as_str(), &[h])
                            .is_ok_and(|all| all.iter().any(|(_, op)| op == rop)),
                        None => false,
                    }
                }
            };
            if saw {
                seen.insert(rid.clone());
            }
        }
        out.insert(vid.clone(), seen);
    }
    out
}

/// Computes [`Seen`] for the verdicts of `verdict_map` (ids `verdict_ids`)
/// over the claims of `claim_map` (ids `claim_ids`). A missing map counts as
/// empty.
pub(crate) fn seen<'i>(
    doc: &impl CausalDoc,
    claim_map: Option<&ObjId>,
    claim_ids: impl Iterator<Item = &'i String>,
    verdict_map: Option<&ObjId>,
    verdict_ids: impl Iterator<Item = &'i String>,
) -> Seen {
    let Some(verdict_map) = verdict_map else {
        return Seen::default();
    };
    let verdicts = winners(doc, verdict_map, verdict_ids);
    let claims = match claim_map {
        Some(map) => {
            let records = winners(doc, map, claim_ids);
            seen_in(doc, &verdicts, map, &records)
        }
        None => verdicts
            .iter()
            .map(|(id, _)| (id.clone(), BTreeSet::new()))
            .collect(),
    };
    Seen {
        claims,
        verdicts: seen_in(doc, &verdicts, verdict_map, &verdicts),
    }
}
