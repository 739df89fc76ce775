ALTER TABLE execution_logs DROP COLUMN test;
