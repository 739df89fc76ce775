//! Who owns an embedded cluster, with the real `provisiond` on a data directory and no
//! database URL: a second server on the same directory is refused while the owner keeps
//! serving; a SIGKILLed owner's directory is taken over and its still-running cluster
//! adopted; a postmaster killed under a running owner is started again. In each case
//! every AFTER event accepted is delivered to a real HTTP receiver and logged.

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use provisioning_client::{proto, Client};
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::{
    data_dir, embedded_command, eventually, is_serving, postmaster_pid, prepare_scripts_dir,
    run_command, start_embedded, PostmasterGuard, ServerProcess, TempDir,
};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::dispatch::{create, emit_after, http_handler, numbers, process_gone, WAIT};

const EVENT: &str = "clients.create";
/// How long a restart of the cluster (crash recovery included) may take.
const RESTART_WAIT: Duration = Duration::from_secs(90);

/// Creates an AFTER handler posting `EVENT` to `receiver` at `path`, with a 2 s timeout
/// so that a lease held by a killed server expires quickly (test lease 2 s + timeout).
async fn hook(client: &Client, receiver: &Receiver, path: &str) {
    let mut request = http_handler("hook", EVENT, proto::Phase::After, &receiver.url(path));
    request.timeout_ms = 2000;
    create(client, request).await;
}

/// Emits `{"n": n}` for every n in `range`; returns the accepted event ids.
async fn emit_numbers(client: &Client, range: std::ops::Range<u64>) -> Vec<i64> {
    let mut ids = Vec::new();
    for n in range {
        let reply = emit_after(client, EVENT, &format!(r#"{{"n": {n}}}"#)).await;
        assert_eq!(reply.deliveries, 1, "event {n}: {reply:?}");
        ids.push(reply.event_id);
    }
    ids
}

/// Waits until `receiver` got every number below `count` (each test's handler is its
/// only route) and the execution log, read through `client`, has a successful run for
/// every event in `ids`.
async fn wait_delivered_and_logged(receiver: &Receiver, count: u64, client: &Client, ids: &[i64]) {
    receiver
        .wait_until(RESTART_WAIT, "every accepted event delivered", |all| {
            let got: HashSet<u64> = numbers(all).into_iter().collect();
            (0..count).all(|n| got.contains(&n))
        })
        .await;
    let wanted: HashSet<i64> = ids.iter().copied().collect();
    eventually(
        RESTART_WAIT,
        "a successful log row for every event",
        || async {
            let logged = successful_runs(client).await?;
            wanted.is_subset(&logged).then_some(())
        },
    )
    .await;
}

/// The event ids with a successful run in the execution log; `None` if the server
/// cannot answer right now.
async fn successful_runs(client: &Client) -> Option<HashSet<i64>> {
    let mut stream = client
        .search_logs(proto::SearchLogsRequest {
            filter: Some(proto::LogFilter {
                status: proto::RunStatus::Success.into(),
                events: vec![EVENT.to_owned()],
                ..Default::default()
            }),
            limit: 1000,
            cursor: String::new(),
        })
        .await
        .ok()?;
    let mut ids = HashSet::new();
    while let Some(entry) = stream.message().await.ok()? {
        ids.insert(entry.log?.event_id);
    }
    Some(ids)
}

/// Stops `server` with SIGTERM and checks that it exited cleanly and stopped the
/// cluster under `data_dir`.
async fn stop_cleanly(server: &mut ServerProcess, data_dir: &Path) {
    let status = server.stop().await;
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log()
    );
    assert_eq!(
        postmaster_pid(&data_dir.join("pgdata")),
        None,
        "the owner stopped its cluster"
    );
}

/// The issue's scenario: a second server on a data directory in use must not start (it
/// would serve from the owner's cluster and stop it on exit); it says who holds the
/// directory and what to do instead, and the owner is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_directory_refuses_and_the_first_keeps_serving() {
    let data = data_dir("provisiond-owner");
    let scripts = TempDir::new("provisiond-scripts");
    prepare_scripts_dir(scripts.path());
    let pgdata = data.path().join("pgdata");
    let _guard = PostmasterGuard::new(data.path());
    let receiver = Receiver::start().await;

    let mut first = start_embedded(data.path(), scripts.path()).await;
    let owner = first.pid().expect("the owner runs");
    let postmaster = postmaster_pid(&pgdata).expect("the owner's cluster runs");
    hook(&first.client, &receiver, "/owner").await;
    let before = emit_numbers(&first.client, 0..2).await;

    let (second, _) = embedded_command(data.path(), scripts.path());
    let refused = run_command(second).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "stderr:\n{stderr}");
    let expected = format!(
        "data directory {} is in use by provisiond PID {owner}; choose another --data-dir, \
         or point --database-url at the running cluster",
        data.path()
            .canonicalize()
            .expect("the data directory")
            .display()
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(data.path().join("provisiond.lock"))
            .expect("the lock file")
            .trim(),
        owner.to_string(),
        "the lock file names the owner"
    );

    assert_eq!(
        postmaster_pid(&pgdata),
        Some(postmaster),
        "the refused server left the cluster alone"
    );
    assert!(is_serving(&first.url).await, "the owner still serves");
    let after = emit_numbers(&first.client, 2..4).await;
    let ids: Vec<i64> = before.into_iter().chain(after).collect();
    wait_delivered_and_logged(&receiver, 4, &first.client, &ids).await;
    stop_cleanly(&mut first, data.path()).await;
}

/// SIGKILL releases the owner's lock with its process; its cluster keeps running, and
/// the next server on the directory adopts it (no second postmaster, no recovery) and
/// delivers what the killed one had accepted and not delivered yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owners_directory_is_taken_over_and_its_running_cluster_adopted() {
    const EVENTS: u64 = 6;
    let data = data_dir("provisiond-owner");
    let scripts = TempDir::new("provisiond-scripts");
    prepare_scripts_dir(scripts.path());
    let pgdata = data.path().join("pgdata");
    let _guard = PostmasterGuard::new(data.path());
    let receiver = Receiver::start().await;
    // Slow replies: the kill lands while deliveries are in flight.
    receiver.route("/slow", vec![Reply::ok().delay(Duration::from_millis(500))]);

    let mut first = start_embedded(data.path(), scripts.path()).await;
    hook(&first.client, &receiver, "/slow").await;
    let ids = emit_numbers(&first.client, 0..EVENTS).await;
    receiver.wait_for("/slow", 1, WAIT).await;
    let postmaster = postmaster_pid(&pgdata).expect("the owner's cluster runs");
    let killed = first.pid().expect("the owner runs");
    first.kill().await;
    let answered = receiver
        .all_requests()
        .iter()
        .filter(|r| r.replied.is_some())
        .count();
    assert!(
        (answered as u64) < EVENTS,
        "the kill came too late to interrupt anything"
    );
    assert!(
        !process_gone(postmaster),
        "the cluster outlives its killed owner"
    );
    assert_eq!(
        std::fs::read_to_string(data.path().join("provisiond.lock"))
            .expect("the lock file")
            .trim(),
        killed.to_string(),
        "a stale lock: the file still names the killed owner"
    );

    let mut second = start_embedded(data.path(), scripts.path()).await;
    assert_eq!(
        postmaster_pid(&pgdata),
        Some(postmaster),
        "the orphaned cluster was adopted, not restarted"
    );
    assert_eq!(
        std::fs::read_to_string(data.path().join("provisiond.lock"))
            .expect("the lock file")
            .trim(),
        second.pid().expect("the new owner runs").to_string(),
        "the lock file names the new owner"
    );
    wait_delivered_and_logged(&receiver, EVENTS, &second.client, &ids).await;
    stop_cleanly(&mut second, data.path()).await;
}

/// The owner notices its postmaster's death, says so (health NOT_SERVING, a log line),
/// starts the cluster again and serves again; events accepted before the crash (some
/// in flight) and after it are all delivered and logged, and the LISTEN connection is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_restarts_its_cluster_when_the_postmaster_is_killed() {
    restart_after_postmaster_killed(Reaping::ByInit).await;
}

/// The same where nothing reaps the killed postmaster (provisiond as PID 1 in a
/// container): its zombie still "exists" for `kill(pid, 0)`, and PostgreSQL refuses to
/// start over the lock files naming it unless the owner clears them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_restarts_its_cluster_even_when_nothing_reaps_the_killed_postmaster() {
    restart_after_postmaster_killed(Reaping::Never).await;
}

/// Who reaps the postmaster once it is killed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reaping {
    /// Init, as on a normal system (perhaps after a while).
    ByInit,
    /// Nobody: the server is made the postmaster's subreaper (as PID 1 would be) and,
    /// like any program, reaps only children it started itself.
    Never,
}

async fn restart_after_postmaster_killed(reaping: Reaping) {
    const BEFORE: u64 = 5;
    const AFTER: u64 = 5;
    let data = data_dir("provisiond-owner");
    let scripts = TempDir::new("provisiond-scripts");
    prepare_scripts_dir(scripts.path());
    let pgdata = data.path().join("pgdata");
    let _guard = PostmasterGuard::new(data.path());
    let receiver = Receiver::start().await;
    receiver.route("/hook", vec![Reply::ok().delay(Duration::from_millis(200))]);

    let (mut command, addr) = embedded_command(data.path(), scripts.path());
    if reaping == Reaping::Never {
        // SAFETY: prctl is async-signal-safe; it only marks the child as a subreaper,
        // which survives exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut server = ServerProcess::start(command, addr).await;
    hook(&server.client, &receiver, "/hook").await;
    let mut ids = emit_numbers(&server.client, 0..BEFORE).await;

    // Watched, not polled: the server pushes every change of its health, so even a
    // quick restart cannot slip between two polls.
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .expect("the server URL")
        .connect()
        .await
        .expect("connecting to the health service");
    let mut health = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watching the health")
        .into_inner();
    next_health(&server, &mut health, WAIT, ServingStatus::Serving).await;
    let postmaster = postmaster_pid(&pgdata).expect("the cluster runs");
    // SAFETY: signalling the postmaster the pid file names.
    assert_eq!(unsafe { libc::kill(postmaster, libc::SIGKILL) }, 0);
    next_health(&server, &mut health, WAIT, ServingStatus::NotServing).await;
    next_health(&server, &mut health, RESTART_WAIT, ServingStatus::Serving).await;
    // An open Watch would hold up the graceful stop at the end.
    drop(health);
    assert!(is_serving(&server.url).await, "Check agrees with Watch");
    let restarted = postmaster_pid(&pgdata).expect("the cluster runs again");
    assert_ne!(restarted, postmaster, "a new postmaster");
    assert!(process_gone(postmaster), "the old postmaster is gone");
    if reaping == Reaping::Never {
        assert!(
            is_zombie(postmaster),
            "the old postmaster is still an unreaped zombie: the restart went past it"
        );
    }

    // Accepted at once: no stale pooled connection fails a request after SERVING.
    ids.extend(emit_numbers(&server.client, BEFORE..BEFORE + AFTER).await);
    wait_delivered_and_logged(&receiver, BEFORE + AFTER, &server.client, &ids).await;

    let log = server.log();
    assert!(
        log.contains("the embedded PostgreSQL is not running (its postmaster died)"),
        "{log}"
    );
    assert!(
        log.contains("the embedded PostgreSQL was restarted; serving again"),
        "{log}"
    );
    // The outage is not mistaken for rows the database refused (which the recorder
    // rewrites with markers, and drops if still refused).
    assert!(!log.contains("log batch rejected"), "{log}");
    assert!(!log.contains("row refused"), "{log}");
    until(
        &server,
        WAIT,
        "the LISTEN connection re-established",
        || std::future::ready(server.log().contains("LISTEN connection re-established")),
    )
    .await;
    stop_cleanly(&mut server, data.path()).await;
}

/// Reads `health` (a `Health/Watch` stream) until it says `wanted`; a timeout or the
/// stream's end shows `server`'s log.
async fn next_health(
    server: &ServerProcess,
    health: &mut tonic::Streaming<HealthCheckResponse>,
    timeout: Duration,
    wanted: ServingStatus,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = match tokio::time::timeout_at(deadline, health.message()).await {
            Ok(Ok(Some(reply))) => ServingStatus::try_from(reply.status).ok(),
            other => panic!(
                "no health {wanted:?} within {timeout:?} ({other:?}); server log:\n{}",
                server.log()
            ),
        };
        if status == Some(wanted) {
            return;
        }
    }
}

/// Polls `check` until it holds, like [`eventually`]; a timeout shows `server`'s log.
async fn until<F, Fut>(server: &ServerProcess, timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; server log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pid` is a zombie (exited, not reaped).
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.trim_start().chars().next()
        })
        == Some('Z')
}
