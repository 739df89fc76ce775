DROP INDEX execution_logs_data_trgm_idx;
CREATE INDEX execution_logs_data_trgm_idx ON execution_logs USING gin ((data_sent::text) gin_trgm_ops);
DROP INDEX execution_logs_error_trgm_idx;
CREATE INDEX execution_logs_error_trgm_idx ON execution_logs USING gin (error gin_trgm_ops)
    WHERE error <> '';
DROP COLLATION provisioning_fold;
