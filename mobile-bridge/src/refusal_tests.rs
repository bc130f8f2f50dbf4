//! Tests of checked edits, per-opening actors and refused work, without a
//! network: the tablet's engine talks to a `sync-core` server hub (the
//! server's own access rules) in memory, frame by frame.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::Path;

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use sync_core::DocumentId;
use sync_core::access::{DocumentRules, PeerInfo};
use sync_core::model::{self, Answer, CatalogTemplate, InspectionHeader, MemberRole};
use sync_core::protocol::hub::{ConnId, Effects, Event, Hub, HubConfig, Mode};
use sync_core::template::{AnswerValue, Template, TemplateRegistry};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::engine::Engine;
use crate::error::FieldError;
use crate::rebase::{self, SessionRefusal};
use crate::store::{DeviceStore, Session};
use crate::tablet::{Tablet, writer_of};
use crate::types::*;

const CHECKLIST: &str = include_str!("../../server/demo-data/checklist_de_an_06.json");
const USER: &str = "u-inspector1";
const LEAD: &str = "u-lead";
const CATALOG: DocumentId = DocumentId::from_bytes([1; 16]);
const INSPECTION: DocumentId = DocumentId::from_bytes([2; 16]);
const CONN: ConnId = 7;

fn v1() -> Template {
    Template::from_json(CHECKLIST).unwrap()
}

/// Version 2 of the checklist: item A4 is gone.
fn v2() -> Template {
    let mut json: serde_json::Value = serde_json::from_str(CHECKLIST).unwrap();
    json["version"] = 2.into();
    json["item_count"] = 29.into();
    let items = json["sections"][0]["items"].as_array_mut().unwrap();
    items.retain(|i| i["id"] != "A4");
    Template::from_json(&json.to_string()).unwrap()
}

fn server_doc() -> Automerge {
    Automerge::new().with_actor(ActorId::from(b"kiemtra-server".to_vec()))
}

fn header(members: BTreeMap<String, MemberRole>) -> InspectionHeader {
    let t = v1();
    InspectionHeader {
        unit_code: "00004".into(),
        unit_name: "Phường Ba Đình".into(),
        template_id: t.template_id.clone(),
        template_version: t.version,
        team_id: "t-a".into(),
        members,
        scheduled_date: "2025-10-01".into(),
        created_at: 1_700_000_000_000,
    }
}

/// The catalog (checklist v1) and one inspection, as the server made them.
fn documents(members: BTreeMap<String, MemberRole>) -> (Automerge, Automerge) {
    let mut catalog = server_doc();
    let mut tx = catalog.transaction();
    model::init_catalog(&mut tx).unwrap();
    model::put_template(&mut tx, &CatalogTemplate::from_template(&v1())).unwrap();
    tx.commit();
    let mut inspection = server_doc();
    let mut tx = inspection.transaction();
    model::init_inspection(&mut tx, &header(members)).unwrap();
    tx.commit();
    (catalog, inspection)
}

fn session(team: &str) -> Session {
    Session {
        server_url: "http://127.0.0.1:9".into(),
        username: "inspector1".into(),
        user_id: USER.into(),
        role: "inspector".into(),
        team_id: Some(team.into()),
        unit_code: None,
        access_token: None,
        access_expires_at_ms: None,
        refresh_token: Some("refresh".into()),
    }
}

/// A store holding `docs` (as synced) and a signed-in [`USER`].
fn seed(dir: &Path, docs: &[(DocumentId, &Automerge)], team: &str) {
    let mut store = DeviceStore::open(dir, None).unwrap();
    for (id, doc) in docs {
        let kind = model::kind_of(*doc).unwrap();
        store
            .append_changes(*id, kind.as_str(), &doc.get_changes(&[]), 1)
            .unwrap();
        store.set_sync_mark(*id, &doc.get_heads(), 1).unwrap();
    }
    store.save_session(&session(team), 1).unwrap();
}

fn config() -> TabletConfig {
    TabletConfig {
        max_sync_attempts: 1,
        ..TabletConfig::default()
    }
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 3])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn answer(value: AnswerValue, by: &str, at: i64) -> Answer {
    Answer {
        value,
        fields: BTreeMap::new(),
        evidence: Default::default(),
        note: None,
        by: by.into(),
        at,
    }
}

// ----- checked edits ------------------------------------------------------------------

#[test]
fn a_member_answering_a_conflicted_item_is_told_only_the_lead_settles_it() {
    let dir = tempfile::tempdir().unwrap();
    let members = BTreeMap::from([
        (LEAD.to_owned(), MemberRole::Lead),
        (USER.to_owned(), MemberRole::Member),
        ("u-other".to_owned(), MemberRole::Member),
    ]);
    let (catalog, mut inspection) = documents(members);
    // Two teammates answered A1 concurrently: a conflict.
    let mut a = inspection.fork();
    let mut b = inspection.fork();
    let mut tx = a.transaction();
    model::set_answer(&mut tx, "A1", &answer(AnswerValue::YesNo(true), LEAD, 10)).unwrap();
    tx.commit();
    let mut tx = b.transaction();
    model::set_answer(
        &mut tx,
        "A1",
        &answer(AnswerValue::YesNo(false), "u-other", 11),
    )
    .unwrap();
    tx.commit();
    inspection.merge(&mut a).unwrap();
    inspection.merge(&mut b).unwrap();
    assert_eq!(model::conflicts(&inspection).len(), 1);
    seed(
        dir.path(),
        &[(CATALOG, &catalog), (INSPECTION, &inspection)],
        "t-a",
    );

    let t = Tablet::open(dir.path(), config()).unwrap();
    let id = INSPECTION.encode();
    let e = t
        .answer(&id, "A1", "yes", HashMap::new(), None)
        .unwrap_err();
    assert!(matches!(e, FieldError::NotAllowed(_)), "{e}");
    let text = e.to_string();
    assert!(text.contains("only the team lead settles it"), "{text}");
    assert!(
        text.contains("settle") && text.contains("answers/A1"),
        "{text}"
    );
    // Nothing was written; other items are fine.
    assert_eq!(t.status().unwrap().pending_changes, 0);
    t.answer(&id, "A2", "yes", HashMap::new(), None).unwrap();
    assert_eq!(t.status().unwrap().pending_changes, 1);
}

#[test]
fn someone_off_the_team_cannot_edit_the_inspection() {
    let dir = tempfile::tempdir().unwrap();
    let members = BTreeMap::from([(LEAD.to_owned(), MemberRole::Lead)]);
    let (catalog, inspection) = documents(members);
    seed(
        dir.path(),
        &[(CATALOG, &catalog), (INSPECTION, &inspection)],
        "t-b",
    );
    let t = Tablet::open(dir.path(), config()).unwrap();
    let id = INSPECTION.encode();
    let e = t
        .add_finding(
            &id,
            NewFinding {
                title: "Thiếu biên bản".into(),
                note: String::new(),
                severity: "low".into(),
                item_id: None,
            },
        )
        .unwrap_err();
    assert!(matches!(e, FieldError::NotAllowed(_)), "{e}");
    assert!(e.to_string().contains("rule member"), "{e}");
    assert_eq!(t.status().unwrap().pending_changes, 0);
}

#[test]
fn each_opening_of_the_store_writes_with_a_fresh_actor() {
    let dir = tempfile::tempdir().unwrap();
    let members = BTreeMap::from([(USER.to_owned(), MemberRole::Lead)]);
    let (catalog, inspection) = documents(members);
    seed(
        dir.path(),
        &[(CATALOG, &catalog), (INSPECTION, &inspection)],
        "t-a",
    );
    let id = INSPECTION.encode();
    for value in ["yes", "no"] {
        let t = Tablet::open(dir.path(), config()).unwrap();
        t.answer(&id, "A1", value, HashMap::new(), None).unwrap();
    }
    // A copy of the store (a restored backup) writes with yet another actor.
    let copy = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_file() {
            std::fs::copy(f.path(), copy.path().join(f.file_name())).unwrap();
        }
    }
    let restored = Tablet::open(copy.path(), config()).unwrap();
    restored
        .answer(&id, "A2", "yes", HashMap::new(), None)
        .unwrap();
    assert_eq!(restored.status().unwrap().pending_changes, 3);
    drop(restored);

    let store = DeviceStore::open(copy.path(), None).unwrap();
    let actors = store.actors().unwrap();
    assert_eq!(actors.len(), 3, "{actors:?}");
    let doc = store.load(INSPECTION).unwrap().unwrap();
    let mine: Vec<ActorId> = doc
        .get_changes(&inspection.get_heads())
        .iter()
        .map(|c| c.actor_id().clone())
        .collect();
    assert_eq!(mine.len(), 3);
    for a in &mine {
        assert!(actors.contains(a));
    }
    assert_ne!(mine[0], mine[1]);
    assert_ne!(mine[1], mine[2]);
    // Each actor's numbering starts afresh: no sequence number is reused.
    assert!(doc.get_changes(&[]).iter().all(|c| c.seq() == 1));
}

// ----- refused work, against a server hub in memory -----------------------------------

/// The server: a `sync-core` hub with the server's access rules; storage
/// commits at once.
struct Server {
    hub: Hub<DocumentRules>,
    now: u64,
}

impl Server {
    fn new(docs: &[(DocumentId, &Automerge)]) -> Self {
        let mut templates = TemplateRegistry::default();
        templates.publish(v1()).unwrap();
        templates.publish(v2()).unwrap();
        let mut config = HubConfig::new(Mode::Server, "server");
        config.actor = Some(ActorId::from(b"kiemtra-server".to_vec()));
        let mut s = Self {
            hub: Hub::new(config, DocumentRules::new(templates)),
            now: 1_000,
        };
        for (id, doc) in docs {
            let fx = s.hub.insert_document(*id, (*doc).clone(), s.now);
            s.drive(fx);
        }
        s
    }

    /// Carries out effects; returns the frames for the tablet.
    fn drive(&mut self, mut fx: Effects) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            out.extend(fx.outgoing.drain(..).map(|o| o.bytes));
            let mut next = Effects::default();
            for s in fx.store.drain(..) {
                next.merge(self.hub.committed(s.ticket, self.now));
            }
            for id in fx.load.drain(..) {
                next.merge(self.hub.loaded(id, None, self.now));
            }
            if next.is_empty() {
                return out;
            }
            fx = next;
        }
    }

    /// A server-side edit (the secretariat's, through the server).
    fn edit(
        &mut self,
        id: DocumentId,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>),
    ) {
        let (_, fx) = self
            .hub
            .update(&id, self.now, |doc| {
                let mut tx = doc.transaction();
                f(&mut tx);
                tx.commit();
                Ok::<_, std::convert::Infallible>(())
            })
            .unwrap();
        self.drive(fx);
    }

    fn doc(&self, id: DocumentId) -> &Automerge {
        self.hub.document(&id).unwrap()
    }
}

/// Points the inspection's header at `version` of the checklist (and the
/// catalog publishes version 2), as the secretariat would through the server.
fn set_template_version(server: &mut Server, version: u64) {
    if version == 2 {
        server.edit(CATALOG, |tx| {
            model::put_template(tx, &CatalogTemplate::from_template(&v2())).unwrap();
        });
    }
    server.edit(INSPECTION, |tx| {
        let Some((Value::Object(ObjType::Map), h)) = tx.get(ROOT, "header").unwrap() else {
            panic!("no header");
        };
        tx.put(&h, "template_version", ScalarValue::Uint(version))
            .unwrap();
    });
}

/// One sync session between the engine and the server, until nothing
/// moves; then the refusals are settled as a sync session does.
fn session_with(
    server: &mut Server,
    engine: &mut Engine,
    who: &PeerInfo,
) -> (Vec<Event>, rebase::Settled) {
    let (tx, mut rx) = unbounded_channel();
    let mut events = Vec::new();
    let out = engine.attach(CONN, tx, 2_000).unwrap();
    events.extend(out.events);
    let fx = server.hub.connect(CONN, who.clone(), server.now);
    let frames = server.drive(fx);
    deliver(engine, frames, &mut events);
    pump(server, engine, &mut rx, &mut events);
    let refusals: Vec<SessionRefusal> = events
        .iter()
        .filter_map(|e| match e {
            Event::Refused {
                document_id,
                detail,
                ..
            } => Some(SessionRefusal {
                document_id: *document_id,
                server_heads: engine
                    .server_state(CONN, document_id)
                    .and_then(|s| s.their_heads),
                message: "refused".into(),
                detail: detail.clone(),
            }),
            _ => None,
        })
        .collect();
    // What the server confirmed, as a session records it.
    let confirmed: Vec<_> = engine
        .document_ids()
        .into_iter()
        .filter_map(|id| {
            let state = engine.server_state(CONN, &id)?;
            (state.in_sync && !state.refused).then_some((id, state.our_heads))
        })
        .collect();
    engine.mark_synced(&confirmed, 3_000).unwrap();
    let fx = server.hub.disconnect(CONN);
    server.drive(fx);
    engine.detach(CONN, 3_000).unwrap();
    let settled = rebase::settle(engine, Some(who), &refusals, 3_000).unwrap();
    (events, settled)
}

fn deliver(engine: &mut Engine, frames: Vec<Vec<u8>>, events: &mut Vec<Event>) {
    for f in frames {
        let out = engine.receive(CONN, &f, 2_000).unwrap();
        events.extend(out.events);
    }
}

fn pump(
    server: &mut Server,
    engine: &mut Engine,
    rx: &mut UnboundedReceiver<Vec<u8>>,
    events: &mut Vec<Event>,
) {
    for _ in 0..10_000 {
        let mut moved = false;
        while let Ok(bytes) = rx.try_recv() {
            moved = true;
            let fx = server.hub.receive(CONN, &bytes, server.now);
            let frames = server.drive(fx);
            deliver(engine, frames, events);
        }
        if !moved {
            return;
        }
    }
    panic!("the exchange never went quiet");
}

fn open_engine(dir: &Path) -> (Engine, PeerInfo) {
    let store = DeviceStore::open(dir, None).unwrap();
    let engine = Engine::open(store, 1_000).unwrap();
    let who = writer_of(&engine).unwrap();
    (engine, who)
}

#[test]
fn refused_work_is_kept_rebased_and_listed_and_later_edits_upload() {
    let dir = tempfile::tempdir().unwrap();
    let members = BTreeMap::from([(USER.to_owned(), MemberRole::Lead)]);
    let (catalog, inspection) = documents(members);
    seed(
        dir.path(),
        &[(CATALOG, &catalog), (INSPECTION, &inspection)],
        "t-a",
    );
    let mut server = Server::new(&[(CATALOG, &catalog), (INSPECTION, &inspection)]);
    let id = INSPECTION.encode();

    // Offline work: an answer the server will keep, then one to an item
    // that the new template drops, and everything after it.
    let photo_file = dir.path().join("p.png");
    std::fs::write(&photo_file, png(32, 24)).unwrap();
    let (stuck_finding, kept_finding, sha) = {
        let t = Tablet::open(dir.path(), config()).unwrap();
        t.answer(&id, "A1", "yes", HashMap::new(), None).unwrap();
        t.answer(&id, "A4", "3", HashMap::new(), Some("ghi chú".into()))
            .unwrap();
        let stuck = t
            .add_finding(
                &id,
                NewFinding {
                    title: "Chưa tập huấn".into(),
                    note: "Không có buổi nào".into(),
                    severity: "high".into(),
                    item_id: Some("A4".into()),
                },
            )
            .unwrap();
        let kept = t
            .add_finding(
                &id,
                NewFinding {
                    title: "Thiếu biên bản".into(),
                    note: "Chưa có".into(),
                    severity: "medium".into(),
                    item_id: None,
                },
            )
            .unwrap();
        let sha = t
            .add_photo(
                &id,
                &photo_file,
                PhotoTarget {
                    finding_id: Some(kept.clone()),
                    caption: Some("Bảng tin".into()),
                    ..PhotoTarget::default()
                },
            )
            .unwrap()
            .sha256;
        t.edit_finding(
            &id,
            &kept,
            FindingEdit {
                append_note: Some(" biên bản họp.".into()),
                ..FindingEdit::default()
            },
        )
        .unwrap();
        t.answer(&id, "A2", "partial", HashMap::new(), None)
            .unwrap();
        t.submit(&id, Some("Xong".into())).unwrap();
        assert_eq!(t.status().unwrap().pending_changes, 8);
        (stuck, kept, sha)
    };
    let before = DeviceStore::open(dir.path(), None)
        .unwrap()
        .load(INSPECTION)
        .unwrap()
        .unwrap();

    // Meanwhile the secretariat moves the inspection to checklist v2.
    set_template_version(&mut server, 2);

    let (mut engine, who) = open_engine(dir.path());
    let (events, settled) = session_with(&mut server, &mut engine, &who);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Refused { document_id, .. } if *document_id == INSPECTION)),
        "{events:?}"
    );
    assert_eq!(settled.documents, 1, "{:?}", settled.warnings);
    // The first answer was kept by the server; the rest was refused.
    let server_now =
        model::read_inspection(server.doc(INSPECTION), engine.registry().unwrap()).unwrap();
    assert!(server_now.answers.contains_key("A1"));
    assert!(!server_now.answers.contains_key("A2"));

    // Nothing deleted: every change the server lacks is kept byte for byte.
    let refusals = engine.store().refusals(INSPECTION).unwrap();
    assert_eq!(refusals.len(), 1);
    let kept = engine.store().refused_changes(refusals[0].id).unwrap();
    assert_eq!(
        kept.len(),
        7,
        "A4, two findings, photo, note, A2, submission"
    );
    let server_has = server.doc(INSPECTION).clone();
    for c in before.get_changes(&[]) {
        assert!(
            server_has.get_change_by_hash(&c.hash()).is_some()
                || kept
                    .iter()
                    .any(|k| k.hash == c.hash() && k.data == c.raw_bytes()),
            "change {} is neither on the server nor kept",
            c.hash()
        );
    }
    // Work that needs no choice was written again: A2, the second finding
    // (with its appended note and photo), the photo, the submission.
    assert_eq!(settled.rebased, 4, "{:?}", engine.store().work(None, true));

    // A second session uploads it.
    let (events, settled) = session_with(&mut server, &mut engine, &who);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Refused { .. })),
        "{events:?}"
    );
    assert_eq!(settled.rebased, 0);
    let on_server =
        model::read_inspection(server.doc(INSPECTION), engine.registry().unwrap()).unwrap();
    assert_eq!(
        on_server.answers["A2"].value,
        AnswerValue::YesNoPartial(sync_core::template::Tri::Partial)
    );
    let f = &on_server.findings[&kept_finding];
    assert_eq!(f.note, "Chưa có biên bản họp.");
    assert!(f.photos.contains(&sha));
    assert_eq!(on_server.photos[&sha].caption.as_deref(), Some("Bảng tin"));
    assert_eq!(on_server.submissions.len(), 1);
    assert!(!on_server.findings.contains_key(&stuck_finding));
    assert_eq!(
        engine.document(&INSPECTION).unwrap().get_heads(),
        server.doc(INSPECTION).get_heads()
    );
    drop(engine);

    // What could not be written again is listed with the reason.
    let t = Tablet::open(dir.path(), config()).unwrap();
    let refused = t.refused().unwrap();
    let pieces: Vec<&str> = refused.iter().map(|r| r.piece.as_str()).collect();
    assert_eq!(
        pieces,
        vec![format!("findings/{stuck_finding}").as_str(), "answers/A4"],
        "{refused:?}"
    );
    for r in &refused {
        assert_eq!(r.state, "open");
        assert_eq!(r.rule.as_deref(), Some("invalid"), "{r:?}");
        assert!(r.reason.contains("A4"), "{r:?}");
        assert_eq!(r.document_id, id);
    }
    assert_eq!(t.status().unwrap().pending_changes, 0);
    // A later edit of the same inspection is an ordinary edit.
    t.answer(&id, "A3", "45/50", HashMap::new(), None).unwrap();
    drop(t);
    let (mut engine, who) = open_engine(dir.path());
    session_with(&mut server, &mut engine, &who);
    let on_server =
        model::read_inspection(server.doc(INSPECTION), engine.registry().unwrap()).unwrap();
    assert!(on_server.answers.contains_key("A3"));
    drop(engine);

    // The secretariat goes back to v1: `rebase` writes the rest again.
    set_template_version(&mut server, 1);
    let (mut engine, who) = open_engine(dir.path());
    session_with(&mut server, &mut engine, &who);
    drop(engine);
    let t = Tablet::open(dir.path(), config()).unwrap();
    let report = t.rebase(&id).unwrap();
    assert_eq!(report.reapplied.len(), 2, "{report:?}");
    assert!(report.refused.is_empty(), "{report:?}");
    assert!(t.refused().unwrap().is_empty());
    drop(t);
    let (mut engine, who) = open_engine(dir.path());
    let (events, _) = session_with(&mut server, &mut engine, &who);
    assert!(!events.iter().any(|e| matches!(e, Event::Refused { .. })));
    let on_server =
        model::read_inspection(server.doc(INSPECTION), engine.registry().unwrap()).unwrap();
    assert_eq!(on_server.answers["A4"].value, AnswerValue::Number(3));
    assert_eq!(on_server.answers["A4"].note.as_deref(), Some("ghi chú"));
    assert_eq!(
        on_server.findings[&stuck_finding].item_id.as_deref(),
        Some("A4")
    );
}

#[test]
fn a_teammates_later_answer_is_not_overwritten_by_a_rebase() {
    let dir = tempfile::tempdir().unwrap();
    let members = BTreeMap::from([
        (USER.to_owned(), MemberRole::Lead),
        ("u-inspector2".to_owned(), MemberRole::Member),
    ]);
    let (catalog, inspection) = documents(members);
    seed(
        dir.path(),
        &[(CATALOG, &catalog), (INSPECTION, &inspection)],
        "t-a",
    );
    let mut server = Server::new(&[(CATALOG, &catalog), (INSPECTION, &inspection)]);
    let id = INSPECTION.encode();
    {
        let t = Tablet::open(dir.path(), config()).unwrap();
        t.answer(&id, "A4", "2", HashMap::new(), None).unwrap();
        t.answer(&id, "B8", "yes", HashMap::new(), None).unwrap();
        t.answer(&id, "C2", "yes", HashMap::new(), None).unwrap();
    }
    // A teammate answers C2 later, and D3, on the server; the template changes.
    server.edit(INSPECTION, |tx| {
        for item in ["C2", "D3"] {
            model::set_answer(
                tx,
                item,
                &answer(
                    AnswerValue::YesNoPartial(sync_core::template::Tri::No),
                    "u-inspector2",
                    4_000_000_000_000,
                ),
            )
            .unwrap();
        }
    });
    set_template_version(&mut server, 2);
    let (mut engine, who) = open_engine(dir.path());
    let (_, settled) = session_with(&mut server, &mut engine, &who);
    assert_eq!(settled.rebased, 1, "B8 only");
    session_with(&mut server, &mut engine, &who);
    let on_server =
        model::read_inspection(server.doc(INSPECTION), engine.registry().unwrap()).unwrap();
    assert!(on_server.answers.contains_key("B8"));
    assert!(!on_server.answers.contains_key("A4"));
    for item in ["C2", "D3"] {
        assert_eq!(on_server.answers[item].by, "u-inspector2");
    }
    // The older refused C2 is listed, not written over the teammate's.
    let work = engine.store().work(Some(INSPECTION), false).unwrap();
    let c2 = work.iter().find(|w| w.piece == "answers/C2").unwrap();
    assert!(
        c2.reason.contains("u-inspector2 answered C2 later"),
        "{c2:?}"
    );
    assert_eq!(work.len(), 2, "A4 and C2: {work:?}");
}

// ----- the architecture invariant ------------------------------------------------------

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The tablet learns where documents stand from the hub's state and
/// events; it never decodes a frame or parses an error's text.
#[test]
fn no_frame_is_decoded_and_no_message_text_parsed_outside_sync_core() {
    let forbidden = [
        concat!("protocol::", "decode"),
        concat!("sync::Message::", "decode"),
        concat!("Message::", "decode("),
        concat!("strip_prefix(\"", "document "),
    ];
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 10, "{files:?}");
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for pattern in forbidden {
            if text.contains(pattern) {
                found.push(format!("{}: {pattern}", f.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "frame decoding in mobile-bridge: {found:?}"
    );
}
