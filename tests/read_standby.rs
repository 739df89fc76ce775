//! Log reads from a real streaming standby (`--read-database-url`), made at test time
//! with `pg_basebackup -R`. With the standby's replay paused, the rows written since
//! exist only on the primary, which tells who served a read: Search and Stats come
//! from the standby while it is within `--max-read-lag`, from the primary once it lags
//! more; Get of a row the standby lacks falls back to the primary; Tail follows the
//! primary.

use std::sync::Arc;
use std::time::Duration;

use diesel::{Connection, PgConnection, RunQueryDsl};
use futures_util::StreamExt;
use provisioning_client::{proto, Client};
use provisioning_server::db::embedded::EmbeddedPostgres;
use provisioning_tests::receiver::Receiver;
use provisioning_tests::standby::Standby;
use provisioning_tests::{data_dir, eventually, free_addr, provisiond, ServerProcess, TempDir};

use crate::dispatch::{create, emit_after, http_handler, WAIT};

/// Log rows of `clients.create` a Search through `client` returns.
pub(crate) async fn searched(client: &Client) -> usize {
    let request = proto::SearchLogsRequest {
        filter: Some(proto::LogFilter {
            events: vec!["clients.create".into()],
            ..Default::default()
        }),
        limit: 1000,
        ..Default::default()
    };
    let mut rows = client.search_logs(request).await.expect("search");
    let mut n = 0;
    while let Some(row) = rows.next().await {
        row.expect("a row");
        n += 1;
    }
    n
}

/// Runs one statement on `url` from a plain thread.
async fn execute(url: &str, sql: &'static str) {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = PgConnection::establish(&url).expect("connect");
        diesel::sql_query(sql).execute(&mut conn).expect(sql);
    })
    .await
    .expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_reads_use_a_standby_that_keeps_up_and_the_primary_otherwise() {
    let root = data_dir("provisioning-standby");
    let primary = {
        let dir = root.path().join("primary");
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
            .await
            .expect("join")
            .expect("the primary")
    };
    let primary = Arc::new(primary);
    let standby = {
        let (primary, parent) = (primary.clone(), root.path().to_path_buf());
        tokio::task::spawn_blocking(move || Standby::start(&primary, &parent))
            .await
            .expect("join")
    };
    let scripts = TempDir::new("provisioning-scripts");
    let start = |max_lag: &'static str| {
        let addr = free_addr();
        let mut command = provisiond(addr, scripts.path());
        command.env("DATABASE_URL", primary.url()).args([
            "--read-database-url",
            &standby.url,
            "--max-read-lag",
            max_lag,
        ]);
        ServerProcess::start(command, addr)
    };
    let patient = start("60s").await;
    let strict = start("300ms").await;
    let receiver = Receiver::start().await;
    create(
        &patient.client,
        http_handler(
            "h",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/h"),
        ),
    )
    .await;
    for n in 0..5 {
        emit_after(
            &patient.client,
            "clients.create",
            &format!(r#"{{"n": {n}}}"#),
        )
        .await;
    }
    // Replayed on the standby and read through it.
    eventually(WAIT, "five rows on the standby", || async {
        (searched(&patient.client).await == 5).then_some(())
    })
    .await;

    execute(&standby.url, "SELECT pg_wal_replay_pause()").await;
    for n in 5..10 {
        emit_after(
            &patient.client,
            "clients.create",
            &format!(r#"{{"n": {n}}}"#),
        )
        .await;
    }
    let newest = eventually(WAIT, "ten rows on the primary", || async {
        let all = {
            let url = primary.url();
            tokio::task::spawn_blocking(move || {
                #[derive(diesel::QueryableByName)]
                struct Newest {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n: i64,
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    id: i64,
                }
                let mut conn = PgConnection::establish(&url).expect("connect");
                diesel::sql_query("SELECT count(*) AS n, max(id) AS id FROM execution_logs")
                    .get_result::<Newest>(&mut conn)
                    .map(|r| (r.n, r.id))
                    .expect("count")
            })
            .await
            .expect("join")
        };
        (all.0 == 10).then_some(all.1)
    })
    .await;

    // Within 60 s of lag: the standby serves, and it has only the first five.
    assert_eq!(
        searched(&patient.client).await,
        5,
        "Search served by the standby"
    );
    let stats = patient
        .client
        .log_stats(proto::LogStatsRequest::default())
        .await
        .expect("stats");
    assert_eq!(
        stats.handlers.iter().map(|h| h.total).sum::<u64>(),
        5,
        "Stats from the standby"
    );
    // A row the standby lacks: Get falls back to the primary.
    let log = patient
        .client
        .get_log(proto::GetLogRequest { id: newest })
        .await
        .expect("Get of a row only the primary has");
    assert_eq!(log.id, newest);
    // Tail follows the primary.
    let mut tail = patient
        .client
        .tail_logs(proto::TailLogsRequest {
            backlog: 10,
            ..Default::default()
        })
        .await
        .expect("tail");
    for _ in 0..10 {
        tokio::time::timeout(WAIT, tail.next())
            .await
            .expect("a tailed row in time")
            .expect("the tail goes on")
            .expect("a row");
    }
    drop(tail);

    // More than 300 ms behind: the strict server reads the primary.
    eventually(WAIT, "reads falling back to the primary", || async {
        (searched(&strict.client).await == 10).then_some(())
    })
    .await;

    execute(&standby.url, "SELECT pg_wal_replay_resume()").await;
    eventually(WAIT, "the standby caught up", || async {
        (searched(&patient.client).await == 10).then_some(())
    })
    .await;
    drop((patient, strict, standby));
    tokio::time::sleep(Duration::from_millis(10)).await;
}
