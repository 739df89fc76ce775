DROP TABLE handler_audit;
