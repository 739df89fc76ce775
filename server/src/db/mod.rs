//! Database access: the r2d2 pool of Diesel connections, the one helper through which
//! every blocking query runs (`Db::run`, inside `spawn_blocking`), embedded migrations,
//! and the embedded PostgreSQL cluster used when no database URL is configured.
//!
//! This layer holds no business rules: `queries/` has one small function per statement,
//! transactions are opened by `domain/`.
//!
//! Pooled connections keep no session state between checkouts beyond Diesel's own
//! (time zone and client encoding, set at connect, which PgBouncer tracks per client):
//! `SET` is only ever `SET LOCAL` inside a transaction, advisory locks are
//! transaction-level, no temporary tables. So the pool may go through a transaction
//! pooler (PgBouncer `pool_mode = transaction`); the one session-bound feature, LISTEN,
//! runs on its own connection, which can take a direct URL ([`Db::with_listen_url`]).
//! The other is Diesel's cache of named prepared statements: [`Statements::Unnamed`]
//! turns it off for poolers that cannot carry named statements across server
//! connections.

pub mod embedded;
pub mod models;
pub mod prepared;
pub mod probe;
pub mod queries;
pub mod reads;
pub mod schema;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::CacheSize;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::{Connection, PgConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// Migrations compiled into the binary; run at every start.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Errors of the database layer itself (the queries return Diesel's `QueryResult`).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be checked out of the pool in time.
    #[error("database connection unavailable")]
    Pool(#[source] diesel::r2d2::PoolError),
    /// A statement failed.
    #[error("database query failed")]
    Query(#[from] diesel::result::Error),
    /// The blocking task running the query panicked or was cancelled.
    #[error("database task failed")]
    Join(#[from] tokio::task::JoinError),
    /// Opening a dedicated connection failed.
    #[error("database connection failed")]
    Connect(#[from] diesel::ConnectionError),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migration(String),
}

impl DbError {
    /// Whether the database could not be reached (no connection, a lost one): the same
    /// work may succeed a moment later. A statement libpq could not even send counts:
    /// that is how a pooled connection to a server that died (or restarted) fails.
    pub fn is_unavailable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match self {
            DbError::Pool(_) | DbError::Connect(_) => true,
            DbError::Query(Error::BrokenTransactionManager) => true,
            DbError::Query(Error::DatabaseError(kind, info)) => match kind {
                DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::UnableToSendCommand
                // A primary that became a standby (failover) refuses writes.
                | DatabaseErrorKind::ReadOnlyTransaction => true,
                _ => is_outage_message(info.message()),
            },
            _ => false,
        }
    }

    /// Whether the database refused the statement itself (bad data, a violated
    /// constraint): running it again cannot succeed.
    pub fn is_rejection(&self) -> bool {
        matches!(self, DbError::Query(_)) && !self.is_unavailable()
    }
}

/// Whether a database error message says the server went away or is not accepting
/// work (SQLSTATE classes 08 and 57: admin shutdown, crash, start-up, recovery), as
/// PostgreSQL and libpq word it. Diesel reports these as `DatabaseErrorKind::Unknown`
/// and exposes no SQLSTATE, so the message is all there is to go on.
fn is_outage_message(message: &str) -> bool {
    const OUTAGES: &[&str] = &[
        "terminating connection",
        "the database system is",
        "server closed the connection",
        "no connection to the server",
        "could not receive data from server",
        "could not send data to server",
        "connection to server",
        "SSL connection has been closed",
        "SSL SYSCALL error",
        "canceling statement due to conflict with recovery",
    ];
    OUTAGES.iter().any(|outage| message.contains(outage))
}

/// Whether the database can serve, as the embedded cluster's supervisor or the external
/// database's probe sees it; the server's health follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterStatus {
    /// Reachable (the embedded postmaster is running; the external database answers).
    Up,
    /// Not reachable (the embedded postmaster died and is being restarted; the external
    /// database does not answer).
    Down,
}

/// How pooled connections run statements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Statements {
    /// Each connection keeps its statements prepared under a name (Diesel's statement
    /// cache): parsed and planned once per connection. Needs a direct connection, a
    /// session pooler, or PgBouncer 1.21+ with `max_prepared_statements` set.
    #[default]
    Named,
    /// Every statement is sent as an unnamed one, parsed, bound and run in one round
    /// trip (libpq's `PQsendQueryParams`): works through any transaction pooler, at the
    /// cost of parsing and planning every statement on every call.
    Unnamed,
}

/// Applies [`Statements`] to every connection the pool opens.
#[derive(Debug, Clone, Copy)]
struct StatementMode(Statements);

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for StatementMode {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        if self.0 == Statements::Unnamed {
            conn.set_prepared_statement_cache_size(CacheSize::Disabled);
        }
        Ok(())
    }
}

/// A cloneable handle on the connection pool.
#[derive(Clone)]
pub struct Db {
    pool: Pool<ConnectionManager<PgConnection>>,
    url: String,
    /// Where the LISTEN connection goes when it must bypass a pooler; `None` = `url`.
    listen_url: Option<String>,
    /// Callers waiting for a pooled connection now (r2d2 does not count them).
    waiting: Arc<AtomicUsize>,
}

/// Checks out a connection (counted in `waiting` while it waits) and runs `f` on it.
fn with_connection<T, E, F>(
    pool: &Pool<ConnectionManager<PgConnection>>,
    waiting: &AtomicUsize,
    f: F,
) -> Result<T, E>
where
    F: FnOnce(&mut PgConnection) -> Result<T, E>,
    E: From<DbError>,
{
    waiting.fetch_add(1, Ordering::Relaxed);
    let conn = pool.get();
    waiting.fetch_sub(1, Ordering::Relaxed);
    let mut conn: PooledConnection<_> = conn.map_err(DbError::Pool)?;
    f(&mut conn)
}

/// The pool's state, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    /// Connections open (idle or in use).
    pub connections: u32,
    /// Connections idle.
    pub idle: u32,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

impl Db {
    /// Builds a pool of at most `max_size` connections to `url`, with named (cached)
    /// statements. Connections are opened lazily, so this fails only if the first
    /// connection cannot be opened.
    pub fn connect(url: &str, max_size: u32) -> Result<Db, DbError> {
        Db::connect_with(url, max_size, Statements::Named)
    }

    /// [`Db::connect`] running statements as `statements` says.
    pub fn connect_with(url: &str, max_size: u32, statements: Statements) -> Result<Db, DbError> {
        let pool = Pool::builder()
            .max_size(max_size)
            .min_idle(Some(2.min(max_size)))
            .connection_timeout(Duration::from_secs(10))
            // No `SELECT 1` before every checkout: a round trip per query. A connection
            // that broke fails its statement, is marked broken and is replaced; callers
            // retry (the recorder) or get UNAVAILABLE.
            .test_on_check_out(false)
            .connection_customizer(Box::new(StatementMode(statements)))
            .build(ConnectionManager::new(url))
            .map_err(DbError::Pool)?;
        Ok(Db {
            pool,
            url: url.to_owned(),
            listen_url: None,
            waiting: Arc::default(),
        })
    }

    /// Like [`Db::connect_with`], but opens no connection now: for a database that may
    /// be down when the server starts (a read standby), whose calls fail until it is up.
    pub fn connect_lazy(url: &str, max_size: u32, statements: Statements) -> Db {
        let pool = Pool::builder()
            .max_size(max_size)
            .connection_timeout(Duration::from_secs(2))
            .test_on_check_out(false)
            .connection_customizer(Box::new(StatementMode(statements)))
            .build_unchecked(ConnectionManager::new(url));
        Db {
            pool,
            url: url.to_owned(),
            listen_url: None,
            waiting: Arc::default(),
        }
    }

    /// Opens the LISTEN connection on `url` instead of the pool's URL: the same
    /// database reached directly, when the pool goes through a transaction pooler
    /// (LISTEN holds its session, which such a pooler hands to other clients).
    pub fn with_listen_url(mut self, url: Option<String>) -> Db {
        self.listen_url = url;
        self
    }

    /// Runs blocking Diesel work on a pooled connection inside `spawn_blocking`, so no
    /// runtime worker thread ever waits on the database.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let pool = self.pool.clone();
        let waiting = self.waiting.clone();
        tokio::task::spawn_blocking(move || with_connection(&pool, &waiting, f))
            .await
            .map_err(DbError::Join)?
    }

    /// Runs blocking Diesel work on a pooled connection on the calling thread, which
    /// must be one that may block: a thread of its own (the group committers), never a
    /// runtime worker.
    pub fn run_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E>,
        E: From<DbError>,
    {
        with_connection(&self.pool, &self.waiting, f)
    }

    /// Runs a trivial statement on every idle pooled connection, so that connections
    /// the server closed (the embedded cluster restarted) are discarded now instead of
    /// failing the next requests; returns how many were discarded. Connections in use
    /// are left alone: a broken one fails its statement once and is replaced.
    pub async fn discard_broken(&self) -> Result<usize, DbError> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            use diesel::connection::SimpleConnection;
            // Held together, so each checkout returns a different idle connection;
            // `try_get` never waits for or opens a connection.
            let idle: Vec<_> = (0..pool.state().idle_connections)
                .map_while(|_| pool.try_get())
                .collect();
            // A failed statement marks its connection broken: r2d2 drops it on return.
            Ok(idle
                .into_iter()
                .filter_map(|mut conn| conn.batch_execute("SELECT 1").err())
                .count())
        })
        .await?
    }

    /// The pool's connections and waiting callers now.
    pub fn pool_stats(&self) -> PoolStats {
        let state = self.pool.state();
        PoolStats {
            connections: state.connections,
            idle: state.idle_connections,
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    /// Opens a connection outside the pool, to the pool's URL (the health probe's).
    pub fn dedicated(&self) -> Result<PgConnection, DbError> {
        Ok(PgConnection::establish(&self.url)?)
    }

    /// Opens the connection LISTEN runs on: to the listen URL if one is set (see
    /// [`Db::with_listen_url`]), else to the pool's URL.
    pub fn listen_connection(&self) -> Result<PgConnection, DbError> {
        Ok(PgConnection::establish(
            self.listen_url.as_deref().unwrap_or(&self.url),
        )?)
    }

    /// Applies the pending embedded migrations. Safe to call from several replicas at
    /// once: the run holds a transaction-level advisory lock.
    pub async fn migrate(&self) -> Result<(), DbError> {
        self.run(|conn| {
            use diesel::RunQueryDsl;
            conn.transaction::<_, DbError, _>(|conn| {
                diesel::sql_query("SELECT pg_advisory_xact_lock(7262024)").execute(conn)?;
                conn.run_pending_migrations(MIGRATIONS)
                    .map_err(|e| DbError::Migration(e.to_string()))?;
                Ok(())
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use diesel::result::{DatabaseErrorKind, Error};

    use super::*;

    fn query_error(kind: DatabaseErrorKind) -> DbError {
        DbError::Query(Error::DatabaseError(kind, Box::new(String::from("x"))))
    }

    #[test]
    fn outages_reported_as_unknown_errors_are_unavailable() {
        for message in [
            "terminating connection due to administrator command",
            "the database system is shutting down",
            "the database system is starting up",
            "server closed the connection unexpectedly\n\tThis probably means...",
            "no connection to the server\n",
        ] {
            let error = DbError::Query(Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(message.to_owned()),
            ));
            assert!(error.is_unavailable() && !error.is_rejection(), "{message}");
        }
        assert!(query_error(DatabaseErrorKind::ReadOnlyTransaction).is_unavailable());
        assert!(DbError::Query(Error::BrokenTransactionManager).is_unavailable());
    }

    #[test]
    fn a_lost_or_unsendable_connection_is_unavailable_and_a_refused_statement_is_a_rejection() {
        for kind in [
            DatabaseErrorKind::ClosedConnection,
            DatabaseErrorKind::UnableToSendCommand,
        ] {
            let error = query_error(kind);
            assert!(error.is_unavailable() && !error.is_rejection(), "{error:?}");
        }
        for kind in [
            DatabaseErrorKind::UniqueViolation,
            DatabaseErrorKind::CheckViolation,
            DatabaseErrorKind::Unknown,
        ] {
            let error = query_error(kind);
            assert!(!error.is_unavailable() && error.is_rejection(), "{error:?}");
        }
    }
}
