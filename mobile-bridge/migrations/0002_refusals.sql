-- Actors, the unit of unit accounts, and work the server refused.

-- The unit a unit account speaks for (from `GET /api/v1/me`): part of the
-- identity local edits are checked with.
ALTER TABLE device_session ADD COLUMN unit_code TEXT;

-- Every automerge actor this store has written with. Each opening of the
-- store (and each login) writes with a fresh random actor, recorded here on
-- its first edit: a restored copy of the store never reuses an actor, so it
-- never reuses a sequence number the server already holds. "Unsynced
-- changes" are the changes of these actors the server has not confirmed.
CREATE TABLE device_actors (
    actor            TEXT    NOT NULL PRIMARY KEY,
    first_used_at_ms INTEGER NOT NULL
) STRICT;

-- Stores from before per-opening actors wrote with one actor, kept here.
INSERT INTO device_actors (actor, first_used_at_ms)
    SELECT value, 0 FROM device_settings WHERE key = 'actor';

-- One row per time the server refused changes of a document: the heads the
-- server held right after it stored the rest, and its summary.
CREATE TABLE refusals (
    id            INTEGER NOT NULL PRIMARY KEY,
    doc_id        TEXT    NOT NULL,
    server_heads  TEXT    NOT NULL,
    message       TEXT    NOT NULL,
    refused_at_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX refusals_doc ON refusals (doc_id, id);

-- The local changes that were not in the server's history at a refusal
-- (everything not reachable from its heads), byte for byte. The document
-- is rebuilt without them; they are never deleted. Rule, path and reason
-- are the server's, when it named the change.
CREATE TABLE refused_changes (
    doc_id        TEXT    NOT NULL,
    hash          TEXT    NOT NULL,
    refusal_id    INTEGER NOT NULL REFERENCES refusals (id),
    data          BLOB    NOT NULL,
    rule          TEXT,
    path          TEXT,
    reason        TEXT,
    refused_at_ms INTEGER NOT NULL,
    PRIMARY KEY (doc_id, hash)
) STRICT;

CREATE INDEX refused_changes_refusal ON refused_changes (refusal_id);

-- The pieces of work (an answer, a finding, a photo, a submission) of each
-- refusal and what became of them: `rebased` (written again on top of the
-- server's state), `open` (cannot be written again without a person: the
-- reason says why), `pending` (not worked out yet, e.g. a template is
-- missing; retried after each sync).
CREATE TABLE refused_work (
    refusal_id    INTEGER NOT NULL REFERENCES refusals (id),
    piece         TEXT    NOT NULL,
    doc_id        TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    label         TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'open', 'rebased')),
    rule          TEXT,
    path          TEXT,
    reason        TEXT    NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (refusal_id, piece)
) STRICT;

CREATE INDEX refused_work_state ON refused_work (state, doc_id);
