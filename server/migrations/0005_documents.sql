-- Projections of the automerge documents (rebuilt from them by a reindex)
-- and the deployment's well-known documents.

-- One row per inspection document, rewritten in the same transaction as the
-- document's bytes.
CREATE TABLE inspections (
    id               TEXT PRIMARY KEY NOT NULL,  -- bs58check document id
    unit_code        TEXT NOT NULL,
    unit_name        TEXT NOT NULL,
    team_id          TEXT NOT NULL,
    template_id      TEXT NOT NULL,
    template_version INTEGER NOT NULL,
    scheduled_date   TEXT NOT NULL,              -- YYYY-MM-DD, local calendar
    status           TEXT NOT NULL
                     CHECK (status IN ('scheduled', 'in_progress', 'submitted', 'returned', 'accepted')),
    answers          INTEGER NOT NULL DEFAULT 0,
    findings         INTEGER NOT NULL DEFAULT 0,
    photos           INTEGER NOT NULL DEFAULT 0,
    conflicts        INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX inspections_by_team ON inspections (team_id);
CREATE INDEX inspections_by_unit ON inspections (unit_code);

CREATE TABLE inspection_members (
    inspection_id TEXT NOT NULL REFERENCES inspections (id) ON DELETE CASCADE,
    user_id       TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('lead', 'member')),
    PRIMARY KEY (inspection_id, user_id)
) STRICT;

CREATE INDEX inspection_members_by_user ON inspection_members (user_id);

-- The photos (sha256) each inspection references: who may fetch a blob is
-- decided from here.
CREATE TABLE inspection_photos (
    inspection_id TEXT NOT NULL REFERENCES inspections (id) ON DELETE CASCADE,
    sha256        TEXT NOT NULL,
    PRIMARY KEY (inspection_id, sha256)
) STRICT;

CREATE INDEX inspection_photos_by_sha ON inspection_photos (sha256);

-- Each user's `index` document (what their device holds offline).
CREATE TABLE user_index_docs (
    user_id TEXT PRIMARY KEY NOT NULL REFERENCES users (id),
    doc_id  TEXT NOT NULL UNIQUE
) STRICT;
