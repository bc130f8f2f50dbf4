//! `GET /sync`: automerge-repo protocol "1" over WebSocket, driven through
//! `sync-core`'s sans-IO [`Hub`] as a storage peer.
//!
//! One dedicated thread owns the hub (the documents in memory and every
//! connection's sync state). WebSocket tasks and HTTP handlers talk to it
//! through a bounded channel of [`Command`]s. The thread takes commands in
//! batches; every document change the batch produced is written — document
//! bytes, projections, audit rows and the actors of peers' changes — in one
//! group-commit transaction of the database writer, each document in a
//! savepoint of its own (a document that cannot be written is rolled back
//! alone), and only after that commit does the hub release the sync
//! messages that reflect those changes. A panic while handling one command
//! is contained: the connection it came from is closed, the others go on.
//!
//! Documents are created here only by the server ([`SyncService::create`]);
//! a document that cannot be loaded is reported to the peers that asked as
//! "retry later", never as absent.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use automerge::{ActorId, Automerge, Change, ChangeHash};
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use rusqlite::{Connection, OpenFlags};
use sync_core::access::{ActorOwner, DocumentRules, PeerInfo, SERVER_USER};
use sync_core::ids::DocumentId;
use sync_core::model;
use sync_core::protocol::hub::{
    ConnId, Effects, Event, Hub, HubConfig, Mode, Refusal, StoreRequest,
};
use sync_core::storage::{self, StorageError};
use sync_core::template::TemplateRegistry;
use tokio::sync::{mpsc, oneshot};

use crate::AppState;
use crate::auth::AuthUser;
use crate::clock;
use crate::db::{self, Db, DbError};
use crate::projection;
use crate::settings::SyncSettings;

/// The server's peer id in `peer` messages.
pub const SERVER_PEER_ID: &str = "kiemtra-server";

/// The device the server's own actor is bound to in the actor registry.
pub const SERVER_DEVICE: &str = "server";

/// The automerge actor of every change the server writes (documents it
/// creates, its edits). Bound to [`SERVER_USER`] at start, so no peer can
/// write under it.
pub fn server_actor() -> ActorId {
    ActorId::from(b"kiemtra-server".to_vec())
}

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
    ///
    /// Before serving, the thread binds the server's own actor to
    /// [`SERVER_USER`] and loads the actor registry (`actors` table) into
    /// the document rules: a change under an actor recorded for another
    /// user or device is refused. Returns once that is done; fails if the
    /// registry cannot be read (serving without it would let a peer write
    /// under another device's actor).
    pub async fn start(
        db: Db,
        db_path: PathBuf,
        templates: TemplateRegistry,
        settings: &SyncSettings,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        let mut config = HubConfig::new(Mode::Server, SERVER_PEER_ID);
        config.limits.max_message_bytes = settings.max_message_bytes;
        config.max_rounds_without_progress = settings.max_rounds_without_progress;
        config.actor = Some(server_actor());
        let hub = Hub::new(config, document_rules(templates));
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("kiemtra-sync".into())
            .spawn(move || {
                let mut worker = Worker::new(hub, db, db_path);
                match worker.load_actors() {
                    Ok(n) => {
                        tracing::info!(actors = n, "actor registry loaded");
                        let _ = ready_tx.send(Ok(()));
                        worker.run(rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(std::io::Error::other(format!(
                    "cannot load the actor registry: {e}"
                )));
            }
            Err(_) => {
                return Err(std::io::Error::other(
                    "the sync thread stopped while starting",
                ));
            }
        }
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

/// The server's document rules, with its own actor bound to
/// [`SERVER_USER`] before anything else can claim it.
fn document_rules(templates: TemplateRegistry) -> DocumentRules {
    let mut rules = DocumentRules::new(templates);
    rules.bind_actor(
        server_actor(),
        ActorOwner {
            user_id: SERVER_USER.to_owned(),
            device_id: SERVER_DEVICE.to_owned(),
        },
    );
    rules
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
    /// Connections that ended during the current batch. Their identity
    /// stays in `who` until the batch is committed: changes they sent
    /// before leaving are still stored, audited and their actors recorded
    /// under their user and device.
    departed: Vec<ConnId>,
}

type Reply = oneshot::Sender<Result<Vec<ChangeHash>, SyncError>>;

/// What one document contributes to a group commit: everything the
/// transaction needs, computed on the hub thread beforehand.
struct DocumentWrite {
    id: DocumentId,
    kind: String,
    /// The projection rows as of the end of the batch (None: the hub no
    /// longer holds the document).
    rows: Option<projection::Rows>,
    /// One part per store request, in order.
    parts: Vec<WritePart>,
}

/// One store request's share of a [`DocumentWrite`].
struct WritePart {
    changes: Vec<Change>,
    /// The user the audit row names (None: the server itself).
    user_id: Option<String>,
    /// Whom the actors of `changes` belong to (changes from a connection).
    owner: Option<ActorOwner>,
    created: bool,
}

/// Name of the savepoint each document of a group commit is written in.
const DOCUMENT_SAVEPOINT: &str = "sync_document";

/// Writes one document's share of a group commit inside its own savepoint:
/// `Ok(Err(reason))` when it failed and was rolled back alone, `Err` when
/// even the rollback failed (the whole transaction must then be abandoned).
fn write_document(
    tx: &rusqlite::Transaction<'_>,
    write: &DocumentWrite,
    now_ms: i64,
    at: &str,
) -> Result<Result<(), String>, SyncError> {
    if let Err(e) = tx.execute_batch(&format!("SAVEPOINT {DOCUMENT_SAVEPOINT}")) {
        // Nothing of this document was written.
        return Ok(Err(e.to_string()));
    }
    match write_document_rows(tx, write, now_ms, at) {
        Ok(()) => match tx.execute_batch(&format!("RELEASE {DOCUMENT_SAVEPOINT}")) {
            Ok(()) => Ok(Ok(())),
            Err(e) => Err(SyncError::Storage(format!(
                "releasing the savepoint of document {}: {e}",
                write.id
            ))),
        },
        Err(reason) => {
            tx.execute_batch(&format!(
                "ROLLBACK TO {DOCUMENT_SAVEPOINT}; RELEASE {DOCUMENT_SAVEPOINT}"
            ))
            .map_err(|e| {
                SyncError::Storage(format!(
                    "rolling back document {} after {reason}: {e}",
                    write.id
                ))
            })?;
            Ok(Err(reason))
        }
    }
}

/// The rows of one document: change bytes, projection, audit rows and the
/// actors of changes that came from a connection.
fn write_document_rows(
    tx: &rusqlite::Transaction<'_>,
    write: &DocumentWrite,
    now_ms: i64,
    at: &str,
) -> Result<(), String> {
    let id = write.id;
    let subject = id.to_string();
    for part in &write.parts {
        storage::append_changes(tx, id, &write.kind, &part.changes, now_ms)
            .map_err(|e| e.to_string())?;
        let detail = serde_json::json!({
            "kind": write.kind,
            "changes": part.changes.iter().map(|c| c.hash().to_string()).collect::<Vec<_>>(),
            "created": part.created,
        });
        crate::audit::append(
            tx,
            at,
            &crate::audit::AuditEntry {
                actor: Some(part.user_id.as_deref().unwrap_or("system")),
                action: "document.change",
                subject: &subject,
                detail,
            },
        )
        .map_err(|e| format!("audit row: {e}"))?;
        if let Some(owner) = &part.owner {
            let actors: BTreeSet<&ActorId> = part.changes.iter().map(|c| c.actor_id()).collect();
            for actor in actors {
                db::actors::record(tx, actor, owner, at)
                    .map_err(|e| format!("actor registry: {e}"))?;
            }
        }
    }
    if let Some(rows) = &write.rows {
        projection::write(tx, rows).map_err(|e| format!("projection: {e}"))?;
    }
    Ok(())
}

impl Worker {
    fn new(hub: Hub<DocumentRules>, db: Db, db_path: PathBuf) -> Self {
        Self {
            hub,
            db,
            db_path,
            reader: None,
            outboxes: HashMap::new(),
            who: HashMap::new(),
            peers: HashMap::new(),
            departed: Vec::new(),
        }
    }

    /// Binds every actor of the registry in the document rules; returns how
    /// many there are.
    fn load_actors(&mut self) -> Result<usize, SyncError> {
        let rows = {
            let conn = self.reader()?;
            db::actors::load_all(conn).map_err(|e| SyncError::Storage(e.to_string()))?
        };
        let rules = self.hub.access_mut();
        for (actor, owner) in rows {
            rules.bind_actor(actor, owner);
        }
        Ok(rules.actor_count())
    }

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
            for conn in std::mem::take(&mut self.departed) {
                self.who.remove(&conn);
            }
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
                // `who` goes after the batch's commit (see `departed`).
                self.departed.push(conn);
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
                let exists = if self.hub.document(&id).is_some() {
                    Ok(true)
                } else {
                    self.load(id).map(|d| d.is_some())
                };
                match exists {
                    Ok(false) => {}
                    Ok(true) => {
                        let _ = reply.send(Err(SyncError::AlreadyExists(id)));
                        return Effects::default();
                    }
                    // Neither "exists" nor "absent": whatever is stored
                    // under this id could not be read.
                    Err(e) => {
                        tracing::error!(doc = %id, error = %e, "cannot tell whether a document to create exists");
                        let _ = reply.send(Err(e));
                        return Effects::default();
                    }
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
                // A document that cannot be loaded is an error for the
                // peers that asked (retry later), never "does not exist".
                let more = match self.load(id) {
                    Ok(doc) => self.hub.loaded(id, doc, now),
                    Err(e) => self.hub.load_failed(id, &e.to_string()),
                };
                fx.merge(more);
            }
        }
        fx
    }

    /// The read-only connection documents are loaded with, opened on first use.
    fn reader(&mut self) -> Result<&Connection, SyncError> {
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
        self.reader
            .as_ref()
            .ok_or_else(|| SyncError::Storage("no reader connection".into()))
    }

    /// Loads a stored document: `Ok(None)` only when nothing is stored under
    /// `id`. A corrupt or oversized document, or a database error, is an
    /// error.
    fn load(&mut self, id: DocumentId) -> Result<Option<Automerge>, SyncError> {
        let result = storage::load(self.reader()?, id);
        match result {
            Ok(doc) => Ok(doc),
            Err(e) => {
                if matches!(e, StorageError::Sqlite(_)) {
                    // The connection itself may be what failed: reopen it
                    // next time.
                    self.reader = None;
                }
                Err(SyncError::Storage(e.to_string()))
            }
        }
    }

    /// Writes every store request of the batch in one transaction, each
    /// document in its own savepoint; then tells the hub which tickets are
    /// durable. A document whose rows cannot be written is rolled back
    /// alone and its tickets fail; the other documents commit. Returns the
    /// documents whose changes could not be stored, with the reason.
    fn commit(&mut self, fx: &mut Effects) -> HashMap<DocumentId, String> {
        let mut failed = HashMap::new();
        if fx.store.is_empty() {
            return failed;
        }
        let requests: Vec<StoreRequest> = std::mem::take(&mut fx.store);
        let now_ms = clock::now_millis();
        // Everything the transaction needs is computed here, on the hub
        // thread, from the documents as they are after the batch. Requests
        // of the same document share its savepoint: a later change of a
        // document may depend on an earlier one.
        let mut writes: Vec<DocumentWrite> = Vec::new();
        let mut tickets: Vec<(DocumentId, Vec<u64>)> = Vec::new();
        for r in &requests {
            let who = r.from.and_then(|c| self.who.get(&c));
            if r.from.is_some() && who.is_none() {
                tracing::warn!(doc = %r.document_id, conn = r.from, "changes from a connection whose identity is gone");
            }
            let part = WritePart {
                changes: r.changes.clone(),
                user_id: who.map(|w| w.user_id.clone()),
                owner: who.map(|w| ActorOwner {
                    user_id: w.user_id.clone(),
                    device_id: w.device_id.clone(),
                }),
                created: r.created,
            };
            if let Some(i) = writes.iter().position(|w| w.id == r.document_id) {
                writes[i].parts.push(part);
                tickets[i].1.push(r.ticket);
                continue;
            }
            let doc = self.hub.document(&r.document_id);
            let kind = doc
                .and_then(|d| model::kind_of(d).ok())
                .map_or("unknown", |k| k.as_str())
                .to_owned();
            let rows =
                doc.map(|d| projection::project(r.document_id, d, &self.hub.access().templates));
            writes.push(DocumentWrite {
                id: r.document_id,
                kind,
                rows,
                parts: vec![part],
            });
            tickets.push((r.document_id, vec![r.ticket]));
        }
        let at = clock::rfc3339(clock::now());
        let result: Result<Vec<Result<(), String>>, SyncError> =
            self.db.write_blocking(move |tx| {
                let mut outcomes = Vec::with_capacity(writes.len());
                for write in &writes {
                    outcomes.push(write_document(tx, write, now_ms, &at)?);
                }
                Ok(outcomes)
            });
        let now = self.now();
        let outcomes: Vec<Result<(), String>> = match result {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(error = %reason, documents = tickets.len(), "storing a batch of changes failed");
                vec![Err(reason); tickets.len()]
            }
        };
        for ((id, doc_tickets), outcome) in tickets.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    for ticket in doc_tickets {
                        fx.merge(self.hub.committed(ticket, now));
                    }
                }
                Err(reason) => {
                    tracing::error!(doc = %id, error = %reason, "storing a document's changes failed; they were rolled back");
                    for ticket in doc_tickets {
                        // The peers hear that the server could not store
                        // it, not the database's own words.
                        fx.merge(
                            self.hub
                                .store_failed(ticket, "a storage error on the server"),
                        );
                    }
                    failed.insert(id, reason);
                }
            }
        }
        failed
    }

    /// One warning per refused message: who, which changes (the first
    /// hashes), and the first violations, as structured fields.
    fn log_refusal(&self, conn: ConnId, document_id: DocumentId, refusal: &Refusal) {
        const HASHES: usize = 8;
        const VIOLATIONS: usize = 3;
        let who = self.who.get(&conn);
        let refused: Vec<String> = refusal
            .refused
            .iter()
            .take(HASHES)
            .map(ToString::to_string)
            .collect();
        let violations: Vec<String> = refusal
            .violations
            .iter()
            .take(VIOLATIONS)
            .map(|v| {
                format!(
                    "{} {} at {:?} by change {}: {}",
                    v.rule.as_str(),
                    v.role.as_str(),
                    v.path,
                    v.change,
                    v.reason
                )
            })
            .collect();
        // The first violation that is not only "depends on a refused change".
        let first = refusal
            .violations
            .iter()
            .find(|v| v.rule != sync_core::policy::Rule::Depends)
            .or(refusal.violations.first());
        tracing::warn!(
            conn,
            doc = %document_id,
            user = who.map_or("", |w| w.user_id.as_str()),
            device = who.map_or("", |w| w.device_id.as_str()),
            refused_count = refusal.refused.len(),
            kept = refusal.accepted,
            refused = %refused.join(","),
            violation_count = refusal.violations.len(),
            rule = first.map_or("", |v| v.rule.as_str()),
            path = first.map_or("", |v| v.path.as_str()),
            violations = ?violations,
            "changes refused"
        );
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
                    refusal,
                } => self.log_refusal(conn, document_id, &refusal),
                Event::LoadFailed {
                    document_id,
                    reason,
                } => tracing::error!(
                    doc = %document_id,
                    %reason,
                    "a document could not be loaded; the peers that asked were told to retry later"
                ),
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
                                detail: None,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::settings::DbSettings;
    use automerge::transaction::Transactable;
    use sync_core::policy::Role;

    /// A worker on a fresh database, without its thread: the tests call
    /// its steps directly.
    fn worker() -> (tempfile::TempDir, Worker) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        let db = Db::open(&path, &DbSettings::default()).unwrap();
        let mut config = HubConfig::new(Mode::Server, SERVER_PEER_ID);
        config.actor = Some(server_actor());
        let hub = Hub::new(config, document_rules(TemplateRegistry::default()));
        (dir, Worker::new(hub, db, path))
    }

    fn catalog_doc() -> Automerge {
        let mut doc = Automerge::new().with_actor(server_actor());
        crate::inspections::in_tx(&mut doc, |tx| model::init_catalog(tx)).unwrap();
        doc
    }

    fn count(worker: &mut Worker, sql: &str, arg: &str) -> i64 {
        worker
            .reader()
            .unwrap()
            .query_row(sql, [arg], |r| r.get(0))
            .unwrap()
    }

    fn audit_rows(worker: &mut Worker, id: DocumentId) -> i64 {
        count(
            worker,
            "SELECT count(*) FROM audit_log WHERE subject = ?1",
            &id.to_string(),
        )
    }

    #[test]
    fn a_failing_document_is_rolled_back_alone_in_a_group_commit() {
        let (_dir, mut w) = worker();
        let good = DocumentId::from_bytes([1; 16]);
        let bad = DocumentId::from_bytes([2; 16]);
        let also_good = DocumentId::from_bytes([3; 16]);
        // The audit log refuses rows about `bad`, as a constraint would:
        // its document bytes are written first, then its audit row fails.
        let subject = bad.to_string();
        w.db.write_blocking(move |tx| {
            tx.execute_batch(&format!(
                "CREATE TRIGGER refuse_bad BEFORE INSERT ON audit_log
                 WHEN NEW.subject = '{subject}'
                 BEGIN SELECT RAISE(ABORT, 'audit refused for this document'); END;"
            ))
            .map_err(DbError::from)
        })
        .unwrap();

        let mut fx = w.hub.insert_document(good, catalog_doc(), 0);
        fx.merge(w.hub.insert_document(bad, catalog_doc(), 0));
        fx.merge(w.hub.insert_document(also_good, catalog_doc(), 0));
        assert_eq!(fx.store.len(), 3, "one group commit of three documents");
        let failed = w.commit(&mut fx);

        assert_eq!(failed.keys().copied().collect::<Vec<_>>(), vec![bad]);
        assert!(
            failed[&bad].contains("audit refused for this document"),
            "{failed:?}"
        );
        for id in [good, also_good] {
            assert!(
                storage::load(w.reader().unwrap(), id).unwrap().is_some(),
                "{id} is stored"
            );
            assert_eq!(audit_rows(&mut w, id), 1);
            assert!(w.hub.document(&id).is_some(), "the hub keeps {id}");
        }
        // Nothing of the failing document stayed: not its bytes (written
        // before the audit row failed), not its audit row.
        assert!(storage::load(w.reader().unwrap(), bad).unwrap().is_none());
        assert_eq!(audit_rows(&mut w, bad), 0);
        assert!(
            w.hub.document(&bad).is_none(),
            "the hub dropped the document it could not store"
        );
        assert!(
            fx.events
                .iter()
                .filter(|e| matches!(e, Event::DocumentChanged { .. }))
                .count()
                == 2,
            "{:?}",
            fx.events
        );
        // The audit chain is whole after the rollback.
        let report = crate::audit::verify(w.reader().unwrap()).unwrap();
        assert_eq!(report.entries, 2);
    }

    #[test]
    fn changes_from_a_connection_record_their_actors_with_the_document() {
        let (_dir, mut w) = worker();
        let id = DocumentId::from_bytes([7; 16]);
        let tablet = ActorId::from([0x5a; 16]);
        let mut doc = Automerge::new().with_actor(tablet.clone());
        doc.transact(|tx| tx.put(automerge::ROOT, "note", "hello"))
            .unwrap();
        let changes = doc.get_changes(&[]);
        // The connection ended in the same batch: its identity is kept
        // until the commit.
        w.who.insert(
            9,
            PeerInfo {
                user_id: "u-insp1".into(),
                role: Role::Inspector,
                team_id: Some("t-a".into()),
                unit_code: None,
                device_id: "tab-1".into(),
            },
        );
        w.departed.push(9);
        let mut fx = Effects::default();
        fx.store.push(StoreRequest {
            ticket: 1,
            document_id: id,
            changes,
            heads: doc.get_heads(),
            created: false,
            from: Some(9),
        });
        let failed = w.commit(&mut fx);
        assert!(failed.is_empty(), "{failed:?}");
        let owner = db::actors::owner_of(w.reader().unwrap(), &tablet).unwrap();
        assert_eq!(
            owner,
            Some(ActorOwner {
                user_id: "u-insp1".into(),
                device_id: "tab-1".into()
            })
        );
        assert_eq!(
            count(
                &mut w,
                "SELECT count(*) FROM audit_log WHERE actor = ?1",
                "u-insp1"
            ),
            1,
            "the audit row names the user"
        );

        // A restarted worker knows the actor before anyone writes.
        let (_dir2, mut fresh) = worker();
        fresh.db_path = w.db_path.clone();
        fresh.reader = None;
        let n = fresh.load_actors().unwrap();
        assert_eq!(n, 2, "the tablet's actor and the server's own");
        assert_eq!(
            fresh
                .hub
                .access()
                .actor_owner(&tablet)
                .map(|o| o.device_id.as_str()),
            Some("tab-1")
        );
    }

    #[test]
    fn the_server_actor_cannot_be_claimed_through_the_registry() {
        let (_dir, mut w) = worker();
        let server = server_actor().to_hex_string();
        w.db.write_blocking(move |tx| {
            tx.execute(
                "INSERT INTO actors VALUES (?1, 'u-mallory', 'evil', '2025-01-01T00:00:00Z')",
                [server],
            )
            .map_err(DbError::from)
        })
        .unwrap();
        w.load_actors().unwrap();
        let owner = w.hub.access().actor_owner(&server_actor()).unwrap();
        assert_eq!(owner.user_id, SERVER_USER);
        assert_eq!(owner.device_id, SERVER_DEVICE);
    }

    #[test]
    fn creating_over_an_unreadable_document_is_a_storage_error() {
        let (_dir, mut w) = worker();
        let id = DocumentId::from_bytes([4; 16]);
        let mut fx = w.hub.insert_document(id, catalog_doc(), 0);
        assert!(w.commit(&mut fx).is_empty());
        w.hub.unload(&id);
        w.db.write_blocking(move |tx| {
            tx.execute(
                "UPDATE doc_store_changes SET data = x'00' WHERE doc_id = ?1",
                [id.as_bytes()],
            )
            .map_err(DbError::from)
        })
        .unwrap();

        let (reply, mut rx) = oneshot::channel();
        let mut replies = Vec::new();
        let fx = w.handle(
            Command::Create {
                id,
                doc: Box::new(catalog_doc()),
                reply,
            },
            &mut replies,
        );
        assert!(fx.store.is_empty(), "nothing is written over it");
        assert!(replies.is_empty());
        match rx.try_recv() {
            Ok(Err(SyncError::Storage(reason))) => {
                assert!(reason.contains("corrupt"), "{reason}");
            }
            other => panic!("expected a storage error, got {other:?}"),
        }
        // A document that really is absent is still created.
        let (reply, mut rx) = oneshot::channel();
        let other = DocumentId::from_bytes([5; 16]);
        let mut fx = w.handle(
            Command::Create {
                id: other,
                doc: Box::new(catalog_doc()),
                reply,
            },
            &mut replies,
        );
        assert_eq!(replies.len(), 1);
        assert!(rx.try_recv().is_err(), "answered after the commit");
        assert!(w.commit(&mut fx).is_empty());
    }
}
