-- The JSON Schema (draft 2020-12) an event type's data must satisfy, kept as the admin
-- wrote it (NULL = none), and a counter bumped by every schema change. Replicas cache
-- compiled schemas by (name, schema_version); the statement that stores events checks
-- the version each event was validated against, so a change made through any replica
-- applies to the next event on every replica. Adding columns with a constant default
-- rewrites nothing.
ALTER TABLE event_types
    ADD COLUMN data_schema TEXT,
    ADD COLUMN schema_version BIGINT NOT NULL DEFAULT 0;
