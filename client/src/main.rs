//! `provctl`: the operators' command line of the Provisioning API.
//!
//! This file only wires things: parse the command line, run the command on a
//! single-threaded runtime, and turn an error into one `provctl: ...` line on standard
//! error with its exit code (1 for failures, 2 for bad input, as clap uses for usage
//! errors). Everything else is in the `cli` module.

mod cli;

use std::process::ExitCode;

use clap::error::{ContextKind, ErrorKind};
use clap::Parser;

use cli::args::Cli;
use cli::CliError;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            return fail(
                anyhow::Error::new(err).context("cannot start the async runtime"),
                1,
            )
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) | Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(err) => {
            let code = err.exit_code();
            fail(anyhow::Error::new(err), code)
        }
    }
}

/// Prints the error and its causes on one line, `: `-separated. A cause repeating the
/// previous one word for word (transport errors tend to) is printed once.
fn fail(err: anyhow::Error, code: u8) -> ExitCode {
    let mut causes: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if causes.last() != Some(&text) {
            causes.push(text);
        }
    }
    eprintln!("provctl: {}", causes.join(": "));
    ExitCode::from(code)
}

/// A value that failed validation (bad JSON, date, duration, number) is reported on one
/// line naming the flag; every other clap outcome (help, version, missing or unknown
/// arguments) keeps clap's own output and exit code.
fn usage_error(err: &clap::Error) -> ExitCode {
    if err.kind() != ErrorKind::ValueValidation {
        err.exit();
    }
    let arg = err
        .get(ContextKind::InvalidArg)
        .map(ToString::to_string)
        .unwrap_or_else(|| "argument".to_owned());
    let reason = std::error::Error::source(err)
        .map(ToString::to_string)
        .unwrap_or_else(|| "invalid value".to_owned());
    eprintln!("provctl: invalid {arg}: {reason}");
    ExitCode::from(2)
}
