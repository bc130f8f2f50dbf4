//! Tests of the wire codec (`sync_core::protocol::codec`).
//!
//! Golden vectors: `tests/golden/<type>.hex` holds, for each of the ten
//! message types, the exact frame for the example built by [`examples`].
//! ALL TEN golden files are byte-for-byte the output of cbor-x 1.6.9 with
//! `new Encoder({ tagUint8Array: false, useRecords: false })` (the encoder
//! automerge-repo 2.5.6 uses) for the same JS objects, built with the key
//! order the JS code uses (client/server adapters for join/peer/error;
//! DocSynchronizer, CollectionSynchronizer and Repo objects with `senderId`
//! appended by NetworkSubsystem for the rest). The `cbor-x-*.hex` files are
//! further cbor-x outputs for JS objects whose shape differs from what we
//! emit (other key orders, `undefined` fields, `{}` metadata, no
//! `supportedProtocolVersions`); we only decode those.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use minicbor::Encoder;
use proptest::prelude::*;
use sync_core::DocumentId;
use sync_core::IdError;
use sync_core::protocol::codec::{MAX_DEPTH, MAX_OBJECT_KEYS};
use sync_core::protocol::{
    DecodeError, ErrorDetail, Limits, Message, PeerMetadata, RemoteHeads, WireViolation, decode,
    encode,
};

// ---------------------------------------------------------------------------
// Examples and golden files
// ---------------------------------------------------------------------------

const CLIENT: &str = "client-7f3a";
const HUB: &str = "hub-kiemtra-01";
const CLIENT_STORAGE: &str = "3a0c1f0e-5b2d-4c8e-9f71-2d6b8e4a7c10";
const HUB_STORAGE: &str = "b1e2c3d4-0000-4a5b-8c9d-112233445566";
/// bs58check of the bytes 1..=16, as computed on the JS side.
const DOC_ID_TEXT: &str = "pEbmSWqJdBuPadRGm8tDZXgWR6";
/// bs58check of 32 × 0xab and 32 × 0x5c (change hashes as automerge-repo writes them).
const HEAD_1: &str = "2Jc6VooH5wxteNEnVgqR8hNw3Pb58bphqk1myKZpXwrCfzJMhM";
const HEAD_2: &str = "hgEUNSv636ed3cEHTBSscHtTj11sDdX7YxhpG5RtvbGowtU49";

fn doc_id() -> DocumentId {
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = i as u8 + 1;
    }
    DocumentId::from_bytes(bytes)
}

fn s(x: &str) -> String {
    x.to_owned()
}

/// One example per message type, named like its golden file.
fn examples() -> Vec<(&'static str, Message)> {
    vec![
        (
            "join",
            Message::Join {
                sender_id: s(CLIENT),
                supported_protocol_versions: vec![s("1")],
                peer_metadata: Some(PeerMetadata {
                    storage_id: Some(s(CLIENT_STORAGE)),
                    is_ephemeral: false,
                }),
            },
        ),
        (
            "peer",
            Message::Peer {
                sender_id: s(HUB),
                target_id: s(CLIENT),
                selected_protocol_version: s("1"),
                peer_metadata: Some(PeerMetadata {
                    storage_id: Some(s(HUB_STORAGE)),
                    is_ephemeral: false,
                }),
            },
        ),
        (
            "leave",
            Message::Leave {
                sender_id: s(CLIENT),
            },
        ),
        (
            "error",
            Message::Error {
                sender_id: Some(s(HUB)),
                target_id: Some(s(CLIENT)),
                message: s("unsupported protocol version"),
                detail: None,
            },
        ),
        (
            "request",
            Message::Request {
                sender_id: s(CLIENT),
                target_id: s(HUB),
                document_id: doc_id(),
                data: vec![0x42, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00],
            },
        ),
        (
            "sync",
            Message::Sync {
                sender_id: s(HUB),
                target_id: s(CLIENT),
                document_id: doc_id(),
                data: vec![0x42, 0x01, 0x20, 0xab, 0xcd, 0xef, 0x01, 0x02, 0x03],
            },
        ),
        (
            "doc-unavailable",
            Message::DocUnavailable {
                sender_id: s(HUB),
                target_id: s(CLIENT),
                document_id: doc_id(),
            },
        ),
        (
            "ephemeral",
            Message::Ephemeral {
                sender_id: s(CLIENT),
                target_id: s(HUB),
                count: 7,
                session_id: s("k3j4h5g6z"),
                document_id: doc_id(),
                // CBOR {"cursor": 12}: ephemeral payloads are CBOR themselves.
                data: vec![0xa1, 0x66, 0x63, 0x75, 0x72, 0x73, 0x6f, 0x72, 0x0c],
            },
        ),
        (
            "remote-subscription-change",
            Message::RemoteSubscriptionChange {
                sender_id: s(CLIENT),
                target_id: s(HUB),
                add: vec![s(HUB_STORAGE)],
                remove: vec![],
            },
        ),
        (
            "remote-heads-changed",
            Message::RemoteHeadsChanged {
                sender_id: s(HUB),
                target_id: s(CLIENT),
                document_id: doc_id(),
                new_heads: BTreeMap::from([(
                    s(HUB_STORAGE),
                    RemoteHeads {
                        heads: vec![s(HEAD_1), s(HEAD_2)],
                        // Above u32::MAX: cbor-x (and we) write it as float64.
                        timestamp: 1_718_000_000_000,
                    },
                )]),
            },
        ),
    ]
}

fn golden(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.hex"));
    let text = std::fs::read_to_string(&path).unwrap();
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(compact).unwrap()
}

fn lim() -> Limits {
    Limits::default()
}

#[test]
fn document_id_example_matches_js_bs58check() {
    assert_eq!(doc_id().encode(), DOC_ID_TEXT);
}

#[test]
fn every_type_has_a_golden_vector() {
    let names: Vec<&str> = examples()
        .iter()
        .map(|(n, m)| {
            assert_eq!(*n, m.type_name());
            *n
        })
        .collect();
    assert_eq!(names.len(), 10);
}

#[test]
fn encode_matches_golden_bytes() {
    for (name, msg) in examples() {
        assert_eq!(
            hex::encode(encode(&msg)),
            hex::encode(golden(name)),
            "encoding of {name} differs from the golden (cbor-x) bytes"
        );
    }
}

#[test]
fn decode_golden_bytes_gives_example() {
    for (name, msg) in examples() {
        assert_eq!(decode(&golden(name), &lim()), Ok(msg), "{name}");
    }
}

#[test]
fn maps_use_cbor_x_sixteen_bit_headers_and_type_comes_first() {
    for (name, msg) in examples() {
        let bytes = encode(&msg);
        assert_eq!(bytes[0], 0xb9, "{name}");
        // Then the key "type" (0x64 't' 'y' 'p' 'e').
        assert_eq!(&bytes[3..8], b"\x64type", "{name}");
    }
}

// ---------------------------------------------------------------------------
// Frames as cbor-x writes them for JS objects shaped differently from ours
// ---------------------------------------------------------------------------

#[test]
fn decodes_cbor_x_join_with_undefined_storage_and_no_versions() {
    // {type, senderId, peerMetadata: {storageId: undefined, isEphemeral: true}}
    assert_eq!(
        decode(&golden("cbor-x-join-undefined-storage-no-versions"), &lim()),
        Ok(Message::Join {
            sender_id: s(CLIENT),
            supported_protocol_versions: vec![],
            peer_metadata: Some(PeerMetadata {
                storage_id: None,
                is_ephemeral: true,
            }),
        })
    );
}

#[test]
fn decodes_cbor_x_join_with_empty_metadata() {
    // The JS client adapter sends `peerMetadata ?? {}`.
    assert_eq!(
        decode(&golden("cbor-x-join-empty-metadata"), &lim()),
        Ok(Message::Join {
            sender_id: s(CLIENT),
            supported_protocol_versions: vec![s("1")],
            peer_metadata: Some(PeerMetadata::default()),
        })
    );
}

#[test]
fn decodes_cbor_x_peer_with_undefined_metadata() {
    assert_eq!(
        decode(&golden("cbor-x-peer-metadata-undefined"), &lim()),
        Ok(Message::Peer {
            sender_id: s(HUB),
            target_id: s(CLIENT),
            selected_protocol_version: s("1"),
            peer_metadata: None,
        })
    );
}

#[test]
fn decodes_cbor_x_subscription_change_with_undefined_remove() {
    assert_eq!(
        decode(&golden("cbor-x-subs-add-only"), &lim()),
        Ok(Message::RemoteSubscriptionChange {
            sender_id: s(CLIENT),
            target_id: s(HUB),
            add: vec![s(HUB_STORAGE)],
            remove: vec![],
        })
    );
}

#[test]
fn decodes_cbor_x_request_in_readme_key_order() {
    // Keys: type, documentId, senderId, targetId, data.
    assert_eq!(
        decode(&golden("cbor-x-request-readme-order"), &lim()),
        Ok(Message::Request {
            sender_id: s(CLIENT),
            target_id: s(HUB),
            document_id: doc_id(),
            data: vec![1, 2, 3],
        })
    );
}

#[test]
fn decodes_cbor_x_heads_with_small_integer_timestamp() {
    let msg = Message::RemoteHeadsChanged {
        sender_id: s(HUB),
        target_id: s(CLIENT),
        document_id: doc_id(),
        new_heads: BTreeMap::from([(
            s(CLIENT_STORAGE),
            RemoteHeads {
                heads: vec![],
                timestamp: 5,
            },
        )]),
    };
    let bytes = golden("cbor-x-heads-small-ts");
    assert_eq!(decode(&bytes, &lim()), Ok(msg.clone()));
    // This one is in our key order too, so it is also byte-identical.
    assert_eq!(encode(&msg), bytes);
}

// ---------------------------------------------------------------------------
// A tiny CBOR builder for hand-made (often hostile) frames
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum V {
    T(String),
    B(Vec<u8>),
    U(u64),
    I(i64),
    F64(f64),
    F32(f32),
    /// Raw bytes, written as they are (for f16, headers, garbage).
    Raw(Vec<u8>),
    Bool(bool),
    Null,
    Undef,
    Arr(Vec<V>),
    Map(Vec<(String, V)>),
    Tag(u64, Box<V>),
}

fn t(x: &str) -> V {
    V::T(x.to_owned())
}

fn put(e: &mut Encoder<Vec<u8>>, v: &V) {
    match v {
        V::T(x) => {
            e.str(x).unwrap();
        }
        V::B(x) => {
            e.bytes(x).unwrap();
        }
        V::U(x) => {
            e.u64(*x).unwrap();
        }
        V::I(x) => {
            e.i64(*x).unwrap();
        }
        V::F64(x) => {
            e.f64(*x).unwrap();
        }
        V::F32(x) => {
            e.f32(*x).unwrap();
        }
        V::Raw(x) => e.writer_mut().extend_from_slice(x),
        V::Bool(x) => {
            e.bool(*x).unwrap();
        }
        V::Null => {
            e.null().unwrap();
        }
        V::Undef => {
            e.undefined().unwrap();
        }
        V::Arr(xs) => {
            e.array(xs.len() as u64).unwrap();
            xs.iter().for_each(|x| put(e, x));
        }
        V::Map(kvs) => {
            e.map(kvs.len() as u64).unwrap();
            for (k, x) in kvs {
                e.str(k).unwrap();
                put(e, x);
            }
        }
        V::Tag(n, x) => {
            e.tag(minicbor::data::Tag::new(*n)).unwrap();
            put(e, x);
        }
    }
}

fn cbor(v: &V) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    put(&mut e, v);
    e.into_writer()
}

fn map(kvs: Vec<(&str, V)>) -> Vec<u8> {
    cbor(&V::Map(
        kvs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    ))
}

/// The fields of a valid `sync` message, to be altered by each test.
fn sync_fields() -> Vec<(&'static str, V)> {
    vec![
        ("type", t("sync")),
        ("senderId", t(CLIENT)),
        ("targetId", t(HUB)),
        ("documentId", t(DOC_ID_TEXT)),
        ("data", V::B(vec![1, 2, 3])),
    ]
}

fn with(mut fields: Vec<(&'static str, V)>, key: &'static str, v: V) -> Vec<(&'static str, V)> {
    match fields.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = v,
        None => fields.push((key, v)),
    }
    fields
}

fn without(fields: Vec<(&'static str, V)>, key: &str) -> Vec<(&'static str, V)> {
    fields.into_iter().filter(|(k, _)| *k != key).collect()
}

fn ephemeral_fields(count: V) -> Vec<(&'static str, V)> {
    vec![
        ("type", t("ephemeral")),
        ("senderId", t(CLIENT)),
        ("targetId", t(HUB)),
        ("count", count),
        ("sessionId", t("s1")),
        ("documentId", t(DOC_ID_TEXT)),
        ("data", V::B(vec![0xf6])),
    ]
}

fn decode_count(count: V) -> Result<u64, DecodeError> {
    match decode(&map(ephemeral_fields(count)), &lim())? {
        Message::Ephemeral { count, .. } => Ok(count),
        other => panic!("decoded as {other:?}"),
    }
}

#[test]
fn builder_produces_a_decodable_sync() {
    assert_eq!(
        decode(&map(sync_fields()), &lim()),
        Ok(Message::Sync {
            sender_id: s(CLIENT),
            target_id: s(HUB),
            document_id: doc_id(),
            data: vec![1, 2, 3],
        })
    );
}

// ---------------------------------------------------------------------------
// Negative tests
// ---------------------------------------------------------------------------

#[test]
fn empty_frame() {
    assert_eq!(decode(&[], &lim()), Err(DecodeError::Empty));
}

#[test]
fn every_prefix_of_every_golden_vector_is_refused() {
    for (name, _) in examples() {
        let bytes = golden(name);
        assert_eq!(decode(&bytes[..0], &lim()), Err(DecodeError::Empty));
        for len in 1..bytes.len() {
            assert_eq!(
                decode(&bytes[..len], &lim()),
                Err(DecodeError::Truncated),
                "{name} cut to {len} bytes"
            );
        }
    }
}

#[test]
fn garbage_bytes() {
    // A lone break code, and a reserved initial byte.
    assert!(matches!(
        decode(&[0xff, 0xfe, 0xfd], &lim()),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        decode(&[0x1c, 0x00], &lim()),
        Err(DecodeError::Malformed(_))
    ));
    // A map whose key is a text string with invalid UTF-8.
    assert!(matches!(
        decode(&[0xa1, 0x62, 0xc3, 0x28, 0x00], &lim()),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn array_instead_of_map() {
    assert_eq!(
        decode(&cbor(&V::Arr(vec![t("sync"), V::U(1)])), &lim()),
        Err(DecodeError::NotAMap { found: s("array") })
    );
    assert_eq!(
        decode(&cbor(&t("sync")), &lim()),
        Err(DecodeError::NotAMap {
            found: s("text string")
        })
    );
}

#[test]
fn unknown_type() {
    let frame = map(with(sync_fields(), "type", t("gossip")));
    assert_eq!(
        decode(&frame, &lim()),
        Err(DecodeError::UnknownType(s("gossip")))
    );
}

#[test]
fn missing_or_mistyped_type() {
    assert_eq!(
        decode(&map(without(sync_fields(), "type")), &lim()),
        Err(DecodeError::MissingType)
    );
    assert_eq!(
        decode(&map(with(sync_fields(), "type", V::U(3))), &lim()),
        Err(DecodeError::WrongType {
            field: "type",
            expected: "a text string",
            found: s("unsigned integer"),
        })
    );
}

#[test]
fn missing_document_id() {
    assert_eq!(
        decode(&map(without(sync_fields(), "documentId")), &lim()),
        Err(DecodeError::MissingField {
            message_type: "sync",
            field: "documentId",
        })
    );
    // `undefined` (a JS property set to undefined) counts as missing.
    assert_eq!(
        decode(&map(with(sync_fields(), "documentId", V::Undef)), &lim()),
        Err(DecodeError::MissingField {
            message_type: "sync",
            field: "documentId",
        })
    );
}

#[test]
fn missing_fields_are_named() {
    let frame = map(without(ephemeral_fields(V::U(1)), "sessionId"));
    assert_eq!(
        decode(&frame, &lim()),
        Err(DecodeError::MissingField {
            message_type: "ephemeral",
            field: "sessionId",
        })
    );
    let frame = map(vec![("type", t("error")), ("senderId", t(HUB))]);
    assert_eq!(
        decode(&frame, &lim()),
        Err(DecodeError::MissingField {
            message_type: "error",
            field: "message",
        })
    );
}

#[test]
fn document_id_with_bad_checksum() {
    // Change the last character: still base58, but the checksum fails.
    let mut bad = s(DOC_ID_TEXT);
    bad.pop();
    bad.push('7');
    let frame = map(with(sync_fields(), "documentId", V::T(bad.clone())));
    assert_eq!(
        decode(&frame, &lim()),
        Err(DecodeError::BadDocumentId {
            field: "documentId",
            error: IdError::NotBs58Check(bad),
        })
    );
}

#[test]
fn data_as_text_instead_of_bytes() {
    let frame = map(with(sync_fields(), "data", t("QgEC")));
    assert_eq!(
        decode(&frame, &lim()),
        Err(DecodeError::WrongType {
            field: "data",
            expected: "a byte string",
            found: s("text string"),
        })
    );
}

#[test]
fn data_in_a_uint8array_tag_is_accepted_other_tags_are_not() {
    let frame = map(with(
        sync_fields(),
        "data",
        V::Tag(64, Box::new(V::B(vec![9, 8]))),
    ));
    assert!(matches!(
        decode(&frame, &lim()),
        Ok(Message::Sync { data, .. }) if data == vec![9, 8]
    ));
    let frame = map(with(
        sync_fields(),
        "data",
        V::Tag(24, Box::new(V::B(vec![9, 8]))),
    ));
    assert_eq!(
        decode(&frame, &lim()),
        Err(DecodeError::WrongType {
            field: "data",
            expected: "a byte string",
            found: s("item with tag 24"),
        })
    );
}

#[test]
fn count_negative() {
    assert_eq!(
        decode_count(V::I(-1)),
        Err(DecodeError::WrongType {
            field: "count",
            expected: "an unsigned integer",
            found: s("negative integer -1"),
        })
    );
}

#[test]
fn count_accepts_integral_floats_and_refuses_others() {
    assert_eq!(
        decode_count(V::F64(1_718_000_000_000.0)),
        Ok(1_718_000_000_000)
    );
    assert_eq!(decode_count(V::F32(3.0)), Ok(3));
    // Half-precision 2.0 (0xf9 0x4000) and 65504.0 (0xf9 0x7bff).
    assert_eq!(decode_count(V::Raw(vec![0xf9, 0x40, 0x00])), Ok(2));
    assert_eq!(decode_count(V::Raw(vec![0xf9, 0x7b, 0xff])), Ok(65504));
    assert_eq!(decode_count(V::U(u64::MAX)), Ok(u64::MAX));
    for bad in [1.5, -2.0, f64::NAN, f64::INFINITY, 1e20] {
        assert!(
            matches!(
                decode_count(V::F64(bad)),
                Err(DecodeError::WrongType { field: "count", .. })
            ),
            "{bad}"
        );
    }
    // A bignum (tag 2) is not a plain unsigned integer.
    assert!(matches!(
        decode_count(V::Tag(2, Box::new(V::B(vec![1, 0])))),
        Err(DecodeError::WrongType { field: "count", .. })
    ));
}

#[test]
fn large_numbers_are_written_as_cbor_x_does() {
    let msg = |count| Message::Ephemeral {
        sender_id: s("a"),
        target_id: s("b"),
        count,
        session_id: s("s"),
        document_id: doc_id(),
        data: vec![1],
    };
    let has = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    // u32::MAX: still an integer.
    let small = encode(&msg(u64::from(u32::MAX)));
    assert!(has(&small, b"\x65count\x1a\xff\xff\xff\xff"));
    // One more: float64, like cbor-x (a 64-bit CBOR integer would become a JS BigInt).
    let big = encode(&msg(1 << 32));
    assert!(has(&big, b"\x65count\xfb\x41\xf0\x00\x00\x00\x00\x00\x00"));
    // Past 2^53 a float cannot hold every integer: plain u64.
    let huge = encode(&msg((1 << 53) + 1));
    assert!(has(&huge, b"\x65count\x1b\x00\x20\x00\x00\x00\x00\x00\x01"));
    for n in [
        u64::from(u32::MAX),
        1 << 32,
        1 << 53,
        (1 << 53) + 1,
        u64::MAX,
    ] {
        assert_eq!(decode(&encode(&msg(n)), &lim()), Ok(msg(n)));
    }
}

#[test]
fn oversized_message() {
    let bytes = golden("sync");
    let limits = Limits {
        max_message_bytes: 16,
        ..lim()
    };
    assert_eq!(
        decode(&bytes, &limits),
        Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: 16,
        })
    );
}

#[test]
fn sender_id_over_max_id_len() {
    let limits = Limits {
        max_id_len: 8,
        ..lim()
    };
    assert_eq!(
        decode(&golden("leave"), &limits),
        Err(DecodeError::FieldTooLong {
            field: "senderId",
            len: CLIENT.len(),
            max: 8,
        })
    );
}

#[test]
fn error_text_over_max_text_len_is_cut() {
    let frame = map(vec![
        ("type", t("error")),
        ("message", V::T("x".repeat(4097))),
    ]);
    assert_eq!(
        decode(&frame, &lim()),
        Ok(Message::Error {
            sender_id: None,
            target_id: None,
            message: "x".repeat(4096),
            detail: None,
        })
    );
}

#[test]
fn too_many_supported_protocol_versions() {
    let limits = Limits {
        max_entries: 2,
        ..lim()
    };
    let frame = map(vec![
        ("type", t("join")),
        ("senderId", t(CLIENT)),
        (
            "supportedProtocolVersions",
            V::Arr(vec![t("1"), t("2"), t("3")]),
        ),
    ]);
    let expected = Err(DecodeError::TooManyEntries {
        field: "supportedProtocolVersions",
        max: 2,
    });
    assert_eq!(decode(&frame, &limits), expected);
    // Same as an indefinite-length array.
    let mut frame = map(vec![("type", t("join")), ("senderId", t(CLIENT))]);
    frame[0] = 0xa3; // three entries
    frame.extend_from_slice(&cbor(&t("supportedProtocolVersions")));
    frame.extend_from_slice(&[0x9f, 0x61, b'1', 0x61, b'2', 0x61, b'3', 0xff]);
    assert_eq!(decode(&frame, &limits), expected);
}

#[test]
fn huge_declared_lengths_allocate_nothing() {
    // An array claiming 2^63 protocol versions, with no bytes behind it.
    let mut frame = map(vec![("type", t("join")), ("senderId", t(CLIENT))]);
    frame[0] = 0xa3;
    frame.extend_from_slice(&cbor(&t("supportedProtocolVersions")));
    frame.extend_from_slice(&[0x9b, 0x80, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        decode(&frame, &lim()),
        Err(DecodeError::TooManyEntries {
            field: "supportedProtocolVersions",
            max: 1024,
        })
    );
    // A byte string claiming 2^63 bytes.
    let mut frame = map(without(sync_fields(), "data"));
    frame[0] = 0xa5;
    frame.extend_from_slice(&cbor(&t("data")));
    frame.extend_from_slice(&[0x5b, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
    assert_eq!(decode(&frame, &lim()), Err(DecodeError::Truncated));
}

#[test]
fn duplicate_key() {
    let mut fields = sync_fields();
    fields.push(("senderId", t("someone-else")));
    assert_eq!(
        decode(&map(fields), &lim()),
        Err(DecodeError::DuplicateKey(s("senderId")))
    );
}

#[test]
fn metadata_alias_is_accepted_but_not_together_with_peer_metadata() {
    let meta = V::Map(vec![(s("isEphemeral"), V::Bool(true))]);
    let join = vec![
        ("type", t("join")),
        ("senderId", t(CLIENT)),
        ("supportedProtocolVersions", V::Arr(vec![t("1")])),
        ("metadata", meta.clone()),
    ];
    assert_eq!(
        decode(&map(join.clone()), &lim()),
        Ok(Message::Join {
            sender_id: s(CLIENT),
            supported_protocol_versions: vec![s("1")],
            peer_metadata: Some(PeerMetadata {
                storage_id: None,
                is_ephemeral: true,
            }),
        })
    );
    let both = with(join, "peerMetadata", meta);
    assert_eq!(
        decode(&map(both), &lim()),
        Err(DecodeError::DuplicateKey(s("peerMetadata")))
    );
}

#[test]
fn duplicate_storage_id_in_new_heads() {
    let entry = V::Map(vec![
        (s("heads"), V::Arr(vec![])),
        (s("timestamp"), V::U(1)),
    ]);
    let frame = map(vec![
        ("type", t("remote-heads-changed")),
        ("senderId", t(HUB)),
        ("targetId", t(CLIENT)),
        ("documentId", t(DOC_ID_TEXT)),
        (
            "newHeads",
            V::Map(vec![(s("s1"), entry.clone()), (s("s1"), entry)]),
        ),
    ]);
    assert_eq!(
        decode(&frame, &lim()),
        Err(DecodeError::DuplicateKey(s("s1")))
    );
}

#[test]
fn wrong_nested_types_are_named() {
    let frame = map(vec![
        ("type", t("peer")),
        ("senderId", t(HUB)),
        ("targetId", t(CLIENT)),
        ("selectedProtocolVersion", t("1")),
        ("peerMetadata", V::Map(vec![(s("isEphemeral"), t("yes"))])),
    ]);
    assert_eq!(
        decode(&frame, &lim()),
        Err(DecodeError::WrongType {
            field: "peerMetadata.isEphemeral",
            expected: "a boolean",
            found: s("text string"),
        })
    );
    let frame = map(vec![
        ("type", t("remote-heads-changed")),
        ("senderId", t(HUB)),
        ("targetId", t(CLIENT)),
        ("documentId", t(DOC_ID_TEXT)),
        (
            "newHeads",
            V::Map(vec![(s("s1"), V::Map(vec![(s("heads"), V::Arr(vec![]))]))]),
        ),
    ]);
    assert_eq!(
        decode(&frame, &lim()),
        Err(DecodeError::MissingField {
            message_type: "remote-heads-changed",
            field: "newHeads[].timestamp",
        })
    );
}

#[test]
fn unknown_keys_are_skipped() {
    let extra = V::Map(vec![
        (
            s("nested"),
            V::Arr(vec![V::U(1), V::Null, V::B(vec![0; 4])]),
        ),
        (s("t"), V::Tag(1, Box::new(V::F64(1.5)))),
    ]);
    let mut fields = sync_fields();
    fields.insert(1, ("futureField", extra));
    // Fields that belong to other types are ignored too.
    fields.push(("count", t("not a number, but irrelevant for sync")));
    assert_eq!(
        decode(&map(fields), &lim()),
        decode(&map(sync_fields()), &lim())
    );
}

#[test]
fn too_many_keys_in_the_message_map() {
    let names: Vec<String> = (0..MAX_OBJECT_KEYS).map(|i| format!("x{i}")).collect();
    let mut fields: Vec<(&str, V)> = sync_fields();
    for name in &names {
        fields.push((name.as_str(), V::U(0)));
    }
    assert_eq!(
        decode(&map(fields), &lim()),
        Err(DecodeError::TooManyEntries {
            field: "(message)",
            max: MAX_OBJECT_KEYS,
        })
    );
}

#[test]
fn non_text_map_key() {
    // The five sync entries plus a sixth whose key is the integer 1.
    let mut frame = vec![0xa6];
    frame.extend_from_slice(&map(sync_fields())[1..]);
    frame.extend_from_slice(&[0x01, 0x02]);
    assert_eq!(
        decode(&frame, &lim()),
        Err(DecodeError::WrongType {
            field: "(map key)",
            expected: "a text string",
            found: s("unsigned integer"),
        })
    );
}

fn nested_arrays(levels: usize) -> Vec<u8> {
    let mut v = vec![0x81; levels.saturating_sub(1)];
    v.push(0x80);
    v
}

fn with_unknown_raw(raw: Vec<u8>) -> Vec<u8> {
    let mut fields = sync_fields();
    fields.push(("bomb", V::Raw(raw)));
    map(fields)
}

#[test]
fn deeply_nested_unknown_field() {
    // The message map is level 1, so an unknown value may use levels 2..=16.
    assert!(decode(&with_unknown_raw(nested_arrays(MAX_DEPTH - 1)), &lim()).is_ok());
    assert_eq!(
        decode(&with_unknown_raw(nested_arrays(MAX_DEPTH)), &lim()),
        Err(DecodeError::TooDeep { max: MAX_DEPTH })
    );
    // A real bomb: 100 000 nested indefinite arrays, then nothing.
    assert_eq!(
        decode(&with_unknown_raw(vec![0x9f; 100_000]), &lim()),
        Err(DecodeError::TooDeep { max: MAX_DEPTH })
    );
    // Nested maps, too.
    let mut maps = Vec::new();
    for _ in 0..50 {
        maps.extend_from_slice(&[0xa1, 0x61, b'k']);
    }
    maps.push(0x00);
    assert_eq!(
        decode(&with_unknown_raw(maps), &lim()),
        Err(DecodeError::TooDeep { max: MAX_DEPTH })
    );
    // A long run of tags is walked without recursion.
    let mut tags = vec![0xc1; 100_000];
    tags.push(0x00);
    assert!(decode(&with_unknown_raw(tags), &lim()).is_ok());
}

#[test]
fn trailing_bytes() {
    let mut bytes = golden("leave");
    bytes.extend_from_slice(&[0x00, 0x01]);
    assert_eq!(
        decode(&bytes, &lim()),
        Err(DecodeError::TrailingBytes { count: 2 })
    );
}

#[test]
fn indefinite_length_items_are_accepted() {
    // {_ "type": (_ "sy" "nc"), "senderId": "a", "targetId": "b",
    //    "documentId": <id>, "data": (_ h'01' h'0203') }
    let mut frame = vec![0xbf];
    frame.extend_from_slice(&cbor(&t("type")));
    frame.extend_from_slice(&[0x7f, 0x62, b's', b'y', 0x62, b'n', b'c', 0xff]);
    for (k, v) in [
        ("senderId", "a"),
        ("targetId", "b"),
        ("documentId", DOC_ID_TEXT),
    ] {
        frame.extend_from_slice(&cbor(&t(k)));
        frame.extend_from_slice(&cbor(&t(v)));
    }
    frame.extend_from_slice(&cbor(&t("data")));
    frame.extend_from_slice(&[0x5f, 0x41, 0x01, 0x42, 0x02, 0x03, 0xff]);
    frame.push(0xff);
    assert_eq!(
        decode(&frame, &lim()),
        Ok(Message::Sync {
            sender_id: s("a"),
            target_id: s("b"),
            document_id: doc_id(),
            data: vec![1, 2, 3],
        })
    );
    // Without the final break it is cut short.
    assert_eq!(
        decode(&frame[..frame.len() - 1], &lim()),
        Err(DecodeError::Truncated)
    );
}

#[test]
fn error_messages_say_what_is_wrong() {
    let e = DecodeError::MissingField {
        message_type: "sync",
        field: "documentId",
    };
    assert_eq!(
        e.to_string(),
        "`sync` message lacks the required field `documentId`"
    );
    let e = DecodeError::TooLarge { len: 10, max: 5 };
    assert!(e.to_string().contains("raise Limits::max_message_bytes"));
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

fn id() -> impl Strategy<Value = String> {
    // Any Unicode, up to 20 chars (≤ 80 bytes, well under max_id_len).
    ".{0,20}"
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..=u64::from(u32::MAX),
        u64::from(u32::MAX)..=(1u64 << 53) + 2,
        any::<u64>(),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..64)
}

fn document_id() -> impl Strategy<Value = DocumentId> {
    any::<[u8; 16]>().prop_map(DocumentId::from_bytes)
}

fn detail() -> impl Strategy<Value = ErrorDetail> {
    let violation =
        (id(), ".{0,40}", id(), id(), ".{0,60}").prop_map(|(change, path, rule, role, reason)| {
            WireViolation {
                change,
                path,
                rule,
                role,
                reason,
            }
        });
    (
        prop::option::of(document_id()),
        prop::option::of(id()),
        prop::collection::vec(id(), 0..4),
        any::<u32>(),
        prop::collection::vec(violation, 0..3),
        any::<u32>(),
    )
        .prop_map(
            |(document_id, code, refused, refused_count, violations, violation_count)| {
                ErrorDetail {
                    document_id,
                    code,
                    refused,
                    refused_count: u64::from(refused_count),
                    violations,
                    violation_count: u64::from(violation_count),
                }
            },
        )
}

fn metadata() -> impl Strategy<Value = Option<PeerMetadata>> {
    prop::option::of((prop::option::of(id()), any::<bool>()).prop_map(
        |(storage_id, is_ephemeral)| PeerMetadata {
            storage_id,
            is_ephemeral,
        },
    ))
}

fn ids() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(id(), 0..5)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (id(), ids(), metadata()).prop_map(
            |(sender_id, supported_protocol_versions, peer_metadata)| {
                Message::Join {
                    sender_id,
                    supported_protocol_versions,
                    peer_metadata,
                }
            }
        ),
        (id(), id(), id(), metadata()).prop_map(|(sender_id, target_id, v, peer_metadata)| {
            Message::Peer {
                sender_id,
                target_id,
                selected_protocol_version: v,
                peer_metadata,
            }
        }),
        id().prop_map(|sender_id| Message::Leave { sender_id }),
        (
            prop::option::of(id()),
            prop::option::of(id()),
            ".{0,100}",
            prop::option::of(detail())
        )
            .prop_map(|(sender_id, target_id, message, detail)| Message::Error {
                sender_id,
                target_id,
                message,
                detail: detail.map(Box::new),
            }),
        (id(), id(), document_id(), bytes()).prop_map(
            |(sender_id, target_id, document_id, data)| {
                Message::Request {
                    sender_id,
                    target_id,
                    document_id,
                    data,
                }
            }
        ),
        (id(), id(), document_id(), bytes()).prop_map(
            |(sender_id, target_id, document_id, data)| {
                Message::Sync {
                    sender_id,
                    target_id,
                    document_id,
                    data,
                }
            }
        ),
        (id(), id(), document_id()).prop_map(|(sender_id, target_id, document_id)| {
            Message::DocUnavailable {
                sender_id,
                target_id,
                document_id,
            }
        }),
        (id(), id(), number(), id(), document_id(), bytes()).prop_map(
            |(sender_id, target_id, count, session_id, document_id, data)| Message::Ephemeral {
                sender_id,
                target_id,
                count,
                session_id,
                document_id,
                data,
            }
        ),
        (id(), id(), ids(), ids()).prop_map(|(sender_id, target_id, add, remove)| {
            Message::RemoteSubscriptionChange {
                sender_id,
                target_id,
                add,
                remove,
            }
        }),
        (
            id(),
            id(),
            document_id(),
            prop::collection::btree_map(
                id(),
                (ids(), number()).prop_map(|(heads, timestamp)| RemoteHeads { heads, timestamp }),
                0..4
            )
        )
            .prop_map(|(sender_id, target_id, document_id, new_heads)| {
                Message::RemoteHeadsChanged {
                    sender_id,
                    target_id,
                    document_id,
                    new_heads,
                }
            }),
    ]
}

/// Golden frames with a few bytes overwritten, inserted or cut: far more
/// likely than uniform noise to reach deep into the decoder.
fn mutated_golden() -> impl Strategy<Value = Vec<u8>> {
    let frames: Vec<Vec<u8>> = examples().iter().map(|(n, _)| golden(n)).collect();
    (
        prop::sample::select(frames),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..6),
    )
        .prop_map(|(mut frame, edits)| {
            for (at, byte, kind) in edits {
                if frame.is_empty() {
                    break;
                }
                let i = at.index(frame.len());
                match kind {
                    0 => frame[i] = byte,
                    1 => frame.insert(i, byte),
                    _ => frame.truncate(i),
                }
            }
            frame
        })
}

/// Whatever decodes must re-encode to something that decodes to the same.
fn check_decode_is_consistent(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(msg) = decode(bytes, &lim()) {
        prop_assert_eq!(decode(&encode(&msg), &lim()), Ok(msg));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_messages_round_trip(msg in message()) {
        let bytes = encode(&msg);
        prop_assert_eq!(decode(&bytes, &lim()), Ok(msg));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_decode_is_consistent(&bytes)?;
    }

    #[test]
    fn mutated_golden_frames_never_panic(bytes in mutated_golden()) {
        check_decode_is_consistent(&bytes)?;
    }
}

// ---------------------------------------------------------------------------
// Structured errors
// ---------------------------------------------------------------------------

/// An `error` whose text is longer than the decoder's limit used to fail to
/// decode — and with it the tablet's whole sync session. The text is cut
/// instead; the structured part is intact.
#[test]
fn an_over_long_error_text_is_cut_not_refused() {
    let limits = Limits::default();
    let long = "ư".repeat(limits.max_text_len); // 2 bytes each: twice the limit
    let msg = Message::Error {
        sender_id: Some("kiemtra-server".into()),
        target_id: Some("tablet".into()),
        message: long.clone(),
        detail: Some(Box::new(ErrorDetail {
            document_id: Some(DocumentId::from_bytes([7; 16])),
            code: Some("refused".into()),
            refused: vec!["ab".repeat(32)],
            refused_count: 1,
            violations: vec![],
            violation_count: 0,
        })),
    };
    let decoded = decode(&encode(&msg), &limits).expect("decodes");
    let Message::Error {
        message, detail, ..
    } = decoded
    else {
        panic!("not an error: {decoded:?}");
    };
    assert_eq!(message.len(), limits.max_text_len);
    assert!(long.starts_with(&message));
    let detail = detail.expect("detail kept");
    assert_eq!(detail.document_id, Some(DocumentId::from_bytes([7; 16])));
    assert_eq!(detail.refused, vec!["ab".repeat(32)]);
}

/// The largest refusal the server sends stays within the documented size.
#[test]
fn a_maximal_refusal_stays_under_the_documented_size() {
    let detail = ErrorDetail {
        document_id: Some(DocumentId::from_bytes([9; 16])),
        code: Some("refused".into()),
        refused: vec!["f".repeat(64); ErrorDetail::MAX_REFUSED],
        refused_count: 100_000,
        violations: vec![
            WireViolation {
                change: "f".repeat(64),
                path: "p".repeat(ErrorDetail::MAX_PATH),
                rule: "immutable".into(),
                role: "secretariat".into(),
                reason: "r".repeat(ErrorDetail::MAX_REASON),
            };
            ErrorDetail::MAX_VIOLATIONS
        ],
        violation_count: 100_000,
    };
    let msg = Message::Error {
        sender_id: Some("kiemtra-server".into()),
        target_id: Some("x".repeat(256)),
        message: "m".repeat(ErrorDetail::MAX_MESSAGE),
        detail: Some(Box::new(detail.clone())),
    };
    let bytes = encode(&msg);
    assert!(
        bytes.len() <= ErrorDetail::MAX_ENCODED,
        "{} bytes",
        bytes.len()
    );
    // And a peer with default limits reads all of it.
    let Message::Error { detail: back, .. } = decode(&bytes, &Limits::default()).unwrap() else {
        panic!("not an error");
    };
    assert_eq!(back.as_deref(), Some(&detail));
}

/// Without the structured part, an `error` is byte-for-byte what
/// automerge-repo's encoder writes (the golden vector), and decodes with no
/// detail.
#[test]
fn plain_errors_have_no_detail() {
    let msg = Message::Error {
        sender_id: Some("a".into()),
        target_id: None,
        message: "boom".into(),
        detail: None,
    };
    assert_eq!(decode(&encode(&msg), &Limits::default()).unwrap(), msg);
}
