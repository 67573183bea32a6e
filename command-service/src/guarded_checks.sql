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
               WHEN EXISTS (SELECT 1 FROM command_results r WHERE r.command_id = req.command_id
                            OFFSET 0)
                   THEN 'decided'
               WHEN g.token_hash IS NULL
                    OR EXISTS (SELECT 1
                                 FROM auth_users u
                                WHERE u.user_id = g.user_id
                                  AND u.role = g.role
                                  AND NOT u.locked AND NOT u.deleted
                                  AND CASE WHEN g.key_id IS NULL
                                      THEN EXISTS (SELECT 1 FROM auth_sessions s
                                                    WHERE s.token_hash = g.token_hash
                                                      AND s.user_id = u.user_id
                                                      AND NOT s.ended
                                                      AND s.expires_at > $11::timestamptz
                                                      AND s.last_seen >= $12::timestamptz
                                                   OFFSET 0)
                                      ELSE EXISTS (SELECT 1 FROM auth_api_keys k
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
