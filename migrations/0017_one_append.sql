-- One way to append (issue 35): every batch of appends is written by the
-- two checked set appends of migration 0011, one round of the batch per
-- statement (eventstore/src/write.rs), and an append inside a caller's
-- transaction by eventstore_append (0001). The earlier batch functions
-- have no caller left:
--   * command_append_set (0007), the command service's dependent batches,
--     which checked sessions only (a request under an API key was always
--     held back);
--   * eventstore_append_set (0006), the step-by-step set append that 0007
--     called;
--   * eventstore_append_batch (0001), one request after another, for
--     batches in which a stream repeated (now later rounds).
DROP FUNCTION command_append_set(timestamptz, timestamptz, text[], uuid[], text[], boolean,
                                 uuid[], text[], bigint[], uuid[], integer[], text[], uuid[],
                                 text[], integer[], bytea[]);
DROP FUNCTION eventstore_append_set(uuid[], text[], bigint[], uuid[], integer[], text[], uuid[],
                                    text[], integer[], bytea[]);
DROP FUNCTION eventstore_append_batch(uuid[], text[], bigint[], uuid[], integer[], text[], uuid[],
                                      text[], integer[], bytea[]);
