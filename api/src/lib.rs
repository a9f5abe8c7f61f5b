//! The management API: REST under `/api/v1`, a live stream (WebSocket
//! `/api/v1/ws` and SSE `/api/v1/stream`), the OpenAPI document at
//! `/api/v1/openapi.json` with a browsable page at `/api/v1/docs`, and
//! `/healthz`, `/readyz`, `/metrics` for operators. See docs/api.md.
//!
//! Commands go to the `Agent` aggregate through [`AgentStore`]; reads come
//! from the projections' read models (eventually consistent: a command's
//! answer carries the sequence its events reached, and every read model row
//! says which sequence it reflects). Secrets in specs and configs are
//! sealed (`seal.rs`) before a command is built: events never hold them.

pub mod auth;
pub mod error;
pub mod list_cache;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod routes;
mod seal;
pub mod ui;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use opmas_store::{AgentStore, StreamSettings, TelemetrySettings};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::Principal;
use crate::auth::jwt::JwtVerifier;
use crate::error::ApiError;

pub use crate::auth::Role;

/// Header carrying the request id (set by the client or generated).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub jwt: JwtVerifier,
    /// Sustained requests per second allowed per token.
    pub rate_per_second: NonZeroU32,
    /// Requests a token may burst above the sustained rate.
    pub rate_burst: NonZeroU32,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Domain events stream (live stream and `/metrics`).
    pub events: StreamSettings,
    /// Metrics and logs streams (live stream).
    pub telemetry: TelemetrySettings,
    /// Subject prefix supervisors announce themselves on (nodes list).
    pub nodes_bucket: String,
    /// Messages buffered per live-stream client before it is dropped.
    pub live_buffer: usize,
    /// Seals the secrets of specs and configs before they are stored
    /// (ADR 0004); `None`: requests carrying secrets are refused (422).
    pub secret_key: Option<Arc<opmas_domain::secret::SecretKey>>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            jwt: JwtVerifier::new(Vec::new(), "opmas", "opmas-api"),
            rate_per_second: NonZeroU32::new(1000).expect("non-zero"),
            rate_burst: NonZeroU32::new(2000).expect("non-zero"),
            body_limit: 1024 * 1024,
            events: StreamSettings::default(),
            telemetry: TelemetrySettings::default(),
            nodes_bucket: "OPMAS_NODES".to_owned(),
            live_buffer: 1024,
            secret_key: None,
        }
    }
}

struct Inner {
    pool: PgPool,
    store: AgentStore,
    nats: async_nats::Client,
    config: ApiConfig,
    limiter: DefaultKeyedRateLimiter<String>,
    metrics: metrics::Metrics,
    live: tokio::sync::OnceCell<tokio::sync::broadcast::Sender<Arc<live::Outgoing>>>,
    tokens: auth::tokens::TokenCache,
    lists: list_cache::ListCache,
    discovery: std::sync::OnceLock<opmas_packages::Discovery>,
}

/// Shared state of every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    pub fn new(
        pool: PgPool,
        store: AgentStore,
        nats: async_nats::Client,
        config: ApiConfig,
    ) -> Self {
        let quota = Quota::per_second(config.rate_per_second).allow_burst(config.rate_burst);
        Self(Arc::new(Inner {
            pool,
            store,
            nats,
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            metrics: metrics::Metrics::new(),
            live: tokio::sync::OnceCell::new(),
            tokens: auth::tokens::TokenCache::default(),
            lists: list_cache::ListCache::default(),
            discovery: std::sync::OnceLock::new(),
            config,
        }))
    }

    /// Serves `POST /agents/discover` with `discovery` (without one it
    /// answers 409 `DISCOVERY_NOT_CONFIGURED`). Set once; later calls are ignored.
    #[must_use]
    pub fn with_discovery(self, discovery: opmas_packages::Discovery) -> Self {
        let _ = self.0.discovery.set(discovery);
        self
    }

    /// The package discovery, when the server has package roots.
    pub fn discovery(&self) -> Option<&opmas_packages::Discovery> {
        self.0.discovery.get()
    }

    pub fn pool(&self) -> &PgPool {
        &self.0.pool
    }

    pub fn store(&self) -> &AgentStore {
        &self.0.store
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.0.nats
    }

    pub fn config(&self) -> &ApiConfig {
        &self.0.config
    }

    pub fn jwt(&self) -> &JwtVerifier {
        &self.0.config.jwt
    }

    /// Answers of the agent list, by query (see [`list_cache`]).
    pub fn list_cache(&self) -> &list_cache::ListCache {
        &self.0.lists
    }

    /// Recently verified API tokens.
    pub fn token_cache(&self) -> &auth::tokens::TokenCache {
        &self.0.tokens
    }

    pub fn metrics(&self) -> &metrics::Metrics {
        &self.0.metrics
    }

    /// The live-stream hub's sender, started on first use.
    pub(crate) fn live_hub(
        &self,
    ) -> &tokio::sync::OnceCell<tokio::sync::broadcast::Sender<Arc<live::Outgoing>>> {
        &self.0.live
    }

    /// `RATE_LIMITED` with `Retry-After` when `principal` is over its quota.
    pub fn check_rate(&self, principal: &Principal) -> Result<(), ApiError> {
        match self.0.limiter.check_key(&principal.rate_key()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(ApiError::rate_limited(wait.as_secs_f64().ceil() as u64))
            }
        }
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let (api, openapi) = routes::api_router(state.clone()).split_for_parts();
    let openapi = openapi::finish(openapi);
    let body_limit = state.config().body_limit;
    Router::new()
        .merge(api)
        .merge(openapi::docs(openapi))
        .merge(routes::health::router(state.clone()))
        .merge(ui::router())
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// Serves `router(state)` on `listener` until `cancel`; live-stream
/// connections are closed when `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// Acquire timeout of the API's database pool: an unreachable database
/// becomes a 503 within about this long.
pub const DB_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(800);

/// Deadline for answering "is the database there" style probes.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
