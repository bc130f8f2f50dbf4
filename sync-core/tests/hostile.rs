//! Property: honest peers and hostile peers on the same server.
//!
//! The server creates two inspections (team A with a lead, team B without)
//! and a corrective action for each. Honest peers — the secretariat, two
//! inspectors of team A (one the lead), one of team B and the inspected
//! unit — make random valid edits offline and sync through a network that
//! drops, duplicates and reorders frames. Hostile peers, each logged in as
//! a real user of the system (an inspector of each team, a second account
//! of the unit), send changes that break the rules: under another peer's
//! actor (its next sequence number), signed with another user's name
//! (`by`), dated far in the future, replacing a whole section, deleting an
//! entry, editing someone else's record, missing their dependencies, and
//! floods.
//!
//! Checked: every rule-breaking change is refused the moment it arrives
//! and nothing of it is stored (the server's store is scanned change by
//! change: no peer writes at the root, deletes a map key, or signs `by`
//! with another name; every actor is bound to the user who used it first);
//! no honest change is refused; once the hostile peers are gone every
//! honest peer converges with the server on every document it may read,
//! with all its work stored; and a date far in the future decides nothing
//! (the secretariat's last decision and verification, made after seeing
//! everything, decide the statuses).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::transaction::{Transactable, Transaction};
use automerge::{ActorId, Automerge, Change, ChangeHash, ObjType, ROOT, ReadDoc, ScalarValue};
use proptest::prelude::*;
use support::{Frame, Net, Rng, client_actor, in_tx, peer, server_actor};
use sync_core::access::{DocumentRules, PeerInfo, SERVER_USER};
use sync_core::ids::DocumentId;
use sync_core::model::{
    self, ActionAssignment, ActionResponse, ActionStatus, Answer, CommentTarget, Finding,
    InspectionHeader, InspectionStatus, MemberRole, ModelError, PhotoMime, PhotoRef, Priority,
    ReviewState, Severity, Verification, VerificationDecision,
};
use sync_core::policy::{Role, Rule};
use sync_core::protocol::hub::{ConnId, Event};
use sync_core::protocol::{ErrorCode, Message};
use sync_core::template::{AnswerValue, TemplateRegistry, Tri};

const INSPECTION_A: DocumentId = DocumentId::from_bytes([0xa1; 16]);
const INSPECTION_B: DocumentId = DocumentId::from_bytes([0xb1; 16]);
const ACTION_A: DocumentId = DocumentId::from_bytes([0xa2; 16]);
const ACTION_B: DocumentId = DocumentId::from_bytes([0xb2; 16]);
const DOCS: [DocumentId; 4] = [INSPECTION_A, INSPECTION_B, ACTION_A, ACTION_B];

const SECRETARIAT: usize = 0;
const LEAD_A: usize = 1;
const MEMBER_A: usize = 2;
const MEMBER_B: usize = 3;
const UNIT: usize = 4;
const HONEST: [usize; 5] = [SECRETARIAT, LEAD_A, MEMBER_A, MEMBER_B, UNIT];
const HOSTILE_A: usize = 5;
const HOSTILE_B: usize = 6;
const HOSTILE_UNIT: usize = 7;
const HOSTILE: [usize; 3] = [HOSTILE_A, HOSTILE_B, HOSTILE_UNIT];

/// Changes held per document and connection while their dependencies are
/// missing (small, so that floods reach it cheaply).
const WAITING_CAP: usize = 16;

/// 2100-01-01.
const FAR_FUTURE: i64 = 4_102_444_800_000;

/// The template registry, parsed once.
fn registry() -> &'static TemplateRegistry {
    static REGISTRY: OnceLock<TemplateRegistry> = OnceLock::new();
    REGISTRY.get_or_init(support::registry)
}

fn who() -> Vec<PeerInfo> {
    vec![
        peer("u-sec", Role::Secretariat, None, None),
        peer("u-a1", Role::Inspector, Some("t-a"), None),
        peer("u-a2", Role::Inspector, Some("t-a"), None),
        peer("u-b1", Role::Inspector, Some("t-b"), None),
        peer("u-unit", Role::Unit, None, Some("00004")),
        peer("u-ha", Role::Inspector, Some("t-a"), None),
        peer("u-hb", Role::Inspector, Some("t-b"), None),
        peer("u-hunit", Role::Unit, None, Some("00004")),
    ]
}

fn header(team: &str, members: &[(&str, MemberRole)]) -> InspectionHeader {
    InspectionHeader {
        unit_code: "00004".into(),
        unit_name: "Phường Ba Đình".into(),
        template_id: "DA06-HN-2025-v1".into(),
        template_version: 1,
        team_id: team.into(),
        members: members.iter().map(|(u, r)| ((*u).to_owned(), *r)).collect(),
        scheduled_date: "2025-10-15".into(),
        created_at: 1,
    }
}

fn assignment(inspection: DocumentId, team: &str) -> ActionAssignment {
    ActionAssignment {
        inspection_id: inspection,
        finding_id: "f-0".into(),
        unit_code: "00004".into(),
        team_id: Some(team.into()),
        title: "Kiện toàn tổ công tác".into(),
        due_date: "2025-12-31".into(),
        priority: Priority::Normal,
        created_by: SERVER_USER.into(),
        created_at: 2,
    }
}

/// The inspection and the action of an inspector's team.
fn team_docs(who: &PeerInfo) -> (DocumentId, DocumentId) {
    if who.team_id.as_deref() == Some("t-a") {
        (INSPECTION_A, ACTION_A)
    } else {
        (INSPECTION_B, ACTION_B)
    }
}

// ----- plans -------------------------------------------------------------

/// One honest edit, read according to the peer's role.
#[derive(Debug, Clone)]
struct Edit {
    kind: u8,
    a: u8,
    b: u8,
    text: String,
}

fn edit() -> impl Strategy<Value = Edit> {
    (any::<u8>(), any::<u8>(), any::<u8>(), "[a-zđ ]{1,6}").prop_map(|(kind, a, b, text)| Edit {
        kind,
        a,
        b,
        text,
    })
}

/// One hostile move.
#[derive(Debug, Clone)]
enum Attack {
    /// A change under another peer's actor, with that actor's next seq.
    ForgeActor(u8),
    /// A record signed with another user's id.
    ForgeBy(u8),
    /// A record of its own dated far in the future (allowed; decides nothing).
    FarFuture,
    /// `doc.<section> = {}` (or `kind`, `schema`).
    ReplaceSection(u8),
    /// Deletes an entry key (another's finding, answer, response, …).
    DeleteEntry(u8),
    /// Edits another's record (a submission, a response, a `by`, …).
    EditRecord(u8),
    /// Changes whose first dependency is never sent.
    Orphans(u8),
    /// More changes missing their dependencies than the server holds.
    OrphanFlood,
    /// Many valid changes of its own in one message.
    Flood(u8),
}

fn attack() -> impl Strategy<Value = Attack> {
    prop_oneof![
        any::<u8>().prop_map(Attack::ForgeActor),
        any::<u8>().prop_map(Attack::ForgeBy),
        Just(Attack::FarFuture),
        any::<u8>().prop_map(Attack::ReplaceSection),
        any::<u8>().prop_map(Attack::DeleteEntry),
        any::<u8>().prop_map(Attack::EditRecord),
        (1u8..6).prop_map(Attack::Orphans),
        Just(Attack::OrphanFlood),
        (5u8..25).prop_map(Attack::Flood),
    ]
}

#[derive(Debug, Clone)]
struct Round {
    /// Per honest peer (in `HONEST` order).
    edits: Vec<Vec<Edit>>,
    online: Vec<bool>,
    /// Per hostile peer (in `HOSTILE` order), each with the document it aims at.
    attacks: Vec<Vec<(bool, Attack)>>,
    seed: u64,
    drop_pct: u32,
    dup_pct: u32,
    restart_server: bool,
}

fn rounds() -> impl Strategy<Value = Vec<Round>> {
    let round = (
        prop::collection::vec(prop::collection::vec(edit(), 0..3), HONEST.len()),
        prop::collection::vec(any::<bool>(), HONEST.len()),
        prop::collection::vec(
            prop::collection::vec((any::<bool>(), attack()), 0..3),
            HOSTILE.len(),
        ),
        any::<u64>(),
        0u32..15,
        0u32..10,
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(edits, online, attacks, seed, drop_pct, dup_pct, restart_server)| Round {
                edits,
                online,
                attacks,
                seed,
                drop_pct,
                dup_pct,
                restart_server,
            },
        );
    prop::collection::vec(round, 1..4)
}

// ----- the world -----------------------------------------------------------

struct World {
    net: Net,
    /// Fresh ids and times for honest edits.
    counter: u64,
    /// Every change a hostile peer sent that breaks a rule or was never
    /// meant to be judged: none may be stored.
    forged: BTreeMap<ChangeHash, (usize, DocumentId, &'static str)>,
    /// Attacks carried out, by name (to see that the plan exercised them).
    carried_out: BTreeMap<&'static str, usize>,
}

impl World {
    fn new() -> Self {
        let mut net = Net::with_server_config(who(), |c| {
            c.max_waiting_changes_per_document = WAITING_CAP;
        });
        net.server_create(INSPECTION_A, |tx| {
            model::init_inspection(
                tx,
                &header(
                    "t-a",
                    &[
                        ("u-a1", MemberRole::Lead),
                        ("u-a2", MemberRole::Member),
                        ("u-ha", MemberRole::Member),
                    ],
                ),
            )
        });
        net.server_create(INSPECTION_B, |tx| {
            model::init_inspection(
                tx,
                &header(
                    "t-b",
                    &[("u-b1", MemberRole::Member), ("u-hb", MemberRole::Member)],
                ),
            )
        });
        net.server_create(ACTION_A, |tx| {
            model::init_action(tx, &assignment(INSPECTION_A, "t-a"))
        });
        net.server_create(ACTION_B, |tx| {
            model::init_action(tx, &assignment(INSPECTION_B, "t-b"))
        });
        Self {
            net,
            counter: 100,
            forged: BTreeMap::new(),
            carried_out: BTreeMap::new(),
        }
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn may_read(&self, i: usize, id: &DocumentId) -> bool {
        let rules: &DocumentRules = self.net.server.hub.access();
        self.net
            .server
            .hub
            .document(id)
            .is_some_and(|d| rules.can_read(&self.net.who[i], d))
    }

    /// Client `i` connects and asks for every document it may ever read.
    fn connect(&mut self, i: usize) {
        if !self.net.connected[i] {
            self.net.connect(i);
        }
        let wanted: Vec<DocumentId> = match self.net.who[i].role {
            Role::Secretariat | Role::Unit => DOCS.to_vec(),
            _ => {
                let (inspection, action) = team_docs(&self.net.who[i]);
                vec![inspection, action]
            }
        };
        for id in wanted {
            self.net.want(i, id);
        }
    }

    /// Delivers up to `n` frames in a random order, dropping and
    /// duplicating some; what is left stays on the wire.
    fn deliver_some(&mut self, rng: &mut Rng, n: usize, drop_pct: u32, dup_pct: u32) {
        for _ in 0..n {
            if self.net.wire.is_empty() {
                return;
            }
            let k = rng.below(self.net.wire.len() as u64) as usize;
            let f = self.net.wire.remove(k);
            let roll = rng.below(100) as u32;
            if roll < drop_pct {
                continue;
            }
            if roll < drop_pct + dup_pct {
                self.net.wire.push(f.clone());
            }
            self.net.deliver(f);
        }
    }
}

// ----- honest edits ----------------------------------------------------------

fn answer_value(item: u8, v: u8) -> (&'static str, AnswerValue) {
    match item % 6 {
        0 => ("A1", AnswerValue::YesNo(v.is_multiple_of(2))),
        1 => (
            "A2",
            AnswerValue::YesNoPartial([Tri::Yes, Tri::Partial, Tri::No][usize::from(v % 3)]),
        ),
        2 => (
            "A3",
            AnswerValue::Percentage {
                numerator: u64::from(v % 11),
                denominator: 10,
            },
        ),
        3 => ("A4", AnswerValue::Number(i64::from(v))),
        4 => ("G1", AnswerValue::Text(format!("Ghi chú {v}"))),
        _ => ("B8", AnswerValue::NotApplicable),
    }
}

/// How many values `<section>.<key>` holds (more than one: a conflict).
fn values_at(doc: &Automerge, section: &str, key: &str) -> usize {
    doc.get(ROOT, section)
        .ok()
        .flatten()
        .and_then(|(_, obj)| doc.get_all(&obj, key).ok())
        .map_or(0, |all| all.len())
}

/// The keys of a section (an empty list if it is not a map).
fn keys(doc: &Automerge, path: &[&str]) -> Vec<String> {
    let mut obj = ROOT;
    for key in path {
        match doc.get(&obj, *key).ok().flatten() {
            Some((automerge::Value::Object(ObjType::Map), id)) => obj = id,
            _ => return Vec::new(),
        }
    }
    doc.keys(&obj).collect()
}

/// The string at `path`, if there is one.
fn string_at(doc: &Automerge, path: &[&str]) -> Option<String> {
    let (last, parents) = path.split_last()?;
    let mut obj = ROOT;
    for key in parents {
        match doc.get(&obj, *key).ok().flatten() {
            Some((automerge::Value::Object(_), id)) => obj = id,
            _ => return None,
        }
    }
    let (v, id) = doc.get(&obj, *last).ok().flatten()?;
    model::string_at(doc, &v, &id)
}

fn pick<T: Clone>(items: &[T], k: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[usize::from(k) % items.len()].clone())
}

fn sha(owner: usize, n: u64) -> String {
    format!("{:02x}{:062x}", owner, n)
}

/// Honest peer `i` makes `e` on its own copy (skipped when it does not fit
/// what that peer holds).
fn honest_edit(w: &mut World, i: usize, e: &Edit) {
    let n = w.next();
    let at = n as i64 * 1_000;
    let me = w.net.who[i].clone();
    let user = me.user_id.clone();
    match me.role {
        Role::Secretariat => {
            let ids = [INSPECTION_A, INSPECTION_B];
            let id = ids[usize::from(e.a) % 2];
            match e.kind % 4 {
                0 => {
                    let state = if e.b.is_multiple_of(2) {
                        ReviewState::Accepted
                    } else {
                        ReviewState::Returned
                    };
                    w.net.try_edit(i, &id, |tx| {
                        model::review_decide(tx, &format!("d-{n}"), state, &user, at, None)
                    });
                }
                1 => {
                    let Some(doc) = w.net.client_doc(i, &id) else {
                        return;
                    };
                    let findings = keys(doc, &["findings"]);
                    let target = match e.b % 3 {
                        0 => CommentTarget::General,
                        1 => CommentTarget::Item("A2".into()),
                        _ => match pick(&findings, e.b) {
                            Some(f) => CommentTarget::Finding(f),
                            None => CommentTarget::General,
                        },
                    };
                    let text = format!("Nhận xét {}", e.text);
                    w.net.try_edit(i, &id, |tx| {
                        model::review_comment(tx, &format!("c-{n}"), &target, &text, &user, at)
                    });
                }
                2 => {
                    let Some(doc) = w.net.client_doc(i, &id) else {
                        return;
                    };
                    if let Some(c) = pick(&keys(doc, &["review", "comments"]), e.b) {
                        w.net.try_edit(i, &id, |tx| model::delete_comment(tx, &c));
                    }
                }
                _ => verify(w, i, [ACTION_A, ACTION_B][usize::from(e.a) % 2], n, e.b),
            }
        }
        Role::Unit => {
            let id = [ACTION_A, ACTION_B][usize::from(e.a) % 2];
            let response = ActionResponse {
                text: format!("Đã {}", e.text),
                evidence: BTreeSet::new(),
                done: e.b.is_multiple_of(2),
                by: user,
                at,
            };
            w.net.try_edit(i, &id, |tx| {
                model::respond_action(tx, &format!("r-{n}"), &response)
            });
        }
        _ => {
            let (id, action) = team_docs(&me);
            let Some(doc) = w.net.client_doc(i, &id) else {
                return;
            };
            let lead = model::read_inspection(doc, registry())
                .is_ok_and(|x| x.header.members.get(&user) == Some(&MemberRole::Lead));
            let findings = keys(doc, &["findings"]);
            match e.kind % 8 {
                0 | 1 => {
                    let (item, value) = answer_value(e.a, e.b);
                    if !lead && values_at(doc, "answers", item) > 1 {
                        // A conflict: the team lead settles it.
                        return;
                    }
                    let a = Answer {
                        value,
                        fields: BTreeMap::new(),
                        evidence: BTreeSet::new(),
                        note: None,
                        by: user,
                        at,
                    };
                    w.net.try_edit(i, &id, |tx| model::set_answer(tx, item, &a));
                }
                2 => {
                    let f = Finding {
                        item_id: Some("A2".into()),
                        title: format!("Phát hiện {n}"),
                        note: e.text.clone(),
                        severity: Severity::Low,
                        photos: BTreeSet::new(),
                        by: user,
                        at,
                        deleted: false,
                    };
                    w.net
                        .try_edit(i, &id, |tx| model::add_finding(tx, &format!("f-{n}"), &f));
                }
                3 => {
                    if let Some(f) = pick(&findings, e.a) {
                        let len = model::read_inspection(doc, registry())
                            .ok()
                            .and_then(|x| x.findings.get(&f).map(|f| f.note.chars().count()))
                            .unwrap_or(0);
                        let pos = usize::from(e.b) % (len + 1);
                        w.net.try_edit(i, &id, |tx| {
                            model::splice_finding_note(tx, &f, pos, 0, &e.text)
                        });
                    }
                }
                4 => {
                    if let Some(f) = pick(&findings, e.a) {
                        match e.b % 3 {
                            0 => w.net.try_edit(i, &id, |tx| {
                                model::update_finding_title(tx, &f, &format!("Tiêu đề {n}"))
                            }),
                            1 => w.net.try_edit(i, &id, |tx| model::delete_finding(tx, &f)),
                            _ => w.net.try_edit(i, &id, |tx| model::restore_finding(tx, &f)),
                        };
                    }
                }
                5 => {
                    let photo = PhotoRef {
                        sha256: sha(i, u64::from(e.a % 8)),
                        mime: PhotoMime::Jpeg,
                        bytes: 1_000 + u64::from(e.a),
                        width: Some(1600),
                        height: Some(1200),
                        taken_at: None,
                        item_id: Some("A4".into()),
                        finding_id: if e.b.is_multiple_of(2) {
                            pick(&findings, e.b)
                        } else {
                            None
                        },
                        caption: Some(e.text.clone()),
                        by: user,
                        at,
                        deleted: false,
                    };
                    w.net.try_edit(i, &id, |tx| model::add_photo(tx, &photo));
                }
                6 => {
                    w.net.try_edit(i, &id, |tx| {
                        model::submit(tx, &format!("s-{n}"), &user, at, Some(&e.text))
                    });
                }
                _ => verify(w, i, action, n, e.b),
            }
        }
    }
}

fn verify(w: &mut World, i: usize, id: DocumentId, n: u64, b: u8) {
    let v = Verification {
        decision: if b.is_multiple_of(2) {
            VerificationDecision::Closed
        } else {
            VerificationDecision::Reopened
        },
        note: None,
        by: w.net.who[i].user_id.clone(),
        at: n as i64 * 1_000,
    };
    w.net
        .try_edit(i, &id, |tx| model::verify_action(tx, &format!("v-{n}"), &v));
}

// ----- hostile moves -----------------------------------------------------------

/// What the server must do with an attack's changes.
enum Expect {
    /// Refused, each for (at least) one of these rules.
    Refused(&'static [Rule]),
    /// Stored (rule-abiding, however odd).
    Stored,
    /// Held while their dependencies are missing.
    Waiting(usize),
    /// Dropped over the cap, with a `limit` error.
    Limit,
}

/// One change made on `base` by `actor`; None if `f` made none or failed.
fn change_on(
    base: &Automerge,
    actor: &ActorId,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<(), ModelError>,
) -> Option<Change> {
    let mut doc = base.clone();
    doc.set_actor(actor.clone());
    let heads = doc.get_heads();
    in_tx(&mut doc, f).ok()?;
    let mut changes = doc.get_changes(&heads);
    assert!(changes.len() <= 1);
    changes.pop()
}

/// `n` changes in a row by `actor` on `base`, each depending on the last.
fn chain_on(
    base: &Automerge,
    actor: &ActorId,
    n: usize,
    user: &str,
    inspection: bool,
) -> Vec<Change> {
    let mut doc = base.clone();
    doc.set_actor(actor.clone());
    let heads = doc.get_heads();
    for k in 0..n {
        in_tx(&mut doc, |tx| {
            if inspection {
                let f = Finding {
                    item_id: None,
                    title: format!("Lặp {k}"),
                    note: String::new(),
                    severity: Severity::High,
                    photos: BTreeSet::new(),
                    by: user.to_owned(),
                    at: 5,
                    deleted: false,
                };
                model::add_finding(tx, &format!("f-{actor}-{k}"), &f)
            } else {
                model::respond_action(
                    tx,
                    &format!("r-{actor}-{k}"),
                    &ActionResponse {
                        text: format!("Lặp {k}"),
                        evidence: BTreeSet::new(),
                        done: false,
                        by: user.to_owned(),
                        at: 5,
                    },
                )
            }
        })
        .unwrap();
    }
    doc.get_changes(&heads)
}

/// A valid record of `user`'s own in `doc` (`at` as given).
fn own_record(
    tx: &mut Transaction<'_>,
    inspection: bool,
    id: &str,
    user: &str,
    at: i64,
) -> Result<(), ModelError> {
    if inspection {
        model::submit(tx, id, user, at, Some("nộp"))
    } else {
        model::respond_action(
            tx,
            id,
            &ActionResponse {
                text: "xong".into(),
                evidence: BTreeSet::new(),
                done: true,
                by: user.to_owned(),
                at,
            },
        )
    }
}

/// A fresh connection for hostile peer `h`, its `join` delivered at once.
fn reconnect(w: &mut World, h: usize) {
    w.net.disconnect(h);
    w.net.connect(h);
    let (mine, rest): (Vec<Frame>, Vec<Frame>) = std::mem::take(&mut w.net.wire)
        .into_iter()
        .partition(|f| f.to_server && f.client == h);
    w.net.wire = rest;
    for f in mine {
        w.net.deliver(f);
    }
    assert!(w.net.server.hub.is_ready(h as ConnId));
}

/// Hostile peer `h` attacks; the message is delivered at once and what the
/// server did with it is checked.
fn hostile_move(
    w: &mut World,
    h: usize,
    on_action: bool,
    attack: &Attack,
) -> Result<(), TestCaseError> {
    let me = w.net.who[h].clone();
    let user = me.user_id.clone();
    let (id, inspection) = match me.role {
        Role::Unit => ([ACTION_A, ACTION_B][usize::from(on_action)], false),
        _ => {
            let (inspection, action) = team_docs(&me);
            if on_action && matches!(attack, Attack::ForgeBy(_) | Attack::DeleteEntry(_)) {
                (action, false)
            } else {
                (inspection, true)
            }
        }
    };
    if !w.may_read(h, &id) {
        return Ok(());
    }
    let base = w.net.server.hub.document(&id).unwrap().clone();
    // The hostile peer's own actor for what it sends by hand.
    let own = ActorId::from(format!("hostile-{h}").into_bytes());
    let n = w.next();
    let honest_users: Vec<String> = HONEST
        .iter()
        .map(|i| w.net.who[*i].user_id.clone())
        .collect();

    let (name, changes, expect): (&'static str, Vec<Change>, Expect) = match attack {
        Attack::ForgeActor(k) => {
            let mut victims: BTreeSet<ActorId> = base
                .get_changes(&[])
                .iter()
                .map(|c| c.actor_id().clone())
                .collect();
            victims.insert(server_actor());
            // Another peer's: not one this user wrote with before.
            let rules = w.net.server.hub.access();
            let victims: Vec<ActorId> = victims
                .into_iter()
                .filter(|a| rules.actor_owner(a).is_none_or(|o| o.user_id != user))
                .collect();
            let victim = pick(&victims, *k).unwrap();
            let next_seq = base
                .get_changes(&[])
                .iter()
                .filter(|c| c.actor_id() == &victim)
                .map(|c| c.seq())
                .max()
                .unwrap_or(0)
                + 1;
            let Some(c) = change_on(&base, &victim, |tx| {
                own_record(tx, inspection, &format!("x-{n}"), &user, 7)
            }) else {
                return Ok(());
            };
            prop_assert_eq!(c.seq(), next_seq);
            ("forge-actor", vec![c], Expect::Refused(&[Rule::Actor]))
        }
        Attack::ForgeBy(k) => {
            let victim = pick(&honest_users, *k).unwrap();
            let made = if id == INSPECTION_A || id == INSPECTION_B {
                change_on(&base, &own, |tx| {
                    let a = Answer {
                        value: AnswerValue::NotApplicable,
                        fields: BTreeMap::new(),
                        evidence: BTreeSet::new(),
                        note: None,
                        by: victim.clone(),
                        at: 7,
                    };
                    model::set_answer(tx, "A2", &a)
                })
            } else if me.role == Role::Unit {
                change_on(&base, &own, |tx| {
                    own_record(tx, false, &format!("x-{n}"), &victim, 7)
                })
            } else {
                change_on(&base, &own, |tx| {
                    model::verify_action(
                        tx,
                        &format!("x-{n}"),
                        &Verification {
                            decision: VerificationDecision::Closed,
                            note: None,
                            by: victim.clone(),
                            at: 7,
                        },
                    )
                })
            };
            let Some(c) = made else { return Ok(()) };
            ("forge-by", vec![c], Expect::Refused(&[Rule::Author]))
        }
        Attack::FarFuture => {
            let Some(c) = change_on(&base, &own, |tx| {
                own_record(tx, inspection, &format!("x-{n}"), &user, FAR_FUTURE)
            }) else {
                return Ok(());
            };
            ("far-future", vec![c], Expect::Stored)
        }
        Attack::ReplaceSection(k) => {
            let sections: &[&str] = if inspection {
                &[
                    "answers",
                    "findings",
                    "photos",
                    "submissions",
                    "review",
                    "header",
                    "kind",
                    "schema",
                ]
            } else {
                &["responses", "verification", "assignment", "kind"]
            };
            let section = pick(sections, *k).unwrap();
            let Some(c) = change_on(&base, &own, |tx| {
                match section {
                    "kind" => tx.put(ROOT, "kind", "catalog")?,
                    "schema" => tx.put(ROOT, "schema", ScalarValue::Uint(2))?,
                    _ => {
                        tx.put_object(ROOT, section, ObjType::Map)?;
                    }
                }
                Ok(())
            }) else {
                return Ok(());
            };
            (
                "replace-section",
                vec![c],
                Expect::Refused(&[Rule::Section, Rule::Fixed, Rule::Owner]),
            )
        }
        Attack::DeleteEntry(k) => {
            let mut targets: Vec<(&str, String)> = Vec::new();
            let sections: &[&str] = if inspection {
                &["findings", "answers", "submissions", "photos"]
            } else {
                &["responses", "verification"]
            };
            for section in sections {
                for key in keys(&base, &[section]) {
                    if string_at(&base, &[section, &key, "by"]).as_deref() != Some(&user) {
                        targets.push((section, key));
                    }
                }
            }
            let Some((section, key)) = pick(&targets, *k) else {
                return Ok(());
            };
            let Some(c) = change_on(&base, &own, |tx| {
                let obj = tx.get(ROOT, section)?.unwrap().1;
                tx.delete(&obj, key.as_str())?;
                Ok(())
            }) else {
                return Ok(());
            };
            (
                "delete-entry",
                vec![c],
                Expect::Refused(&[Rule::Delete, Rule::Owner]),
            )
        }
        Attack::EditRecord(k) => {
            let mut targets: Vec<(&str, String, &str)> = Vec::new();
            let sections: &[(&str, &str)] = if inspection {
                &[
                    ("submissions", "note"),
                    ("answers", "note"),
                    ("findings", "by"),
                    ("photos", "caption"),
                ]
            } else {
                &[
                    ("responses", "text"),
                    ("responses", "done"),
                    ("verification", "note"),
                ]
            };
            for (section, field) in sections {
                for key in keys(&base, &[section]) {
                    if string_at(&base, &[section, &key, "by"]).as_deref() != Some(&user) {
                        targets.push((section, key, field));
                    }
                }
            }
            let Some((section, key, field)) = pick(&targets, *k) else {
                return Ok(());
            };
            let Some(c) = change_on(&base, &own, |tx| {
                let obj = tx.get(ROOT, section)?.unwrap().1;
                let entry = tx.get(&obj, key.as_str())?.unwrap().1;
                match field {
                    "by" => tx.put(&entry, "by", user.as_str())?,
                    "done" => tx.put(&entry, "done", true)?,
                    _ => tx.put(&entry, field, "sửa")?,
                }
                Ok(())
            }) else {
                return Ok(());
            };
            (
                "edit-record",
                vec![c],
                Expect::Refused(&[Rule::Immutable, Rule::Owner]),
            )
        }
        Attack::Orphans(k) => {
            let actor = ActorId::from(format!("hostile-{h}-orphan-{n}").into_bytes());
            let chain = chain_on(&base, &actor, usize::from(*k) + 1, &user, inspection);
            let sent = chain[1..].to_vec();
            let waiting = sent.len();
            ("orphans", sent, Expect::Waiting(waiting))
        }
        Attack::OrphanFlood => {
            let actor = ActorId::from(format!("hostile-{h}-orphan-{n}").into_bytes());
            let chain = chain_on(&base, &actor, WAITING_CAP + 2, &user, inspection);
            ("orphan-flood", chain[1..].to_vec(), Expect::Limit)
        }
        Attack::Flood(k) => {
            let actor = ActorId::from(format!("hostile-{h}-flood-{n}").into_bytes());
            let chain = chain_on(&base, &actor, usize::from(*k), &user, inspection);
            ("flood", chain, Expect::Stored)
        }
    };

    reconnect(w, h);
    let events_before = w.net.server.events.len();
    let sent_before = w.net.to_clients[h].len();
    let heads: Vec<ChangeHash> = {
        let mut doc = base.clone();
        doc.apply_changes(changes.iter().cloned()).unwrap();
        doc.get_heads()
    };
    w.net.send_changes(h, id, heads, &changes);
    let frame = w.net.wire.pop().unwrap();
    w.net.deliver(frame);
    *w.carried_out.entry(name).or_default() += 1;

    let refusals: Vec<_> = w.net.server.events[events_before..]
        .iter()
        .filter_map(|e| match e {
            Event::Rejected {
                conn,
                document_id,
                refusal,
            } if *conn == h as ConnId && *document_id == id => Some(refusal.clone()),
            _ => None,
        })
        .collect();
    let state = w.net.server.hub.peer_state(h as ConnId, &id);
    let stored = w.net.server.store.load(id).unwrap().unwrap();
    let is_stored = |c: &Change| stored.get_change_by_hash(&c.hash()).is_some();
    match expect {
        Expect::Refused(rules) => {
            for c in &changes {
                w.forged.insert(c.hash(), (h, id, name));
                prop_assert!(!is_stored(c), "{} stored", name);
                let hit = refusals.iter().any(|r| {
                    r.refused.contains(&c.hash())
                        && r.violations
                            .iter()
                            .any(|v| v.change == c.hash() && rules.contains(&v.rule))
                });
                prop_assert!(hit, "{} not refused for {:?}: {:?}", name, rules, refusals);
            }
        }
        Expect::Stored => {
            prop_assert!(refusals.is_empty(), "{}: {:?}", name, refusals);
            for c in &changes {
                prop_assert!(is_stored(c), "{} not stored", name);
            }
        }
        Expect::Waiting(n) => {
            prop_assert_eq!(state.map(|s| s.waiting), Some(n), "{}", name);
            for c in &changes {
                w.forged.insert(c.hash(), (h, id, name));
                prop_assert!(!is_stored(c), "{} stored", name);
            }
        }
        Expect::Limit => {
            prop_assert_eq!(state.map(|s| s.waiting), Some(0), "{}", name);
            let limited = w.net.to_clients[h][sent_before..].iter().any(|m| {
                matches!(m, Message::Error { detail: Some(d), .. }
                    if d.code.as_deref() == Some(ErrorCode::Limit.as_str())
                        && d.document_id == Some(id))
            });
            prop_assert!(limited, "{}: no limit error", name);
            for c in &changes {
                w.forged.insert(c.hash(), (h, id, name));
                prop_assert!(!is_stored(c), "{} stored", name);
            }
        }
    }
    Ok(())
}

// ----- the checks -----------------------------------------------------------------

/// Every change the server stored, held against the rules a peer cannot
/// break: written by a bound actor; no root-level operation, no map-key
/// deletion and no `by` other than the actor's user, except by the server.
fn check_store(w: &World) -> Result<(), TestCaseError> {
    let rules = w.net.server.hub.access();
    for (i, who) in w.net.who.iter().enumerate() {
        if let Some(owner) = rules.actor_owner(&client_actor(i)) {
            prop_assert_eq!(&owner.user_id, &who.user_id);
            prop_assert_eq!(&owner.device_id, &who.device_id);
        }
    }
    for id in DOCS {
        let doc = w.net.server.store.load(id).unwrap().unwrap();
        for change in doc.get_changes(&[]) {
            prop_assert!(
                !w.forged.contains_key(&change.hash()),
                "a refused or unjudged change is stored: {:?}",
                w.forged.get(&change.hash())
            );
            let actor = change.actor_id();
            if actor == &server_actor() {
                continue;
            }
            let owner = rules.actor_owner(actor);
            prop_assert!(
                owner.is_some(),
                "change {} by an unbound actor",
                change.hash()
            );
            let user = owner.unwrap().user_id.clone();
            prop_assert!(
                user != SERVER_USER,
                "a peer's change under the server's actor"
            );
            for op in change.decode().operations {
                prop_assert!(
                    op.obj != ObjectId::Root,
                    "{}: a peer wrote at the root ({:?})",
                    change.hash(),
                    op.key
                );
                if let Key::Map(key) = &op.key {
                    prop_assert!(
                        !matches!(op.action, OpType::Delete),
                        "{}: a peer deleted map key {}",
                        change.hash(),
                        key
                    );
                    if key.as_str() == "by"
                        && let OpType::Put(ScalarValue::Str(by)) = &op.action
                    {
                        prop_assert_eq!(
                            by.as_str(),
                            user.as_str(),
                            "{} signed by another",
                            change.hash()
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Every honest peer is at the server's heads on each document it may read.
fn converged(w: &World) -> bool {
    HONEST.iter().all(|&i| {
        DOCS.iter().all(|id| {
            !w.may_read(i, id)
                || w.net.client_doc(i, id).map(|d| d.get_heads()) == Some(w.net.server.heads(id))
        })
    })
}

/// Who is behind the server on what, and what they were told.
fn lagging(w: &World) -> String {
    let mut out = String::new();
    for &i in &HONEST {
        for id in DOCS {
            let Some(mine) = w.net.client_doc(i, &id) else {
                if w.may_read(i, &id) {
                    out.push_str(&format!("\npeer {i} does not hold {id}"));
                }
                continue;
            };
            let server = w.net.server.hub.document(&id).unwrap();
            if !w.may_read(i, &id) || mine.get_heads() == server.get_heads() {
                continue;
            }
            let unsent: Vec<_> = mine
                .get_changes(&[])
                .iter()
                .filter(|c| server.get_change_by_hash(&c.hash()).is_none())
                .map(Change::hash)
                .collect();
            let unreceived = server
                .get_changes(&[])
                .iter()
                .filter(|c| mine.get_change_by_hash(&c.hash()).is_none())
                .count();
            let mut errors = w.net.errors_to(i);
            errors.dedup();
            out.push_str(&format!(
                "\npeer {i} on {id}: its changes the server lacks {unsent:?}, \
                 {unreceived} server changes it lacks; errors to it: {errors:?}"
            ));
        }
    }
    out
}

/// Clean syncs of every honest peer until they converge.
fn settle(w: &mut World) -> Result<(), TestCaseError> {
    for pass in 0.. {
        for i in HONEST {
            w.connect(i);
        }
        w.net.run(200_000);
        let done = converged(w);
        for i in HONEST {
            w.net.disconnect(i);
        }
        if done {
            return Ok(());
        }
        prop_assert!(
            pass < 3,
            "no convergence after {} clean passes: {}",
            pass + 1,
            lagging(w)
        );
    }
    Ok(())
}

fn run_case(plan: &[Round]) -> Result<World, TestCaseError> {
    let mut w = World::new();
    // Everyone fetches what it may read once, then goes offline.
    for i in HONEST {
        w.connect(i);
    }
    w.net.run(100_000);
    for i in HONEST {
        w.net.disconnect(i);
    }

    for round in plan {
        for (k, &i) in HONEST.iter().enumerate() {
            for e in &round.edits[k] {
                honest_edit(&mut w, i, e);
            }
        }
        if round.restart_server {
            w.net.reload_server();
        }
        for (k, &i) in HONEST.iter().enumerate() {
            if round.online[k] {
                w.connect(i);
            }
        }
        for h in HOSTILE {
            w.connect(h);
        }
        let mut rng = Rng::new(round.seed);
        w.deliver_some(&mut rng, 200, round.drop_pct, round.dup_pct);
        for (k, &h) in HOSTILE.iter().enumerate() {
            for (on_action, attack) in &round.attacks[k] {
                hostile_move(&mut w, h, *on_action, attack)?;
                w.deliver_some(&mut rng, 20, round.drop_pct, round.dup_pct);
            }
        }
        w.net
            .run_faulty(&mut rng, round.drop_pct, round.dup_pct, 50_000);
        for i in 0..w.net.clients.len() {
            w.net.disconnect(i);
        }
        w.net.now += 60_000;
    }

    // The hostile peers are gone (disconnected above); the honest ones sync.
    settle(&mut w)?;
    // The secretariat, having seen everything, accepts both inspections
    // and closes both actions; a date far in the future changes nothing.
    let n = w.next();
    w.connect(SECRETARIAT);
    w.net.run(100_000);
    for id in [INSPECTION_A, INSPECTION_B] {
        w.net.edit(SECRETARIAT, &id, |tx| {
            model::review_decide(
                tx,
                &format!("d-final-{n}"),
                ReviewState::Accepted,
                "u-sec",
                9,
                None,
            )
        });
    }
    for id in [ACTION_A, ACTION_B] {
        w.net.edit(SECRETARIAT, &id, |tx| {
            model::verify_action(
                tx,
                &format!("v-final-{n}"),
                &Verification {
                    decision: VerificationDecision::Closed,
                    note: None,
                    by: "u-sec".into(),
                    at: 9,
                },
            )
        });
    }
    w.net.run(100_000);
    w.net.disconnect(SECRETARIAT);
    settle(&mut w)?;

    // No honest change was refused.
    for i in HONEST {
        prop_assert!(
            w.net.refusals_of(i).is_empty(),
            "peer {}: {:?}",
            i,
            w.net.refusals_of(i)
        );
        let refused: Vec<_> = w.net.clients[i]
            .events
            .iter()
            .filter(|e| matches!(e, Event::Refused { .. }))
            .collect();
        prop_assert!(refused.is_empty(), "peer {}: {:?}", i, refused);
    }
    // Every honest change is stored.
    let stored: BTreeMap<DocumentId, Automerge> = DOCS
        .iter()
        .map(|id| (*id, w.net.server.store.load(*id).unwrap().unwrap()))
        .collect();
    for i in HONEST {
        for (id, change) in &w.net.clients[i].made {
            prop_assert!(
                stored[id].get_change_by_hash(&change.hash()).is_some(),
                "peer {}'s change {} of {} is not stored",
                i,
                change.hash(),
                id
            );
        }
    }
    // The stored documents are what the server serves, and valid.
    for (id, doc) in &stored {
        prop_assert_eq!(doc.get_heads(), w.net.server.heads(id));
        prop_assert!(model::validate(doc, registry()).is_ok());
    }
    for id in [INSPECTION_A, INSPECTION_B] {
        let x = model::read_inspection(&stored[&id], registry()).unwrap();
        prop_assert_eq!(x.status(), InspectionStatus::Accepted);
    }
    for id in [ACTION_A, ACTION_B] {
        let status = model::read_action(&stored[&id]).unwrap().status();
        prop_assert_eq!(status, ActionStatus::Closed);
    }
    // The unit reads both inspections now that they are accepted.
    prop_assert!(w.may_read(UNIT, &INSPECTION_A) && w.may_read(UNIT, &INSPECTION_B));
    prop_assert!(converged(&w));
    check_store(&w)?;
    Ok(w)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 100, ..ProptestConfig::default() })]

    #[test]
    fn hostile_peers_change_nothing_for_honest_ones(plan in rounds()) {
        run_case(&plan)?;
    }
}

/// One fixed plan with every attack, so that each is known to run.
#[test]
fn a_fixed_plan_carries_out_every_attack() {
    let edits = |k: u8| {
        (0..4)
            .map(|j| Edit {
                kind: k.wrapping_add(j),
                a: j,
                b: k,
                text: "ghi chú".into(),
            })
            .collect::<Vec<_>>()
    };
    let attacks = vec![
        (false, Attack::ForgeActor(0)),
        (true, Attack::ForgeActor(1)),
        (false, Attack::ForgeBy(1)),
        (true, Attack::ForgeBy(2)),
        (false, Attack::FarFuture),
        (false, Attack::ReplaceSection(0)),
        (false, Attack::ReplaceSection(6)),
        (false, Attack::DeleteEntry(0)),
        (true, Attack::DeleteEntry(1)),
        (false, Attack::EditRecord(0)),
        (false, Attack::Orphans(3)),
        (false, Attack::OrphanFlood),
        (false, Attack::Flood(20)),
    ];
    let round = |seed: u64| Round {
        edits: (0..HONEST.len() as u8).map(|k| edits(k * 3)).collect(),
        online: vec![true; HONEST.len()],
        attacks: vec![attacks.clone(); HOSTILE.len()],
        seed,
        drop_pct: 0,
        dup_pct: 0,
        restart_server: false,
    };
    let w = run_case(&[round(1), round(2), round(3)]).unwrap();
    for name in [
        "forge-actor",
        "forge-by",
        "far-future",
        "replace-section",
        "delete-entry",
        "edit-record",
        "orphans",
        "orphan-flood",
        "flood",
    ] {
        assert!(
            w.carried_out.get(name).is_some_and(|n| *n >= 3),
            "{name}: {:?}",
            w.carried_out
        );
    }
}
