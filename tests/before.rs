//! BEFORE chains end to end: handlers run synchronously in priority order, each sees
//! the data as the previous one left it, the first forbid stops the chain, failures
//! follow the failure policy, and every run is logged with the data it returned.
//! Handlers are real HTTP receivers and real scripts.

use std::path::Path;
use std::time::{Duration, Instant};

use provisioning_client::proto;
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::{give_to_script_user, spawn_server, TempDir, TestDatabase};

use crate::dispatch::{
    create, emit_before, event_request, http_handler, same_json, script_handler, wait_for_logs,
    LogRow, WAIT,
};

fn decision(reply: &proto::EmitResponse) -> proto::Decision {
    proto::Decision::try_from(reply.decision)
        .unwrap_or_else(|_| panic!("bad decision in {reply:?}"))
}

fn outcomes(reply: &proto::EmitResponse) -> Vec<proto::HandlerOutcome> {
    reply
        .results
        .iter()
        .map(|r| {
            proto::HandlerOutcome::try_from(r.outcome)
                .unwrap_or_else(|_| panic!("bad outcome in {r:?}"))
        })
        .collect()
}

/// A URL on which nothing listens: a port bound and released at once.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{addr}/nobody")
}

fn rows_of(rows: &[LogRow], handler_id: i64) -> Vec<&LogRow> {
    rows.iter().filter(|r| r.handler_id == handler_id).collect()
}

/// Each handler sees the data as modified by the previous one; the reply carries the
/// final data, and the log shows what each run was sent and returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_modification_is_seen_by_the_next_handler_and_logged() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    let enriched = r#"{"checked_by_script": true, "id": 15, "segment": "vip"}"#;
    receiver.route("/enrich", vec![Reply::text(200, enriched)]);
    receiver.route("/last", vec![Reply::echo()]);
    // Created out of order: priorities decide.
    let last = create(
        &server.client,
        proto::CreateHandlerRequest {
            priority: 30,
            ..http_handler(
                "last",
                "clients.create",
                proto::Phase::Before,
                &receiver.url("/last"),
            )
        },
    )
    .await;
    let script = create(
        &server.client,
        proto::CreateHandlerRequest {
            priority: 10,
            ..script_handler(
                "modify",
                "clients.create",
                proto::Phase::Before,
                "modify.sh",
            )
        },
    )
    .await;
    let enrich = create(
        &server.client,
        proto::CreateHandlerRequest {
            priority: 20,
            ..http_handler(
                "enrich",
                "clients.create",
                proto::Phase::Before,
                &receiver.url("/enrich"),
            )
        },
    )
    .await;

    let data = r#"{"id": 15}"#;
    let reply = emit_before(&server.client, "clients.create", data).await;
    assert_eq!(decision(&reply), proto::Decision::Allowed, "{reply:?}");
    assert_eq!(reply.reason, "");
    assert_eq!(
        reply.data_json, enriched,
        "the final data is the last modification"
    );
    assert_eq!(
        reply
            .results
            .iter()
            .map(|r| r.handler_id)
            .collect::<Vec<_>>(),
        [script.id, enrich.id, last.id]
    );
    assert_eq!(
        outcomes(&reply),
        [
            proto::HandlerOutcome::Modified,
            proto::HandlerOutcome::Modified,
            proto::HandlerOutcome::Passed
        ]
    );
    let by_script = r#"{"checked_by_script": true, "id": 15}"#;
    assert_eq!(
        receiver.requests("/enrich")[0].body_text(),
        by_script,
        "sees the script's data"
    );
    assert_eq!(
        receiver.requests("/last")[0].body_text(),
        enriched,
        "sees the enriched data"
    );
    let request = &receiver.requests("/enrich")[0];
    assert_eq!(request.header("x-provisioning-phase"), Some("before"));
    assert_eq!(
        request.header("x-provisioning-event"),
        Some("clients.create")
    );

    let rows = wait_for_logs(&db, "three BEFORE rows", |rows| rows.len() >= 3).await;
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r.phase == "before" && r.status == "success" && r.event_id == reply.event_id),
        "{rows:#?}"
    );
    let chain: Vec<&LogRow> = [script.id, enrich.id, last.id]
        .iter()
        .map(|id| rows_of(&rows, *id)[0])
        .collect();
    assert!(same_json(&chain[0].data_sent, data));
    let returned = |row: &LogRow| {
        row.data_returned
            .clone()
            .expect("BEFORE rows keep the data returned")
    };
    assert!(
        same_json(&returned(chain[0]), by_script),
        "{:?}",
        chain[0].data_returned
    );
    assert_eq!(chain[0].exit_code, Some(0));
    assert!(same_json(&chain[1].data_sent, by_script));
    assert!(same_json(&returned(chain[1]), enriched));
    assert!(same_json(&chain[2].data_sent, enriched));
    assert!(
        same_json(&returned(chain[2]), enriched),
        "a pass returns the data unchanged"
    );
    assert_eq!(chain[2].http_status, Some(200));
}

/// The first forbid decides: later handlers do not run, and the reply says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_forbid_stops_the_chain_and_skips_later_handlers() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/guard", vec![Reply::text(403, "client 15 is blocked")]);
    let guard = create(
        &server.client,
        proto::CreateHandlerRequest {
            priority: 1,
            ..http_handler(
                "guard",
                "subscriptions.assign",
                proto::Phase::Before,
                &receiver.url("/guard"),
            )
        },
    )
    .await;
    let later = create(
        &server.client,
        proto::CreateHandlerRequest {
            priority: 2,
            ..http_handler(
                "later",
                "subscriptions.assign",
                proto::Phase::Before,
                &receiver.url("/later"),
            )
        },
    )
    .await;

    let data = r#"{"id_clients": 15}"#;
    let reply = emit_before(&server.client, "subscriptions.assign", data).await;
    assert_eq!(decision(&reply), proto::Decision::Forbidden, "{reply:?}");
    assert!(
        reply.reason.contains("client 15 is blocked"),
        "{}",
        reply.reason
    );
    assert_eq!(reply.data_json, data);
    assert_eq!(
        outcomes(&reply),
        [
            proto::HandlerOutcome::Forbade,
            proto::HandlerOutcome::Skipped
        ]
    );
    assert_eq!(reply.results[0].error, "client 15 is blocked");
    assert_eq!(reply.results[1].handler_id, later.id);
    assert_eq!(
        receiver.count("/later"),
        0,
        "a skipped handler is not called"
    );

    let rows = wait_for_logs(&db, "the guard's row", |rows| !rows.is_empty()).await;
    let guard_rows = rows_of(&rows, guard.id);
    assert_eq!(guard_rows.len(), 1);
    assert_eq!(
        guard_rows[0].status, "success",
        "a forbid is a decision, not a failure"
    );
    assert_eq!(guard_rows[0].http_status, Some(403));
    assert!(
        rows_of(&rows, later.id).is_empty(),
        "a skipped handler has no run to log"
    );
}

/// FAIL_OPEN: a failing handler (5xx) is passed over and the chain continues with the
/// data unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_fail_open_handler_failing_lets_the_chain_continue() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/flaky", vec![Reply::text(500, "internal error")]);
    receiver.route("/next", vec![Reply::echo()]);
    let flaky = create(
        &server.client,
        proto::CreateHandlerRequest {
            priority: 1,
            failure_policy: proto::FailurePolicy::FailOpen.into(),
            ..http_handler(
                "flaky",
                "accounts.create",
                proto::Phase::Before,
                &receiver.url("/flaky"),
            )
        },
    )
    .await;
    create(
        &server.client,
        proto::CreateHandlerRequest {
            priority: 2,
            ..http_handler(
                "next",
                "accounts.create",
                proto::Phase::Before,
                &receiver.url("/next"),
            )
        },
    )
    .await;

    let data = r#"{"id": 178, "amount": 12.345678901234567890}"#;
    let reply = emit_before(&server.client, "accounts.create", data).await;
    assert_eq!(decision(&reply), proto::Decision::Allowed, "{reply:?}");
    assert_eq!(
        outcomes(&reply),
        [proto::HandlerOutcome::Failed, proto::HandlerOutcome::Passed]
    );
    assert!(
        reply.results[0].error.contains("500"),
        "{:?}",
        reply.results[0]
    );
    assert_eq!(reply.data_json, data);
    assert_eq!(receiver.requests("/next")[0].body_text(), data);

    let rows = wait_for_logs(&db, "two rows", |rows| rows.len() >= 2).await;
    let failed = rows_of(&rows, flaky.id);
    assert_eq!(
        (failed[0].status.as_str(), failed[0].http_status),
        ("fail", Some(500))
    );
    assert_eq!(failed[0].response, "internal error");
}

/// FAIL_CLOSED (also the default): a handler failing by 5xx, timeout or refused
/// connection forbids the action, and later handlers do not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_fail_closed_handler_failure_forbids() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/error", vec![Reply::status(502)]);
    receiver.route("/slow", vec![Reply::ok().delay(Duration::from_secs(5))]);
    let cases = [
        (
            "clients.create",
            receiver.url("/error"),
            proto::FailurePolicy::FailClosed,
            "HTTP 502",
        ),
        (
            "clients.update",
            receiver.url("/slow"),
            proto::FailurePolicy::Unspecified,
            "timed out",
        ),
        (
            "clients.delete",
            closed_port_url(),
            proto::FailurePolicy::FailClosed,
            "connection",
        ),
    ];
    for (event, url, policy, _) in &cases {
        create(
            &server.client,
            proto::CreateHandlerRequest {
                priority: 1,
                timeout_ms: 300,
                failure_policy: (*policy).into(),
                ..http_handler("failing", event, proto::Phase::Before, url)
            },
        )
        .await;
        create(
            &server.client,
            proto::CreateHandlerRequest {
                priority: 2,
                ..http_handler(
                    "after it",
                    event,
                    proto::Phase::Before,
                    &receiver.url("/after-it"),
                )
            },
        )
        .await;
    }
    for (event, _, _, error) in &cases {
        let started = Instant::now();
        let reply = emit_before(&server.client, event, r#"{"id": 1}"#).await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{event}: the handler timeout bounds the run"
        );
        assert_eq!(
            decision(&reply),
            proto::Decision::Forbidden,
            "{event}: {reply:?}"
        );
        assert_eq!(
            outcomes(&reply),
            [
                proto::HandlerOutcome::Failed,
                proto::HandlerOutcome::Skipped
            ],
            "{event}"
        );
        assert!(
            reply.results[0].error.contains(error),
            "{event}: {:?}",
            reply.results[0]
        );
        assert!(
            reply.reason.contains("fail closed"),
            "{event}: {}",
            reply.reason
        );
        assert!(reply.reason.contains(error), "{event}: {}", reply.reason);
    }
    assert_eq!(receiver.count("/after-it"), 0);
    let rows = wait_for_logs(&db, "three FAIL rows", |rows| rows.len() >= 3).await;
    assert!(
        rows.iter()
            .all(|r| r.status == "fail" && r.handler_name == "failing"),
        "{rows:#?}"
    );
}

/// The product's documented echo handler (Flask: `json.dumps(json.loads(body))`) must
/// leave the data unchanged, byte for byte, even though its reply is re-serialised; so
/// must a verbatim echo and an empty 2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_handler_leaves_the_data_unchanged() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/api", vec![Reply::echo_json()]);
    receiver.route("/verbatim", vec![Reply::echo()]);
    receiver.route("/empty", vec![Reply::status(204)]);
    for (priority, path) in [(1, "/api"), (2, "/verbatim"), (3, "/empty")] {
        create(
            &server.client,
            proto::CreateHandlerRequest {
                priority,
                ..http_handler(
                    path,
                    "clients.custom_fields_update",
                    proto::Phase::Before,
                    &receiver.url(path),
                )
            },
        )
        .await;
    }
    let data = r#"{"zeta": 1,  "id": 9007199254740993, "amount": 12.345678901234567890, "tags": ["a", "b"]}"#;
    let reply = emit_before(&server.client, "clients.custom_fields_update", data).await;
    assert_eq!(decision(&reply), proto::Decision::Allowed, "{reply:?}");
    assert_eq!(reply.data_json, data, "byte-identical to the input");
    assert_eq!(outcomes(&reply), [proto::HandlerOutcome::Passed; 3]);
    for path in ["/api", "/verbatim", "/empty"] {
        assert_eq!(receiver.requests(path)[0].body_text(), data, "{path}");
    }
    let rows = wait_for_logs(&db, "three rows", |rows| rows.len() >= 3).await;
    for row in &rows {
        assert!(
            same_json(row.data_returned.as_deref().unwrap_or("null"), data),
            "{row:#?}"
        );
    }
}

/// With no enabled handler the action is allowed with the data as given (disabled,
/// archived and AFTER handlers do not run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_event_without_enabled_handlers_is_allowed_unchanged() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    for (status, phase) in [
        (proto::HandlerStatus::Disabled, proto::Phase::Before),
        (proto::HandlerStatus::Archived, proto::Phase::Before),
        (proto::HandlerStatus::Enabled, proto::Phase::After),
    ] {
        create(
            &server.client,
            proto::CreateHandlerRequest {
                status: status.into(),
                ..http_handler(
                    "inactive",
                    "clients.balance_non_negative",
                    phase,
                    &receiver.url("/inactive"),
                )
            },
        )
        .await;
    }
    let data = r#"{ "id": 1, "balance": 0.00 }"#;
    let reply = emit_before(&server.client, "clients.balance_non_negative", data).await;
    assert_eq!(decision(&reply), proto::Decision::Allowed, "{reply:?}");
    assert_eq!(reply.data_json, data);
    assert!(
        reply.results.is_empty() && reply.reason.is_empty(),
        "{reply:?}"
    );
    assert!(reply.event_id > 0);
    assert_eq!(receiver.count("/inactive"), 0);
}

/// BEFORE scripts follow the exit-code protocol: 0 passes (stdout may carry modified
/// data), 10 forbids with the reason printed, anything else (exit code or signal) fails
/// under the handler's policy; they get the phase and event in their environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_scripts_pass_modify_forbid_and_fail() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let open = proto::FailurePolicy::FailOpen;
    let closed = proto::FailurePolicy::FailClosed;
    let chains: [(&str, &[(&str, proto::FailurePolicy)]); 6] = [
        ("clients.create", &[("modify.sh", closed)]),
        (
            "clients.update",
            &[("forbid.sh", closed), ("ok.sh", closed)],
        ),
        ("clients.delete", &[("crash.sh", closed)]),
        (
            "clients.archive",
            &[("killed.sh", open), ("cat.sh", closed)],
        ),
        ("accounts.create", &[("ok.sh", closed)]),
        ("accounts.update", &[("env.sh", closed)]),
    ];
    for (event, scripts) in &chains {
        for (priority, (path, policy)) in scripts.iter().enumerate() {
            create(
                &server.client,
                proto::CreateHandlerRequest {
                    priority: priority as i32,
                    failure_policy: (*policy).into(),
                    ..script_handler(path, event, proto::Phase::Before, path)
                },
            )
            .await;
        }
    }
    use proto::Decision::{Allowed, Forbidden};
    use proto::HandlerOutcome::{Failed, Forbade, Modified, Passed, Skipped};
    let data = r#"{"id": 15}"#;

    let reply = emit_before(&server.client, "clients.create", data).await;
    assert_eq!(
        (decision(&reply), outcomes(&reply)),
        (Allowed, vec![Modified]),
        "{reply:?}"
    );
    assert_eq!(reply.data_json, r#"{"checked_by_script": true, "id": 15}"#);

    let reply = emit_before(&server.client, "clients.update", data).await;
    assert_eq!(
        (decision(&reply), outcomes(&reply)),
        (Forbidden, vec![Forbade, Skipped]),
        "{reply:?}"
    );
    assert_eq!(reply.reason, "client 15 is blocked by the credit check");

    let reply = emit_before(&server.client, "clients.delete", data).await;
    assert_eq!(
        (decision(&reply), outcomes(&reply)),
        (Forbidden, vec![Failed]),
        "{reply:?}"
    );
    assert!(
        reply.results[0].error.contains("code 1"),
        "{:?}",
        reply.results[0]
    );

    let reply = emit_before(&server.client, "clients.archive", data).await;
    assert_eq!(
        (decision(&reply), outcomes(&reply)),
        (Allowed, vec![Failed, Passed]),
        "{reply:?}"
    );
    assert!(
        reply.results[0].error.contains("signal 9"),
        "{:?}",
        reply.results[0]
    );
    assert_eq!(reply.data_json, data);

    let reply = emit_before(&server.client, "accounts.create", data).await;
    assert_eq!(
        (decision(&reply), outcomes(&reply)),
        (Allowed, vec![Passed]),
        "{reply:?}"
    );
    assert_eq!(reply.data_json, data);

    let env_reply = emit_before(&server.client, "accounts.update", data).await;
    assert_eq!(
        (decision(&env_reply), outcomes(&env_reply)),
        (Allowed, vec![Passed]),
        "{env_reply:?}"
    );

    let rows = wait_for_logs(&db, "every script run", |rows| rows.len() >= 7).await;
    let exit_of = |name: &str| {
        rows.iter()
            .find(|r| r.handler_name == name)
            .map(|r| (r.status.as_str(), r.exit_code))
    };
    assert_eq!(exit_of("modify.sh"), Some(("success", Some(0))));
    assert_eq!(exit_of("forbid.sh"), Some(("success", Some(10))));
    assert_eq!(exit_of("crash.sh"), Some(("fail", Some(1))));
    assert_eq!(exit_of("killed.sh"), Some(("fail", None)));
    let env = rows
        .iter()
        .find(|r| r.handler_name == "env.sh")
        .expect("env.sh row");
    let output = env
        .response
        .strip_prefix("[stderr] ")
        .unwrap_or(&env.response);
    let lines: Vec<&str> = output.lines().collect();
    for expected in [
        "PROVISIONING_PHASE=before".to_owned(),
        "PROVISIONING_EVENT=accounts.update".to_owned(),
        format!("PROVISIONING_EVENT_ID={}", env_reply.event_id),
        format!("stdin={data}"),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "{expected:?} missing from:\n{output}"
        );
    }
    assert!(
        !lines.iter().any(|l| l.starts_with("HOME=")),
        "HOME leaked:\n{output}"
    );
}

/// A hanging BEFORE script costs the caller only its timeout: it is killed with its
/// process group and, failing open, the chain goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_before_script_is_killed_at_its_timeout() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let pids = TempDir::new_in(Path::new("/tmp"), "provisioning-hang");
    // The script runs as the script user when the tests run as root.
    give_to_script_user(pids.path());
    let pidfile = pids.path().join("pids");
    create(
        &server.client,
        proto::CreateHandlerRequest {
            priority: 1,
            timeout_ms: 500,
            failure_policy: proto::FailurePolicy::FailOpen.into(),
            ..script_handler("hang", "clients.create", proto::Phase::Before, "hang.sh")
        },
    )
    .await;
    create(
        &server.client,
        proto::CreateHandlerRequest {
            priority: 2,
            ..script_handler("ok", "clients.create", proto::Phase::Before, "ok.sh")
        },
    )
    .await;
    let data = format!(r#"{{"id": 1, "pidfile": "{}"}}"#, pidfile.display());
    let started = Instant::now();
    let reply = emit_before(&server.client, "clients.create", &data).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(decision(&reply), proto::Decision::Allowed, "{reply:?}");
    assert_eq!(
        outcomes(&reply),
        [proto::HandlerOutcome::Failed, proto::HandlerOutcome::Passed]
    );
    assert!(
        reply.results[0].error.contains("timed out"),
        "{:?}",
        reply.results[0]
    );

    let text = std::fs::read_to_string(&pidfile).expect("the script wrote its pids");
    let pids: Vec<i32> = text
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect();
    assert_eq!(pids.len(), 2, "{text}");
    let deadline = Instant::now() + WAIT;
    while !pids.iter().all(|pid| crate::dispatch::process_gone(*pid)) {
        assert!(
            Instant::now() < deadline,
            "processes {pids:?} still alive after the timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = wait_for_logs(&db, "both runs", |rows| rows.len() >= 2).await;
    let hang = rows
        .iter()
        .find(|r| r.handler_name == "hang")
        .expect("the hang row");
    assert_eq!(hang.status, "fail");
    assert!(hang.error.contains("timed out"), "{}", hang.error);
}

/// The caller's gRPC deadline bounds the whole chain: a handler with a long timeout is
/// cut off when the deadline passes instead of running to its own timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_chain_is_bounded_by_the_rpc_deadline() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/slow", vec![Reply::ok().delay(Duration::from_secs(20))]);
    create(
        &server.client,
        proto::CreateHandlerRequest {
            timeout_ms: 30_000,
            ..http_handler(
                "slow",
                "clients.create",
                proto::Phase::Before,
                &receiver.url("/slow"),
            )
        },
    )
    .await;
    let channel = tonic::transport::Channel::from_shared(server.url.clone())
        .expect("server URL")
        .connect()
        .await
        .expect("connect");
    let mut events = proto::event_service_client::EventServiceClient::new(channel);
    let mut request = tonic::Request::new(crate::dispatch::event_request(
        "clients.create",
        proto::Phase::Before,
        r#"{"id": 1}"#,
    ));
    request.set_timeout(Duration::from_secs(1));
    match events.emit(request).await {
        // The chain gave up within the deadline and failed closed.
        Ok(reply) => assert_eq!(decision(reply.get_ref()), proto::Decision::Forbidden),
        Err(status) => assert!(
            matches!(
                status.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ),
            "{status:?}"
        ),
    }

    let rows = wait_for_logs(&db, "the cut-off run", |rows| !rows.is_empty()).await;
    assert_eq!(rows[0].status, "fail");
    assert!(rows[0].error.contains("timed out"), "{}", rows[0].error);
    assert!(
        rows[0].duration_ms < 5_000,
        "ran {} ms: not bounded by the 1 s deadline",
        rows[0].duration_ms
    );
}

/// Every event gets an id of its own: BEFORE events (whose ids a server takes from the
/// sequence in blocks) and AFTER events, emitted concurrently through two servers on one
/// database, over several blocks, never share one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_and_after_events_emitted_concurrently_on_two_servers_get_distinct_ids() {
    let db = TestDatabase::new().await;
    let servers = [spawn_server(&db).await, spawn_server(&db).await];
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..400u32 {
        let client = servers[n as usize % 2].client.clone();
        let phase = if n % 3 == 0 {
            proto::Phase::After
        } else {
            proto::Phase::Before
        };
        calls.spawn(async move {
            let reply = client
                .emit(event_request(
                    "clients.update",
                    phase,
                    &format!(r#"{{"n": {n}}}"#),
                ))
                .await
                .unwrap_or_else(|e| panic!("emit {n}: {e}"));
            reply.event_id
        });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(id) = calls.join_next().await {
        let id = id.expect("emit task");
        assert!(id > 0);
        assert!(ids.insert(id), "event id {id} given twice");
    }
    assert_eq!(ids.len(), 400);
}
