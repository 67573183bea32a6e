-- The event store: the single source of truth of copilot-data.
--
-- Global order. `seq` (a sequence) is assigned at INSERT, not at COMMIT, so a
-- reader that trusted it would skip the events of a slower transaction. The
-- order handed to subscribers is instead (generation, tx_id, seq):
--   * tx_id is the inserting transaction's 64-bit id (xid8, epoch included),
--     and readers only read events whose tx_id is below the xmin of their
--     snapshot: every transaction below xmin has finished, so nothing can
--     later become visible below what was read.
--   * generation grows when the store finds itself in a cluster whose
--     transaction counter is behind the newest stored event (a pg_dump
--     restored into another cluster); events of earlier generations are all
--     committed and sort before every event of the current one.
--   * seq orders the events of one transaction.
-- See eventstore/src/lib.rs for the full argument and its cost.

CREATE TABLE store_generations (
    generation  integer PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    -- transaction counter of the cluster when this generation began
    first_tx_id bigint NOT NULL
);

INSERT INTO store_generations (generation, first_tx_id)
VALUES (1, pg_snapshot_xmax(pg_current_snapshot())::text::bigint);

CREATE TABLE event_streams (
    stream_id   uuid PRIMARY KEY,
    stream_type text NOT NULL,
    version     bigint NOT NULL CHECK (version >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE events_seq AS bigint;

CREATE TABLE events (
    stream_id      uuid NOT NULL,
    version        bigint NOT NULL CHECK (version >= 1),
    generation     integer NOT NULL,
    tx_id          bigint NOT NULL,
    seq            bigint NOT NULL DEFAULT nextval('events_seq'),
    event_id       uuid NOT NULL,
    stream_type    text NOT NULL,
    event_type     text NOT NULL,
    schema_version integer NOT NULL CHECK (schema_version >= 1),
    payload        bytea NOT NULL,
    metadata       jsonb NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, version)
);
ALTER SEQUENCE events_seq OWNED BY events.seq;

CREATE INDEX events_global_order ON events (generation, tx_id, seq);

-- Idempotency: a command id is unique forever. The row is claimed in the same
-- transaction as the events, so two concurrent duplicates serialise on the
-- unique index and the loser reads the winner's outcome.
CREATE TABLE command_dedup (
    command_id    uuid PRIMARY KEY,
    stream_id     uuid NOT NULL,
    first_version bigint NOT NULL,
    last_version  bigint NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projection_checkpoints (
    name       text PRIMARY KEY,
    generation integer NOT NULL,
    tx_id      bigint NOT NULL,
    seq        bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE snapshots (
    stream_id      uuid PRIMARY KEY,
    version        bigint NOT NULL,
    schema_version integer NOT NULL,
    state          bytea NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now()
);

-- Appends events to one stream; one round trip, no exception for the
-- expected outcomes (a conflict or a duplicate command), so a batch of
-- appends in one transaction keeps going when one of them is refused.
--
-- p_expected: -2 = any version, -1 = the stream must not exist, n >= 0 = exact.
-- Returns status 'ok' | 'conflict' | 'duplicate' with the versions and the
-- position (generation, tx_id, seq) of the last event.
CREATE FUNCTION eventstore_append(
    p_stream_id       uuid,
    p_stream_type     text,
    p_expected        bigint,
    p_command_id      uuid,
    p_event_ids       uuid[],
    p_event_types     text[],
    p_schema_versions integer[],
    p_payloads        bytea[],
    p_metadata        jsonb,
    OUT status         text,
    OUT first_version  bigint,
    OUT last_version   bigint,
    OUT actual_version bigint,
    OUT generation     integer,
    OUT tx_id          bigint,
    OUT seq            bigint
) LANGUAGE plpgsql AS $$
DECLARE
    n        bigint := cardinality(p_event_types);
    v_inserted bigint;
BEGIN
    IF p_command_id IS NOT NULL THEN
        SELECT 'duplicate', d.first_version, d.last_version, NULL, e.generation, e.tx_id, e.seq
          INTO status, first_version, last_version, actual_version, generation, tx_id, seq
          FROM command_dedup d
          JOIN events e ON e.stream_id = d.stream_id AND e.version = d.last_version
         WHERE d.command_id = p_command_id;
        IF FOUND THEN RETURN; END IF;
    END IF;

    IF p_expected = -2 THEN
        INSERT INTO event_streams AS s (stream_id, stream_type, version)
        VALUES (p_stream_id, p_stream_type, n)
        ON CONFLICT (stream_id) DO UPDATE
            SET version = s.version + n, updated_at = now()
        RETURNING s.version INTO last_version;
    ELSIF p_expected = -1 THEN
        INSERT INTO event_streams (stream_id, stream_type, version)
        VALUES (p_stream_id, p_stream_type, n)
        ON CONFLICT (stream_id) DO NOTHING
        RETURNING version INTO last_version;
    ELSE
        UPDATE event_streams s
           SET version = s.version + n, updated_at = now()
         WHERE s.stream_id = p_stream_id AND s.version = p_expected
        RETURNING s.version INTO last_version;
    END IF;

    IF last_version IS NULL THEN
        -- Either a real conflict, or a concurrent duplicate of this command
        -- that committed while we waited for the stream's row lock.
        IF p_command_id IS NOT NULL THEN
            SELECT 'duplicate', d.first_version, d.last_version, NULL, e.generation, e.tx_id, e.seq
              INTO status, first_version, last_version, actual_version, generation, tx_id, seq
              FROM command_dedup d
              JOIN events e ON e.stream_id = d.stream_id AND e.version = d.last_version
             WHERE d.command_id = p_command_id;
            IF FOUND THEN RETURN; END IF;
        END IF;
        status := 'conflict';
        SELECT s.version INTO actual_version FROM event_streams s WHERE s.stream_id = p_stream_id;
        RETURN;
    END IF;
    first_version := last_version - n + 1;

    IF p_command_id IS NOT NULL THEN
        INSERT INTO command_dedup (command_id, stream_id, first_version, last_version)
        VALUES (p_command_id, p_stream_id, first_version, last_version)
        ON CONFLICT (command_id) DO NOTHING;
        IF NOT FOUND THEN
            -- A concurrent duplicate (on another stream, so it did not wait on
            -- our row lock) won: undo our version bump and report its outcome.
            IF first_version = 1 THEN
                DELETE FROM event_streams s WHERE s.stream_id = p_stream_id;
            ELSE
                UPDATE event_streams s SET version = s.version - n WHERE s.stream_id = p_stream_id;
            END IF;
            SELECT 'duplicate', d.first_version, d.last_version, NULL, e.generation, e.tx_id, e.seq
              INTO status, first_version, last_version, actual_version, generation, tx_id, seq
              FROM command_dedup d
              JOIN events e ON e.stream_id = d.stream_id AND e.version = d.last_version
             WHERE d.command_id = p_command_id;
            RETURN;
        END IF;
    END IF;

    SELECT max(g.generation) INTO generation FROM store_generations g;
    tx_id := pg_current_xact_id()::text::bigint;

    INSERT INTO events AS e (stream_id, version, generation, tx_id, event_id, stream_type,
                             event_type, schema_version, payload, metadata)
    SELECT p_stream_id, first_version + i.ord - 1, generation, tx_id, i.event_id, p_stream_type,
           i.event_type, i.schema_version, i.payload, p_metadata
      FROM unnest(p_event_ids, p_event_types, p_schema_versions, p_payloads)
           WITH ORDINALITY AS i(event_id, event_type, schema_version, payload, ord);
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    IF v_inserted <> n THEN
        RAISE EXCEPTION 'eventstore_append: % events given, % inserted', n, v_inserted;
    END IF;

    seq := currval('events_seq');
    status := 'ok';
END;
$$;
