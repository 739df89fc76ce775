//! Results: the metric type every scenario returns, the table printed as rows arrive
//! (and again as Markdown at the end, ready for the README), the JSON-lines file, the
//! machine description, and percentiles (a sorted `Vec`, nearest rank: no histogram
//! crate is needed at these sample counts).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::json;

/// A measured value, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number in the metric's unit.
    Number(f64),
    /// The service cannot be measured here (e.g. an RPC answers UNIMPLEMENTED).
    Unavailable(String),
}

/// One row of the table and one line of the results file.
#[derive(Debug, Clone)]
pub struct Metric {
    /// Scenario name (`ingest-unary`, `baseline`, ...).
    pub scenario: String,
    /// What is measured.
    pub metric: String,
    /// The figure.
    pub value: Value,
    /// Its unit (`events/s`, `ms`, `MB`, ...).
    pub unit: &'static str,
    /// The limit it is compared with, in the same unit, and that limit's name.
    pub baseline: Option<(f64, String)>,
    /// Anything a reader needs to interpret the figure.
    pub note: Option<String>,
}

impl Metric {
    /// A plain figure without baseline.
    pub fn new(
        scenario: &str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Metric {
        Metric {
            scenario: scenario.to_owned(),
            metric: metric.into(),
            value: Value::Number(value),
            unit,
            baseline: None,
            note: None,
        }
    }

    /// A row whose figure could not be measured.
    pub fn unavailable(
        scenario: &str,
        metric: impl Into<String>,
        unit: &'static str,
        why: impl Into<String>,
    ) -> Metric {
        Metric {
            value: Value::Unavailable(why.into()),
            ..Metric::new(scenario, metric, 0.0, unit)
        }
    }

    /// Adds the limit this figure is compared with.
    pub fn baseline(mut self, value: Option<f64>, name: &str) -> Metric {
        self.baseline = value.map(|v| (v, name.to_owned()));
        self
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Metric {
        self.note = Some(note.into());
        self
    }

    /// `value / baseline`, when both exist.
    pub fn ratio(&self) -> Option<f64> {
        match (&self.value, &self.baseline) {
            (Value::Number(v), Some((b, _))) if *b != 0.0 => Some(v / b),
            _ => None,
        }
    }

    /// The figure as a finite number, if it is one.
    pub fn number(&self) -> Option<f64> {
        match self.value {
            Value::Number(v) if v.is_finite() => Some(v),
            _ => None,
        }
    }
}

/// The machine the figures were measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub nproc: usize,
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal of /proc/meminfo, MiB.
    pub mem_total_mb: u64,
    /// `SELECT version()` of the database used.
    pub postgres: String,
}

impl Machine {
    /// Reads /proc; `postgres` is filled in later.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = proc_field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_mb = proc_field(&meminfo, "MemTotal")
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            mem_total_mb,
            postgres: String::new(),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "nproc": self.nproc,
            "cpu_model": self.cpu_model,
            "mem_total_mb": self.mem_total_mb,
            "postgres": self.postgres,
        })
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} CPUs ({}), {} MiB RAM, {}",
            self.nproc, self.cpu_model, self.mem_total_mb, self.postgres
        )
    }
}

/// The value of `key : value` lines of /proc files.
pub fn proc_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

/// The short commit of the working directory, if it is a git checkout.
pub fn git_commit() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// Prints rows and appends them to the results file.
pub struct Report {
    file: File,
    machine: Machine,
    commit: Option<String>,
    run_id: String,
    params: serde_json::Value,
    rows: Vec<Metric>,
}

const HEADER: [&str; 6] = ["scenario", "metric", "value", "unit", "baseline", "ratio"];
const WIDTHS: [usize; 6] = [14, 40, 12, 9, 12, 7];

impl Report {
    /// Opens (appends to) the results file, creating its directory if needed.
    pub fn open(path: &Path, machine: Machine, params: serde_json::Value) -> io::Result<Report> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Report {
            file,
            machine,
            commit: git_commit(),
            run_id: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            params,
            rows: Vec::new(),
        })
    }

    /// The machine description.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Sets the database version once it is known.
    pub fn set_postgres(&mut self, version: String) {
        self.machine.postgres = version;
    }

    /// Prints the table header.
    pub fn print_header(&self) {
        println!("{}", format_row(&HEADER.map(str::to_owned)));
        println!(
            "{}",
            "-".repeat(WIDTHS.iter().sum::<usize>() + 2 * (WIDTHS.len() - 1))
        );
    }

    /// Prints one row and appends its JSON line.
    pub fn record(&mut self, metric: Metric) -> io::Result<()> {
        println!("{}", format_row(&cells(&metric)));
        let (baseline, baseline_name) = match &metric.baseline {
            Some((value, name)) => (Some(*value), Some(name.clone())),
            None => (None, None),
        };
        let (value, status, unavailable) = match &metric.value {
            Value::Number(v) => (Some(*v), "ok", None),
            Value::Unavailable(why) => (None, "unavailable", Some(why.clone())),
        };
        let line = json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "run": self.run_id,
            "commit": self.commit,
            "machine": self.machine.to_json(),
            "params": self.params,
            "scenario": metric.scenario,
            "metric": metric.metric,
            "value": value,
            "unit": metric.unit,
            "status": status,
            "unavailable": unavailable,
            "baseline": baseline,
            "baseline_name": baseline_name,
            "ratio": metric.ratio(),
            "note": metric.note,
        });
        writeln!(self.file, "{line}")?;
        self.file.flush()?;
        self.rows.push(metric);
        Ok(())
    }

    /// Prints every row again as a Markdown table, then the notes and baselines.
    pub fn print_summary(&self) {
        println!();
        println!(
            "Measured on {} at commit {}:",
            self.machine,
            self.commit.as_deref().unwrap_or("unknown")
        );
        println!();
        println!("| {} |", HEADER.join(" | "));
        println!(
            "|{}|",
            ["---", "---", "---:", "---", "---:", "---:"].join("|")
        );
        for metric in &self.rows {
            println!("| {} |", cells(metric).join(" | "));
        }
        let notes: Vec<String> = self
            .rows
            .iter()
            .filter_map(|m| {
                let baseline = m
                    .baseline
                    .as_ref()
                    .map(|(_, name)| format!("baseline: {name}"));
                let note = m.note.clone();
                let why = match &m.value {
                    Value::Unavailable(why) => Some(why.clone()),
                    Value::Number(_) => None,
                };
                let parts: Vec<String> = [baseline, note, why].into_iter().flatten().collect();
                (!parts.is_empty())
                    .then(|| format!("- {} / {}: {}", m.scenario, m.metric, parts.join("; ")))
            })
            .collect();
        if !notes.is_empty() {
            println!();
            for note in notes {
                println!("{note}");
            }
        }
    }
}

fn cells(metric: &Metric) -> [String; 6] {
    let value = match &metric.value {
        Value::Number(v) => format_number(*v),
        Value::Unavailable(_) => "unavailable".to_owned(),
    };
    [
        metric.scenario.clone(),
        metric.metric.clone(),
        value,
        metric.unit.to_owned(),
        metric
            .baseline
            .as_ref()
            .map_or_else(String::new, |(b, _)| format_number(*b)),
        metric
            .ratio()
            .map_or_else(String::new, |r| format!("{r:.2}")),
    ]
}

fn format_row(cells: &[String; 6]) -> String {
    cells
        .iter()
        .zip(WIDTHS)
        .enumerate()
        .map(|(i, (cell, width))| {
            if matches!(i, 2 | 4 | 5) {
                format!("{cell:>width$}")
            } else {
                format!("{cell:<width$}")
            }
        })
        .collect::<Vec<_>>()
        .join("  ")
        .trim_end()
        .to_owned()
}

/// Three significant-ish digits: `12345`, `123.4`, `1.23`.
pub fn format_number(v: f64) -> String {
    let magnitude = v.abs();
    if magnitude >= 100.0 {
        format!("{v:.0}")
    } else if magnitude >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Nearest-rank percentile `p` (0–100) of `sorted`, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

/// Events (or calls) per second.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&sorted, 50.0), 50.0);
        assert_eq!(percentile_ms(&sorted, 99.0), 99.0);
        assert_eq!(percentile_ms(&sorted, 100.0), 100.0);
        assert_eq!(percentile_ms(&sorted[..1], 99.0), 1.0);
        assert!(percentile_ms(&[], 50.0).is_nan());
    }

    #[test]
    fn ratios_need_a_number_and_a_baseline() {
        let m = Metric::new("s", "m", 50.0, "events/s").baseline(Some(200.0), "limit");
        assert_eq!(m.ratio(), Some(0.25));
        assert_eq!(Metric::new("s", "m", 1.0, "ms").ratio(), None);
        assert_eq!(
            Metric::unavailable("s", "m", "ms", "no")
                .baseline(Some(1.0), "x")
                .ratio(),
            None
        );
    }

    #[test]
    fn proc_fields_are_found_by_key() {
        let text = "processor\t: 0\nmodel name\t: Some CPU @ 2GHz\n";
        assert_eq!(
            proc_field(text, "model name").as_deref(),
            Some("Some CPU @ 2GHz")
        );
        assert_eq!(proc_field(text, "flags"), None);
    }
}
