//! Fault tests, judged from outside by a counting HTTP sink: a replica killed with
//! SIGKILL mid-load, a replica stopped with SIGTERM, PostgreSQL restarted mid-load, and
//! an endpoint that flaps. Each prints its counts (accepted, delivered, missing,
//! duplicates), so a failure says what was lost.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};
use futures_util::StreamExt;
use provisioning_client::proto::event_service_client::EventServiceClient;
use provisioning_client::{proto, RetryPolicy};
use provisioning_server::db::embedded::EmbeddedPostgres;
use provisioning_tests::receiver::{Receiver, Recorded, Reply};
use provisioning_tests::{
    data_dir, eventually, free_addr, health_status, provisiond, spawn_server_process,
    spawn_server_with, ServerProcess, TempDir, TestDatabase,
};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::dispatch::{count, create, emit_after, event_request, http_handler, log_rows, numbers};

/// How long a fault test waits for its whole workload to be delivered.
const DRAIN: Duration = Duration::from_secs(120);

/// Delivered, missing and duplicated event numbers, as the sink saw them.
struct Tally {
    accepted: usize,
    delivered: usize,
    missing: Vec<u64>,
    duplicates: usize,
}

impl Tally {
    fn of(accepted: &BTreeSet<u64>, requests: &[Recorded]) -> Tally {
        let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
        for n in numbers(requests) {
            *seen.entry(n).or_default() += 1;
        }
        Tally {
            accepted: accepted.len(),
            delivered: seen.keys().filter(|n| accepted.contains(n)).count(),
            missing: accepted
                .iter()
                .filter(|n| !seen.contains_key(n))
                .copied()
                .collect(),
            duplicates: seen.values().map(|times| times - 1).sum(),
        }
    }

    fn print(&self, test: &str) {
        println!(
            "{test}: accepted {}, delivered {}, missing {}, duplicates {}",
            self.accepted,
            self.delivered,
            self.missing.len(),
            self.duplicates
        );
    }
}

/// Waits until the sink saw every accepted number on `path`, then tallies.
async fn drain(receiver: &Receiver, path: &str, accepted: &BTreeSet<u64>) -> Tally {
    let deadline = Instant::now() + DRAIN;
    loop {
        let tally = Tally::of(accepted, &receiver.requests(path));
        if tally.missing.is_empty() || Instant::now() > deadline {
            return tally;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every replica's health says `status`.
async fn all_report(replicas: &[ServerProcess], status: ServingStatus, what: &str) {
    for replica in replicas {
        eventually(Duration::from_secs(20), what, || async {
            (health_status(&replica.url, "").await == Some(status)).then_some(())
        })
        .await;
    }
}

/// An AFTER event `{"n": n}` with the idempotency key `k<n>`.
fn keyed_event(n: u64) -> proto::EmitRequest {
    proto::EmitRequest {
        idempotency_key: format!("k{n}"),
        ..event_request(
            "clients.create",
            proto::Phase::After,
            &format!(r#"{{"n": {n}}}"#),
        )
    }
}

/// `provisiond-under-test` on `database_url` at `addr` (the same address again after a
/// restart, so clients reconnect by themselves).
async fn replica_at(
    addr: SocketAddr,
    database_url: &str,
    scripts: &Path,
    args: &[&str],
) -> ServerProcess {
    let mut command = provisiond(addr, scripts);
    command.env("DATABASE_URL", database_url).args(args);
    ServerProcess::start(command, addr).await
}

/// Three replicas on one database under a steady emit load; one is killed with SIGKILL
/// mid-load and started again. Every acknowledged event is delivered, and the only
/// duplicates are deliveries the killed replica held leased when it died (made, but not
/// yet recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_of_three_replicas_mid_load_loses_no_event() {
    const PER_EMITTER: u64 = 400;
    let db = TestDatabase::new().await;
    let scripts = TempDir::new("provisioning-scripts");
    let receiver = Receiver::start().await;
    let args = ["--concurrency", "16"];
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut replicas = Vec::new();
    for addr in &addrs {
        replicas.push(replica_at(*addr, &db.url, scripts.path(), &args).await);
    }
    create(
        &replicas[0].client,
        http_handler(
            "count",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/count"),
        ),
    )
    .await;

    // Each emitter sends through its own replica and, when that one fails, through the
    // next, with the same key: what a client with several endpoints does.
    let clients: Vec<_> = replicas
        .iter()
        .map(|r| r.client.clone().with_retry_policy(RetryPolicy::NONE))
        .collect();
    let emitters: Vec<_> = (0..3u64)
        .map(|emitter| {
            let clients = clients.clone();
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                for n in emitter * 10_000..emitter * 10_000 + PER_EMITTER {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut replica = emitter as usize;
                    loop {
                        match clients[replica % 3].emit(keyed_event(n)).await {
                            Ok(_) => break,
                            Err(error) => {
                                assert!(
                                    Instant::now() < deadline,
                                    "event {n} never accepted: {error}"
                                );
                                replica += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                    accepted.push(n);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                accepted
            })
        })
        .collect();

    receiver.wait_for("/count", 300, DRAIN).await;
    let pid = replicas[1].pid().expect("replica 1 runs");
    replicas[1].kill().await;
    // What it held when it died: the most that can be delivered twice.
    let held = count(
        &db,
        &format!("SELECT count(*) AS n FROM deliveries WHERE leased_by LIKE '{pid}-%'"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    replicas[1] = replica_at(addrs[1], &db.url, scripts.path(), &args).await;

    let mut accepted = BTreeSet::new();
    for emitter in emitters {
        accepted.extend(emitter.await.expect("emitter"));
    }
    let tally = drain(&receiver, "/count", &accepted).await;
    tally.print("SIGKILL of one of three replicas");
    println!("leases held by the killed replica: {held}");
    assert!(tally.missing.is_empty(), "lost: {:?}", tally.missing);
    assert!(
        tally.duplicates as i64 <= held,
        "{} duplicates, but the killed replica held only {held} deliveries",
        tally.duplicates
    );
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM events"),
        accepted.len() as i64,
        "one event per key"
    );
}

/// On SIGTERM a replica lets its runs in flight finish and gives back the leases of the
/// deliveries it had not started: another replica delivers them within seconds, while
/// the 60 s lease would have held them for a minute. Nothing is delivered twice and each
/// event's handlers still run in priority order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_unstarted_deliveries_to_another_replica_at_once() {
    const EVENTS: usize = 10;
    let db = TestDatabase::new().await;
    let scripts = TempDir::new("provisioning-scripts");
    let receiver = Receiver::start().await;
    receiver.route("/first", vec![Reply::ok().delay(Duration::from_secs(2))]);
    let args = ["--lease", "60s"];
    let mut stopping = spawn_server_process(&db, scripts.path(), &args).await;
    let _taking_over = spawn_server_process(&db, scripts.path(), &args).await;
    for (priority, path) in ["/first", "/second", "/third"].iter().enumerate() {
        create(
            &stopping.client,
            proto::CreateHandlerRequest {
                priority: priority as i32,
                ..http_handler(
                    path,
                    "clients.create",
                    proto::Phase::After,
                    &receiver.url(path),
                )
            },
        )
        .await;
    }
    for n in 0..EVENTS {
        let reply = emit_after(
            &stopping.client,
            "clients.create",
            &format!(r#"{{"n": {n}}}"#),
        )
        .await;
        assert_eq!(reply.deliveries, 3);
    }
    // Every event's first delivery is running on the replica about to stop.
    receiver.wait_for("/first", EVENTS, DRAIN).await;
    let status = stopping.stop().await;
    let stopped = Instant::now();
    assert!(status.success(), "{status}; log:\n{}", stopping.log());
    assert!(
        stopping.log().contains("handed back to other replicas"),
        "log:\n{}",
        stopping.log()
    );

    receiver
        .wait_until(DRAIN, "every second and third delivery", |all| {
            ["/second", "/third"]
                .iter()
                .all(|path| all.iter().filter(|r| r.path == *path).count() >= EVENTS)
        })
        .await;
    let handed_over_in = stopped.elapsed();
    println!("the other replica delivered the released work {handed_over_in:?} after the stop");
    assert!(
        handed_over_in < Duration::from_secs(20),
        "released work waited {handed_over_in:?}: as if the 60 s leases were kept"
    );
    let accepted: BTreeSet<u64> = (0..EVENTS as u64).collect();
    for path in ["/first", "/second", "/third"] {
        let tally = Tally::of(&accepted, &receiver.requests(path));
        tally.print(&format!("SIGTERM drain, {path}"));
        assert!(tally.missing.is_empty() && tally.duplicates == 0);
    }
    // Priority order per event: each delivery started after the previous one replied.
    for n in 0..EVENTS as u64 {
        let of = |path: &str| {
            receiver
                .requests(path)
                .into_iter()
                .find(|r| r.json()["n"] == n)
                .expect("delivered")
        };
        let (first, second, third) = (of("/first"), of("/second"), of("/third"));
        assert!(
            first.replied.expect("replied") <= second.arrived,
            "event {n}"
        );
        assert!(
            second.replied.expect("replied") <= third.arrived,
            "event {n}"
        );
    }
}

/// PostgreSQL stopped and started again under an emit load over two replicas: no call
/// answers INTERNAL or outlives its deadline, both replicas say NOT_SERVING while it is
/// down and SERVING after, and every event (retried with its key until accepted) is
/// stored once and delivered, without restarting anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restart_mid_load_answers_unavailable_and_loses_nothing() {
    const PER_EMITTER: u64 = 200;
    const DEADLINE: Duration = Duration::from_secs(2);
    let pg_dir = data_dir("provisioning-restart");
    let pg = {
        let dir = pg_dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
            .await
            .expect("join")
            .expect("a cluster of the test's own")
    };
    let pg = Arc::new(pg);
    let url = pg.url();
    let scripts = TempDir::new("provisioning-scripts");
    let receiver = Receiver::start().await;
    let replicas = [
        replica_at(free_addr(), &url, scripts.path(), &[]).await,
        replica_at(free_addr(), &url, scripts.path(), &[]).await,
    ];
    create(
        &replicas[0].client,
        http_handler(
            "count",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/count"),
        ),
    )
    .await;

    // Raw stubs with a deadline: the statuses as any gRPC client sees them.
    let emitters: Vec<_> = (0..4u64)
        .map(|emitter| {
            let endpoint = replicas[emitter as usize % 2].url.clone();
            tokio::spawn(async move {
                let channel = tonic::transport::Endpoint::new(endpoint)
                    .expect("endpoint")
                    .connect_lazy();
                let mut stub = EventServiceClient::new(channel);
                let mut outcomes = Vec::new();
                for n in emitter * 10_000..emitter * 10_000 + PER_EMITTER {
                    let mut request = tonic::Request::new(keyed_event(n));
                    request.set_timeout(DEADLINE);
                    let started = Instant::now();
                    let code = match stub.emit(request).await {
                        Ok(_) => tonic::Code::Ok,
                        Err(status) => status.code(),
                    };
                    outcomes.push((n, code, started.elapsed()));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (stub, outcomes)
            })
        })
        .collect();

    receiver.wait_for("/count", 100, DRAIN).await;
    let stopping = pg.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .expect("join")
        .expect("pg_ctl stop");
    all_report(
        &replicas,
        ServingStatus::NotServing,
        "NOT_SERVING while PostgreSQL is down",
    )
    .await;
    let starting = pg.clone();
    tokio::task::spawn_blocking(move || starting.ensure_running())
        .await
        .expect("join")
        .expect("pg_ctl start");
    all_report(
        &replicas,
        ServingStatus::Serving,
        "SERVING once PostgreSQL is back",
    )
    .await;

    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut accepted = BTreeSet::new();
    let mut to_retry = Vec::new();
    for emitter in emitters {
        let (stub, outcomes) = emitter.await.expect("emitter");
        for (n, code, took) in outcomes {
            *codes.entry(format!("{code:?}")).or_default() += 1;
            assert!(
                matches!(
                    code,
                    tonic::Code::Ok | tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ),
                "event {n}: {code:?}"
            );
            assert!(
                took < DEADLINE + Duration::from_millis(500),
                "event {n} took {took:?}, past its {DEADLINE:?} deadline"
            );
            if code == tonic::Code::Ok {
                accepted.insert(n);
            } else {
                to_retry.push((stub.clone(), n));
            }
        }
    }
    println!("statuses during the restart: {codes:?}");
    assert!(
        !to_retry.is_empty(),
        "no call met the outage: the test proved nothing"
    );
    // Once it is back, a retry with the same key is accepted.
    for (mut stub, n) in to_retry {
        stub.emit(keyed_event(n))
            .await
            .unwrap_or_else(|status| panic!("retrying event {n}: {status:?}"));
        accepted.insert(n);
    }
    let tally = drain(&receiver, "/count", &accepted).await;
    tally.print("PostgreSQL restart");
    assert!(tally.missing.is_empty(), "lost: {:?}", tally.missing);
    let url_for_count = url.clone();
    let stored: i64 = tokio::task::spawn_blocking(move || {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = PgConnection::establish(&url_for_count).expect("connect");
        diesel::sql_query("SELECT count(*) AS n FROM events")
            .get_result::<N>(&mut conn)
            .expect("count")
            .n
    })
    .await
    .expect("join");
    assert_eq!(stored, 4 * PER_EMITTER as i64, "every event stored once");
    drop(replicas);
}

/// An endpoint that is down (refusing), then slow past the timeout, then answers 500,
/// then 503 with `Retry-After`, then 200: every attempt waits what the retry schedule
/// (or the `Retry-After`) says, and every attempt has its row in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_endpoint_is_retried_on_schedule_and_every_attempt_is_logged() {
    let db = TestDatabase::new().await;
    let schedule = [
        Duration::from_millis(1000),
        Duration::from_millis(200),
        Duration::from_millis(300),
        Duration::from_millis(400),
    ];
    let server = spawn_server_with(&db, |config| {
        config.retry_schedule = provisioning_server::config::Schedule(schedule.to_vec());
        config.max_attempts = 8;
    })
    .await;
    // Nothing listens here yet: the first attempt is refused.
    let addr = free_addr();
    let handler = create(
        &server.client,
        proto::CreateHandlerRequest {
            timeout_ms: 300,
            ..http_handler(
                "flapping",
                "clients.create",
                proto::Phase::After,
                &format!("http://{addr}/flap"),
            )
        },
    )
    .await;
    emit_after(&server.client, "clients.create", r#"{"n": 1}"#).await;
    eventually(Duration::from_secs(20), "the refused first attempt", || {
        std::future::ready((!log_rows(&db).is_empty()).then_some(()))
    })
    .await;
    let receiver = Receiver::start_on(addr).await;
    receiver.route(
        "/flap",
        vec![
            Reply::ok().delay(Duration::from_secs(2)),
            Reply::status(500),
            Reply::status(503).retry_after(1),
            Reply::ok(),
        ],
    );
    let rows = eventually(
        Duration::from_secs(30),
        "five attempts, the last a success",
        || {
            let rows = log_rows(&db);
            std::future::ready((rows.iter().any(|r| r.status == "success")).then_some(rows))
        },
    )
    .await;
    let mut rows: Vec<_> = rows
        .into_iter()
        .filter(|r| r.handler_id == handler.id)
        .collect();
    rows.sort_by_key(|r| r.attempt);
    for row in &rows {
        println!(
            "attempt {} at {} for {} ms: {} {}",
            row.attempt, row.created_at, row.duration_ms, row.status, row.error
        );
    }
    assert_eq!(
        rows.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "one row per attempt"
    );
    assert_eq!(
        rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(),
        vec!["fail", "fail", "fail", "fail", "success"]
    );
    assert!(
        rows[0].error.to_lowercase().contains("refused"),
        "{}",
        rows[0].error
    );
    assert!(
        rows[1].error.to_lowercase().contains("timed out"),
        "{}",
        rows[1].error
    );
    assert_eq!(rows[2].http_status, Some(500));
    assert_eq!(rows[3].http_status, Some(503));
    // The wait after each failure: the schedule's entry (up to 20% jitter), or the
    // Retry-After of the 503. A generous margin above: claims wake by polling too.
    let waits = [
        schedule[0],
        schedule[1],
        schedule[2],
        Duration::from_secs(1),
    ];
    for (i, expected) in waits.iter().enumerate() {
        let ended = rows[i].created_at + chrono::Duration::milliseconds(rows[i].duration_ms.into());
        let waited = (rows[i + 1].created_at - ended)
            .to_std()
            .unwrap_or_default();
        assert!(
            waited + Duration::from_millis(5) >= *expected,
            "attempt {} came {waited:?} after attempt {}, before its {expected:?}",
            i + 2,
            i + 1
        );
        assert!(
            waited <= expected.mul_f64(1.2) + Duration::from_secs(2),
            "attempt {} came {waited:?} after attempt {}: the {expected:?} wait stalled",
            i + 2,
            i + 1
        );
    }
    assert_eq!(count(&db, "SELECT count(*) AS n FROM deliveries"), 0);
}

/// The client crate's EmitStream across a server killed mid-stream and started again
/// on the same address: the stream is resumed with the unacknowledged events (same
/// keys), the caller gets exactly one ack per event in order, and each event is stored
/// once and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_stream_resumes_after_the_server_is_killed_mid_stream() {
    const EVENTS: u64 = 1_000;
    let db = TestDatabase::new().await;
    let scripts = TempDir::new("provisioning-scripts");
    let receiver = Receiver::start().await;
    let addr = free_addr();
    let mut server = replica_at(addr, &db.url, scripts.path(), &[]).await;
    create(
        &server.client,
        http_handler(
            "count",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/count"),
        ),
    )
    .await;
    // Paced, so the kill lands mid-stream; no keys: the client gives each one.
    let events = futures_util::stream::iter(0..EVENTS).then(|n| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        proto::EmitStreamRequest {
            sequence: n,
            event: Some(event_request(
                "clients.create",
                proto::Phase::After,
                &format!(r#"{{"n": {n}}}"#),
            )),
        }
    });
    let mut acks = server
        .client
        .emit_stream(events)
        .await
        .expect("open the stream");
    let mut sequences = Vec::new();
    let mut duplicates = 0;
    while let Some(ack) = acks.message().await.expect("the stream resumes, not fails") {
        assert_eq!(ack.error_code, 0, "{ack:?}");
        duplicates += usize::from(ack.duplicate);
        sequences.push(ack.sequence);
        if sequences.len() == 300 {
            server.kill().await;
            server = replica_at(addr, &db.url, scripts.path(), &[]).await;
        }
    }
    println!(
        "EmitStream across a kill: {} acks, {duplicates} of them duplicates",
        sequences.len()
    );
    assert_eq!(
        sequences,
        (0..EVENTS).collect::<Vec<_>>(),
        "one ack per event, in order"
    );
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM events"),
        EVENTS as i64,
        "each stored once"
    );
    let accepted: BTreeSet<u64> = (0..EVENTS).collect();
    let tally = drain(&receiver, "/count", &accepted).await;
    tally.print("EmitStream across a kill");
    assert!(tally.missing.is_empty(), "lost: {:?}", tally.missing);
    drop(server);
}
