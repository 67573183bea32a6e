-- The command service's inline projections: written in the same transaction
-- as the events they come from, so a token works the moment its
-- session.start is acknowledged and stops working the moment session.end
-- (or a revocation, a lock, a deletion) is.

CREATE TABLE auth_users (
    user_id       uuid PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    role          text NOT NULL,
    password_hash text NOT NULL,
    mfa_secret    text,
    locked        boolean NOT NULL DEFAULT false,
    deleted       boolean NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE auth_sessions (
    token_hash text PRIMARY KEY,
    session_id uuid NOT NULL UNIQUE,
    user_id    uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    ended      boolean NOT NULL DEFAULT false
);
CREATE INDEX auth_sessions_user ON auth_sessions (user_id);

CREATE TABLE auth_api_keys (
    key_id     uuid PRIMARY KEY,
    user_id    uuid NOT NULL,
    key_hash   text NOT NULL,
    scopes     text[] NOT NULL,
    expires_at timestamptz,
    revoked    boolean NOT NULL DEFAULT false
);
CREATE INDEX auth_api_keys_user ON auth_api_keys (user_id);

-- Outcomes of decided commands, so a repeated command id gets the first
-- outcome on either transport and after restarts (and GET /v1/commands/{id}
-- can show it). An accepted command's outcome is its events: the first one
-- carries the command id and how many there were. Only rejections, which
-- append nothing, are stored here.
CREATE TABLE command_results (
    command_id   uuid PRIMARY KEY,
    command_type text NOT NULL,
    actor        text,
    status       text NOT NULL,
    result       jsonb NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

-- Every stored outcome, in the contract's result form (replayed = true).
CREATE VIEW command_outcomes AS
SELECT command_id, result || '{"replayed": true}'::jsonb AS result
  FROM command_results
UNION ALL
SELECT f.command_id,
       jsonb_build_object(
           'command_id', f.command_id,
           'status', 'accepted',
           'replayed', true,
           'aggregate_id', f.stream_id,
           'version', l.version,
           'position', l.generation || '.' || l.tx_id || '.' || l.seq,
           'events', (SELECT jsonb_agg(e.event_type ORDER BY e.version)
                        FROM events e
                       WHERE e.stream_id = f.stream_id
                         AND e.version BETWEEN f.version AND l.version))
  FROM events f
  JOIN events l ON l.stream_id = f.stream_id AND l.version = f.version + f.command_events - 1
 WHERE f.command_id IS NOT NULL;
