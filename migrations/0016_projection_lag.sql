-- How long after its append each event was applied, per SQL projection
-- and minute: the history behind GET /v1/series/projection_lag (the
-- dashboard's lag chart). Prometheus keeps the same as a gauge; this keeps
-- it where the query API and a restore can read it.
--
-- One row per projection and minute, written by the projection's leader
-- (one at a time, under its lease) every few seconds: events applied, the
-- sum and the largest of (applied at - recorded at). Rows older than the
-- retention are deleted by the same writer. Nothing personal: a name, a
-- minute and three numbers.
CREATE TABLE projection_lag (
    projection text NOT NULL,
    minute     timestamptz NOT NULL CHECK (date_trunc('minute', minute) = minute),
    events     int8 NOT NULL CHECK (events > 0),
    lag_ms_sum int8 NOT NULL CHECK (lag_ms_sum >= 0),
    lag_ms_max int8 NOT NULL CHECK (lag_ms_max >= 0),
    PRIMARY KEY (projection, minute)
);
CREATE INDEX projection_lag_minute ON projection_lag (minute);

REVOKE ALL ON projection_lag FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'copilot_projector') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON projection_lag TO copilot_projector;
    END IF;
    -- What requests run as: the series is the same for every caller, as
    -- the summary's projection table is.
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'copilot_app') THEN
        GRANT SELECT ON projection_lag TO copilot_app, copilot_admin;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'copilot_readonly') THEN
        GRANT SELECT ON projection_lag TO copilot_readonly;
    END IF;
END $$;
