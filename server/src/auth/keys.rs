//! The Ed25519 key list that signs and verifies access tokens.
//!
//! Keys live in the keys folder (default `<data>/keys`) as `<kid>.pem`
//! (PKCS#8 PEM, mode 0600). The kid is a UUIDv7 in hex, so names sort by
//! creation time: the newest key signs, every key in the folder verifies.
//! Rotating is therefore "add a new key, restart, delete the old file after
//! the access-token lifetime". On first start the folder is empty and one key
//! is generated from the operating system's random source.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{DecodingKey, EncodingKey};

/// Why the key list could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot use the keys folder {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is not an Ed25519 PKCS#8 PEM private key: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("key file name {0} is not a valid key id (use letters, digits and '-')")]
    BadKid(PathBuf),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

/// One key: its id and both halves in the forms `jsonwebtoken` wants.
struct Entry {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// The signing key and every verifying key, by kid.
pub struct KeyRing {
    active: String,
    keys: BTreeMap<String, Entry>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// Loads every `*.pem` in `dir`, generating a first key if there is none.
    pub fn load_or_create(dir: &Path) -> Result<KeyRing, KeyError> {
        let io = |source| KeyError::Io {
            path: dir.to_owned(),
            source,
        };
        create_private_dir(dir).map_err(io)?;
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pem") {
                continue;
            }
            let kid = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| valid_kid(s))
                .ok_or_else(|| KeyError::BadKid(path.clone()))?
                .to_owned();
            let pem = std::fs::read_to_string(&path).map_err(|source| KeyError::Io {
                path: path.clone(),
                source,
            })?;
            let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::BadKey {
                path: path.clone(),
                message: e.to_string(),
            })?;
            keys.push((kid, key));
        }
        if keys.is_empty() {
            let (kid, key) = generate_key(dir)?;
            tracing::info!(kid = %kid, dir = %dir.display(), "generated a new token signing key");
            keys.push((kid, key));
        }
        Self::from_keys(keys)
    }

    /// A ring from keys in memory; the greatest kid signs.
    pub fn from_keys(keys: Vec<(String, SigningKey)>) -> Result<KeyRing, KeyError> {
        let mut map = BTreeMap::new();
        for (kid, key) in keys {
            let der = key.to_pkcs8_der().map_err(|e| KeyError::BadKey {
                path: PathBuf::from(&kid),
                message: e.to_string(),
            })?;
            map.insert(
                kid,
                Entry {
                    encoding: EncodingKey::from_ed_der(der.as_bytes()),
                    decoding: DecodingKey::from_ed_der(key.verifying_key().as_bytes()),
                },
            );
        }
        let active = map
            .keys()
            .next_back()
            .cloned()
            .ok_or_else(|| KeyError::Random("no key in the ring".into()))?;
        Ok(KeyRing { active, keys: map })
    }

    /// The kid that signs new tokens.
    pub fn active_kid(&self) -> &str {
        &self.active
    }

    /// Every kid accepted when verifying.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    pub(crate) fn encoding_key(&self) -> Option<&EncodingKey> {
        self.keys.get(&self.active).map(|e| &e.encoding)
    }

    pub(crate) fn decoding_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys.get(kid).map(|e| &e.decoding)
    }
}

/// Kids come from file names and token headers: keep them boring.
fn valid_kid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn generate_key(dir: &Path) -> Result<(String, SigningKey), KeyError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let kid = uuid::Uuid::now_v7().simple().to_string();
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::BadKey {
            path: dir.join(&kid),
            message: e.to_string(),
        })?;
    let path = dir.join(format!("{kid}.pem"));
    write_private_file(&path, pem.as_bytes()).map_err(|source| KeyError::Io { path, source })?;
    Ok((kid, key))
}

/// Creates `dir` readable by its owner only (on Unix).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Writes a new file readable by its owner only; never overwrites.
fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn first_start_generates_one_key_and_reloads_it() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let ring = KeyRing::load_or_create(&keys).unwrap();
        let kid = ring.active_kid().to_owned();
        assert_eq!(kid.len(), 32);
        let files: Vec<_> = std::fs::read_dir(&keys).unwrap().collect();
        assert_eq!(files.len(), 1);
        let again = KeyRing::load_or_create(&keys).unwrap();
        assert_eq!(again.active_kid(), kid);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(keys.join(format!("{kid}.pem")))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key file must not be group/world readable");
        }
    }

    #[test]
    fn newest_key_signs_all_verify() {
        let a = SigningKey::from_bytes(&[1; 32]);
        let b = SigningKey::from_bytes(&[2; 32]);
        let ring = KeyRing::from_keys(vec![("0001".into(), a), ("0002".into(), b)]).unwrap();
        assert_eq!(ring.active_kid(), "0002");
        assert_eq!(ring.kids().collect::<Vec<_>>(), ["0001", "0002"]);
        assert!(ring.decoding_key("0001").is_some());
        assert!(ring.decoding_key("0003").is_none());
    }

    #[test]
    fn garbage_key_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("abc.pem"), "not a key").unwrap();
        let err = KeyRing::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, KeyError::BadKey { .. }), "{err}");
    }
}
