-- Every reader of the log (each projection, a replay of them all, a
-- catch-up) decompresses the payloads PostgreSQL compressed when they were
-- appended: about one event in seven here (a message's text is large
-- enough). pglz, the default, decompressing them was 1.3 % of all CPU in
-- `bench replay`, and compressing them sits in every append. lz4 does
-- both several times faster, as for snapshots (0008). Existing values keep
-- their compression until rewritten (a log's never are); new ones get lz4.
ALTER TABLE events ALTER COLUMN payload SET COMPRESSION lz4;
ALTER TABLE events ALTER COLUMN metadata SET COMPRESSION lz4;
