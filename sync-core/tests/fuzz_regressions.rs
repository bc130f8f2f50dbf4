//! The fuzz targets' checks (`sync_core::fuzzing`) on every committed seed
//! (`fuzz/seeds/<target>/`) and on every input that ever crashed a target
//! (`tests/fuzz-regressions/<target>/`, one file per crash, named after
//! what it found). A crash found by `scripts/fuzz` is fixed, then its
//! artifact is copied there so that it stays fixed.
//!
//! `hub_seed_sessions_record_and_replay` records real sessions between
//! client hubs and the fuzz target's server and replays them through the
//! target; after a protocol change, write them as the `hub` seeds with
//! `KIEMTRA_WRITE_HUB_SEEDS=1 cargo test -p sync-core --test fuzz_regressions hub_seed_sessions`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, Change, ROOT};
use sync_core::fuzzing::{self, HUB_DOCS, HubScript, hub_config, hub_peer, kind};
use sync_core::ids::DocumentId;
use sync_core::model;
use sync_core::policy::Role;
use sync_core::protocol::hub::{
    Access, AllowAll, ConnId, Effects, Hub, HubConfig, Mode, Outgoing, StoreRequest,
};
use sync_core::template::AnswerValue;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Every file in `dir` (none if it does not exist), sorted.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs `check` on the seeds and the regressions of `target`.
fn replay(target: &str, check: fn(&[u8])) {
    let seeds = inputs(&root().join("../fuzz/seeds").join(target));
    assert!(!seeds.is_empty(), "fuzz/seeds/{target} has seeds");
    let regressions = inputs(&root().join("tests/fuzz-regressions").join(target));
    for path in seeds.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap();
        // A panic names the file it came from.
        eprintln!("{target}: {}", path.display());
        check(&data);
    }
}

#[test]
fn codec_seeds_and_regressions_replay() {
    replay("codec", fuzzing::codec);
}

#[test]
fn template_seeds_and_regressions_replay() {
    replay("template", fuzzing::template);
}

#[test]
fn hub_seeds_and_regressions_replay() {
    replay("hub", |data| {
        fuzzing::hub(data);
    });
}

#[test]
fn the_real_checklist_passes_the_template_check() {
    fuzzing::template(include_bytes!("data/checklist_de_an_06.json"));
}

/// The seeds decode: a seed the codec refuses would only test the error
/// paths.
#[test]
fn codec_seeds_are_accepted_frames() {
    for path in inputs(&root().join("../fuzz/seeds/codec")) {
        let data = std::fs::read(&path).unwrap();
        let limits = sync_core::protocol::Limits::default();
        if let Err(e) = sync_core::protocol::decode(&data, &limits) {
            panic!("{}: {e}", path.display());
        }
    }
}

/// The hub check really drives a session: the recorded seed loads a stored
/// document, syncs it both ways and commits an edit (a harness whose every
/// frame were refused would pass any hub).
#[test]
fn hub_seed_reaches_the_sync_exchange() {
    let data = std::fs::read(root().join("../fuzz/seeds/hub/allow-all-two-clients.bin")).unwrap();
    let run = fuzzing::hub(&data);
    assert!(run.documents_loaded >= 1, "{run:?}");
    assert!(run.syncs_sent >= 2, "{run:?}");
    assert!(run.stores_committed >= 1, "{run:?}");
}

/// The documents the hub target's storage starts with are what it says.
#[test]
fn hub_storage_holds_a_map_an_inspection_and_a_catalog() {
    let kinds: Vec<_> = fuzzing::hub_storage()
        .iter()
        .map(|(id, changes)| {
            let doc = fuzzing::hub_load(changes).expect("loads");
            (*id, model::kind_of(&doc).ok())
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (HUB_DOCS[0], None),
            (HUB_DOCS[1], Some(model::DocKind::Inspection)),
            (HUB_DOCS[2], Some(model::DocKind::Catalog)),
        ]
    );
}

// ---------------------------------------------------------------------------
// Recording hub seeds
// ---------------------------------------------------------------------------

const NOW: u64 = 1_000;

/// The fuzz driver's server side, mirrored: loads answered at once from
/// its storage, the stores of a frame committed right after it (the script
/// gets a COMMIT of everything after each frame).
struct Recorder<A: Access> {
    server: Hub<A>,
    stored: HashMap<DocumentId, Vec<Change>>,
    /// (server-side connection, client hub; its own connection is 1).
    clients: Vec<(ConnId, Hub<AllowAll>)>,
    script: HubScript,
}

impl<A: Access> Recorder<A> {
    fn new(setup: u8, access: A, who: impl Fn(ConnId) -> A::Identity) -> Self {
        let mut server = Hub::new(hub_config(), access);
        for conn in [1, 2] {
            server.connect(conn, who(conn), NOW);
        }
        Self {
            server,
            stored: fuzzing::hub_storage().iter().cloned().collect(),
            clients: Vec::new(),
            script: HubScript::new(setup),
        }
    }

    fn client(&mut self, conn: ConnId) -> &mut Hub<AllowAll> {
        &mut self
            .clients
            .iter_mut()
            .find(|(c, _)| *c == conn)
            .expect("client exists")
            .1
    }

    /// Adds a client on server connection `conn` and returns its join.
    fn add_client(&mut self, conn: ConnId) -> Vec<(ConnId, Vec<u8>)> {
        let mut hub = Hub::new(
            HubConfig::new(Mode::Client, fuzzing::hub_remote_peer(conn)),
            AllowAll,
        );
        let fx = hub.connect(1, (), NOW);
        self.clients.push((conn, hub));
        client_out(conn, fx)
    }

    /// Delivers frames both ways until nothing is left in flight.
    fn pump(&mut self, mut to_server: Vec<(ConnId, Vec<u8>)>) {
        for _ in 0..200 {
            if to_server.is_empty() {
                return;
            }
            let mut to_clients = Vec::new();
            for (conn, frame) in std::mem::take(&mut to_server) {
                self.script.frame(conn, &frame).commit_all();
                let mut pending = Vec::new();
                let fx = self.server.receive(conn, &frame, NOW);
                to_clients.extend(self.settle(fx, &mut pending));
                for store in pending {
                    self.stored
                        .entry(store.document_id)
                        .or_default()
                        .extend(store.changes);
                    let fx = self.server.committed(store.ticket, NOW);
                    to_clients.extend(self.settle(fx, &mut Vec::new()));
                }
            }
            for out in to_clients {
                let client = self.client(out.conn);
                let mut fx = client.receive(1, &out.bytes, NOW);
                for s in std::mem::take(&mut fx.store) {
                    fx.merge(client.committed(s.ticket, NOW));
                }
                to_server.extend(client_out(out.conn, fx));
            }
        }
        panic!("the session never settled");
    }

    /// Carries out the server's effects: loads answered from storage, stores
    /// collected in `pending`; returns the frames for the clients.
    fn settle(&mut self, fx: Effects, pending: &mut Vec<StoreRequest>) -> Vec<Outgoing> {
        let mut queue = vec![fx];
        let mut out = Vec::new();
        while let Some(fx) = queue.pop() {
            out.extend(fx.outgoing);
            pending.extend(fx.store);
            for id in fx.load {
                let doc = self.stored.get(&id).and_then(|c| fuzzing::hub_load(c));
                queue.push(self.server.loaded(id, doc, NOW));
            }
        }
        out
    }

    /// Replays the recording through the target (it must pass without a
    /// finding) and, when `KIEMTRA_WRITE_HUB_SEEDS` is set, writes it as a seed.
    fn write(&self, name: &str) {
        fuzzing::hub(self.script.bytes());
        if std::env::var_os("KIEMTRA_WRITE_HUB_SEEDS").is_none() {
            return;
        }
        let path = root().join("../fuzz/seeds/hub").join(name);
        std::fs::write(&path, self.script.bytes()).unwrap();
        eprintln!(
            "wrote {} ({} bytes)",
            path.display(),
            self.script.bytes().len()
        );
    }
}

/// A client's frames (all on its connection 1) as frames on server
/// connection `conn`.
fn client_out(conn: ConnId, fx: Effects) -> Vec<(ConnId, Vec<u8>)> {
    fx.outgoing.into_iter().map(|o| (conn, o.bytes)).collect()
}

fn edited(f: impl FnOnce(&mut automerge::transaction::Transaction<'_>)) -> Automerge {
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    f(&mut tx);
    tx.commit();
    doc
}

#[test]
fn hub_seed_sessions_record_and_replay() {
    // Two clients, AllowAll: the first opens a stored document, edits it
    // and syncs the edit; the second opens it after; then time passes and
    // idle documents are unloaded.
    let mut r = Recorder::new(0, AllowAll, |_| ());
    let join = r.add_client(1);
    r.pump(join);
    let fx = r.client(1).want(HUB_DOCS[0], NOW);
    r.pump(client_out(1, fx));
    assert!(
        r.client(1).document(&HUB_DOCS[0]).is_some(),
        "client 1 got it"
    );
    let (_, mut fx) = r
        .client(1)
        .update(&HUB_DOCS[0], NOW, |d| {
            d.transact::<_, _, automerge::AutomergeError>(|tx| {
                tx.put(ROOT, "n", 2)?;
                let list = tx.put_object(ROOT, "items", automerge::ObjType::List)?;
                tx.insert(&list, 0, "một")?;
                Ok(())
            })
            .map_err(|f| f.error)
        })
        .unwrap();
    for s in std::mem::take(&mut fx.store) {
        fx.merge(r.client(1).committed(s.ticket, NOW));
    }
    r.pump(client_out(1, fx));
    assert!(
        r.stored[&HUB_DOCS[0]].len() > fuzzing::hub_storage()[0].1.len(),
        "the server stored the edit"
    );
    let join = r.add_client(2);
    r.pump(join);
    let fx = r.client(2).want(HUB_DOCS[0], NOW);
    r.pump(client_out(2, fx));
    assert!(
        r.client(2).document(&HUB_DOCS[0]).is_some(),
        "client 2 got it"
    );
    r.script.tick(8).unload_idle().tick(8);
    r.write("allow-all-two-clients.bin");

    // DocumentRules, the team lead of the stored inspection answers an item
    // (the template is not published there, so the server refuses it).
    let role = Role::Inspector;
    let setup = 1 | (fuzzing::HUB_ROLES.iter().position(|r| *r == role).unwrap() as u8) << 1;
    let mut r = Recorder::new(setup, sync_core::access::DocumentRules::default(), |conn| {
        hub_peer(role, conn)
    });
    let join = r.add_client(1);
    r.pump(join);
    let fx = r.client(1).want(HUB_DOCS[1], NOW);
    r.pump(client_out(1, fx));
    assert!(
        r.client(1).document(&HUB_DOCS[1]).is_some(),
        "the lead got it"
    );
    let answer = model::Answer {
        value: AnswerValue::YesNo(true),
        fields: BTreeMap::new(),
        evidence: Default::default(),
        note: None,
        by: "u-1".into(),
        at: 1_760_000_100_000,
    };
    let (_, mut fx) = r
        .client(1)
        .update(&HUB_DOCS[1], NOW, |d| {
            d.transact(|tx| model::set_answer(tx, "A1", &answer))
                .map_err(|f| f.error)
        })
        .unwrap();
    for s in std::mem::take(&mut fx.store) {
        fx.merge(r.client(1).committed(s.ticket, NOW));
    }
    r.pump(client_out(1, fx));
    r.write("rules-inspector-answers.bin");

    // Every operation once, loads deferred, messages built by the driver
    // around real sync messages.
    let doc = edited(|tx| {
        tx.put(ROOT, "k", "v").unwrap();
    });
    let first = doc
        .generate_sync_message(&mut sync::State::new())
        .unwrap()
        .encode();
    let empty = Automerge::new()
        .generate_sync_message(&mut sync::State::new())
        .unwrap()
        .encode();
    let mut s = HubScript::new(0x10);
    s.message(1, kind::JOIN, 0, &[])
        .message(1, kind::REQUEST, 0, &empty)
        .load_one()
        .message(1, kind::SYNC, 0, &first)
        .commit_one()
        .message(2, kind::JOIN, 0, &[])
        .message(2, kind::REQUEST, 2, &empty)
        .load_one()
        .message(2, kind::EPHEMERAL, 2, b"\xa1\x61x\x01")
        .message(1, kind::SYNC, 0, &first)
        .fail_one()
        .message(2, kind::DOC_UNAVAILABLE, 3, &[])
        .message(2, kind::REQUEST, 3, &empty)
        .load_one()
        .tick(8)
        .toggle_connection(1)
        .toggle_connection(1)
        .message(1, kind::JOIN, 0, &[])
        .frame(2, b"\xa0")
        .message(1, kind::LEAVE, 0, &[])
        .unload_idle()
        .commit_all();
    let path = root().join("../fuzz/seeds/hub/every-operation.bin");
    std::fs::write(&path, s.bytes()).unwrap();
    fuzzing::hub(s.bytes());
}

/// Found by `codec`: a nested map with a fixed set of keys (`peerMetadata`,
/// a `violations` entry, a `newHeads` value) was refused when it had more
/// keys than `Limits::max_entries`, so our own encoding of a message did
/// not decode under small limits. Such maps are bounded by
/// `MAX_OBJECT_KEYS`, like the message map itself.
#[test]
fn fixed_schema_maps_are_not_bounded_by_max_entries() {
    use sync_core::protocol::{Limits, Message, PeerMetadata, decode, encode};
    let join = Message::Join {
        sender_id: "p".into(),
        supported_protocol_versions: vec!["1".into()],
        peer_metadata: Some(PeerMetadata {
            storage_id: Some("s".into()),
            is_ephemeral: false,
        }),
    };
    let limits = Limits {
        max_entries: 1,
        ..Limits::default()
    };
    assert_eq!(decode(&encode(&join), &limits), Ok(join));
}
