//! `opmas-host-health`: samples the host's CPU, memory, load and disks with
//! `sysinfo` every `interval_secs` and publishes them as custom metrics
//! (`host_cpu_percent`, `host_memory_used_percent`, `host_load_1m`,
//! `host_disk_used_percent{mount}`). When a value passes its threshold the
//! agent logs a warning and reports `status: "degraded"` in its heartbeats.
//!
//! Configuration (JSON object, reloadable): `interval_secs` (10),
//! `cpu_warn_percent` (90), `memory_warn_percent` (90), `disk_warn_percent`
//! (90).

use std::time::Duration;

use opmas_sdk::{Agent, Handle, Level};
use serde::Deserialize;
use serde_json::json;
use sysinfo::{Disks, System};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    interval_secs: f64,
    cpu_warn_percent: f64,
    memory_warn_percent: f64,
    disk_warn_percent: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval_secs: 10.0,
            cpu_warn_percent: 90.0,
            memory_warn_percent: 90.0,
            disk_warn_percent: 90.0,
        }
    }
}

fn parse_config(value: &serde_json::Value) -> Result<Config, String> {
    let config: Config = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    if !(config.interval_secs.is_finite() && config.interval_secs > 0.0) {
        return Err("interval_secs must be > 0".into());
    }
    Ok(config)
}

#[tokio::main]
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
    let agent = Agent::from_env()
        .await?
        .on_reload(|value| parse_config(value).map(|_| ()));
    parse_config(&agent.handle().config()).map_err(opmas_sdk::Error::Config)?;
    let outcome = agent.run(sample_until_stopped).await?;
    Ok(outcome.exit_code())
}

async fn sample_until_stopped(handle: Handle) -> Result<(), opmas_sdk::Error> {
    let mut sys = System::new().map_err(|e| opmas_sdk::Error::Work(e.to_string()))?;
    sys.refresh_cpu_usage(); // CPU use is a difference between two refreshes
    loop {
        let config = parse_config(&handle.config()).map_err(opmas_sdk::Error::Config)?;
        tokio::select! {
            () = handle.stopped() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs_f64(config.interval_secs)) => {}
        }
        let warnings = sample(&handle, &mut sys, &config).await?;
        handle.set_status(Some(if warnings.is_empty() {
            "ok"
        } else {
            "degraded"
        }));
        for (what, value) in warnings {
            handle.log(
                Level::Warn,
                "threshold passed",
                json!({"what": what, "value": value}),
            );
        }
    }
}

/// Publishes one round of metrics; returns what passed its threshold.
async fn sample(
    handle: &Handle,
    sys: &mut System,
    config: &Config,
) -> Result<Vec<(String, f64)>, opmas_sdk::Error> {
    sys.refresh_cpu_usage();
    sys.refresh_memory();
    let cpu = f64::from(sys.global_cpu_usage());
    let memory = percent(sys.used_memory(), sys.total_memory());
    let mut warnings = Vec::new();
    handle.metric("host_cpu_percent", cpu, &[]).await?;
    handle
        .metric("host_memory_used_percent", memory, &[])
        .await?;
    if let Ok(load) = System::load_average() {
        handle.metric("host_load_1m", load.one, &[]).await?;
    }
    if cpu > config.cpu_warn_percent {
        warnings.push(("cpu".to_string(), cpu));
    }
    if memory > config.memory_warn_percent {
        warnings.push(("memory".to_string(), memory));
    }
    if let Ok(disks) = Disks::new_with_refreshed_list() {
        for disk in &disks {
            let total = disk.total_space();
            if total == 0 {
                continue;
            }
            let used = percent(total - disk.available_space().min(total), total);
            let mount = disk.mount_point().display().to_string();
            handle
                .metric("host_disk_used_percent", used, &[("mount", &mount)])
                .await?;
            if used > config.disk_warn_percent {
                warnings.push((format!("disk {mount}"), used));
            }
        }
    }
    handle.log(
        Level::Debug,
        "sampled",
        json!({"cpu_percent": cpu, "memory_used_percent": memory}),
    );
    Ok(warnings)
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}
