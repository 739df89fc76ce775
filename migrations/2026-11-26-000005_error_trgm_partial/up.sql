-- Most runs succeed with an empty error, yet every one of them paid for an entry in the
-- error trigram index. Index only the runs that have an error: a substring search never
-- matches an empty one, and Search adds `error <> ''` so the planner can use this index.
DROP INDEX execution_logs_error_trgm_idx;
CREATE INDEX execution_logs_error_trgm_idx ON execution_logs USING gin (error gin_trgm_ops)
    WHERE error <> '';
