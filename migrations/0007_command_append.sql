-- Appends of commands decided under a credential the service had verified
-- before (a session it checked a moment ago), with that credential checked
-- again in the same transaction, so the common command costs one statement
-- instead of a lookup and then an append.
--
-- Request i carries, beside eventstore_append_set's arguments, the hash of
-- the session token it was decided under and the user and role it was
-- decided as (all NULL when there is nothing to check: the caller checked
-- the credential itself). A request is written only if
--   * its command id has no stored outcome in command_results (a command
--     rejected before is answered with that, not decided again; a command
--     accepted before is the inner functions' 'duplicate'), and
--   * the session still exists for that user, has not ended, expired or
--     gone idle (last seen after p_seen_after), and the user still has that
--     role and is neither locked nor deleted.
-- Otherwise its row has status 'decided' or 'unverified' and nothing of it
-- is written; the caller then handles the command the slow way, which
-- answers from the stored outcome or the credential's current state. Every
-- other request of the batch goes through eventstore_append_set (or, when
-- p_independent is false, eventstore_append_batch) as if alone; rows are
-- those functions' rows, idx referring to the arguments given here.
--
-- The checks run before the streams' locks are taken: a session ended by a
-- transaction that commits while this one runs is concurrent with it, and
-- either order is a valid history. One that committed before this statement
-- began is always seen (READ COMMITTED: each statement takes a new
-- snapshot), which is what "fails the moment session.end is acknowledged"
-- asks.
CREATE FUNCTION command_append_set(
    p_now             timestamptz,
    p_seen_after      timestamptz,
    p_token_hashes    text[],
    p_users           uuid[],
    p_roles           text[],
    p_independent     boolean,
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
-- Per-request index probes whatever the batch size; planned once per
-- session (see command_preflight).
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_blocked     text[];
    v_kept        integer[];
    v_stream_ids  uuid[];
    v_types       text[];
    v_expected    bigint[];
    v_command_ids uuid[];
    v_counts      integer[];
    v_metadata    text[];
    v_event_ids   uuid[];
    v_event_types text[];
    v_versions    integer[];
    v_payloads    bytea[];
BEGIN
    SELECT array_agg(CASE
                         WHEN d.found IS NOT NULL THEN 'decided'
                         WHEN q.token_hash IS NULL OR a.found IS NOT NULL THEN NULL
                         ELSE 'unverified'
                     END ORDER BY q.idx)
      INTO v_blocked
      FROM unnest(p_command_ids, p_token_hashes, p_users, p_roles)
           WITH ORDINALITY AS q(command_id, token_hash, user_id, role, idx)
      LEFT JOIN LATERAL (
            SELECT true AS found FROM command_results r
             WHERE r.command_id = q.command_id
            OFFSET 0) AS d ON true
      LEFT JOIN LATERAL (
            SELECT true AS found
              FROM auth_sessions s
              JOIN auth_users u ON u.user_id = s.user_id
             WHERE s.token_hash = q.token_hash
               AND s.user_id = q.user_id
               AND u.role = q.role
               AND NOT s.ended AND NOT u.locked AND NOT u.deleted
               AND s.expires_at > p_now
               AND s.last_seen >= p_seen_after
            OFFSET 0) AS a ON true;

    IF array_position(v_blocked, 'decided') IS NULL
       AND array_position(v_blocked, 'unverified') IS NULL THEN
        IF p_independent THEN
            RETURN QUERY SELECT a.* FROM eventstore_append_set(
                p_stream_ids, p_stream_types, p_expected, p_command_ids, p_counts, p_metadata,
                p_event_ids, p_event_types, p_schema_versions, p_payloads) AS a;
        ELSE
            RETURN QUERY SELECT a.* FROM eventstore_append_batch(
                p_stream_ids, p_stream_types, p_expected, p_command_ids, p_counts, p_metadata,
                p_event_ids, p_event_types, p_schema_versions, p_payloads) AS a;
        END IF;
        RETURN;
    END IF;

    -- Rare: some requests are held back. The others go on, their arrays
    -- (and their events') taken out in order.
    RETURN QUERY
        SELECT b.i::integer, v_blocked[b.i], p_stream_ids[b.i],
               NULL::bigint, NULL::bigint, NULL::integer, NULL::bigint, NULL::bigint
          FROM generate_subscripts(p_stream_ids, 1) AS b(i)
         WHERE v_blocked[b.i] IS NOT NULL;

    SELECT array_agg(r.i ORDER BY r.i), array_agg(p_stream_ids[r.i] ORDER BY r.i),
           array_agg(p_stream_types[r.i] ORDER BY r.i), array_agg(p_expected[r.i] ORDER BY r.i),
           array_agg(p_command_ids[r.i] ORDER BY r.i), array_agg(p_counts[r.i] ORDER BY r.i),
           array_agg(p_metadata[r.i] ORDER BY r.i)
      INTO v_kept, v_stream_ids, v_types, v_expected, v_command_ids, v_counts, v_metadata
      FROM generate_subscripts(p_stream_ids, 1) AS r(i)
     WHERE v_blocked[r.i] IS NULL;
    IF v_kept IS NULL THEN
        RETURN;
    END IF;

    SELECT array_agg(p_event_ids[o.offs + g.n] ORDER BY o.i, g.n),
           array_agg(p_event_types[o.offs + g.n] ORDER BY o.i, g.n),
           array_agg(p_schema_versions[o.offs + g.n] ORDER BY o.i, g.n),
           array_agg(p_payloads[o.offs + g.n] ORDER BY o.i, g.n)
      INTO v_event_ids, v_event_types, v_versions, v_payloads
      FROM (SELECT r.i, p_counts[r.i] AS cnt,
                   (sum(p_counts[r.i]) OVER (ORDER BY r.i) - p_counts[r.i])::integer AS offs
              FROM generate_subscripts(p_stream_ids, 1) AS r(i)) AS o
      CROSS JOIN LATERAL generate_series(1, o.cnt) AS g(n)
     WHERE v_blocked[o.i] IS NULL;

    IF p_independent THEN
        RETURN QUERY SELECT v_kept[a.idx], a.status, a.out_stream_id, a.first_version,
                            a.last_version, a.generation, a.tx_id, a.seq
          FROM eventstore_append_set(v_stream_ids, v_types, v_expected, v_command_ids, v_counts,
                                     v_metadata, v_event_ids, v_event_types, v_versions,
                                     v_payloads) AS a;
    ELSE
        RETURN QUERY SELECT v_kept[a.idx], a.status, a.out_stream_id, a.first_version,
                            a.last_version, a.generation, a.tx_id, a.seq
          FROM eventstore_append_batch(v_stream_ids, v_types, v_expected, v_command_ids, v_counts,
                                       v_metadata, v_event_ids, v_event_types, v_versions,
                                       v_payloads) AS a;
    END IF;
END;
$$;
