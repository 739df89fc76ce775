-- Every delivery row is inserted, updated by its claim and deleted within seconds, and
-- the claim scans the due index from its oldest end, where dead entries pile up. Vacuum
-- this small, hot table early and without throttling so claims stay cheap under load.
ALTER TABLE deliveries SET (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);
