//! Tablet tests that need no server: a store seeded with a catalog and an
//! inspection (as a sync would leave it), edited offline, reopened, and
//! pointed at a server that refuses its expired session.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use automerge::Automerge;
use sync_core::DocumentId;
use sync_core::model::{self, CatalogTemplate, InspectionHeader, MemberRole};
use sync_core::template::Template;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clock::OffsetClock;
use crate::error::FieldError;
use crate::store::{DeviceStore, Session};
use crate::sync::XorShift;
use crate::tablet::Tablet;
use crate::types::*;

const CHECKLIST: &str = include_str!("../../server/demo-data/checklist_de_an_06.json");
const USER: &str = "u-inspector1";
const DAY_MS: i64 = 24 * 3600 * 1000;

fn doc_with(f: impl FnOnce(&mut automerge::transaction::Transaction<'_>)) -> Automerge {
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    f(&mut tx);
    tx.commit();
    doc
}

/// A store holding a catalog with the checklist and one inspection led by
/// [`USER`], plus a session whose access token expired long ago.
fn seed(dir: &Path, server_url: Option<&str>) -> DocumentId {
    let template = Template::from_json(CHECKLIST).unwrap();
    let catalog = doc_with(|tx| {
        model::init_catalog(tx).unwrap();
        model::put_template(tx, &CatalogTemplate::from_template(&template)).unwrap();
    });
    let inspection = doc_with(|tx| {
        model::init_inspection(
            tx,
            &InspectionHeader {
                unit_code: "00004".into(),
                unit_name: "Phường Ba Đình".into(),
                template_id: template.template_id.clone(),
                template_version: template.version,
                team_id: "t-a".into(),
                members: BTreeMap::from([(USER.to_owned(), MemberRole::Lead)]),
                scheduled_date: "2025-10-01".into(),
                created_at: 1_700_000_000_000,
            },
        )
        .unwrap();
    });
    let catalog_id = DocumentId::from_bytes([1; 16]);
    let inspection_id = DocumentId::from_bytes([2; 16]);
    let mut store = DeviceStore::open(dir, None).unwrap();
    store
        .append_changes(catalog_id, "catalog", &catalog.get_changes(&[]), 1)
        .unwrap();
    store
        .append_changes(inspection_id, "inspection", &inspection.get_changes(&[]), 1)
        .unwrap();
    for id in [catalog_id, inspection_id] {
        let heads = store.load(id).unwrap().unwrap().get_heads();
        store.set_sync_mark(id, &heads, 1).unwrap();
    }
    let Some(server_url) = server_url else {
        return inspection_id;
    };
    store
        .save_session(
            &Session {
                server_url: server_url.into(),
                username: "inspector1".into(),
                user_id: USER.into(),
                role: "inspector".into(),
                team_id: Some("t-a".into()),
                unit_code: None,
                access_token: Some("expired-access".into()),
                access_expires_at_ms: Some(1_000),
                refresh_token: Some("expired-refresh".into()),
            },
            1,
        )
        .unwrap();
    inspection_id
}

fn config() -> TabletConfig {
    TabletConfig {
        max_sync_attempts: 1,
        http_timeout_ms: 5_000,
        ..TabletConfig::default()
    }
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

#[test]
fn offline_edits_of_every_kind_are_stored_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let id = seed(dir.path(), Some("http://127.0.0.1:9")).encode();
    let photo_file = dir.path().join("camera.png");
    std::fs::write(&photo_file, png(64, 48)).unwrap();
    let sha;
    let finding;
    {
        let t = Tablet::open(dir.path(), config()).unwrap();
        let list = t.assignments().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].unit_code.as_deref(), Some("00004"));
        assert_eq!(list[0].status.as_deref(), Some("scheduled"));
        assert_eq!(list[0].my_role.as_deref(), Some("lead"));
        assert_eq!(list[0].items_total, 30);
        // Every answer type of the template.
        let f = HashMap::from([("so_ky_hieu".to_owned(), "12/KH-UBND".to_owned())]);
        t.answer(&id, "A1", "có", f, None).unwrap();
        for (item, value) in [
            ("A2", "partial"),
            ("A3", "45/50"),
            ("A4", "3"),
            ("G1", "Đơn vị triển khai tốt"),
            (
                "G2",
                r#"[{"noi_dung": "Cập nhật dữ liệu", "thoi_han": "30/06/2026"}]"#,
            ),
            ("G3", "kha"),
            ("B1", "n/a"),
        ] {
            t.answer(&id, item, value, HashMap::new(), Some("ghi chú".into()))
                .unwrap();
        }
        // By unit code too.
        t.answer("00004", "A4", "4", HashMap::new(), None).unwrap();
        let bad = t
            .answer(&id, "A3", "60/50", HashMap::new(), None)
            .unwrap_err();
        assert!(matches!(bad, FieldError::InvalidInput(_)), "{bad}");
        finding = t
            .add_finding(
                &id,
                NewFinding {
                    title: "Thiếu biên bản".into(),
                    note: "Chưa có biên bản".into(),
                    severity: "high".into(),
                    item_id: Some("A1".into()),
                },
            )
            .unwrap();
        t.edit_finding(
            &id,
            &finding,
            FindingEdit {
                append_note: Some(" họp.".into()),
                severity: Some("medium".into()),
                ..FindingEdit::default()
            },
        )
        .unwrap();
        let added = t
            .add_photo(
                &id,
                &photo_file,
                PhotoTarget {
                    finding_id: Some(finding.clone()),
                    caption: Some("Bảng tin".into()),
                    ..PhotoTarget::default()
                },
            )
            .unwrap();
        sha = added.sha256.clone();
        assert!(!added.reencoded);
        t.submit(&id, Some("Xong".into())).unwrap();
        let status = t.status().unwrap();
        let doc = status.documents.iter().find(|d| d.id == id).unwrap();
        assert_eq!(doc.kind, "inspection");
        // 9 answers + finding + edit + photo + submission, one change each.
        assert_eq!(doc.pending_changes, 13);
        assert_eq!(doc.pending_photos, vec![sha.clone()]);
        assert_eq!(status.pending_photos, 1);
    }
    // Reopened: everything is still there, and still unsynced.
    let t = Tablet::open(dir.path(), config()).unwrap();
    let d = t.inspection(&id).unwrap();
    let answer = |item: &str| {
        d.items
            .iter()
            .find(|i| i.id == item)
            .and_then(|i| i.answer.clone())
            .map(|a| a.value)
    };
    assert_eq!(answer("A1").as_deref(), Some("yes"));
    assert_eq!(answer("A2").as_deref(), Some("partial"));
    assert_eq!(answer("A3").as_deref(), Some("45/50"));
    assert_eq!(answer("A4").as_deref(), Some("4"));
    assert_eq!(answer("G3").as_deref(), Some("kha"));
    assert_eq!(answer("B1").as_deref(), Some("n/a"));
    assert_eq!(answer("C1"), None);
    assert_eq!(d.status, "submitted");
    let f = d.findings.iter().find(|f| f.id == finding).unwrap();
    assert_eq!(f.note, "Chưa có biên bản họp.");
    assert_eq!(f.severity, "medium");
    assert_eq!(f.photos, vec![sha.clone()]);
    assert_eq!(d.photos.len(), 1);
    assert!(d.photos[0].on_device && !d.photos[0].uploaded);
    assert_eq!(
        t.photo_bytes(&sha).unwrap(),
        std::fs::read(&photo_file).unwrap()
    );
    assert_eq!(t.status().unwrap().pending_changes, 13);
    assert!(t.conflicts(None).unwrap().is_empty());
}

#[test]
fn settling_needs_a_conflict_and_the_lead() {
    let dir = tempfile::tempdir().unwrap();
    let id = seed(dir.path(), Some("http://127.0.0.1:9")).encode();
    let t = Tablet::open(dir.path(), config()).unwrap();
    t.answer(&id, "A1", "yes", HashMap::new(), None).unwrap();
    let e = t.settle(&id, "A1", "no", HashMap::new(), None).unwrap_err();
    assert!(matches!(e, FieldError::InvalidInput(_)), "{e}");
    let missing = t
        .answer(&id, "ZZ", "yes", HashMap::new(), None)
        .unwrap_err();
    assert!(matches!(missing, FieldError::NotFound(_)), "{missing}");
}

#[test]
fn editing_needs_a_login_once() {
    let dir = tempfile::tempdir().unwrap();
    let id = seed(dir.path(), None).encode();
    let t = Tablet::open(dir.path(), config()).unwrap();
    assert_eq!(t.session().unwrap().state, SessionState::LoggedOut);
    let e = t.submit(&id, None).unwrap_err();
    assert!(matches!(e, FieldError::NeedsLogin(_)), "{e}");
    let e = t.sync_now(None).unwrap_err();
    assert!(matches!(e, FieldError::NeedsLogin(_)), "{e}");
    assert_eq!(t.status().unwrap().pending_changes, 0);
}

/// A server that refuses every request with 401, as the real one refuses
/// a refresh token that expired while the tablet was offline.
async fn refusing_server() -> (String, tokio::task::JoinHandle<u32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut served = 0;
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = Vec::new();
            // Read the head and the (small) body.
            loop {
                let n = sock.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let body = r#"{"error":{"code":"invalid_refresh_token","message":"invalid or expired refresh token; log in again"}}"#;
            let resp = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            served += 1;
        }
        served
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_days_offline_means_logging_in_again_with_nothing_lost() {
    let (url, server) = refusing_server().await;
    let dir = tempfile::tempdir().unwrap();
    let id = seed(dir.path(), Some(&url)).encode();
    let clock = Arc::new(OffsetClock::new(0));
    let t = Tablet::open_with(
        dir.path(),
        config(),
        clock.clone(),
        Box::new(XorShift::new(1)),
    )
    .unwrap();
    // Two months of offline work, a little every day.
    for day in 0..60 {
        clock.advance(DAY_MS);
        let value = if day % 2 == 0 { "yes" } else { "no" };
        t.answer(&id, "A1", value, HashMap::new(), None).unwrap();
    }
    assert_eq!(t.status().unwrap().pending_changes, 60);
    let e = t.sync_async(None).await.unwrap_err();
    assert!(matches!(e, FieldError::NeedsLogin(_)), "{e}");
    assert!(e.to_string().contains("log in again"), "{e}");
    let s = t.session().unwrap();
    assert_eq!(s.state, SessionState::NeedsLogin);
    assert_eq!(s.user_id.as_deref(), Some(USER));
    // Work goes on while logged out, and nothing was dropped.
    t.answer(&id, "A2", "yes", HashMap::new(), None).unwrap();
    assert_eq!(t.status().unwrap().pending_changes, 61);
    drop(t);
    let t = Tablet::open(dir.path(), config()).unwrap();
    assert_eq!(t.status().unwrap().pending_changes, 61);
    assert_eq!(t.session().unwrap().state, SessionState::NeedsLogin);
    let d = t.inspection(&id).unwrap();
    let a1 = d.items.iter().find(|i| i.id == "A1").unwrap();
    // Day 59 (odd) answered "no", 59 days after the first.
    assert_eq!(a1.answer.as_ref().map(|a| a.value.as_str()), Some("no"));
    server.abort();
}

#[test]
fn review_comments_and_corrective_actions_are_readable_offline() {
    let dir = tempfile::tempdir().unwrap();
    let id = seed(dir.path(), Some("http://127.0.0.1:9"));
    {
        // What a sync would bring: the secretariat's review, and an action.
        let mut store = DeviceStore::open(dir.path(), None).unwrap();
        let mut doc = store.load(id).unwrap().unwrap();
        let before = doc.get_heads();
        let mut tx = doc.transaction();
        model::submit(&mut tx, "s1", USER, 1_700_000_100_000, None).unwrap();
        model::review_comment(
            &mut tx,
            "c1",
            &model::CommentTarget::Item("A1".into()),
            "Bổ sung số hiệu văn bản",
            "u-secretariat",
            1_700_000_200_000,
        )
        .unwrap();
        model::review_decide(
            &mut tx,
            "d1",
            model::ReviewState::Returned,
            "u-secretariat",
            1_700_000_200_000,
            Some("Trả lại"),
        )
        .unwrap();
        tx.commit();
        store
            .append_changes(id, "inspection", &doc.get_changes(&before), 2)
            .unwrap();
        let action = doc_with(|tx| {
            model::init_action(
                tx,
                &model::ActionAssignment {
                    inspection_id: id,
                    finding_id: "f1".into(),
                    unit_code: "00004".into(),
                    team_id: Some("t-a".into()),
                    title: "Ban hành kế hoạch".into(),
                    due_date: "2025-12-31".into(),
                    priority: model::Priority::High,
                    created_by: "u-secretariat".into(),
                    created_at: 1_700_000_300_000,
                },
            )
            .unwrap();
        });
        store
            .append_changes(
                DocumentId::from_bytes([3; 16]),
                "action",
                &action.get_changes(&[]),
                3,
            )
            .unwrap();
    }
    let t = Tablet::open(dir.path(), config()).unwrap();
    let r = t.review(&id.encode()).unwrap();
    assert_eq!(r.status, "returned");
    assert_eq!(r.comments.len(), 1);
    assert_eq!(r.comments[0].target, "item:A1");
    assert_eq!(r.comments[0].text, "Bổ sung số hiệu văn bản");
    assert_eq!(r.decisions[0].state, "returned");
    let actions = t.actions().unwrap();
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].inspection_id, id.encode());
    assert_eq!(actions[0].title, "Ban hành kế hoạch");
    assert_eq!(actions[0].priority, "high");
    assert_eq!(actions[0].status, "open");
}
