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

/// What an `error` about one document says, in fields a program can act on.
///
/// On the wire these are extra keys of the `error` map, after the standard
/// ones: `documentId` (bs58check), `code` (see [`ErrorCode`]), `refused`
/// (hex hashes of refused changes, at most [`ErrorDetail::MAX_REFUSED`]),
/// `refusedCount` (how many were refused in all), `violations` (at most
/// [`ErrorDetail::MAX_VIOLATIONS`] maps `{change, path, rule, role,
/// reason}`) and `violationCount`. Every string is bounded (paths
/// [`ErrorDetail::MAX_PATH`], reasons [`ErrorDetail::MAX_REASON`] bytes) so an
/// encoded error stays under [`ErrorDetail::MAX_ENCODED`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorDetail {
    pub document_id: Option<DocumentId>,
    pub code: Option<String>,
    pub refused: Vec<String>,
    pub refused_count: u64,
    pub violations: Vec<WireViolation>,
    pub violation_count: u64,
}

impl ErrorDetail {
    /// Refused change hashes listed in one error.
    pub const MAX_REFUSED: usize = 64;
    /// Violations listed in one error.
    pub const MAX_VIOLATIONS: usize = 8;
    /// Longest path in a listed violation, in bytes.
    pub const MAX_PATH: usize = 200;
    /// Longest reason in a listed violation, in bytes.
    pub const MAX_REASON: usize = 300;
    /// Longest human-readable `message` the server sends, in bytes.
    pub const MAX_MESSAGE: usize = 1000;
    /// Upper bound of an encoded `error` the server sends.
    pub const MAX_ENCODED: usize = 12 * 1024;
}

/// Stable values of [`ErrorDetail::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Some changes broke a rule; they and the changes that depend on them
    /// were not stored, every other change of the message was.
    Refused,
    /// The server could not store or load the document right now; nothing
    /// of the message was confirmed. Sync again later.
    RetryLater,
    /// The exchange about this document was cut (malformed or
    /// non-converging sync); reconnect to start afresh.
    Aborted,
    /// A limit was reached (too many documents open, too many changes
    /// waiting for their dependencies, …).
    Limit,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 4] = [
        ErrorCode::Refused,
        ErrorCode::RetryLater,
        ErrorCode::Aborted,
        ErrorCode::Limit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Refused => "refused",
            ErrorCode::RetryLater => "retry-later",
            ErrorCode::Aborted => "aborted",
            ErrorCode::Limit => "limit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// One violation as listed in an `error`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WireViolation {
    /// Hex hash of the change.
    pub change: String,
    pub path: String,
    /// A stable rule code (`owner`, `author`, `actor`, …; see `docs/SYNC.md`).
    pub rule: String,
    pub role: String,
    pub reason: String,
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub fn truncate_to(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
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
        /// kiemtra's structured part of an error about one document (extra
        /// keys of the same map, which automerge-repo passes through and
        /// otherwise ignores). See [`ErrorDetail`].
        detail: Option<Box<ErrorDetail>>,
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
