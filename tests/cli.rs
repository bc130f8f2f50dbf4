//! The `kiemtra` command line, run as the real binary.

use std::path::Path;

use serde_json::Value;
use tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_kiemtra-under-test");

async fn kiemtra(
    data: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> CliOutput {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--data", data.to_str().unwrap()]);
    run_cli(Path::new(BIN), &full, stdin, env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_managed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let units = demo_data("hanoi_units.csv");

    let out = kiemtra(
        data,
        &["import", "units", units.to_str().unwrap()],
        None,
        &[],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("684 new"), "{}", out.stdout);

    let out = kiemtra(
        data,
        &[
            "user",
            "add",
            "Inspector9",
            "--role",
            "inspector",
            "--team",
            "Đoàn C",
            "--display-name",
            "Nguyễn Văn A",
            "--password-stdin",
        ],
        Some("correct horse battery\n"),
        &[],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("created user inspector9"),
        "{}",
        out.stdout
    );

    let out = kiemtra(
        data,
        &[
            "user",
            "add",
            "unit-00004",
            "--role",
            "unit",
            "--unit",
            "00004",
        ],
        None,
        &[("KIEMTRA_PASSWORD", "ba dinh password")],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");

    // Refusals name the problem.
    let out = kiemtra(
        data,
        &[
            "user",
            "add",
            "unit-x",
            "--role",
            "unit",
            "--password-stdin",
        ],
        Some("long enough pw\n"),
        &[],
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("--unit"), "{}", out.stderr);
    let out = kiemtra(
        data,
        &["user", "add", "nopass", "--role", "admin"],
        None,
        &[],
    )
    .await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("--password-stdin"), "{}", out.stderr);
    let out = kiemtra(
        data,
        &[
            "user",
            "add",
            "shorty",
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some("short\n"),
        &[],
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("at least 8"), "{}", out.stderr);
    let out = kiemtra(
        data,
        &[
            "user",
            "add",
            "inspector9",
            "--role",
            "leader",
            "--password-stdin",
        ],
        Some("another password\n"),
        &[],
    )
    .await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);

    let out = kiemtra(data, &["user", "list", "--json"], None, &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let list: Value = serde_json::from_str(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["username"], "inspector9");
    assert_eq!(list[0]["team_name"], "Đoàn C");
    assert_eq!(list[0]["display_name"], "Nguyễn Văn A");
    assert_eq!(list[1]["unit_code"], "00004");
    assert!(
        !out.stdout.contains("argon2"),
        "hashes never leave the database"
    );
    let out = kiemtra(data, &["user", "list"], None, &[]).await;
    assert!(
        out.stdout.contains("inspector9") && out.stdout.contains("active"),
        "{}",
        out.stdout
    );

    // The server (in-process, same data folder) accepts the new account.
    let server = TestServer::start_at(test_settings(data, false))
        .await
        .unwrap();
    let c = client();
    let tokens = login_ok(&c, &server.base, "inspector9", "correct horse battery").await;

    // A new password signs the user out everywhere.
    let out = kiemtra(
        data,
        &["user", "passwd", "inspector9", "--password-stdin"],
        Some("new horse battery\n"),
        &[],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        refresh(&c, &server.base, &tokens.refresh_token)
            .await
            .status(),
        401
    );
    assert_eq!(
        login(&c, &server.base, "inspector9", "correct horse battery", "d")
            .await
            .status(),
        401
    );
    let tokens = login_ok(&c, &server.base, "inspector9", "new horse battery").await;

    // Disabling does too, and stops logins.
    let out = kiemtra(data, &["user", "disable", "inspector9"], None, &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        refresh(&c, &server.base, &tokens.refresh_token)
            .await
            .status(),
        401
    );
    assert_eq!(
        login(&c, &server.base, "inspector9", "new horse battery", "d")
            .await
            .status(),
        401
    );
    server.stop().await;

    // Every change above is in the audit log, and the chain verifies.
    let out = kiemtra(data, &["audit", "verify"], None, &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("audit log OK"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_csv_is_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let csv = dir.path().join("units.csv");
    std::fs::write(
        &csv,
        "code,name,type,parent_code,structure,full_name,name_en\n\
         01,Hà Nội,city,,post_2025,Thành phố Hà Nội,Ha Noi City\n\
         00004,Ba Đình,ward,01,post_2025,Phường Ba Đình,Ba Dinh Ward\n\
         00008,Ngọc Hà,ward,01,post_2030,Phường Ngọc Hà,Ngoc Ha Ward\n",
    )
    .unwrap();
    let out = kiemtra(
        &data,
        &["import", "units", csv.to_str().unwrap()],
        None,
        &[],
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("line 4: structure `post_2030`"),
        "{}",
        out.stderr
    );
    let conn = rusqlite::Connection::open(data.join("kiemtra.sqlite3")).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM units", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_exits_3_on_a_tampered_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let deps = demo_data("hanoi_departments.csv");
    let out = kiemtra(
        data,
        &["import", "departments", deps.to_str().unwrap()],
        None,
        &[],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = kiemtra(
        data,
        &["import", "departments", deps.to_str().unwrap()],
        None,
        &[],
    )
    .await;
    assert!(
        out.stdout.contains("0 new, 0 updated, 18 unchanged"),
        "{}",
        out.stdout
    );
    let out = kiemtra(data, &["audit", "verify"], None, &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("2 entries"), "{}", out.stdout);

    let conn = rusqlite::Connection::open(data.join("kiemtra.sqlite3")).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_log_no_update;
         UPDATE audit_log SET actor = 'someone-else' WHERE seq = 1;",
    )
    .unwrap();
    drop(conn);
    let out = kiemtra(data, &["audit", "verify"], None, &[]).await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stderr.contains("broken at entry 1"), "{}", out.stderr);
}
