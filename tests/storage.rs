//! The SQLite store: migrations, upgrades, the audit chain.

use rusqlite::Connection;
use server::audit::AuditError;
use server::db::migrations::{latest_version, migrations};
use server::db::{Db, DbError};
use server::demo::DEMO_PASSWORD;
use server::settings::DbSettings;
use tests::*;

#[test]
fn migrations_validate() {
    migrations().validate().unwrap();
    assert!(latest_version() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_database_is_upgraded_keeping_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite3");
    {
        // A database as the first release left it: schema version 1 only.
        let mut conn = Connection::open(&path).unwrap();
        migrations().to_version(&mut conn, 1).unwrap();
        conn.execute_batch(
            "INSERT INTO teams (id, name, created_at) VALUES ('t1', 'Đoàn A', '2025-01-01T00:00:00Z');
             INSERT INTO users (id, username, display_name, role, team_id, unit_code, disabled,
                                password_hash, created_at)
             VALUES ('u1', 'inspector1', 'Kiểm tra viên 1', 'inspector', 't1', NULL, 0, 'x',
                     '2025-01-01T00:00:00Z');",
        )
        .unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
        let has_units: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'units'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(has_units, 0);
    }
    let db = Db::open(&path, &DbSettings::default()).unwrap();
    assert_eq!(db.schema_version(), latest_version());
    let user = db
        .read(|c| server::users::find(c, "inspector1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.team_name.as_deref(), Some("Đoàn A"));
    let units: i64 = db
        .read(|c| {
            c.query_row("SELECT count(*) FROM units", [], |r| r.get(0))
                .map_err(DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(units, 0);
    db.close().await.unwrap();
    assert_eq!(integrity_check(&path), "ok");
}

#[test]
fn a_database_from_a_newer_release_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.sqlite3");
    {
        let mut conn = Connection::open(&path).unwrap();
        migrations().to_latest(&mut conn).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
    }
    let err = Db::open(&path, &DbSettings::default()).unwrap_err();
    assert!(
        matches!(err, DbError::SchemaTooNew { found: 999, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_detects_a_tampered_row() {
    let server = TestServer::start(true).await;
    let c = client();
    login_ok(&c, &server.base, "admin", DEMO_PASSWORD).await;
    let r = login(&c, &server.base, "admin", "wrong", "d").await;
    assert_eq!(r.status(), 401);
    let dir = server.stop().await.unwrap();
    let path = dir.path().join("kiemtra.sqlite3");

    let conn = Connection::open(&path).unwrap();
    let report = server::audit::verify(&conn).unwrap();
    // Seeding (units, departments, checklist, accounts), the documents the
    // demo writes (catalog, five inspections, index documents: one row per
    // committed change batch), one login, one failed login.
    let documents: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM audit_log WHERE action = 'document.change'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(documents >= 6, "catalog and five inspections: {documents}");
    assert_eq!(report.entries, 6 + u64::try_from(documents).unwrap());
    let actions: Vec<String> = conn
        .prepare("SELECT action FROM audit_log WHERE action <> 'document.change' ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        actions,
        [
            "import.units",
            "import.departments",
            "template.publish",
            "demo.seed",
            "auth.login",
            "auth.login_failed"
        ]
    );

    // The log refuses edits through SQL...
    assert!(
        conn.execute("UPDATE audit_log SET subject = 'x' WHERE seq = 5", [])
            .is_err()
    );
    // ...and someone who removes that guard is still caught by the chain.
    conn.execute_batch(
        "DROP TRIGGER audit_log_no_update;
         UPDATE audit_log SET detail = '{\"ip\":\"10.0.0.1\"}' WHERE seq = 5;",
    )
    .unwrap();
    match server::audit::verify(&conn) {
        Err(AuditError::Broken { seq, reason }) => {
            assert_eq!(seq, 5);
            assert!(reason.contains("altered"), "{reason}");
        }
        other => panic!("tampering not detected: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_all_commit() {
    let server = TestServer::start(false).await;
    let db = server.state.db.clone();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            db.write(move |tx| {
                tx.execute(
                    "INSERT INTO settings (key, value) VALUES (?1, 'v')",
                    [format!("k{i}")],
                )
                .map_err(DbError::from)
            })
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 1);
    }
    let n: i64 = db
        .read(|c| {
            c.query_row(
                "SELECT count(*) FROM settings WHERE key LIKE 'k%'",
                [],
                |r| r.get(0),
            )
            .map_err(DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(n, 200);
    server.stop().await;
}
