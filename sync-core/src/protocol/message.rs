//! The automerge-repo wire messages, protocol version "1", and their CBOR codec.
//!
//! Every message is one CBOR map with a `type` key. Field names and shapes
//! follow `@automerge/automerge-repo-network-websocket` 2.5.6 (its README and
//! `messages.ts`): peer ids, storage ids, session ids and document ids are
//! text strings; `data` is a plain CBOR byte string; `count` and `timestamp`
//! are unsigned integers.

use std::collections::BTreeMap;

use crate::ids::DocumentId;

/// The only protocol version there is.
pub const PROTOCOL_V1: &str = "1";

/// A peer id as announced in `join`/`peer` (free-form text, bounded).
pub type PeerId = String;
/// A storage id (free-form text, bounded).
pub type StorageId = String;

/// `peerMetadata` in `join` and `peer`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerMetadata {
    pub storage_id: Option<StorageId>,
    pub is_ephemeral: bool,
}

/// Heads advertised for one storage id in `remote-heads-changed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteHeads {
    /// bs58check-encoded change hashes, as automerge-repo sends them.
    pub heads: Vec<String>,
    /// Milliseconds since the Unix epoch on the node that first sent them.
    pub timestamp: u64,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Join {
        sender_id: PeerId,
        supported_protocol_versions: Vec<String>,
        peer_metadata: Option<PeerMetadata>,
    },
    Peer {
        sender_id: PeerId,
        target_id: PeerId,
        selected_protocol_version: String,
        peer_metadata: Option<PeerMetadata>,
    },
    Leave {
        sender_id: PeerId,
    },
    Error {
        /// The JS adapters always send these two; the spec makes them optional.
        sender_id: Option<PeerId>,
        target_id: Option<PeerId>,
        message: String,
    },
    Request {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
        data: Vec<u8>,
    },
    Sync {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
        data: Vec<u8>,
    },
    DocUnavailable {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
    },
    Ephemeral {
        sender_id: PeerId,
        target_id: PeerId,
        count: u64,
        session_id: String,
        document_id: DocumentId,
        data: Vec<u8>,
    },
    RemoteSubscriptionChange {
        sender_id: PeerId,
        target_id: PeerId,
        add: Vec<StorageId>,
        remove: Vec<StorageId>,
    },
    RemoteHeadsChanged {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
        new_heads: BTreeMap<StorageId, RemoteHeads>,
    },
}

impl Message {
    /// The `type` string on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Join { .. } => "join",
            Message::Peer { .. } => "peer",
            Message::Leave { .. } => "leave",
            Message::Error { .. } => "error",
            Message::Request { .. } => "request",
            Message::Sync { .. } => "sync",
            Message::DocUnavailable { .. } => "doc-unavailable",
            Message::Ephemeral { .. } => "ephemeral",
            Message::RemoteSubscriptionChange { .. } => "remote-subscription-change",
            Message::RemoteHeadsChanged { .. } => "remote-heads-changed",
        }
    }

    /// The document a message is about, if any.
    pub fn document_id(&self) -> Option<&DocumentId> {
        match self {
            Message::Request { document_id, .. }
            | Message::Sync { document_id, .. }
            | Message::DocUnavailable { document_id, .. }
            | Message::Ephemeral { document_id, .. }
            | Message::RemoteHeadsChanged { document_id, .. } => Some(document_id),
            _ => None,
        }
    }
}

/// Limits applied while decoding. Every frame from the network is checked
/// against these before anything is allocated for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded message accepted.
    pub max_message_bytes: usize,
    /// Longest peer, storage or session id.
    pub max_id_len: usize,
    /// Longest `error` message text.
    pub max_text_len: usize,
    /// Most entries in any array or map (protocol versions, storage ids, heads).
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024 * 1024,
            max_id_len: 256,
            max_text_len: 4096,
            max_entries: 1024,
        }
    }
}
