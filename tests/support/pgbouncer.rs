//! A real PgBouncer in transaction pooling mode in front of a test's database, as an
//! operator runs Debian's `pgbouncer` package: a config file and an auth file written
//! to a temporary directory, its own loopback port, `auth_type = trust`. Killed when
//! dropped.
//!
//! Every database of the upstream server is reachable through it under its own name
//! (a `*` entry), over at most `pool_size` server connections per database: many
//! clients share a few sessions, which is what makes session state unsafe.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};

use crate::process::free_addr;
use crate::temp::TempDir;

/// How long PgBouncer may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running PgBouncer.
pub struct PgBouncer {
    addr: SocketAddr,
    user: String,
    version: (u32, u32),
    child: Child,
    dir: TempDir,
}

impl PgBouncer {
    /// The `pgbouncer` executable: on `PATH`, or where Debian installs it
    /// (`/usr/sbin`, not on every user's `PATH`); `None` when it is not installed.
    pub fn binary() -> Option<PathBuf> {
        let on_path = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("pgbouncer"))
                .find(|candidate| candidate.is_file())
        });
        on_path.or_else(|| {
            let debian = PathBuf::from("/usr/sbin/pgbouncer");
            debian.is_file().then_some(debian)
        })
    }

    /// Starts `binary` in transaction pooling mode in front of the server of
    /// `upstream_url` (a URL as [`crate::TestDatabase`] gives), with at most
    /// `pool_size` server connections per database, and waits until it answers.
    /// Protocol-level prepared statements (`max_prepared_statements`) are turned on
    /// when the version has them (1.21 and later). Blocking: call it from
    /// `spawn_blocking`.
    pub fn start(binary: &Path, upstream_url: &str, pool_size: u32) -> PgBouncer {
        let version = version_of(binary);
        let upstream = Upstream::parse(upstream_url);
        let dir = TempDir::new("provisioning-pgbouncer");
        let addr = free_addr();
        let auth_file = dir.path().join("users.txt");
        std::fs::write(&auth_file, format!("\"{}\" \"\"\n", upstream.user))
            .expect("writing the PgBouncer auth file");
        let mut server = format!("host={} user={}", upstream.host, upstream.user);
        if let Some(port) = &upstream.port {
            server.push_str(&format!(" port={port}"));
        }
        if let Some(password) = &upstream.password {
            server.push_str(&format!(" password={password}"));
        }
        let prepared = if supports_prepared_statements(version) {
            "max_prepared_statements = 200\n"
        } else {
            ""
        };
        let config = format!(
            "[databases]\n\
             * = {server}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = {ip}\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {auth}\n\
             pool_mode = transaction\n\
             default_pool_size = {pool_size}\n\
             max_client_conn = 1000\n\
             ignore_startup_parameters = extra_float_digits\n\
             {prepared}",
            ip = addr.ip(),
            port = addr.port(),
            auth = auth_file.display(),
        );
        let config_path = dir.path().join("pgbouncer.ini");
        std::fs::write(&config_path, config).expect("writing pgbouncer.ini");
        let log_path = dir.path().join("pgbouncer.log");
        let log = std::fs::File::create(&log_path).expect("creating the PgBouncer log");
        let mut command = Command::new(binary);
        // PgBouncer refuses to run as root; it switches to the account itself.
        if unsafe { libc::geteuid() } == 0 {
            command.args(["-u", "postgres"]);
        }
        let mut child = command
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log file"))
            .stderr(log)
            .spawn()
            .expect("spawning pgbouncer");
        let bouncer_url = format!("postgres://{}@{addr}/{}", upstream.user, upstream.database);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("polling pgbouncer") {
                panic!(
                    "pgbouncer exited during start-up ({status}); log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            let answered = PgConnection::establish(&bouncer_url)
                .ok()
                .and_then(|mut conn| diesel::sql_query("SELECT 1").execute(&mut conn).ok());
            if answered.is_some() {
                break;
            }
            if Instant::now() > deadline {
                child.kill().ok();
                panic!(
                    "pgbouncer on {addr} not answering within {STARTUP_TIMEOUT:?}; log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        PgBouncer {
            addr,
            user: upstream.user,
            version,
            child,
            dir,
        }
    }

    /// The URL of database `name` through this PgBouncer.
    pub fn url_for(&self, name: &str) -> String {
        format!("postgres://{}@{}/{name}", self.user, self.addr)
    }

    /// The version, as `(major, minor)`.
    pub fn version(&self) -> (u32, u32) {
        self.version
    }

    /// Whether this PgBouncer carries named prepared statements across server
    /// connections (`max_prepared_statements`, set by [`PgBouncer::start`] when it
    /// does).
    pub fn has_prepared_statements(&self) -> bool {
        supports_prepared_statements(self.version)
    }

    /// What PgBouncer logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Err(error) = self.child.kill() {
            eprintln!("warning: killing pgbouncer: {error}");
        }
        if let Err(error) = self.child.wait() {
            eprintln!("warning: waiting for pgbouncer: {error}");
        }
    }
}

/// `max_prepared_statements` arrived in PgBouncer 1.21.
fn supports_prepared_statements(version: (u32, u32)) -> bool {
    version >= (1, 21)
}

/// `(major, minor)` of `pgbouncer --version` ("PgBouncer 1.18.0" on its first line).
fn version_of(binary: &Path) -> (u32, u32) {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .expect("running pgbouncer --version");
    let text = String::from_utf8_lossy(&output.stdout);
    let number = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected pgbouncer --version output: {text}"));
    let mut parts = number.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Where PgBouncer connects: the parts of a `postgres://` URL it needs.
#[derive(Debug, PartialEq)]
struct Upstream {
    user: String,
    password: Option<String>,
    /// A host name, an address or a socket directory (`?host=/dir`).
    host: String,
    port: Option<String>,
    database: String,
}

impl Upstream {
    /// Parses `postgres://user[:password]@host[:port]/database[?host=/socket/dir]`.
    fn parse(url: &str) -> Upstream {
        let rest = url
            .split_once("://")
            .map_or(url, |(_, rest)| rest)
            .to_owned();
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest.to_owned(), Some(query.to_owned())),
            None => (rest, None),
        };
        let (authority, database) = rest.split_once('/').unwrap_or((&rest, "postgres"));
        let (credentials, host_port) = authority
            .rsplit_once('@')
            .unwrap_or(("postgres", authority));
        let (user, password) = match credentials.split_once(':') {
            Some((user, password)) => (user.to_owned(), Some(password.to_owned())),
            None => (credentials.to_owned(), None),
        };
        let (mut host, mut port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port.to_owned())),
            None => (host_port.to_owned(), None),
        };
        for pair in query.iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("host", value)) => host = value.to_owned(),
                Some(("port", value)) => port = Some(value.to_owned()),
                _ => {}
            }
        }
        Upstream {
            user,
            password,
            host,
            port,
            database: database.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_and_tcp_urls_give_their_upstream() {
        assert_eq!(
            Upstream::parse("postgres://provisioning@localhost/test_a?host=/tmp/x/pgdata"),
            Upstream {
                user: "provisioning".into(),
                password: None,
                host: "/tmp/x/pgdata".into(),
                port: None,
                database: "test_a".into(),
            }
        );
        assert_eq!(
            Upstream::parse("postgresql://me:secret@db.example:6543/app"),
            Upstream {
                user: "me".into(),
                password: Some("secret".into()),
                host: "db.example".into(),
                port: Some("6543".into()),
                database: "app".into(),
            }
        );
        assert!(supports_prepared_statements((1, 21)) && !supports_prepared_statements((1, 18)));
    }
}
