//! Photos and evidence: tus 1.0 resumable uploads into a content-addressed
//! blob store, served back only to those who may read them.
//!
//! - [`tus`]: `/api/v1/uploads` — `OPTIONS`, `POST` (creation), `HEAD`,
//!   `PATCH`, `DELETE` (termination); unfinished uploads expire and are
//!   swept.
//! - [`http`]: `GET /api/v1/blobs/{sha256}[?size=thumb|preview]` (strong
//!   `ETag`, immutable caching, `Range`) and `GET /api/v1/blobs/missing`.
//! - [`pipeline`]: hash check, type sniffing, header size check, EXIF,
//!   decoding with limits, renditions; [`exif`] the EXIF facts.
//! - [`store`]: the narrow [`BlobStore`] trait; files under the data folder
//!   by default.
//! - [`access`]: who may read which blob, in one function.
//!
//! The life of a photo: `POST` records the declared length and sha256;
//! `PATCH`es append to `<data_dir>/uploads/<id>.part`, each fsynced before
//! the new offset is recorded and acknowledged; when the last byte arrives
//! the file is hashed, sniffed, size-checked, its EXIF stored and its
//! pixels decoded (at most `decode_concurrency` at once); only then does it
//! move into the store and get a `blobs` row. Thumbnails and previews are
//! made afterwards, off the request path, from the image already decoded
//! (and again on demand if they are missing). Anything refused is deleted
//! with its upload: nothing reaches the store unverified.
//!
//! Architecture invariant: a blob's bytes are reachable only through
//! [`access::may_read`] (or by whoever uploaded them), and the refusal is
//! indistinguishable from "not stored".

pub mod access;
pub mod error;
pub mod exif;
#[cfg(any(test, feature = "test-fixtures"))]
pub mod fixtures;
pub mod http;
pub mod pipeline;
pub mod store;
pub mod tus;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use image::DynamicImage;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::AppState;
use crate::db::{Db, DbError};
use crate::settings::{BlobSettings, Settings};
pub use error::BlobError;
use pipeline::Limits;
pub use store::{BlobKey, BlobStore, FsBlobStore, MemBlobStore, Variant};

/// A sha256 as 64 lowercase hex digits: the name of a blob.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// Accepts exactly 64 hex digits (either case; stored lowercase).
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(s.to_ascii_lowercase()))
    }

    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    /// The 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Hex({})", self.0)
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An upload's id: 32 lowercase hex digits (a random UUID). Anything else
/// in a URL is "no such upload" before the file system is touched.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    /// A fresh random id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Accepts exactly 32 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadId({})", self.0)
    }
}

/// A folder the blob service could not create.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the folder {path}: {source}")]
pub struct OpenError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Uploads, the store and the pipeline's limits; shared by every request.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: BlobSettings,
    uploads_dir: PathBuf,
    store: Arc<dyn BlobStore>,
    /// One permit per concurrent decode: decoding is what costs memory.
    decodes: Arc<Semaphore>,
    locks: tus::UploadLocks,
}

impl BlobService {
    /// The default service: uploads in `<data_dir>/uploads`, blobs as files
    /// in `settings.blobs_dir()`.
    pub fn open(settings: &Settings) -> Result<Self, OpenError> {
        let dir = settings.blobs_dir();
        let store = FsBlobStore::open(&dir).map_err(|e| OpenError {
            path: dir.clone(),
            source: match e {
                store::StoreError::Io { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            },
        })?;
        Self::new(
            settings.blobs.clone(),
            settings.uploads_dir(),
            Arc::new(store),
        )
    }

    /// A service over any store.
    pub fn new(
        settings: BlobSettings,
        uploads_dir: PathBuf,
        store: Arc<dyn BlobStore>,
    ) -> Result<Self, OpenError> {
        std::fs::create_dir_all(&uploads_dir).map_err(|source| OpenError {
            path: uploads_dir.clone(),
            source,
        })?;
        let decodes = Arc::new(Semaphore::new(settings.decode_concurrency.max(1)));
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                uploads_dir,
                store,
                decodes,
                locks: tus::UploadLocks::default(),
            }),
        })
    }

    /// The `[blobs]` settings.
    pub fn settings(&self) -> &BlobSettings {
        &self.inner.settings
    }

    /// The blob store.
    pub fn store(&self) -> &dyn BlobStore {
        self.inner.store.as_ref()
    }

    /// The folder of unfinished uploads.
    pub fn uploads_dir(&self) -> &Path {
        &self.inner.uploads_dir
    }

    /// The pipeline limits from the settings.
    pub fn limits(&self) -> Limits {
        Limits {
            max_side: self.inner.settings.max_image_side,
            max_decode_bytes: self.inner.settings.max_decode_bytes,
        }
    }

    /// Decodes running now (for tests and metrics).
    pub fn decodes_in_flight(&self) -> usize {
        self.inner.settings.decode_concurrency.max(1) - self.inner.decodes.available_permits()
    }

    /// Waits for a decode slot.
    async fn decode_permit(&self) -> Result<OwnedSemaphorePermit, BlobError> {
        Arc::clone(&self.inner.decodes)
            .acquire_owned()
            .await
            .map_err(|e| BlobError::Task(e.to_string()))
    }

    /// Makes both renditions of `sha256` from its decoded `img`, holding the
    /// decode `permit` until done (the image is the memory it accounts for).
    async fn store_renditions(
        &self,
        sha256: &Sha256Hex,
        img: DynamicImage,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), BlobError> {
        let (thumb_px, preview_px) = (self.inner.settings.thumb_px, self.inner.settings.preview_px);
        let made = tokio::task::spawn_blocking(move || {
            let made = pipeline::renditions(&img, thumb_px, preview_px);
            drop(img);
            made
        })
        .await
        .map_err(|e| BlobError::Task(e.to_string()))?;
        drop(permit);
        let (thumb, preview) = made?;
        let store = self.store();
        store
            .put_bytes(&BlobKey::new(sha256.clone(), Variant::Thumb), thumb)
            .await?;
        store
            .put_bytes(&BlobKey::new(sha256.clone(), Variant::Preview), preview)
            .await?;
        Ok(())
    }

    /// Makes the renditions of a stored original if `variant` is missing
    /// (after a restart, or when a request beats the background job).
    pub async fn ensure_rendition(
        &self,
        sha256: &Sha256Hex,
        variant: Variant,
    ) -> Result<(), BlobError> {
        let key = BlobKey::new(sha256.clone(), variant);
        if variant == Variant::Original || self.store().len(&key).await?.is_some() {
            return Ok(());
        }
        let permit = self.decode_permit().await?;
        // Someone may have made it while we waited.
        if self.store().len(&key).await?.is_some() {
            return Ok(());
        }
        let original = self
            .store()
            .get(
                &BlobKey::original(sha256.clone()),
                self.inner.settings.max_upload_bytes,
            )
            .await?
            .ok_or(BlobError::BlobNotFound)?;
        let limits = self.limits();
        let expected = sha256.clone();
        let img = tokio::task::spawn_blocking(move || {
            let inspected = pipeline::inspect(&original, &expected, &limits)?;
            pipeline::decode(&original, inspected.kind, &limits)
        })
        .await
        .map_err(|e| BlobError::Task(e.to_string()))?
        .map_err(BlobError::Pipeline)?;
        self.store_renditions(sha256, img, permit).await
    }

    /// Starts the sweeper that deletes expired uploads every
    /// `cleanup_interval_secs`; it stops when the database closes.
    pub fn spawn_cleanup(&self, db: Db) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        let every = std::time::Duration::from_secs(self.inner.settings.cleanup_interval_secs);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                match service.sweep(&db, crate::clock::now().as_second()).await {
                    Ok(report) if report.removed > 0 => {
                        tracing::info!(removed = report.removed, "expired uploads removed");
                    }
                    Ok(_) => {}
                    Err(BlobError::Db(DbError::WriterStopped | DbError::Closed)) => break,
                    Err(e) => tracing::warn!(error = %e, "sweeping expired uploads failed"),
                }
            }
        })
    }
}

/// The routes under `/api/v1`: tus uploads (with their own body handling:
/// the JSON body limit does not apply, bodies are streamed to disk and
/// bounded by `Upload-Length`) and blob reads.
pub fn routes() -> Router<AppState> {
    let uploads = Router::new()
        .route("/uploads", post(tus::create).options(tus::options))
        .route(
            "/uploads/{id}",
            axum::routing::head(tus::head)
                .patch(tus::patch)
                .delete(tus::terminate)
                .options(tus::options),
        )
        .layer(axum::middleware::map_response(tus::tus_response_headers))
        .layer(DefaultBodyLimit::disable());
    let blobs = Router::new()
        .route("/blobs/missing", get(http::missing))
        .route("/blobs/{sha256}", get(http::get_blob));
    uploads.merge(blobs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn service(dir: &Path) -> BlobService {
        let settings = BlobSettings {
            decode_concurrency: 2,
            ..BlobSettings::default()
        };
        BlobService::new(settings, dir.join("uploads"), Arc::new(MemBlobStore::new())).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_two_decodes_run_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = service(dir.path());
        let photo = fixtures::jpeg(600, 400);
        let sha = Sha256Hex::of(&photo);
        blobs
            .store()
            .put_bytes(&BlobKey::original(sha.clone()), photo)
            .await
            .unwrap();
        // Both slots taken: a rendition cannot be made.
        let first = blobs.decode_permit().await.unwrap();
        let second = blobs.decode_permit().await.unwrap();
        assert_eq!(blobs.decodes_in_flight(), 2);
        let task = tokio::spawn({
            let blobs = blobs.clone();
            let sha = sha.clone();
            async move { blobs.ensure_rendition(&sha, Variant::Thumb).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let thumb = BlobKey::new(sha.clone(), Variant::Thumb);
        assert_eq!(blobs.store().len(&thumb).await.unwrap(), None);
        assert!(!task.is_finished());
        // One slot frees: the waiting decode runs.
        drop(first);
        task.await.unwrap().unwrap();
        assert!(blobs.store().len(&thumb).await.unwrap().is_some());
        let preview = BlobKey::new(sha, Variant::Preview);
        assert!(blobs.store().len(&preview).await.unwrap().is_some());
        drop(second);
        assert_eq!(blobs.decodes_in_flight(), 0);
    }

    #[test]
    fn blob_settings_are_validated() {
        let mut s = Settings::default();
        s.validate().unwrap();
        assert_eq!(s.blobs_dir(), PathBuf::from("./data/blobs"));
        assert_eq!(s.uploads_dir(), PathBuf::from("./data/uploads"));
        s.blobs.thumb_px = 2000;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("blobs.thumb_px"), "{err}");
        s.blobs.thumb_px = 256;
        s.blobs.max_upload_bytes = 0;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("blobs.max_upload_bytes"), "{err}");
    }

    #[test]
    fn hashes_and_ids_accept_only_their_own_shape() {
        let h = Sha256Hex::of(b"abc");
        assert_eq!(
            h.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            Sha256Hex::parse(&h.as_str().to_uppercase()),
            Some(h.clone())
        );
        for bad in [
            "",
            "../etc/passwd",
            &h.as_str()[1..],
            &format!("{}0", h.as_str()),
        ] {
            assert_eq!(Sha256Hex::parse(bad), None, "{bad}");
        }
        assert_eq!(Sha256Hex::parse(&format!("{}g", &h.as_str()[1..])), None);

        let id = UploadId::generate();
        assert_eq!(UploadId::parse(id.as_str()), Some(id.clone()));
        for bad in [
            "..%2F..%2Fkiemtra.sqlite3",
            "../../kiemtra.sqlite3",
            "0123456789abcdef0123456789ABCDEF",
            "0123456789abcdef0123456789abcde/",
            "",
        ] {
            assert_eq!(UploadId::parse(bad), None, "{bad}");
        }
    }
}
