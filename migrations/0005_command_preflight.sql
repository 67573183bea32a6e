-- What the command service reads before deciding a command, for a batch of
-- commands at once: whether each already has an outcome (its id is in
-- command_results or on an event) and, for a session token's hash, the
-- session and its user (NULLs when there is none). One row per command, in
-- the order given (idx from 1).
--
-- Every lookup is a LATERAL subquery that the planner cannot flatten
-- (OFFSET 0 / LIMIT), so it stays an index probe per command, and the plan
-- is generic, made once per session: left to the plan cache, a query over
-- arrays is planned anew on every call (its custom plans, which see the
-- arrays' length, look cheaper than a generic one), and planning cost more
-- than the probes; a generic plan of a plain join could hash whole tables.
CREATE FUNCTION command_preflight(p_command_ids uuid[], p_token_hashes text[])
RETURNS TABLE (
    idx        integer,
    decided    boolean,
    user_id    uuid,
    role       text,
    expires_at timestamptz,
    last_seen  timestamptz,
    ended      boolean,
    locked     boolean,
    deleted    boolean
) LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT q.idx::integer, d.found IS NOT NULL,
           a.user_id, a.role, a.expires_at, a.last_seen, a.ended, a.locked, a.deleted
      FROM unnest(p_command_ids, p_token_hashes) WITH ORDINALITY AS q(command_id, token_hash, idx)
      LEFT JOIN LATERAL (
            SELECT true AS found FROM command_results r WHERE r.command_id = q.command_id
            UNION ALL
            SELECT true FROM events e WHERE e.command_id = q.command_id AND e.command_id IS NOT NULL
            LIMIT 1) AS d ON true
      LEFT JOIN LATERAL (
            SELECT s.user_id, u.role, s.expires_at, s.last_seen, s.ended, u.locked, u.deleted
              FROM auth_sessions s
              LEFT JOIN auth_users u ON u.user_id = s.user_id
             WHERE s.token_hash = q.token_hash
            OFFSET 0) AS a ON true
     ORDER BY q.idx;
END;
$$;
