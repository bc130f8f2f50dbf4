//! Storage results, documents edited locally, and housekeeping over time.

use super::*;

impl<A: Access> Hub<A> {
    // ----- storage results ------------------------------------------------

    /// The driver made a [`StoreRequest`] durable.
    pub fn committed(&mut self, ticket: u64, _now: Millis) -> Effects {
        let mut fx = Effects::default();
        let Some(id) = self.tickets.remove(&ticket) else {
            return fx;
        };
        let Some(entry) = self.docs.get_mut(&id) else {
            return fx;
        };
        entry.pending.retain(|t| *t != ticket);
        if entry.pending.is_empty() {
            fx.events.push(Event::DocumentChanged { document_id: id });
            if self.config.mode == Mode::Client {
                // New local documents are announced once stored.
                let conns: Vec<ConnId> = self.conns.keys().copied().collect();
                for conn in conns {
                    let linked = self
                        .conns
                        .get(&conn)
                        .is_some_and(|c| c.links.contains_key(&id));
                    if !linked {
                        self.announce(conn, id, _now, &mut fx);
                    }
                }
            }
            self.sync_all(id, &mut fx);
        }
        fx
    }

    /// The driver could not store a [`StoreRequest`]: the document is
    /// dropped from memory (it reloads from storage on next use) and every
    /// exchange about it is told and restarted on reconnect.
    pub fn store_failed(&mut self, ticket: u64, reason: &str) -> Effects {
        let mut fx = Effects::default();
        let Some(id) = self.tickets.remove(&ticket) else {
            return fx;
        };
        self.docs.remove(&id);
        self.tickets.retain(|_, d| *d != id);
        let conns = self.linked_conns(&id);
        for conn in conns {
            self.doc_error(
                &mut fx,
                conn,
                &id,
                ErrorCode::RetryLater,
                format!("could not store changes ({reason}); nothing was confirmed, sync again"),
            );
            if let Some(c) = self.conns.get_mut(&conn) {
                c.links.remove(&id);
            }
        }
        fx
    }

    // ----- local documents (client side, or server-side writes) ----------

    /// Adds a new local document; it is stored, then announced (client).
    /// Replaces nothing: an id already held is merged into.
    pub fn insert_document(&mut self, id: DocumentId, mut doc: Automerge, now: Millis) -> Effects {
        let mut fx = Effects::default();
        let (before_heads, changes, merged) = match self.docs.get_mut(&id) {
            Some(entry) if entry.state == DocState::Ready || entry.state == DocState::Wanted => {
                let before = entry.doc.get_heads();
                if let Err(e) = entry.doc.merge(&mut doc) {
                    fx.events.push(Event::SyncAborted {
                        conn: 0,
                        document_id: id,
                        reason: format!("could not merge local document: {e}"),
                    });
                    return fx;
                }
                entry.state = DocState::Ready;
                let changes = entry.doc.get_changes(&before);
                (before, changes, true)
            }
            _ => {
                let changes = doc.get_changes(&[]);
                self.docs.insert(id, DocEntry::new(doc, DocState::Ready));
                (Vec::new(), changes, false)
            }
        };
        let _ = merged;
        self.queue_store(id, changes, before_heads.is_empty(), now, &mut fx);
        fx
    }

    /// Adds a document that is already stored (loaded at start-up): nothing
    /// is stored again. Client: it is announced to connected peers.
    pub fn add_stored(&mut self, id: DocumentId, doc: Automerge, now: Millis) -> Effects {
        let mut fx = Effects::default();
        if self.docs.contains_key(&id) {
            return fx;
        }
        self.docs.insert(id, DocEntry::new(doc, DocState::Ready));
        if self.config.mode == Mode::Client {
            let conns: Vec<ConnId> = self.conns.keys().copied().collect();
            for conn in conns {
                self.announce(conn, id, now, &mut fx);
            }
        }
        fx
    }

    /// Client: ask connected (and future) peers for a document we do not hold.
    pub fn want(&mut self, id: DocumentId, now: Millis) -> Effects {
        let mut fx = Effects::default();
        if self.docs.contains_key(&id) {
            return fx;
        }
        self.docs
            .insert(id, DocEntry::new(Automerge::new(), DocState::Wanted));
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.announce(conn, id, now, &mut fx);
        }
        fx
    }

    /// Edits a held document locally. The new changes are stored, then
    /// synced to every peer that has the document open.
    pub fn update<R, E>(
        &mut self,
        id: &DocumentId,
        now: Millis,
        f: impl FnOnce(&mut Automerge) -> Result<R, E>,
    ) -> Result<(R, Effects), UpdateError<E>> {
        let entry = self
            .docs
            .get_mut(id)
            .filter(|e| e.state == DocState::Ready)
            .ok_or(UpdateError::NotHeld(*id))?;
        let before = entry.doc.get_heads();
        let mut work = entry.doc.clone();
        if let Some(actor) = &self.config.actor {
            work.set_actor(actor.clone());
        }
        let r = f(&mut work).map_err(UpdateError::Edit)?;
        let changes = work.get_changes(&before);
        entry.doc = work;
        let mut fx = Effects::default();
        self.queue_store(*id, changes, false, now, &mut fx);
        Ok((r, fx))
    }

    pub(super) fn queue_store(
        &mut self,
        id: DocumentId,
        changes: Vec<Change>,
        created: bool,
        _now: Millis,
        fx: &mut Effects,
    ) {
        if changes.is_empty() {
            return;
        }
        let Some(entry) = self.docs.get_mut(&id) else {
            return;
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.tickets.insert(ticket, id);
        entry.pending.push(ticket);
        fx.store.push(StoreRequest {
            ticket,
            document_id: id,
            changes,
            heads: entry.doc.get_heads(),
            created,
            from: None,
        });
    }

    // ----- time -------------------------------------------------------------

    /// Periodic housekeeping: closes connections stuck in the handshake and
    /// restarts exchanges that have waited too long for an answer (a lost
    /// message would otherwise stall them until reconnect).
    pub fn tick(&mut self, now: Millis) -> Effects {
        let mut fx = Effects::default();
        let stuck: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(
                    c.handshake,
                    Handshake::AwaitingJoin | Handshake::AwaitingPeer
                ) && now.saturating_sub(c.opened_at) > self.config.handshake_timeout_ms
            })
            .map(|(k, _)| *k)
            .collect();
        for conn in stuck {
            self.fail(&mut fx, conn, "handshake timed out".to_owned());
        }
        let mut restart = Vec::new();
        for (conn, c) in &self.conns {
            if !matches!(c.handshake, Handshake::Ready { .. }) {
                continue;
            }
            for (id, link) in &c.links {
                let Some(entry) = self.docs.get(id) else {
                    continue;
                };
                // Equal heads are settled even with a message "in flight":
                // a bare acknowledgement gets no answer.
                let converged =
                    link.sync.their_heads.as_deref() == Some(&entry.doc.get_heads()[..]);
                if !link.blocked
                    && !link.refused
                    && !converged
                    && entry.pending.is_empty()
                    && now.saturating_sub(link.last_heard) > self.config.resend_after_ms
                {
                    restart.push((*conn, *id));
                }
            }
        }
        for (conn, id) in restart {
            if let Some(link) = self.conns.get_mut(&conn).and_then(|c| c.links.get_mut(&id)) {
                link.sync = sync::State::new();
                link.last_heard = now;
                link.rounds_without_progress = 0;
            }
            self.sync_out(conn, id, &mut fx);
        }
        fx
    }
}
