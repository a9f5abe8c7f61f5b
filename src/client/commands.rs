//! `opmas agents|config|logs|token|events tail`: the client commands.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::render::{self, cell};
use super::{Client, ClientArgs};
use crate::cli::Output;
use crate::println_out;

/// `opmas agents ...`
#[derive(Debug, Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: AgentsCommand,
}

/// What to do with agents.
#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List agents (filters combine).
    #[command(alias = "list")]
    Ls(ListArgs),
    /// One agent with its spec (secrets redacted); `--at` for its state at an instant.
    Show {
        /// The agent.
        agent: String,
        /// Its state as of this instant (RFC 3339).
        #[arg(long)]
        at: Option<DateTime<Utc>>,
    },
    /// Register an agent from a spec file or a command line.
    Register(RegisterArgs),
    /// Ask for the agent to run.
    Start(LifecycleArgs),
    /// Ask for the agent to stop (graceful, then killed after its grace period).
    Stop(LifecycleArgs),
    /// Stop and start the agent's process.
    Restart(LifecycleArgs),
    /// Run a recovery now.
    Recover(RecoverArgs),
    /// Remove the agent (stops it first).
    Deregister(LifecycleArgs),
    /// Make a new package from a template (no server needed).
    New {
        /// The package's name (and its agent's id).
        name: String,
        /// shell: a POSIX script; rust: a program on the OPMAS SDK.
        #[arg(long, value_enum, default_value = "shell")]
        template: crate::scaffold::Template,
        /// Directory to create the package in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// rust: do not build the package (by default `cargo build
        /// --release` runs in it when cargo is on PATH).
        #[arg(long)]
        no_build: bool,
    },
    /// Scan the server's package roots now and report what changed.
    Discover,
    /// The agent's events (its audit trail), oldest first.
    Events {
        /// The agent.
        agent: String,
        /// Only events of this type, e.g. `ProcessExited`.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only events after this sequence.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

/// `opmas agents ls`
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only agents with this process status (`running`, `failed`, ...).
    #[arg(long)]
    pub status: Option<String>,
    /// Only agents with this health.
    #[arg(long)]
    pub health: Option<String>,
    /// Only agents of this type.
    #[arg(long = "type")]
    pub agent_type: Option<String>,
    /// Only agents on this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Only agents whose id contains this text.
    #[arg(short = 'q', long)]
    pub search: Option<String>,
    /// Sort key (`-` prefix: descending): agent_id, status, health, restart_count, started_at, updated_at, node.
    #[arg(long, allow_hyphen_values = true)]
    pub sort: Option<String>,
    /// Page size (1-1000).
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
    /// Agents to skip.
    #[arg(long, default_value_t = 0)]
    pub offset: i64,
    /// Include deregistered agents.
    #[arg(long)]
    pub all: bool,
}

/// `opmas agents register`
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The new agent's id (lowercase letters, digits, `-`).
    pub agent: String,
    /// Spec file, JSON or TOML (by extension; `-` reads JSON from stdin).
    #[arg(long, conflicts_with = "command")]
    pub spec: Option<PathBuf>,
    /// Program to run (instead of --spec): a path or a name on PATH.
    #[arg(long)]
    pub command: Option<String>,
    /// Arguments of --command (repeat).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Agent type with --command (default: the agent id).
    #[arg(long = "type")]
    pub agent_type: Option<String>,
    /// Why (kept in the audit trail).
    #[arg(long)]
    pub reason: Option<String>,
}

/// An agent and a reason.
#[derive(Debug, Args)]
pub struct LifecycleArgs {
    /// The agent.
    pub agent: String,
    /// Why (kept in the audit trail).
    #[arg(long)]
    pub reason: Option<String>,
}

/// A recovery strategy.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Strategy {
    /// Restart the process.
    Restart,
    /// Reload its config without a restart (control message or SIGHUP).
    Reload,
}

/// `opmas agents recover`
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The agent.
    pub agent: String,
    /// Strategy (default: the agent's recovery policy).
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    /// Why (kept in the audit trail).
    #[arg(long)]
    pub reason: Option<String>,
}

/// `opmas config ...`
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// What to do with an agent's configuration.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// The current config and its version.
    Get {
        /// The agent.
        agent: String,
    },
    /// A new config version: a whole file, or keys changed in the current one.
    Set(SetArgs),
    /// Every version with its diff and actor.
    History {
        /// The agent.
        agent: String,
    },
    /// Make an earlier version current again (as a new version).
    Rollback {
        /// The agent.
        agent: String,
        /// The version to return to.
        #[arg(long)]
        to: u32,
        /// Why (kept in the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `opmas config set`
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The agent.
    pub agent: String,
    /// The whole new config, JSON or TOML (by extension; `-` reads JSON from stdin).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// `key=value` changed in the current config (dots for nesting; the value
    /// is JSON if it parses, else a string). Repeat for several.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Why (kept in the audit trail).
    #[arg(long)]
    pub reason: Option<String>,
}

/// `opmas logs`
#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The agent.
    pub agent: String,
    /// Keep printing new lines as they come.
    #[arg(short, long)]
    pub follow: bool,
    /// Only these levels (comma-separated: trace, debug, info, warn, error).
    #[arg(long)]
    pub level: Option<String>,
    /// Only lines containing this text (case-insensitive).
    #[arg(long)]
    pub grep: Option<String>,
    /// Lines from this instant on (RFC 3339).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Most recent lines shown (before following).
    #[arg(short = 'n', long, default_value_t = 200)]
    pub limit: i64,
}

/// `opmas token ...`
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// API tokens (admin).
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once.
    Create {
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        /// A name to recognise it by.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Lifetime, e.g. `30d` (default: no expiry).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// List tokens (never their secrets).
    #[command(alias = "list")]
    Ls,
    /// Revoke a token by id.
    Revoke {
        /// The token's id (from `opmas token ls`).
        id: String,
    },
}

/// `opmas events tail`
#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only these agents (repeat).
    #[arg(long = "agent")]
    pub agents: Vec<String>,
    /// Also errors (`agent.error`) and, with --all-kinds, metrics and logs.
    #[arg(long)]
    pub all_kinds: bool,
    /// Stop after this many messages (default: run until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
}

fn path_id(id: &str) -> String {
    // Agent ids are `[a-z][a-z0-9-]*`; anything else is refused by the API
    // with a clear message, so only `/`-safety matters here.
    id.replace('/', "%2F")
}

fn emit(
    client: &Client,
    value: &Value,
    human: impl FnOnce(&Value) -> String,
) -> anyhow::Result<()> {
    match client.output {
        Output::Json => println_out(&serde_json::to_string_pretty(value)?),
        Output::Table => println_out(&human(value)),
    }
    Ok(())
}

/// Reads JSON or TOML from a file (`-`: JSON from stdin).
fn read_document(path: &PathBuf, what: &str) -> anyhow::Result<Value> {
    let (text, toml_file) = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        (s, false)
    } else {
        let s = std::fs::read_to_string(path)
            .with_context(|| format!("reading {what} {}", path.display()))?;
        (s, path.extension().is_some_and(|e| e == "toml"))
    };
    if toml_file {
        let v: toml::Value =
            toml::from_str(&text).with_context(|| format!("{}: invalid TOML", path.display()))?;
        Ok(serde_json::to_value(v)?)
    } else {
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
    }
}

/// Builds the new Rust package `name` in `path`, saying what happens.
async fn build_new(name: &str, path: &Path, no_build: bool) -> anyhow::Result<()> {
    let build = crate::scaffold::BUILD;
    let later = format!("(cd {} && {build})", path.display());
    if no_build {
        println_out(&format!("  build it:  {later}"));
        return Ok(());
    }
    match crate::scaffold::build(path).await? {
        crate::scaffold::Built::Yes => println_out(&format!(
            "  built:     target/release/{name}; after a change: {later}"
        )),
        crate::scaffold::Built::NoCargo => println_out(&format!(
            "  not built: cargo is not on PATH; before starting it: {later}"
        )),
    }
    Ok(())
}

/// Runs `opmas agents ...`.
pub async fn agents(args: &AgentsArgs) -> anyhow::Result<ExitCode> {
    if let AgentsCommand::New {
        name,
        template,
        dir,
        no_build,
    } = &args.command
    {
        let path = crate::scaffold::scaffold(name, *template, dir)?;
        println_out(&format!("package {name} created in {}", path.display()));
        if *template == crate::scaffold::Template::Rust {
            build_new(name, &path, *no_build).await?;
        }
        println_out(&format!(
            "  run it:    put it under a package root (opmas serve|dev --package-root {}), then opmas agents start {name}",
            dir.display()
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let client = Client::from_args(&args.client)?;
    match &args.command {
        AgentsCommand::New { .. } => unreachable!("handled above"),
        AgentsCommand::Discover => {
            let v = client.post("/agents/discover", &json!({})).await?;
            emit(&client, &v, render::scan_report)?;
        }
        AgentsCommand::Ls(l) => {
            let mut q = vec![
                ("limit", l.limit.to_string()),
                ("offset", l.offset.to_string()),
            ];
            for (k, v) in [
                ("status", &l.status),
                ("health", &l.health),
                ("type", &l.agent_type),
                ("node", &l.node),
                ("q", &l.search),
                ("sort", &l.sort),
            ] {
                if let Some(v) = v {
                    q.push((k, v.clone()));
                }
            }
            if l.all {
                q.push(("include_deregistered", "true".into()));
            }
            let page = client.get("/agents", &q).await?;
            emit(&client, &page, |p| {
                let items = p["items"].as_array().cloned().unwrap_or_default();
                let shown = items.len() as i64;
                let mut out = render::agents(items.iter()).to_string();
                let total = p["total"].as_i64().unwrap_or(shown);
                out.push_str(&format!("\n{shown} of {total} agents"));
                if total > shown + l.offset {
                    out.push_str(&format!(" (next page: --offset {})", l.offset + shown));
                }
                out
            })?;
        }
        AgentsCommand::Show { agent, at } => {
            let q: Vec<(&str, String)> = at.iter().map(|t| ("at", t.to_rfc3339())).collect();
            let v = client
                .get(&format!("/agents/{}", path_id(agent)), &q)
                .await?;
            emit(&client, &v, render::agent_detail)?;
        }
        AgentsCommand::Register(r) => {
            let spec = match (&r.spec, &r.command) {
                (Some(path), _) => read_document(path, "spec")?,
                (None, Some(command)) => json!({
                    "agent_type": r.agent_type.clone().unwrap_or_else(|| r.agent.clone()),
                    "command": command,
                    "args": r.args,
                }),
                (None, None) => bail!(
                    "say what to run: --spec FILE (JSON or TOML AgentSpec) or --command PROGRAM [--arg A ...]"
                ),
            };
            let body = json!({"agent_id": r.agent, "spec": spec, "reason": r.reason});
            let v = client.post("/agents", &body).await?;
            emit(&client, &v, render::command_result)?;
        }
        AgentsCommand::Start(a) => lifecycle(&client, "start", a).await?,
        AgentsCommand::Stop(a) => lifecycle(&client, "stop", a).await?,
        AgentsCommand::Restart(a) => lifecycle(&client, "restart", a).await?,
        AgentsCommand::Recover(r) => {
            let strategy = r.strategy.map(|s| match s {
                Strategy::Restart => "restart",
                Strategy::Reload => "reload",
            });
            let body = json!({"strategy": strategy, "reason": r.reason});
            let v = client
                .post(&format!("/agents/{}/recover", path_id(&r.agent)), &body)
                .await?;
            emit(&client, &v, render::command_result)?;
        }
        AgentsCommand::Deregister(a) => {
            let q: Vec<(&str, String)> = a.reason.iter().map(|r| ("reason", r.clone())).collect();
            let (v, _) = client
                .send(
                    Method::DELETE,
                    &format!("/agents/{}", path_id(&a.agent)),
                    &q,
                    None,
                    None,
                )
                .await?;
            emit(&client, &v, render::command_result)?;
        }
        AgentsCommand::Events {
            agent,
            event_type,
            after,
        } => {
            let mut after = *after;
            let mut all = Vec::new();
            loop {
                let mut q = vec![("after", after.to_string()), ("limit", "1000".into())];
                if let Some(t) = event_type {
                    q.push(("type", t.clone()));
                }
                let page = client
                    .get(&format!("/agents/{}/events", path_id(agent)), &q)
                    .await?;
                all.extend(page["items"].as_array().cloned().unwrap_or_default());
                match page["next_after"].as_i64() {
                    Some(n) => after = n,
                    None => break,
                }
            }
            let value = Value::Array(all);
            emit(&client, &value, |v| {
                let mut t = render::table(&["SEQ", "AT", "EVENT", "ACTOR", "REASON"]);
                let items = v.as_array().cloned().unwrap_or_default();
                for e in &items {
                    t.add_row(vec![
                        cell(&e["sequence"]),
                        cell(&e["recorded_at"]),
                        cell(&e["event_type"]),
                        cell(&e["actor"]),
                        cell(&e["reason"]),
                    ]);
                }
                format!("{t}\n{} events", items.len())
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn lifecycle(client: &Client, action: &str, a: &LifecycleArgs) -> anyhow::Result<()> {
    let body = json!({"reason": a.reason});
    let v = client
        .post(&format!("/agents/{}/{action}", path_id(&a.agent)), &body)
        .await?;
    emit(client, &v, render::command_result)
}

/// Sets `a.b.c` in `target` to `value`, making objects on the way.
fn set_path(target: &mut Value, key: &str, value: Value) -> anyhow::Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set `{key}`: empty key segment (use a.b.c=value)");
    }
    let mut cur = target;
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            let walked = parts[..i].join(".");
            bail!("--set `{key}`: `{walked}` is not an object in the current config");
        }
        let map = cur
            .as_object_mut()
            .ok_or_else(|| anyhow!("not an object"))?;
        if i == parts.len() - 1 {
            map.insert((*part).to_string(), value);
            return Ok(());
        }
        cur = map
            .entry((*part).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

/// Runs `opmas config ...`.
pub async fn config(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let client = Client::from_args(&args.client)?;
    match &args.command {
        ConfigCommand::Get { agent } => {
            let v = client
                .get(&format!("/agents/{}/config", path_id(agent)), &[])
                .await?;
            emit(&client, &v, |v| {
                format!(
                    "version {}\n{}",
                    cell(&v["version"]),
                    serde_json::to_string_pretty(&v["config"]).unwrap_or_default()
                )
            })?;
        }
        ConfigCommand::Set(s) => {
            if s.file.is_none() && s.sets.is_empty() {
                bail!(
                    "say what changes: --file FILE (the whole config) or --set key=value (repeatable)"
                );
            }
            let path = format!("/agents/{}/config", path_id(&s.agent));
            let (current, _) = client.send(Method::GET, &path, &[], None, None).await?;
            let version = current["version"].as_u64().unwrap_or(0);
            let mut config = match &s.file {
                Some(f) => read_document(f, "config")?,
                None => current["config"].clone(),
            };
            if !config.is_object() {
                bail!("a config is a JSON object (a TOML table); got {config}");
            }
            for kv in &s.sets {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--set `{kv}`: use key=value"))?;
                let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.into()));
                set_path(&mut config, k.trim(), value)?;
            }
            let body = json!({"config": config, "reason": s.reason});
            let if_match = format!("\"{version}\"");
            let (v, _) = client
                .send(Method::PUT, &path, &[], Some(&body), Some(&if_match))
                .await
                .map_err(|e| match e.downcast_ref::<super::ApiFailure>() {
                    Some(f) if f.status == 412 => anyhow!(
                        "{e}\nthe config changed since version {version} was read; run the command again"
                    ),
                    _ => e,
                })?;
            emit(&client, &v, |v| {
                format!(
                    "{} config version {} -> {}",
                    cell(&v["agent_id"]),
                    version,
                    cell(&v["agent"]["config_version"])
                )
            })?;
        }
        ConfigCommand::History { agent } => {
            let v = client
                .get(&format!("/agents/{}/config/versions", path_id(agent)), &[])
                .await?;
            emit(&client, &v, |v| {
                let mut t = render::table(&["VERSION", "AT", "EVENT", "ACTOR", "CHANGES"]);
                for r in v.as_array().cloned().unwrap_or_default() {
                    let changes = r["diff"]
                        .as_array()
                        .map(|d| {
                            d.iter()
                                .map(|c| {
                                    format!(
                                        "{} {} -> {}",
                                        c["path"].as_str().unwrap_or("?"),
                                        c.get("from")
                                            .map(|v| v.to_string())
                                            .unwrap_or("(none)".into()),
                                        c.get("to")
                                            .map(|v| v.to_string())
                                            .unwrap_or("(none)".into())
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    t.add_row(vec![
                        cell(&r["version"]),
                        cell(&r["at"]),
                        cell(&r["event_type"]),
                        cell(&r["actor"]),
                        if changes.is_empty() {
                            "-".into()
                        } else {
                            changes
                        },
                    ]);
                }
                t.to_string()
            })?;
        }
        ConfigCommand::Rollback { agent, to, reason } => {
            let body = json!({"to_version": to, "reason": reason});
            let v = client
                .post(
                    &format!("/agents/{}/config/rollback", path_id(agent)),
                    &body,
                )
                .await?;
            emit(&client, &v, |v| {
                format!(
                    "{} config rolled back to version {to}: now version {}",
                    cell(&v["agent_id"]),
                    cell(&v["agent"]["config_version"])
                )
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `opmas logs`.
pub async fn logs(args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::from_args(&args.client)?;
    let path = format!("/agents/{}/logs", path_id(&args.agent));
    let mut q = vec![("limit", args.limit.to_string())];
    if let Some(l) = &args.level {
        q.push(("level", l.clone()));
    }
    if let Some(g) = &args.grep {
        q.push(("q", g.clone()));
    }
    if let Some(s) = &args.since {
        q.push(("since", s.to_rfc3339()));
    }
    let lines = client.get(&path, &q).await?;
    let mut lines = lines.as_array().cloned().unwrap_or_default();
    lines.reverse(); // the API answers newest first
    for l in &lines {
        print_log(&client, l)?;
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    q.retain(|(k, _)| *k != "limit" && *k != "since");
    q.push(("follow", "true".into()));
    let mut stream = Box::pin(client.events(&path, &q).await?);
    let cancel = crate::cmd::shutdown_token();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            next = stream.next() => match next {
                Some(Ok((_, line))) => print_log(&client, &line)?,
                Some(Err(e)) => return Err(e),
                None => bail!("the API closed the log stream"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_log(client: &Client, line: &Value) -> anyhow::Result<()> {
    match client.output {
        Output::Json => println_out(&serde_json::to_string(line)?),
        Output::Table => println_out(&render::log_line(line)),
    }
    Ok(())
}

/// Runs `opmas token ...`.
pub async fn token(args: &TokenArgs) -> anyhow::Result<ExitCode> {
    let client = Client::from_args(&args.client)?;
    match &args.command {
        TokenCommand::Create {
            role,
            name,
            expires,
        } => {
            let body = json!({
                "name": name,
                "role": role,
                "expires_in_seconds": expires.map(|d| d.as_secs()),
            });
            let v = client.post("/tokens", &body).await?;
            emit(&client, &v, |v| cell(&v["token"]))?;
        }
        TokenCommand::Ls => {
            let v = client.get("/tokens", &[]).await?;
            emit(&client, &v, |v| {
                let mut t = render::table(&[
                    "ID",
                    "NAME",
                    "ROLE",
                    "PREFIX",
                    "CREATED",
                    "EXPIRES",
                    "REVOKED",
                    "LAST USED",
                ]);
                for r in v.as_array().cloned().unwrap_or_default() {
                    t.add_row(vec![
                        cell(&r["id"]),
                        cell(&r["name"]),
                        cell(&r["role"]),
                        cell(&r["prefix"]),
                        cell(&r["created_at"]),
                        cell(&r["expires_at"]),
                        cell(&r["revoked_at"]),
                        cell(&r["last_used_at"]),
                    ]);
                }
                t.to_string()
            })?;
        }
        TokenCommand::Revoke { id } => {
            let (v, _) = client
                .send(Method::DELETE, &format!("/tokens/{id}"), &[], None, None)
                .await?;
            emit(&client, &v, |_| format!("token {id} revoked"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `opmas events tail`: lifecycle events (and errors) as they happen.
pub async fn tail(args: &TailArgs) -> anyhow::Result<ExitCode> {
    let client = Client::from_args(&args.client)?;
    let mut q = vec![];
    if !args.agents.is_empty() {
        q.push(("agents", args.agents.join(",")));
    }
    let kinds = if args.all_kinds {
        "agent.status,agent.error,agent.metrics,agent.log"
    } else {
        "agent.status,agent.error"
    };
    q.push(("kinds", kinds.to_string()));
    let mut stream = Box::pin(client.events("/stream", &q).await?);
    let cancel = crate::cmd::shutdown_token();
    let mut seen = 0u64;
    while args.count.is_none_or(|c| seen < c) {
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            next = stream.next() => next,
        };
        let (kind, msg) = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(e),
            None => bail!("the API closed the live stream"),
        };
        if kind == "dropped" {
            bail!("the server dropped this stream: {}", cell(&msg["reason"]));
        }
        seen += 1;
        match client.output {
            Output::Json => println_out(&serde_json::to_string(&msg)?),
            Output::Table => {
                let d = &msg["data"];
                let line = match msg["kind"].as_str() {
                    Some("agent.status") | Some("agent.error") => format!(
                        "{} {:<24} #{:<5} {:<22} actor={}",
                        cell(&d["at"]),
                        cell(&msg["agent_id"]),
                        cell(&d["sequence"]),
                        cell(&d["event_type"]),
                        cell(&d["actor"]),
                    ),
                    _ => format!("{} {} {}", cell(&msg["kind"]), cell(&msg["agent_id"]), d),
                };
                println_out(&line);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
