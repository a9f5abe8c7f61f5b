//! The `opmas` binary: parse the command line, start telemetry, run the role.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Before any thread exists: fewer malloc arenas, less idle memory.
    opmas_supervisor::limit_malloc_arenas();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
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
