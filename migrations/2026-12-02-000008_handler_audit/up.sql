-- Who changed which handler (or event type), when, and how: one row per change, written
-- in the change's transaction. Snapshots never hold secrets or header values.
CREATE TABLE handler_audit (
    id BIGSERIAL PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    -- NULL for event-type changes; no foreign key: the trail outlives deleted handlers.
    handler_id BIGINT,
    before JSONB,
    after JSONB
);
CREATE INDEX handler_audit_page_idx ON handler_audit (created_at, id);
CREATE INDEX handler_audit_handler_idx ON handler_audit (handler_id, created_at, id);
