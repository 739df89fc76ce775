-- The emitter's W3C trace context (`traceparent`), kept with the event so that its
-- deliveries, made later or by another replica, continue the emitter's trace.
ALTER TABLE events ADD COLUMN traceparent text;
