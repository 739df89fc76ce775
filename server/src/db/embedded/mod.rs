//! The embedded default database: a private PostgreSQL cluster under a data directory,
//! created on first use (`initdb`), started with `pg_ctl`, reachable only through a Unix
//! socket inside the cluster directory, and stopped on drop.
//!
//! One process owns a data directory ([`lock`]): the lock is taken before the cluster is
//! touched and held until it is stopped, so a second `provisiond` on the same directory
//! is refused instead of sharing a cluster the first would stop under it (or the other
//! way round). A cluster left running by a killed owner is adopted by the next one. The
//! owner keeps its cluster running ([`supervisor`]): a postmaster that dies underneath it
//! is started again by the same routine as at start-up (`postmaster` says whether it
//! is alive).
//!
//! PostgreSQL refuses to run as root, so when this process is root the cluster runs as
//! the unprivileged `postgres` account (Debian's package creates it): the cluster
//! directory is chowned to it and every PostgreSQL command is started with its uid/gid.

use std::ffi::{CString, OsString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub mod lock;
mod postmaster;
pub mod supervisor;

use self::lock::{DataDirLock, LockOwner};
use self::postmaster::Postmaster;

/// Why the embedded cluster could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found on PATH or under \
         /usr/lib/postgresql/*/bin; install them (Debian/Ubuntu: apt-get install postgresql) \
         or pass --database-url / DATABASE_URL"
    )]
    BinariesMissing,
    /// Running as root without a `postgres` account to drop to.
    #[error(
        "running as root, and PostgreSQL refuses to: create a 'postgres' system user \
         (apt-get install postgresql does) or pass --database-url / DATABASE_URL"
    )]
    NoUnprivilegedUser,
    /// A directory the cluster needs is not usable.
    #[error("{0}")]
    Directory(String),
    /// Another process owns the data directory.
    #[error(
        "data directory {} is in use by {owner}; choose another --data-dir, or point \
         --database-url at the running cluster",
        data_dir.display()
    )]
    InUse {
        /// The data directory.
        data_dir: PathBuf,
        /// Who holds it.
        owner: LockOwner,
    },
    /// The previous postmaster died, but processes it started still use the cluster.
    #[error(
        "the previous PostgreSQL (postmaster PID {pid}) is gone but some of its processes \
         still hold the cluster's shared memory; not starting another one over them yet"
    )]
    StillAttached {
        /// PID of the dead postmaster.
        pid: i32,
    },
    /// A PostgreSQL command failed.
    #[error("{command} failed: {output}")]
    Command {
        /// The command that failed.
        command: String,
        /// Its output (stderr and stdout, trimmed).
        output: String,
    },
    /// I/O error around the cluster.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

/// A running embedded cluster; stopped when dropped.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    cluster_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    stop_on_drop: bool,
    /// The data directory's ownership, when this value owns it. A field, so it is
    /// released only after `drop` has stopped the cluster.
    _lock: Option<DataDirLock>,
}

/// Name of the database and role the service uses inside the embedded cluster.
const DB_NAME: &str = "provisioning";

impl EmbeddedPostgres {
    /// Takes ownership of `data_dir` ([`EmbeddedError::InUse`] if another process holds
    /// it), creates the cluster under `data_dir/pgdata` if needed and starts it (or
    /// adopts it if a previous owner, killed, left it running). Stopped when dropped.
    pub fn start(data_dir: &Path) -> Result<EmbeddedPostgres, EmbeddedError> {
        EmbeddedPostgres::open(data_dir, true)
    }

    /// Starts (or reuses) the cluster under `data_dir/pgdata` without owning the
    /// directory and leaves it running when dropped: for processes that share one
    /// cluster and order their starts themselves (the test harness). Never use it on a
    /// `provisiond` data directory: its owner may stop the cluster at any time.
    pub fn start_shared(data_dir: &Path) -> Result<EmbeddedPostgres, EmbeddedError> {
        EmbeddedPostgres::open(data_dir, false)
    }

    fn open(data_dir: &Path, owned: bool) -> Result<EmbeddedPostgres, EmbeddedError> {
        let bin_dir = find_bin_dir().ok_or(EmbeddedError::BinariesMissing)?;
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(lookup_user("postgres").ok_or(EmbeddedError::NoUnprivilegedUser)?)
        } else {
            None
        };
        std::fs::create_dir_all(data_dir).map_err(io_err(format!(
            "creating data directory {}",
            data_dir.display()
        )))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(io_err(format!("resolving {}", data_dir.display())))?;
        // Before anything else touches the cluster: a refused process changes nothing.
        let lock = owned.then(|| DataDirLock::acquire(&data_dir)).transpose()?;
        let cluster_dir = data_dir.join("pgdata");
        // The socket lives in the cluster directory: its path must fit in sun_path.
        if cluster_dir.as_os_str().len() > 90 {
            return Err(EmbeddedError::Directory(format!(
                "data directory path {} is too long for a PostgreSQL socket; choose a shorter --data-dir",
                data_dir.display()
            )));
        }
        if let Some((uid, _)) = run_as {
            check_traversable(&data_dir, uid)?;
        }
        let pg = EmbeddedPostgres {
            bin_dir,
            cluster_dir,
            run_as,
            stop_on_drop: owned,
            _lock: lock,
        };
        if !pg.cluster_dir.join("PG_VERSION").exists() {
            pg.init()?;
        }
        pg.ensure_running()?;
        pg.create_database()?;
        Ok(pg)
    }

    /// The cluster directory (`<data-dir>/pgdata`).
    pub fn cluster_dir(&self) -> &Path {
        &self.cluster_dir
    }

    /// Whether the cluster's postmaster is alive.
    pub fn is_running(&self) -> bool {
        postmaster::inspect(&self.cluster_dir) == Postmaster::Running
    }

    /// Starts the cluster unless its postmaster is alive: at start-up (a previous
    /// owner's cluster still running is adopted as it is) and after it died under its
    /// owner ([`supervisor`]). PostgreSQL replaces the lock file of a postmaster that is
    /// gone by itself; a zombie's is cleared first (see the `postmaster` module).
    pub fn ensure_running(&self) -> Result<(), EmbeddedError> {
        match postmaster::inspect(&self.cluster_dir) {
            Postmaster::Running => return Ok(()),
            Postmaster::Stopped | Postmaster::Dead { zombie: false, .. } => {}
            Postmaster::Dead { pid, zombie: true } => {
                postmaster::clear_zombie_locks(&self.cluster_dir, pid)?
            }
        }
        self.pg_ctl_start()
    }

    /// The URL of the service's database in this cluster.
    pub fn url(&self) -> String {
        self.url_for(DB_NAME)
    }

    /// The URL of database `name` in this cluster.
    pub fn url_for(&self, name: &str) -> String {
        format!(
            "postgres://{DB_NAME}@localhost/{name}?host={}",
            self.cluster_dir.display()
        )
    }

    /// Leaves the cluster running when this value is dropped (stopped already by
    /// [`EmbeddedPostgres::stop`]).
    pub fn keep_running(&mut self) {
        self.stop_on_drop = false;
    }

    /// A command running `program` of this PostgreSQL installation (`pg_ctl`,
    /// `pg_basebackup`, ...) as the cluster's account, as every command on the cluster
    /// is run.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        if let Some((uid, gid)) = self.run_as {
            // std clears root's supplementary groups before switching uid.
            cmd.uid(uid).gid(gid).env("HOME", &self.cluster_dir);
        }
        cmd.env("LC_ALL", "C");
        cmd
    }

    fn run(&self, mut cmd: Command, what: &str) -> Result<(), EmbeddedError> {
        let output = cmd.output().map_err(io_err(format!("running {what}")))?;
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        Err(EmbeddedError::Command {
            command: what.to_owned(),
            output: text.trim().to_owned(),
        })
    }

    fn init(&self) -> Result<(), EmbeddedError> {
        std::fs::create_dir_all(&self.cluster_dir)
            .map_err(io_err(format!("creating {}", self.cluster_dir.display())))?;
        std::fs::set_permissions(&self.cluster_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting cluster directory permissions"))?;
        if let Some((uid, gid)) = self.run_as {
            chown(&self.cluster_dir, uid, gid)?;
        }
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.cluster_dir).args([
            "-U",
            DB_NAME,
            "--auth=trust",
            "-E",
            "UTF8",
            // A UTF-8 locale whatever the environment (a service manager's is often
            // empty, i.e. "C"): text functions then know every script. C.UTF-8 sorts by
            // code point, like C, and is built into glibc.
            "--locale=C.UTF-8",
            "--no-sync",
        ]);
        self.run(cmd, "initdb")
    }

    fn pg_ctl_start(&self) -> Result<(), EmbeddedError> {
        let options: OsString = format!(
            "-c listen_addresses='' -k '{}' -c max_connections=300 -c shared_buffers=256MB \
             -c synchronous_commit=on -c fsync=on",
            self.cluster_dir.display()
        )
        .into();
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.cluster_dir)
            .arg("-l")
            .arg(self.cluster_dir.join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(options);
        self.run(cmd, "pg_ctl start")
    }

    fn create_database(&self) -> Result<(), EmbeddedError> {
        use diesel::{Connection, PgConnection, RunQueryDsl};
        let mut conn = PgConnection::establish(&self.url_for("postgres")).map_err(|e| {
            EmbeddedError::Command {
                command: "connect to embedded cluster".into(),
                output: e.to_string(),
            }
        })?;
        let exists: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "EXISTS (SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}')"
        )))
        .get_result(&mut conn)
        .map_err(|e| EmbeddedError::Command {
            command: "query embedded cluster".into(),
            output: e.to_string(),
        })?;
        if !exists {
            diesel::sql_query(format!("CREATE DATABASE {DB_NAME}"))
                .execute(&mut conn)
                .map_err(|e| EmbeddedError::Command {
                    command: "CREATE DATABASE".into(),
                    output: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Stops the cluster (fast shutdown: open sessions are disconnected).
    pub fn stop(&self) -> Result<(), EmbeddedError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.cluster_dir)
            .args(["-m", "fast", "-w"]);
        self.run(cmd, "pg_ctl stop")
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if self.stop_on_drop {
            if let Err(error) = self.stop() {
                tracing::warn!(%error, "stopping the embedded PostgreSQL failed");
            }
        }
    }
}

/// Finds the directory holding `initdb`, `pg_ctl` and `postgres`: first on PATH, then the
/// newest `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_all(&dir) {
                // Resolve symlinks such as /usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin.
                let real = dir.join("pg_ctl").canonicalize().ok()?;
                let real_dir = real.parent()?.to_path_buf();
                return Some(if has_all(&real_dir) { real_dir } else { dir });
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_all(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy out at once.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Some((uid, gid))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), EmbeddedError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(io_err(format!("chown {}", path.display())))
}

/// The unprivileged account must be able to reach the cluster directory: every parent
/// needs the "other" execute bit (or that account as owner).
fn check_traversable(dir: &Path, uid: u32) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::MetadataExt;
    for ancestor in dir.ancestors() {
        let meta = std::fs::metadata(ancestor)
            .map_err(io_err(format!("inspecting {}", ancestor.display())))?;
        let traversable =
            meta.mode() & 0o001 != 0 || (meta.uid() == uid && meta.mode() & 0o100 != 0);
        if !traversable {
            return Err(EmbeddedError::Directory(format!(
                "the postgres account cannot reach {}: {} is not traversable (chmod o+x it, \
                 or choose another --data-dir)",
                dir.display(),
                ancestor.display()
            )));
        }
    }
    Ok(())
}
