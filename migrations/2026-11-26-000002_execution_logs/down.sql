DROP FUNCTION ensure_log_partitions(date, date);
DROP TABLE execution_logs;
DROP SEQUENCE execution_logs_id_seq;
