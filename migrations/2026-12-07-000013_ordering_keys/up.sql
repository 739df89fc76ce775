-- Ordering keys: deliveries of events with the same key to one handler (or to the
-- handlers of one ordering group) start in emit order and never overlap.
ALTER TABLE events ADD COLUMN ordering_key text;

-- What a given-up delivery (dead, or paused because its handler is not enabled) does to
-- the later deliveries of its key: 'skip' lets them proceed, 'block' holds them until
-- an operator retries or skips it.
ALTER TABLE handlers ADD COLUMN ordering_policy text NOT NULL DEFAULT 'skip'
    CHECK (ordering_policy IN ('skip', 'block'));
-- Handlers sharing a group share their ordering per key; NULL = the handler alone.
ALTER TABLE handlers ADD COLUMN ordering_group text;

-- The ordering slot of a keyed delivery: 'g:<group>|<key>' or 'h:<handler id>|<key>';
-- NULL for events without a key.
--   state 4 = queued: an earlier delivery of one of the event's slots is unfinished;
--             the whole event waits (never claimed) and is promoted (head pending, the
--             rest waiting behind it) when the earlier one finishes.
ALTER TABLE deliveries ADD COLUMN ordering_slot text;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check CHECK (state IN (0, 1, 2, 3, 4));
-- What holds a slot (earlier deliveries of it), and what waits in it.
CREATE INDEX deliveries_ordering_idx ON deliveries (ordering_slot, event_id)
    WHERE ordering_slot IS NOT NULL;
CREATE INDEX deliveries_queued_idx ON deliveries (ordering_slot, event_id) WHERE state = 4;
