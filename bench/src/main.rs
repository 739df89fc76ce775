//! `provisioning-bench`: measures the Provisioning API on this machine, side by side
//! with the limits of the hardware it runs on.
//!
//! It starts everything it measures: PostgreSQL (an embedded cluster in a temporary
//! directory, or `--database-url`), the release server as a child process (built by
//! this package as `provisiond-for-bench`), and an in-process HTTP sink the handlers
//! post to. Each scenario runs on a fresh database with a fresh server, prints its
//! rows as they are measured and appends them to a JSON-lines file; a Markdown table of
//! the whole run is printed at the end.
//!
//! ```text
//! cargo build --release -p provisioning-bench   # the harness and the server it runs
//! target/release/provisioning-bench [--scenarios all|ingest-unary,...]
//!     [--events N] [--backlog-events B] [--search-rows M] [--concurrency 64] [--database-url URL]
//!     [--results bench-results.jsonl] [--smoke]
//! ```
//!
//! The exit status is non-zero when a scenario fails or produces no number; figures
//! are never compared with targets here (speed is judged by people reading the table).
//!
//! # Layout
//! - `args`: flags and the sizes they resolve to (`--smoke`).
//! - `database`: embedded or external PostgreSQL, a fresh database per scenario.
//! - `server`: the server child process, health wait, peak RSS, stop.
//! - `sink`: the HTTP sink and the plain hyper client of the HTTP baselines.
//! - `baseline`: the storage limit (raw inserts through an r2d2 pool).
//! - `scenarios`: one module per scenario family (`replicas` starts servers of its own).
//! - `report`: metrics, table, JSON lines, machine, percentiles.
//! - `usage`: CPU time of the server, the harness and the machine, from /proc.

mod args;
mod baseline;
mod database;
mod load;
mod report;
mod scenarios;
mod server;
mod sink;
mod usage;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::args::{Args, Scenario, Settings};
use crate::database::Databases;
use crate::report::{Machine, Metric, Report};
use crate::scenarios::{Baselines, Ctx};
use crate::server::Server;
use crate::sink::Sink;

fn main() -> ExitCode {
    let settings = match Settings::from_args(Args::parse()) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("provisioning-bench: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("provisioning-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(settings)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("provisioning-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up the database and the work directory, runs, and always cleans up (also on
/// Ctrl-C, which would otherwise leave the embedded cluster running; on error or panic
/// the drops of `databases` and `workdir` do it).
async fn bench(settings: Settings) -> anyhow::Result<bool> {
    let binary = server::locate_binary()?;
    let workdir = WorkDir::create()?;
    let databases =
        Databases::start(settings.database_url.clone(), &workdir.path.join("pg")).await?;
    let outcome = tokio::select! {
        outcome = run(&settings, &binary, &workdir.path, &databases) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(error) = databases.stop().await {
        eprintln!("provisioning-bench: stopping PostgreSQL: {error:#}");
    }
    outcome
}

/// Baselines, then every scenario; true when all of them produced numbers.
async fn run(
    settings: &Settings,
    binary: &Path,
    workdir: &Path,
    databases: &Databases,
) -> anyhow::Result<bool> {
    let mut report = Report::open(&settings.results, Machine::detect(), settings.params())
        .with_context(|| format!("opening {}", settings.results.display()))?;
    let version = databases
        .version()
        .await
        .unwrap_or_else(|error| format!("PostgreSQL (version unknown: {error:#})"));
    report.set_postgres(version);
    let sink = Sink::start().await.context("starting the HTTP sink")?;
    println!("machine:  {}", report.machine());
    println!(
        "database: {} ({})",
        databases.kind(),
        report.machine().postgres
    );
    println!(
        "server:   {} (restarted for every scenario)",
        binary.display()
    );
    println!("results:  {}", settings.results.display());
    println!();
    report.print_header();

    let mut failures: Vec<String> = Vec::new();
    let mut baselines = Baselines::default();
    if settings
        .scenarios
        .iter()
        .any(|s| s.needs_storage_baseline())
    {
        match storage_baseline(settings, databases).await {
            Ok(metric) => {
                baselines.storage = metric.number();
                report.record(metric)?;
            }
            Err(error) => {
                eprintln!("baseline storage failed: {error:#}");
                failures.push("baseline storage".into());
            }
        }
    }
    if settings.scenarios.iter().any(|s| s.needs_http_baseline()) {
        let body = scenarios::event_data(1);
        match sink::hammer(&sink.url(), &body, settings.concurrency, settings.timed_run).await {
            Ok(rate) => {
                baselines.http = Some(rate);
                report.record(
                    Metric::new(
                        "baseline",
                        "HTTP limit: hyper client → sink",
                        rate,
                        "requests/s",
                    )
                    .note(format!(
                        "{} keep-alive connections, closed loop, {} s",
                        settings.concurrency,
                        settings.timed_run.as_secs()
                    )),
                )?;
            }
            Err(error) => {
                eprintln!("baseline http failed: {error:#}");
                failures.push("baseline http".into());
            }
        }
    }

    for &scenario in &settings.scenarios {
        let env = ScenarioEnv {
            settings,
            binary,
            workdir,
            databases,
            sink: &sink,
            baselines,
        };
        match env.run(scenario).await {
            Ok(metrics) => {
                let numbers = metrics.iter().filter(|m| m.number().is_some()).count();
                let broken = metrics
                    .iter()
                    .any(|m| matches!(m.value, report::Value::Number(v) if !v.is_finite()));
                for metric in metrics {
                    report.record(metric)?;
                }
                if numbers == 0 || broken {
                    eprintln!("{scenario}: produced no usable number");
                    failures.push(scenario.to_string());
                }
            }
            Err(error) => {
                eprintln!("{scenario} failed: {error:#}");
                failures.push(scenario.to_string());
            }
        }
    }
    report.print_summary();
    if !failures.is_empty() {
        eprintln!();
        eprintln!("provisioning-bench: failed: {}", failures.join(", "));
    }
    Ok(failures.is_empty())
}

/// The storage limit, on its own fresh database.
async fn storage_baseline(settings: &Settings, databases: &Databases) -> anyhow::Result<Metric> {
    let db = databases.create("baseline").await?;
    let measured = baseline::storage(
        &db.url,
        settings.events,
        settings.storage_threads,
        settings.batch_size,
    )
    .await;
    if let Err(error) = databases.drop_database(&db).await {
        eprintln!("dropping {}: {error:#}", db.name);
    }
    let (rate, elapsed) = measured?;
    Ok(
        Metric::new("baseline", "storage limit: events+deliveries", rate, "events/s").note(format!(
            "{} events + 1 delivery each, multi-row INSERT of {} per transaction, {} threads, r2d2 pool, {:.2} s",
            settings.events,
            settings.batch_size,
            settings.storage_threads,
            elapsed.as_secs_f64()
        )),
    )
}

/// What one scenario run needs.
struct ScenarioEnv<'a> {
    settings: &'a Settings,
    binary: &'a Path,
    workdir: &'a Path,
    databases: &'a Databases,
    sink: &'a Sink,
    baselines: Baselines,
}

impl ScenarioEnv<'_> {
    /// Fresh database, fresh server, the scenario, the server's peak RSS; then the
    /// server is stopped and the database dropped whatever happened.
    async fn run(&self, scenario: Scenario) -> anyhow::Result<Vec<Metric>> {
        let db = self.databases.create(scenario.name()).await?;
        let outcome = self.with_server(scenario, &db).await;
        if let Err(error) = self.databases.drop_database(&db).await {
            eprintln!("dropping {}: {error:#}", db.name);
        }
        outcome
    }

    async fn with_server(
        &self,
        scenario: Scenario,
        db: &database::FreshDb,
    ) -> anyhow::Result<Vec<Metric>> {
        let log = self.workdir.join(format!("server-{scenario}.log"));
        let flags = scenarios::server_flags(scenario, self.settings);
        let server = Server::start(
            self.binary,
            &db.url,
            &self.workdir.join("scripts"),
            &log,
            &flags,
        )
        .await?;
        self.sink.reset();
        let ctx = Ctx {
            settings: self.settings,
            sink: self.sink,
            server: &server,
            db,
            baselines: self.baselines,
            databases: self.databases,
            binary: self.binary,
            workdir: self.workdir,
        };
        let cpu_before = usage::Snapshot::take(server.pid());
        let outcome = scenarios::run(scenario, &ctx).await;
        let cpu = cpu_before.until(&usage::Snapshot::take(server.pid()));
        let rss = server.peak_rss_kib();
        let log_tail = server.log_tail();
        if let Err(error) = server.stop().await {
            eprintln!("stopping the server: {error:#}");
        }
        let mut metrics = match outcome {
            Ok(metrics) => metrics,
            Err(error) if log_tail.is_empty() => return Err(error),
            Err(error) => return Err(error.context(format!("server log tail:\n{log_tail}"))),
        };
        let rss = match rss {
            Some(kib) => Metric::new(
                scenario.name(),
                "server RSS peak (VmHWM)",
                kib as f64 / 1024.0,
                "MiB",
            ),
            None => Metric::unavailable(
                scenario.name(),
                "server RSS peak (VmHWM)",
                "MiB",
                "/proc not readable",
            ),
        };
        metrics.push(rss.note("fresh server per scenario: the peak of this scenario alone"));
        metrics.extend(cpu_metrics(scenario.name(), &cpu));
        // The search scenario's events are written straight into the table: it measures
        // queries.
        if scenario != Scenario::Search {
            match database::events_handled(&db.url).await {
                Ok(events) => metrics.extend(cpu_per_event(scenario.name(), &cpu, events)),
                Err(error) => eprintln!("counting the events of {scenario}: {error:#}"),
            }
        }
        Ok(metrics)
    }
}

/// Average cores used by the server, the harness and the whole machine.
fn cpu_metrics(scenario: &str, cpu: &usage::Usage) -> Vec<Metric> {
    let rows = [
        ("CPU: server", cpu.server),
        ("CPU: harness (emitters + sink)", cpu.harness),
        ("CPU: machine busy (all processes)", cpu.machine),
    ];
    let mut metrics: Vec<Metric> = rows
        .into_iter()
        .map(|(name, cores)| match cores {
            Some(cores) => Metric::new(scenario, name, cores, "cores"),
            None => Metric::unavailable(scenario, name, "cores", "/proc not readable"),
        })
        .collect();
    if let Some(first) = metrics.first_mut() {
        first.note = Some(format!(
            "averages over the scenario's {:.1} s; machine busy includes PostgreSQL and any \
             other load",
            cpu.elapsed.as_secs_f64()
        ));
    }
    metrics
}

/// CPU time per event the scenario's server handled (machine-wide and server-only), in
/// microseconds, so that a change shows what it costs per event whatever the rate; none
/// when the scenario handled no event on its server (replicas runs servers of its own).
fn cpu_per_event(scenario: &str, cpu: &usage::Usage, events: u64) -> Vec<Metric> {
    if events == 0 {
        return Vec::new();
    }
    let per_event = |cores: Option<f64>| {
        cores.map(|cores| cores * cpu.elapsed.as_secs_f64() / events as f64 * 1e6)
    };
    [
        ("CPU per event: machine", per_event(cpu.machine)),
        ("CPU per event: server", per_event(cpu.server)),
    ]
    .into_iter()
    .filter_map(|(name, micros)| {
        Some(Metric::new(scenario, name, micros?, "µs").note(format!(
            "CPU time over the scenario's {:.1} s / {events} events it stored or ran \
             (BEFORE), setup included",
            cpu.elapsed.as_secs_f64()
        )))
    })
    .collect()
}

/// The run's temporary directory (embedded cluster, server logs, scripts directory).
/// Mode 0755: when the harness runs as root, the cluster runs as `postgres`, which must
/// be able to traverse it.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create() -> anyhow::Result<WorkDir> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("provisioning-bench-{}", std::process::id()));
        if path.exists() {
            // Left by an earlier process with the same pid.
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(WorkDir { path })
    }
}

/// Removed on every way out, panics included (the embedded cluster, declared later,
/// is stopped first).
impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            eprintln!(
                "provisioning-bench: removing {}: {error}",
                self.path.display()
            );
        }
    }
}
