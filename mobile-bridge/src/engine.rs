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
#![forbid(unsafe_code)]

use automerge::transaction::{CommitOptions, Transaction};
use automerge::{ActorId, Automerge, ChangeHash, ReadDoc};
use sync_core::DocumentId;
use sync_core::model::{self, ModelError};
use sync_core::protocol::hub::{
    AllowAll, ConnId, Effects, Event, Hub, HubConfig, Mode, UpdateError,
};
use sync_core::template::{Template, TemplateRegistry};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{FieldError, Result};
use crate::store::DeviceStore;

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

/// Hub plus store. Not thread-safe by itself: the tablet wraps it in a mutex.
#[derive(Debug)]
pub struct Engine {
    store: DeviceStore,
    hub: Hub<AllowAll>,
    active: Option<Active>,
    /// Registry cache, keyed by the catalog's heads and the number of
    /// templates fetched over HTTP.
    registry: Option<(Vec<ChangeHash>, usize, TemplateRegistry)>,
}

impl Engine {
    /// Loads every stored document into a client-mode hub whose edits carry
    /// the device's own actor.
    pub fn open(store: DeviceStore, now_ms: i64) -> Result<Self> {
        let identity = store.identity().clone();
        let mut config = HubConfig::new(Mode::Client, identity.device_id.clone());
        config.actor = Some(ActorId::from(identity.actor.clone()));
        config.storage_id = Some(identity.device_id.clone());
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
            registry: None,
        })
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

    /// Edits a document in one automerge change, stores it, and (during a
    /// sync) sends it.
    pub fn edit<R>(
        &mut self,
        id: DocumentId,
        now_ms: i64,
        f: impl FnOnce(&mut Transaction<'_>) -> std::result::Result<R, ModelError>,
    ) -> Result<R> {
        let secs = now_ms.div_euclid(1000);
        let result = self.hub.update(&id, millis(now_ms), |doc| {
            let mut tx = doc.transaction();
            match f(&mut tx) {
                Ok(r) => {
                    tx.commit_with(CommitOptions::default().with_time(secs));
                    Ok(r)
                }
                Err(e) => {
                    tx.rollback();
                    Err(e)
                }
            }
        });
        let (r, fx) = match result {
            Ok(ok) => ok,
            Err(UpdateError::NotHeld(id)) => {
                return Err(FieldError::NotFound(format!(
                    "document {id} is not on this device; sync first"
                )));
            }
            Err(UpdateError::Edit(e)) => return Err(e.into()),
        };
        self.apply(fx, now_ms)?;
        Ok(r)
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
    /// it is quiet with both sides at the same heads.
    pub fn is_synced(&self, conn: ConnId) -> bool {
        self.hub.is_ready(conn) && self.hub.is_synced(conn)
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
        let catalogs = self.documents_of_kind(model::DocKind::Catalog);
        let mut heads = Vec::new();
        for id in &catalogs {
            if let Some(doc) = self.hub.document(id) {
                heads.extend(doc.get_heads());
            }
        }
        let cached = self.store.cached_templates()?;
        let fresh = matches!(&self.registry, Some((h, n, _)) if *h == heads && *n == cached.len());
        if !fresh {
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
            self.registry = Some((heads, cached.len(), reg));
        }
        match &self.registry {
            Some((_, _, reg)) => Ok(reg),
            None => Err(FieldError::Storage("template registry missing".into())),
        }
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
        let actor = ActorId::from(self.store.identity().actor.clone());
        Ok(doc
            .get_changes(&known)
            .iter()
            .filter(|c| *c.actor_id() == actor)
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
