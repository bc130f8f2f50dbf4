//! The tablet's engine: `sync-core`'s [`Hub`] in client mode over the
//! device store.
//!
//! Every document lives in the hub; every change, local or received, goes
//! through it. This module only carries out the hub's [`Effects`]: each
//! [`StoreRequest`] is committed to SQLite *before* the hub hears
//! [`Hub::committed`] (so nothing is ever announced that a crash could
//! lose), and frames for the connection of the running sync session are
//! handed to that session's writer. There is no merge or protocol logic
//! here.
//!
//! Local edits are checked before they are committed ([`Engine::edit`]):
//! the new change goes through `sync_core::protocol::intake::intake` with
//! `sync_core::access::DocumentRules` and the signed-in user's identity —
//! the very check the server runs — so an edit the server would refuse is
//! never made. Edits are written with a fresh random actor per opening of
//! the store and per login (see [`crate::store`]).
//!
//! When the server refuses changes anyway (its rules or the document
//! changed while the tablet was offline), [`Engine::quarantine`] keeps the
//! changes the server does not hold and rebuilds the document from the
//! server's history; [`crate::rebase`] then writes the work again.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;

use automerge::transaction::{CommitOptions, Transaction};
use automerge::{ActorId, Automerge, ChangeHash, ReadDoc};
use sync_core::DocumentId;
use sync_core::access::{DocumentRules, PeerInfo};
use sync_core::model::{self, ModelError};
use sync_core::policy::{Rule, Violation};
use sync_core::protocol::hub::{
    AllowAll, ConnId, Effects, Event, Hub, HubConfig, Mode, PeerDocState, UpdateError,
};
use sync_core::protocol::intake::intake;
use sync_core::protocol::message::ErrorDetail;
use sync_core::template::{Template, TemplateRegistry};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{FieldError, Result};
use crate::store::{DeviceStore, NewRefusal, RefusedChange};

/// Kind recorded for a document whose `kind` is not known yet (its first
/// changes have not arrived). Kinds never change once stored, so such a
/// document keeps this name in the store; readers look at the content.
const UNKNOWN_KIND: &str = "unknown";

/// The connection of the running sync session.
#[derive(Debug)]
struct Active {
    conn: ConnId,
    out: UnboundedSender<Vec<u8>>,
}

/// What carrying out effects produced, for the sync session.
#[derive(Debug, Default)]
pub struct Outcome {
    pub events: Vec<Event>,
    /// Connections the hub asked to close, with the reason.
    pub close: Vec<(ConnId, String)>,
}

/// Why a checked edit was not made.
#[derive(Debug)]
pub enum EditError {
    /// The server would refuse the change: every rule it breaks.
    Refused(Vec<Violation>),
    /// The edit itself failed (missing document, bad argument, storage).
    Failed(FieldError),
}

impl From<FieldError> for EditError {
    fn from(e: FieldError) -> Self {
        EditError::Failed(e)
    }
}

impl From<EditError> for FieldError {
    fn from(e: EditError) -> Self {
        match e {
            EditError::Refused(v) => refusal_error(&v),
            EditError::Failed(e) => e,
        }
    }
}

/// The violation to show for a refused edit: the first that is not merely
/// "depends on a refused change".
pub fn main_violation(violations: &[Violation]) -> Option<&Violation> {
    violations
        .iter()
        .find(|v| v.rule != Rule::Depends)
        .or(violations.first())
}

/// A refused edit as an error naming the rule and the path.
pub fn refusal_error(violations: &[Violation]) -> FieldError {
    let Some(v) = main_violation(violations) else {
        return FieldError::NotAllowed("the server would refuse this edit".into());
    };
    let at = if v.path.is_empty() {
        String::new()
    } else {
        format!(", at {}", v.path)
    };
    let text = format!(
        "{} (rule {}{at}); nothing was written",
        v.reason,
        v.rule.as_str()
    );
    match v.rule {
        Rule::Invalid => FieldError::InvalidInput(text),
        _ => FieldError::NotAllowed(text),
    }
}

/// What [`Engine::quarantine`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quarantined {
    /// The refused changes were kept and the document rebuilt: refusal id.
    Kept(i64),
    /// Every local change is in the server's history: nothing to keep.
    Nothing,
    /// The server's heads are not all here yet; the next sync tries again.
    NotYet,
}

/// Hub plus store. Not thread-safe by itself: the tablet wraps it in a mutex.
#[derive(Debug)]
pub struct Engine {
    store: DeviceStore,
    hub: Hub<AllowAll>,
    active: Option<Active>,
    /// The rules local edits are checked with, keyed by the catalog's heads
    /// and the number of templates fetched over HTTP (its template registry
    /// is [`Engine::registry`]).
    rules: Option<(Vec<ChangeHash>, usize, DocumentRules)>,
    /// The actor of this opening's edits (see [`crate::store`]).
    actor: ActorId,
    /// Whether `actor` is recorded in the store yet (on its first edit).
    actor_recorded: bool,
    /// Every actor this store has written with.
    actors: HashSet<ActorId>,
}

impl Engine {
    /// Loads every stored document into a client-mode hub. Edits are
    /// written with a fresh random actor.
    pub fn open(store: DeviceStore, now_ms: i64) -> Result<Self> {
        let identity = store.identity().clone();
        let mut config = HubConfig::new(Mode::Client, identity.device_id.clone());
        // The engine sets its own actor on each edit.
        config.actor = None;
        config.storage_id = Some(identity.device_id.clone());
        let actors = store.actors()?.into_iter().collect();
        let mut hub = Hub::new(config, AllowAll);
        let now = millis(now_ms);
        for (id, kind) in store.documents()? {
            match store.load(id) {
                Ok(Some(doc)) => {
                    // No connection exists yet: adding produces no effects.
                    let _ = hub.add_stored(id, doc, now);
                }
                Ok(None) => {}
                // One damaged document must not lock the user out of the
                // others; it is fetched again from the server on sync.
                Err(e) => {
                    tracing::error!(doc.id = %id, doc.kind = %kind, error = %e, "a stored document does not load")
                }
            }
        }
        Ok(Self {
            store,
            hub,
            active: None,
            rules: None,
            actor: ActorId::random(),
            actor_recorded: false,
            actors,
        })
    }

    /// The actor this engine writes with now.
    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    /// Writes further edits with a fresh random actor (after a login, since
    /// the server binds an actor to one user and device, and after a
    /// document was rebuilt without some of this actor's changes).
    pub fn rotate_actor(&mut self) {
        self.actor = ActorId::random();
        self.actor_recorded = false;
    }

    pub fn store(&self) -> &DeviceStore {
        &self.store
    }

    pub fn hub(&self) -> &Hub<AllowAll> {
        &self.hub
    }

    pub fn document(&self, id: &DocumentId) -> Option<&Automerge> {
        self.hub.document(id)
    }

    /// Ids of every document held.
    pub fn document_ids(&self) -> Vec<DocumentId> {
        self.hub.document_ids()
    }

    // ----- local edits ---------------------------------------------------------

    /// Edits a document in one automerge change, checks the change as the
    /// server would (for `who`), stores it, and (during a sync) sends it. A
    /// change the server would refuse is not made: the error names the rule
    /// and the path.
    pub fn edit<R>(
        &mut self,
        id: DocumentId,
        who: &PeerInfo,
        now_ms: i64,
        f: impl FnOnce(&mut Transaction<'_>) -> std::result::Result<R, ModelError>,
    ) -> Result<R> {
        Ok(self.edit_checked(id, who, now_ms, f)?)
    }

    /// [`Engine::edit`], telling a refusal (with every violation) apart
    /// from other failures.
    pub fn edit_checked<R>(
        &mut self,
        id: DocumentId,
        who: &PeerInfo,
        now_ms: i64,
        f: impl FnOnce(&mut Transaction<'_>) -> std::result::Result<R, ModelError>,
    ) -> std::result::Result<R, EditError> {
        let secs = now_ms.div_euclid(1000);
        self.refresh_rules()?;
        let not_held = || {
            EditError::Failed(FieldError::NotFound(format!(
                "document {id} is not on this device; sync first"
            )))
        };
        let doc = self.hub.document(&id).ok_or_else(not_held)?;
        let before = doc.get_heads();
        let mut work = doc.clone();
        work.set_actor(self.actor.clone());
        let mut tx = work.transaction();
        let r = match f(&mut tx) {
            Ok(r) => {
                tx.commit_with(CommitOptions::default().with_time(secs));
                r
            }
            Err(e) => {
                tx.rollback();
                return Err(EditError::Failed(e.into()));
            }
        };
        let changes = work.get_changes(&before);
        if changes.is_empty() {
            return Ok(r);
        }
        let Some((_, _, rules)) = &self.rules else {
            return Err(FieldError::Storage("the template registry is missing".into()).into());
        };
        let judged = intake(rules, who, &id, doc, changes);
        if judged.is_refused() || !judged.waiting.is_empty() {
            let mut violations = judged.violations;
            if violations.is_empty() {
                violations.push(Violation {
                    path: String::new(),
                    role: who.role,
                    change: before.first().copied().unwrap_or(ChangeHash([0; 32])),
                    rule: Rule::Object,
                    reason: "the edit could not be applied to this document".into(),
                });
            }
            return Err(EditError::Refused(violations));
        }
        if !self.actor_recorded {
            self.store.record_actor(&self.actor, now_ms)?;
            self.actors.insert(self.actor.clone());
            self.actor_recorded = true;
        }
        let result = self.hub.update(&id, millis(now_ms), move |d| {
            *d = work;
            Ok::<_, Infallible>(())
        });
        let ((), fx) = match result {
            Ok(ok) => ok,
            Err(UpdateError::NotHeld(_)) => return Err(not_held()),
            Err(UpdateError::Edit(never)) => match never {},
        };
        self.apply(fx, now_ms)?;
        Ok(r)
    }

    // ----- refused changes ---------------------------------------------------------

    /// The server refused changes of `id` and holds it at `server_heads`:
    /// keeps every local change the server's history lacks (everything not
    /// reachable from those heads) in the store's `refused_changes`, and
    /// rebuilds the document from the rest, in one SQLite transaction. The
    /// hub then holds the rebuilt document, and further edits use a fresh
    /// actor. Call it when no connection has the document open.
    pub fn quarantine(
        &mut self,
        id: DocumentId,
        server_heads: &[ChangeHash],
        message: &str,
        detail: &ErrorDetail,
        now_ms: i64,
    ) -> Result<Quarantined> {
        let Some(doc) = self.hub.document(&id) else {
            return Ok(Quarantined::Nothing);
        };
        if server_heads.is_empty()
            || server_heads
                .iter()
                .any(|h| doc.get_change_by_hash(h).is_none())
        {
            return Ok(Quarantined::NotYet);
        }
        let refused = doc.get_changes(server_heads);
        if refused.is_empty() {
            self.store.set_sync_mark(id, server_heads, now_ms)?;
            return Ok(Quarantined::Nothing);
        }
        if !self.hub.idle_documents().contains(&id) {
            return Err(FieldError::Sync(format!(
                "document {id} is still open in a sync session; it is rebuilt after the session"
            )));
        }
        let rebuilt = doc
            .fork_at(server_heads)
            .map_err(|e| FieldError::Storage(format!("cannot rebuild document {id}: {e}")))?;
        let kind = match self.store.kind(id)? {
            Some(k) => k,
            None => model::kind_of(doc)
                .map_or_else(|_| UNKNOWN_KIND.to_owned(), |k| k.as_str().to_owned()),
        };
        // The server's word on each change it named.
        let mut named: HashMap<String, (String, String, String)> = HashMap::new();
        for v in &detail.violations {
            let e = named
                .entry(v.change.clone())
                .or_insert_with(|| (v.rule.clone(), v.path.clone(), v.reason.clone()));
            if e.0 == Rule::Depends.as_str() && v.rule != Rule::Depends.as_str() {
                *e = (v.rule.clone(), v.path.clone(), v.reason.clone());
            }
        }
        let listed: HashSet<&str> = detail.refused.iter().map(String::as_str).collect();
        let kept: Vec<RefusedChange> = refused
            .iter()
            .map(|c| {
                let hash = c.hash();
                let hex = hash.to_string();
                let (rule, path, reason) = match named.get(&hex) {
                    Some((rule, path, reason)) => {
                        (Some(rule.clone()), Some(path.clone()), Some(reason.clone()))
                    }
                    None if listed.contains(hex.as_str()) => {
                        (None, None, Some("refused by the server".to_owned()))
                    }
                    None => (None, None, None),
                };
                RefusedChange {
                    hash,
                    data: c.raw_bytes().to_vec(),
                    rule,
                    path,
                    reason,
                }
            })
            .collect();
        let refusal_id = self.store.record_refusal(
            &NewRefusal {
                doc_id: id,
                kind: &kind,
                server_heads,
                message,
                changes: &kept,
                rebuilt: &rebuilt,
            },
            now_ms,
        )?;
        // Idle (checked above), so the hub lets go of it.
        self.hub.unload(&id);
        let _ = self.hub.add_stored(id, rebuilt, millis(now_ms));
        self.rotate_actor();
        tracing::warn!(doc.id = %id, refused = kept.len(), refusal_id, "refused changes kept; document rebuilt from the server's history");
        Ok(Quarantined::Kept(refusal_id))
    }

    // ----- sync session -------------------------------------------------------------

    /// Opens connection `conn`: its frames go to `out`. Returns the `join`.
    pub fn attach(
        &mut self,
        conn: ConnId,
        out: UnboundedSender<Vec<u8>>,
        now_ms: i64,
    ) -> Result<Outcome> {
        self.active = Some(Active { conn, out });
        let fx = self.hub.connect(conn, (), millis(now_ms));
        self.apply(fx, now_ms)
    }

    /// The connection ended (either side, any reason).
    pub fn detach(&mut self, conn: ConnId, now_ms: i64) -> Result<Outcome> {
        if self.active.as_ref().is_some_and(|a| a.conn == conn) {
            self.active = None;
        }
        let fx = self.hub.disconnect(conn);
        self.apply(fx, now_ms)
    }

    pub fn receive(&mut self, conn: ConnId, bytes: &[u8], now_ms: i64) -> Result<Outcome> {
        let fx = self.hub.receive(conn, bytes, millis(now_ms));
        self.apply(fx, now_ms)
    }

    pub fn want(&mut self, id: DocumentId, now_ms: i64) -> Result<Outcome> {
        let fx = self.hub.want(id, millis(now_ms));
        self.apply(fx, now_ms)
    }

    pub fn tick(&mut self, now_ms: i64) -> Result<Outcome> {
        let fx = self.hub.tick(millis(now_ms));
        self.apply(fx, now_ms)
    }

    /// Whether the connection finished its handshake and every exchange on
    /// it is quiet with both sides at the same heads (refused and aborted
    /// exchanges count as settled).
    pub fn is_synced(&self, conn: ConnId) -> bool {
        self.hub.is_ready(conn) && self.hub.is_synced(conn)
    }

    /// Where the server on `conn` stands on document `id`: its last
    /// announced heads, whether it refused our changes, … (None when that
    /// exchange is not open).
    pub fn server_state(&self, conn: ConnId, id: &DocumentId) -> Option<PeerDocState> {
        self.hub.peer_state(conn, id)
    }

    /// Carries out `fx`: stores first, then reports commits (which may
    /// release more frames), then hands frames to the session.
    fn apply(&mut self, mut fx: Effects, now_ms: i64) -> Result<Outcome> {
        let mut failure = None;
        loop {
            let stores = std::mem::take(&mut fx.store);
            if stores.is_empty() {
                break;
            }
            for s in stores {
                let kind = match self.store.kind(s.document_id)? {
                    Some(k) => k,
                    None => self
                        .hub
                        .document(&s.document_id)
                        .and_then(|d| model::kind_of(d).ok())
                        .map_or_else(|| UNKNOWN_KIND.to_owned(), |k| k.as_str().to_owned()),
                };
                match self
                    .store
                    .append_changes(s.document_id, &kind, &s.changes, now_ms)
                {
                    Ok(()) => fx.merge(self.hub.committed(s.ticket, millis(now_ms))),
                    Err(e) => {
                        tracing::error!(doc.id = %s.document_id, error = %e, "changes could not be stored");
                        fx.merge(self.hub.store_failed(s.ticket, &e.to_string()));
                        failure.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(active) = &self.active {
            for o in fx.outgoing {
                // A closed session channel means the session is ending; the
                // frames are regenerated on the next connection.
                if o.conn == active.conn {
                    let _ = active.out.send(o.bytes);
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(Outcome {
            events: fx.events,
            close: fx.close,
        })
    }

    // ----- templates -------------------------------------------------------------------

    /// The templates this device knows: every template of every catalog
    /// document held, plus those fetched over HTTP.
    pub fn registry(&mut self) -> Result<&TemplateRegistry> {
        self.refresh_rules()?;
        match &self.rules {
            Some((_, _, rules)) => Ok(&rules.templates),
            None => Err(FieldError::Storage("template registry missing".into())),
        }
    }

    /// Rebuilds the rules (and their registry) when the catalogs or the
    /// fetched templates changed.
    fn refresh_rules(&mut self) -> Result<()> {
        let catalogs = self.documents_of_kind(model::DocKind::Catalog);
        let mut heads = Vec::new();
        for id in &catalogs {
            if let Some(doc) = self.hub.document(id) {
                heads.extend(doc.get_heads());
            }
        }
        let cached = self.store.cached_templates()?;
        let fresh = matches!(&self.rules, Some((h, n, _)) if *h == heads && *n == cached.len());
        if fresh {
            return Ok(());
        }
        let mut reg = TemplateRegistry::default();
        for id in &catalogs {
            let Some(doc) = self.hub.document(id) else {
                continue;
            };
            match model::read_catalog(doc).map(|c| c.registry()) {
                Ok(Ok(r)) => {
                    for t in r.iter() {
                        let _ = reg.publish(t.clone());
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "catalog templates do not load"),
                Err(e) => tracing::warn!(error = %e, "catalog does not read"),
            }
        }
        for json in &cached {
            if let Ok(t) = Template::from_json(json) {
                let _ = reg.publish(t);
            }
        }
        self.rules = Some((heads, cached.len(), DocumentRules::new(reg)));
        Ok(())
    }

    /// Held documents whose root `kind` is `kind`.
    pub fn documents_of_kind(&self, kind: model::DocKind) -> Vec<DocumentId> {
        self.hub
            .document_ids()
            .into_iter()
            .filter(|id| self.hub.document(id).and_then(|d| model::kind_of(d).ok()) == Some(kind))
            .collect()
    }

    /// Changes made on this device to `id` that the server had not seen at
    /// the last finished sync.
    pub fn pending_changes(&self, id: DocumentId) -> Result<usize> {
        let Some(doc) = self.hub.document(&id) else {
            return Ok(0);
        };
        let mark = self.store.sync_mark(id)?.unwrap_or_default();
        // A mark the document does not know (never expected) counts as none.
        let known: Vec<ChangeHash> = mark
            .into_iter()
            .filter(|h| doc.get_change_by_hash(h).is_some())
            .collect();
        Ok(doc
            .get_changes(&known)
            .iter()
            .filter(|c| *c.actor_id() == self.actor || self.actors.contains(c.actor_id()))
            .count())
    }

    /// Records that the server holds each document at the given heads.
    pub fn mark_synced(
        &self,
        confirmed: &[(DocumentId, Vec<ChangeHash>)],
        now_ms: i64,
    ) -> Result<()> {
        for (id, heads) in confirmed {
            self.store.set_sync_mark(*id, heads, now_ms)?;
        }
        Ok(())
    }
}

fn millis(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}
