//! One typed [`Settings`] for the whole server.
//!
//! Layers, later ones winning: defaults in code, then a TOML file (`--config`),
//! then environment variables `KIEMTRA__SECTION__KEY` (for example
//! `KIEMTRA__SERVER__ADDR`, `KIEMTRA__DB__PATH`), then command-line flags.
//! The result is validated once at start and then passed around as state —
//! never read from a global — so tests can build their own.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A value that must never be printed: `Debug` shows `Secret(***)`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Everything the server and the command line need to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Folder holding the database, signing keys and (later) blobs.
    pub data_dir: PathBuf,
    /// Demo mode: seeds Hanoi's units and demo accounts into an empty database.
    pub demo: bool,
    pub server: ServerSettings,
    pub db: DbSettings,
    pub auth: AuthSettings,
    pub sync: SyncSettings,
    pub blobs: BlobSettings,
}

/// The `/sync` WebSocket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// Largest WebSocket message (and frame) accepted, in bytes. Documents
    /// travel whole in one message on first sync, so keep this generous.
    pub max_message_bytes: usize,
    /// Sync messages about one document that change nothing before the
    /// exchange is cut as not converging.
    pub max_rounds_without_progress: u32,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024 * 1024,
            max_rounds_without_progress: 32,
        }
    }
}

/// Photos and evidence: tus uploads, the blob store, the image pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobSettings {
    /// Folder of the content-addressed store; defaults to `<data_dir>/blobs`.
    /// Unfinished uploads always live in `<data_dir>/uploads`.
    pub dir: Option<PathBuf>,
    /// Largest accepted upload (`Tus-Max-Size`), in bytes.
    pub max_upload_bytes: u64,
    /// Seconds an unfinished upload lives after its last byte arrived.
    pub upload_expiry_secs: u64,
    /// Seconds between sweeps that delete expired uploads.
    pub cleanup_interval_secs: u64,
    /// A `PATCH` that receives nothing for this long is ended (what arrived
    /// is kept), so a dead connection cannot hold an upload.
    pub patch_idle_timeout_secs: u64,
    /// Largest width or height of an accepted image, in pixels.
    pub max_image_side: u32,
    /// Most memory one image decode may allocate, in bytes.
    pub max_decode_bytes: u64,
    /// Most images decoded at the same time.
    pub decode_concurrency: usize,
    /// Longest side of `?size=thumb`, in pixels.
    pub thumb_px: u32,
    /// Longest side of `?size=preview`, in pixels.
    pub preview_px: u32,
}

impl Default for BlobSettings {
    fn default() -> Self {
        Self {
            dir: None,
            max_upload_bytes: 64 * 1024 * 1024,
            upload_expiry_secs: 24 * 3600,
            cleanup_interval_secs: 600,
            patch_idle_timeout_secs: 30,
            max_image_side: 8192,
            max_decode_bytes: 320 * 1024 * 1024,
            decode_concurrency: 2,
            thumb_px: 256,
            preview_px: 1280,
        }
    }
}

/// The HTTP listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// `HOST:PORT` to listen on; port 0 picks a free port.
    pub addr: String,
    /// Largest accepted JSON request body, in bytes.
    pub json_body_limit: usize,
}

/// The SQLite store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DbSettings {
    /// Database file; defaults to `<data_dir>/kiemtra.sqlite3`.
    pub path: Option<PathBuf>,
    /// Number of read-only connections in the reader pool.
    pub readers: usize,
    /// How long a connection waits for a lock held by another process.
    pub busy_timeout_ms: u64,
    /// Most write closures committed together in one transaction.
    pub max_batch: usize,
}

/// Accounts, passwords and tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// JWT `iss`.
    pub issuer: String,
    /// JWT `aud`.
    pub audience: String,
    /// Access-token lifetime in seconds (at most 900).
    pub access_token_ttl_secs: u64,
    /// Refresh-token lifetime in days.
    pub refresh_token_ttl_days: u64,
    /// Folder of Ed25519 signing keys; defaults to `<data_dir>/keys`.
    pub keys_dir: Option<PathBuf>,
    /// Most password hashes computed at once (each takes ~19 MiB and a core).
    pub password_hash_concurrency: usize,
    /// Optional server-side secret mixed into every password hash. Changing it
    /// invalidates every stored password.
    pub password_pepper: Option<Secret>,
    /// Login attempts allowed in a burst per account.
    pub login_burst_per_account: u32,
    /// Seconds for one more login attempt per account to become available.
    pub login_refill_secs_per_account: u64,
    /// Login attempts allowed in a burst per client IP address.
    pub login_burst_per_ip: u32,
    /// Seconds for one more login attempt per IP address to become available.
    pub login_refill_secs_per_ip: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            demo: false,
            server: ServerSettings::default(),
            db: DbSettings::default(),
            auth: AuthSettings::default(),
            sync: SyncSettings::default(),
            blobs: BlobSettings::default(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".to_owned(),
            json_body_limit: 64 * 1024,
        }
    }
}

impl Default for DbSettings {
    fn default() -> Self {
        Self {
            path: None,
            readers: 4,
            busy_timeout_ms: 5_000,
            max_batch: 64,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: "kiemtra".to_owned(),
            audience: "kiemtra-api".to_owned(),
            access_token_ttl_secs: 900,
            refresh_token_ttl_days: 30,
            keys_dir: None,
            password_hash_concurrency: 2,
            password_pepper: None,
            login_burst_per_account: 5,
            login_refill_secs_per_account: 60,
            login_burst_per_ip: 30,
            login_refill_secs_per_ip: 2,
        }
    }
}

/// Values given on the command line; they override every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub addr: Option<String>,
    pub demo: bool,
}

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("config file {0} does not exist; check the --config path")]
    MissingFile(PathBuf),
    #[error("cannot read the settings: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid setting `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Settings {
    /// Defaults, then `config_file`, then `KIEMTRA__…` environment variables,
    /// then `overrides`; validated.
    pub fn load(config_file: Option<&Path>, overrides: &Overrides) -> Result<Self, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = config_file {
            if !path.is_file() {
                return Err(SettingsError::MissingFile(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("KIEMTRA__").split("__"));
        let mut settings: Settings = figment.extract().map_err(Box::new)?;
        settings.apply(overrides);
        settings.validate()?;
        Ok(settings)
    }

    /// Defaults with everything under `data_dir`; for tests and tools.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }

    fn apply(&mut self, overrides: &Overrides) {
        if let Some(dir) = &overrides.data_dir {
            self.data_dir.clone_from(dir);
        }
        if let Some(addr) = &overrides.addr {
            self.server.addr.clone_from(addr);
        }
        if overrides.demo {
            self.demo = true;
        }
    }

    /// Checks every value that could otherwise fail late or silently.
    pub fn validate(&self) -> Result<(), SettingsError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> SettingsError {
            SettingsError::Invalid {
                key,
                message: message.into(),
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.server.addr.parse::<SocketAddr>().is_err()
            && !looks_like_host_port(&self.server.addr)
        {
            return Err(invalid(
                "server.addr",
                format!(
                    "`{}` is not HOST:PORT (e.g. 127.0.0.1:8080)",
                    self.server.addr
                ),
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.server.json_body_limit) {
            return Err(invalid(
                "server.json_body_limit",
                "must be between 1024 bytes and 16 MiB",
            ));
        }
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&self.sync.max_message_bytes) {
            return Err(invalid(
                "sync.max_message_bytes",
                "must be between 64 KiB and 1 GiB",
            ));
        }
        if !(4..=10_000).contains(&self.sync.max_rounds_without_progress) {
            return Err(invalid(
                "sync.max_rounds_without_progress",
                "must be between 4 and 10000",
            ));
        }
        self.validate_blobs()?;
        if !(1..=64).contains(&self.db.readers) {
            return Err(invalid("db.readers", "must be between 1 and 64"));
        }
        if !(1..=10_000).contains(&self.db.max_batch) {
            return Err(invalid("db.max_batch", "must be between 1 and 10000"));
        }
        let auth = &self.auth;
        if auth.issuer.trim().is_empty() {
            return Err(invalid("auth.issuer", "must not be empty"));
        }
        if auth.audience.trim().is_empty() {
            return Err(invalid("auth.audience", "must not be empty"));
        }
        if !(1..=900).contains(&auth.access_token_ttl_secs) {
            return Err(invalid(
                "auth.access_token_ttl_secs",
                "must be between 1 and 900 seconds (access tokens are short-lived)",
            ));
        }
        if !(1..=365).contains(&auth.refresh_token_ttl_days) {
            return Err(invalid(
                "auth.refresh_token_ttl_days",
                "must be between 1 and 365",
            ));
        }
        if !(1..=64).contains(&auth.password_hash_concurrency) {
            return Err(invalid(
                "auth.password_hash_concurrency",
                "must be between 1 and 64",
            ));
        }
        if auth
            .password_pepper
            .as_ref()
            .is_some_and(|p| p.expose().len() < 16)
        {
            return Err(invalid(
                "auth.password_pepper",
                "must be at least 16 characters when set",
            ));
        }
        for (key, burst, refill) in [
            (
                "auth.login_burst_per_account",
                auth.login_burst_per_account,
                auth.login_refill_secs_per_account,
            ),
            (
                "auth.login_burst_per_ip",
                auth.login_burst_per_ip,
                auth.login_refill_secs_per_ip,
            ),
        ] {
            if burst == 0 || refill == 0 || refill > 86_400 {
                return Err(invalid(
                    key,
                    "burst must be at least 1 and the refill between 1 and 86400 seconds",
                ));
            }
        }
        Ok(())
    }

    /// Checks the `[blobs]` section.
    fn validate_blobs(&self) -> Result<(), SettingsError> {
        let b = &self.blobs;
        let checks: [(&'static str, bool, &str); 8] = [
            (
                "blobs.max_upload_bytes",
                (1024..=(4u64 << 30)).contains(&b.max_upload_bytes),
                "must be between 1 KiB and 4 GiB",
            ),
            (
                "blobs.upload_expiry_secs",
                (60..=30 * 86_400).contains(&b.upload_expiry_secs),
                "must be between 60 seconds and 30 days",
            ),
            (
                "blobs.cleanup_interval_secs",
                (1..=86_400).contains(&b.cleanup_interval_secs),
                "must be between 1 and 86400 seconds",
            ),
            (
                "blobs.patch_idle_timeout_secs",
                (1..=3_600).contains(&b.patch_idle_timeout_secs),
                "must be between 1 and 3600 seconds",
            ),
            (
                "blobs.max_image_side",
                (64..=65_535).contains(&b.max_image_side),
                "must be between 64 and 65535 pixels",
            ),
            (
                "blobs.max_decode_bytes",
                ((16u64 << 20)..=(8u64 << 30)).contains(&b.max_decode_bytes),
                "must be between 16 MiB and 8 GiB",
            ),
            (
                "blobs.decode_concurrency",
                (1..=64).contains(&b.decode_concurrency),
                "must be between 1 and 64",
            ),
            (
                "blobs.thumb_px",
                (16..=b.preview_px).contains(&b.thumb_px) && b.preview_px <= 8192,
                "thumb_px must be at least 16 and at most preview_px, and preview_px at most 8192",
            ),
        ];
        match checks.into_iter().find(|(_, ok, _)| !ok) {
            Some((key, _, message)) => Err(SettingsError::Invalid {
                key,
                message: message.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// The folder of the content-addressed blob store.
    pub fn blobs_dir(&self) -> PathBuf {
        self.blobs
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("blobs"))
    }

    /// The folder of unfinished uploads.
    pub fn uploads_dir(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.db
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("kiemtra.sqlite3"))
    }

    /// The folder of signing keys.
    pub fn keys_dir(&self) -> PathBuf {
        self.auth
            .keys_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys"))
    }
}

/// `host:port` with a name instead of an IP address (`localhost:8080`).
fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
                && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let s = Settings::default();
        s.validate().unwrap();
        assert_eq!(s.server.addr, "127.0.0.1:8080");
        assert_eq!(s.auth.access_token_ttl_secs, 900);
        assert_eq!(s.db_path(), PathBuf::from("./data/kiemtra.sqlite3"));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let mut s = Settings::default();
        s.auth.password_pepper = Some(Secret::new("very-secret-pepper-value"));
        let text = format!("{s:?}");
        assert!(!text.contains("very-secret-pepper-value"), "{text}");
        assert!(text.contains("Secret(***)"));
    }

    #[test]
    fn toml_file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        std::fs::write(
            &file,
            "data_dir = \"/srv/k\"\n[server]\naddr = \"0.0.0.0:9000\"\n[auth]\naccess_token_ttl_secs = 300\n",
        )
        .unwrap();
        let s = Settings::load(Some(&file), &Overrides::default()).unwrap();
        assert_eq!(s.server.addr, "0.0.0.0:9000");
        assert_eq!(s.auth.access_token_ttl_secs, 300);
        assert_eq!(s.data_dir, PathBuf::from("/srv/k"));
        let s = Settings::load(
            Some(&file),
            &Overrides {
                addr: Some("127.0.0.1:1".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(s.server.addr, "127.0.0.1:1");
    }

    #[test]
    fn too_long_access_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        std::fs::write(&file, "[auth]\naccess_token_ttl_secs = 3600\n").unwrap();
        let err = Settings::load(Some(&file), &Overrides::default()).unwrap_err();
        assert!(
            err.to_string().contains("auth.access_token_ttl_secs"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        std::fs::write(&file, "[server]\nadress = \"x\"\n").unwrap();
        assert!(Settings::load(Some(&file), &Overrides::default()).is_err());
        let missing = dir.path().join("nope.toml");
        assert!(matches!(
            Settings::load(Some(&missing), &Overrides::default()),
            Err(SettingsError::MissingFile(_))
        ));
    }

    #[test]
    fn host_names_are_accepted_as_addresses() {
        assert!(looks_like_host_port("localhost:8080"));
        assert!(!looks_like_host_port("localhost"));
        assert!(!looks_like_host_port(":80"));
    }
}
