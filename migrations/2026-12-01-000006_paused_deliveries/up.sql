-- Disabling a handler pauses its deliveries instead of killing them:
--   state 2 = paused: the handler is not enabled; the delivery keeps its attempts and
--             its next_attempt_at, is never claimed (the due index covers state 1 only)
--             and becomes pending again, in its original order, when the handler is
--             enabled.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check CHECK (state IN (0, 1, 2, 3));
