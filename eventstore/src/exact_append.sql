-- The exact set append (see set_append.rs, `exact_statement`): for a batch
-- in which every request appends one event at an exact expected version
-- (0: a new stream) and names its stream and its command id alone. Each
-- event is inserted at its expected version plus one if the expected
-- version is the stream's visible head; the primary key and the command
-- index refuse, one request at a time, what the set append's locks and
-- probes would. Parameters: the ten arrays of AppendArgs ($1 to $10, one
-- event per request, so event i belongs to request i); the caller's checks
-- may use more. Rows as the set append's, with one more status: 'taken',
-- nothing written because the stream is not at the expected version (or
-- is being written) or the command id was appended before; the caller
-- settles those with the full set append.
WITH req AS (
    SELECT r.idx::integer AS idx, r.stream_id, r.stream_type, r.expected, r.command_id,
           r.cnt, r.metadata
      FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::uuid[], $5::integer[], $6::text[])
           WITH ORDINALITY AS r(stream_id, stream_type, expected, command_id, cnt, metadata, idx)
),
-- Every column of req, and `blocked`: NULL to go on, else the status of a
-- request held back (nothing of it is written).
checked AS MATERIALIZED (
{checked}
),
-- No stream locks. An event goes in only on top of a head this statement
-- sees, so the head's transaction committed before this one took its id
-- (taken during the insert, after the snapshot): the stream stays in the
-- global order without the set append's 'stale' check. A concurrent
-- writer of the same version or command id makes the insert wait for it,
-- and if it commits, this request is 'taken'.
ctx AS MATERIALIZED (
    SELECT (SELECT max(g.generation) FROM store_generations g) AS generation,
           pg_current_xact_id()::text::bigint AS tx_id
),
inserted AS (
    INSERT INTO events AS e (stream_id, version, generation, tx_id, event_id, stream_type,
                             event_type, schema_version, payload, metadata,
                             command_id, command_events)
    SELECT c.stream_id, c.expected + 1, ctx.generation, ctx.tx_id, ($7::uuid[])[c.idx],
           c.stream_type, ($8::text[])[c.idx], ($9::integer[])[c.idx], ($10::bytea[])[c.idx],
           c.metadata::jsonb, c.command_id, CASE WHEN c.command_id IS NOT NULL THEN 1 END
      FROM checked c
     CROSS JOIN ctx
     WHERE c.blocked IS NULL AND c.cnt = 1 AND c.expected >= 0
       AND (c.expected = 0
            OR EXISTS (SELECT 1 FROM events p
                        WHERE p.stream_id = c.stream_id AND p.version = c.expected
                       OFFSET 0))
     ORDER BY c.idx
    ON CONFLICT DO NOTHING
    RETURNING e.stream_id, e.version, e.generation, e.tx_id, e.seq
)
SELECT c.idx,
       coalesce(c.blocked, CASE WHEN i.stream_id IS NULL THEN 'taken' ELSE 'ok' END) AS status,
       c.stream_id AS out_stream_id,
       i.version AS first_version,
       i.version AS last_version,
       i.generation,
       i.tx_id,
       i.seq
  FROM checked c
  LEFT JOIN inserted i ON i.stream_id = c.stream_id
 ORDER BY c.idx
