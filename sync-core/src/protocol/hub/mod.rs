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
//! // The server creates a document (the API does this for a real server).
//! let id = DocumentId::from_bytes([1; 16]);
//! let mut doc = automerge::Automerge::new();
//! doc.transact(|tx| tx.put(ROOT, "title", "Ba Đình")).unwrap();
//! let mut fx = server.insert_document(id, doc, 0);
//! for s in std::mem::take(&mut fx.store) {
//!     server.committed(s.ticket, 0); // the server's store wrote it
//! }
//!
//! // Connection 1 on both sides; the client speaks first (join) and asks
//! // for the document.
//! let mut to_server = client.connect(1, (), 0).outgoing;
//! server.connect(1, (), 0);
//! let mut to_client = Vec::new();
//! let mut asked = false;
//! let mut edited = false;
//! while !to_server.is_empty() || !to_client.is_empty() || !asked || !edited {
//!     for frame in std::mem::take(&mut to_server) {
//!         let mut fx = server.receive(1, &frame.bytes, 0);
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
//!     if !asked && client.is_ready(1) {
//!         asked = true;
//!         to_server.extend(client.want(id, 0).outgoing);
//!     } else if asked && !edited && client.document(&id).is_some() {
//!         // The tablet edits its copy; the change goes to the server.
//!         edited = true;
//!         let ((), mut fx) = client
//!             .update(&id, 0, |d| d.transact(|tx| tx.put(ROOT, "visited", true)).map(|_| ()))
//!             .unwrap();
//!         for s in std::mem::take(&mut fx.store) {
//!             fx.merge(client.committed(s.ticket, 0));
//!         }
//!         to_server.extend(fx.outgoing);
//!     }
//! }
//! let copy = server.document(&id).unwrap();
//! assert_eq!(copy.get(ROOT, "visited").unwrap().unwrap().0.to_bool(), Some(true));
//! assert_eq!(client.document(&id).unwrap().get_heads(), copy.get_heads());
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, Automerge, Change, ChangeHash};

use super::codec;
use super::message::{
    ErrorCode, ErrorDetail, Limits, Message, PROTOCOL_V1, PeerMetadata, WireViolation, truncate_to,
};
use crate::ids::DocumentId;
use crate::policy::{ChangeCheck, Role, Violation};

mod conn;
mod exchange;
mod local;

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
    /// Changes held per document and connection while their dependencies
    /// have not arrived (server; never stored, never relayed).
    pub max_waiting_changes_per_document: usize,
    /// Bytes of such changes held per connection, all documents together.
    pub max_waiting_bytes_per_connection: usize,
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
            max_waiting_changes_per_document: 256,
            max_waiting_bytes_per_connection: 16 * 1024 * 1024,
            actor: None,
        }
    }
}

/// Changes of one message that were refused, and why. The rest of the
/// message was kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Every refused change, in the order they were judged.
    pub refused: Vec<ChangeHash>,
    /// Why (see [`Violation`]); changes refused for depending on a refused
    /// change carry a `depends` violation.
    pub violations: Vec<Violation>,
    /// Changes of the same message that were accepted.
    pub accepted: usize,
}

impl Refusal {
    /// The human-readable summary for the `error` message (bounded).
    pub fn summary(&self) -> String {
        let first = self
            .violations
            .iter()
            .find(|v| v.rule != crate::policy::Rule::Depends)
            .or(self.violations.first());
        let mut text = format!(
            "{} change(s) refused, {} kept",
            self.refused.len(),
            self.accepted
        );
        if let Some(v) = first {
            text.push_str(&format!(
                ": {} may not write {}: {}",
                v.role, v.path, v.reason
            ));
            if self.violations.len() > 1 {
                text.push_str(&format!(" (and {} more)", self.violations.len() - 1));
            }
        }
        truncate_to(&text, ErrorDetail::MAX_MESSAGE)
    }

    /// The structured part of the `error` message (bounded).
    pub fn detail(&self, id: DocumentId) -> ErrorDetail {
        ErrorDetail {
            document_id: Some(id),
            code: Some(ErrorCode::Refused.as_str().to_owned()),
            refused: self
                .refused
                .iter()
                .take(ErrorDetail::MAX_REFUSED)
                .map(|h| h.to_string())
                .collect(),
            refused_count: self.refused.len() as u64,
            violations: self
                .violations
                .iter()
                .take(ErrorDetail::MAX_VIOLATIONS)
                .map(|v| WireViolation {
                    change: v.change.to_string(),
                    path: truncate_to(&v.path, ErrorDetail::MAX_PATH),
                    rule: v.rule.as_str().to_owned(),
                    role: v.role.as_str().to_owned(),
                    reason: truncate_to(&v.reason, ErrorDetail::MAX_REASON),
                })
                .collect(),
            violation_count: self.violations.len() as u64,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

/// Access decisions, supplied by the driver. The hub asks; it never decides.
pub trait Access {
    /// Who is at the other end of a connection (user, role, scope).
    type Identity: Clone + fmt::Debug;

    /// May this peer read `doc`? Called with the document's current content,
    /// whenever a message about it arrives or leaves.
    fn may_read(&self, who: &Self::Identity, id: &DocumentId, doc: &Automerge) -> bool;

    /// The role `who` writes with (named in refusals).
    fn role_of(&self, who: &Self::Identity) -> Role;

    /// Judges one incoming change before it is applied: `doc` holds the
    /// change's dependencies (and earlier accepted changes of the same
    /// message), not the change. Field ownership, authorship, actors.
    fn check_change(
        &self,
        who: &Self::Identity,
        id: &DocumentId,
        doc: &Automerge,
        change: &Change,
    ) -> Result<ChangeCheck, Vec<Violation>>;

    /// Judges the document once `accepted` are applied (schema, template):
    /// the problems these changes caused, each naming a change.
    fn check_result(
        &self,
        who: &Self::Identity,
        id: &DocumentId,
        after: &Automerge,
        accepted: &[(Change, ChangeCheck)],
    ) -> Vec<Violation>;

    /// A change from `who` was accepted and is about to be stored.
    fn accepted(&mut self, who: &Self::Identity, change: &Change) {
        let _ = (who, change);
    }
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
    fn role_of(&self, _: &()) -> Role {
        Role::Server
    }
    fn check_change(
        &self,
        _: &(),
        _: &DocumentId,
        _: &Automerge,
        _: &Change,
    ) -> Result<ChangeCheck, Vec<Violation>> {
        Ok(ChangeCheck::default())
    }
    fn check_result(
        &self,
        _: &(),
        _: &DocumentId,
        _: &Automerge,
        _: &[(Change, ChangeCheck)],
    ) -> Vec<Violation> {
        Vec::new()
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
    /// Server: changes of a message were refused (the others were kept).
    /// The peer was told with a structured `error`; further changes about
    /// this document on this connection are ignored until it reconnects.
    Rejected {
        conn: ConnId,
        document_id: DocumentId,
        refusal: Refusal,
    },
    /// Client: the remote refused some of our changes of a document. Its
    /// heads as of the refusal are in [`Hub::peer_state`]; we send it no
    /// more changes of that document on this connection.
    Refused {
        conn: ConnId,
        document_id: DocumentId,
        detail: ErrorDetail,
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
    /// The peer sent an `error` message (with its structured part, if any).
    PeerError {
        conn: ConnId,
        message: String,
        detail: Option<ErrorDetail>,
    },
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
    /// Server: a document could not be loaded from storage; the peers that
    /// asked were told to retry later.
    LoadFailed {
        document_id: DocumentId,
        reason: String,
    },
}

/// Where one peer stands on one document, as this hub sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDocState {
    /// The heads the peer last announced (None before it said anything).
    pub their_heads: Option<Vec<ChangeHash>>,
    /// Our heads.
    pub our_heads: Vec<ChangeHash>,
    /// Nothing of ours waits to be stored, and both sides are at the same heads.
    pub in_sync: bool,
    /// Server: we refused changes of this peer; client: the peer refused ours.
    pub refused: bool,
    /// The exchange was cut (see [`Event::SyncAborted`]).
    pub aborted: bool,
    /// Server: changes held while their dependencies have not arrived.
    pub waiting: usize,
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
    /// The exchange broke (malformed, non-converging): ignore until reconnect.
    blocked: bool,
    /// Server: we refused this peer's changes; its further messages about
    /// the document are ignored (our updates still go out). Client: the
    /// peer refused ours; we send it no more changes.
    refused: bool,
    /// Client: we asked with `request` and have nothing yet.
    requested: bool,
    /// A reply was held back while a store was pending: once it commits,
    /// a message goes out even if automerge thinks the peer is up to date
    /// (the peer may have told us our uncommitted heads meanwhile, but it
    /// still waits for the heads that confirm its changes are stored).
    owed: bool,
    /// Server: an `error` to send right after the next sync message (a
    /// refusal goes out once what was kept of the same message is stored,
    /// so the heads before it tell the peer exactly what was kept).
    notice: Option<Message>,
    /// Server: changes whose dependencies have not arrived (never applied,
    /// stored or relayed; judged as this peer's when they can be).
    waiting: Vec<Change>,
    /// Server: the heads the peer itself last announced. While changes
    /// wait, `sync.their_heads` is rewritten to point automerge at their
    /// missing dependencies; progress is measured on what the peer said.
    announced: Option<Vec<ChangeHash>>,
}

impl Link {
    fn new(now: Millis) -> Self {
        Self {
            sync: sync::State::new(),
            rounds_without_progress: 0,
            last_heard: now,
            blocked: false,
            refused: false,
            requested: false,
            owed: false,
            notice: None,
            waiting: Vec::new(),
            announced: None,
        }
    }

    fn waiting_bytes(&self) -> usize {
        self.waiting.iter().map(|c| c.raw_bytes().len()).sum()
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

    /// The connections that have an exchange about `id` open.
    fn linked_conns(&self, id: &DocumentId) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.links.contains_key(id))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Where the peer on `conn` stands on document `id` (None if that
    /// exchange is not open).
    pub fn peer_state(&self, conn: ConnId, id: &DocumentId) -> Option<PeerDocState> {
        let link = self.conns.get(&conn)?.links.get(id)?;
        let entry = self.docs.get(id);
        let our_heads = entry.map(|e| e.doc.get_heads()).unwrap_or_default();
        let pending = entry.is_none_or(|e| !e.pending.is_empty());
        Some(PeerDocState {
            in_sync: !pending && link.sync.their_heads.as_deref() == Some(&our_heads[..]),
            their_heads: link.sync.their_heads.clone(),
            our_heads,
            refused: link.refused,
            aborted: link.blocked,
            waiting: link.waiting.len(),
        })
    }

    /// Whether every open exchange on `conn` is settled: nothing waiting to
    /// be stored and both sides at the same heads, for every document linked.
    pub fn is_synced(&self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        c.links.iter().all(|(id, link)| {
            if link.blocked || link.refused {
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
}

/// Why [`Hub::update`] did nothing.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    #[error("document {0} is not held here (not loaded or not received yet)")]
    NotHeld(DocumentId),
    #[error("the edit failed: {0}")]
    Edit(E),
}
