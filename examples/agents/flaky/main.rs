//! `opmas-flaky`: a deliberately unreliable agent for demonstrating
//! recovery. It heartbeats like a good agent, then after a random time
//! between `min_secs` and `max_secs` it fails: most of the time it crashes
//! (exit code 3), and with probability `hang_chance` it hangs instead, still
//! alive but silent, so the supervisor sees its heartbeat lost.
//!
//! Configuration (JSON object): `min_secs` (5), `max_secs` (30),
//! `hang_chance` (0.2).

use std::time::Duration;

use opmas_sdk::{Agent, Handle, Level};
use rand::Rng;
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    min_secs: f64,
    max_secs: f64,
    hang_chance: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            min_secs: 5.0,
            max_secs: 30.0,
            hang_chance: 0.2,
        }
    }
}

fn parse_config(value: &serde_json::Value) -> Result<Config, String> {
    let c: Config = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    if !(c.min_secs >= 0.0 && c.max_secs >= c.min_secs && c.max_secs.is_finite()) {
        return Err("need 0 <= min_secs <= max_secs".into());
    }
    if !(0.0..=1.0).contains(&c.hang_chance) {
        return Err("hang_chance must be in 0..=1".into());
    }
    Ok(c)
}

/// How this run will end, unless it is stopped first.
enum Failure {
    Crash,
    Hang,
}

// One thread: a hang blocks the heartbeats too, as a real hang would.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let code = match run().await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            1
        }
    };
    std::process::exit(code);
}

async fn run() -> Result<i32, opmas_sdk::Error> {
    let agent = Agent::from_env().await?;
    let config = parse_config(&agent.handle().config()).map_err(opmas_sdk::Error::Config)?;
    let (after, failure) = {
        let mut rng = rand::rng();
        let after = Duration::from_secs_f64(rng.random_range(config.min_secs..=config.max_secs));
        let failure = if rng.random_bool(config.hang_chance) {
            Failure::Hang
        } else {
            Failure::Crash
        };
        (after, failure)
    };
    let outcome = agent
        .run(|handle: Handle| async move {
            let how = match failure {
                Failure::Crash => "crash",
                Failure::Hang => "hang",
            };
            handle.log(
                Level::Info,
                "started",
                json!({"fails_after_secs": after.as_secs_f64(), "how": how}),
            );
            tokio::select! {
                () = handle.stopped() => return Ok::<(), opmas_sdk::Error>(()),
                () = tokio::time::sleep(after) => {}
            }
            match failure {
                Failure::Crash => {
                    handle.log(Level::Error, "crashing on purpose", json!({"exit_code": 3}));
                    std::process::exit(3);
                }
                Failure::Hang => {
                    handle.log(Level::Error, "hanging on purpose", json!({}));
                    // Blocks this thread for good: no more heartbeats from a
                    // current-thread runtime.
                    loop {
                        std::thread::park();
                    }
                }
            }
        })
        .await?;
    Ok(outcome.exit_code())
}
