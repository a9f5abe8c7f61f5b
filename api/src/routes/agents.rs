//! Agents: list, get (now or as of an instant), register, update,
//! deregister, lifecycle commands, recovery.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use opmas_domain::{
    Agent, AgentCommand, AgentId, AgentSpec, EventMetadata, RecoveryPolicy, RecoveryStrategy,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};

use super::{AgentPath, Body, Query, RequestId, instant, page_limit};
use crate::AppState;
use crate::auth::{ADMIN, Authorized, OPERATOR, Principal, VIEWER};
use crate::error::{ApiError, ApiResult, ErrorBody};

/// One agent as the read models (or the aggregate) see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentView {
    pub agent_id: String,
    pub agent_type: Option<String>,
    pub package_version: Option<String>,
    /// `running` or `stopped`: what the operator asked for.
    pub desired_state: String,
    /// Process status: `registered`, `starting`, `running`, `stopping`, `stopped`, `exited`, `backoff`, `failed` ...
    pub status: String,
    pub health: String,
    pub recovery_status: String,
    pub recovery_attempts: i64,
    pub node: Option<String>,
    pub pid: Option<i64>,
    pub started_at: Option<DateTime<Utc>>,
    /// Seconds since `started_at` while the process runs.
    pub uptime_seconds: Option<i64>,
    pub restart_count: i64,
    pub heartbeat_lost: bool,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub spec_version: i64,
    pub config_version: i64,
    pub deregistered: bool,
    /// Per-agent sequence of the last event this view reflects.
    pub sequence: i64,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct StatusRow {
    agent_id: String,
    agent_type: Option<String>,
    package_version: Option<String>,
    desired_state: String,
    status: String,
    health: String,
    recovery_status: String,
    recovery_attempts: i32,
    node: Option<String>,
    pid: Option<i64>,
    started_at: Option<DateTime<Utc>>,
    restart_count: i64,
    heartbeat_lost: bool,
    last_heartbeat_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    spec_version: i32,
    config_version: i32,
    deregistered: bool,
    last_sequence: i64,
    updated_at: DateTime<Utc>,
}

const STATUS_COLUMNS: &str = "s.agent_id, s.agent_type, s.package_version, s.desired_state, s.status, s.health, \
    s.recovery_status, s.recovery_attempts, s.node, s.pid, s.started_at, s.restart_count, s.heartbeat_lost, \
    greatest(s.last_heartbeat_at, h.last_seen) as last_heartbeat_at, s.last_error, s.spec_version, \
    s.config_version, s.deregistered, s.last_sequence, s.updated_at";

/// The status rows with the live heartbeats (a separate read model, fed by
/// the supervisors' metric samples) joined in.
const STATUS_FROM: &str =
    " from agent_status s left join agent_heartbeats h on h.agent_id = s.agent_id";

fn uptime(status: &str, started_at: Option<DateTime<Utc>>) -> Option<i64> {
    (status == "running")
        .then_some(started_at)
        .flatten()
        .map(|s| (Utc::now() - s).num_seconds().max(0))
}

impl From<StatusRow> for AgentView {
    fn from(r: StatusRow) -> Self {
        Self {
            uptime_seconds: uptime(&r.status, r.started_at),
            agent_id: r.agent_id,
            agent_type: r.agent_type,
            package_version: r.package_version,
            desired_state: r.desired_state,
            status: r.status,
            health: r.health,
            recovery_status: r.recovery_status,
            recovery_attempts: i64::from(r.recovery_attempts),
            node: r.node,
            pid: r.pid,
            started_at: r.started_at,
            restart_count: r.restart_count,
            heartbeat_lost: r.heartbeat_lost,
            last_heartbeat_at: r.last_heartbeat_at,
            last_error: r.last_error,
            spec_version: i64::from(r.spec_version),
            config_version: i64::from(r.config_version),
            deregistered: r.deregistered,
            sequence: r.last_sequence,
            updated_at: Some(r.updated_at),
        }
    }
}

impl AgentView {
    /// From the aggregate itself (answers to commands, `?at=`).
    pub fn from_agent(agent_id: &str, agent: &Agent, sequence: i64) -> Self {
        let status = agent.status.as_str().to_owned();
        Self {
            uptime_seconds: uptime(&status, agent.started_at),
            agent_id: agent_id.to_owned(),
            agent_type: agent.spec.as_ref().map(|s| s.agent_type.clone()),
            package_version: agent.spec.as_ref().map(|s| s.package_version.clone()),
            desired_state: agent.desired.as_str().to_owned(),
            status,
            health: agent.health.as_str().to_owned(),
            recovery_status: agent.recovery.as_str().to_owned(),
            recovery_attempts: i64::from(agent.recovery_attempts),
            node: agent.node.clone(),
            pid: agent.pid.map(i64::from),
            started_at: agent.started_at,
            restart_count: i64::try_from(agent.restart_count).unwrap_or(i64::MAX),
            heartbeat_lost: agent.heartbeat_lost,
            last_heartbeat_at: None,
            last_error: agent.last_error.clone(),
            spec_version: i64::from(agent.spec_version),
            config_version: i64::from(agent.config_version),
            deregistered: agent.deregistered,
            sequence,
            updated_at: None,
        }
    }
}

/// One agent with its spec (secrets redacted).
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentDetail {
    #[serde(flatten)]
    pub agent: AgentView,
    pub spec: Option<AgentSpec>,
    /// Set when the view was computed for `?at=`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<DateTime<Utc>>,
}

/// A page of agents.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentPage {
    pub items: Vec<AgentView>,
    /// Agents matching the filters, across all pages.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only agents with this process status.
    pub status: Option<String>,
    /// Only agents with this health (`unknown`, `healthy`, `degraded`, `critical`).
    pub health: Option<String>,
    /// Only agents of this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub agent_type: Option<String>,
    /// Only agents on this node.
    pub node: Option<String>,
    /// Case-insensitive substring of the agent id.
    pub q: Option<String>,
    /// Sort key, `-` prefix for descending: `agent_id`, `status`, `health`,
    /// `restart_count`, `started_at`, `updated_at`, `node`.
    pub sort: Option<String>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<i64>,
    /// Agents to skip.
    pub offset: Option<i64>,
    /// Include deregistered agents (default false).
    pub include_deregistered: Option<bool>,
}

const SORT_KEYS: &[&str] = &[
    "agent_id",
    "status",
    "health",
    "restart_count",
    "started_at",
    "updated_at",
    "node",
];

fn filtered<'a>(select: &str, p: &'a ListParams) -> QueryBuilder<'a, Postgres> {
    let mut q = QueryBuilder::new(select);
    q.push(STATUS_FROM).push(" where s.registered");
    if !p.include_deregistered.unwrap_or(false) {
        q.push(" and not s.deregistered");
    }
    if let Some(v) = &p.status {
        q.push(" and s.status = ").push_bind(v);
    }
    if let Some(v) = &p.health {
        q.push(" and s.health = ").push_bind(v);
    }
    if let Some(v) = &p.agent_type {
        q.push(" and s.agent_type = ").push_bind(v);
    }
    if let Some(v) = &p.node {
        q.push(" and s.node = ").push_bind(v);
    }
    if let Some(v) = p.q.as_deref().filter(|v| !v.is_empty()) {
        q.push(" and strpos(lower(s.agent_id), lower(")
            .push_bind(v)
            .push(")) > 0");
    }
    q
}

/// List agents with filters, sorting and pagination.
#[utoipa::path(get, path = "/agents", tag = "agents", params(ListParams),
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = AgentPage), (status = 422, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
    Query(p): Query<ListParams>,
) -> ApiResult<Response> {
    let limit = page_limit(p.limit, 100, 1000)?;
    let offset = p.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::validation("offset", "must be 0 or more"));
    }
    let (key, desc) = match p.sort.as_deref() {
        None => ("agent_id", false),
        Some(s) => {
            let (key, desc) = s.strip_prefix('-').map_or((s, false), |k| (k, true));
            let key = SORT_KEYS.iter().find(|k| **k == key).ok_or_else(|| {
                ApiError::validation(
                    "sort",
                    format!(
                        "unknown sort key `{key}`: use one of {}",
                        SORT_KEYS.join(", ")
                    ),
                )
            })?;
            (*key, desc)
        }
    };
    // Unchanged read models: the answer given before (see `list_cache`).
    let cache_key = format!("{p:?}");
    let version = crate::list_cache::Version::read(state.pool()).await?;
    if let Some(body) = state.list_cache().get(&cache_key, &version) {
        return Ok(json_body(body));
    }
    // One statement: the page and the number of matches (window count).
    let mut q = filtered(
        &format!("select {STATUS_COLUMNS}, count(*) over () as total"),
        &p,
    );
    q.push(format_args!(
        " order by s.{key} {} nulls last, s.agent_id limit ",
        if desc { "desc" } else { "asc" }
    ));
    q.push_bind(limit).push(" offset ").push_bind(offset);
    let rows = q.build().fetch_all(state.pool()).await?;
    use sqlx::{FromRow, Row};
    let total: i64 = match rows.first() {
        Some(row) => row.try_get("total")?,
        // Past the last page (or nothing matches): count separately.
        None if offset > 0 => {
            filtered("select count(*)", &p)
                .build_query_scalar()
                .fetch_one(state.pool())
                .await?
        }
        None => 0,
    };
    let items = rows
        .iter()
        .map(|r| StatusRow::from_row(r).map(AgentView::from))
        .collect::<Result<Vec<_>, _>>()?;
    let page = AgentPage {
        items,
        total,
        limit,
        offset,
    };
    let body = bytes::Bytes::from(serde_json::to_vec(&page).map_err(ApiError::internal)?);
    state.list_cache().put(cache_key, version, body.clone());
    Ok(json_body(body))
}

fn json_body(body: bytes::Bytes) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

pub(crate) async fn read_view(state: &AppState, agent_id: &str) -> ApiResult<(AgentView, Value)> {
    let sql = format!("select {STATUS_COLUMNS}, s.state{STATUS_FROM} where s.agent_id = $1");
    let row = sqlx::query(&sql)
        .bind(agent_id)
        .fetch_optional(state.pool())
        .await?;
    let Some(row) = row else {
        return Err(ApiError::agent_not_found(agent_id));
    };
    use sqlx::{FromRow, Row};
    let view: StatusRow = StatusRow::from_row(&row)?;
    let agent_state: Value = row.try_get("state")?;
    Ok((AgentView::from(view), agent_state))
}

fn spec_of(agent_state: &Value) -> Option<AgentSpec> {
    agent_state
        .get("spec")
        .filter(|s| !s.is_null())
        .and_then(|s| serde_json::from_value::<AgentSpec>(s.clone()).ok())
        .map(|s| s.redacted())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    /// RFC 3339 instant: the agent's state as of then, folded from its events.
    #[param(format = DateTime)]
    pub at: Option<String>,
}

/// One agent with its spec; `?at=` gives its state at a past instant.
#[utoipa::path(get, path = "/agents/{id}", tag = "agents", params(("id" = String, Path, description = "Agent id"), GetParams),
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = AgentDetail), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
    AgentPath(id): AgentPath,
    Query(p): Query<GetParams>,
) -> ApiResult<Response> {
    if let Some(at) = p.at.as_deref() {
        let at = instant("at", at)?;
        let as_of = match opmas_projections::audit::state_as_of(state.pool(), &id, at).await {
            Ok(a) => a,
            Err(opmas_projections::Error::NotFound(_)) => {
                return Err(ApiError::agent_not_found(&id));
            }
            Err(e) => return Err(e.into()),
        };
        if as_of.sequence == 0 {
            return Err(ApiError::not_found(
                "AGENT_NOT_FOUND",
                format!("agent `{id}` was not registered yet at {at}"),
            ));
        }
        return Ok(super::ok(AgentDetail {
            agent: AgentView::from_agent(&id, &as_of.agent, as_of.sequence),
            spec: as_of.agent.spec.as_ref().map(AgentSpec::redacted),
            as_of: Some(at),
        }));
    }
    match read_view(&state, &id).await {
        Ok((view, agent_state)) => Ok(super::ok(AgentDetail {
            agent: view,
            spec: spec_of(&agent_state),
            as_of: None,
        })),
        Err(e) if e.code == "AGENT_NOT_FOUND" => {
            // Registered a moment ago, not in the read model yet: answer from
            // the event store (a client reads what it just wrote).
            let (agent, sequence) = state.store().load(&id).await?;
            if !agent.registered || agent.deregistered {
                return Err(e);
            }
            Ok(super::ok(AgentDetail {
                agent: AgentView::from_agent(&id, &agent, i64::try_from(sequence).unwrap_or(0)),
                spec: agent.spec.as_ref().map(AgentSpec::redacted),
                as_of: None,
            }))
        }
        Err(e) => Err(e),
    }
}

/// The status part of an agent (cheap; for polling).
#[utoipa::path(get, path = "/agents/{id}/status", tag = "agents", params(("id" = String, Path, description = "Agent id")),
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = AgentView), (status = 404, body = ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
    AgentPath(id): AgentPath,
) -> ApiResult<Response> {
    let sql = format!("select {STATUS_COLUMNS}{STATUS_FROM} where s.agent_id = $1");
    let row: Option<StatusRow> = sqlx::query_as(&sql)
        .bind(&id)
        .fetch_optional(state.pool())
        .await?;
    let row = row.ok_or_else(|| ApiError::agent_not_found(&id))?;
    Ok(super::ok(AgentView::from(row)))
}

/// A command's answer: the events it committed and the agent right after.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandResult {
    pub agent_id: String,
    pub command: String,
    /// Types of the events committed, in order (empty: nothing to do).
    pub events: Vec<String>,
    /// Per-agent sequence after the command. Read models reflect the command
    /// once their `sequence` reaches it.
    pub sequence: i64,
    pub agent: AgentView,
}

/// Runs `command` as `principal`, with the request id as correlation id.
pub(crate) async fn execute(
    state: &AppState,
    principal: &Principal,
    request_id: &str,
    agent_id: &str,
    name: &str,
    command: AgentCommand,
    reason: Option<&str>,
) -> ApiResult<CommandResult> {
    let mut metadata = EventMetadata::new(principal.actor(), request_id, Utc::now()).to_map();
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        metadata.insert("reason".to_owned(), reason.to_owned());
    }
    let result = state.store().execute(agent_id, command, metadata).await;
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(e) => ApiError::from(clone_err(e)).code.to_lowercase(),
    };
    state.metrics().command(name, &outcome);
    let events = result?;
    let (agent, sequence) = match state.store().cached(agent_id) {
        Some(c) => c,
        None => state.store().load(agent_id).await?,
    };
    let sequence = i64::try_from(sequence).unwrap_or(i64::MAX);
    Ok(CommandResult {
        agent_id: agent_id.to_owned(),
        command: name.to_owned(),
        events: events.iter().map(|e| e.payload.event_type()).collect(),
        sequence,
        agent: AgentView::from_agent(agent_id, &agent, sequence),
    })
}

fn clone_err(e: &opmas_store::CommandError) -> opmas_store::CommandError {
    use opmas_store::CommandError as C;
    match e {
        C::Rejected(a) => C::Rejected(a.clone()),
        C::Conflict => C::Conflict,
        C::Unavailable(s) => C::Unavailable(s.clone()),
        C::Internal(s) => C::Internal(s.clone()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 1-63 characters: lowercase letters, digits and `-`, starting with a letter.
    pub agent_id: String,
    pub spec: AgentSpec,
    /// Why (kept in the audit trail).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Register an agent from a spec.
#[utoipa::path(post, path = "/agents", tag = "agents", request_body = RegisterRequest,
    security(("bearer" = ["admin"])),
    responses((status = 201, body = CommandResult), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    Authorized(principal): Authorized<{ ADMIN }>,
    RequestId(rid): RequestId,
    Body(req): Body<RegisterRequest>,
) -> ApiResult<Response> {
    let agent_id = AgentId::parse(&req.agent_id)
        .map_err(|e| ApiError::validation("agent_id", e.to_string()))?;
    super::packages::check_requires(&state, &req.agent_id, &req.spec.requires).await?;
    let spec = crate::seal::spec(&state, &req.spec, "spec.")?;
    let result = execute(
        &state,
        &principal,
        &rid,
        &req.agent_id,
        "register",
        AgentCommand::Register { agent_id, spec },
        req.reason.as_deref(),
    )
    .await?;
    let location = format!("/api/v1/agents/{}", req.agent_id);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, location)],
        axum::Json(result),
    )
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// The new spec (its `config` is ignored: use the config endpoints).
    pub spec: AgentSpec,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Replace an agent's spec (a new package version); the supervisor applies it.
#[utoipa::path(put, path = "/agents/{id}", tag = "agents", request_body = UpdateRequest,
    params(("id" = String, Path, description = "Agent id")),
    security(("bearer" = ["admin"])),
    responses((status = 200, body = CommandResult), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Authorized(principal): Authorized<{ ADMIN }>,
    RequestId(rid): RequestId,
    AgentPath(id): AgentPath,
    Body(req): Body<UpdateRequest>,
) -> ApiResult<Response> {
    super::packages::check_requires(&state, &id, &req.spec.requires).await?;
    let mut incoming = req.spec;
    // A spec sent back as read shows its secrets as `***`: they keep the
    // stored values (as a config PUT does).
    if let Ok((current, _)) = state.store().load(&id).await
        && let Some(current) = current.spec
    {
        keep_unchanged_secrets(&mut incoming, &current);
    }
    let spec = crate::seal::spec(&state, &incoming, "spec.")?;
    let result = execute(
        &state,
        &principal,
        &rid,
        &id,
        "update",
        AgentCommand::UpdatePackage { spec },
        req.reason.as_deref(),
    )
    .await?;
    Ok(super::ok(result))
}

/// In `spec`, secret env values and `x-secret` config fields sent as `***`
/// take their value in `current`.
fn keep_unchanged_secrets(spec: &mut AgentSpec, current: &AgentSpec) {
    for key in &spec.secret_env {
        if spec.env.get(key).map(String::as_str) == Some("***")
            && let Some(value) = current.env.get(key)
        {
            spec.env.insert(key.clone(), value.clone());
        }
    }
    if let Some(schema) = &spec.config_schema {
        opmas_domain::spec::keep_unchanged_secrets(schema, &mut spec.config, &current.config);
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReasonParams {
    /// Why (kept in the audit trail).
    pub reason: Option<String>,
}

/// Deregister an agent: its process is stopped and every later command refused.
#[utoipa::path(delete, path = "/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id"), ReasonParams),
    security(("bearer" = ["admin"])),
    responses((status = 200, body = CommandResult), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn deregister(
    State(state): State<AppState>,
    Authorized(principal): Authorized<{ ADMIN }>,
    RequestId(rid): RequestId,
    AgentPath(id): AgentPath,
    Query(p): Query<ReasonParams>,
) -> ApiResult<Response> {
    let result = execute(
        &state,
        &principal,
        &rid,
        &id,
        "deregister",
        AgentCommand::Deregister,
        p.reason.as_deref(),
    )
    .await?;
    Ok(super::ok(result))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleRequest {
    /// Why (kept in the audit trail).
    #[serde(default)]
    pub reason: Option<String>,
}

async fn lifecycle(
    state: AppState,
    principal: Principal,
    rid: String,
    id: String,
    body: Option<LifecycleRequest>,
    name: &str,
    command: AgentCommand,
) -> ApiResult<Response> {
    let reason = body.and_then(|b| b.reason);
    let result = execute(
        &state,
        &principal,
        &rid,
        &id,
        name,
        command,
        reason.as_deref(),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(result)).into_response())
}

/// Optional JSON body: absent or empty is `None`.
pub struct OptionalBody<T>(pub Option<T>);

impl<T, S> axum::extract::FromRequest<S> for OptionalBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let has_body = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v != "0")
            || req
                .headers()
                .contains_key(axum::http::header::TRANSFER_ENCODING);
        if !has_body {
            return Ok(OptionalBody(None));
        }
        let Body(value) = Body::<T>::from_request(req, state).await?;
        Ok(OptionalBody(Some(value)))
    }
}

/// Ask for the agent to run (the supervisor starts it).
#[utoipa::path(post, path = "/agents/{id}/start", tag = "lifecycle", request_body(content = Option<LifecycleRequest>),
    params(("id" = String, Path, description = "Agent id")),
    security(("bearer" = ["operator"])),
    responses((status = 202, body = CommandResult), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    Authorized(principal): Authorized<{ OPERATOR }>,
    RequestId(rid): RequestId,
    AgentPath(id): AgentPath,
    OptionalBody(body): OptionalBody<LifecycleRequest>,
) -> ApiResult<Response> {
    lifecycle(
        state,
        principal,
        rid,
        id,
        body,
        "start",
        AgentCommand::Start,
    )
    .await
}

/// Ask for the agent to stop (gracefully, then killed after its grace period).
#[utoipa::path(post, path = "/agents/{id}/stop", tag = "lifecycle", request_body(content = Option<LifecycleRequest>),
    params(("id" = String, Path, description = "Agent id")),
    security(("bearer" = ["operator"])),
    responses((status = 202, body = CommandResult), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn stop(
    State(state): State<AppState>,
    Authorized(principal): Authorized<{ OPERATOR }>,
    RequestId(rid): RequestId,
    AgentPath(id): AgentPath,
    OptionalBody(body): OptionalBody<LifecycleRequest>,
) -> ApiResult<Response> {
    lifecycle(state, principal, rid, id, body, "stop", AgentCommand::Stop).await
}

/// Restart the agent's process.
#[utoipa::path(post, path = "/agents/{id}/restart", tag = "lifecycle", request_body(content = Option<LifecycleRequest>),
    params(("id" = String, Path, description = "Agent id")),
    security(("bearer" = ["operator"])),
    responses((status = 202, body = CommandResult), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn restart(
    State(state): State<AppState>,
    Authorized(principal): Authorized<{ OPERATOR }>,
    RequestId(rid): RequestId,
    AgentPath(id): AgentPath,
    OptionalBody(body): OptionalBody<LifecycleRequest>,
) -> ApiResult<Response> {
    lifecycle(
        state,
        principal,
        rid,
        id,
        body,
        "restart",
        AgentCommand::Restart,
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    /// `restart` or `reload` (default: the agent's recovery policy).
    #[serde(default)]
    pub strategy: Option<RecoveryStrategy>,
    /// Why (kept in the audit trail).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Trigger a recovery with a strategy.
#[utoipa::path(post, path = "/agents/{id}/recover", tag = "lifecycle", request_body = RecoverRequest,
    params(("id" = String, Path, description = "Agent id")),
    security(("bearer" = ["operator"])),
    responses((status = 202, body = CommandResult), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn recover(
    State(state): State<AppState>,
    Authorized(principal): Authorized<{ OPERATOR }>,
    RequestId(rid): RequestId,
    AgentPath(id): AgentPath,
    Body(req): Body<RecoverRequest>,
) -> ApiResult<Response> {
    let strategy = match req.strategy {
        Some(s) => s,
        None => {
            let (agent, _) = match state.store().cached(&id) {
                Some(c) => c,
                None => state.store().load(&id).await?,
            };
            agent.spec.map(|s| s.recovery.strategy).unwrap_or_default()
        }
    };
    let reason = req
        .reason
        .clone()
        .unwrap_or_else(|| format!("requested by {}", principal.actor()));
    let result = execute(
        &state,
        &principal,
        &rid,
        &id,
        "recover",
        AgentCommand::TriggerRecovery {
            strategy,
            reason: reason.clone(),
        },
        Some(&reason),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(result)).into_response())
}

/// Set the recovery policy (strategy, automatic recovery on/off, attempts).
#[utoipa::path(put, path = "/agents/{id}/recovery-policy", tag = "lifecycle", request_body = RecoveryPolicy,
    params(("id" = String, Path, description = "Agent id")),
    security(("bearer" = ["operator"])),
    responses((status = 200, body = CommandResult), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_recovery_policy(
    State(state): State<AppState>,
    Authorized(principal): Authorized<{ OPERATOR }>,
    RequestId(rid): RequestId,
    AgentPath(id): AgentPath,
    Body(policy): Body<RecoveryPolicy>,
) -> ApiResult<Response> {
    let result = execute(
        &state,
        &principal,
        &rid,
        &id,
        "set_recovery_policy",
        AgentCommand::SetRecoveryPolicy { policy },
        None,
    )
    .await?;
    Ok(super::ok(result))
}
