-- Who emitted an event (the caller's name from the tokens file; `anonymous` in
-- development mode), kept with the event and copied to each of its log rows. NULL for
-- rows written before this column existed. Adding a nullable column without a default
-- rewrites nothing.
ALTER TABLE events ADD COLUMN emitted_by TEXT;
ALTER TABLE execution_logs ADD COLUMN emitted_by TEXT;
