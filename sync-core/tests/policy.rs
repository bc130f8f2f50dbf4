//! Field ownership: every batch of changes is checked change by change, and a
//! write outside the author's sections is refused naming the exact change.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Automerge, ChangeHash, ROOT, ReadDoc, ScalarValue};
use sync_core::DocumentId;
use sync_core::model::{
    self, ActionAssignment, ActionResponse, Answer, CatalogTemplate, DocKind, Finding,
    InspectionHeader, MemberRole, Person, Priority, ReviewState, Severity, Verification,
    VerificationDecision,
};
use sync_core::policy::{Role, Violation, check_changes, may_create, writable_paths};
use sync_core::template::{AnswerValue, Template};

const T0: i64 = 1_750_000_000_000;

fn header() -> InspectionHeader {
    InspectionHeader {
        unit_code: "00004".into(),
        unit_name: "Phường Ba Đình".into(),
        template_id: "DA06-HN-2025-v1".into(),
        template_version: 1,
        team_id: "t-01".into(),
        members: BTreeMap::from([("u-an".to_owned(), MemberRole::Lead)]),
        scheduled_date: "2025-07-15".into(),
        created_at: T0,
    }
}

fn replica(actor: &str) -> AutoCommit {
    AutoCommit::new().with_actor(ActorId::from(actor.as_bytes().to_vec()))
}

fn snapshot(doc: &mut AutoCommit) -> Automerge {
    doc.document().clone()
}

/// An inspection created by the secretariat, and a tablet's copy of it.
fn inspection() -> (Automerge, AutoCommit) {
    let mut doc = replica("secretariat");
    model::init_inspection(&mut doc, &header()).unwrap();
    doc.commit();
    let before = snapshot(&mut doc);
    let tablet = doc.fork().with_actor(ActorId::from(b"tablet".to_vec()));
    (before, tablet)
}

fn answer() -> Answer {
    Answer {
        value: AnswerValue::YesNo(true),
        fields: BTreeMap::new(),
        evidence: BTreeSet::new(),
        note: None,
        by: "u-an".into(),
        at: T0 + 1,
    }
}

fn finding() -> Finding {
    Finding {
        item_id: None,
        title: "Thiếu đầu đọc chip".into(),
        note: String::new(),
        severity: Severity::Low,
        photos: BTreeSet::new(),
        by: "u-an".into(),
        at: T0 + 2,
        deleted: false,
    }
}

fn paths(v: &[Violation]) -> Vec<&str> {
    v.iter().map(|v| v.path.as_str()).collect()
}

fn hashes(v: &[Violation]) -> Vec<ChangeHash> {
    v.iter().map(|v| v.change).collect()
}

#[test]
fn roles_parse_and_print() {
    for role in Role::ALL {
        assert_eq!(Role::parse(role.as_str()), Some(role));
        assert_eq!(role.as_str().parse::<Role>(), Ok(role));
    }
    assert_eq!(Role::parse("Inspector"), None);
    assert!(
        "boss"
            .parse::<Role>()
            .unwrap_err()
            .to_string()
            .contains("boss")
    );
}

#[test]
fn creation_rights() {
    // Documents are created by the server only (through the API, which
    // checks units, teams and members), never through sync.
    assert!(!may_create(Role::Secretariat, DocKind::Inspection));
    assert!(may_create(Role::Server, DocKind::Inspection));
    assert!(!may_create(Role::Inspector, DocKind::Inspection));
    assert!(!may_create(Role::Secretariat, DocKind::Action));
    assert!(may_create(Role::Server, DocKind::Action));
    assert!(!may_create(Role::Unit, DocKind::Action));
    assert!(may_create(Role::Server, DocKind::Catalog));
    assert!(!may_create(Role::Secretariat, DocKind::Catalog));
    assert!(may_create(Role::Server, DocKind::Index));
    assert!(!may_create(Role::Admin, DocKind::Index));
    for kind in DocKind::ALL {
        assert!(!may_create(Role::Leader, kind));
        assert!(!may_create(Role::Admin, kind));
    }
}

#[test]
fn ownership_table() {
    use DocKind::*;
    assert_eq!(writable_paths(Inspection, Role::Secretariat), ["review"]);
    assert_eq!(
        writable_paths(Inspection, Role::Inspector),
        ["answers", "findings", "photos", "submissions"]
    );
    assert_eq!(writable_paths(Inspection, Role::Unit), [] as [&str; 0]);
    assert_eq!(
        writable_paths(Inspection, Role::Server),
        [
            "header",
            "answers",
            "findings",
            "photos",
            "submissions",
            "review"
        ]
    );
    assert_eq!(
        writable_paths(Action, Role::Secretariat),
        ["assignment", "verification"]
    );
    assert_eq!(writable_paths(Action, Role::Inspector), ["verification"]);
    assert_eq!(writable_paths(Action, Role::Unit), ["responses"]);
    assert_eq!(
        writable_paths(Catalog, Role::Server),
        ["units", "templates", "people"]
    );
    assert_eq!(
        writable_paths(Index, Role::Server),
        ["user_id", "documents"]
    );
    for kind in DocKind::ALL {
        assert_eq!(writable_paths(kind, Role::Leader), [] as [&str; 0]);
        assert_eq!(writable_paths(kind, Role::Admin), [] as [&str; 0]);
    }
    assert_eq!(writable_paths(Catalog, Role::Secretariat), [] as [&str; 0]);
}

#[test]
fn only_the_server_creates_an_inspection() {
    let empty = Automerge::new();
    let mut doc = replica("someone");
    model::init_inspection(&mut doc, &header()).unwrap();
    let created = doc.commit().unwrap();
    let after = snapshot(&mut doc);
    assert_eq!(check_changes(&empty, &after, Role::Server), Ok(()));
    // The secretariat schedules through the API; a creation through sync is
    // refused, with the header it does not own.
    let v = check_changes(&empty, &after, Role::Secretariat).unwrap_err();
    assert!(paths(&v).contains(&"kind") && paths(&v).contains(&"header"));
    assert_eq!(
        v.iter().find(|v| v.path == "kind").unwrap().reason,
        "role secretariat may not create inspection documents"
    );

    let v = check_changes(&empty, &after, Role::Inspector).unwrap_err();
    // One violation for the creation itself, one per section the inspector
    // does not own (header, review); the sections it owns are fine.
    assert_eq!(paths(&v), ["header", "kind", "review"]);
    assert!(
        v.iter()
            .all(|v| v.change == created && v.role == Role::Inspector)
    );
    let kind = v.iter().find(|v| v.path == "kind").unwrap();
    assert_eq!(
        kind.reason,
        "role inspector may not create inspection documents"
    );
}

#[test]
fn inspector_may_answer_and_record_findings() {
    let (before, mut tablet) = inspection();
    model::set_answer(&mut tablet, "A1", &answer()).unwrap();
    model::add_finding(&mut tablet, "f1", &finding()).unwrap();
    model::splice_finding_note(&mut tablet, "f1", 0, 0, "Ghi chú").unwrap();
    tablet.commit();
    model::submit(&mut tablet, "s1", "u-an", T0 + 3, None).unwrap();
    tablet.commit();
    assert_eq!(
        check_changes(&before, &snapshot(&mut tablet), Role::Inspector),
        Ok(())
    );
}

#[test]
fn inspector_writing_the_review_is_refused_naming_the_change() {
    let (before, mut tablet) = inspection();
    model::review_decide(
        &mut tablet,
        "d1",
        ReviewState::Accepted,
        "u-an",
        T0 + 5,
        None,
    )
    .unwrap();
    let offending = tablet.commit().unwrap();
    let v = check_changes(&before, &snapshot(&mut tablet), Role::Inspector).unwrap_err();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].path, "review/decisions/d1");
    assert!(v[0].path.starts_with("review"));
    assert_eq!(v[0].change, offending);
    assert_eq!(v[0].role, Role::Inspector);
    assert_eq!(
        v[0].reason,
        "role inspector may write only answers, findings, photos, submissions in inspection documents"
    );
}

#[test]
fn secretariat_may_review() {
    let (before, mut office) = inspection();
    model::review_decide(
        &mut office,
        "d1",
        ReviewState::Returned,
        "u-thu",
        T0 + 5,
        Some("Thiếu"),
    )
    .unwrap();
    model::review_comment(
        &mut office,
        "c1",
        &model::CommentTarget::General,
        "Bổ sung ảnh",
        "u-thu",
        T0 + 6,
    )
    .unwrap();
    office.commit();
    assert_eq!(
        check_changes(&before, &snapshot(&mut office), Role::Secretariat),
        Ok(())
    );
    // …and the same changes from an inspector would be refused. One change
    // wrote both review entries; the first of the equally precise paths
    // names it.
    let v = check_changes(&before, &snapshot(&mut office), Role::Inspector).unwrap_err();
    assert_eq!(paths(&v), ["review/decisions/d1"]);
    // The header is the server's: rescheduling goes through the API.
    model::set_scheduled_date(&mut office, "2025-07-20").unwrap();
    office.commit();
    let v = check_changes(&before, &snapshot(&mut office), Role::Secretariat).unwrap_err();
    assert_eq!(paths(&v), ["header/scheduled_date"]);
}

#[test]
fn unit_writing_answers_is_refused() {
    let (before, mut doc) = inspection();
    model::set_answer(&mut doc, "A1", &answer()).unwrap();
    let change = doc.commit().unwrap();
    let v = check_changes(&before, &snapshot(&mut doc), Role::Unit).unwrap_err();
    assert_eq!(paths(&v), ["answers/A1"]);
    assert_eq!(hashes(&v), [change]);
    assert_eq!(v[0].reason, "role unit may not write inspection documents");
}

#[test]
fn leader_and_admin_may_write_nothing() {
    let (before, mut doc) = inspection();
    model::set_answer(&mut doc, "A1", &answer()).unwrap();
    let c1 = doc.commit().unwrap();
    model::review_decide(
        &mut doc,
        "d1",
        ReviewState::Accepted,
        "u-lead",
        T0 + 5,
        None,
    )
    .unwrap();
    let c2 = doc.commit().unwrap();
    let after = snapshot(&mut doc);
    for role in [Role::Leader, Role::Admin] {
        let v = check_changes(&before, &after, role).unwrap_err();
        assert_eq!(paths(&v), ["answers/A1", "review/decisions/d1"]);
        assert_eq!(hashes(&v), [c1, c2]);
    }
}

#[test]
fn kind_and_schema_never_change_even_for_the_server() {
    let (before, mut doc) = inspection();
    doc.put(ROOT, "kind", "action").unwrap();
    let c1 = doc.commit().unwrap();
    doc.put(ROOT, "schema", ScalarValue::Uint(2)).unwrap();
    let c2 = doc.commit().unwrap();
    let after = snapshot(&mut doc);
    for role in Role::ALL {
        let v = check_changes(&before, &after, role).unwrap_err();
        assert_eq!(paths(&v), ["kind", "schema"], "{role}");
        assert_eq!(hashes(&v), [c1, c2]);
        assert_eq!(
            v[0].reason,
            "kind is fixed when the document is created and never changes"
        );
    }
}

#[test]
fn writes_without_visible_effect_are_caught_too() {
    // The secretariat decided, then replaced the decisions map: the old
    // decision object is no longer reachable.
    let mut office = replica("secretariat");
    model::init_inspection(&mut office, &header()).unwrap();
    model::review_decide(&mut office, "d1", ReviewState::Returned, "u-thu", T0, None).unwrap();
    office.commit();
    let review = office.get(ROOT, "review").unwrap().unwrap().1;
    let decisions = office.get(&review, "decisions").unwrap().unwrap().1;
    let d1 = office.get(&decisions, "d1").unwrap().unwrap().1;
    office
        .put_object(&review, "decisions", automerge::ObjType::Map)
        .unwrap();
    office.commit();
    let before = snapshot(&mut office);

    // A crafted change writes into the unreachable object: the diff of the
    // change is empty, but the operation is still the inspector's to answer for.
    let mut tablet = office.fork().with_actor(ActorId::from(b"tablet".to_vec()));
    tablet.put(&d1, "state", "accepted").unwrap();
    let hidden = tablet.commit().unwrap();
    let after = snapshot(&mut tablet);
    let change = after.get_change_by_hash(&hidden).unwrap();
    assert_eq!(after.diff(change.deps(), &[hidden]), []);
    let v = check_changes(&before, &after, Role::Inspector).unwrap_err();
    assert_eq!(paths(&v), ["review/decisions/d1/state"]);
    assert_eq!(hashes(&v), [hidden]);
}

#[test]
fn the_creator_may_lay_out_empty_sections_but_not_fill_them() {
    let empty = Automerge::new();
    let mut doc = replica("secretariat");
    model::init_inspection(&mut doc, &header()).unwrap();
    let answer = Answer {
        by: "u-thu".into(),
        ..answer()
    };
    model::set_answer(&mut doc, "A1", &answer).unwrap();
    let created = doc.commit().unwrap();
    // Even the server lays out sections only as the creator of the
    // document; here it may also fill them (it owns every section)…
    assert_eq!(
        check_changes(&empty, &snapshot(&mut doc), Role::Server),
        Ok(())
    );
    // …while anyone else is refused the creation and every section it filled.
    let v = check_changes(&empty, &snapshot(&mut doc), Role::Secretariat).unwrap_err();
    assert_eq!(
        paths(&v),
        [
            "answers",
            "findings",
            "header",
            "kind",
            "photos",
            "submissions"
        ]
    );
    assert!(hashes(&v).iter().all(|h| *h == created));
}

#[test]
fn a_mixed_batch_reports_only_the_forbidden_change() {
    let (before, mut tablet) = inspection();
    model::set_answer(&mut tablet, "A1", &answer()).unwrap();
    let allowed = tablet.commit().unwrap();
    model::review_comment(
        &mut tablet,
        "c1",
        &model::CommentTarget::General,
        "Tự duyệt",
        "u-an",
        T0 + 7,
    )
    .unwrap();
    let forbidden = tablet.commit().unwrap();
    model::add_finding(&mut tablet, "f1", &finding()).unwrap();
    let allowed_too = tablet.commit().unwrap();
    let v = check_changes(&before, &snapshot(&mut tablet), Role::Inspector).unwrap_err();
    assert_eq!(hashes(&v), [forbidden]);
    assert!(!hashes(&v).contains(&allowed) && !hashes(&v).contains(&allowed_too));
    assert_eq!(paths(&v), ["review/comments/c1"]);
}

#[test]
fn concurrent_changes_are_each_judged_on_their_own() {
    let (before, mut an) = inspection();
    let mut binh = an.fork().with_actor(ActorId::from(b"tablet-binh".to_vec()));
    model::set_answer(&mut an, "A1", &answer()).unwrap();
    an.commit();
    model::review_decide(
        &mut binh,
        "d1",
        ReviewState::Accepted,
        "u-binh",
        T0 + 5,
        None,
    )
    .unwrap();
    let bad = binh.commit().unwrap();
    an.merge(&mut binh).unwrap();
    let v = check_changes(&before, &snapshot(&mut an), Role::Inspector).unwrap_err();
    assert_eq!(hashes(&v), [bad]);
}

#[test]
fn deleting_a_section_needs_ownership() {
    let (before, mut doc) = inspection();
    doc.delete(ROOT, "review").unwrap();
    let change = doc.commit().unwrap();
    let after = snapshot(&mut doc);
    let v = check_changes(&before, &after, Role::Inspector).unwrap_err();
    assert_eq!(paths(&v), ["review"]);
    assert_eq!(hashes(&v), [change]);
    assert_eq!(check_changes(&before, &after, Role::Secretariat), Ok(()));
}

#[test]
fn unknown_top_level_keys_belong_to_nobody() {
    let (before, mut doc) = inspection();
    doc.put(ROOT, "notes", "x").unwrap();
    let change = doc.commit().unwrap();
    let after = snapshot(&mut doc);
    for role in Role::ALL {
        let v = check_changes(&before, &after, role).unwrap_err();
        assert_eq!(paths(&v), ["notes"], "{role}");
        assert_eq!(hashes(&v), [change]);
    }
}

#[test]
fn no_new_changes_is_ok_and_a_foreign_state_is_not() {
    let (before, mut tablet) = inspection();
    assert_eq!(check_changes(&before, &before, Role::Leader), Ok(()));
    assert_eq!(
        check_changes(&before, &snapshot(&mut tablet), Role::Leader),
        Ok(())
    );

    // `after` that does not contain `before` is refused, not silently passed.
    let mut other = replica("elsewhere");
    model::init_inspection(&mut other, &header()).unwrap();
    other.commit();
    let v = check_changes(&before, &snapshot(&mut other), Role::Server).unwrap_err();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].change, before.get_heads()[0]);
}

#[test]
fn a_document_without_kind_is_refused() {
    let empty = Automerge::new();
    let mut doc = replica("someone");
    doc.put(ROOT, "answers", "x").unwrap();
    let change = doc.commit().unwrap();
    let v = check_changes(&empty, &snapshot(&mut doc), Role::Server).unwrap_err();
    assert_eq!(paths(&v), ["kind"]);
    assert_eq!(hashes(&v), [change]);
}

fn action() -> (Automerge, AutoCommit) {
    let mut doc = replica("secretariat");
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
    let before = snapshot(&mut doc);
    let fork = doc.fork().with_actor(ActorId::from(b"other".to_vec()));
    (before, fork)
}

#[test]
fn action_ownership() {
    let (before, mut unit) = action();
    model::respond_action(
        &mut unit,
        "r1",
        &ActionResponse {
            text: "Đã lắp".into(),
            evidence: BTreeSet::new(),
            done: true,
            by: "u-unit".into(),
            at: T0 + 1,
        },
    )
    .unwrap();
    unit.commit();
    let responded = snapshot(&mut unit);
    assert_eq!(check_changes(&before, &responded, Role::Unit), Ok(()));
    assert_eq!(
        paths(&check_changes(&before, &responded, Role::Inspector).unwrap_err()),
        ["responses/r1"]
    );

    let verification = Verification {
        decision: VerificationDecision::Closed,
        note: None,
        by: "u-an".into(),
        at: T0 + 2,
    };
    let mut verifier = unit.fork();
    model::verify_action(&mut verifier, "v1", &verification).unwrap();
    verifier.commit();
    let verified = snapshot(&mut verifier);
    assert_eq!(
        check_changes(&responded, &verified, Role::Inspector),
        Ok(())
    );
    assert_eq!(
        check_changes(&responded, &verified, Role::Secretariat),
        Ok(())
    );
    assert_eq!(
        paths(&check_changes(&responded, &verified, Role::Unit).unwrap_err()),
        ["verification/v1"]
    );

    let mut moved = unit.fork();
    model::update_due_date(&mut moved, "2025-12-31").unwrap();
    moved.commit();
    let moved = snapshot(&mut moved);
    assert_eq!(check_changes(&responded, &moved, Role::Secretariat), Ok(()));
    assert_eq!(
        paths(&check_changes(&responded, &moved, Role::Unit).unwrap_err()),
        ["assignment/due_date"]
    );
}

#[test]
fn catalog_is_server_only_and_published_templates_are_frozen() {
    let empty = Automerge::new();
    let mut doc = replica("server");
    model::init_catalog(&mut doc).unwrap();
    let template = Template::from_json(include_str!("data/checklist_de_an_06.json")).unwrap();
    model::put_template(&mut doc, &CatalogTemplate::from_template(&template)).unwrap();
    doc.commit();
    let published = snapshot(&mut doc);
    assert_eq!(check_changes(&empty, &published, Role::Server), Ok(()));
    assert_eq!(
        paths(&check_changes(&empty, &published, Role::Secretariat).unwrap_err()),
        ["kind", "people", "templates", "units"]
    );

    model::put_person(
        &mut doc,
        "u-an",
        &Person {
            display_name: "An".into(),
        },
    )
    .unwrap();
    doc.commit();
    let with_person = snapshot(&mut doc);
    assert_eq!(
        check_changes(&published, &with_person, Role::Server),
        Ok(())
    );
    assert_eq!(
        paths(&check_changes(&published, &with_person, Role::Secretariat).unwrap_err()),
        ["people/u-an"]
    );

    // Editing a published template behind the writer's back is refused even
    // for the server.
    let templates = doc.get(ROOT, "templates").unwrap().unwrap().1;
    let t = doc.get(&templates, "DA06-HN-2025-v1@1").unwrap().unwrap().1;
    doc.put(&t, "title", "Khác").unwrap();
    let edit = doc.commit().unwrap();
    let v = check_changes(&with_person, &snapshot(&mut doc), Role::Server).unwrap_err();
    assert_eq!(paths(&v), ["templates/DA06-HN-2025-v1@1/title"]);
    assert_eq!(hashes(&v), [edit]);
}

#[test]
fn index_is_server_only() {
    let empty = Automerge::new();
    let mut doc = replica("server");
    model::init_index(&mut doc, "u-an").unwrap();
    doc.commit();
    let after = snapshot(&mut doc);
    assert_eq!(check_changes(&empty, &after, Role::Server), Ok(()));
    let v = check_changes(&empty, &after, Role::Inspector).unwrap_err();
    assert_eq!(paths(&v), ["documents", "kind", "user_id"]);
}
