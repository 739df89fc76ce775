//! TLS and mutual TLS, end to end: the real server (in process, and the real
//! `provisiond` binary for SIGHUP reloads) on real sockets, reached through the client
//! crate and `provctl`, with certificates made at run time.

use std::time::Duration;

use provisioning_client::{proto, Client, ClientError, ConnectOptions};
use provisioning_server::config::Config;
use provisioning_server::tls::peer_subjects;
use provisioning_tests::{
    eventually, free_addr, prepare_scripts_dir, provctl, provisiond, run_command, spawn_server,
    spawn_server_connecting, ServerProcess, TempDir, TestDatabase, TestPki, TestServer, CLIENT_CN,
};

use crate::cli::provctl_run;

/// TLS configured with the PKI's server certificate; mTLS too when `mutual`.
fn with_tls(pki: &TestPki, mutual: bool) -> impl FnOnce(&mut Config) + '_ {
    move |config| {
        config.tls_cert = Some(pki.server_cert.clone());
        config.tls_key = Some(pki.server_key.clone());
        if mutual {
            config.tls_client_ca = Some(pki.ca_cert.clone());
        }
    }
}

/// A cheap call that needs the whole stack (TLS, HTTP/2, database).
async fn call(client: &Client) -> Result<proto::ListEventTypesResponse, ClientError> {
    client
        .list_event_types(proto::ListEventTypesRequest::default())
        .await
}

/// Connects with `options` and makes one call; the error of whichever step failed.
async fn connect_and_call(url: &str, options: &ConnectOptions) -> Result<(), ClientError> {
    let client = tokio::time::timeout(Duration::from_secs(15), Client::connect_with(url, options))
        .await
        .expect("connecting did not hang")?;
    tokio::time::timeout(Duration::from_secs(15), call(&client))
        .await
        .expect("the call did not hang")?;
    Ok(())
}

/// A refusal is a transport failure, never a hang or an answer from the service: the
/// connection fails, or the call does with UNAVAILABLE or with the status tonic makes
/// of a transport error (UNKNOWN carrying it, e.g. TLS 1.3's "certificate required"
/// alert, which arrives after the client considers its handshake done).
fn assert_refused(result: Result<(), ClientError>, what: &str) {
    match &result {
        Err(ClientError::Connect(_)) => {}
        Err(ClientError::Rpc(status)) if status.code() == tonic::Code::Unavailable => {}
        Err(ClientError::Rpc(status))
            if status.code() == tonic::Code::Unknown
                && std::error::Error::source(status)
                    .is_some_and(|source| source.is::<tonic::transport::Error>()) => {}
        other => panic!("{what}: expected a connection failure, got {other:?}"),
    }
}

async fn tls_server(db: &TestDatabase, pki: &TestPki, mutual: bool) -> TestServer {
    let options = if mutual {
        pki.mtls_options()
    } else {
        pki.client_options()
    };
    spawn_server_connecting(db, with_tls(pki, mutual), options).await
}

/// The basic promise: a client trusting the CA reaches a TLS server through the crate.
#[tokio::test]
async fn a_tls_client_calls_a_tls_server() {
    let db = TestDatabase::new().await;
    let pki = TestPki::generate("test CA");
    let server = tls_server(&db, &pki, false).await;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    call(&server.client).await.expect("a call over TLS");
    // localhost is in the certificate too.
    let localhost = format!("https://localhost:{}", server.addr.port());
    connect_and_call(&localhost, &pki.client_options())
        .await
        .expect("a call over TLS to localhost");
}

/// A client that does not trust the server's CA is refused at the handshake.
#[tokio::test]
async fn a_client_trusting_another_ca_is_refused() {
    let db = TestDatabase::new().await;
    let pki = TestPki::generate("test CA");
    let other = TestPki::generate("other CA");
    let server = tls_server(&db, &pki, false).await;
    assert_refused(
        connect_and_call(&server.url, &other.client_options()).await,
        "untrusted server certificate",
    );
}

/// Plaintext against TLS, raw garbage and a handshake left hanging cost the server
/// nothing: TLS clients are still served afterwards.
#[tokio::test]
async fn plaintext_and_garbage_against_a_tls_server_fail_without_killing_it() {
    use tokio::io::AsyncWriteExt;

    let db = TestDatabase::new().await;
    let pki = TestPki::generate("test CA");
    let server = tls_server(&db, &pki, false).await;

    let plaintext = format!("http://{}", server.addr);
    assert_refused(
        connect_and_call(&plaintext, &ConnectOptions::new()).await,
        "plaintext client against a TLS server",
    );
    let mut garbage = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connecting");
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("writing garbage");
    // Opened and left silent: its handshake task waits, the others must not.
    let _silent = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connecting");

    call(&server.client)
        .await
        .expect("the established TLS client still works");
    connect_and_call(&server.url, &pki.client_options())
        .await
        .expect("a new TLS client is still served");
}

/// The other way round: a TLS client against the plaintext default fails, and plaintext
/// clients are still served.
#[tokio::test]
async fn a_tls_client_against_a_plaintext_server_fails_without_killing_it() {
    let db = TestDatabase::new().await;
    let pki = TestPki::generate("test CA");
    let server = spawn_server(&db).await;
    let https = format!("https://{}", server.addr);
    assert_refused(
        connect_and_call(&https, &pki.client_options()).await,
        "TLS client against a plaintext server",
    );
    call(&server.client)
        .await
        .expect("plaintext clients are still served");
}

/// With --tls-client-ca a client must prove who it is with a certificate from that CA.
#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let db = TestDatabase::new().await;
    let pki = TestPki::generate("test CA");
    let other = TestPki::generate("other CA");
    let server = tls_server(&db, &pki, true).await;

    call(&server.client)
        .await
        .expect("a client with a certificate from the CA is served");
    assert_refused(
        connect_and_call(&server.url, &pki.client_options()).await,
        "no client certificate",
    );
    let foreign = ConnectOptions::from_files(
        Some(&pki.ca_cert),
        Some(&other.client_cert),
        Some(&other.client_key),
    )
    .expect("reading the certificates");
    assert_refused(
        connect_and_call(&server.url, &foreign).await,
        "a client certificate from another CA",
    );
    connect_and_call(&server.url, &pki.mtls_options())
        .await
        .expect("a new client with a certificate from the CA is served");
}

/// What the server hands to authentication for a client certificate: its CN, then its
/// DNS SANs, once each.
#[test]
fn peer_subjects_are_the_common_name_and_dns_names() {
    let pki = TestPki::generate("test CA");
    assert_eq!(peer_subjects(&pki.client_cert_der), vec![CLIENT_CN]);

    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![
        "crm-sync.internal".to_owned(),
        "10.0.0.7".to_owned(),
        "crm-sync.example".to_owned(),
    ])
    .expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "crm-sync.internal");
    let cert = params.self_signed(&key).expect("self-signing");
    assert_eq!(
        peer_subjects(cert.der()),
        vec!["crm-sync.internal", "crm-sync.example"]
    );
}

/// Certificate renewal without a restart: the real binary re-reads its files on SIGHUP;
/// new connections get the new certificate, and a broken reload keeps the last good one.
#[tokio::test]
async fn sighup_reloads_the_certificate_without_a_restart() {
    let db = TestDatabase::new().await;
    let first = TestPki::generate("first CA");
    let second = TestPki::generate("second CA");
    let dir = TempDir::new("provisiond-tls");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    first.install_server_files(&cert, &key);
    prepare_scripts_dir(&dir.path().join("scripts"));

    let addr = free_addr();
    let mut command = provisiond(addr, &dir.path().join("scripts"));
    command
        .env("DATABASE_URL", &db.url)
        .env("PROVISIOND_TLS_CERT", &cert)
        .env("PROVISIOND_TLS_KEY", &key);
    let server = ServerProcess::start_connecting(command, addr, first.client_options()).await;
    let url = server.url.clone();
    assert_refused(
        connect_and_call(&url, &second.client_options()).await,
        "trusting only the second CA before the reload",
    );

    second.install_server_files(&cert, &key);
    hangup(&server);
    eventually(
        Duration::from_secs(10),
        "the second certificate",
        || async { connect_and_call(&url, &second.client_options()).await.ok() },
    )
    .await;
    assert_refused(
        connect_and_call(&url, &first.client_options()).await,
        "trusting only the first CA after the reload",
    );
    call(&server.client)
        .await
        .expect("the connection made before the reload goes on");

    // A broken key: the reload fails, is logged, and the second certificate stays.
    std::fs::write(&key, "not a key").expect("breaking the key");
    hangup(&server);
    eventually(
        Duration::from_secs(10),
        "the failed reload in the log",
        || async { server.log().contains("TLS reload failed").then_some(()) },
    )
    .await;
    connect_and_call(&url, &second.client_options())
        .await
        .expect("the last good certificate is still served");
}

fn hangup(server: &ServerProcess) {
    let pid = server.pid().expect("the server is running");
    // SAFETY: signalling our own child, which has not been reaped (pid() is Some).
    let sent = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    assert_eq!(sent, 0, "kill -HUP {pid}");
}

/// The operator's path: provctl with --ca-cert, --client-cert and --client-key against
/// a server requiring client certificates; without the certificate it fails cleanly.
#[tokio::test]
async fn provctl_talks_mutual_tls_with_its_global_flags() {
    let db = TestDatabase::new().await;
    let pki = TestPki::generate("test CA");
    let server = tls_server(&db, &pki, true).await;
    let ca = pki.ca_cert.to_str().expect("UTF-8 path");
    let cert = pki.client_cert.to_str().expect("UTF-8 path");
    let key = pki.client_key.to_str().expect("UTF-8 path");

    let run = provctl_run(
        &server.url,
        &[
            "--ca-cert",
            ca,
            "--client-cert",
            cert,
            "--client-key",
            key,
            "event-types",
            "list",
        ],
    )
    .await;
    assert!(run.success, "provctl failed: {}", run.stderr);

    // A bare host:port with --ca-cert means https.
    let bare = server.addr.to_string();
    let run = provctl_run(
        &bare,
        &[
            "event-types",
            "list",
            "--ca-cert",
            ca,
            "--client-cert",
            cert,
            "--client-key",
            key,
        ],
    )
    .await;
    assert!(run.success, "provctl on host:port failed: {}", run.stderr);

    // The same through the environment.
    let mut command = provctl(&server.url);
    command
        .env("PROVISIONING_CA_CERT", &pki.ca_cert)
        .env("PROVISIONING_CLIENT_CERT", &pki.client_cert)
        .env("PROVISIONING_CLIENT_KEY", &pki.client_key)
        .args(["event-types", "list"]);
    let output = run_command(command).await;
    assert!(
        output.status.success(),
        "provctl with TLS from the environment failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let run = provctl_run(&server.url, &["--ca-cert", ca, "event-types", "list"]).await;
    assert_eq!(
        run.code,
        Some(1),
        "without a client certificate: {}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.starts_with("provctl: "), "{}", run.stderr);

    let run = provctl_run(
        &server.url,
        &["--ca-cert", "/nonexistent/ca.pem", "event-types", "list"],
    )
    .await;
    assert_eq!(run.code, Some(2), "unreadable CA: {}", run.stderr);
    assert!(run.stderr.contains("/nonexistent/ca.pem"), "{}", run.stderr);
}

/// An operator's typo in a TLS path stops the start at once, naming the file, before
/// any database is touched.
#[tokio::test]
async fn an_unreadable_certificate_stops_the_start_with_its_path() {
    let dir = TempDir::new("provisiond-tls");
    let mut command = provisiond(free_addr(), &dir.path().join("scripts"));
    command
        .env("PROVISIOND_DATA_DIR", dir.path().join("data"))
        .args(["--tls-cert", "/nonexistent/cert.pem"])
        .args(["--tls-key", "/nonexistent/key.pem"]);
    let output = run_command(command).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "the data directory was touched"
    );
}

/// mTLS identities are callers: a client certificate mapped in the tokens file acts with
/// that entry's roles and nothing more, without any bearer token.
#[tokio::test]
async fn a_client_certificate_mapped_in_the_tokens_file_acts_with_its_roles() {
    let db = TestDatabase::new().await;
    let pki = TestPki::generate("test CA");
    let dir = TempDir::new("provisioning-tokens");
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[certificate]]\nname = \"crm-sync\"\nsubject = \"{CLIENT_CN}\"\nroles = [\"reader\"]\nevents = []\n"
        ),
    )
    .expect("writing the tokens file");
    let configure = |config: &mut Config| {
        with_tls(&pki, true)(config);
        config.tokens_file = Some(tokens.clone());
    };
    let server = spawn_server_connecting(&db, configure, pki.mtls_options()).await;

    call(&server.client)
        .await
        .expect("the certificate's reader role may list event types");
    let emit = server
        .client
        .emit(proto::EmitRequest {
            event: "clients.create".into(),
            phase: proto::Phase::After.into(),
            data_json: "{}".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        emit.as_ref().err().and_then(ClientError::code),
        Some(tonic::Code::PermissionDenied),
        "a reader certificate may not emit: {emit:?}"
    );
    let purge = server
        .client
        .purge(proto::PurgeRequest {
            older_than: Some(prost_types::Timestamp::default()),
        })
        .await;
    assert_eq!(
        purge.as_ref().err().and_then(ClientError::code),
        Some(tonic::Code::PermissionDenied),
        "nor purge: {purge:?}"
    );
}
