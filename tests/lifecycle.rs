//! Start, health, limits, demo-mode guard and graceful shutdown, in-process
//! and as the real binary.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use server::demo::{DEMO_PASSWORD, DemoError, Prepared};
use server::{StartError, db::DbError};
use tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_kiemtra-under-test");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_version_answer_without_login() {
    let server = TestServer::start(false).await;
    let c = client();
    let health: Value = c
        .get(server.url("/api/v1/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({ "status": "ok", "database": "ok" }));
    let version: Value = c
        .get(server.url("/api/v1/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        version["schema_version"],
        server::db::migrations::latest_version()
    );
    let r = c.get(server.url("/api/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "not_found");
    let r = c
        .get(server.url("/api/v1/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(error_code(r).await, "method_not_allowed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_json_bodies_are_refused() {
    let server = TestServer::start(true).await;
    let body = json!({ "username": "admin", "password": "x".repeat(100 * 1024), "device_id": "d" });
    let r = client()
        .post(server.url("/api/v1/auth/login"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(r).await, "payload_too_large");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_write_in_flight_and_closes_cleanly() {
    let mut server = TestServer::start(true).await;
    let db = server.state.db.clone();
    let c = client();
    // Warm up the connection and the dummy hash, so the login below only
    // waits for the writer.
    login_ok(&c, &server.base, "admin", DEMO_PASSWORD).await;

    // Hold the writer thread so the next write is queued, in flight.
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let blocker = tokio::spawn({
        let db = db.clone();
        async move {
            db.write(move |_tx| {
                hold.recv().ok();
                Ok::<_, DbError>(())
            })
            .await
        }
    });
    let login_task = tokio::spawn({
        let base = server.base.clone();
        async move { login(&client(), &base, "inspector1", DEMO_PASSWORD, "tablet-7").await }
    });
    // Wait (bounded) until the login's write is queued behind the blocker.
    tokio::time::timeout(TIMEOUT, async {
        while db.pending_writes() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the login never reached the writer");

    server.signal_shutdown();
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();

    let response = login_task.await.unwrap();
    assert_eq!(response.status(), 200, "the in-flight login completes");
    let tokens: Tokens = response.json().await.unwrap();
    server.wait().await.unwrap();

    // After shutdown: writes are refused, the file is consistent and holds
    // the refresh token the client was given.
    let refused = db.write(|_tx| Ok::<_, DbError>(())).await.unwrap_err();
    assert!(matches!(refused, DbError::WriterStopped), "{refused}");
    let path = server.data_dir().join("kiemtra.sqlite3");
    assert_eq!(integrity_check(&path), "ok");
    let wal = server.data_dir().join("kiemtra.sqlite3-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0,
        "the WAL was checkpointed"
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let stored: i64 = conn
        .query_row(
            "SELECT count(*) FROM refresh_tokens WHERE token_hash = ?1 AND device_id = 'tablet-7'",
            [server::auth::refresh::hash_token(&tokens.refresh_token)],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_and_real_databases_are_never_mixed() {
    // A demo database...
    let server = TestServer::start(true).await;
    assert!(matches!(server.prepared, Prepared::Seeded(ref a) if a.len() == 12));
    let dir = server.stop().await.unwrap();
    // ...refuses to start without --demo,
    let settings = test_settings(dir.path(), false);
    let err = TestServer::start_in(dir, settings).await.unwrap_err();
    assert!(
        matches!(err, StartError::Demo(DemoError::DemoWithoutFlag)),
        "{err}"
    );
    assert!(err.to_string().contains("--demo"), "{err}");

    // and restarts with it without seeding again.
    let server = TestServer::start(true).await;
    let dir = server.stop().await.unwrap();
    let settings = test_settings(dir.path(), true);
    let again = TestServer::start_in(dir, settings).await.unwrap();
    assert!(matches!(again.prepared, Prepared::AlreadySeeded(_)));
    let c = client();
    login_ok(&c, &again.base, "unit-00004", DEMO_PASSWORD).await;
    again.stop().await;

    // A real database refuses --demo.
    let real = TestServer::start(false).await;
    let dir = real.stop().await.unwrap();
    let settings = test_settings(dir.path(), true);
    let err = TestServer::start_in(dir, settings).await.unwrap_err();
    assert!(
        matches!(err, StartError::Demo(DemoError::NotEmpty)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let child = ChildServer::spawn(
        Path::new(BIN),
        &["--demo", "--data", data.to_str().unwrap()],
        // The address comes from the environment layer of the settings.
        &[("KIEMTRA__SERVER__ADDR", "127.0.0.1:0")],
    )
    .await;
    assert!(
        child.base.starts_with("http://127.0.0.1:"),
        "{}",
        child.base
    );
    let mut child = child;
    let logins = child.read_lines(3).await;
    assert!(logins[0].contains("password `demo`"), "{logins:?}");
    assert!(logins[1].contains("admin"), "{logins:?}");

    let c = client();
    let health = c
        .get(format!("{}/api/v1/health", child.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let tokens = login_ok(&c, &child.base, "inspector3", DEMO_PASSWORD).await;
    let (_, claims) = decode_unverified(&tokens.access_token);
    assert_eq!(claims["role"], "inspector");

    let (ok, rest) = child.terminate().await;
    assert!(ok, "exit status after SIGTERM");
    assert!(
        rest.iter().any(|l| l.contains("stopped cleanly")),
        "{rest:?}"
    );
    assert_eq!(integrity_check(&data.join("kiemtra.sqlite3")), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_stop_the_binary_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kiemtra.toml");
    std::fs::write(&config, "[auth]\naccess_token_ttl_secs = 86400\n").unwrap();
    let out = run_cli(
        Path::new(BIN),
        &["serve", "--config", config.to_str().unwrap()],
        None,
        &[],
    )
    .await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("auth.access_token_ttl_secs"), "{out:?}");
    let out = run_cli(
        Path::new(BIN),
        &["user", "list", "--data", dir.path().to_str().unwrap()],
        None,
        &[("KIEMTRA__DB__READERS", "0")],
    )
    .await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("db.readers"), "{out:?}");
}
