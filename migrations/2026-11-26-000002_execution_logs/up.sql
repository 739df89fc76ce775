-- The execution log: one row per handler run, partitioned by day on created_at so that
-- retention drops whole partitions instead of deleting rows under long locks.
-- Partitions are created ahead of time by the server (ensure_log_partitions); rows
-- outside every daily partition land in the default partition.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE SEQUENCE execution_logs_id_seq;

CREATE TABLE execution_logs (
    id            bigint NOT NULL DEFAULT nextval('execution_logs_id_seq'),
    created_at    timestamptz NOT NULL,
    phase         text NOT NULL,
    event         text NOT NULL,
    status        text NOT NULL,
    handler_id    bigint NOT NULL,
    handler_name  text NOT NULL,
    kind          text NOT NULL,
    error         text NOT NULL DEFAULT '',
    duration_ms   integer NOT NULL,
    attempt       integer NOT NULL,
    data_sent     jsonb NOT NULL,
    data_returned jsonb,
    response      text NOT NULL DEFAULT '',
    http_status   integer,
    exit_code     integer,
    event_id      bigint NOT NULL,
    delivery_id   bigint,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

CREATE TABLE execution_logs_default PARTITION OF execution_logs DEFAULT;

-- Newest-first keyset paging, alone and under each equality filter.
CREATE INDEX execution_logs_time_idx ON execution_logs (created_at DESC, id DESC);
CREATE INDEX execution_logs_handler_idx ON execution_logs (handler_id, created_at DESC, id DESC);
CREATE INDEX execution_logs_event_idx ON execution_logs (event, created_at DESC, id DESC);
CREATE INDEX execution_logs_status_idx ON execution_logs (status, created_at DESC, id DESC);
CREATE INDEX execution_logs_event_id_idx ON execution_logs (event_id);
-- Substring search (ILIKE) over the data text and the error, and JSON containment.
CREATE INDEX execution_logs_data_trgm_idx ON execution_logs USING gin ((data_sent::text) gin_trgm_ops);
CREATE INDEX execution_logs_error_trgm_idx ON execution_logs USING gin (error gin_trgm_ops);
CREATE INDEX execution_logs_data_json_idx ON execution_logs USING gin (data_sent jsonb_path_ops);

-- Creates the daily partitions covering [from_day, to_day] that do not exist yet.
CREATE FUNCTION ensure_log_partitions(from_day date, to_day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d date := from_day;
    part text;
BEGIN
    WHILE d <= to_day LOOP
        part := 'execution_logs_' || to_char(d, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF execution_logs FOR VALUES FROM (%L) TO (%L)',
                    part, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            EXCEPTION WHEN check_violation THEN
                -- The default partition already holds rows of that day: leave them there.
                RAISE NOTICE 'partition % skipped: default partition has rows for it', part;
            WHEN duplicate_table THEN
                NULL; -- another replica created it meanwhile
            END;
        END IF;
        d := d + 1;
    END LOOP;
END;
$$;
