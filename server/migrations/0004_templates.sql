-- Published checklist templates. A version, once published, never changes:
-- inspections record `template_id@version`, and the meaning of their answers
-- is fixed by it. `json` is the canonical JSON (sorted keys, no whitespace)
-- whose sha256 is `sha256`.
CREATE TABLE templates (
    template_id  TEXT NOT NULL,
    version      INTEGER NOT NULL CHECK (version >= 1),
    sha256       TEXT NOT NULL,
    json         TEXT NOT NULL,
    title        TEXT NOT NULL,
    published_at TEXT NOT NULL,
    PRIMARY KEY (template_id, version)
) STRICT;

CREATE TRIGGER templates_immutable BEFORE UPDATE ON templates
BEGIN
    SELECT RAISE(ABORT, 'published templates are immutable; publish a new version');
END;
