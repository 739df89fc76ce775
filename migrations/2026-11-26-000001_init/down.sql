DROP TABLE deliveries;
DROP TABLE events;
DROP TABLE handlers;
DROP TABLE event_types;
