//! A supervisor of its own for each test: a fresh database on the shared
//! Postgres (`OPMAS_TEST_DATABASE_URL`), its own event/metrics/logs streams
//! and heartbeat/control subjects on the shared nats-server
//! (`OPMAS_TEST_NATS_URL`), and a temporary log directory; [`package`]
//! loads an example package the way discovery does. Kept free of
//! `opmas-testkit` so these tests do not build the API.

use std::time::Duration;

use futures::StreamExt;
use opmas_domain::{Agent, AgentCommand, AgentEvent, AgentId, AgentSpec, EventMetadata};
use opmas_store::{
    AgentStore, CommandError, OutboxNotifier, Relay, RelayConfig, StreamSettings, TelemetrySettings,
};
use opmas_supervisor::{Config, Supervisor};
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(60);

fn admin_url() -> String {
    std::env::var("OPMAS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

pub fn nats_url() -> String {
    std::env::var("OPMAS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A short random tag for names (lowercase hex, starts with a letter).
pub fn tag() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..11])
}

pub struct Harness {
    pub tag: String,
    pub client: async_nats::Client,
    pub store: AgentStore,
    pub logs: tempfile::TempDir,
    pub telemetry: TelemetrySettings,
    pub heartbeat_prefix: String,
    pub control_prefix: String,
    settings: StreamSettings,
    pool: sqlx::PgPool,
    db_name: String,
    cancel: CancellationToken,
}

impl Harness {
    pub async fn start() -> Self {
        let tag = tag();
        let db_name = format!("opmas_test_{tag}");
        let admin = opmas_store::db::connect(&admin_url(), 1).await.unwrap();
        sqlx::query(&format!("create database {db_name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let base = admin_url();
        let url = format!("{}/{db_name}", &base[..base.rfind('/').unwrap()]);
        let pool = opmas_store::db::connect(&url, 8).await.unwrap();
        opmas_store::db::migrate(&pool).await.unwrap();

        let client = async_nats::connect(nats_url()).await.unwrap();
        let settings = StreamSettings::isolated(&tag);
        let cancel = CancellationToken::new();
        let notifier = OutboxNotifier::spawn(pool.clone(), cancel.clone());
        let store = AgentStore::new(pool.clone()).with_notifier(notifier.clone());
        let relay = Relay::new(
            pool.clone(),
            client.clone(),
            RelayConfig {
                stream: settings.clone(),
                ..RelayConfig::default()
            },
        )
        .with_wake(notifier.subscribe());
        tokio::spawn(relay.run(cancel.clone()));

        let h = Self {
            client,
            store,
            logs: tempfile::tempdir().unwrap(),
            telemetry: TelemetrySettings::isolated(&tag),
            heartbeat_prefix: format!("opmas_{tag}.heartbeat"),
            control_prefix: format!("opmas_{tag}.control"),
            settings,
            pool,
            db_name,
            cancel,
            tag,
        };
        let mut config = Config::new("node-ex", nats_url());
        config.log_dir = h.logs.path().to_path_buf();
        config.stream = h.settings.clone();
        config.reconcile_interval = Duration::from_millis(500);
        config.telemetry = h.telemetry.clone();
        config.heartbeat_prefix = h.heartbeat_prefix.clone();
        config.control_prefix = h.control_prefix.clone();
        let supervisor = Supervisor::new(h.store.clone(), h.client.clone(), config).unwrap();
        tokio::spawn(supervisor.run(h.cancel.clone()));
        h
    }

    /// Registers `id` with `spec` and starts it.
    pub async fn start_agent(&self, id: &str, spec: AgentSpec) {
        let register = AgentCommand::Register {
            agent_id: AgentId::parse(id).unwrap(),
            spec,
        };
        self.command(id, register).await;
        self.command(id, AgentCommand::Start).await;
    }

    pub async fn command(&self, id: &str, cmd: AgentCommand) {
        self.try_command(id, cmd).await.unwrap();
    }

    /// The command's outcome, for tests of refusals.
    pub async fn try_command(&self, id: &str, cmd: AgentCommand) -> Result<(), CommandError> {
        let meta = EventMetadata::new("test", uuid::Uuid::new_v4().to_string(), chrono::Utc::now());
        self.store.execute(id, cmd, meta.to_map()).await.map(drop)
    }

    pub async fn agent(&self, id: &str) -> Agent {
        AgentStore::new(self.pool.clone()).load(id).await.unwrap().0
    }

    /// Polls the agent until `check` holds (fails after [`WAIT`]).
    pub async fn wait_for(&self, id: &str, what: &str, check: impl Fn(&Agent) -> bool) -> Agent {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let agent = self.agent(id).await;
            if check(&agent) {
                return agent;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id}: waited {WAIT:?} for {what}; status {:?}, pid {:?}, events {:?}",
                agent.status,
                agent.pid,
                self.events(id).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn events(&self, id: &str) -> Vec<AgentEvent> {
        self.store
            .events(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.payload)
            .collect()
    }

    /// Subscribes to the heartbeats of `id` on the subject the supervisor
    /// watches.
    pub async fn heartbeats(&self, id: &str) -> async_nats::Subscriber {
        self.subscribe(format!("{}.{id}", self.heartbeat_prefix))
            .await
    }

    pub async fn subscribe(&self, subject: String) -> async_nats::Subscriber {
        let sub = self.client.subscribe(subject).await.unwrap();
        self.client.flush().await.unwrap();
        sub
    }

    /// Sends a control request to `id`, as the supervisor would.
    pub async fn control(
        &self,
        id: &str,
        body: serde_json::Value,
    ) -> opmas_domain::control::ControlReply {
        let subject = format!("{}.{id}", self.control_prefix);
        let body = serde_json::to_vec(&body).unwrap();
        let reply = tokio::time::timeout(WAIT, self.client.request(subject, body.into()))
            .await
            .expect("control reply in time")
            .expect("control reply");
        serde_json::from_slice(&reply.payload).unwrap()
    }

    /// Stops the supervisor, drops the database and the streams (the agent
    /// processes are killed on drop).
    pub async fn finish(self) {
        self.cancel.cancel();
        let js = async_nats::jetstream::new(self.client.clone());
        let _ = js.delete_stream(&self.settings.name).await;
        let _ = js.delete_stream(&self.telemetry.logs_stream).await;
        let _ = js.delete_stream(&self.telemetry.metrics_stream).await;
        self.pool.close().await;
        let admin = opmas_store::db::connect(&admin_url(), 1).await.unwrap();
        let _ = sqlx::query(&format!(
            "drop database if exists {} with (force)",
            self.db_name
        ))
        .execute(&admin)
        .await;
        admin.close().await;
    }
}

/// Whatever happens to the test (a failed assertion too), no agent process
/// it started survives it: every process whose environment names this
/// test's heartbeat prefix gets its group killed.
impl Drop for Harness {
    fn drop(&mut self) {
        let marker = format!("OPMAS_HEARTBEAT_SUBJECT={}.", self.heartbeat_prefix);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            if environ
                .split(|b| *b == 0)
                .any(|var| var.starts_with(marker.as_bytes()))
            {
                let _ = opmas_supervisor::signal::group(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// The next message of `sub` decoded as `T` (fails after [`WAIT`]).
pub async fn next<T: serde::de::DeserializeOwned>(
    sub: &mut async_nats::Subscriber,
    what: &str,
) -> T {
    let msg = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
        .unwrap_or_else(|| panic!("subscription for {what} closed"));
    serde_json::from_slice(&msg.payload).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The example package `examples/agents/<name>` as discovery loads it:
/// its manifest, `config/base.toml` and, as `OPMAS_AGENT_<NAME>__<KEY>`
/// variables, the `config` overrides (so the schema checks them). The
/// package is copied to a directory of its own first (agents may write in
/// their package; the copy dies with the returned guard). Only what a test
/// must is changed afterwards: `program` (the workspace's binary) replaces
/// a command found on `PATH`.
pub fn package(
    name: &str,
    program: Option<&str>,
    config: &[(&str, serde_json::Value)],
) -> (tempfile::TempDir, AgentSpec) {
    let root = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&source)
        .arg(root.path())
        .status()
        .unwrap();
    assert!(status.success(), "copying {}", source.display());
    let prefix = format!("OPMAS_AGENT_{}__", name.to_uppercase().replace('-', "_"));
    let vars = config
        .iter()
        .map(|(key, value)| (format!("{prefix}{}", key.to_uppercase()), value.to_string()))
        .collect();
    let context = opmas_packages::Context {
        environment: "development",
        vars: &vars,
    };
    let package = opmas_packages::Package::load(&root.path().join(name), context)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let [(_, mut spec)] = <[_; 1]>::try_from(package.agents).unwrap();
    if let Some(program) = program {
        spec.command = program.into();
    }
    (root, spec)
}

/// The exit recorded for process `pid`: `(code, signal)`.
pub fn exit_of(events: &[AgentEvent], pid: u32) -> Option<(Option<i32>, Option<i32>)> {
    events.iter().find_map(|e| match e {
        AgentEvent::ProcessExited {
            pid: p,
            code,
            signal,
            ..
        } if *p == pid => Some((*code, *signal)),
        _ => None,
    })
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}
