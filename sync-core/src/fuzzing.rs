//! The checks behind the fuzz targets in `fuzz/` (`codec`, `hub`,
//! `template`), kept here so that `cargo test` replays the committed seeds
//! and past crashes through exactly the same code
//! (`tests/fuzz_regressions.rs`). Not part of the crate's API.
//!
//! Each function takes arbitrary bytes and panics if, and only if, a
//! property that must hold for every input is broken.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::OnceLock;

use automerge::transaction::CommitOptions;
use automerge::{ActorId, Automerge, Change, ROOT};

use crate::access::{DocumentRules, PeerInfo};
use crate::ids::DocumentId;
use crate::model::{self, InspectionHeader, MemberRole};
use crate::policy::Role;
use crate::protocol::hub::{Access, AllowAll, ConnId, Effects, Hub, HubConfig, Millis, Mode};
use crate::protocol::{DecodeError, Limits, Message, PROTOCOL_V1, PeerMetadata, decode, encode};
use crate::template::{AnswerType, AnswerValue, Template, TemplateRegistry, Tri};

// ---------------------------------------------------------------------------
// codec
// ---------------------------------------------------------------------------

/// Limits far below the defaults, so that fuzzed frames reach every limit.
/// Each is at most the default one: a frame accepted under these is accepted
/// under the defaults too.
pub const TIGHT_LIMITS: Limits = Limits {
    max_message_bytes: 1024,
    max_id_len: 32,
    max_text_len: 64,
    max_entries: 4,
};

/// `codec`: decodes `data` under the default and the tight limits. For every
/// frame accepted:
///
/// - re-encoding gives a frame that decodes to the same message, unless the
///   re-encoding is over `max_message_bytes` (our encoding is not the
///   shortest CBOR: it always writes 3-byte map headers, as cbor-x does), in
///   which case decoding it says exactly that;
/// - encoding is a fixpoint (`encode(decode(encode(m))) == encode(m)`);
/// - the frame without its last byte is refused (CBOR items are prefix-free);
/// - a frame accepted under the tight limits decodes to the same message
///   under the defaults (but for the texts of an `error`, which are cut to
///   the limit rather than refused: the cut text is a prefix of the full one).
pub fn codec(data: &[u8]) {
    for limits in [Limits::default(), TIGHT_LIMITS] {
        let Ok(msg) = decode(data, &limits) else {
            continue;
        };
        let bytes = encode(&msg);
        if bytes.len() > limits.max_message_bytes {
            let again = decode(&bytes, &limits);
            assert!(
                matches!(again, Err(DecodeError::TooLarge { .. })),
                "re-encoding of {msg:?} is over the size limit but decodes to {again:?}"
            );
        } else {
            match decode(&bytes, &limits) {
                Ok(again) => {
                    assert_eq!(again, msg, "decode(encode(m)) != m");
                    assert_eq!(encode(&again), bytes, "encoding is not a fixpoint");
                }
                Err(e) => panic!("re-encoding of {msg:?} does not decode: {e}"),
            }
        }
        if let Some((_, prefix)) = data.split_last() {
            assert!(
                decode(prefix, &limits).is_err(),
                "a proper prefix of an accepted frame was accepted too"
            );
        }
        if limits == TIGHT_LIMITS {
            match (&msg, decode(data, &Limits::default())) {
                // The texts of an `error` are cut to the limit, not refused.
                (Message::Error { message: cut, .. }, Ok(Message::Error { message: full, .. })) => {
                    assert!(
                        full.starts_with(cut.as_str()),
                        "an error text cut by tight limits is not a prefix of the full one"
                    )
                }
                (_, full) => assert_eq!(
                    full,
                    Ok(msg),
                    "accepted under tight limits but not the same under the defaults"
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// template
// ---------------------------------------------------------------------------

/// Items whose answers [`template`] checks; the rest of a large template is
/// only loaded (each check compiles the item's field patterns).
const MAX_ITEMS_CHECKED: usize = 32;
/// Items with more fields than this get no field-value checks.
const MAX_FIELDS_CHECKED: usize = 8;

/// `template`: loads `data` (lossily as UTF-8) with [`Template::from_json`].
/// For every template accepted:
///
/// - its canonical JSON (what the server stores and reloads) loads again to
///   an equal template with the same canonical JSON and hash;
/// - publishing it twice is fine, and the registry then returns it;
/// - every item answers `NotApplicable` with no assessment, accepts a typical
///   value of its own type, refuses a value of another type, and checking
///   answers with arbitrary field values never panics.
pub fn template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(t) = Template::from_json(&text) else {
        return;
    };
    let again = match Template::from_json(t.canonical_json()) {
        Ok(again) => again,
        Err(e) => panic!("the canonical JSON of an accepted template is refused: {e}"),
    };
    assert_eq!(
        again, t,
        "reloading the canonical JSON changed the template"
    );
    assert_eq!(again.canonical_json(), t.canonical_json());
    assert_eq!(again.content_sha256(), t.content_sha256());
    assert_eq!(t.key(), format!("{}@{}", t.template_id, t.version));

    let mut registry = TemplateRegistry::default();
    if let Err(e) = registry.publish(t.clone()) {
        panic!("publishing into an empty registry failed: {e}");
    }
    if let Err(e) = registry.publish(again) {
        panic!("republishing identical content failed: {e}");
    }
    assert_eq!(registry.get(&t.template_id, t.version), Some(&t));

    for item in t.items().take(MAX_ITEMS_CHECKED) {
        check_item_answers(&t, item);
    }
}

fn check_item_answers(t: &Template, item: &crate::template::Item) {
    let none = BTreeMap::new();
    match t.check_answer(&item.id, &AnswerValue::NotApplicable, &none) {
        Ok(a) => assert_eq!((a.target_met, a.percent), (None, None), "n/a assessed"),
        Err(e) => panic!("item {}: n/a refused: {e}", item.id),
    }
    let typical = match item.answer_type {
        AnswerType::YesNo => AnswerValue::YesNo(true),
        AnswerType::YesNoPartial => AnswerValue::YesNoPartial(Tri::Partial),
        AnswerType::Percentage => AnswerValue::Percentage {
            numerator: 1,
            denominator: 2,
        },
        AnswerType::Number => AnswerValue::Number(0),
        AnswerType::Text => AnswerValue::Text("x".into()),
        AnswerType::Select => match item.options.first() {
            Some(o) => AnswerValue::Select(o.value.clone()),
            None => AnswerValue::Select(String::new()),
        },
        AnswerType::ActionList => AnswerValue::ActionList(BTreeMap::new()),
    };
    let result = t.check_answer(&item.id, &typical, &none);
    match (&typical, &result) {
        (AnswerValue::Select(_), _) if item.options.is_empty() => {}
        (AnswerValue::Percentage { .. }, Ok(a)) => assert_eq!(a.percent, Some(50.0)),
        (_, Ok(_)) => {}
        (_, Err(e)) => panic!("item {}: typical answer {typical:?} refused: {e}", item.id),
    }
    let wrong = if item.answer_type == AnswerType::Number {
        AnswerValue::Text("x".into())
    } else {
        AnswerValue::Number(1)
    };
    assert!(
        t.check_answer(&item.id, &wrong, &none).is_err(),
        "item {}: an answer of the wrong type was accepted",
        item.id
    );

    // Field values from the template itself (its options, its text) and a
    // few shapes the formats care about: none of this may panic. Each check
    // compiles the item's field patterns, so only small items get this.
    if item.fields.len() > MAX_FIELDS_CHECKED {
        return;
    }
    let mut samples: Vec<String> = vec![
        String::new(),
        "05/02/2025".into(),
        "31/02/2024".into(),
        "x".into(),
    ];
    samples.extend(
        item.text_vi
            .chars()
            .take(40)
            .collect::<String>()
            .split(' ')
            .map(str::to_owned)
            .take(2),
    );
    for field in &item.fields {
        samples.extend(field.options.iter().take(2).cloned());
    }
    for field in &item.fields {
        for sample in &samples {
            let fields = BTreeMap::from([(field.key.clone(), sample.clone())]);
            let _ = t.check_answer(&item.id, &typical, &fields);
            if item.answer_type == AnswerType::ActionList {
                let entry = BTreeMap::from([("e-1".to_owned(), fields)]);
                let _ = t.check_answer(&item.id, &AnswerValue::ActionList(entry), &none);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// hub
// ---------------------------------------------------------------------------

/// The documents the `MESSAGE` operation of [`hub`] speaks about.
pub const HUB_DOCS: [DocumentId; 4] = [
    DocumentId::from_bytes([1; 16]),
    DocumentId::from_bytes([2; 16]),
    DocumentId::from_bytes([3; 16]),
    DocumentId::from_bytes([4; 16]),
];

/// What the server's storage holds when a [`hub`] run starts: the changes
/// of `HUB_DOCS[0]` (a plain map), `HUB_DOCS[1]` (an inspection of unit
/// 00004, team `t-a`, with `u-1` as lead) and `HUB_DOCS[2]` (a catalog);
/// `HUB_DOCS[3]` does not exist. The server creates no documents through
/// sync, so without these no exchange would ever start. Built
/// deterministically (fixed actors, time 0).
pub fn hub_storage() -> &'static [(DocumentId, Vec<Change>)] {
    static STORAGE: OnceLock<Vec<(DocumentId, Vec<Change>)>> = OnceLock::new();
    STORAGE.get_or_init(|| {
        let build = |actor: u8, f: &dyn Fn(&mut automerge::transaction::Transaction<'_>)| {
            let mut doc = Automerge::new().with_actor(ActorId::from([actor; 16]));
            let mut tx = doc.transaction();
            f(&mut tx);
            tx.commit_with(CommitOptions::default().with_time(0));
            doc.get_changes(&[])
        };
        let plain = build(0xa0, &|tx| {
            use automerge::transaction::Transactable;
            let _ = tx.put(ROOT, "title", "Ba Đình");
            let _ = tx.put(ROOT, "n", 1);
        });
        let header = InspectionHeader {
            unit_code: "00004".into(),
            unit_name: "Phường Ba Đình".into(),
            template_id: "DA06-HN-2025-v1".into(),
            template_version: 1,
            team_id: "t-a".into(),
            members: BTreeMap::from([("u-1".to_owned(), MemberRole::Lead)]),
            scheduled_date: "2025-10-15".into(),
            created_at: 1_760_000_000_000,
        };
        let inspection = build(0xa1, &|tx| {
            let _ = model::init_inspection(tx, &header);
        });
        let catalog = build(0xa2, &|tx| {
            let _ = model::init_catalog(tx);
        });
        vec![
            (HUB_DOCS[0], plain),
            (HUB_DOCS[1], inspection),
            (HUB_DOCS[2], catalog),
        ]
    })
}

/// A document as the [`hub`] driver loads it from `changes`.
pub fn hub_load(changes: &[Change]) -> Option<Automerge> {
    let mut doc = Automerge::new().with_actor(ActorId::from([0xff; 16]));
    doc.apply_changes(changes.iter().cloned())
        .ok()
        .map(|()| doc)
}

/// The server hub's peer id in [`hub`].
pub const HUB_PEER_ID: &str = "server";

/// Operation codes of [`hub`] input (the low 3 bits of an operation byte).
pub mod op {
    /// `u16` length (big-endian), then that many bytes: one frame as it is.
    pub const FRAME: u8 = 0;
    /// One kind byte, `u16` length, bytes: a well-formed message of that
    /// kind carrying the bytes as its `data` (see [`super::HubScript::message`]).
    pub const MESSAGE: u8 = 1;
    /// The clock advances by `n` × 4 s, then `tick`.
    pub const TICK: u8 = 2;
    /// Commits the oldest pending store (`n` = 15: every pending store).
    pub const COMMIT: u8 = 3;
    /// Reports the oldest pending store as failed.
    pub const FAIL: u8 = 4;
    /// Answers the oldest pending load (from [`super::hub_storage`] and the
    /// stores committed so far).
    pub const LOAD: u8 = 5;
    /// Disconnects the connection if it is open, connects it if not.
    pub const CONNECT: u8 = 6;
    /// Unloads every idle document.
    pub const UNLOAD: u8 = 7;
}

/// Kinds of the [`op::MESSAGE`] operation (its kind byte modulo 6).
pub mod kind {
    pub const JOIN: u8 = 0;
    pub const REQUEST: u8 = 1;
    pub const SYNC: u8 = 2;
    pub const EPHEMERAL: u8 = 3;
    pub const DOC_UNAVAILABLE: u8 = 4;
    pub const LEAVE: u8 = 5;
}

/// `hub`: a server-mode hub with two connections, driven by `data`.
///
/// The first byte chooses the set-up: bit 0 the access rules ([`AllowAll`],
/// or `DocumentRules::default()` with a peer whose role is bits 1–3 modulo
/// 6), bit 4 whether loads wait for an [`op::LOAD`] (else they are answered
/// at once, from [`hub_storage`] and what was committed since). Every
/// further byte is an operation: bits 0–2 the code (see [`op`]), bit 3 the
/// connection (1 or 2), bits 4–7 an argument `n`. At the end every pending
/// load and store is settled.
///
/// Checked throughout: nothing panics; every frame the hub sends decodes;
/// frames go only to connections that exist; and no `sync` message leaves
/// about a document while a store of it is pending (commit before send).
/// Returns what happened, for tests that check a seed reaches deep enough.
pub fn hub(data: &[u8]) -> HubRun {
    let Some((&setup, ops)) = data.split_first() else {
        return HubRun::default();
    };
    let defer_loads = setup & 0x10 != 0;
    if setup & 1 == 0 {
        drive(Hub::new(hub_config(), AllowAll), |_| (), defer_loads, ops)
    } else {
        let role = HUB_ROLES[usize::from((setup >> 1) & 7) % HUB_ROLES.len()];
        drive(
            Hub::new(hub_config(), DocumentRules::default()),
            |conn| hub_peer(role, conn),
            defer_loads,
            ops,
        )
    }
}

/// What one [`hub`] run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubRun {
    /// Frames the hub sent.
    pub frames_sent: usize,
    /// `sync` messages among them.
    pub syncs_sent: usize,
    /// Loads answered with a document.
    pub documents_loaded: usize,
    /// Stores committed.
    pub stores_committed: usize,
}

/// The roles of [`hub`]'s peers under `DocumentRules`, by bits 1–3 of the
/// set-up byte (modulo 6).
pub const HUB_ROLES: [Role; 6] = [
    Role::Secretariat,
    Role::Inspector,
    Role::Unit,
    Role::Leader,
    Role::Server,
    Role::Admin,
];

/// The peer on connection `conn` under `DocumentRules`.
pub fn hub_peer(role: Role, conn: ConnId) -> PeerInfo {
    PeerInfo {
        user_id: format!("u-{conn}"),
        role,
        team_id: Some("t-a".into()),
        unit_code: Some("00004".into()),
        device_id: format!("device-{conn}"),
    }
}

/// The server hub's settings in [`hub`]: small bounds, so that fuzzed
/// sessions reach them.
pub fn hub_config() -> HubConfig {
    let mut config = HubConfig::new(Mode::Server, HUB_PEER_ID);
    config.storage_id = Some("server-storage".into());
    config.max_rounds_without_progress = 8;
    config.max_queued_per_document = 4;
    config.max_documents_per_connection = 3;
    config
}

/// The remote peer id used on connection `conn` by [`op::MESSAGE`].
pub fn hub_remote_peer(conn: ConnId) -> String {
    format!("peer-{conn}")
}

/// Builds the frame of an [`op::MESSAGE`] operation.
fn message_frame(conn: ConnId, kind: u8, doc: DocumentId, n: u8, data: &[u8]) -> Vec<u8> {
    let sender_id = hub_remote_peer(conn);
    let target_id = HUB_PEER_ID.to_owned();
    let msg = match kind % 6 {
        kind::JOIN => Message::Join {
            sender_id,
            supported_protocol_versions: vec![PROTOCOL_V1.to_owned()],
            peer_metadata: Some(PeerMetadata {
                storage_id: Some(format!("storage-{conn}")),
                is_ephemeral: n & 1 != 0,
            }),
        },
        kind::REQUEST => Message::Request {
            sender_id,
            target_id,
            document_id: doc,
            data: data.to_vec(),
        },
        kind::SYNC => Message::Sync {
            sender_id,
            target_id,
            document_id: doc,
            data: data.to_vec(),
        },
        kind::EPHEMERAL => Message::Ephemeral {
            sender_id,
            target_id,
            count: u64::from(n),
            session_id: format!("session-{conn}"),
            document_id: doc,
            data: data.to_vec(),
        },
        kind::DOC_UNAVAILABLE => Message::DocUnavailable {
            sender_id,
            target_id,
            document_id: doc,
        },
        _ => Message::Leave { sender_id },
    };
    encode(&msg)
}

/// Reads a `u16`-length-prefixed slice, cut short at the end of the input.
fn take_chunk<'a>(ops: &mut &'a [u8]) -> &'a [u8] {
    let len = match ops {
        [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => 0,
    };
    let rest = ops.get(2..).unwrap_or_default();
    let (chunk, rest) = rest.split_at(len.min(rest.len()));
    *ops = rest;
    chunk
}

/// One store the driver has been asked for and not settled yet.
struct PendingStore {
    ticket: u64,
    document_id: DocumentId,
    changes: Vec<Change>,
}

/// The driving loop of [`hub`]: every call into the [`Hub`] API is in this
/// one function, so a change of that API is a change here only.
fn drive<A: Access>(
    mut hub: Hub<A>,
    who: impl Fn(ConnId) -> A::Identity,
    defer_loads: bool,
    mut ops: &[u8],
) -> HubRun {
    const CONNS: [ConnId; 2] = [1, 2];
    let mut now: Millis = 1_000;
    let mut open: HashSet<ConnId> = HashSet::new();
    // What "storage" holds: the documents it starts with, then the changes
    // of every committed store.
    let mut stored: HashMap<DocumentId, Vec<Change>> = hub_storage().iter().cloned().collect();
    let mut stores: VecDeque<PendingStore> = VecDeque::new();
    let mut loads: VecDeque<DocumentId> = VecDeque::new();
    let mut effects: VecDeque<Effects> = VecDeque::new();

    let mut run = HubRun::default();
    let load = |stored: &HashMap<DocumentId, Vec<Change>>, id: &DocumentId, run: &mut HubRun| {
        let doc = stored.get(id).and_then(|changes| hub_load(changes));
        run.documents_loaded += usize::from(doc.is_some());
        doc
    };

    for conn in CONNS {
        effects.push_back(hub.connect(conn, who(conn), now));
        open.insert(conn);
    }
    let mut finishing = false;
    let mut settle_rounds = 0;
    loop {
        // Carry out what the hub asked for, checking it on the way.
        while let Some(fx) = effects.pop_front() {
            for s in fx.store {
                stores.push_back(PendingStore {
                    ticket: s.ticket,
                    document_id: s.document_id,
                    changes: s.changes,
                });
            }
            run.frames_sent += fx.outgoing.len();
            for out in &fx.outgoing {
                assert!(
                    CONNS.contains(&out.conn),
                    "frame for unknown connection {}",
                    out.conn
                );
                match decode(&out.bytes, &Limits::default()) {
                    Ok(Message::Sync { document_id, .. }) => {
                        run.syncs_sent += 1;
                        assert!(
                            !stores.iter().any(|s| s.document_id == document_id),
                            "sync about {document_id} sent while a store of it is pending"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => panic!("the hub sent a frame that does not decode: {e}"),
                }
            }
            for (conn, _) in fx.close {
                if open.remove(&conn) {
                    effects.push_back(hub.disconnect(conn));
                }
            }
            for id in fx.load {
                if defer_loads && !finishing {
                    loads.push_back(id);
                } else {
                    effects.push_back(hub.loaded(id, load(&stored, &id, &mut run), now));
                }
            }
        }

        let Some((&byte, rest)) = ops.split_first() else {
            // End of input: settle every load and store, then stop.
            finishing = true;
            settle_rounds += 1;
            if let Some(id) = loads.pop_front() {
                effects.push_back(hub.loaded(id, load(&stored, &id, &mut run), now));
            } else if let Some(s) = stores.pop_front() {
                stored.entry(s.document_id).or_default().extend(s.changes);
                run.stores_committed += 1;
                effects.push_back(hub.committed(s.ticket, now));
            } else {
                break run;
            }
            assert!(settle_rounds < 10_000, "the hub never settles");
            continue;
        };
        ops = rest;
        let conn = CONNS[usize::from((byte >> 3) & 1)];
        let n = byte >> 4;
        match byte & 7 {
            op::FRAME => {
                let frame = take_chunk(&mut ops);
                effects.push_back(hub.receive(conn, frame, now));
            }
            op::MESSAGE => {
                let kind = match ops.split_first() {
                    Some((&k, rest)) => {
                        ops = rest;
                        k
                    }
                    None => 0,
                };
                let data = take_chunk(&mut ops);
                let doc = HUB_DOCS[usize::from(n) % HUB_DOCS.len()];
                let frame = message_frame(conn, kind, doc, n, data);
                effects.push_back(hub.receive(conn, &frame, now));
            }
            op::TICK => {
                now += u64::from(n) * 4_000;
                effects.push_back(hub.tick(now));
            }
            op::COMMIT => {
                let count = if n == 15 { stores.len() } else { 1 };
                for _ in 0..count {
                    if let Some(s) = stores.pop_front() {
                        stored.entry(s.document_id).or_default().extend(s.changes);
                        run.stores_committed += 1;
                        effects.push_back(hub.committed(s.ticket, now));
                    }
                }
            }
            op::FAIL => {
                if let Some(s) = stores.pop_front() {
                    // The hub drops the document and every ticket of it.
                    stores.retain(|p| p.document_id != s.document_id);
                    effects.push_back(hub.store_failed(s.ticket, "disk full"));
                }
            }
            op::LOAD => {
                if let Some(id) = loads.pop_front() {
                    effects.push_back(hub.loaded(id, load(&stored, &id, &mut run), now));
                }
            }
            op::CONNECT => {
                if open.remove(&conn) {
                    effects.push_back(hub.disconnect(conn));
                } else {
                    open.insert(conn);
                    effects.push_back(hub.connect(conn, who(conn), now));
                }
            }
            _ => {
                for id in hub.idle_documents() {
                    hub.unload(&id);
                }
            }
        }
    }
}

/// Writes [`hub`] input: a readable way to build seeds and regression
/// inputs.
#[derive(Debug, Clone, Default)]
pub struct HubScript {
    bytes: Vec<u8>,
}

impl HubScript {
    /// A script for the set-up byte `setup` (see [`hub`]).
    pub fn new(setup: u8) -> Self {
        Self { bytes: vec![setup] }
    }

    fn op(&mut self, code: u8, conn: ConnId, n: u8) -> &mut Self {
        let conn_bit = u8::from(conn == 2) << 3;
        self.bytes.push(code | conn_bit | (n.min(15) << 4));
        self
    }

    fn chunk(&mut self, data: &[u8]) -> &mut Self {
        let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes
            .extend_from_slice(data.get(..usize::from(len)).unwrap_or(data));
        self
    }

    /// A raw frame on connection `conn` (1 or 2).
    pub fn frame(&mut self, conn: ConnId, frame: &[u8]) -> &mut Self {
        self.op(op::FRAME, conn, 0).chunk(frame)
    }

    /// A message of `kind` (see [`kind`]) about `HUB_DOCS[doc]`.
    pub fn message(&mut self, conn: ConnId, kind: u8, doc: u8, data: &[u8]) -> &mut Self {
        self.op(op::MESSAGE, conn, doc);
        self.bytes.push(kind);
        self.chunk(data)
    }

    /// The clock advances by `n` × 4 s.
    pub fn tick(&mut self, n: u8) -> &mut Self {
        self.op(op::TICK, 1, n)
    }

    /// Commits every pending store.
    pub fn commit_all(&mut self) -> &mut Self {
        self.op(op::COMMIT, 1, 15)
    }

    /// Commits the oldest pending store.
    pub fn commit_one(&mut self) -> &mut Self {
        self.op(op::COMMIT, 1, 0)
    }

    /// Fails the oldest pending store.
    pub fn fail_one(&mut self) -> &mut Self {
        self.op(op::FAIL, 1, 0)
    }

    /// Answers the oldest pending load.
    pub fn load_one(&mut self) -> &mut Self {
        self.op(op::LOAD, 1, 0)
    }

    /// Disconnects (or reconnects) connection `conn`.
    pub fn toggle_connection(&mut self, conn: ConnId) -> &mut Self {
        self.op(op::CONNECT, conn, 0)
    }

    /// Unloads the idle documents.
    pub fn unload_idle(&mut self) -> &mut Self {
        self.op(op::UNLOAD, 1, 0)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}
