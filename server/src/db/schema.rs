// @generated automatically by Diesel CLI.

diesel::table! {
    deliveries (id) {
        id -> Int8,
        event_id -> Int8,
        handler_id -> Int8,
        priority -> Int4,
        state -> Int2,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        leased_by -> Nullable<Text>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        ordering_slot -> Nullable<Text>,
    }
}

diesel::table! {
    event_types (name) {
        name -> Text,
        description -> Text,
        builtin -> Bool,
        created_at -> Timestamptz,
        data_schema -> Nullable<Text>,
        schema_version -> Int8,
    }
}

diesel::table! {
    events (id) {
        id -> Int8,
        event -> Text,
        data -> Text,
        idempotency_key -> Nullable<Text>,
        created_at -> Timestamptz,
        emitted_by -> Nullable<Text>,
        traceparent -> Nullable<Text>,
        ordering_key -> Nullable<Text>,
    }
}

diesel::table! {
    execution_logs (id, created_at) {
        id -> Int8,
        created_at -> Timestamptz,
        phase -> Text,
        event -> Text,
        status -> Text,
        handler_id -> Int8,
        handler_name -> Text,
        kind -> Text,
        error -> Text,
        duration_ms -> Int4,
        attempt -> Int4,
        data_sent -> Jsonb,
        data_returned -> Nullable<Jsonb>,
        response -> Text,
        http_status -> Nullable<Int4>,
        exit_code -> Nullable<Int4>,
        event_id -> Int8,
        delivery_id -> Nullable<Int8>,
        emitted_by -> Nullable<Text>,
        test -> Bool,
    }
}

diesel::table! {
    handler_audit (id) {
        id -> Int8,
        created_at -> Timestamptz,
        actor -> Text,
        action -> Text,
        handler_id -> Nullable<Int8>,
        before -> Nullable<Jsonb>,
        after -> Nullable<Jsonb>,
    }
}

diesel::table! {
    handlers (id) {
        id -> Int8,
        name -> Text,
        event -> Text,
        phase -> Text,
        kind -> Text,
        status -> Text,
        priority -> Int4,
        timeout_ms -> Int4,
        url -> Nullable<Text>,
        headers -> Jsonb,
        secret -> Nullable<Text>,
        script_path -> Nullable<Text>,
        failure_policy -> Text,
        filter -> Nullable<Jsonb>,
        disabled_reason -> Nullable<Text>,
        failing_since -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        ordering_policy -> Text,
        ordering_group -> Nullable<Text>,
        max_in_flight -> Nullable<Int4>,
        rate_per_second -> Nullable<Int4>,
        rate_tokens -> Float8,
        rate_refilled_at -> Timestamptz,
    }
}

diesel::joinable!(deliveries -> events (event_id));
diesel::joinable!(deliveries -> handlers (handler_id));
diesel::joinable!(handlers -> event_types (event));

diesel::allow_tables_to_appear_in_same_query!(
    deliveries,
    event_types,
    events,
    execution_logs,
    handler_audit,
    handlers,
);
