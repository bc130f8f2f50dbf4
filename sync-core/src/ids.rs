//! Document ids and `automerge:` URLs, as automerge-repo spells them.
//!
//! A document id is a 16-byte UUID; on the wire and in URLs it is the
//! bs58check encoding of those bytes (base58 with a 4-byte double-SHA-256
//! checksum). An `automerge:` URL is `automerge:<bs58check id>`, optionally
//! followed by `#` and `|`-separated bs58check-encoded heads.

use std::fmt;
use std::str::FromStr;

use automerge::ChangeHash;

/// Prefix of every automerge URL.
pub const URL_PREFIX: &str = "automerge:";

/// Longest bs58check string we will try to decode as a document id. A
/// 16-byte id plus 4 checksum bytes is at most 28 base58 characters.
const MAX_ENCODED_ID_LEN: usize = 32;

/// Why a document id or URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("document id is empty")]
    Empty,
    #[error("document id is {0} characters long; a bs58check id of 16 bytes is at most 28")]
    TooLong(usize),
    #[error("document id {0:?} is not valid bs58check (bad character or checksum)")]
    NotBs58Check(String),
    #[error("document id decodes to {0} bytes; expected 16 (a UUID)")]
    WrongLength(usize),
    #[error("URL {0:?} does not start with \"automerge:\"")]
    NotAutomergeUrl(String),
    #[error("URL {0:?} has more than one '#' section")]
    MultipleHeadsSections(String),
    #[error("head {0:?} in URL is not a bs58check-encoded 32-byte hash")]
    BadHead(String),
}

/// A document id: 16 bytes (a UUID), shown as bs58check.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentId([u8; 16]);

impl DocumentId {
    /// Wraps 16 bytes. The caller supplies them (sync-core takes no
    /// randomness of its own): use a UUIDv7 or v4.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The raw 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The bs58check string used on the wire.
    pub fn encode(&self) -> String {
        bs58::encode(&self.0).with_check().into_string()
    }

    /// The `automerge:` URL of this document.
    pub fn url(&self) -> String {
        format!("{URL_PREFIX}{}", self.encode())
    }

    /// Parses a bare bs58check id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_ENCODED_ID_LEN {
            return Err(IdError::TooLong(s.len()));
        }
        let bytes = bs58::decode(s)
            .with_check(None)
            .into_vec()
            .map_err(|_| IdError::NotBs58Check(s.to_owned()))?;
        let arr: [u8; 16] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| IdError::WrongLength(bytes.len()))?;
        Ok(Self(arr))
    }

    /// Parses either a bare id or an `automerge:` URL (heads ignored).
    pub fn parse_any(s: &str) -> Result<Self, IdError> {
        if s.starts_with(URL_PREFIX) {
            Ok(AutomergeUrl::parse(s)?.document_id)
        } else {
            Self::parse(s)
        }
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl fmt::Debug for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocumentId({})", self.encode())
    }
}

impl FromStr for DocumentId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for DocumentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> serde::Deserialize<'de> for DocumentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        Self::parse_any(&s).map_err(serde::de::Error::custom)
    }
}

/// A parsed `automerge:` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutomergeUrl {
    pub document_id: DocumentId,
    /// Heads pinned by the URL (`#h1|h2`), if any.
    pub heads: Option<Vec<ChangeHash>>,
}

impl AutomergeUrl {
    pub fn new(document_id: DocumentId) -> Self {
        Self {
            document_id,
            heads: None,
        }
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        let rest = s
            .strip_prefix(URL_PREFIX)
            .ok_or_else(|| IdError::NotAutomergeUrl(s.to_owned()))?;
        let mut parts = rest.split('#');
        let id = parts.next().unwrap_or_default();
        let heads_section = parts.next();
        if parts.next().is_some() {
            return Err(IdError::MultipleHeadsSections(s.to_owned()));
        }
        let document_id = DocumentId::parse(id)?;
        let heads = match heads_section {
            None => None,
            Some("") => Some(Vec::new()),
            Some(section) => Some(
                section
                    .split('|')
                    .map(decode_head)
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Self { document_id, heads })
    }
}

impl fmt::Display for AutomergeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{URL_PREFIX}{}", self.document_id)?;
        if let Some(heads) = &self.heads {
            f.write_str("#")?;
            for (i, h) in heads.iter().enumerate() {
                if i > 0 {
                    f.write_str("|")?;
                }
                f.write_str(&encode_head(h))?;
            }
        }
        Ok(())
    }
}

/// A change hash as automerge-repo writes it in URLs and `remote-heads-changed`.
pub fn encode_head(h: &ChangeHash) -> String {
    bs58::encode(h.0).with_check().into_string()
}

/// Inverse of [`encode_head`].
pub fn decode_head(s: &str) -> Result<ChangeHash, IdError> {
    if s.len() > 64 {
        return Err(IdError::BadHead(s.chars().take(64).collect()));
    }
    let bytes = bs58::decode(s)
        .with_check(None)
        .into_vec()
        .map_err(|_| IdError::BadHead(s.to_owned()))?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| IdError::BadHead(s.to_owned()))?;
    Ok(ChangeHash(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips_through_bs58check_and_url() {
        let id = DocumentId::from_bytes([7; 16]);
        let s = id.encode();
        assert_eq!(DocumentId::parse(&s), Ok(id));
        assert_eq!(id.url(), format!("automerge:{s}"));
        assert_eq!(DocumentId::parse_any(&id.url()), Ok(id));
        let url = AutomergeUrl {
            document_id: id,
            heads: Some(vec![ChangeHash([1; 32]), ChangeHash([2; 32])]),
        };
        assert_eq!(AutomergeUrl::parse(&url.to_string()), Ok(url));
    }

    #[test]
    fn known_vector_matches_automerge_repo() {
        // The all-zero UUID, as bs58check, is what automerge-repo prints for it.
        let id = DocumentId::from_bytes([0; 16]);
        let s = id.encode();
        assert!(s.starts_with("1111111111111111"), "{s}");
        assert_eq!(DocumentId::parse(&s).map(|d| *d.as_bytes()), Ok([0; 16]));
    }

    #[test]
    fn bad_ids_are_refused_with_reasons() {
        assert_eq!(DocumentId::parse(""), Err(IdError::Empty));
        assert!(matches!(
            DocumentId::parse("0OIl"),
            Err(IdError::NotBs58Check(_))
        ));
        let mut s = DocumentId::from_bytes([9; 16]).encode();
        // Flip the last character: the checksum no longer matches.
        let last = s.pop().unwrap_or('1');
        s.push(if last == '2' { '3' } else { '2' });
        assert!(matches!(
            DocumentId::parse(&s),
            Err(IdError::NotBs58Check(_))
        ));
        let eight = bs58::encode([1u8; 8]).with_check().into_string();
        assert_eq!(DocumentId::parse(&eight), Err(IdError::WrongLength(8)));
        assert!(matches!(
            AutomergeUrl::parse("automerge:abc#x#y"),
            Err(IdError::MultipleHeadsSections(_))
        ));
        assert!(matches!(
            AutomergeUrl::parse("http://x"),
            Err(IdError::NotAutomergeUrl(_))
        ));
        assert!(DocumentId::parse(&"1".repeat(100)).is_err());
    }
}
