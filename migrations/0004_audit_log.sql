-- The audit log: one row per event, derived by the audit projection, never
-- written by hand. Partitioned by month (the projection creates the months
-- it needs, a scheduled job creates the coming ones ahead of time), kept for
-- twelve months by dropping whole partitions, and append-only: a trigger
-- refuses UPDATE, DELETE and TRUNCATE for everyone, and the services' role
-- has neither the privileges nor the ownership to get around it.
--
-- Below `@audit-ddl` is schema-relative: replay runs it again in a shadow
-- schema (see 0003_read_model.sql).

-- Shared by every audit schema (live and shadows).
CREATE FUNCTION audit_refuse_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION 'audit_logs is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

-- Creates the partition of `audit_logs` in `target_schema` for the month of
-- `month` if it is missing. Serialised per schema, because two callers
-- (the projection and the ahead-of-time job) may want the same month.
CREATE FUNCTION audit_ensure_partition(target_schema text, month date) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
DECLARE
    first date := date_trunc('month', month)::date;
    name text := format('audit_logs_%s', to_char(first, 'YYYY_MM'));
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('audit_partitions:' || target_schema, 0));
    IF to_regclass(format('%I.%I', target_schema, name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I.%I PARTITION OF %I.audit_logs FOR VALUES FROM (%L) TO (%L)',
        target_schema, name, target_schema, first, (first + interval '1 month')::date);
    RETURN true;
END $$;

-- Drops the monthly partitions of `target_schema`.audit_logs that end on or
-- before `keep_from` (the first day kept); returns the dropped names.
CREATE FUNCTION audit_prune(target_schema text, keep_from date) RETURNS SETOF text
    LANGUAGE plpgsql
    AS $$
DECLARE
    part record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('audit_partitions:' || target_schema, 0));
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        JOIN pg_namespace n ON n.oid = p.relnamespace
        WHERE n.nspname = target_schema AND p.relname = 'audit_logs'
          AND c.relname ~ '^audit_logs_[0-9]{4}_[0-9]{2}$'
          AND (to_date(substr(c.relname, 12), 'YYYY_MM') + interval '1 month')::date <= keep_from
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I.%I', target_schema, part.relname);
        RETURN NEXT part.relname;
    END LOOP;
END $$;

CREATE SCHEMA audit;
SET LOCAL search_path TO audit, public;

-- @audit-ddl

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
    EXECUTE format('GRANT SELECT, INSERT ON %I.audit_logs TO copilot_app, copilot_admin', s);
    -- The months around now, so the first writes find their partition.
    FOR i IN -1..3 LOOP
        PERFORM audit_ensure_partition(s, (date_trunc('month', now()) + make_interval(months => i))::date);
    END LOOP;
END $$;

-- @deferred-indexes
-- Secondary indexes. A rebuild creates them after loading its rows, which
-- is faster than maintaining them row by row.
CREATE INDEX audit_logs_actor ON audit_logs (actor_user_id, occurred_at DESC);
CREATE INDEX audit_logs_resource ON audit_logs (resource_type, resource_id, occurred_at DESC);
CREATE INDEX audit_logs_action ON audit_logs (action, occurred_at DESC);
