//! Two `provisiond` replicas whose pools go through a real PgBouncer in transaction
//! pooling mode (a handful of server connections shared by both), with their LISTEN
//! connections direct (`--listen-database-url`): emitting, delivering each AFTER event
//! once, searching and tailing across replicas all work. Skipped, saying so, only where
//! the `pgbouncer` binary is not installed (CI installs it).

use std::collections::HashSet;
use std::time::Duration;

use diesel::sql_types::BigInt;
use diesel::{QueryableByName, RunQueryDsl};
use futures_util::StreamExt;
use provisioning_client::proto;
use provisioning_tests::pgbouncer::PgBouncer;
use provisioning_tests::receiver::Receiver;
use provisioning_tests::{eventually, free_addr, provisiond, ServerProcess, TempDir, TestDatabase};

use crate::dispatch::{create, emit_after, http_handler, numbers, with_conn, WAIT};
use crate::read_standby::searched;

/// Server connections PgBouncer may open to the test database: fewer than the two
/// replicas' pools, so sessions are shared between them.
const POOL_SIZE: u32 = 3;
/// AFTER events emitted, alternately through each replica.
const EVENTS: u64 = 40;

/// Starts a replica whose pool goes through `pooled_url` and whose LISTEN connection
/// goes to `direct_url`, with `statements` as its prepared-statement mode.
async fn start_replica(
    pooled_url: &str,
    direct_url: &str,
    statements: &str,
    scripts: &TempDir,
) -> ServerProcess {
    let addr = free_addr();
    let mut command = provisiond(addr, scripts.path());
    command
        .env("DATABASE_URL", pooled_url)
        .env("PROVISIOND_LISTEN_DATABASE_URL", direct_url)
        .env("PROVISIOND_PREPARED_STATEMENTS", statements)
        .env("PROVISIOND_DB_POOL_SIZE", "8");
    ServerProcess::start(command, addr).await
}

/// Sessions on `db`'s database other than the caller's: those whose last statement was
/// LISTEN, and the others.
fn sessions(db: &TestDatabase) -> (i64, i64) {
    #[derive(QueryableByName)]
    struct Sessions {
        #[diesel(sql_type = BigInt)]
        listening: i64,
        #[diesel(sql_type = BigInt)]
        others: i64,
    }
    let counted: Sessions = with_conn(db, |conn| {
        diesel::sql_query(
            "SELECT count(*) FILTER (WHERE query LIKE 'LISTEN%') AS listening, \
                    count(*) FILTER (WHERE query NOT LIKE 'LISTEN%') AS others \
             FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .get_result(conn)
        .expect("counting sessions")
    });
    (counted.listening, counted.others)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_through_pgbouncer_transaction_pooling_deliver_once_and_tail() {
    let Some(binary) = PgBouncer::binary() else {
        eprintln!(
            "SKIPPED pgbouncer::two_replicas_through_pgbouncer_transaction_pooling_deliver_once_and_tail: \
             no pgbouncer binary on PATH or in /usr/sbin (apt-get install pgbouncer)"
        );
        return;
    };
    let db = TestDatabase::new().await;
    let bouncer = {
        let url = db.url.clone();
        tokio::task::spawn_blocking(move || PgBouncer::start(&binary, &url, POOL_SIZE))
            .await
            .expect("join")
    };
    let pooled = bouncer.url_for(db.name());
    let scripts = TempDir::new("provisioning-scripts");
    // Unnamed statements work with any PgBouncer; a version that carries named ones
    // (max_prepared_statements, set by the helper) runs the second replica with them.
    let a = start_replica(&pooled, &db.url, "unnamed", &scripts).await;
    let second_mode = if bouncer.has_prepared_statements() {
        "named"
    } else {
        "unnamed"
    };
    let b = start_replica(&pooled, &db.url, second_mode, &scripts).await;
    eprintln!(
        "pgbouncer {:?}: replica b runs {second_mode} statements",
        bouncer.version()
    );
    let receiver = Receiver::start().await;
    create(
        &a.client,
        http_handler(
            "h",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/h"),
        ),
    )
    .await;

    // Tail on b before anything is written: rows a records reach it only through the
    // NOTIFY a sends on a pooled connection and b's direct LISTEN.
    let mut tail = b
        .client
        .tail_logs(proto::TailLogsRequest::default())
        .await
        .expect("tail on b");
    for n in 0..EVENTS {
        let through = if n % 2 == 0 { &a.client } else { &b.client };
        let accepted = emit_after(through, "clients.create", &format!(r#"{{"n": {n}}}"#)).await;
        assert_eq!(accepted.deliveries, 1, "event {n} has its delivery");
    }

    let delivered = receiver.wait_for("/h", EVENTS as usize, WAIT).await;
    // Anything delivered twice would arrive by now (deliveries run at once).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = receiver.requests("/h").len().max(delivered.len());
    assert_eq!(
        delivered, EVENTS as usize,
        "each event delivered exactly once"
    );
    let mut seen = numbers(&receiver.requests("/h"));
    seen.sort_unstable();
    assert_eq!(seen, (0..EVENTS).collect::<Vec<_>>());
    let webhook_ids: HashSet<String> = receiver
        .requests("/h")
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect();
    assert_eq!(
        webhook_ids.len(),
        EVENTS as usize,
        "one delivery id per event"
    );

    let mut tailed = HashSet::new();
    while tailed.len() < EVENTS as usize {
        let row = tokio::time::timeout(WAIT, tail.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {EVENTS} rows tailed on b; pgbouncer log:\n{}",
                    tailed.len(),
                    bouncer.log()
                )
            })
            .expect("the tail goes on")
            .expect("a tailed row");
        tailed.insert(row.log.expect("a tailed run").id);
    }
    drop(tail);
    assert_eq!(searched(&a.client).await, EVENTS as usize, "Search on a");
    assert_eq!(searched(&b.client).await, EVENTS as usize, "Search on b");

    // The sessions on the database: one direct LISTEN per replica, and every other
    // one PgBouncer's (at most its pool). Counted on one connection, excluded, and
    // polled: a backend whose client just left (an earlier check's) lingers a moment.
    eventually(
        WAIT,
        "two LISTEN sessions and the rest within PgBouncer's pool",
        || async {
            let (listening, others) = sessions(&db);
            (listening == 2 && others <= i64::from(POOL_SIZE)).then_some(())
        },
    )
    .await;
    drop((a, b, bouncer));
}
