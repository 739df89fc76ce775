DELETE FROM deliveries d WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id)
    OR NOT EXISTS (SELECT 1 FROM handlers h WHERE h.id = d.handler_id);
ALTER TABLE deliveries ADD CONSTRAINT deliveries_event_id_fkey
    FOREIGN KEY (event_id) REFERENCES events (id) ON DELETE CASCADE;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_handler_id_fkey
    FOREIGN KEY (handler_id) REFERENCES handlers (id) ON DELETE CASCADE;
