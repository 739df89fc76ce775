DROP INDEX IF EXISTS execution_logs_attempt_idx;
DROP INDEX IF EXISTS execution_logs_phase_idx;
