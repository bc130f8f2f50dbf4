//! `GET /sync`: automerge-repo protocol "1" over WebSocket, driven through
//! `sync-core`'s sans-IO [`Hub`] as a storage peer.
//!
//! One dedicated thread owns the hub (the documents in memory and every
//! connection's sync state). WebSocket tasks and HTTP handlers talk to it
//! through a bounded channel of [`Command`]s. The thread takes commands in
//! batches; every document change the batch produced is written — document
//! bytes, projections and audit rows — in one group-commit transaction of
//! the database writer, and only after that commit does the hub release the
//! sync messages that reflect those changes. A panic while handling one
//! command is contained: the connection it came from is closed, the others
//! go on.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use automerge::{ActorId, Automerge, ChangeHash};
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use rusqlite::{Connection, OpenFlags};
use sync_core::access::{DocumentRules, PeerInfo};
use sync_core::ids::DocumentId;
use sync_core::model;
use sync_core::protocol::hub::{ConnId, Effects, Event, Hub, HubConfig, Mode, StoreRequest};
use sync_core::storage;
use sync_core::template::TemplateRegistry;
use tokio::sync::{mpsc, oneshot};

use crate::AppState;
use crate::auth::AuthUser;
use crate::clock;
use crate::db::{Db, DbError};
use crate::projection;
use crate::settings::SyncSettings;

/// The server's peer id in `peer` messages.
pub const SERVER_PEER_ID: &str = "kiemtra-server";

/// Frames queued towards one WebSocket before it counts as too slow.
const OUTBOX_CAPACITY: usize = 1024;
/// Commands queued towards the hub thread (back-pressure on readers).
const COMMAND_CAPACITY: usize = 4096;
/// Commands handled before the batch's changes are committed.
const MAX_BATCH: usize = 256;

/// What the hub thread sends a connection.
#[derive(Debug)]
pub enum Outbound {
    Frame(Vec<u8>),
    Close(String),
}

/// A server-side edit of one document (scheduling, index upkeep).
pub type EditFn = Box<dyn FnOnce(&mut Automerge) -> Result<(), model::ModelError> + Send>;

/// Why a server-side edit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("document {0} does not exist")]
    NotFound(DocumentId),
    #[error("document {0} already exists")]
    AlreadyExists(DocumentId),
    #[error("the edit was refused: {0}")]
    Edit(#[from] model::ModelError),
    #[error("storage: {0}")]
    Storage(String),
    #[error("the sync service has stopped")]
    Stopped,
}

impl From<DbError> for SyncError {
    fn from(e: DbError) -> Self {
        SyncError::Storage(e.to_string())
    }
}

enum Command {
    Connect {
        conn: ConnId,
        who: PeerInfo,
        out: mpsc::Sender<Outbound>,
    },
    Frame {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    Disconnect {
        conn: ConnId,
    },
    Tick,
    Create {
        id: DocumentId,
        doc: Box<Automerge>,
        reply: oneshot::Sender<Result<Vec<ChangeHash>, SyncError>>,
    },
    Edit {
        id: DocumentId,
        edit: EditFn,
        reply: oneshot::Sender<Result<Vec<ChangeHash>, SyncError>>,
    },
    Read {
        id: DocumentId,
        reply: oneshot::Sender<Result<Option<Vec<u8>>, SyncError>>,
    },
    SetTemplates(TemplateRegistry),
}

/// Handle on the hub thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SyncService {
    tx: mpsc::Sender<Command>,
    next_conn: Arc<AtomicU64>,
    max_message_bytes: usize,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Connect { .. } => "Connect",
            Command::Frame { .. } => "Frame",
            Command::Disconnect { .. } => "Disconnect",
            Command::Tick => "Tick",
            Command::Create { .. } => "Create",
            Command::Edit { .. } => "Edit",
            Command::Read { .. } => "Read",
            Command::SetTemplates(_) => "SetTemplates",
        })
    }
}

impl SyncService {
    /// Starts the hub thread. `db_path` is opened read-only for loading
    /// documents; every write goes through `db`'s writer.
    pub fn start(
        db: Db,
        db_path: PathBuf,
        templates: TemplateRegistry,
        settings: &SyncSettings,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        let mut config = HubConfig::new(Mode::Server, SERVER_PEER_ID);
        config.limits.max_message_bytes = settings.max_message_bytes;
        config.max_rounds_without_progress = settings.max_rounds_without_progress;
        config.actor = Some(ActorId::from(b"kiemtra-server".to_vec()));
        let hub = Hub::new(config, DocumentRules::new(templates));
        std::thread::Builder::new()
            .name("kiemtra-sync".into())
            .spawn(move || {
                let mut worker = Worker {
                    hub,
                    db,
                    db_path,
                    reader: None,
                    outboxes: HashMap::new(),
                    who: HashMap::new(),
                    peers: HashMap::new(),
                };
                worker.run(rx);
            })?;
        let service = Self {
            tx,
            next_conn: Arc::new(AtomicU64::new(1)),
            max_message_bytes: settings.max_message_bytes,
        };
        // Housekeeping: handshake timeouts and stalled exchanges.
        let ticker = service.tx.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                if ticker.send(Command::Tick).await.is_err() {
                    break;
                }
            }
        });
        Ok(service)
    }

    /// Creates a new document; answers after it is committed.
    pub async fn create(
        &self,
        id: DocumentId,
        doc: Automerge,
    ) -> Result<Vec<ChangeHash>, SyncError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Create {
                id,
                doc: Box::new(doc),
                reply,
            })
            .await
            .map_err(|_| SyncError::Stopped)?;
        rx.await.map_err(|_| SyncError::Stopped)?
    }

    /// Edits a stored document as the server; answers after commit. Peers
    /// that have the document open receive the change.
    pub async fn edit(&self, id: DocumentId, edit: EditFn) -> Result<Vec<ChangeHash>, SyncError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Edit { id, edit, reply })
            .await
            .map_err(|_| SyncError::Stopped)?;
        rx.await.map_err(|_| SyncError::Stopped)?
    }

    /// The saved bytes of a document as the hub holds it (None if unknown).
    pub async fn read(&self, id: DocumentId) -> Result<Option<Vec<u8>>, SyncError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Read { id, reply })
            .await
            .map_err(|_| SyncError::Stopped)?;
        rx.await.map_err(|_| SyncError::Stopped)?
    }

    /// Replaces the published templates used to validate answers.
    pub async fn set_templates(&self, templates: TemplateRegistry) -> Result<(), SyncError> {
        self.tx
            .send(Command::SetTemplates(templates))
            .await
            .map_err(|_| SyncError::Stopped)
    }
}

/// `GET /sync`: authenticated on upgrade (Bearer header or `?token=`).
pub async fn sync_ws(
    ws: WebSocketUpgrade,
    user: AuthUser,
    State(state): State<AppState>,
) -> Response {
    let service = state.sync.clone();
    let limit = service.max_message_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| connection(socket, user, service))
}

/// Ends the hub's view of a connection whatever way the task ends.
struct ConnGuard {
    conn: ConnId,
    tx: mpsc::Sender<Command>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let tx = self.tx.clone();
        let conn = self.conn;
        if tx.try_send(Command::Disconnect { conn }).is_err() {
            tokio::spawn(async move {
                let _ = tx.send(Command::Disconnect { conn }).await;
            });
        }
    }
}

async fn connection(socket: WebSocket, user: AuthUser, service: SyncService) {
    use futures_util::{SinkExt, StreamExt};

    let conn = service.next_conn.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("sync", conn, user = %user.username, role = user.role.as_str());
    let _enter = span.enter();
    let who = PeerInfo {
        user_id: user.user_id.clone(),
        role: policy_role(user.role),
        team_id: user.team_id.clone(),
        unit_code: user.unit_code.clone(),
        device_id: user.device_id.clone(),
    };
    let (out_tx, mut out_rx) = mpsc::channel(OUTBOX_CAPACITY);
    if service
        .tx
        .send(Command::Connect {
            conn,
            who,
            out: out_tx,
        })
        .await
        .is_err()
    {
        return;
    }
    let _guard = ConnGuard {
        conn,
        tx: service.tx.clone(),
    };
    let (mut sink, mut stream) = socket.split();
    let sink_ref = &mut sink;
    let writer = async move {
        let sink = sink_ref;
        while let Some(out) = out_rx.recv().await {
            match out {
                Outbound::Frame(bytes) => {
                    if sink.send(WsMessage::Binary(bytes.into())).await.is_err() {
                        break;
                    }
                }
                Outbound::Close(reason) => {
                    let reason: String = reason.chars().take(100).collect();
                    let _ = sink
                        .send(WsMessage::Close(Some(CloseFrame {
                            code: 1008,
                            reason: reason.into(),
                        })))
                        .await;
                    break;
                }
            }
        }
    };
    // Ends with the close frame to send, when the peer broke the rules of
    // the WebSocket itself (the hub never sees those frames).
    let reader = async {
        loop {
            match stream.next().await {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    let cmd = Command::Frame {
                        conn,
                        bytes: bytes.to_vec(),
                    };
                    if service.tx.send(cmd).await.is_err() {
                        return None;
                    }
                }
                // automerge-repo speaks binary CBOR only: 1003 is "unsupported data".
                Some(Ok(WsMessage::Text(_))) => {
                    return Some((
                        1003,
                        "text frames are not accepted; automerge-repo messages are binary CBOR"
                            .to_owned(),
                    ));
                }
                // tungstenite refuses frames over the limit with this error;
                // 1009 is "message too big".
                Some(Err(e)) if e.to_string().contains("Message too long") => {
                    return Some((
                        1009,
                        format!(
                            "message over the limit of {} bytes",
                            service.max_message_bytes
                        ),
                    ));
                }
                Some(Ok(WsMessage::Close(_)) | Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    };
    let close = tokio::select! {
        () = writer => None,
        close = reader => close,
    };
    if let Some((code, reason)) = close {
        tracing::info!(code, %reason, "closing the connection");
        let frame = WsMessage::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(5), sink.send(frame)).await;
    }
    tracing::debug!("connection ended");
}

/// The account role as the document rules know it.
pub fn policy_role(role: crate::users::Role) -> sync_core::policy::Role {
    use crate::users::Role as R;
    use sync_core::policy::Role as P;
    match role {
        R::Admin => P::Admin,
        R::Secretariat => P::Secretariat,
        R::Inspector => P::Inspector,
        R::Unit => P::Unit,
        R::Leader => P::Leader,
    }
}

struct Worker {
    hub: Hub<DocumentRules>,
    db: Db,
    db_path: PathBuf,
    reader: Option<Connection>,
    outboxes: HashMap<ConnId, mpsc::Sender<Outbound>>,
    who: HashMap<ConnId, PeerInfo>,
    /// Peer id announced in `join` → the connection and device it is bound to.
    peers: HashMap<String, (ConnId, String)>,
}

type Reply = oneshot::Sender<Result<Vec<ChangeHash>, SyncError>>;

impl Worker {
    fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        // Commands taken from the channel and not handled yet, in order.
        let mut queue: VecDeque<Command> = VecDeque::new();
        loop {
            if queue.is_empty() {
                match rx.blocking_recv() {
                    Some(c) => queue.push_back(c),
                    None => break,
                }
            }
            while queue.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => queue.push_back(c),
                    Err(_) => break,
                }
            }
            let mut fx = Effects::default();
            let mut replies: Vec<(Reply, DocumentId, Result<(), SyncError>)> = Vec::new();
            while let Some(cmd) = queue.pop_front() {
                let conn = match &cmd {
                    Command::Frame { conn, .. } | Command::Connect { conn, .. } => Some(*conn),
                    _ => None,
                };
                let outcome = catch_unwind(AssertUnwindSafe(|| self.handle(cmd, &mut replies)));
                match outcome {
                    Ok(more) => fx.merge(more),
                    Err(_) => {
                        tracing::error!(
                            conn,
                            "a panic while handling a sync message was contained"
                        );
                        if let Some(conn) = conn {
                            if let Some(out) = self.outboxes.get(&conn) {
                                let _ = out.try_send(Outbound::Close(
                                    "internal error while handling your message".into(),
                                ));
                            }
                            fx.merge(self.hub.disconnect(conn));
                        }
                    }
                }
            }
            let failed = self.commit(&mut fx);
            for (reply, id, result) in replies {
                let result = match (result, failed.get(&id)) {
                    (Err(e), _) => Err(e),
                    (Ok(()), Some(e)) => Err(SyncError::Storage(e.clone())),
                    (Ok(()), None) => Ok(self
                        .hub
                        .document(&id)
                        .map(|d| d.get_heads())
                        .unwrap_or_default()),
                };
                let _ = reply.send(result);
            }
            self.dispatch(fx);
        }
        tracing::info!("sync service stopped");
    }

    fn now(&self) -> u64 {
        u64::try_from(clock::now_millis()).unwrap_or(0)
    }

    fn handle(
        &mut self,
        cmd: Command,
        replies: &mut Vec<(Reply, DocumentId, Result<(), SyncError>)>,
    ) -> Effects {
        let now = self.now();
        let mut fx = match cmd {
            Command::Connect { conn, who, out } => {
                self.outboxes.insert(conn, out);
                self.who.insert(conn, who.clone());
                self.hub.connect(conn, who, now)
            }
            Command::Frame { conn, bytes } => self.hub.receive(conn, &bytes, now),
            Command::Disconnect { conn } => {
                self.outboxes.remove(&conn);
                self.who.remove(&conn);
                self.peers.retain(|_, (c, _)| *c != conn);
                self.hub.disconnect(conn)
            }
            Command::Tick => {
                let fx = self.hub.tick(now);
                // Documents nobody has open are dropped from memory; they
                // load again from the database when asked for.
                for id in self.hub.idle_documents() {
                    self.hub.unload(&id);
                }
                fx
            }
            Command::Create { id, doc, reply } => {
                let exists = self.hub.document(&id).is_some()
                    || self.load(id).map(|d| d.is_some()).unwrap_or(true);
                if exists {
                    let _ = reply.send(Err(SyncError::AlreadyExists(id)));
                    return Effects::default();
                }
                let fx = self.hub.insert_document(id, *doc, now);
                replies.push((reply, id, Ok(())));
                fx
            }
            Command::Edit { id, edit, reply } => {
                if self.hub.document(&id).is_none() {
                    match self.load(id) {
                        Ok(Some(doc)) => {
                            self.hub.add_stored(id, doc, now);
                        }
                        Ok(None) => {
                            let _ = reply.send(Err(SyncError::NotFound(id)));
                            return Effects::default();
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            return Effects::default();
                        }
                    }
                }
                match self.hub.update(&id, now, edit) {
                    Ok(((), fx)) => {
                        replies.push((reply, id, Ok(())));
                        fx
                    }
                    Err(sync_core::protocol::hub::UpdateError::Edit(e)) => {
                        let _ = reply.send(Err(SyncError::Edit(e)));
                        Effects::default()
                    }
                    Err(sync_core::protocol::hub::UpdateError::NotHeld(id)) => {
                        let _ = reply.send(Err(SyncError::NotFound(id)));
                        Effects::default()
                    }
                }
            }
            Command::Read { id, reply } => {
                let bytes = match self.hub.document(&id) {
                    Some(d) => Ok(Some(d.save())),
                    None => self.load(id).map(|d| d.map(|d| d.save())),
                };
                let _ = reply.send(bytes);
                Effects::default()
            }
            Command::SetTemplates(t) => {
                self.hub.access_mut().templates = t;
                Effects::default()
            }
        };
        // Loads are answered at once, so no document stays "loading"
        // between commands.
        let mut guard = 0;
        while !fx.load.is_empty() && guard < 64 {
            guard += 1;
            let ids = std::mem::take(&mut fx.load);
            for id in ids {
                let doc = match self.load(id) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(doc = %id, error = %e, "loading a document failed");
                        None
                    }
                };
                let more = self.hub.loaded(id, doc, now);
                fx.merge(more);
            }
        }
        fx
    }

    fn load(&mut self, id: DocumentId) -> Result<Option<Automerge>, SyncError> {
        if self.reader.is_none() {
            let conn = Connection::open_with_flags(
                &self.db_path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| SyncError::Storage(e.to_string()))?;
            conn.busy_timeout(Duration::from_secs(5))
                .map_err(|e| SyncError::Storage(e.to_string()))?;
            self.reader = Some(conn);
        }
        let Some(conn) = self.reader.as_ref() else {
            return Err(SyncError::Storage("no reader connection".into()));
        };
        storage::load(conn, id).map_err(|e| SyncError::Storage(e.to_string()))
    }

    /// Writes every store request of the batch in one transaction; then
    /// tells the hub which tickets are durable. Returns the documents whose
    /// changes could not be stored, with the reason.
    fn commit(&mut self, fx: &mut Effects) -> HashMap<DocumentId, String> {
        let mut failed = HashMap::new();
        if fx.store.is_empty() {
            return failed;
        }
        let requests: Vec<StoreRequest> = std::mem::take(&mut fx.store);
        let now_ms = clock::now_millis();
        // Everything the transaction needs is computed here, on the hub
        // thread, from the documents as they are after the batch.
        let mut jobs = Vec::new();
        for r in &requests {
            let doc = self.hub.document(&r.document_id);
            let kind = doc
                .and_then(|d| model::kind_of(d).ok())
                .map_or("unknown", |k| k.as_str())
                .to_owned();
            let rows =
                doc.map(|d| projection::project(r.document_id, d, &self.hub.access().templates));
            let actor = r
                .from
                .and_then(|c| self.who.get(&c))
                .map(|w| w.user_id.clone());
            jobs.push((
                r.document_id,
                kind,
                r.changes.clone(),
                rows,
                actor,
                r.created,
            ));
        }
        let at = clock::rfc3339(clock::now());
        let result: Result<(), SyncError> = self.db.write_blocking(move |tx| {
            for (id, kind, changes, rows, actor, created) in &jobs {
                storage::append_changes(tx, *id, kind, changes, now_ms)
                    .map_err(|e| SyncError::Storage(e.to_string()))?;
                if let Some(rows) = rows {
                    projection::write(tx, rows).map_err(|e| SyncError::Storage(e.to_string()))?;
                }
                let detail = serde_json::json!({
                    "kind": kind,
                    "changes": changes.iter().map(|c| c.hash().to_string()).collect::<Vec<_>>(),
                    "created": created,
                });
                crate::audit::append(
                    tx,
                    &at,
                    &crate::audit::AuditEntry {
                        actor: Some(actor.as_deref().unwrap_or("system")),
                        action: "document.change",
                        subject: &id.to_string(),
                        detail,
                    },
                )
                .map_err(|e| SyncError::Storage(e.to_string()))?;
            }
            Ok(())
        });
        let now = self.now();
        match result {
            Ok(()) => {
                for r in &requests {
                    fx.merge(self.hub.committed(r.ticket, now));
                }
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(error = %reason, "storing a batch of changes failed");
                for r in &requests {
                    failed.insert(r.document_id, reason.clone());
                    fx.merge(self.hub.store_failed(r.ticket, &reason));
                }
            }
        }
        failed
    }

    /// Sends frames and closes connections.
    fn dispatch(&mut self, fx: Effects) {
        for out in fx.outgoing {
            if let Some(tx) = self.outboxes.get(&out.conn)
                && !tx.is_closed()
                && tx.try_send(Outbound::Frame(out.bytes)).is_err()
            {
                tracing::warn!(
                    conn = out.conn,
                    "connection too slow to keep up; closing it"
                );
                let _ = tx.try_send(Outbound::Close("too slow".into()));
                self.outboxes.remove(&out.conn);
            }
        }
        for (conn, reason) in fx.close {
            if let Some(tx) = self.outboxes.remove(&conn) {
                let _ = tx.try_send(Outbound::Close(reason));
            }
        }
        for e in fx.events {
            match e {
                Event::Rejected {
                    conn,
                    document_id,
                    reason,
                } => tracing::warn!(conn, doc = %document_id, %reason, "changes refused"),
                Event::ProtocolError { conn, error } => {
                    tracing::info!(conn, %error, "protocol error; connection closed")
                }
                Event::SyncAborted {
                    conn,
                    document_id,
                    reason,
                } => tracing::warn!(conn, doc = %document_id, %reason, "sync aborted"),
                Event::PeerJoined { conn, peer_id, .. } => {
                    // The peer id is bound to the token's device: another
                    // device may not speak as a peer that is connected.
                    let device = self
                        .who
                        .get(&conn)
                        .map(|w| w.device_id.clone())
                        .unwrap_or_default();
                    match self.peers.get(&peer_id) {
                        Some((other, bound)) if *other != conn && *bound != device => {
                            tracing::warn!(conn, peer = %peer_id, "peer id already bound to another device");
                            let msg = sync_core::protocol::Message::Error {
                                sender_id: Some(SERVER_PEER_ID.to_owned()),
                                target_id: Some(peer_id.clone()),
                                message: format!(
                                    "peer id {peer_id:?} is in use by another device; choose another"
                                ),
                            };
                            if let Some(tx) = self.outboxes.remove(&conn) {
                                let _ =
                                    tx.try_send(Outbound::Frame(sync_core::protocol::encode(&msg)));
                                let _ = tx.try_send(Outbound::Close("peer id in use".into()));
                            }
                        }
                        _ => {
                            tracing::info!(conn, peer = %peer_id, device = %device, "peer joined");
                            self.peers.insert(peer_id, (conn, device));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
