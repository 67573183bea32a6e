-- Embeddings kept by the model that made them and the text's hash, so a
-- rebuild of the vector projection (`replay --projection vectors`, a
-- restore) reloads vectors instead of running the model again; only texts
-- the configured model never embedded are embedded.
--
-- The owner is the user whose personal text it is (a conversation's
-- messages); `user.forget` deletes the owner's rows with their points, so
-- nothing derived from their texts stays. Shared texts (incident
-- knowledge, documents) have none.
CREATE TABLE embedding_cache (
    model         text NOT NULL,
    model_version text NOT NULL,
    text_sha256   bytea NOT NULL CHECK (length(text_sha256) = 32),
    owner_user_id uuid,
    -- little-endian f32s, as the model gave them (unit length)
    vector        bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, model_version, text_sha256)
);
CREATE INDEX embedding_cache_owner ON embedding_cache (owner_user_id) WHERE owner_user_id IS NOT NULL;

-- Only the projector's login reads and writes it; what requests run as
-- never sees it (a vector of a person's text is that person's data).
REVOKE ALL ON embedding_cache FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'copilot_projector') THEN
        GRANT SELECT, INSERT, DELETE ON embedding_cache TO copilot_projector;
    END IF;
END $$;
