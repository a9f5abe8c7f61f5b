//! [`ApiStack`]: a test's own control plane behind a real HTTP server —
//! a fresh database, streams of its own on the shared nats-server, the
//! relay, the projector and the API on a free port (no supervisor: tests
//! that need processes start one).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use opmas_api::auth::jwt::{Claims, JwtKey, JwtVerifier, sign_hs256};
use opmas_api::{ApiConfig, AppState, Role};
use opmas_domain::secret::SecretKey;
use opmas_store::{
    AgentStore, OutboxNotifier, Relay, RelayConfig, StreamSettings, TelemetrySettings,
};
use tokio_util::sync::CancellationToken;

use crate::{TestDb, nats, tag};

/// HMAC secret of the stack's JWT key `test`.
pub const JWT_SECRET: &[u8] = b"test-secret-of-at-least-32-bytes!!";
/// Issuer and audience the stack accepts.
pub const ISSUER: &str = "opmas-test";
pub const AUDIENCE: &str = "opmas-api";

/// Knobs of [`ApiStack::start_with`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub rate_per_second: u32,
    pub rate_burst: u32,
    pub body_limit: usize,
    pub live_buffer: usize,
    /// Run the projector (read models).
    pub projector: bool,
    /// Package roots: when not empty, the API scans them on
    /// `POST /agents/discover` (no watcher runs).
    pub package_roots: Vec<std::path::PathBuf>,
    /// Give the API and discovery a (random) secret key to seal with.
    pub secret_key: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            rate_per_second: 100_000,
            rate_burst: 100_000,
            body_limit: 1024 * 1024,
            live_buffer: 1024,
            projector: true,
            package_roots: Vec::new(),
            secret_key: true,
        }
    }
}

/// A running API with everything behind it.
pub struct ApiStack {
    pub db: TestDb,
    pub client: async_nats::Client,
    pub events: StreamSettings,
    pub telemetry: TelemetrySettings,
    pub store: AgentStore,
    pub cancel: CancellationToken,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    pub addr: std::net::SocketAddr,
    /// An admin API token (from the tokens table).
    pub admin_token: String,
    /// The key the API and discovery seal secrets with (give it to a
    /// supervisor that must open them).
    pub secret_key: Option<Arc<SecretKey>>,
}

impl ApiStack {
    pub async fn start() -> Self {
        Self::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> Self {
        let db = TestDb::new().await;
        let client = nats().await;
        let t = tag();
        let events = StreamSettings::isolated(&t);
        let telemetry = TelemetrySettings::isolated(&t);
        let js = async_nats::jetstream::new(client.clone());
        events.ensure(&js).await.unwrap();
        telemetry.ensure(&js).await.unwrap();
        let cancel = CancellationToken::new();
        let notifier = OutboxNotifier::spawn(db.pool.clone(), cancel.clone());
        let store = AgentStore::new(db.pool.clone()).with_notifier(notifier.clone());
        let relay = Relay::new(
            db.pool.clone(),
            client.clone(),
            RelayConfig {
                stream: events.clone(),
                sweep_interval: Duration::from_millis(100),
                retry_delay: Duration::from_millis(100),
                ..RelayConfig::default()
            },
        )
        .with_wake(notifier.subscribe());
        tokio::spawn(relay.run(cancel.clone()));
        if options.projector {
            let config = opmas_projections::Config {
                events: events.clone(),
                telemetry: telemetry.clone(),
                batch: 100,
                ack_wait: Duration::from_secs(2),
                retry_delay: Duration::from_millis(100),
                ..opmas_projections::Config::default()
            };
            tokio::spawn(
                opmas_projections::Projector::new(db.pool.clone(), client.clone(), config)
                    .run(cancel.clone()),
            );
        }
        let secret_key = options
            .secret_key
            .then(|| Arc::new(SecretKey::generate().unwrap()));
        let config = ApiConfig {
            jwt: JwtVerifier::new(
                vec![JwtKey::hs256(Some("test"), JWT_SECRET)],
                ISSUER,
                AUDIENCE,
            ),
            rate_per_second: NonZeroU32::new(options.rate_per_second).unwrap(),
            rate_burst: NonZeroU32::new(options.rate_burst).unwrap(),
            body_limit: options.body_limit,
            events: events.clone(),
            telemetry: telemetry.clone(),
            nodes_bucket: format!("OPMAS_NODES_{}", t.to_uppercase()),
            live_buffer: options.live_buffer,
            secret_key: secret_key.clone(),
        };
        let mut state = AppState::new(db.pool.clone(), store.clone(), client.clone(), config);
        if !options.package_roots.is_empty() {
            let discovery = opmas_packages::discovery::Config {
                roots: options.package_roots.clone(),
                environment: "test".into(),
                secret_key: secret_key.clone(),
                ..Default::default()
            };
            state = state.with_discovery(opmas_packages::Discovery::new(store.clone(), discovery));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(opmas_api::serve(listener, state, cancel.clone()));
        let admin =
            opmas_api::auth::tokens::create(&db.pool, "test-admin", Role::Admin, "test", None)
                .await
                .unwrap();
        Self {
            db,
            client,
            events,
            telemetry,
            store,
            cancel,
            base: format!("http://{addr}"),
            addr,
            admin_token: admin.token,
            secret_key,
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A fresh API token with `role`.
    pub async fn token(&self, role: Role) -> String {
        opmas_api::auth::tokens::create(&self.db.pool, &format!("test-{role}"), role, "test", None)
            .await
            .unwrap()
            .token
    }

    /// A JWT signed with the stack's key.
    pub fn jwt(&self, sub: &str, role: Role, ttl_secs: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        sign_hs256(
            Some("test"),
            JWT_SECRET,
            &Claims {
                sub: sub.into(),
                role,
                exp: u64::try_from(now + ttl_secs).unwrap_or(0),
                nbf: None,
                iss: ISSUER.into(),
                aud: AUDIENCE.into(),
            },
        )
        .unwrap()
    }

    /// Stops everything and removes the database and streams.
    pub async fn cleanup(self) {
        self.cancel.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let js = async_nats::jetstream::new(self.client.clone());
        for name in [
            &self.events.name,
            &self.telemetry.metrics_stream,
            &self.telemetry.logs_stream,
        ] {
            let _ = js.delete_stream(name).await;
        }
        self.db.cleanup().await;
    }
}
