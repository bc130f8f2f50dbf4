//! CBOR encoding and decoding of [`Message`](super::Message), wire protocol "1".
//!
//! # Encoding
//!
//! [`encode`] writes one definite-length CBOR map per message, byte for byte
//! the way `@automerge/automerge-repo` 2.5.6 does through cbor-x
//! (`new Encoder({ tagUint8Array: false, useRecords: false })`), so a JS peer
//! and this crate produce identical frames for identical messages:
//!
//! - Keys are text, `type` first, then in the order the JS code builds the
//!   object (see [`encode`] for the per-type order).
//! - Map headers always use the two-byte length form (`0xb9 nn nn`), which is
//!   what cbor-x writes for plain JS objects. It is valid, if not the
//!   shortest, CBOR.
//! - `data` is a plain byte string (no typed-array tag).
//! - `count` and `timestamp` are unsigned integers up to `u32::MAX`; above
//!   that, up to 2^53, they are written as float64, as cbor-x does for JS
//!   numbers. This matters: cbor-x decodes a 64-bit CBOR integer to a JS
//!   `BigInt`, which automerge-repo cannot mix with its `number` timestamps.
//!   Larger values (not representable as a JS number) are written as `u64`.
//! - Absent optional fields are left out (never written as `null`).
//!
//! # Decoding
//!
//! [`decode`] treats every frame as hostile:
//!
//! - the frame size is checked against [`Limits::max_message_bytes`] before
//!   anything else;
//! - the frame must be exactly one CBOR map (no trailing bytes);
//! - the whole map is walked once to check it is well-formed; unknown keys
//!   are skipped (newer peers may add fields), but nesting deeper than
//!   [`MAX_DEPTH`] is refused and the walk is bounded by the input, never by
//!   a declared length;
//! - known keys may appear in any order, at most once; `null`/`undefined`
//!   (which cbor-x writes for JS `undefined` properties) count as absent;
//! - every id, text, array and map is checked against [`Limits`]; maps with
//!   a fixed set of keys (the message, `peerMetadata`, a `newHeads` value)
//!   hold at most [`MAX_OBJECT_KEYS`] entries;
//! - `count`/`timestamp` accept unsigned integers and non-negative integral
//!   floats; `data` accepts a byte string, optionally wrapped in tag 64 (a
//!   JS `Uint8Array` as some cbor-x configurations write it);
//! - `join`/`peer` accept `peerMetadata` (what the JS code sends) and
//!   `metadata` (what the README says); a missing `isEphemeral` is `false`,
//!   as in automerge-repo; a `join` without `supportedProtocolVersions` gives
//!   an empty list (the receiver decides what that means).
//!
//! Nothing is allocated from a declared length: byte and text strings are
//! only copied after minicbor has found all their bytes in the frame, and
//! array capacity is capped by the bytes left.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::convert::Infallible;

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use super::message::{ErrorDetail, Limits, Message, PeerMetadata, RemoteHeads, WireViolation};
use crate::ids::{DocumentId, IdError};

/// Deepest nesting of CBOR arrays/maps accepted anywhere in a frame (the
/// message map itself is level 1). Real messages need 4 (`newHeads`).
pub const MAX_DEPTH: usize = 16;

/// Most entries in a map with a fixed set of keys (the message itself,
/// `peerMetadata`, a `newHeads` value). Real ones have at most 7; the rest
/// of the room is for fields added by newer peers.
pub const MAX_OBJECT_KEYS: usize = 64;

/// Largest integer a JS number holds exactly (2^53); up to here cbor-x
/// writes integers above `u32::MAX` as float64.
const MAX_SAFE_FLOAT_INT: u64 = 1 << 53;

/// Why a frame could not be decoded. Each variant says what is wrong; the
/// peer that sent the frame is at fault, so the usual action is to answer
/// with an `error` message and close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is empty; every message is one CBOR map")]
    Empty,
    #[error(
        "frame is {len} bytes, over the limit of {max}; send smaller messages or raise Limits::max_message_bytes"
    )]
    TooLarge { len: usize, max: usize },
    #[error("frame ends in the middle of a CBOR item; the message was cut short")]
    Truncated,
    #[error("frame is not well-formed CBOR: {0}")]
    Malformed(String),
    #[error("{count} byte(s) follow the message map; a frame must hold exactly one CBOR map")]
    TrailingBytes { count: usize },
    #[error("frame is a CBOR {found}, not a map; every message is one CBOR map")]
    NotAMap { found: String },
    #[error("CBOR nesting is deeper than {max} levels; refusing to walk it")]
    TooDeep { max: usize },
    #[error("message has no `type` key; every automerge-repo message names its type")]
    MissingType,
    #[error("`{message_type}` message lacks the required field `{field}`")]
    MissingField {
        message_type: &'static str,
        field: &'static str,
    },
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error(
        "unknown message type {0:?}; protocol \"1\" knows join, peer, leave, error, request, sync, doc-unavailable, ephemeral, remote-subscription-change and remote-heads-changed"
    )]
    UnknownType(String),
    #[error("field `{field}` is {len} bytes long, over the limit of {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("field `{field}` has more than {max} entries")]
    TooManyEntries { field: &'static str, max: usize },
    #[error("key {0:?} appears more than once in the same map")]
    DuplicateKey(String),
    #[error("field `{field}` is not a valid document id: {error}")]
    BadDocumentId { field: &'static str, error: IdError },
}

/// Turns a minicbor error into ours. Running out of input is the one case
/// worth telling apart: it means the frame was cut short.
fn cbor_error(e: minicbor::decode::Error) -> DecodeError {
    if e.is_end_of_input() {
        DecodeError::Truncated
    } else {
        DecodeError::Malformed(e.to_string())
    }
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// What minicbor reports when writing into a `Vec` (which cannot fail).
type EncResult = Result<(), minicbor::encode::Error<Infallible>>;
type Enc = Encoder<Vec<u8>>;

/// Encodes one message as a CBOR map, byte-identical to automerge-repo's
/// cbor-x output for the same JS object.
///
/// Key order per type (the order in which the JS code builds the object;
/// `senderId` comes last where the JS `NetworkSubsystem` adds it):
///
/// | type | keys |
/// |---|---|
/// | `join` | type, senderId, peerMetadata?, supportedProtocolVersions |
/// | `peer` | type, senderId, peerMetadata?, selectedProtocolVersion, targetId |
/// | `leave` | type, senderId |
/// | `error` | type, senderId?, message, targetId? |
/// | `request` | type, targetId, documentId, data, senderId |
/// | `sync` | type, targetId, data, documentId, senderId |
/// | `doc-unavailable` | type, documentId, targetId, senderId |
/// | `ephemeral` | type, targetId, documentId, data, count, sessionId, senderId |
/// | `remote-subscription-change` | type, targetId, add, remove, senderId |
/// | `remote-heads-changed` | type, targetId, documentId, newHeads, senderId |
///
/// `peerMetadata` is `{storageId?, isEphemeral}`; each `newHeads` value is
/// `{heads, timestamp}`.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut enc = Encoder::new(Vec::new());
    // Writing into a Vec is infallible and only primitive items are written,
    // so this result can never be an error; there is nothing to report.
    let _infallible: EncResult = write_message(&mut enc, msg);
    enc.into_writer()
}

/// How many keys an [`ErrorDetail`] adds to its `error` map.
fn detail_len(d: &ErrorDetail) -> usize {
    usize::from(d.document_id.is_some()) + usize::from(d.code.is_some()) + 4
}

/// The structured keys of an `error`, after the standard ones.
fn write_detail(enc: &mut Enc, d: &ErrorDetail) -> EncResult {
    if let Some(id) = &d.document_id {
        text_entry(enc, "documentId", &id.encode())?;
    }
    if let Some(code) = &d.code {
        text_entry(enc, "code", code)?;
    }
    enc.str("refused")?;
    enc.array(d.refused.len() as u64)?;
    for h in &d.refused {
        enc.str(h)?;
    }
    enc.str("refusedCount")?;
    enc.u64(d.refused_count)?;
    enc.str("violations")?;
    enc.array(d.violations.len() as u64)?;
    for v in &d.violations {
        map_header(enc, 5)?;
        text_entry(enc, "change", &v.change)?;
        text_entry(enc, "path", &v.path)?;
        text_entry(enc, "rule", &v.rule)?;
        text_entry(enc, "role", &v.role)?;
        text_entry(enc, "reason", &v.reason)?;
    }
    enc.str("violationCount")?;
    enc.u64(d.violation_count)?;
    Ok(())
}

/// A map header as cbor-x writes it for JS objects: always the 16-bit
/// length form, falling back to the shortest form past 65535 entries.
fn map_header(enc: &mut Enc, len: usize) -> EncResult {
    match u16::try_from(len) {
        Ok(n) => {
            let [hi, lo] = n.to_be_bytes();
            enc.writer_mut().extend_from_slice(&[0xb9, hi, lo]);
            Ok(())
        }
        Err(_) => enc.map(len as u64).map(|_| ()),
    }
}

/// A JS-number-compatible unsigned integer (see the module docs).
fn js_uint(enc: &mut Enc, n: u64) -> EncResult {
    if n <= u64::from(u32::MAX) || n > MAX_SAFE_FLOAT_INT {
        enc.u64(n)?;
    } else {
        // Exact: every integer up to 2^53 is representable as f64.
        enc.f64(n as f64)?;
    }
    Ok(())
}

fn text_entry(enc: &mut Enc, key: &str, value: &str) -> EncResult {
    enc.str(key)?.str(value)?;
    Ok(())
}

fn str_array(enc: &mut Enc, items: &[String]) -> EncResult {
    enc.array(items.len() as u64)?;
    for item in items {
        enc.str(item)?;
    }
    Ok(())
}

fn peer_metadata(enc: &mut Enc, meta: &PeerMetadata) -> EncResult {
    map_header(enc, 1 + usize::from(meta.storage_id.is_some()))?;
    if let Some(storage_id) = &meta.storage_id {
        text_entry(enc, "storageId", storage_id)?;
    }
    enc.str("isEphemeral")?.bool(meta.is_ephemeral)?;
    Ok(())
}

fn write_message(enc: &mut Enc, msg: &Message) -> EncResult {
    let ty = msg.type_name();
    match msg {
        Message::Join {
            sender_id,
            supported_protocol_versions,
            peer_metadata: meta,
        } => {
            map_header(enc, 3 + usize::from(meta.is_some()))?;
            text_entry(enc, "type", ty)?;
            text_entry(enc, "senderId", sender_id)?;
            if let Some(meta) = meta {
                enc.str("peerMetadata")?;
                peer_metadata(enc, meta)?;
            }
            enc.str("supportedProtocolVersions")?;
            str_array(enc, supported_protocol_versions)?;
        }
        Message::Peer {
            sender_id,
            target_id,
            selected_protocol_version,
            peer_metadata: meta,
        } => {
            map_header(enc, 4 + usize::from(meta.is_some()))?;
            text_entry(enc, "type", ty)?;
            text_entry(enc, "senderId", sender_id)?;
            if let Some(meta) = meta {
                enc.str("peerMetadata")?;
                peer_metadata(enc, meta)?;
            }
            text_entry(enc, "selectedProtocolVersion", selected_protocol_version)?;
            text_entry(enc, "targetId", target_id)?;
        }
        Message::Leave { sender_id } => {
            map_header(enc, 2)?;
            text_entry(enc, "type", ty)?;
            text_entry(enc, "senderId", sender_id)?;
        }
        Message::Error {
            sender_id,
            target_id,
            message,
            detail,
        } => {
            let extra = detail.as_deref().map_or(0, detail_len);
            map_header(
                enc,
                2 + usize::from(sender_id.is_some()) + usize::from(target_id.is_some()) + extra,
            )?;
            text_entry(enc, "type", ty)?;
            if let Some(sender_id) = sender_id {
                text_entry(enc, "senderId", sender_id)?;
            }
            text_entry(enc, "message", message)?;
            if let Some(target_id) = target_id {
                text_entry(enc, "targetId", target_id)?;
            }
            if let Some(detail) = detail {
                write_detail(enc, detail)?;
            }
        }
        Message::Request {
            sender_id,
            target_id,
            document_id,
            data,
        } => {
            map_header(enc, 5)?;
            text_entry(enc, "type", ty)?;
            text_entry(enc, "targetId", target_id)?;
            text_entry(enc, "documentId", &document_id.encode())?;
            enc.str("data")?.bytes(data)?;
            text_entry(enc, "senderId", sender_id)?;
        }
        Message::Sync {
            sender_id,
            target_id,
            document_id,
            data,
        } => {
            map_header(enc, 5)?;
            text_entry(enc, "type", ty)?;
            text_entry(enc, "targetId", target_id)?;
            enc.str("data")?.bytes(data)?;
            text_entry(enc, "documentId", &document_id.encode())?;
            text_entry(enc, "senderId", sender_id)?;
        }
        Message::DocUnavailable {
            sender_id,
            target_id,
            document_id,
        } => {
            map_header(enc, 4)?;
            text_entry(enc, "type", ty)?;
            text_entry(enc, "documentId", &document_id.encode())?;
            text_entry(enc, "targetId", target_id)?;
            text_entry(enc, "senderId", sender_id)?;
        }
        Message::Ephemeral {
            sender_id,
            target_id,
            count,
            session_id,
            document_id,
            data,
        } => {
            map_header(enc, 7)?;
            text_entry(enc, "type", ty)?;
            text_entry(enc, "targetId", target_id)?;
            text_entry(enc, "documentId", &document_id.encode())?;
            enc.str("data")?.bytes(data)?;
            enc.str("count")?;
            js_uint(enc, *count)?;
            text_entry(enc, "sessionId", session_id)?;
            text_entry(enc, "senderId", sender_id)?;
        }
        Message::RemoteSubscriptionChange {
            sender_id,
            target_id,
            add,
            remove,
        } => {
            map_header(enc, 5)?;
            text_entry(enc, "type", ty)?;
            text_entry(enc, "targetId", target_id)?;
            enc.str("add")?;
            str_array(enc, add)?;
            enc.str("remove")?;
            str_array(enc, remove)?;
            text_entry(enc, "senderId", sender_id)?;
        }
        Message::RemoteHeadsChanged {
            sender_id,
            target_id,
            document_id,
            new_heads,
        } => {
            map_header(enc, 5)?;
            text_entry(enc, "type", ty)?;
            text_entry(enc, "targetId", target_id)?;
            text_entry(enc, "documentId", &document_id.encode())?;
            enc.str("newHeads")?;
            map_header(enc, new_heads.len())?;
            for (storage_id, heads) in new_heads {
                enc.str(storage_id)?;
                map_header(enc, 2)?;
                enc.str("heads")?;
                str_array(enc, &heads.heads)?;
                enc.str("timestamp")?;
                js_uint(enc, heads.timestamp)?;
            }
            text_entry(enc, "senderId", sender_id)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Decoding: CBOR primitives with field context
// ---------------------------------------------------------------------------

/// A short description of a CBOR item type for error messages.
fn describe(ty: Type) -> String {
    match ty {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => "unsigned integer".into(),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => "negative integer".into(),
        Type::F16 | Type::F32 | Type::F64 => "float".into(),
        Type::Bytes | Type::BytesIndef => "byte string".into(),
        Type::String | Type::StringIndef => "text string".into(),
        Type::Array | Type::ArrayIndef => "array".into(),
        Type::Map | Type::MapIndef => "map".into(),
        Type::Tag => "tagged item".into(),
        Type::Bool => "boolean".into(),
        Type::Null => "null".into(),
        Type::Undefined => "undefined".into(),
        other => other.to_string(),
    }
}

/// The type of the next item, which must be a value (not a break code or a
/// reserved byte).
fn value_type(d: &Decoder<'_>) -> Result<Type, DecodeError> {
    match d.datatype().map_err(cbor_error)? {
        Type::Break => Err(DecodeError::Malformed(format!(
            "unexpected break code at byte {}",
            d.position()
        ))),
        Type::Unknown(b) => Err(DecodeError::Malformed(format!(
            "reserved initial byte {b:#04x} at byte {}",
            d.position()
        ))),
        ty => Ok(ty),
    }
}

fn wrong_type(field: &'static str, expected: &'static str, found: Type) -> DecodeError {
    DecodeError::WrongType {
        field,
        expected,
        found: describe(found),
    }
}

/// Consumes `null` or `undefined` if that is what comes next. cbor-x writes
/// JS `undefined` properties as CBOR `undefined`, so both mean "absent".
fn take_absent(d: &mut Decoder<'_>) -> Result<bool, DecodeError> {
    match value_type(d)? {
        Type::Null | Type::Undefined => {
            d.skip().map_err(cbor_error)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Reads a text string (definite or indefinite) of at most `max` bytes.
fn read_text<'b>(
    d: &mut Decoder<'b>,
    field: &'static str,
    max: usize,
) -> Result<Cow<'b, str>, DecodeError> {
    let too_long = |len| DecodeError::FieldTooLong { field, len, max };
    match value_type(d)? {
        Type::String => {
            let s = d.str().map_err(cbor_error)?;
            if s.len() > max {
                return Err(too_long(s.len()));
            }
            Ok(Cow::Borrowed(s))
        }
        Type::StringIndef => {
            let mut out = String::new();
            for chunk in d.str_iter().map_err(cbor_error)? {
                let chunk = chunk.map_err(cbor_error)?;
                let len = out.len().saturating_add(chunk.len());
                if len > max {
                    return Err(too_long(len));
                }
                out.push_str(chunk);
            }
            Ok(Cow::Owned(out))
        }
        other => Err(wrong_type(field, "a text string", other)),
    }
}

/// Reads a text string, keeping at most its first `max` bytes (cut at a
/// character boundary); the rest is skipped without being copied.
fn read_text_cut(
    d: &mut Decoder<'_>,
    field: &'static str,
    max: usize,
) -> Result<String, DecodeError> {
    match value_type(d)? {
        Type::String => {
            let s = d.str().map_err(cbor_error)?;
            Ok(super::message::truncate_to(s, max))
        }
        Type::StringIndef => {
            let mut out = String::new();
            for chunk in d.str_iter().map_err(cbor_error)? {
                let chunk = chunk.map_err(cbor_error)?;
                if out.len() < max {
                    out.push_str(&super::message::truncate_to(chunk, max - out.len()));
                }
            }
            Ok(out)
        }
        other => Err(wrong_type(field, "a text string", other)),
    }
}

/// Reads a byte string (definite or indefinite), optionally wrapped in tag
/// 64 (RFC 8746 "uint8 typed array").
fn read_bytes(d: &mut Decoder<'_>, field: &'static str) -> Result<Vec<u8>, DecodeError> {
    let mut ty = value_type(d)?;
    if ty == Type::Tag {
        let tag = d.tag().map_err(cbor_error)?;
        if tag.as_u64() != 64 {
            return Err(DecodeError::WrongType {
                field,
                expected: "a byte string",
                found: format!("item with tag {}", tag.as_u64()),
            });
        }
        ty = value_type(d)?;
    }
    match ty {
        Type::Bytes => Ok(d.bytes().map_err(cbor_error)?.to_vec()),
        Type::BytesIndef => {
            let mut out = Vec::new();
            for chunk in d.bytes_iter().map_err(cbor_error)? {
                out.extend_from_slice(chunk.map_err(cbor_error)?);
            }
            Ok(out)
        }
        other => Err(wrong_type(field, "a byte string", other)),
    }
}

fn read_bool(d: &mut Decoder<'_>, field: &'static str) -> Result<bool, DecodeError> {
    match value_type(d)? {
        Type::Bool => d.bool().map_err(cbor_error),
        other => Err(wrong_type(field, "a boolean", other)),
    }
}

/// Converts IEEE 754 half-precision bits to f64 (minicbor only does this
/// with its `half` feature, which we do not enable).
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let mant = f64::from(bits & 0x3ff);
    let magnitude = match exp {
        0 => mant * 2f64.powi(-24),
        31 if mant == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1024.0 + mant) * 2f64.powi(e - 25),
    };
    sign * magnitude
}

/// Reads an unsigned integer; also accepts a non-negative integral float
/// below 2^64, since cbor-x writes JS numbers above `u32::MAX` as float64.
fn read_uint(d: &mut Decoder<'_>, field: &'static str) -> Result<u64, DecodeError> {
    const EXPECTED: &str = "an unsigned integer";
    let float = match value_type(d)? {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => return d.u64().map_err(cbor_error),
        Type::F16 => {
            let pos = d.position();
            let raw = d
                .input()
                .get(pos.saturating_add(1)..pos.saturating_add(3))
                .ok_or(DecodeError::Truncated)?;
            let raw: [u8; 2] = raw.try_into().map_err(|_| DecodeError::Truncated)?;
            let bits = u16::from_be_bytes(raw);
            d.set_position(pos + 3);
            f16_to_f64(bits)
        }
        Type::F32 => f64::from(d.f32().map_err(cbor_error)?),
        Type::F64 => d.f64().map_err(cbor_error)?,
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            let n = d.int().map_err(cbor_error)?;
            return Err(DecodeError::WrongType {
                field,
                expected: EXPECTED,
                found: format!("negative integer {n}"),
            });
        }
        other => return Err(wrong_type(field, EXPECTED, other)),
    };
    // 2^64 as f64; `float < TWO_POW_64` guarantees the cast below is exact.
    const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
    if float.is_finite() && float >= 0.0 && float.fract() == 0.0 && float < TWO_POW_64 {
        Ok(float as u64)
    } else {
        Err(DecodeError::WrongType {
            field,
            expected: EXPECTED,
            found: format!("float {float}"),
        })
    }
}

/// Runs `item` once per element of a definite or indefinite array or map
/// whose header has just been read (`len` from minicbor), refusing more than
/// `max` elements.
fn for_each_item<'b>(
    d: &mut Decoder<'b>,
    len: Option<u64>,
    field: &'static str,
    max: usize,
    mut item: impl FnMut(&mut Decoder<'b>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let too_many = || DecodeError::TooManyEntries { field, max };
    match len {
        Some(n) => {
            if n > max as u64 {
                return Err(too_many());
            }
            for _ in 0..n {
                item(d)?;
            }
        }
        None => {
            let mut count = 0usize;
            loop {
                if d.datatype().map_err(cbor_error)? == Type::Break {
                    d.set_position(d.position() + 1);
                    break;
                }
                count += 1;
                if count > max {
                    return Err(too_many());
                }
                item(d)?;
            }
        }
    }
    Ok(())
}

/// Skips one item of any type, checking it is well-formed. `depth` is the
/// nesting level of the item itself; containers add one per level and
/// anything past [`MAX_DEPTH`] is refused, so the recursion is bounded.
/// `field` names the message field the item belongs to, for errors.
fn skip_value(
    d: &mut Decoder<'_>,
    field: &'static str,
    depth: usize,
    limits: &Limits,
) -> Result<(), DecodeError> {
    // Tags only annotate the item after them; a run of tags is walked
    // iteratively (it is bounded by the input).
    while value_type(d)? == Type::Tag {
        d.tag().map_err(cbor_error)?;
    }
    match value_type(d)? {
        Type::Array | Type::ArrayIndef => {
            if depth > MAX_DEPTH {
                return Err(DecodeError::TooDeep { max: MAX_DEPTH });
            }
            let len = d.array().map_err(cbor_error)?;
            for_each_item(d, len, field, limits.max_entries, |d| {
                skip_value(d, field, depth + 1, limits)
            })
        }
        Type::Map | Type::MapIndef => {
            if depth > MAX_DEPTH {
                return Err(DecodeError::TooDeep { max: MAX_DEPTH });
            }
            let len = d.map().map_err(cbor_error)?;
            // A map here may be one with a fixed set of keys (`peerMetadata`,
            // a `newHeads` value, …), which may hold up to MAX_OBJECT_KEYS
            // whatever `max_entries` says; the decoder of each known map
            // applies its own bound afterwards.
            let max = limits.max_entries.max(MAX_OBJECT_KEYS);
            for_each_item(d, len, field, max, |d| {
                skip_value(d, field, depth + 1, limits)?;
                skip_value(d, field, depth + 1, limits)
            })
        }
        // Scalars, byte strings and text strings: minicbor skips these
        // without recursion (indefinite strings are flat by definition).
        _ => d.skip().map_err(cbor_error),
    }
}

// ---------------------------------------------------------------------------
// Decoding: maps with known keys
// ---------------------------------------------------------------------------

/// The keys of one kind of map: wire name → slot. Two names may share a slot
/// (an alias); a map naming both is a duplicate.
type KeyTable = [(&'static str, usize)];

/// Walks the map starting at the decoder (header included), checks every
/// entry is well-formed, and returns where the value of each known key
/// starts. Keys must be text; unknown keys are skipped (errors inside them
/// are reported under `unknown_field`). Such fixed-schema maps hold at most
/// [`MAX_OBJECT_KEYS`] entries.
fn scan_map(
    d: &mut Decoder<'_>,
    field: &'static str,
    unknown_field: &'static str,
    keys: &KeyTable,
    slots: usize,
    depth: usize,
    limits: &Limits,
) -> Result<Vec<Option<usize>>, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::TooDeep { max: MAX_DEPTH });
    }
    let len = match value_type(d)? {
        Type::Map | Type::MapIndef => d.map().map_err(cbor_error)?,
        other => return Err(wrong_type(field, "a map", other)),
    };
    let mut found = vec![None; slots];
    for_each_item(d, len, field, MAX_OBJECT_KEYS, |d| {
        // Keys are compared, never stored, so any length is fine here.
        let key = read_text(d, "(map key)", usize::MAX)?;
        let mut value_field = unknown_field;
        if let Some(&(name, slot)) = keys.iter().find(|(name, _)| *name == key) {
            value_field = name;
            let entry = found.get_mut(slot).ok_or_else(|| {
                DecodeError::Malformed(format!("internal key table error for {key:?}"))
            })?;
            if entry.is_some() {
                return Err(DecodeError::DuplicateKey(key.into_owned()));
            }
            *entry = Some(d.position());
        }
        skip_value(d, value_field, depth + 1, limits)
    })?;
    Ok(found)
}

/// Keys of the message map.
mod key {
    pub const TYPE: usize = 0;
    pub const SENDER_ID: usize = 1;
    pub const TARGET_ID: usize = 2;
    pub const DOCUMENT_ID: usize = 3;
    pub const DATA: usize = 4;
    pub const COUNT: usize = 5;
    pub const SESSION_ID: usize = 6;
    pub const MESSAGE: usize = 7;
    pub const SUPPORTED_PROTOCOL_VERSIONS: usize = 8;
    pub const SELECTED_PROTOCOL_VERSION: usize = 9;
    pub const PEER_METADATA: usize = 10;
    pub const ADD: usize = 11;
    pub const REMOVE: usize = 12;
    pub const NEW_HEADS: usize = 13;
    pub const CODE: usize = 14;
    pub const REFUSED: usize = 15;
    pub const REFUSED_COUNT: usize = 16;
    pub const VIOLATIONS: usize = 17;
    pub const VIOLATION_COUNT: usize = 18;
    pub const COUNT_OF_SLOTS: usize = 19;
}

const MESSAGE_KEYS: &KeyTable = &[
    ("type", key::TYPE),
    ("senderId", key::SENDER_ID),
    ("targetId", key::TARGET_ID),
    ("documentId", key::DOCUMENT_ID),
    ("data", key::DATA),
    ("count", key::COUNT),
    ("sessionId", key::SESSION_ID),
    ("message", key::MESSAGE),
    (
        "supportedProtocolVersions",
        key::SUPPORTED_PROTOCOL_VERSIONS,
    ),
    ("selectedProtocolVersion", key::SELECTED_PROTOCOL_VERSION),
    ("peerMetadata", key::PEER_METADATA),
    // The README's name for peerMetadata; the JS code never sends it.
    ("metadata", key::PEER_METADATA),
    ("add", key::ADD),
    ("remove", key::REMOVE),
    ("newHeads", key::NEW_HEADS),
    // kiemtra's structured error detail (see `ErrorDetail`).
    ("code", key::CODE),
    ("refused", key::REFUSED),
    ("refusedCount", key::REFUSED_COUNT),
    ("violations", key::VIOLATIONS),
    ("violationCount", key::VIOLATION_COUNT),
];

const VIOLATION_KEYS: &KeyTable = &[
    ("change", 0),
    ("path", 1),
    ("rule", 2),
    ("role", 3),
    ("reason", 4),
];

const METADATA_KEYS: &KeyTable = &[("storageId", 0), ("isEphemeral", 1)];
const HEADS_KEYS: &KeyTable = &[("heads", 0), ("timestamp", 1)];

/// Decodes one frame into a [`Message`], enforcing `limits`. See the module
/// documentation for exactly what is accepted.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > limits.max_message_bytes {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: limits.max_message_bytes,
        });
    }
    let mut d = Decoder::new(bytes);
    match value_type(&d)? {
        Type::Map | Type::MapIndef => {}
        other => {
            return Err(DecodeError::NotAMap {
                found: describe(other),
            });
        }
    }
    let slots = scan_map(
        &mut d,
        "(message)",
        "(unknown field)",
        MESSAGE_KEYS,
        key::COUNT_OF_SLOTS,
        1,
        limits,
    )?;
    if d.position() < bytes.len() {
        return Err(DecodeError::TrailingBytes {
            count: bytes.len() - d.position(),
        });
    }
    let fields = Fields {
        input: bytes,
        slots,
        limits,
        message_type: "(unknown)",
    };
    let type_name = match fields.value(key::TYPE)? {
        None => return Err(DecodeError::MissingType),
        Some(mut d) => read_text(&mut d, "type", limits.max_id_len)?,
    };
    let message_type = match KNOWN_TYPES.iter().find(|t| **t == type_name) {
        Some(t) => *t,
        None => return Err(DecodeError::UnknownType(type_name.into_owned())),
    };
    Fields {
        message_type,
        ..fields
    }
    .build()
}

const KNOWN_TYPES: &[&str] = &[
    "join",
    "peer",
    "leave",
    "error",
    "request",
    "sync",
    "doc-unavailable",
    "ephemeral",
    "remote-subscription-change",
    "remote-heads-changed",
];

/// A scanned, well-formed message map: where each known key's value starts.
struct Fields<'b, 'l> {
    input: &'b [u8],
    slots: Vec<Option<usize>>,
    limits: &'l Limits,
    message_type: &'static str,
}

impl<'b> Fields<'b, '_> {
    /// A decoder at the value of `slot`, or `None` if the key is absent or
    /// its value is `null`/`undefined`.
    fn value(&self, slot: usize) -> Result<Option<Decoder<'b>>, DecodeError> {
        let Some(pos) = self.slots.get(slot).copied().flatten() else {
            return Ok(None);
        };
        let mut d = Decoder::new(self.input);
        d.set_position(pos);
        if take_absent(&mut d)? {
            return Ok(None);
        }
        Ok(Some(d))
    }

    fn required(&self, slot: usize, field: &'static str) -> Result<Decoder<'b>, DecodeError> {
        self.value(slot)?.ok_or(DecodeError::MissingField {
            message_type: self.message_type,
            field,
        })
    }

    fn id(&self, slot: usize, field: &'static str) -> Result<String, DecodeError> {
        let mut d = self.required(slot, field)?;
        Ok(read_text(&mut d, field, self.limits.max_id_len)?.into_owned())
    }

    fn optional_id(&self, slot: usize, field: &'static str) -> Result<Option<String>, DecodeError> {
        match self.value(slot)? {
            None => Ok(None),
            Some(mut d) => Ok(Some(
                read_text(&mut d, field, self.limits.max_id_len)?.into_owned(),
            )),
        }
    }

    fn sender_id(&self) -> Result<String, DecodeError> {
        self.id(key::SENDER_ID, "senderId")
    }

    fn target_id(&self) -> Result<String, DecodeError> {
        self.id(key::TARGET_ID, "targetId")
    }

    fn document_id(&self) -> Result<DocumentId, DecodeError> {
        const FIELD: &str = "documentId";
        let text = self.id(key::DOCUMENT_ID, FIELD)?;
        DocumentId::parse(&text).map_err(|error| DecodeError::BadDocumentId {
            field: FIELD,
            error,
        })
    }

    fn data(&self) -> Result<Vec<u8>, DecodeError> {
        read_bytes(&mut self.required(key::DATA, "data")?, "data")
    }

    /// An array of ids; absent means empty.
    fn id_list(&self, slot: usize, field: &'static str) -> Result<Vec<String>, DecodeError> {
        match self.value(slot)? {
            None => Ok(Vec::new()),
            Some(mut d) => read_id_array(&mut d, field, self.limits),
        }
    }

    fn peer_metadata(&self) -> Result<Option<PeerMetadata>, DecodeError> {
        const FIELD: &str = "peerMetadata";
        let Some(mut d) = self.value(key::PEER_METADATA)? else {
            return Ok(None);
        };
        let slots = scan_map(&mut d, FIELD, FIELD, METADATA_KEYS, 2, 2, self.limits)?;
        let nested = Fields {
            input: self.input,
            slots,
            limits: self.limits,
            message_type: self.message_type,
        };
        let storage_id = nested.optional_id(0, "peerMetadata.storageId")?;
        // automerge-repo reads a missing isEphemeral as false (its client
        // adapter may send `{}`), so we do too.
        let is_ephemeral = match nested.value(1)? {
            None => false,
            Some(mut d) => read_bool(&mut d, "peerMetadata.isEphemeral")?,
        };
        Ok(Some(PeerMetadata {
            storage_id,
            is_ephemeral,
        }))
    }

    fn new_heads(&self) -> Result<BTreeMap<String, RemoteHeads>, DecodeError> {
        const FIELD: &str = "newHeads";
        let mut d = self.required(key::NEW_HEADS, FIELD)?;
        let len = match value_type(&d)? {
            Type::Map | Type::MapIndef => d.map().map_err(cbor_error)?,
            other => return Err(wrong_type(FIELD, "a map", other)),
        };
        let mut out = BTreeMap::new();
        for_each_item(&mut d, len, FIELD, self.limits.max_entries, |d| {
            let storage_id =
                read_text(d, "newHeads key (storage id)", self.limits.max_id_len)?.into_owned();
            let slots = scan_map(d, "newHeads value", FIELD, HEADS_KEYS, 2, 3, self.limits)?;
            let entry = Fields {
                input: self.input,
                slots,
                limits: self.limits,
                message_type: self.message_type,
            };
            let mut heads_d = entry.required(0, "newHeads[].heads")?;
            let heads = read_id_array(&mut heads_d, "newHeads[].heads", self.limits)?;
            let mut ts_d = entry.required(1, "newHeads[].timestamp")?;
            let timestamp = read_uint(&mut ts_d, "newHeads[].timestamp")?;
            if out.contains_key(&storage_id) {
                return Err(DecodeError::DuplicateKey(storage_id));
            }
            out.insert(storage_id, RemoteHeads { heads, timestamp });
            Ok(())
        })?;
        Ok(out)
    }

    /// The structured keys of an `error`, if any is present.
    fn error_detail(&self) -> Result<Option<ErrorDetail>, DecodeError> {
        let present = [
            key::DOCUMENT_ID,
            key::CODE,
            key::REFUSED,
            key::REFUSED_COUNT,
            key::VIOLATIONS,
            key::VIOLATION_COUNT,
        ]
        .iter()
        .any(|k| self.slots.get(*k).copied().flatten().is_some());
        if !present {
            return Ok(None);
        }
        let limits = self.limits;
        let document_id = match self.value(key::DOCUMENT_ID)? {
            None => None,
            Some(_) => Some(self.document_id()?),
        };
        let code = match self.value(key::CODE)? {
            None => None,
            Some(mut d) => Some(read_text(&mut d, "code", limits.max_id_len)?.into_owned()),
        };
        let refused = self.id_list(key::REFUSED, "refused")?;
        let refused_count = match self.value(key::REFUSED_COUNT)? {
            None => refused.len() as u64,
            Some(mut d) => read_uint(&mut d, "refusedCount")?,
        };
        let mut violations = Vec::new();
        if let Some(mut d) = self.value(key::VIOLATIONS)? {
            const FIELD: &str = "violations";
            let len = match value_type(&d)? {
                Type::Array | Type::ArrayIndef => d.array().map_err(cbor_error)?,
                other => return Err(wrong_type(FIELD, "an array of maps", other)),
            };
            for_each_item(&mut d, len, FIELD, limits.max_entries, |d| {
                let slots = scan_map(d, FIELD, FIELD, VIOLATION_KEYS, 5, 2, limits)?;
                let entry = Fields {
                    input: self.input,
                    slots,
                    limits,
                    message_type: self.message_type,
                };
                let text = |slot: usize, field: &'static str| -> Result<String, DecodeError> {
                    match entry.value(slot)? {
                        None => Ok(String::new()),
                        Some(mut d) => read_text_cut(&mut d, field, limits.max_text_len),
                    }
                };
                violations.push(WireViolation {
                    change: text(0, "violations[].change")?,
                    path: text(1, "violations[].path")?,
                    rule: text(2, "violations[].rule")?,
                    role: text(3, "violations[].role")?,
                    reason: text(4, "violations[].reason")?,
                });
                Ok(())
            })?;
        }
        let violation_count = match self.value(key::VIOLATION_COUNT)? {
            None => violations.len() as u64,
            Some(mut d) => read_uint(&mut d, "violationCount")?,
        };
        Ok(Some(ErrorDetail {
            document_id,
            code,
            refused,
            refused_count,
            violations,
            violation_count,
        }))
    }

    fn build(&self) -> Result<Message, DecodeError> {
        let limits = self.limits;
        Ok(match self.message_type {
            "join" => Message::Join {
                sender_id: self.sender_id()?,
                supported_protocol_versions: self.id_list(
                    key::SUPPORTED_PROTOCOL_VERSIONS,
                    "supportedProtocolVersions",
                )?,
                peer_metadata: self.peer_metadata()?,
            },
            "peer" => Message::Peer {
                sender_id: self.sender_id()?,
                target_id: self.target_id()?,
                selected_protocol_version: self
                    .id(key::SELECTED_PROTOCOL_VERSION, "selectedProtocolVersion")?,
                peer_metadata: self.peer_metadata()?,
            },
            "leave" => Message::Leave {
                sender_id: self.sender_id()?,
            },
            "error" => {
                // An over-long text is cut, not refused: losing the end of an
                // explanation is better than losing the whole session.
                let mut d = self.required(key::MESSAGE, "message")?;
                let message = read_text_cut(&mut d, "message", limits.max_text_len)?;
                Message::Error {
                    sender_id: self.optional_id(key::SENDER_ID, "senderId")?,
                    target_id: self.optional_id(key::TARGET_ID, "targetId")?,
                    message,
                    detail: self.error_detail()?.map(Box::new),
                }
            }
            "request" => Message::Request {
                sender_id: self.sender_id()?,
                target_id: self.target_id()?,
                document_id: self.document_id()?,
                data: self.data()?,
            },
            "sync" => Message::Sync {
                sender_id: self.sender_id()?,
                target_id: self.target_id()?,
                document_id: self.document_id()?,
                data: self.data()?,
            },
            "doc-unavailable" => Message::DocUnavailable {
                sender_id: self.sender_id()?,
                target_id: self.target_id()?,
                document_id: self.document_id()?,
            },
            "ephemeral" => Message::Ephemeral {
                sender_id: self.sender_id()?,
                target_id: self.target_id()?,
                count: read_uint(&mut self.required(key::COUNT, "count")?, "count")?,
                session_id: self.id(key::SESSION_ID, "sessionId")?,
                document_id: self.document_id()?,
                data: self.data()?,
            },
            "remote-subscription-change" => Message::RemoteSubscriptionChange {
                sender_id: self.sender_id()?,
                target_id: self.target_id()?,
                // automerge-repo leaves out (or sends `undefined` for)
                // whichever of the two lists it has nothing for.
                add: self.id_list(key::ADD, "add")?,
                remove: self.id_list(key::REMOVE, "remove")?,
            },
            "remote-heads-changed" => Message::RemoteHeadsChanged {
                sender_id: self.sender_id()?,
                target_id: self.target_id()?,
                document_id: self.document_id()?,
                new_heads: self.new_heads()?,
            },
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        })
    }
}

/// Reads an array of text strings, each at most `max_id_len` bytes.
fn read_id_array(
    d: &mut Decoder<'_>,
    field: &'static str,
    limits: &Limits,
) -> Result<Vec<String>, DecodeError> {
    let len = match value_type(d)? {
        Type::Array | Type::ArrayIndef => d.array().map_err(cbor_error)?,
        other => return Err(wrong_type(field, "an array of text strings", other)),
    };
    // Capacity never exceeds the limit nor the bytes left (each element
    // takes at least one byte), whatever the header claims.
    let left = d.input().len().saturating_sub(d.position());
    let cap = len
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
        .min(limits.max_entries)
        .min(left);
    let mut out = Vec::with_capacity(cap);
    for_each_item(d, len, field, limits.max_entries, |d| {
        out.push(read_text(d, field, limits.max_id_len)?.into_owned());
        Ok(())
    })?;
    Ok(out)
}
