//! Ordering keys end to end, judged by what a real HTTP receiver got and when: events
//! with one key reach each handler (or ordering group) one at a time in emit order,
//! across retries, dead deliveries (SKIP and BLOCK policies, ExecutionLogService.Skip)
//! and two replicas; different keys do not wait for each other; bad keys, groups and
//! policies are refused with the field named.

use std::collections::HashMap;
use std::time::Duration;

use provisioning_client::{proto, Client, ClientError};
use provisioning_tests::receiver::{Receiver, Recorded, Reply};
use provisioning_tests::{
    eventually, prepare_scripts_dir, provctl, run_command, spawn_server, spawn_server_process,
    TempDir, TestDatabase,
};
use tonic::Code;

use crate::dispatch::{
    count, create, http_handler, invalid_argument, numbers, wait_for_count, WAIT,
};

/// An AFTER event of `event` with `data` and ordering key `key`.
fn keyed(event: &str, data: &str, key: &str) -> proto::EmitRequest {
    proto::EmitRequest {
        event: event.to_owned(),
        phase: proto::Phase::After.into(),
        data_json: data.to_owned(),
        ordering_key: key.to_owned(),
        ..Default::default()
    }
}

/// Emits one keyed event; returns its id.
async fn emit(client: &Client, event: &str, data: &str, key: &str) -> i64 {
    client
        .emit(keyed(event, data, key))
        .await
        .unwrap_or_else(|e| panic!("emitting {event} {data} ({key}): {e}"))
        .event_id
}

/// A handler request with an ordering policy and group.
fn ordered_handler(
    name: &str,
    event: &str,
    url: &str,
    policy: proto::OrderingPolicy,
    group: &str,
) -> proto::CreateHandlerRequest {
    proto::CreateHandlerRequest {
        ordering_policy: policy.into(),
        ordering_group: group.to_owned(),
        ..http_handler(name, event, proto::Phase::After, url)
    }
}

/// The first failed run of a handler, by log id.
fn first_failure(db: &TestDatabase, handler_id: i64) -> i64 {
    count(
        db,
        &format!(
            "SELECT min(id) AS n FROM execution_logs WHERE handler_id = {handler_id} AND status = 'fail'"
        ),
    )
}

async fn stats_of(client: &Client, handler_id: i64) -> proto::HandlerStats {
    client
        .log_stats(proto::LogStatsRequest {
            handler_id,
            ..Default::default()
        })
        .await
        .expect("stats")
        .handlers
        .into_iter()
        .find(|s| s.handler_id == handler_id)
        .unwrap_or_default()
}

/// The first delivery of a key fails once and is retried 1 s later: the later events of
/// that key wait for it and then arrive in emit order, one at a time, while an event of
/// another key, emitted after them, goes straight through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_delivery_holds_back_the_later_events_of_its_key_only() {
    const SLOW: Duration = Duration::from_millis(40);
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route(
        "/crm",
        vec![Reply::status(503).retry_after(1), Reply::ok().delay(SLOW)],
    );
    let handler = ordered_handler(
        "crm",
        "clients.update",
        &receiver.url("/crm"),
        proto::OrderingPolicy::Unspecified,
        "",
    );
    create(&server.client, handler).await;

    for n in 0..5 {
        let data = format!(r#"{{"client": 15, "n": {n}}}"#);
        emit(&server.client, "clients.update", &data, "client:15").await;
    }
    emit(
        &server.client,
        "clients.update",
        r#"{"client": 16, "n": 100}"#,
        "client:16",
    )
    .await;

    let requests = receiver.wait_for("/crm", 7, WAIT).await;
    let client_15: Vec<Recorded> = requests
        .iter()
        .filter(|r| r.json()["client"] == 15)
        .cloned()
        .collect();
    assert_eq!(
        numbers(&client_15),
        [0, 0, 1, 2, 3, 4],
        "the first event's retry, then the rest in emit order"
    );
    for pair in client_15[1..].windows(2) {
        assert!(
            pair[1].arrived >= pair[0].arrived + SLOW,
            "a delivery of the key started before the previous one ended"
        );
    }
    let other = requests
        .iter()
        .position(|r| r.json()["client"] == 16)
        .expect("client 16's event");
    let retry = requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.json()["client"] == 15)
        .nth(1)
        .map(|(i, _)| i)
        .expect("the retry");
    assert!(
        other < retry,
        "another key's event must not wait for client:15's retry"
    );
    wait_for_count(
        &db,
        "every delivery recorded as delivered",
        "SELECT count(*) AS n FROM deliveries",
        0,
    )
    .await;
}

/// Under BLOCK, a delivery out of attempts holds its key: the next event waits (visible
/// as queued and blocked in Stats) until an operator skips the dead one; under SKIP (the
/// default) the next event goes on by itself. Skip refuses what it cannot skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_blocks_its_key_under_block_until_skipped_and_not_under_skip() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    // Three attempts (the test servers' maximum) fail, then everything succeeds.
    for path in ["/block", "/skip"] {
        receiver.route(
            path,
            vec![
                Reply::status(500),
                Reply::status(500),
                Reply::status(500),
                Reply::ok(),
            ],
        );
    }
    let blocking = create(
        &server.client,
        ordered_handler(
            "blocking",
            "subscriptions.activate",
            &receiver.url("/block"),
            proto::OrderingPolicy::Block,
            "",
        ),
    )
    .await;
    assert_eq!(
        blocking.ordering_policy,
        i32::from(proto::OrderingPolicy::Block)
    );
    let skipping = create(
        &server.client,
        ordered_handler(
            "skipping",
            "subscriptions.close",
            &receiver.url("/skip"),
            proto::OrderingPolicy::Skip,
            "",
        ),
    )
    .await;
    for n in 0..2 {
        let data = format!(r#"{{"subscription": 7, "n": {n}}}"#);
        emit(&server.client, "subscriptions.activate", &data, "sub:7").await;
        emit(&server.client, "subscriptions.close", &data, "sub:7").await;
    }

    // SKIP: the second event follows the first one's death without help.
    let skipped_on = receiver.wait_for("/skip", 4, WAIT).await;
    assert_eq!(numbers(&skipped_on), [0, 0, 0, 1]);

    // BLOCK: three failed attempts, then nothing while the dead delivery holds the key.
    wait_for_count(
        &db,
        "the blocking handler's delivery dead",
        "SELECT count(*) AS n FROM deliveries WHERE state = 3",
        2,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(numbers(&receiver.requests("/block")), [0, 0, 0]);
    let stats = stats_of(&server.client, blocking.id).await;
    assert_eq!((stats.queued, stats.blocked_keys), (1, 1), "{stats:?}");
    let stats = stats_of(&server.client, skipping.id).await;
    assert_eq!((stats.queued, stats.blocked_keys), (0, 0), "{stats:?}");

    let failed = first_failure(&db, blocking.id);
    let reply = server
        .client
        .skip(proto::SkipRequest { log_id: failed })
        .await
        .expect("skip");
    assert!(reply.delivery_id > 0 && reply.log_id > failed, "{reply:?}");
    let unblocked = receiver.wait_for("/block", 4, WAIT).await;
    assert_eq!(numbers(&unblocked), [0, 0, 0, 1]);
    let skip_row = count(
        &db,
        &format!(
            "SELECT count(*) AS n FROM execution_logs WHERE id = {} AND status = 'fail' \
             AND error LIKE 'skipped by %' AND attempt = 3",
            reply.log_id
        ),
    );
    assert_eq!(skip_row, 1, "the skip is logged as a failed run");

    // What Skip refuses.
    let code = |result: Result<proto::SkipResponse, ClientError>| {
        result.err().and_then(|e| e.code()).map(|c| c as i32)
    };
    let again = server
        .client
        .skip(proto::SkipRequest { log_id: failed })
        .await;
    assert_eq!(code(again), Some(Code::FailedPrecondition as i32));
    let success = count(
        &db,
        &format!(
            "SELECT min(id) AS n FROM execution_logs WHERE handler_id = {} AND status = 'success'",
            blocking.id
        ),
    );
    let on_success = server
        .client
        .skip(proto::SkipRequest { log_id: success })
        .await;
    assert_eq!(code(on_success), Some(Code::FailedPrecondition as i32));
    let unknown = server
        .client
        .skip(proto::SkipRequest {
            log_id: 987_654_321,
        })
        .await;
    assert_eq!(code(unknown), Some(Code::NotFound as i32));
    wait_for_count(
        &db,
        "no delivery left",
        "SELECT count(*) AS n FROM deliveries WHERE state <> 3",
        0,
    )
    .await;
}

/// Handlers of one ordering group share the order of a key: a CRM's `clients.update`
/// waits for its `clients.create` of the same client, although they are two handlers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordering_group_keeps_create_before_update_across_two_handlers() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route(
        "/crm/create",
        vec![Reply::status(503).retry_after(1), Reply::ok()],
    );
    receiver.route("/crm/update", vec![Reply::ok()]);
    for (event, path) in [
        ("clients.create", "/crm/create"),
        ("clients.update", "/crm/update"),
    ] {
        let handler = ordered_handler(
            path,
            event,
            &receiver.url(path),
            proto::OrderingPolicy::Skip,
            "crm",
        );
        let created = create(&server.client, handler).await;
        assert_eq!(created.ordering_group, "crm");
    }
    emit(
        &server.client,
        "clients.create",
        r#"{"client": 15}"#,
        "client:15",
    )
    .await;
    emit(
        &server.client,
        "clients.update",
        r#"{"client": 15}"#,
        "client:15",
    )
    .await;

    let requests = receiver
        .wait_until(WAIT, "create twice, then update", |all| all.len() >= 3)
        .await;
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/crm/create", "/crm/create", "/crm/update"]);
}

/// 1,000 keys × 20 events emitted through two replicas and delivered by both, some
/// attempts failing: every event arrives, and each key's events arrive in emit order (a
/// retry, or a redelivery after an expired lease, repeats an event, never reorders it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keys_of_twenty_events_over_two_replicas_arrive_in_order_per_key() {
    const KEYS: usize = 1_000;
    const PER_KEY: usize = 20;
    let db = TestDatabase::new().await;
    let root = TempDir::new("provisioning-ordering");
    let scripts = root.path().join("scripts");
    prepare_scripts_dir(&scripts);
    let a = spawn_server_process(&db, &scripts, &[]).await;
    let b = spawn_server_process(&db, &scripts, &[]).await;
    let receiver = Receiver::start().await;
    // Every tenth of the first 4,000 requests fails and is retried 100-200 ms later: a
    // key's next events must wait for it (the test servers make up to 8 attempts).
    let plan = (0..4_000)
        .map(|i| {
            if i % 10 == 3 {
                Reply::status(500)
            } else {
                Reply::ok()
            }
        })
        .chain([Reply::ok()])
        .collect();
    receiver.route("/o", plan);
    create(
        &a.client,
        http_handler(
            "ordered",
            "accounts.update",
            proto::Phase::After,
            &receiver.url("/o"),
        ),
    )
    .await;

    // Round n emits event n of every key: half the keys through each replica, each
    // round after the previous one is stored, so each key's emit order is 0, 1, ... 19.
    for n in 0..PER_KEY {
        let batch = |keys: std::ops::Range<usize>| proto::EmitBatchRequest {
            events: keys
                .map(|k| {
                    keyed(
                        "accounts.update",
                        &format!(r#"{{"k": {k}, "n": {n}}}"#),
                        &format!("account:{k}"),
                    )
                })
                .collect(),
        };
        let (first, second) = tokio::join!(
            a.client.emit_batch(batch(0..KEYS / 2)),
            b.client.emit_batch(batch(KEYS / 2..KEYS)),
        );
        first.expect("batch through a");
        second.expect("batch through b");
    }

    wait_until_delivered(&db, KEYS * PER_KEY).await;
    assert_in_order_per_key(&receiver.requests("/o"), KEYS, PER_KEY);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM deliveries"), 0);
}

/// Waits until `events` distinct events have a successful run.
async fn wait_until_delivered(db: &TestDatabase, events: usize) {
    eventually(Duration::from_secs(180), "every event delivered", || {
        let done = count(
            db,
            "SELECT count(DISTINCT event_id) AS n FROM execution_logs WHERE status = 'success'",
        ) >= events as i64;
        std::future::ready(done.then_some(()))
    })
    .await;
}

/// Checks that requests with bodies `{"k": key, "n": n}` came for `keys` keys, each
/// with n = 0, 1, ... `per_key` - 1 in that order (a repeat of the same n, a retry or a
/// redelivery, is allowed; going back is not).
fn assert_in_order_per_key(requests: &[Recorded], keys: usize, per_key: usize) {
    let mut arrivals: HashMap<i64, Vec<i64>> = HashMap::new();
    for request in requests {
        let body = request.json();
        let (k, n) = (body["k"].as_i64(), body["n"].as_i64());
        arrivals
            .entry(k.expect("k"))
            .or_default()
            .push(n.expect("n"));
    }
    assert_eq!(arrivals.len(), keys);
    let expected: Vec<i64> = (0..per_key as i64).collect();
    for (key, mut arrived) in arrivals {
        arrived.dedup();
        assert_eq!(arrived, expected, "key {key} out of order");
    }
}

/// A replica killed with SIGKILL while delivering keyed events: the deliveries it was
/// running are taken over by the other replica when their leases expire, and no key's
/// later event starts before them (order lives in the database, not in the dead
/// replica's memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_events_stay_in_order_when_a_replica_is_killed_mid_delivery() {
    const KEYS: usize = 100;
    const PER_KEY: usize = 10;
    let db = TestDatabase::new().await;
    let root = TempDir::new("provisioning-ordering-kill");
    let scripts = root.path().join("scripts");
    prepare_scripts_dir(&scripts);
    let mut a = spawn_server_process(&db, &scripts, &[]).await;
    let b = spawn_server_process(&db, &scripts, &[]).await;
    let receiver = Receiver::start().await;
    receiver.route("/o", vec![Reply::ok().delay(Duration::from_millis(20))]);
    create(
        &a.client,
        http_handler(
            "ordered",
            "accounts.update",
            proto::Phase::After,
            &receiver.url("/o"),
        ),
    )
    .await;
    for n in 0..PER_KEY {
        let events = (0..KEYS)
            .map(|k| {
                keyed(
                    "accounts.update",
                    &format!(r#"{{"k": {k}, "n": {n}}}"#),
                    &format!("account:{k}"),
                )
            })
            .collect();
        let client = if n % 2 == 0 { &a.client } else { &b.client };
        client
            .emit_batch(proto::EmitBatchRequest { events })
            .await
            .expect("emit batch");
    }
    receiver.wait_for("/o", KEYS * PER_KEY / 4, WAIT).await;
    a.kill().await;

    wait_until_delivered(&db, KEYS * PER_KEY).await;
    assert_in_order_per_key(&receiver.requests("/o"), KEYS, PER_KEY);
}

/// Bad keys, groups and policies are refused, naming the field; a group can be set and
/// removed with Update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ordering_keys_groups_and_policies_are_refused_naming_the_field() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let client = &server.client;

    let long = "k".repeat(201);
    let message = invalid_argument(client.emit(keyed("clients.create", "{}", &long)).await);
    assert_eq!(message, "ordering_key: must be at most 200 characters");
    let message = invalid_argument(client.emit(keyed("clients.create", "{}", "a\0b")).await);
    assert!(message.starts_with("ordering_key: "), "{message}");
    let batch = proto::EmitBatchRequest {
        events: vec![
            keyed("clients.create", "{}", "ok"),
            keyed("clients.create", "{}", &long),
        ],
    };
    let message = invalid_argument(client.emit_batch(batch).await);
    assert!(message.starts_with("events[1].ordering_key: "), "{message}");
    // Exactly 200 characters is accepted.
    emit(client, "clients.create", "{}", &"k".repeat(200)).await;

    let url = "http://127.0.0.1:9/hook";
    for group in ["CRM", "a|b", " ", &"g".repeat(101)] {
        let request = ordered_handler(
            "g",
            "clients.create",
            url,
            proto::OrderingPolicy::Skip,
            group,
        );
        let result = client.create_handler(request).await;
        if group.trim().is_empty() {
            // Blank means no group.
            assert_eq!(result.expect("no group").ordering_group, "");
            continue;
        }
        let message = invalid_argument(result);
        assert!(
            message.starts_with("ordering_group: "),
            "{group:?}: {message}"
        );
    }
    let mut request = ordered_handler("p", "clients.create", url, proto::OrderingPolicy::Skip, "");
    request.ordering_policy = 99;
    let message = invalid_argument(client.create_handler(request).await);
    assert_eq!(message, "ordering_policy: unknown value 99");

    let handler = create(
        client,
        ordered_handler(
            "u",
            "clients.create",
            url,
            proto::OrderingPolicy::Skip,
            "crm",
        ),
    )
    .await;
    let update = |group: &str, policy: proto::OrderingPolicy| proto::UpdateHandlerRequest {
        handler: Some(proto::Handler {
            id: handler.id,
            ordering_group: group.to_owned(),
            ordering_policy: policy.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["ordering_group".into(), "ordering_policy".into()],
        }),
    };
    let updated = client
        .update_handler(update("", proto::OrderingPolicy::Block))
        .await
        .expect("update");
    assert_eq!(updated.ordering_group, "");
    assert_eq!(
        updated.ordering_policy,
        i32::from(proto::OrderingPolicy::Block)
    );
    let message = invalid_argument(
        client
            .update_handler(update("Bad Group", proto::OrderingPolicy::Block))
            .await,
    );
    assert!(message.starts_with("ordering_group: "), "{message}");
}

/// The operator's side in provctl: an ordered handler created with its policy and group,
/// keyed events emitted, the blocked key shown by `handlers get` and `handlers stats`,
/// and `logs skip` letting the key go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_sets_ordering_shows_a_blocked_key_and_skips_it() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route(
        "/p",
        vec![
            Reply::status(500),
            Reply::status(500),
            Reply::status(500),
            Reply::ok(),
        ],
    );
    let run = |args: Vec<String>| {
        let mut command = provctl(&server.url);
        command.args(args);
        async move {
            let output = run_command(command).await;
            assert!(output.status.success(), "{output:?}");
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    };
    let args = |text: &str| text.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let created = run([
        args("--output json handlers create --name p --event clients.update --phase after"),
        vec!["--http".into(), receiver.url("/p")],
        args("--ordering-policy block --ordering-group crm"),
    ]
    .concat())
    .await;
    let created: serde_json::Value = serde_json::from_str(created.trim()).expect("JSON");
    assert_eq!(created["ordering_policy"], "block");
    assert_eq!(created["ordering_group"], "crm");
    let id = created["id"].as_i64().expect("id");

    for n in 0..2 {
        let mut emit = args("events emit clients.update --ordering-key client:15 --data");
        emit.push(format!(r#"{{"n": {n}}}"#));
        run(emit).await;
    }
    wait_for_count(
        &db,
        "the first delivery dead",
        "SELECT count(*) AS n FROM deliveries WHERE state = 3",
        1,
    )
    .await;
    let shown = run(args(&format!("handlers get {id}"))).await;
    for line in [
        "Ordering policy: block",
        "Ordering group:  crm",
        "Queued:          1",
        "Blocked keys:    1",
    ] {
        assert!(shown.contains(line), "{line:?} not in:\n{shown}");
    }
    let stats = run(args(&format!("--output json handlers stats {id}"))).await;
    let stats: serde_json::Value = serde_json::from_str(stats.trim()).expect("JSON");
    assert_eq!(
        (stats["queued"].as_u64(), stats["blocked_keys"].as_u64()),
        (Some(1), Some(1))
    );

    let failed = first_failure(&db, id);
    let skipped = run(args(&format!("logs skip {failed}"))).await;
    assert!(skipped.starts_with("skipped: delivery "), "{skipped}");
    let requests = receiver.wait_for("/p", 4, WAIT).await;
    assert_eq!(numbers(&requests), [0, 0, 0, 1]);
}

/// A promotion lost between two commits (a replica killed after the log batch that
/// finished a keyed delivery committed, before its promoter ran; simulated by deleting
/// the finished delivery's row behind the server's back) is made by the periodic
/// sweep: the next event of the key arrives, then the one after it, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_promotion_is_made_by_the_sweep() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route(
        "/crm",
        vec![Reply::status(503).retry_after(600), Reply::ok()],
    );
    let handler = ordered_handler(
        "crm",
        "clients.update",
        &receiver.url("/crm"),
        proto::OrderingPolicy::Unspecified,
        "",
    );
    let handler_id = create(&server.client, handler).await.id;

    let mut ids = Vec::new();
    for n in 0..3 {
        let data = format!(r#"{{"client": 15, "n": {n}}}"#);
        ids.push(emit(&server.client, "clients.update", &data, "client:15").await);
    }
    // The first attempt failed and holds the key (its retry is 10 minutes away); the
    // two later events are queued behind it.
    wait_for_count(
        &db,
        "the first attempt's failure",
        &format!("SELECT count(*) AS n FROM execution_logs WHERE handler_id = {handler_id} AND status = 'fail'"),
        1,
    )
    .await;
    let queued = format!(
        "SELECT count(*) AS n FROM deliveries WHERE handler_id = {handler_id} AND state = 4"
    );
    assert_eq!(
        count(&db, &queued),
        2,
        "the later events wait behind the first"
    );
    let gone = count(
        &db,
        &format!(
            "WITH gone AS (DELETE FROM deliveries WHERE event_id = {} RETURNING 1) SELECT count(*) AS n FROM gone",
            ids[0]
        ),
    );
    assert_eq!(gone, 1, "the first event's delivery row");

    // Nothing tells the server: only the sweep (every 5 s) finds the key free.
    let requests = receiver.wait_for("/crm", 3, WAIT).await;
    assert_eq!(numbers(&requests), vec![0, 1, 2], "arrivals: {requests:?}");
    wait_for_count(&db, "no queued delivery left", &queued, 0).await;
}
