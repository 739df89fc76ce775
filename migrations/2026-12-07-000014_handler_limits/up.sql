-- Per-handler limits: concurrent deliveries across all replicas, and a rate (token
-- bucket holding at most one second of tokens, kept here so every replica spends the
-- same tokens).
ALTER TABLE handlers ADD COLUMN max_in_flight integer CHECK (max_in_flight > 0);
ALTER TABLE handlers ADD COLUMN rate_per_second integer CHECK (rate_per_second > 0);
ALTER TABLE handlers ADD COLUMN rate_tokens double precision NOT NULL DEFAULT 0;
ALTER TABLE handlers ADD COLUMN rate_refilled_at timestamptz NOT NULL DEFAULT now();

--   state 5 = throttled: an event with a delivery to a limited handler waits here
--             (never claimed) until that handler's budget admits it; then its first
--             delivery in run order becomes pending and the rest wait behind it.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check CHECK (state IN (0, 1, 2, 3, 4, 5));
CREATE INDEX deliveries_throttled_idx ON deliveries (handler_id, next_attempt_at, event_id) WHERE state = 5;
