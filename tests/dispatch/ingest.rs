//! Ingestion of AFTER events: payload filters, idempotency keys, validation, and the
//! batch (EmitBatch, all or nothing) and stream (EmitStream, one ack per event) RPCs.

use std::collections::{BTreeSet, HashSet};

use provisioning_client::{proto, ClientError};
use provisioning_tests::receiver::Receiver;
use provisioning_tests::{spawn_server, spawn_server_with, TestDatabase};

use super::{
    count, create, delivery_rows, emit_after, event_request, http_handler, invalid_argument,
    log_rows, numbers, wait_for_logs, WAIT,
};

/// A handler with a payload filter is delivered only the events whose data contains
/// the filter; the others get no delivery row at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_filter_limits_deliveries_to_matching_events() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    let client15 = create(
        &server.client,
        proto::CreateHandlerRequest {
            filter_json: r#"{"id_clients": 15}"#.into(),
            ..http_handler(
                "client 15",
                "accounts.update",
                proto::Phase::After,
                &receiver.url("/c15"),
            )
        },
    )
    .await;
    assert_eq!(
        client15.filter_json.replace(' ', ""),
        r#"{"id_clients":15}"#
    );
    create(
        &server.client,
        proto::CreateHandlerRequest {
            filter_json: r#"{"address": {"country": "NL"}}"#.into(),
            ..http_handler(
                "dutch",
                "accounts.update",
                proto::Phase::After,
                &receiver.url("/nl"),
            )
        },
    )
    .await;

    let cases = [
        (r#"{"n": 1, "id_clients": 15}"#, 1),
        (r#"{"n": 2, "id_clients": 16}"#, 0),
        (r#"{"n": 3, "id_clients": "15"}"#, 0),
        (
            r#"{"n": 4, "id_clients": 15, "address": {"country": "NL", "city": "Delft"}}"#,
            2,
        ),
        (r#"{"n": 5, "address": {"country": "BE"}}"#, 0),
    ];
    let mut matching = BTreeSet::new();
    let mut other = Vec::new();
    for (data, expected) in cases {
        let reply = emit_after(&server.client, "accounts.update", data).await;
        assert_eq!(reply.deliveries, expected, "{data}");
        if expected > 0 {
            matching.insert(reply.event_id);
        } else {
            other.push(reply.event_id);
        }
    }

    let rows = wait_for_logs(&db, "three SUCCESS rows", |rows| rows.len() >= 3).await;
    let logged: BTreeSet<i64> = rows.iter().map(|r| r.event_id).collect();
    assert_eq!(logged, matching);
    let mut c15 = numbers(&receiver.requests("/c15"));
    c15.sort_unstable();
    assert_eq!(c15, [1, 4]);
    assert_eq!(numbers(&receiver.requests("/nl")), [4]);
    let stored_for_others = delivery_rows(&db)
        .iter()
        .filter(|d| other.contains(&d.event_id))
        .count();
    assert_eq!(stored_for_others, 0);
}

/// A filter that is not a JSON object must be refused when the handler is created, not
/// fail later at dispatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payload_filter_is_refused_at_create() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    for filter in ["[1, 2]", "{", "15", r#""id_clients""#] {
        let request = proto::CreateHandlerRequest {
            filter_json: filter.into(),
            ..http_handler(
                "filtered",
                "accounts.update",
                proto::Phase::After,
                "http://127.0.0.1:9/x",
            )
        };
        let message = invalid_argument(server.client.create_handler(request).await);
        assert!(message.contains("filter_json"), "{filter}: {message}");
    }
    assert_eq!(count(&db, "SELECT count(*) AS n FROM handlers"), 0);
}

/// An emitter retrying with the same idempotency key must not cause a second event or
/// a second delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_idempotency_key_returns_the_first_event_and_delivers_once() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    create(
        &server.client,
        http_handler(
            "once",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/once"),
        ),
    )
    .await;
    let keyed = |data: &str| proto::EmitRequest {
        idempotency_key: "order-42".into(),
        ..event_request("clients.create", proto::Phase::After, data)
    };

    let first = server
        .client
        .emit(keyed(r#"{"n": 1}"#))
        .await
        .expect("first emit");
    let second = server
        .client
        .emit(keyed(r#"{"n": 1}"#))
        .await
        .expect("second emit");
    assert!(!first.duplicate);
    assert_eq!(first.deliveries, 1);
    assert_eq!(second.event_id, first.event_id);
    assert!(second.duplicate);
    assert_eq!(second.deliveries, 0);
    let other = server
        .client
        .emit(proto::EmitRequest {
            idempotency_key: "order-43".into(),
            ..event_request("clients.create", proto::Phase::After, r#"{"n": 3}"#)
        })
        .await
        .expect("emit with another key");
    assert!(!other.duplicate);
    assert_ne!(other.event_id, first.event_id);

    // Concurrent repeats share group-committed transactions: still one event.
    let burst = futures_util::future::join_all((0..10).map(|_| {
        let client = server.client.clone();
        async move {
            let request = proto::EmitRequest {
                idempotency_key: "burst".into(),
                ..event_request("clients.create", proto::Phase::After, r#"{"n": 100}"#)
            };
            client.emit(request).await.expect("burst emit")
        }
    }))
    .await;
    assert_eq!(
        burst.iter().filter(|r| !r.duplicate).count(),
        1,
        "{burst:?}"
    );
    assert_eq!(
        burst
            .iter()
            .map(|r| r.event_id)
            .collect::<HashSet<_>>()
            .len(),
        1,
        "{burst:?}"
    );

    wait_for_logs(&db, "three SUCCESS rows", |rows| {
        rows.iter().filter(|r| r.status == "success").count() >= 3
    })
    .await;
    let mut delivered = numbers(&receiver.requests("/once"));
    delivered.sort_unstable();
    assert_eq!(delivered.len(), 3, "{delivered:?}");
    assert_eq!(delivered[..2], [1, 3]);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM events"), 3);
    assert_eq!(log_rows(&db).len(), 3);
}

/// Bad input gets INVALID_ARGUMENT naming the field, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_rejected_with_invalid_argument() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.max_payload_bytes = 256).await;
    let oversized = format!(r#"{{"blob": "{}"}}"#, "x".repeat(300));
    let cases: Vec<(&str, &str, &str)> = vec![
        ("clients.explode", r#"{"id": 1}"#, "unknown event"),
        ("", r#"{"id": 1}"#, "event"),
        ("clients.create", "[1, 2]", "JSON object"),
        ("clients.create", r#""text""#, "JSON object"),
        ("clients.create", r#"{"id": "#, "not valid JSON"),
        ("clients.create", "", "not valid JSON"),
        ("clients.create", &oversized, "exceed"),
    ];
    for phase in [proto::Phase::After, proto::Phase::Before] {
        for (event, data, expected) in &cases {
            let message =
                invalid_argument(server.client.emit(event_request(event, phase, data)).await);
            assert!(
                message.contains(expected),
                "{phase:?} {event:?} {data:?}: {message}"
            );
            if *expected != "unknown event" && !event.is_empty() {
                assert!(
                    message.contains("data_json"),
                    "the message names the field: {message}"
                );
            }
        }
    }
    let no_phase = event_request("clients.create", proto::Phase::Unspecified, "{}");
    assert!(invalid_argument(server.client.emit(no_phase).await).contains("phase"));
    let long_key = proto::EmitRequest {
        idempotency_key: "k".repeat(201),
        ..event_request("clients.create", proto::Phase::After, "{}")
    };
    assert!(invalid_argument(server.client.emit(long_key).await).contains("idempotency_key"));
    let nearly_full = format!(r#"{{"blob": "{}"}}"#, "x".repeat(200));
    emit_after(&server.client, "clients.create", &nearly_full).await;
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM events"),
        1,
        "only the valid event is stored"
    );
}

/// A batch is all or nothing: one bad event rejects it whole, naming the event's index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_batch_with_one_bad_event_is_rejected_whole_naming_its_index() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    create(
        &server.client,
        http_handler(
            "h",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/h"),
        ),
    )
    .await;
    let good = |n: u32| {
        event_request(
            "clients.create",
            proto::Phase::After,
            &format!(r#"{{"n": {n}}}"#),
        )
    };

    let unknown = event_request("clients.explode", proto::Phase::After, "{}");
    let not_object = event_request("clients.create", proto::Phase::After, "[1]");
    let before = event_request("clients.create", proto::Phase::Before, "{}");
    let no_phase = event_request("clients.create", proto::Phase::Unspecified, "{}");
    for (events, expected) in [
        (vec![good(0), good(1), unknown, good(3)], "events[2]"),
        (vec![good(0), good(1), not_object], "events[2].data_json"),
        (vec![good(0), good(1), before], "events[2]"),
        (vec![good(0), no_phase], "events[1].phase: required"),
    ] {
        let message = invalid_argument(
            server
                .client
                .emit_batch(proto::EmitBatchRequest { events })
                .await,
        );
        assert!(message.contains(expected), "{message}");
    }

    invalid_argument(
        server
            .client
            .emit_batch(proto::EmitBatchRequest { events: vec![] })
            .await,
    );
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM events"),
        0,
        "nothing stored"
    );
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM deliveries"),
        0,
        "nothing stored"
    );
    assert_eq!(receiver.all_requests().len(), 0);
}

/// EmitBatch stores every event with its deliveries, and each is then delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_batch_stores_every_event_with_its_deliveries() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    create(
        &server.client,
        http_handler(
            "h",
            "import.process_success",
            proto::Phase::After,
            &receiver.url("/h"),
        ),
    )
    .await;
    let events: Vec<_> = (0..100)
        .map(|n| {
            event_request(
                "import.process_success",
                proto::Phase::After,
                &format!(r#"{{"n": {n}}}"#),
            )
        })
        .collect();
    let reply = server
        .client
        .emit_batch(proto::EmitBatchRequest { events })
        .await
        .expect("emit batch");
    assert_eq!(reply.acks.len(), 100);
    for (index, ack) in reply.acks.iter().enumerate() {
        assert_eq!(ack.sequence, index as u64);
        assert!(
            ack.event_id > 0 && ack.error_code == 0 && !ack.duplicate,
            "{ack:?}"
        );
        assert_eq!(ack.deliveries, 1);
    }
    let ids: HashSet<i64> = reply.acks.iter().map(|a| a.event_id).collect();
    assert_eq!(ids.len(), 100);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM events"), 100);

    receiver
        .wait_until(WAIT, "every event of the batch", |all| {
            numbers(all).into_iter().collect::<HashSet<_>>().len() == 100
        })
        .await;
    let rows = wait_for_logs(&db, "100 SUCCESS rows", |rows| {
        rows.iter().filter(|r| r.status == "success").count() >= 100
    })
    .await;
    let logged: HashSet<i64> = rows.iter().map(|r| r.event_id).collect();
    assert_eq!(logged, ids);
}

/// EmitStream acknowledges each event in order once stored; a bad event gets an error
/// ack and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_stream_acks_in_order_and_survives_a_bad_event() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    create(
        &server.client,
        http_handler(
            "h",
            "clients.update",
            proto::Phase::After,
            &receiver.url("/h"),
        ),
    )
    .await;
    let requests: Vec<proto::EmitStreamRequest> = (10..16)
        .map(|sequence| {
            let event = match sequence {
                12 => event_request("clients.explode", proto::Phase::After, "{}"),
                14 => event_request("clients.update", proto::Phase::After, "not json"),
                15 => event_request("clients.update", proto::Phase::Unspecified, "{}"),
                n => event_request(
                    "clients.update",
                    proto::Phase::After,
                    &format!(r#"{{"n": {n}}}"#),
                ),
            };
            proto::EmitStreamRequest {
                sequence,
                event: Some(event),
            }
        })
        .collect();
    let mut acks = server
        .client
        .emit_stream(tokio_stream::iter(requests))
        .await
        .expect("open the stream");
    let mut received = Vec::new();
    while let Some(ack) = tokio::time::timeout(WAIT, acks.message())
        .await
        .expect("acks in time")
        .expect("ack stream")
    {
        received.push(ack);
    }
    let sequences: Vec<u64> = received.iter().map(|a| a.sequence).collect();
    assert_eq!(sequences, [10, 11, 12, 13, 14, 15]);
    for ack in &received {
        if matches!(ack.sequence, 12 | 14 | 15) {
            assert_eq!(ack.error_code, 3, "{ack:?}");
            assert_eq!(ack.event_id, 0);
            assert!(!ack.error_message.is_empty());
        } else {
            assert_eq!(ack.error_code, 0, "{ack:?}");
            assert!(ack.event_id > 0);
            assert_eq!(ack.deliveries, 1);
        }
    }
    assert!(
        received[2].error_message.contains("event"),
        "{:?}",
        received[2]
    );
    assert!(
        received[4].error_message.contains("data_json"),
        "{:?}",
        received[4]
    );
    let ids: HashSet<i64> = received
        .iter()
        .filter(|a| a.error_code == 0)
        .map(|a| a.event_id)
        .collect();
    assert!(
        received[5].error_message.contains("event.phase: required"),
        "the same rule as Emit: {:?}",
        received[5]
    );
    assert_eq!(ids.len(), 3, "each stored event has its own id");
    assert_eq!(count(&db, "SELECT count(*) AS n FROM events"), 3);
    let delivered = receiver.wait_for("/h", 3, WAIT).await;
    let mut ns = numbers(&delivered);
    ns.sort_unstable();
    assert_eq!(ns, [10, 11, 13]);
}

/// Purge deletes execution-log rows only: an idempotency key used before a Purge of the
/// whole log still answers the first event, and nothing is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_still_deduplicates_after_a_purge() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    create(
        &server.client,
        http_handler(
            "once",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/once"),
        ),
    )
    .await;
    let keyed = proto::EmitRequest {
        idempotency_key: "K".into(),
        ..event_request("clients.create", proto::Phase::After, r#"{"n": 1}"#)
    };
    let first = server.client.emit(keyed.clone()).await.expect("first emit");
    receiver.wait_for("/once", 1, WAIT).await;
    crate::dispatch::wait_for_logs(&db, "the run", |rows| rows.len() == 1).await;
    let in_a_minute = chrono::Utc::now() + chrono::Duration::minutes(1);
    let purged = server
        .client
        .purge(proto::PurgeRequest {
            older_than: Some(prost_types::Timestamp {
                seconds: in_a_minute.timestamp(),
                nanos: 0,
            }),
        })
        .await
        .expect("purge");
    assert_eq!(purged.deleted, 1);
    let again = server.client.emit(keyed).await.expect("emit after purge");
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.event_id, first.event_id);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(receiver.count("/once"), 1, "delivered once");
}

/// A key reused with different content (other data, or another event) is a client bug:
/// FAILED_PRECONDITION naming the key and the first event, from Emit, EmitBatch (the
/// whole batch refused, nothing stored) and EmitStream (an error ack); the same content
/// is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_reused_with_different_content_is_refused_everywhere() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let keyed = |event: &str, data: &str| proto::EmitRequest {
        idempotency_key: "k1".into(),
        ..event_request(event, proto::Phase::After, data)
    };
    let first = server
        .client
        .emit(keyed("clients.create", r#"{"id":1}"#))
        .await
        .expect("first emit");
    let same = server
        .client
        .emit(keyed("clients.create", r#"{"id":1}"#))
        .await
        .expect("a true repeat");
    assert!(same.duplicate && same.event_id == first.event_id);
    let refused = |result: Result<proto::EmitResponse, ClientError>| match result {
        Err(error) if error.code() == Some(tonic::Code::FailedPrecondition) => error
            .status()
            .map(|s| s.message().to_owned())
            .unwrap_or_default(),
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    };
    for (event, data) in [
        ("clients.create", r#"{"id":2}"#),
        ("clients.create", r#"{"id": 1}"#),
        ("accounts.create", r#"{"id":1}"#),
    ] {
        let message = refused(server.client.emit(keyed(event, data)).await);
        assert!(
            message.contains("\"k1\"") && message.contains(&format!("event {}", first.event_id)),
            "{message}"
        );
    }

    let batch = proto::EmitBatchRequest {
        events: vec![
            event_request("clients.update", proto::Phase::After, r#"{"new": true}"#),
            keyed("clients.create", r#"{"id":2}"#),
        ],
    };
    match server.client.emit_batch(batch).await {
        Err(error) if error.code() == Some(tonic::Code::FailedPrecondition) => {
            let message = error
                .status()
                .map(|s| s.message().to_owned())
                .unwrap_or_default();
            assert!(message.starts_with("events[1]:"), "{message}");
        }
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM events"),
        1,
        "the refused batch stored nothing"
    );
    let repeat_in_batch = server
        .client
        .emit_batch(proto::EmitBatchRequest {
            events: vec![keyed("clients.create", r#"{"id":1}"#)],
        })
        .await
        .expect("a true repeat in a batch");
    assert!(repeat_in_batch.acks[0].duplicate);

    let mut acks = server
        .client
        .emit_stream(tokio_stream::iter(vec![proto::EmitStreamRequest {
            sequence: 1,
            event: Some(keyed("clients.create", r#"{"id":3}"#)),
        }]))
        .await
        .expect("stream");
    let ack = acks.message().await.expect("ack").expect("one ack");
    assert_eq!(
        ack.error_code,
        tonic::Code::FailedPrecondition as i32,
        "{ack:?}"
    );
    assert!(ack.error_message.contains("\"k1\""), "{ack:?}");
    assert_eq!(count(&db, "SELECT count(*) AS n FROM events"), 1);
}
