-- The audit log's schema, version 1: one row per event, partitioned by
-- month, append-only (the trigger refuses UPDATE, DELETE and TRUNCATE).
-- The projector applies it to a schema it builds (search_path set to it);
-- the functions it calls (audit_ensure_partition, audit_refuse_change)
-- are shared by every audit schema and live in migration 0004.


CREATE TABLE audit_logs (
    id             uuid NOT NULL,          -- the event's id
    occurred_at    timestamptz NOT NULL,   -- when the event was recorded
    actor          text,                   -- user id, 'bootstrap' or 'system'
    actor_user_id  uuid,
    action         text NOT NULL,          -- the event type
    resource_type  text NOT NULL,          -- the stream type
    resource_id    uuid NOT NULL,          -- the stream id
    version        bigint NOT NULL,        -- the stream version of the event
    before         jsonb,                  -- what the event says was there before
    after          jsonb NOT NULL,         -- the event's facts, personal data redacted
    ip_address     text,
    user_agent     text,
    correlation_id uuid,
    command_id     uuid,
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);

CREATE TABLE audit_logs_default PARTITION OF audit_logs DEFAULT;

CREATE TRIGGER audit_logs_append_only
    BEFORE UPDATE OR DELETE ON audit_logs
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_logs_no_truncate
    BEFORE TRUNCATE ON audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

DO $$
DECLARE
    s text := current_schema();
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO copilot_readonly, copilot_app, copilot_admin', s);
    EXECUTE format('GRANT SELECT ON %I.audit_logs TO copilot_readonly', s);
    -- Only the projector (its owner) writes it.
    EXECUTE format('GRANT SELECT ON %I.audit_logs TO copilot_app, copilot_admin', s);
    -- The months around now, so the first writes find their partition.
    FOR i IN -1..3 LOOP
        PERFORM audit_ensure_partition(s, (date_trunc('month', now()) + make_interval(months => i))::date);
    END LOOP;
END $$;

-- By actor: also what erasing a forgotten user's addresses looks rows up
-- by, during a rebuild too, so it is kept from the start (created after the
-- load it would make each erasure a scan of everything loaded so far).
CREATE INDEX audit_logs_actor ON audit_logs (actor_user_id, occurred_at DESC);

-- @deferred-indexes
-- Secondary indexes. A rebuild creates them after loading its rows, which
-- is faster than maintaining them row by row.
CREATE INDEX audit_logs_resource ON audit_logs (resource_type, resource_id, occurred_at DESC);
CREATE INDEX audit_logs_action ON audit_logs (action, occurred_at DESC);
