//! The console in a real headless Chromium (chromedriver + fantoccini) against a real
//! server on the test database and a real HTTP receiver: the seeds' screens used as a
//! billing admin and as support staff would, with a screenshot of each screen under
//! `target/console-screenshots/`.

use std::time::Duration;

use futures_util::StreamExt;
use provisioning_client::proto;
use provisioning_tests::browser::Browser;
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::requests::http_handler;
use provisioning_tests::{eventually, TestDatabase};
use serde_json::json;

use super::{call, ConsoleServer};
use crate::auth::{with_token, ADMIN, EMITTER, READER};
use crate::dispatch::{emit_after, emit_before, WAIT};

const CRM: &str = "Create client in the CRM";
const FAILING: &str = "Failing CRM";

/// Rows of the execution-log table.
const LOG_ROWS: &str = "#logs-table tbody tr";

/// Why: the issue's acceptance scenario, end to end through the page: sign in, create
/// a handler through the form (a bad URL first), toggle it, follow a run in the Live
/// log, open its details, filter with Advanced Search, retry a failed run, read the
/// stats, and sign in as a reader who sees no edit controls and is refused an edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_and_a_reader_use_every_screen_in_a_real_browser() {
    let db = TestDatabase::new().await;
    let console = ConsoleServer::start(&db, true).await;
    let receiver = Receiver::start().await;
    receiver.route("/crm", vec![Reply::ok()]);
    // Fails every attempt of the first delivery (3 with the test configuration), then
    // succeeds: the manual Retry is what delivers it.
    receiver.route(
        "/failing",
        vec![
            Reply::status(500),
            Reply::status(500),
            Reply::status(500),
            Reply::ok(),
        ],
    );
    let admin = with_token(&console.server, ADMIN);
    let emitter = with_token(&console.server, EMITTER);
    let browser = Browser::start(1280, 900).await;
    let page = &browser.client;

    // Sign in.
    page.goto(&console.url()).await.expect("open the console");
    browser.find("#sign-in").await;
    browser.screenshot("01-sign-in").await;
    browser.fill("#token", ADMIN).await;
    browser.click("#sign-in button[type=submit]").await;
    browser.wait_for_text("main h1", "Handlers").await;
    browser
        .wait_for_text("#who-name", "Signed in as ops (admin)")
        .await;

    // New Handler: a bad URL first, its error next to the URL field.
    browser.click("#new-handler").await;
    browser.wait_for_text("main h1", "New Handler").await;
    assert!(
        browser
            .count("#event optgroup[label='Email Rates Manager']")
            .await
            == 1,
        "the event list is grouped as the seeds' list"
    );
    browser.fill("#name", CRM).await;
    browser.select("#event", "accounts.create").await;
    browser.select("#phase", "after").await;
    browser.fill("#url", "ftp://crm.example/client-add").await;
    browser.fill("#priority", "1").await;
    browser.click("#save").await;
    let error = browser.wait_for_text("#error-url", "http.url").await;
    assert!(error.contains("ftp"), "{error}");
    assert_eq!(
        browser
            .find("#url")
            .await
            .attr("aria-invalid")
            .await
            .ok()
            .flatten()
            .as_deref(),
        Some("true")
    );
    browser.screenshot("02-new-handler-validation-error").await;
    browser.fill("#url", &receiver.url("/crm")).await;
    browser.click("#save").await;
    browser.wait_for_text("#secret", "whsec_").await;
    browser.wait_for_text("main h1", CRM).await;
    browser
        .screenshot("03-handler-created-secret-shown-once")
        .await;

    // Handlers: the quick enable/disable switch.
    page.goto(&format!("{}/#/handlers", console.url()))
        .await
        .expect("handlers");
    browser.wait_for_count("#handlers-table tbody tr", 1).await;
    let crm_row = "#handlers-table tbody tr:first-child";
    browser.wait_for_text(crm_row, CRM).await;
    browser.click(&format!("{crm_row} .status-toggle")).await;
    browser
        .find("#handlers-table tr[data-status=disabled]")
        .await;
    browser.screenshot("04-handlers-one-disabled").await;
    // The switch is a real button: the keyboard works it too (Enter, WebDriver key U+E007).
    browser
        .find(&format!("{crm_row} .status-toggle"))
        .await
        .send_keys("\u{e007}")
        .await
        .expect("press Enter on the switch");
    browser
        .wait_for_count("#handlers-table tr[data-status=enabled]", 1)
        .await;
    browser.screenshot("05-handlers").await;
    // Advanced Search of handlers: by type.
    browser.click("#toggle-search").await;
    browser.select("#filter-kind", "script").await;
    browser.click("#handler-filters button[type=submit]").await;
    browser
        .wait_for_text("#handlers-count", "No handlers")
        .await;
    browser.click("#handler-filters button[type=reset]").await;
    browser.wait_for_count("#handlers-table tbody tr", 1).await;

    // Execution Logs, Live: an event emitted over gRPC appears without a reload.
    browser.click("#nav a[data-section=logs]").await;
    browser.wait_for_text("main h1", "Execution Logs").await;
    browser.click("#live").await;
    browser
        .wait_for_text("#live-status", "Live: new runs")
        .await;
    emit_after(
        &emitter,
        "accounts.create",
        r#"{"id": 178, "accname": "1", "id_clients": 15}"#,
    )
    .await;
    browser
        .wait_for_count(&format!("{LOG_ROWS}[data-status=success]"), 1)
        .await;
    let live_row = browser.wait_for_text(LOG_ROWS, CRM).await;
    assert!(
        live_row.contains("Accounts Create") && live_row.contains("After"),
        "{live_row}"
    );
    let date = browser
        .find(&format!("{LOG_ROWS} time"))
        .await
        .text()
        .await
        .expect("a date");
    assert!(
        is_seeds_date(&date),
        "{date:?} is not MM/DD/YYYY HH:MM:SS +0000"
    );
    let title = browser
        .find(&format!("{LOG_ROWS} time"))
        .await
        .attr("title")
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    assert!(!title.is_empty(), "the local time is shown on hover");
    browser.screenshot("06-execution-logs-live").await;

    // Details of that run.
    browser
        .click(&format!(
            "{LOG_ROWS}[data-status=success] a[href^='#/logs/']"
        ))
        .await;
    browser.wait_for_text("#details-title", CRM).await;
    let details = browser
        .wait_for_text("#log-details", "Accounts Create")
        .await;
    assert!(
        details.contains("Success") && details.contains("After"),
        "{details}"
    );
    browser
        .wait_for_text("#data-sent", "\"accname\": \"1\"")
        .await;
    browser.screenshot("07-log-details").await;

    // A failed run: all attempts of the failing handler's delivery fail.
    let failing = admin
        .create_handler(proto::CreateHandlerRequest {
            priority: 2,
            ..http_handler(
                FAILING,
                "accounts.create",
                proto::Phase::After,
                &receiver.url("/failing"),
            )
        })
        .await
        .expect("the failing handler");
    emit_after(
        &emitter,
        "accounts.create",
        r#"{"id": 179, "accname": "2", "id_clients": 15}"#,
    )
    .await;
    receiver.wait_for("/failing", 3, WAIT).await;
    wait_for_runs(&admin, failing.id, 3).await;

    // Advanced Search: status + event + data + date.
    page.goto(&format!("{}/#/logs", console.url()))
        .await
        .expect("logs");
    browser.wait_for_text("main h1", "Execution Logs").await;
    browser.click("#toggle-search").await;
    browser.select("#search-status", "fail").await;
    browser.select("#search-event", "accounts.create").await;
    browser.fill("#search-data", "\"accname\": \"2\"").await;
    let from = (chrono::Utc::now() - chrono::Duration::minutes(5))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    page.execute(
        "document.getElementById('search-from').value = arguments[0];",
        vec![json!(from)],
    )
    .await
    .expect("set Date From");
    browser.click("#search-submit").await;
    // The page showed 5 runs before the search (3 of them failed): wait for its 3.
    browser.wait_for_count(LOG_ROWS, 3).await;
    assert_eq!(
        browser
            .count(&format!("{LOG_ROWS}[data-status=fail]"))
            .await,
        3,
        "only the failed runs match"
    );
    browser.wait_for_text(LOG_ROWS, FAILING).await;
    browser.screenshot("08-advanced-search").await;

    // Retry of a failed AFTER run: followed live, the new attempt succeeds.
    browser.select("#search-status", "").await;
    browser.click("#search-submit").await;
    browser.wait_for_count(LOG_ROWS, 4).await;
    browser.click("#live").await;
    browser
        .wait_for_text("#live-status", "Live: new runs")
        .await;
    browser
        .click(&format!("{LOG_ROWS}[data-status=fail] .retry"))
        .await;
    browser.wait_for_text("#logs-message", "scheduled").await;
    browser
        .wait_for_count(&format!("{LOG_ROWS}[data-status=success]"), 2)
        .await;
    receiver.wait_for("/failing", 4, WAIT).await;
    browser.screenshot("09-retried").await;

    // Stats per handler.
    browser.click("#nav a[data-section=stats]").await;
    browser
        .wait_for_count("#stats-table tbody tr[data-handler-id]", 2)
        .await;
    let stats = browser.wait_for_text("#stats-table", FAILING).await;
    assert!(stats.contains(CRM) && stats.contains("25.0 %"), "{stats}");
    browser.screenshot("10-stats").await;

    // Details of a BEFORE run show the data the handler returned.
    receiver.route(
        "/credit",
        vec![Reply::text(200, r#"{"id": 15, "credit": 20}"#)],
    );
    admin
        .create_handler(http_handler(
            "Credit check",
            "clients.update",
            proto::Phase::Before,
            &receiver.url("/credit"),
        ))
        .await
        .expect("the BEFORE handler");
    emit_before(&emitter, "clients.update", r#"{"id": 15, "credit": 12.5}"#).await;
    let before_run = newest_run(&admin, proto::Phase::Before).await;
    page.goto(&format!("{}/#/logs/{before_run}", console.url()))
        .await
        .expect("the BEFORE run");
    browser.wait_for_text("#log-details", "Before").await;
    browser.wait_for_text("#data-sent", "12.5").await;
    browser
        .wait_for_text("#data-returned", "\"credit\": 20")
        .await;
    browser.screenshot("11-before-run-details").await;

    // In a narrow window nothing spills out of the page: wide tables scroll in place.
    page.set_window_size(400, 800).await.expect("resize");
    browser.click("#nav a[data-section=logs]").await;
    browser.wait_for_count(LOG_ROWS, 5).await;
    let overflow = page
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await
        .expect("measure");
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "the page is wider than the window by {overflow}"
    );
    browser.screenshot("12-narrow-window").await;
    page.set_window_size(1280, 900).await.expect("resize");

    // A reader: the same screens without edit controls.
    browser.click("#sign-out").await;
    browser.find("#sign-in").await;
    browser.fill("#token", READER).await;
    browser.click("#sign-in button[type=submit]").await;
    browser
        .wait_for_text("#who-name", "dashboard (reader)")
        .await;
    page.goto(&format!("{}/#/handlers", console.url()))
        .await
        .expect("handlers");
    browser.wait_for_count("#handlers-table tbody tr", 3).await;
    assert_eq!(browser.count("#new-handler").await, 0);
    assert_eq!(browser.count(".status-toggle").await, 0);
    browser.screenshot("13-reader-handlers").await;
    browser.click("#nav a[data-section=logs]").await;
    browser.wait_for_count(LOG_ROWS, 5).await;
    assert_eq!(browser.count(".retry").await, 0);
    page.goto(&format!("{}/#/handlers/{}", console.url(), failing.id))
        .await
        .expect("the handler form");
    browser.find("#handler-form fieldset[disabled]").await;
    assert_eq!(browser.count("#save").await, 0);
    browser.screenshot("14-reader-handler-read-only").await;
    // The server refuses the edit anyway.
    let refused = call(
        console.console,
        "POST",
        &format!("/api/handlers/{}/status", failing.id),
        Some(READER),
        Some(r#"{"status": "disabled"}"#),
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    page.clone().close().await.expect("close the browser");
}

/// `12/20/2016 13:45:15 +0000`
fn is_seeds_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.len() == 25
        && text.ends_with(" +0000")
        && [2, 5].iter().all(|&i| bytes[i] == b'/')
        && bytes[10] == b' '
        && [13, 16].iter().all(|&i| bytes[i] == b':')
}

/// Waits until the handler has `n` runs in the log.
async fn wait_for_runs(client: &provisioning_client::Client, handler_id: i64, n: usize) {
    eventually(Duration::from_secs(20), "the failed runs", || async {
        let request = proto::SearchLogsRequest {
            filter: Some(proto::LogFilter {
                handler_id,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut rows = client.search_logs(request).await.ok()?;
        let mut count = 0;
        while let Some(Ok(_)) = rows.next().await {
            count += 1;
        }
        (count >= n).then_some(())
    })
    .await;
}

/// The id of the newest run of `phase`.
async fn newest_run(client: &provisioning_client::Client, phase: proto::Phase) -> i64 {
    eventually(Duration::from_secs(20), "a run", || async {
        let request = proto::SearchLogsRequest {
            filter: Some(proto::LogFilter {
                phase: phase.into(),
                ..Default::default()
            }),
            limit: 1,
            ..Default::default()
        };
        let mut rows = client.search_logs(request).await.ok()?;
        let entry = rows.next().await?.ok()?;
        entry.log.map(|log| log.id)
    })
    .await
}
