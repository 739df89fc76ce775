//! `provisiond`: the Provisioning API gRPC service.
//!
//! Internal services emit business events; admins register handlers (HTTP endpoints or
//! local scripts) for them; every handler run lands in a searchable, streamable
//! execution log. PostgreSQL is the only store and the coordination engine: several
//! stateless replicas can share one database.
//!
//! # Layout
//! - `config`: flags and environment, validated once.
//! - `auth`: callers and roles: the tokens file, the tower layer that turns credentials
//!   into a `Caller` in request extensions, the reloader, development mode.
//! - `db`: pool, blocking helper, schema, row models, one query module per aggregate,
//!   prepared hand-written statements, the embedded PostgreSQL cluster (one owning
//!   process per data directory, restarted by its supervisor if it dies).
//! - `domain`: rules per aggregate (handlers, events, logs) and transactions; the event
//!   types' data schemas and their per-replica compiled cache.
//! - `dispatch`: the AFTER worker (runs what ingest hands over and what it claims, then
//!   records), the BEFORE chain, test runs of one handler, the HTTP and script
//!   executors, the pure retry policy, the batched log recorder.
//! - `listener`: the LISTEN connection that wakes dispatchers and tails across replicas.
//! - `grpc`: one file per proto service; conversions; the error → status mapping.
//! - `limits`: the edge layer bounding concurrent calls and giving calls a default
//!   deadline (the other limits are set where they apply).
//! - `policy`: security decisions as pure functions (outbound CIDR policy, script file
//!   ownership and permissions, the script account).
//! - `console`: the optional web console (`--console-listen`): static pages and a JSON
//!   API that calls the gRPC services in process, so validation and roles stay theirs.
//! - `tls`: optional TLS (rustls): files reloaded on SIGHUP, the accept loop, client
//!   certificates turned into `auth::PeerSubjects`.
//! - `auth`: caller identities carried in request extensions.
//! - `shutdown`, `telemetry`.

pub mod auth;
pub mod config;
pub mod console;
pub mod db;
pub mod dispatch;
pub mod domain;
pub mod grpc;
pub mod limits;
pub mod listener;
pub mod maintenance;
pub mod metrics;
pub mod policy;
pub mod shutdown;
pub mod side_http;
pub mod telemetry;
pub mod tls;

use std::sync::Arc;

use provisioning_api::v1::event_service_server::EventServiceServer;
use provisioning_api::v1::execution_log_service_server::ExecutionLogServiceServer;
use provisioning_api::v1::handler_service_server::HandlerServiceServer;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::db::embedded::supervisor;
use crate::db::embedded::{EmbeddedError, EmbeddedPostgres};
use crate::db::ClusterStatus;
use crate::db::{Db, DbError};
use crate::shutdown::Shutdown;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The embedded database could not be provided.
    #[error("embedded PostgreSQL: {0}")]
    Embedded(#[from] EmbeddedError),
    /// The database could not be reached or migrated.
    #[error("database: {0}")]
    Db(#[from] DbError),
    /// A directory could not be prepared.
    #[error("{0}")]
    Io(String),
    /// The configuration is not usable (the message names the flag).
    #[error("configuration: {0}")]
    Config(String),
    /// The gRPC transport failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The tokens file is unusable, or development mode would expose the server.
    #[error("{0}")]
    Auth(String),
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The TLS files could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// The services the health service reports on (`""` = the whole server).
const HEALTH_SERVICES: [&str; 4] = [
    "provisioning.v1.HandlerService",
    "provisioning.v1.EventService",
    "provisioning.v1.ExecutionLogService",
    "",
];

/// Serves the API on `listener` until `shutdown` is requested, then stops accepting,
/// lets background tasks finish and stops the embedded database if it started one.
/// While the database is unreachable (an embedded cluster that died is being restarted, an
/// external one does not answer), health says NOT_SERVING.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    let gate = auth_gate(&config, &listener)?;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    // Refused before anything starts: as root, scripts must have an account to run as.
    let script_access = policy::script_file::ScriptAccess::for_service(euid, &config.script_user)
        .map_err(ServerError::Config)?;
    let health_reporter = tonic_health::server::HealthReporter::new();
    let health_service = grpc::health::service(&health_reporter, shutdown.token.clone());
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;

    // Before the database: a bad TLS file fails fast, without touching any cluster.
    let tls = match tls::TlsFiles::from_config(&config)? {
        Some(files) => Some(Arc::new(tls::ServerTls::load(files)?)),
        None => None,
    };

    let (db, embedded) = open_database(&config).await?;
    if config.prepared_statements == db::Statements::Unnamed
        && config.database_url.is_some()
        && config.listen_database_url.is_none()
    {
        // Unnamed statements usually mean a transaction pooler, which LISTEN cannot
        // cross: replicas would then only find each other's work by polling.
        tracing::warn!(
            "--prepared-statements unnamed without --listen-database-url: if --database-url \
             goes through a transaction pooler, LISTEN does not work through it; give the \
             direct URL with --listen-database-url"
        );
    }
    db.migrate().await?;
    maintenance::prepare(&db).await?;
    let scripts_dir = config.scripts_dir();
    std::fs::create_dir_all(&scripts_dir).map_err(|e| {
        ServerError::Io(format!(
            "creating scripts directory {}: {e}",
            scripts_dir.display()
        ))
    })?;

    if let Some(path) = &config.tokens_file {
        auth::reload::spawn(path.clone(), gate.clone(), &shutdown);
    }
    // Bound before anything is served: a taken address fails the start.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            side_http::bind("--metrics-listen", addr)
                .await
                .map_err(ServerError::Io)?,
        ),
        None => None,
    };
    let console_listener = match config.console_listen {
        Some(addr) => Some(
            side_http::bind("--console-listen", addr)
                .await
                .map_err(ServerError::Io)?,
        ),
        None => None,
    };
    let config = Arc::new(config);
    let metrics = Arc::new(metrics::Metrics::new());
    let signals = listener::spawn(db.clone(), &shutdown);
    let (recorder, freed_slots) = dispatch::recorder::spawn(
        db.clone(),
        config.clone(),
        signals.clone(),
        metrics.clone(),
        &shutdown,
    );
    // The runner holds the only recorder handle: the recorder drains and stops once the
    // worker and the gRPC services (the runner's owners) are gone.
    let runner = dispatch::Runner::new(
        &config,
        scripts_dir.clone(),
        script_access.clone(),
        recorder,
    );
    let worker = dispatch::worker::spawn(
        db.clone(),
        config.clone(),
        runner.clone(),
        signals.clone(),
        &shutdown,
    );
    dispatch::promoter::spawn(
        db.clone(),
        signals.clone(),
        worker.clone(),
        freed_slots,
        &shutdown,
    );
    // One cache of compiled event schemas per replica, shared by every entry point.
    let schemas = domain::schemas::EventSchemas::new(db.clone());
    let ingest = domain::events::Ingest::new(
        db.clone(),
        config.clone(),
        worker,
        signals.clone(),
        schemas.clone(),
        metrics.clone(),
        &shutdown,
    );
    maintenance::spawn(db.clone(), config.clone(), &shutdown);

    let rules = domain::handlers::HandlerRules {
        scripts_dir,
        trusted_owners: script_access.trusted_owners.clone(),
        outbound: config.outbound_policy(),
        max_headers: config.max_headers_per_handler,
        max_handlers_per_event: config.max_handlers_per_event,
    };
    let registry =
        domain::handlers::HandlerRegistry::new(db.clone(), rules, signals.clone(), schemas.clone());
    let tests = dispatch::test_run::TestRuns::new(
        db.clone(),
        runner.clone(),
        schemas.clone(),
        signals.clone(),
        config.max_payload_bytes,
    );
    let reads = match &config.read_database_url {
        Some(url) => {
            let standby =
                db::Db::connect_lazy(url, config.db_pool_size, config.prepared_statements);
            db::reads::Reads::with_standby(db.clone(), standby, config.max_read_lag, &shutdown)
        }
        None => db::reads::Reads::primary_only(db.clone()),
    };
    let logs = domain::logs::LogStore::new(db.clone(), signals.clone())
        .with_reads(reads)
        .with_shutdown(shutdown.token.clone())
        .with_max_tails(config.max_tail_subscribers);
    if let Some(listener) = metrics_listener {
        tracing::info!(listen = ?listener.local_addr().ok(), "metrics served at /metrics");
        metrics::serve(
            listener,
            metrics.clone(),
            db.clone(),
            logs.clone(),
            &shutdown,
        );
    }
    let before =
        dispatch::before::BeforeChain::new(db.clone(), runner, config.max_payload_bytes, schemas);
    // Shared by the gRPC server and the web console, which calls them in process.
    let handler_api = Arc::new(grpc::handler_service::HandlerApi::new(registry, tests));
    let log_api = Arc::new(grpc::log_service::LogApi::new(logs));
    if let Some(listener) = console_listener {
        tracing::info!(listen = ?listener.local_addr().ok(), "web console served");
        let services = console::Services {
            handlers: handler_api.clone(),
            logs: log_api.clone(),
            gate: gate.clone(),
            max_body_bytes: config.max_message_bytes,
        };
        console::serve(listener, services, &shutdown);
    }

    // Both reflection versions, so every grpcurl works without proto files.
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    set_health(&health_reporter, tonic_health::ServingStatus::Serving).await;
    // Shared with the supervisor, whose task ends (shutdown) before the cluster stops.
    let embedded = embedded.map(Arc::new);
    let reporter = health_reporter.clone();
    let report = move |status| {
        let reporter = reporter.clone();
        async move {
            let serving = match status {
                ClusterStatus::Up => tonic_health::ServingStatus::Serving,
                ClusterStatus::Down => tonic_health::ServingStatus::NotServing,
            };
            set_health(&reporter, serving).await
        }
    };
    match &embedded {
        Some(pg) => supervisor::spawn(pg.clone(), db.clone(), &shutdown, report),
        None => db::probe::spawn(db.clone(), &shutdown, report),
    }
    let local_addr = listener.local_addr().ok();
    tracing::info!(
        listen = ?local_addr,
        database = if embedded.is_some() { "embedded" } else { "external" },
        tls = match &tls {
            None => "off",
            Some(tls) if tls.files().client_ca.is_some() => "mutual",
            Some(_) => "on",
        },
        "provisiond serving"
    );

    let token = shutdown.token.clone();
    let max_message = config.max_message_bytes;
    let router = tonic::transport::Server::builder()
        .trace_fn(|request| {
            // A child of the caller's trace: its id on every line logged for the call,
            // and the parent of the exported span (--otlp-endpoint).
            let caller = request
                .headers()
                .get("traceparent")
                .and_then(|value| value.to_str().ok())
                .and_then(domain::trace_context::TraceContext::parse);
            telemetry::grpc_span(request.uri().path(), caller)
        })
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(Some(config.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
        .layer(limits::RequestLimitsLayer::new(
            config.max_concurrent_requests,
            config.default_deadline,
        ))
        // Turns a verified client certificate into `auth::PeerSubjects`; must stay
        // outside (added before) the auth layer, which reads caller identities.
        .layer(tonic::service::InterceptorLayer::new(
            tls::insert_peer_subjects as fn(_) -> _,
        ))
        .layer(auth::layer::AuthLayer::new(gate))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            HandlerServiceServer::from_arc(handler_api)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            EventServiceServer::new(grpc::event_service::EventApi::new(ingest, before, metrics))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            ExecutionLogServiceServer::from_arc(log_api)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        );
    let served = match tls {
        None => {
            // Without TCP_NODELAY small replies wait for the peer's delayed ACK (~40 ms).
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                .await
        }
        Some(tls) => {
            tls::spawn_reload_on_sighup(tls.clone(), &shutdown);
            let incoming = tls::incoming(listener, tls, &shutdown);
            router
                .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                .await
        }
    };

    // Stop background work even when the transport failed, then wait for it.
    shutdown.token.cancel();
    shutdown.tracker.close();
    shutdown.tracker.wait().await;
    if let Some(embedded) = embedded {
        drop(db);
        tokio::task::spawn_blocking(move || drop(embedded))
            .await
            .ok();
    }
    tracing::info!("provisiond stopped");
    Ok(served?)
}

/// The identities requests are checked against: the tokens file, or development mode,
/// which is refused on a non-loopback address unless `--insecure-no-auth` is given.
fn auth_gate(config: &Config, listener: &TcpListener) -> Result<auth::layer::Gate, ServerError> {
    if let Some(path) = &config.tokens_file {
        let identities = auth::identities::Identities::load(path)
            .map_err(|e| ServerError::Auth(e.to_string()))?;
        let (tokens, certificates) = identities.counts();
        tracing::info!(path = %path.display(), tokens, certificates, "authentication on: tokens file loaded");
        return Ok(auth::layer::Gate::with_identities(identities));
    }
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Io(format!("listener address: {e}")))?;
    // The web console's address is held to the same rule: it reaches the same services.
    let exposed = std::iter::once(addr)
        .chain(config.console_listen)
        .find(|addr| !addr.ip().is_loopback());
    if let Some(addr) = exposed.filter(|_| !config.insecure_no_auth) {
        return Err(ServerError::Auth(format!(
            "no --tokens-file: development mode (no authentication, every caller is admin) \
             serves loopback addresses only, and {addr} is not one; configure \
             --tokens-file, or pass --insecure-no-auth to accept the risk"
        )));
    }
    tracing::warn!(
        listen = %addr,
        "DEVELOPMENT MODE: no --tokens-file, so there is no authentication and every caller is admin"
    );
    Ok(auth::layer::Gate::development())
}

/// Sets every service's health.
async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// A reflection builder knowing our API and the health service.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(provisioning_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

async fn open_database(config: &Config) -> Result<(Db, Option<EmbeddedPostgres>), ServerError> {
    let pool_size = config.db_pool_size;
    let statements = config.prepared_statements;
    let url = config.database_url.clone();
    let listen_url = config.listen_database_url.clone();
    let data_dir = config.data_dir();
    // Starting a cluster and opening the pool's first connections both block.
    let opened = tokio::task::spawn_blocking(move || match url {
        Some(url) => Ok((
            Db::connect_with(&url, pool_size, statements)?.with_listen_url(listen_url),
            None,
        )),
        None => {
            tracing::info!(data_dir = %data_dir.display(), "taking the data directory and starting the embedded PostgreSQL");
            let embedded = EmbeddedPostgres::start(&data_dir)?;
            let db = Db::connect_with(&embedded.url(), pool_size, statements)?;
            Ok((db, Some(embedded)))
        }
    });
    opened.await.map_err(DbError::Join)?
}
