//! Where blob bytes live: the narrow [`BlobStore`] trait and its backends.
//!
//! The handlers and the pipeline see only this trait, so a deployment that
//! outgrows one machine swaps [`FsBlobStore`] for an S3-compatible backend
//! (one object per [`BlobKey::object_name`]) without touching them.
//! [`MemBlobStore`] keeps everything in memory for tests; both run the same
//! conformance suite.
//!
//! Architecture invariant: every key is built from a validated
//! [`Sha256Hex`], so no request can name a path of its own choosing.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::{self, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;

use axum::body::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::Sha256Hex;

/// A stream of a stored object's bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// What every store method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Which rendition of a photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The uploaded bytes, exactly.
    Original,
    /// A small JPEG for lists (`?size=thumb`).
    Thumb,
    /// A screen-sized JPEG (`?size=preview`).
    Preview,
}

impl Variant {
    /// The name used in object names and `?size=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Original => "original",
            Variant::Thumb => "thumb",
            Variant::Preview => "preview",
        }
    }
}

/// Names one stored object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobKey {
    pub sha256: Sha256Hex,
    pub variant: Variant,
}

impl BlobKey {
    /// The uploaded bytes of `sha256`.
    pub fn original(sha256: Sha256Hex) -> Self {
        Self {
            sha256,
            variant: Variant::Original,
        }
    }

    /// A rendition of `sha256`.
    pub fn new(sha256: Sha256Hex, variant: Variant) -> Self {
        Self { sha256, variant }
    }

    /// A relative, slash-separated object name: `original/ab/cd/abcd…`.
    /// Two levels of fan-out keep directories small on file systems.
    pub fn object_name(&self) -> String {
        let h = self.sha256.as_str();
        let ext = match self.variant {
            Variant::Original => "",
            Variant::Thumb | Variant::Preview => ".jpg",
        };
        format!(
            "{}/{}/{}/{h}{ext}",
            self.variant.as_str(),
            &h[..2],
            &h[2..4]
        )
    }
}

/// Why the store failed. Always a server-side problem (a 500), never the
/// client's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob store I/O error at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("blob store task failed: {0}")]
    Task(String),
    #[error("stored object {name} is {len} bytes, more than the {max} allowed here")]
    TooLarge { name: String, len: u64, max: u64 },
}

impl StoreError {
    fn io(path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The narrow interface of blob storage. Objects are immutable once put:
/// a key always names the same bytes (content addressing), so `put_*` may
/// overwrite and readers never see a partial object.
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Moves the finished local file `src` into the store as `key`; `src`
    /// is gone afterwards. Atomic and durable when it returns `Ok`.
    fn put_file<'a>(&'a self, key: &'a BlobKey, src: &'a Path) -> StoreFuture<'a, ()>;

    /// Stores `bytes` as `key`. Atomic and durable when it returns `Ok`.
    fn put_bytes<'a>(&'a self, key: &'a BlobKey, bytes: Vec<u8>) -> StoreFuture<'a, ()>;

    /// The object's length, or `None` if it is not stored.
    fn len<'a>(&'a self, key: &'a BlobKey) -> StoreFuture<'a, Option<u64>>;

    /// The whole object in memory, refusing objects over `max_bytes`.
    fn get<'a>(&'a self, key: &'a BlobKey, max_bytes: u64) -> StoreFuture<'a, Option<Vec<u8>>>;

    /// Bytes `range` (end exclusive, within the object) as a stream, or
    /// `None` if the object is not stored.
    fn open_range<'a>(
        &'a self,
        key: &'a BlobKey,
        range: Range<u64>,
    ) -> StoreFuture<'a, Option<ByteStream>>;

    /// Removes the object; removing a missing object is not an error.
    fn delete<'a>(&'a self, key: &'a BlobKey) -> StoreFuture<'a, ()>;
}

/// Objects as files under one folder (the default; `<data_dir>/blobs`).
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// A store rooted at `root`, created if needed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tmp")).map_err(|e| StoreError::io(&root, e))?;
        Ok(Self { root })
    }

    /// The folder holding the objects.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `key` lives on disk.
    pub fn path_of(&self, key: &BlobKey) -> PathBuf {
        self.root.join(key.object_name())
    }

    /// A fresh name in the store's own temporary folder (same file system
    /// as the objects, so the final rename is atomic).
    fn temp_path(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string())
    }
}

/// `rename` then fsync the parent folder, so the new name survives a crash.
fn publish(tmp: &Path, dest: &Path) -> Result<(), StoreError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
    std::fs::rename(tmp, dest).map_err(|e| StoreError::io(dest, e))?;
    sync_dir(parent)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Writes `bytes` to `tmp` durably, then publishes it as `dest`.
fn write_atomically(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let result = (|| {
        let mut f = std::fs::File::create(tmp).map_err(|e| StoreError::io(tmp, e))?;
        f.write_all(bytes).map_err(|e| StoreError::io(tmp, e))?;
        f.sync_all().map_err(|e| StoreError::io(tmp, e))?;
        publish(tmp, dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

impl BlobStore for FsBlobStore {
    fn put_file<'a>(&'a self, key: &'a BlobKey, src: &'a Path) -> StoreFuture<'a, ()> {
        let dest = self.path_of(key);
        let tmp = self.temp_path();
        let src = src.to_owned();
        Box::pin(blocking(move || {
            // The upload folder is normally on the same file system: then
            // the move is one rename. Otherwise copy into our own temporary
            // folder first so the object still appears atomically.
            let parent = dest.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
            match std::fs::rename(&src, &dest) {
                Ok(()) => sync_dir(parent),
                Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                    let copied = std::fs::copy(&src, &tmp)
                        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                        .map_err(|e| StoreError::io(&tmp, e));
                    if let Err(e) = copied {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e);
                    }
                    publish(&tmp, &dest)?;
                    std::fs::remove_file(&src).map_err(|e| StoreError::io(&src, e))
                }
                Err(e) => Err(StoreError::io(&dest, e)),
            }
        }))
    }

    fn put_bytes<'a>(&'a self, key: &'a BlobKey, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        let dest = self.path_of(key);
        let tmp = self.temp_path();
        Box::pin(blocking(move || write_atomically(&tmp, &dest, &bytes)))
    }

    fn len<'a>(&'a self, key: &'a BlobKey) -> StoreFuture<'a, Option<u64>> {
        let path = self.path_of(key);
        Box::pin(async move {
            match tokio::fs::metadata(&path).await {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::io(&path, e)),
            }
        })
    }

    fn get<'a>(&'a self, key: &'a BlobKey, max_bytes: u64) -> StoreFuture<'a, Option<Vec<u8>>> {
        let path = self.path_of(key);
        let name = key.object_name();
        Box::pin(async move {
            let mut file = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(StoreError::io(&path, e)),
            };
            let len = file
                .metadata()
                .await
                .map_err(|e| StoreError::io(&path, e))?
                .len();
            if len > max_bytes {
                return Err(StoreError::TooLarge {
                    name,
                    len,
                    max: max_bytes,
                });
            }
            let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            file.read_to_end(&mut buf)
                .await
                .map_err(|e| StoreError::io(&path, e))?;
            Ok(Some(buf))
        })
    }

    fn open_range<'a>(
        &'a self,
        key: &'a BlobKey,
        range: Range<u64>,
    ) -> StoreFuture<'a, Option<ByteStream>> {
        let path = self.path_of(key);
        Box::pin(async move {
            let mut file = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(StoreError::io(&path, e)),
            };
            file.seek(SeekFrom::Start(range.start))
                .await
                .map_err(|e| StoreError::io(&path, e))?;
            let limited = file.take(range.end.saturating_sub(range.start));
            let stream: ByteStream = Box::pin(tokio_util::io::ReaderStream::with_capacity(
                limited,
                64 * 1024,
            ));
            Ok(Some(stream))
        })
    }

    fn delete<'a>(&'a self, key: &'a BlobKey) -> StoreFuture<'a, ()> {
        let path = self.path_of(key);
        Box::pin(async move {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StoreError::io(&path, e)),
            }
        })
    }
}

/// Objects in memory; for tests and as the reference behaviour.
#[derive(Debug, Default)]
pub struct MemBlobStore {
    objects: Mutex<HashMap<BlobKey, Bytes>>,
}

impl MemBlobStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BlobKey, Bytes>> {
        self.objects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl BlobStore for MemBlobStore {
    fn put_file<'a>(&'a self, key: &'a BlobKey, src: &'a Path) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let bytes = tokio::fs::read(src)
                .await
                .map_err(|e| StoreError::io(src, e))?;
            tokio::fs::remove_file(src)
                .await
                .map_err(|e| StoreError::io(src, e))?;
            self.lock().insert(key.clone(), Bytes::from(bytes));
            Ok(())
        })
    }

    fn put_bytes<'a>(&'a self, key: &'a BlobKey, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.lock().insert(key.clone(), Bytes::from(bytes));
            Ok(())
        })
    }

    fn len<'a>(&'a self, key: &'a BlobKey) -> StoreFuture<'a, Option<u64>> {
        Box::pin(async move { Ok(self.lock().get(key).map(|b| b.len() as u64)) })
    }

    fn get<'a>(&'a self, key: &'a BlobKey, max_bytes: u64) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            match self.lock().get(key) {
                None => Ok(None),
                Some(b) if b.len() as u64 > max_bytes => Err(StoreError::TooLarge {
                    name: key.object_name(),
                    len: b.len() as u64,
                    max: max_bytes,
                }),
                Some(b) => Ok(Some(b.to_vec())),
            }
        })
    }

    fn open_range<'a>(
        &'a self,
        key: &'a BlobKey,
        range: Range<u64>,
    ) -> StoreFuture<'a, Option<ByteStream>> {
        Box::pin(async move {
            let Some(bytes) = self.lock().get(key).cloned() else {
                return Ok(None);
            };
            let len = bytes.len();
            let start = usize::try_from(range.start).unwrap_or(len).min(len);
            let end = usize::try_from(range.end).unwrap_or(len).clamp(start, len);
            let part = bytes.slice(start..end);
            let stream: ByteStream = Box::pin(futures_util::stream::iter([Ok(part)]));
            Ok(Some(stream))
        })
    }

    fn delete<'a>(&'a self, key: &'a BlobKey) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.lock().remove(key);
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn key(byte: u8, variant: Variant) -> BlobKey {
        BlobKey::new(Sha256Hex::of(&[byte]), variant)
    }

    async fn collect(stream: ByteStream) -> Vec<u8> {
        let parts: Vec<io::Result<Bytes>> = stream.collect().await;
        parts
            .into_iter()
            .flat_map(|p| p.unwrap().to_vec())
            .collect()
    }

    /// What every backend must do.
    async fn conformance(store: &dyn BlobStore, scratch: &Path) {
        let original = key(1, Variant::Original);
        assert_eq!(store.len(&original).await.unwrap(), None);
        assert!(store.get(&original, 1 << 20).await.unwrap().is_none());
        assert!(store.open_range(&original, 0..1).await.unwrap().is_none());

        let src = scratch.join("upload.part");
        std::fs::write(&src, b"0123456789").unwrap();
        store.put_file(&original, &src).await.unwrap();
        assert!(!src.exists(), "put_file consumes its source");
        assert_eq!(store.len(&original).await.unwrap(), Some(10));
        assert_eq!(
            store.get(&original, 10).await.unwrap().unwrap(),
            b"0123456789"
        );
        assert!(matches!(
            store.get(&original, 9).await,
            Err(StoreError::TooLarge {
                len: 10,
                max: 9,
                ..
            })
        ));
        let part = store.open_range(&original, 2..5).await.unwrap().unwrap();
        assert_eq!(collect(part).await, b"234");
        let tail = store.open_range(&original, 7..10).await.unwrap().unwrap();
        assert_eq!(collect(tail).await, b"789");

        // Renditions are separate objects.
        let thumb = key(1, Variant::Thumb);
        assert_eq!(store.len(&thumb).await.unwrap(), None);
        store.put_bytes(&thumb, b"thumb".to_vec()).await.unwrap();
        assert_eq!(store.len(&thumb).await.unwrap(), Some(5));
        // Putting the same key again replaces it whole.
        store.put_bytes(&thumb, b"thumb2".to_vec()).await.unwrap();
        assert_eq!(store.get(&thumb, 100).await.unwrap().unwrap(), b"thumb2");

        store.delete(&thumb).await.unwrap();
        store.delete(&thumb).await.unwrap();
        assert_eq!(store.len(&thumb).await.unwrap(), None);
        assert_eq!(store.len(&original).await.unwrap(), Some(10));
    }

    #[tokio::test]
    async fn the_file_system_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path().join("blobs")).unwrap();
        conformance(&store, dir.path()).await;
        // Objects fan out by hash prefix; the temporary folder is empty.
        let k = key(1, Variant::Original);
        let h = k.sha256.as_str().to_owned();
        assert_eq!(
            store.path_of(&k),
            dir.path()
                .join("blobs/original")
                .join(&h[..2])
                .join(&h[2..4])
                .join(&h)
        );
        assert_eq!(
            std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn the_memory_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        conformance(&MemBlobStore::new(), dir.path()).await;
    }

    #[test]
    fn object_names_are_built_from_the_hash_only() {
        let k = BlobKey::new(Sha256Hex::of(b"x"), Variant::Thumb);
        let name = k.object_name();
        assert!(name.starts_with("thumb/"));
        assert!(name.ends_with(".jpg"));
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'/' || b"thumbjpg.".contains(&b))
        );
    }
}
