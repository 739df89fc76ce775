//! Text output for people: a tiny aligned-table formatter, `key: value` views, and the
//! labels shared by every command (dates, event titles, enum names, durations).
//!
//! Machine output lives in [`super::json`]. Writing goes through [`Stdout`], which turns
//! a closed pipe (`provctl logs search | head`) into a quiet stop instead of a panic.

use std::io::{self, Write};

use chrono::{DateTime, SecondsFormat, Utc};

use super::CliError;

/// Column separator of tables.
const GAP: &str = "  ";

/// An aligned text table: headers, then rows, each column as wide as its widest cell.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers, all left-aligned.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            right: vec![false; headers.len()],
            rows: Vec::new(),
        }
    }

    /// Right-aligns the given columns (numbers read better that way).
    pub fn right_align(mut self, columns: &[usize]) -> Self {
        for &column in columns {
            self.right[column] = true;
        }
        self
    }

    /// Adds a row; cells are made single-line.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|cell| one_line(&cell)).collect());
    }

    /// Column widths fitting the headers and every row.
    pub fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        widths
    }

    /// The header line for the given widths (for streamed tables).
    pub fn header_line(&self, widths: &[usize]) -> String {
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        pad_row(&headers, widths, &vec![false; widths.len()])
    }

    /// One row laid out with the given widths; longer cells overflow rather than wrap.
    pub fn row_line(&self, cells: &[String], widths: &[usize]) -> String {
        let cells: Vec<String> = cells.iter().map(|cell| one_line(cell)).collect();
        pad_row(&cells, widths, &self.right)
    }

    /// The whole table, one line per row, no trailing newline.
    pub fn render(&self) -> String {
        let widths = self.widths();
        let mut lines = vec![self.header_line(&widths)];
        lines.extend(
            self.rows
                .iter()
                .map(|row| pad_row(row, &widths, &self.right)),
        );
        lines.join("\n")
    }
}

/// Pads each cell to its column's width; trailing spaces are trimmed.
fn pad_row(cells: &[String], widths: &[usize], right: &[bool]) -> String {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            line.push_str(GAP);
        }
        let width = widths.get(i).copied().unwrap_or(0);
        let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
        if right.get(i).copied().unwrap_or(false) {
            line.push_str(&pad);
            line.push_str(cell);
        } else {
            line.push_str(cell);
            line.push_str(&pad);
        }
    }
    line.trim_end().to_owned()
}

/// `key: value` lines with the values aligned; empty values are left out.
pub fn details(pairs: &[(&str, String)]) -> String {
    let shown: Vec<_> = pairs
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .collect();
    let width = shown
        .iter()
        .map(|(key, _)| key.chars().count() + 1)
        .max()
        .unwrap_or(0);
    shown
        .into_iter()
        .map(|(key, value)| format!("{:<width$} {}", format!("{key}:"), one_line(value)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Control characters (newlines, tabs) become spaces so a cell stays on one line.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Cuts `text` to at most `max` characters, marking the cut with `…`.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// `accounts.create` → `Accounts Create`, `clients.custom_fields_update` →
/// `Clients Custom Fields Update`: how the seeds' screens show events.
pub fn event_title(event: &str) -> String {
    event
        .split(['.', '_'])
        .filter(|word| !word.is_empty())
        .map(capitalize)
        .collect::<Vec<_>>()
        .join(" ")
}

/// First letter upper-case: `after` → `After`.
pub fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The lower-case name of a proto enum value without its prefix (`PHASE_BEFORE` →
/// `before`), or the number for a value this build does not know.
pub fn enum_name<E: TryFrom<i32>>(
    value: i32,
    prefix: &str,
    name: fn(&E) -> &'static str,
) -> String {
    match E::try_from(value) {
        Ok(known) => {
            let full = name(&known);
            full.strip_prefix(prefix)
                .unwrap_or(full)
                .to_ascii_lowercase()
        }
        Err(_) => value.to_string(),
    }
}

/// A date as the seeds' execution logs show it: `12/20/2016 13:45:15 +0000`.
pub fn log_date(at: Option<DateTime<Utc>>) -> String {
    at.map(|at| at.format("%m/%d/%Y %H:%M:%S %z").to_string())
        .unwrap_or_default()
}

/// RFC 3339 in UTC, with as many fraction digits as needed.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Milliseconds as `N ms`.
pub fn millis(ms: u32) -> String {
    format!("{ms} ms")
}

/// A fractional millisecond value as `N ms` with at most one decimal (`12 ms`, `0.4 ms`).
pub fn millis_f64(ms: f64) -> String {
    let text = format!("{ms:.1}");
    format!("{} ms", text.strip_suffix(".0").unwrap_or(&text))
}

/// Standard output, with a closed pipe reported as [`CliError::BrokenPipe`].
pub struct Stdout {
    inner: io::Stdout,
}

impl Stdout {
    /// Standard output of the process.
    pub fn new() -> Self {
        Self {
            inner: io::stdout(),
        }
    }

    /// Writes `text` and a newline, then flushes so streamed rows appear at once.
    pub fn line(&mut self, text: &str) -> Result<(), CliError> {
        let mut out = self.inner.lock();
        writeln!(out, "{text}")
            .and_then(|()| out.flush())
            .map_err(stdout_error)
    }
}

fn stdout_error(err: io::Error) -> CliError {
    if err.kind() == io::ErrorKind::BrokenPipe {
        CliError::BrokenPipe
    } else {
        CliError::Io {
            what: "cannot write to standard output".to_owned(),
            source: err,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use provisioning_client::proto;

    #[test]
    fn tables_align_columns_to_the_widest_cell() {
        let mut table = Table::new(&["ID", "Name", "Duration"]).right_align(&[0]);
        table.row(vec!["153".into(), "acc 6".into(), "1 ms".into()]);
        table.row(vec![
            "7".into(),
            "a much longer name".into(),
            "27 ms".into(),
        ]);
        assert_eq!(
            table.render(),
            "ID   Name                Duration\n\
             153  acc 6               1 ms\n  \
             7  a much longer name  27 ms"
        );
    }

    #[test]
    fn table_cells_stay_on_one_line_and_trailing_blanks_are_trimmed() {
        let mut table = Table::new(&["A", "Error"]);
        table.row(vec!["x".into(), "line 1\nline 2".into()]);
        table.row(vec!["y".into(), String::new()]);
        assert_eq!(table.render(), "A  Error\nx  line 1 line 2\ny");
    }

    #[test]
    fn table_widths_count_characters_not_bytes() {
        let mut table = Table::new(&["Name", "X"]);
        table.row(vec!["héllo".into(), "1".into()]);
        assert_eq!(table.render(), "Name   X\nhéllo  1");
    }

    #[test]
    fn streamed_rows_use_fixed_widths_and_overflow() {
        let table = Table::new(&["ID", "Name"]);
        let widths = [3, 4];
        assert_eq!(table.header_line(&widths), "ID   Name");
        assert_eq!(
            table.row_line(&["12345".into(), "n".into()], &widths),
            "12345  n"
        );
    }

    #[test]
    fn details_align_values_and_skip_empty_ones() {
        let text = details(&[
            ("ID", "5".into()),
            ("Secret", String::new()),
            ("Name", "x".into()),
        ]);
        assert_eq!(text, "ID:   5\nName: x");
    }

    #[test]
    fn events_are_title_cased_like_the_seeds() {
        assert_eq!(event_title("accounts.create"), "Accounts Create");
        assert_eq!(
            event_title("clients.custom_fields_update"),
            "Clients Custom Fields Update"
        );
        assert_eq!(
            event_title("email_rates_manager.import"),
            "Email Rates Manager Import"
        );
        assert_eq!(event_title(""), "");
    }

    #[test]
    fn enum_names_are_lower_case_without_prefix() {
        assert_eq!(enum_name(1, "PHASE_", proto::Phase::as_str_name), "before");
        assert_eq!(
            enum_name(2, "FAILURE_POLICY_", proto::FailurePolicy::as_str_name),
            "fail_open"
        );
        assert_eq!(enum_name(42, "PHASE_", proto::Phase::as_str_name), "42");
    }

    #[test]
    fn dates_render_like_the_seeds_and_as_rfc3339() {
        let at = DateTime::parse_from_rfc3339("2016-12-20T13:45:15.5Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(log_date(Some(at)), "12/20/2016 13:45:15 +0000");
        assert_eq!(log_date(None), "");
        assert_eq!(rfc3339(at), "2016-12-20T13:45:15.500Z");
    }

    #[test]
    fn durations_and_truncation() {
        assert_eq!(millis(27), "27 ms");
        assert_eq!(millis_f64(12.0), "12 ms");
        assert_eq!(millis_f64(0.44), "0.4 ms");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
