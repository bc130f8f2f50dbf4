-- Document store, schema version 1.
--
-- Tables are STRICT so every column holds the type it declares, even if the
-- database is edited by hand or damaged; reads then only have to check
-- contents, never types.
--
-- Append-only: once released, this file never changes. A new schema version
-- is a new file appended to `MIGRATIONS` in `storage/schema.rs`.

-- One row per document. `snapshot` is `Automerge::save()` output (NULL until
-- the first compaction); `snapshot_heads` is the concatenation of the
-- snapshot's sorted 32-byte head hashes, checked on load. `change_count` and
-- `bytes_incremental` describe the rows of `doc_store_changes` for this
-- document and drive the compaction policy without scanning them.
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

-- Incremental changes not yet folded into the snapshot, in arrival order
-- (`seq` is local to this table, not automerge's). `data` is one change's raw
-- bytes. UNIQUE (doc_id, hash) makes storing a change twice a no-op;
-- UNIQUE (doc_id, actor, actor_seq) keeps out a second, different change
-- claiming the same actor sequence number, which automerge refuses to load
-- and which would make the whole document unreadable.
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

-- For each actor, the highest sequence number contained in the snapshot.
-- Automerge numbers each actor's changes 1, 2, 3, ... and a document that
-- holds change n of an actor holds all earlier ones, so a change whose seq is
-- at or below this number is already in the snapshot: appending it again is a
-- no-op even after its incremental row was compacted away.
CREATE TABLE doc_store_snapshot_clock (
    doc_id  BLOB    NOT NULL REFERENCES doc_store_documents (doc_id) ON DELETE CASCADE,
    actor   BLOB    NOT NULL,
    max_seq INTEGER NOT NULL CHECK (max_seq > 0),
    PRIMARY KEY (doc_id, actor)
) STRICT;
