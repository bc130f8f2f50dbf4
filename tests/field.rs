//! Tablets against the real server: the `mobile-bridge` library (and its
//! `kiemtra-field` command line and Python binding) syncing with `kiemtra
//! serve` on `127.0.0.1:0`.
//!
//! - three tablets of one team work offline on one inspection, sync in a
//!   random order, converge with the server, see their conflict, and the
//!   lead's settlement reaches everyone;
//! - the server is SIGKILLed in the middle of a sync and restarted;
//! - a photo upload is cut at a random byte and resumes;
//! - a tablet offline for 60 simulated days with 500 edits logs in again
//!   and syncs them all;
//! - the command line and the Python binding do the same against the server;
//! - the checklist is republished and an inspection moved to the new
//!   version while tablets are offline: the server refuses part of their
//!   work, and every piece of it ends up on the server (written again on
//!   top of the server's state) or listed as refused with its reason, with
//!   nothing lost on the tablets and later edits uploading as usual.
//!
//! Random choices print their seed (`KIEMTRA_FIELD_SEED` replays one).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automerge::Automerge;
use mobile_bridge::{
    FieldError, FindingEdit, NewFinding, OffsetClock, PhotoTarget, RefusedView, Rng, SessionState,
    SyncListener, SyncPhase, SyncProgress, Tablet, TabletConfig, XorShift,
};
use serde_json::{Value, json};
use sync_core::DocumentId;
use sync_core::model::{self, Inspection};
use sync_core::template::Template;
use tempfile::TempDir;
use tests::{ChildServer, TIMEOUT, TestServer, client, login_ok};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "demo";
const BIN: &str = env!("CARGO_BIN_EXE_kiemtra-under-test");
const DAY_MS: i64 = 24 * 3600 * 1000;
/// Yes/no/partial items of the demo checklist (no extra fields needed).
const TRI_ITEMS: [&str; 8] = ["A2", "B8", "B9", "C2", "D3", "F1", "F2", "F3"];

// ----- helpers -------------------------------------------------------------------

fn config() -> TabletConfig {
    TabletConfig {
        sync_timeout_ms: 25_000,
        max_sync_attempts: 3,
        backoff_base_ms: 100,
        backoff_max_ms: 1_000,
        ..TabletConfig::default()
    }
}

/// A seed from `KIEMTRA_FIELD_SEED`, else from the clock; printed.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("KIEMTRA_FIELD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("{test}: KIEMTRA_FIELD_SEED={seed}");
    seed
}

fn shuffled(n: usize, rng: &mut XorShift) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// A tablet in a fresh store folder.
fn tablet() -> (Tablet, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Tablet::open(dir.path(), config()).unwrap(), dir)
}

async fn login(t: &Tablet, base: &str, user: &str) {
    let s = t.login_async(base, user, PASSWORD).await.unwrap();
    assert_eq!(s.state, SessionState::LoggedIn);
    assert_eq!(s.username.as_deref(), Some(user));
}

async fn sync(t: &Tablet) -> mobile_bridge::SyncReport {
    tokio::time::timeout(TIMEOUT * 2, t.sync_async(None))
        .await
        .expect("sync did not finish in time")
        .unwrap()
}

/// Adds an inspector to a team (the demo has two per team).
async fn add_inspector(server: &TestServer, username: &str, team: &str) {
    let hash = server
        .state
        .auth
        .passwords
        .hash(PASSWORD.to_owned())
        .await
        .unwrap();
    let new = server::users::NewUser {
        username: username.to_owned(),
        display_name: None,
        role: server::users::Role::Inspector,
        team: Some(team.to_owned()),
        unit_code: None,
    };
    let id = format!("u-field-{username}");
    server
        .state
        .db
        .write(move |tx| server::users::insert(tx, &new, &id, &hash, "2025-10-01T00:00:00Z"))
        .await
        .unwrap();
}

/// Schedules an inspection of `unit` for `team` led by `lead` (as the secretariat).
async fn schedule(base: &str, unit: &str, team: &str, lead: &str) -> String {
    let c = client();
    let tok = login_ok(&c, base, "secretariat", PASSWORD)
        .await
        .access_token;
    let r = c
        .post(format!("{base}/api/v1/inspections"))
        .bearer_auth(&tok)
        .json(&json!({
            "unit_code": unit,
            "template_id": "DA06-HN-2025-v1",
            "template_version": 1,
            "team": team,
            "date": "2025-11-03",
            "lead": lead,
        }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// The demo inspection of `unit`, as `user` sees it.
async fn demo_inspection(base: &str, user: &str, unit: &str) -> String {
    let c = client();
    let tok = login_ok(&c, base, user, PASSWORD).await.access_token;
    let list: Vec<Value> = c
        .get(format!("{base}/api/v1/inspections"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list.iter()
        .find(|i| i["unit_code"] == unit)
        .and_then(|i| i["id"].as_str())
        .unwrap_or_else(|| panic!("no inspection of {unit} for {user}: {list:?}"))
        .to_owned()
}

/// The server's copy of a document.
async fn server_doc(server: &TestServer, id: &str) -> Automerge {
    let id = DocumentId::parse(id).unwrap();
    let bytes = server.state.sync.read(id).await.unwrap().unwrap();
    Automerge::load(&bytes).unwrap()
}

fn sorted_heads(doc: &Automerge) -> Vec<String> {
    let mut h: Vec<String> = doc.get_heads().iter().map(|h| h.to_string()).collect();
    h.sort();
    h
}

/// A tablet's heads of a document (sorted hex).
fn tablet_heads(t: &Tablet, id: &str) -> Vec<String> {
    let status = t.status().unwrap();
    let mut h = status
        .documents
        .iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("document {id} is not on the tablet"))
        .heads
        .clone();
    h.sort();
    h
}

fn answer_of(t: &Tablet, id: &str, item: &str) -> Option<String> {
    t.inspection(id)
        .unwrap()
        .items
        .into_iter()
        .find(|i| i.id == item)
        .and_then(|i| i.answer)
        .map(|a| a.value)
}

/// A noisy PNG (hard to compress), deterministic per seed.
fn noise_png(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        let b = rng.next_u64().to_le_bytes();
        image::Rgb([b[0], b[1], b[2]])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn write_photo(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

async fn missing_blobs(base: &str, user: &str) -> Vec<String> {
    let c = client();
    let tok = login_ok(&c, base, user, PASSWORD).await.access_token;
    let v: Value = c
        .get(format!("{base}/api/v1/blobs/missing"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["missing"]
        .as_array()
        .unwrap_or_else(|| panic!("unexpected answer {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

async fn blob(base: &str, user: &str, sha: &str) -> Vec<u8> {
    let c = client();
    let tok = login_ok(&c, base, user, PASSWORD).await.access_token;
    let r = c
        .get(format!("{base}/api/v1/blobs/{sha}"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET blob {sha}");
    r.bytes().await.unwrap().to_vec()
}

// ----- three tablets, one inspection --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tablets_converge_and_the_lead_settles_their_conflict() {
    let mut rng = XorShift::new(seed("three_tablets"));
    let server = TestServer::start(true).await;
    add_inspector(&server, "inspector5", "Đoàn A").await;
    let id = schedule(&server.base, "00008", "Đoàn A", "inspector1").await;
    let users = ["inspector1", "inspector2", "inspector5"];
    let mut tablets = Vec::new();
    let mut dirs = Vec::new();
    for user in users {
        let (t, dir) = tablet();
        login(&t, &server.base, user).await;
        sync(&t).await;
        let a = t.assignments().unwrap();
        let mine = a
            .iter()
            .find(|a| a.id == id)
            .unwrap_or_else(|| panic!("{user}: {a:?}"));
        assert!(mine.on_device);
        assert_eq!(mine.unit_code.as_deref(), Some("00008"));
        assert_eq!(mine.items_total, 30, "the template came with the catalog");
        let role = if user == "inspector1" {
            "lead"
        } else {
            "member"
        };
        assert_eq!(mine.my_role.as_deref(), Some(role));
        tablets.push(t);
        dirs.push(dir);
    }

    // Offline: different items, one item answered differently by two of them.
    let none = HashMap::new;
    let [t1, t2, t3] = [&tablets[0], &tablets[1], &tablets[2]];
    t1.answer(&id, "A1", "yes", none(), None).unwrap();
    t1.answer(&id, "A2", "partial", none(), None).unwrap();
    t2.answer(&id, "A1", "no", none(), Some("chưa ban hành".into()))
        .unwrap();
    t2.answer(&id, "A3", "45/50", none(), None).unwrap();
    t3.answer(&id, "A4", "3", none(), None).unwrap();
    t3.answer(&id, "G3", "kha", none(), None).unwrap();
    let mut photos = Vec::new();
    for (n, t) in tablets.iter().enumerate() {
        let f = t
            .add_finding(
                &id,
                NewFinding {
                    title: format!("Phát hiện {n}"),
                    note: format!("ghi chú của máy {n}"),
                    severity: "medium".into(),
                    item_id: Some("A1".into()),
                },
            )
            .unwrap();
        t.edit_finding(
            &id,
            &f,
            FindingEdit {
                append_note: Some(" (bổ sung)".into()),
                ..FindingEdit::default()
            },
        )
        .unwrap();
        if n < 2 {
            let file = write_photo(dirs[n].path(), "p.png", &noise_png(120, 90, n as u64 + 1));
            let p = t
                .add_photo(
                    &id,
                    &file,
                    PhotoTarget {
                        finding_id: Some(f),
                        ..PhotoTarget::default()
                    },
                )
                .unwrap();
            photos.push(p.sha256);
        }
        assert!(t.status().unwrap().pending_changes > 0);
    }

    // Sync in random orders: two rounds bring everything to everyone.
    for round in 0..2 {
        let order = shuffled(3, &mut rng);
        println!("round {round}: order {order:?}");
        for i in order {
            sync(&tablets[i]).await;
        }
    }
    let server_heads = sorted_heads(&server_doc(&server, &id).await);
    for (t, user) in tablets.iter().zip(users) {
        assert_eq!(
            tablet_heads(t, &id),
            server_heads,
            "{user} differs from the server"
        );
        assert_eq!(t.status().unwrap().pending_changes, 0, "{user}");
        let d = t.inspection(&id).unwrap();
        assert_eq!(d.findings.len(), 3, "{user}");
        assert!(d.findings.iter().all(|f| f.note.ends_with(" (bổ sung)")));
        assert_eq!(d.photos.len(), 2, "{user}");
        for (item, value) in [
            ("A2", "partial"),
            ("A3", "45/50"),
            ("A4", "3"),
            ("G3", "kha"),
        ] {
            assert_eq!(
                answer_of(t, &id, item).as_deref(),
                Some(value),
                "{user} {item}"
            );
        }
        let conflicts = t.conflicts(Some(&id)).unwrap();
        assert_eq!(conflicts.len(), 1, "{user}: {conflicts:?}");
        assert_eq!(conflicts[0].path, "answers/A1");
        let values: BTreeSet<String> = conflicts[0]
            .values
            .iter()
            .map(|v| v.value.clone().unwrap())
            .collect();
        assert_eq!(values, BTreeSet::from(["no".to_owned(), "yes".to_owned()]));
        let authors: BTreeSet<String> = conflicts[0]
            .values
            .iter()
            .map(|v| v.author.clone().unwrap())
            .collect();
        assert_eq!(authors.len(), 2, "{user}: {authors:?}");
        let a = t.assignments().unwrap();
        assert_eq!(a.iter().find(|a| a.id == id).unwrap().conflicts, 1);
    }

    // Only the lead settles; the settlement reaches everyone.
    let refused = t2.settle(&id, "A1", "no", none(), None).unwrap_err();
    assert!(matches!(refused, FieldError::NotAllowed(_)), "{refused}");
    t1.settle(&id, "A1", "yes", none(), Some("đã xác minh".into()))
        .unwrap();
    for t in &tablets {
        sync(t).await;
    }
    let server_heads = sorted_heads(&server_doc(&server, &id).await);
    for (t, user) in tablets.iter().zip(users) {
        assert_eq!(tablet_heads(t, &id), server_heads, "{user} after settling");
        assert!(t.conflicts(Some(&id)).unwrap().is_empty(), "{user}");
        assert_eq!(answer_of(t, &id, "A1").as_deref(), Some("yes"), "{user}");
    }
    // The photos reached the server.
    assert!(missing_blobs(&server.base, "inspector1").await.is_empty());
    for sha in &photos {
        let here = tablets[0]
            .photo_bytes(sha)
            .or_else(|_| tablets[1].photo_bytes(sha))
            .unwrap();
        assert_eq!(blob(&server.base, "inspector5", sha).await, here);
    }
    drop(tablets);
    server.stop().await;
}

// ----- SIGKILL during a sync ----------------------------------------------------------

/// Blocks the sync (in its progress callback) the first time documents
/// arrive, until the test has killed the server.
struct KillSwitch {
    armed: AtomicBool,
    reached: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    resume: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl SyncListener for KillSwitch {
    fn on_progress(&self, p: SyncProgress) {
        if p.phase == SyncPhase::Documents
            && p.documents > 0
            && self.armed.swap(false, Ordering::SeqCst)
        {
            if let Some(tx) = self.reached.lock().unwrap().take() {
                let _ = tx.send(());
            }
            if let Some(rx) = self.resume.lock().unwrap().take() {
                let _ = rx.recv_timeout(TIMEOUT);
            }
        }
    }
    fn on_error(&self, message: String) {
        println!("sync error (expected while the server is down): {message}");
    }
}

async fn spawn_child(data: &Path, addr: &str) -> ChildServer {
    ChildServer::spawn(
        Path::new(BIN),
        &["--demo", "--data", data.to_str().unwrap(), "--addr", addr],
        &[],
    )
    .await
}

async fn kill_9(child: &mut ChildServer) {
    let pid = child.child.id().expect("the server is running");
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(TIMEOUT, child.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!exit.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_a_sync_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let mut child = spawn_child(data.path(), "127.0.0.1:0").await;
    let base = child.base.clone();
    let addr = base.strip_prefix("http://").unwrap().to_owned();
    let id = demo_inspection(&base, "inspector1", "00004").await;
    let cfg = TabletConfig {
        max_sync_attempts: 40,
        backoff_base_ms: 200,
        backoff_max_ms: 1_000,
        ..config()
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let t1 = Tablet::open(d1.path(), cfg.clone()).unwrap();
    let t2 = Tablet::open(d2.path(), cfg).unwrap();
    login(&t1, &base, "inspector1").await;
    login(&t2, &base, "inspector2").await;
    sync(&t1).await;
    sync(&t2).await;

    // Plenty of offline work on both.
    for (n, t) in [&t1, &t2].into_iter().enumerate() {
        for i in 0..120 {
            let item = TRI_ITEMS[(i + n) % TRI_ITEMS.len()];
            let value = ["yes", "partial", "no"][i % 3];
            t.answer(&id, item, value, HashMap::new(), None).unwrap();
        }
        for i in 0..10 {
            t.add_finding(
                &id,
                NewFinding {
                    title: format!("Máy {n} phát hiện {i}"),
                    note: "chi tiết".into(),
                    severity: "low".into(),
                    item_id: None,
                },
            )
            .unwrap();
        }
    }
    // t2 goes first, so t1's sync receives documents mid-exchange.
    sync(&t2).await;
    let (reached_tx, reached_rx) = std::sync::mpsc::channel();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel();
    let switch = Arc::new(KillSwitch {
        armed: AtomicBool::new(true),
        reached: Mutex::new(Some(reached_tx)),
        resume: Mutex::new(Some(resume_rx)),
    });
    let listener: Arc<dyn SyncListener> = switch.clone();
    let running = tokio::spawn(t1.sync_async(Some(listener)));
    tokio::task::spawn_blocking(move || reached_rx.recv_timeout(TIMEOUT))
        .await
        .unwrap()
        .expect("the sync never received documents");
    kill_9(&mut child).await;
    resume_tx.send(()).unwrap();
    // Let the tablet fail against the dead server for a moment, then restart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let child = spawn_child(data.path(), &addr).await;
    assert_eq!(child.base, base);
    let report = tokio::time::timeout(TIMEOUT * 2, running)
        .await
        .expect("the sync did not recover")
        .unwrap()
        .unwrap();
    assert!(
        report.attempts >= 2,
        "the kill must have cut the sync: {report:?}"
    );

    sync(&t2).await;
    sync(&t1).await;
    let heads = tablet_heads(&t1, &id);
    assert_eq!(tablet_heads(&t2, &id), heads);
    assert_eq!(t1.status().unwrap().pending_changes, 0);
    assert_eq!(t2.status().unwrap().pending_changes, 0);
    // A fresh device gets exactly that from the server: nothing was lost.
    let (t3, _d3) = tablet();
    login(&t3, &base, "inspector1").await;
    sync(&t3).await;
    assert_eq!(tablet_heads(&t3, &id), heads);
    let d = t3.inspection(&id).unwrap();
    assert_eq!(d.findings.len(), 20);
    for item in TRI_ITEMS {
        assert!(answer_of(&t3, &id, item).is_some(), "{item}");
    }
    let (ok, _) = child.terminate().await;
    assert!(ok, "the restarted server stops cleanly");
}

// ----- a photo upload cut at a random byte ---------------------------------------------

/// A TCP proxy that cuts the first connection whose client-to-server bytes
/// pass `cut_at`, once.
async fn cutting_proxy(upstream: SocketAddr, cut_at: Arc<Mutex<Option<u64>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let cut_at = Arc::clone(&cut_at);
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                });
                let mut sent = 0u64;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let limit = *cut_at.lock().unwrap();
                    if let Some(limit) = limit
                        && sent + n as u64 > limit
                    {
                        // Forward up to the cut, then drop both sides.
                        let keep = (limit - sent) as usize;
                        let _ = sw.write_all(&buf[..keep]).await;
                        let _ = sw.flush().await;
                        *cut_at.lock().unwrap() = None;
                        down.abort();
                        return;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n as u64;
                }
                let _ = sw.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_upload_cut_at_a_random_byte_resumes_and_completes() {
    let mut rng = XorShift::new(seed("photo_cut"));
    let server = TestServer::start(true).await;
    let upstream: SocketAddr = server
        .base
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    let cut_at = Arc::new(Mutex::new(None));
    let proxy = cutting_proxy(upstream, Arc::clone(&cut_at)).await;
    let id = demo_inspection(&server.base, "inspector1", "00004").await;
    let dir = tempfile::tempdir().unwrap();
    let chunk = 64 * 1024;
    let t = Tablet::open(
        dir.path(),
        TabletConfig {
            upload_chunk_bytes: chunk,
            max_sync_attempts: 1,
            ..config()
        },
    )
    .unwrap();
    login(&t, &proxy, "inspector1").await;
    sync(&t).await;
    let bytes = noise_png(700, 500, rng.next_u64());
    let len = bytes.len() as u64;
    let file = write_photo(dir.path(), "bang-tin.png", &bytes);
    let added = t
        .add_photo(
            &id,
            &file,
            PhotoTarget {
                item_id: Some("A1".into()),
                caption: Some("Bảng tin".into()),
                ..PhotoTarget::default()
            },
        )
        .unwrap();
    assert_eq!(added.bytes, len);
    // Somewhere inside the photo: past three chunks, before the end.
    let cut = 200_000 + rng.next_u64() % (len - 210_000);
    println!("photo of {len} bytes, cut after {cut} bytes of the connection");
    *cut_at.lock().unwrap() = Some(cut);

    let err = t.sync_async(None).await.unwrap_err();
    assert!(matches!(err, FieldError::Network(_)), "{err}");
    assert_eq!(*cut_at.lock().unwrap(), None, "the proxy cut the upload");
    let photo = t.status().unwrap().photos[0].clone();
    assert!(!photo.uploaded);
    assert!(
        photo.uploaded_offset > 0 && photo.uploaded_offset <= cut,
        "{photo:?}"
    );
    assert_eq!(photo.uploaded_offset % chunk, 0);
    assert!(photo.last_error.is_some());

    let report = sync(&t).await;
    assert_eq!(report.photos_uploaded, 1);
    assert!(
        report.bytes_uploaded <= len - photo.uploaded_offset,
        "resumed, not restarted: {report:?}"
    );
    let done = t.status().unwrap();
    assert!(done.photos[0].uploaded);
    assert_eq!(done.pending_photos, 0);
    assert_eq!(blob(&server.base, "inspector2", &added.sha256).await, bytes);
    assert!(missing_blobs(&server.base, "inspector1").await.is_empty());
    drop(t);
    server.stop().await;
}

// ----- sixty days offline ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_days_offline_with_500_edits_syncs_after_logging_in_again() {
    let server = TestServer::start(true).await;
    let id = demo_inspection(&server.base, "inspector1", "00004").await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(OffsetClock::new(0));
    let t = Tablet::open_with(
        dir.path(),
        config(),
        clock.clone(),
        Box::new(XorShift::new(3)),
    )
    .unwrap();
    login(&t, &server.base, "inspector1").await;
    sync(&t).await;

    let mut findings = Vec::new();
    for i in 0..500usize {
        clock.advance(60 * DAY_MS / 500);
        if i % 10 == 0 {
            findings.push(
                t.add_finding(
                    &id,
                    NewFinding {
                        title: format!("Phát hiện ngày {}", clock.offset_ms() / DAY_MS),
                        note: String::new(),
                        severity: "low".into(),
                        item_id: None,
                    },
                )
                .unwrap(),
            );
        } else if i % 10 == 5 {
            let f = findings.last().unwrap();
            t.edit_finding(
                &id,
                f,
                FindingEdit {
                    append_note: Some(format!("{i};")),
                    ..FindingEdit::default()
                },
            )
            .unwrap();
        } else {
            let item = TRI_ITEMS[i % TRI_ITEMS.len()];
            t.answer(
                &id,
                item,
                ["yes", "partial", "no"][i % 3],
                HashMap::new(),
                None,
            )
            .unwrap();
        }
    }
    assert!(clock.offset_ms() >= 60 * DAY_MS - 1000);
    assert_eq!(t.status().unwrap().pending_changes, 500);

    // Meanwhile the session expired on the server.
    server
        .state
        .db
        .write(|tx| {
            tx.execute("UPDATE refresh_tokens SET expires_at = 0", [])
                .map_err(server::db::DbError::from)
        })
        .await
        .unwrap();
    let err = t.sync_async(None).await.unwrap_err();
    assert!(matches!(err, FieldError::NeedsLogin(_)), "{err}");
    assert_eq!(t.session().unwrap().state, SessionState::NeedsLogin);
    assert_eq!(
        t.status().unwrap().pending_changes,
        500,
        "nothing was dropped"
    );

    login(&t, &server.base, "inspector1").await;
    let report = sync(&t).await;
    assert!(report.documents >= 2, "{report:?}");
    assert_eq!(t.status().unwrap().pending_changes, 0);
    let heads = tablet_heads(&t, &id);
    assert_eq!(sorted_heads(&server_doc(&server, &id).await), heads);
    // A teammate sees all of it.
    let (t2, _d2) = tablet();
    login(&t2, &server.base, "inspector2").await;
    sync(&t2).await;
    assert_eq!(tablet_heads(&t2, &id), heads);
    let mine = t.inspection(&id).unwrap();
    let theirs = t2.inspection(&id).unwrap();
    assert_eq!(theirs.findings.len(), 50);
    assert_eq!(mine.items, theirs.items);
    assert_eq!(mine.findings, theirs.findings);
    drop((t, t2));
    server.stop().await;
}

// ----- background sync ---------------------------------------------------------------

/// Counts finished syncs and keeps reported errors.
#[derive(Default)]
struct Counter {
    done: std::sync::atomic::AtomicU32,
    errors: Mutex<Vec<String>>,
}

impl SyncListener for Counter {
    fn on_progress(&self, p: SyncProgress) {
        if p.phase == SyncPhase::Done {
            self.done.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn on_error(&self, message: String) {
        self.errors.lock().unwrap().push(message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_sync_brings_in_a_teammates_answer() {
    let server = TestServer::start(true).await;
    let id = demo_inspection(&server.base, "inspector1", "00004").await;
    let (t1, _d1) = tablet();
    let (t2, _d2) = tablet();
    login(&t1, &server.base, "inspector1").await;
    login(&t2, &server.base, "inspector2").await;
    sync(&t1).await;
    sync(&t2).await;
    let counter = Arc::new(Counter::default());
    let listener: Arc<dyn SyncListener> = counter.clone();
    t1.start_background_sync(1_000, Some(listener)).unwrap();
    t2.answer(&id, "C2", "partial", HashMap::new(), None)
        .unwrap();
    sync(&t2).await;
    tokio::time::timeout(TIMEOUT, async {
        while answer_of(&t1, &id, "C2").as_deref() != Some("partial") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the background sync never brought the answer");
    t1.stop_background_sync();
    assert!(counter.done.load(Ordering::SeqCst) >= 1);
    assert!(
        counter.errors.lock().unwrap().is_empty(),
        "{:?}",
        counter.errors
    );
    assert_eq!(tablet_heads(&t1, &id), tablet_heads(&t2, &id));
    drop((t1, t2));
    server.stop().await;
}

// ----- refused work: a template republished while tablets are offline --------------------

const CHECKLIST: &str = include_str!("../server/demo-data/checklist_de_an_06.json");

/// Version 2 of the demo checklist: item A4 is gone.
fn checklist_v2() -> Template {
    let mut json: Value = serde_json::from_str(CHECKLIST).unwrap();
    json["version"] = 2.into();
    json["item_count"] = 29.into();
    json["sections"][0]["items"]
        .as_array_mut()
        .unwrap()
        .retain(|i| i["id"] != "A4");
    Template::from_json(&json.to_string()).unwrap()
}

/// The secretariat republishes the checklist as version 2 and moves
/// inspection `id` to it (header change), through the server's library:
/// the template enters the database, the catalog and the sync rules, and
/// the header is edited by the server's hub.
async fn move_to_checklist_v2(server: &TestServer, id: &str) {
    let v2 = checklist_v2();
    server
        .state
        .db
        .write(move |tx| server::templates::publish(tx, &v2, "secretariat", "2025-11-04T08:00:00Z"))
        .await
        .unwrap();
    server::inspections::ensure_catalog(&server.state.db, &server.state.sync)
        .await
        .unwrap();
    let templates = server
        .state
        .db
        .read(server::inspections::load_templates)
        .await
        .unwrap();
    server.state.sync.set_templates(templates).await.unwrap();
    server
        .state
        .sync
        .edit(
            DocumentId::parse(id).unwrap(),
            Box::new(|doc| {
                server::inspections::in_tx(doc, |tx| {
                    use automerge::transaction::Transactable;
                    use automerge::{ObjType, ROOT, ReadDoc, ScalarValue, Value as AmValue};
                    let Some((AmValue::Object(ObjType::Map), h)) = tx.get(ROOT, "header")? else {
                        return Err(model::ModelError::NotFound {
                            path: "header".into(),
                        });
                    };
                    tx.put(&h, "template_version", ScalarValue::Uint(2))?;
                    Ok(())
                })
            }),
        )
        .await
        .unwrap();
}

/// The server's copy of an inspection, read with every published template.
async fn server_inspection(server: &TestServer, id: &str) -> Inspection {
    let doc = server_doc(server, id).await;
    let templates = server
        .state
        .db
        .read(server::inspections::load_templates)
        .await
        .unwrap();
    model::read_inspection(&doc, &templates).unwrap()
}

/// The refused piece of work at `piece`, which must be listed with a reason.
fn refused_at<'a>(list: &'a [RefusedView], id: &str, piece: &str) -> &'a RefusedView {
    let r = list
        .iter()
        .find(|r| r.document_id == id && r.piece == piece)
        .unwrap_or_else(|| panic!("{piece} is not listed as refused: {list:?}"));
    assert_eq!(r.state, "open", "{r:?}");
    assert!(!r.reason.is_empty() && r.rule.is_some(), "{r:?}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_change_no_longer_strands_the_work_after_it() {
    let server = TestServer::start(true).await;
    let id = schedule(&server.base, "00008", "Đoàn A", "inspector1").await;
    let (t, dir) = tablet();
    login(&t, &server.base, "inspector1").await;
    sync(&t).await;

    // Offline: an answer the new template keeps, one to the item it drops,
    // and work after that (which depends on it, change by change).
    let none = HashMap::new;
    t.answer(&id, "A1", "yes", none(), None).unwrap();
    t.answer(&id, "A4", "3", none(), Some("hai buổi".into()))
        .unwrap();
    let stuck = t
        .add_finding(
            &id,
            NewFinding {
                title: "Chưa tập huấn đủ".into(),
                note: "Chỉ một buổi".into(),
                severity: "medium".into(),
                item_id: Some("A4".into()),
            },
        )
        .unwrap();
    let kept = t
        .add_finding(
            &id,
            NewFinding {
                title: "Thiếu biên bản".into(),
                note: "Chưa có".into(),
                severity: "high".into(),
                item_id: None,
            },
        )
        .unwrap();
    let file = write_photo(dir.path(), "p.png", &noise_png(90, 60, 21));
    let photo = t
        .add_photo(
            &id,
            &file,
            PhotoTarget {
                finding_id: Some(kept.clone()),
                ..PhotoTarget::default()
            },
        )
        .unwrap()
        .sha256;
    t.answer(&id, "A2", "partial", none(), None).unwrap();

    // Meanwhile the secretariat moves the inspection to checklist v2.
    move_to_checklist_v2(&server, &id).await;
    let report = sync(&t).await;

    // The report says what was refused, and why.
    let refused = t.refused().unwrap();
    assert_eq!(report.refused, refused);
    assert_eq!(refused.len(), 2, "{refused:?}");
    let a4 = refused_at(&refused, &id, "answers/A4");
    assert_eq!(a4.rule.as_deref(), Some("invalid"));
    assert!(a4.reason.contains("A4"), "{a4:?}");
    assert!(a4.label.contains("A4"), "{a4:?}");
    let f = refused_at(&refused, &id, &format!("findings/{stuck}"));
    assert!(f.reason.contains("A4"), "{f:?}");
    assert_eq!(report.rebased, 3, "{report:?}");

    // Everything else is on the server.
    let on_server = server_inspection(&server, &id).await;
    assert_eq!(on_server.header.template_version, 2);
    assert!(on_server.answers.contains_key("A1"));
    assert!(on_server.answers.contains_key("A2"));
    assert!(!on_server.answers.contains_key("A4"));
    assert_eq!(on_server.findings[&kept].note, "Chưa có");
    assert!(on_server.findings[&kept].photos.contains(&photo));
    assert!(on_server.photos.contains_key(&photo));
    assert!(!on_server.findings.contains_key(&stuck));
    assert_eq!(
        blob(&server.base, "inspector2", &photo).await,
        t.photo_bytes(&photo).unwrap()
    );
    assert_eq!(t.status().unwrap().pending_changes, 0);
    assert_eq!(
        tablet_heads(&t, &id),
        sorted_heads(&server_doc(&server, &id).await)
    );

    // A later edit of the same inspection uploads.
    t.answer(&id, "A3", "45/50", none(), None).unwrap();
    let report = sync(&t).await;
    assert_eq!(report.refused.len(), 2, "nothing new refused: {report:?}");
    let on_server = server_inspection(&server, &id).await;
    assert!(
        on_server.answers.contains_key("A3"),
        "a later edit is stuck behind the refused one"
    );
    assert_eq!(t.status().unwrap().pending_changes, 0);
    assert_eq!(
        tablet_heads(&t, &id),
        sorted_heads(&server_doc(&server, &id).await)
    );
    drop(t);
    server.stop().await;
}

/// One tablet's offline work on the inspection: what it answered, found
/// and photographed.
#[derive(Debug, Default)]
struct Work {
    answers: Vec<&'static str>,
    findings: Vec<String>,
    photos: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_template_refuses_part_of_two_tablets_work_and_none_is_lost() {
    let server = TestServer::start(true).await;
    let id = schedule(&server.base, "00008", "Đoàn A", "inspector1").await;
    let users = ["inspector1", "inspector2"];
    let mut tablets = Vec::new();
    let mut dirs = Vec::new();
    for user in users {
        let (t, dir) = tablet();
        login(&t, &server.base, user).await;
        sync(&t).await;
        tablets.push(t);
        dirs.push(dir);
    }
    let none = HashMap::new;

    // Offline work on both tablets, some of it about item A4.
    let mut work = [Work::default(), Work::default()];
    for (n, t) in tablets.iter().enumerate() {
        let w = &mut work[n];
        let (first, second) = if n == 0 { ("A1", "A2") } else { ("A3", "C2") };
        let first_value = if n == 0 { "yes" } else { "40/50" };
        t.answer(&id, first, first_value, none(), None).unwrap();
        t.answer(&id, "A4", &format!("{}", n + 2), none(), None)
            .unwrap();
        t.answer(&id, second, "partial", none(), None).unwrap();
        w.answers = vec![first, "A4", second];
        for (k, item) in [Some("A4"), None, Some("A2")].into_iter().enumerate() {
            let f = t
                .add_finding(
                    &id,
                    NewFinding {
                        title: format!("Máy {n} phát hiện {k}"),
                        note: format!("ghi chú {n}.{k}"),
                        severity: "low".into(),
                        item_id: item.map(str::to_owned),
                    },
                )
                .unwrap();
            w.findings.push(f);
        }
        // A photo of the first finding (about A4), one of item A4, and one
        // of the second finding.
        let targets = [
            PhotoTarget {
                finding_id: Some(w.findings[0].clone()),
                ..PhotoTarget::default()
            },
            PhotoTarget {
                item_id: Some("A4".into()),
                ..PhotoTarget::default()
            },
            PhotoTarget {
                finding_id: Some(w.findings[1].clone()),
                caption: Some("Bảng tin".into()),
                ..PhotoTarget::default()
            },
        ];
        for (k, target) in targets.into_iter().enumerate() {
            let file = write_photo(
                dirs[n].path(),
                &format!("p{k}.png"),
                &noise_png(80, 60, (n * 10 + k) as u64 + 100),
            );
            w.photos
                .push(t.add_photo(&id, &file, target).unwrap().sha256);
        }
        t.edit_finding(
            &id,
            &w.findings[1],
            FindingEdit {
                append_note: Some(" (bổ sung)".into()),
                ..FindingEdit::default()
            },
        )
        .unwrap();
    }

    move_to_checklist_v2(&server, &id).await;
    for t in &tablets {
        let report = sync(t).await;
        assert!(!report.refused.is_empty(), "{report:?}");
        assert!(report.rebased > 0, "{report:?}");
    }
    for t in &tablets {
        sync(t).await;
    }

    let on_server = server_inspection(&server, &id).await;
    let server_heads = sorted_heads(&server_doc(&server, &id).await);
    for ((t, w), user) in tablets.iter().zip(&work).zip(users) {
        assert_eq!(tablet_heads(t, &id), server_heads, "{user}");
        assert_eq!(t.status().unwrap().pending_changes, 0, "{user}");
        let refused = t.refused().unwrap();
        // Every piece of work is on the server or listed as refused.
        for item in &w.answers {
            if *item == "A4" {
                let r = refused_at(&refused, &id, "answers/A4");
                assert!(r.reason.contains("A4"), "{user}: {r:?}");
            } else {
                assert!(
                    on_server.answers.contains_key(*item),
                    "{user}: answer {item}"
                );
            }
        }
        refused_at(&refused, &id, &format!("findings/{}", w.findings[0]));
        assert!(!on_server.findings.contains_key(&w.findings[0]));
        for f in &w.findings[1..] {
            assert!(on_server.findings.contains_key(f), "{user}: finding {f}");
        }
        assert!(
            on_server.findings[&w.findings[1]]
                .note
                .ends_with(" (bổ sung)")
        );
        assert!(
            on_server.findings[&w.findings[1]]
                .photos
                .contains(&w.photos[2])
        );
        for sha in &w.photos[..2] {
            refused_at(&refused, &id, &format!("photos/{sha}"));
            assert!(!on_server.photos.contains_key(sha), "{user}: {sha}");
        }
        assert!(on_server.photos.contains_key(&w.photos[2]), "{user}");
        assert_eq!(
            blob(&server.base, "inspector1", &w.photos[2]).await,
            t.photo_bytes(&w.photos[2]).unwrap()
        );
        // Nothing is lost on the tablet: the refused photos are still here.
        for sha in &w.photos {
            assert!(!t.photo_bytes(sha).unwrap().is_empty(), "{user}: {sha}");
        }
        assert_eq!(refused.len(), 4, "{user}: {refused:?}");
    }
    drop(tablets);
    server.stop().await;
}

// ----- the command line and the Python binding ---------------------------------------

/// The target folder this test binary was built into (`…/debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds mobile-bridge's library and binaries into this build's target folder.
async fn build_mobile_bridge() {
    let target = profile_dir().parent().unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = tokio::time::timeout(
        Duration::from_secs(1800),
        tokio::process::Command::new(cargo)
            .args(["build", "--quiet", "-p", "mobile-bridge", "-p", "tests"])
            .current_dir(repo_root())
            .env("CARGO_TARGET_DIR", &target)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("building mobile-bridge timed out")
    .unwrap();
    assert!(
        out.status.success(),
        "cargo build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn field(store: &Path, args: &[&str]) -> tests::CliOutput {
    let bin = profile_dir().join("kiemtra-field");
    let mut all = vec!["--store", store.to_str().unwrap()];
    all.extend_from_slice(args);
    tests::run_cli(&bin, &all, None, &[]).await
}

fn ok(out: &tests::CliOutput) -> &str {
    assert_eq!(
        out.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    &out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_plays_two_tablets() {
    build_mobile_bridge().await;
    let server = TestServer::start(true).await;
    let base = server.base.clone();
    let id = demo_inspection(&base, "inspector1", "00004").await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (dir, user) in [(&a, "inspector1"), (&b, "inspector2")] {
        let out = field(
            dir.path(),
            &[
                "login",
                "--server",
                &base,
                "--username",
                user,
                "--password",
                PASSWORD,
            ],
        )
        .await;
        assert!(ok(&out).contains(user));
        ok(&field(dir.path(), &["sync"]).await);
    }
    let list: Value =
        serde_json::from_str(ok(&field(a.path(), &["assignments", "--json"]).await)).unwrap();
    let mine = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id.as_str())
        .unwrap();
    assert_eq!(mine["unit_code"], "00004");
    assert_eq!(mine["on_device"], true);

    ok(&field(
        a.path(),
        &[
            "answer",
            &id,
            "A1",
            "yes",
            "--field",
            "so_ky_hieu=12/KH-UBND",
        ],
    )
    .await);
    ok(&field(b.path(), &["answer", &id, "A1", "no"]).await);
    ok(&field(a.path(), &["answer", "00004", "A3", "45/50"]).await);
    let bad = field(a.path(), &["answer", &id, "A3", "60/50"]).await;
    assert_eq!(bad.code, Some(1), "{}", bad.stderr);
    let finding = ok(&field(
        a.path(),
        &[
            "finding",
            "add",
            &id,
            "--title",
            "Thiếu biên bản",
            "--severity",
            "high",
        ],
    )
    .await)
    .trim()
    .to_owned();
    let png = write_photo(a.path(), "p.png", &noise_png(80, 60, 9));
    let sha = ok(&field(
        a.path(),
        &[
            "photo",
            "add",
            &id,
            png.to_str().unwrap(),
            "--finding",
            &finding,
        ],
    )
    .await)
    .trim()
    .to_owned();
    assert_eq!(sha.len(), 64);

    let status: Value =
        serde_json::from_str(ok(&field(a.path(), &["status", "--json"]).await)).unwrap();
    let doc = status["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(doc["kind"], "inspection");
    assert_eq!(doc["pending_changes"], 4);
    assert_eq!(doc["pending_photos"], json!([sha]));
    assert!(!doc["heads"].as_array().unwrap().is_empty());

    for dir in [&a, &b, &a] {
        ok(&field(dir.path(), &["sync"]).await);
    }
    let conflicts: Value =
        serde_json::from_str(ok(&field(b.path(), &["conflicts", "--json"]).await)).unwrap();
    let c = conflicts.as_array().unwrap();
    assert_eq!(c.len(), 1, "{conflicts}");
    assert_eq!(c[0]["path"], "answers/A1");
    assert_eq!(c[0]["values"].as_array().unwrap().len(), 2);

    ok(&field(a.path(), &["submit", &id]).await);
    ok(&field(a.path(), &["sync"]).await);
    let status: Value =
        serde_json::from_str(ok(&field(a.path(), &["status", "--json"]).await)).unwrap();
    assert_eq!(status["pending_changes"], 0);
    assert_eq!(status["pending_photos"], 0);
    let server_heads = sorted_heads(&server_doc(&server, &id).await);
    let doc = status["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id.as_str())
        .unwrap();
    let mut heads: Vec<String> = doc["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    heads.sort();
    assert_eq!(heads, server_heads);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_reports_refused_work_and_rebases_it() {
    build_mobile_bridge().await;
    let server = TestServer::start(true).await;
    let base = server.base.clone();
    let id = schedule(&base, "00008", "Đoàn A", "inspector1").await;
    let a = tempfile::tempdir().unwrap();
    let login_args = [
        "login",
        "--server",
        &base,
        "--username",
        "inspector1",
        "--password",
        PASSWORD,
    ];
    ok(&field(a.path(), &login_args).await);
    ok(&field(a.path(), &["sync"]).await);
    ok(&field(a.path(), &["answer", &id, "A4", "3"]).await);
    ok(&field(a.path(), &["answer", &id, "A2", "partial"]).await);
    move_to_checklist_v2(&server, &id).await;

    // Not "synced" silently: exit code 5 and the refused work listed.
    let out = field(a.path(), &["sync"]).await;
    assert_eq!(
        out.code,
        Some(5),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("synced with refusals"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("answer A4 = 3"), "{}", out.stdout);
    let list: Value =
        serde_json::from_str(ok(&field(a.path(), &["refused", "--json"]).await)).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["piece"], "answers/A4");
    assert_eq!(list[0]["rule"], "invalid");
    assert_eq!(list[0]["document_id"], id.as_str());
    assert!(list[0]["reason"].as_str().unwrap().contains("A4"));
    let on_server = server_inspection(&server, &id).await;
    assert!(on_server.answers.contains_key("A2"), "rebased and uploaded");

    let out = field(a.path(), &["sync", "--json"]).await;
    assert_eq!(out.code, Some(5), "{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["refused"].as_array().unwrap().len(), 1);
    // Still not applicable to version 2 of the checklist.
    let out = field(a.path(), &["rebase", &id]).await;
    assert_eq!(out.code, Some(5), "{}", out.stderr);
    assert!(out.stdout.contains("still refused"), "{}", out.stdout);
    let status: Value =
        serde_json::from_str(ok(&field(a.path(), &["status", "--json"]).await)).unwrap();
    assert_eq!(status["pending_changes"], 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_binding_opens_a_store_answers_and_syncs() {
    build_mobile_bridge().await;
    let server = TestServer::start(true).await;
    let id = demo_inspection(&server.base, "inspector1", "00004").await;
    let store = tempfile::tempdir().unwrap();
    let script = repo_root().join("tests/python/run.sh");
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new("bash")
            .arg(&script)
            .args([
                server.base.as_str(),
                store.path().to_str().unwrap(),
                id.as_str(),
                "inspector1",
                PASSWORD,
            ])
            .env("CARGO_TARGET_DIR", profile_dir().parent().unwrap())
            .env("KIEMTRA_SKIP_BUILD", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python test timed out")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["answer"], "yes");
    // The server holds what Python wrote.
    let doc = server_doc(&server, &id).await;
    let mut heads: Vec<String> = last["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    heads.sort();
    assert_eq!(sorted_heads(&doc), heads);
    let (t, _d) = tablet();
    login(&t, &server.base, "inspector2").await;
    sync(&t).await;
    assert_eq!(answer_of(&t, &id, "A1").as_deref(), Some("yes"));
    server.stop().await;
}
