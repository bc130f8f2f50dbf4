//! [`Tablet`]: the library API a tablet app calls (the FFI object and the
//! `kiemtra-field` command line are thin wrappers of it).
//!
//! A tablet is one store directory. Opening it loads every document into
//! the engine; every edit is one automerge change written through
//! `sync-core`'s typed writers, committed to the store before the call
//! returns. Network work (login, sync, uploads) runs on the tablet's own
//! tokio runtime: the `*_async` methods can be awaited from any runtime, the
//! plain ones block the calling thread (call them off the UI thread).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use automerge::{ObjType, ROOT, ReadDoc, ScalarValue, Value};
use sync_core::DocumentId;
use sync_core::access::PeerInfo;
use sync_core::model::{self, Answer, DocKind, Finding, MemberRole, PhotoRef, Severity};
use sync_core::policy::Role;
use sync_core::template::Template;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::answer;
use crate::clock::{Clock, SystemClock};
use crate::engine::Engine;
use crate::error::{FieldError, Result};
use crate::http::ServerApi;
use crate::photo::{self, PhotoOptions};
use crate::rebase;
use crate::store::{DeviceStore, PhotoRow, Session, WorkRow};
use crate::sync::{self, Listener, Rng, XorShift};
use crate::types::*;

/// Settings key: the user's `index` document.
pub(crate) const KEY_INDEX_DOC: &str = "index_doc";
/// Settings key: the deployment's `catalog` document.
pub(crate) const KEY_CATALOG_DOC: &str = "catalog_doc";

/// State shared by the API and the sync tasks.
pub(crate) struct Shared {
    pub config: TabletConfig,
    pub clock: Arc<dyn Clock>,
    engine: Mutex<Engine>,
    /// One sync session at a time.
    pub sync_lock: tokio::sync::Mutex<()>,
    pub next_conn: AtomicU64,
    pub rng: Mutex<Box<dyn Rng>>,
    background: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The engine, even if a thread panicked while holding it (the engine
    /// is left consistent by every operation: the store is the truth).
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Runs `f` on the engine from async code without blocking a runtime
    /// worker on SQLite.
    pub async fn with_engine<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Engine, i64) -> R + Send + 'static,
    ) -> Result<R> {
        let shared = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let now = shared.now_ms();
            let mut engine = shared.engine();
            f(&mut engine, now)
        })
        .await
        .map_err(|e| FieldError::Storage(format!("a device store task failed: {e}")))
    }

    pub fn session(&self) -> Result<Option<Session>> {
        self.engine().store().session()
    }

    pub fn api(&self, server_url: &str) -> Result<ServerApi> {
        ServerApi::new(
            server_url,
            Duration::from_millis(self.config.http_timeout_ms.max(1)),
        )
    }
}

/// A tablet: one device store and its sync client.
pub struct Tablet {
    shared: Arc<Shared>,
    runtime: Option<Runtime>,
}

impl fmt::Debug for Tablet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tablet")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Drop for Tablet {
    fn drop(&mut self) {
        if let Some(task) = self
            .shared
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
        // Never blocks, so a tablet may be dropped inside any async context.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Tablet {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path, config: TabletConfig) -> Result<Tablet> {
        Self::open_with(
            dir,
            config,
            Arc::new(SystemClock),
            Box::new(XorShift::from_entropy()),
        )
    }

    /// Like [`Tablet::open`], with an injected clock and jitter source.
    pub fn open_with(
        dir: &Path,
        config: TabletConfig,
        clock: Arc<dyn Clock>,
        rng: Box<dyn Rng>,
    ) -> Result<Tablet> {
        let store = DeviceStore::open(dir, config.passphrase.as_deref())?;
        let engine = Engine::open(store, clock.now_ms())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kiemtra-field")
            .enable_all()
            .build()
            .map_err(|e| FieldError::Storage(format!("cannot start the sync threads: {e}")))?;
        Ok(Tablet {
            shared: Arc::new(Shared {
                config,
                clock,
                engine: Mutex::new(engine),
                sync_lock: tokio::sync::Mutex::new(()),
                next_conn: AtomicU64::new(1),
                rng: Mutex::new(rng),
                background: Mutex::new(None),
            }),
            runtime: Some(runtime),
        })
    }

    pub fn config(&self) -> &TabletConfig {
        &self.shared.config
    }

    pub fn device_id(&self) -> String {
        self.shared.engine().store().identity().device_id.clone()
    }

    fn runtime(&self) -> Result<&Runtime> {
        self.runtime
            .as_ref()
            .ok_or_else(|| FieldError::Storage("the tablet is closing".into()))
    }

    /// Runs `fut` on the tablet's runtime; awaitable from any runtime.
    fn spawn<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> impl Future<Output = Result<T>> + Send + 'static {
        let handle = self.runtime().map(|rt| rt.spawn(fut));
        async move {
            handle?
                .await
                .map_err(|e| FieldError::Sync(format!("a background task failed: {e}")))?
        }
    }

    /// Runs `fut` on the tablet's runtime and waits for it on this thread.
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime()?.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| FieldError::Sync("a background task stopped without an answer".into()))?
    }

    // ----- session ---------------------------------------------------------------

    /// Who is signed in, and whether the tokens are still usable.
    pub fn session(&self) -> Result<SessionInfo> {
        let engine = self.shared.engine();
        let device_id = engine.store().identity().device_id.clone();
        Ok(session_info(device_id, engine.store().session()?))
    }

    /// Logs in (or in again after a `NeedsLogin`). Unsynced work stays.
    pub fn login(&self, server_url: &str, username: &str, password: &str) -> Result<SessionInfo> {
        self.block(sync::login(
            Arc::clone(&self.shared),
            server_url.to_owned(),
            username.to_owned(),
            password.to_owned(),
        ))
    }

    pub fn login_async(
        &self,
        server_url: &str,
        username: &str,
        password: &str,
    ) -> impl Future<Output = Result<SessionInfo>> + Send + 'static {
        self.spawn(sync::login(
            Arc::clone(&self.shared),
            server_url.to_owned(),
            username.to_owned(),
            password.to_owned(),
        ))
    }

    /// Forgets the tokens on this device (documents and photos stay).
    pub fn logout(&self) -> Result<SessionInfo> {
        let now = self.shared.now_ms();
        self.shared.engine().store().clear_tokens(now)?;
        self.session()
    }

    // ----- sync --------------------------------------------------------------------

    /// Syncs now: documents, then photos; retries with backoff on network
    /// failures. Blocks until done.
    pub fn sync_now(&self, listener: Listener) -> Result<SyncReport> {
        self.block(sync::sync(Arc::clone(&self.shared), listener))
    }

    pub fn sync_async(
        &self,
        listener: Listener,
    ) -> impl Future<Output = Result<SyncReport>> + Send + 'static {
        self.spawn(sync::sync(Arc::clone(&self.shared), listener))
    }

    /// Syncs every `interval_ms` (and backs off after failures) until
    /// stopped. Stops by itself when the server asks for a new login.
    pub fn start_background_sync(&self, interval_ms: u64, listener: Listener) -> Result<()> {
        let mut slot = self
            .shared
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.take() {
            old.abort();
        }
        let task = self.runtime()?.spawn(sync::background(
            Arc::clone(&self.shared),
            interval_ms,
            listener,
        ));
        *slot = Some(task);
        Ok(())
    }

    pub fn stop_background_sync(&self) {
        if let Some(task) = self
            .shared
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }

    // ----- reading -------------------------------------------------------------------

    /// The inspections in the user's index, with what the device knows of each.
    pub fn assignments(&self) -> Result<Vec<Assignment>> {
        let user = self.shared.session()?.map(|s| s.user_id);
        let mut engine = self.shared.engine();
        let index_entries = index_entries(&engine, user.as_deref());
        let mut ids: Vec<(DocumentId, Option<String>)> = index_entries
            .into_iter()
            .filter(|(_, e)| e.kind == DocKind::Inspection)
            .map(|(id, e)| (id, e.title))
            .collect();
        if ids.is_empty() {
            // No index yet (never synced, or an old server): every held inspection.
            ids = engine
                .documents_of_kind(DocKind::Inspection)
                .into_iter()
                .map(|id| (id, None))
                .collect();
        }
        let mut out = Vec::new();
        for (id, title) in ids {
            out.push(assignment(&mut engine, id, title, user.as_deref())?);
        }
        out.sort_by(|a, b| {
            (a.scheduled_date.as_deref(), a.unit_code.as_deref(), &a.id).cmp(&(
                b.scheduled_date.as_deref(),
                b.unit_code.as_deref(),
                &b.id,
            ))
        });
        Ok(out)
    }

    /// Resolves what the user typed as an inspection: a document id, an
    /// `automerge:` URL, or the unit code of exactly one assignment.
    pub fn resolve_inspection(&self, text: &str) -> Result<DocumentId> {
        if let Ok(id) = DocumentId::parse_any(text.trim()) {
            return Ok(id);
        }
        let matches: Vec<Assignment> = self
            .assignments()?
            .into_iter()
            .filter(|a| a.unit_code.as_deref() == Some(text.trim()))
            .collect();
        match matches.as_slice() {
            [one] => DocumentId::parse(&one.id)
                .map_err(|e| FieldError::Storage(format!("bad id in the index: {e}"))),
            [] => Err(FieldError::NotFound(format!(
                "{text:?} is neither an inspection id nor the unit code of an assignment; see `assignments`"
            ))),
            _ => Err(FieldError::InvalidInput(format!(
                "unit {text:?} has several inspections; give the inspection id"
            ))),
        }
    }

    /// One inspection, whole.
    pub fn inspection(&self, id: &str) -> Result<InspectionDetail> {
        let id = self.resolve_inspection(id)?;
        let user = self.shared.session()?.map(|s| s.user_id);
        let mut engine = self.shared.engine();
        inspection_detail(&mut engine, id, user.as_deref())
    }

    /// Conflicts in one inspection, or in every inspection held.
    pub fn conflicts(&self, inspection: Option<&str>) -> Result<Vec<ConflictView>> {
        let ids = match inspection {
            Some(text) => vec![self.resolve_inspection(text)?],
            None => self.shared.engine().documents_of_kind(DocKind::Inspection),
        };
        let engine = self.shared.engine();
        let mut out = Vec::new();
        for id in ids {
            let doc = engine.document(&id).ok_or_else(|| not_on_device(id))?;
            for c in model::conflicts(doc) {
                out.push(conflict_view(id, c));
            }
        }
        Ok(out)
    }

    /// Review decisions and comments of an inspection.
    pub fn review(&self, inspection: &str) -> Result<ReviewView> {
        let d = self.inspection(inspection)?;
        Ok(ReviewView {
            inspection_id: d.id,
            status: d.status,
            decisions: d.decisions,
            comments: d.comments,
        })
    }

    /// The corrective actions held on this device.
    pub fn actions(&self) -> Result<Vec<ActionView>> {
        let engine = self.shared.engine();
        let mut out = Vec::new();
        for id in engine.documents_of_kind(DocKind::Action) {
            let Some(doc) = engine.document(&id) else {
                continue;
            };
            let a = model::read_action(doc)?;
            out.push(ActionView {
                id: id.encode(),
                inspection_id: a.assignment.inspection_id.encode(),
                finding_id: a.assignment.finding_id.clone(),
                unit_code: a.assignment.unit_code.clone(),
                title: a.assignment.title.clone(),
                due_date: a.assignment.due_date.clone(),
                priority: a.assignment.priority.as_str().to_owned(),
                status: a.status().as_str().to_owned(),
                responses: a
                    .responses
                    .iter()
                    .map(|(rid, r)| ActionResponseView {
                        id: rid.clone(),
                        text: r.text.clone(),
                        evidence: r.evidence.iter().cloned().collect(),
                        done: r.done,
                        by: r.by.clone(),
                        at_ms: r.at,
                    })
                    .collect(),
                verifications: a
                    .verifications
                    .iter()
                    .map(|(vid, v)| VerificationView {
                        id: vid.clone(),
                        decision: v.decision.as_str().to_owned(),
                        note: v.note.clone(),
                        by: v.by.clone(),
                        at_ms: v.at,
                    })
                    .collect(),
            });
        }
        out.sort_by(|a, b| (&a.due_date, &a.id).cmp(&(&b.due_date, &b.id)));
        Ok(out)
    }

    /// Every local document, its heads and what the server has not confirmed.
    pub fn status(&self) -> Result<DeviceStatus> {
        let session = self.session()?;
        let engine = self.shared.engine();
        let photos = engine.store().photos()?;
        let mut documents = Vec::new();
        let mut total = 0u32;
        for (id, stored_kind) in engine.store().documents()? {
            let kind = engine
                .document(&id)
                .and_then(|d| model::kind_of(d).ok())
                .map_or(stored_kind, |k| k.as_str().to_owned());
            let heads = engine
                .document(&id)
                .map(|d| d.get_heads().iter().map(|h| h.to_string()).collect())
                .unwrap_or_default();
            let pending = u32::try_from(engine.pending_changes(id)?).unwrap_or(u32::MAX);
            total = total.saturating_add(pending);
            let enc = id.encode();
            documents.push(DocumentStatus {
                pending_photos: photos
                    .iter()
                    .filter(|p| p.inspection_id == enc && !p.is_uploaded())
                    .map(|p| p.sha256.clone())
                    .collect(),
                id: enc,
                kind,
                heads,
                pending_changes: pending,
                last_synced_ms: engine.store().sync_mark_time(id)?,
            });
        }
        let pending_photos =
            u32::try_from(photos.iter().filter(|p| !p.is_uploaded()).count()).unwrap_or(u32::MAX);
        Ok(DeviceStatus {
            session,
            documents,
            photos: photos
                .iter()
                .map(|p| PhotoStatus {
                    sha256: p.sha256.clone(),
                    inspection_id: p.inspection_id.clone(),
                    bytes: p.bytes,
                    uploaded_offset: p.uploaded_offset,
                    uploaded: p.is_uploaded(),
                    last_error: p.last_error.clone(),
                })
                .collect(),
            pending_changes: total,
            pending_photos,
        })
    }

    // ----- refused work ------------------------------------------------------------------

    /// Work the server refused that is not on the server: kept on this
    /// device, each piece with the reason. Pieces that need no choice are
    /// written again automatically after each sync; the others stay here
    /// until [`Tablet::rebase`] succeeds for them.
    pub fn refused(&self) -> Result<Vec<RefusedView>> {
        let engine = self.shared.engine();
        refused_views(&engine, None)
    }

    /// Tries again to write the refused work of one inspection (or other
    /// document) on top of the server's state, every piece checked as a
    /// new edit. Sync afterwards to upload what was written.
    pub fn rebase(&self, inspection: &str) -> Result<RebaseReport> {
        let id = self.resolve_inspection(inspection)?;
        let who = self.writer()?;
        let now = self.shared.now_ms();
        let mut engine = self.shared.engine();
        let done = rebase::rebase_document(&mut engine, &who, id, true, now)?;
        Ok(RebaseReport {
            document_id: id.encode(),
            reapplied: done.reapplied,
            refused: refused_views(&engine, Some(id))?,
        })
    }

    // ----- writing ---------------------------------------------------------------------

    /// Who writes: the signed-in user (also after the tokens expired), as
    /// the server will see them. Every edit is checked for this identity.
    fn writer(&self) -> Result<PeerInfo> {
        let engine = self.shared.engine();
        writer_of(&engine)
    }

    /// Answers an item. `value` is text as [`crate::answer`] describes it.
    pub fn answer(
        &self,
        inspection: &str,
        item_id: &str,
        value: &str,
        fields: HashMap<String, String>,
        note: Option<String>,
    ) -> Result<AnswerView> {
        self.write_answer(inspection, item_id, value, fields, note, false)
    }

    /// Settles a conflicted answer (team lead): writes `value` over every
    /// concurrent value. The history keeps them all.
    pub fn settle(
        &self,
        inspection: &str,
        item_id: &str,
        value: &str,
        fields: HashMap<String, String>,
        note: Option<String>,
    ) -> Result<AnswerView> {
        self.write_answer(inspection, item_id, value, fields, note, true)
    }

    fn write_answer(
        &self,
        inspection: &str,
        item_id: &str,
        value: &str,
        fields: HashMap<String, String>,
        note: Option<String>,
        settle: bool,
    ) -> Result<AnswerView> {
        let id = self.resolve_inspection(inspection)?;
        let who = self.writer()?;
        let by = who.user_id.clone();
        let now = self.shared.now_ms();
        let fields: BTreeMap<String, String> = fields.into_iter().collect();
        let mut engine = self.shared.engine();
        let template = template_of(&mut engine, id)?;
        let parsed = answer::parse_and_check(&template, item_id, value, &fields)?;
        let doc = engine.document(&id).ok_or_else(|| not_on_device(id))?;
        if settle {
            if role_of(doc, &by) != Some(MemberRole::Lead) {
                return Err(FieldError::NotAllowed(
                    "only the team lead of this inspection settles conflicts".into(),
                ));
            }
            let conflicted = model::conflicts(doc)
                .iter()
                .any(|c| c.item_id.as_deref() == Some(item_id));
            if !conflicted {
                return Err(FieldError::InvalidInput(format!(
                    "item {item_id} has no conflict to settle; sync first, or answer it normally"
                )));
            }
        }
        // Evidence already attached stays attached across re-answers.
        let registry = engine.registry()?.clone();
        let evidence: BTreeSet<String> = engine
            .document(&id)
            .and_then(|d| model::read_inspection(d, &registry).ok())
            .and_then(|i| i.answers.get(item_id).map(|a| a.evidence.clone()))
            .unwrap_or_default();
        let ans = Answer {
            value: parsed,
            fields,
            evidence,
            note: note.filter(|n| !n.trim().is_empty()),
            by,
            at: now,
        };
        let item = item_id.to_owned();
        let written = ans.clone();
        engine.edit(id, &who, now, move |tx| {
            if settle {
                model::settle_answer(tx, &item, &written)
            } else {
                model::set_answer(tx, &item, &written)
            }
        })?;
        Ok(answer_view(&ans))
    }

    /// Adds a finding; returns its id.
    pub fn add_finding(&self, inspection: &str, finding: NewFinding) -> Result<String> {
        let id = self.resolve_inspection(inspection)?;
        let who = self.writer()?;
        let by = who.user_id.clone();
        let now = self.shared.now_ms();
        let severity = parse_severity(&finding.severity)?;
        if finding.title.trim().is_empty() {
            return Err(FieldError::InvalidInput("a finding needs a title".into()));
        }
        let mut engine = self.shared.engine();
        if let Some(item) = &finding.item_id {
            let template = template_of(&mut engine, id)?;
            if template.item(item).is_none() {
                return Err(FieldError::NotFound(format!(
                    "item {item:?} is not in template {}",
                    template.key()
                )));
            }
        }
        let finding_id = uuid::Uuid::now_v7().to_string();
        let f = Finding {
            item_id: finding.item_id,
            title: finding.title,
            note: finding.note,
            severity,
            photos: BTreeSet::new(),
            by,
            at: now,
            deleted: false,
        };
        let fid = finding_id.clone();
        engine.edit(id, &who, now, move |tx| model::add_finding(tx, &fid, &f))?;
        Ok(finding_id)
    }

    /// Edits a finding: title, severity, note (as splices), tombstone.
    pub fn edit_finding(
        &self,
        inspection: &str,
        finding_id: &str,
        edit: FindingEdit,
    ) -> Result<()> {
        let id = self.resolve_inspection(inspection)?;
        let who = self.writer()?;
        let now = self.shared.now_ms();
        let severity = edit.severity.as_deref().map(parse_severity).transpose()?;
        if edit.title.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(FieldError::InvalidInput(
                "a finding's title cannot be empty".into(),
            ));
        }
        let mut engine = self.shared.engine();
        let doc = engine.document(&id).ok_or_else(|| not_on_device(id))?;
        let current = finding_note(doc, finding_id).ok_or_else(|| {
            FieldError::NotFound(format!("finding {finding_id:?} is not in this inspection"))
        })?;
        let fid = finding_id.to_owned();
        engine.edit(id, &who, now, move |tx| {
            if let Some(t) = &edit.title {
                model::update_finding_title(tx, &fid, t)?;
            }
            if let Some(s) = severity {
                model::update_finding_severity(tx, &fid, s)?;
            }
            let mut note = current;
            if let Some(new) = &edit.note {
                let (pos, del, ins) = minimal_splice(&note, new);
                if del > 0 || !ins.is_empty() {
                    model::splice_finding_note(tx, &fid, pos, del, &ins)?;
                }
                note = new.clone();
            }
            if let Some(extra) = &edit.append_note {
                model::splice_finding_note(tx, &fid, note.chars().count(), 0, extra)?;
            }
            match edit.deleted {
                Some(true) => model::delete_finding(tx, &fid)?,
                Some(false) => model::restore_finding(tx, &fid)?,
                None => {}
            }
            Ok(())
        })
    }

    /// Adds a photo from an image file: re-encoded to the configured size,
    /// hashed, kept in the blob folder, recorded in the inspection, queued
    /// for upload.
    pub fn add_photo(
        &self,
        inspection: &str,
        file: &Path,
        target: PhotoTarget,
    ) -> Result<AddedPhoto> {
        let id = self.resolve_inspection(inspection)?;
        let who = self.writer()?;
        let by = who.user_id.clone();
        let cfg = &self.shared.config;
        let opts = PhotoOptions {
            max_side_px: cfg.photo_max_side_px,
            max_bytes: cfg.photo_max_bytes,
            jpeg_quality: cfg.photo_jpeg_quality,
        };
        // The slow part, outside the engine lock.
        let prepared = photo::prepare_file(file, &opts)?;
        let now = self.shared.now_ms();
        let mut engine = self.shared.engine();
        if let Some(item) = &target.item_id {
            let template = template_of(&mut engine, id)?;
            if template.item(item).is_none() {
                return Err(FieldError::NotFound(format!(
                    "item {item:?} is not in template {}",
                    template.key()
                )));
            }
        }
        if let Some(f) = &target.finding_id {
            let doc = engine.document(&id).ok_or_else(|| not_on_device(id))?;
            if finding_note(doc, f).is_none() {
                return Err(FieldError::NotFound(format!(
                    "finding {f:?} is not in this inspection"
                )));
            }
        }
        photo::write_blob(&engine.store().blob_path(&prepared.sha256), &prepared.bytes)?;
        let bytes = u64::try_from(prepared.bytes.len()).unwrap_or(u64::MAX);
        engine.store().queue_photo(&PhotoRow {
            sha256: prepared.sha256.clone(),
            inspection_id: id.encode(),
            mime: prepared.mime.as_str().to_owned(),
            bytes,
            added_at_ms: now,
            upload_url: None,
            uploaded_offset: 0,
            uploaded_at_ms: None,
            last_error: None,
        })?;
        let photo_ref = PhotoRef {
            sha256: prepared.sha256.clone(),
            mime: prepared.mime,
            bytes,
            width: Some(prepared.width),
            height: Some(prepared.height),
            taken_at: None,
            item_id: target.item_id,
            finding_id: target.finding_id.clone(),
            caption: target.caption.filter(|c| !c.trim().is_empty()),
            by,
            at: now,
            deleted: false,
        };
        let sha = prepared.sha256.clone();
        engine.edit(id, &who, now, move |tx| {
            model::add_photo(tx, &photo_ref)?;
            if let Some(f) = &target.finding_id {
                model::add_finding_photo(tx, f, &sha)?;
            }
            Ok(())
        })?;
        Ok(AddedPhoto {
            sha256: prepared.sha256,
            mime: prepared.mime.as_str().to_owned(),
            bytes,
            width: prepared.width,
            height: prepared.height,
            reencoded: prepared.reencoded,
        })
    }

    /// Hands the inspection in; returns the submission id.
    pub fn submit(&self, inspection: &str, note: Option<String>) -> Result<String> {
        let id = self.resolve_inspection(inspection)?;
        let who = self.writer()?;
        let by = who.user_id.clone();
        let now = self.shared.now_ms();
        let sid = uuid::Uuid::now_v7().to_string();
        let s = sid.clone();
        let note = note.filter(|n| !n.trim().is_empty());
        self.shared.engine().edit(id, &who, now, move |tx| {
            model::submit(tx, &s, &by, now, note.as_deref())
        })?;
        Ok(sid)
    }

    /// The raw bytes of a photo held on this device.
    pub fn photo_bytes(&self, sha256: &str) -> Result<Vec<u8>> {
        if !model::format::is_sha256(sha256) {
            return Err(FieldError::InvalidInput(format!(
                "{sha256:?} is not a sha256 (64 lowercase hex characters)"
            )));
        }
        let path = self.shared.engine().store().blob_path(sha256);
        std::fs::read(&path)
            .map_err(|_| FieldError::NotFound(format!("photo {sha256} is not on this device")))
    }
}

// ----- helpers -----------------------------------------------------------------------

/// The identity local edits are checked with: the signed-in user (kept
/// when the tokens expire) on this device.
pub(crate) fn peer_info(device_id: &str, s: &Session) -> Result<PeerInfo> {
    let role = Role::parse(&s.role).ok_or_else(|| {
        FieldError::NotAllowed(format!(
            "the server gave {} the role {:?}, which this app does not know; update the app",
            s.username, s.role
        ))
    })?;
    Ok(PeerInfo {
        user_id: s.user_id.clone(),
        role,
        team_id: s.team_id.clone(),
        unit_code: s.unit_code.clone(),
        device_id: device_id.to_owned(),
    })
}

/// [`peer_info`] of the engine's store, or "log in" when nobody has.
pub(crate) fn writer_of(engine: &Engine) -> Result<PeerInfo> {
    let session = engine.store().session()?.ok_or_else(|| {
        FieldError::NeedsLogin(
            "nobody has logged in on this device yet; log in once (then work offline)".into(),
        )
    })?;
    peer_info(&engine.store().identity().device_id, &session)
}

/// The refused work of one document (or all), as shown.
pub(crate) fn refused_views(engine: &Engine, doc: Option<DocumentId>) -> Result<Vec<RefusedView>> {
    Ok(engine
        .store()
        .work(doc, false)?
        .into_iter()
        .map(refused_view)
        .collect())
}

fn refused_view(w: WorkRow) -> RefusedView {
    RefusedView {
        document_id: w.doc_id.encode(),
        refusal_id: w.refusal_id,
        piece: w.piece,
        kind: w.kind,
        label: w.label,
        state: w.state.as_str().to_owned(),
        rule: w.rule,
        path: w.path.filter(|p| !p.is_empty()),
        reason: w.reason,
        refused_at_ms: w.refused_at_ms,
    }
}

pub(crate) fn session_info(device_id: String, s: Option<Session>) -> SessionInfo {
    match s {
        None => SessionInfo {
            state: SessionState::LoggedOut,
            device_id,
            server_url: None,
            username: None,
            user_id: None,
            role: None,
            team_id: None,
        },
        Some(s) => SessionInfo {
            state: if s.refresh_token.is_some() || s.access_token.is_some() {
                SessionState::LoggedIn
            } else {
                SessionState::NeedsLogin
            },
            device_id,
            server_url: Some(s.server_url),
            username: Some(s.username),
            user_id: Some(s.user_id),
            role: Some(s.role),
            team_id: s.team_id,
        },
    }
}

fn not_on_device(id: DocumentId) -> FieldError {
    FieldError::NotFound(format!(
        "inspection {id} is not on this device yet; sync first"
    ))
}

fn parse_severity(s: &str) -> Result<Severity> {
    let t = s.trim().to_lowercase();
    let mapped = match t.as_str() {
        "thấp" | "thap" => "low",
        "trung bình" | "trung binh" => "medium",
        "cao" => "high",
        other => other,
    };
    Severity::parse(mapped).ok_or_else(|| {
        FieldError::InvalidInput(format!(
            "severity {s:?} is not one of: low, medium, high (thấp, trung bình, cao)"
        ))
    })
}

/// The entries of the user's index (the first index held when the user is unknown).
pub(crate) fn index_entries(
    engine: &Engine,
    user_id: Option<&str>,
) -> Vec<(DocumentId, model::IndexEntry)> {
    let mut indexes: Vec<model::Index> = engine
        .documents_of_kind(DocKind::Index)
        .iter()
        .filter_map(|id| engine.document(id))
        .filter_map(|d| model::read_index(d).ok())
        .collect();
    if let Some(user) = user_id {
        indexes.retain(|i| i.user_id == user);
    }
    indexes
        .into_iter()
        .next()
        .map(|i| i.documents.into_iter().collect())
        .unwrap_or_default()
}

/// `header.<key>` as a string, read directly (works without the template).
fn header_str(doc: &impl ReadDoc, key: &str) -> Option<String> {
    let (_, h) = doc
        .get(ROOT, "header")
        .ok()
        .flatten()
        .filter(|(v, _)| matches!(v, Value::Object(ObjType::Map)))?;
    match doc.get(&h, key).ok().flatten()? {
        (Value::Scalar(s), _) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            ScalarValue::Uint(n) => Some(n.to_string()),
            ScalarValue::Int(n) => Some(n.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// The template an inspection names in its header.
pub(crate) fn template_ref_of(doc: &automerge::Automerge) -> Option<(String, u32)> {
    template_ref(doc)
}

fn template_ref(doc: &impl ReadDoc) -> Option<(String, u32)> {
    let id = header_str(doc, "template_id")?;
    let version = header_str(doc, "template_version")?.parse().ok()?;
    Some((id, version))
}

fn template_of(engine: &mut Engine, id: DocumentId) -> Result<Template> {
    let doc = engine.document(&id).ok_or_else(|| not_on_device(id))?;
    if model::kind_of(doc).ok() != Some(DocKind::Inspection) {
        return Err(FieldError::NotFound(format!(
            "document {id} is not an inspection"
        )));
    }
    let (tid, version) = template_ref(doc).ok_or_else(|| {
        FieldError::Storage(format!("inspection {id} names no template in its header"))
    })?;
    engine
        .registry()?
        .get(&tid, version)
        .cloned()
        .ok_or_else(|| {
            FieldError::NotFound(format!(
                "template {tid}@{version} is not on this device; sync to fetch it"
            ))
        })
}

/// The user's role in an inspection's team.
fn role_of(doc: &impl ReadDoc, user_id: &str) -> Option<MemberRole> {
    let (_, h) = doc.get(ROOT, "header").ok().flatten()?;
    let (_, m) = doc.get(&h, "members").ok().flatten()?;
    match doc.get(&m, user_id).ok().flatten()? {
        (Value::Scalar(s), _) => s.as_str().and_then(MemberRole::parse),
        _ => None,
    }
}

/// The current note of a finding (None when the finding does not exist).
fn finding_note(doc: &impl ReadDoc, finding_id: &str) -> Option<String> {
    let (_, findings) = doc.get(ROOT, "findings").ok().flatten()?;
    let (v, f) = doc.get(&findings, finding_id).ok().flatten()?;
    if !matches!(v, Value::Object(ObjType::Map)) {
        return None;
    }
    match doc.get(&f, "note").ok().flatten() {
        Some((Value::Object(ObjType::Text), note)) => doc.text(&note).ok(),
        _ => Some(String::new()),
    }
}

/// The smallest single splice turning `old` into `new`, in characters:
/// (position, characters deleted, text inserted). Editing only the changed
/// span keeps a colleague's concurrent edits elsewhere in the note.
pub fn minimal_splice(old: &str, new: &str) -> (usize, usize, String) {
    let a: Vec<char> = old.chars().collect();
    let b: Vec<char> = new.chars().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let max_suffix = a.len().min(b.len()) - prefix;
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(max_suffix)
        .take_while(|(x, y)| x == y)
        .count();
    let del = a.len() - prefix - suffix;
    let ins: String = b[prefix..b.len() - suffix].iter().collect();
    (prefix, del, ins)
}

fn answer_view(a: &Answer) -> AnswerView {
    AnswerView {
        value: answer::format_value(&a.value),
        fields: a.fields.clone().into_iter().collect(),
        evidence: a.evidence.iter().cloned().collect(),
        note: a.note.clone(),
        by: a.by.clone(),
        at_ms: a.at,
    }
}

fn conflict_view(id: DocumentId, c: model::Conflict) -> ConflictView {
    let is_answer = c.path.starts_with("answers/");
    ConflictView {
        inspection_id: id.encode(),
        path: c.path,
        item_id: c.item_id,
        finding_id: c.finding_id,
        values: c
            .values
            .into_iter()
            .map(|v| ConflictValueView {
                value_json: v.value.to_string(),
                value: if is_answer {
                    answer_text(&v.value["value"])
                } else {
                    None
                },
                author: v.author,
                at_ms: v.at,
                actor: v.actor,
            })
            .collect(),
    }
}

/// An answer value rendered as JSON, in the text form `answer` accepts.
fn answer_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Object(o) => match (o.get("numerator"), o.get("denominator")) {
            (Some(n), Some(d)) => Some(format!("{n}/{d}")),
            _ => Some(v.to_string()),
        },
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn assignment(
    engine: &mut Engine,
    id: DocumentId,
    title: Option<String>,
    user: Option<&str>,
) -> Result<Assignment> {
    let mut a = Assignment {
        id: id.encode(),
        url: id.url(),
        on_device: false,
        title,
        unit_code: None,
        unit_name: None,
        scheduled_date: None,
        template_id: None,
        template_version: None,
        status: None,
        my_role: None,
        items_total: 0,
        items_answered: 0,
        findings: 0,
        photos: 0,
        conflicts: 0,
        pending_changes: u32::try_from(engine.pending_changes(id)?).unwrap_or(u32::MAX),
    };
    let Some(doc) = engine.document(&id) else {
        return Ok(a);
    };
    a.on_device = true;
    a.unit_code = header_str(doc, "unit_code");
    a.unit_name = header_str(doc, "unit_name");
    a.scheduled_date = header_str(doc, "scheduled_date");
    if let Some((t, v)) = template_ref(doc) {
        a.template_id = Some(t);
        a.template_version = Some(v);
    }
    a.my_role = user
        .and_then(|u| role_of(doc, u))
        .map(|r| r.as_str().to_owned());
    a.conflicts = u32::try_from(model::conflicts(doc).len()).unwrap_or(u32::MAX);
    let registry = engine.registry()?.clone();
    let Some(doc) = engine.document(&id) else {
        return Ok(a);
    };
    if let Ok(i) = model::read_inspection(doc, &registry) {
        a.status = Some(i.status().as_str().to_owned());
        a.items_answered = u32::try_from(i.answers.len()).unwrap_or(u32::MAX);
        a.findings = u32::try_from(i.live_findings().count()).unwrap_or(u32::MAX);
        a.photos = u32::try_from(i.photos.len()).unwrap_or(u32::MAX);
        if let Some(t) = registry.get(&i.header.template_id, i.header.template_version) {
            a.items_total = u32::try_from(t.items().count()).unwrap_or(u32::MAX);
        }
    }
    Ok(a)
}

fn inspection_detail(
    engine: &mut Engine,
    id: DocumentId,
    user: Option<&str>,
) -> Result<InspectionDetail> {
    let template = template_of(engine, id)?;
    let pending = u32::try_from(engine.pending_changes(id)?).unwrap_or(u32::MAX);
    let registry = engine.registry()?.clone();
    let photos_here: BTreeMap<String, PhotoRow> = engine
        .store()
        .photos()?
        .into_iter()
        .map(|p| (p.sha256.clone(), p))
        .collect();
    let blob_dir = engine.store().dir().join(crate::store::BLOB_DIR);
    let doc = engine.document(&id).ok_or_else(|| not_on_device(id))?;
    let i = model::read_inspection(doc, &registry)?;
    let conflicted: BTreeSet<String> = model::conflicts(doc)
        .into_iter()
        .filter_map(|c| c.item_id)
        .collect();
    let my_role = user
        .and_then(|u| i.header.members.get(u))
        .map(|r| r.as_str().to_owned());
    let mut items = Vec::new();
    for section in &template.sections {
        for item in &section.items {
            items.push(ItemView {
                id: item.id.clone(),
                section_id: section.id.clone(),
                text_vi: item.text_vi.clone(),
                answer_type: item.answer_type.as_str().to_owned(),
                options: item.options.iter().map(|o| o.value.clone()).collect(),
                fields: item.fields.iter().map(|f| f.key.clone()).collect(),
                answer: i.answers.get(&item.id).map(answer_view),
                conflicted: conflicted.contains(&item.id),
            });
        }
    }
    Ok(InspectionDetail {
        id: id.encode(),
        unit_code: i.header.unit_code.clone(),
        unit_name: i.header.unit_name.clone(),
        template_id: i.header.template_id.clone(),
        template_version: i.header.template_version,
        team_id: i.header.team_id.clone(),
        scheduled_date: i.header.scheduled_date.clone(),
        status: i.status().as_str().to_owned(),
        my_role,
        items,
        findings: i
            .findings
            .iter()
            .map(|(fid, f)| FindingView {
                id: fid.clone(),
                item_id: f.item_id.clone(),
                title: f.title.clone(),
                note: f.note.clone(),
                severity: f.severity.as_str().to_owned(),
                photos: f.photos.iter().cloned().collect(),
                by: f.by.clone(),
                at_ms: f.at,
                deleted: f.deleted,
            })
            .collect(),
        photos: i
            .photos
            .values()
            .map(|p| PhotoView {
                sha256: p.sha256.clone(),
                mime: p.mime.as_str().to_owned(),
                bytes: p.bytes,
                width: p.width,
                height: p.height,
                item_id: p.item_id.clone(),
                finding_id: p.finding_id.clone(),
                caption: p.caption.clone(),
                by: p.by.clone(),
                at_ms: p.at,
                on_device: blob_dir.join(&p.sha256).exists(),
                uploaded: photos_here
                    .get(&p.sha256)
                    .is_some_and(PhotoRow::is_uploaded),
            })
            .collect(),
        submissions: i
            .submissions
            .iter()
            .map(|(sid, s)| SubmissionView {
                id: sid.clone(),
                by: s.by.clone(),
                at_ms: s.at,
                note: s.note.clone(),
            })
            .collect(),
        decisions: i
            .decisions
            .iter()
            .map(|(did, d)| DecisionView {
                id: did.clone(),
                state: d.state.as_str().to_owned(),
                by: d.by.clone(),
                at_ms: d.at,
                note: d.note.clone(),
            })
            .collect(),
        comments: i
            .comments
            .iter()
            .map(|(cid, c)| CommentView {
                id: cid.clone(),
                target: c.target.encode(),
                text: c.text.clone(),
                by: c.by.clone(),
                at_ms: c.at,
            })
            .collect(),
        pending_changes: pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_splice_touches_only_the_changed_span() {
        assert_eq!(minimal_splice("abc", "abc"), (3, 0, String::new()));
        assert_eq!(minimal_splice("abc", "abXc"), (2, 0, "X".into()));
        assert_eq!(minimal_splice("abXc", "abc"), (2, 1, String::new()));
        assert_eq!(minimal_splice("", "mới"), (0, 0, "mới".into()));
        assert_eq!(
            minimal_splice("Thiếu biên bản", "Thiếu hai biên bản"),
            (6, 0, "hai ".into())
        );
        assert_eq!(minimal_splice("aaa", "aa"), (2, 1, String::new()));
    }

    #[test]
    fn severities_parse_in_both_languages() {
        assert_eq!(parse_severity("High").ok(), Some(Severity::High));
        assert_eq!(parse_severity("trung bình").ok(), Some(Severity::Medium));
        assert!(matches!(
            parse_severity("urgent"),
            Err(FieldError::InvalidInput(_))
        ));
    }
}
