//! Database outages answer UNAVAILABLE, never INTERNAL: the server's connections are
//! killed (`pg_terminate_backend`) again and again while callers emit; every call either
//! succeeds or says UNAVAILABLE, a retry with the same idempotency key is safe, and every
//! acknowledged event is delivered. A database turned read-only (a failover) answers
//! writes with UNAVAILABLE too. (Stopping and restarting PostgreSQL: `faults.rs`.)

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use provisioning_client::{proto, ClientError};
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::{spawn_server, TestDatabase};

use crate::dispatch::{create, event_request, http_handler, numbers, WAIT};

/// Kills every other connection to the test database 15 times, 60 ms apart, from a
/// thread of its own; the task returns how many connections it killed.
fn kill_connections_repeatedly(db: &TestDatabase) -> tokio::task::JoinHandle<usize> {
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        let mut conn = diesel::PgConnection::establish(&url).expect("killer connection");
        let mut kills = 0;
        for _ in 0..15 {
            std::thread::sleep(Duration::from_millis(60));
            kills += diesel::sql_query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .execute(&mut conn)
            .expect("terminating backends");
        }
        kills
    })
}

/// Killed connections mid-load: only OK and UNAVAILABLE, retries with the same key
/// converge, nothing acknowledged is lost and nothing is delivered twice for a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_database_connections_answer_unavailable_and_lose_nothing() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/h", vec![Reply::ok()]);
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

    let killer = kill_connections_repeatedly(&db);

    let emitters = (0..4).map(|worker| {
        // The raw statuses, as any gRPC client would see them.
        let client = server
            .client
            .clone()
            .with_retry_policy(provisioning_client::RetryPolicy::NONE);
        tokio::spawn(async move {
            let mut codes = Vec::new();
            for i in 0..60u32 {
                let n = worker * 1000 + i;
                let request = proto::EmitRequest {
                    idempotency_key: format!("k{n}"),
                    ..event_request(
                        "clients.create",
                        proto::Phase::After,
                        &format!(r#"{{"n": {n}}}"#),
                    )
                };
                // Retry UNAVAILABLE with the same key, as a client should.
                let deadline = Instant::now() + WAIT;
                loop {
                    match client.emit(request.clone()).await {
                        Ok(_) => break,
                        Err(ClientError::Rpc(status)) => {
                            codes.push(status.code());
                            assert_eq!(
                                status.code(),
                                tonic::Code::Unavailable,
                                "event {n}: {status:?}"
                            );
                            assert!(Instant::now() < deadline, "event {n} never stored");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(other) => panic!("event {n}: {other}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            codes
        })
    });
    let mut unavailable = 0;
    for emitter in emitters {
        unavailable += emitter.await.expect("emitter").len();
    }
    let kills = killer.await.expect("killer");
    println!("{kills} connections killed, {unavailable} calls answered UNAVAILABLE");
    assert!(
        kills > 0,
        "no connection was killed: the test proved nothing"
    );

    let expected: BTreeSet<u64> = (0..4u64)
        .flat_map(|w| (0..60u64).map(move |i| w * 1000 + i))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: BTreeSet<u64> = numbers(&receiver.requests("/h")).into_iter().collect();
        if delivered == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing deliveries: {:?}",
            expected.difference(&delivered).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        crate::dispatch::count(&db, "SELECT count(*) AS n FROM events"),
        240,
        "one event per key"
    );
}

/// The client crate on its own (default retry policy, no key given by the caller):
/// every emit through killed connections succeeds, and each event is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_crate_retries_emits_through_killed_connections_storing_each_once() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let killer = kill_connections_repeatedly(&db);
    let emitters = (0..4).map(|worker| {
        let client = server.client.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                let data = format!(r#"{{"n": {}}}"#, worker * 1000 + i);
                client
                    .emit(event_request("clients.create", proto::Phase::After, &data))
                    .await
                    .unwrap_or_else(|e| panic!("{data}: the client gave up: {e}"));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    });
    for emitter in emitters {
        emitter.await.expect("emitter");
    }
    assert!(killer.await.expect("killer") > 0);
    assert_eq!(
        crate::dispatch::count(&db, "SELECT count(*) AS n FROM events"),
        240,
        "every event stored exactly once"
    );
    assert_eq!(
        crate::dispatch::count(
            &db,
            "SELECT count(DISTINCT data) AS n FROM events WHERE idempotency_key IS NOT NULL"
        ),
        240,
        "each with a key of its own"
    );
}

/// A database that turned read-only (a primary demoted to a standby by a failover)
/// refuses writes: Emit and handler changes answer UNAVAILABLE, reads still work, and
/// writes succeed again once it accepts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_answers_unavailable_to_writes() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let client = server
        .client
        .clone()
        .with_retry_policy(provisioning_client::RetryPolicy::NONE);
    let set_read_only = |on: bool| {
        let url = db.url.clone();
        let name = db.name().to_owned();
        tokio::task::spawn_blocking(move || {
            use diesel::connection::SimpleConnection;
            use diesel::Connection;
            let mut conn = diesel::PgConnection::establish(&url).expect("connection");
            // This session may itself have started read-only.
            conn.batch_execute("SET default_transaction_read_only = off")
                .expect("SET");
            conn.batch_execute(&format!(
                "ALTER DATABASE {name} SET default_transaction_read_only = {on}"
            ))
            .expect("ALTER DATABASE");
            // Sessions read the setting when they start: make the server open new ones.
            diesel::sql_query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .execute(&mut conn)
            .expect("terminating backends");
        })
    };
    set_read_only(true).await.expect("read-only");
    // Reads work; each terminated pooled connection fails one call and is replaced, so
    // after a run of successes every connection in the pool is a read-only one.
    let mut successes = 0;
    let deadline = Instant::now() + WAIT;
    while successes < 20 {
        match client
            .list_handlers(proto::ListHandlersRequest::default())
            .await
        {
            Ok(_) => successes += 1,
            Err(error) => {
                assert_eq!(error.code(), Some(tonic::Code::Unavailable), "{error}");
                successes = 0;
            }
        }
        assert!(Instant::now() < deadline, "reads never recovered");
    }
    let request = event_request("clients.create", proto::Phase::After, r#"{"n": 1}"#);
    for _ in 0..5 {
        let emitted = client.emit(request.clone()).await;
        assert!(
            matches!(&emitted, Err(e) if e.code() == Some(tonic::Code::Unavailable)),
            "{emitted:?}"
        );
        // With the standard detail saying when to retry.
        let status = emitted
            .err()
            .and_then(|e| e.status().cloned())
            .expect("a status");
        let retry = tonic_types::StatusExt::get_details_retry_info(&status).expect("RetryInfo");
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));
    }
    let created = client
        .create_handler(http_handler(
            "h",
            "clients.create",
            proto::Phase::After,
            "http://127.0.0.1:9/h",
        ))
        .await;
    assert!(
        matches!(&created, Err(e) if e.code() == Some(tonic::Code::Unavailable)),
        "{created:?}"
    );
    assert_eq!(
        crate::dispatch::count(&db, "SELECT count(*) AS n FROM events"),
        0
    );

    set_read_only(false).await.expect("read-write");
    let deadline = Instant::now() + WAIT;
    while let Err(error) = client.emit(request.clone()).await {
        assert_eq!(error.code(), Some(tonic::Code::Unavailable), "{error}");
        assert!(Instant::now() < deadline, "writes never came back: {error}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        crate::dispatch::count(&db, "SELECT count(*) AS n FROM events"),
        1
    );
}
