//! Hostile and broken input on `/sync` (DESIGN §3): every bad frame gets a
//! specific answer — an `error` message and/or a close with a code — on its
//! own connection, and a well-behaved peer on another connection keeps
//! editing and syncing through all of it.

use std::collections::BTreeSet;

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use sync_core::ids::DocumentId;
use sync_core::model::{self, Finding, Severity};
use sync_core::protocol::Message;
use tests::*;

use crate::peer::{Closed, Peer, RawConn, RawEvent, db_file, inspection_of, stored_doc, token_of};

/// The server's WebSocket message limit in these tests.
const LIMIT: usize = 256 * 1024;

/// A server with a small message limit, a well-behaved inspector peer with
/// its team's inspection open, and the token for the bad connections.
struct Bench {
    server: TestServer,
    good: Peer,
    doc: DocumentId,
    /// A team-B inspection inspector1 may not read.
    other_team_doc: DocumentId,
    /// inspector1's token, for the bad connections.
    token: String,
    edits: usize,
}

impl Bench {
    async fn start() -> Bench {
        let server = TestServer::start_with(true, |s| s.sync.max_message_bytes = LIMIT).await;
        let secretariat = token_of(&server.base, "secretariat").await;
        let doc = inspection_of(&server.base, &secretariat, "00004").await;
        let other_team_doc = inspection_of(&server.base, &secretariat, "00070").await;
        let good = Peer::login(&server.base, "inspector2").await;
        assert!(good.want(doc).await);
        good.wait_synced().await;
        let token = token_of(&server.base, "inspector1").await;
        Bench {
            server,
            good,
            doc,
            other_team_doc,
            token,
            edits: 0,
        }
    }

    /// The good peer adds a finding and syncs it; the server confirms and
    /// stores it. Proves the bad connection disturbed nobody else.
    async fn good_peer_still_syncs(&mut self, after: &str) {
        self.edits += 1;
        let fid = format!("f-good-{}", self.edits);
        let finding = Finding {
            item_id: None,
            title: format!("still fine after {after}"),
            note: String::new(),
            severity: Severity::Low,
            photos: BTreeSet::new(),
            by: self.good.user_id.clone(),
            at: now_unix() * 1000,
            deleted: false,
        };
        let change = self
            .good
            .edit(self.doc, |tx| model::add_finding(tx, &fid, &finding))
            .await
            .unwrap();
        self.good.wait_synced().await;
        assert_eq!(self.good.ended(), None, "after {after}");
        assert!(
            self.good.confirmed(self.doc).contains(&change[0]),
            "after {after}: the server did not confirm the good peer's change"
        );
        let stored = stored_doc(&db_file(&self.server.data_dir()), self.doc).unwrap();
        assert!(
            stored.get_change_meta_by_hash(&change[0]).is_some(),
            "after {after}"
        );
        assert_eq!(
            self.good.heads(self.doc),
            sorted(self.good.server_heads(self.doc))
        );
        assert!(self.good.errors().is_empty(), "{:?}", self.good.errors());
    }

    async fn raw(&self) -> RawConn {
        RawConn::open(&self.server.base, &self.token).await
    }

    /// A raw connection that has joined as `peer_id`.
    async fn joined(&self, peer_id: &str) -> RawConn {
        let mut raw = self.raw().await;
        match raw.join(peer_id).await {
            RawEvent::Message(Message::Peer { target_id, .. }) => assert_eq!(target_id, peer_id),
            other => panic!("expected peer, got {other:?}"),
        }
        raw
    }
}

fn sorted(mut v: Vec<automerge::ChangeHash>) -> Vec<automerge::ChangeHash> {
    v.sort();
    v
}

/// The error texts among `events`.
fn error_texts(events: &[RawEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            RawEvent::Message(Message::Error { message, .. }) => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// `events` are exactly: one `error` containing `needle`, then a close
/// with code 1008 (policy violation).
fn assert_error_then_close(events: &[RawEvent], needle: &str) {
    assert_eq!(events.len(), 2, "{events:?}");
    let errors = error_texts(events);
    assert_eq!(errors.len(), 1, "{events:?}");
    assert!(
        errors[0].contains(needle),
        "{:?} lacks {needle:?}",
        errors[0]
    );
    match &events[1] {
        RawEvent::Closed(Closed { code, reason }) => {
            assert_eq!(*code, Some(1008), "{events:?}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// A valid first automerge sync message (heads and a summary of what the
/// sender has), from a document with one change.
fn sync_data() -> Vec<u8> {
    use automerge::sync::SyncDoc;
    let mut doc = Automerge::new();
    doc.transact(|tx| tx.put(ROOT, "kind", "inspection"))
        .unwrap();
    doc.generate_sync_message(&mut automerge::sync::State::new())
        .unwrap()
        .encode()
}

/// What a peer that holds nothing sends first, with a `request`.
fn empty_request_data() -> Vec<u8> {
    use automerge::sync::SyncDoc;
    Automerge::new()
        .generate_sync_message(&mut automerge::sync::State::new())
        .unwrap()
        .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_frames_get_an_error_and_a_close() {
    let mut bench = Bench::start().await;

    // Garbage bytes: a CBOR "break" byte first.
    let mut raw = bench.raw().await;
    raw.send_binary(b"\xff\xfegarbage\x00\x01".to_vec()).await;
    assert_error_then_close(
        &raw.drain().await,
        "could not decode message: frame is not well-formed CBOR",
    );
    bench.good_peer_still_syncs("garbage bytes").await;

    // Malformed CBOR: a map of two entries cut short.
    let mut raw = bench.raw().await;
    raw.send_binary(vec![0xa2, 0x64, b't', b'y', b'p', b'e'])
        .await;
    assert_error_then_close(&raw.drain().await, "cut short");
    bench.good_peer_still_syncs("truncated CBOR").await;

    // Not a map.
    let mut raw = bench.raw().await;
    raw.send_binary(vec![0x83, 0x01, 0x02, 0x03]).await;
    assert_error_then_close(&raw.drain().await, "not a map");
    bench.good_peer_still_syncs("a CBOR array").await;

    // A well-formed map with an unknown `type`, after a proper join.
    let mut raw = bench.joined("unknown-type").await;
    let mut frame = vec![0xa2];
    frame.extend([
        0x64, b't', b'y', b'p', b'e', 0x65, b'h', b'e', b'l', b'l', b'o',
    ]);
    frame.extend([0x68]);
    frame.extend(b"senderId");
    frame.extend([0x6c]);
    frame.extend(b"unknown-type");
    raw.send_binary(frame).await;
    assert_error_then_close(&raw.drain().await, "unknown message type \"hello\"");
    bench.good_peer_still_syncs("an unknown message type").await;
    bench.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_is_closed_with_1009() {
    let mut bench = Bench::start().await;
    let mut raw = bench.joined("too-big").await;
    let msg = Message::Sync {
        sender_id: "too-big".into(),
        target_id: "kiemtra-server".into(),
        document_id: bench.doc,
        data: vec![0x42; LIMIT + 1024],
    };
    raw.send(&msg).await;
    let events = raw.drain().await;
    assert_eq!(
        events,
        vec![RawEvent::Closed(Closed {
            code: Some(1009),
            reason: format!("message over the limit of {LIMIT} bytes"),
        })]
    );
    bench.good_peer_still_syncs("an oversized frame").await;

    // A message just under the limit is not refused for its size: it is a
    // malformed sync message and cuts only that document's exchange.
    let mut raw = bench.joined("big-but-fits").await;
    raw.send(&Message::Request {
        sender_id: "big-but-fits".into(),
        target_id: "kiemtra-server".into(),
        document_id: bench.doc,
        data: vec![0x42; LIMIT - 1024],
    })
    .await;
    match raw.next().await {
        RawEvent::Message(Message::Error { message, .. }) => {
            assert!(
                message.starts_with(&format!("document {}: malformed sync message", bench.doc)),
                "{message}"
            );
        }
        other => panic!("expected an error about the document, got {other:?}"),
    }
    bench
        .good_peer_still_syncs("a large malformed sync message")
        .await;
    bench.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_is_closed_with_1003() {
    let mut bench = Bench::start().await;
    let mut raw = bench.joined("texter").await;
    raw.send_text("{\"type\":\"join\"}").await;
    let events = raw.drain().await;
    match events.as_slice() {
        [RawEvent::Closed(Closed { code, reason })] => {
            assert_eq!(*code, Some(1003), "unsupported data");
            assert!(reason.contains("binary CBOR"), "{reason}");
        }
        other => panic!("expected only a close frame, got {other:?}"),
    }
    bench.good_peer_still_syncs("a text frame").await;
    bench.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_an_error_and_a_close() {
    let mut bench = Bench::start().await;
    let data = sync_data();

    // `sync` before `join`.
    let mut raw = bench.raw().await;
    raw.send(&Message::Sync {
        sender_id: "early".into(),
        target_id: "kiemtra-server".into(),
        document_id: bench.doc,
        data: data.clone(),
    })
    .await;
    assert_error_then_close(
        &raw.drain().await,
        "expected a join message first, got sync",
    );
    bench.good_peer_still_syncs("sync before join").await;

    // A protocol version the server does not speak.
    let mut raw = bench.raw().await;
    raw.send(&Message::Join {
        sender_id: "future".into(),
        supported_protocol_versions: vec!["2".into()],
        peer_metadata: None,
    })
    .await;
    assert_error_then_close(
        &raw.drain().await,
        "unsupported protocol version(s) [\"2\"]",
    );
    bench.good_peer_still_syncs("join with version 2").await;

    // A message from another peer id than the one that joined.
    let mut raw = bench.joined("honest").await;
    raw.send(&Message::Request {
        sender_id: "impostor".into(),
        target_id: "kiemtra-server".into(),
        document_id: bench.doc,
        data: data.clone(),
    })
    .await;
    assert_error_then_close(
        &raw.drain().await,
        "senderId \"impostor\" is not the peer id \"honest\" that joined",
    );
    bench.good_peer_still_syncs("a foreign senderId").await;

    // A second join on a ready connection.
    let mut raw = bench.joined("twice").await;
    raw.send(&Message::Join {
        sender_id: "twice".into(),
        supported_protocol_versions: vec!["1".into()],
        peer_metadata: None,
    })
    .await;
    assert_error_then_close(&raw.drain().await, "handshake message after the handshake");
    bench.good_peer_still_syncs("a second join").await;
    bench.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_about_an_unknown_or_foreign_document_gets_doc_unavailable() {
    let mut bench = Bench::start().await;
    let db = db_file(&bench.server.data_dir());
    let before = crate::peer::stored_rows(&db);
    let data = sync_data();
    let mut raw = bench.joined("curious").await;

    // A document that does not exist (an inspector may create nothing).
    let ghost = DocumentId::from_bytes([0x5a; 16]);
    raw.send(&Message::Sync {
        sender_id: "curious".into(),
        target_id: "kiemtra-server".into(),
        document_id: ghost,
        data: data.clone(),
    })
    .await;
    // The same answer as for a `request`: the server neither says it
    // exists nor lets the `sync` create it.
    match raw.next().await {
        RawEvent::Message(Message::DocUnavailable {
            document_id,
            sender_id,
            target_id,
        }) => {
            assert_eq!(document_id, ghost);
            assert_eq!(sender_id, "kiemtra-server");
            assert_eq!(target_id, "curious");
        }
        other => panic!("expected doc-unavailable about {ghost}, got {other:?}"),
    }
    bench
        .good_peer_still_syncs("a sync about a ghost document")
        .await;

    // Another team's inspection, never requested.
    let foreign = bench.other_team_doc;
    raw.send(&Message::Sync {
        sender_id: "curious".into(),
        target_id: "kiemtra-server".into(),
        document_id: foreign,
        data: data.clone(),
    })
    .await;
    match raw.next().await {
        RawEvent::Message(Message::DocUnavailable { document_id, .. }) => {
            assert_eq!(document_id, foreign, "the same answer as for a ghost");
        }
        other => panic!("expected doc-unavailable about {foreign}, got {other:?}"),
    }
    bench
        .good_peer_still_syncs("a sync about another team's document")
        .await;
    assert!(stored_doc(&db, ghost).is_none());
    assert_eq!(
        crate::peer::stored_rows(&db).len(),
        before.len() + bench.edits,
        "one change row per good edit, nothing else"
    );

    // The connection still serves what it may read.
    raw.send(&Message::Request {
        sender_id: "curious".into(),
        target_id: "kiemtra-server".into(),
        document_id: bench.doc,
        data: empty_request_data(),
    })
    .await;
    match raw.next().await {
        RawEvent::Message(Message::Sync {
            document_id, data, ..
        }) => {
            assert_eq!(document_id, bench.doc);
            let m = automerge::sync::Message::decode(&data).unwrap();
            assert_eq!(sorted(m.heads), bench.good.heads(bench.doc));
        }
        other => panic!("expected the document, got {other:?}"),
    }
    bench.server.stop().await;
}
