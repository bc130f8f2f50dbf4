//! Property: 2–8 replicas editing one inspection concurrently, syncing
//! through the server with frames dropped, duplicated and reordered, saved
//! and reloaded between rounds, all end with identical heads and identical
//! documents once the network behaves, and every change any of them made is
//! stored on the server.
//!
//! The server creates the inspection; each replica is an honest team member
//! writing under its own user id and its own automerge actor, so the server
//! refuses none of their changes. Replica 0 leads the team: it alone settles
//! an answer that holds concurrent values; the others leave such an item
//! alone, as the tablet app does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};

use automerge::{ROOT, ReadDoc};
use proptest::prelude::*;
use support::{Net, Rng, json, peer};
use sync_core::ids::DocumentId;
use sync_core::model::{
    self, Answer, Finding, InspectionHeader, MemberRole, PhotoMime, PhotoRef, Severity,
};
use sync_core::policy::Role;
use sync_core::protocol::hub::Event;
use sync_core::template::{AnswerValue, Tri};

const INSPECTION: DocumentId = DocumentId::from_bytes([0x11; 16]);

#[derive(Debug, Clone)]
enum Op {
    Answer(usize, u8),
    AddFinding(u8),
    Title(u8, u8),
    Note(u8, u8, String),
    Photo(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..7, any::<u8>()).prop_map(|(i, v)| Op::Answer(i, v)),
        (0u8..4).prop_map(Op::AddFinding),
        (0u8..4, any::<u8>()).prop_map(|(f, t)| Op::Title(f, t)),
        (0u8..4, any::<u8>(), "[a-zđ ]{0,8}").prop_map(|(f, p, s)| Op::Note(f, p, s)),
        (0u8..6).prop_map(Op::Photo),
    ]
}

/// One round: each replica's edits, who is online, and the network's seed.
#[derive(Debug, Clone)]
struct Round {
    edits: Vec<Vec<Op>>,
    online: Vec<bool>,
    seed: u64,
    drop_pct: u32,
    dup_pct: u32,
    restart_server: bool,
}

fn rounds(n: usize) -> impl Strategy<Value = Vec<Round>> {
    let round = (
        prop::collection::vec(prop::collection::vec(op(), 0..4), n),
        prop::collection::vec(any::<bool>(), n),
        any::<u64>(),
        0u32..25,
        0u32..15,
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(edits, online, seed, drop_pct, dup_pct, restart_server)| Round {
                edits,
                online,
                seed,
                drop_pct,
                dup_pct,
                restart_server,
            },
        );
    prop::collection::vec(round, 1..5)
}

fn user(r: usize) -> String {
    format!("u-insp{r}")
}

/// Replica 0 leads the team.
const LEAD: usize = 0;

/// How many values `answers.<item>` holds in `doc` (more than one: a conflict).
fn answer_values(doc: &automerge::Automerge, item: &str) -> usize {
    doc.get(ROOT, "answers")
        .ok()
        .flatten()
        .and_then(|(_, answers)| doc.get_all(&answers, item).ok())
        .map_or(0, |all| all.len())
}

fn answer_value(item: usize, v: u8) -> (&'static str, AnswerValue) {
    match item {
        0 => ("A1", AnswerValue::YesNo(v.is_multiple_of(2))),
        1 => (
            "A2",
            AnswerValue::YesNoPartial([Tri::Yes, Tri::Partial, Tri::No][usize::from(v % 3)]),
        ),
        2 => (
            "A3",
            AnswerValue::Percentage {
                numerator: u64::from(v % 11),
                denominator: 10 + u64::from(v % 3),
            },
        ),
        3 => ("A4", AnswerValue::Number(i64::from(v))),
        4 => ("G1", AnswerValue::Text(format!("Ghi chú số {v}"))),
        5 => (
            "G3",
            AnswerValue::Select(["tot", "kha", "trung_binh", "yeu"][usize::from(v % 4)].into()),
        ),
        _ => ("A1", AnswerValue::NotApplicable),
    }
}

/// Applies an op on replica `r` (client index r + 1); ops that do not fit
/// the replica's current view (editing a finding it has not seen) are skipped.
fn apply(net: &mut Net, r: usize, op: &Op, at: i64) {
    let i = r + 1;
    let by = user(r);
    let Some(doc) = net.client_doc(i, &INSPECTION) else {
        return;
    };
    let has_finding = |f: u8| {
        model::read_inspection(doc, &support::registry())
            .map(|x| x.findings.contains_key(&format!("f-{f}-{r}")))
            .unwrap_or(false)
    };
    match op {
        Op::Answer(item, v) => {
            let (item, value) = answer_value(*item, *v);
            if r != LEAD && answer_values(doc, item) > 1 {
                // A conflict: the team lead settles it.
                return;
            }
            let a = Answer {
                value,
                fields: BTreeMap::new(),
                evidence: BTreeSet::new(),
                note: None,
                by,
                at,
            };
            net.edit(i, &INSPECTION, |tx| model::set_answer(tx, item, &a));
        }
        Op::AddFinding(f) => {
            if has_finding(*f) {
                return;
            }
            let finding = Finding {
                item_id: Some("A2".into()),
                title: format!("Phát hiện {f}"),
                note: String::new(),
                severity: Severity::Low,
                photos: BTreeSet::new(),
                by,
                at,
                deleted: false,
            };
            net.edit(i, &INSPECTION, |tx| {
                model::add_finding(tx, &format!("f-{f}-{r}"), &finding)
            });
        }
        Op::Title(f, t) => {
            let id = format!("f-{f}-{}", usize::from(*t) % 8);
            let exists = model::read_inspection(doc, &support::registry())
                .map(|x| x.findings.contains_key(&id))
                .unwrap_or(false);
            if exists {
                net.edit(i, &INSPECTION, |tx| {
                    model::update_finding_title(tx, &id, &format!("Tiêu đề {t}"))
                });
            }
        }
        Op::Note(f, p, s) => {
            let id = format!("f-{f}-{}", usize::from(*p) % 8);
            let note_len = model::read_inspection(doc, &support::registry())
                .ok()
                .and_then(|x| x.findings.get(&id).map(|f| f.note.chars().count()));
            if let Some(len) = note_len {
                let pos = usize::from(*p) % (len + 1);
                net.edit(i, &INSPECTION, |tx| {
                    model::splice_finding_note(tx, &id, pos, 0, s)
                });
            }
        }
        Op::Photo(k) => {
            let photo = PhotoRef {
                sha256: format!("{:064x}", u64::from(*k) + 1),
                mime: PhotoMime::Jpeg,
                bytes: 1000 + u64::from(*k),
                width: Some(1600),
                height: Some(1200),
                taken_at: None,
                item_id: Some("A4".into()),
                finding_id: None,
                caption: None,
                by,
                at,
                deleted: false,
            };
            net.edit(i, &INSPECTION, |tx| model::add_photo(tx, &photo));
        }
    }
}

fn run_case(n: usize, plan: &[Round]) -> Result<(), TestCaseError> {
    let mut who = vec![peer("u-secretariat", Role::Secretariat, None, None)];
    who.extend((0..n).map(|r| peer(&user(r), Role::Inspector, Some("t-a"), None)));
    let mut net = Net::new(who);
    let header = InspectionHeader {
        unit_code: "00004".into(),
        unit_name: "Phường Ba Đình".into(),
        template_id: "DA06-HN-2025-v1".into(),
        template_version: 1,
        team_id: "t-a".into(),
        members: (0..n)
            .map(|r| {
                let role = if r == LEAD {
                    MemberRole::Lead
                } else {
                    MemberRole::Member
                };
                (user(r), role)
            })
            .collect(),
        scheduled_date: "2025-10-15".into(),
        created_at: 1,
    };
    // The server creates it; the secretariat and every replica fetch it
    // once (as a tablet does when its assignments arrive) and then go
    // offline.
    net.server_create(INSPECTION, |tx| model::init_inspection(tx, &header));
    for i in 0..=n {
        net.connect(i);
        net.want(i, INSPECTION);
    }
    net.run(100_000);
    for i in 0..=n {
        net.disconnect(i);
        prop_assert!(
            net.client_doc(i, &INSPECTION).is_some(),
            "replica {i} has the inspection"
        );
    }

    let mut at = 10;
    let mut seen = BTreeSet::new();
    for round in plan {
        for (r, ops) in round.edits.iter().enumerate() {
            for op in ops {
                at += 1;
                apply(&mut net, r, op, at);
            }
        }
        if round.restart_server {
            net.reload_server();
        }
        for r in 0..n {
            if round.online[r] {
                net.connect(r + 1);
                net.want(r + 1, INSPECTION);
            }
        }
        for i in 1..=n {
            if let Some(d) = net.client_doc(i, &INSPECTION) {
                seen.extend(d.get_heads());
            }
        }
        let mut rng = Rng::new(round.seed);
        net.run_faulty(&mut rng, round.drop_pct, round.dup_pct, 50_000);
        // Save and reload: every replica restarts from its own store.
        for i in 0..=n {
            net.disconnect(i);
            net.reload_client(i);
        }
        net.now += 60_000;
    }

    // The network behaves again: everyone connects, in two passes at most
    // (a replica that connected first may need a second exchange to get
    // what a later one brought).
    let mut passes = 0;
    loop {
        passes += 1;
        for i in 0..=n {
            net.connect(i);
        }
        net.run(200_000);
        let heads = net.server.heads(&INSPECTION);
        let done = (0..=n)
            .all(|i| net.client_doc(i, &INSPECTION).map(|d| d.get_heads()) == Some(heads.clone()));
        for i in 0..=n {
            net.disconnect(i);
        }
        if done {
            break;
        }
        prop_assert!(passes < 3, "no convergence after {passes} clean passes");
    }
    let stored = net.server.store.load(INSPECTION).unwrap().unwrap();
    let want = json(&stored);
    for i in 0..=n {
        let doc = net.client_doc(i, &INSPECTION).unwrap();
        prop_assert_eq!(doc.get_heads(), stored.get_heads(), "replica {} heads", i);
        prop_assert_eq!(&json(doc), &want, "replica {} content", i);
    }
    // Nobody's edit was refused on the way (protocol errors caused by the
    // injected faults — a duplicated join, a reordered handshake — are
    // expected and only cost a reconnect).
    let rejected: Vec<_> = net
        .server
        .events
        .iter()
        .filter(|e| matches!(e, Event::Rejected { .. }))
        .collect();
    prop_assert!(rejected.is_empty(), "{rejected:?}");
    for i in 0..=n {
        let refused: Vec<_> = net.clients[i]
            .events
            .iter()
            .filter(|e| matches!(e, Event::Refused { .. }))
            .collect();
        prop_assert!(refused.is_empty(), "replica {i}: {refused:?}");
        prop_assert!(
            !net.errors_to(i).iter().any(|e| e.contains("refused")),
            "replica {i}: {:?}",
            net.errors_to(i)
        );
    }
    // Every edit made anywhere is in the final document: nothing was lost
    // to drops, restarts or reloads.
    for h in &seen {
        prop_assert!(
            stored.get_change_meta_by_hash(h).is_some(),
            "change {h} was lost"
        );
    }
    let mut made = 0;
    for i in 1..=n {
        for (_, change) in &net.clients[i].made {
            made += 1;
            prop_assert_eq!(change.actor_id(), &support::client_actor(i));
            prop_assert!(
                stored.get_change_meta_by_hash(&change.hash()).is_some(),
                "replica {}'s change {} was lost",
                i,
                change.hash()
            );
        }
    }
    prop_assert_eq!(
        stored.get_changes(&[]).len(),
        made + 1,
        "the server's creation and the replicas' changes, nothing else"
    );
    prop_assert!(model::read_inspection(&stored, &support::registry()).is_ok());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_through_a_faulty_network(
        (n, plan) in (2usize..=8).prop_flat_map(|n| (Just(n), rounds(n)))
    ) {
        run_case(n, &plan)?;
    }
}
