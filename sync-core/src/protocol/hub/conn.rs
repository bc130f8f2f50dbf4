//! Connections and the messages that are not about one document's sync:
//! handshake, `leave`, `error`, `doc-unavailable`, `ephemeral`.

use super::*;

impl<A: Access> Hub<A> {
    // ----- connections -------------------------------------------------

    /// A new connection. The client sends `join` at once; the server waits.
    pub fn connect(&mut self, conn: ConnId, who: A::Identity, now: Millis) -> Effects {
        let mut fx = Effects::default();
        let handshake = match self.config.mode {
            Mode::Server => Handshake::AwaitingJoin,
            Mode::Client => {
                let join = Message::Join {
                    sender_id: self.config.peer_id.clone(),
                    supported_protocol_versions: vec![PROTOCOL_V1.to_owned()],
                    peer_metadata: Some(self.metadata()),
                };
                fx.outgoing.push(Outgoing {
                    conn,
                    bytes: codec::encode(&join),
                });
                Handshake::AwaitingPeer
            }
        };
        self.conns.insert(
            conn,
            Conn {
                who,
                handshake,
                opened_at: now,
                links: HashMap::new(),
            },
        );
        fx
    }

    /// The connection is gone (closed by either side). Its sync states go
    /// with it: a new connection starts afresh, as the protocol requires.
    pub fn disconnect(&mut self, conn: ConnId) -> Effects {
        self.conns.remove(&conn);
        let fx = Effects::default();
        // Provisional documents nobody is creating any more are dropped.
        let orphans: Vec<DocumentId> = self
            .docs
            .iter()
            .filter(|(id, e)| {
                matches!(e.state, DocState::Provisional)
                    && e.pending.is_empty()
                    && !self.conns.values().any(|c| c.links.contains_key(*id))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in orphans {
            self.docs.remove(&id);
        }
        for entry in self.docs.values_mut() {
            entry.queued.retain(|(c, _)| *c != conn);
        }
        fx
    }

    pub(super) fn metadata(&self) -> PeerMetadata {
        PeerMetadata {
            storage_id: self.config.storage_id.clone(),
            is_ephemeral: false,
        }
    }

    pub(super) fn send(&self, fx: &mut Effects, conn: ConnId, msg: &Message) {
        fx.outgoing.push(Outgoing {
            conn,
            bytes: codec::encode(msg),
        });
    }

    pub(super) fn remote_of(&self, conn: ConnId) -> String {
        self.remote_peer_id(conn).unwrap_or_default().to_owned()
    }

    /// Sends `error` and closes: for protocol violations.
    pub(super) fn fail(&mut self, fx: &mut Effects, conn: ConnId, error: String) {
        let target = self.remote_peer_id(conn).map(str::to_owned);
        let msg = Message::Error {
            sender_id: Some(self.config.peer_id.clone()),
            target_id: target,
            message: truncate_to(&error, ErrorDetail::MAX_MESSAGE),
            detail: None,
        };
        self.send(fx, conn, &msg);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.handshake = Handshake::Closed;
        }
        fx.close.push((conn, error.clone()));
        fx.events.push(Event::ProtocolError { conn, error });
    }

    /// Sends `error` about one document and keeps the connection.
    pub(super) fn doc_error(
        &self,
        fx: &mut Effects,
        conn: ConnId,
        id: &DocumentId,
        code: ErrorCode,
        text: String,
    ) {
        let msg = self.doc_error_message(conn, id, code, text);
        self.send(fx, conn, &msg);
    }

    /// The `error` about one document, with its structured part.
    pub(super) fn doc_error_message(
        &self,
        conn: ConnId,
        id: &DocumentId,
        code: ErrorCode,
        text: String,
    ) -> Message {
        Message::Error {
            sender_id: Some(self.config.peer_id.clone()),
            target_id: Some(self.remote_of(conn)),
            message: truncate_to(&format!("document {id}: {text}"), ErrorDetail::MAX_MESSAGE),
            detail: Some(Box::new(ErrorDetail {
                document_id: Some(*id),
                code: Some(code.as_str().to_owned()),
                ..ErrorDetail::default()
            })),
        }
    }

    // ----- incoming frames ------------------------------------------------

    /// One binary frame arrived on `conn`.
    pub fn receive(&mut self, conn: ConnId, bytes: &[u8], now: Millis) -> Effects {
        let mut fx = Effects::default();
        let Some(c) = self.conns.get(&conn) else {
            return fx;
        };
        if matches!(c.handshake, Handshake::Closed) {
            return fx;
        }
        let msg = match codec::decode(bytes, &self.config.limits) {
            Ok(m) => m,
            Err(e) => {
                self.fail(&mut fx, conn, format!("could not decode message: {e}"));
                return fx;
            }
        };
        self.handle(conn, msg, now, &mut fx);
        fx
    }

    pub(super) fn handle(&mut self, conn: ConnId, msg: Message, now: Millis, fx: &mut Effects) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        match (&c.handshake, msg) {
            (Handshake::Closed, _) => {}
            (
                Handshake::AwaitingJoin,
                Message::Join {
                    sender_id,
                    supported_protocol_versions,
                    peer_metadata,
                },
            ) => {
                // automerge-repo treats a missing list as version 1.
                if !supported_protocol_versions.is_empty()
                    && !supported_protocol_versions.iter().any(|v| v == PROTOCOL_V1)
                {
                    self.fail(
                        fx,
                        conn,
                        format!(
                            "unsupported protocol version(s) {supported_protocol_versions:?}; this server speaks \"1\""
                        ),
                    );
                    return;
                }
                let reply = Message::Peer {
                    sender_id: self.config.peer_id.clone(),
                    target_id: sender_id.clone(),
                    selected_protocol_version: PROTOCOL_V1.to_owned(),
                    peer_metadata: Some(self.metadata()),
                };
                self.send(fx, conn, &reply);
                self.ready(conn, sender_id, peer_metadata, now, fx);
            }
            (Handshake::AwaitingJoin, other) => {
                self.fail(
                    fx,
                    conn,
                    format!("expected a join message first, got {}", other.type_name()),
                );
            }
            (
                Handshake::AwaitingPeer,
                Message::Peer {
                    sender_id,
                    selected_protocol_version,
                    peer_metadata,
                    ..
                },
            ) => {
                if selected_protocol_version != PROTOCOL_V1 {
                    self.fail(
                        fx,
                        conn,
                        format!("unsupported protocol version {selected_protocol_version:?}"),
                    );
                    return;
                }
                self.ready(conn, sender_id, peer_metadata, now, fx);
            }
            (
                Handshake::AwaitingPeer,
                Message::Error {
                    message, detail, ..
                },
            ) => {
                fx.events.push(Event::PeerError {
                    conn,
                    message: message.clone(),
                    detail: detail.map(|d| *d),
                });
                fx.close.push((conn, message));
            }
            (Handshake::AwaitingPeer, other) => {
                self.fail(
                    fx,
                    conn,
                    format!("expected a peer message first, got {}", other.type_name()),
                );
            }
            (Handshake::Ready { remote }, msg) => {
                let remote = remote.clone();
                self.handle_ready(conn, &remote, msg, now, fx);
            }
        }
    }

    pub(super) fn ready(
        &mut self,
        conn: ConnId,
        remote: String,
        metadata: Option<PeerMetadata>,
        now: Millis,
        fx: &mut Effects,
    ) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.handshake = Handshake::Ready {
                remote: remote.clone(),
            };
        }
        fx.events.push(Event::PeerJoined {
            conn,
            peer_id: remote,
            metadata,
        });
        if self.config.mode == Mode::Client {
            let mut ids: Vec<DocumentId> = self.docs.keys().copied().collect();
            ids.sort();
            for id in ids {
                self.announce(conn, id, now, fx);
            }
        }
    }

    /// Client: open the exchange about `id` on `conn`.
    pub(super) fn announce(&mut self, conn: ConnId, id: DocumentId, now: Millis, fx: &mut Effects) {
        if !self.is_ready(conn) {
            return;
        }
        let Some(entry) = self.docs.get(&id) else {
            return;
        };
        let wanted = entry.state == DocState::Wanted;
        if let Some(c) = self.conns.get_mut(&conn) {
            let link = c.links.entry(id).or_insert_with(|| Link::new(now));
            link.requested = wanted;
        }
        self.sync_out(conn, id, fx);
    }

    pub(super) fn handle_ready(
        &mut self,
        conn: ConnId,
        remote: &str,
        msg: Message,
        now: Millis,
        fx: &mut Effects,
    ) {
        // Every message after the handshake must come from the peer that joined.
        let sender = match &msg {
            Message::Join { sender_id, .. }
            | Message::Peer { sender_id, .. }
            | Message::Leave { sender_id }
            | Message::Request { sender_id, .. }
            | Message::Sync { sender_id, .. }
            | Message::DocUnavailable { sender_id, .. }
            | Message::Ephemeral { sender_id, .. }
            | Message::RemoteSubscriptionChange { sender_id, .. }
            | Message::RemoteHeadsChanged { sender_id, .. } => Some(sender_id.as_str()),
            Message::Error { sender_id, .. } => sender_id.as_deref(),
        };
        if let Some(s) = sender
            && s != remote
        {
            self.fail(
                fx,
                conn,
                format!(
                    "senderId {s:?} is not the peer id {remote:?} that joined on this connection"
                ),
            );
            return;
        }
        match msg {
            Message::Join { .. } | Message::Peer { .. } => {
                self.fail(fx, conn, "handshake message after the handshake".to_owned());
            }
            Message::Leave { .. } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.handshake = Handshake::Closed;
                }
                fx.close.push((conn, "peer left".to_owned()));
            }
            // The sender closes the connection if it means to; a server
            // reports refused changes this way and keeps serving.
            Message::Error {
                message, detail, ..
            } => {
                let detail = detail.map(|d| *d);
                if self.config.mode == Mode::Client
                    && let Some(d) = &detail
                    && let Some(id) = d.document_id
                    && d.code.as_deref() == Some(ErrorCode::Refused.as_str())
                {
                    if let Some(link) = self.conns.get_mut(&conn).and_then(|c| c.links.get_mut(&id))
                    {
                        link.refused = true;
                    }
                    fx.events.push(Event::Refused {
                        conn,
                        document_id: id,
                        detail: d.clone(),
                    });
                }
                fx.events.push(Event::PeerError {
                    conn,
                    message,
                    detail,
                });
            }
            Message::Request {
                document_id, data, ..
            } => self.on_sync(conn, document_id, data, true, now, fx),
            Message::Sync {
                document_id, data, ..
            } => self.on_sync(conn, document_id, data, false, now, fx),
            Message::DocUnavailable { document_id, .. } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.links.remove(&document_id);
                }
                fx.events
                    .push(Event::RemoteUnavailable { conn, document_id });
            }
            Message::Ephemeral {
                document_id,
                data,
                count,
                session_id,
                sender_id,
                ..
            } => {
                let linked = self
                    .conns
                    .get(&conn)
                    .and_then(|c| c.links.get(&document_id))
                    .is_some_and(|l| !l.blocked);
                if !linked {
                    // Ephemeral data only flows about documents the peer has open.
                    return;
                }
                if self.config.mode == Mode::Server {
                    let others: Vec<(ConnId, String)> = self
                        .conns
                        .iter()
                        .filter(|(id, c)| {
                            **id != conn && c.links.get(&document_id).is_some_and(|l| !l.blocked)
                        })
                        .filter_map(|(id, c)| match &c.handshake {
                            Handshake::Ready { remote } => Some((*id, remote.clone())),
                            _ => None,
                        })
                        .collect();
                    for (other, target) in others {
                        let relay = Message::Ephemeral {
                            sender_id: sender_id.clone(),
                            target_id: target,
                            count,
                            session_id: session_id.clone(),
                            document_id,
                            data: data.clone(),
                        };
                        self.send(fx, other, &relay);
                    }
                }
                fx.events.push(Event::Ephemeral {
                    conn,
                    document_id,
                    data,
                });
            }
            // Remote-heads gossip is optional in automerge-repo and off by
            // default; we accept and ignore it.
            Message::RemoteSubscriptionChange { .. } | Message::RemoteHeadsChanged { .. } => {}
        }
    }
}
