-- The relational read model, version 4: the seed's nine operational
-- tables, its enum types, indexes, views, row-level security and grants.
--
-- The projector owns this schema: it applies this file to a schema it
-- builds (search_path set to it), so nothing here names `read_model`.
-- A change to the read model is a new version of this file (and of
-- `Kind::schema_version`), which the projector rebuilds blue/green from
-- the log; migrations never alter the read model's tables.
--
-- Version 2: messages and steps are keyed by their parent and their own
-- id (a client chooses those ids, unique only within their aggregate);
-- conversation cost totals are wide enough for any total the domain
-- accepts; sessions keep no token hash (the auth index has it, and the
-- read model holds no credential material).
--
-- Version 3: the seed's session context, conversation model configuration
-- and workflow environment; an index each for a user's conversations by
-- recency (replacing the one by last update, which no query ordered by)
-- and for steps by status and time, and the cursor's tie-breaker in the
-- index of everyone's conversations by recency; an execution's step figures
-- count each step once, by its latest attempt, with retries apart.
--
-- Version 4: indexes on the time columns the time series group by
-- (GET /v1/series/{metric}): messages' and executions' times, incidents'
-- resolution.
--
-- Counters the seed kept with triggers (message counts, token and cost
-- totals, runbook success rates) are written by the projection from the
-- facts the events carry; there are no triggers here.


CREATE TYPE user_role AS ENUM ('admin', 'operator', 'viewer');
CREATE TYPE message_role AS ENUM ('user', 'assistant', 'system', 'tool');
CREATE TYPE conversation_status AS ENUM ('active', 'archived', 'deleted');
CREATE TYPE workflow_status AS ENUM ('draft', 'active', 'inactive', 'deleted');
CREATE TYPE execution_status AS ENUM ('pending', 'running', 'succeeded', 'failed', 'cancelled');
CREATE TYPE step_status AS ENUM ('pending', 'running', 'succeeded', 'failed', 'skipped', 'retrying');
CREATE TYPE incident_severity AS ENUM ('critical', 'high', 'medium', 'low');
CREATE TYPE incident_status AS ENUM ('open', 'investigating', 'mitigated', 'resolved', 'closed');

-- Personal columns (email, display_name, last_login_ip, ip_address,
-- user_agent, title, content, feedback) are NULL once their owner is
-- forgotten; `forgotten_at` says so.
CREATE TABLE users (
    id                    uuid PRIMARY KEY,
    email                 text,
    display_name          text,
    role                  user_role NOT NULL,
    mfa_enabled           boolean NOT NULL DEFAULT false,
    is_locked             boolean NOT NULL DEFAULT false,
    locked_reason         text,
    failed_login_attempts integer NOT NULL DEFAULT 0 CHECK (failed_login_attempts >= 0),
    last_login_at         timestamptz,
    last_login_ip         text,
    active_api_keys       integer NOT NULL DEFAULT 0 CHECK (active_api_keys >= 0),
    preferences           jsonb NOT NULL DEFAULT '{}',
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    deleted_at            timestamptz,
    forgotten_at          timestamptz
);

CREATE TABLE sessions (
    id                 uuid PRIMARY KEY,
    user_id            uuid NOT NULL,
    role               user_role NOT NULL,
    device_fingerprint text,
    ip_address         text,
    user_agent         text,
    started_at         timestamptz NOT NULL,
    last_seen_at       timestamptz NOT NULL,
    expires_at         timestamptz NOT NULL,
    ended_at           timestamptz,
    end_reason         text,
    context            jsonb,
    CHECK (expires_at >= started_at)
);

CREATE TABLE conversations (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL,
    title           text,
    model           text,
    model_config    jsonb,
    status          conversation_status NOT NULL DEFAULT 'active',
    tags            text[] NOT NULL DEFAULT '{}',
    context         jsonb,
    message_count   integer NOT NULL DEFAULT 0 CHECK (message_count >= 0),
    total_tokens    bigint NOT NULL DEFAULT 0 CHECK (total_tokens >= 0),
    -- Wide enough for any total the domain accepts (i64 micro-dollars).
    total_cost_usd  numeric(20, 6) NOT NULL DEFAULT 0 CHECK (total_cost_usd >= 0),
    last_message_at timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    archived_at     timestamptz,
    deleted_at      timestamptz
);

CREATE TABLE messages (
    id              uuid NOT NULL,
    conversation_id uuid NOT NULL REFERENCES conversations (id),
    -- The conversation's owner, so row-level security needs no join.
    user_id         uuid NOT NULL,
    sequence        integer NOT NULL CHECK (sequence >= 1),
    role            message_role NOT NULL,
    content         text,
    tool_calls      jsonb,
    tool_results    jsonb,
    tokens_in       integer NOT NULL DEFAULT 0 CHECK (tokens_in >= 0),
    tokens_out      integer NOT NULL DEFAULT 0 CHECK (tokens_out >= 0),
    cost_usd        numeric(14, 6) NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    rating          smallint CHECK (rating BETWEEN 1 AND 5),
    feedback        text,
    created_at      timestamptz NOT NULL,
    rated_at        timestamptz,
    PRIMARY KEY (conversation_id, id),
    UNIQUE (conversation_id, sequence)
);

CREATE TABLE workflows (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    description text,
    definition  jsonb NOT NULL,
    triggers    jsonb,
    parameters  jsonb,
    tags        text[] NOT NULL DEFAULT '{}',
    environment jsonb NOT NULL DEFAULT '{}',
    version     integer NOT NULL CHECK (version >= 1),
    max_retries integer NOT NULL CHECK (max_retries >= 0),
    status      workflow_status NOT NULL DEFAULT 'draft',
    created_by  uuid,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    deleted_at  timestamptz
);

CREATE TABLE workflow_executions (
    id               uuid PRIMARY KEY,
    workflow_id      uuid NOT NULL,
    workflow_version integer NOT NULL,
    status           execution_status NOT NULL,
    trigger_source   text NOT NULL,
    inputs           jsonb,
    outputs          jsonb,
    error            text,
    priority         smallint NOT NULL,
    max_retries      integer NOT NULL,
    started_by       uuid,
    steps_total      integer NOT NULL DEFAULT 0,
    steps_succeeded  integer NOT NULL DEFAULT 0,
    -- Steps whose latest attempt failed (a retried step is not failed).
    steps_failed     integer NOT NULL DEFAULT 0 CHECK (steps_failed >= 0),
    -- Retries of failed steps, counted apart from the steps themselves.
    step_retries     integer NOT NULL DEFAULT 0 CHECK (step_retries >= 0),
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    duration_ms      bigint CHECK (duration_ms >= 0),
    CHECK (finished_at IS NULL OR finished_at >= started_at)
);

CREATE TABLE step_executions (
    id           uuid NOT NULL,
    execution_id uuid NOT NULL REFERENCES workflow_executions (id),
    name         text NOT NULL,
    status       step_status NOT NULL,
    attempt      integer NOT NULL CHECK (attempt >= 1),
    input        jsonb,
    output       jsonb,
    error        text,
    retryable    boolean,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    duration_ms  bigint CHECK (duration_ms >= 0),
    PRIMARY KEY (execution_id, id)
);

CREATE TABLE incidents (
    id                  uuid PRIMARY KEY,
    title               text NOT NULL,
    description         text NOT NULL,
    severity            incident_severity NOT NULL,
    status              incident_status NOT NULL,
    affected_services   text[] NOT NULL DEFAULT '{}',
    blast_radius        text,
    opened_by           uuid,
    assignee_id         uuid,
    note_count          integer NOT NULL DEFAULT 0,
    mitigation_summary  text,
    root_cause          text,
    remediation_steps   text[],
    reopen_count        integer NOT NULL DEFAULT 0,
    opened_at           timestamptz NOT NULL,
    mitigated_at        timestamptz,
    resolved_at         timestamptz,
    closed_at           timestamptz,
    time_to_mitigate_ms bigint,
    time_to_resolve_ms  bigint,
    updated_at          timestamptz NOT NULL
);

CREATE TABLE runbooks (
    id                 uuid PRIMARY KEY,
    name               text NOT NULL,
    description        text NOT NULL,
    trigger_conditions jsonb NOT NULL,
    steps              text[] NOT NULL,
    tags               text[] NOT NULL DEFAULT '{}',
    version            integer NOT NULL CHECK (version >= 1),
    execution_count    bigint NOT NULL DEFAULT 0,
    success_count      bigint NOT NULL DEFAULT 0 CHECK (success_count <= execution_count),
    success_rate       numeric(5, 2),
    total_duration_ms  bigint NOT NULL DEFAULT 0,
    last_executed_at   timestamptz,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    archived_at        timestamptz
);

-- Dashboard views. security_invoker: the reader's row-level security applies.
CREATE VIEW active_sessions WITH (security_invoker = true) AS
    SELECT id, user_id, role, device_fingerprint, started_at, last_seen_at, expires_at, context
    FROM sessions
    WHERE ended_at IS NULL AND expires_at > now();

CREATE VIEW open_incidents_by_severity WITH (security_invoker = true) AS
    SELECT severity, count(*) AS open_count, min(opened_at) AS oldest_opened_at,
           count(*) FILTER (WHERE assignee_id IS NULL) AS unassigned
    FROM incidents
    WHERE status NOT IN ('resolved', 'closed')
    GROUP BY severity;

CREATE VIEW execution_statistics WITH (security_invoker = true) AS
    SELECT w.id AS workflow_id, w.name,
           count(e.id) AS executions,
           count(e.id) FILTER (WHERE e.status = 'succeeded') AS succeeded,
           count(e.id) FILTER (WHERE e.status = 'failed') AS failed,
           count(e.id) FILTER (WHERE e.status IN ('pending', 'running')) AS running,
           round(avg(e.duration_ms) FILTER (WHERE e.finished_at IS NOT NULL)) AS avg_duration_ms,
           round(100.0 * count(e.id) FILTER (WHERE e.status = 'succeeded')
                 / nullif(count(e.id) FILTER (WHERE e.finished_at IS NOT NULL), 0), 2) AS success_rate
    FROM workflows w
    LEFT JOIN workflow_executions e ON e.workflow_id = w.id
    GROUP BY w.id, w.name;

-- Row-level security: a user reads only their own conversations, messages
-- and sessions; with app.user_id unset, nothing. FORCE: the owner too.
ALTER TABLE conversations ENABLE ROW LEVEL SECURITY;
ALTER TABLE conversations FORCE ROW LEVEL SECURITY;
CREATE POLICY conversations_owner ON conversations USING (user_id = copilot_current_user_id());
ALTER TABLE messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE messages FORCE ROW LEVEL SECURITY;
CREATE POLICY messages_owner ON messages USING (user_id = copilot_current_user_id());
ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY sessions_owner ON sessions USING (user_id = copilot_current_user_id());

DO $$
DECLARE
    s text := current_schema();
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO copilot_readonly, copilot_app, copilot_admin', s);
    -- Only the projector (its owner) writes it.
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO copilot_readonly, copilot_app, copilot_admin', s);
END $$;

-- Indexes by owner stay with their tables even during a rebuild: erasing a
-- forgotten user's data looks rows up by user_id.
CREATE INDEX sessions_user ON sessions (user_id, started_at DESC);
-- A user's conversations newest first, with a tag or not (GET /v1/conversations).
CREATE INDEX conversations_user_created ON conversations (user_id, created_at DESC, id DESC);
CREATE INDEX messages_user_recent ON messages (user_id, created_at DESC);

-- @deferred-indexes
-- Secondary indexes. A rebuild creates them after loading its rows, which
-- is faster than maintaining them row by row.
CREATE UNIQUE INDEX users_email_active ON users (lower(email)) WHERE deleted_at IS NULL AND email IS NOT NULL;
CREATE INDEX users_role ON users (role) WHERE deleted_at IS NULL;
CREATE INDEX users_locked ON users (id) WHERE is_locked;
CREATE INDEX users_last_login ON users (last_login_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX users_preferences ON users USING gin (preferences jsonb_path_ops);
CREATE INDEX sessions_active ON sessions (expires_at) WHERE ended_at IS NULL;
CREATE INDEX sessions_last_seen ON sessions (last_seen_at) WHERE ended_at IS NULL;
CREATE INDEX conversations_active ON conversations (user_id) WHERE status = 'active';
CREATE INDEX conversations_tags ON conversations USING gin (tags);
-- Everyone's conversations newest first (an administrator's list).
CREATE INDEX conversations_created ON conversations (created_at DESC, id DESC);
CREATE INDEX messages_rated ON messages (rating) WHERE rating IS NOT NULL;
CREATE INDEX workflows_name ON workflows (name) WHERE deleted_at IS NULL;
CREATE INDEX workflows_active ON workflows (updated_at DESC) WHERE status = 'active';
CREATE INDEX workflows_tags ON workflows USING gin (tags);
CREATE INDEX workflows_definition ON workflows USING gin (definition jsonb_path_ops);
CREATE INDEX executions_workflow ON workflow_executions (workflow_id, started_at DESC);
CREATE INDEX executions_running ON workflow_executions (priority DESC, started_at) WHERE status IN ('pending', 'running');
CREATE INDEX executions_started_by ON workflow_executions (started_by, started_at DESC);
CREATE INDEX executions_status ON workflow_executions (status, started_at DESC);
CREATE INDEX steps_execution ON step_executions (execution_id, started_at);
CREATE INDEX steps_failed ON step_executions (finished_at DESC) WHERE status = 'failed';
-- Steps by status and time: the running and retrying ones and the oldest
-- of them (GET /v1/dashboard/summary).
CREATE INDEX steps_status_started ON step_executions (status, started_at);
CREATE INDEX incidents_open ON incidents (severity, opened_at DESC) WHERE status NOT IN ('resolved', 'closed');
CREATE INDEX incidents_services ON incidents USING gin (affected_services);
CREATE INDEX incidents_assignee ON incidents (assignee_id) WHERE assignee_id IS NOT NULL;
CREATE INDEX incidents_opened ON incidents (opened_at DESC);
CREATE INDEX incidents_status ON incidents (status, severity);
-- The time series (v4): each metric's time column, for every caller's range.
CREATE INDEX messages_created ON messages (created_at);
CREATE INDEX incidents_resolved ON incidents (resolved_at) WHERE resolved_at IS NOT NULL;
CREATE INDEX executions_started ON workflow_executions (started_at);
CREATE INDEX executions_finished ON workflow_executions (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX runbooks_name ON runbooks (name) WHERE archived_at IS NULL;
CREATE INDEX runbooks_tags ON runbooks USING gin (tags);
CREATE INDEX runbooks_triggers ON runbooks USING gin (trigger_conditions jsonb_path_ops);
