ALTER TABLE event_types
    DROP COLUMN schema_version,
    DROP COLUMN data_schema;
