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

CREATE SEQUENCE events_seq AS bigint;

-- A stream exists once it has an event; its version is its newest event's.
-- Optimistic concurrency and idempotency both come from unique indexes
-- (no stream table, no lock beyond the index entries themselves):
--   * (stream_id, version): two appends at the same expected version race
--     for the same key; one inserts, the other inserts nothing (`conflict`);
--   * command_id, set on the first event of each append only: a command id
--     is unique forever, and two concurrent duplicates serialise on it.
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
    -- Only on the first event of an append: the command and how many
    -- events it appended, so a repeated command gets the same outcome.
    command_id     uuid,
    command_events integer,
    PRIMARY KEY (stream_id, version),
    CHECK ((command_id IS NULL) = (command_events IS NULL))
);
ALTER SEQUENCE events_seq OWNED BY events.seq;

CREATE INDEX events_global_order ON events (generation, tx_id, seq);
CREATE UNIQUE INDEX events_command ON events (command_id) WHERE command_id IS NOT NULL;

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

-- Appends events to one stream, atomically, in one round trip.
--
-- Writers of one stream serialise on a transaction-scoped advisory lock on
-- the stream, taken before anything else, so the head read below is fresh
-- and no other writer of the stream is in flight. That also keeps each
-- stream's versions in the global order: every event already in the stream
-- was committed by a transaction whose id was assigned before ours (we take
-- ours after the lock), unless this transaction took its id earlier, in
-- which case the function answers 'stale' instead of writing out of order.
--
-- p_expected: -1 = any version, 0 = the stream must not exist, n = exact.
-- Returns 'ok' | 'conflict' | 'duplicate' | 'stale' with the versions and the
-- position (generation, tx_id, seq) of the last event. Refusals raise
-- nothing, so a batch of appends in one transaction keeps going. The one
-- exception is a concurrent duplicate of the same command on another stream
-- (same-stream duplicates wait on the lock and then find the first): the
-- second insert of the command id raises unique_violation on events_command,
-- nothing is kept, and the caller retries and is answered the first outcome.
-- p_locked: the caller (eventstore_append_batch) holds the stream lock.
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
    p_locked          boolean DEFAULT false,
    OUT status         text,
    OUT out_stream_id  uuid,
    OUT first_version  bigint,
    OUT last_version   bigint,
    OUT generation     integer,
    OUT tx_id          bigint,
    OUT seq            bigint
) LANGUAGE plpgsql AS $$
DECLARE
    n         integer := cardinality(p_event_ids);
    head_version    bigint;
    head_generation integer;
    head_tx         bigint;
BEGIN
    IF NOT p_locked THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(p_stream_id::text, 0));
    END IF;

    -- A command id is unique forever: a repeat answers the first outcome.
    IF p_command_id IS NOT NULL THEN
        SELECT 'duplicate', f.stream_id, f.version, l.version, l.generation, l.tx_id, l.seq
          INTO status, out_stream_id, first_version, last_version, generation, tx_id, seq
          FROM events f
          JOIN events l ON l.stream_id = f.stream_id
                       AND l.version = f.version + f.command_events - 1
         WHERE f.command_id = p_command_id AND f.command_id IS NOT NULL;
        IF FOUND THEN RETURN; END IF;
    END IF;

    -- One statement for the head, the generation and our transaction id
    -- (taken after the lock, see above).
    SELECT h.version, h.generation, h.tx_id,
           (SELECT max(g.generation) FROM store_generations g),
           pg_current_xact_id()::text::bigint
      INTO head_version, head_generation, head_tx, generation, tx_id
      FROM (SELECT 1) AS one
      LEFT JOIN LATERAL (SELECT e.version, e.generation, e.tx_id FROM events e
                          WHERE e.stream_id = p_stream_id
                          ORDER BY e.version DESC LIMIT 1) AS h ON true;
    out_stream_id := p_stream_id;

    IF p_expected >= 0 AND coalesce(head_version, 0) <> p_expected THEN
        status := 'conflict';
        last_version := head_version;
    ELSIF head_version IS NOT NULL AND (head_generation, head_tx) > (generation, tx_id) THEN
        status := 'stale';
        last_version := head_version;
    ELSE
        first_version := coalesce(head_version, 0) + 1;
        last_version := first_version + n - 1;
        -- A plain INSERT: the stream lock rules out version clashes, and a
        -- command id taken by a concurrent duplicate on another stream
        -- raises unique_violation, which callers retry (then they find it
        -- below, committed).
        INSERT INTO events AS e (stream_id, version, generation, tx_id, event_id, stream_type,
                                 event_type, schema_version, payload, metadata,
                                 command_id, command_events)
        SELECT p_stream_id, first_version + i.ord - 1, generation, tx_id, i.event_id,
               p_stream_type, i.event_type, i.schema_version, i.payload, p_metadata,
               CASE WHEN i.ord = 1 THEN p_command_id END,
               CASE WHEN i.ord = 1 AND p_command_id IS NOT NULL THEN n END
          FROM unnest(p_event_ids, p_event_types, p_schema_versions, p_payloads)
               WITH ORDINALITY AS i(event_id, event_type, schema_version, payload, ord);
        status := 'ok';
        seq := currval('events_seq');
        RETURN;
    END IF;

    first_version := NULL;
    generation := NULL;
    tx_id := NULL;
END;
$$;

-- Appends for several streams in one statement and one transaction (group
-- commit). The streams' locks are taken first, in one global order, so
-- batches never deadlock with each other and no append in the batch can be
-- 'stale'. Request i owns p_counts[i] consecutive entries of the event arrays.
-- Each request gets its own row (status as for eventstore_append); a refused
-- request does not affect the others.
CREATE FUNCTION eventstore_append_batch(
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
) LANGUAGE plpgsql AS $$
DECLARE
    i      integer;
    o      integer := 1;
    c      integer;
BEGIN
    PERFORM count(pg_advisory_xact_lock(k))
       FROM (SELECT DISTINCT hashtextextended(s::text, 0) AS k
               FROM unnest(p_stream_ids) AS s ORDER BY k) AS keys;
    FOR i IN 1 .. coalesce(cardinality(p_stream_ids), 0) LOOP
        c := p_counts[i];
        idx := i;
        SELECT a.status, a.out_stream_id, a.first_version, a.last_version, a.generation, a.tx_id, a.seq
          INTO status, out_stream_id, first_version, last_version, generation, tx_id, seq
          FROM eventstore_append(p_stream_ids[i], p_stream_types[i], p_expected[i], p_command_ids[i],
                                 p_event_ids[o : o + c - 1], p_event_types[o : o + c - 1],
                                 p_schema_versions[o : o + c - 1], p_payloads[o : o + c - 1],
                                 p_metadata[i]::jsonb, true) AS a;
        o := o + c;
        RETURN NEXT;
    END LOOP;
END;
$$;
