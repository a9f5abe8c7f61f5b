//! The `opmas` binary: parse the command line, start telemetry, run the role.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = opmas::cli::Cli::parse();
    opmas::telemetry::init(&cli.global);
    // Client commands report to the terminal only; servers also log.
    let client = cli.command.is_client();
    match opmas::run(cli).await {
        Ok(code) => code,
        Err(err) => {
            if !client {
                tracing::error!(error = format!("{err:#}"), "opmas failed");
            }
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
