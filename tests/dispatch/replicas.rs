//! Several `provisiond` processes on one database: handler changes seen at once by
//! another replica, no accepted event lost to a SIGKILL, and work shared through leases
//! without delivering an attempt twice.

use std::collections::HashSet;
use std::time::Duration;

use provisioning_client::proto;
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::{
    eventually, prepare_scripts_dir, spawn_server_process, TempDir, TestDatabase,
};

use super::{
    count, create, emit_after, emit_before, event_request, http_handler, log_rows, numbers,
    script_handler, LONG_WAIT, WAIT,
};

/// Handler changes made through one replica apply to the very next event emitted
/// through another: nothing is cached (the original product waited ~5 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_changes_through_one_replica_apply_at_once_on_another() {
    let db = TestDatabase::new().await;
    let scripts = TempDir::new("provisioning-scripts");
    let a = spawn_server_process(&db, scripts.path(), &[]).await;
    let b = spawn_server_process(&db, scripts.path(), &[]).await;
    let receiver = Receiver::start().await;

    let handler = create(
        &a.client,
        http_handler(
            "h",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/one"),
        ),
    )
    .await;
    assert_eq!(
        emit_after(&b.client, "clients.create", r#"{"n": 1}"#)
            .await
            .deliveries,
        1,
        "created"
    );
    // A delivery runs against the handler as it is when it runs: disabling the handler
    // before event 1 went out would leave its delivery dead (see lifecycle.rs).
    receiver.wait_for("/one", 1, WAIT).await;

    let set_status = |status: proto::HandlerStatus| proto::SetHandlerStatusRequest {
        id: handler.id,
        status: status.into(),
    };
    a.client
        .set_handler_status(set_status(proto::HandlerStatus::Disabled))
        .await
        .expect("disable");
    assert_eq!(
        emit_after(&b.client, "clients.create", r#"{"n": 2}"#)
            .await
            .deliveries,
        0,
        "disabled"
    );
    a.client
        .set_handler_status(set_status(proto::HandlerStatus::Enabled))
        .await
        .expect("enable");
    assert_eq!(
        emit_after(&b.client, "clients.create", r#"{"n": 3}"#)
            .await
            .deliveries,
        1,
        "enabled again"
    );

    // Deliveries use the handler as it is when they run: let event 3 arrive at the old
    // URL before changing it.
    let mut first = numbers(&receiver.wait_for("/one", 2, WAIT).await);
    first.sort_unstable();
    assert_eq!(first, [1, 3]);

    a.client
        .update_handler(proto::UpdateHandlerRequest {
            handler: Some(proto::Handler {
                id: handler.id,
                target: Some(proto::handler::Target::Http(proto::HttpTarget {
                    url: receiver.url("/two"),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["http".into()],
            }),
        })
        .await
        .expect("update the URL");
    assert_eq!(
        emit_after(&b.client, "clients.create", r#"{"n": 4}"#)
            .await
            .deliveries,
        1
    );
    assert_eq!(
        numbers(&receiver.wait_for("/two", 1, WAIT).await),
        [4],
        "the new URL is used at once"
    );
    assert_eq!(
        receiver.requests("/one").len(),
        2,
        "nothing more went to the old URL"
    );

    receiver.route("/guard", vec![Reply::text(403, "blocked")]);
    let guard = create(
        &a.client,
        http_handler(
            "guard",
            "clients.create",
            proto::Phase::Before,
            &receiver.url("/guard"),
        ),
    )
    .await;
    let verdict = emit_before(&b.client, "clients.create", r#"{"n": 5}"#).await;
    assert_eq!(
        verdict.decision,
        i32::from(proto::Decision::Forbidden),
        "{verdict:?}"
    );
    a.client
        .set_handler_status(proto::SetHandlerStatusRequest {
            id: guard.id,
            status: proto::HandlerStatus::Disabled.into(),
        })
        .await
        .expect("disable the guard");
    let verdict = emit_before(&b.client, "clients.create", r#"{"n": 6}"#).await;
    assert_eq!(
        verdict.decision,
        i32::from(proto::Decision::Allowed),
        "{verdict:?}"
    );
    assert!(verdict.results.is_empty());
}

/// An AFTER event accepted by Emit is never lost: a server SIGKILLed in the middle of
/// deliveries leaves its leased work to the next server, which delivers every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_flight_when_the_server_is_killed_are_delivered_after_restart() {
    const EVENTS: u64 = 30;
    let db = TestDatabase::new().await;
    let scripts = TempDir::new("provisioning-scripts");
    let receiver = Receiver::start().await;
    receiver.route("/slow", vec![Reply::ok().delay(Duration::from_secs(1))]);
    let mut first = spawn_server_process(&db, scripts.path(), &[]).await;
    create(
        &first.client,
        http_handler(
            "slow",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/slow"),
        ),
    )
    .await;

    let mut accepted = HashSet::new();
    for n in 0..EVENTS {
        let reply = emit_after(&first.client, "clients.create", &format!(r#"{{"n": {n}}}"#)).await;
        assert_eq!(reply.deliveries, 1);
        accepted.insert(reply.event_id);
    }
    receiver.wait_for("/slow", 1, WAIT).await;
    first.kill().await;
    let answered_before_kill = receiver
        .all_requests()
        .iter()
        .filter(|r| r.replied.is_some())
        .count();
    assert!(
        (answered_before_kill as u64) < EVENTS,
        "the kill came too late to interrupt anything"
    );

    let second = spawn_server_process(&db, scripts.path(), &[]).await;
    receiver
        .wait_until(LONG_WAIT, "every accepted event", |all| {
            numbers(all).into_iter().collect::<HashSet<_>>().len() as u64 == EVENTS
        })
        .await;
    eventually(LONG_WAIT, "every delivery settled", || {
        std::future::ready((count(&db, "SELECT count(*) AS n FROM deliveries") == 0).then_some(()))
    })
    .await;
    let delivered: HashSet<i64> = log_rows(&db)
        .iter()
        .filter(|r| r.status == "success")
        .map(|r| r.event_id)
        .collect();
    assert_eq!(
        delivered, accepted,
        "every accepted event has a SUCCESS row"
    );
    drop(second);
}

/// Two replicas on one database share the work through SKIP LOCKED leases: every one of
/// 2,000 events is delivered, both replicas deliver, and no attempt is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_2000_events_delivering_each_once() {
    const EVENTS: usize = 2_000;
    let db = TestDatabase::new().await;
    let root = TempDir::new("provisioning-replicas");
    let scripts = root.path().join("scripts");
    prepare_scripts_dir(&scripts);
    let a = spawn_server_process(&db, &scripts, &[]).await;
    let b = spawn_server_process(&db, &scripts, &[]).await;
    // A script records each run with its parent, the server process that ran it.
    create(
        &a.client,
        script_handler(
            "record",
            "subscriptions.renew",
            proto::Phase::After,
            "record.sh",
        ),
    )
    .await;
    let event = |n: usize| {
        event_request(
            "subscriptions.renew",
            proto::Phase::After,
            &format!(r#"{{"n": {n}}}"#),
        )
    };

    // Half through EmitBatch on one replica, half through EmitStream on the other, at once.
    let batches = async {
        let mut ids = Vec::new();
        for chunk in (0..EVENTS / 2).collect::<Vec<_>>().chunks(250) {
            let events = chunk.iter().map(|n| event(*n)).collect();
            let reply = a
                .client
                .emit_batch(proto::EmitBatchRequest { events })
                .await
                .expect("emit batch");
            ids.extend(reply.acks.iter().map(|ack| ack.event_id));
        }
        ids
    };
    let stream = async {
        let requests: Vec<_> = (EVENTS / 2..EVENTS)
            .map(|n| proto::EmitStreamRequest {
                sequence: n as u64,
                event: Some(event(n)),
            })
            .collect();
        let mut acks = b
            .client
            .emit_stream(tokio_stream::iter(requests))
            .await
            .expect("open the stream");
        let mut ids = Vec::new();
        while let Some(ack) = acks.message().await.expect("ack stream") {
            assert_eq!(ack.error_code, 0, "{ack:?}");
            ids.push(ack.event_id);
        }
        ids
    };
    let (batched, streamed) = tokio::join!(batches, stream);
    let ids: HashSet<i64> = batched.into_iter().chain(streamed).collect();
    assert_eq!(ids.len(), EVENTS);

    eventually(LONG_WAIT, "2,000 SUCCESS rows", || {
        let done = count(
            &db,
            "SELECT count(*) AS n FROM execution_logs WHERE status = 'success'",
        ) >= EVENTS as i64;
        std::future::ready(done.then_some(()))
    })
    .await;
    // Under load an attempt may fail (a script past its timeout) and be retried: that
    // is at-least-once working. What must never happen is one attempt run twice (two
    // replicas claiming the same delivery) or an event delivered twice.
    let rows = log_rows(&db);
    let failures: Vec<&str> = rows
        .iter()
        .filter(|r| r.status != "success")
        .map(|r| r.error.as_str())
        .collect();
    println!(
        "{} failed attempts, retried: {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
    let successes: HashSet<i64> = rows
        .iter()
        .filter(|r| r.status == "success")
        .map(|r| r.event_id)
        .collect();
    assert_eq!(successes, ids, "one success per event");
    assert_eq!(
        rows.iter().filter(|r| r.status == "success").count(),
        EVENTS,
        "no event delivered twice"
    );
    let attempts: HashSet<(i64, i32)> = rows.iter().map(|r| (r.event_id, r.attempt)).collect();
    assert_eq!(attempts.len(), rows.len(), "no attempt run twice");
    assert_eq!(count(&db, "SELECT count(*) AS n FROM deliveries"), 0);

    let runs =
        std::fs::read_to_string(scripts.join("out/deliveries.txt")).expect("the script's record");
    let runs: Vec<(i64, u32)> = runs
        .lines()
        .map(|line| {
            let (event_id, parent) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            (
                event_id.parse().expect("event id"),
                parent.parse().expect("parent pid"),
            )
        })
        .collect();
    assert!(
        runs.len() >= EVENTS && runs.len() <= rows.len(),
        "{} runs for {} logged attempts of {EVENTS} events",
        runs.len(),
        rows.len()
    );
    assert_eq!(runs.iter().map(|(id, _)| *id).collect::<HashSet<_>>(), ids);
    let replicas: HashSet<u32> = runs.iter().map(|(_, parent)| *parent).collect();
    assert_eq!(replicas.len(), 2, "both replicas delivered: {replicas:?}");
}
