//! The write check of one tablet's push: K findings written offline, one
//! change each, onto an inspection that already holds N findings.
//!
//! `whole_batch` is what the hub did before changes were judged one by
//! one (apply the batch, `policy::check_changes` over the batch, validate
//! the whole document); `intake` is what it does now
//! (`protocol::intake::intake` with `DocumentRules`).
//!
//! `cargo bench -p sync-core --bench write_check`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;

use automerge::{ActorId, AutoCommit, Automerge, Change};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sync_core::DocumentId;
use sync_core::access::{DocumentRules, PeerInfo};
use sync_core::model::{self, Finding, InspectionHeader, MemberRole, Severity};
use sync_core::policy::{Role, check_changes};
use sync_core::protocol::intake::intake;
use sync_core::template::{Template, TemplateRegistry};

const CHECKLIST: &str = include_str!("../tests/data/checklist_de_an_06.json");

fn registry() -> TemplateRegistry {
    let mut r = TemplateRegistry::default();
    r.publish(Template::from_json(CHECKLIST).unwrap()).unwrap();
    r
}

fn finding(i: usize) -> Finding {
    Finding {
        item_id: None,
        title: format!("Phát hiện {i}"),
        note: "Thiết bị đọc chip chưa được lắp đặt tại bộ phận một cửa".into(),
        severity: Severity::Medium,
        photos: BTreeSet::new(),
        by: "u-an".into(),
        at: 1_760_000_000_000 + i as i64,
        deleted: false,
    }
}

/// The inspection with `existing` findings, and `push` new changes on top.
fn workload(existing: usize, push: usize) -> (Automerge, Vec<Change>) {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(b"kiemtra-server".to_vec()));
    model::init_inspection(
        &mut doc,
        &InspectionHeader {
            unit_code: "00004".into(),
            unit_name: "Phường Ba Đình".into(),
            template_id: "DA06-HN-2025-v1".into(),
            template_version: 1,
            team_id: "t-01".into(),
            members: BTreeMap::from([("u-an".to_owned(), MemberRole::Lead)]),
            scheduled_date: "2025-07-15".into(),
            created_at: 1_760_000_000_000,
        },
    )
    .unwrap();
    doc.commit();
    let mut old = doc.fork().with_actor(ActorId::from(b"tablet-old".to_vec()));
    for i in 0..existing {
        model::add_finding(&mut old, &format!("old-{i}"), &finding(i)).unwrap();
        old.commit();
    }
    let before = old.document().clone();
    let mut tablet = old.fork().with_actor(ActorId::from(b"tablet-an".to_vec()));
    for i in 0..push {
        model::add_finding(&mut tablet, &format!("new-{i}"), &finding(i)).unwrap();
        tablet.commit();
    }
    let changes = tablet.document().get_changes(&before.get_heads());
    (before, changes)
}

fn bench(c: &mut Criterion) {
    let templates = registry();
    let rules = DocumentRules::new(templates.clone());
    let who = PeerInfo {
        user_id: "u-an".into(),
        role: Role::Inspector,
        team_id: Some("t-01".into()),
        unit_code: None,
        device_id: "dev-an".into(),
    };
    let id = DocumentId::from_bytes([1; 16]);
    let mut group = c.benchmark_group("write_check");
    group.sample_size(10);
    for (existing, push) in [(0, 50), (500, 50), (0, 500)] {
        let (before, changes) = workload(existing, push);
        let label = format!("{existing}+{push}");
        group.bench_with_input(
            BenchmarkId::new("whole_batch", &label),
            &changes,
            |b, changes| {
                b.iter(|| {
                    let mut after = before.clone();
                    after.apply_changes(changes.iter().cloned()).unwrap();
                    let ok = check_changes(&before, &after, Role::Inspector).is_ok()
                        && model::validate(&after, &templates).is_ok();
                    black_box(ok)
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("intake", &label),
            &changes,
            |b, changes| {
                b.iter(|| {
                    let result = intake(&rules, &who, &id, &before, changes.clone());
                    assert_eq!(result.accepted.len(), changes.len());
                    black_box(result.doc.get_heads())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
