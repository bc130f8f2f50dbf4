-- The tablet's own tables, next to sync-core's document store tables
-- (doc_store_*) in the same database file.

-- Small facts about this device and its user: device id, automerge actor,
-- server URL, the user's index and catalog documents.
CREATE TABLE device_settings (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- The one session (at most one row). Tokens are cleared when the server
-- refuses them; the user fields stay, so offline edits keep their author.
CREATE TABLE device_session (
    id                   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    server_url           TEXT    NOT NULL,
    username             TEXT    NOT NULL,
    user_id              TEXT    NOT NULL,
    role                 TEXT    NOT NULL,
    team_id              TEXT,
    access_token         TEXT,
    access_expires_at_ms INTEGER,
    refresh_token        TEXT,
    updated_at_ms        INTEGER NOT NULL
) STRICT;

-- Photos taken on this device (bytes in blobs/<sha256>) and how far each
-- upload got. A photo stays here after upload so it can be resent if the
-- server reports it missing.
CREATE TABLE device_photos (
    sha256          TEXT    NOT NULL PRIMARY KEY,
    inspection_id   TEXT    NOT NULL,
    mime            TEXT    NOT NULL,
    bytes           INTEGER NOT NULL CHECK (bytes >= 0),
    added_at_ms     INTEGER NOT NULL,
    upload_url      TEXT,
    uploaded_offset INTEGER NOT NULL DEFAULT 0 CHECK (uploaded_offset >= 0),
    uploaded_at_ms  INTEGER,
    last_error      TEXT
) STRICT;

CREATE INDEX device_photos_pending ON device_photos (uploaded_at_ms, added_at_ms);

-- Per document, the heads both sides held when a sync last finished: the
-- local changes not reachable from them are what the server has not seen.
CREATE TABLE device_sync_marks (
    doc_id       TEXT    NOT NULL PRIMARY KEY,
    heads        TEXT    NOT NULL,
    synced_at_ms INTEGER NOT NULL
) STRICT;

-- Templates fetched over HTTP when the catalog document lacks them.
CREATE TABLE device_templates (
    key  TEXT NOT NULL PRIMARY KEY,
    json TEXT NOT NULL
) STRICT;
