//! A sync peer for the end-to-end tests: the real protocol engine
//! (`sync_core`'s [`Hub`] in [`Mode::Client`]) over a real WebSocket
//! (`tokio-tungstenite`) to the server's `/sync`.
//!
//! - [`Peer`] logs in (or takes a token), connects with
//!   `Authorization: Bearer …` (peer id = the token's device id, automerge
//!   actor = random per peer), and offers bounded async helpers:
//!   [`Peer::want`], [`Peer::edit`], [`Peer::wait_synced`],
//!   [`Peer::wait_doc`], [`Peer::wait_error`], [`Peer::wait_refused`],
//!   [`Peer::wait_unavailable`], [`Peer::reconnect`]. It
//!   stores nothing on disk: store requests of the hub are "committed" at
//!   once, in memory. Every frame it receives is decoded and kept
//!   ([`Peer::received`], [`Peer::errors`]), and the heads the server
//!   reports in its `sync` messages mark this peer's own changes as
//!   *confirmed* ([`Peer::confirmed`]): the server only sends heads it has
//!   committed. `PEER_TRACE=1` prints every frame in and out.
//! - [`RawConn`] is a bare WebSocket for sending hand-made frames and
//!   reading back exactly what the server answers.
//! - [`open_ws`] opens the WebSocket itself, so a test can look at a refused
//!   upgrade (`tungstenite::Error::Http`).
//!
//! - Server-side helpers: [`stored_rows`] / [`stored_doc`] read the
//!   database file read-only; [`inspection_of`], [`token_of`] and friends
//!   wrap the HTTP API.
//!
//! Every wait is bounded by [`tests::TIMEOUT`].
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use automerge::transaction::Transaction;
use automerge::{ActorId, Automerge, ChangeHash};
use futures_util::{SinkExt, StreamExt};
use sync_core::ids::DocumentId;
use sync_core::model::ModelError;
use sync_core::protocol::hub::{AllowAll, ConnId, Effects, Event, Hub, HubConfig, Mode};
use sync_core::protocol::{ErrorDetail, Limits, Message, PROTOCOL_V1, codec};
use tests::TIMEOUT;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The client side of a `/sync` WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a peer must see no new frame, while synced, before
/// [`Peer::wait_synced`] believes the exchange is over.
const QUIET: Duration = Duration::from_millis(60);

/// `http://host:port` → `ws://host:port/sync`.
pub fn sync_url(base: &str) -> String {
    let rest = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("ws://"))
        .unwrap_or(base);
    format!("ws://{}/sync", rest.trim_end_matches('/'))
}

/// How a WebSocket presents its access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenIn {
    /// `Authorization: Bearer <jwt>`.
    Header,
    /// `/sync?token=<jwt>` (what a browser does).
    Query,
}

/// Opens `/sync` on `base` with `token` (none: no credentials at all).
pub async fn open_ws(
    base: &str,
    token: Option<&str>,
    how: TokenIn,
) -> Result<Ws, tungstenite::Error> {
    let mut url = sync_url(base);
    if let (Some(t), TokenIn::Query) = (token, how) {
        url = format!("{url}?token={t}");
    }
    let mut req = url.into_client_request()?;
    if let (Some(t), TokenIn::Header) = (token, how) {
        let value = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
        req.headers_mut().insert("authorization", value);
    }
    // Larger than any server limit used in the tests, so that the server's
    // limit is the one being tested.
    let config = WebSocketConfig::default()
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20));
    let (ws, _response) = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async_with_config(req, Some(config), true),
    )
    .await
    .map_err(|_| tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()))??;
    Ok(ws)
}

/// Milliseconds since the Unix epoch, the hub's notion of "now".
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A close frame as received: code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// `None` when the connection ended without a close frame.
    pub code: Option<u16>,
    pub reason: String,
}

/// Everything one peer knows, behind one lock. Never held across an await.
#[derive(Debug)]
struct State {
    hub: Hub<AllowAll>,
    /// The current connection's number in the hub.
    conn: ConnId,
    /// Frames to send on the current connection.
    out: Option<mpsc::UnboundedSender<WsMessage>>,
    /// The current connection has ended.
    ended: Option<Closed>,
    /// Every message received, decoded, in order (across reconnects).
    log: Vec<Message>,
    /// Frames received on the current connection (for quiet detection).
    frames: u64,
    /// Documents the server said it does not have for us.
    unavailable: HashSet<DocumentId>,
    /// Changes this peer made, per document, in order.
    mine: HashMap<DocumentId, Vec<ChangeHash>>,
    /// Own changes the server has shown (by its heads) that it holds.
    confirmed: HashSet<ChangeHash>,
    /// The heads the server reported last, per document.
    server_heads: HashMap<DocumentId, Vec<ChangeHash>>,
    /// What the hub reported that a test may want to see: exchanges it cut,
    /// protocol errors (rendered with `Debug`).
    events: Vec<String>,
    /// Prints every frame in and out to standard error (`PEER_TRACE=1`).
    trace: Option<String>,
}

/// One line about a frame, for `PEER_TRACE`.
fn summarize(bytes: &[u8]) -> String {
    match codec::decode(bytes, &Limits::default()) {
        Ok(Message::Sync {
            document_id, data, ..
        })
        | Ok(Message::Request {
            document_id, data, ..
        }) => match automerge::sync::Message::decode(&data) {
            Ok(m) => format!(
                "sync {document_id}: heads {:?} need {:?} have {} changes {}",
                m.heads
                    .iter()
                    .map(|h| h.to_string()[..8].to_owned())
                    .collect::<Vec<_>>(),
                m.need
                    .iter()
                    .map(|h| h.to_string()[..8].to_owned())
                    .collect::<Vec<_>>(),
                m.have.len(),
                m.changes.len()
            ),
            Err(e) => format!("sync {document_id}: undecodable ({e})"),
        },
        Ok(m) => m.type_name().to_owned(),
        Err(e) => format!("undecodable: {e}"),
    }
}

impl State {
    /// Carries out the hub's effects: stores commit at once (in memory),
    /// frames go to the current connection. Returns the hashes of local
    /// changes stored.
    fn apply(&mut self, mut fx: Effects) -> Vec<ChangeHash> {
        let mut local = Vec::new();
        loop {
            let stores = std::mem::take(&mut fx.store);
            if stores.is_empty() {
                break;
            }
            for s in stores {
                if s.from.is_none() {
                    let hashes: Vec<ChangeHash> = s.changes.iter().map(|c| c.hash()).collect();
                    self.mine
                        .entry(s.document_id)
                        .or_default()
                        .extend(hashes.iter().copied());
                    local.extend(hashes);
                }
                let more = self.hub.committed(s.ticket, now_ms());
                fx.merge(more);
            }
        }
        for e in &fx.events {
            if matches!(
                e,
                Event::SyncAborted { .. }
                    | Event::ProtocolError { .. }
                    | Event::Rejected { .. }
                    | Event::Refused { .. }
            ) {
                self.events.push(format!("{e:?}"));
            }
        }
        for o in fx.outgoing {
            if let Some(label) = &self.trace {
                eprintln!("[{label} c{}] out {}", o.conn, summarize(&o.bytes));
            }
            if o.conn == self.conn
                && let Some(out) = &self.out
            {
                let _ = out.send(WsMessage::Binary(o.bytes.into()));
            }
        }
        for (conn, reason) in fx.close {
            if conn == self.conn
                && let Some(out) = &self.out
            {
                let _ = out.send(WsMessage::Close(Some(tungstenite::protocol::CloseFrame {
                    code: tungstenite::protocol::frame::coding::CloseCode::Normal,
                    reason: reason.chars().take(100).collect::<String>().into(),
                })));
            }
        }
        local
    }

    /// One binary frame from the server on connection `conn`.
    fn on_frame(&mut self, conn: ConnId, bytes: &[u8]) {
        if conn != self.conn {
            return;
        }
        self.frames += 1;
        if let Some(label) = &self.trace {
            eprintln!("[{label} c{conn}] in {}", summarize(bytes));
        }
        let decoded = codec::decode(bytes, &Limits::default()).ok();
        let fx = self.hub.receive(conn, bytes, now_ms());
        self.apply(fx);
        let Some(msg) = decoded else {
            return;
        };
        match &msg {
            Message::Sync {
                document_id, data, ..
            }
            | Message::Request {
                document_id, data, ..
            } => {
                if let Ok(m) = automerge::sync::Message::decode(data) {
                    self.record_server_heads(*document_id, m.heads);
                }
            }
            Message::DocUnavailable { document_id, .. } => {
                self.unavailable.insert(*document_id);
            }
            _ => {}
        }
        self.log.push(msg);
    }

    /// The sync situation, for failure messages.
    fn describe(&self) -> String {
        let mut out = format!(
            "hub events {:?}; {} frames on this connection, {} messages in all; hub synced {}",
            self.events,
            self.frames,
            self.log.len(),
            self.hub.is_synced(self.conn)
        );
        for id in self.hub.document_ids() {
            let Some(doc) = self.hub.document(&id) else {
                continue;
            };
            let reported = self.server_heads.get(&id).cloned().unwrap_or_default();
            let known = reported
                .iter()
                .filter(|h| doc.get_change_meta_by_hash(h).is_some())
                .count();
            out.push_str(&format!(
                "; {id}: {} changes, heads {:?}, server reported {:?} ({known} known here)",
                doc.get_changes(&[]).len(),
                doc.get_heads(),
                reported
            ));
        }
        if let Some(last) = self.log.last() {
            out.push_str(&format!("; last message {}", last.type_name()));
        }
        out
    }

    /// Every held document is at the heads the server last reported.
    fn settled(&self) -> bool {
        self.hub.document_ids().iter().all(|id| {
            let Some(doc) = self.hub.document(id) else {
                return false;
            };
            let mut reported = self.server_heads.get(id).cloned().unwrap_or_default();
            reported.sort();
            reported == doc.get_heads()
        })
    }

    /// The server holds (committed) every ancestor of `heads`: mark own
    /// changes among them as confirmed. Heads this peer does not know yet
    /// are left out, which can only under-count.
    fn record_server_heads(&mut self, id: DocumentId, heads: Vec<ChangeHash>) {
        self.server_heads.insert(id, heads.clone());
        let Some(doc) = self.hub.document(&id) else {
            return;
        };
        let known: Vec<ChangeHash> = heads
            .into_iter()
            .filter(|h| doc.get_change_meta_by_hash(h).is_some())
            .collect();
        if known.is_empty() {
            return;
        }
        let Some(mine) = self.mine.get(&id) else {
            return;
        };
        let pending: Vec<ChangeHash> = mine
            .iter()
            .filter(|h| !self.confirmed.contains(h))
            .copied()
            .collect();
        if pending.is_empty() {
            return;
        }
        // Changes not reachable from the server's heads.
        let newer: HashSet<ChangeHash> = doc.get_changes(&known).iter().map(|c| c.hash()).collect();
        for h in pending {
            if doc.get_change_meta_by_hash(&h).is_some() && !newer.contains(&h) {
                self.confirmed.insert(h);
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Bumped whenever the state changes, to wake waiters.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread poisons the lock; the state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Distinct connection numbers and device ids across all peers of a test run.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// A sync peer (a tablet without storage), connected to one server.
pub struct Peer {
    /// A label for messages (the username, usually).
    pub name: String,
    /// The peer id sent in `join` (the token's device id).
    pub peer_id: String,
    /// The token's subject: the user's id (for `by` fields).
    pub user_id: String,
    token: String,
    shared: Arc<Shared>,
    driver: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("name", &self.name)
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(d) = self.driver.take() {
            d.abort();
        }
    }
}

impl Peer {
    /// Logs `username` in with the demo password on a fresh device id and
    /// connects.
    pub async fn login(base: &str, username: &str) -> Peer {
        Peer::login_with_actor(base, username, ActorId::random()).await
    }

    /// Like [`Peer::login`], but writing with the automerge `actor` given
    /// (for instance another device's), not a random one of its own.
    pub async fn login_with_actor(base: &str, username: &str, actor: ActorId) -> Peer {
        let token = device_token(base, username).await;
        Peer::connect_with_actor(base, &token, username, actor)
            .await
            .unwrap_or_else(|e| panic!("{username} could not open /sync: {e}"))
    }

    /// Connects with an access token; the peer id is the token's device id.
    pub async fn connect(base: &str, token: &str, name: &str) -> Result<Peer, tungstenite::Error> {
        // Each peer its own automerge actor, as each tablet has.
        Peer::connect_with_actor(base, token, name, ActorId::random()).await
    }

    /// [`Peer::connect`] with a chosen automerge actor.
    pub async fn connect_with_actor(
        base: &str,
        token: &str,
        name: &str,
        actor: ActorId,
    ) -> Result<Peer, tungstenite::Error> {
        let (_, claims) = tests::decode_unverified(token);
        let peer_id = claims["did"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{name}-peer"));
        let user_id = claims["sub"].as_str().unwrap_or_default().to_owned();
        let mut config = HubConfig::new(Mode::Client, peer_id.clone());
        config.actor = Some(actor);
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                hub: Hub::new(config, AllowAll),
                conn: 0,
                out: None,
                ended: Some(Closed {
                    code: None,
                    reason: "not connected yet".into(),
                }),
                log: Vec::new(),
                frames: 0,
                unavailable: HashSet::new(),
                mine: HashMap::new(),
                confirmed: HashSet::new(),
                server_heads: HashMap::new(),
                events: Vec::new(),
                trace: std::env::var_os("PEER_TRACE").map(|_| peer_id.clone()),
            }),
            changed,
        });
        let mut peer = Peer {
            name: name.to_owned(),
            peer_id,
            user_id,
            token: token.to_owned(),
            shared,
            driver: None,
        };
        peer.reconnect(base).await?;
        Ok(peer)
    }

    /// Opens a new connection to `base` (the same server after a restart,
    /// or another). The documents held stay; the exchanges restart afresh.
    pub async fn reconnect(&mut self, base: &str) -> Result<(), tungstenite::Error> {
        if let Some(d) = self.driver.take() {
            d.abort();
        }
        let ws = open_ws(base, Some(&self.token), TokenIn::Header).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = NEXT.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = self.shared.lock();
            let old = st.conn;
            let fx = st.hub.disconnect(old);
            st.apply(fx);
            st.conn = conn;
            st.out = Some(tx);
            st.ended = None;
            st.frames = 0;
            let fx = st.hub.connect(conn, (), now_ms());
            st.apply(fx);
        }
        self.driver = Some(tokio::spawn(drive(ws, conn, self.shared.clone(), rx)));
        self.wait_until("the handshake", |st| {
            st.hub.is_ready(conn) || st.ended.is_some()
        })
        .await;
        let st = self.shared.lock();
        if let Some(closed) = &st.ended {
            panic!(
                "{}: connection ended during the handshake: {closed:?}; errors {:?}",
                self.name,
                errors_in(&st.log)
            );
        }
        Ok(())
    }

    /// The automerge actor this peer writes with.
    pub fn actor(&self) -> ActorId {
        self.shared
            .lock()
            .hub
            .config()
            .actor
            .clone()
            .unwrap_or_else(|| ActorId::from([0u8; 16]))
    }

    /// The access token this peer connects with.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Replaces the token used by the next [`Peer::reconnect`].
    pub fn set_token(&mut self, token: &str) {
        self.token = token.to_owned();
    }

    /// Closes the connection (close frame) and stops the driver.
    pub async fn close(&mut self) {
        let out = self.shared.lock().out.clone();
        if let Some(out) = out {
            let _ = out.send(WsMessage::Close(None));
        }
        let _ = self
            .wait_until_for(Duration::from_secs(5), |st| st.ended.is_some())
            .await;
        if let Some(d) = self.driver.take() {
            d.abort();
        }
    }

    /// Asks the server for a document, without waiting for the answer.
    pub fn ask(&self, id: DocumentId) {
        let mut st = self.shared.lock();
        let fx = st.hub.want(id, now_ms());
        st.apply(fx);
    }

    /// Asks the server for a document and waits (bounded) for the outcome:
    /// `true` once content arrived, `false` on `doc-unavailable`.
    pub async fn want(&self, id: DocumentId) -> bool {
        self.ask(id);
        self.wait_until(&format!("an answer about {id}"), |st| {
            st.hub.document(&id).is_some() || st.unavailable.contains(&id) || st.ended.is_some()
        })
        .await;
        self.shared.lock().hub.document(&id).is_some()
    }

    /// Offers a new document, as a tablet that made one itself would: it
    /// is "stored" locally, then announced to the server with a `sync`
    /// message. Returns its change hashes.
    pub fn offer(&self, id: DocumentId, doc: Automerge) -> Vec<ChangeHash> {
        let mut st = self.shared.lock();
        let fx = st.hub.insert_document(id, doc, now_ms());
        let hashes = st.apply(fx);
        drop(st);
        self.shared.bump();
        hashes
    }

    /// Edits a held document in one automerge change made with this peer's
    /// actor, then sends it. Returns the new change hashes.
    pub async fn edit<F>(&self, id: DocumentId, f: F) -> Result<Vec<ChangeHash>, String>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<(), ModelError>,
    {
        let mut st = self.shared.lock();
        let result = st.hub.update(&id, now_ms(), |doc: &mut Automerge| {
            doc.transact(f).map(|_| ()).map_err(|failure| failure.error)
        });
        match result {
            Ok(((), fx)) => {
                let hashes = st.apply(fx);
                drop(st);
                self.shared.bump();
                Ok(hashes)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Waits (bounded) until, for every document this peer holds, the
    /// server's last reported heads equal this peer's heads, and that stays
    /// so with no new frame for a short moment. Panics on timeout or if the
    /// connection ends.
    ///
    /// (`Hub::is_synced` cannot serve here: the side that sends the last
    /// acknowledgement of an exchange keeps `in_flight` set, because the
    /// other side has nothing to answer.)
    pub async fn wait_synced(&self) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            self.wait_until("sync", |st| st.settled() || st.ended.is_some())
                .await;
            let frames = {
                let st = self.shared.lock();
                if let Some(closed) = &st.ended {
                    panic!("{}: connection ended while syncing: {closed:?}", self.name);
                }
                st.frames
            };
            tokio::time::sleep(QUIET).await;
            {
                let st = self.shared.lock();
                if st.frames == frames && st.settled() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: sync did not settle in {TIMEOUT:?}",
                self.name
            );
        }
    }

    /// What the hub reported: exchanges it cut, protocol errors, refusals.
    pub fn hub_events(&self) -> Vec<String> {
        self.shared.lock().events.clone()
    }

    /// Whether the hub itself considers the connection synced
    /// ([`Hub::is_synced`]).
    pub fn hub_is_synced(&self) -> bool {
        let st = self.shared.lock();
        st.hub.is_synced(st.conn)
    }

    /// Waits (bounded) until `pred` holds on the current content of `id`.
    /// Panics on timeout, naming `what`.
    pub async fn wait_doc(&self, id: DocumentId, what: &str, pred: impl Fn(&Automerge) -> bool) {
        self.wait_until(what, |st| st.hub.document(&id).is_some_and(&pred))
            .await;
    }

    /// Waits (bounded) for an `error` message containing `needle`; returns
    /// its text. Panics on timeout.
    pub async fn wait_error(&self, needle: &str) -> String {
        self.wait_until(&format!("an error containing {needle:?}"), |st| {
            errors_in(&st.log).iter().any(|e| e.contains(needle))
        })
        .await;
        self.errors()
            .into_iter()
            .find(|e| e.contains(needle))
            .unwrap_or_default()
    }

    /// Waits (bounded) for the server's `doc-unavailable` about `id`.
    pub async fn wait_unavailable(&self, id: DocumentId) {
        self.wait_until(&format!("doc-unavailable about {id}"), |st| {
            st.unavailable.contains(&id)
        })
        .await;
    }

    /// Whether the server said `doc-unavailable` about `id`.
    pub fn was_unavailable(&self, id: DocumentId) -> bool {
        self.shared.lock().unavailable.contains(&id)
    }

    /// Every `error` message received, with its structured part.
    pub fn error_messages(&self) -> Vec<(String, Option<ErrorDetail>)> {
        self.shared
            .lock()
            .log
            .iter()
            .filter_map(|m| match m {
                Message::Error {
                    message, detail, ..
                } => Some((message.clone(), detail.as_deref().cloned())),
                _ => None,
            })
            .collect()
    }

    /// Waits (bounded) for an `error` about document `id` with `code`
    /// (`refused`, `retry-later`, …); returns its text and structured part.
    pub async fn wait_error_code(&self, id: DocumentId, code: &str) -> (String, ErrorDetail) {
        let matches = |detail: &Option<Box<ErrorDetail>>| {
            detail
                .as_ref()
                .is_some_and(|d| d.document_id == Some(id) && d.code.as_deref() == Some(code))
        };
        self.wait_until(&format!("an error {code:?} about {id}"), |st| {
            st.log
                .iter()
                .any(|m| matches!(m, Message::Error { detail, .. } if matches(detail)))
        })
        .await;
        self.shared
            .lock()
            .log
            .iter()
            .find_map(|m| match m {
                Message::Error {
                    message, detail, ..
                } if matches(detail) => Some((message.clone(), *detail.clone()?)),
                _ => None,
            })
            .unwrap()
    }

    /// [`Peer::wait_error_code`] for a refusal (`refused`).
    pub async fn wait_refused(&self, id: DocumentId) -> (String, ErrorDetail) {
        self.wait_error_code(id, "refused").await
    }

    /// Waits (bounded) until the connection has ended; returns how.
    pub async fn wait_ended(&self) -> Closed {
        self.wait_until("the end of the connection", |st| st.ended.is_some())
            .await;
        self.shared.lock().ended.clone().unwrap()
    }

    /// The text of every `error` message received.
    pub fn errors(&self) -> Vec<String> {
        errors_in(&self.shared.lock().log)
    }

    /// Every message received, decoded, in order.
    pub fn received(&self) -> Vec<Message> {
        self.shared.lock().log.clone()
    }

    /// `sync`/`request` messages received about `id`.
    pub fn syncs_about(&self, id: DocumentId) -> usize {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|m| {
                matches!(m, Message::Sync { document_id, .. } | Message::Request { document_id, .. } if *document_id == id)
            })
            .count()
    }

    /// A copy of a held document.
    pub fn doc(&self, id: DocumentId) -> Option<Automerge> {
        self.shared.lock().hub.document(&id).cloned()
    }

    /// The heads of a held document (empty if not held).
    pub fn heads(&self, id: DocumentId) -> Vec<ChangeHash> {
        self.shared
            .lock()
            .hub
            .document(&id)
            .map(Automerge::get_heads)
            .unwrap_or_default()
    }

    /// The heads the server last reported for `id` in a sync message.
    pub fn server_heads(&self, id: DocumentId) -> Vec<ChangeHash> {
        let mut h = self
            .shared
            .lock()
            .server_heads
            .get(&id)
            .cloned()
            .unwrap_or_default();
        h.sort();
        h
    }

    /// The changes this peer made to `id`, in order.
    pub fn my_changes(&self, id: DocumentId) -> Vec<ChangeHash> {
        self.shared
            .lock()
            .mine
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Own changes (to `id`) the server has confirmed holding.
    pub fn confirmed(&self, id: DocumentId) -> Vec<ChangeHash> {
        let st = self.shared.lock();
        st.mine
            .get(&id)
            .map(|m| {
                m.iter()
                    .filter(|h| st.confirmed.contains(h))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the current connection has ended, and how.
    pub fn ended(&self) -> Option<Closed> {
        self.shared.lock().ended.clone()
    }

    async fn wait_until(&self, what: &str, pred: impl Fn(&State) -> bool) {
        if !self.wait_until_for(TIMEOUT, pred).await {
            let st = self.shared.lock();
            panic!(
                "{}: gave up waiting for {what} after {TIMEOUT:?}; errors {:?}, ended {:?}; {}",
                self.name,
                errors_in(&st.log),
                st.ended,
                st.describe()
            );
        }
    }

    /// Waits until `pred` holds or `limit` passes; returns whether it held.
    async fn wait_until_for(&self, limit: Duration, pred: impl Fn(&State) -> bool) -> bool {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if pred(&self.shared.lock()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return pred(&self.shared.lock()),
            }
        }
    }
}

fn errors_in(log: &[Message]) -> Vec<String> {
    log.iter()
        .filter_map(|m| match m {
            Message::Error { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// Owns one WebSocket: feeds incoming frames to the hub, sends what the
/// hub queued, ticks the hub once a second.
async fn drive(
    mut ws: Ws,
    conn: ConnId,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<WsMessage>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let ended = loop {
        tokio::select! {
            incoming = ws.next() => match incoming {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    shared.lock().on_frame(conn, &bytes);
                    shared.bump();
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    break Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Closed { code: None, reason: e.to_string() },
                None => break Closed { code: None, reason: "the stream ended".into() },
            },
            out = rx.recv() => match out {
                Some(msg) => {
                    if let Err(e) = ws.send(msg).await {
                        break Closed { code: None, reason: format!("send failed: {e}") };
                    }
                }
                None => break Closed { code: None, reason: "the peer went away".into() },
            },
            _ = tick.tick() => {
                let mut st = shared.lock();
                if st.conn == conn {
                    let fx = st.hub.tick(now_ms());
                    st.apply(fx);
                }
            }
        }
    };
    {
        let mut st = shared.lock();
        if st.conn == conn {
            st.ended = Some(ended);
            st.out = None;
        }
    }
    shared.bump();
}

// ------------------------------------------------------------------ raw

/// What a [`RawConn`] read.
#[derive(Debug, Clone, PartialEq)]
pub enum RawEvent {
    /// A binary frame that decoded as a protocol message.
    Message(Message),
    /// A binary frame that did not decode.
    Undecodable(Vec<u8>),
    /// A text frame (the server should never send one).
    Text(String),
    /// A close frame.
    Closed(Closed),
    /// The connection ended without a close frame (reset, EOF).
    Ended(String),
}

/// A bare WebSocket on `/sync`, for hand-made frames.
#[derive(Debug)]
pub struct RawConn {
    ws: Ws,
}

impl RawConn {
    /// Opens `/sync` with a bearer token.
    pub async fn open(base: &str, token: &str) -> RawConn {
        RawConn {
            ws: open_ws(base, Some(token), TokenIn::Header).await.unwrap(),
        }
    }

    /// Sends one binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(WsMessage::Binary(bytes.into())).await.unwrap();
    }

    /// Sends a protocol message.
    pub async fn send(&mut self, msg: &Message) {
        self.send_binary(codec::encode(msg)).await;
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(WsMessage::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// Sends `join` as `peer_id` and returns the server's answer.
    pub async fn join(&mut self, peer_id: &str) -> RawEvent {
        self.send(&Message::Join {
            sender_id: peer_id.to_owned(),
            supported_protocol_versions: vec![PROTOCOL_V1.to_owned()],
            peer_metadata: None,
        })
        .await;
        self.next().await
    }

    /// The next thing the server does (bounded; panics on timeout).
    pub async fn next(&mut self) -> RawEvent {
        let incoming = tokio::time::timeout(TIMEOUT, self.ws.next())
            .await
            .expect("the server neither answered nor closed in time");
        match incoming {
            Some(Ok(WsMessage::Binary(bytes))) => match codec::decode(&bytes, &Limits::default()) {
                Ok(m) => RawEvent::Message(m),
                Err(_) => RawEvent::Undecodable(bytes.to_vec()),
            },
            Some(Ok(WsMessage::Text(t))) => RawEvent::Text(t.to_string()),
            Some(Ok(WsMessage::Close(frame))) => RawEvent::Closed(Closed {
                code: frame.as_ref().map(|f| u16::from(f.code)),
                reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
            }),
            Some(Ok(other)) => RawEvent::Text(format!("non-data frame {other:?}")),
            Some(Err(e)) => RawEvent::Ended(e.to_string()),
            None => RawEvent::Ended("the stream ended".into()),
        }
    }

    /// Reads until the connection ends; returns everything read, the end
    /// included (bounded).
    pub async fn drain(&mut self) -> Vec<RawEvent> {
        let mut out = Vec::new();
        loop {
            let e = self.next().await;
            let last = matches!(e, RawEvent::Closed(_) | RawEvent::Ended(_));
            out.push(e);
            if last {
                return out;
            }
        }
    }
}

// ------------------------------------------------------------ server side

/// The database file in a data folder.
pub fn db_file(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("kiemtra.sqlite3")
}

fn open_read_only(db: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// Every stored document row and change row, in a fixed order, as raw
/// values: two calls return equal vectors exactly when nothing about any
/// document's stored bytes changed in between.
pub fn stored_rows(db: &std::path::Path) -> Vec<Vec<u8>> {
    use rusqlite::types::Value;
    let conn = open_read_only(db);
    let mut out = Vec::new();
    for sql in [
        "SELECT * FROM doc_store_documents ORDER BY doc_id",
        "SELECT * FROM doc_store_changes ORDER BY doc_id, seq",
        "SELECT * FROM doc_store_snapshot_clock ORDER BY doc_id, actor",
    ] {
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let mut bytes = Vec::new();
            for i in 0..n {
                match row.get::<_, Value>(i).unwrap() {
                    Value::Null => bytes.extend(b"N;"),
                    Value::Integer(v) => bytes.extend(format!("I{v};").as_bytes()),
                    Value::Real(v) => bytes.extend(format!("R{v};").as_bytes()),
                    Value::Text(t) => bytes.extend(format!("T{}:{t};", t.len()).as_bytes()),
                    Value::Blob(b) => {
                        bytes.extend(format!("B{}:", b.len()).as_bytes());
                        bytes.extend(b);
                    }
                }
            }
            out.push(bytes);
        }
    }
    out
}

/// A document as the server stored it (read-only connection).
pub fn stored_doc(db: &std::path::Path, id: DocumentId) -> Option<Automerge> {
    sync_core::storage::load(&open_read_only(db), id).unwrap()
}

/// `GET /api/v1/inspections` with `token`.
pub async fn list_inspections(base: &str, token: &str) -> Vec<serde_json::Value> {
    let r = tests::get_with(
        &tests::client(),
        &format!("{base}/api/v1/inspections"),
        token,
    )
    .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// `GET /api/v1/inspections/{id}` with `token`: (status, body).
pub async fn get_inspection(base: &str, token: &str, id: DocumentId) -> (u16, serde_json::Value) {
    let r = tests::get_with(
        &tests::client(),
        &format!("{base}/api/v1/inspections/{id}"),
        token,
    )
    .await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// The demo inspection of `unit_code`, as seen by `token`'s user.
pub async fn inspection_of(base: &str, token: &str, unit_code: &str) -> DocumentId {
    let list = list_inspections(base, token).await;
    let id = list
        .iter()
        .find(|v| v["unit_code"] == unit_code)
        .and_then(|v| v["id"].as_str())
        .unwrap_or_else(|| panic!("no inspection of unit {unit_code} in {list:?}"));
    DocumentId::parse(id).unwrap()
}

/// An access token for `username` (demo password) on a device id of its
/// own (`USERNAME-devN`), as each tablet has.
pub async fn device_token(base: &str, username: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let device = format!("{username}-dev{n}");
    let r = tests::login(
        &tests::client(),
        base,
        username,
        server::demo::DEMO_PASSWORD,
        &device,
    )
    .await;
    assert_eq!(r.status(), 200, "login of {username}");
    let tokens: tests::Tokens = r.json().await.unwrap();
    tokens.access_token
}

/// An access token for `username` (demo password) on the device
/// `test-device`.
pub async fn token_of(base: &str, username: &str) -> String {
    tests::login_ok(
        &tests::client(),
        base,
        username,
        server::demo::DEMO_PASSWORD,
    )
    .await
    .access_token
}
