//! An in-memory network of protocol hubs for tests: one server (storage in
//! an in-memory SQLite through `sync_core::storage`) and any number of
//! clients, with a switchboard that can drop, duplicate and reorder frames.
//!
//! Documents are created on the server ([`Net::server_create`]); clients
//! ask for them ([`Net::want`]) and edit them, each client hub with an
//! automerge actor of its own ([`client_actor`]). Changes a client hub would
//! never send (another device's actor, missing dependencies) are built on a
//! copy of its document ([`Net::fork`]) and sent as a raw `sync` message
//! ([`Net::send_changes`]).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use automerge::sync;
use automerge::{ActorId, AutoSerde, Automerge, Change, ChangeHash, ReadDoc};
use sync_core::access::{ActorOwner, DocumentRules, PeerInfo, SERVER_USER};
use sync_core::ids::DocumentId;
use sync_core::model::ModelError;
use sync_core::policy::Role;
use sync_core::protocol::hub::{
    Access, AllowAll, ConnId, Effects, Event, Hub, HubConfig, Mode, Refusal,
};
use sync_core::protocol::intake::split_changes;
use sync_core::protocol::{ErrorDetail, Limits, Message, decode, encode};
use sync_core::storage::{self, DocStore};
use sync_core::template::{Template, TemplateRegistry};

pub const CHECKLIST: &str = include_str!("../data/checklist_de_an_06.json");

pub fn registry() -> TemplateRegistry {
    let mut r = TemplateRegistry::default();
    r.publish(Template::from_json(CHECKLIST).unwrap()).unwrap();
    r
}

pub fn peer(user: &str, role: Role, team: Option<&str>, unit: Option<&str>) -> PeerInfo {
    PeerInfo {
        user_id: user.to_owned(),
        role,
        team_id: team.map(str::to_owned),
        unit_code: unit.map(str::to_owned),
        device_id: format!("dev-{user}"),
    }
}

/// The server hub's automerge actor (documents it creates, its own edits).
pub fn server_actor() -> ActorId {
    ActorId::from(b"kiemtra-server".to_vec())
}

/// The automerge actor client `i`'s hub writes with.
pub fn client_actor(i: usize) -> ActorId {
    ActorId::from(format!("client-{i}").into_bytes())
}

/// A hub with its storage, driven synchronously.
pub struct Node<A: Access> {
    pub hub: Hub<A>,
    pub store: DocStore,
    pub events: Vec<Event>,
    /// Changes this node made itself (stored with `from: None`), in order.
    pub made: Vec<(DocumentId, Change)>,
    /// Loads are reported as failed ([`Hub::load_failed`]) instead of
    /// answered from the store.
    pub fail_loads: bool,
}

/// A frame in flight: (to server?, client index, bytes).
#[derive(Debug, Clone)]
pub struct Frame {
    pub to_server: bool,
    pub client: usize,
    pub bytes: Vec<u8>,
}

impl<A: Access> Node<A> {
    pub fn new(hub: Hub<A>) -> Self {
        Self {
            hub,
            store: DocStore::open_in_memory().unwrap(),
            events: Vec::new(),
            made: Vec::new(),
            fail_loads: false,
        }
    }

    /// Carries out effects: stores (then commits), loads; returns the
    /// frames to send and the connections to close.
    pub fn drive(&mut self, mut fx: Effects, now: u64) -> (Vec<(ConnId, Vec<u8>)>, Vec<ConnId>) {
        let mut out = Vec::new();
        let mut close = Vec::new();
        loop {
            out.extend(fx.outgoing.drain(..).map(|o| (o.conn, o.bytes)));
            close.extend(fx.close.drain(..).map(|(c, _)| c));
            self.events.append(&mut fx.events);
            let mut next = Effects::default();
            for s in fx.store.drain(..) {
                let kind = self
                    .hub
                    .document(&s.document_id)
                    .and_then(|d| sync_core::model::kind_of(d).ok())
                    .map(|k| k.as_str().to_owned())
                    .unwrap_or_else(|| "unknown".to_owned());
                self.store
                    .append_changes(s.document_id, &kind, &s.changes, now as i64)
                    .unwrap();
                if s.from.is_none() {
                    self.made
                        .extend(s.changes.iter().map(|c| (s.document_id, c.clone())));
                }
                next.merge(self.hub.committed(s.ticket, now));
            }
            for id in fx.load.drain(..) {
                if self.fail_loads {
                    next.merge(self.hub.load_failed(id, "storage is unavailable (test)"));
                } else {
                    let doc = self.store.load(id).unwrap();
                    next.merge(self.hub.loaded(id, doc, now));
                }
            }
            if next.is_empty() {
                break;
            }
            fx = next;
        }
        (out, close)
    }

    pub fn stored_bytes(&self, id: DocumentId) -> Option<Vec<u8>> {
        self.store.load(id).unwrap().map(|d| d.save())
    }

    pub fn heads(&self, id: &DocumentId) -> Vec<ChangeHash> {
        self.hub
            .document(id)
            .map(|d| d.get_heads())
            .unwrap_or_default()
    }
}

pub fn json(doc: &Automerge) -> serde_json::Value {
    serde_json::to_value(AutoSerde::from(doc)).unwrap()
}

/// One server and its clients. Client `i` talks to the server on server
/// connection `i`; each client calls its own end connection 0.
pub struct Net {
    pub server: Node<DocumentRules>,
    pub clients: Vec<Node<AllowAll>>,
    pub who: Vec<PeerInfo>,
    pub wire: Vec<Frame>,
    pub connected: Vec<bool>,
    pub now: u64,
    /// Frames the server sent to each client, decoded (for assertions).
    pub to_clients: Vec<Vec<Message>>,
}

impl Net {
    pub fn new(who: Vec<PeerInfo>) -> Self {
        Self::with_server_config(who, |_| {})
    }

    /// A network whose server hub's settings are adjusted by `f`.
    pub fn with_server_config(who: Vec<PeerInfo>, f: impl FnOnce(&mut HubConfig)) -> Self {
        let mut config = HubConfig::new(Mode::Server, "server");
        config.actor = Some(server_actor());
        f(&mut config);
        let mut rules = DocumentRules::new(registry());
        // As the real server does: its own actor is registered to it, so no
        // peer can claim it.
        rules.bind_actor(
            server_actor(),
            ActorOwner {
                user_id: SERVER_USER.to_owned(),
                device_id: "server".to_owned(),
            },
        );
        let server = Node::new(Hub::new(config, rules));
        let clients = who
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let mut config = HubConfig::new(Mode::Client, format!("{}-{i}", w.device_id));
                config.actor = Some(client_actor(i));
                Node::new(Hub::new(config, AllowAll))
            })
            .collect();
        let n = who.len();
        Self {
            server,
            clients,
            who,
            wire: Vec::new(),
            connected: vec![false; n],
            now: 1_000,
            to_clients: vec![Vec::new(); n],
        }
    }

    pub fn connect(&mut self, i: usize) {
        let fx = self
            .server
            .hub
            .connect(i as ConnId, self.who[i].clone(), self.now);
        self.route_server(fx);
        let fx = self.clients[i].hub.connect(0, (), self.now);
        self.route_client(i, fx);
        self.connected[i] = true;
    }

    pub fn disconnect(&mut self, i: usize) {
        if !self.connected[i] {
            return;
        }
        self.connected[i] = false;
        let fx = self.server.hub.disconnect(i as ConnId);
        self.route_server(fx);
        let fx = self.clients[i].hub.disconnect(0);
        self.route_client(i, fx);
        self.wire.retain(|f| f.client != i);
    }

    pub fn route_server(&mut self, fx: Effects) {
        let (out, close) = self.server.drive(fx, self.now);
        for (conn, bytes) in out {
            let i = conn as usize;
            if let Ok(m) = decode(&bytes, &Limits::default()) {
                self.to_clients[i].push(m);
            }
            self.wire.push(Frame {
                to_server: false,
                client: i,
                bytes,
            });
        }
        for c in close {
            self.disconnect(c as usize);
        }
    }

    pub fn route_client(&mut self, i: usize, fx: Effects) {
        let (out, close) = self.clients[i].drive(fx, self.now);
        for (_, bytes) in out {
            self.wire.push(Frame {
                to_server: true,
                client: i,
                bytes,
            });
        }
        if !close.is_empty() {
            self.disconnect(i);
        }
    }

    /// Delivers one frame.
    pub fn deliver(&mut self, f: Frame) {
        if !self.connected[f.client] {
            return;
        }
        if f.to_server {
            let fx = self
                .server
                .hub
                .receive(f.client as ConnId, &f.bytes, self.now);
            self.route_server(fx);
        } else {
            let fx = self.clients[f.client].hub.receive(0, &f.bytes, self.now);
            self.route_client(f.client, fx);
        }
    }

    /// Forgets client `i`'s memory and rebuilds its hub from its own store,
    /// as a tablet restarting would. It must be disconnected.
    pub fn reload_client(&mut self, i: usize) {
        assert!(!self.connected[i]);
        let config = self.clients[i].hub.config().clone();
        let mut hub = Hub::new(config, AllowAll);
        let store = &self.clients[i].store;
        for (id, _) in store.list().unwrap() {
            let doc = store.load(id).unwrap().unwrap();
            let fx = hub.add_stored(id, doc, self.now);
            assert!(fx.is_empty());
        }
        self.clients[i].hub = hub;
    }

    /// Restarts the server: a new hub, documents load lazily from its store.
    /// The actor registry survives (the real server keeps it in its database).
    pub fn reload_server(&mut self) {
        assert!(self.connected.iter().all(|c| !c));
        let config = self.server.hub.config().clone();
        let rules = self.server.hub.access().clone();
        self.server.hub = Hub::new(config, rules);
    }

    /// Delivers frames in a random order, dropping and duplicating some,
    /// until the wire is quiet or `max_frames` went by.
    pub fn run_faulty(&mut self, rng: &mut Rng, drop_pct: u32, dup_pct: u32, max_frames: usize) {
        let mut n = 0;
        while !self.wire.is_empty() && n < max_frames {
            let k = rng.below(self.wire.len() as u64) as usize;
            let f = self.wire.remove(k);
            n += 1;
            let roll = rng.below(100) as u32;
            if roll < drop_pct {
                continue;
            }
            if roll < drop_pct + dup_pct {
                self.wire.push(f.clone());
            }
            self.deliver(f);
        }
        self.wire.clear();
    }

    /// Delivers frames in order until the wire is quiet; returns how many.
    pub fn run(&mut self, max_frames: usize) -> usize {
        let mut n = 0;
        while !self.wire.is_empty() {
            assert!(
                n < max_frames,
                "network did not settle within {max_frames} frames"
            );
            let f = self.wire.remove(0);
            self.deliver(f);
            n += 1;
        }
        n
    }

    /// A local edit on client `i` (one change, the client's actor).
    pub fn edit(
        &mut self,
        i: usize,
        id: &DocumentId,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), ModelError>,
    ) {
        let (_, fx) = self.clients[i]
            .hub
            .update(id, self.now, |doc| in_tx(doc, f))
            .unwrap();
        self.route_client(i, fx);
    }

    /// A local edit on client `i` that may not fit its current view (the
    /// writer refuses: an id already taken, a finding not seen): then
    /// nothing changes and false is returned.
    pub fn try_edit(
        &mut self,
        i: usize,
        id: &DocumentId,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), ModelError>,
    ) -> bool {
        match self.clients[i]
            .hub
            .update(id, self.now, |doc| in_tx(doc, f))
        {
            Ok((_, fx)) => {
                self.route_client(i, fx);
                true
            }
            Err(_) => false,
        }
    }

    /// A new document made by the server (its actor) and stored there;
    /// clients [`want`](Self::want) it.
    pub fn server_create(
        &mut self,
        id: DocumentId,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), ModelError>,
    ) {
        let mut doc = Automerge::new();
        doc.set_actor(server_actor());
        in_tx(&mut doc, f).unwrap();
        let fx = self.server.hub.insert_document(id, doc, self.now);
        self.route_server(fx);
        assert!(
            self.server.store.exists(id).unwrap(),
            "the server stored the document it created"
        );
    }

    /// An edit the server makes itself (its actor), stored, then synced to
    /// every peer that has the document open.
    pub fn server_edit(
        &mut self,
        id: &DocumentId,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), ModelError>,
    ) {
        let (_, fx) = self
            .server
            .hub
            .update(id, self.now, |doc| in_tx(doc, f))
            .unwrap();
        self.route_server(fx);
    }

    /// A new document made on client `i` (documents are created by the
    /// server only: the server answers `doc-unavailable`).
    pub fn client_create(
        &mut self,
        i: usize,
        id: DocumentId,
        f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), ModelError>,
    ) {
        let mut doc = Automerge::new();
        doc.set_actor(client_actor(i));
        in_tx(&mut doc, f).unwrap();
        let fx = self.clients[i].hub.insert_document(id, doc, self.now);
        self.route_client(i, fx);
    }

    /// A copy of client `i`'s document to build changes on that its hub
    /// would not make (set another actor, skip dependencies, …).
    pub fn fork(&self, i: usize, id: &DocumentId) -> Automerge {
        self.client_doc(i, id)
            .expect("the client holds the document")
            .clone()
    }

    /// Sends `changes` from client `i` to the server in one raw `sync`
    /// message (as a peer that does not go through a hub would), claiming
    /// `heads`. The frame joins the wire; [`run`](Self::run) delivers it.
    pub fn send_changes(
        &mut self,
        i: usize,
        id: DocumentId,
        mut heads: Vec<ChangeHash>,
        changes: &[Change],
    ) {
        heads.sort();
        let data = sync::Message {
            heads,
            need: Vec::new(),
            have: Vec::new(),
            changes: sync::ChunkList::from(
                changes
                    .iter()
                    .map(|c| c.raw_bytes().to_vec())
                    .collect::<Vec<_>>(),
            ),
            flags: None,
            version: sync::MessageVersion::V1,
        }
        .encode();
        let msg = Message::Sync {
            sender_id: self.clients[i].hub.config().peer_id.clone(),
            target_id: "server".to_owned(),
            document_id: id,
            data,
        };
        self.wire.push(Frame {
            to_server: true,
            client: i,
            bytes: encode(&msg),
        });
    }

    /// Client `i` asks for a document it does not hold.
    pub fn want(&mut self, i: usize, id: DocumentId) {
        let fx = self.clients[i].hub.want(id, self.now);
        self.route_client(i, fx);
    }

    pub fn client_doc(&self, i: usize, id: &DocumentId) -> Option<&Automerge> {
        self.clients[i].hub.document(id)
    }

    /// The structured part of every document-level `error` sent to client `i`.
    pub fn error_details_to(&self, i: usize) -> Vec<ErrorDetail> {
        self.to_clients[i]
            .iter()
            .filter_map(|m| match m {
                Message::Error {
                    detail: Some(d), ..
                } => Some((**d).clone()),
                _ => None,
            })
            .collect()
    }

    /// What the server refused of client `i`'s changes, per message.
    pub fn refusals_of(&self, i: usize) -> Vec<Refusal> {
        self.server
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Rejected { conn, refusal, .. } if *conn == i as ConnId => {
                    Some(refusal.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// Every change the server sent client `i` about document `id`, and the
    /// heads it announced in each `sync`/`request`, in order.
    pub fn syncs_to(
        &self,
        i: usize,
        id: &DocumentId,
    ) -> Vec<(Vec<ChangeHash>, BTreeSet<ChangeHash>)> {
        self.to_clients[i]
            .iter()
            .filter_map(|m| match m {
                Message::Sync {
                    document_id, data, ..
                }
                | Message::Request {
                    document_id, data, ..
                } if document_id == id => {
                    let msg = sync::Message::decode(data).unwrap();
                    let changes = split_changes(msg.changes.iter()).unwrap();
                    Some((msg.heads, hashes(&changes)))
                }
                _ => None,
            })
            .collect()
    }

    /// Whether the server stored the change `hash` of document `id`.
    pub fn server_has(&self, id: DocumentId, hash: &ChangeHash) -> bool {
        self.server
            .store
            .load(id)
            .unwrap()
            .is_some_and(|d| d.get_change_by_hash(hash).is_some())
    }

    pub fn errors_to(&self, i: usize) -> Vec<String> {
        self.to_clients[i]
            .iter()
            .filter_map(|m| match m {
                Message::Error { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn server_stored(&self) -> BTreeMap<DocumentId, Vec<u8>> {
        self.server
            .store
            .list()
            .unwrap()
            .into_iter()
            .map(|(id, _)| (id, self.server.stored_bytes(id).unwrap()))
            .collect()
    }
}

pub fn raw_rows(store: &DocStore, id: DocumentId) -> Option<storage::RawDocument> {
    store.load_raw(id).unwrap()
}

/// The changes of `doc` that are not in `before` (heads), in causal order.
pub fn new_changes(doc: &Automerge, before: &[ChangeHash]) -> Vec<Change> {
    doc.get_changes(before)
}

/// Hashes of changes, as a set.
pub fn hashes<'a>(changes: impl IntoIterator<Item = &'a Change>) -> BTreeSet<ChangeHash> {
    changes.into_iter().map(Change::hash).collect()
}

/// Runs `f` in one automerge transaction (one change).
pub fn in_tx(
    doc: &mut Automerge,
    f: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    doc.transact(|tx| f(tx))
        .map(|_| ())
        .map_err(|failure| failure.error)
}

/// A small deterministic generator (splitmix64) so a failing case replays.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}
