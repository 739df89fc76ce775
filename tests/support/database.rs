//! One fresh, migrated PostgreSQL database per test.
//!
//! Once per process: find the cluster (the server of `DATABASE_URL`, or a private
//! embedded cluster under `/tmp/provisioning-tests-<uid>` shared by every test process of
//! this user and left running), sweep databases left behind by dead test processes, and
//! make sure a migrated *template* database exists. The template is named after a hash
//! of the embedded migrations' names, so a new migration gets a new template instead of
//! a stale one; it is built under an advisory lock (parallel test processes do not race)
//! under a temporary name and renamed when complete (a crash never leaves a half-migrated
//! template behind).
//!
//! Per test: `CREATE DATABASE test_<host>_<pid>_<random> TEMPLATE <template>`, a file
//! copy that takes milliseconds, and `DROP DATABASE ... WITH (FORCE)` on drop. The pid
//! in the name is what lets the sweep tell leftovers from databases still in use.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use diesel::sql_types::{Bool, Text};
use diesel::{Connection, PgConnection, RunQueryDsl};
use provisioning_server::db::embedded::EmbeddedPostgres;
use provisioning_server::db::Db;
use sha2::{Digest, Sha256};

/// Session advisory lock held while the template is checked and built.
const TEMPLATE_LOCK_KEY: i64 = 0x7072_6f76_7465_7374;
/// How long CREATE/RENAME DATABASE is retried while the source is still in use.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// A database of its own for one test, cloned from the migrated template and dropped
/// (with `FORCE`, so open connections do not keep it alive) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    /// Connection URL of this database (give it to servers and `PgConnection`s).
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a fresh database from the migrated template (setting the template and the
    /// cluster up first if this is the process's first database).
    pub async fn new() -> TestDatabase {
        match tokio::task::spawn_blocking(TestDatabase::new_blocking).await {
            Ok(db) => db,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("creating the test database was cancelled: {e}"),
        }
    }

    fn new_blocking() -> TestDatabase {
        let setup = setup();
        let name = format!(
            "test_{}_{}_{:08x}",
            host_tag(),
            std::process::id(),
            rand::random::<u32>()
        );
        let mut admin = connect(&setup.cluster.admin_url());
        retry_while_busy(
            &mut admin,
            &format!("CREATE DATABASE {name} TEMPLATE {}", setup.template),
        );
        TestDatabase {
            url: setup.cluster.url_for(&name),
            name,
            admin_url: setup.cluster.admin_url(),
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of another database `name` on the same cluster (one a test creates; its
    /// name should start with this database's, so leftovers are swept like it).
    pub fn url_of(&self, name: &str) -> String {
        self.url.replacen(&self.name, name, 1)
    }

    /// A direct connection for SQL in tests. It blocks: call it from `spawn_blocking`
    /// or `tokio::task::block_in_place` (multi-thread runtime) inside async tests.
    pub fn conn(&self) -> PgConnection {
        connect(&self.url)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let drop_it = move || {
            let result = PgConnection::establish(&admin_url)
                .map_err(|e| e.to_string())
                .and_then(|mut admin| {
                    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .map_err(|e| e.to_string())
                });
            if let Err(error) = result {
                eprintln!("warning: cannot drop test database {name}: {error}");
            }
        };
        // Never block a runtime worker on libpq directly: use a plain thread there.
        if tokio::runtime::Handle::try_current().is_ok() {
            if std::thread::spawn(drop_it).join().is_err() {
                eprintln!("warning: dropping test database {} panicked", self.name);
            }
        } else {
            drop_it();
        }
    }
}

/// Where test databases are created.
enum Cluster {
    /// The server of `DATABASE_URL`; `url` is used as the administrative connection.
    External { url: String },
    /// The private per-user cluster, left running for the next test process.
    Embedded(EmbeddedPostgres),
}

impl Cluster {
    fn admin_url(&self) -> String {
        match self {
            Cluster::External { url } => url.clone(),
            Cluster::Embedded(pg) => pg.url_for("postgres"),
        }
    }

    fn url_for(&self, database: &str) -> String {
        match self {
            Cluster::External { url } => with_database(url, database),
            Cluster::Embedded(pg) => pg.url_for(database),
        }
    }
}

/// What the process sets up once.
struct Setup {
    cluster: Cluster,
    template: String,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let cluster = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Cluster::External { url },
            _ => Cluster::Embedded(start_embedded()),
        };
        let template = ensure_template(&cluster);
        Setup { cluster, template }
    })
}

/// Starts (or reuses) the per-user embedded cluster, one process at a time.
fn start_embedded() -> EmbeddedPostgres {
    let uid = unsafe { libc::geteuid() };
    let dir = PathBuf::from(format!("/tmp/provisioning-tests-{uid}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    // As root the cluster runs as `postgres`, which must traverse this directory.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod 0755 {}: {e}", dir.display()));
    let _lock = FileLock::exclusive(&dir.join("start.lock"));
    // Shared: every test process of this user uses it, and it outlives them all.
    EmbeddedPostgres::start_shared(&dir).unwrap_or_else(|e| {
        panic!(
            "starting the embedded test cluster in {}: {e}",
            dir.display()
        )
    })
}

/// An exclusive `flock` on a file, released when dropped (the file is closed).
struct FileLock {
    _file: File,
}

impl FileLock {
    fn exclusive(path: &Path) -> FileLock {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("opening lock file {}: {e}", path.display()));
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return FileLock { _file: file };
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                panic!("locking {}: {error}", path.display());
            }
        }
    }
}

/// Makes sure the migrated template of the current migrations exists; returns its name.
fn ensure_template(cluster: &Cluster) -> String {
    let template = format!("tmpl_{}", migrations_hash());
    let mut admin = connect(&cluster.admin_url());
    execute(
        &mut admin,
        &format!("SELECT pg_advisory_lock({TEMPLATE_LOCK_KEY})"),
    );
    sweep_leftovers(&mut admin);
    if !database_exists(&mut admin, &template) {
        let building = format!("{template}_build");
        execute(
            &mut admin,
            &format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
        );
        execute(&mut admin, &format!("CREATE DATABASE {building}"));
        {
            let db = Db::connect(&cluster.url_for(&building), 2)
                .unwrap_or_else(|e| panic!("connecting to {building}: {e}"));
            tokio::runtime::Handle::current()
                .block_on(db.migrate())
                .unwrap_or_else(|e| panic!("migrating {building}: {e}"));
            // The pool is dropped here: PostgreSQL refuses to copy a database that has
            // open connections.
        }
        retry_while_busy(
            &mut admin,
            &format!("ALTER DATABASE {building} RENAME TO {template}"),
        );
        execute(
            &mut admin,
            &format!("ALTER DATABASE {template} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"),
        );
    }
    execute(
        &mut admin,
        &format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK_KEY})"),
    );
    template
}

/// Drops the test databases of this host whose process is gone (a test binary killed
/// before its `Drop`s ran). Databases of live processes and of other hosts are kept.
fn sweep_leftovers(admin: &mut PgConnection) {
    let names: Vec<String> =
        diesel::dsl::sql::<Text>("SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%'")
            .load(admin)
            .unwrap_or_else(|e| panic!("listing databases: {e}"));
    let host = host_tag();
    for name in names {
        let mut parts = name.splitn(4, '_');
        let (Some("test"), Some(tag), Some(pid), Some(_)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        if tag != host || process_alive(pid) {
            continue;
        }
        if let Err(e) =
            diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(admin)
        {
            eprintln!("warning: cannot sweep leftover database {name}: {e}");
        }
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Six hex digits identifying this host, so a shared server's sweep only judges the
/// processes it can see.
fn host_tag() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        buf[..end].to_vec()
    } else {
        b"unknown".to_vec()
    };
    hex(&Sha256::digest(&name)[..3])
}

/// Sha-256 of the names of the migrations compiled into the server (the ones the
/// template is migrated with), 16 hex digits: a new migration gets a new template.
fn migrations_hash() -> String {
    use diesel::migration::MigrationSource;
    let migrations =
        MigrationSource::<diesel::pg::Pg>::migrations(&provisioning_server::db::MIGRATIONS)
            .expect("embedded migrations");
    assert!(!migrations.is_empty(), "no embedded migrations");
    let mut hasher = Sha256::new();
    for migration in migrations {
        hasher.update(migration.name().to_string().as_bytes());
        hasher.update([0]);
    }
    hex(&hasher.finalize()[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn connect(url: &str) -> PgConnection {
    PgConnection::establish(url).unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

fn execute(conn: &mut PgConnection, sql: &str) {
    diesel::sql_query(sql)
        .execute(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn database_exists(conn: &mut PgConnection, name: &str) -> bool {
    diesel::select(
        diesel::dsl::sql::<Bool>("EXISTS (SELECT 1 FROM pg_database WHERE datname = ")
            .bind::<Text, _>(name)
            .sql(")"),
    )
    .get_result(conn)
    .unwrap_or_else(|e| panic!("looking up database {name}: {e}"))
}

/// Runs `sql`, retrying while PostgreSQL says the source database is still in use (a
/// pool's connections close asynchronously; concurrent clones are brief).
fn retry_while_busy(conn: &mut PgConnection, sql: &str) {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match diesel::sql_query(sql).execute(conn) {
            Ok(_) => return,
            Err(e)
                if e.to_string().contains("is being accessed by other users")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

/// `url` with its database (the URL path) replaced by `database`; the query is kept.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or_else(|| {
        panic!("DATABASE_URL {url:?} is not a URL such as postgres://user@host/db")
    });
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (rest, None),
    };
    let authority = location
        .split_once('/')
        .map_or(location, |(authority, _)| authority);
    match query {
        Some(query) => format!("{scheme}://{authority}/{database}?{query}"),
        None => format!("{scheme}://{authority}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/app", "test_1"),
            "postgres://u:p@h:5432/test_1"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            with_database("postgresql:///app?host=/run/pg&sslmode=disable", "x"),
            "postgresql:///x?host=/run/pg&sslmode=disable"
        );
    }

    #[test]
    fn migrations_hash_is_stable_hex() {
        let hash = migrations_hash();
        assert_eq!(hash.len(), 16);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(hash, migrations_hash());
    }
}
