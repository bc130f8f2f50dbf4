-- Photos and evidence: unfinished tus uploads and the content-addressed
-- blobs they become. The bytes live in the blob store (files under the data
-- folder by default); these tables hold what the server knows about them.

-- One row per tus upload, from creation until it expires. The row, not the
-- temporary file, is the authority on how many bytes were received:
-- `upload_offset` moves only after those bytes were written and fsynced.
CREATE TABLE uploads (
    id            TEXT PRIMARY KEY NOT NULL,       -- 32 lowercase hex digits
    user_id       TEXT NOT NULL REFERENCES users (id),
    length        INTEGER NOT NULL CHECK (length > 0),
    upload_offset INTEGER NOT NULL DEFAULT 0
                  CHECK (upload_offset >= 0 AND upload_offset <= length),
    sha256        TEXT NOT NULL CHECK (length(sha256) = 64),
    filename      TEXT,                            -- as the client named it; never a path
    mime          TEXT,                            -- as the client declared it
    metadata      TEXT,                            -- Upload-Metadata as sent, echoed by HEAD
    created_at    INTEGER NOT NULL,                -- unix seconds
    expires_at    INTEGER NOT NULL,                -- unix seconds
    completed_at  INTEGER                          -- set when the blob was stored
) STRICT;

CREATE INDEX uploads_by_expiry ON uploads (expires_at);
CREATE INDEX uploads_by_user ON uploads (user_id);

-- One row per stored original. Capture time and position come from EXIF,
-- read before any re-encoding (derived images carry no metadata).
CREATE TABLE blobs (
    sha256      TEXT PRIMARY KEY NOT NULL CHECK (length(sha256) = 64),
    mime        TEXT NOT NULL,                    -- sniffed from the bytes
    bytes       INTEGER NOT NULL CHECK (bytes > 0),
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    taken_at    TEXT,                             -- EXIF DateTimeOriginal, `YYYY-MM-DDTHH:MM:SS[±HH:MM]`
    gps_lat     REAL CHECK (gps_lat BETWEEN -90 AND 90),
    gps_lon     REAL CHECK (gps_lon BETWEEN -180 AND 180),
    uploaded_by TEXT NOT NULL REFERENCES users (id), -- the first uploader
    created_at  TEXT NOT NULL
) STRICT;

-- Everyone who uploaded the bytes of a blob (uploads are deduplicated by
-- hash): an uploader may always read back what they sent.
CREATE TABLE blob_uploaders (
    sha256      TEXT NOT NULL REFERENCES blobs (sha256),
    user_id     TEXT NOT NULL REFERENCES users (id),
    uploaded_at TEXT NOT NULL,
    PRIMARY KEY (sha256, user_id)
) STRICT, WITHOUT ROWID;
