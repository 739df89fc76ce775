-- A delivery's references to its event and handler are kept by the statements that
-- write deliveries instead of by foreign keys: each key ran a trigger query per
-- inserted delivery, a fifth of the cost of storing a group of events.
--   * Deliveries are created only with their event (events::insert_batch) or for an
--     event locked FOR KEY SHARE (a retry), and event retention deletes only events it
--     has locked and found without deliveries in a later statement.
--   * The insert and a retry lock the handlers they create deliveries for (FOR KEY
--     SHARE, once per handler), and deleting a handler deletes its deliveries.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_event_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_handler_id_fkey;
