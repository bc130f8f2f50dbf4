//! The automerge-repo wire protocol, version "1", sans-IO.

pub mod codec;
pub mod hub;
pub mod intake;
pub mod message;

pub use codec::{DecodeError, decode, encode};
pub use message::{
    ErrorCode, ErrorDetail, Limits, Message, PROTOCOL_V1, PeerMetadata, RemoteHeads, WireViolation,
};
