-- The set append as one statement (see set_append.rs): the batch's
-- requests name every stream and every command id at most once, so each is
-- decided on its own and all are inserted by one INSERT. Parameters: the
-- ten arrays of AppendArgs ($1 to $10); the caller's checks may use more.
-- Rows and statuses are those of eventstore_append_set (migration 0006),
-- plus the caller's own statuses for requests it holds back.
WITH req AS (
    SELECT r.idx::integer AS idx, r.stream_id, r.stream_type, r.expected, r.command_id,
           r.cnt, r.metadata,
           (sum(r.cnt) OVER (ORDER BY r.idx) - r.cnt)::integer AS offs
      FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::uuid[], $5::integer[], $6::text[])
           WITH ORDINALITY AS r(stream_id, stream_type, expected, command_id, cnt, metadata, idx)
),
-- Every column of req, and `blocked`: NULL to go on, else the status of a
-- request held back (nothing of it is locked or written).
checked AS MATERIALIZED (
{checked}
),
-- The streams' locks in the one global order every writer uses. Every row
-- of `decided` needs ctx, which needs all of them, so no insert starts
-- before the last lock is held. This statement's snapshot was taken before
-- them, though: if a writer of one of these streams committed while we
-- waited, our head is behind and the insert hits events_pkey; the caller
-- runs the statement again (a new snapshot), see set_append.rs.
locks AS MATERIALIZED (
    SELECT count(pg_advisory_xact_lock(k.k)) AS n
      FROM (SELECT hashtextextended(c.stream_id::text, 0) AS k
              FROM checked c WHERE c.blocked IS NULL ORDER BY 1) AS k
),
ctx AS MATERIALIZED (
    SELECT (SELECT max(g.generation) FROM store_generations g) AS generation,
           pg_current_xact_id()::text::bigint AS tx_id
      FROM locks
),
decided AS (
    SELECT c.*, h.version AS head_version, ctx.generation AS v_generation, ctx.tx_id AS v_tx,
           d.stream_id AS dup_stream, d.first_version AS dup_first, d.last_version AS dup_last,
           d.generation AS dup_generation, d.tx_id AS dup_tx, d.seq AS dup_seq,
           CASE
               WHEN c.blocked IS NOT NULL THEN c.blocked
               WHEN d.stream_id IS NOT NULL THEN 'duplicate'
               WHEN c.expected >= 0 AND coalesce(h.version, 0) <> c.expected THEN 'conflict'
               WHEN h.version IS NOT NULL
                    AND (h.generation, h.tx_id) > (ctx.generation, ctx.tx_id) THEN 'stale'
               ELSE 'ok'
           END AS status
      FROM checked c
      CROSS JOIN ctx
      LEFT JOIN LATERAL (
            SELECT f.stream_id, f.version AS first_version, l.version AS last_version,
                   l.generation, l.tx_id, l.seq
              FROM events f
              JOIN events l ON l.stream_id = f.stream_id
                           AND l.version = f.version + f.command_events - 1
             WHERE f.command_id = c.command_id AND c.blocked IS NULL
             OFFSET 0) AS d ON true
      LEFT JOIN LATERAL (
            SELECT e.version, e.generation, e.tx_id FROM events e
             WHERE e.stream_id = c.stream_id AND c.blocked IS NULL
             ORDER BY e.version DESC LIMIT 1) AS h ON true
),
inserted AS (
    -- In the order of the batch and of each append, so seq (taken per
    -- row) follows the versions.
    INSERT INTO events AS e (stream_id, version, generation, tx_id, event_id, stream_type,
                             event_type, schema_version, payload, metadata,
                             command_id, command_events)
    SELECT d.stream_id, coalesce(d.head_version, 0) + ev.ord, d.v_generation, d.v_tx,
           ($7::uuid[])[d.offs + ev.ord], d.stream_type, ($8::text[])[d.offs + ev.ord],
           ($9::integer[])[d.offs + ev.ord], ($10::bytea[])[d.offs + ev.ord], d.metadata::jsonb,
           CASE WHEN ev.ord = 1 THEN d.command_id END,
           CASE WHEN ev.ord = 1 AND d.command_id IS NOT NULL THEN d.cnt END
      FROM decided d
      CROSS JOIN LATERAL generate_series(1, d.cnt) AS ev(ord)
     WHERE d.status = 'ok'
     ORDER BY d.idx, ev.ord
    RETURNING e.stream_id, e.version, e.seq
)
SELECT d.idx,
       d.status,
       coalesce(d.dup_stream, d.stream_id) AS out_stream_id,
       CASE d.status WHEN 'ok' THEN coalesce(d.head_version, 0) + 1
                     WHEN 'duplicate' THEN d.dup_first END AS first_version,
       CASE d.status WHEN 'ok' THEN coalesce(d.head_version, 0) + d.cnt
                     WHEN 'duplicate' THEN d.dup_last
                     WHEN 'conflict' THEN d.head_version
                     WHEN 'stale' THEN d.head_version END AS last_version,
       CASE d.status WHEN 'ok' THEN d.v_generation WHEN 'duplicate' THEN d.dup_generation END
           AS generation,
       CASE d.status WHEN 'ok' THEN d.v_tx WHEN 'duplicate' THEN d.dup_tx END AS tx_id,
       CASE d.status WHEN 'ok' THEN i.seq WHEN 'duplicate' THEN d.dup_seq END AS seq
  FROM decided d
  LEFT JOIN inserted i ON d.status = 'ok'
                      AND i.stream_id = d.stream_id
                      AND i.version = coalesce(d.head_version, 0) + d.cnt
 ORDER BY d.idx
