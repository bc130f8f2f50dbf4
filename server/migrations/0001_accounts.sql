-- Accounts: deployment settings, teams, users and refresh tokens.

-- Deployment-wide key/value settings (for example `mode` = demo | standard).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE teams (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
) STRICT;

CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    username      TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    role          TEXT NOT NULL
                  CHECK (role IN ('admin', 'secretariat', 'inspector', 'unit', 'leader')),
    team_id       TEXT REFERENCES teams (id),
    -- A commune/ward code (post_2025 structure) or a department code; checked
    -- by the application because units are keyed on (structure, code).
    unit_code     TEXT,
    disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    CHECK (role <> 'unit' OR unit_code IS NOT NULL),
    CHECK (role <> 'inspector' OR team_id IS NOT NULL)
) STRICT;

-- Opaque rotating refresh tokens, stored as sha256 of the token. A family is
-- one login of one device; reusing a rotated token revokes the family.
CREATE TABLE refresh_tokens (
    token_hash BLOB PRIMARY KEY NOT NULL,
    family_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id),
    device_id  TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    revoked_at INTEGER
) STRICT;

CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens (user_id);
