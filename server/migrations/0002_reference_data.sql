-- Reference data: administrative units (both structures) and departments.

-- GSO codes are reused across structures (post 00004 is Phường Ba Đình, pre
-- 00004 is Phường Trúc Bạch), so a unit is keyed on (structure, code).
CREATE TABLE units (
    structure   TEXT NOT NULL CHECK (structure IN ('pre_2025', 'post_2025')),
    code        TEXT NOT NULL,
    name        TEXT NOT NULL,
    full_name   TEXT NOT NULL,
    type        TEXT NOT NULL,
    parent_code TEXT,
    name_en     TEXT NOT NULL,
    PRIMARY KEY (structure, code)
) STRICT;

CREATE INDEX units_by_type ON units (structure, type);

CREATE TABLE departments (
    code    TEXT PRIMARY KEY NOT NULL,
    name    TEXT NOT NULL,
    name_en TEXT NOT NULL,
    kind    TEXT NOT NULL,
    note    TEXT NOT NULL DEFAULT '',
    source  TEXT NOT NULL DEFAULT ''
) STRICT;
