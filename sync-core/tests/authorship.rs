//! The per-change write check: who wrote it (actors, `by`), what may be
//! rewritten (records are write-once, entries never deleted, sections never
//! replaced), who settles conflicts — and the batch intake that keeps the
//! good changes of a message and refuses only the bad ones.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Automerge, Change, ObjType, ROOT, ReadDoc};
use sync_core::DocumentId;
use sync_core::access::{ActorOwner, DocumentRules, PeerInfo};
use sync_core::model::{
    self, ActionAssignment, ActionResponse, Answer, Finding, InspectionHeader, MemberRole,
    PhotoMime, PhotoRef, Priority, Severity,
};
use sync_core::policy::{Author, Role, Rule, Violation, check_change};
use sync_core::protocol::hub::Access;
use sync_core::protocol::intake::intake;
use sync_core::template::{AnswerValue, Template, TemplateRegistry};

const T0: i64 = 1_750_000_000_000;
const CHECKLIST: &str = include_str!("data/checklist_de_an_06.json");
const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn registry() -> TemplateRegistry {
    let mut r = TemplateRegistry::default();
    r.publish(Template::from_json(CHECKLIST).unwrap()).unwrap();
    r
}

fn header() -> InspectionHeader {
    InspectionHeader {
        unit_code: "00004".into(),
        unit_name: "Phường Ba Đình".into(),
        template_id: "DA06-HN-2025-v1".into(),
        template_version: 1,
        team_id: "t-01".into(),
        members: BTreeMap::from([
            ("u-an".to_owned(), MemberRole::Lead),
            ("u-binh".to_owned(), MemberRole::Member),
        ]),
        scheduled_date: "2025-07-15".into(),
        created_at: T0,
    }
}

fn replica(actor: &str) -> AutoCommit {
    AutoCommit::new().with_actor(ActorId::from(actor.as_bytes().to_vec()))
}

/// An inspection as the server creates it.
fn inspection() -> AutoCommit {
    let mut doc = replica("kiemtra-server");
    model::init_inspection(&mut doc, &header()).unwrap();
    doc.commit();
    doc
}

fn fork(doc: &mut AutoCommit, actor: &str) -> AutoCommit {
    doc.fork()
        .with_actor(ActorId::from(actor.as_bytes().to_vec()))
}

/// The document as it is now, and the one change `edit` makes on top.
fn edit(doc: &mut AutoCommit, f: impl FnOnce(&mut AutoCommit)) -> (Automerge, Change) {
    doc.commit();
    let before = doc.document().clone();
    f(doc);
    doc.commit();
    let mut changes = doc.document().get_changes(&before.get_heads());
    assert_eq!(changes.len(), 1, "one change expected");
    (before, changes.pop().unwrap())
}

fn author(user: &str, role: Role, lead: bool) -> Author<'_> {
    Author {
        user_id: user,
        role,
        lead,
    }
}

fn inspector(user: &str) -> Author<'_> {
    author(user, Role::Inspector, user == "u-an")
}

fn rules(v: &[Violation]) -> Vec<(Rule, &str)> {
    v.iter().map(|v| (v.rule, v.path.as_str())).collect()
}

fn answer(by: &str) -> Answer {
    Answer {
        value: AnswerValue::YesNo(true),
        fields: BTreeMap::new(),
        evidence: BTreeSet::new(),
        note: None,
        by: by.into(),
        at: T0 + 1,
    }
}

fn finding(by: &str) -> Finding {
    Finding {
        item_id: None,
        title: "Thiếu đầu đọc chip".into(),
        note: "Chưa có".into(),
        severity: Severity::Low,
        photos: BTreeSet::new(),
        by: by.into(),
        at: T0 + 2,
        deleted: false,
    }
}

fn photo(by: &str) -> PhotoRef {
    PhotoRef {
        sha256: SHA.into(),
        mime: PhotoMime::Jpeg,
        bytes: 1000,
        width: None,
        height: None,
        taken_at: None,
        item_id: None,
        finding_id: None,
        caption: None,
        by: by.into(),
        at: T0 + 3,
        deleted: false,
    }
}

#[test]
fn honest_team_edits_pass_each_on_its_own() {
    let mut doc = inspection();
    let mut an = fork(&mut doc, "tablet-an");
    let checks: Vec<(Automerge, Change)> = vec![
        edit(&mut an, |d| {
            model::set_answer(d, "A1", &answer("u-an")).unwrap()
        }),
        edit(&mut an, |d| {
            model::add_finding(d, "f1", &finding("u-an")).unwrap()
        }),
        edit(&mut an, |d| {
            model::splice_finding_note(d, "f1", 0, 3, "Đã").unwrap()
        }),
        edit(&mut an, |d| model::add_photo(d, &photo("u-an")).unwrap()),
        edit(&mut an, |d| model::add_finding_photo(d, "f1", SHA).unwrap()),
        edit(&mut an, |d| model::delete_finding(d, "f1").unwrap()),
        edit(&mut an, |d| model::restore_finding(d, "f1").unwrap()),
        edit(&mut an, |d| {
            model::submit(d, "s1", "u-an", T0 + 9, Some("xong")).unwrap()
        }),
    ];
    for (before, change) in &checks {
        let check = check_change(before, change, &inspector("u-an"));
        assert!(check.is_ok(), "{check:?}");
    }
    // A teammate edits the lead's finding (findings are shared work) and
    // answers another item.
    let mut binh = fork(&mut an, "tablet-binh");
    let (before, change) = edit(&mut binh, |d| {
        model::update_finding_title(d, "f1", "Đầu đọc chip hỏng").unwrap()
    });
    assert!(check_change(&before, &change, &inspector("u-binh")).is_ok());
    let (before, change) = edit(&mut binh, |d| {
        model::set_answer(d, "A2", &answer("u-binh")).unwrap()
    });
    let check = check_change(&before, &change, &inspector("u-binh")).unwrap();
    assert!(check.touched.contains("answers/A2"), "{:?}", check.touched);
    assert!(check.concerns("answers/A2/value"));
    assert!(!check.concerns("answers/A3"));
}

#[test]
fn by_must_be_the_author_of_the_change() {
    let mut doc = inspection();
    let mut binh = fork(&mut doc, "tablet-binh");
    let (before, change) = edit(&mut binh, |d| {
        model::set_answer(d, "A1", &answer("u-an")).unwrap()
    });
    let v = check_change(&before, &change, &inspector("u-binh")).unwrap_err();
    assert_eq!(rules(&v), [(Rule::Author, "answers/A1/by")]);
    assert_eq!(v[0].change, change.hash());
    assert!(v[0].reason.contains("u-binh"), "{}", v[0].reason);
    // The same change from u-an is fine.
    assert!(check_change(&before, &change, &inspector("u-an")).is_ok());
}

/// JavaScript writers store strings as text objects: `by` may be a text,
/// written in one piece, spelling the author.
#[test]
fn by_written_as_text_is_checked_too() {
    let mut doc = inspection();
    let write = |doc: &mut AutoCommit, by: &str, reversed: bool| {
        let mut tablet = fork(doc, "js-client");
        edit(&mut tablet, |d| {
            let answers = d.get(ROOT, "answers").unwrap().unwrap().1;
            let a = d.put_object(&answers, "A1", ObjType::Map).unwrap();
            d.put(&a, "value", "yes").unwrap();
            d.put(&a, "at", automerge::ScalarValue::Timestamp(T0))
                .unwrap();
            let t = d.put_object(&a, "by", ObjType::Text).unwrap();
            if reversed {
                // Characters inserted back to front: the text still reads
                // `by`, but not in the order written.
                for ch in by.chars().rev() {
                    d.splice_text(&t, 0, 0, &ch.to_string()).unwrap();
                }
            } else {
                d.splice_text(&t, 0, 0, by).unwrap();
            }
        })
    };
    let (before, change) = write(&mut doc, "u-an", false);
    assert!(check_change(&before, &change, &inspector("u-an")).is_ok());
    let (before, change) = write(&mut doc, "u-an", false);
    assert_eq!(
        rules(&check_change(&before, &change, &inspector("u-binh")).unwrap_err()),
        [(Rule::Author, "answers/A1/by")]
    );
    let (before, change) = write(&mut doc, "u-an", true);
    assert_eq!(
        rules(&check_change(&before, &change, &inspector("u-an")).unwrap_err()),
        [(Rule::Author, "answers/A1/by")]
    );
}

#[test]
fn sections_are_never_replaced() {
    let mut doc = inspection();
    let mut tablet = fork(&mut doc, "tablet-an");
    // `doc.answers = {}` in JavaScript.
    let (before, change) = edit(&mut tablet, |d| {
        d.put_object(ROOT, "answers", ObjType::Map).unwrap();
    });
    let v = check_change(&before, &change, &inspector("u-an")).unwrap_err();
    assert_eq!(rules(&v), [(Rule::Section, "answers")]);
    // Nor deleted, nor the secretariat's review replaced by the secretariat.
    let (before, change) = edit(&mut tablet, |d| d.delete(ROOT, "findings").unwrap());
    assert_eq!(
        rules(&check_change(&before, &change, &inspector("u-an")).unwrap_err()),
        [(Rule::Section, "findings")]
    );
    let mut office = fork(&mut doc, "office");
    let (before, change) = edit(&mut office, |d| {
        let review = d.get(ROOT, "review").unwrap().unwrap().1;
        d.put_object(&review, "decisions", ObjType::Map).unwrap();
    });
    assert_eq!(
        rules(
            &check_change(&before, &change, &author("u-thu", Role::Secretariat, false))
                .unwrap_err()
        ),
        [(Rule::Section, "review/decisions")]
    );
    // kind and schema never change.
    let (before, change) = edit(&mut tablet, |d| d.put(ROOT, "kind", "action").unwrap());
    assert_eq!(
        rules(&check_change(&before, &change, &inspector("u-an")).unwrap_err()),
        [(Rule::Fixed, "kind")]
    );
}

#[test]
fn entries_are_never_deleted_or_replaced() {
    let mut doc = inspection();
    let mut an = fork(&mut doc, "tablet-an");
    model::add_finding(&mut an, "f1", &finding("u-an")).unwrap();
    model::add_photo(&mut an, &photo("u-an")).unwrap();
    an.commit();
    // Each attempt on a fresh copy of the team's document.
    let mut attempt = |f: &dyn Fn(&mut AutoCommit)| {
        let mut binh = fork(&mut an, "tablet-binh");
        let (before, change) = edit(&mut binh, |d| f(d));
        check_change(&before, &change, &inspector("u-binh"))
    };
    let v = attempt(&|d| {
        let findings = model_obj(d, &["findings"]);
        d.delete(&findings, "f1").unwrap();
    })
    .unwrap_err();
    assert_eq!(rules(&v), [(Rule::Delete, "findings/f1")]);
    assert!(v[0].reason.contains("deleted: true"), "{}", v[0].reason);
    // Replacing the finding with a fresh map under the same id.
    let v = attempt(&|d| {
        let findings = model_obj(d, &["findings"]);
        let f = d.put_object(&findings, "f1", ObjType::Map).unwrap();
        d.put(&f, "by", "u-binh").unwrap();
    })
    .unwrap_err();
    assert_eq!(rules(&v), [(Rule::Replace, "findings/f1")]);
    // A field of an entry is not deleted either.
    let v = attempt(&|d| {
        let f = model_obj(d, &["findings", "f1"]);
        d.delete(&f, "severity").unwrap();
    })
    .unwrap_err();
    assert_eq!(rules(&v), [(Rule::Delete, "findings/f1/severity")]);
    // Tombstones are how entries go away.
    assert!(attempt(&|d| model::delete_finding(d, "f1").unwrap()).is_ok());
    assert!(
        attempt(&|d| {
            let p = model_obj(d, &["photos", SHA]);
            d.put(&p, "deleted", true).unwrap();
        })
        .is_ok()
    );
    // But a photo is otherwise a record.
    let v = attempt(&|d| {
        let p = model_obj(d, &["photos", SHA]);
        d.put(&p, "caption", "khác").unwrap();
    })
    .unwrap_err();
    assert_eq!(
        rules(&v),
        [(Rule::Immutable, &*format!("photos/{SHA}/caption"))]
    );
}

fn model_obj(d: &AutoCommit, path: &[&str]) -> automerge::ObjId {
    let mut obj = ROOT;
    for key in path {
        obj = d.get(&obj, *key).unwrap().unwrap().1;
    }
    obj
}

#[test]
fn records_are_written_once() {
    let mut doc = inspection();
    let mut an = fork(&mut doc, "tablet-an");
    model::set_answer(&mut an, "A1", &answer("u-an")).unwrap();
    model::submit(&mut an, "s1", "u-an", T0 + 5, Some("xong")).unwrap();
    model::add_finding(&mut an, "f1", &finding("u-an")).unwrap();
    an.commit();
    let mut binh = fork(&mut an, "tablet-binh");
    // Editing someone's submission after the fact.
    let (before, change) = edit(&mut binh, |d| {
        let s = model_obj(d, &["submissions", "s1"]);
        d.put(&s, "note", "chưa xong").unwrap();
    });
    assert_eq!(
        rules(&check_change(&before, &change, &inspector("u-binh")).unwrap_err()),
        [(Rule::Immutable, "submissions/s1/note")]
    );
    // Changing an answer's value inside the existing answer map (instead
    // of writing a new answer).
    let (before, change) = edit(&mut binh, |d| {
        let a = model_obj(d, &["answers", "A1"]);
        d.put(&a, "value", "no").unwrap();
    });
    assert_eq!(
        rules(&check_change(&before, &change, &inspector("u-binh")).unwrap_err()),
        [(Rule::Immutable, "answers/A1/value")]
    );
    // Rewriting who found a finding, or when.
    let (before, change) = edit(&mut binh, |d| {
        let f = model_obj(d, &["findings", "f1"]);
        d.put(&f, "by", "u-binh").unwrap();
        d.put(&f, "at", automerge::ScalarValue::Timestamp(T0))
            .unwrap();
    });
    let v = check_change(&before, &change, &inspector("u-binh")).unwrap_err();
    assert_eq!(
        rules(&v),
        [
            (Rule::Immutable, "findings/f1/at"),
            (Rule::Immutable, "findings/f1/by")
        ]
    );
    // A new answer by the teammate replaces the whole answer: allowed.
    let (before, change) = edit(&mut binh, |d| {
        model::set_answer(d, "A1", &answer("u-binh")).unwrap()
    });
    assert!(check_change(&before, &change, &inspector("u-binh")).is_ok());
}

#[test]
fn only_the_team_lead_settles_a_conflict() {
    let mut doc = inspection();
    let mut an = fork(&mut doc, "tablet-an");
    let mut binh = fork(&mut doc, "tablet-binh");
    model::set_answer(&mut an, "A1", &answer("u-an")).unwrap();
    let mut no = answer("u-binh");
    no.value = AnswerValue::YesNo(false);
    model::set_answer(&mut binh, "A1", &no).unwrap();
    an.commit();
    binh.commit();
    an.merge(&mut binh).unwrap();
    binh.merge(&mut an).unwrap();
    assert_eq!(
        an.get_all(model_obj(&an, &["answers"]), "A1")
            .unwrap()
            .len(),
        2
    );

    let (before, change) = edit(&mut binh, |d| {
        model::set_answer(d, "A1", &answer("u-binh")).unwrap()
    });
    let v = check_change(&before, &change, &inspector("u-binh")).unwrap_err();
    assert_eq!(rules(&v), [(Rule::Settle, "answers/A1")]);
    let (before, change) = edit(&mut an, |d| {
        model::set_answer(d, "A1", &answer("u-an")).unwrap()
    });
    assert!(check_change(&before, &change, &inspector("u-an")).is_ok());
}

#[test]
fn roles_write_only_what_they_own_and_no_one_creates_documents() {
    let mut doc = inspection();
    let mut unit = fork(&mut doc, "unit-device");
    let (before, change) = edit(&mut unit, |d| {
        model::set_answer(d, "A1", &answer("u-unit")).unwrap()
    });
    assert_eq!(
        rules(&check_change(&before, &change, &author("u-unit", Role::Unit, false)).unwrap_err()),
        [(Rule::Owner, "answers/A1")]
    );
    // The header is the server's: written through the API, which checks it.
    let (before, change) = edit(&mut unit, |d| {
        model::set_scheduled_date(d, "1900-01-01").unwrap()
    });
    assert_eq!(
        rules(
            &check_change(&before, &change, &author("u-thu", Role::Secretariat, false))
                .unwrap_err()
        ),
        [(Rule::Owner, "header/scheduled_date")]
    );
    // A document without kind is a creation: never through sync.
    let mut fresh = replica("office");
    let (before, change) = edit(&mut fresh, |d| {
        model::init_inspection(d, &header()).unwrap()
    });
    assert_eq!(
        rules(
            &check_change(&before, &change, &author("u-thu", Role::Secretariat, false))
                .unwrap_err()
        ),
        [(Rule::Create, "kind")]
    );
}

fn peer(user: &str, role: Role, device: &str) -> PeerInfo {
    PeerInfo {
        user_id: user.into(),
        role,
        team_id: Some("t-01".into()),
        unit_code: None,
        device_id: device.into(),
    }
}

#[test]
fn an_actor_belongs_to_the_first_user_and_device_it_wrote_for() {
    let id = DocumentId::from_bytes([5; 16]);
    let mut rules_ = DocumentRules::new(registry());
    let mut doc = inspection();
    let mut an = fork(&mut doc, "tablet-an");
    let (before, change) = edit(&mut an, |d| {
        model::set_answer(d, "A1", &answer("u-an")).unwrap()
    });
    let an_peer = peer("u-an", Role::Inspector, "dev-an");
    assert!(rules_.check_change(&an_peer, &id, &before, &change).is_ok());
    rules_.accepted(&an_peer, &change);
    assert_eq!(
        rules_.actor_owner(change.actor_id()),
        Some(&ActorOwner {
            user_id: "u-an".into(),
            device_id: "dev-an".into()
        })
    );
    // A teammate writing with u-an's actor (the next sequence number) is
    // refused, even writing `by` = itself.
    let (before, forged) = edit(&mut an, |d| {
        model::set_answer(d, "A2", &answer("u-binh")).unwrap()
    });
    let binh = peer("u-binh", Role::Inspector, "dev-binh");
    let v = rules_
        .check_change(&binh, &id, &before, &forged)
        .unwrap_err();
    assert_eq!(rules(&v), [(Rule::Actor, "")]);
    // The same user on another device may not either.
    let other_device = peer("u-an", Role::Inspector, "dev-other");
    let v = rules_
        .check_change(&other_device, &id, &before, &forged)
        .unwrap_err();
    assert_eq!(v[0].rule, Rule::Actor);
    // The server's own actor, once bound, is nobody else's.
    rules_.bind_actor(
        ActorId::from(b"kiemtra-server".to_vec()),
        ActorOwner {
            user_id: "server".into(),
            device_id: "server".into(),
        },
    );
    let mut as_server = fork(&mut doc, "kiemtra-server");
    let (before, change) = edit(&mut as_server, |d| {
        model::set_answer(d, "A1", &answer("u-an")).unwrap()
    });
    assert_eq!(
        rules_
            .check_change(&an_peer, &id, &before, &change)
            .unwrap_err()[0]
            .rule,
        Rule::Actor
    );
}

#[test]
fn intake_keeps_the_good_changes_and_refuses_the_bad_ones_with_their_dependents() {
    let id = DocumentId::from_bytes([6; 16]);
    let rules_ = DocumentRules::new(registry());
    let mut doc = inspection();
    doc.commit();
    let before = doc.document().clone();
    let mut an = fork(&mut doc, "tablet-an");
    model::set_answer(&mut an, "A1", &answer("u-an")).unwrap();
    an.commit();
    // Forged `by`, then an honest edit on top of it (depends on it).
    model::set_answer(&mut an, "A2", &answer("u-binh")).unwrap();
    an.commit();
    model::add_finding(&mut an, "f1", &finding("u-an")).unwrap();
    an.commit();
    // And one concurrent honest branch that does not depend on the bad one.
    let mut side = fork(&mut doc, "tablet-an-2");
    model::set_answer(&mut side, "B8", &answer("u-an")).unwrap();
    side.commit();
    let mut changes = an.document().get_changes(&before.get_heads());
    changes.extend(side.document().get_changes(&before.get_heads()));
    assert_eq!(changes.len(), 4);
    let who = peer("u-an", Role::Inspector, "dev-an");
    let result = intake(&rules_, &who, &id, &before, changes.clone());
    assert_eq!(result.accepted.len(), 2, "{:?}", result.violations);
    assert_eq!(result.refused.len(), 2);
    let by_rule: BTreeMap<Rule, usize> =
        result.violations.iter().fold(BTreeMap::new(), |mut m, v| {
            *m.entry(v.rule).or_default() += 1;
            m
        });
    assert_eq!(
        by_rule,
        BTreeMap::from([(Rule::Author, 1), (Rule::Depends, 1)])
    );
    let answers = model_obj_ro(&result.doc, &["answers"]);
    let keys: Vec<String> = result.doc.keys(&answers).collect();
    assert_eq!(keys, ["A1", "B8"]);
    assert!(result.waiting.is_empty());

    // Changes whose dependencies are absent wait, unjudged.
    let later: Vec<Change> = changes[1..2].to_vec();
    let result = intake(&rules_, &who, &id, &before, later);
    assert!(result.accepted.is_empty() && result.refused.is_empty());
    assert_eq!(result.waiting.len(), 1);
}

fn model_obj_ro(d: &Automerge, path: &[&str]) -> automerge::ObjId {
    let mut obj = ROOT;
    for key in path {
        obj = d.get(&obj, *key).unwrap().unwrap().1;
    }
    obj
}

#[test]
fn schema_problems_are_blamed_on_the_change_that_caused_them() {
    let id = DocumentId::from_bytes([8; 16]);
    let rules_ = DocumentRules::new(registry());
    let mut doc = inspection();
    doc.commit();
    let before = doc.document().clone();
    let mut an = fork(&mut doc, "tablet-an");
    // An answer to an item the template does not have…
    let answers = model_obj(&an, &["answers"]);
    let a = an.put_object(&answers, "Z99", ObjType::Map).unwrap();
    an.put(&a, "value", "yes").unwrap();
    an.put(&a, "by", "u-an").unwrap();
    an.put(&a, "at", automerge::ScalarValue::Timestamp(T0))
        .unwrap();
    an.commit();
    // …and a valid one, concurrently.
    let mut side = fork(&mut doc, "tablet-an-2");
    model::set_answer(&mut side, "A1", &answer("u-an")).unwrap();
    side.commit();
    let mut changes = an.document().get_changes(&before.get_heads());
    changes.extend(side.document().get_changes(&before.get_heads()));
    let who = peer("u-an", Role::Inspector, "dev-an");
    let result = intake(&rules_, &who, &id, &before, changes);
    assert_eq!(result.accepted.len(), 1);
    assert_eq!(result.refused.len(), 1);
    assert!(
        result
            .violations
            .iter()
            .all(|v| v.rule == Rule::Invalid && v.path.starts_with("answers/Z99")),
        "{:?}",
        result.violations
    );
    assert!(model::validate(&result.doc, &registry()).is_ok());
}

#[test]
fn units_answer_their_actions_as_themselves() {
    let mut doc = replica("kiemtra-server");
    model::init_action(
        &mut doc,
        &ActionAssignment {
            inspection_id: DocumentId::from_bytes([3; 16]),
            finding_id: "f1".into(),
            unit_code: "00004".into(),
            team_id: None,
            title: "Lắp đầu đọc chip".into(),
            due_date: "2025-09-30".into(),
            priority: Priority::Normal,
            created_by: "u-thu".into(),
            created_at: T0,
        },
    )
    .unwrap();
    doc.commit();
    let mut unit = fork(&mut doc, "unit-device");
    let response = |by: &str| ActionResponse {
        text: "Đã lắp".into(),
        evidence: BTreeSet::new(),
        done: true,
        by: by.into(),
        at: 253_402_300_799_000, // year 9999: shown, never trusted
    };
    let (before, change) = edit(&mut unit, |d| {
        model::respond_action(d, "r1", &response("u-unit")).unwrap()
    });
    let unit_author = author("u-unit", Role::Unit, false);
    assert!(check_change(&before, &change, &unit_author).is_ok());
    let (before, change) = edit(&mut unit, |d| {
        model::respond_action(d, "r2", &response("u-thu")).unwrap()
    });
    assert_eq!(
        rules(&check_change(&before, &change, &unit_author).unwrap_err()),
        [(Rule::Author, "responses/r2/by")]
    );
    // A response is a record: not edited afterwards.
    let (before, change) = edit(&mut unit, |d| {
        let r = model_obj(d, &["responses", "r1"]);
        d.put(&r, "done", false).unwrap();
    });
    assert_eq!(
        rules(&check_change(&before, &change, &unit_author).unwrap_err()),
        [(Rule::Immutable, "responses/r1/done")]
    );
}
