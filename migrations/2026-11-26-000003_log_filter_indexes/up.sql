-- Keyset paging of the execution log under the two filters that had no index: phase and
-- attempt (a rare value, such as phase = 'before' on an AFTER-heavy log or attempt = 5,
-- otherwise makes the planner read every partition in full).
CREATE INDEX execution_logs_phase_idx ON execution_logs (phase, created_at DESC, id DESC);
CREATE INDEX execution_logs_attempt_idx ON execution_logs (attempt, created_at DESC, id DESC);
