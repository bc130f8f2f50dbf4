//! The sans-IO peer: one state machine that drives automerge-repo protocol
//! "1" over any number of connections, as a storage server or as a client.
//!
//! The [`Hub`] owns the in-memory documents and, per connection, the
//! handshake state and one automerge [`sync::State`] per document. It never
//! touches a socket, a clock, a file or a random source: the driver feeds it
//! events ([`Hub::receive`], [`Hub::loaded`], [`Hub::committed`],
//! [`Hub::tick`], …) with the current time as an argument, and carries out
//! the [`Effects`] it returns (frames to send, connections to close,
//! documents to load, changes to store, events to report).
//!
//! Two modes share every line of sync logic:
//! - [`Mode::Server`]: a storage peer. It never announces documents; it
//!   answers `request`s for documents the peer may read (else
//!   `doc-unavailable`), accepts new documents the peer may create, and
//!   checks every incoming change with [`Access::check_write`] on a copy of
//!   the document before anything is stored.
//! - [`Mode::Client`]: announces the documents it holds once the handshake is
//!   done, requests the ones it wants but does not hold.
//!
//! Nothing that reflects a change is sent before that change is stored: each
//! accepted batch of changes becomes a [`StoreRequest`] with a ticket, and no
//! sync message for that document leaves the hub until the driver reports
//! the ticket as [`Hub::committed`].
//!
//! # Example: two peers syncing one document
//!
//! ```
//! use automerge::{transaction::Transactable, ReadDoc, ROOT};
//! use sync_core::ids::DocumentId;
//! use sync_core::protocol::hub::{AllowAll, Hub, HubConfig, Mode};
//!
//! let mut server = Hub::new(HubConfig::new(Mode::Server, "server"), AllowAll);
//! let mut client = Hub::new(HubConfig::new(Mode::Client, "tablet-1"), AllowAll);
//!
//! // The tablet edits a document locally.
//! let id = DocumentId::from_bytes([1; 16]);
//! let mut doc = automerge::Automerge::new();
//! doc.transact(|tx| tx.put(ROOT, "title", "Ba Đình")).unwrap();
//! let mut fx = client.insert_document(id, doc, 0);
//! for s in std::mem::take(&mut fx.store) {
//!     client.committed(s.ticket, 0); // the tablet's store wrote it
//! }
//!
//! // Connection 1 on both sides; the client speaks first (join).
//! let mut to_server = client.connect(1, (), 0).outgoing;
//! server.connect(1, (), 0);
//! let mut to_client = Vec::new();
//! while !to_server.is_empty() || !to_client.is_empty() {
//!     for frame in std::mem::take(&mut to_server) {
//!         let mut fx = server.receive(1, &frame.bytes, 0);
//!         for id in std::mem::take(&mut fx.load) {
//!             // A real server looks in its storage; this one has nothing.
//!             fx.merge(server.loaded(id, None, 0));
//!         }
//!         for s in std::mem::take(&mut fx.store) {
//!             // A real server writes s.changes to SQLite first.
//!             fx.merge(server.committed(s.ticket, 0));
//!         }
//!         to_client.extend(fx.outgoing);
//!     }
//!     for frame in std::mem::take(&mut to_client) {
//!         let mut fx = client.receive(1, &frame.bytes, 0);
//!         for s in std::mem::take(&mut fx.store) {
//!             fx.merge(client.committed(s.ticket, 0));
//!         }
//!         to_server.extend(fx.outgoing);
//!     }
//! }
//! let copy = server.document(&id).unwrap();
//! assert_eq!(copy.get(ROOT, "title").unwrap().unwrap().0.to_str(), Some("Ba Đình"));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, Automerge, Change, ChangeHash};

use super::codec;
use super::message::{Limits, Message, PROTOCOL_V1, PeerMetadata};
use crate::ids::DocumentId;

/// A connection, as numbered by the driver.
pub type ConnId = u64;

/// Milliseconds since the Unix epoch, supplied by the driver.
pub type Millis = u64;

/// Which side of the protocol this hub plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Receiving peer, storage server: never announces documents.
    Server,
    /// Initiating peer: sends `join`, announces its documents.
    Client,
}

/// Settings of a hub. All limits are explicit.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub mode: Mode,
    /// Our peer id, sent in `join` / `peer` and as every `senderId`.
    pub peer_id: String,
    /// Our storage id, if we persist (sent in `peerMetadata`).
    pub storage_id: Option<String>,
    /// Frame decoding limits.
    pub limits: Limits,
    /// Sync messages about one document on one connection that change
    /// neither side's heads before the exchange is cut as non-converging.
    pub max_rounds_without_progress: u32,
    /// A connection that has not finished the handshake after this long is closed.
    pub handshake_timeout_ms: Millis,
    /// A document exchange that has been waiting for an answer this long is
    /// restarted with a fresh sync state (recovers from lost messages).
    pub resend_after_ms: Millis,
    /// Messages queued for a document that is being loaded, per document.
    pub max_queued_per_document: usize,
    /// Documents one connection may have open at once.
    pub max_documents_per_connection: usize,
    /// The automerge actor for edits made through [`Hub::update`] and for
    /// documents this hub starts (a device's or the server's own id).
    /// `None` keeps each document's own actor.
    pub actor: Option<ActorId>,
}

impl HubConfig {
    /// Defaults for `mode` with the given peer id.
    pub fn new(mode: Mode, peer_id: impl Into<String>) -> Self {
        Self {
            mode,
            peer_id: peer_id.into(),
            storage_id: None,
            limits: Limits::default(),
            max_rounds_without_progress: 32,
            handshake_timeout_ms: 30_000,
            resend_after_ms: 20_000,
            max_queued_per_document: 256,
            max_documents_per_connection: 10_000,
            actor: None,
        }
    }
}

/// Why an incoming batch of changes was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// One line per violation, for the `error` message and the logs.
    pub reasons: Vec<String>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reasons.join("; "))
    }
}

/// Access decisions, supplied by the driver. The hub asks; it never decides.
pub trait Access {
    /// Who is at the other end of a connection (user, role, scope).
    type Identity: Clone + fmt::Debug;

    /// May this peer read `doc`? Called with the document's current content.
    fn may_read(&self, who: &Self::Identity, id: &DocumentId, doc: &Automerge) -> bool;

    /// May this peer create documents at all? Decides whether a `sync` for a
    /// document the hub does not hold starts a creation or gets an error.
    fn may_create(&self, who: &Self::Identity) -> bool;

    /// Check a batch of incoming changes. `before` has no heads when the
    /// batch creates the document. Must cover field ownership and schema.
    fn check_write(
        &self,
        who: &Self::Identity,
        id: &DocumentId,
        before: &Automerge,
        after: &Automerge,
    ) -> Result<(), Rejection>;
}

/// An [`Access`] that allows everything: for tablets (which trust their
/// server) and examples.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Access for AllowAll {
    type Identity = ();
    fn may_read(&self, _: &(), _: &DocumentId, _: &Automerge) -> bool {
        true
    }
    fn may_create(&self, _: &()) -> bool {
        true
    }
    fn check_write(
        &self,
        _: &(),
        _: &DocumentId,
        _: &Automerge,
        _: &Automerge,
    ) -> Result<(), Rejection> {
        Ok(())
    }
}

/// One frame to send on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub conn: ConnId,
    pub bytes: Vec<u8>,
}

/// Changes the driver must make durable, then report with
/// [`Hub::committed`] (or [`Hub::store_failed`]).
#[derive(Debug, Clone)]
pub struct StoreRequest {
    pub ticket: u64,
    pub document_id: DocumentId,
    /// The new changes, in causal order.
    pub changes: Vec<Change>,
    /// The document's heads once these changes are applied.
    pub heads: Vec<ChangeHash>,
    /// True when these changes create the document.
    pub created: bool,
    /// The connection whose peer sent the changes (None for local edits).
    pub from: Option<ConnId>,
}

/// Something the driver may want to know or log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake finished.
    PeerJoined {
        conn: ConnId,
        peer_id: String,
        metadata: Option<PeerMetadata>,
    },
    /// A frame could not be decoded or broke the protocol; the connection is closed.
    ProtocolError { conn: ConnId, error: String },
    /// A batch of changes was refused; nothing of it was stored.
    Rejected {
        conn: ConnId,
        document_id: DocumentId,
        reason: String,
    },
    /// The peer asked for a document it may not have, or that does not exist.
    Unavailable {
        conn: ConnId,
        document_id: DocumentId,
    },
    /// The remote peer told us it does not have a document (client side).
    RemoteUnavailable {
        conn: ConnId,
        document_id: DocumentId,
    },
    /// A document changed (after commit).
    DocumentChanged { document_id: DocumentId },
    /// The peer sent an `error` message.
    PeerError { conn: ConnId, message: String },
    /// An ephemeral message arrived (client side), already relayed on the server.
    Ephemeral {
        conn: ConnId,
        document_id: DocumentId,
        data: Vec<u8>,
    },
    /// An exchange about one document was cut (no progress, panic in automerge, …).
    SyncAborted {
        conn: ConnId,
        document_id: DocumentId,
        reason: String,
    },
}

/// What the driver must do after a call.
#[derive(Debug, Default)]
pub struct Effects {
    pub outgoing: Vec<Outgoing>,
    /// Connections to close, with a reason (the `error` frame, if any, is in `outgoing`).
    pub close: Vec<(ConnId, String)>,
    /// Documents to load from storage, then report with [`Hub::loaded`].
    pub load: Vec<DocumentId>,
    pub store: Vec<StoreRequest>,
    pub events: Vec<Event>,
}

impl Effects {
    /// Appends another set of effects.
    pub fn merge(&mut self, other: Effects) {
        self.outgoing.extend(other.outgoing);
        self.close.extend(other.close);
        self.load.extend(other.load);
        self.store.extend(other.store);
        self.events.extend(other.events);
    }

    pub fn is_empty(&self) -> bool {
        self.outgoing.is_empty()
            && self.close.is_empty()
            && self.load.is_empty()
            && self.store.is_empty()
            && self.events.is_empty()
    }
}

#[derive(Debug)]
enum Handshake {
    /// Server: waiting for `join`.
    AwaitingJoin,
    /// Client: `join` sent, waiting for `peer`.
    AwaitingPeer,
    Ready {
        remote: String,
    },
    Closed,
}

#[derive(Debug)]
struct Link {
    sync: sync::State,
    rounds_without_progress: u32,
    /// When we last heard about this document on this link.
    last_heard: Millis,
    /// Refused changes or broke the exchange: ignore until reconnect.
    blocked: bool,
    /// Client: we asked with `request` and have nothing yet.
    requested: bool,
    /// A reply was held back while a store was pending: once it commits,
    /// a message goes out even if automerge thinks the peer is up to date
    /// (the peer may have told us our uncommitted heads meanwhile, but it
    /// still waits for the heads that confirm its changes are stored).
    owed: bool,
}

impl Link {
    fn new(now: Millis) -> Self {
        Self {
            sync: sync::State::new(),
            rounds_without_progress: 0,
            last_heard: now,
            blocked: false,
            requested: false,
            owed: false,
        }
    }
}

#[derive(Debug)]
struct Conn<I> {
    who: I,
    handshake: Handshake,
    opened_at: Millis,
    links: HashMap<DocumentId, Link>,
}

#[derive(Debug, PartialEq, Eq)]
enum DocState {
    /// Waiting for the driver's [`Hub::loaded`].
    Loading,
    /// Held and stored.
    Ready,
    /// A peer is creating it; nothing stored yet.
    Provisional,
    /// Client: wanted, not held yet.
    Wanted,
}

#[derive(Debug)]
struct DocEntry {
    doc: Automerge,
    state: DocState,
    /// Store tickets not yet committed: no sync goes out while any is pending.
    pending: Vec<u64>,
    /// Messages that arrived while loading.
    queued: Vec<(ConnId, Message)>,
}

impl DocEntry {
    fn new(doc: Automerge, state: DocState) -> Self {
        Self {
            doc,
            state,
            pending: Vec::new(),
            queued: Vec::new(),
        }
    }
}

/// The sans-IO protocol state machine. See the module docs.
#[derive(Debug)]
pub struct Hub<A: Access> {
    config: HubConfig,
    access: A,
    docs: HashMap<DocumentId, DocEntry>,
    conns: BTreeMap<ConnId, Conn<A::Identity>>,
    next_ticket: u64,
    /// ticket → document
    tickets: HashMap<u64, DocumentId>,
}

impl<A: Access> Hub<A> {
    pub fn new(config: HubConfig, access: A) -> Self {
        Self {
            config,
            access,
            docs: HashMap::new(),
            conns: BTreeMap::new(),
            next_ticket: 1,
            tickets: HashMap::new(),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    pub fn access(&self) -> &A {
        &self.access
    }

    pub fn access_mut(&mut self) -> &mut A {
        &mut self.access
    }

    /// The current content of a held document (None while loading or unknown).
    pub fn document(&self, id: &DocumentId) -> Option<&Automerge> {
        self.docs
            .get(id)
            .filter(|e| e.state == DocState::Ready)
            .map(|e| &e.doc)
    }

    /// Ids of the documents held and stored.
    pub fn document_ids(&self) -> Vec<DocumentId> {
        let mut ids: Vec<_> = self
            .docs
            .iter()
            .filter(|(_, e)| e.state == DocState::Ready)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    /// Documents held that no connection has open and no store is pending
    /// for: the driver may [`Hub::unload`] them to bound memory.
    pub fn idle_documents(&self) -> Vec<DocumentId> {
        self.docs
            .iter()
            .filter(|(id, e)| {
                e.pending.is_empty()
                    && e.queued.is_empty()
                    && e.state != DocState::Loading
                    && !self.conns.values().any(|c| c.links.contains_key(id))
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Forgets an idle document (it will be loaded again when asked for).
    /// Returns false, and keeps it, if it is not idle.
    pub fn unload(&mut self, id: &DocumentId) -> bool {
        if self.idle_documents().contains(id) {
            self.docs.remove(id);
            true
        } else {
            false
        }
    }

    /// Whether this connection finished its handshake.
    pub fn is_ready(&self, conn: ConnId) -> bool {
        matches!(
            self.conns.get(&conn).map(|c| &c.handshake),
            Some(Handshake::Ready { .. })
        )
    }

    /// The peer id the remote announced, once the handshake is done.
    pub fn remote_peer_id(&self, conn: ConnId) -> Option<&str> {
        match self.conns.get(&conn).map(|c| &c.handshake) {
            Some(Handshake::Ready { remote }) => Some(remote),
            _ => None,
        }
    }

    /// Whether every open exchange on `conn` is settled: nothing waiting to
    /// be stored and both sides at the same heads, for every document linked.
    pub fn is_synced(&self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        c.links.iter().all(|(id, link)| {
            if link.blocked {
                return true;
            }
            let Some(entry) = self.docs.get(id) else {
                return false;
            };
            // `in_flight` is not consulted: our last message may be a bare
            // acknowledgement that the peer has no reason to answer.
            entry.pending.is_empty()
                && link.sync.their_heads.as_deref() == Some(&entry.doc.get_heads()[..])
        })
    }

    // ----- connections -------------------------------------------------

    /// A new connection. The client sends `join` at once; the server waits.
    pub fn connect(&mut self, conn: ConnId, who: A::Identity, now: Millis) -> Effects {
        let mut fx = Effects::default();
        let handshake = match self.config.mode {
            Mode::Server => Handshake::AwaitingJoin,
            Mode::Client => {
                let join = Message::Join {
                    sender_id: self.config.peer_id.clone(),
                    supported_protocol_versions: vec![PROTOCOL_V1.to_owned()],
                    peer_metadata: Some(self.metadata()),
                };
                fx.outgoing.push(Outgoing {
                    conn,
                    bytes: codec::encode(&join),
                });
                Handshake::AwaitingPeer
            }
        };
        self.conns.insert(
            conn,
            Conn {
                who,
                handshake,
                opened_at: now,
                links: HashMap::new(),
            },
        );
        fx
    }

    /// The connection is gone (closed by either side). Its sync states go
    /// with it: a new connection starts afresh, as the protocol requires.
    pub fn disconnect(&mut self, conn: ConnId) -> Effects {
        self.conns.remove(&conn);
        let fx = Effects::default();
        // Provisional documents nobody is creating any more are dropped.
        let orphans: Vec<DocumentId> = self
            .docs
            .iter()
            .filter(|(id, e)| {
                matches!(e.state, DocState::Provisional)
                    && e.pending.is_empty()
                    && !self.conns.values().any(|c| c.links.contains_key(*id))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in orphans {
            self.docs.remove(&id);
        }
        for entry in self.docs.values_mut() {
            entry.queued.retain(|(c, _)| *c != conn);
        }
        fx
    }

    fn metadata(&self) -> PeerMetadata {
        PeerMetadata {
            storage_id: self.config.storage_id.clone(),
            is_ephemeral: false,
        }
    }

    fn send(&self, fx: &mut Effects, conn: ConnId, msg: &Message) {
        fx.outgoing.push(Outgoing {
            conn,
            bytes: codec::encode(msg),
        });
    }

    fn remote_of(&self, conn: ConnId) -> String {
        self.remote_peer_id(conn).unwrap_or_default().to_owned()
    }

    /// Sends `error` and closes: for protocol violations.
    fn fail(&mut self, fx: &mut Effects, conn: ConnId, error: String) {
        let target = self.remote_peer_id(conn).map(str::to_owned);
        let msg = Message::Error {
            sender_id: Some(self.config.peer_id.clone()),
            target_id: target,
            message: error.clone(),
        };
        self.send(fx, conn, &msg);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.handshake = Handshake::Closed;
        }
        fx.close.push((conn, error.clone()));
        fx.events.push(Event::ProtocolError { conn, error });
    }

    /// Sends `error` about one document and keeps the connection.
    fn doc_error(&self, fx: &mut Effects, conn: ConnId, id: &DocumentId, text: String) {
        let msg = Message::Error {
            sender_id: Some(self.config.peer_id.clone()),
            target_id: Some(self.remote_of(conn)),
            message: format!("document {id}: {text}"),
        };
        self.send(fx, conn, &msg);
    }

    // ----- incoming frames ------------------------------------------------

    /// One binary frame arrived on `conn`.
    pub fn receive(&mut self, conn: ConnId, bytes: &[u8], now: Millis) -> Effects {
        let mut fx = Effects::default();
        let Some(c) = self.conns.get(&conn) else {
            return fx;
        };
        if matches!(c.handshake, Handshake::Closed) {
            return fx;
        }
        let msg = match codec::decode(bytes, &self.config.limits) {
            Ok(m) => m,
            Err(e) => {
                self.fail(&mut fx, conn, format!("could not decode message: {e}"));
                return fx;
            }
        };
        self.handle(conn, msg, now, &mut fx);
        fx
    }

    fn handle(&mut self, conn: ConnId, msg: Message, now: Millis, fx: &mut Effects) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        match (&c.handshake, msg) {
            (Handshake::Closed, _) => {}
            (
                Handshake::AwaitingJoin,
                Message::Join {
                    sender_id,
                    supported_protocol_versions,
                    peer_metadata,
                },
            ) => {
                // automerge-repo treats a missing list as version 1.
                if !supported_protocol_versions.is_empty()
                    && !supported_protocol_versions.iter().any(|v| v == PROTOCOL_V1)
                {
                    self.fail(
                        fx,
                        conn,
                        format!(
                            "unsupported protocol version(s) {supported_protocol_versions:?}; this server speaks \"1\""
                        ),
                    );
                    return;
                }
                let reply = Message::Peer {
                    sender_id: self.config.peer_id.clone(),
                    target_id: sender_id.clone(),
                    selected_protocol_version: PROTOCOL_V1.to_owned(),
                    peer_metadata: Some(self.metadata()),
                };
                self.send(fx, conn, &reply);
                self.ready(conn, sender_id, peer_metadata, now, fx);
            }
            (Handshake::AwaitingJoin, other) => {
                self.fail(
                    fx,
                    conn,
                    format!("expected a join message first, got {}", other.type_name()),
                );
            }
            (
                Handshake::AwaitingPeer,
                Message::Peer {
                    sender_id,
                    selected_protocol_version,
                    peer_metadata,
                    ..
                },
            ) => {
                if selected_protocol_version != PROTOCOL_V1 {
                    self.fail(
                        fx,
                        conn,
                        format!("unsupported protocol version {selected_protocol_version:?}"),
                    );
                    return;
                }
                self.ready(conn, sender_id, peer_metadata, now, fx);
            }
            (Handshake::AwaitingPeer, Message::Error { message, .. }) => {
                fx.events.push(Event::PeerError {
                    conn,
                    message: message.clone(),
                });
                fx.close.push((conn, message));
            }
            (Handshake::AwaitingPeer, other) => {
                self.fail(
                    fx,
                    conn,
                    format!("expected a peer message first, got {}", other.type_name()),
                );
            }
            (Handshake::Ready { remote }, msg) => {
                let remote = remote.clone();
                self.handle_ready(conn, &remote, msg, now, fx);
            }
        }
    }

    fn ready(
        &mut self,
        conn: ConnId,
        remote: String,
        metadata: Option<PeerMetadata>,
        now: Millis,
        fx: &mut Effects,
    ) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.handshake = Handshake::Ready {
                remote: remote.clone(),
            };
        }
        fx.events.push(Event::PeerJoined {
            conn,
            peer_id: remote,
            metadata,
        });
        if self.config.mode == Mode::Client {
            let mut ids: Vec<DocumentId> = self.docs.keys().copied().collect();
            ids.sort();
            for id in ids {
                self.announce(conn, id, now, fx);
            }
        }
    }

    /// Client: open the exchange about `id` on `conn`.
    fn announce(&mut self, conn: ConnId, id: DocumentId, now: Millis, fx: &mut Effects) {
        if !self.is_ready(conn) {
            return;
        }
        let Some(entry) = self.docs.get(&id) else {
            return;
        };
        let wanted = entry.state == DocState::Wanted;
        if let Some(c) = self.conns.get_mut(&conn) {
            let link = c.links.entry(id).or_insert_with(|| Link::new(now));
            link.requested = wanted;
        }
        self.sync_out(conn, id, fx);
    }

    fn handle_ready(
        &mut self,
        conn: ConnId,
        remote: &str,
        msg: Message,
        now: Millis,
        fx: &mut Effects,
    ) {
        // Every message after the handshake must come from the peer that joined.
        let sender = match &msg {
            Message::Join { sender_id, .. }
            | Message::Peer { sender_id, .. }
            | Message::Leave { sender_id }
            | Message::Request { sender_id, .. }
            | Message::Sync { sender_id, .. }
            | Message::DocUnavailable { sender_id, .. }
            | Message::Ephemeral { sender_id, .. }
            | Message::RemoteSubscriptionChange { sender_id, .. }
            | Message::RemoteHeadsChanged { sender_id, .. } => Some(sender_id.as_str()),
            Message::Error { sender_id, .. } => sender_id.as_deref(),
        };
        if let Some(s) = sender
            && s != remote
        {
            self.fail(
                fx,
                conn,
                format!(
                    "senderId {s:?} is not the peer id {remote:?} that joined on this connection"
                ),
            );
            return;
        }
        match msg {
            Message::Join { .. } | Message::Peer { .. } => {
                self.fail(fx, conn, "handshake message after the handshake".to_owned());
            }
            Message::Leave { .. } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.handshake = Handshake::Closed;
                }
                fx.close.push((conn, "peer left".to_owned()));
            }
            // The sender closes the connection if it means to; a server
            // reports refused changes this way and keeps serving.
            Message::Error { message, .. } => {
                fx.events.push(Event::PeerError { conn, message });
            }
            Message::Request {
                document_id, data, ..
            } => self.on_sync(conn, document_id, data, true, now, fx),
            Message::Sync {
                document_id, data, ..
            } => self.on_sync(conn, document_id, data, false, now, fx),
            Message::DocUnavailable { document_id, .. } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.links.remove(&document_id);
                }
                fx.events
                    .push(Event::RemoteUnavailable { conn, document_id });
            }
            Message::Ephemeral {
                document_id,
                data,
                count,
                session_id,
                sender_id,
                ..
            } => {
                let linked = self
                    .conns
                    .get(&conn)
                    .and_then(|c| c.links.get(&document_id))
                    .is_some_and(|l| !l.blocked);
                if !linked {
                    // Ephemeral data only flows about documents the peer has open.
                    return;
                }
                if self.config.mode == Mode::Server {
                    let others: Vec<(ConnId, String)> = self
                        .conns
                        .iter()
                        .filter(|(id, c)| {
                            **id != conn && c.links.get(&document_id).is_some_and(|l| !l.blocked)
                        })
                        .filter_map(|(id, c)| match &c.handshake {
                            Handshake::Ready { remote } => Some((*id, remote.clone())),
                            _ => None,
                        })
                        .collect();
                    for (other, target) in others {
                        let relay = Message::Ephemeral {
                            sender_id: sender_id.clone(),
                            target_id: target,
                            count,
                            session_id: session_id.clone(),
                            document_id,
                            data: data.clone(),
                        };
                        self.send(fx, other, &relay);
                    }
                }
                fx.events.push(Event::Ephemeral {
                    conn,
                    document_id,
                    data,
                });
            }
            // Remote-heads gossip is optional in automerge-repo and off by
            // default; we accept and ignore it.
            Message::RemoteSubscriptionChange { .. } | Message::RemoteHeadsChanged { .. } => {}
        }
    }

    fn on_sync(
        &mut self,
        conn: ConnId,
        id: DocumentId,
        data: Vec<u8>,
        is_request: bool,
        now: Millis,
        fx: &mut Effects,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if let Some(link) = c.links.get(&id)
            && link.blocked
        {
            return;
        }
        if !c.links.contains_key(&id) && c.links.len() >= self.config.max_documents_per_connection {
            self.doc_error(
                fx,
                conn,
                &id,
                format!(
                    "too many documents open on this connection (limit {})",
                    self.config.max_documents_per_connection
                ),
            );
            return;
        }
        let msg = if is_request {
            Message::Request {
                sender_id: String::new(),
                target_id: String::new(),
                document_id: id,
                data,
            }
        } else {
            Message::Sync {
                sender_id: String::new(),
                target_id: String::new(),
                document_id: id,
                data,
            }
        };
        match self.docs.get_mut(&id) {
            None => match self.config.mode {
                Mode::Server => {
                    self.docs.insert(
                        id,
                        DocEntry {
                            doc: Automerge::new(),
                            state: DocState::Loading,
                            pending: Vec::new(),
                            queued: vec![(conn, msg)],
                        },
                    );
                    fx.load.push(id);
                }
                Mode::Client => {
                    // A server that announces is unusual; hold what it sends.
                    self.docs
                        .insert(id, DocEntry::new(Automerge::new(), DocState::Provisional));
                    self.process(conn, msg, now, fx);
                }
            },
            Some(entry) if entry.state == DocState::Loading => {
                if entry.queued.len() >= self.config.max_queued_per_document {
                    self.doc_error(
                        fx,
                        conn,
                        &id,
                        "too many messages queued while the document loads; retry".to_owned(),
                    );
                } else {
                    entry.queued.push((conn, msg));
                }
            }
            Some(_) => self.process(conn, msg, now, fx),
        }
    }

    /// The driver finished loading a document: `None` when storage has none.
    pub fn loaded(&mut self, id: DocumentId, doc: Option<Automerge>, now: Millis) -> Effects {
        let mut fx = Effects::default();
        let Some(entry) = self.docs.get_mut(&id) else {
            return fx;
        };
        if entry.state != DocState::Loading {
            return fx;
        }
        let queued = std::mem::take(&mut entry.queued);
        match doc {
            Some(doc) => {
                entry.doc = doc;
                entry.state = DocState::Ready;
            }
            None => {
                entry.state = DocState::Provisional;
            }
        }
        for (conn, msg) in queued {
            if self.conns.contains_key(&conn) {
                self.process(conn, msg, now, &mut fx);
            }
        }
        self.drop_if_unused_provisional(&id);
        fx
    }

    fn drop_if_unused_provisional(&mut self, id: &DocumentId) {
        let unused = self.docs.get(id).is_some_and(|e| {
            e.state == DocState::Provisional
                && e.pending.is_empty()
                && e.queued.is_empty()
                && !self.conns.values().any(|c| c.links.contains_key(id))
        });
        if unused {
            self.docs.remove(id);
        }
    }

    /// Applies one `sync`/`request` to a held (or provisional) document.
    fn process(&mut self, conn: ConnId, msg: Message, now: Millis, fx: &mut Effects) {
        let (id, data, is_request) = match msg {
            Message::Request {
                document_id, data, ..
            } => (document_id, data, true),
            Message::Sync {
                document_id, data, ..
            } => (document_id, data, false),
            _ => return,
        };
        let Some(entry) = self.docs.get(&id) else {
            return;
        };
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let linked = c.links.contains_key(&id);

        // Access: decided when the exchange opens, and again on each message
        // (membership may have changed since).
        if self.config.mode == Mode::Server {
            let exists = entry.state == DocState::Ready;
            let readable = exists && self.access.may_read(&c.who, &id, &entry.doc);
            if !readable {
                let creating = entry.state == DocState::Provisional
                    && !is_request
                    && self.access.may_create(&c.who);
                if !creating {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.links.remove(&id);
                    }
                    if is_request {
                        let msg = Message::DocUnavailable {
                            sender_id: self.config.peer_id.clone(),
                            target_id: self.remote_of(conn),
                            document_id: id,
                        };
                        self.send(fx, conn, &msg);
                    } else {
                        self.doc_error(fx, conn, &id, "is not available to you".to_owned());
                    }
                    fx.events.push(Event::Unavailable {
                        conn,
                        document_id: id,
                    });
                    self.drop_if_unused_provisional(&id);
                    return;
                }
            }
        }

        let message = match catch_unwind(|| sync::Message::decode(&data)) {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                self.abort_link(conn, &id, format!("malformed sync message: {e}"), fx);
                return;
            }
            Err(_) => {
                self.abort_link(conn, &id, "malformed sync message".to_owned(), fx);
                return;
            }
        };
        let has_changes = !message.changes.is_empty();

        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let link = c.links.entry(id).or_insert_with(|| Link::new(now));
        link.last_heard = now;
        if !linked && is_request {
            link.requested = false;
        }
        let their_heads_before = link.sync.their_heads.clone();
        let Some(entry) = self.docs.get(&id) else {
            return;
        };
        let before_heads = entry.doc.get_heads();

        // Apply to a copy: the original stays untouched if automerge panics
        // or the access check refuses the result.
        let mut copy = entry.doc.clone();
        let mut state = link.sync.clone();
        let applied = catch_unwind(AssertUnwindSafe(|| {
            copy.receive_sync_message(&mut state, message)
        }));
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.abort_link(conn, &id, format!("could not apply sync message: {e}"), fx);
                return;
            }
            Err(_) => {
                self.abort_link(
                    conn,
                    &id,
                    "could not apply sync message (automerge failed on it)".to_owned(),
                    fx,
                );
                return;
            }
        }
        let after_heads = copy.get_heads();
        let progressed = after_heads != before_heads || state.their_heads != their_heads_before;

        if after_heads != before_heads {
            let creating = entry.state != DocState::Ready;
            if self.config.mode == Mode::Server {
                let who = match self.conns.get(&conn) {
                    Some(c) => c.who.clone(),
                    None => return,
                };
                let before = if creating {
                    Automerge::new()
                } else {
                    entry.doc.clone()
                };
                let verdict = catch_unwind(AssertUnwindSafe(|| {
                    self.access.check_write(&who, &id, &before, &copy)
                }))
                .unwrap_or_else(|_| {
                    Err(Rejection {
                        reasons: vec!["the changes could not be checked".to_owned()],
                    })
                });
                if let Err(rejection) = verdict {
                    let reason = rejection.to_string();
                    self.doc_error(
                        fx,
                        conn,
                        &id,
                        format!("changes refused, nothing was stored: {reason}"),
                    );
                    if let Some(link) = self.conns.get_mut(&conn).and_then(|c| c.links.get_mut(&id))
                    {
                        link.blocked = true;
                    }
                    fx.events.push(Event::Rejected {
                        conn,
                        document_id: id,
                        reason,
                    });
                    if creating {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.links.remove(&id);
                        }
                        self.drop_if_unused_provisional(&id);
                    }
                    return;
                }
            }
            let changes: Vec<Change> = copy.get_changes(&before_heads);
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            self.tickets.insert(ticket, id);
            fx.store.push(StoreRequest {
                ticket,
                document_id: id,
                changes,
                heads: after_heads.clone(),
                created: creating,
                from: Some(conn),
            });
            if let Some(entry) = self.docs.get_mut(&id) {
                entry.doc = copy;
                entry.state = DocState::Ready;
                entry.pending.push(ticket);
            }
        } else if has_changes && let Some(entry) = self.docs.get_mut(&id) {
            // Changes whose dependencies are missing wait in automerge's
            // queue; keep them with the document.
            entry.doc = copy;
        }

        let max_rounds = self.config.max_rounds_without_progress;
        let Some(link) = self.conns.get_mut(&conn).and_then(|c| c.links.get_mut(&id)) else {
            return;
        };
        link.sync = state;
        if progressed {
            link.rounds_without_progress = 0;
        } else {
            link.rounds_without_progress += 1;
            if link.rounds_without_progress > max_rounds {
                self.abort_link(
                    conn,
                    &id,
                    format!("sync did not converge within {max_rounds} rounds"),
                    fx,
                );
                return;
            }
        }
        if link
            .sync
            .their_heads
            .as_ref()
            .is_some_and(|h| !h.is_empty())
        {
            link.requested = false;
        }
        self.sync_out(conn, id, fx);
    }

    fn abort_link(&mut self, conn: ConnId, id: &DocumentId, reason: String, fx: &mut Effects) {
        self.doc_error(fx, conn, id, reason.clone());
        if let Some(link) = self.conns.get_mut(&conn).and_then(|c| c.links.get_mut(id)) {
            link.blocked = true;
        }
        fx.events.push(Event::SyncAborted {
            conn,
            document_id: *id,
            reason,
        });
    }

    /// Generates and sends the next sync message for `id` on `conn`, unless
    /// a store for `id` is still pending.
    fn sync_out(&mut self, conn: ConnId, id: DocumentId, fx: &mut Effects) {
        let Some(entry) = self.docs.get(&id) else {
            return;
        };
        if !entry.pending.is_empty() || entry.state == DocState::Loading {
            if let Some(link) = self.conns.get_mut(&conn).and_then(|c| c.links.get_mut(&id)) {
                link.owed = true;
            }
            return;
        }
        let our_peer = self.config.peer_id.clone();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Handshake::Ready { remote } = &c.handshake else {
            return;
        };
        let remote = remote.clone();
        let Some(link) = c.links.get_mut(&id) else {
            return;
        };
        if link.blocked {
            return;
        }
        if std::mem::take(&mut link.owed) {
            link.sync.have_responded = false;
            link.sync.in_flight = false;
        }
        let doc = &entry.doc;
        let generated = catch_unwind(AssertUnwindSafe(|| {
            doc.generate_sync_message(&mut link.sync)
        }));
        let message = match generated {
            Ok(m) => m,
            Err(_) => {
                self.abort_link(
                    conn,
                    &id,
                    "could not generate a sync message".to_owned(),
                    fx,
                );
                return;
            }
        };
        let Some(message) = message else {
            return;
        };
        let data = message.encode();
        let msg = if link.requested && doc.get_heads().is_empty() {
            Message::Request {
                sender_id: our_peer,
                target_id: remote,
                document_id: id,
                data,
            }
        } else {
            Message::Sync {
                sender_id: our_peer,
                target_id: remote,
                document_id: id,
                data,
            }
        };
        self.send(fx, conn, &msg);
    }

    /// Sends whatever each exchange about `id` has to send.
    fn sync_all(&mut self, id: DocumentId, fx: &mut Effects) {
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.links.contains_key(&id))
            .map(|(k, _)| *k)
            .collect();
        for conn in conns {
            self.sync_out(conn, id, fx);
        }
    }

    // ----- storage results ------------------------------------------------

    /// The driver made a [`StoreRequest`] durable.
    pub fn committed(&mut self, ticket: u64, _now: Millis) -> Effects {
        let mut fx = Effects::default();
        let Some(id) = self.tickets.remove(&ticket) else {
            return fx;
        };
        let Some(entry) = self.docs.get_mut(&id) else {
            return fx;
        };
        entry.pending.retain(|t| *t != ticket);
        if entry.pending.is_empty() {
            fx.events.push(Event::DocumentChanged { document_id: id });
            if self.config.mode == Mode::Client {
                // New local documents are announced once stored.
                let conns: Vec<ConnId> = self.conns.keys().copied().collect();
                for conn in conns {
                    let linked = self
                        .conns
                        .get(&conn)
                        .is_some_and(|c| c.links.contains_key(&id));
                    if !linked {
                        self.announce(conn, id, _now, &mut fx);
                    }
                }
            }
            self.sync_all(id, &mut fx);
        }
        fx
    }

    /// The driver could not store a [`StoreRequest`]: the document is
    /// dropped from memory (it reloads from storage on next use) and every
    /// exchange about it is told and restarted on reconnect.
    pub fn store_failed(&mut self, ticket: u64, reason: &str) -> Effects {
        let mut fx = Effects::default();
        let Some(id) = self.tickets.remove(&ticket) else {
            return fx;
        };
        self.docs.remove(&id);
        self.tickets.retain(|_, d| *d != id);
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.links.contains_key(&id))
            .map(|(k, _)| *k)
            .collect();
        for conn in conns {
            self.doc_error(
                &mut fx,
                conn,
                &id,
                format!("could not store changes ({reason}); nothing was confirmed, sync again"),
            );
            if let Some(c) = self.conns.get_mut(&conn) {
                c.links.remove(&id);
            }
        }
        fx
    }

    // ----- local documents (client side, or server-side writes) ----------

    /// Adds a new local document; it is stored, then announced (client).
    /// Replaces nothing: an id already held is merged into.
    pub fn insert_document(&mut self, id: DocumentId, mut doc: Automerge, now: Millis) -> Effects {
        let mut fx = Effects::default();
        let (before_heads, changes, merged) = match self.docs.get_mut(&id) {
            Some(entry) if entry.state == DocState::Ready || entry.state == DocState::Wanted => {
                let before = entry.doc.get_heads();
                if let Err(e) = entry.doc.merge(&mut doc) {
                    fx.events.push(Event::SyncAborted {
                        conn: 0,
                        document_id: id,
                        reason: format!("could not merge local document: {e}"),
                    });
                    return fx;
                }
                entry.state = DocState::Ready;
                let changes = entry.doc.get_changes(&before);
                (before, changes, true)
            }
            _ => {
                let changes = doc.get_changes(&[]);
                self.docs.insert(id, DocEntry::new(doc, DocState::Ready));
                (Vec::new(), changes, false)
            }
        };
        let _ = merged;
        self.queue_store(id, changes, before_heads.is_empty(), now, &mut fx);
        fx
    }

    /// Adds a document that is already stored (loaded at start-up): nothing
    /// is stored again. Client: it is announced to connected peers.
    pub fn add_stored(&mut self, id: DocumentId, doc: Automerge, now: Millis) -> Effects {
        let mut fx = Effects::default();
        if self.docs.contains_key(&id) {
            return fx;
        }
        self.docs.insert(id, DocEntry::new(doc, DocState::Ready));
        if self.config.mode == Mode::Client {
            let conns: Vec<ConnId> = self.conns.keys().copied().collect();
            for conn in conns {
                self.announce(conn, id, now, &mut fx);
            }
        }
        fx
    }

    /// Client: ask connected (and future) peers for a document we do not hold.
    pub fn want(&mut self, id: DocumentId, now: Millis) -> Effects {
        let mut fx = Effects::default();
        if self.docs.contains_key(&id) {
            return fx;
        }
        self.docs
            .insert(id, DocEntry::new(Automerge::new(), DocState::Wanted));
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.announce(conn, id, now, &mut fx);
        }
        fx
    }

    /// Edits a held document locally. The new changes are stored, then
    /// synced to every peer that has the document open.
    pub fn update<R, E>(
        &mut self,
        id: &DocumentId,
        now: Millis,
        f: impl FnOnce(&mut Automerge) -> Result<R, E>,
    ) -> Result<(R, Effects), UpdateError<E>> {
        let entry = self
            .docs
            .get_mut(id)
            .filter(|e| e.state == DocState::Ready)
            .ok_or(UpdateError::NotHeld(*id))?;
        let before = entry.doc.get_heads();
        let mut work = entry.doc.clone();
        if let Some(actor) = &self.config.actor {
            work.set_actor(actor.clone());
        }
        let r = f(&mut work).map_err(UpdateError::Edit)?;
        let changes = work.get_changes(&before);
        entry.doc = work;
        let mut fx = Effects::default();
        self.queue_store(*id, changes, false, now, &mut fx);
        Ok((r, fx))
    }

    fn queue_store(
        &mut self,
        id: DocumentId,
        changes: Vec<Change>,
        created: bool,
        _now: Millis,
        fx: &mut Effects,
    ) {
        if changes.is_empty() {
            return;
        }
        let Some(entry) = self.docs.get_mut(&id) else {
            return;
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.tickets.insert(ticket, id);
        entry.pending.push(ticket);
        fx.store.push(StoreRequest {
            ticket,
            document_id: id,
            changes,
            heads: entry.doc.get_heads(),
            created,
            from: None,
        });
    }

    // ----- time -------------------------------------------------------------

    /// Periodic housekeeping: closes connections stuck in the handshake and
    /// restarts exchanges that have waited too long for an answer (a lost
    /// message would otherwise stall them until reconnect).
    pub fn tick(&mut self, now: Millis) -> Effects {
        let mut fx = Effects::default();
        let stuck: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(
                    c.handshake,
                    Handshake::AwaitingJoin | Handshake::AwaitingPeer
                ) && now.saturating_sub(c.opened_at) > self.config.handshake_timeout_ms
            })
            .map(|(k, _)| *k)
            .collect();
        for conn in stuck {
            self.fail(&mut fx, conn, "handshake timed out".to_owned());
        }
        let mut restart = Vec::new();
        for (conn, c) in &self.conns {
            if !matches!(c.handshake, Handshake::Ready { .. }) {
                continue;
            }
            for (id, link) in &c.links {
                let Some(entry) = self.docs.get(id) else {
                    continue;
                };
                // Equal heads are settled even with a message "in flight":
                // a bare acknowledgement gets no answer.
                let converged =
                    link.sync.their_heads.as_deref() == Some(&entry.doc.get_heads()[..]);
                if !link.blocked
                    && !converged
                    && entry.pending.is_empty()
                    && now.saturating_sub(link.last_heard) > self.config.resend_after_ms
                {
                    restart.push((*conn, *id));
                }
            }
        }
        for (conn, id) in restart {
            if let Some(link) = self.conns.get_mut(&conn).and_then(|c| c.links.get_mut(&id)) {
                link.sync = sync::State::new();
                link.last_heard = now;
                link.rounds_without_progress = 0;
            }
            self.sync_out(conn, id, &mut fx);
        }
        fx
    }
}

/// Why [`Hub::update`] did nothing.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    #[error("document {0} is not held here (not loaded or not received yet)")]
    NotHeld(DocumentId),
    #[error("the edit failed: {0}")]
    Edit(E),
}
