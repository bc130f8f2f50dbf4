-- Who each automerge actor belongs to. An actor id is recorded the first
-- time the server stores a change written with it, bound to the user and
-- device of the connection that sent it; from then on a change under that
-- actor from anyone else is refused (rule `actor`). Rows are never updated:
-- the first writer keeps the actor. The server's own actor is not stored
-- here; it is bound in memory at start.
CREATE TABLE actors (
    actor      TEXT PRIMARY KEY NOT NULL,  -- the actor id, lowercase hex
    user_id    TEXT NOT NULL,              -- users.id of the first writer
    device_id  TEXT NOT NULL,              -- the device its token was issued to
    first_seen TEXT NOT NULL               -- RFC 3339, UTC
) STRICT;

CREATE INDEX actors_by_user ON actors (user_id);
