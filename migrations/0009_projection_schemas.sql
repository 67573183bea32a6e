-- The version of the schema each SQL projection's live tables were built
-- with. From here on the projector owns those schemas (projector/schema/):
-- a read-model change is a new version there, which the projector rebuilds
-- blue/green from the log and records here; no migration alters them.
-- The schemas migrations 0003 and 0004 created are version 1.
CREATE TABLE projection_schemas (
    projection text PRIMARY KEY,
    version    integer NOT NULL CHECK (version >= 1),
    built_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO projection_schemas (projection, version) VALUES ('relational', 1), ('audit', 1);
GRANT SELECT ON projection_schemas TO copilot_readonly, copilot_app;
GRANT SELECT, INSERT, UPDATE ON projection_schemas TO copilot_admin;
