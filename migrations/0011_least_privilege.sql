-- Least privilege: the services' own roles, and appends only through
-- functions of the store.
--
-- The set append and the exact set append were statements the services
-- sent themselves, which needed INSERT on `events`; they are functions now,
-- SECURITY DEFINER (owned by the schema's owner, who runs the migrations),
-- and the services' roles can call them but not write `events` directly.
-- Each runs its statement unchanged (one RETURN QUERY, planned once per
-- session: the committer connections force generic plans), with the
-- command service's checks: a request is held back ('decided') when its
-- command id has a stored rejection, and ('unverified') when it names a
-- credential (a session token's hash, or an API key) that no longer holds
-- for that user and role; with NULL credentials only the first applies.
-- Every table is named with its schema, so the caller's search_path
-- cannot substitute another (and no SET clause costs a configuration
-- save and restore on every call of these hot paths).
-- Parameters: the ten arrays of AppendArgs ($1 to $10), the time now
-- ($11), the oldest last-seen time of a session not idle ($12), and per
-- request the token hash, user, role and API key ($13 to $16).

-- The set append (every stream and command id once in the batch).
CREATE FUNCTION eventstore_append_set_checked(
    p_stream_ids      uuid[],
    p_stream_types    text[],
    p_expected        bigint[],
    p_command_ids     uuid[],
    p_counts          integer[],
    p_metadata        text[],
    p_event_ids       uuid[],
    p_event_types     text[],
    p_schema_versions integer[],
    p_payloads        bytea[],
    p_now             timestamptz,
    p_seen_after      timestamptz,
    p_token_hashes    text[],
    p_users           uuid[],
    p_roles           text[],
    p_key_ids         uuid[]
) RETURNS TABLE (
    idx           integer,
    status        text,
    out_stream_id uuid,
    first_version bigint,
    last_version  bigint,
    generation    integer,
    tx_id         bigint,
    seq           bigint
)
LANGUAGE plpgsql SECURITY DEFINER
AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
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
        -- The fast path's checks (guarded.rs), run in the append's own
        -- statement: a request is appended only if its command id has no
        -- stored outcome in command_results (a command rejected before is
        -- answered with that, not decided again; one accepted before is the
        -- append's 'duplicate') and the session it was decided under still
        -- exists for that user, has not ended, expired or gone idle (or the
        -- API key it was decided under is still that user's, not revoked and
        -- not expired), and the user still has that role and is neither locked
        -- nor deleted.
        -- Otherwise it is held back as 'decided' or 'unverified' and the
        -- caller handles the command the slow way.
        -- Each EXISTS ends in OFFSET 0 so it stays a probe of the primary key
        -- per request: without it the generic plan may instead hash a whole
        -- table once per batch (it did for command_results at 2,000 rows,
        -- every statement scanning them all), as the table grows into the
        -- range where the estimate of the batch's size favours that.
        SELECT req.*,
               CASE
                   WHEN EXISTS (SELECT 1 FROM public.command_results r WHERE r.command_id = req.command_id
                                OFFSET 0)
                       THEN 'decided'
                   WHEN g.token_hash IS NULL
                        OR EXISTS (SELECT 1
                                     FROM public.auth_users u
                                    WHERE u.user_id = g.user_id
                                      AND u.role = g.role
                                      AND NOT u.locked AND NOT u.deleted
                                      AND CASE WHEN g.key_id IS NULL
                                          THEN EXISTS (SELECT 1 FROM public.auth_sessions s
                                                        WHERE s.token_hash = g.token_hash
                                                          AND s.user_id = u.user_id
                                                          AND NOT s.ended
                                                          AND s.expires_at > $11::timestamptz
                                                          AND s.last_seen >= $12::timestamptz
                                                       OFFSET 0)
                                          ELSE EXISTS (SELECT 1 FROM public.auth_api_keys k
                                                        WHERE k.key_id = g.key_id
                                                          AND k.user_id = u.user_id
                                                          AND NOT k.revoked
                                                          AND (k.expires_at IS NULL
                                                               OR k.expires_at > $11::timestamptz)
                                                       OFFSET 0)
                                          END
                                    OFFSET 0)
                       THEN NULL
                   ELSE 'unverified'
               END AS blocked
          FROM req
          JOIN unnest($13::text[], $14::uuid[], $15::text[], $16::uuid[])
               WITH ORDINALITY AS g(token_hash, user_id, role, key_id, idx) ON g.idx = req.idx
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
        SELECT (SELECT max(g.generation) FROM public.store_generations g) AS generation,
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
                  FROM public.events f
                  JOIN public.events l ON l.stream_id = f.stream_id
                               AND l.version = f.version + f.command_events - 1
                 WHERE f.command_id = c.command_id AND c.blocked IS NULL
                 OFFSET 0) AS d ON true
          LEFT JOIN LATERAL (
                SELECT e.version, e.generation, e.tx_id FROM public.events e
                 WHERE e.stream_id = c.stream_id AND c.blocked IS NULL
                 ORDER BY e.version DESC LIMIT 1) AS h ON true
    ),
    inserted AS (
        -- In the order of the batch and of each append, so seq (taken per
        -- row) follows the versions.
        INSERT INTO public.events AS e (stream_id, version, generation, tx_id, event_id, stream_type,
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
     ORDER BY d.idx;
END;
$fn$;

-- The exact set append: one event per request at an exact expected
-- version; a request it cannot settle is 'taken' (see eventstore's
-- set_append.rs), and the caller settles it with the set append.
CREATE FUNCTION eventstore_append_exact_checked(
    p_stream_ids      uuid[],
    p_stream_types    text[],
    p_expected        bigint[],
    p_command_ids     uuid[],
    p_counts          integer[],
    p_metadata        text[],
    p_event_ids       uuid[],
    p_event_types     text[],
    p_schema_versions integer[],
    p_payloads        bytea[],
    p_now             timestamptz,
    p_seen_after      timestamptz,
    p_token_hashes    text[],
    p_users           uuid[],
    p_roles           text[],
    p_key_ids         uuid[]
) RETURNS TABLE (
    idx           integer,
    status        text,
    out_stream_id uuid,
    first_version bigint,
    last_version  bigint,
    generation    integer,
    tx_id         bigint,
    seq           bigint
)
LANGUAGE plpgsql SECURITY DEFINER
AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH req AS (
        SELECT r.idx::integer AS idx, r.stream_id, r.stream_type, r.expected, r.command_id,
               r.cnt, r.metadata
          FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::uuid[], $5::integer[], $6::text[])
               WITH ORDINALITY AS r(stream_id, stream_type, expected, command_id, cnt, metadata, idx)
    ),
    -- Every column of req, and `blocked`: NULL to go on, else the status of a
    -- request held back (nothing of it is written).
    checked AS MATERIALIZED (
        -- The fast path's checks (guarded.rs), run in the append's own
        -- statement: a request is appended only if its command id has no
        -- stored outcome in command_results (a command rejected before is
        -- answered with that, not decided again; one accepted before is the
        -- append's 'duplicate') and the session it was decided under still
        -- exists for that user, has not ended, expired or gone idle (or the
        -- API key it was decided under is still that user's, not revoked and
        -- not expired), and the user still has that role and is neither locked
        -- nor deleted.
        -- Otherwise it is held back as 'decided' or 'unverified' and the
        -- caller handles the command the slow way.
        -- Each EXISTS ends in OFFSET 0 so it stays a probe of the primary key
        -- per request: without it the generic plan may instead hash a whole
        -- table once per batch (it did for command_results at 2,000 rows,
        -- every statement scanning them all), as the table grows into the
        -- range where the estimate of the batch's size favours that.
        SELECT req.*,
               CASE
                   WHEN EXISTS (SELECT 1 FROM public.command_results r WHERE r.command_id = req.command_id
                                OFFSET 0)
                       THEN 'decided'
                   WHEN g.token_hash IS NULL
                        OR EXISTS (SELECT 1
                                     FROM public.auth_users u
                                    WHERE u.user_id = g.user_id
                                      AND u.role = g.role
                                      AND NOT u.locked AND NOT u.deleted
                                      AND CASE WHEN g.key_id IS NULL
                                          THEN EXISTS (SELECT 1 FROM public.auth_sessions s
                                                        WHERE s.token_hash = g.token_hash
                                                          AND s.user_id = u.user_id
                                                          AND NOT s.ended
                                                          AND s.expires_at > $11::timestamptz
                                                          AND s.last_seen >= $12::timestamptz
                                                       OFFSET 0)
                                          ELSE EXISTS (SELECT 1 FROM public.auth_api_keys k
                                                        WHERE k.key_id = g.key_id
                                                          AND k.user_id = u.user_id
                                                          AND NOT k.revoked
                                                          AND (k.expires_at IS NULL
                                                               OR k.expires_at > $11::timestamptz)
                                                       OFFSET 0)
                                          END
                                    OFFSET 0)
                       THEN NULL
                   ELSE 'unverified'
               END AS blocked
          FROM req
          JOIN unnest($13::text[], $14::uuid[], $15::text[], $16::uuid[])
               WITH ORDINALITY AS g(token_hash, user_id, role, key_id, idx) ON g.idx = req.idx
    ),
    -- No stream locks. An event goes in only on top of a head this statement
    -- sees, so the head's transaction committed before this one took its id
    -- (taken during the insert, after the snapshot): the stream stays in the
    -- global order without the set append's 'stale' check. A concurrent
    -- writer of the same version or command id makes the insert wait for it,
    -- and if it commits, this request is 'taken'.
    ctx AS MATERIALIZED (
        SELECT (SELECT max(g.generation) FROM public.store_generations g) AS generation,
               pg_current_xact_id()::text::bigint AS tx_id
    ),
    inserted AS (
        INSERT INTO public.events AS e (stream_id, version, generation, tx_id, event_id, stream_type,
                                 event_type, schema_version, payload, metadata,
                                 command_id, command_events)
        SELECT c.stream_id, c.expected + 1, ctx.generation, ctx.tx_id, ($7::uuid[])[c.idx],
               c.stream_type, ($8::text[])[c.idx], ($9::integer[])[c.idx], ($10::bytea[])[c.idx],
               c.metadata::jsonb, c.command_id, CASE WHEN c.command_id IS NOT NULL THEN 1 END
          FROM checked c
         CROSS JOIN ctx
         WHERE c.blocked IS NULL AND c.cnt = 1 AND c.expected >= 0
           AND (c.expected = 0
                OR EXISTS (SELECT 1 FROM public.events p
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
     ORDER BY c.idx;
END;
$fn$;

-- The functions the command service appends through run as their owner.
ALTER FUNCTION eventstore_append(uuid, text, bigint, uuid, uuid[], text[], integer[], bytea[], jsonb, boolean)
    SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION eventstore_append_batch(uuid[], text[], bigint[], uuid[], integer[], text[], uuid[], text[], integer[], bytea[])
    SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION eventstore_append_set(uuid[], text[], bigint[], uuid[], integer[], text[], uuid[], text[], integer[], bytea[])
    SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION command_append_set(timestamptz, timestamptz, text[], uuid[], text[], boolean, uuid[], text[], bigint[], uuid[], integer[], text[], uuid[], text[], integer[], bytea[])
    SECURITY DEFINER SET search_path = public, pg_temp;

-- The services' group roles. `copilot-data migrate` creates the logins
-- named in the services' database URLs and grants each its role; a
-- deployment may also grant them by hand. None is a superuser.
DO $$
BEGIN
    CREATE ROLE copilot_command NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
-- The projector writes every user's rows of the read model (row-level
-- security keys them by owner) and builds its schemas blue/green.
DO $$
BEGIN
    CREATE ROLE copilot_projector NOLOGIN NOSUPERUSER BYPASSRLS NOCREATEDB NOCREATEROLE;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
-- The query service's login reads the auth index and switches to
-- copilot_app or copilot_admin for every request; NOINHERIT, so those two
-- roles' privileges are its only while it acts as one of them.
DO $$
BEGIN
    CREATE ROLE copilot_query NOLOGIN NOINHERIT NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
GRANT copilot_app, copilot_admin TO copilot_query;

-- The app-facing roles (what a request's SQL runs as) read neither the
-- auth index's secrets nor write the log or the audit log.
-- They read; only the services' own roles write (the query API never does).
REVOKE ALL ON auth_users, auth_sessions, auth_api_keys FROM copilot_app, copilot_admin, copilot_readonly;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public FROM copilot_app, copilot_admin;
DO $$
DECLARE
    s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['read_model', 'audit'] LOOP
        IF to_regnamespace(s) IS NOT NULL THEN
            EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA %I FROM copilot_app, copilot_admin', s);
        END IF;
    END LOOP;
END $$;

-- The command service: reads the log and its snapshots, appends only
-- through the functions above, keeps the auth index and the stored
-- rejections (written in the events' transaction), and snapshots.
GRANT USAGE ON SCHEMA public TO copilot_command, copilot_projector, copilot_query;
GRANT SELECT ON events, store_generations, command_outcomes TO copilot_command;
GRANT INSERT ON store_generations TO copilot_command, copilot_projector, copilot_query;
GRANT SELECT, INSERT, UPDATE ON snapshots TO copilot_command;
GRANT SELECT, INSERT ON command_results TO copilot_command;
GRANT SELECT, INSERT, UPDATE, DELETE ON auth_users, auth_sessions, auth_api_keys TO copilot_command;
GRANT EXECUTE ON FUNCTION
    eventstore_append(uuid, text, bigint, uuid, uuid[], text[], integer[], bytea[], jsonb, boolean),
    eventstore_append_batch(uuid[], text[], bigint[], uuid[], integer[], text[], uuid[], text[], integer[], bytea[]),
    eventstore_append_set(uuid[], text[], bigint[], uuid[], integer[], text[], uuid[], text[], integer[], bytea[]),
    eventstore_append_set_checked(uuid[], text[], bigint[], uuid[], integer[], text[], uuid[], text[], integer[], bytea[], timestamptz, timestamptz, text[], uuid[], text[], uuid[]),
    eventstore_append_exact_checked(uuid[], text[], bigint[], uuid[], integer[], text[], uuid[], text[], integer[], bytea[], timestamptz, timestamptz, text[], uuid[], text[], uuid[]),
    command_append_set(timestamptz, timestamptz, text[], uuid[], text[], boolean, uuid[], text[], bigint[], uuid[], integer[], text[], uuid[], text[], integer[], bytea[]),
    command_preflight(uuid[], text[])
    TO copilot_command;
-- PUBLIC may not call what writes the log.
REVOKE EXECUTE ON FUNCTION
    eventstore_append(uuid, text, bigint, uuid, uuid[], text[], integer[], bytea[], jsonb, boolean),
    eventstore_append_batch(uuid[], text[], bigint[], uuid[], integer[], text[], uuid[], text[], integer[], bytea[]),
    eventstore_append_set(uuid[], text[], bigint[], uuid[], integer[], text[], uuid[], text[], integer[], bytea[]),
    eventstore_append_set_checked(uuid[], text[], bigint[], uuid[], integer[], text[], uuid[], text[], integer[], bytea[], timestamptz, timestamptz, text[], uuid[], text[], uuid[]),
    eventstore_append_exact_checked(uuid[], text[], bigint[], uuid[], integer[], text[], uuid[], text[], integer[], bytea[], timestamptz, timestamptz, text[], uuid[], text[], uuid[]),
    command_append_set(timestamptz, timestamptz, text[], uuid[], text[], boolean, uuid[], text[], bigint[], uuid[], integer[], text[], uuid[], text[], integer[], bytea[])
    FROM PUBLIC;

-- The projector: reads the log, keeps its checkpoints, status, errors and
-- schema versions, and owns the schemas it builds (it makes new ones for
-- blue/green rebuilds and drops the retired).
GRANT SELECT ON events, store_generations TO copilot_projector;
GRANT SELECT, INSERT, UPDATE, DELETE ON projection_checkpoints, projection_status,
    projection_errors, projection_schemas TO copilot_projector;
GRANT USAGE ON SEQUENCE projection_errors_id_seq TO copilot_projector;
DO $$
DECLARE
    s text;
    r record;
BEGIN
    EXECUTE format('GRANT CREATE ON DATABASE %I TO copilot_projector', current_database());
    -- The projector owns the read model and the audit log from now on
    -- (the migrations' login must be a member of copilot_projector, as a
    -- superuser or a CREATEROLE login that granted it is).
    FOREACH s IN ARRAY ARRAY['read_model', 'audit'] LOOP
        IF to_regnamespace(s) IS NULL THEN
            CONTINUE;
        END IF;
        EXECUTE format('ALTER SCHEMA %I OWNER TO copilot_projector', s);
        -- Tables, partitions (each has its own owner) and views.
        FOR r IN SELECT c.relname, c.relkind FROM pg_class c
                  WHERE c.relnamespace = to_regnamespace(s)
                    AND c.relkind IN ('r', 'p', 'v') LOOP
            EXECUTE format('ALTER %s %I.%I OWNER TO copilot_projector',
                           CASE r.relkind WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END, s, r.relname);
        END LOOP;
        FOR r IN SELECT t.typname FROM pg_type t
                  WHERE t.typnamespace = to_regnamespace(s) AND t.typtype = 'e' LOOP
            EXECUTE format('ALTER TYPE %I.%I OWNER TO copilot_projector', s, r.typname);
        END LOOP;
    END LOOP;
END $$;

-- The query service's login: the auth index's lookups (never a password
-- hash or an MFA seed; an API key's hash, to check a key), the log's
-- positions and the stored outcomes; everything a request reads it reads
-- as copilot_app or copilot_admin.
GRANT SELECT (token_hash, session_id, user_id, expires_at, last_seen, ended) ON auth_sessions TO copilot_query;
GRANT SELECT (user_id, role, locked, deleted) ON auth_users TO copilot_query;
GRANT SELECT (key_id, user_id, key_hash, scopes, expires_at, revoked) ON auth_api_keys TO copilot_query;
GRANT SELECT ON events, store_generations, projection_checkpoints, projection_status,
    projection_errors, projection_schemas, command_outcomes, command_results TO copilot_query;
