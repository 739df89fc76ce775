DROP INDEX execution_logs_error_trgm_idx;
CREATE INDEX execution_logs_error_trgm_idx ON execution_logs USING gin (error gin_trgm_ops);
