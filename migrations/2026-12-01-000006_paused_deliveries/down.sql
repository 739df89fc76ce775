UPDATE deliveries SET state = 1 WHERE state = 2;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check CHECK (state IN (0, 1, 3));
