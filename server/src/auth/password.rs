//! Password hashing: argon2id with the crate's defaults (19 MiB, 2 passes,
//! 1 lane — OWASP's recommended minimum), an optional server-side pepper,
//! computed on tokio's blocking pool behind a concurrency cap so a burst of
//! logins cannot exhaust memory or starve the runtime.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{OnceCell, Semaphore};

/// Shortest password accepted when one is set.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted (hashing cost grows with length).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Why a password could not be hashed or checked.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password must have at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    #[error("the password must be at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("the stored password hash is malformed: {0}")]
    BadStoredHash(String),
    #[error("the random source failed: {0}")]
    Random(String),
    #[error("password hashing was cancelled (server shutting down)")]
    Cancelled,
}

/// Checks a NEW password against the policy (not used at login).
pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    Ok(())
}

/// Hashes and verifies passwords off the async workers.
#[derive(Debug, Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    pepper: Option<Arc<[u8]>>,
    /// Hash checked for unknown usernames so they take as long as known ones.
    dummy: Arc<OnceCell<String>>,
}

impl Passwords {
    /// At most `concurrency` hashes at once; `pepper` is mixed into every hash.
    pub fn new(concurrency: usize, pepper: Option<&str>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            pepper: pepper.map(|p| Arc::from(p.as_bytes())),
            dummy: Arc::new(OnceCell::new()),
        }
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) for `password`.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(PasswordError::TooLong);
        }
        let pepper = self.pepper.clone();
        self.blocking(move || hash_now(pepper.as_deref(), &password))
            .await
    }

    /// Whether `password` matches `stored`. With `stored = None` (no such
    /// user) it still does the same work and answers `false`.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let (stored, known) = match stored {
            Some(s) => (s, true),
            None => (self.dummy_hash().await?, false),
        };
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(false);
        }
        let pepper = self.pepper.clone();
        let matches = self
            .blocking(move || verify_now(pepper.as_deref(), &password, &stored))
            .await?;
        Ok(matches && known)
    }

    async fn dummy_hash(&self) -> Result<String, PasswordError> {
        self.dummy
            .get_or_try_init(|| async {
                let mut random = [0u8; 24];
                getrandom::getrandom(&mut random)
                    .map_err(|e| PasswordError::Random(e.to_string()))?;
                self.hash(hex::encode(random)).await
            })
            .await
            .cloned()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Cancelled)?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| PasswordError::Cancelled)?
    }
}

fn argon2(pepper: Option<&[u8]>) -> Result<Argon2<'_>, PasswordError> {
    match pepper {
        None => Ok(Argon2::default()),
        Some(secret) => Argon2::new_with_secret(
            secret,
            Algorithm::Argon2id,
            Version::V0x13,
            Params::default(),
        )
        .map_err(|e| PasswordError::Hash(e.to_string())),
    }
}

fn hash_now(pepper: Option<&[u8]>, password: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| PasswordError::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    argon2(pepper)?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

fn verify_now(pepper: Option<&[u8]>, password: &str, stored: &str) -> Result<bool, PasswordError> {
    let parsed =
        PasswordHash::new(stored).map_err(|e| PasswordError::BadStoredHash(e.to_string()))?;
    match argon2(pepper)?.verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(PasswordError::Hash(e.to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let p = Passwords::new(2, None);
        let h = p.hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(
            p.verify("correct horse".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        assert!(!p.verify("wrong horse".into(), Some(h)).await.unwrap());
        // Unknown user: same work, always false.
        assert!(!p.verify("anything".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn the_pepper_is_part_of_the_hash() {
        let with = Passwords::new(1, Some("pepper-pepper-pepper"));
        let without = Passwords::new(1, None);
        let h = with.hash("correct horse".into()).await.unwrap();
        assert!(
            with.verify("correct horse".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        assert!(
            !without
                .verify("correct horse".into(), Some(h))
                .await
                .unwrap()
        );
    }

    #[test]
    fn policy() {
        assert!(matches!(
            check_policy("short"),
            Err(PasswordError::TooShort)
        ));
        assert!(check_policy("long enough").is_ok());
        assert!(matches!(
            check_policy(&"x".repeat(MAX_PASSWORD_BYTES + 1)),
            Err(PasswordError::TooLong)
        ));
    }
}
