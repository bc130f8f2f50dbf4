//! The exchange about one document: `request`/`sync` in, checked and
//! stored, sync messages out once stored.

use super::*;
use crate::protocol::intake::{intake, split_changes};

/// Most bits per entry and probes a peer's bloom filter may declare.
/// automerge writes 10 and 7; its reader trusts whatever arrives, and
/// `u32::MAX` probes make it allocate and loop for minutes on every change
/// (0 bits per entry divides by zero).
const MAX_BLOOM_PARAMETER: u64 = 64;

/// Refuses `have` bloom filters whose parameters automerge would choke on.
fn check_blooms(message: &sync::Message) -> Result<(), String> {
    for have in &message.have {
        let bytes = have.bloom.to_bytes();
        if bytes.is_empty() {
            continue;
        }
        let mut rest = &bytes[..];
        let mut fields = [0u64; 3];
        for field in &mut fields {
            let mut value = 0u64;
            let mut shift = 0;
            loop {
                let (&b, tail) = rest
                    .split_first()
                    .ok_or_else(|| "truncated bloom filter".to_owned())?;
                rest = tail;
                if shift > 35 {
                    return Err("bad bloom filter".to_owned());
                }
                value |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            *field = value;
        }
        let [_, bits_per_entry, probes] = fields;
        if !(1..=MAX_BLOOM_PARAMETER).contains(&bits_per_entry)
            || !(1..=MAX_BLOOM_PARAMETER).contains(&probes)
        {
            return Err(format!(
                "bloom filter with {bits_per_entry} bits per entry and {probes} probes \
                 (each must be 1 to {MAX_BLOOM_PARAMETER})"
            ));
        }
    }
    Ok(())
}

impl<A: Access> Hub<A> {
    pub(super) fn on_sync(
        &mut self,
        conn: ConnId,
        id: DocumentId,
        data: Vec<u8>,
        is_request: bool,
        now: Millis,
        fx: &mut Effects,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if let Some(link) = c.links.get(&id)
            && (link.blocked || (link.refused && self.config.mode == Mode::Server))
        {
            return;
        }
        if !c.links.contains_key(&id) && c.links.len() >= self.config.max_documents_per_connection {
            self.doc_error(
                fx,
                conn,
                &id,
                ErrorCode::Limit,
                format!(
                    "too many documents open on this connection (limit {}); reconnect to sync the rest",
                    self.config.max_documents_per_connection
                ),
            );
            return;
        }
        let msg = if is_request {
            Message::Request {
                sender_id: String::new(),
                target_id: String::new(),
                document_id: id,
                data,
            }
        } else {
            Message::Sync {
                sender_id: String::new(),
                target_id: String::new(),
                document_id: id,
                data,
            }
        };
        match self.docs.get_mut(&id) {
            None => match self.config.mode {
                Mode::Server => {
                    self.docs.insert(
                        id,
                        DocEntry {
                            doc: Automerge::new(),
                            state: DocState::Loading,
                            pending: Vec::new(),
                            queued: vec![(conn, msg)],
                        },
                    );
                    fx.load.push(id);
                }
                Mode::Client => {
                    // A server that announces is unusual; hold what it sends.
                    self.docs
                        .insert(id, DocEntry::new(Automerge::new(), DocState::Provisional));
                    self.process(conn, msg, now, fx);
                }
            },
            Some(entry) if entry.state == DocState::Loading => {
                if entry.queued.len() >= self.config.max_queued_per_document {
                    self.doc_error(
                        fx,
                        conn,
                        &id,
                        ErrorCode::RetryLater,
                        "too many messages queued while the document loads; sync again later"
                            .to_owned(),
                    );
                } else {
                    entry.queued.push((conn, msg));
                }
            }
            Some(_) => self.process(conn, msg, now, fx),
        }
    }

    /// The driver finished loading a document: `None` when storage has none.
    pub fn loaded(&mut self, id: DocumentId, doc: Option<Automerge>, now: Millis) -> Effects {
        let mut fx = Effects::default();
        let Some(entry) = self.docs.get_mut(&id) else {
            return fx;
        };
        if entry.state != DocState::Loading {
            return fx;
        }
        let queued = std::mem::take(&mut entry.queued);
        match doc {
            Some(doc) => {
                entry.doc = doc;
                entry.state = DocState::Ready;
            }
            None => {
                entry.state = DocState::Provisional;
            }
        }
        for (conn, msg) in queued {
            if self.conns.contains_key(&conn) {
                self.process(conn, msg, now, &mut fx);
            }
        }
        self.drop_if_unused_provisional(&id);
        fx
    }

    /// The driver could not load a document (storage error, over a limit):
    /// the peers that asked are told to retry later — never that it does
    /// not exist — and the document is forgotten until asked for again.
    pub fn load_failed(&mut self, id: DocumentId, reason: &str) -> Effects {
        let mut fx = Effects::default();
        let Some(entry) = self.docs.get(&id) else {
            return fx;
        };
        if entry.state != DocState::Loading {
            return fx;
        }
        let queued: Vec<ConnId> = entry.queued.iter().map(|(c, _)| *c).collect();
        self.docs.remove(&id);
        let mut told = Vec::new();
        for conn in queued {
            if told.contains(&conn) || !self.conns.contains_key(&conn) {
                continue;
            }
            told.push(conn);
            self.doc_error(
                &mut fx,
                conn,
                &id,
                ErrorCode::RetryLater,
                "could not be loaded on the server right now; nothing was stored, sync again later"
                    .to_owned(),
            );
        }
        fx.events.push(Event::LoadFailed {
            document_id: id,
            reason: reason.to_owned(),
        });
        fx
    }

    pub(super) fn drop_if_unused_provisional(&mut self, id: &DocumentId) {
        let unused = self.docs.get(id).is_some_and(|e| {
            e.state == DocState::Provisional
                && e.pending.is_empty()
                && e.queued.is_empty()
                && !self.conns.values().any(|c| c.links.contains_key(id))
        });
        if unused {
            self.docs.remove(id);
        }
    }

    /// Tells the peer a document is not available to it and closes the exchange.
    fn unavailable(&mut self, conn: ConnId, id: DocumentId, fx: &mut Effects) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.links.remove(&id);
        }
        let msg = Message::DocUnavailable {
            sender_id: self.config.peer_id.clone(),
            target_id: self.remote_of(conn),
            document_id: id,
        };
        self.send(fx, conn, &msg);
        fx.events.push(Event::Unavailable {
            conn,
            document_id: id,
        });
        self.drop_if_unused_provisional(&id);
    }

    /// Applies one `sync`/`request` to a held (or, client side, provisional) document.
    pub(super) fn process(&mut self, conn: ConnId, msg: Message, now: Millis, fx: &mut Effects) {
        let (id, data, is_request) = match msg {
            Message::Request {
                document_id, data, ..
            } => (document_id, data, true),
            Message::Sync {
                document_id, data, ..
            } => (document_id, data, false),
            _ => return,
        };
        let Some(entry) = self.docs.get(&id) else {
            return;
        };
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let linked = c.links.contains_key(&id);

        // Access: decided when the exchange opens, and again on each message
        // (membership may have changed since). A document that does not
        // exist, or that this peer may not read, gets the same answer;
        // documents are created by the server only, never through sync.
        if self.config.mode == Mode::Server {
            let readable =
                entry.state == DocState::Ready && self.access.may_read(&c.who, &id, &entry.doc);
            if !readable {
                self.unavailable(conn, id, fx);
                return;
            }
        }

        let mut message = match catch_unwind(|| sync::Message::decode(&data)) {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                self.abort_link(conn, &id, format!("malformed sync message: {e}"), fx);
                return;
            }
            Err(_) => {
                self.abort_link(conn, &id, "malformed sync message".to_owned(), fx);
                return;
            }
        };
        if let Err(e) = check_blooms(&message) {
            self.abort_link(conn, &id, format!("malformed sync message: {e}"), fx);
            return;
        }
        let has_changes = !message.changes.is_empty();
        // Server: the changes are taken out of the message and judged one
        // by one; the message itself then only updates the sync state.
        let incoming = if self.config.mode == Mode::Server && has_changes {
            let chunks = std::mem::replace(&mut message.changes, sync::ChunkList::empty());
            match split_changes(chunks.iter()) {
                Ok(changes) => changes,
                Err(e) => {
                    self.abort_link(conn, &id, format!("malformed changes: {e}"), fx);
                    return;
                }
            }
        } else {
            Vec::new()
        };

        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let who = c.who.clone();
        let link = c.links.entry(id).or_insert_with(|| Link::new(now));
        link.last_heard = now;
        if !linked && is_request {
            link.requested = false;
        }
        let their_heads_before = match self.config.mode {
            Mode::Server => link.announced.clone(),
            Mode::Client => link.sync.their_heads.clone(),
        };
        let mut state = link.sync.clone();
        let mut batch = std::mem::take(&mut link.waiting);
        batch.extend(incoming);
        let Some(entry) = self.docs.get_mut(&id) else {
            return;
        };
        let before_heads = entry.doc.get_heads();

        let mut accepted: Vec<Change> = Vec::new();
        let mut refusal = None;
        let mut waiting = Vec::new();
        let applied = if self.config.mode == Mode::Server {
            let mut copy = None;
            if !batch.is_empty() {
                let result = intake(&self.access, &who, &id, &entry.doc, batch);
                if result.is_refused() {
                    refusal = Some(Refusal {
                        refused: result.refused,
                        violations: result.violations,
                        accepted: result.accepted.len(),
                    });
                }
                waiting = result.waiting;
                accepted = result.accepted;
                copy = Some(result.doc);
            }
            let target = match copy.as_mut() {
                Some(doc) => doc,
                None => &mut entry.doc,
            };
            let received = catch_unwind(AssertUnwindSafe(|| {
                target.receive_sync_message(&mut state, message)
            }));
            match received {
                Ok(Ok(())) => Ok(copy),
                Ok(Err(e)) => Err(format!("could not apply sync message: {e}")),
                Err(_) => Err("could not apply sync message (automerge failed on it)".to_owned()),
            }
        } else {
            // Client: the server's changes are taken as they come (automerge
            // keeps any whose dependencies are missing until they arrive).
            let mut copy = entry.doc.clone();
            let received = catch_unwind(AssertUnwindSafe(|| {
                copy.receive_sync_message(&mut state, message)
            }));
            match received {
                Ok(Ok(())) => {
                    accepted = copy.get_changes(&before_heads);
                    Ok(Some(copy))
                }
                Ok(Err(e)) => Err(format!("could not apply sync message: {e}")),
                Err(_) => Err("could not apply sync message (automerge failed on it)".to_owned()),
            }
        };
        let copy = match applied {
            Ok(copy) => copy,
            Err(reason) => {
                self.abort_link(conn, &id, reason, fx);
                return;
            }
        };
        for change in &accepted {
            self.access.accepted(&who, change);
        }

        let after_heads = copy
            .as_ref()
            .map_or_else(|| before_heads.clone(), |d| d.get_heads());
        let progressed = after_heads != before_heads || state.their_heads != their_heads_before;
        if let Some(copy) = copy {
            let creating = entry.state != DocState::Ready;
            if after_heads != before_heads {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.tickets.insert(ticket, id);
                fx.store.push(StoreRequest {
                    ticket,
                    document_id: id,
                    changes: accepted,
                    heads: after_heads.clone(),
                    created: creating,
                    from: Some(conn),
                });
                entry.doc = copy;
                entry.state = DocState::Ready;
                entry.pending.push(ticket);
            } else if has_changes && self.config.mode == Mode::Client {
                // Changes whose dependencies are missing wait in automerge's
                // queue; keep them with the document (client side only).
                entry.doc = copy;
            }
        }

        // Changes still waiting for their dependencies stay with this
        // connection, within bounds.
        let max_waiting = self.config.max_waiting_changes_per_document;
        let max_bytes = self.config.max_waiting_bytes_per_connection;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let held_elsewhere: usize = c
            .links
            .iter()
            .filter(|(d, _)| **d != id)
            .map(|(_, l)| l.waiting_bytes())
            .sum();
        let waiting_bytes: usize = waiting.iter().map(|c| c.raw_bytes().len()).sum();
        let dropped = if waiting.len() > max_waiting || held_elsewhere + waiting_bytes > max_bytes {
            std::mem::take(&mut waiting).len()
        } else {
            0
        };
        let Some(link) = c.links.get_mut(&id) else {
            return;
        };
        link.waiting = waiting;
        link.sync = state;
        if self.config.mode == Mode::Server {
            link.announced = link.sync.their_heads.clone();
            // Waiting changes are outside automerge, which therefore does
            // not ask for their missing dependencies (it would for changes
            // in its own queue). Point it at them: without this, a change
            // hidden by a false positive of our bloom filter would never be
            // sent, and its dependents would wait for ever.
            if !link.waiting.is_empty()
                && let Some(entry) = self.docs.get(&id)
            {
                let held: std::collections::HashSet<ChangeHash> =
                    link.waiting.iter().map(Change::hash).collect();
                let deps: Vec<ChangeHash> = link
                    .waiting
                    .iter()
                    .flat_map(|c| c.deps().iter().copied())
                    .filter(|d| !held.contains(d))
                    .collect();
                let missing = automerge::ReadDoc::get_missing_deps(&entry.doc, &deps);
                if let Some(heads) = link.sync.their_heads.as_mut() {
                    heads.retain(|h| !held.contains(h));
                    heads.extend(missing);
                    heads.sort();
                    heads.dedup();
                }
            }
        }
        if let Some(refusal) = refusal {
            link.refused = true;
            link.owed = true;
            let detail = refusal.detail(id);
            let summary = refusal.summary();
            fx.events.push(Event::Rejected {
                conn,
                document_id: id,
                refusal,
            });
            let mut notice = self.doc_error_message(conn, &id, ErrorCode::Refused, summary);
            if let Message::Error { detail: d, .. } = &mut notice {
                *d = Some(Box::new(detail));
            }
            if let Some(link) = self.conns.get_mut(&conn).and_then(|c| c.links.get_mut(&id)) {
                link.notice = Some(notice);
            }
        }
        if dropped > 0 {
            self.doc_error(
                fx,
                conn,
                &id,
                ErrorCode::Limit,
                format!(
                    "{dropped} change(s) whose dependencies never arrived were dropped \
                     (limit {max_waiting} per document, {max_bytes} bytes per connection); \
                     sync again"
                ),
            );
        }
        let max_rounds = self.config.max_rounds_without_progress;
        let Some(link) = self.conns.get_mut(&conn).and_then(|c| c.links.get_mut(&id)) else {
            return;
        };
        if progressed {
            link.rounds_without_progress = 0;
        } else {
            link.rounds_without_progress += 1;
            if link.rounds_without_progress > max_rounds {
                self.abort_link(
                    conn,
                    &id,
                    format!("sync did not converge within {max_rounds} rounds"),
                    fx,
                );
                return;
            }
        }
        if link
            .sync
            .their_heads
            .as_ref()
            .is_some_and(|h| !h.is_empty())
        {
            link.requested = false;
        }
        self.sync_out(conn, id, fx);
    }

    pub(super) fn abort_link(
        &mut self,
        conn: ConnId,
        id: &DocumentId,
        reason: String,
        fx: &mut Effects,
    ) {
        self.doc_error(fx, conn, id, ErrorCode::Aborted, reason.clone());
        if let Some(link) = self.conns.get_mut(&conn).and_then(|c| c.links.get_mut(id)) {
            link.blocked = true;
            link.waiting.clear();
        }
        fx.events.push(Event::SyncAborted {
            conn,
            document_id: *id,
            reason,
        });
    }

    /// Generates and sends the next sync message for `id` on `conn`, unless
    /// a store for `id` is still pending; then any notice held for the peer.
    pub(super) fn sync_out(&mut self, conn: ConnId, id: DocumentId, fx: &mut Effects) {
        let Some(entry) = self.docs.get(&id) else {
            return;
        };
        if !entry.pending.is_empty() || entry.state == DocState::Loading {
            if let Some(link) = self.conns.get_mut(&conn).and_then(|c| c.links.get_mut(&id)) {
                link.owed = true;
            }
            return;
        }
        let our_peer = self.config.peer_id.clone();
        let mode = self.config.mode;
        // The read rule holds for as long as the exchange lives: a peer
        // that lost access (an inspection left `accepted`, a member was
        // removed) is told the document is unavailable and sent nothing more.
        if mode == Mode::Server
            && let Some(c) = self.conns.get(&conn)
            && c.links.contains_key(&id)
            && !self.access.may_read(&c.who, &id, &entry.doc)
        {
            self.unavailable(conn, id, fx);
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Handshake::Ready { remote } = &c.handshake else {
            return;
        };
        let remote = remote.clone();
        let Some(link) = c.links.get_mut(&id) else {
            return;
        };
        // A client whose changes were refused sends nothing more about the
        // document on this connection (its driver rebases, then reconnects).
        if link.blocked || (link.refused && mode == Mode::Client) {
            return;
        }
        if std::mem::take(&mut link.owed) {
            link.sync.have_responded = false;
            link.sync.in_flight = false;
        }
        let doc = &entry.doc;
        let generated = catch_unwind(AssertUnwindSafe(|| {
            doc.generate_sync_message(&mut link.sync)
        }));
        let notice = link.notice.take();
        let message = match generated {
            Ok(m) => m,
            Err(_) => {
                self.abort_link(
                    conn,
                    &id,
                    "could not generate a sync message".to_owned(),
                    fx,
                );
                return;
            }
        };
        if let Some(message) = message {
            let data = message.encode();
            let msg = if link.requested && doc.get_heads().is_empty() {
                Message::Request {
                    sender_id: our_peer,
                    target_id: remote,
                    document_id: id,
                    data,
                }
            } else {
                Message::Sync {
                    sender_id: our_peer,
                    target_id: remote,
                    document_id: id,
                    data,
                }
            };
            self.send(fx, conn, &msg);
        }
        if let Some(notice) = notice {
            self.send(fx, conn, &notice);
        }
    }

    /// Sends whatever each exchange about `id` has to send.
    pub(super) fn sync_all(&mut self, id: DocumentId, fx: &mut Effects) {
        let conns = self.linked_conns(&id);
        for conn in conns {
            self.sync_out(conn, id, fx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_bloom_filters_are_refused_before_automerge_reads_them() {
        // `have` with one entry, 8 bits per entry and u32::MAX probes:
        // automerge would allocate and loop for minutes per change.
        let probes = [
            0x42, 0, 0, 1, 0, 8, 1, 8, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0,
        ];
        let m = sync::Message::decode(&probes).expect("automerge reads it");
        let e = check_blooms(&m).expect_err("refused");
        assert!(e.contains("4294967295 probes"), "{e}");
        assert!(e.contains("1 to 64"), "{e}");
        // 0 bits per entry (automerge divides by zero).
        let zero = [0x42, 0, 0, 1, 0, 5, 1, 0, 7, 0, 0];
        if let Ok(m) = sync::Message::decode(&zero) {
            assert!(
                check_blooms(&m)
                    .expect_err("refused")
                    .contains("0 bits per entry")
            );
        }
        // What automerge itself sends passes.
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        automerge::transaction::Transactable::put(&mut tx, automerge::ROOT, "k", 1).expect("put");
        tx.commit();
        let mut state = sync::State::new();
        state.shared_heads = doc.get_heads();
        let msg = doc.generate_sync_message(&mut state).expect("a message");
        assert_eq!(check_blooms(&msg), Ok(()));
        let mut peer = Automerge::new();
        let mut peer_state = sync::State::new();
        peer.receive_sync_message(&mut peer_state, msg)
            .expect("received");
        let reply = peer
            .generate_sync_message(&mut peer_state)
            .expect("a reply");
        assert_eq!(check_blooms(&reply), Ok(()));
    }
}
