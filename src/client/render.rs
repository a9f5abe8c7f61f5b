//! Human output of the client commands: tables and short lines.

use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use serde_json::Value;

/// A borderless table with the given header.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_string()));
    t
}

/// A JSON value as a table cell: strings bare, null as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Seconds as `3d4h`, `2h5m`, `4m10s` or `12s`.
pub fn duration(seconds: &Value) -> String {
    let Some(s) = seconds.as_i64() else {
        return "-".into();
    };
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

/// Rows of agents (list or a single one).
pub fn agents<'a>(items: impl IntoIterator<Item = &'a Value>) -> Table {
    let mut t = table(&[
        "AGENT", "TYPE", "DESIRED", "STATUS", "HEALTH", "RECOVERY", "NODE", "PID", "UPTIME",
        "RESTARTS",
    ]);
    for a in items {
        t.add_row(vec![
            cell(&a["agent_id"]),
            cell(&a["agent_type"]),
            cell(&a["desired_state"]),
            cell(&a["status"]),
            cell(&a["health"]),
            cell(&a["recovery_status"]),
            cell(&a["node"]),
            cell(&a["pid"]),
            duration(&a["uptime_seconds"]),
            cell(&a["restart_count"]),
        ]);
    }
    t
}

/// One agent's fields, a line each (the spec as JSON at the end).
pub fn agent_detail(a: &Value) -> String {
    let keys = [
        "agent_id",
        "agent_type",
        "package_version",
        "desired_state",
        "status",
        "health",
        "recovery_status",
        "recovery_attempts",
        "node",
        "pid",
        "started_at",
        "restart_count",
        "heartbeat_lost",
        "last_heartbeat_at",
        "last_error",
        "spec_version",
        "config_version",
        "sequence",
        "updated_at",
        "as_of",
    ];
    let mut out = String::new();
    for k in keys {
        if let Some(v) = a.get(k) {
            out.push_str(&format!("{:<18} {}\n", format!("{k}:"), cell(v)));
        }
    }
    if let Some(u) = a.get("uptime_seconds").filter(|u| !u.is_null()) {
        out.push_str(&format!("{:<18} {}\n", "uptime:", duration(u)));
    }
    if let Some(spec) = a.get("spec").filter(|s| !s.is_null()) {
        out.push_str("spec:\n");
        out.push_str(&serde_json::to_string_pretty(spec).unwrap_or_default());
    }
    out.trim_end().to_string()
}

/// A command's answer: what it committed and where the agent is now.
pub fn command_result(v: &Value) -> String {
    let events: Vec<&str> = v["events"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let what = if events.is_empty() {
        "nothing to do".to_string()
    } else {
        events.join(", ")
    };
    format!(
        "{} {}: {} (sequence {}; desired {}, status {})",
        cell(&v["agent_id"]),
        cell(&v["command"]),
        what,
        cell(&v["sequence"]),
        cell(&v["agent"]["desired_state"]),
        cell(&v["agent"]["status"]),
    )
}

/// One log line as `time level stream line`.
pub fn log_line(l: &Value) -> String {
    format!(
        "{} {:<5} {:<6} {}",
        cell(&l["at"]),
        cell(&l["level"]),
        cell(&l["stream"]),
        l["line"].as_str().unwrap_or_default()
    )
}

/// A discovery scan's report, a line per agent or package.
pub fn scan_report(v: &Value) -> String {
    let mut out = Vec::new();
    let list = |key: &str| v[key].as_array().cloned().unwrap_or_default();
    for a in list("registered") {
        out.push(format!(
            "registered  {} ({} {})",
            cell(&a["agent_id"]),
            cell(&a["package"]),
            cell(&a["version"])
        ));
    }
    for a in list("updated") {
        out.push(format!(
            "updated     {} ({} -> {})",
            cell(&a["agent_id"]),
            cell(&a["from_version"]),
            cell(&a["to_version"])
        ));
    }
    for a in list("config_updated") {
        out.push(format!(
            "config      {} (version {} from the package's config layers)",
            cell(&a["agent_id"]),
            cell(&a["config_version"])
        ));
    }
    for a in list("unapplied") {
        out.push(format!(
            "unapplied   {}: {}",
            cell(&a["agent_id"]),
            cell(&a["message"])
        ));
    }
    for p in list("invalid") {
        out.push(format!("invalid     {}", cell(&p["error"])));
    }
    for a in list("removed") {
        out.push(format!(
            "removed     {} (package {} is gone; still registered)",
            cell(&a["agent_id"]),
            cell(&a["package"])
        ));
    }
    let unchanged = list("unchanged").len();
    out.push(format!("{unchanged} unchanged"));
    out.join("\n")
}
