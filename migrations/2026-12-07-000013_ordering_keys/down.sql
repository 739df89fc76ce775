DROP INDEX deliveries_queued_idx;
DROP INDEX deliveries_ordering_idx;
UPDATE deliveries SET state = 1 WHERE state = 4;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check CHECK (state IN (0, 1, 2, 3));
ALTER TABLE deliveries DROP COLUMN ordering_slot;
ALTER TABLE handlers DROP COLUMN ordering_group;
ALTER TABLE handlers DROP COLUMN ordering_policy;
ALTER TABLE events DROP COLUMN ordering_key;
