//! The sync client: login and token refresh, the automerge-repo exchange
//! over WebSocket, then photo uploads; retries with exponential backoff.
//!
//! One session: get a usable access token (refreshing it if needed); ask
//! the server where to start (`GET /api/v1/me/documents`: the user's index
//! and the catalog); open `GET /sync` and let the engine's hub talk until
//! every document is at the same heads on both sides — the server never
//! announces documents, so the client `want`s the index, the catalog, and
//! every document the index lists, including ones added while syncing;
//! fetch templates the catalog lacks; deal with refused changes
//! ([`crate::rebase`]); upload photos ([`crate::upload`]).
//!
//! Where each document stands with the server comes from the hub
//! ([`sync_core::protocol::hub::Hub::peer_state`]) and its events; this
//! module never decodes a frame.
//!
//! When the server refused changes of a document, the session keeps them
//! and rebuilds the document from the server's history, writes the work
//! again where no choice is needed, and runs one more session to upload
//! it; what stays refused is in the report ([`SyncReport::refused`]).
//!
//! A refused token ends in [`FieldError::NeedsLogin`] with every local
//! change still in the store; nothing here deletes or resets local work.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use automerge::{ChangeHash, ReadDoc};
use futures_util::{SinkExt, StreamExt};
use sync_core::DocumentId;
use sync_core::model;
use sync_core::protocol::hub::{ConnId, Event};
use sync_core::protocol::message::{ErrorCode, ErrorDetail};
use sync_core::template::Template;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::engine::{Engine, Outcome};
use crate::error::{FieldError, Result};
use crate::http::ServerApi;
use crate::rebase::{self, SessionRefusal};
use crate::store::Session;
use crate::tablet::{
    KEY_CATALOG_DOC, KEY_INDEX_DOC, Shared, refused_views, session_info, template_ref_of, writer_of,
};
use crate::types::{SessionInfo, SyncListener, SyncPhase, SyncProgress, SyncReport};
use crate::upload;

/// An optional progress and error callback.
pub type Listener = Option<Arc<dyn SyncListener>>;

/// Largest WebSocket message and frame accepted (tungstenite's 16 MiB
/// frame default would silently break large documents).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// An access token this close to expiry is refreshed first.
const REFRESH_MARGIN_MS: i64 = 60_000;

// ----- randomness and backoff ---------------------------------------------------

/// A source of random numbers for jitter, injected so tests are exact.
pub trait Rng: Send {
    fn next_u64(&mut self) -> u64;
}

/// xorshift64*: plenty for spreading reconnects.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// Seeded from the operating system (the clock if that fails).
    pub fn from_entropy() -> Self {
        let mut buf = [0u8; 8];
        let seed = match getrandom::getrandom(&mut buf) {
            Ok(()) => u64::from_le_bytes(buf),
            Err(_) => u64::try_from(crate::clock::system_now_ms()).unwrap_or(1),
        };
        Self::new(seed)
    }
}

impl Rng for XorShift {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Exponential backoff with "equal jitter": the n-th delay is drawn from
/// `[d/2, d]` with `d = min(max, base * 2^n)`, so a fleet of tablets coming
/// back online together does not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    failures: u32,
}

impl Backoff {
    pub fn new(base_ms: u64, max_ms: u64) -> Self {
        Self {
            base_ms: base_ms.max(1),
            max_ms: max_ms.max(base_ms.max(1)),
            failures: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self, rng: &mut dyn Rng) -> u64 {
        let exp = 1u64 << self.failures.min(30);
        let d = self.base_ms.saturating_mul(exp).min(self.max_ms);
        self.failures = self.failures.saturating_add(1);
        let half = d / 2;
        half + rng.next_u64() % (d - half + 1)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

// ----- callbacks ---------------------------------------------------------------------

fn emit(listener: &Listener, p: &SyncProgress) {
    if let Some(l) = listener {
        l.on_progress(p.clone());
    }
}

fn emit_error(listener: &Listener, e: &str) {
    if let Some(l) = listener {
        l.on_error(e.to_owned());
    }
}

// ----- login and tokens --------------------------------------------------------------

/// Logs in and stores the session. The device's documents are untouched.
pub(crate) async fn login(
    shared: Arc<Shared>,
    server_url: String,
    username: String,
    password: String,
) -> Result<SessionInfo> {
    let api = shared.api(&server_url)?;
    let device_id = shared.engine().store().identity().device_id.clone();
    let pair = api.login(&username, &password, &device_id).await?;
    let me = api.me(&pair.access_token).await?;
    let now = shared.now_ms();
    let session = Session {
        server_url: api.base().to_owned(),
        username: me.username,
        user_id: me.user_id,
        role: me.role,
        team_id: me.team_id,
        unit_code: me.unit_code,
        access_token: Some(pair.access_token),
        access_expires_at_ms: Some(now.saturating_add(pair.expires_in.saturating_mul(1000))),
        refresh_token: Some(pair.refresh_token),
    };
    let info = session_info(device_id, Some(session.clone()));
    shared
        .with_engine(move |e, now| -> Result<()> {
            e.store().save_session(&session, now)?;
            // The server binds an actor to one user and device.
            e.rotate_actor();
            Ok(())
        })
        .await??;
    Ok(info)
}

/// A usable access token: the stored one while it is fresh (unless
/// `force_refresh`), else a refreshed one (saved before use, since refresh
/// tokens rotate).
async fn access_token(shared: &Arc<Shared>, force_refresh: bool) -> Result<(ServerApi, String)> {
    let session = shared.session()?.ok_or_else(|| {
        FieldError::NeedsLogin("nobody has logged in on this device; log in first".into())
    })?;
    let api = shared.api(&session.server_url)?;
    let now = shared.now_ms();
    if !force_refresh
        && let (Some(token), Some(exp)) = (&session.access_token, session.access_expires_at_ms)
        && exp - REFRESH_MARGIN_MS > now
    {
        return Ok((api, token.clone()));
    }
    let refresh = session.refresh_token.clone().ok_or_else(|| {
        FieldError::NeedsLogin(
            "the session has expired; log in again (nothing on this device is lost)".into(),
        )
    })?;
    match api.refresh(&refresh).await {
        Ok(pair) => {
            let now = shared.now_ms();
            let token = pair.access_token.clone();
            let updated = Session {
                access_token: Some(pair.access_token),
                access_expires_at_ms: Some(
                    now.saturating_add(pair.expires_in.saturating_mul(1000)),
                ),
                refresh_token: Some(pair.refresh_token),
                ..session
            };
            shared
                .with_engine(move |e, now| e.store().save_session(&updated, now))
                .await??;
            Ok((api, token))
        }
        Err(e @ FieldError::NeedsLogin(_)) => {
            // Only the tokens go; the user, documents and photos stay.
            shared
                .with_engine(|e, now| e.store().clear_tokens(now))
                .await??;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

// ----- sync --------------------------------------------------------------------------

/// Syncs, retrying transient failures with backoff. When refused work was
/// written again, one more session uploads it.
pub(crate) async fn sync(shared: Arc<Shared>, listener: Listener) -> Result<SyncReport> {
    let _one_at_a_time = shared.sync_lock.lock().await;
    let max_attempts = shared.config.max_sync_attempts.max(1);
    let mut backoff = Backoff::new(shared.config.backoff_base_ms, shared.config.backoff_max_ms);
    let mut attempt = 0;
    let mut first: Option<SyncReport> = None;
    loop {
        attempt += 1;
        match session(&shared, attempt, &listener).await {
            Ok(mut report) => {
                report.attempts = attempt;
                if let Some(before) = first.take() {
                    return Ok(merge_reports(before, report));
                }
                if report.rebased > 0 {
                    // Upload what was written again, in a session of its own.
                    first = Some(report);
                    attempt = 0;
                    backoff.reset();
                    continue;
                }
                return Ok(report);
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "sync attempt failed");
                emit_error(&listener, &e.to_string());
                if !e.is_transient() || attempt >= max_attempts {
                    // The first session's work is done; the upload waits.
                    if let Some(mut report) = first.take() {
                        report.warnings.push(format!(
                            "the refused work that was written again is not uploaded yet ({e}); \
                             sync again"
                        ));
                        return Ok(report);
                    }
                    return Err(e);
                }
                let delay = {
                    let mut rng = shared.rng.lock().unwrap_or_else(|p| p.into_inner());
                    backoff.next_delay(rng.as_mut())
                };
                emit(
                    &listener,
                    &SyncProgress {
                        phase: SyncPhase::Waiting,
                        attempt,
                        documents: 0,
                        photos_total: 0,
                        photos_done: 0,
                        bytes_uploaded: 0,
                    },
                );
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
        }
    }
}

/// A report for `after` once `before` was merged into it.
fn merge_reports(before: SyncReport, after: SyncReport) -> SyncReport {
    let mut warnings = before.warnings;
    warnings.extend(after.warnings);
    SyncReport {
        attempts: before.attempts.saturating_add(after.attempts),
        documents: after.documents,
        documents_changed: before
            .documents_changed
            .saturating_add(after.documents_changed),
        photos_uploaded: before.photos_uploaded.saturating_add(after.photos_uploaded),
        bytes_uploaded: before.bytes_uploaded.saturating_add(after.bytes_uploaded),
        warnings,
        rebased: before.rebased.saturating_add(after.rebased),
        refused: after.refused,
    }
}

/// Syncs every `interval_ms` until aborted or a new login is needed.
pub(crate) async fn background(shared: Arc<Shared>, interval_ms: u64, listener: Listener) {
    let interval = Duration::from_millis(interval_ms.max(1000));
    loop {
        match sync(Arc::clone(&shared), listener.clone()).await {
            Err(FieldError::NeedsLogin(_)) | Err(FieldError::InvalidCredentials) => return,
            Err(e) => tracing::warn!(error = %e, "background sync failed; trying again later"),
            Ok(_) => {}
        }
        tokio::time::sleep(interval).await;
    }
}

/// One attempt: documents, templates, photos.
async fn session(shared: &Arc<Shared>, attempt: u32, listener: &Listener) -> Result<SyncReport> {
    let mut progress = SyncProgress {
        phase: SyncPhase::Connecting,
        attempt,
        documents: 0,
        photos_total: 0,
        photos_done: 0,
        bytes_uploaded: 0,
    };
    emit(listener, &progress);
    let (api, mut token) = access_token(shared, false).await?;
    let start = match api.my_documents(&token).await {
        // Our clock may disagree with the server's: refresh once and retry.
        Err(FieldError::NeedsLogin(_)) => {
            token = access_token(shared, true).await?.1;
            api.my_documents(&token).await?
        }
        other => other?,
    };
    let index_id = DocumentId::parse_any(&start.index_doc_url).map_err(|e| {
        FieldError::Server(format!("the server named an invalid index document: {e}"))
    })?;
    let catalog_id = match &start.catalog_doc_url {
        Some(url) => Some(DocumentId::parse_any(url).map_err(|e| {
            FieldError::Server(format!("the server named an invalid catalog document: {e}"))
        })?),
        None => None,
    };
    shared
        .with_engine(move |e, _| -> Result<()> {
            e.store().set_setting(KEY_INDEX_DOC, &index_id.encode())?;
            if let Some(c) = catalog_id {
                e.store().set_setting(KEY_CATALOG_DOC, &c.encode())?;
            }
            Ok(())
        })
        .await??;

    progress.phase = SyncPhase::Documents;
    emit(listener, &progress);
    let ws = connect(shared, &api, &token).await?;
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (out_tx, mut out_rx) = unbounded_channel();
    let exchanged = exchange(
        shared,
        conn,
        ws,
        out_tx,
        &mut out_rx,
        index_id,
        catalog_id,
        listener,
        &mut progress,
    )
    .await;
    // Whatever happened, the hub forgets this connection's sync states.
    let detached = shared.with_engine(move |e, now| e.detach(conn, now)).await;
    let exchanged = exchanged?;
    detached??;

    let mut warnings = exchanged.warnings;
    fetch_templates(shared, &api, &token, &mut warnings).await?;

    // Refused changes: keep them, rebuild from the server's history, and
    // write again what needs no choice (also work left pending earlier).
    let refusals = exchanged.refusals;
    let (settled, refused) = shared
        .with_engine(move |e, now| -> Result<_> {
            let who = writer_of(e).ok();
            let settled = rebase::settle(e, who.as_ref(), &refusals, now)?;
            Ok((settled, refused_views(e, None)?))
        })
        .await??;
    warnings.extend(settled.warnings);
    for r in &refused {
        emit_error(
            listener,
            &format!(
                "the server refused {} of document {}: {}",
                r.label, r.document_id, r.reason
            ),
        );
    }

    progress.phase = SyncPhase::Photos;
    emit(listener, &progress);
    let photos = upload::upload_pending(shared, &api, &token, listener, &mut progress).await?;
    warnings.extend(photos.warnings);

    progress.phase = SyncPhase::Done;
    progress.documents = exchanged.documents;
    emit(listener, &progress);
    Ok(SyncReport {
        attempts: attempt,
        documents: exchanged.documents,
        documents_changed: exchanged.changed,
        photos_uploaded: photos.uploaded,
        bytes_uploaded: photos.bytes,
        warnings,
        rebased: settled.rebased,
        refused,
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(shared: &Arc<Shared>, api: &ServerApi, token: &str) -> Result<Ws> {
    let url = api.sync_url();
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| FieldError::InvalidInput(format!("bad sync URL {url}: {e}")))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        FieldError::NeedsLogin("the stored access token is unusable; log in again".into())
    })?;
    request.headers_mut().insert("Authorization", bearer);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let timeout = Duration::from_millis(shared.config.http_timeout_ms.max(1));
    let connected = tokio::time::timeout(
        timeout,
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await
    .map_err(|_| FieldError::Network(format!("connecting to {url} timed out")))?;
    match connected {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) if resp.status().as_u16() == 401 => {
            Err(FieldError::NeedsLogin(
                "the server refused the access token for sync; log in again".into(),
            ))
        }
        Err(tungstenite::Error::Http(resp)) => Err(FieldError::Server(format!(
            "the server refused the sync connection ({})",
            resp.status()
        ))),
        Err(e) => Err(FieldError::Network(format!(
            "cannot open the sync connection to {url}: {e}; your work is kept, sync again later"
        ))),
    }
}

/// What the document exchange did.
struct Exchanged {
    documents: u32,
    changed: u32,
    warnings: Vec<String>,
    /// Documents whose changes the server refused, with its heads.
    refusals: Vec<SessionRefusal>,
}

/// The ids an index lists.
fn listed(e: &Engine, index_id: DocumentId) -> Vec<DocumentId> {
    e.document(&index_id)
        .and_then(|d| model::read_index(d).ok())
        .map(|i| i.documents.into_keys().collect())
        .unwrap_or_default()
}

/// Where one document stands with the server, from the hub.
#[derive(Debug, Clone, Default)]
struct DocView {
    /// Our heads (sorted).
    ours: Vec<ChangeHash>,
    /// The server's last announced heads (sorted), if it said any.
    theirs: Option<Vec<ChangeHash>>,
    /// Both at the same heads, nothing of ours waiting to be stored.
    in_sync: bool,
    /// The server refused changes of ours.
    refused: bool,
    /// The exchange was cut.
    aborted: bool,
    /// Every head the server announced is here (its changes arrived).
    theirs_known: bool,
}

/// The engine's state after one step.
struct Snapshot {
    out: Outcome,
    /// The handshake is done.
    ready: bool,
    /// Every document held.
    docs: BTreeMap<DocumentId, DocView>,
    /// Documents asked for in this step.
    wanted: Vec<DocumentId>,
}

/// Runs `f` on the engine, then wants whatever the index lists that is not
/// held yet (the index may have changed), and snapshots where things stand.
async fn step(
    shared: &Arc<Shared>,
    conn: ConnId,
    index_id: DocumentId,
    f: impl FnOnce(&mut Engine, i64) -> Result<(Outcome, Vec<DocumentId>)> + Send + 'static,
) -> Result<Snapshot> {
    shared
        .with_engine(move |e, now| {
            let (mut out, mut wanted) = f(e, now)?;
            let index_changed = out.events.iter().any(
                |ev| matches!(ev, Event::DocumentChanged { document_id } if *document_id == index_id),
            );
            if index_changed {
                for id in listed(e, index_id) {
                    if e.document(&id).is_none() {
                        let more = e.want(id, now)?;
                        out.events.extend(more.events);
                        out.close.extend(more.close);
                        wanted.push(id);
                    }
                }
            }
            let mut docs = BTreeMap::new();
            for id in e.document_ids() {
                let Some(doc) = e.document(&id) else {
                    continue;
                };
                let mut view = DocView {
                    ours: sorted(doc.get_heads()),
                    ..DocView::default()
                };
                if let Some(state) = e.server_state(conn, &id) {
                    view.theirs_known = state
                        .their_heads
                        .iter()
                        .flatten()
                        .all(|h| doc.get_change_by_hash(h).is_some());
                    view.theirs = state.their_heads.map(sorted);
                    view.in_sync = state.in_sync;
                    view.refused = state.refused;
                    view.aborted = state.aborted;
                }
                docs.insert(id, view);
            }
            Ok(Snapshot {
                out,
                ready: e.hub().is_ready(conn),
                docs,
                wanted,
            })
        })
        .await?
}

fn sorted(mut heads: Vec<ChangeHash>) -> Vec<ChangeHash> {
    heads.sort();
    heads
}

/// Where each document stands with the server, as the session sees it:
/// from the hub's events (and [`Snapshot`]s of its state), never from frames.
#[derive(Default)]
struct Tracker {
    /// Documents asked for (they must arrive or be refused).
    wanted: BTreeSet<DocumentId>,
    /// Documents the server will not serve or could not sync now.
    excluded: BTreeSet<DocumentId>,
    /// Documents whose changes the server refused: its message and detail.
    refused: BTreeMap<DocumentId, (String, ErrorDetail)>,
    /// When the first refusal arrived: the server's own changes of a
    /// refused document are waited for this long at most.
    refused_since: Option<std::time::Instant>,
    changed: BTreeSet<DocumentId>,
    warnings: Vec<String>,
}

/// How long a session waits, after a refusal, for the server's changes of
/// the refused document (they normally come with its heads).
const REFUSED_GRACE: Duration = Duration::from_secs(5);

impl Tracker {
    /// Whether every document is settled with the server: at the same
    /// heads, or refused (with the server's changes here), or out of this
    /// session (unavailable, cut, failed on the server).
    fn done(&self, snap: &Snapshot) -> bool {
        if !snap.ready {
            return false;
        }
        let arrived = self.wanted.iter().all(|id| {
            snap.docs.contains_key(id)
                || self.excluded.contains(id)
                || self.refused.contains_key(id)
        });
        let grace_over = self
            .refused_since
            .is_some_and(|t| t.elapsed() >= REFUSED_GRACE);
        arrived
            && snap.docs.iter().all(|(id, d)| {
                self.excluded.contains(id)
                    || d.aborted
                    || d.in_sync
                    || (d.refused && (d.theirs_known || grace_over))
            })
    }

    /// Looks at what the hub reported.
    fn handle(&mut self, conn: ConnId, out: Outcome, listener: &Listener) -> Result<()> {
        for ev in out.events {
            match ev {
                Event::DocumentChanged { document_id } => {
                    self.changed.insert(document_id);
                }
                Event::Refused {
                    document_id,
                    detail,
                    ..
                } => {
                    self.refused
                        .entry(document_id)
                        .or_insert_with(|| (String::new(), detail));
                    self.refused_since
                        .get_or_insert_with(std::time::Instant::now);
                }
                Event::PeerError {
                    message, detail, ..
                } => {
                    let refused = detail
                        .as_ref()
                        .is_some_and(|d| d.code.as_deref() == Some(ErrorCode::Refused.as_str()));
                    match detail.as_ref().and_then(|d| d.document_id) {
                        // Reported with `Refused`; keep the server's words.
                        Some(id) if refused => {
                            if let Some((m, _)) = self.refused.get_mut(&id)
                                && m.is_empty()
                            {
                                m.clone_from(&message);
                            }
                        }
                        Some(id) => {
                            self.excluded.insert(id);
                            let w = format!("the server reported about document {id}: {message}");
                            emit_error(listener, &w);
                            self.warnings.push(w);
                        }
                        None => {
                            let w = format!("the server reported: {message}");
                            emit_error(listener, &w);
                            self.warnings.push(w);
                        }
                    }
                }
                Event::RemoteUnavailable { document_id, .. } => {
                    self.excluded.insert(document_id);
                    self.warnings.push(format!(
                        "the server has no document {document_id} for you (not shared with you, or removed)"
                    ));
                }
                Event::SyncAborted {
                    document_id,
                    reason,
                    ..
                } => {
                    self.excluded.insert(document_id);
                    let w = format!("sync of document {document_id} stopped: {reason}");
                    emit_error(listener, &w);
                    self.warnings.push(w);
                }
                Event::ProtocolError { error, .. } => {
                    return Err(FieldError::Sync(format!("sync protocol error: {error}")));
                }
                Event::PeerJoined { .. }
                | Event::LoadFailed { .. }
                | Event::Ephemeral { .. }
                | Event::Rejected { .. }
                | Event::Unavailable { .. } => {}
            }
        }
        if let Some((_, reason)) = out.close.into_iter().find(|(c, _)| *c == conn) {
            return Err(FieldError::Sync(format!(
                "the sync connection was closed: {reason}"
            )));
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    shared: &Arc<Shared>,
    conn: ConnId,
    ws: Ws,
    out_tx: UnboundedSender<Vec<u8>>,
    out_rx: &mut UnboundedReceiver<Vec<u8>>,
    index_id: DocumentId,
    catalog_id: Option<DocumentId>,
    listener: &Listener,
    progress: &mut SyncProgress,
) -> Result<Exchanged> {
    let (mut sink, mut stream) = ws.split();
    let mut t = Tracker::default();
    let mut snap = step(shared, conn, index_id, move |e, now| {
        let mut out = e.attach(conn, out_tx, now)?;
        let mut wants = vec![index_id];
        wants.extend(catalog_id);
        wants.extend(listed(e, index_id));
        for id in &wants {
            let more = e.want(*id, now)?;
            out.events.extend(more.events);
            out.close.extend(more.close);
        }
        Ok((out, wants))
    })
    .await?;

    let deadline = tokio::time::sleep(Duration::from_millis(shared.config.sync_timeout_ms.max(1)));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        t.wanted.extend(std::mem::take(&mut snap.wanted));
        let before = t.changed.len();
        t.handle(conn, std::mem::take(&mut snap.out), listener)?;
        if t.changed.len() != before {
            progress.documents = u32::try_from(snap.docs.len()).unwrap_or(u32::MAX);
            emit(listener, progress);
        }
        while let Ok(bytes) = out_rx.try_recv() {
            trace_frame("out", &bytes);
            sink.send(Message::Binary(bytes.into()))
                .await
                .map_err(|e| lost(&e))?;
        }
        if t.done(&snap) {
            break;
        }
        let next = tokio::select! {
            Some(bytes) = out_rx.recv() => {
                trace_frame("out", &bytes);
                sink.send(Message::Binary(bytes.into())).await.map_err(|e| lost(&e))?;
                None
            }
            msg = stream.next() => match msg {
                None => return Err(FieldError::Network(
                    "the server closed the sync connection; your work is kept, sync again".into(),
                )),
                Some(Err(e)) => return Err(lost(&e)),
                Some(Ok(Message::Binary(bytes))) => {
                    trace_frame("in", &bytes);
                    let bytes = bytes.to_vec();
                    Some(step(shared, conn, index_id, move |e, now| {
                        Ok((e.receive(conn, &bytes, now)?, Vec::new()))
                    }).await?)
                }
                Some(Ok(Message::Close(frame))) => {
                    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    return Err(FieldError::Sync(format!("the server ended the sync: {reason}")));
                }
                Some(Ok(_)) => None,
            },
            _ = tick.tick() => {
                Some(step(shared, conn, index_id, |e, now| Ok((e.tick(now)?, Vec::new()))).await?)
            }
            () = &mut deadline => {
                return Err(FieldError::Sync(format!(
                    "the sync did not finish within {} s; it will be retried",
                    shared.config.sync_timeout_ms / 1000
                )));
            }
        };
        if let Some(next) = next {
            snap = next;
        }
    }
    // Record what the server now holds, for `status`.
    // The heads the server confirmed, not the current ones: an edit made
    // while the session ends is not on the server yet.
    let confirmed: Vec<(DocumentId, Vec<ChangeHash>)> = snap
        .docs
        .iter()
        .filter(|(id, d)| {
            !t.excluded.contains(id)
                && !d.refused
                && d.in_sync
                && d.theirs.as_ref() == Some(&d.ours)
        })
        .map(|(id, d)| (*id, d.ours.clone()))
        .collect();
    let refusals: Vec<SessionRefusal> = std::mem::take(&mut t.refused)
        .into_iter()
        .map(|(id, (message, detail))| SessionRefusal {
            document_id: id,
            server_heads: snap.docs.get(&id).and_then(|d| d.theirs.clone()),
            message,
            detail,
        })
        .collect();
    shared
        .with_engine(move |e, now| e.mark_synced(&confirmed, now))
        .await??;
    // A polite close; the server may already be gone.
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
    Ok(Exchanged {
        documents: u32::try_from(snap.docs.len()).unwrap_or(u32::MAX),
        changed: u32::try_from(t.changed.len()).unwrap_or(u32::MAX),
        warnings: t.warnings,
        refusals,
    })
}

fn lost(e: &tungstenite::Error) -> FieldError {
    FieldError::Network(format!(
        "the sync connection was lost: {e}; your work is kept, sync again"
    ))
}

/// One line per frame at `trace` level: its direction and size (what a
/// frame says is the hub's business).
fn trace_frame(dir: &str, bytes: &[u8]) {
    tracing::trace!(dir, bytes = bytes.len(), "frame");
}

/// Fetches, over HTTP, templates that inspections name and no catalog held
/// here publishes.
async fn fetch_templates(
    shared: &Arc<Shared>,
    api: &ServerApi,
    token: &str,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let missing: Vec<(String, u32)> = shared
        .with_engine(|e, _| -> Result<Vec<(String, u32)>> {
            let mut refs = BTreeSet::new();
            for id in e.documents_of_kind(model::DocKind::Inspection) {
                if let Some(r) = e.document(&id).and_then(template_ref_of) {
                    refs.insert(r);
                }
            }
            let reg = e.registry()?;
            Ok(refs
                .into_iter()
                .filter(|(t, v)| reg.get(t, *v).is_none())
                .collect())
        })
        .await??;
    for (tid, version) in missing {
        match api.template(token, &tid, version).await {
            Ok(json) => match Template::from_json(&json) {
                Ok(t) if t.template_id == tid && t.version == version => {
                    let key = t.key();
                    shared
                        .with_engine(move |e, _| e.store().cache_template(&key, &json))
                        .await??;
                }
                Ok(t) => warnings.push(format!(
                    "the server sent template {} for {tid}@{version}",
                    t.key()
                )),
                Err(e) => warnings.push(format!("template {tid}@{version} does not load: {e}")),
            },
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => warnings.push(format!("template {tid}@{version}: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Always the same "random" value.
    struct Fixed(u64);
    impl Rng for Fixed {
        fn next_u64(&mut self) -> u64 {
            self.0
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter_in_range() {
        let mut b = Backoff::new(100, 1000);
        // rng 0 → the lower end (half of each step).
        let lows: Vec<u64> = (0..6).map(|_| b.next_delay(&mut Fixed(0))).collect();
        assert_eq!(lows, vec![50, 100, 200, 400, 500, 500]);
        b.reset();
        // rng = huge → modulo picks within [d/2, d].
        let mut r = XorShift::new(42);
        for n in 0..40 {
            let d = b.next_delay(&mut r);
            let cap = (100u64 << n.min(30)).min(1000);
            assert!(
                d >= cap / 2 && d <= cap,
                "attempt {n}: {d} not in [{}, {cap}]",
                cap / 2
            );
        }
        b.reset();
        // rng = d - d/2 → the upper end.
        assert_eq!(b.next_delay(&mut Fixed(50)), 100);
    }

    #[test]
    fn xorshift_is_deterministic_per_seed() {
        let a: Vec<u64> = {
            let mut r = XorShift::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = XorShift::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
        // A zero seed would stick at zero; it is bumped.
        assert_ne!(XorShift::new(0).next_u64(), 0);
    }
}
