-- The commands time series (GET /v1/series/commands) reads accepted
-- commands from the log and rejected ones from command_results by time.
-- The log is append-only and recorded_at follows its physical order, so a
-- BRIN index answers a time range at almost no cost to appends (a few
-- pages of summaries instead of an entry per event).
CREATE INDEX events_recorded_at ON events USING brin (recorded_at);
CREATE INDEX command_results_recorded_at ON command_results (recorded_at);
