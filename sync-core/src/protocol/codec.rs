//! CBOR encoding and decoding of [`Message`](super::Message).

use super::message::{Limits, Message};

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is empty")]
    Empty,
}

/// Encodes one message as a CBOR map.
pub fn encode(_msg: &Message) -> Vec<u8> {
    Vec::new()
}

/// Decodes one frame.
pub fn decode(_bytes: &[u8], _limits: &Limits) -> Result<Message, DecodeError> {
    Err(DecodeError::Empty)
}
