//! The `opmas` command: the roles and tools of the control plane in one binary.
//!
//! # Layout
//! - [`cli`]: clap definitions (every option has an `OPMAS_*` variable).
//! - [`telemetry`]: tracing subscriber (text or JSON).
//! - [`cmd`]: one module per subcommand (`migrate`, `relay`, `events`, `dev`).
//! - [`infra`]: connecting to Postgres and NATS, or starting private ones.

pub mod cli;
pub mod client;
pub mod cmd;
pub mod infra;
pub mod scaffold;
pub mod telemetry;

use std::process::ExitCode;

use cli::{Cli, Command, EventsCommand};

/// Runs the chosen subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.global.dump_config {
        println_out(&serde_json::to_string_pretty(&cli.dump())?);
        return Ok(ExitCode::SUCCESS);
    }
    match cli.command {
        Command::Migrate => cmd::migrate::run(&cli.global).await,
        Command::Relay(relay) => cmd::relay::run(&cli.global, &relay).await,
        Command::Events {
            command: EventsCommand::Verify(args),
        } => cmd::events::verify(&cli.global, &args).await,
        Command::Dev(dev) => cmd::dev::run(&cli.global, &dev).await,
        Command::Supervisor(args) => cmd::supervisor::run(&cli.global, &args).await,
        Command::Project(args) => cmd::project::run(&cli.global, &args).await,
        Command::Replay(args) => cmd::replay::run(&cli.global, &args).await,
        Command::Audit(args) => cmd::audit::run(&cli.global, &args).await,
        Command::Api(args) => cmd::serve::run_api(&cli.global, &args).await,
        Command::Serve(args) => cmd::serve::run(&cli.global, &args).await,
        Command::BootstrapToken(args) => cmd::serve::bootstrap_token(&cli.global, &args).await,
        Command::Events {
            command: EventsCommand::Tail(args),
        } => client::commands::tail(&args).await,
        Command::Agents(args) => client::commands::agents(&args).await,
        Command::Config(args) => client::commands::config(&args).await,
        Command::Logs(args) => client::commands::logs(&args).await,
        Command::Token(args) => client::commands::token(&args).await,
    }
}

/// Writes a line to standard output (command results, not logs).
pub fn println_out(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}
