//! The API client behind `opmas agents|config|logs|token|events tail`: a
//! thin layer over the REST API (`/api/v1`) that turns its answers into
//! tables (or JSON with `-o json`) and its errors into messages that say
//! what to fix.
//!
//! Server and token come from, in order: `--server` / `--token`, the
//! `OPMAS_SERVER` / `OPMAS_TOKEN` variables, then the config file
//! (`--cli-config`, `OPMAS_CLI_CONFIG`, else `$XDG_CONFIG_HOME/opmas/cli.toml`
//! or `~/.config/opmas/cli.toml`) with keys `server` and `token`.

pub mod commands;
mod render;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use futures::{Stream, StreamExt};
use reqwest::{Method, StatusCode, header};
use serde::Deserialize;
use serde_json::Value;

use crate::cli::Output;

/// Where the API is and how to authenticate (every client command).
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Base URL of the OPMAS API, e.g. `http://127.0.0.1:8080`.
    #[arg(long, global = true, env = "OPMAS_SERVER")]
    pub server: Option<String>,
    /// Bearer token (an `opm_` API token or a JWT).
    #[arg(long, global = true, env = "OPMAS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Config file with `server` and `token` (TOML).
    #[arg(long, global = true, env = "OPMAS_CLI_CONFIG")]
    pub cli_config: Option<PathBuf>,
    /// Output: human tables or JSON for scripts.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Give up on a request after this long.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    token: Option<String>,
}

/// The default config file path, if a home or XDG directory is known.
pub fn default_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("opmas/cli.toml"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".config/opmas/cli.toml"))
}

fn read_config(path: &Path, explicit: bool) -> anyhow::Result<FileConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| {
            format!(
                "{}: not a valid CLI config (TOML with `server = \"http://...\"` and `token = \"...\"`)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(FileConfig::default()),
        Err(e) => Err(e).with_context(|| format!("reading CLI config {}", path.display())),
    }
}

/// An error answer of the API, as its body says.
#[derive(Debug, thiserror::Error)]
#[error("{code} ({status}): {message}{}", details_suffix(.details))]
pub struct ApiFailure {
    /// HTTP status.
    pub status: u16,
    /// Stable error code, e.g. `AGENT_NOT_FOUND`.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// Extra fields (`field` names the invalid value).
    pub details: Value,
}

fn details_suffix(details: &Value) -> String {
    match details.get("field").and_then(Value::as_str) {
        Some(field) => format!(" [field: {field}]"),
        None => String::new(),
    }
}

/// A connected client.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// Output format chosen on the command line.
    pub output: Output,
}

impl Client {
    /// Resolves server and token from flags, environment and config file.
    pub fn from_args(args: &ClientArgs) -> anyhow::Result<Self> {
        let (path, explicit) = match &args.cli_config {
            Some(p) => (Some(p.clone()), true),
            None => (default_config_path(), false),
        };
        let file = match &path {
            Some(p) => read_config(p, explicit)?,
            None => FileConfig::default(),
        };
        let server = args.server.clone().or(file.server).ok_or_else(|| {
            anyhow!(
                "no API server configured: pass --server http://HOST:PORT, set OPMAS_SERVER, \
                 or put `server = \"...\"` in {}",
                path.as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "the CLI config".into())
            )
        })?;
        let token = args.token.clone().or(file.token).ok_or_else(|| {
            anyhow!(
                "no API token configured: pass --token, set OPMAS_TOKEN, or put `token = \"...\"` \
                 in the CLI config (`opmas dev` prints an admin token and writes it to <data-dir>/admin-token)"
            )
        })?;
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--server `{base}` must start with http:// or https://");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base,
            token: token.trim().to_string(),
            output: args.output,
        })
        .map(|c| c.with_timeout(args.timeout))
    }

    fn with_timeout(mut self, timeout: Duration) -> Self {
        if let Ok(http) = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .build()
        {
            self.http = http;
        }
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// Sends a request and returns the JSON answer and its headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> anyhow::Result<(Value, header::HeaderMap)> {
        let mut req = self.request(method, path).query(query);
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(v) = if_match {
            req = req.header(header::IF_MATCH, v);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return Err(failure(status, &headers, &bytes).into());
        }
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).with_context(|| {
                format!("the API answered {status} with a body that is not JSON")
            })?
        };
        Ok((value, headers))
    }

    /// GET returning JSON.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        Ok(self.send(Method::GET, path, query, None, None).await?.0)
    }

    /// POST returning JSON.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        Ok(self
            .send(Method::POST, path, &[], Some(body), None)
            .await?
            .0)
    }

    /// Opens a Server-Sent Events stream and yields each event's (name, JSON data).
    pub async fn events(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<impl Stream<Item = anyhow::Result<(String, Value)>> + use<>> {
        use eventsource_stream::Eventsource;
        // No overall timeout: the stream stays open until interrupted.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        let resp = http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .query(query)
            .header(header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status();
        if !status.is_success() {
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(failure(status, &headers, &bytes).into());
        }
        Ok(resp.bytes_stream().eventsource().map(|ev| {
            let ev = ev.map_err(|e| anyhow!("the live stream broke: {e}"))?;
            let data = serde_json::from_str(&ev.data).unwrap_or(Value::String(ev.data));
            Ok((ev.event, data))
        }))
    }

    fn transport(&self, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            anyhow!(
                "cannot reach the OPMAS API at {}: {e}. Is `opmas serve` (or `opmas dev`) running there? \
                 Set --server or OPMAS_SERVER to its address.",
                self.base
            )
        } else if e.is_timeout() {
            anyhow!(
                "the OPMAS API at {} did not answer in time (raise --timeout)",
                self.base
            )
        } else {
            anyhow!("request to {} failed: {e}", self.base)
        }
    }
}

fn failure(status: StatusCode, headers: &header::HeaderMap, bytes: &[u8]) -> ApiFailure {
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let err = &body["error"];
    let mut message = err["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).trim().to_string());
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("request failed").into();
    }
    if let Some(retry) = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
    {
        message.push_str(&format!(" (retry after {retry} s)"));
    }
    ApiFailure {
        status: status.as_u16(),
        code: err["code"].as_str().unwrap_or("HTTP_ERROR").to_string(),
        message,
        details: err["details"].clone(),
    }
}
