-- Group commit, set-based. eventstore_append_batch (0001) runs
-- eventstore_append once per request: five statements each, whose executor
-- start-up and per-statement overhead were most of an append's cost. When
-- a batch names every stream and every command id at most once (what group
-- commit sees almost always, and what the caller checks before choosing
-- this function), no request depends on another, so all of them are
-- decided and their events inserted by one statement, after one that takes
-- the streams' locks in the global order. Arguments and outcomes are those
-- of eventstore_append_batch (see eventstore_append for each status).
CREATE FUNCTION eventstore_append_set(
    p_stream_ids      uuid[],
    p_stream_types    text[],
    p_expected        bigint[],
    p_command_ids     uuid[],
    p_counts          integer[],
    p_metadata        text[],
    p_event_ids       uuid[],
    p_event_types     text[],
    p_schema_versions integer[],
    p_payloads        bytea[]
) RETURNS TABLE (
    idx           integer,
    status        text,
    out_stream_id uuid,
    first_version bigint,
    last_version  bigint,
    generation    integer,
    tx_id         bigint,
    seq           bigint
) LANGUAGE plpgsql
-- Generic plans: the statement below is planned once per session, not for
-- every call (its lookups are per-request index probes whatever the sizes).
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    PERFORM count(pg_advisory_xact_lock(k))
       FROM (SELECT hashtextextended(s::text, 0) AS k
               FROM unnest(p_stream_ids) AS s ORDER BY k) AS keys;

    RETURN QUERY
    WITH ctx AS MATERIALIZED (
        -- After the locks (this statement's snapshot is taken after them),
        -- as in eventstore_append.
        SELECT (SELECT max(g.generation) FROM store_generations g) AS generation,
               pg_current_xact_id()::text::bigint AS tx_id
    ),
    req AS (
        SELECT r.idx::integer AS idx, r.stream_id, r.stream_type, r.expected, r.command_id,
               r.cnt, r.metadata,
               (sum(r.cnt) OVER (ORDER BY r.idx) - r.cnt)::integer AS offs
          FROM unnest(p_stream_ids, p_stream_types, p_expected, p_command_ids, p_counts, p_metadata)
               WITH ORDINALITY AS r(stream_id, stream_type, expected, command_id, cnt, metadata, idx)
    ),
    decided AS (
        SELECT req.*, h.version AS head_version, ctx.generation AS v_generation, ctx.tx_id AS v_tx,
               d.stream_id AS dup_stream, d.first_version AS dup_first, d.last_version AS dup_last,
               d.generation AS dup_generation, d.tx_id AS dup_tx, d.seq AS dup_seq,
               CASE
                   WHEN d.stream_id IS NOT NULL THEN 'duplicate'
                   WHEN req.expected >= 0 AND coalesce(h.version, 0) <> req.expected THEN 'conflict'
                   WHEN h.version IS NOT NULL
                        AND (h.generation, h.tx_id) > (ctx.generation, ctx.tx_id) THEN 'stale'
                   ELSE 'ok'
               END AS status
          FROM req
          CROSS JOIN ctx
          LEFT JOIN LATERAL (
                SELECT f.stream_id, f.version AS first_version, l.version AS last_version,
                       l.generation, l.tx_id, l.seq
                  FROM events f
                  JOIN events l ON l.stream_id = f.stream_id
                               AND l.version = f.version + f.command_events - 1
                 WHERE f.command_id = req.command_id AND f.command_id IS NOT NULL
                 OFFSET 0) AS d ON true
          LEFT JOIN LATERAL (
                SELECT e.version, e.generation, e.tx_id FROM events e
                 WHERE e.stream_id = req.stream_id
                 ORDER BY e.version DESC LIMIT 1) AS h ON true
    ),
    inserted AS (
        -- Rows go in in the order of the batch and of each append, so seq
        -- (taken per row) follows the versions.
        INSERT INTO events AS e (stream_id, version, generation, tx_id, event_id, stream_type,
                                 event_type, schema_version, payload, metadata,
                                 command_id, command_events)
        SELECT d.stream_id, coalesce(d.head_version, 0) + ev.ord, d.v_generation, d.v_tx,
               p_event_ids[d.offs + ev.ord], d.stream_type, p_event_types[d.offs + ev.ord],
               p_schema_versions[d.offs + ev.ord], p_payloads[d.offs + ev.ord], d.metadata::jsonb,
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
           coalesce(d.dup_stream, d.stream_id),
           CASE d.status WHEN 'ok' THEN coalesce(d.head_version, 0) + 1
                         WHEN 'duplicate' THEN d.dup_first END,
           CASE d.status WHEN 'ok' THEN coalesce(d.head_version, 0) + d.cnt
                         WHEN 'duplicate' THEN d.dup_last
                         ELSE d.head_version END,
           CASE d.status WHEN 'ok' THEN d.v_generation WHEN 'duplicate' THEN d.dup_generation END,
           CASE d.status WHEN 'ok' THEN d.v_tx WHEN 'duplicate' THEN d.dup_tx END,
           CASE d.status WHEN 'ok' THEN i.seq WHEN 'duplicate' THEN d.dup_seq END
      FROM decided d
      LEFT JOIN inserted i ON d.status = 'ok'
                          AND i.stream_id = d.stream_id
                          AND i.version = coalesce(d.head_version, 0) + d.cnt
     ORDER BY d.idx;
END;
$$;
