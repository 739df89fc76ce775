//! Case-insensitive search folds every script the same way whatever the database's
//! locale: German, Cyrillic and Greek text found in lower case, on the test database,
//! on a database created with `LC_CTYPE=C` and on the embedded default cluster; for the
//! data and error substrings, in Search and in Tail.

use diesel::RunQueryDsl;
use provisioning_client::{proto, Client};
use provisioning_tests::receiver::{Receiver, Reply};
use provisioning_tests::{
    free_addr, prepare_scripts_dir, provisiond, spawn_server_with, ServerProcess, TempDir,
    TestDatabase,
};

use crate::dispatch::{create, emit_before, http_handler, WAIT};

const DATA: &str = r#"{"name": "Jörg MÜLLER", "city": "Москва", "place": "ΑΘΗΝΑ"}"#;

/// Runs a BEFORE event through a handler that forbids it with a Cyrillic reason, then
/// checks every lower-case search finds the run.
async fn check_folding(client: &Client) {
    let receiver = Receiver::start().await;
    receiver.route("/forbid", vec![Reply::text(403, "Клиент ЗАБЛОКИРОВАН")]);
    create(
        client,
        http_handler(
            "forbid",
            "clients.update",
            proto::Phase::Before,
            &receiver.url("/forbid"),
        ),
    )
    .await;
    let reply = emit_before(client, "clients.update", DATA).await;
    assert_eq!(
        reply.decision,
        proto::Decision::Forbidden as i32,
        "{reply:?}"
    );
    let filters = [
        ("data", "jörg müller"),
        ("data", "москва"),
        ("data", "αθηνα"),
        ("data", "MÜLLER"),
        ("error", "заблокирован"),
    ];
    for (field, text) in filters {
        let filter = match field {
            "data" => proto::LogFilter {
                data_contains: text.into(),
                ..Default::default()
            },
            _ => proto::LogFilter {
                error_contains: text.into(),
                ..Default::default()
            },
        };
        // The run is logged off the reply's path: poll until it shows.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let mut stream = client
                .search_logs(proto::SearchLogsRequest {
                    filter: Some(filter.clone()),
                    limit: 10,
                    cursor: String::new(),
                })
                .await
                .expect("search");
            let mut found = 0;
            while stream.message().await.expect("page").is_some() {
                found += 1;
            }
            if found == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{field} {text:?} found {found} runs"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let mut tail = client
            .tail_logs(proto::TailLogsRequest {
                filter: Some(filter),
                backlog: 1,
                cursor: String::new(),
            })
            .await
            .expect("tail");
        let entry = tokio::time::timeout(WAIT, tail.message())
            .await
            .expect("the tail's backlog in time")
            .expect("tail item")
            .expect("one run");
        assert!(entry.log.is_some(), "{field} {text:?} in Tail");
    }
    let none = proto::LogFilter {
        data_contains: "münchen".into(),
        ..Default::default()
    };
    let mut stream = client
        .search_logs(proto::SearchLogsRequest {
            filter: Some(none),
            limit: 10,
            cursor: String::new(),
        })
        .await
        .expect("search");
    assert!(stream.message().await.expect("page").is_none());
}

/// On the tests' own database and on one created with `LC_CTYPE=C` (as an external
/// server might be), the same searches find the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_folds_german_cyrillic_and_greek_on_any_database_locale() {
    let db = TestDatabase::new().await;
    let server = spawn_server_with(&db, |_| {}).await;
    check_folding(&server.client).await;

    let name = format!("{}_c_locale", db.name());
    crate::dispatch::with_conn(&db, |conn| {
        diesel::sql_query(format!(
            "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
        ))
        .execute(conn)
        .expect("creating a C-locale database");
    });
    let url = db.url_of(&name);
    let c_server = spawn_server_with(&db, |config| config.database_url = Some(url)).await;
    check_folding(&c_server.client).await;
    c_server.stop().await;
    crate::dispatch::with_conn(&db, |conn| {
        diesel::sql_query(format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(conn)
            .expect("dropping the C-locale database");
    });
}

/// On the embedded default cluster (no database URL), the same searches find the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_folds_german_cyrillic_and_greek_on_the_embedded_default() {
    let root = TempDir::new("provisiond-embedded-search");
    let scripts = root.path().join("scripts");
    prepare_scripts_dir(&scripts);
    let addr = free_addr();
    let mut command = provisiond(addr, &scripts);
    command.arg("--data-dir").arg(root.path().join("data"));
    let mut server = ServerProcess::start(command, addr).await;
    check_folding(&server.client).await;

    // The cluster is created UTF-8 through and through, whatever the environment.
    let url = format!(
        "postgres://provisioning@localhost/provisioning?host={}",
        root.path().join("data/pgdata").display()
    );
    let (encoding, ctype) = tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        #[derive(diesel::QueryableByName)]
        struct Locale {
            #[diesel(sql_type = diesel::sql_types::Text)]
            encoding: String,
            #[diesel(sql_type = diesel::sql_types::Text)]
            ctype: String,
        }
        let mut conn = diesel::PgConnection::establish(&url).expect("connecting to the cluster");
        let locale: Locale = diesel::sql_query(
            "SELECT pg_encoding_to_char(encoding)::text AS encoding, datctype::text AS ctype \
             FROM pg_database WHERE datname = current_database()",
        )
        .get_result(&mut conn)
        .expect("reading the locale");
        (locale.encoding, locale.ctype)
    })
    .await
    .expect("the locale query");
    assert_eq!(encoding, "UTF8");
    assert!(
        ctype
            .to_ascii_lowercase()
            .replace('-', "")
            .ends_with(".utf8"),
        "LC_CTYPE {ctype}"
    );
    let status = server.stop().await;
    assert!(status.success(), "{status}; log:\n{}", server.log());
}
