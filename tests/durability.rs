//! Durability of confirmed changes (DESIGN §3, §4): the real `kiemtra`
//! binary, four tablets editing two inspections at once, and `kill -9` of
//! the server in the middle of the burst, at three different points.
//!
//! After every kill: the database passes `PRAGMA integrity_check`, every
//! change the server had confirmed to a tablet (its heads in a server `sync`
//! message covered the change) is in the stored document, the restarted
//! server (same data folder, `--demo`) does not seed again, and once the
//! tablets reconnect everything converges: every tablet and the server hold
//! identical heads and every edit made, offline ones included.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use automerge::ChangeHash;
use sync_core::ids::DocumentId;
use sync_core::model::{self, Answer, Finding, Severity};
use sync_core::template::{AnswerValue, TemplateRegistry, Tri};
use tests::*;

use crate::peer::{Peer, db_file, inspection_of, list_inspections, stored_doc, token_of};

const BIN: &str = env!("CARGO_BIN_EXE_kiemtra-under-test");

/// Edits each tablet makes per round.
const EDITS_PER_ROUND: usize = 10;
/// Tablets.
const PEERS: usize = 4;
/// After this many edits (of all tablets together) in round `r`, the
/// server is killed: early, middle, late.
const KILL_AFTER: [usize; 3] = [6, 20, 34];

/// Yes/no/partial items of the demo checklist: answers need no extra fields.
const TRI_ITEMS: [&str; 8] = ["A2", "B8", "B9", "C2", "D3", "F1", "F2", "F3"];

/// The item tablet `p` answers in its edit `i`. Tablets 0 and 2 belong to
/// inspector1, the team lead; 1 and 3 to inspector2, a member. Only the
/// lead may answer over a conflict (two concurrent answers), so the lead's
/// tablets share the first four items — their concurrent answers become
/// visible conflicts, which the lead's later answers settle — and each of
/// the member's tablets has two items of its own, which no other tablet
/// answers concurrently.
fn answer_item(p: usize, i: usize) -> &'static str {
    if p.is_multiple_of(2) {
        TRI_ITEMS[(p * 3 + i) % 4]
    } else {
        TRI_ITEMS[4 + (p / 2) * 2 + i % 2]
    }
}

async fn spawn(data: &Path) -> ChildServer {
    ChildServer::spawn(
        Path::new(BIN),
        &[
            "--demo",
            "--data",
            data.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
        ],
        &[],
    )
    .await
}

/// SIGKILL, then reap the child.
async fn kill_9(child: &mut ChildServer) {
    let pid = child.child.id().expect("the server is running");
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "kill -KILL {pid}");
    let exit = tokio::time::timeout(TIMEOUT, child.child.wait())
        .await
        .expect("the killed server did not go away")
        .unwrap();
    assert!(
        !exit.success(),
        "a SIGKILLed server does not exit cleanly: {exit:?}"
    );
}

/// One edit of tablet `p`, number `i` (globally unique per tablet): mostly
/// new findings, every third an answer (see [`answer_item`]: concurrent
/// answers of the lead's tablets become visible conflicts).
async fn one_edit(peer: &Peer, docs: &[DocumentId; 2], p: usize, i: usize) -> Vec<ChangeHash> {
    let doc = docs[(p + i) % 2];
    let by = peer.user_id.clone();
    let at = now_unix() * 1000;
    let result = if i % 3 == 2 {
        let item = answer_item(p, i);
        let answer = Answer {
            value: AnswerValue::YesNoPartial([Tri::Yes, Tri::Partial, Tri::No][i % 3]),
            fields: Default::default(),
            evidence: BTreeSet::new(),
            note: Some(format!("tablet {p}, edit {i}")),
            by,
            at,
        };
        peer.edit(doc, |tx| model::set_answer(tx, item, &answer))
            .await
    } else {
        let fid = format!("f-p{p}-{i}");
        let finding = Finding {
            item_id: Some(TRI_ITEMS[i % TRI_ITEMS.len()].to_owned()),
            title: format!("Phát hiện {i} của máy {p}"),
            note: format!("ghi chú {i}"),
            severity: Severity::Medium,
            photos: BTreeSet::new(),
            by,
            at,
            deleted: false,
        };
        peer.edit(doc, |tx| model::add_finding(tx, &fid, &finding))
            .await
    };
    let hashes = result.unwrap_or_else(|e| panic!("tablet {p} edit {i}: {e}"));
    assert_eq!(hashes.len(), 1, "one change per edit");
    hashes
}

fn demo_templates() -> TemplateRegistry {
    let mut reg = TemplateRegistry::default();
    reg.publish(sync_core::template::Template::from_json(server::demo::CHECKLIST_JSON).unwrap())
        .unwrap();
    reg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_changes_survive_kill_9_and_everything_converges() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let db = db_file(&data);
    let mut child = spawn(&data).await;

    let secretariat = token_of(&child.base, "secretariat").await;
    let scheduled = list_inspections(&child.base, &secretariat).await.len();
    assert_eq!(scheduled, 5);
    // Two tablets each for the two inspectors of team A.
    let (mut peers, docs) = team_a_tablets(&child.base).await;
    assert_eq!(peers.len(), PEERS);

    let mut made: Vec<Vec<ChangeHash>> = vec![Vec::new(); PEERS];
    for (round, kill_after) in KILL_AFTER.iter().copied().enumerate() {
        let counter = Arc::new(AtomicUsize::new(0));
        let pid = child.child.id().expect("the server is running");
        let bursts = peers.iter().enumerate().map(|(p, peer)| {
            let counter = counter.clone();
            async move {
                let mut mine = Vec::new();
                for k in 0..EDITS_PER_ROUND {
                    let i = round * EDITS_PER_ROUND + k;
                    mine.extend(one_edit(peer, &docs, p, i).await);
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == kill_after {
                        // Make the check meaningful: the server has
                        // confirmed at least one of this round's edits.
                        let deadline = tokio::time::Instant::now() + TIMEOUT;
                        while !mine
                            .iter()
                            .any(|h| docs.iter().any(|d| peer.confirmed(*d).contains(h)))
                        {
                            assert!(tokio::time::Instant::now() < deadline, "nothing confirmed");
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        let status = tokio::process::Command::new("kill")
                            .args(["-KILL", &pid.to_string()])
                            .status()
                            .await
                            .unwrap();
                        assert!(status.success());
                    }
                    // A tablet's pace: a few edits per tick of the server.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                mine
            }
        });
        let results = futures_util::future::join_all(bursts).await;
        // The kill happened inside the burst; reap the process.
        let exit = tokio::time::timeout(TIMEOUT, child.child.wait())
            .await
            .expect("the killed server did not go away")
            .unwrap();
        assert!(!exit.success(), "round {round}: {exit:?}");
        for peer in &peers {
            peer.wait_ended().await;
        }

        // What the tablets were told is stored, is stored.
        assert_eq!(integrity_check(&db), "ok", "round {round}");
        let stored = docs.map(|d| stored_doc(&db, d).expect("the inspection is stored"));
        for (d, stored) in docs.iter().zip(&stored) {
            for peer in &peers {
                for h in peer.confirmed(*d) {
                    assert!(
                        stored.get_change_meta_by_hash(&h).is_some(),
                        "round {round}: {} was confirmed change {h} of {d}, which is not stored",
                        peer.name
                    );
                }
            }
        }
        // The kill fell inside the burst: some of this round's edits were
        // confirmed before it, some were not (made offline, or in flight).
        let confirmed_now: usize = results
            .iter()
            .zip(&peers)
            .map(|(mine, peer)| {
                mine.iter()
                    .filter(|h| docs.iter().any(|d| peer.confirmed(*d).contains(h)))
                    .count()
            })
            .sum();
        let total_now: usize = results.iter().map(Vec::len).sum();
        assert_eq!(total_now, PEERS * EDITS_PER_ROUND);
        assert!(
            confirmed_now > 0 && confirmed_now < total_now,
            "round {round}: {confirmed_now} of {total_now} edits confirmed before the kill"
        );
        for (p, mine) in results.into_iter().enumerate() {
            made[p].extend(mine);
        }

        // Restart on the same folder: no second seeding.
        child = spawn(&data).await;
        let secretariat = token_of(&child.base, "secretariat").await;
        assert_eq!(
            list_inspections(&child.base, &secretariat).await.len(),
            scheduled
        );
        for peer in &mut peers {
            peer.reconnect(&child.base).await.unwrap();
        }
        converge(&peers, &docs).await;
        for peer in &peers {
            assert!(
                peer.errors().is_empty(),
                "{}: {:?}",
                peer.name,
                peer.errors()
            );
        }
        assert_converged(&peers, &docs, &db, &made, round);
    }

    // Finally every edit of every round is in the server's copy, readable.
    let templates = demo_templates();
    for d in docs {
        let stored = stored_doc(&db, d).unwrap();
        let insp = model::read_inspection(&stored, &templates).unwrap();
        let expected_findings = (0..PEERS)
            .flat_map(|p| (0..KILL_AFTER.len() * EDITS_PER_ROUND).map(move |i| (p, i)))
            .filter(|(p, i)| i % 3 != 2 && docs[(p + i) % 2] == d)
            .count();
        assert_eq!(insp.findings.len(), expected_findings, "findings of {d}");
    }
    kill_9(&mut child).await;
    assert_eq!(integrity_check(&db), "ok");
}

/// Waits (bounded) until all tablets are synced at once with identical
/// heads: one tablet's offline edits reach the others only through the
/// server, after that tablet synced.
async fn converge(peers: &[Peer], docs: &[DocumentId; 2]) {
    for _ in 0..50 {
        for peer in peers {
            peer.wait_synced().await;
        }
        let same = docs.iter().all(|d| {
            let first = peers[0].heads(*d);
            peers
                .iter()
                .all(|p| p.heads(*d) == first && p.server_heads(*d) == first)
        });
        if same {
            return;
        }
    }
    panic!("the tablets did not converge");
}

/// Every tablet and the server hold the same heads for each document,
/// every change any tablet made so far is in all of them, and the server
/// has confirmed each tablet's own changes to it.
fn assert_converged(
    peers: &[Peer],
    docs: &[DocumentId; 2],
    db: &Path,
    made: &[Vec<ChangeHash>],
    round: usize,
) {
    for d in docs {
        let stored = stored_doc(db, *d).unwrap();
        let mut server_heads = stored.get_heads();
        server_heads.sort();
        for peer in peers {
            assert_eq!(
                peer.heads(*d),
                server_heads,
                "round {round}: {} on {d}",
                peer.name
            );
        }
    }
    for (p, hashes) in made.iter().enumerate() {
        for h in hashes {
            let found = docs
                .iter()
                .filter(|d| {
                    stored_doc(db, **d).is_some_and(|s| s.get_change_meta_by_hash(h).is_some())
                })
                .count();
            assert_eq!(
                found, 1,
                "round {round}: change {h} of tablet {p} is stored once"
            );
            assert!(
                docs.iter().any(|d| peers[p].confirmed(*d).contains(h)),
                "round {round}: the server never confirmed change {h} to tablet {p}"
            );
            for peer in peers {
                assert!(
                    docs.iter().any(|d| peer
                        .doc(*d)
                        .is_some_and(|doc| doc.get_change_meta_by_hash(h).is_some())),
                    "round {round}: {} lacks change {h} of tablet {p}",
                    peer.name
                );
            }
        }
    }
}

/// Four tablets and two inspections in `docs`, all synced, on `base`.
async fn team_a_tablets(base: &str) -> (Vec<Peer>, [DocumentId; 2]) {
    let secretariat = token_of(base, "secretariat").await;
    let docs = [
        inspection_of(base, &secretariat, "00004").await,
        inspection_of(base, &secretariat, "09556").await,
    ];
    let mut peers = Vec::new();
    for name in ["inspector1", "inspector2", "inspector1", "inspector2"] {
        let peer = Peer::login(base, name).await;
        for d in docs {
            assert!(peer.want(d).await, "{name} reads its team's inspection");
        }
        peer.wait_synced().await;
        peers.push(peer);
    }
    (peers, docs)
}

/// Four tablets edit at once while connected: everything converges and the
/// server confirms every change to the tablet that made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_of_four_tablets_converge_and_are_confirmed() {
    let server = TestServer::start(true).await;
    let db = db_file(&server.data_dir());
    let (peers, docs) = team_a_tablets(&server.base).await;
    let bursts = peers.iter().enumerate().map(|(p, peer)| async move {
        let mut mine = Vec::new();
        for i in 0..30 {
            mine.extend(one_edit(peer, &docs, p, i).await);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        mine
    });
    let made = futures_util::future::join_all(bursts).await;
    converge(&peers, &docs).await;
    assert_converged(&peers, &docs, &db, &made, 0);
    server.stop().await;
}

/// Tablets that edited offline reconnect one after the other: each one's
/// changes reach the others through the server, and each is told (by the
/// server's heads) that its own changes are stored. This once stalled: a
/// tablet's second message, handled in the same group commit as its
/// changes, swallowed the server's confirming reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_are_confirmed_after_reconnect() {
    let server = TestServer::start(true).await;
    let db = db_file(&server.data_dir());
    let (mut peers, docs) = team_a_tablets(&server.base).await;
    let mut made: Vec<Vec<ChangeHash>> = vec![Vec::new(); PEERS];
    for round in 0..3 {
        for peer in &mut peers {
            peer.close().await;
        }
        for (p, peer) in peers.iter().enumerate() {
            for k in 0..5 {
                made[p].extend(one_edit(peer, &docs, p, round * 5 + k).await);
            }
        }
        for peer in &mut peers {
            peer.reconnect(&server.base).await.unwrap();
        }
        converge(&peers, &docs).await;
        assert_converged(&peers, &docs, &db, &made, round);
    }
    server.stop().await;
}
