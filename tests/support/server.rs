//! The real server, in process: `provisioning_server::run` on a `127.0.0.1:0` listener
//! in a tokio task, with a test configuration (fast polling and retries), its own
//! scripts directory holding a copy of `tests/fixtures/scripts/`, and a connected client.
//!
//! Start-up is awaited by polling the standard health service until it reports SERVING
//! (the server flips it only after migrations and wiring), never by sleeping. The guard
//! cancels the server's shutdown token when dropped; `stop` also waits for the graceful
//! end and checks that `run` returned `Ok`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use provisioning_client::{Client, ConnectOptions};
use provisioning_server::config::{Config, Schedule};
use provisioning_server::shutdown::Shutdown;
use provisioning_server::ServerError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::database::TestDatabase;
use crate::temp::TempDir;
use crate::wait::is_serving_at;

/// How long a server may take to become healthy.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful stop may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// `Config::defaults()` tuned for tests: the database `db`, script handlers from
/// `scripts_dir`, 50 ms polling, retries after 100/200/400 ms, 3 attempts, a 2 s lease,
/// a pool of 8 and a per-user data directory under the temp dir (unused while
/// `database_url` is set, which it is).
pub fn test_config(db: &TestDatabase, scripts_dir: &Path) -> Config {
    let mut config = Config::defaults();
    config.database_url = Some(db.url.clone());
    config.scripts_dir = Some(scripts_dir.to_path_buf());
    config.data_dir = Some(
        std::env::temp_dir().join(format!("provisioning-tests-data-{}", unsafe {
            libc::geteuid()
        })),
    );
    config.poll_interval = Duration::from_millis(50);
    config.retry_schedule = Schedule(vec![
        Duration::from_millis(100),
        Duration::from_millis(200),
        Duration::from_millis(400),
    ]);
    config.max_attempts = 3;
    config.lease = Duration::from_secs(2);
    config.db_pool_size = 8;
    config
}

/// A server running in this process; shut down (without waiting) when dropped.
pub struct TestServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` (`https://` when started with TLS options).
    pub url: String,
    /// A client connected to it.
    pub client: Client,
    /// Its scripts directory (a copy of `tests/fixtures/scripts/`, every file 0755);
    /// tests may add files.
    pub scripts_dir: PathBuf,
    /// Cancelling it starts the graceful shutdown.
    token: CancellationToken,
    /// The task running `provisioning_server::run`; `None` once stopped.
    task: Option<JoinHandle<Result<(), ServerError>>>,
    /// Holds the scripts directory.
    _root: TempDir,
}

impl TestServer {
    /// Requests the graceful shutdown and waits for `run` to return; panics if it
    /// returned an error or took longer than 30 s.
    pub async fn stop(mut self) {
        self.token.cancel();
        let Some(task) = self.task.take() else { return };
        match tokio::time::timeout(STOP_TIMEOUT, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => panic!("server {} stopped with an error: {error}", self.url),
            Ok(Err(join)) => panic!("server {} task failed: {join}", self.url),
            Err(_) => panic!("server {} did not stop within {STOP_TIMEOUT:?}", self.url),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Starts a server on `db` with [`test_config`].
pub async fn spawn_server(db: &TestDatabase) -> TestServer {
    spawn_server_with(db, |_| {}).await
}

/// Starts a server on `db` with [`test_config`] changed by `configure`.
pub async fn spawn_server_with(
    db: &TestDatabase,
    configure: impl FnOnce(&mut Config),
) -> TestServer {
    spawn_server_connecting(db, configure, ConnectOptions::new()).await
}

/// Starts a server on `db` with [`test_config`] changed by `configure`, checks its
/// health and connects its client with `options`: with TLS options the URL is
/// `https://127.0.0.1:PORT`, so configure the server's TLS files to match.
pub async fn spawn_server_connecting(
    db: &TestDatabase,
    configure: impl FnOnce(&mut Config),
    options: ConnectOptions,
) -> TestServer {
    let root = TempDir::new("provisioning-server");
    let scripts_dir = root.path().join("scripts");
    prepare_scripts_dir(&scripts_dir);
    let mut config = test_config(db, &scripts_dir);
    configure(&mut config);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding 127.0.0.1:0");
    let addr = listener.local_addr().expect("listener address");
    let scheme = if options.has_tls() { "https" } else { "http" };
    let url = format!("{scheme}://{addr}");
    let health = options.endpoint(url.clone()).expect("a health endpoint");
    let shutdown = Shutdown::default();
    let token = shutdown.token.clone();
    let task = tokio::spawn(provisioning_server::run(config, listener, shutdown));

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if task.is_finished() {
            match task.await {
                Ok(result) => panic!("server stopped during start-up: {result:?}"),
                Err(join) => panic!("server task failed during start-up: {join}"),
            }
        }
        if is_serving_at(health.clone()).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server {url} not healthy within {STARTUP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = Client::connect_with(url.clone(), &options)
        .await
        .unwrap_or_else(|e| panic!("connecting the client to {url}: {e}"));
    TestServer {
        addr,
        url,
        client,
        scripts_dir,
        token,
        task: Some(task),
        _root: root,
    }
}

/// The fixture scripts shipped with the tests (`tests/fixtures/scripts/`).
pub fn fixture_scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/scripts")
}

/// Creates `dir` (mode 0755) holding a copy of every fixture script, each mode 0755
/// (Cargo does not preserve the executable bit everywhere), plus `out/`, the one
/// directory scripts may write to, owned by [`SCRIPT_USER`] when the tests run as root
/// (a server running as root runs scripts as that account; scripts themselves stay
/// owned by root and writable by no one else, or the server would refuse them).
pub fn prepare_scripts_dir(dir: &Path) {
    copy_tree(&fixture_scripts_dir(), dir);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("creating {}: {e}", out.display()));
    set_mode(&out, 0o755);
    give_to_script_user(&out);
}

/// The account a server running as root runs scripts as (the default `--script-user`).
pub const SCRIPT_USER: &str = "nobody";

/// Makes `path` owned by [`SCRIPT_USER`] when the tests run as root (scripts then run
/// as that account and may write there); does nothing otherwise.
pub fn give_to_script_user(path: &Path) {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let (uid, gid) = script_user_ids().expect("the script user exists");
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {SCRIPT_USER} {}: {e}", path.display()));
}

/// Uid and gid of [`SCRIPT_USER`].
pub fn script_user_ids() -> Option<(u32, u32)> {
    provisioning_server::policy::script_file::lookup_account(SCRIPT_USER)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    set_mode(to, 0o755);
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()));
    for entry in entries {
        let source = entry
            .unwrap_or_else(|e| panic!("reading {}: {e}", from.display()))
            .path();
        let target = to.join(source.file_name().expect("a file name"));
        if source.is_dir() {
            copy_tree(&source, &target);
        } else {
            std::fs::copy(&source, &target).unwrap_or_else(|e| {
                panic!("copying {} to {}: {e}", source.display(), target.display())
            });
            set_mode(&target, 0o755);
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}
