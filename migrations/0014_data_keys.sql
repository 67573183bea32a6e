-- Crypto-shredding: every user's personal data in events (and snapshots)
-- is sealed with that user's own data key; the data key is kept here only
-- wrapped by a master key the database never sees (configuration or a
-- file). `user.forget` destroys the key in the same transaction as its
-- event (the trigger below), so the user's personal fields can never be
-- read again from the log, its copies or anything rebuilt from it.
--
-- A destroyed key leaves a tombstone (`wrapped` NULL), so no key is ever
-- made again for a forgotten subject.
CREATE TABLE data_keys (
    subject       uuid PRIMARY KEY,
    -- Fingerprint of the master key `wrapped` is sealed with (see
    -- `eventstore::data_keys`), so rotation knows what to re-wrap.
    master_key_id text,
    -- nonce (12) || AES-256-GCM of the 32-byte data key, the subject as
    -- associated data
    wrapped       bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    destroyed_at  timestamptz,
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL)),
    CHECK ((wrapped IS NULL) = (master_key_id IS NULL))
);

CREATE FUNCTION destroy_data_key() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
BEGIN
    INSERT INTO data_keys (subject, master_key_id, wrapped, destroyed_at)
    VALUES (NEW.stream_id, NULL, NULL, now())
    ON CONFLICT (subject) DO UPDATE
        SET master_key_id = NULL, wrapped = NULL, destroyed_at = now()
      WHERE data_keys.destroyed_at IS NULL;
    RETURN NULL;
END
$fn$;

-- Whatever path appends the event (any function, any login), the key goes
-- with it or not at all.
CREATE TRIGGER events_user_forgotten_destroys_key
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.event_type = 'user_forgotten')
    EXECUTE FUNCTION destroy_data_key();

REVOKE ALL ON data_keys FROM PUBLIC;
REVOKE ALL ON FUNCTION destroy_data_key() FROM PUBLIC;
DO $$
BEGIN
    -- The command service makes keys (and may re-wrap them: `keys rotate`
    -- runs as the owner); every reader of the log unwraps them. No service
    -- login can destroy a key but by appending the forget.
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'copilot_command') THEN
        GRANT SELECT, INSERT ON data_keys TO copilot_command;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'copilot_projector') THEN
        GRANT SELECT ON data_keys TO copilot_projector;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'copilot_query') THEN
        GRANT SELECT ON data_keys TO copilot_query;
    END IF;
END $$;
