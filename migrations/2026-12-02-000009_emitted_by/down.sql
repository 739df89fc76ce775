ALTER TABLE execution_logs DROP COLUMN emitted_by;
ALTER TABLE events DROP COLUMN emitted_by;
