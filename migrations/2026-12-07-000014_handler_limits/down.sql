DROP INDEX deliveries_throttled_idx;
UPDATE deliveries SET state = 1 WHERE state = 5;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check CHECK (state IN (0, 1, 2, 3, 4));
ALTER TABLE handlers DROP COLUMN rate_refilled_at;
ALTER TABLE handlers DROP COLUMN rate_tokens;
ALTER TABLE handlers DROP COLUMN rate_per_second;
ALTER TABLE handlers DROP COLUMN max_in_flight;
