//! In-memory network tests: one server hub, five client hubs, real
//! protocol frames, real SQLite storage on the server.
//!
//! Documents are created by the server; clients ask for them. Every change a
//! client sends is judged on its own (`sync_core::protocol::intake`): the
//! ones that break a rule, and the ones that depend on them, are refused and
//! never stored; the rest are kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};

use automerge::{ObjType, ROOT, ReadDoc, transaction::Transactable};
use support::{Net, client_actor, in_tx, json, new_changes, peer};
use sync_core::access::ActorOwner;
use sync_core::ids::DocumentId;
use sync_core::model::{
    self, Answer, Finding, InspectionHeader, MemberRole, ReviewState, Severity,
};
use sync_core::policy::{Role, Rule};
use sync_core::protocol::hub::{ConnId, Event};
use sync_core::protocol::{ErrorCode, Message};
use sync_core::template::{AnswerValue, Tri};

const INSPECTION: DocumentId = DocumentId::from_bytes([0x42; 16]);

const SECRETARIAT: usize = 0;
const INSPECTOR1: usize = 1;
const INSPECTOR2: usize = 2;
const INSPECTOR3: usize = 3;
const UNIT: usize = 4;

fn header() -> InspectionHeader {
    InspectionHeader {
        unit_code: "00004".into(),
        unit_name: "Phường Ba Đình".into(),
        template_id: "DA06-HN-2025-v1".into(),
        template_version: 1,
        team_id: "t-a".into(),
        members: BTreeMap::from([
            ("u-inspector1".to_owned(), MemberRole::Lead),
            ("u-inspector2".to_owned(), MemberRole::Member),
        ]),
        scheduled_date: "2025-10-15".into(),
        created_at: 1_760_000_000_000,
    }
}

fn answer(value: AnswerValue, by: &str, at: i64) -> Answer {
    Answer {
        value,
        fields: BTreeMap::new(),
        evidence: BTreeSet::new(),
        note: None,
        by: by.into(),
        at,
    }
}

fn finding(title: &str, by: &str, at: i64) -> Finding {
    Finding {
        item_id: Some("A2".into()),
        title: title.into(),
        note: "Thiếu quyết định".into(),
        severity: Severity::Medium,
        photos: BTreeSet::new(),
        by: by.into(),
        at,
        deleted: false,
    }
}

/// 0 secretariat, 1 inspector1 (team A, lead), 2 inspector2 (team A),
/// 3 inspector3 (team B), 4 the inspected unit.
fn net() -> Net {
    let mut net = Net::new(vec![
        peer("u-secretariat", Role::Secretariat, None, None),
        peer("u-inspector1", Role::Inspector, Some("t-a"), None),
        peer("u-inspector2", Role::Inspector, Some("t-a"), None),
        peer("u-inspector3", Role::Inspector, Some("t-b"), None),
        peer("u-unit-00004", Role::Unit, None, Some("00004")),
    ]);
    for i in 0..5 {
        net.connect(i);
    }
    net.run(1_000);
    for i in 0..5 {
        assert!(
            net.clients[i].hub.is_ready(0),
            "client {i} finished the handshake"
        );
    }
    net
}

/// The server creates the inspection (as `POST /api/v1/inspections` does).
fn created() -> Net {
    let mut net = net();
    net.server_create(INSPECTION, |tx| model::init_inspection(tx, &header()));
    net
}

/// `created()`, with the inspection open on `clients`.
fn opened(clients: &[usize]) -> Net {
    let mut net = created();
    for &i in clients {
        net.want(i, INSPECTION);
    }
    net.run(1_000);
    for &i in clients {
        assert_eq!(
            net.client_doc(i, &INSPECTION).map(|d| d.get_heads()),
            Some(net.server.heads(&INSPECTION)),
            "client {i} holds the inspection"
        );
    }
    net
}

/// The one change client `i` made last.
fn last_made(net: &Net, i: usize) -> automerge::Change {
    net.clients[i].made.last().unwrap().1.clone()
}

fn stored_inspection(net: &Net) -> model::Inspection {
    let doc = net.server.store.load(INSPECTION).unwrap().unwrap();
    model::read_inspection(&doc, &support::registry()).unwrap()
}

#[test]
fn the_server_creates_clients_request_and_edit_all_converge() {
    let mut net = opened(&[SECRETARIAT, INSPECTOR2]);
    net.edit(INSPECTOR2, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A2",
            &answer(
                AnswerValue::YesNoPartial(Tri::Partial),
                "u-inspector2",
                2_000,
            ),
        )
    });
    net.edit(INSPECTOR2, &INSPECTION, |tx| {
        model::add_finding(
            tx,
            "f-1",
            &finding("Tổ công tác chưa kiện toàn", "u-inspector2", 2_001),
        )
    });
    net.run(1_000);

    // The server and the secretariat (who has the document open) converge.
    let server_doc = net.server.hub.document(&INSPECTION).unwrap();
    for i in [SECRETARIAT, INSPECTOR2] {
        let doc = net.client_doc(i, &INSPECTION).unwrap();
        assert_eq!(doc.get_heads(), server_doc.get_heads(), "client {i} heads");
        assert_eq!(json(doc), json(server_doc), "client {i} content");
    }
    let inspection = model::read_inspection(server_doc, &support::registry()).unwrap();
    assert_eq!(
        inspection.answers["A2"].value,
        AnswerValue::YesNoPartial(Tri::Partial)
    );
    assert_eq!(
        inspection.findings["f-1"].title,
        "Tổ công tác chưa kiện toàn"
    );
    // And what the server stored is what it serves.
    let stored = net.server.store.load(INSPECTION).unwrap().unwrap();
    assert_eq!(stored.get_heads(), server_doc.get_heads());
    // Each side wrote with its own actor.
    let actors: BTreeSet<_> = stored
        .get_changes(&[])
        .iter()
        .map(|c| c.actor_id().clone())
        .collect();
    assert_eq!(
        actors,
        BTreeSet::from([support::server_actor(), client_actor(INSPECTOR2)])
    );
}

#[test]
fn another_team_gets_doc_unavailable_and_nothing_of_the_content() {
    let mut net = created();
    net.want(INSPECTOR3, INSPECTION);
    net.run(1_000);
    assert!(net.client_doc(INSPECTOR3, &INSPECTION).is_none());
    let unavailable = net.to_clients[INSPECTOR3].iter().any(
        |m| matches!(m, Message::DocUnavailable { document_id, .. } if *document_id == INSPECTION),
    );
    assert!(
        unavailable,
        "server sent doc-unavailable: {:?}",
        net.to_clients[INSPECTOR3]
    );
    // No sync frame about that document ever went to inspector3.
    assert!(net.syncs_to(INSPECTOR3, &INSPECTION).is_empty());
    assert!(net.clients[INSPECTOR3].events.iter().any(|e| matches!(
        e,
        Event::RemoteUnavailable { document_id, .. } if *document_id == INSPECTION
    )));

    // A document that does not exist looks exactly the same.
    let missing = DocumentId::from_bytes([0x99; 16]);
    net.want(INSPECTOR3, missing);
    net.run(1_000);
    assert!(net.to_clients[INSPECTOR3].iter().any(|m| {
        matches!(m, Message::DocUnavailable { document_id, .. } if *document_id == missing)
    }));
}

#[test]
fn an_inspector_writing_review_is_refused_and_the_server_copy_is_unchanged() {
    let mut net = opened(&[INSPECTOR1]);
    let before = net.server_stored();

    net.edit(INSPECTOR1, &INSPECTION, |tx| {
        model::review_decide(
            tx,
            "d-1",
            ReviewState::Accepted,
            "u-inspector1",
            3_000,
            None,
        )
    });
    net.run(1_000);

    let errors = net.errors_to(INSPECTOR1);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains(&INSPECTION.to_string()), "{}", errors[0]);
    assert!(errors[0].contains("review"), "{}", errors[0]);
    assert_eq!(
        net.server_stored(),
        before,
        "stored bytes are byte-for-byte unchanged"
    );
    let refusals = net.refusals_of(INSPECTOR1);
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].violations[0].rule, Rule::Owner);
    assert!(net.clients[INSPECTOR1].events.iter().any(|e| matches!(
        e,
        Event::Refused { document_id, .. } if *document_id == INSPECTION
    )));
    // The server keeps serving: a fresh answer from inspector2 on the same
    // inspection goes through.
    net.want(INSPECTOR2, INSPECTION);
    net.run(1_000);
    net.edit(INSPECTOR2, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A1",
            &answer(AnswerValue::YesNo(true), "u-inspector2", 3_100),
        )
    });
    net.run(1_000);
    let inspection = stored_inspection(&net);
    assert!(inspection.answers.contains_key("A1"));
    assert!(
        inspection.decisions.is_empty(),
        "the refused decision never reached the server"
    );
    assert!(net.refusals_of(INSPECTOR2).is_empty());
}

#[test]
fn a_unit_writing_answers_is_refused_and_the_server_copy_is_unchanged() {
    let mut net = opened(&[SECRETARIAT]);
    // The unit may read its inspection once the secretariat accepts it.
    net.edit(SECRETARIAT, &INSPECTION, |tx| {
        model::review_decide(
            tx,
            "d-1",
            ReviewState::Accepted,
            "u-secretariat",
            3_000,
            None,
        )
    });
    net.run(1_000);
    net.want(UNIT, INSPECTION);
    net.run(1_000);
    assert!(
        net.client_doc(UNIT, &INSPECTION).is_some(),
        "the unit reads the accepted inspection"
    );
    let before = net.server_stored();

    net.edit(UNIT, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A1",
            &answer(AnswerValue::YesNo(true), "u-unit-00004", 3_200),
        )
    });
    net.run(1_000);
    let errors = net.errors_to(UNIT);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains(&INSPECTION.to_string()));
    assert!(errors[0].contains("answers"), "{}", errors[0]);
    assert_eq!(net.server_stored(), before);
}

#[test]
fn a_unit_cannot_read_an_inspection_before_it_is_accepted() {
    let mut net = created();
    net.want(UNIT, INSPECTION);
    net.run(1_000);
    assert!(net.client_doc(UNIT, &INSPECTION).is_none());
    assert!(
        net.to_clients[UNIT]
            .iter()
            .any(|m| matches!(m, Message::DocUnavailable { .. }))
    );
}

#[test]
fn documents_are_not_created_through_sync_not_even_by_the_secretariat() {
    let mut net = net();
    for (i, id) in [
        (INSPECTOR1, DocumentId::from_bytes([0x07; 16])),
        (SECRETARIAT, DocumentId::from_bytes([0x08; 16])),
    ] {
        net.client_create(i, id, |tx| model::init_inspection(tx, &header()));
        net.run(1_000);
        assert!(net.server.stored_bytes(id).is_none());
        assert!(net.server.hub.document(&id).is_none());
        assert!(
            net.to_clients[i].iter().any(
                |m| matches!(m, Message::DocUnavailable { document_id, .. } if *document_id == id)
            ),
            "client {i}: {:?}",
            net.to_clients[i]
        );
        assert!(net.errors_to(i).is_empty(), "{:?}", net.errors_to(i));
    }
}

#[test]
fn invalid_content_from_an_allowed_role_is_refused() {
    let mut net = opened(&[INSPECTOR1]);
    let before = net.server_stored();
    // An answer to an item the template does not know.
    net.edit(INSPECTOR1, &INSPECTION, |tx| {
        let answers = match tx.get(ROOT, "answers")? {
            Some((_, id)) => id,
            None => return Ok(()),
        };
        tx.put(&answers, "Z99", "yes")?;
        Ok(())
    });
    net.run(1_000);
    let errors = net.errors_to(INSPECTOR1);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("Z99"), "{}", errors[0]);
    assert_eq!(net.server_stored(), before);
    let refusals = net.refusals_of(INSPECTOR1);
    assert_eq!(refusals[0].violations[0].rule, Rule::Invalid);
}

#[test]
fn changes_from_one_client_reach_every_client_that_has_the_document_open() {
    let mut net = opened(&[SECRETARIAT, INSPECTOR1, INSPECTOR2]);
    net.edit(INSPECTOR1, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A4",
            &answer(AnswerValue::Number(3), "u-inspector1", 4_000),
        )
    });
    net.run(1_000);
    let server_heads = net.server.heads(&INSPECTION);
    for i in [SECRETARIAT, INSPECTOR1, INSPECTOR2] {
        assert_eq!(
            net.client_doc(i, &INSPECTION).unwrap().get_heads(),
            server_heads,
            "client {i}"
        );
    }
    // The server never announced the document to those who did not ask.
    assert!(net.client_doc(INSPECTOR3, &INSPECTION).is_none());
    assert!(net.client_doc(UNIT, &INSPECTION).is_none());
}

#[test]
fn nothing_is_sent_about_a_change_before_it_is_committed() {
    let mut net = opened(&[INSPECTOR1]);
    net.edit(INSPECTOR1, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A1",
            &answer(AnswerValue::YesNo(false), "u-inspector1", 5_000),
        )
    });
    // Deliver the client's frames to the server by hand, without committing.
    let frames: Vec<_> = std::mem::take(&mut net.wire);
    let mut pending = Vec::new();
    for f in frames {
        assert!(f.to_server);
        let mut fx = net
            .server
            .hub
            .receive(f.client as ConnId, &f.bytes, net.now);
        assert!(
            fx.outgoing.is_empty() || fx.store.is_empty(),
            "a frame reflecting an uncommitted change would leave with its store request"
        );
        pending.append(&mut fx.store);
    }
    assert_eq!(pending.len(), 1, "one store request for the new change");
    // Nothing of the new heads went out yet; commit, and the reply follows.
    let fx = net.server.hub.committed(pending[0].ticket, net.now);
    assert!(!fx.outgoing.is_empty(), "the reply leaves after the commit");
}

// ----- one change at a time ---------------------------------------------

/// (a) Actors are bound to the (user, device) whose change first used them.
#[test]
fn a_change_under_a_teammates_actor_is_refused_and_the_real_device_carries_on() {
    let mut net = opened(&[INSPECTOR1, INSPECTOR2]);
    net.edit(INSPECTOR1, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A1",
            &answer(AnswerValue::YesNo(true), "u-inspector1", 6_000),
        )
    });
    net.run(1_000);
    assert_eq!(
        net.server
            .hub
            .access()
            .actor_owner(&client_actor(INSPECTOR1)),
        Some(&ActorOwner {
            user_id: "u-inspector1".into(),
            device_id: "dev-u-inspector1".into(),
        })
    );

    // inspector2 writes, under inspector1's actor, the change that actor
    // would make next. Everything else about it is what inspector2 may write.
    let mut forged = net.fork(INSPECTOR2, &INSPECTION);
    let base = forged.get_heads();
    forged.set_actor(client_actor(INSPECTOR1));
    in_tx(&mut forged, |tx| {
        model::set_answer(
            tx,
            "A2",
            &answer(AnswerValue::YesNoPartial(Tri::No), "u-inspector2", 6_100),
        )
    })
    .unwrap();
    let forged_change = new_changes(&forged, &base).pop().unwrap();
    assert_eq!(forged_change.actor_id(), &client_actor(INSPECTOR1));
    assert_eq!(forged_change.seq(), 2);
    net.send_changes(
        INSPECTOR2,
        INSPECTION,
        forged.get_heads(),
        std::slice::from_ref(&forged_change),
    );
    net.run(1_000);

    let refusals = net.refusals_of(INSPECTOR2);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].refused, vec![forged_change.hash()]);
    assert_eq!(refusals[0].violations.len(), 1);
    assert_eq!(refusals[0].violations[0].rule, Rule::Actor);
    let details = net.error_details_to(INSPECTOR2);
    assert_eq!(details.len(), 1);
    assert_eq!(details[0].violations[0].rule, "actor");
    assert!(!net.server_has(INSPECTION, &forged_change.hash()));

    // inspector1's own next change, with that same sequence number, is taken.
    net.edit(INSPECTOR1, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A3",
            &answer(
                AnswerValue::Percentage {
                    numerator: 1,
                    denominator: 2,
                },
                "u-inspector1",
                6_200,
            ),
        )
    });
    net.run(1_000);
    let real = last_made(&net, INSPECTOR1);
    assert_eq!(real.actor_id(), &client_actor(INSPECTOR1));
    assert_eq!(real.seq(), 2);
    assert!(net.server_has(INSPECTION, &real.hash()));
    assert!(net.refusals_of(INSPECTOR1).is_empty());
    assert_eq!(
        net.client_doc(INSPECTOR1, &INSPECTION).unwrap().get_heads(),
        net.server.heads(&INSPECTION)
    );
    let inspection = stored_inspection(&net);
    assert!(inspection.answers.contains_key("A3"));
    assert!(!inspection.answers.contains_key("A2"));
}

/// (b) `by` is the user who writes the change.
#[test]
fn an_answer_signed_with_another_users_name_is_refused() {
    let mut net = opened(&[INSPECTOR1]);
    let before = net.server_stored();
    net.edit(INSPECTOR1, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A1",
            &answer(AnswerValue::YesNo(true), "u-inspector2", 7_000),
        )
    });
    net.run(1_000);
    let forged = last_made(&net, INSPECTOR1);
    let refusals = net.refusals_of(INSPECTOR1);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].refused, vec![forged.hash()]);
    let v = &refusals[0].violations[0];
    assert_eq!((v.rule, v.path.as_str()), (Rule::Author, "answers/A1/by"));
    let details = net.error_details_to(INSPECTOR1);
    assert_eq!(details[0].violations[0].rule, "author");
    assert_eq!(net.server_stored(), before);
}

/// (c) A section is never replaced; a concurrent teammate's work stays.
#[test]
fn replacing_a_section_is_refused_and_a_teammates_concurrent_answers_stay_visible() {
    let mut net = opened(&[INSPECTOR1, INSPECTOR2]);
    // inspector1 is offline while inspector2 answers.
    net.disconnect(INSPECTOR1);
    net.edit(INSPECTOR2, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A1",
            &answer(AnswerValue::YesNo(true), "u-inspector2", 8_000),
        )
    });
    net.run(1_000);
    // `doc.answers = {}`, then an answer in the new map.
    net.edit(INSPECTOR1, &INSPECTION, |tx| {
        let answers = tx.put_object(ROOT, "answers", ObjType::Map)?;
        let a = tx.put_object(&answers, "A2", ObjType::Map)?;
        tx.put(&a, "value", "yes")?;
        tx.put(&a, "by", "u-inspector1")?;
        tx.put(&a, "at", automerge::ScalarValue::Timestamp(8_100))?;
        Ok(())
    });
    let replacing = last_made(&net, INSPECTOR1);
    net.connect(INSPECTOR1);
    net.run(1_000);

    let refusals = net.refusals_of(INSPECTOR1);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].refused, vec![replacing.hash()]);
    assert!(
        refusals[0]
            .violations
            .iter()
            .any(|v| v.rule == Rule::Section && v.path == "answers"),
        "{refusals:?}"
    );
    assert!(!net.server_has(INSPECTION, &replacing.hash()));
    let inspection = stored_inspection(&net);
    assert_eq!(inspection.answers["A1"].by, "u-inspector2");
    assert!(!inspection.answers.contains_key("A2"));
}

/// (c) Entries are tombstoned, never deleted.
#[test]
fn hard_deleting_a_teammates_finding_is_refused_tombstoning_is_not() {
    let mut net = opened(&[INSPECTOR1, INSPECTOR2]);
    net.edit(INSPECTOR2, &INSPECTION, |tx| {
        model::add_finding(tx, "f-2", &finding("Thiếu hồ sơ", "u-inspector2", 9_000))
    });
    net.edit(INSPECTOR2, &INSPECTION, |tx| {
        model::add_finding(tx, "f-3", &finding("Trùng lặp", "u-inspector2", 9_001))
    });
    net.run(1_000);
    net.edit(INSPECTOR1, &INSPECTION, |tx| {
        model::delete_finding(tx, "f-3")
    });
    net.run(1_000);
    let tombstone = last_made(&net, INSPECTOR1);
    assert!(net.server_has(INSPECTION, &tombstone.hash()));
    assert!(net.refusals_of(INSPECTOR1).is_empty());

    net.edit(INSPECTOR1, &INSPECTION, |tx| {
        let findings = tx.get(ROOT, "findings")?.unwrap().1;
        tx.delete(&findings, "f-2")?;
        Ok(())
    });
    net.run(1_000);
    let delete = last_made(&net, INSPECTOR1);
    let refusals = net.refusals_of(INSPECTOR1);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].refused, vec![delete.hash()]);
    let v = &refusals[0].violations[0];
    assert_eq!((v.rule, v.path.as_str()), (Rule::Delete, "findings/f-2"));
    let inspection = stored_inspection(&net);
    assert!(!inspection.findings["f-2"].deleted);
    assert!(inspection.findings["f-3"].deleted);
}

/// `n` answers of client `i` (its actor, signed `user`), each depending on
/// the one before, made on a copy of its document: its hub never sends them.
/// Returns them in order and the copy.
fn chain(
    net: &Net,
    i: usize,
    user: &str,
    n: usize,
) -> (Vec<automerge::Change>, automerge::Automerge) {
    let mut doc = net.fork(i, &INSPECTION);
    let base = doc.get_heads();
    doc.set_actor(client_actor(i));
    for k in 0..n {
        in_tx(&mut doc, |tx| {
            model::set_answer(
                tx,
                "A4",
                &answer(AnswerValue::Number(k as i64), user, 10_000 + k as i64),
            )
        })
        .unwrap();
    }
    (new_changes(&doc, &base), doc)
}

/// (d) Changes whose dependencies are missing wait with their connection.
#[test]
fn changes_missing_dependencies_are_neither_stored_nor_relayed_and_go_with_the_connection() {
    let mut net = opened(&[INSPECTOR1, INSPECTOR2]);
    let (changes, doc) = chain(&net, INSPECTOR1, "u-inspector1", 2);
    let (c1, c2) = (changes[0].clone(), changes[1].clone());
    let before = net.server_stored();
    let seen_by_2 = net.syncs_to(INSPECTOR2, &INSPECTION).len();

    net.send_changes(
        INSPECTOR1,
        INSPECTION,
        doc.get_heads(),
        std::slice::from_ref(&c2),
    );
    net.run(1_000);
    assert_eq!(net.server_stored(), before, "nothing stored");
    let state = net
        .server
        .hub
        .peer_state(INSPECTOR1 as ConnId, &INSPECTION)
        .unwrap();
    assert_eq!(state.waiting, 1);
    assert!(!state.refused);
    let relayed: BTreeSet<_> = net.syncs_to(INSPECTOR2, &INSPECTION)[seen_by_2..]
        .iter()
        .flat_map(|(_, c)| c.clone())
        .collect();
    assert!(relayed.is_empty(), "relayed to inspector2: {relayed:?}");
    assert!(net.refusals_of(INSPECTOR1).is_empty());

    // The connection goes, and its waiting change with it: the dependency
    // alone arrives on the next connection.
    net.disconnect(INSPECTOR1);
    net.connect(INSPECTOR1);
    net.run(1_000);
    assert_eq!(
        net.server
            .hub
            .peer_state(INSPECTOR1 as ConnId, &INSPECTION)
            .unwrap()
            .waiting,
        0
    );
    net.send_changes(
        INSPECTOR1,
        INSPECTION,
        vec![c1.hash()],
        std::slice::from_ref(&c1),
    );
    net.run(1_000);
    assert!(net.server_has(INSPECTION, &c1.hash()));
    assert!(!net.server_has(INSPECTION, &c2.hash()));
    assert!(net.refusals_of(INSPECTOR1).is_empty());
}

/// (d) A waiting change is taken once its dependency arrives.
#[test]
fn a_waiting_change_is_taken_when_its_dependency_arrives_on_the_same_connection() {
    let mut net = opened(&[INSPECTOR1, INSPECTOR2]);
    let (changes, doc) = chain(&net, INSPECTOR1, "u-inspector1", 2);
    let (c1, c2) = (changes[0].clone(), changes[1].clone());
    net.send_changes(
        INSPECTOR1,
        INSPECTION,
        doc.get_heads(),
        std::slice::from_ref(&c2),
    );
    net.run(1_000);
    assert!(!net.server_has(INSPECTION, &c2.hash()));
    net.send_changes(
        INSPECTOR1,
        INSPECTION,
        doc.get_heads(),
        std::slice::from_ref(&c1),
    );
    net.run(1_000);
    assert!(net.server_has(INSPECTION, &c1.hash()));
    assert!(net.server_has(INSPECTION, &c2.hash()));
    assert!(net.refusals_of(INSPECTOR1).is_empty());
    assert_eq!(
        net.server
            .hub
            .peer_state(INSPECTOR1 as ConnId, &INSPECTION)
            .unwrap()
            .waiting,
        0
    );
    // Now they are stored, they reach the other reader.
    assert_eq!(
        net.client_doc(INSPECTOR2, &INSPECTION).unwrap().get_heads(),
        vec![c2.hash()]
    );
}

/// (d) A waiting change is judged as its sender's, whoever supplies the
/// dependency.
#[test]
fn a_waiting_change_is_judged_as_its_senders_when_another_user_supplies_the_dependency() {
    let mut net = opened(&[INSPECTOR1, INSPECTOR2]);
    // inspector2's change d, not sent yet.
    let mut theirs = net.fork(INSPECTOR2, &INSPECTION);
    let base = theirs.get_heads();
    theirs.set_actor(client_actor(INSPECTOR2));
    in_tx(&mut theirs, |tx| {
        model::set_answer(
            tx,
            "A1",
            &answer(AnswerValue::YesNo(false), "u-inspector2", 11_000),
        )
    })
    .unwrap();
    let d = new_changes(&theirs, &base).pop().unwrap();

    // inspector1 builds two changes on d: one signed by itself, one signed
    // by inspector2. Judged as inspector1's, the first is fine and the
    // second is not; judged as inspector2's, it would be the other way round.
    let mut mine = theirs.clone();
    mine.set_actor(client_actor(INSPECTOR1));
    in_tx(&mut mine, |tx| {
        model::set_answer(
            tx,
            "A2",
            &answer(AnswerValue::YesNoPartial(Tri::Yes), "u-inspector1", 11_100),
        )
    })
    .unwrap();
    let own = new_changes(&mine, &[d.hash()]).pop().unwrap();
    let mut other = theirs.clone();
    other.set_actor(automerge::ActorId::from(b"client-1-second".to_vec()));
    in_tx(&mut other, |tx| {
        model::set_answer(
            tx,
            "A3",
            &answer(
                AnswerValue::Percentage {
                    numerator: 0,
                    denominator: 1,
                },
                "u-inspector2",
                11_200,
            ),
        )
    })
    .unwrap();
    let signed_as_other = new_changes(&other, &[d.hash()]).pop().unwrap();

    net.send_changes(
        INSPECTOR1,
        INSPECTION,
        vec![own.hash(), signed_as_other.hash()],
        &[own.clone(), signed_as_other.clone()],
    );
    net.run(1_000);
    assert_eq!(
        net.server
            .hub
            .peer_state(INSPECTOR1 as ConnId, &INSPECTION)
            .unwrap()
            .waiting,
        2
    );
    // inspector2 supplies d on its own connection. The server sends d on
    // to inspector1, whose hub answers: that message on inspector1's
    // connection brings the waiting changes to judgement.
    net.send_changes(
        INSPECTOR2,
        INSPECTION,
        vec![d.hash()],
        std::slice::from_ref(&d),
    );
    net.run(1_000);
    assert!(net.server_has(INSPECTION, &d.hash()));
    assert!(net.server_has(INSPECTION, &own.hash()));
    assert!(!net.server_has(INSPECTION, &signed_as_other.hash()));
    assert!(net.refusals_of(INSPECTOR2).is_empty());
    let refusals = net.refusals_of(INSPECTOR1);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].refused, vec![signed_as_other.hash()]);
    assert_eq!(refusals[0].violations[0].rule, Rule::Author);
    assert_eq!(
        net.server
            .hub
            .access()
            .actor_owner(&client_actor(INSPECTOR1))
            .map(|o| o.user_id.as_str()),
        Some("u-inspector1")
    );
}

/// (d) Waiting changes are capped per document and connection.
#[test]
fn too_many_changes_missing_dependencies_are_dropped_with_a_limit_error() {
    let mut net = opened(&[INSPECTOR1]);
    let cap = net.server.hub.config().max_waiting_changes_per_document;
    let (changes, doc) = chain(&net, INSPECTOR1, "u-inspector1", cap + 2);
    // Everything but the first: cap + 1 changes that cannot be judged.
    net.send_changes(INSPECTOR1, INSPECTION, doc.get_heads(), &changes[1..]);
    net.run(10_000);
    let state = net
        .server
        .hub
        .peer_state(INSPECTOR1 as ConnId, &INSPECTION)
        .unwrap();
    assert_eq!(state.waiting, 0, "dropped, not held");
    let details = net.error_details_to(INSPECTOR1);
    assert_eq!(details.len(), 1, "{details:?}");
    assert_eq!(details[0].code.as_deref(), Some(ErrorCode::Limit.as_str()));
    assert_eq!(details[0].document_id, Some(INSPECTION));
    assert!(
        changes
            .iter()
            .all(|c| !net.server_has(INSPECTION, &c.hash()))
    );
    // The first one alone is taken; what was dropped stays dropped.
    net.send_changes(
        INSPECTOR1,
        INSPECTION,
        vec![changes[0].hash()],
        &changes[..1],
    );
    net.run(1_000);
    assert!(net.server_has(INSPECTION, &changes[0].hash()));
    assert!(!net.server_has(INSPECTION, &changes[1].hash()));

    // At the cap they are held.
    let mut net = opened(&[INSPECTOR1]);
    let (changes, doc) = chain(&net, INSPECTOR1, "u-inspector1", cap + 1);
    net.send_changes(INSPECTOR1, INSPECTION, doc.get_heads(), &changes[1..]);
    net.run(10_000);
    let state = net
        .server
        .hub
        .peer_state(INSPECTOR1 as ConnId, &INSPECTION)
        .unwrap();
    assert_eq!(state.waiting, cap);
    assert!(net.error_details_to(INSPECTOR1).is_empty());
}

/// (e) One refused change in a message: it and its dependents are not
/// stored, the others are, and the peer is told exactly what.
#[test]
fn one_refused_change_in_a_message_takes_its_dependents_and_leaves_the_rest() {
    let mut net = opened(&[INSPECTOR1, INSPECTOR2]);
    let set = |doc: &mut automerge::Automerge, item: &str, by: &str| {
        in_tx(doc, |tx| {
            model::set_answer(tx, item, &answer(AnswerValue::NotApplicable, by, 12_000))
        })
        .unwrap();
    };
    let mut doc = net.fork(INSPECTOR1, &INSPECTION);
    let base = doc.get_heads();
    // a, then a sibling branch d (a second device of inspector1) made
    // beside b, then b (signed by someone else) and c on top of b.
    let mut side = doc.clone();
    side.set_actor(automerge::ActorId::from(b"client-1-tablet-2".to_vec()));
    doc.set_actor(client_actor(INSPECTOR1));
    set(&mut doc, "A1", "u-inspector1");
    let a = new_changes(&doc, &base).pop().unwrap();
    side.apply_changes([a.clone()]).unwrap();
    set(&mut side, "A4", "u-inspector1");
    let d = new_changes(&side, &[a.hash()]).pop().unwrap();
    set(&mut doc, "A2", "u-inspector2");
    let b = new_changes(&doc, &[a.hash()]).pop().unwrap();
    set(&mut doc, "G1", "u-inspector1");
    let c = new_changes(&doc, &[b.hash()]).pop().unwrap();
    assert_eq!(c.deps(), &[b.hash()]);
    let sent_before = net.to_clients[INSPECTOR1].len();

    net.send_changes(
        INSPECTOR1,
        INSPECTION,
        vec![c.hash(), d.hash()],
        &[a.clone(), b.clone(), c.clone(), d.clone()],
    );
    net.run(1_000);

    assert!(net.server_has(INSPECTION, &a.hash()));
    assert!(net.server_has(INSPECTION, &d.hash()));
    assert!(!net.server_has(INSPECTION, &b.hash()));
    assert!(!net.server_has(INSPECTION, &c.hash()));
    assert_eq!(net.server.heads(&INSPECTION), vec![d.hash()]);
    let refusals = net.refusals_of(INSPECTOR1);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].refused, vec![b.hash(), c.hash()]);
    assert_eq!(refusals[0].accepted, 2);
    let rules: Vec<_> = refusals[0]
        .violations
        .iter()
        .map(|v| (v.change, v.rule))
        .collect();
    assert_eq!(
        rules,
        vec![(b.hash(), Rule::Author), (c.hash(), Rule::Depends)]
    );
    // What went to inspector1: the server's heads (what it kept), then the error.
    let sent = &net.to_clients[INSPECTOR1][sent_before..];
    let at = sent
        .iter()
        .position(|m| matches!(m, Message::Error { .. }))
        .expect("an error was sent");
    let Message::Sync { data, .. } = &sent[at - 1] else {
        panic!("the error follows a sync message: {sent:?}");
    };
    let heads = automerge::sync::Message::decode(data).unwrap().heads;
    assert_eq!(heads, net.server.heads(&INSPECTION));
    let Message::Error {
        detail: Some(detail),
        ..
    } = &sent[at]
    else {
        panic!("a structured error: {:?}", sent[at]);
    };
    assert_eq!(detail.document_id, Some(INSPECTION));
    assert_eq!(detail.code.as_deref(), Some("refused"));
    assert_eq!(
        detail.refused,
        vec![b.hash().to_string(), c.hash().to_string()]
    );
    assert_eq!(detail.refused_count, 2);
    let wire: Vec<_> = detail
        .violations
        .iter()
        .map(|v| {
            (
                v.change.clone(),
                v.rule.as_str(),
                v.path.as_str(),
                v.role.as_str(),
            )
        })
        .collect();
    assert_eq!(
        wire,
        vec![
            (b.hash().to_string(), "author", "answers/A2/by", "inspector"),
            (c.hash().to_string(), "depends", "", "inspector"),
        ]
    );
    assert_eq!(detail.violation_count, 2);
    // The other reader got what was kept, nothing else.
    let other = net.client_doc(INSPECTOR2, &INSPECTION).unwrap();
    assert_eq!(other.get_heads(), vec![d.hash()]);
    assert!(other.get_change_by_hash(&b.hash()).is_none());
    // Further messages of inspector1 about the inspection are ignored
    // until it reconnects, even a valid change on what the server kept.
    let mut kept = net.fork(INSPECTOR2, &INSPECTION);
    kept.set_actor(client_actor(INSPECTOR1));
    set(&mut kept, "A3", "u-inspector1");
    let more = new_changes(&kept, &[d.hash()]);
    net.send_changes(INSPECTOR1, INSPECTION, kept.get_heads(), &more);
    net.run(1_000);
    assert!(!net.server_has(INSPECTION, &more[0].hash()));
    assert_eq!(net.refusals_of(INSPECTOR1).len(), 1, "not even judged");
    net.disconnect(INSPECTOR1);
    net.connect(INSPECTOR1);
    net.run(1_000);
    net.send_changes(INSPECTOR1, INSPECTION, kept.get_heads(), &more);
    net.run(1_000);
    assert!(net.server_has(INSPECTION, &more[0].hash()));
}

/// (f) `doc-unavailable` for a `sync` (not only a `request`) about a
/// document the peer may not read or that does not exist.
#[test]
fn a_sync_about_an_unreadable_or_missing_document_gets_doc_unavailable() {
    let mut net = created();
    let missing = DocumentId::from_bytes([0x98; 16]);
    net.send_changes(INSPECTOR3, INSPECTION, Vec::new(), &[]);
    net.send_changes(INSPECTOR3, missing, Vec::new(), &[]);
    // A secretariat announcing a document of its own: not created either.
    let mut doc = automerge::Automerge::new();
    doc.set_actor(client_actor(SECRETARIAT));
    in_tx(&mut doc, |tx| model::init_inspection(tx, &header())).unwrap();
    net.send_changes(SECRETARIAT, missing, doc.get_heads(), &doc.get_changes(&[]));
    net.run(1_000);
    for (i, id) in [
        (INSPECTOR3, INSPECTION),
        (INSPECTOR3, missing),
        (SECRETARIAT, missing),
    ] {
        assert!(
            net.to_clients[i].iter().any(
                |m| matches!(m, Message::DocUnavailable { document_id, .. } if *document_id == id)
            ),
            "client {i}, {id}: {:?}",
            net.to_clients[i]
        );
        assert!(net.syncs_to(i, &id).is_empty());
        assert!(net.errors_to(i).is_empty(), "{:?}", net.errors_to(i));
    }
    assert!(net.server.stored_bytes(missing).is_none());
    assert!(net.server.hub.document(&missing).is_none());
}

/// (g) A document the server could not load is "retry later", never
/// "does not exist".
#[test]
fn a_load_failure_is_retry_later_not_doc_unavailable() {
    let mut net = created();
    for i in 0..5 {
        net.disconnect(i);
    }
    net.reload_server();
    net.server.fail_loads = true;
    net.connect(INSPECTOR1);
    net.want(INSPECTOR1, INSPECTION);
    net.run(1_000);
    assert!(
        !net.to_clients[INSPECTOR1]
            .iter()
            .any(|m| matches!(m, Message::DocUnavailable { .. })),
        "{:?}",
        net.to_clients[INSPECTOR1]
    );
    let details = net.error_details_to(INSPECTOR1);
    assert_eq!(details.len(), 1, "{details:?}");
    assert_eq!(details[0].document_id, Some(INSPECTION));
    assert_eq!(
        details[0].code.as_deref(),
        Some(ErrorCode::RetryLater.as_str())
    );
    assert!(net.server.events.iter().any(|e| matches!(
        e,
        Event::LoadFailed { document_id, .. } if *document_id == INSPECTION
    )));
    assert!(
        !net.clients[INSPECTOR1]
            .events
            .iter()
            .any(|e| matches!(e, Event::RemoteUnavailable { .. }))
    );
    // Storage is back: the next attempt gets the document.
    net.server.fail_loads = false;
    net.disconnect(INSPECTOR1);
    net.connect(INSPECTOR1);
    net.run(1_000);
    assert_eq!(
        net.client_doc(INSPECTOR1, &INSPECTION)
            .map(|d| d.get_heads()),
        Some(net.server.heads(&INSPECTION))
    );
}

/// A peer that loses read access while it has the document open gets no
/// more of it: the inspected unit reads its inspection while it is
/// accepted; once the team submits again, it may not (`can_read`).
#[test]
fn a_reader_that_loses_access_is_sent_nothing_more() {
    let mut net = opened(&[SECRETARIAT, INSPECTOR1]);
    net.edit(SECRETARIAT, &INSPECTION, |tx| {
        model::review_decide(
            tx,
            "d-1",
            ReviewState::Accepted,
            "u-secretariat",
            3_000,
            None,
        )
    });
    net.run(1_000);
    net.want(UNIT, INSPECTION);
    net.run(1_000);
    assert!(net.client_doc(UNIT, &INSPECTION).is_some());
    let sent_before = net.syncs_to(UNIT, &INSPECTION).len();

    net.edit(INSPECTOR1, &INSPECTION, |tx| {
        model::submit(tx, "s-1", "u-inspector1", 4_000, None)
    });
    net.edit(INSPECTOR1, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A1",
            &answer(AnswerValue::YesNo(false), "u-inspector1", 4_001),
        )
    });
    net.run(1_000);
    assert_eq!(
        stored_inspection(&net).status(),
        model::InspectionStatus::Submitted
    );
    let leaked: BTreeSet<_> = net.syncs_to(UNIT, &INSPECTION)[sent_before..]
        .iter()
        .flat_map(|(_, c)| c.clone())
        .collect();
    assert!(leaked.is_empty(), "sent to the unit: {leaked:?}");
}

/// A change the server's bloom filter wrongly claims to hold (automerge's
/// `have` is a bloom filter, about 1% false positives) is not sent by the
/// client; a change depending on it is. The server must then ask for the
/// missing dependency, as automerge's own `need` does for the changes in its
/// queue, although the dependent waits outside automerge; otherwise the
/// exchange would stall on every connection for as long as the server's
/// document stays the same.
#[test]
fn a_change_hidden_by_a_bloom_false_positive_is_asked_for() {
    let mut net = opened(&[INSPECTOR1]);
    net.disconnect(INSPECTOR1);
    let server_hashes: Vec<_> = net
        .server
        .hub
        .document(&INSPECTION)
        .unwrap()
        .get_changes(&[])
        .iter()
        .map(|c| c.hash())
        .collect();
    let bloom = automerge::sync::BloomFilter::from_hashes(server_hashes.iter());
    // The first answer whose change the server's filter wrongly contains.
    let hidden = (0..100_000)
        .find(|k| {
            let mut doc = net.fork(INSPECTOR1, &INSPECTION);
            doc.set_actor(client_actor(INSPECTOR1));
            let base = doc.get_heads();
            in_tx(&mut doc, |tx| {
                model::set_answer(
                    tx,
                    "A4",
                    &answer(AnswerValue::Number(*k), "u-inspector1", 13_000),
                )
            })
            .unwrap();
            bloom.contains_hash(&new_changes(&doc, &base)[0].hash())
        })
        .expect("a false positive");
    net.edit(INSPECTOR1, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A4",
            &answer(AnswerValue::Number(hidden), "u-inspector1", 13_000),
        )
    });
    let c1 = last_made(&net, INSPECTOR1);
    assert!(bloom.contains_hash(&c1.hash()));
    net.edit(INSPECTOR1, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A1",
            &answer(AnswerValue::YesNo(true), "u-inspector1", 13_001),
        )
    });
    let c2 = last_made(&net, INSPECTOR1);
    for _ in 0..3 {
        net.connect(INSPECTOR1);
        net.run(1_000);
        net.disconnect(INSPECTOR1);
    }
    assert!(
        net.server_has(INSPECTION, &c1.hash()) && net.server_has(INSPECTION, &c2.hash()),
        "errors to inspector1: {:?}",
        net.errors_to(INSPECTOR1)
    );
}
