//! In-memory network tests: one server hub, three client hubs, real
//! protocol frames, real SQLite storage on the server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};

use automerge::{ROOT, ReadDoc, transaction::Transactable};
use support::{Net, json, peer};
use sync_core::ids::DocumentId;
use sync_core::model::{
    self, Answer, Finding, InspectionHeader, MemberRole, ReviewState, Severity,
};
use sync_core::policy::Role;
use sync_core::protocol::Message;
use sync_core::protocol::hub::Event;
use sync_core::template::{AnswerValue, Tri};

const INSPECTION: DocumentId = DocumentId::from_bytes([0x42; 16]);

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

/// 0 secretariat, 1 inspector1 (team A), 2 inspector2 (team A),
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

/// The secretariat creates the inspection; it reaches the server.
fn created() -> Net {
    let mut net = net();
    net.create(0, INSPECTION, |tx| model::init_inspection(tx, &header()));
    net.run(1_000);
    assert!(
        net.server.stored_bytes(INSPECTION).is_some(),
        "the server stored the new inspection: {:?} {:?}",
        net.server.events,
        net.to_clients[0]
    );
    net
}

#[test]
fn a_client_creates_another_requests_and_edits_all_converge() {
    let mut net = created();
    // inspector2 has never seen it: asks for it.
    net.want(2, INSPECTION);
    net.run(1_000);
    let got = net
        .client_doc(2, &INSPECTION)
        .expect("inspector2 received the inspection");
    assert_eq!(got.get_heads(), net.server.heads(&INSPECTION));

    net.edit(2, &INSPECTION, |tx| {
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
    net.edit(2, &INSPECTION, |tx| {
        model::add_finding(
            tx,
            "f-1",
            &Finding {
                item_id: Some("A2".into()),
                title: "Tổ công tác chưa kiện toàn".into(),
                note: "Thiếu quyết định".into(),
                severity: Severity::Medium,
                photos: BTreeSet::new(),
                by: "u-inspector2".into(),
                at: 2_001,
                deleted: false,
            },
        )
    });
    net.run(1_000);

    // The server and the creator (who still has the document open) converge.
    let server_doc = net.server.hub.document(&INSPECTION).unwrap();
    for i in [0, 2] {
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
}

#[test]
fn another_team_gets_doc_unavailable_and_nothing_of_the_content() {
    let mut net = created();
    net.want(3, INSPECTION);
    net.run(1_000);
    assert!(net.client_doc(3, &INSPECTION).is_none());
    let unavailable = net.to_clients[3].iter().any(
        |m| matches!(m, Message::DocUnavailable { document_id, .. } if *document_id == INSPECTION),
    );
    assert!(
        unavailable,
        "server sent doc-unavailable: {:?}",
        net.to_clients[3]
    );
    // No sync frame about that document ever went to inspector3.
    let leaked = net.to_clients[3]
        .iter()
        .any(|m| matches!(m, Message::Sync { document_id, .. } if *document_id == INSPECTION));
    assert!(!leaked);
    assert!(net.clients[3].events.iter().any(|e| matches!(
        e,
        Event::RemoteUnavailable { document_id, .. } if *document_id == INSPECTION
    )));

    // A document that does not exist looks exactly the same.
    let missing = DocumentId::from_bytes([0x99; 16]);
    net.want(3, missing);
    net.run(1_000);
    assert!(net.to_clients[3].iter().any(|m| {
        matches!(m, Message::DocUnavailable { document_id, .. } if *document_id == missing)
    }));
}

#[test]
fn an_inspector_writing_review_is_refused_and_the_server_copy_is_unchanged() {
    let mut net = created();
    net.want(1, INSPECTION);
    net.run(1_000);
    let before = net.server_stored();

    net.edit(1, &INSPECTION, |tx| {
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

    let errors = net.errors_to(1);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains(&INSPECTION.to_string()), "{}", errors[0]);
    assert!(errors[0].contains("review"), "{}", errors[0]);
    assert_eq!(
        net.server_stored(),
        before,
        "stored bytes are byte-for-byte unchanged"
    );
    // The connection still serves other documents: a fresh answer from
    // inspector2 on the same inspection goes through.
    net.want(2, INSPECTION);
    net.run(1_000);
    net.edit(2, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A1",
            &answer(AnswerValue::YesNo(true), "u-inspector2", 3_100),
        )
    });
    net.run(1_000);
    let doc = net.server.hub.document(&INSPECTION).unwrap();
    let inspection = model::read_inspection(doc, &support::registry()).unwrap();
    assert!(inspection.answers.contains_key("A1"));
    assert!(
        inspection.decisions.is_empty(),
        "the refused decision never reached the server"
    );
}

#[test]
fn a_unit_writing_answers_is_refused_and_the_server_copy_is_unchanged() {
    let mut net = created();
    // The unit may read its inspection once the secretariat accepts it.
    net.edit(0, &INSPECTION, |tx| {
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
    net.want(4, INSPECTION);
    net.run(1_000);
    assert!(
        net.client_doc(4, &INSPECTION).is_some(),
        "the unit reads the accepted inspection"
    );
    let before = net.server_stored();

    net.edit(4, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A1",
            &answer(AnswerValue::YesNo(true), "u-unit-00004", 3_200),
        )
    });
    net.run(1_000);
    let errors = net.errors_to(4);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains(&INSPECTION.to_string()));
    assert!(errors[0].contains("answers"), "{}", errors[0]);
    assert_eq!(net.server_stored(), before);
}

#[test]
fn a_unit_cannot_read_an_inspection_before_it_is_accepted() {
    let mut net = created();
    net.want(4, INSPECTION);
    net.run(1_000);
    assert!(net.client_doc(4, &INSPECTION).is_none());
    assert!(
        net.to_clients[4]
            .iter()
            .any(|m| matches!(m, Message::DocUnavailable { .. }))
    );
}

#[test]
fn an_inspector_may_not_create_documents() {
    let mut net = net();
    let id = DocumentId::from_bytes([0x07; 16]);
    net.create(1, id, |tx| model::init_inspection(tx, &header()));
    net.run(1_000);
    assert!(net.server.stored_bytes(id).is_none());
    let errors = net.errors_to(1);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains(&id.to_string()));
}

#[test]
fn invalid_content_from_an_allowed_role_is_refused() {
    let mut net = created();
    net.want(1, INSPECTION);
    net.run(1_000);
    let before = net.server_stored();
    // An answer to an item the template does not know.
    net.edit(1, &INSPECTION, |tx| {
        let answers = match tx.get(ROOT, "answers")? {
            Some((_, id)) => id,
            None => return Ok(()),
        };
        tx.put(&answers, "Z99", "yes")?;
        Ok(())
    });
    net.run(1_000);
    let errors = net.errors_to(1);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("Z99"), "{}", errors[0]);
    assert_eq!(net.server_stored(), before);
}

#[test]
fn changes_from_one_client_reach_every_client_that_has_the_document_open() {
    let mut net = created();
    net.want(1, INSPECTION);
    net.want(2, INSPECTION);
    net.run(1_000);
    net.edit(1, &INSPECTION, |tx| {
        model::set_answer(
            tx,
            "A4",
            &answer(AnswerValue::Number(3), "u-inspector1", 4_000),
        )
    });
    net.run(1_000);
    let server_heads = net.server.heads(&INSPECTION);
    for i in 0..3 {
        assert_eq!(
            net.client_doc(i, &INSPECTION).unwrap().get_heads(),
            server_heads,
            "client {i}"
        );
    }
    // The server never announced the document to those who did not ask.
    assert!(net.client_doc(3, &INSPECTION).is_none());
    assert!(net.client_doc(4, &INSPECTION).is_none());
}

#[test]
fn nothing_is_sent_about_a_change_before_it_is_committed() {
    use sync_core::protocol::hub::ConnId;
    let mut net = created();
    net.want(1, INSPECTION);
    net.run(1_000);
    net.edit(1, &INSPECTION, |tx| {
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
