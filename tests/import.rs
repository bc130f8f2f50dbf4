//! Reference-data imports: validation with line numbers, all-or-nothing,
//! idempotent upserts.

use server::cli::{CliError, import_departments_file, import_units_file};
use server::reference::{ImportError, ImportSummary};
use server::settings::DbSettings;
use tests::*;

fn count(db_path: &std::path::Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(db_path).unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_is_named_by_line_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("k.sqlite3");
    let db = server::db::Db::open(&db_path, &DbSettings::default()).unwrap();

    let good = std::fs::read_to_string(demo_data("hanoi_units.csv")).unwrap();
    // Line 50 of the file (line 1 is the header) gets an unknown type.
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();
    let fields: Vec<&str> = lines[49].split(',').collect();
    let mut broken = fields.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    broken[2] = "village".into();
    lines[49] = broken.join(",");
    let bad_path = dir.path().join("bad.csv");
    std::fs::write(&bad_path, lines.join("\n")).unwrap();

    let audit_before = count(&db_path, "audit_log");
    let err = import_units_file(&db, &bad_path, "test").await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("line 50"), "{text}");
    assert!(text.contains("village"), "{text}");
    assert!(matches!(
        err,
        CliError::Import {
            source: ImportError::InvalidRows(ref rows),
            ..
        } if rows.len() == 1 && rows[0].line == 50
    ));
    assert_eq!(count(&db_path, "units"), 0, "nothing imported");
    assert_eq!(count(&db_path, "audit_log"), audit_before);

    // A parent that exists nowhere is caught inside the transaction too.
    let orphan = "code,name,type,parent_code,structure,full_name,name_en\n\
                  00004,Ba Đình,ward,77,post_2025,Phường Ba Đình,Ba Dinh Ward\n";
    let orphan_path = dir.path().join("orphan.csv");
    std::fs::write(&orphan_path, orphan).unwrap();
    let err = import_units_file(&db, &orphan_path, "test")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("line 2: parent_code `77`"),
        "{err}"
    );
    assert_eq!(count(&db_path, "units"), 0);

    // The good file imports, and importing it again changes nothing.
    let good_path = demo_data("hanoi_units.csv");
    let first = import_units_file(&db, &good_path, "test").await.unwrap();
    let rows = good.lines().count() - 1;
    assert_eq!(
        first,
        ImportSummary {
            rows,
            inserted: rows,
            updated: 0,
            unchanged: 0
        }
    );
    let again = import_units_file(&db, &good_path, "test").await.unwrap();
    assert_eq!(
        (again.inserted, again.updated, again.unchanged),
        (0, 0, rows)
    );
    assert_eq!(count(&db_path, "units"), rows as i64);

    // A changed name is an update of one row.
    let renamed = good.replace(",Phường Ba Đình,", ",Phường Ba Đình (mới),");
    let renamed_path = dir.path().join("renamed.csv");
    std::fs::write(&renamed_path, renamed).unwrap();
    let third = import_units_file(&db, &renamed_path, "test").await.unwrap();
    assert_eq!((third.inserted, third.updated), (0, 1));

    let deps = import_departments_file(&db, &demo_data("hanoi_departments.csv"), "test")
        .await
        .unwrap();
    assert_eq!((deps.rows, deps.inserted), (18, 18));
    db.close().await.unwrap();
    // Each successful import left one audit entry, and the chain holds.
    assert_eq!(count(&db_path, "audit_log"), audit_before + 4);
    let conn = rusqlite::Connection::open(&db_path).unwrap();
    assert_eq!(server::audit::verify(&conn).unwrap().entries, 4);
}
