//! `provisiond`: parses the configuration, installs tracing, turns SIGTERM/SIGINT into
//! a graceful shutdown and runs the server. `provisiond token new` prints a fresh token
//! and its tokens-file entry instead.

use clap::{Parser, Subcommand};
use provisioning_server::auth::identities::new_token_entry;
use provisioning_server::auth::Role;
use provisioning_server::config::Config;
use provisioning_server::shutdown::Shutdown;

/// The command line: the server's flags, or a subcommand.
#[derive(Debug, Parser)]
#[command(name = "provisiond", version, about = "Provisioning API gRPC service")]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tokens of the tokens file.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a fresh random token alone on the first line, then its `[[token]]` entry:
    /// `provisiond token new ... | tail -n +2 >> tokens.toml`.
    New {
        /// The caller's name, recorded in the audit trail and with emitted events.
        #[arg(long)]
        name: String,
        /// A role (admin, emitter, reader); repeat for several.
        #[arg(long = "role", value_enum, required = true)]
        roles: Vec<Role>,
        /// Events an emitter may emit (`clients.*`, `accounts.create`); repeat or
        /// separate with commas. None = every event.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Token(TokenCommand::New {
        name,
        roles,
        events,
    })) = cli.command
    {
        let (token, entry) =
            new_token_entry(&name, &roles, &events).map_err(|e| anyhow::anyhow!("{e}"))?;
        print!("{token}\n{entry}");
        return Ok(());
    }
    let config = cli.config;
    let telemetry =
        provisioning_server::telemetry::init(config.log_format, config.otlp_endpoint.as_deref())
            .map_err(|e| anyhow::anyhow!(provisioning_server::telemetry::error_chain(&e)))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let shutdown = Shutdown::default();
    let token = shutdown.token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
    let served = provisioning_server::run(config, listener, shutdown).await;
    // The spans of the last calls are still queued: export them before exiting.
    if let Err(error) = tokio::task::spawn_blocking(move || telemetry.shutdown()).await {
        eprintln!("provisiond: flushing traces: {error}");
    }
    if let Err(error) = served {
        eprintln!("provisiond: {error}");
        std::process::exit(1);
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}
