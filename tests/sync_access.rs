//! Who may read and write what through `/sync` (DESIGN §3, §6), against the
//! real server with demo data: team membership and unit scope decide reads,
//! field ownership decides writes, a refused write stores nothing, and the
//! WebSocket upgrade refuses bad tokens with 401 before anything happens.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use serde_json::json;
use sync_core::ids::DocumentId;
use sync_core::model::{self, Answer, InspectionStatus, ReviewState};
use sync_core::protocol::Message;
use sync_core::template::{AnswerValue, TemplateRegistry, Tri};
use tests::*;
use tokio_tungstenite::tungstenite;

use crate::peer::{
    Peer, RawConn, RawEvent, TokenIn, db_file, get_inspection, inspection_of, list_inspections,
    open_ws, stored_rows, token_of,
};

fn answer(by: &str, value: Tri) -> Answer {
    Answer {
        value: AnswerValue::YesNoPartial(value),
        fields: BTreeMap::new(),
        evidence: BTreeSet::new(),
        note: None,
        by: by.to_owned(),
        at: now_unix() * 1000,
    }
}

/// The templates the demo publishes (to read inspections in the test).
fn demo_templates() -> TemplateRegistry {
    let mut reg = TemplateRegistry::default();
    reg.publish(sync_core::template::Template::from_json(server::demo::CHECKLIST_JSON).unwrap())
        .unwrap();
    reg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inspector_of_another_team_gets_doc_unavailable_and_no_content() {
    let server = TestServer::start(true).await;
    let secretariat = token_of(&server.base, "secretariat").await;
    // 00004 belongs to team A; inspector3 is in team B.
    let team_a_doc = inspection_of(&server.base, &secretariat, "00004").await;
    let own_doc = inspection_of(&server.base, &secretariat, "00070").await;

    let inspector3 = Peer::login(&server.base, "inspector3").await;
    assert!(
        !inspector3.want(team_a_doc).await,
        "team B must not read team A's inspection"
    );
    assert!(inspector3.doc(team_a_doc).is_none());
    assert_eq!(
        inspector3.syncs_about(team_a_doc),
        0,
        "no sync frame about it"
    );
    let unavailable: Vec<_> = inspector3
        .received()
        .into_iter()
        .filter(|m| matches!(m, Message::DocUnavailable { document_id, .. } if *document_id == team_a_doc))
        .collect();
    assert_eq!(unavailable.len(), 1, "{unavailable:?}");

    // The same connection still serves the peer's own team's inspection.
    assert!(inspector3.want(own_doc).await);
    inspector3.wait_synced().await;
    let doc = inspector3.doc(own_doc).unwrap();
    let insp = model::read_inspection(&doc, &demo_templates()).unwrap();
    assert_eq!(insp.header.unit_code, "00070");
    assert!(insp.header.members.contains_key(&inspector3.user_id));
    assert!(inspector3.doc(team_a_doc).is_none());
    assert!(inspector3.errors().is_empty(), "{:?}", inspector3.errors());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_reads_its_accepted_inspection_but_cannot_write_answers() {
    let server = TestServer::start(true).await;
    let db = db_file(&server.data_dir());
    let secretariat_token = token_of(&server.base, "secretariat").await;
    let id = inspection_of(&server.base, &secretariat_token, "00004").await;

    // Before acceptance the unit sees nothing of it.
    let unit = Peer::login(&server.base, "unit-00004").await;
    let unit_token = unit.token().to_owned();
    assert!(list_inspections(&server.base, &unit_token).await.is_empty());

    // The secretariat accepts through its own sync peer.
    let secretariat = Peer::login(&server.base, "secretariat").await;
    assert!(secretariat.want(id).await);
    secretariat.wait_synced().await;
    let by = secretariat.user_id.clone();
    let decision = secretariat
        .edit(id, |tx| {
            model::review_decide(
                tx,
                "d-accept-1",
                ReviewState::Accepted,
                &by,
                now_unix() * 1000,
                None,
            )
        })
        .await
        .unwrap();
    assert_eq!(decision.len(), 1);
    secretariat.wait_synced().await;
    assert!(
        secretariat.errors().is_empty(),
        "{:?}",
        secretariat.errors()
    );
    let (status, view) = get_inspection(&server.base, &secretariat_token, id).await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "accepted");

    // Now the unit reads it, over sync and over HTTP.
    assert!(
        unit.want(id).await,
        "the unit may read its accepted inspection"
    );
    unit.wait_synced().await;
    let doc = unit.doc(id).unwrap();
    let insp = model::read_inspection(&doc, &demo_templates()).unwrap();
    assert_eq!(insp.status(), InspectionStatus::Accepted);
    assert_eq!(insp.header.unit_code, "00004");
    let listed = list_inspections(&server.base, &unit_token).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.to_string());

    // The unit writes an answer: refused, named, nothing stored.
    let before = stored_rows(&db);
    let in_memory_before = server.state.sync.read(id).await.unwrap().unwrap();
    let uid = unit.user_id.clone();
    let written = unit
        .edit(id, |tx| {
            model::set_answer(tx, "A2", &answer(&uid, Tri::Yes))
        })
        .await
        .unwrap();
    assert_eq!(written.len(), 1);
    let (error, detail) = unit.wait_refused(id).await;
    assert!(
        error.starts_with(&format!("document {id}: 1 change(s) refused, 0 kept")),
        "{error}"
    );
    assert!(error.contains("unit may not write answers/A2"), "{error}");
    assert_eq!(detail.document_id, Some(id));
    assert_eq!(detail.code.as_deref(), Some("refused"));
    assert_eq!(detail.refused, vec![written[0].to_string()]);
    assert_eq!(detail.refused_count, 1);
    let first = &detail.violations[0];
    assert_eq!(first.rule, "owner", "{detail:?}");
    assert_eq!(first.role, "unit");
    assert_eq!(first.change, written[0].to_string());
    assert!(first.path.starts_with("answers/A2"), "{detail:?}");
    assert_eq!(detail.violation_count as usize, detail.violations.len());
    assert_eq!(
        stored_rows(&db),
        before,
        "the refused change left the store as it was"
    );
    assert_eq!(
        server.state.sync.read(id).await.unwrap().unwrap(),
        in_memory_before,
        "the server's copy in memory is unchanged too"
    );
    let (_, view) = get_inspection(&server.base, &secretariat_token, id).await;
    assert_eq!(view["answers"], 0);
    assert_eq!(view["status"], "accepted");
    // The unit's connection is still open (a refusal is per document).
    assert_eq!(unit.ended(), None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inspector_cannot_write_the_review() {
    let server = TestServer::start(true).await;
    let db = db_file(&server.data_dir());
    let secretariat_token = token_of(&server.base, "secretariat").await;
    let id = inspection_of(&server.base, &secretariat_token, "09556").await;

    let inspector1 = Peer::login(&server.base, "inspector1").await;
    assert!(inspector1.want(id).await);
    inspector1.wait_synced().await;
    let before = stored_rows(&db);
    let by = inspector1.user_id.clone();
    let written = inspector1
        .edit(id, |tx| {
            model::review_decide(
                tx,
                "d-self",
                ReviewState::Accepted,
                &by,
                now_unix() * 1000,
                None,
            )
        })
        .await
        .unwrap();
    let (error, detail) = inspector1.wait_refused(id).await;
    assert!(
        error.starts_with(&format!("document {id}: 1 change(s) refused, 0 kept")),
        "{error}"
    );
    assert!(
        error.contains("inspector may not write review/decisions/d-self"),
        "{error}"
    );
    assert_eq!(detail.refused, vec![written[0].to_string()]);
    assert_eq!(detail.violations[0].rule, "owner", "{detail:?}");
    assert_eq!(detail.violations[0].role, "inspector");
    assert!(
        detail.violations[0]
            .path
            .starts_with("review/decisions/d-self"),
        "{detail:?}"
    );
    assert_eq!(stored_rows(&db), before);
    let (_, view) = get_inspection(&server.base, &secretariat_token, id).await;
    assert_eq!(view["status"], "scheduled");
    let stored = crate::peer::stored_doc(&db, id).unwrap();
    let insp = model::read_inspection(&stored, &demo_templates()).unwrap();
    assert!(insp.decisions.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_member_answer_is_stored_and_reaches_the_other_member() {
    let server = TestServer::start(true).await;
    let db = db_file(&server.data_dir());
    let secretariat_token = token_of(&server.base, "secretariat").await;
    let id = inspection_of(&server.base, &secretariat_token, "09700").await;

    let inspector1 = Peer::login(&server.base, "inspector1").await;
    let inspector2 = Peer::login(&server.base, "inspector2").await;
    assert!(inspector1.want(id).await);
    assert!(inspector2.want(id).await);
    inspector1.wait_synced().await;
    inspector2.wait_synced().await;

    let by = inspector1.user_id.clone();
    let change = inspector1
        .edit(id, |tx| {
            model::set_answer(tx, "A2", &answer(&by, Tri::Partial))
        })
        .await
        .unwrap();
    inspector1.wait_synced().await;
    assert_eq!(
        inspector1.confirmed(id),
        change,
        "the server confirmed the change"
    );
    assert!(inspector1.errors().is_empty(), "{:?}", inspector1.errors());

    inspector2
        .wait_doc(id, "inspector1's answer", |d| {
            d.get_change_meta_by_hash(&change[0]).is_some()
        })
        .await;
    let doc = inspector2.doc(id).unwrap();
    let insp = model::read_inspection(&doc, &demo_templates()).unwrap();
    let a2 = &insp.answers["A2"];
    assert_eq!(a2.value, AnswerValue::YesNoPartial(Tri::Partial));
    assert_eq!(a2.by, inspector1.user_id);

    // Stored, and projected.
    let stored = crate::peer::stored_doc(&db, id).unwrap();
    assert!(stored.get_change_meta_by_hash(&change[0]).is_some());
    let list = list_inspections(&server.base, &secretariat_token).await;
    let row = list.iter().find(|v| v["id"] == id.to_string()).unwrap();
    assert_eq!(row["answers"], 1);
    assert_eq!(row["status"], "in_progress");
    server.stop().await;
}

/// Opens `/sync` and returns the HTTP status of a refused upgrade.
async fn refused_status(base: &str, token: Option<&str>, how: TokenIn) -> u16 {
    match open_ws(base, token, how).await {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

/// A token with the given header JSON and claims, signature left empty.
fn unsigned_token(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_at_the_upgrade_with_401() {
    let server = TestServer::start(true).await;
    let db = db_file(&server.data_dir());
    let real = token_of(&server.base, "inspector1").await;
    let (_, real_claims) = decode_unverified(&real);
    let keys = server_keys(&server.data_dir());
    let (kid, key) = &keys[0];
    let now = now_unix();
    // Claims the server accepts: the inspector's own, freshly dated.
    let mut good = valid_claims(real_claims["sub"].as_str().unwrap(), now);
    for k in ["role", "name", "team", "did"] {
        good[k] = real_claims[k].clone();
    }

    // Control: the forging itself is right, the server accepts this one.
    let control = forge_eddsa(kid, key, &good);
    let mut ok = RawConn::open(&server.base, &control).await;
    assert!(matches!(
        ok.join("control").await,
        RawEvent::Message(Message::Peer { .. })
    ));

    let before = stored_rows(&db);
    let mut expired = good.clone();
    expired["exp"] = json!(now - 120);
    expired["nbf"] = json!(now - 1200);
    expired["iat"] = json!(now - 1200);
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    let other_key = SigningKey::from_bytes(&[7; 32]);
    let cases: Vec<(&str, Option<String>)> = vec![
        ("expired", Some(forge_eddsa(kid, key, &expired))),
        (
            "signed with another key",
            Some(forge_eddsa(kid, &other_key, &good)),
        ),
        (
            "alg none",
            Some(unsigned_token(
                &json!({"alg": "none", "typ": "JWT", "kid": kid}),
                &good,
            )),
        ),
        ("wrong audience", Some(forge_eddsa(kid, key, &wrong_aud))),
        ("garbage", Some("not.a.jwt".to_owned())),
        ("missing", None),
    ];
    for (what, token) in &cases {
        for how in [TokenIn::Header, TokenIn::Query] {
            let status = refused_status(&server.base, token.as_deref(), how).await;
            assert_eq!(status, 401, "{what} token ({how:?})");
            assert_eq!(stored_rows(&db), before, "{what}: the store is untouched");
        }
    }

    // `?token=` with a valid token works (browsers cannot set headers).
    let mut ws = open_ws(&server.base, Some(&real), TokenIn::Query)
        .await
        .expect("a valid ?token= is accepted");
    use futures_util::{SinkExt, StreamExt};
    let join = Message::Join {
        sender_id: real_claims["did"].as_str().unwrap().to_owned(),
        supported_protocol_versions: vec!["1".into()],
        peer_metadata: None,
    };
    ws.send(tungstenite::Message::Binary(
        sync_core::protocol::encode(&join).into(),
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reply = sync_core::protocol::decode(&reply.into_data(), &Default::default()).unwrap();
    assert!(
        matches!(&reply, Message::Peer { selected_protocol_version, .. } if selected_protocol_version == "1"),
        "{reply:?}"
    );
    assert_eq!(stored_rows(&db), before);
    server.stop().await;
}

/// The peer helper itself: a document id nobody has is unavailable, and
/// nothing is created by asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wanting_a_document_that_does_not_exist_creates_nothing() {
    let server = TestServer::start(true).await;
    let db = db_file(&server.data_dir());
    let before = stored_rows(&db);
    let secretariat = Peer::login(&server.base, "secretariat").await;
    let nobody = DocumentId::from_bytes([0x42; 16]);
    assert!(!secretariat.want(nobody).await);
    assert!(secretariat.doc(nobody).is_none());
    assert_eq!(stored_rows(&db), before);
    assert!(crate::peer::stored_doc(&db, nobody).is_none());
    server.stop().await;
}
