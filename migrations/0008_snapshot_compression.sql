-- A snapshot is rewritten in full each time its stream is due one, and a
-- state can be large (a conversation keeps every message id). pglz, the
-- default, was the largest single cost in PostgreSQL under a command load
-- (6 % of all CPU in `bench commands`); lz4 compresses the same states
-- several times faster. Existing values keep their compression until they
-- are rewritten, which every snapshot soon is.
ALTER TABLE snapshots ALTER COLUMN state SET COMPRESSION lz4;
