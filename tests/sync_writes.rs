//! Who wrote what, and what the server holds (DESIGN §3, §6), against the
//! real server with demo data: documents are created by the server only,
//! never through `/sync`; an automerge actor belongs to the device that
//! first wrote with it, across restarts; a document the server cannot load
//! is "retry later", never "does not exist".

use std::collections::{BTreeMap, BTreeSet};

use automerge::sync::SyncDoc;
use automerge::{ActorId, Automerge, ChangeHash, ReadDoc};
use sync_core::ids::DocumentId;
use sync_core::model::{self, Finding, InspectionHeader, MemberRole, Severity};
use sync_core::protocol::Message;
use tests::*;

use crate::peer::{
    Peer, RawConn, RawEvent, db_file, get_inspection, inspection_of, list_inspections, stored_doc,
    stored_rows, token_of,
};

fn finding(by: &str, title: &str) -> Finding {
    Finding {
        item_id: None,
        title: title.to_owned(),
        note: String::new(),
        severity: Severity::Low,
        photos: BTreeSet::new(),
        by: by.to_owned(),
        at: now_unix() * 1000,
        deleted: false,
    }
}

/// The first sync message of a peer holding `doc`, with every change in it.
fn sync_data_with_changes(doc: &Automerge) -> Vec<u8> {
    let mut state = automerge::sync::State::new();
    // The first message carries only heads; answer as if the server had
    // nothing, so the next one carries the changes.
    let _ = doc.generate_sync_message(&mut state);
    let empty = Automerge::new();
    let mut theirs = automerge::sync::State::new();
    let reply = empty.generate_sync_message(&mut theirs).unwrap();
    let mut doc = doc.clone();
    doc.receive_sync_message(&mut state, reply).unwrap();
    let msg = doc.generate_sync_message(&mut state).unwrap();
    assert!(!msg.changes.is_empty(), "the message carries the changes");
    msg.encode()
}

/// What a peer that holds nothing sends first, with a `request`.
fn empty_request_data() -> Vec<u8> {
    Automerge::new()
        .generate_sync_message(&mut automerge::sync::State::new())
        .unwrap()
        .encode()
}

/// The `actors` row of `actor`: (user id, device id).
fn actor_row(db: &std::path::Path, actor: &ActorId) -> Option<(String, String)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT user_id, device_id FROM actors WHERE actor = ?1")
        .unwrap();
    let mut rows = stmt
        .query_map([actor.to_hex_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    rows.next().map(|r| r.unwrap())
}

fn seq_of(doc: &Automerge, hash: ChangeHash) -> u64 {
    doc.get_change_by_hash(&hash).unwrap().seq()
}

/// The observation was: "the secretariat can create an inspection through
/// /sync with unit 99999, member u-ghost, date 1900-01-01". Documents are
/// created only by the server (`POST /api/v1/inspections`); through sync the
/// secretariat gets `doc-unavailable` and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secretariat_cannot_create_an_inspection_through_sync() {
    let server = TestServer::start(true).await;
    let db = db_file(&server.data_dir());
    let secretariat = Peer::login(&server.base, "secretariat").await;
    let token = secretariat.token().to_owned();
    let listed_before = list_inspections(&server.base, &token).await;
    let team_id = listed_before[0]["team_id"].as_str().unwrap().to_owned();
    let rows_before = stored_rows(&db);

    // A well-formed inspection nobody scheduled.
    let header = InspectionHeader {
        unit_code: "99999".into(),
        unit_name: "Đơn vị không có thật".into(),
        template_id: "DA06-HN-2025-v1".into(),
        template_version: 1,
        team_id,
        members: BTreeMap::from([("u-ghost".to_owned(), MemberRole::Lead)]),
        scheduled_date: "1900-01-01".into(),
        created_at: now_unix() * 1000,
    };
    let mut doc = Automerge::new();
    server::inspections::in_tx(&mut doc, |tx| model::init_inspection(tx, &header)).unwrap();

    // As a tablet would: a new local document, announced with `sync`.
    let id = DocumentId::from_bytes([0x99; 16]);
    let offered = secretariat.offer(id, doc.clone());
    assert_eq!(offered.len(), 1);
    secretariat.wait_unavailable(id).await;
    assert!(
        secretariat.errors().is_empty(),
        "{:?}",
        secretariat.errors()
    );

    // Hand-made frames with the changes: `sync` and `request` alike.
    let other = DocumentId::from_bytes([0x98; 16]);
    let mut raw = RawConn::open(&server.base, &token_of(&server.base, "secretariat").await).await;
    assert!(matches!(
        raw.join("secretariat-raw").await,
        RawEvent::Message(Message::Peer { .. })
    ));
    let data = sync_data_with_changes(&doc);
    for (target, request) in [(other, false), (other, true)] {
        let msg = if request {
            Message::Request {
                sender_id: "secretariat-raw".into(),
                target_id: "kiemtra-server".into(),
                document_id: target,
                data: data.clone(),
            }
        } else {
            Message::Sync {
                sender_id: "secretariat-raw".into(),
                target_id: "kiemtra-server".into(),
                document_id: target,
                data: data.clone(),
            }
        };
        raw.send(&msg).await;
        match raw.next().await {
            RawEvent::Message(Message::DocUnavailable { document_id, .. }) => {
                assert_eq!(document_id, target);
            }
            other => panic!("expected doc-unavailable (request {request}), got {other:?}"),
        }
    }

    // Nothing stored: no document row, no change row, no projection.
    assert_eq!(stored_rows(&db), rows_before);
    assert!(stored_doc(&db, id).is_none());
    assert!(stored_doc(&db, other).is_none());
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM doc_store_documents WHERE doc_id IN (?1, ?2)",
            [id.as_bytes().to_vec(), other.as_bytes().to_vec()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0);
    let audited: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit_log WHERE subject IN (?1, ?2)",
            [id.to_string(), other.to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(audited, 0, "no audit row either");
    let listed = list_inspections(&server.base, &token).await;
    assert_eq!(listed, listed_before);
    assert!(listed.iter().all(|i| i["unit_code"] != "99999"));
    assert_eq!(get_inspection(&server.base, &token, id).await.0, 404);

    // The connection still serves what the secretariat may read.
    // (`wait_synced` does not apply: the peer still holds the document the
    // server refused to take.)
    let real = inspection_of(&server.base, &token, "00004").await;
    assert!(secretariat.want(real).await);
    secretariat
        .wait_doc(real, "the scheduled inspection", |d| {
            model::kind_of(d).is_ok_and(|k| k == model::DocKind::Inspection)
        })
        .await;
    assert!(
        secretariat.errors().is_empty(),
        "{:?}",
        secretariat.errors()
    );
    server.stop().await;
}

/// An actor belongs to the device that first wrote with it, and the
/// binding survives a restart: a teammate writing the next change under
/// that actor is refused (rule `actor`); the device's own next change, with
/// the same sequence number, is then accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_under_another_devices_actor_is_refused_and_the_device_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path(), true);
    let server = TestServer::start_in(dir, settings.clone()).await.unwrap();
    let db = db_file(&server.data_dir());
    let secretariat = token_of(&server.base, "secretariat").await;
    let id = inspection_of(&server.base, &secretariat, "00004").await;

    // inspector1's tablet writes first: its actor is recorded as its own.
    let mut tablet = Peer::login(&server.base, "inspector1").await;
    assert!(tablet.want(id).await);
    tablet.wait_synced().await;
    let by = tablet.user_id.clone();
    let first = tablet
        .edit(id, |tx| {
            model::add_finding(tx, "f-tablet-1", &finding(&by, "first"))
        })
        .await
        .unwrap();
    tablet.wait_synced().await;
    assert_eq!(tablet.confirmed(id), first);
    assert_eq!(
        actor_row(&db, &tablet.actor()),
        Some((tablet.user_id.clone(), tablet.peer_id.clone())),
        "the actor is recorded with the change"
    );
    tablet.close().await;

    // A restart: the binding must come from the database.
    let dir = server.stop().await.unwrap();
    let server = TestServer::start_in(dir, settings).await.unwrap();

    // A teammate writes the actor's next change.
    let forger = Peer::login_with_actor(&server.base, "inspector2", tablet.actor()).await;
    assert!(forger.want(id).await);
    forger.wait_synced().await;
    let before = stored_rows(&db);
    let fby = forger.user_id.clone();
    let forged = forger
        .edit(id, |tx| {
            model::add_finding(tx, "f-forged", &finding(&fby, "not mine to write"))
        })
        .await
        .unwrap();
    assert_eq!(seq_of(&forger.doc(id).unwrap(), forged[0]), 2);
    let (text, detail) = forger.wait_refused(id).await;
    assert_eq!(detail.document_id, Some(id));
    assert_eq!(detail.refused, vec![forged[0].to_string()]);
    assert_eq!(detail.refused_count, 1);
    assert_eq!(detail.violations[0].rule, "actor", "{detail:?}");
    assert_eq!(detail.violations[0].change, forged[0].to_string());
    assert_eq!(detail.violations[0].role, "inspector");
    assert!(
        text.starts_with(&format!("document {id}: 1 change(s) refused, 0 kept")),
        "{text}"
    );
    assert_eq!(stored_rows(&db), before, "nothing of it was stored");
    assert!(!forger.confirmed(id).contains(&forged[0]));

    // The tablet comes back and writes its own second change: accepted.
    tablet.reconnect(&server.base).await.unwrap();
    tablet.wait_synced().await;
    let second = tablet
        .edit(id, |tx| {
            model::add_finding(tx, "f-tablet-2", &finding(&by, "second"))
        })
        .await
        .unwrap();
    tablet.wait_synced().await;
    assert_eq!(seq_of(&tablet.doc(id).unwrap(), second[0]), 2);
    assert_ne!(second, forged);
    assert!(tablet.confirmed(id).contains(&second[0]));
    assert!(tablet.errors().is_empty(), "{:?}", tablet.errors());
    let stored = stored_doc(&db, id).unwrap();
    assert!(stored.get_change_by_hash(&second[0]).is_some());
    assert!(stored.get_change_by_hash(&forged[0]).is_none());
    assert_eq!(
        actor_row(&db, &tablet.actor()),
        Some((tablet.user_id.clone(), tablet.peer_id.clone())),
        "the first writer keeps the actor"
    );
    server.stop().await;
}

/// A stored document that cannot be loaded is an error for the peer —
/// `retry-later` — never `doc-unavailable` (which tells a tablet that the
/// document does not exist for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_that_cannot_be_loaded_is_retry_later_never_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path(), true);
    let server = TestServer::start_in(dir, settings.clone()).await.unwrap();
    let db = db_file(&server.data_dir());
    let secretariat = token_of(&server.base, "secretariat").await;
    let broken = inspection_of(&server.base, &secretariat, "00004").await;
    let fine = inspection_of(&server.base, &secretariat, "09556").await;
    let dir = server.stop().await.unwrap();

    // Damage the stored bytes of one document while the server is down.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let changed = conn
            .execute(
                "UPDATE doc_store_changes SET data = x'00' WHERE doc_id = ?1",
                [broken.as_bytes().to_vec()],
            )
            .unwrap()
            + conn
                .execute(
                    "UPDATE doc_store_documents SET snapshot = x'00'
                     WHERE doc_id = ?1 AND snapshot IS NOT NULL",
                    [broken.as_bytes().to_vec()],
                )
                .unwrap();
        assert!(changed > 0, "the document had stored bytes to damage");
    }
    let server = TestServer::start_in(dir, settings).await.unwrap();
    let rows_before = stored_rows(&db);

    let mut raw = RawConn::open(&server.base, &token_of(&server.base, "inspector1").await).await;
    assert!(matches!(
        raw.join("tab-broken").await,
        RawEvent::Message(Message::Peer { .. })
    ));
    // `request` and `sync` alike; asked twice, answered twice (the failed
    // load is not remembered as "absent").
    for request in [true, false, true] {
        let data = empty_request_data();
        let msg = if request {
            Message::Request {
                sender_id: "tab-broken".into(),
                target_id: "kiemtra-server".into(),
                document_id: broken,
                data,
            }
        } else {
            Message::Sync {
                sender_id: "tab-broken".into(),
                target_id: "kiemtra-server".into(),
                document_id: broken,
                data,
            }
        };
        raw.send(&msg).await;
        match raw.next().await {
            RawEvent::Message(Message::Error {
                message, detail, ..
            }) => {
                let detail = detail.expect("a structured error");
                assert_eq!(detail.document_id, Some(broken));
                assert_eq!(detail.code.as_deref(), Some("retry-later"), "{message}");
                assert!(
                    message.starts_with(&format!("document {broken}: ")),
                    "{message}"
                );
                assert!(
                    !message.contains("corrupt"),
                    "the storage error itself stays on the server: {message}"
                );
            }
            other => {
                panic!("expected an error with retry-later (request {request}), got {other:?}")
            }
        }
    }
    // The same connection is served the other document.
    raw.send(&Message::Request {
        sender_id: "tab-broken".into(),
        target_id: "kiemtra-server".into(),
        document_id: fine,
        data: empty_request_data(),
    })
    .await;
    match raw.next().await {
        RawEvent::Message(Message::Sync { document_id, .. }) => assert_eq!(document_id, fine),
        other => panic!("expected the readable document, got {other:?}"),
    }
    // A peer on the sync engine hears the same and the document stays
    // unknown to it (never "unavailable").
    let tablet = Peer::login(&server.base, "inspector2").await;
    tablet.ask(broken);
    let (_, detail) = tablet.wait_error_code(broken, "retry-later").await;
    assert_eq!(detail.document_id, Some(broken));
    assert!(!tablet.was_unavailable(broken));
    assert!(tablet.doc(broken).is_none());
    assert_eq!(stored_rows(&db), rows_before, "nothing was written over it");
    server.stop().await;
}
