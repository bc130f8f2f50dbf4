//! Photo uploads with tus 1.0, after the documents are synced.
//!
//! Each queued photo is sent in chunks of `upload_chunk_bytes`; the offset
//! the server confirms is saved after every chunk, so an upload cut at any
//! byte resumes where the server stopped (a `HEAD` asks it where that is).
//! The server's `GET /api/v1/blobs/missing` decides what to send: a photo
//! it already holds (from another tablet of the team, say) is not sent
//! again, and one it reports missing after an upload is sent again.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::error::{FieldError, Result};
use crate::http::{ServerApi, UploadMeta};
use crate::photo::sha256_hex;
use crate::store::PhotoRow;
use crate::sync::Listener;
use crate::tablet::Shared;
use crate::types::SyncProgress;

/// Offset mismatches tolerated per photo before giving up for this sync.
const MAX_RESYNCS: u32 = 5;

/// What the upload step did.
#[derive(Debug, Default)]
pub(crate) struct Uploaded {
    pub uploaded: u32,
    pub bytes: u64,
    pub warnings: Vec<String>,
}

pub(crate) async fn upload_pending(
    shared: &Arc<Shared>,
    api: &ServerApi,
    token: &str,
    listener: &Listener,
    progress: &mut SyncProgress,
) -> Result<Uploaded> {
    let mut done = Uploaded::default();
    // Which photos the server lacks. Without the endpoint, send all pending.
    let missing = match api.missing_blobs(token).await {
        Ok(m) => Some(m),
        Err(FieldError::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    let photos = shared.with_engine(|e, _| e.store().photos()).await??;
    // Inspections whose every change the server confirmed: only their
    // photo references are surely known to the server.
    let confirmed: BTreeSet<String> = shared
        .with_engine(|e, _| -> Result<BTreeSet<String>> {
            let mut out = BTreeSet::new();
            for id in e.document_ids() {
                if e.pending_changes(id)? == 0 {
                    out.insert(id.encode());
                }
            }
            Ok(out)
        })
        .await??;
    if let Some(m) = &missing {
        let lacking: BTreeSet<&str> = m.missing.iter().map(String::as_str).collect();
        for p in &photos {
            let server_lacks = lacking.contains(p.sha256.as_str());
            let sha = p.sha256.clone();
            if p.is_uploaded() && server_lacks {
                // Lost on the server after an upload: send again.
                shared
                    .with_engine(move |e, _| e.store().mark_not_uploaded(&sha))
                    .await??;
            } else if !p.is_uploaded()
                && !server_lacks
                && !m.truncated
                && confirmed.contains(&p.inspection_id)
            {
                // The server holds it already (another tablet sent the same
                // bytes). A truncated list proves nothing about the rest.
                shared
                    .with_engine(move |e, now| e.store().mark_uploaded(&sha, now))
                    .await??;
            }
        }
    }
    let pending: Vec<PhotoRow> = shared
        .with_engine(|e, _| e.store().photos())
        .await??
        .into_iter()
        .filter(|p| !p.is_uploaded())
        .collect();
    progress.photos_total = u32::try_from(pending.len()).unwrap_or(u32::MAX);
    progress.photos_done = 0;
    emit(listener, progress);
    for p in pending {
        match upload_one(shared, api, token, &p, listener, progress).await {
            Ok(sent) => {
                done.uploaded += 1;
                done.bytes += sent;
                progress.photos_done += 1;
                emit(listener, progress);
            }
            Err(e) => {
                let text = e.to_string();
                let sha = p.sha256.clone();
                let t = text.clone();
                shared
                    .with_engine(move |e, _| e.store().set_photo_error(&sha, Some(&t)))
                    .await??;
                // Network trouble ends this attempt (it is retried); a
                // problem with one photo does not stop the others.
                if e.is_transient() || matches!(e, FieldError::NeedsLogin(_)) {
                    return Err(e);
                }
                done.warnings
                    .push(format!("photo {} was not uploaded: {text}", p.sha256));
            }
        }
    }
    Ok(done)
}

fn emit(listener: &Listener, p: &SyncProgress) {
    if let Some(l) = listener {
        l.on_progress(p.clone());
    }
}

/// Uploads one photo; returns the bytes sent in this call.
async fn upload_one(
    shared: &Arc<Shared>,
    api: &ServerApi,
    token: &str,
    row: &PhotoRow,
    listener: &Listener,
    progress: &mut SyncProgress,
) -> Result<u64> {
    let path = shared.engine().store().blob_path(&row.sha256);
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        FieldError::Photo(format!(
            "the bytes of photo {} are gone from this device ({e}); take the photo again",
            row.sha256
        ))
    })?;
    if sha256_hex(&bytes) != row.sha256 {
        return Err(FieldError::Photo(format!(
            "the stored bytes of photo {} are damaged (their hash differs); take the photo again",
            row.sha256
        )));
    }
    let length = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    let chunk = shared.config.upload_chunk_bytes.max(1);
    let (mut url, mut offset) = resume_point(shared, api, token, row, length).await?;
    let mut sent = 0u64;
    let mut resyncs = 0;
    while offset < length {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = usize::try_from(offset.saturating_add(chunk).min(length)).unwrap_or(bytes.len());
        let body = bytes.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| {
            FieldError::Server(format!(
                "the server claims offset {offset} of a {length}-byte photo"
            ))
        })?;
        match api.tus_patch(token, &url, offset, body).await {
            Ok(new_offset) if new_offset > offset && new_offset <= length => {
                sent += new_offset - offset;
                progress.bytes_uploaded += new_offset - offset;
                offset = new_offset;
                let sha = row.sha256.clone();
                shared
                    .with_engine(move |e, _| e.store().set_uploaded_offset(&sha, new_offset))
                    .await??;
                emit(listener, progress);
            }
            Ok(other) => {
                return Err(FieldError::Server(format!(
                    "the server answered offset {other} after a chunk sent at {offset}"
                )));
            }
            // The server's offset differs from ours: ask it, and go on from there.
            Err(FieldError::Sync(_)) if resyncs < MAX_RESYNCS => {
                resyncs += 1;
                (url, offset) = resume_point(shared, api, token, row, length).await?;
            }
            Err(e) => return Err(e),
        }
    }
    let sha = row.sha256.clone();
    shared
        .with_engine(move |e, now| e.store().mark_uploaded(&sha, now))
        .await??;
    Ok(sent)
}

/// Where to continue: the saved upload and the server's offset for it, or
/// a new upload from byte 0.
async fn resume_point(
    shared: &Arc<Shared>,
    api: &ServerApi,
    token: &str,
    row: &PhotoRow,
    length: u64,
) -> Result<(String, u64)> {
    let saved = shared
        .with_engine({
            let sha = row.sha256.clone();
            move |e, _| e.store().photo(&sha)
        })
        .await??
        .and_then(|p| p.upload_url);
    if let Some(url) = saved
        && let Some(offset) = api.tus_offset(token, &url).await?
        && offset <= length
    {
        return Ok((url, offset));
    }
    let meta = UploadMeta {
        sha256: &row.sha256,
        mime: &row.mime,
        filename: &format!("{}.{}", row.sha256, extension(&row.mime)),
    };
    let url = api.tus_create(token, length, &meta).await?;
    let (sha, u) = (row.sha256.clone(), url.clone());
    shared
        .with_engine(move |e, _| e.store().set_upload_url(&sha, Some(&u)))
        .await??;
    Ok((url, 0))
}

fn extension(mime: &str) -> &'static str {
    match mime {
        "image/png" => "png",
        "image/webp" => "webp",
        _ => "jpg",
    }
}
