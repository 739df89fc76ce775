-- Handlers, the event catalogue, events and their deliveries.
-- Enumerations are lowercase text with CHECK constraints: readable in psql, cheap to index.

CREATE TABLE event_types (
    name        text PRIMARY KEY,
    description text NOT NULL DEFAULT '',
    builtin     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO event_types (name, description, builtin) VALUES
    ('clients.create', 'A client was created', true),
    ('clients.update', 'A client was updated', true),
    ('clients.delete', 'A client was deleted', true),
    ('clients.archive', 'A client was archived', true),
    ('clients.custom_fields_update', 'A client''s custom fields were updated', true),
    ('clients.balance_non_negative', 'A client''s balance became >= 0', true),
    ('clients.balance_non_positive', 'A client''s balance became <= 0', true),
    ('accounts.create', 'An account was created', true),
    ('accounts.update', 'An account was updated', true),
    ('accounts.delete', 'An account was deleted', true),
    ('subscriptions.assign', 'A subscription was assigned', true),
    ('subscriptions.activate', 'A subscription was activated', true),
    ('subscriptions.deactivate', 'A subscription was deactivated', true),
    ('subscriptions.renew', 'A subscription was renewed', true),
    ('subscriptions.close', 'A subscription was closed', true),
    ('email_rates_manager.import', 'The email rates manager imported rates', true),
    ('import.process_failed', 'An import process failed', true),
    ('import.process_success', 'An import process succeeded', true);

CREATE TABLE handlers (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL,
    event           text NOT NULL REFERENCES event_types (name),
    phase           text NOT NULL CHECK (phase IN ('before', 'after')),
    kind            text NOT NULL CHECK (kind IN ('http', 'script')),
    status          text NOT NULL CHECK (status IN ('enabled', 'disabled', 'archived')),
    priority        integer NOT NULL,
    timeout_ms      integer NOT NULL,
    url             text,
    headers         jsonb NOT NULL DEFAULT '{}',
    secret          text,
    script_path     text,
    failure_policy  text NOT NULL CHECK (failure_policy IN ('fail_closed', 'fail_open')),
    filter          jsonb,
    disabled_reason text,
    -- Start of the current run of consecutive failures (AFTER); NULL after a success.
    failing_since   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'http') = (url IS NOT NULL)),
    CHECK ((kind = 'script') = (script_path IS NOT NULL))
);

-- Dispatch reads the enabled handlers of (event, phase) in run order on every event.
CREATE INDEX handlers_enabled_idx ON handlers (event, phase, priority, id) WHERE status = 'enabled';
CREATE INDEX handlers_list_idx ON handlers (event, phase, priority, id);

-- AFTER events. `data` is the JSON object exactly as emitted (text, not jsonb, so the
-- handler receives the emitter's bytes).
CREATE TABLE events (
    id              bigserial PRIMARY KEY,
    event           text NOT NULL,
    data            text NOT NULL,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX events_idempotency_key_idx ON events (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX events_created_at_idx ON events USING brin (created_at);

-- One row per (AFTER event, handler) still to deliver. A delivery that succeeds is
-- deleted (the execution log keeps the record); one out of attempts stays, dead.
--   state 0 = waiting: a lower-priority sibling of the same event has not run yet;
--   state 1 = pending: due at next_attempt_at (a claim pushes next_attempt_at to the
--             lease expiry, so a crashed replica's work becomes due again by itself);
--   state 3 = dead.
CREATE TABLE deliveries (
    id              bigserial PRIMARY KEY,
    event_id        bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    handler_id      bigint NOT NULL REFERENCES handlers (id) ON DELETE CASCADE,
    priority        integer NOT NULL,
    state           smallint NOT NULL CHECK (state IN (0, 1, 3)),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    leased_by       text,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at) WHERE state = 1;
CREATE INDEX deliveries_event_idx ON deliveries (event_id);
CREATE INDEX deliveries_handler_idx ON deliveries (handler_id);
