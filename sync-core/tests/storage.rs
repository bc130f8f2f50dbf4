//! Tests of the SQLite document store through its public API: schema
//! migrations, durability, compaction, idempotence, ordering, corruption,
//! limits and transaction composition.
#![allow(clippy::unwrap_used)]

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoSerde, Automerge, Change, ObjType, ROOT};
use rusqlite::Connection;
use sync_core::DocumentId;
use sync_core::storage::{
    self, CompactionPolicy, DocStore, SCHEMA_VERSION, StorageError, StorageLimits,
};

const NOW: i64 = 1_750_000_000_000;

fn id(n: u8) -> DocumentId {
    DocumentId::from_bytes([n; 16])
}

fn new_doc(actor: u8) -> Automerge {
    Automerge::new().with_actor(ActorId::from([actor; 16]))
}

/// Makes one change putting `key = value` at the root and returns it.
fn edit(doc: &mut Automerge, key: &str, value: i64) -> Change {
    let mut tx = doc.transaction();
    tx.put(ROOT, key, value).unwrap();
    tx.commit();
    doc.get_last_local_change().unwrap()
}

/// A document with a few scalar keys and a text object, as a list of changes.
fn sample_doc(actor: u8) -> Automerge {
    let mut doc = new_doc(actor);
    let mut tx = doc.transaction();
    tx.put(ROOT, "kind", "inspection").unwrap();
    tx.put(ROOT, "schema", 1).unwrap();
    let notes = tx.put_object(ROOT, "notes", ObjType::Text).unwrap();
    tx.splice_text(&notes, 0, 0, "Lối thoát hiểm bị chặn")
        .unwrap();
    tx.commit();
    edit(&mut doc, "score", 7);
    doc
}

fn value_of(doc: &Automerge) -> serde_json::Value {
    serde_json::to_value(AutoSerde::from(doc)).unwrap()
}

fn migrated_conn() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    storage::migrate(&conn).unwrap();
    conn
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |row| row.get(0)).unwrap()
}

fn schema_of(conn: &Connection) -> Vec<(String, String, Option<String>)> {
    let mut stmt = conn
        .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
        .unwrap();
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Schema and migrations
// ---------------------------------------------------------------------------

#[test]
fn migrate_sets_up_an_empty_database_and_is_idempotent() {
    let conn = Connection::open_in_memory().unwrap();
    // Another component's migrations own user_version; the store must not
    // read or change it.
    conn.pragma_update(None, "user_version", 7).unwrap();
    assert_eq!(storage::schema_version(&conn).unwrap(), 0);

    storage::migrate(&conn).unwrap();
    assert_eq!(storage::schema_version(&conn).unwrap(), SCHEMA_VERSION);
    let schema_once = schema_of(&conn);
    for table in [
        "doc_store_meta",
        "doc_store_documents",
        "doc_store_changes",
        "doc_store_snapshot_clock",
    ] {
        assert!(
            schema_once
                .iter()
                .any(|(t, n, _)| t == "table" && n == table),
            "missing table {table}"
        );
    }

    storage::migrate(&conn).unwrap();
    assert_eq!(storage::schema_version(&conn).unwrap(), SCHEMA_VERSION);
    assert_eq!(schema_of(&conn), schema_once);
    let user_version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(user_version, 7);
}

#[test]
fn migrate_leaves_other_components_tables_alone() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(
        "CREATE TABLE inspections (id INTEGER PRIMARY KEY, title TEXT);
         INSERT INTO inspections (title) VALUES ('Trường THCS Cầu Giấy');",
    )
    .unwrap();
    storage::migrate(&conn).unwrap();
    let title: String = conn
        .query_row("SELECT title FROM inspections", [], |row| row.get(0))
        .unwrap();
    assert_eq!(title, "Trường THCS Cầu Giấy");
}

/// Version 1 of the schema exactly as released, frozen here so that this
/// test keeps checking the upgrade path from a real version-1 database once
/// later versions are appended.
const FROZEN_V1: &str = "
CREATE TABLE doc_store_meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value ANY
) STRICT;
CREATE TABLE doc_store_documents (
    doc_id            BLOB    NOT NULL PRIMARY KEY CHECK (length(doc_id) = 16),
    kind              TEXT    NOT NULL,
    snapshot          BLOB,
    snapshot_heads    BLOB    NOT NULL DEFAULT x'' CHECK (length(snapshot_heads) % 32 = 0),
    change_count      INTEGER NOT NULL DEFAULT 0 CHECK (change_count >= 0),
    bytes_incremental INTEGER NOT NULL DEFAULT 0 CHECK (bytes_incremental >= 0),
    updated_at        INTEGER NOT NULL
) STRICT;
CREATE INDEX doc_store_documents_kind ON doc_store_documents (kind, doc_id);
CREATE TABLE doc_store_changes (
    doc_id    BLOB    NOT NULL REFERENCES doc_store_documents (doc_id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    hash      BLOB    NOT NULL CHECK (length(hash) = 32),
    actor     BLOB    NOT NULL,
    actor_seq INTEGER NOT NULL CHECK (actor_seq > 0),
    data      BLOB    NOT NULL,
    PRIMARY KEY (doc_id, seq),
    UNIQUE (doc_id, hash),
    UNIQUE (doc_id, actor, actor_seq)
) STRICT;
CREATE TABLE doc_store_snapshot_clock (
    doc_id  BLOB    NOT NULL REFERENCES doc_store_documents (doc_id) ON DELETE CASCADE,
    actor   BLOB    NOT NULL,
    max_seq INTEGER NOT NULL CHECK (max_seq > 0),
    PRIMARY KEY (doc_id, actor)
) STRICT;
INSERT INTO doc_store_meta (key, value) VALUES ('schema_version', 1);
";

#[test]
fn a_hand_built_version_1_database_upgrades_and_its_documents_still_load() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(FROZEN_V1).unwrap();

    // Data written the way version 1 lays it out: a snapshot of the first
    // change plus the second change as an incremental row.
    let mut doc = new_doc(1);
    edit(&mut doc, "a", 1);
    let snapshot = doc.save();
    let heads: Vec<u8> = doc.get_heads().iter().flat_map(|h| h.0).collect();
    let second = edit(&mut doc, "b", 2);
    conn.execute(
        "INSERT INTO doc_store_documents (doc_id, kind, snapshot, snapshot_heads, change_count, bytes_incremental, updated_at)
         VALUES (?1, 'action', ?2, ?3, 1, ?4, ?5)",
        rusqlite::params![
            id(1).as_bytes(),
            snapshot,
            heads,
            i64::try_from(second.raw_bytes().len()).unwrap(),
            NOW
        ],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO doc_store_snapshot_clock (doc_id, actor, max_seq) VALUES (?1, ?2, 1)",
        rusqlite::params![id(1).as_bytes(), [1u8; 16]],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO doc_store_changes (doc_id, seq, hash, actor, actor_seq, data) VALUES (?1, 1, ?2, ?3, 2, ?4)",
        rusqlite::params![id(1).as_bytes(), second.hash().0, [1u8; 16], second.raw_bytes()],
    )
    .unwrap();

    storage::migrate(&conn).unwrap();
    assert_eq!(storage::schema_version(&conn).unwrap(), SCHEMA_VERSION);

    let loaded = storage::load(&conn, id(1)).unwrap().unwrap();
    assert_eq!(loaded.get_heads(), doc.get_heads());
    assert_eq!(value_of(&loaded), serde_json::json!({"a": 1, "b": 2}));
    assert_eq!(
        storage::kind(&conn, id(1)).unwrap().as_deref(),
        Some("action")
    );

    // An upgraded database ends with the same schema as a fresh one.
    assert_eq!(schema_of(&conn), schema_of(&migrated_conn()));
}

#[test]
fn a_newer_schema_is_refused_with_both_versions_named() {
    let conn = migrated_conn();
    conn.execute(
        "UPDATE doc_store_meta SET value = ?1 WHERE key = 'schema_version'",
        [SCHEMA_VERSION + 1],
    )
    .unwrap();
    let err = storage::migrate(&conn).unwrap_err();
    match &err {
        StorageError::NewerSchema { found, supported } => {
            assert_eq!(*found, SCHEMA_VERSION + 1);
            assert_eq!(*supported, SCHEMA_VERSION);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert!(err.to_string().contains("run a newer program"), "{err}");
    // The refusal changed nothing.
    assert_eq!(storage::schema_version(&conn).unwrap(), SCHEMA_VERSION + 1);
}

#[test]
fn a_mangled_version_record_is_reported_not_guessed() {
    let conn = migrated_conn();
    conn.execute(
        "UPDATE doc_store_meta SET value = 'one' WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    assert!(matches!(
        storage::migrate(&conn),
        Err(StorageError::BadSchemaVersion(_))
    ));
}

#[test]
fn migrate_inside_a_callers_transaction_rolls_back_with_it() {
    let mut conn = Connection::open_in_memory().unwrap();
    let tx = conn.transaction().unwrap();
    storage::migrate(&tx).unwrap();
    assert_eq!(storage::schema_version(&tx).unwrap(), SCHEMA_VERSION);
    tx.rollback().unwrap();
    assert_eq!(storage::schema_version(&conn).unwrap(), 0);
}

// ---------------------------------------------------------------------------
// Durability and round trips
// ---------------------------------------------------------------------------

#[test]
fn a_document_survives_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("field.sqlite");
    let doc = sample_doc(3);
    {
        let mut store = DocStore::open(&path).unwrap();
        let outcome = store
            .append_changes(id(9), "inspection", &doc.get_changes(&[]), NOW)
            .unwrap();
        assert_eq!(outcome.new_changes, 2);
        assert_eq!(outcome.duplicates, 0);
        assert_eq!(outcome.change_count, 2);
    }
    let store = DocStore::open(&path).unwrap();
    let journal: String = store
        .connection()
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    let loaded = store.load(id(9)).unwrap().unwrap();
    assert_eq!(loaded.get_heads(), doc.get_heads());
    assert_eq!(loaded.save(), doc.save());
    assert_eq!(value_of(&loaded), value_of(&doc));
    let stats = store.stats(id(9)).unwrap().unwrap();
    assert_eq!(stats.kind, "inspection");
    assert_eq!(stats.updated_at_ms, NOW);
    assert_eq!(stats.snapshot_bytes, 0);
}

#[test]
fn a_missing_document_is_none_not_an_error() {
    let store = DocStore::open_in_memory().unwrap();
    assert!(store.load(id(1)).unwrap().is_none());
    assert!(store.load_raw(id(1)).unwrap().is_none());
    assert!(store.stats(id(1)).unwrap().is_none());
    assert!(!store.exists(id(1)).unwrap());
    assert_eq!(store.kind(id(1)).unwrap(), None);
    assert!(
        !store
            .needs_compaction(id(1), &CompactionPolicy::default())
            .unwrap()
    );
}

#[test]
fn a_snapshot_saved_for_a_new_document_loads_and_takes_later_changes() {
    let mut store = DocStore::open_in_memory().unwrap();
    let mut doc = sample_doc(4);
    let outcome = store.save_snapshot(id(2), "catalog", &doc, NOW).unwrap();
    assert!(outcome.snapshot_bytes > 0);
    assert_eq!(outcome.removed_changes, 0);

    let later = edit(&mut doc, "units", 42);
    let appended = store
        .append_changes(id(2), "catalog", &[later], NOW + 1)
        .unwrap();
    assert_eq!(appended.new_changes, 1);

    let loaded = store.load(id(2)).unwrap().unwrap();
    assert_eq!(loaded.get_heads(), doc.get_heads());
    assert_eq!(value_of(&loaded), value_of(&doc));
    assert_eq!(store.stats(id(2)).unwrap().unwrap().updated_at_ms, NOW + 1);
}

// ---------------------------------------------------------------------------
// Compaction
// ---------------------------------------------------------------------------

#[test]
fn compaction_folds_many_appends_into_the_snapshot_without_changing_the_document() {
    let mut store = DocStore::open_in_memory().unwrap();
    let policy = CompactionPolicy::default();
    let mut doc = new_doc(5);
    for i in 0..300 {
        let change = edit(&mut doc, &format!("item-{}", i % 40), i);
        store
            .append_changes(id(3), "inspection", &[change], NOW + i)
            .unwrap();
    }
    let before = store.stats(id(3)).unwrap().unwrap();
    assert_eq!(before.change_count, 300);
    assert!(store.needs_compaction(id(3), &policy).unwrap());

    let outcome = store.compact_if_needed(id(3), &policy).unwrap().unwrap();
    assert_eq!(outcome.removed_changes, 300);
    assert_eq!(outcome.kept_changes, 0);
    assert!(outcome.snapshot_bytes > 0);

    let after = store.stats(id(3)).unwrap().unwrap();
    assert_eq!(after.change_count, 0);
    assert_eq!(after.bytes_incremental, 0);
    assert_eq!(after.snapshot_bytes, outcome.snapshot_bytes);
    // Compaction does not change the content, so it keeps updated_at.
    assert_eq!(after.updated_at_ms, NOW + 299);
    assert_eq!(
        count(store.connection(), "SELECT count(*) FROM doc_store_changes"),
        0
    );
    assert!(!store.needs_compaction(id(3), &policy).unwrap());
    assert_eq!(store.compact_if_needed(id(3), &policy).unwrap(), None);

    let loaded = store.load(id(3)).unwrap().unwrap();
    assert_eq!(loaded.get_heads(), doc.get_heads());
    assert_eq!(value_of(&loaded), value_of(&doc));
    assert_eq!(loaded.get_changes(&[]).len(), 300);
}

#[test]
fn the_byte_limit_of_the_policy_triggers_compaction_too() {
    let mut store = DocStore::open_in_memory().unwrap();
    let doc = sample_doc(6);
    let outcome = store
        .append_changes(id(4), "inspection", &doc.get_changes(&[]), NOW)
        .unwrap();
    let by_bytes = CompactionPolicy {
        max_changes: 1000,
        max_incremental_bytes: outcome.bytes_incremental - 1,
    };
    let roomy = CompactionPolicy {
        max_changes: 1000,
        max_incremental_bytes: outcome.bytes_incremental,
    };
    assert!(outcome.needs_compaction(&by_bytes));
    assert!(!outcome.needs_compaction(&roomy));
    assert!(store.needs_compaction(id(4), &by_bytes).unwrap());
    assert!(!store.needs_compaction(id(4), &roomy).unwrap());
}

#[test]
fn compaction_keeps_changes_whose_dependencies_have_not_arrived() {
    let mut store = DocStore::open_in_memory().unwrap();
    let mut doc = new_doc(7);
    let first = edit(&mut doc, "a", 1);
    let second = edit(&mut doc, "b", 2);

    // Only the second change arrives first.
    store
        .append_changes(id(5), "action", std::slice::from_ref(&second), NOW)
        .unwrap();
    let outcome = store.compact(id(5)).unwrap().unwrap();
    assert_eq!(outcome.removed_changes, 0);
    assert_eq!(outcome.kept_changes, 1);
    assert_eq!(store.stats(id(5)).unwrap().unwrap().change_count, 1);
    let partial = store.load(id(5)).unwrap().unwrap();
    assert!(partial.get_heads().is_empty());

    store
        .append_changes(id(5), "action", &[first], NOW)
        .unwrap();
    let full = store.load(id(5)).unwrap().unwrap();
    assert_eq!(full.get_heads(), doc.get_heads());
    assert_eq!(value_of(&full), serde_json::json!({"a": 1, "b": 2}));

    let outcome = store.compact(id(5)).unwrap().unwrap();
    assert_eq!(outcome.removed_changes, 2);
    assert_eq!(outcome.kept_changes, 0);
    assert_eq!(
        store.load(id(5)).unwrap().unwrap().get_heads(),
        doc.get_heads()
    );
}

#[test]
fn a_snapshot_that_would_go_back_in_time_is_refused() {
    let mut store = DocStore::open_in_memory().unwrap();
    let mut doc = new_doc(8);
    edit(&mut doc, "a", 1);
    let old = doc.fork();
    edit(&mut doc, "b", 2);
    store.save_snapshot(id(6), "action", &doc, NOW).unwrap();

    let err = store
        .save_snapshot(id(6), "action", &old, NOW + 1)
        .unwrap_err();
    assert!(
        matches!(err, StorageError::StaleSnapshot { doc_id } if doc_id == id(6)),
        "{err:?}"
    );
    let loaded = store.load(id(6)).unwrap().unwrap();
    assert_eq!(loaded.get_heads(), doc.get_heads());
    assert_eq!(store.stats(id(6)).unwrap().unwrap().updated_at_ms, NOW);
}

// ---------------------------------------------------------------------------
// Idempotence and ordering
// ---------------------------------------------------------------------------

#[test]
fn appending_the_same_changes_twice_stores_them_once_even_after_compaction() {
    let mut store = DocStore::open_in_memory().unwrap();
    let doc = sample_doc(9);
    let changes = doc.get_changes(&[]);

    let first = store
        .append_changes(id(7), "inspection", &changes, NOW)
        .unwrap();
    assert_eq!((first.new_changes, first.duplicates), (2, 0));
    let bytes_once = first.bytes_incremental;

    let again = store
        .append_changes(id(7), "inspection", &changes, NOW + 5)
        .unwrap();
    assert_eq!((again.new_changes, again.duplicates), (0, 2));
    assert_eq!(again.change_count, 2);
    assert_eq!(again.bytes_incremental, bytes_once);
    assert_eq!(
        count(store.connection(), "SELECT count(*) FROM doc_store_changes"),
        2
    );
    // Nothing new, so the document was not touched.
    assert_eq!(store.stats(id(7)).unwrap().unwrap().updated_at_ms, NOW);

    store.compact(id(7)).unwrap().unwrap();
    let after_compaction = store
        .append_changes(id(7), "inspection", &changes, NOW + 9)
        .unwrap();
    assert_eq!(
        (after_compaction.new_changes, after_compaction.duplicates),
        (0, 2)
    );
    assert_eq!(
        count(store.connection(), "SELECT count(*) FROM doc_store_changes"),
        0
    );
    assert_eq!(
        store.load(id(7)).unwrap().unwrap().get_heads(),
        doc.get_heads()
    );
}

#[test]
fn a_duplicate_inside_one_batch_is_stored_once() {
    let mut store = DocStore::open_in_memory().unwrap();
    let mut doc = new_doc(10);
    let change = edit(&mut doc, "a", 1);
    let outcome = store
        .append_changes(id(8), "action", &[change.clone(), change], NOW)
        .unwrap();
    assert_eq!((outcome.new_changes, outcome.duplicates), (1, 1));
}

#[test]
fn concurrent_actors_load_to_the_same_heads_in_any_arrival_order() {
    let mut base = new_doc(11);
    edit(&mut base, "title", 1);
    let mut a = base.fork().with_actor(ActorId::from([12u8; 16]));
    let mut b = base.fork().with_actor(ActorId::from([13u8; 16]));
    let base_changes = base.get_changes(&[]);
    let a_changes: Vec<Change> = (0..5).map(|i| edit(&mut a, "answer", i)).collect();
    let b_changes: Vec<Change> = (0..5).map(|i| edit(&mut b, &format!("b{i}"), i)).collect();
    let mut merged = a.fork();
    merged.merge(&mut b.fork()).unwrap();
    let expected_heads = merged.get_heads();
    assert_eq!(expected_heads.len(), 2, "two concurrent branches");
    let expected_value = value_of(&merged);

    let mut all: Vec<Change> = Vec::new();
    all.extend(base_changes.iter().cloned());
    all.extend(a_changes.iter().cloned());
    all.extend(b_changes.iter().cloned());
    let interleaved: Vec<Change> = base_changes
        .iter()
        .cloned()
        .chain(
            a_changes
                .iter()
                .zip(&b_changes)
                .flat_map(|(x, y)| [y.clone(), x.clone()]),
        )
        .collect();
    let b_first: Vec<Change> = b_changes
        .iter()
        .chain(&a_changes)
        .chain(&base_changes)
        .cloned()
        .collect();
    let reversed: Vec<Change> = all.iter().rev().cloned().collect();

    for (name, order) in [
        ("causal", all),
        ("interleaved", interleaved),
        ("b first", b_first),
        ("reversed", reversed),
    ] {
        let mut store = DocStore::open_in_memory().unwrap();
        for change in &order {
            store
                .append_changes(id(20), "inspection", std::slice::from_ref(change), NOW)
                .unwrap();
        }
        let loaded = store.load(id(20)).unwrap().unwrap();
        assert_eq!(loaded.get_heads(), expected_heads, "order {name}");
        assert_eq!(value_of(&loaded), expected_value, "order {name}");
        // Compacting at the end gives the same document as well.
        store.compact(id(20)).unwrap().unwrap();
        let compacted = store.load(id(20)).unwrap().unwrap();
        assert_eq!(compacted.get_heads(), expected_heads, "order {name}");
        assert_eq!(value_of(&compacted), expected_value, "order {name}");
    }
}

#[test]
fn a_different_change_reusing_an_actor_sequence_number_is_refused() {
    let mut store = DocStore::open_in_memory().unwrap();
    let mut one = new_doc(14);
    let mut other = new_doc(14);
    let first = edit(&mut one, "a", 1);
    let impostor = edit(&mut other, "a", 2);
    assert_ne!(first.hash(), impostor.hash());

    store
        .append_changes(id(21), "action", &[first], NOW)
        .unwrap();
    let err = store
        .append_changes(id(21), "action", &[impostor], NOW)
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::ConflictingChange { seq: 1, actor, .. } if *actor == ActorId::from([14u8; 16]).to_hex_string()),
        "{err:?}"
    );
    // The document still loads with the original change.
    let loaded = store.load(id(21)).unwrap().unwrap();
    assert_eq!(loaded.get_heads(), one.get_heads());
}

// ---------------------------------------------------------------------------
// Corruption and limits
// ---------------------------------------------------------------------------

fn expect_corrupt(result: Result<Option<Automerge>, StorageError>, doc_id: DocumentId) -> String {
    match result {
        Err(StorageError::Corrupt {
            doc_id: got,
            detail,
        }) => {
            assert_eq!(got, doc_id);
            detail
        }
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(doc) => panic!("expected Corrupt, loaded {:?}", doc.map(|d| d.get_heads())),
    }
}

#[test]
fn corrupt_rows_are_reported_per_document_without_panicking() {
    let mut store = DocStore::open_in_memory().unwrap();
    let doc = sample_doc(15);
    for n in 30..=34 {
        store.save_snapshot(id(n), "inspection", &doc, NOW).unwrap();
    }
    let mut doc2 = doc.fork().with_actor(ActorId::from([16u8; 16]));
    let extra = edit(&mut doc2, "extra", 1);
    for n in 30..=34 {
        store
            .append_changes(id(n), "inspection", std::slice::from_ref(&extra), NOW)
            .unwrap();
    }
    let conn = store.connection();

    // 30: the snapshot is garbage.
    conn.execute(
        "UPDATE doc_store_documents SET snapshot = x'deadbeef' WHERE doc_id = ?1",
        [id(30).as_bytes()],
    )
    .unwrap();
    let detail = expect_corrupt(store.load(id(30)), id(30));
    assert!(detail.contains("snapshot"), "{detail}");

    // 31: the snapshot is cut short.
    let full = doc.save();
    conn.execute(
        "UPDATE doc_store_documents SET snapshot = ?2 WHERE doc_id = ?1",
        rusqlite::params![id(31).as_bytes(), &full[..full.len() / 2]],
    )
    .unwrap();
    expect_corrupt(store.load(id(31)), id(31));

    // 32: an incremental change is garbage.
    conn.execute(
        "UPDATE doc_store_changes SET data = x'00010203' WHERE doc_id = ?1",
        [id(32).as_bytes()],
    )
    .unwrap();
    let detail = expect_corrupt(store.load(id(32)), id(32));
    assert!(detail.contains("does not parse"), "{detail}");

    // 33: a valid change stored under the wrong hash.
    conn.execute(
        "UPDATE doc_store_changes SET hash = zeroblob(32) WHERE doc_id = ?1",
        [id(33).as_bytes()],
    )
    .unwrap();
    let detail = expect_corrupt(store.load(id(33)), id(33));
    assert!(detail.contains("hashes to"), "{detail}");

    // 34: the recorded heads do not match the snapshot (another document's
    // snapshot pasted in would look like this).
    conn.execute(
        "UPDATE doc_store_documents SET snapshot_heads = zeroblob(32) WHERE doc_id = ?1",
        [id(34).as_bytes()],
    )
    .unwrap();
    let detail = expect_corrupt(store.load(id(34)), id(34));
    assert!(detail.contains("heads"), "{detail}");

    // Compaction of a corrupt document fails the same way and changes nothing.
    let mut store = store;
    assert!(matches!(
        store.compact(id(32)),
        Err(StorageError::Corrupt { .. })
    ));
    assert_eq!(store.stats(id(32)).unwrap().unwrap().change_count, 1);

    // An intact document next to them still loads.
    store
        .save_snapshot(id(35), "inspection", &doc, NOW)
        .unwrap();
    assert_eq!(
        store.load(id(35)).unwrap().unwrap().get_heads(),
        doc.get_heads()
    );
}

#[test]
fn every_single_byte_flip_of_a_snapshot_is_caught() {
    let mut store = DocStore::open_in_memory().unwrap();
    let doc = sample_doc(17);
    store
        .save_snapshot(id(40), "inspection", &doc, NOW)
        .unwrap();
    let good = doc.save();
    let mut outcomes = Vec::new();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x5a;
        store
            .connection()
            .execute(
                "UPDATE doc_store_documents SET snapshot = ?2 WHERE doc_id = ?1",
                rusqlite::params![id(40).as_bytes(), bad],
            )
            .unwrap();
        outcomes.push(match store.load(id(40)) {
            Err(StorageError::Corrupt { .. }) => "corrupt",
            Ok(Some(d)) if d.get_heads() == doc.get_heads() => "intact",
            Ok(_) => "wrong document",
            Err(_) => "other error",
        });
    }
    assert!(
        outcomes.iter().all(|o| *o == "corrupt"),
        "byte flips not reported as corrupt: {:?}",
        outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| **o != "corrupt")
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_document_over_the_size_limit_is_refused_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let doc = sample_doc(18);
    let mut store = DocStore::open(&path).unwrap();
    let outcome = store
        .append_changes(id(41), "inspection", &doc.get_changes(&[]), NOW)
        .unwrap();
    drop(store);

    let limit = outcome.bytes_incremental - 1;
    let small = DocStore::open(&path).unwrap().with_limits(StorageLimits {
        max_document_bytes: limit,
    });
    match small.load(id(41)) {
        Err(StorageError::TooLarge {
            doc_id,
            size,
            limit: got,
        }) => {
            assert_eq!(doc_id, id(41));
            assert_eq!(size, outcome.bytes_incremental);
            assert_eq!(got, limit);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        small.load_raw(id(41)),
        Err(StorageError::TooLarge { .. })
    ));

    let exact = small.with_limits(StorageLimits {
        max_document_bytes: outcome.bytes_incremental,
    });
    assert_eq!(
        exact.load(id(41)).unwrap().unwrap().get_heads(),
        doc.get_heads()
    );
}

// ---------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------

fn projection_conn() -> Connection {
    let conn = migrated_conn();
    conn.execute_batch("CREATE TABLE projection (doc_id BLOB PRIMARY KEY, title TEXT NOT NULL)")
        .unwrap();
    conn
}

#[test]
fn document_bytes_and_projection_rows_commit_or_roll_back_together() {
    let mut conn = projection_conn();
    let doc = sample_doc(19);
    let changes = doc.get_changes(&[]);

    let tx = conn.transaction().unwrap();
    storage::append_changes(&tx, id(50), "inspection", &changes, NOW).unwrap();
    tx.execute(
        "INSERT INTO projection VALUES (?1, 'Kiểm tra PCCC')",
        [id(50).as_bytes()],
    )
    .unwrap();
    // Visible inside the transaction...
    assert!(storage::exists(&tx, id(50)).unwrap());
    tx.rollback().unwrap();
    // ...and gone without a trace after the rollback.
    assert!(!storage::exists(&conn, id(50)).unwrap());
    assert_eq!(count(&conn, "SELECT count(*) FROM doc_store_changes"), 0);
    assert_eq!(count(&conn, "SELECT count(*) FROM projection"), 0);

    let tx = conn.transaction().unwrap();
    storage::append_changes(&tx, id(50), "inspection", &changes, NOW).unwrap();
    tx.execute(
        "INSERT INTO projection VALUES (?1, 'Kiểm tra PCCC')",
        [id(50).as_bytes()],
    )
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(
        storage::load(&conn, id(50)).unwrap().unwrap().get_heads(),
        doc.get_heads()
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM projection"), 1);
}

#[test]
fn writes_outside_a_transaction_are_refused() {
    let conn = migrated_conn();
    let doc = sample_doc(20);
    assert!(matches!(
        storage::append_changes(&conn, id(51), "inspection", &doc.get_changes(&[]), NOW),
        Err(StorageError::NoTransaction)
    ));
    assert!(matches!(
        storage::save_snapshot(&conn, id(51), "inspection", &doc, NOW),
        Err(StorageError::NoTransaction)
    ));
    assert!(matches!(
        storage::delete(&conn, id(51)),
        Err(StorageError::NoTransaction)
    ));
    assert!(!storage::exists(&conn, id(51)).unwrap());
}

#[test]
fn a_call_failing_half_way_leaves_nothing_even_when_the_batch_commits() {
    let mut conn = projection_conn();
    // Make the third insert of a change fail, as a full disk would.
    conn.execute_batch(
        "CREATE TRIGGER fail_third_change BEFORE INSERT ON doc_store_changes
         WHEN (SELECT count(*) FROM doc_store_changes WHERE doc_id = NEW.doc_id) >= 2
         BEGIN SELECT RAISE(ABORT, 'simulated disk full'); END;",
    )
    .unwrap();
    let mut failing = new_doc(21);
    let failing_changes: Vec<Change> = (0..4).map(|i| edit(&mut failing, "k", i)).collect();
    let mut fine = new_doc(22);
    let fine_change = edit(&mut fine, "k", 1);

    // One group commit holding two documents; the first one's write fails.
    let tx = conn.transaction().unwrap();
    let err = storage::append_changes(&tx, id(52), "action", &failing_changes, NOW).unwrap_err();
    assert!(matches!(err, StorageError::Sqlite(_)), "{err:?}");
    storage::append_changes(&tx, id(53), "action", &[fine_change], NOW).unwrap();
    tx.commit().unwrap();

    assert!(!storage::exists(&conn, id(52)).unwrap());
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM doc_store_changes WHERE doc_id = x'34343434343434343434343434343434'"
        ),
        0
    );
    assert_eq!(
        storage::load(&conn, id(53)).unwrap().unwrap().get_heads(),
        fine.get_heads()
    );
}

// ---------------------------------------------------------------------------
// Kinds, listing, deletion
// ---------------------------------------------------------------------------

#[test]
fn kinds_are_fixed_and_checked() {
    let mut store = DocStore::open_in_memory().unwrap();
    let mut doc = new_doc(23);
    let change = edit(&mut doc, "a", 1);
    store
        .append_changes(id(60), "action", std::slice::from_ref(&change), NOW)
        .unwrap();
    match store.append_changes(id(60), "inspection", &[change], NOW) {
        Err(StorageError::KindMismatch {
            doc_id,
            stored,
            given,
        }) => {
            assert_eq!(doc_id, id(60));
            assert_eq!(stored, "action");
            assert_eq!(given, "inspection");
        }
        other => panic!("expected KindMismatch, got {other:?}"),
    }
    assert!(matches!(
        store.append_changes(id(61), "", &[], NOW),
        Err(StorageError::InvalidKind(_))
    ));
    assert!(matches!(
        store.save_snapshot(id(61), &"x".repeat(65), &doc, NOW),
        Err(StorageError::InvalidKind(_))
    ));
    assert!(!store.exists(id(61)).unwrap());
}

#[test]
fn list_and_delete_cover_every_document() {
    let mut store = DocStore::open_in_memory().unwrap();
    let doc = sample_doc(24);
    store
        .append_changes(id(72), "action", &doc.get_changes(&[]), NOW)
        .unwrap();
    store
        .save_snapshot(id(70), "inspection", &doc, NOW)
        .unwrap();
    store
        .append_changes(id(71), "inspection", &[], NOW)
        .unwrap();

    assert_eq!(
        store.list().unwrap(),
        vec![
            (id(70), "inspection".to_owned()),
            (id(71), "inspection".to_owned()),
            (id(72), "action".to_owned()),
        ]
    );
    assert_eq!(
        store.list_by_kind("inspection").unwrap(),
        vec![id(70), id(71)]
    );
    assert_eq!(
        store.list_by_kind("catalog").unwrap(),
        Vec::<DocumentId>::new()
    );
    // A document created with no changes is an empty automerge document.
    assert!(store.load(id(71)).unwrap().unwrap().get_heads().is_empty());

    assert!(store.delete(id(72)).unwrap());
    assert!(!store.delete(id(72)).unwrap());
    assert!(store.delete(id(70)).unwrap());
    assert_eq!(
        store.list().unwrap(),
        vec![(id(71), "inspection".to_owned())]
    );
    let conn = store.connection();
    assert_eq!(count(conn, "SELECT count(*) FROM doc_store_changes"), 0);
    assert_eq!(
        count(conn, "SELECT count(*) FROM doc_store_snapshot_clock"),
        0
    );
    assert!(store.load(id(72)).unwrap().is_none());
}
