//! The PostgreSQL the benchmark measures against: an embedded cluster in the run's
//! temporary directory (the server crate's [`EmbeddedPostgres`], which drops to the
//! `postgres` account when run as root), or a server given by URL. Either way every
//! scenario gets a fresh database, created here and dropped after it, so no scenario
//! sees another's rows or pending deliveries.
//!
//! Diesel is blocking: every statement here runs inside `spawn_blocking`.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;
use diesel::sql_types::Text;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use provisioning_server::db::embedded::EmbeddedPostgres;

/// Where fresh databases are created.
pub struct Databases {
    /// Running embedded cluster, stopped by [`Databases::stop`] (or on drop).
    embedded: Option<EmbeddedPostgres>,
    /// A database to connect to for CREATE/DROP DATABASE.
    admin_url: String,
    /// Name prefix unique to this process.
    prefix: String,
    counter: AtomicU32,
}

/// A database created for one scenario.
#[derive(Debug, Clone)]
pub struct FreshDb {
    /// Database name.
    pub name: String,
    /// URL of it.
    pub url: String,
}

#[derive(QueryableByName)]
struct VersionRow {
    #[diesel(sql_type = Text)]
    version: String,
}

impl Databases {
    /// Starts the embedded cluster under `dir` unless `database_url` is given.
    pub async fn start(database_url: Option<String>, dir: &Path) -> anyhow::Result<Databases> {
        let prefix = format!("bench_{}", std::process::id());
        if let Some(url) = database_url {
            with_database(&url, "x").context("--database-url must be a postgres:// URL")?;
            return Ok(Databases {
                embedded: None,
                admin_url: url,
                prefix,
                counter: AtomicU32::new(0),
            });
        }
        let dir = dir.to_owned();
        let embedded = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
            .await?
            .context("starting the embedded PostgreSQL")?;
        Ok(Databases {
            admin_url: embedded.url_for("postgres"),
            embedded: Some(embedded),
            prefix,
            counter: AtomicU32::new(0),
        })
    }

    /// `embedded` or `external`.
    pub fn kind(&self) -> &'static str {
        if self.embedded.is_some() {
            "embedded"
        } else {
            "external"
        }
    }

    /// The embedded cluster's postmaster pid (from `postmaster.pid`); `None` for an
    /// external server, whose processes this harness cannot see.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let pgdata = self.embedded.as_ref()?.cluster_dir();
        let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `SELECT version()`, shortened to "PostgreSQL 15.x".
    pub async fn version(&self) -> anyhow::Result<String> {
        let url = self.admin_url.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = PgConnection::establish(&url)?;
            let row: VersionRow =
                diesel::sql_query("SELECT version() AS version").get_result(&mut conn)?;
            let short: Vec<&str> = row.version.split_whitespace().take(2).collect();
            anyhow::Ok(short.join(" "))
        })
        .await?
    }

    /// Creates an empty database for `label` (the server migrates it when it starts).
    pub async fn create(&self, label: &str) -> anyhow::Result<FreshDb> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}_{n}_{}", self.prefix, label.replace('-', "_"));
        let url = match &self.embedded {
            Some(pg) => pg.url_for(&name),
            None => with_database(&self.admin_url, &name)?,
        };
        let admin = self.admin_url.clone();
        let statement = format!("CREATE DATABASE \"{name}\"");
        tokio::task::spawn_blocking(move || {
            let mut conn = PgConnection::establish(&admin)?;
            diesel::sql_query(statement).execute(&mut conn)?;
            anyhow::Ok(())
        })
        .await?
        .with_context(|| format!("creating database {name}"))?;
        Ok(FreshDb { name, url })
    }

    /// Drops a database made by [`Databases::create`], disconnecting its sessions.
    pub async fn drop_database(&self, db: &FreshDb) -> anyhow::Result<()> {
        let admin = self.admin_url.clone();
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", db.name);
        tokio::task::spawn_blocking(move || {
            let mut conn = PgConnection::establish(&admin)?;
            diesel::sql_query(statement).execute(&mut conn)?;
            anyhow::Ok(())
        })
        .await?
        .with_context(|| format!("dropping database {}", db.name))
    }

    /// Stops the embedded cluster, if this run started one.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut pg) = self.embedded.take() {
            tokio::task::spawn_blocking(move || {
                pg.stop()?;
                // Stopped already: its drop must not run `pg_ctl stop` a second time.
                pg.keep_running();
                anyhow::Ok(())
            })
            .await??;
        }
        Ok(())
    }
}

/// `url` with its database (the URL path) replaced by `name`; query parameters kept.
pub fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let scheme_end = url
        .find("://")
        .filter(|_| url.starts_with("postgres://") || url.starts_with("postgresql://"))
        .ok_or_else(|| anyhow::anyhow!("not a postgres:// URL"))?
        + 3;
    let (head, rest) = url.split_at(scheme_end);
    let (rest, query) = match rest.find('?') {
        Some(q) => rest.split_at(q),
        None => (rest, ""),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    Ok(format!("{head}{authority}/{name}{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced_and_parameters_kept() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/app?sslmode=disable", "b").unwrap(),
            "postgres://u:p@h:5432/b?sslmode=disable"
        );
        assert_eq!(
            with_database("postgresql://h", "b").unwrap(),
            "postgresql://h/b"
        );
        assert_eq!(
            with_database("postgres://u@localhost/x?host=/tmp/s", "b").unwrap(),
            "postgres://u@localhost/b?host=/tmp/s"
        );
        assert!(with_database("host=localhost dbname=x", "b").is_err());
    }
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

/// Events a scenario's server handled in its fresh database: AFTER events stored, plus
/// BEFORE events run (those are not stored; their log rows carry their ids).
pub async fn events_handled(url: &str) -> anyhow::Result<u64> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = PgConnection::establish(&url)?;
        let row: CountRow = diesel::sql_query(
            "SELECT (SELECT count(*) FROM events) \
                  + (SELECT count(DISTINCT event_id) FROM execution_logs WHERE phase = 'before') \
                    AS count",
        )
        .get_result(&mut conn)?;
        Ok(row.count.max(0) as u64)
    })
    .await?
}
