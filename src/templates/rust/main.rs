// {{name}}: a Rust agent on the OPMAS SDK. It does one unit of work every
// `every_secs` seconds (from its config), reports it as a log line and a
// metric, takes a new config without restarting, and stops gracefully.

use std::time::Duration;

use opmas_sdk::{Agent, Level};

#[tokio::main]
async fn main() -> Result<(), opmas_sdk::Error> {
    let agent = Agent::from_env().await?.on_reload(|config| {
        // Refuse a config this agent cannot use (the schema checked it already).
        match config.get("every_secs").map(|v| v.as_u64()) {
            Some(Some(0)) | Some(None) => Err("every_secs must be a whole number above 0".into()),
            _ => Ok(()),
        }
    });
    let outcome = agent
        .run(|handle| async move {
            let mut done = 0_u64;
            while !handle.is_stopped() {
                let every = handle.config()["every_secs"].as_u64().unwrap_or(10);
                done += 1;
                handle.log(
                    Level::Info,
                    "did some work",
                    serde_json::json!({"done": done}),
                );
                handle.metric("work_done", done as f64, &[]).await?;
                tokio::select! {
                    () = handle.stopped() => {}
                    () = tokio::time::sleep(Duration::from_secs(every)) => {}
                }
            }
            Ok::<(), opmas_sdk::Error>(())
        })
        .await?;
    std::process::exit(outcome.exit_code());
}
