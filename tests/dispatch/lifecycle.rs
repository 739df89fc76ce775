//! Deliveries of handlers that change after the event was accepted: disabled
//! automatically after failing for too long, disabled by hand while a delivery waits
//! (paused, resumed when enabled), archived (ended with a log row), deleted while their
//! delivery heads an event's chain. A delivery runs against the
//! handler as it is when it runs, and no other handler's delivery of the event is lost.
//!
//! To catch deliveries before the worker takes them, some tests start the server with a
//! single worker slot and keep it busy with a slow "blocker" handler on another event.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, SmallInt};
use diesel::{QueryableByName, RunQueryDsl};
use provisioning_client::{proto, Client};
use provisioning_server::config::Schedule;
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::{eventually, spawn_server, spawn_server_with, TestDatabase};

use super::{count, create, emit_after, http_handler, log_rows, wait_for_logs, with_conn, WAIT};

/// How long the blocker holds the only worker slot: ample time for the few RPCs a test
/// makes meanwhile, even on a loaded machine.
const BLOCKED_FOR: Duration = Duration::from_secs(3);

/// Takes the only worker slot of a server started with `concurrency = 1` with an event
/// whose handler answers after [`BLOCKED_FOR`]. Until then the worker claims nothing, so
/// the deliveries of events emitted meanwhile stay as Emit stored them. Returns once the
/// blocker's request is in flight.
async fn occupy_the_only_worker_slot(client: &Client, receiver: &Receiver) {
    receiver.route("/blocker", vec![Reply::ok().delay(BLOCKED_FOR)]);
    create(
        client,
        http_handler(
            "blocker",
            "import.process_failed",
            proto::Phase::After,
            &receiver.url("/blocker"),
        ),
    )
    .await;
    emit_after(client, "import.process_failed", "{}").await;
    receiver.wait_for("/blocker", 1, WAIT).await;
}

/// Whether the blocker's request is still unanswered, i.e. the worker has claimed
/// nothing else yet.
fn still_blocked(receiver: &Receiver) -> bool {
    receiver
        .requests("/blocker")
        .iter()
        .all(|r| r.replied.is_none())
}

/// `(handler_id, state)` of each delivery of an event, in handler id order.
fn delivery_states(db: &TestDatabase, event_id: i64) -> Vec<(i64, i16)> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        handler_id: i64,
        #[diesel(sql_type = SmallInt)]
        state: i16,
    }
    let rows: Vec<Row> = with_conn(db, |conn| {
        diesel::sql_query(format!(
            "SELECT handler_id, state FROM deliveries WHERE event_id = {event_id} ORDER BY handler_id"
        ))
        .load(conn)
        .expect("reading deliveries")
    });
    rows.into_iter().map(|r| (r.handler_id, r.state)).collect()
}

async fn get(client: &Client, id: i64) -> proto::Handler {
    client
        .get_handler(proto::GetHandlerRequest { id })
        .await
        .unwrap_or_else(|e| panic!("getting handler {id}: {e}"))
}

async fn set_status(client: &Client, id: i64, status: proto::HandlerStatus) -> proto::Handler {
    client
        .set_handler_status(proto::SetHandlerStatusRequest {
            id,
            status: status.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("setting handler {id} {status:?}: {e}"))
}

fn timestamp(at: Option<prost_types::Timestamp>) -> DateTime<Utc> {
    let at = at.expect("a timestamp");
    DateTime::from_timestamp(at.seconds, at.nanos as u32).expect("a valid timestamp")
}

/// A handler failing without a single success for longer than `disable_after` is
/// disabled with a reason an operator sees in Get, is not called again, and enabling it
/// clears the reason and restarts the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_failing_longer_than_disable_after_is_disabled_until_enabled_again() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| {
        config.disable_after = Duration::from_secs(1);
        config.retry_schedule = Schedule(vec![Duration::from_millis(200)]);
        config.max_attempts = 10;
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.route("/broken", vec![Reply::text(500, "still broken")]);
    let handler = create(
        &server.client,
        http_handler(
            "broken",
            "clients.update",
            proto::Phase::After,
            &receiver.url("/broken"),
        ),
    )
    .await;
    let first_event = emit_after(&server.client, "clients.update", r#"{"n": 1}"#).await;

    let client = &server.client;
    let id = handler.id;
    let disabled = eventually(WAIT, "the handler to be disabled", || async move {
        let got = get(client, id).await;
        (got.status == i32::from(proto::HandlerStatus::Disabled)).then_some(got)
    })
    .await;
    assert!(
        disabled.disabled_reason.contains("failing"),
        "{:?}",
        disabled.disabled_reason
    );
    let failures = log_rows(&db);
    assert!(
        failures
            .iter()
            .all(|r| r.status == "fail" && r.http_status == Some(500)),
        "{failures:#?}"
    );
    let failing_for = timestamp(disabled.updated_at) - failures[0].created_at;
    assert!(
        failing_for >= chrono::Duration::seconds(1),
        "disabled after failing for only {failing_for:?}"
    );
    assert!(
        failing_for < chrono::Duration::seconds(5),
        "disabled only after failing for {failing_for:?}"
    );

    // The retry that was already scheduled finds the handler disabled: it is not sent,
    // not logged, not counted as a failure: the delivery is paused.
    wait_for_paused(&db, first_event.event_id).await;
    let rows = log_rows(&db);
    assert!(
        rows.iter().all(|r| r.http_status == Some(500)),
        "a row without a request: {rows:#?}"
    );
    assert_eq!(
        receiver.count("/broken"),
        rows.len(),
        "the endpoint was called after the handler was disabled"
    );
    let calls_while_disabled = rows.len();

    let enabled = set_status(&server.client, handler.id, proto::HandlerStatus::Enabled).await;
    assert_eq!(enabled.status, i32::from(proto::HandlerStatus::Enabled));
    assert_eq!(enabled.disabled_reason, "", "enabling clears the reason");
    let got = get(&server.client, handler.id).await;
    assert_eq!(got.status, i32::from(proto::HandlerStatus::Enabled));
    assert_eq!(got.disabled_reason, "");

    // The paused delivery resumes: it is attempted again.
    wait_for_logs(&db, "the resumed delivery's attempt", |rows| {
        rows.len() > calls_while_disabled
    })
    .await;
    // The failing clock starts again: one more failure does not disable it at once.
    let second_event = emit_after(&server.client, "clients.update", r#"{"n": 2}"#).await;
    assert_eq!(second_event.deliveries, 1);
    wait_for_logs(&db, "the new event's first failure", |rows| {
        rows.iter()
            .any(|r| r.event_id == second_event.event_id && r.http_status == Some(500))
    })
    .await;
    let got = get(&server.client, handler.id).await;
    assert_eq!(
        got.status,
        i32::from(proto::HandlerStatus::Enabled),
        "disabled again at once: {got:?}"
    );
}

/// A delivery runs against the handler as it is when it runs: a handler disabled after
/// the event was accepted gets nothing, its delivery is paused (no log row, not a
/// failure, shown as paused by Stats), and enabling the handler resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_handler_pauses_its_delivery_and_enabling_resumes_it() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.concurrency = 1).await;
    let receiver = Receiver::start().await;
    occupy_the_only_worker_slot(&server.client, &receiver).await;
    let handler = create(
        &server.client,
        http_handler(
            "soon disabled",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/late"),
        ),
    )
    .await;
    let reply = emit_after(&server.client, "clients.create", r#"{"id": 13}"#).await;
    assert_eq!(reply.deliveries, 1);
    set_status(&server.client, handler.id, proto::HandlerStatus::Disabled).await;
    assert!(
        still_blocked(&receiver),
        "the worker was free before the handler was disabled"
    );

    wait_for_paused(&db, reply.event_id).await;
    assert!(
        log_rows(&db).iter().all(|r| r.handler_id != handler.id),
        "a paused delivery is not logged"
    );
    assert_eq!(receiver.count("/late"), 0, "a disabled handler was called");
    let stats = handler_stats(&server.client, handler.id).await;
    assert_eq!(
        (stats.paused, stats.fail, stats.total),
        (1, 0, 0),
        "{stats:?}"
    );

    set_status(&server.client, handler.id, proto::HandlerStatus::Enabled).await;
    let delivered = receiver.wait_for("/late", 1, WAIT).await;
    assert_eq!(delivered[0].json()["id"], 13);
    let rows = wait_for_logs(&db, "the resumed delivery's row", |rows| {
        rows.iter().any(|r| r.handler_id == handler.id)
    })
    .await;
    let row = rows.iter().find(|r| r.handler_id == handler.id).unwrap();
    assert_eq!(
        (row.status.as_str(), row.attempt),
        ("success", 1),
        "{row:#?}"
    );
    assert_eq!(handler_stats(&server.client, handler.id).await.paused, 0);
}

/// Archiving a handler ends its paused deliveries, each with a failed log row saying
/// why; nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiving_a_handler_ends_its_paused_deliveries_with_a_log_row() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.concurrency = 1).await;
    let receiver = Receiver::start().await;
    occupy_the_only_worker_slot(&server.client, &receiver).await;
    let handler = create(
        &server.client,
        http_handler(
            "archived",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/never"),
        ),
    )
    .await;
    let reply = emit_after(&server.client, "clients.create", r#"{"id": 14}"#).await;
    set_status(&server.client, handler.id, proto::HandlerStatus::Disabled).await;
    wait_for_paused(&db, reply.event_id).await;
    set_status(&server.client, handler.id, proto::HandlerStatus::Archived).await;
    let rows = log_rows(&db);
    let row = rows
        .iter()
        .find(|r| r.handler_id == handler.id)
        .expect("a row for the ended delivery");
    assert_eq!(
        (row.status.as_str(), row.attempt, row.event_id),
        ("fail", 0, reply.event_id)
    );
    assert!(row.error.contains("handler archived"), "{}", row.error);
    assert!(delivery_states(&db, reply.event_id).is_empty());
    assert_eq!(receiver.count("/never"), 0);
}

/// Waits until the only delivery of `event_id` is paused (state 2), with no attempt
/// counted for the pause itself.
async fn wait_for_paused(db: &TestDatabase, event_id: i64) {
    eventually(WAIT, "the delivery paused", || {
        let states = delivery_states(db, event_id);
        std::future::ready((states.len() == 1 && states[0].1 == 2).then_some(()))
    })
    .await;
}

/// One handler's Stats over the last day.
async fn handler_stats(client: &Client, id: i64) -> proto::HandlerStats {
    let reply = client
        .log_stats(proto::LogStatsRequest {
            handler_id: id,
            ..Default::default()
        })
        .await
        .expect("stats");
    reply
        .handlers
        .into_iter()
        .find(|h| h.handler_id == id)
        .unwrap_or_default()
}

/// Deleting the handler whose delivery heads an event's chain before the worker took it
/// must hand the event on to the next handler, whose delivery would otherwise wait for
/// a head that no longer exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_first_handler_before_its_delivery_ran_promotes_the_next_one() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| config.concurrency = 1).await;
    let receiver = Receiver::start().await;
    occupy_the_only_worker_slot(&server.client, &receiver).await;
    let mut handlers = Vec::new();
    for (name, priority) in [("first", 1), ("second", 2)] {
        let handler = create(
            &server.client,
            proto::CreateHandlerRequest {
                priority,
                ..http_handler(
                    name,
                    "clients.delete",
                    proto::Phase::After,
                    &receiver.url(&format!("/{name}")),
                )
            },
        )
        .await;
        handlers.push(handler.id);
    }
    let (first, second) = (handlers[0], handlers[1]);
    let reply = emit_after(&server.client, "clients.delete", r#"{"n": 14}"#).await;
    assert_eq!(reply.deliveries, 2);
    assert_eq!(
        delivery_states(&db, reply.event_id),
        [(first, 1), (second, 0)],
        "the first is pending, the second waits for it"
    );

    server
        .client
        .delete_handler(proto::DeleteHandlerRequest { id: first })
        .await
        .expect("delete the first handler");
    assert_eq!(
        delivery_states(&db, reply.event_id),
        [(second, 1)],
        "the waiting delivery is promoted"
    );
    assert!(
        still_blocked(&receiver),
        "the worker was free before the handler was deleted"
    );

    let delivered = receiver.wait_for("/second", 1, WAIT).await;
    assert_eq!(delivered[0].json()["n"], 14);
    wait_for_logs(&db, "the second handler's SUCCESS row", |rows| {
        rows.iter()
            .any(|r| r.handler_id == second && r.status == "success")
    })
    .await;
    eventually(WAIT, "every delivery settled", || {
        std::future::ready((count(&db, "SELECT count(*) AS n FROM deliveries") == 0).then_some(()))
    })
    .await;
    assert_eq!(receiver.count("/first"), 0, "a deleted handler was called");
}

/// Deleting the handler whose request is in flight must not lose the event for the next
/// handler of the chain: it gets the event as soon as the deleted handler's attempt ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_first_handler_mid_request_still_delivers_to_the_second() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/first", vec![Reply::ok().delay(Duration::from_secs(3))]);
    let first = create(
        &server.client,
        proto::CreateHandlerRequest {
            priority: 1,
            timeout_ms: 10_000,
            ..http_handler(
                "first",
                "clients.delete",
                proto::Phase::After,
                &receiver.url("/first"),
            )
        },
    )
    .await;
    let second = create(
        &server.client,
        proto::CreateHandlerRequest {
            priority: 2,
            ..http_handler(
                "second",
                "clients.delete",
                proto::Phase::After,
                &receiver.url("/second"),
            )
        },
    )
    .await;
    let reply = emit_after(&server.client, "clients.delete", r#"{"n": 15}"#).await;
    assert_eq!(reply.deliveries, 2);

    receiver.wait_for("/first", 1, WAIT).await;
    server
        .client
        .delete_handler(proto::DeleteHandlerRequest { id: first.id })
        .await
        .expect("delete the first handler");
    assert!(
        receiver.requests("/first")[0].replied.is_none(),
        "the first request ended before the handler was deleted"
    );

    let delivered = receiver.wait_for("/second", 1, WAIT).await;
    assert_eq!(delivered[0].json()["n"], 15);
    let answered = receiver.requests("/first")[0]
        .replied
        .expect("the first request was answered");
    assert!(
        delivered[0].arrived >= answered,
        "the second handler ran before the first one's attempt ended"
    );
    let gap = delivered[0].arrived - answered;
    assert!(gap < Duration::from_secs(3), "delivered {gap:?} later");

    let rows = wait_for_logs(&db, "both SUCCESS rows", |rows| {
        rows.iter().filter(|r| r.status == "success").count() >= 2
    })
    .await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.handler_id, r.status.as_str()))
            .collect::<Vec<_>>(),
        [(first.id, "success"), (second.id, "success")],
        "the deleted handler's run stays in the log"
    );
    eventually(WAIT, "every delivery settled", || {
        std::future::ready((count(&db, "SELECT count(*) AS n FROM deliveries") == 0).then_some(()))
    })
    .await;
    assert_eq!(
        receiver.count("/first"),
        1,
        "the deleted handler was retried"
    );
}

/// Enabling a handler through Update (mask `status`) must restart the failing clock as
/// SetStatus does, or its next failure disables it again at once with the old date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_a_disabled_handler_through_update_restarts_the_failing_clock() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |config| {
        config.disable_after = Duration::from_secs(1);
        config.retry_schedule = Schedule(vec![Duration::from_millis(200)]);
        config.max_attempts = 10;
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.route("/broken", vec![Reply::status(500)]);
    let handler = create(
        &server.client,
        http_handler(
            "broken",
            "clients.update",
            proto::Phase::After,
            &receiver.url("/broken"),
        ),
    )
    .await;
    let first = emit_after(&server.client, "clients.update", r#"{"n": 1}"#).await;
    wait_for_paused(&db, first.event_id).await;

    let enabled = server
        .client
        .update_handler(proto::UpdateHandlerRequest {
            handler: Some(proto::Handler {
                id: handler.id,
                status: proto::HandlerStatus::Enabled.into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["status".into()],
            }),
        })
        .await
        .expect("enable through Update");
    assert_eq!(enabled.status, i32::from(proto::HandlerStatus::Enabled));
    assert_eq!(enabled.disabled_reason, "");

    let second_event = emit_after(&server.client, "clients.update", r#"{"n": 2}"#).await;
    wait_for_logs(&db, "the new event's first failure", |rows| {
        rows.iter()
            .any(|r| r.event_id == second_event.event_id && r.http_status == Some(500))
    })
    .await;
    let got = get(&server.client, handler.id).await;
    assert_eq!(
        got.status,
        i32::from(proto::HandlerStatus::Enabled),
        "disabled again at once: {got:?}"
    );
}
